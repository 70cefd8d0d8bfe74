//! Hostile: `select` allocates without end. The host's memory limit must stop it.

use ota_policy_sdk::{export_policy, Device, Policy, PolicyError, ScopePolicy};

pub struct Bomb;

impl Policy for Bomb {
    type Config = serde::de::IgnoredAny;
    fn new(_: Self::Config) -> Result<Self, PolicyError> {
        Ok(Self)
    }
}

impl ScopePolicy for Bomb {
    fn select(&self, devices: &[Device]) -> Result<Vec<bool>, PolicyError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

export_policy!(Bomb);
