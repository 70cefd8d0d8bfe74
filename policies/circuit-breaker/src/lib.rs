//! A failure-rate circuit breaker: releases at a constant rate (the same exact token bucket
//! as the built-in rate) and pauses the rollout, with the figures in the reason, once at
//! least `min_finished` tasks finished and the share of failures among them passes
//! `max_failure_percent`. After a pause it counts afresh from the figures at the trip, so a
//! resumed rollout is judged on what happens next, not tripped again by the same failures.
//!
//! Config: `{"per_minute": 100, "max_failure_percent": 10, "min_finished": 50,
//! "count_rejected": false}` (`count_rejected`: device refusals count as failures too).

use ota_policy_sdk::{export_policy, Action, Policy, PolicyError, RatePolicy, RolloutStats};
use serde::{Deserialize, Serialize};

const UNITS_PER_PUSH: i64 = 60_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub per_minute: u64,
    pub max_failure_percent: f64,
    pub min_finished: u64,
    #[serde(default)]
    pub count_rejected: bool,
}

pub struct Breaker {
    per_minute: i64,
    /// in hundredths of a percent
    max_failure_bp: u64,
    min_finished: u64,
    count_rejected: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub bucket: i64,
    pub released: u64,
    /// finished and failed counts at the last trip
    pub finished_at_trip: u64,
    pub failed_at_trip: u64,
}

impl Policy for Breaker {
    type Config = Config;

    fn new(c: Config) -> Result<Self, PolicyError> {
        let per_minute = ota_policy_sdk::in_range("per_minute", c.per_minute, 1, 1_000_000)?;
        let bp = (c.max_failure_percent * 100.0).round();
        if !bp.is_finite() || !(0.0..=10_000.0).contains(&bp) {
            return Err(PolicyError::new(
                "bad_config",
                format!(
                    "max_failure_percent must be 0 to 100, got {}",
                    c.max_failure_percent
                ),
            ));
        }
        Ok(Self {
            per_minute: i64::try_from(per_minute).unwrap_or(i64::MAX),
            max_failure_bp: bp as u64,
            min_finished: ota_policy_sdk::in_range("min_finished", c.min_finished, 1, u64::MAX)?,
            count_rejected: c.count_rejected,
        })
    }
}

impl Breaker {
    fn counts(&self, s: &RolloutStats) -> (u64, u64) {
        let failed = s.failed + if self.count_rejected { s.rejected } else { 0 };
        (s.finished(), failed)
    }
}

impl RatePolicy for Breaker {
    type State = State;

    fn tick(&self, stats: &RolloutStats, s: &mut State) -> Result<Action, PolicyError> {
        let (finished, failed) = self.counts(stats);
        let finished_now = finished.saturating_sub(s.finished_at_trip);
        let failed_now = failed.saturating_sub(s.failed_at_trip);
        if finished_now >= self.min_finished
            && failed_now * 10_000 > self.max_failure_bp * finished_now
        {
            s.finished_at_trip = finished;
            s.failed_at_trip = failed;
            let pct = failed_now as f64 * 100.0 / finished_now as f64;
            return Ok(Action::Pause(format!(
                "circuit breaker: {failed_now} of {finished_now} finished tasks failed ({pct:.1}%), over the limit of {}%",
                self.max_failure_bp as f64 / 100.0
            )));
        }
        if stats.released_total < s.released {
            let n = s.released - stats.released_total;
            s.released -= n;
            s.bucket += i64::try_from(n).unwrap_or(0) * UNITS_PER_PUSH;
        }
        let elapsed = i64::try_from(stats.window_ms).unwrap_or(i64::MAX);
        s.bucket = s
            .bucket
            .saturating_add(self.per_minute.saturating_mul(elapsed));
        let n = u64::try_from(s.bucket / UNITS_PER_PUSH)
            .unwrap_or(0)
            .min(stats.releasable);
        s.bucket -= i64::try_from(n).unwrap_or(0) * UNITS_PER_PUSH;
        let capacity = (self.per_minute * i64::from(stats.tick_ms).max(1)).max(UNITS_PER_PUSH);
        s.bucket = s.bucket.min(capacity);
        s.released += n;
        Ok(Action::Release(n))
    }
}

export_policy!(Breaker);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ota_policy_sdk::testing::Harness;

    const CONFIG: &str = r#"{"per_minute": 120, "max_failure_percent": 10, "min_finished": 50}"#;

    fn minute(released_total: u64, succeeded: u64, failed: u64) -> RolloutStats {
        RolloutStats {
            releasable: 10_000,
            released_total,
            succeeded,
            failed,
            window_ms: 60_000,
            tick_ms: 60_000,
            ..RolloutStats::default()
        }
    }

    #[test]
    fn releases_at_the_constant_rate_while_failures_stay_low() {
        let mut h = Harness::with_config(CONFIG);
        assert_eq!(
            h.tick::<Breaker>(&minute(0, 0, 0)),
            Ok(Action::Release(120))
        );
        // 100 finished, 10 failed: exactly 10 %, not over it
        assert_eq!(
            h.tick::<Breaker>(&minute(120, 90, 10)),
            Ok(Action::Release(120))
        );
    }

    #[test]
    fn pauses_with_the_figures_past_the_threshold_and_not_before_the_minimum() {
        let mut h = Harness::with_config(CONFIG);
        // 49 finished, all failed: too few to judge
        assert_eq!(
            h.tick::<Breaker>(&minute(0, 0, 49)),
            Ok(Action::Release(120))
        );
        let Ok(Action::Pause(why)) = h.tick::<Breaker>(&minute(120, 89, 11)) else {
            panic!("no pause");
        };
        assert!(
            why.contains("11 of 100") && why.contains("11.0%") && why.contains("10%"),
            "{why}"
        );
        // resumed: judged afresh on what finishes from now on
        assert_eq!(
            h.tick::<Breaker>(&minute(120, 100, 11)),
            Ok(Action::Release(120))
        );
    }
}
