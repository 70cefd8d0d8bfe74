//! Hostile: `select` opens a TCP connection, so the component imports `wasi:sockets`; the
//! host's allow-list must refuse it before it ever runs.

use ota_policy_sdk::{export_policy, Device, Policy, PolicyError, ScopePolicy};

pub struct Phones;

impl Policy for Phones {
    type Config = serde::de::IgnoredAny;
    fn new(_: Self::Config) -> Result<Self, PolicyError> {
        Ok(Self)
    }
}

impl ScopePolicy for Phones {
    fn select(&self, devices: &[Device]) -> Result<Vec<bool>, PolicyError> {
        let home = std::net::TcpStream::connect("10.0.0.1:80").is_ok();
        Ok(vec![home; devices.len()])
    }
}

export_policy!(Phones);
