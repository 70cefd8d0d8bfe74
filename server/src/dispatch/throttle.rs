//! Per-device limits that keep one device from costing the server more than its share: a
//! log limiter (a misbehaving device is logged at most once a minute, SPEC V4) and a token
//! bucket for its uplinks.

use crate::clock::Millis;
use std::collections::HashMap;
use std::sync::Mutex;

/// Entries kept before old ones are pruned; bounds the memory a stream of distinct names
/// (random usernames in CONNECTs) can take.
const PRUNE_AT: usize = 100_000;
const MINUTE: Millis = 60_000;

/// Says whether something about a device should be logged now: at most once per device per
/// minute, each device on its own.
#[derive(Default)]
pub struct LogLimiter {
    seen: Mutex<HashMap<String, Millis>>,
}

impl LogLimiter {
    /// Whether an event for `key` at `now` is the first in a minute (and so is logged).
    pub fn first_in_minute(&self, key: &str, now: Millis) -> bool {
        self.seen
            .lock()
            .map(|mut m| first_in_minute(&mut m, key, now))
            .unwrap_or(true)
    }
}

fn first_in_minute(seen: &mut HashMap<String, Millis>, key: &str, now: Millis) -> bool {
    if seen.len() > PRUNE_AT {
        seen.retain(|_, t| now - *t < MINUTE);
    }
    match seen.get(key) {
        Some(t) if now - *t < MINUTE => false,
        _ => {
            seen.insert(key.to_owned(), now);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC V4: a rejected device is logged at most once per minute, each device on its own.
    #[test]
    fn rejections_are_logged_once_per_device_per_minute() {
        let l = LogLimiter::default();
        assert!(l.first_in_minute("pk/a", 0));
        assert!(!l.first_in_minute("pk/a", 59_999));
        assert!(l.first_in_minute("pk/b", 1_000), "another device is logged");
        assert!(l.first_in_minute("pk/a", 60_000), "a minute later again");
        assert!(!l.first_in_minute("pk/a", 60_001));
    }
}
