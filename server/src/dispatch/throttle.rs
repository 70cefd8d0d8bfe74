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

/// A token bucket: `burst` messages at once, refilled at `rate` per second. Runs on the
/// monotonic clock: a rate is about elapsed time, whatever the wall clock does.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: std::time::Instant) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one; whether there was.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!((0..3).all(|_| b.take(t0)), "the burst");
        assert!(!b.take(t0), "then empty");
        assert!(!b.take(t0 + Duration::from_millis(99)));
        assert!(b.take(t0 + Duration::from_millis(200)), "refilled at 10/s");
        // a long pause refills to the burst, no more
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

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
