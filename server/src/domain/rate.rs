//! Push-rate arithmetic (SPEC R4, R5; DESIGN §5) in exact integers: a token bucket whose unit
//! is 1/60,000 of a push, so that a rate per minute times elapsed milliseconds is a whole
//! number of units and no remainder is ever rounded away (50 per minute for 20 minutes is
//! exactly 1,000 pushes). A variable rate counted on pushes grows at the exact instant its
//! count passes a threshold, even inside one tick. No I/O.

use super::{PushRate, RateCountOn};
use crate::clock::Millis;

/// Units of allowance per push: a rate per minute accrues `rate × ms` units.
pub const UNITS_PER_PUSH: i64 = 60_000;

/// A rollout's rate state, persisted with it so a restart continues exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// The current rate, pushes per minute.
    pub per_minute: u32,
    /// The counted total at which a variable rate grows next (`None`: it never grows again).
    pub next_threshold: Option<u64>,
    /// Unused allowance, in units.
    pub bucket: i64,
    /// Pushes released so far.
    pub released: u64,
}

impl RateState {
    /// The state of a rollout that has pushed nothing yet.
    pub fn initial(rate: &PushRate) -> Self {
        match *rate {
            PushRate::Constant { per_minute } => Self {
                per_minute,
                next_threshold: None,
                bucket: 0,
                released: 0,
            },
            PushRate::Variable {
                base,
                max,
                threshold,
                ..
            } => Self {
                per_minute: base.min(max),
                next_threshold: (base < max).then_some(u64::from(threshold)),
                bucket: 0,
                released: 0,
            },
        }
    }

    /// The most allowance left unused: one tick's worth, and at least one push, so a slow
    /// rate still accrues to a whole push while a stalled rollout cannot hoard a burst.
    fn capacity(&self, tick: Millis) -> i64 {
        (i64::from(self.per_minute) * tick.max(1)).max(UNITS_PER_PUSH)
    }

    /// Multiplies the rate by the factor (capped at the max) for each threshold `count` has
    /// reached.
    fn grow_to(&mut self, rate: &PushRate, count: u64) {
        let PushRate::Variable {
            factor_centi,
            max,
            threshold,
            ..
        } = *rate
        else {
            return;
        };
        while let Some(next) = self.next_threshold {
            if count < next {
                break;
            }
            let grown = u64::from(self.per_minute) * u64::from(factor_centi) / 100;
            self.per_minute = u32::try_from(grown.min(u64::from(max))).unwrap_or(max);
            self.next_threshold = (self.per_minute < max).then(|| next + u64::from(threshold));
        }
    }

    /// Accrues `elapsed` milliseconds of allowance and takes up to `available` pushes from it;
    /// returns how many may be released now. `succeeded` is the rollout's success count, for
    /// a variable rate counted on successes; one counted on pushes counts these releases and
    /// grows at the exact point inside the interval where the count passes its threshold.
    pub fn release(
        &mut self,
        rate: &PushRate,
        elapsed: Millis,
        available: u64,
        succeeded: u64,
        tick: Millis,
    ) -> u64 {
        let on_pushes = matches!(
            rate,
            PushRate::Variable {
                count_on: RateCountOn::Pushed,
                ..
            }
        );
        if !on_pushes {
            self.grow_to(rate, succeeded);
        }
        let mut remaining = elapsed.max(0);
        let mut released = 0u64;
        loop {
            let per_ms = i64::from(self.per_minute);
            let room = available - released;
            // the next threshold, when this interval could reach it
            if let (true, Some(next)) = (on_pushes, self.next_threshold) {
                let need = next.saturating_sub(self.released);
                if need > 0 && need <= room && per_ms > 0 {
                    let need_units = i64::try_from(need).unwrap_or(i64::MAX) * UNITS_PER_PUSH;
                    let missing = (need_units - self.bucket).max(0);
                    let ms = (missing + per_ms - 1) / per_ms;
                    if ms <= remaining {
                        self.bucket += per_ms * ms - need_units;
                        remaining -= ms;
                        self.released += need;
                        released += need;
                        self.grow_to(rate, self.released);
                        continue;
                    }
                }
            }
            self.bucket = self.bucket.saturating_add(per_ms.saturating_mul(remaining));
            let whole = u64::try_from(self.bucket / UNITS_PER_PUSH).unwrap_or(0);
            let n = whole.min(room);
            self.bucket -= i64::try_from(n).unwrap_or(0) * UNITS_PER_PUSH;
            self.bucket = self.bucket.min(self.capacity(tick));
            self.released += n;
            released += n;
            return released;
        }
    }

    /// The state after the rate of a running rollout changed (R6): the allowance and the
    /// count stay; a variable rate starts again from its new base, grown once for each of
    /// its new thresholds the count already passed.
    pub fn rebased(&self, rate: &PushRate, succeeded: u64) -> Self {
        let mut s = Self::initial(rate);
        s.bucket = self.bucket;
        s.released = self.released;
        let count = match rate {
            PushRate::Variable {
                count_on: RateCountOn::Succeeded,
                ..
            } => succeeded,
            _ => self.released,
        };
        s.grow_to(rate, count);
        s
    }

    /// Gives back allowance for pushes taken but not released (the tasks were gone when the
    /// release ran); the count goes back too, so a threshold is never passed on their behalf
    /// twice.
    pub fn refund(&mut self, n: u64) {
        let n = n.min(self.released);
        self.released -= n;
        self.bucket += i64::try_from(n).unwrap_or(0) * UNITS_PER_PUSH;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TICK: Millis = 1_000;

    fn variable(count_on: RateCountOn) -> PushRate {
        PushRate::Variable {
            base: 50,
            factor_centi: 200,
            max: 10_000,
            threshold: 1_000,
            count_on,
        }
    }

    /// Runs `secs` one-second ticks with unlimited devices; cumulative pushes after each.
    fn run(rate: &PushRate, secs: u64) -> Vec<u64> {
        let mut s = RateState::initial(rate);
        let mut total = 0;
        (0..secs)
            .map(|_| {
                total += s.release(rate, TICK, u64::MAX / 2, 0, TICK);
                total
            })
            .collect()
    }

    // The seed's worked example, tick by tick: 1,000 at minute 20, 2,000 at 30, 3,000 at
    // 35, 4,000 at 37.5, then 10,000 per minute once the doubling passes the max. Part of
    // R5 (the API-level test in simulated time names it).
    #[test]
    fn the_seed_worked_example_is_exact() {
        let r = variable(RateCountOn::Pushed);
        let t = run(&r, 3_000);
        let at = |sec: usize| t[sec - 1];
        assert_eq!(at(1_199), 999);
        assert_eq!(at(1_200), 1_000);
        assert_eq!(at(1_800), 2_000);
        assert_eq!(at(1_799), 1_998);
        assert_eq!(at(2_100), 3_000);
        assert_eq!(at(2_250), 4_000);
        assert_eq!(at(2_325), 5_000); // 800 per minute for 75 s
                                      // 6,000 at 2,362.5 s: inside a tick, then 3,200 per minute for the rest of it
        assert_eq!(at(2_362), 5_986);
        assert_eq!(at(2_363), 6_026);
        // the rate caps at 10,000 per minute: 166 or 167 a second
        let late: Vec<u64> = (2_600..2_660).map(|s| at(s + 1) - at(s)).collect();
        assert_eq!(late.iter().sum::<u64>(), 10_000);
        assert!(late.iter().all(|d| *d == 166 || *d == 167), "{late:?}");
    }

    #[test]
    fn constant_rates_at_both_limits_are_exact() {
        for per_minute in [10u32, 10_000] {
            let r = PushRate::Constant { per_minute };
            let t = run(&r, 600);
            for m in 1..=10usize {
                assert_eq!(t[m * 60 - 1], u64::from(per_minute) * m as u64);
            }
        }
        // 10 per minute: one push every 6 s, never early
        let t = run(&PushRate::Constant { per_minute: 10 }, 12);
        assert_eq!(t[4], 0);
        assert_eq!(t[5], 1);
        assert_eq!(t[11], 2);
    }

    #[test]
    fn counted_on_successes_grows_only_with_successes() {
        let r = variable(RateCountOn::Succeeded);
        let mut s = RateState::initial(&r);
        let mut pushed = 0;
        for _ in 0..1_200 {
            pushed += s.release(&r, TICK, u64::MAX / 2, 0, TICK);
        }
        assert_eq!(pushed, 1_000);
        assert_eq!(s.per_minute, 50, "pushes alone do not grow it");
        s.release(&r, TICK, u64::MAX / 2, 1_000, TICK);
        assert_eq!(s.per_minute, 100);
        s.release(&r, TICK, u64::MAX / 2, 3_500, TICK);
        assert_eq!(
            s.per_minute, 400,
            "two thresholds passed at once: two doublings"
        );
    }

    #[test]
    fn a_stalled_rollout_does_not_hoard_allowance() {
        let r = PushRate::Constant { per_minute: 600 };
        let mut s = RateState::initial(&r);
        // an hour with nothing to release
        for _ in 0..3_600 {
            assert_eq!(s.release(&r, TICK, 0, 0, TICK), 0);
        }
        // then at most one tick's worth at once
        assert_eq!(s.release(&r, TICK, 1_000, 0, TICK), 20);
    }

    #[test]
    fn refund_returns_allowance_and_count() {
        let r = PushRate::Constant { per_minute: 600 };
        let mut s = RateState::initial(&r);
        assert_eq!(s.release(&r, TICK, 100, 0, TICK), 10);
        s.refund(4);
        assert_eq!(s.released, 6);
        assert_eq!(s.release(&r, 0, 100, 0, TICK), 4);
    }

    #[test]
    fn a_changed_rate_keeps_the_count_and_regrows_from_its_base() {
        let r = variable(RateCountOn::Pushed);
        let mut s = RateState::initial(&r);
        for _ in 0..1_800 {
            s.release(&r, TICK, u64::MAX / 2, 0, TICK);
        }
        assert_eq!((s.released, s.per_minute), (2_000, 200));
        let slower = PushRate::Variable {
            base: 10,
            factor_centi: 300,
            max: 1_000,
            threshold: 500,
            count_on: RateCountOn::Pushed,
        };
        let t = s.rebased(&slower, 0);
        // 2,000 pushed passes 500, 1,000, 1,500 and 2,000: 10 → 30 → 90 → 270 → 810
        assert_eq!(
            (t.released, t.per_minute, t.next_threshold),
            (2_000, 810, Some(2_500))
        );
        let c = s.rebased(&PushRate::Constant { per_minute: 77 }, 0);
        assert_eq!(
            (c.per_minute, c.next_threshold, c.released),
            (77, None, 2_000)
        );
    }

    #[test]
    fn factor_and_cap() {
        let r = PushRate::Variable {
            base: 9_000,
            factor_centi: 120,
            max: 10_000,
            threshold: 1,
            count_on: RateCountOn::Pushed,
        };
        let mut s = RateState::initial(&r);
        s.release(&r, TICK, 1_000, 0, TICK);
        assert_eq!(s.per_minute, 10_000);
        assert_eq!(s.next_threshold, None);
    }
}
