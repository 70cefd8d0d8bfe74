//! Safer-rollout rules that neither seed has (SPEC G1, G3, G4, G6): abort rules on failure
//! rates, waves with success gates, and maintenance windows from a cron expression in a named
//! time zone. Pure arithmetic over counts and instants; the store keeps the counts, the
//! scheduler asks these rules. No I/O.

use super::task::word_enum;
use super::*;
use crate::clock::Millis;
use chrono::{TimeZone, Utc};
use std::str::FromStr;

word_enum!(
    /// G1: which finished tasks an abort rule counts as failures.
    AbortKind { Failed, TimedOut, Rejected, Any }
);
word_enum!(
    /// G1: what an abort rule does when it fires.
    AbortAction { Pause, Cancel }
);
word_enum!(
    /// G3: how the rollout leaves a wave for the next one.
    WaveAdvance {
        /// As soon as the wave's success threshold is reached.
        Auto,
        /// Only by hand (`POST /v1/rollouts/{id}/waves/advance`), whatever the threshold.
        Manual,
    }
);
word_enum!(
    /// G4: what a window's close does to tasks not yet pushed.
    WindowClose {
        /// They wait for the next window.
        Wait,
        /// They are cancelled.
        Cancel,
    }
);

pub mod safety_limits {
    /// G1: abort rules on one rollout.
    pub const MAX_ABORT_RULES: usize = 10;
    /// G1: threshold percentage in hundredths (0.01 % .. 100 %).
    pub const THRESHOLD_CENTI: (u32, u32) = (1, 10_000);
    /// G1: finished tasks before a rule applies.
    pub const MIN_FINISHED: (u64, u64) = (1, 1_000_000);
    /// G3: waves of one rollout (none, or 2 to 10).
    pub const WAVES: (usize, usize) = (2, 10);
    /// G3: one wave's count.
    pub const WAVE_COUNT: (u64, u64) = (1, 1_000_000);
    /// G4: a window's length, minutes (up to a week, for weekend windows).
    pub const WINDOW_MINUTES: (i64, i64) = (1, 7 * 24 * 60);
}
use safety_limits as SL;

/// G1: the finished-task counts a rollout keeps as its tasks finish (a failure that will
/// be retried is not finished yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub rejected: u64,
}

impl Outcomes {
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.timed_out + self.rejected
    }

    fn of(&self, kind: AbortKind) -> u64 {
        match kind {
            AbortKind::Failed => self.failed,
            AbortKind::TimedOut => self.timed_out,
            AbortKind::Rejected => self.rejected,
            AbortKind::Any => self.failed + self.timed_out + self.rejected,
        }
    }
}

/// G1: stop a rollout when failures of `kind` reach `threshold_centi` hundredths of a
/// percent of its finished tasks, once at least `min_finished` have finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortRule {
    pub kind: AbortKind,
    pub threshold_centi: u32,
    pub min_finished: u64,
    pub action: AbortAction,
    /// When it fired; a fired rule does not fire again (a resumed rollout goes on until the
    /// rules are changed).
    pub fired_at: Option<Millis>,
}

impl AbortRule {
    /// Whether the rule fires on `o` (exact integer comparison of the percentage).
    pub fn fires(&self, o: &Outcomes) -> bool {
        let finished = o.finished();
        self.fired_at.is_none()
            && finished >= self.min_finished
            && u128::from(o.of(self.kind)) * 10_000
                >= u128::from(self.threshold_centi) * u128::from(finished)
    }

    /// The rule and the figures that made it fire, for the rollout's event.
    pub fn explain(&self, o: &Outcomes) -> String {
        let finished = o.finished();
        let n = o.of(self.kind);
        let pct = if finished == 0 {
            0.0
        } else {
            n as f64 * 100.0 / finished as f64
        };
        format!(
            "abort rule ({} >= {}% after {} finished tasks, then {}) fired: {n} of {finished} \
             finished tasks {} ({pct:.2}%); succeeded {}, failed {}, timed out {}, rejected {}",
            self.kind.as_str(),
            percent_text(self.threshold_centi),
            self.min_finished,
            self.action.as_str(),
            match self.kind {
                AbortKind::Failed => "failed",
                AbortKind::TimedOut => "timed out",
                AbortKind::Rejected => "were rejected",
                AbortKind::Any => "failed, timed out or were rejected",
            },
            o.succeeded,
            o.failed,
            o.timed_out,
            o.rejected
        )
    }
}

/// `1234` hundredths → "12.34".
pub fn percent_text(centi: u32) -> String {
    if centi.is_multiple_of(100) {
        (centi / 100).to_string()
    } else {
        format!("{}.{:02}", centi / 100, centi % 100)
    }
}

/// G1, as asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct AbortRuleRequest {
    pub kind: AbortKind,
    pub threshold_percent: f64,
    pub min_finished: i64,
    pub action: AbortAction,
}

pub fn validate_abort_rules(rules: Vec<AbortRuleRequest>) -> Result<Vec<AbortRule>, Invalid> {
    if rules.len() > SL::MAX_ABORT_RULES {
        return Err(Invalid::new(
            "abort_rules",
            format!("give at most {} rules", SL::MAX_ABORT_RULES),
        ));
    }
    rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let centi = (r.threshold_percent * 100.0).round();
            let (lo, hi) = SL::THRESHOLD_CENTI;
            if !r.threshold_percent.is_finite() || centi < f64::from(lo) || centi > f64::from(hi) {
                return Err(Invalid::new(
                    format!("abort_rules[{i}].threshold_percent"),
                    format!(
                        "must be a percentage from 0.01 to 100 (two decimals), got {}",
                        r.threshold_percent
                    ),
                ));
            }
            let (mlo, mhi) = SL::MIN_FINISHED;
            let min = u64::try_from(r.min_finished)
                .ok()
                .filter(|m| (mlo..=mhi).contains(m))
                .ok_or_else(|| {
                    Invalid::new(
                        format!("abort_rules[{i}].min_finished"),
                        format!(
                            "must be an integer from {mlo} to {mhi}, got {}",
                            r.min_finished
                        ),
                    )
                })?;
            Ok(AbortRule {
                kind: r.kind,
                // in range, so it fits
                threshold_centi: centi as u32,
                min_finished: min,
                action: r.action,
                fired_at: None,
            })
        })
        .collect()
}

/// G3: how many of the rollout's devices a wave takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    /// Percent of the rollout's devices (floor).
    Percent(u32),
    Count(u64),
    /// The last wave: whatever the others left.
    Rest,
}

/// G3: one wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    pub size: WaveSize,
    /// How the rollout leaves this wave (not used on the last).
    pub advance: WaveAdvance,
    /// Percent of this wave's tasks that must succeed before it is left automatically.
    pub success_threshold: u32,
    /// This wave's own rate and concurrency (absent: the rollout's).
    pub rate: Option<PushRate>,
    pub max_concurrency: Option<u32>,
    /// Tasks the wave got when the rollout was created.
    pub tasks: u64,
}

impl Wave {
    /// Whether `succeeded` of this wave's tasks reach its threshold (an empty wave has).
    pub fn threshold_reached(&self, succeeded: u64) -> bool {
        u128::from(succeeded) * 100 >= u128::from(self.success_threshold) * u128::from(self.tasks)
    }
}

/// G3: each wave's upper bound in the rollout's device order (1-based ranks, cumulative):
/// the device ranked `r` is in the first wave whose bound is `>= r`. The last bound is
/// `total`.
pub fn wave_bounds(total: u64, waves: &[Wave]) -> Vec<u64> {
    let mut bounds = Vec::with_capacity(waves.len());
    let mut acc: u64 = 0;
    let mut pct: u64 = 0;
    for w in waves {
        acc = match w.size {
            WaveSize::Percent(p) => {
                pct += u64::from(p);
                total.saturating_mul(pct) / 100
            }
            WaveSize::Count(c) => acc.saturating_add(c),
            WaveSize::Rest => total,
        }
        .min(total);
        bounds.push(acc);
    }
    bounds
}

/// G3, as asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveRequest {
    pub percent: Option<i64>,
    pub count: Option<i64>,
    pub advance: Option<WaveAdvance>,
    pub success_threshold: Option<i64>,
    pub rate: Option<RateRequest>,
    pub max_concurrency: Option<i64>,
}

pub fn validate_waves(waves: Vec<WaveRequest>, push_mode: PushMode) -> Result<Vec<Wave>, Invalid> {
    if waves.is_empty() {
        return Ok(vec![]);
    }
    let (lo, hi) = SL::WAVES;
    if waves.len() < lo || waves.len() > hi {
        return Err(Invalid::new(
            "waves",
            format!("give {lo} to {hi} waves (or none)"),
        ));
    }
    let last = waves.len() - 1;
    let by_percent = waves[0].percent.is_some();
    let mut percent_sum = 0;
    let mut out = Vec::with_capacity(waves.len());
    for (i, w) in waves.into_iter().enumerate() {
        let f = |name: &str| format!("waves[{i}].{name}");
        let size = if i == last {
            if w.percent.is_some() || w.count.is_some() {
                return Err(Invalid::new(
                    f("percent"),
                    "the last wave takes the devices the others leave; give it no percent or count",
                ));
            }
            WaveSize::Rest
        } else {
            match (w.percent, w.count) {
                (Some(p), None) if by_percent => {
                    if !(1..=99).contains(&p) {
                        return Err(Invalid::new(
                            f("percent"),
                            format!("must be an integer from 1 to 99, got {p}"),
                        ));
                    }
                    percent_sum += p;
                    // in range, so it fits
                    WaveSize::Percent(p as u32)
                }
                (None, Some(c)) if !by_percent => {
                    let (clo, chi) = SL::WAVE_COUNT;
                    let c = u64::try_from(c)
                        .ok()
                        .filter(|c| (clo..=chi).contains(c))
                        .ok_or_else(|| {
                            Invalid::new(
                                f("count"),
                                format!("must be an integer from {clo} to {chi}, got {c}"),
                            )
                        })?;
                    WaveSize::Count(c)
                }
                _ => return Err(Invalid::new(
                    f("percent"),
                    "every wave but the last gives a percent or a count, all waves the same one",
                )),
            }
        };
        if i == last && (w.advance.is_some() || w.success_threshold.is_some()) {
            return Err(Invalid::new(
                f("advance"),
                "the last wave has no next wave; advance and success_threshold are for the waves before it",
            ));
        }
        let success_threshold = match w.success_threshold {
            None => 100,
            Some(t) if (1..=100).contains(&t) => t as u32,
            Some(t) => {
                return Err(Invalid::new(
                    f("success_threshold"),
                    format!("must be a percentage from 1 to 100, got {t}"),
                ))
            }
        };
        let rate = match (w.rate, push_mode) {
            (Some(_), PushMode::Pull) => {
                return Err(Invalid::new(
                    f("rate"),
                    "a push rate is not used when push_mode is pull (devices ask)",
                ))
            }
            (Some(r), PushMode::Push) => Some(validate_rate(r).map_err(|e| Invalid {
                field: format!("waves[{i}].{}", e.field),
                message: e.message,
            })?),
            (None, _) => None,
        };
        let max_concurrency = match w.max_concurrency {
            None => None,
            Some(n) => {
                let (clo, chi) = rollout_limits::MAX_CONCURRENCY;
                Some(
                    u32::try_from(n)
                        .ok()
                        .filter(|n| (clo..=chi).contains(n))
                        .ok_or_else(|| {
                            Invalid::new(
                                f("max_concurrency"),
                                format!("must be an integer from {clo} to {chi}, got {n}"),
                            )
                        })?,
                )
            }
        };
        out.push(Wave {
            size,
            advance: w.advance.unwrap_or(WaveAdvance::Auto),
            success_threshold,
            rate,
            max_concurrency,
            tasks: 0,
        });
    }
    if percent_sum >= 100 {
        return Err(Invalid::new(
            "waves",
            format!(
                "the waves before the last take {percent_sum}% in all; keep it under 100% so the last wave has devices"
            ),
        ));
    }
    Ok(out)
}

/// G4: pushes only inside windows that open at each time of a cron expression, read in a
/// named time zone (daylight saving included), and last `duration_ms` of real time.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceWindow {
    /// As given: five fields, minute hour day-of-month month day-of-week.
    pub cron: String,
    pub duration_ms: Millis,
    pub time_zone: chrono_tz::Tz,
    pub on_close: WindowClose,
    schedule: cron::Schedule,
}

impl MaintenanceWindow {
    /// Parses and checks a window (field names are the API's, under `window`).
    pub fn parse(
        cron_expr: &str,
        duration_minutes: i64,
        time_zone: &str,
        on_close: WindowClose,
    ) -> Result<Self, Invalid> {
        let fields = cron_expr.split_whitespace().count();
        if fields != 5 {
            return Err(Invalid::new(
                "window.cron",
                format!(
                    "give five fields: minute hour day-of-month month day-of-week (got {fields})"
                ),
            ));
        }
        // the cron crate reads seconds first; windows open on whole minutes
        let schedule = cron::Schedule::from_str(&format!("0 {cron_expr}"))
            .map_err(|e| Invalid::new("window.cron", format!("not a cron expression: {e}")))?;
        let (lo, hi) = SL::WINDOW_MINUTES;
        if !(lo..=hi).contains(&duration_minutes) {
            return Err(Invalid::new(
                "window.duration_minutes",
                format!("must be an integer from {lo} to {hi} (a week), got {duration_minutes}"),
            ));
        }
        let tz = chrono_tz::Tz::from_str(time_zone).map_err(|_| {
            Invalid::new(
                "window.time_zone",
                format!("not an IANA time zone name (such as Europe/Berlin or UTC): {time_zone:?}"),
            )
        })?;
        if schedule.upcoming(tz).next().is_none() {
            return Err(Invalid::new(
                "window.cron",
                "this expression never opens a window",
            ));
        }
        Ok(Self {
            cron: cron_expr.split_whitespace().collect::<Vec<_>>().join(" "),
            duration_ms: duration_minutes * 60_000,
            time_zone: tz,
            on_close,
            schedule,
        })
    }

    fn at(&self, ms: Millis) -> Option<chrono::DateTime<chrono_tz::Tz>> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.with_timezone(&self.time_zone))
    }

    /// The latest window opening at or before `t`.
    fn opened_last(&self, t: Millis) -> Option<Millis> {
        // the crate counts in whole seconds: step back from a second later until at or
        // before `t` (openings are on whole minutes, so at most twice)
        let mut back = self.schedule.after(&self.at(t + 1_000)?);
        while let Some(d) = back.next_back() {
            let ms = d.timestamp_millis();
            if ms <= t {
                return Some(ms);
            }
        }
        None
    }

    /// How much of `(lo, hi]` lies inside windows. All windows are equally long, so of
    /// those opened at or before `lo` only the latest can still be open.
    pub fn covered(&self, lo: Millis, hi: Millis) -> Millis {
        if hi <= lo {
            return 0;
        }
        let mut total = 0;
        let mut until = lo;
        if let Some(o) = self.opened_last(lo) {
            until = until.max((o + self.duration_ms).min(hi));
            total += until - lo;
        }
        let Some(from) = self.at(lo) else {
            return total;
        };
        for open in self.schedule.after(&from).map(|d| d.timestamp_millis()) {
            if open >= hi {
                break;
            }
            let end = (open + self.duration_ms).min(hi);
            if end > until {
                total += end - until.max(open);
                until = end;
            }
        }
        total
    }

    /// Whether the windows closed in `(lo, hi]`: the last window to end by `hi` ended in
    /// it and no later one was open at that moment (overlapping windows close once).
    pub fn closed_between(&self, lo: Millis, hi: Millis) -> bool {
        let Some(close) = self
            .opened_last(hi - self.duration_ms)
            .map(|o| o + self.duration_ms)
        else {
            return false;
        };
        close > lo
            && self
                .opened_last(close)
                .is_none_or(|o| o + self.duration_ms <= close)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const H: Millis = 3_600_000;
    const M: Millis = 60_000;

    fn utc(s: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn abort_rule_fires_at_the_threshold_after_the_minimum() {
        let rule = AbortRule {
            kind: AbortKind::Failed,
            threshold_centi: 1_000,
            min_finished: 20,
            action: AbortAction::Pause,
            fired_at: None,
        };
        let o = |succeeded, failed| Outcomes {
            succeeded,
            failed,
            timed_out: 5,
            rejected: 0,
        };
        // 2 of 19 is over 10 % but under the minimum
        assert!(!rule.fires(&o(12, 2)));
        // 1 failed of 20: 5 %
        assert!(!rule.fires(&o(14, 1)));
        // 2 of 20: exactly 10 %
        assert!(rule.fires(&o(13, 2)));
        let any = AbortRule {
            kind: AbortKind::Any,
            ..rule.clone()
        };
        assert!(any.fires(&o(14, 1)), "6 of 20 of any kind");
        let fired = AbortRule {
            fired_at: Some(1),
            ..rule
        };
        assert!(!fired.fires(&o(0, 100)));
    }

    #[test]
    fn abort_rule_limits() {
        let r = |pct: f64, min: i64| AbortRuleRequest {
            kind: AbortKind::Any,
            threshold_percent: pct,
            min_finished: min,
            action: AbortAction::Cancel,
        };
        assert_eq!(
            validate_abort_rules(vec![r(12.345, 1)]).unwrap()[0].threshold_centi,
            1_235
        );
        assert!(validate_abort_rules(vec![r(0.001, 1)]).is_err());
        assert!(validate_abort_rules(vec![r(100.01, 1)]).is_err());
        assert!(validate_abort_rules(vec![r(f64::NAN, 1)]).is_err());
        assert_eq!(
            validate_abort_rules(vec![r(5.0, 1), r(5.0, 0)])
                .unwrap_err()
                .field,
            "abort_rules[1].min_finished"
        );
        assert!(validate_abort_rules(vec![r(5.0, 1); 11]).is_err());
    }

    fn wave(size: WaveSize) -> Wave {
        Wave {
            size,
            advance: WaveAdvance::Auto,
            success_threshold: 100,
            rate: None,
            max_concurrency: None,
            tasks: 0,
        }
    }

    #[test]
    fn wave_bounds_by_percent_and_count() {
        let p = [
            wave(WaveSize::Percent(10)),
            wave(WaveSize::Percent(30)),
            wave(WaveSize::Rest),
        ];
        assert_eq!(wave_bounds(1_000, &p), vec![100, 400, 1_000]);
        assert_eq!(wave_bounds(7, &p), vec![0, 2, 7]);
        let c = [
            wave(WaveSize::Count(5)),
            wave(WaveSize::Count(50)),
            wave(WaveSize::Rest),
        ];
        assert_eq!(wave_bounds(30, &c), vec![5, 30, 30]);
        assert!(Wave {
            tasks: 0,
            ..wave(WaveSize::Rest)
        }
        .threshold_reached(0));
        let w = Wave {
            success_threshold: 95,
            tasks: 100,
            ..wave(WaveSize::Rest)
        };
        assert!(!w.threshold_reached(94));
        assert!(w.threshold_reached(95));
    }

    #[test]
    fn wave_rules() {
        let w = |percent: Option<i64>, count: Option<i64>| WaveRequest {
            percent,
            count,
            advance: None,
            success_threshold: None,
            rate: None,
            max_concurrency: None,
        };
        let ok = validate_waves(vec![w(Some(10), None), w(None, None)], PushMode::Push).unwrap();
        assert_eq!(ok[0].size, WaveSize::Percent(10));
        assert_eq!(ok[1].size, WaveSize::Rest);
        let err = |v: Vec<WaveRequest>| validate_waves(v, PushMode::Push).unwrap_err().field;
        assert_eq!(err(vec![w(None, None)]), "waves");
        assert_eq!(
            err(vec![w(Some(10), None), w(Some(10), None)]),
            "waves[1].percent"
        );
        assert_eq!(
            err(vec![w(Some(10), None), w(None, Some(5)), w(None, None)]),
            "waves[1].percent"
        );
        assert_eq!(
            err(vec![w(Some(60), None), w(Some(40), None), w(None, None)]),
            "waves"
        );
        assert_eq!(err(vec![w(None, Some(0)), w(None, None)]), "waves[0].count");
        let mut last = w(None, None);
        last.advance = Some(WaveAdvance::Manual);
        assert_eq!(err(vec![w(Some(5), None), last]), "waves[1].advance");
        let mut rated = w(Some(5), None);
        rated.rate = Some(RateRequest::Constant { per_minute: 5 });
        assert_eq!(
            err(vec![rated.clone(), w(None, None)]),
            "waves[0].rate.per_minute"
        );
        assert_eq!(
            validate_waves(vec![rated, w(None, None)], PushMode::Pull)
                .unwrap_err()
                .field,
            "waves[0].rate"
        );
    }

    #[test]
    fn window_coverage_is_exact_and_merges_overlaps() {
        // 02:00 UTC daily for an hour
        let w = MaintenanceWindow::parse("0 2 * * *", 60, "UTC", WindowClose::Wait).unwrap();
        let day = utc("2026-11-18T00:00:00Z");
        assert_eq!(w.covered(day, day + 24 * H), H);
        assert_eq!(w.covered(day + 2 * H + 30 * M, day + 24 * H), 30 * M);
        assert_eq!(w.covered(day, day + 2 * H + M), M);
        assert_eq!(w.covered(day + 3 * H, day + 26 * H), 0);
        assert_eq!(w.covered(day, day + 7 * 24 * H), 7 * H);
        assert!(w.closed_between(day + 3 * H - 1, day + 3 * H));
        assert!(!w.closed_between(day + 3 * H, day + 4 * H));
        // every 10 minutes for 15: the windows overlap into one
        let o = MaintenanceWindow::parse("*/10 * * * *", 15, "UTC", WindowClose::Wait).unwrap();
        assert_eq!(o.covered(day, day + H), H);
        assert!(!o.closed_between(day, day + H));
    }

    #[test]
    fn window_follows_daylight_saving_in_its_time_zone() {
        // 01:00 Berlin time daily for 3 hours: 00:00 UTC in winter (CET), 23:00 UTC the day
        // before in summer (CEST); the change was at 01:00 UTC on 2027-03-28.
        let w =
            MaintenanceWindow::parse("0 1 * * *", 180, "Europe/Berlin", WindowClose::Wait).unwrap();
        let before = utc("2027-03-27T00:00:00Z");
        assert_eq!(w.covered(before - 1, before + 3 * H), 3 * H);
        let change_day = utc("2027-03-28T00:00:00Z"); // 01:00 CET, still winter
        assert_eq!(w.covered(change_day - 1, change_day + 3 * H), 3 * H);
        let summer = utc("2027-03-28T23:00:00Z"); // 01:00 CEST on the 29th
        assert_eq!(w.covered(summer - H, summer), 0);
        assert_eq!(w.covered(summer, summer + 3 * H), 3 * H);
        // a whole week across the change: seven windows of three real hours
        assert_eq!(
            w.covered(utc("2027-03-24T12:00:00Z"), utc("2027-03-31T12:00:00Z")),
            21 * H
        );
    }

    #[test]
    fn a_seed_daily_repeat_is_one_such_window() {
        // R2's "repeat every day" 02:00-03:00 UTC and the window "0 2 * * *" for an hour
        // allow the same time over any range after the start
        let start = utc("2026-11-18T02:00:00Z");
        let daily = Schedule {
            start_at: Some(start),
            end_at: Some(start + H),
            daily_repeat: true,
            utc_offset_minutes: 0,
        };
        let w = MaintenanceWindow::parse("0 2 * * *", 60, "UTC", WindowClose::Wait).unwrap();
        for (from, to) in [
            (start, start + 24 * H),
            (start + 30 * M, start + 3 * 24 * H + 45 * M),
            (start + 5 * H, start + 23 * H),
            (start - 1, start + 7 * M),
        ] {
            assert_eq!(
                daily.push_time_between(from, to),
                w.covered(from, to),
                "{from}..{to}"
            );
        }
    }

    #[test]
    fn window_rules() {
        let p = |c: &str, d: i64, tz: &str| {
            MaintenanceWindow::parse(c, d, tz, WindowClose::Wait)
                .map(|_| ())
                .map_err(|e| e.field)
        };
        assert!(p("30 22 * * 1-5", 120, "Asia/Shanghai").is_ok());
        assert_eq!(p("0 0 2 * * *", 60, "UTC").unwrap_err(), "window.cron");
        assert_eq!(p("0 25 * * *", 60, "UTC").unwrap_err(), "window.cron");
        assert_eq!(p("0 0 31 2 *", 60, "UTC").unwrap_err(), "window.cron");
        assert_eq!(
            p("0 2 * * *", 0, "UTC").unwrap_err(),
            "window.duration_minutes"
        );
        assert_eq!(
            p("0 2 * * *", 10_081, "UTC").unwrap_err(),
            "window.duration_minutes"
        );
        assert_eq!(
            p("0 2 * * *", 60, "Mars/Olympus").unwrap_err(),
            "window.time_zone"
        );
    }
}
