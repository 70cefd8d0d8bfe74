//! Hostile: answers more than it was asked (bypassing the SDK's own length check through the
//! raw bindings), floods the log and returns a rate state over the host's limit.

#[cfg(target_arch = "wasm32")]
mod raw {
    use bindings::exports::ota::policy::{rate, scope};
    use bindings::ota::policy::types::{Device, DeviceFields, PolicyError};
    use ota_policy_sdk::guest::bindings;

    pub struct Huge;

    impl scope::Guest for Huge {
        fn requirements() -> DeviceFields {
            DeviceFields {
                attribute_keys: Vec::new(),
                tag_keys: Vec::new(),
                module_names: Vec::new(),
                groups: false,
            }
        }
        fn select(devices: Vec<Device>) -> Result<Vec<bool>, PolicyError> {
            if devices.is_empty() {
                return Ok(Vec::new());
            }
            for i in 0..100_000 {
                ota_policy_sdk::log(
                    ota_policy_sdk::Level::Info,
                    &format!("line {i} {}", "x".repeat(1000)),
                );
            }
            Ok(vec![true; devices.len() * 2 + 1])
        }
    }

    impl rate::Guest for Huge {
        fn tick(stats: rate::RolloutStats, _: Vec<u8>) -> Result<rate::Decision, PolicyError> {
            // a small state on the upload's smoke tick (nothing waiting), then a huge one
            let size = if stats.waiting == 0 { 1 } else { 1 << 20 };
            Ok(rate::Decision {
                action: rate::Action::Release(1),
                state: vec![7u8; size],
            })
        }
    }

    ota_policy_sdk::guest::bindings::__ota_policy_export_world!(Huge with_types_in ota_policy_sdk::guest::bindings);
}
