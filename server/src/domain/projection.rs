//! Campaign projection (SPEC G7): when each of a rollout's devices would be pushed under its
//! schedule, maintenance window, waves, rate and concurrency, computed with the same rules
//! the engine pushes by ([`RolloutSpec::push_time_between`], [`RateState::release`]), in
//! simulated minutes. No I/O.
//!
//! What it cannot know it assumes, and says so: every device is online, succeeds, and holds
//! a concurrency slot for `install` after its push (zero: it succeeds at once). Exact (to
//! the push) when neither the device count nor the concurrency limit binds, which is the
//! seeds' worked example; otherwise to the minute.

use super::*;
use crate::clock::Millis;
use std::collections::VecDeque;

/// One minute's step; the engine's tick is finer, but a rate's allowance is exact at any
/// step (it is clipped to the schedule and windows, never rounded).
pub const STEP: Millis = 60_000;

/// The longest projection: a start at most 7 days ahead and a run of at most 30 days.
pub const HORIZON: Millis = 37 * 24 * 60 * 60_000;

/// What the projection assumes of devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Assume {
    /// How long a device holds a concurrency slot after its push.
    pub install: Millis,
}

/// Why the projection stopped before every device was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Every device is pushed.
    Done,
    /// The rollout's end came (the rest would be cancelled).
    Ended,
    /// A wave that advances only by hand is finished.
    ManualGate { wave: u32 },
    /// Nothing more within the horizon (a window that never opens, a far end).
    Horizon,
}

/// The projected timeline: cumulative pushes at the end of each minute that pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    pub points: Vec<(Millis, u64)>,
    pub pushed: u64,
    pub stop: Stop,
    /// When the last push happens, if any.
    pub last_push_at: Option<Millis>,
}

/// Projects the pushes of `devices` devices (split into waves by `spec.waves[..].tasks` when
/// it has waves) from `from` on.
pub fn project(spec: &RolloutSpec, devices: u64, from: Millis, assume: Assume) -> Projection {
    let waves: Vec<u64> = if spec.waves.is_empty() {
        vec![devices]
    } else {
        spec.waves.iter().map(|w| w.tasks).collect()
    };
    let staged = !spec.waves.is_empty();
    let mut wave: usize = 0;
    let mut waiting = waves.clone();
    let mut pushed_in_wave = vec![0u64; waves.len()];
    let mut succeeded_in_wave = vec![0u64; waves.len()];
    let mut succeeded_total = 0u64;
    let mut in_flight: VecDeque<(Millis, usize, u64)> = VecDeque::new();
    let current = |w: usize| if staged { w as u32 + 1 } else { 0 };
    let mut rate = spec.rate_in(current(0)).map(|r| RateState::initial(&r));
    let start = spec.schedule.start_at.map_or(from, |s| s.max(from));
    let mut t = start;
    let mut out = Projection {
        points: vec![],
        pushed: 0,
        stop: Stop::Horizon,
        last_push_at: None,
    };
    while t < from + HORIZON {
        let next = t + STEP;
        // devices that finish installing by `next` free their slot and count as succeeded
        while in_flight.front().is_some_and(|(at, _, _)| *at <= next) {
            if let Some((_, w, n)) = in_flight.pop_front() {
                succeeded_in_wave[w] += n;
                succeeded_total += n;
            }
        }
        // G3: the gate of the current wave
        if staged && wave + 1 < waves.len() {
            let w = &spec.waves[wave];
            let gate_met = w.threshold_reached(succeeded_in_wave[wave]);
            match w.advance {
                WaveAdvance::Auto if gate_met => {
                    let had_own = w.rate.is_some();
                    wave += 1;
                    if had_own || spec.waves[wave].rate.is_some() {
                        rate = spec.rate_in(current(wave)).map(|r| RateState::initial(&r));
                    }
                }
                WaveAdvance::Manual if waiting[wave] == 0 && in_flight.is_empty() => {
                    out.stop = Stop::ManualGate {
                        wave: current(wave),
                    };
                    return out;
                }
                _ => {}
            }
        }
        if spec
            .schedule
            .end_at
            .is_some_and(|e| !spec.schedule.daily_repeat && t >= e)
        {
            out.stop = Stop::Ended;
            return out;
        }
        let allowed = spec.push_time_between(t, next);
        let available: u64 = waiting[..=wave].iter().sum();
        if available == 0 && in_flight.is_empty() && (!staged || wave + 1 >= waves.len()) {
            out.stop = Stop::Done;
            return out;
        }
        if allowed > 0 && available > 0 {
            let in_use: u64 = in_flight.iter().map(|(_, _, n)| n).sum();
            let room = spec
                .concurrency_in(current(wave))
                .map_or(u64::MAX, |c| u64::from(c).saturating_sub(in_use));
            let take = available.min(room);
            let own = staged && spec.waves[wave].rate.is_some();
            let counted = if own {
                succeeded_in_wave[wave]
            } else {
                succeeded_total
            };
            let n = match (&mut rate, spec.rate_in(current(wave))) {
                (Some(state), Some(r)) => state.release(&r, allowed, take, counted, STEP),
                _ => take,
            };
            // released oldest wave first, as the engine takes tasks in order
            let mut left = n;
            for (w, slot) in waiting.iter_mut().enumerate().take(wave + 1) {
                let k = left.min(*slot);
                if k == 0 {
                    continue;
                }
                *slot -= k;
                left -= k;
                pushed_in_wave[w] += k;
                in_flight.push_back((next + assume.install, w, k));
            }
            if n > 0 {
                out.pushed += n;
                out.points.push((next, out.pushed));
                out.last_push_at = Some(next);
            }
        }
        t = next;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(rate: Option<PushRate>) -> RolloutSpec {
        RolloutRequest::new(UpdateMethod::Static, Scope::All)
            .validate(
                &PackageFacts {
                    kind: PackageKind::Full,
                    source_version: None,
                    status: PackageStatus::NoNeed,
                    file_sizes: vec![1],
                },
                0,
            )
            .map(|mut s| {
                s.rate = rate;
                s
            })
            .unwrap()
    }

    fn at(p: &Projection, minute: i64) -> u64 {
        p.points
            .iter()
            .take_while(|(t, _)| *t <= minute * STEP)
            .last()
            .map_or(0, |(_, n)| *n)
    }

    #[test]
    fn the_seed_worked_example_minute_by_minute() {
        let s = spec(Some(PushRate::Variable {
            base: 50,
            factor_centi: 200,
            max: 10_000,
            threshold: 1_000,
            count_on: RateCountOn::Pushed,
        }));
        let p = project(&s, 20_000, 0, Assume::default());
        assert_eq!(at(&p, 1), 50);
        assert_eq!(at(&p, 20), 1_000);
        assert_eq!(at(&p, 30), 2_000);
        assert_eq!(at(&p, 35), 3_000);
        assert_eq!(p.stop, Stop::Done);
        assert_eq!(p.pushed, 20_000);
    }

    #[test]
    fn concurrency_binds_with_an_install_time() {
        let mut s = spec(None);
        s.max_concurrency = Some(10);
        let p = project(&s, 100, 0, Assume { install: 5 * STEP });
        // ten every five minutes
        assert_eq!(at(&p, 1), 10);
        assert_eq!(at(&p, 5), 10);
        assert_eq!(at(&p, 6), 20);
        assert_eq!(p.last_push_at, Some(46 * STEP));
    }

    #[test]
    fn a_manual_gate_stops_the_projection() {
        let mut s = spec(None);
        s.waves = vec![
            Wave {
                size: WaveSize::Percent(10),
                advance: WaveAdvance::Auto,
                success_threshold: 100,
                rate: None,
                max_concurrency: None,
                tasks: 10,
            },
            Wave {
                size: WaveSize::Percent(20),
                advance: WaveAdvance::Manual,
                success_threshold: 100,
                rate: Some(PushRate::Constant { per_minute: 10 }),
                max_concurrency: None,
                tasks: 20,
            },
            Wave {
                size: WaveSize::Rest,
                advance: WaveAdvance::Auto,
                success_threshold: 100,
                rate: None,
                max_concurrency: None,
                tasks: 70,
            },
        ];
        let p = project(&s, 100, 0, Assume::default());
        assert_eq!(at(&p, 1), 10);
        assert_eq!(at(&p, 2), 20);
        assert_eq!(at(&p, 3), 30);
        assert_eq!(p.pushed, 30);
        assert_eq!(p.stop, Stop::ManualGate { wave: 2 });
    }
}
