//! Hostile: `select` panics. The host must report the panic's message.

use ota_policy_sdk::{export_policy, Device, Policy, PolicyError, ScopePolicy};

pub struct Panics;

impl Policy for Panics {
    type Config = serde::de::IgnoredAny;
    fn new(_: Self::Config) -> Result<Self, PolicyError> {
        Ok(Self)
    }
}

impl ScopePolicy for Panics {
    fn select(&self, devices: &[Device]) -> Result<Vec<bool>, PolicyError> {
        if let Some(d) = devices.first() {
            panic!("policy bug: cannot read device {}", d.name);
        }
        Ok(Vec::new())
    }
}

export_policy!(Panics);
