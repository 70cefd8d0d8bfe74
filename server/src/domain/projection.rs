//! Campaign projection and dry run (SPEC G7, W5): when each of a rollout's devices would be
//! pushed under its schedule, maintenance window, waves, rate, concurrency and the tenant's
//! rate and approval policies, computed with the same rules the engine pushes by
//! ([`RolloutSpec::push_time_between`], [`RateState::release`], the approval's deferrals),
//! in simulated minutes. The policies are asked through [`Hooks`]; this module does no I/O.
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
    /// W5: the rate policy paused the rollout, or its policies failed too often in a row.
    Paused { at: Millis, reason: String },
    /// W5: the rate policy aborted the rollout.
    Aborted { at: Millis, reason: String },
}

/// What a rate policy sees at a step of the projection (W5), as the engine would pass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInput {
    /// Not released yet (deferred ones included).
    pub waiting: u64,
    /// What may be released now at most (concurrency and deferrals applied).
    pub releasable: u64,
    /// Pushed and still installing.
    pub pushed: u64,
    pub succeeded: u64,
    pub rejected: u64,
    pub released_total: u64,
    pub now: Millis,
    pub elapsed: Millis,
    /// Push time in this step (schedule and windows applied).
    pub window: Millis,
    pub step: Millis,
}

/// A rate policy's decision at a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateStep {
    Release(u64),
    Pause(String),
    Abort(String),
}

/// The tenant's policies as a projection asks them (W5); the built-in behaviour where a
/// hook answers `None`. An `Err` is the policy's failure: nothing is released on it, and
/// after `max_failures` in a row the projection stops as the engine would pause.
pub trait Hooks {
    fn rate(&mut self, input: &RateInput) -> Option<Result<RateStep, String>>;
    /// Verdicts on the tasks at these release positions (0-based, in release order).
    fn approve(&mut self, at: Millis, positions: &[u64]) -> Option<Result<Vec<Verdict>, String>>;
    fn max_failures(&self) -> u32;
}

/// No policies: the built-in rate, every task approved.
pub struct BuiltIn;

impl Hooks for BuiltIn {
    fn rate(&mut self, _: &RateInput) -> Option<Result<RateStep, String>> {
        None
    }
    fn approve(&mut self, _: Millis, _: &[u64]) -> Option<Result<Vec<Verdict>, String>> {
        None
    }
    fn max_failures(&self) -> u32 {
        u32::MAX
    }
}

/// Approval calls per step at most, as the engine's per tick.
const APPROVAL_ROUNDS: usize = 8;

/// The projected timeline: cumulative pushes at the end of each minute that pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    pub points: Vec<(Millis, u64)>,
    pub pushed: u64,
    pub stop: Stop,
    /// When the last push happens, if any.
    pub last_push_at: Option<Millis>,
    /// W5: tasks an approval policy rejected.
    pub rejected: u64,
    /// For each release position of the asked page: when it is pushed, or why it never is.
    pub page: Vec<Option<Result<Millis, String>>>,
}

/// Projects the pushes of `devices` devices (split into waves by `spec.waves[..].tasks` when
/// it has waves) from `from` on, with the built-in rate and no approval.
pub fn project(spec: &RolloutSpec, devices: u64, from: Millis, assume: Assume) -> Projection {
    project_with(spec, devices, from, assume, &mut BuiltIn, 0..0)
}

/// The devices not yet released, in release order: those whose deferral ran out (lowest
/// first, as the engine takes tasks by id), then the never-asked ones from `cursor`.
struct Pool {
    cursor: u64,
    due: std::collections::BTreeSet<u64>,
    deferred: std::collections::BinaryHeap<std::cmp::Reverse<(Millis, u64)>>,
}

impl Pool {
    fn available(&self, end: u64) -> u64 {
        self.due.range(..end).count() as u64 + end.saturating_sub(self.cursor)
    }

    /// The first `n` available before `end`, without taking them.
    fn peek(&self, end: u64, n: u64) -> Vec<u64> {
        let mut out: Vec<u64> = self.due.range(..end).take(n as usize).copied().collect();
        let more = n.saturating_sub(out.len() as u64);
        out.extend(self.cursor..end.min(self.cursor + more));
        out
    }

    /// Marks `p` as dealt with (released, deferred or rejected).
    fn take(&mut self, p: u64) {
        if !self.due.remove(&p) && p >= self.cursor {
            // positions are taken in order past the cursor
            self.cursor = p + 1;
        }
    }
}

/// As [`project`], asking `hooks` where the rollout has policies (W5), and noting when each
/// release position in `page` is pushed.
pub fn project_with(
    spec: &RolloutSpec,
    devices: u64,
    from: Millis,
    assume: Assume,
    hooks: &mut dyn Hooks,
    page: std::ops::Range<u64>,
) -> Projection {
    let waves: Vec<u64> = if spec.waves.is_empty() {
        vec![devices]
    } else {
        spec.waves.iter().map(|w| w.tasks).collect()
    };
    // each wave is one run of release positions
    let ends: Vec<u64> = waves
        .iter()
        .scan(0, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect();
    let wave_of = |p: u64| ends.partition_point(|e| *e <= p);
    let staged = !spec.waves.is_empty();
    let mut wave: usize = 0;
    let mut waiting = waves.clone();
    let mut succeeded_in_wave = vec![0u64; waves.len()];
    let mut succeeded_total = 0u64;
    let mut in_flight: VecDeque<(Millis, usize, u64)> = VecDeque::new();
    let current = |w: usize| if staged { w as u32 + 1 } else { 0 };
    let mut rate = spec.rate_in(current(0)).map(|r| RateState::initial(&r));
    let start = spec.schedule.start_at.map_or(from, |s| s.max(from));
    let mut t = start;
    let mut pool = Pool {
        cursor: 0,
        due: Default::default(),
        deferred: Default::default(),
    };
    let mut failures = 0u32;
    let mut out = Projection {
        points: vec![],
        pushed: 0,
        stop: Stop::Horizon,
        last_push_at: None,
        rejected: 0,
        page: vec![None; (page.end - page.start) as usize],
    };
    let note = |out: &mut Projection, p: u64, what: Result<Millis, String>| {
        if page.contains(&p) {
            out.page[(p - page.start) as usize] = Some(what);
        }
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
        // deferrals that run out by `next` make their tasks releasable again
        while pool
            .deferred
            .peek()
            .is_some_and(|std::cmp::Reverse((at, _))| *at <= next)
        {
            if let Some(std::cmp::Reverse((_, p))) = pool.deferred.pop() {
                pool.due.insert(p);
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
        let left: u64 = waiting[..=wave].iter().sum();
        if left == 0 && in_flight.is_empty() && (!staged || wave + 1 >= waves.len()) {
            out.stop = Stop::Done;
            return out;
        }
        if allowed > 0 {
            let end = ends[wave];
            let available = pool.available(end);
            let in_use: u64 = in_flight.iter().map(|(_, _, n)| n).sum();
            let room = spec
                .concurrency_in(current(wave))
                .map_or(u64::MAX, |c| u64::from(c).saturating_sub(in_use));
            let take = available.min(room);
            let input = RateInput {
                waiting: left,
                releasable: take,
                pushed: in_use,
                succeeded: succeeded_total,
                rejected: 0,
                released_total: out.pushed,
                now: next,
                elapsed: next - start,
                window: allowed,
                step: STEP,
            };
            let n = match hooks.rate(&input) {
                None => {
                    let own = staged && spec.waves[wave].rate.is_some();
                    let counted = if own {
                        succeeded_in_wave[wave]
                    } else {
                        succeeded_total
                    };
                    match (&mut rate, spec.rate_in(current(wave))) {
                        (Some(state), Some(r)) => state.release(&r, allowed, take, counted, STEP),
                        _ => take,
                    }
                }
                Some(Ok(RateStep::Release(k))) => {
                    failures = 0;
                    k.min(take)
                }
                Some(Ok(RateStep::Pause(reason))) => {
                    out.stop = Stop::Paused { at: next, reason };
                    return out;
                }
                Some(Ok(RateStep::Abort(reason))) => {
                    out.stop = Stop::Aborted { at: next, reason };
                    return out;
                }
                Some(Err(why)) => {
                    failures += 1;
                    if failures >= hooks.max_failures() {
                        out.stop = Stop::Paused {
                            at: next,
                            reason: format!(
                                "the rate policy failed {failures} times in a row; the last: {why}"
                            ),
                        };
                        return out;
                    }
                    0
                }
            };
            // which of the releasable go: all, or what the approval policy approves
            let mut released: Vec<u64> = Vec::new();
            let mut rounds = 0;
            while (released.len() as u64) < n && rounds < APPROVAL_ROUNDS {
                rounds += 1;
                let ask = pool.peek(end, n - released.len() as u64);
                if ask.is_empty() {
                    break;
                }
                match hooks.approve(next, &ask) {
                    None => {
                        for p in ask {
                            pool.take(p);
                            released.push(p);
                        }
                    }
                    Some(Ok(verdicts)) => {
                        failures = 0;
                        for (p, v) in ask.into_iter().zip(verdicts) {
                            pool.take(p);
                            match v {
                                Verdict::Approve => released.push(p),
                                Verdict::Defer(s) => pool
                                    .deferred
                                    .push(std::cmp::Reverse((next + i64::from(s) * 1000, p))),
                                Verdict::Reject(why) => {
                                    waiting[wave_of(p)] -= 1;
                                    out.rejected += 1;
                                    note(&mut out, p, Err(why));
                                }
                            }
                        }
                    }
                    Some(Err(why)) => {
                        failures += 1;
                        if failures >= hooks.max_failures() {
                            out.stop = Stop::Paused {
                                at: next,
                                reason: format!("the approval policy failed {failures} times in a row; the last: {why}"),
                            };
                            return out;
                        }
                        break;
                    }
                }
            }
            let k = released.len() as u64;
            if k < n {
                if let Some(state) = &mut rate {
                    state.refund(n - k);
                }
            }
            let mut by_wave = vec![0u64; waves.len()];
            for p in released {
                by_wave[wave_of(p)] += 1;
                note(&mut out, p, Ok(next));
            }
            for (w, k) in by_wave.into_iter().enumerate().filter(|(_, k)| *k > 0) {
                waiting[w] -= k;
                in_flight.push_back((next + assume.install, w, k));
            }
            if k > 0 {
                out.pushed += k;
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
