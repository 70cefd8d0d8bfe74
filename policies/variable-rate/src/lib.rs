//! The seed's variable push rate (SPEC R5, DESIGN §5) as a rate policy: a token bucket in
//! 1/60,000 of a push, so a rate per minute times elapsed milliseconds is exact; the rate
//! multiplies by the factor each time the counted total (pushes or successes) reaches the
//! next threshold, at the exact point inside a tick, capped at the max. It mirrors the
//! server's built-in `domain::rate::RateState` decision for decision.
//!
//! Config: `{"base": 50, "factor": 2.0, "max": 10000, "threshold": 1000, "count_on": "pushed"}`
//! with the API's limits (base 1–10,000, max 10–10,000 and ≥ base, factor 1.20–5.00 kept to
//! two decimals, threshold 1–100,000, `count_on` `pushed` or `succeeded`).

use ota_policy_sdk::{export_policy, Action, Policy, PolicyError, RatePolicy, RolloutStats};
use serde::{Deserialize, Serialize};

/// Units of allowance per push: a rate per minute accrues `rate × ms` units.
pub const UNITS_PER_PUSH: i64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountOn {
    Pushed,
    Succeeded,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub base: u64,
    pub factor: f64,
    pub max: u64,
    pub threshold: u64,
    #[serde(default = "pushed", alias = "counts")]
    pub count_on: CountOn,
}

fn pushed() -> CountOn {
    CountOn::Pushed
}

/// The validated rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VariableRate {
    pub base: u32,
    pub factor_centi: u32,
    pub max: u32,
    pub threshold: u32,
    pub count_on: CountOn,
}

/// Carried between ticks (the same figures the built-in rate persists).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub started: bool,
    pub per_minute: u32,
    pub next_threshold: Option<u64>,
    pub bucket: i64,
    pub released: u64,
}

fn bad(message: String) -> PolicyError {
    PolicyError::new("bad_config", message)
}

impl Policy for VariableRate {
    type Config = Config;

    fn new(c: Config) -> Result<Self, PolicyError> {
        let base = ota_policy_sdk::in_range("base", c.base, 1, 10_000)?;
        let max = ota_policy_sdk::in_range("max", c.max, 10, 10_000)?;
        if base > max {
            return Err(bad(format!("base {base} must not exceed max {max}")));
        }
        let centi = (c.factor * 100.0).round();
        if !centi.is_finite() || !(120.0..=500.0).contains(&centi) {
            return Err(bad(format!(
                "factor must be 1.20 to 5.00, got {}",
                c.factor
            )));
        }
        let threshold = ota_policy_sdk::in_range("threshold", c.threshold, 1, 100_000)?;
        // in range, checked above
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Self {
            base: narrow(base),
            factor_centi: centi as u32,
            max: narrow(max),
            threshold: narrow(threshold),
            count_on: c.count_on,
        })
    }
}

impl VariableRate {
    /// The state of a rollout that has pushed nothing yet.
    pub fn initial(&self) -> State {
        State {
            started: true,
            per_minute: self.base.min(self.max),
            next_threshold: (self.base < self.max).then_some(u64::from(self.threshold)),
            bucket: 0,
            released: 0,
        }
    }

    /// Multiplies the rate by the factor (capped at the max) for each threshold `count`
    /// has reached.
    fn grow_to(&self, s: &mut State, count: u64) {
        while let Some(next) = s.next_threshold {
            if count < next {
                break;
            }
            let grown = u64::from(s.per_minute) * u64::from(self.factor_centi) / 100;
            s.per_minute = u32::try_from(grown.min(u64::from(self.max))).unwrap_or(self.max);
            s.next_threshold = (s.per_minute < self.max).then(|| next + u64::from(self.threshold));
        }
    }

    /// How many to release now, given `elapsed` ms of allowance, `available` releasable
    /// tasks and the success count; grows at the exact point a pushed count passes a
    /// threshold.
    pub fn release(
        &self,
        s: &mut State,
        elapsed: i64,
        available: u64,
        succeeded: u64,
        tick: i64,
    ) -> u64 {
        let on_pushes = self.count_on == CountOn::Pushed;
        if !on_pushes {
            self.grow_to(s, succeeded);
        }
        let mut remaining = elapsed.max(0);
        let mut released = 0u64;
        loop {
            let per_ms = i64::from(s.per_minute);
            let room = available - released;
            if let (true, Some(next)) = (on_pushes, s.next_threshold) {
                let need = next.saturating_sub(s.released);
                if need > 0 && need <= room && per_ms > 0 {
                    let need_units = i64::try_from(need).unwrap_or(i64::MAX) * UNITS_PER_PUSH;
                    let missing = (need_units - s.bucket).max(0);
                    let ms = (missing + per_ms - 1) / per_ms;
                    if ms <= remaining {
                        s.bucket += per_ms * ms - need_units;
                        remaining -= ms;
                        s.released += need;
                        released += need;
                        self.grow_to(s, s.released);
                        continue;
                    }
                }
            }
            s.bucket = s.bucket.saturating_add(per_ms.saturating_mul(remaining));
            let whole = u64::try_from(s.bucket / UNITS_PER_PUSH).unwrap_or(0);
            let n = whole.min(room);
            s.bucket -= i64::try_from(n).unwrap_or(0) * UNITS_PER_PUSH;
            // at most one tick's worth (and one push) is kept, so a stall cannot hoard
            let capacity = (i64::from(s.per_minute) * tick.max(1)).max(UNITS_PER_PUSH);
            s.bucket = s.bucket.min(capacity);
            s.released += n;
            released += n;
            return released;
        }
    }
}

impl RatePolicy for VariableRate {
    type State = State;

    fn tick(&self, stats: &RolloutStats, s: &mut State) -> Result<Action, PolicyError> {
        if !s.started {
            *s = self.initial();
        }
        // Tasks asked for but gone when the host released them come back as allowance, and
        // the count goes back too, as the built-in rate does.
        if stats.released_total < s.released {
            let n = s.released - stats.released_total;
            s.released -= n;
            s.bucket += i64::try_from(n).unwrap_or(0) * UNITS_PER_PUSH;
        }
        let elapsed = i64::try_from(stats.window_ms).unwrap_or(i64::MAX);
        let n = self.release(
            s,
            elapsed,
            stats.releasable,
            stats.succeeded,
            i64::from(stats.tick_ms),
        );
        Ok(Action::Release(n))
    }
}

export_policy!(VariableRate);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ota_policy_sdk::testing::Harness;

    const SEED: &str =
        r#"{"base": 50, "factor": 2.0, "max": 10000, "threshold": 1000, "count_on": "pushed"}"#;

    /// Cumulative releases after each of `secs` one-second ticks with unlimited devices.
    fn run(config: &str, secs: usize) -> Vec<u64> {
        let mut h = Harness::with_config(config);
        let mut total = 0;
        (0..secs)
            .map(|_| {
                let stats = RolloutStats {
                    releasable: u64::MAX / 2,
                    waiting: u64::MAX / 2,
                    released_total: total,
                    window_ms: 1_000,
                    tick_ms: 1_000,
                    ..RolloutStats::default()
                };
                match h.tick::<VariableRate>(&stats).unwrap() {
                    Action::Release(n) => total += n,
                    other => panic!("{other:?}"),
                }
                total
            })
            .collect()
    }

    #[test]
    fn the_seed_worked_example_tick_by_tick() {
        let t = run(SEED, 2_400);
        let at = |sec: usize| t[sec - 1];
        assert_eq!(at(1_199), 999);
        assert_eq!(at(1_200), 1_000);
        assert_eq!(at(1_799), 1_998);
        assert_eq!(at(1_800), 2_000);
        assert_eq!(at(2_100), 3_000);
        assert_eq!(at(2_250), 4_000);
        assert_eq!(at(2_325), 5_000);
        assert_eq!(at(2_362), 5_986);
        assert_eq!(at(2_363), 6_026);
    }

    #[test]
    fn counted_on_successes_grows_with_successes_only() {
        let mut h = Harness::with_config(
            r#"{"base": 60, "factor": 2.0, "max": 10000, "threshold": 100, "count_on": "succeeded"}"#,
        );
        let mut stats = RolloutStats {
            releasable: 1_000_000,
            window_ms: 60_000,
            tick_ms: 60_000,
            ..RolloutStats::default()
        };
        assert_eq!(h.tick::<VariableRate>(&stats), Ok(Action::Release(60)));
        stats.released_total = 60;
        stats.succeeded = 100;
        assert_eq!(h.tick::<VariableRate>(&stats), Ok(Action::Release(120)));
    }

    #[test]
    fn tasks_that_were_gone_are_refunded() {
        let mut h = Harness::with_config(SEED);
        let stats = RolloutStats {
            releasable: 10,
            window_ms: 60_000,
            tick_ms: 1_000,
            ..RolloutStats::default()
        };
        // 50 accrued, 10 released, one push's worth kept
        assert_eq!(h.tick::<VariableRate>(&stats), Ok(Action::Release(10)));
        // the host released only 4 of them; the 6 come back beside the one kept
        let next = RolloutStats {
            released_total: 4,
            window_ms: 0,
            ..stats
        };
        assert_eq!(h.tick::<VariableRate>(&next), Ok(Action::Release(7)));
    }

    #[test]
    fn config_outside_the_api_limits_is_refused() {
        for bad in [
            r#"{"base": 0, "factor": 2.0, "max": 100, "threshold": 10}"#,
            r#"{"base": 200, "factor": 2.0, "max": 100, "threshold": 10}"#,
            r#"{"base": 5, "factor": 1.19, "max": 100, "threshold": 10}"#,
            r#"{"base": 5, "factor": 5.01, "max": 100, "threshold": 10}"#,
            r#"{"base": 5, "factor": 2.0, "max": 10001, "threshold": 10}"#,
            r#"{"base": 5, "factor": 2.0, "max": 100, "threshold": 0}"#,
            r#"{"base": 5, "factor": 2.0, "max": 100}"#,
        ] {
            let e = Harness::with_config(bad)
                .tick::<VariableRate>(&RolloutStats::default())
                .unwrap_err();
            assert_eq!(e.code, "bad_config", "{bad}");
        }
    }
}
