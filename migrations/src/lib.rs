//! Database migrations of the OTA server: one file per change, never edited once landed.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_foundation;
mod m20261201_000001_rollouts;
mod m20261204_000001_scheduler;
mod m20261204_000002_safety;
mod m20261205_000001_policies;
mod m20261205_000002_hot_keys;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_foundation::Migration),
            Box::new(m20261201_000001_rollouts::Migration),
            Box::new(m20261204_000001_scheduler::Migration),
            Box::new(m20261204_000002_safety::Migration),
            Box::new(m20261205_000001_policies::Migration),
            Box::new(m20261205_000002_hot_keys::Migration),
        ]
    }
}
