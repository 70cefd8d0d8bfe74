//! The OTA server: a self-hosted over-the-air firmware update service.
//!
//! Dependencies point one way: `api -> store -> domain` (and `api -> firmware`); `domain`
//! does no I/O; only `store` touches sea-orm and only `api` touches actix.

pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod firmware;
pub mod metrics;
pub mod policy;
pub mod scheduler;
pub mod store;
