//! A canary scope: takes a fixed percentage of devices per value of one attribute (a region,
//! say), the same devices on every call, because the choice is a stable hash (FNV-1a, 64 bit)
//! of the device's product and name, and an optional salt so two canaries can differ.
//!
//! Config: `{"attribute": "region", "percent": {"eu": 5, "us": 10}, "default": 0, "salt": ""}`.
//! Percentages are 0–100 with up to two decimals; `default` is for devices whose value is
//! missing or not listed.

use ota_policy_sdk::{export_policy, Device, Policy, PolicyError, Requirements, ScopePolicy};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub attribute: String,
    #[serde(default)]
    pub percent: BTreeMap<String, f64>,
    #[serde(default)]
    pub default: f64,
    #[serde(default)]
    pub salt: String,
}

/// Percentages kept in hundredths of a percent (basis points), so the choice is integer.
pub struct Canary {
    attribute: String,
    per_value: BTreeMap<String, u64>,
    default: u64,
    salt: String,
}

fn basis_points(field: &str, percent: f64) -> Result<u64, PolicyError> {
    let bp = (percent * 100.0).round();
    if !bp.is_finite() || !(0.0..=10_000.0).contains(&bp) {
        return Err(PolicyError::new(
            "bad_config",
            format!("{field} must be a percentage 0 to 100, got {percent}"),
        ));
    }
    Ok(bp as u64)
}

impl Policy for Canary {
    type Config = Config;

    fn new(c: Config) -> Result<Self, PolicyError> {
        if c.attribute.is_empty() {
            return Err(PolicyError::new(
                "bad_config",
                "attribute must name a device attribute",
            ));
        }
        let per_value = c
            .percent
            .iter()
            .map(|(k, v)| Ok((k.clone(), basis_points(&format!("percent.{k}"), *v)?)))
            .collect::<Result<_, PolicyError>>()?;
        Ok(Self {
            attribute: c.attribute,
            per_value,
            default: basis_points("default", c.default)?,
            salt: c.salt,
        })
    }
}

/// FNV-1a, 64 bit: stable across builds, platforms and calls, unlike std's `DefaultHasher`.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // a separator, so ("ab","c") and ("a","bc") differ
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Canary {
    /// Whether this device is among the chosen share of its attribute value.
    pub fn takes(&self, d: &Device) -> bool {
        let bp = d
            .attribute(&self.attribute)
            .and_then(|v| self.per_value.get(v))
            .copied()
            .unwrap_or(self.default);
        let slot = fnv1a(&[
            self.salt.as_bytes(),
            d.product.as_bytes(),
            d.name.as_bytes(),
        ]) % 10_000;
        slot < bp
    }
}

impl ScopePolicy for Canary {
    fn requirements(&self) -> Requirements {
        Requirements {
            attribute_keys: vec![self.attribute.clone()],
            ..Requirements::default()
        }
    }

    fn select(&self, devices: &[Device]) -> Result<Vec<bool>, PolicyError> {
        Ok(devices.iter().map(|d| self.takes(d)).collect())
    }
}

export_policy!(Canary);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ota_policy_sdk::testing::{device, Harness};

    const CONFIG: &str = r#"{"attribute": "region", "percent": {"eu": 5, "us": 10}, "default": 0}"#;

    fn fleet(region: &str, n: u64) -> Vec<Device> {
        (0..n)
            .map(|i| device(i, &format!("{region}-{i}")).with_attribute("region", region))
            .collect()
    }

    #[test]
    fn takes_about_the_share_per_region_and_none_elsewhere() {
        let mut h = Harness::with_config(CONFIG);
        for (region, pct) in [("eu", 5.0), ("us", 10.0), ("cn", 0.0)] {
            let taken = h.select::<Canary>(&fleet(region, 20_000)).unwrap();
            let share = taken.iter().filter(|t| **t).count() as f64 / 200.0;
            assert!((share - pct).abs() < 0.8, "{region}: {share}% for {pct}%");
        }
        let missing = h.select::<Canary>(&[device(1, "no-region")]).unwrap();
        assert_eq!(missing, vec![false]);
    }

    #[test]
    fn the_choice_is_stable_across_calls_and_batches() {
        let mut h = Harness::with_config(CONFIG);
        let all = fleet("us", 3_000);
        let once = h.select::<Canary>(&all).unwrap();
        let mut in_batches = Vec::new();
        for chunk in all.chunks(1_000).rev() {
            let mut part = h.select::<Canary>(chunk).unwrap();
            part.append(&mut in_batches);
            in_batches = part;
        }
        assert_eq!(once, in_batches);
        assert_eq!(fnv1a(&[b"", b"p", b"us-1"]), fnv1a(&[b"", b"p", b"us-1"]));
    }

    #[test]
    fn asks_only_for_its_attribute_and_checks_percentages() {
        let p = Canary::new(ota_policy_sdk::parse_config(CONFIG.as_bytes()).unwrap()).unwrap();
        assert_eq!(p.requirements().attribute_keys, vec!["region".to_owned()]);
        let e = Harness::with_config(r#"{"attribute": "region", "percent": {"eu": 101}}"#)
            .select::<Canary>(&[])
            .unwrap_err();
        assert_eq!(e.code, "bad_config");
    }
}
