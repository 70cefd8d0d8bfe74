//! Hostile: `select` never returns. The host must stop it (fuel or deadline) and go on.

use ota_policy_sdk::{export_policy, Device, Policy, PolicyError, ScopePolicy};

pub struct Endless;

impl Policy for Endless {
    type Config = serde::de::IgnoredAny;
    fn new(_: Self::Config) -> Result<Self, PolicyError> {
        Ok(Self)
    }
}

impl ScopePolicy for Endless {
    fn select(&self, devices: &[Device]) -> Result<Vec<bool>, PolicyError> {
        // only the first call of a smoke run returns, so the component passes upload
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export_policy!(Endless);
