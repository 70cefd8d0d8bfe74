//! Rollout options and every rule the seeds set on them (SPEC B1–B10, R1–R17, P2), checked
//! once here so the API, the store and the scheduler take a [`RolloutSpec`] that obeys them.
//! Field names in errors are the API's (`rate.per_minute`, `schedule.end_at`). No I/O.

use super::task::word_enum;
use super::*;
use crate::clock::Millis;

word_enum!(
    /// B1: `static` fixes the device set at creation; `dynamic` lets devices join later.
    UpdateMethod { Static, Dynamic }
);
word_enum!(
    /// R17 / P2: an update, or a verification of an unverified package.
    RolloutType { Update, Verification }
);
word_enum!(
    /// R3: the server pushes (devices may still ask), or devices only ask.
    PushMode { Push, Pull }
);
word_enum!(
    /// R14: how devices download the package.
    DownloadProtocol { Https, Mqtt }
);
word_enum!(
    /// R5: what the variable rate's threshold counts.
    RateCountOn { Pushed, Succeeded }
);

/// Limits of the seeds (Alibaba "Initiate a batch update", EnOS "Batch Upgrading Firmware").
pub mod rollout_limits {
    use crate::clock::Millis;
    pub const MINUTE: Millis = 60_000;
    pub const HOUR: Millis = 60 * MINUTE;
    pub const DAY: Millis = 24 * HOUR;
    /// R1: a scheduled start lies at most 7 days ahead.
    pub const MAX_START_AHEAD: Millis = 7 * DAY;
    /// R1: the end lies 1 hour to 30 days after the start.
    pub const MIN_RUN: Millis = HOUR;
    pub const MAX_RUN: Millis = 30 * DAY;
    /// R4: constant rate, devices per minute.
    pub const CONSTANT_RATE: (u32, u32) = (10, 10_000);
    /// R5: variable rate.
    pub const BASE_RATE: (u32, u32) = (1, 10_000);
    pub const MAX_RATE: (u32, u32) = (10, 10_000);
    pub const FACTOR_CENTI: (u32, u32) = (120, 500);
    pub const THRESHOLD: (u32, u32) = (1, 100_000);
    /// R8: retry intervals (minutes; 0 = at once) and counts.
    pub const RETRY_INTERVALS: [u32; 5] = [0, 10, 30, 60, 1440];
    pub const RETRY_COUNTS: [u32; 3] = [1, 2, 5];
    /// R9: device timeout, minutes.
    pub const TIMEOUT_MINUTES: (u32, u32) = (1, 1440);
    /// R7: maximum concurrency (the seeds give no upper bound; this keeps it an i32).
    pub const MAX_CONCURRENCY: (u32, u32) = (1, 1_000_000);
    /// B6: adoption percentage.
    pub const PERCENT: (u32, u32) = (1, 100);
    /// R14: MQTT download: one file of at most 16 MB.
    pub const MQTT_MAX_FILE: u64 = 16 * 1024 * 1024;
    /// R15: batch tags (Alibaba's rules).
    pub const MAX_TAGS: usize = 10;
    pub const TAG_KEY_LEN: (usize, usize) = (1, 30);
    pub const TAG_VALUE_LEN: (usize, usize) = (1, 1024);
    pub const TAGS_TOTAL: usize = 4096;
    /// B5: names given inline; larger lists are uploaded as a CSV device list.
    pub const MAX_INLINE_DEVICES: usize = 10_000;
    /// Source versions (B9) and tag values (B8) in one scope.
    pub const MAX_SOURCE_VERSIONS: usize = 100;
    pub const MAX_SCOPE_VALUES: usize = 100;
    /// B3: a device is updated at most this many times by one dynamic rollout.
    pub const MAX_DYNAMIC_UPDATES_PER_DEVICE: u32 = 10;
    /// R2: a daily window is read in this offset from UTC (minutes).
    pub const UTC_OFFSET: (i32, i32) = (-720, 840);
}
use rollout_limits as L;

/// Where a `selected` or `phased` scope's devices come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceSource {
    /// Names given inline (at most [`rollout_limits::MAX_INLINE_DEVICES`]).
    Names(Vec<DeviceName>),
    /// An uploaded CSV list (up to 1,000,000 names), already resolved to devices.
    List(DeviceListId),
}

/// B8: an attribute scope matches values, or a numeric range (both ends included).
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    OneOf(Vec<String>),
    Range { min: f64, max: f64 },
}

/// Which devices a rollout takes (B4–B8).
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    All,
    Selected(DeviceSource),
    Phased { devices: DeviceSource, percent: u32 },
    Group(GroupId),
    Attribute { name: String, value: AttributeValue },
    Tag { key: String, values: Vec<String> },
    AssetNodes(Vec<AssetNodeId>),
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Selected(_) => "selected",
            Scope::Phased { .. } => "phased",
            Scope::Group(_) => "group",
            Scope::Attribute { .. } => "attribute",
            Scope::Tag { .. } => "tag",
            Scope::AssetNodes(_) => "asset_nodes",
        }
    }

    /// B6: how many of `count` selected devices a phased rollout takes.
    pub fn phased_take(count: u64, percent: u32) -> u64 {
        count.saturating_mul(u64::from(percent)) / 100
    }
}

/// R4 / R5, as asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum RateRequest {
    Constant {
        per_minute: i64,
    },
    Variable {
        base: i64,
        factor: f64,
        max: i64,
        threshold: i64,
        count_on: RateCountOn,
    },
}

/// R4 / R5, validated; the factor is in hundredths (2.00 → 200) so rate arithmetic is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushRate {
    Constant {
        per_minute: u32,
    },
    Variable {
        base: u32,
        factor_centi: u32,
        max: u32,
        threshold: u32,
        count_on: RateCountOn,
    },
}

/// R8: retry after failure (absent: no retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub interval_minutes: u32,
    pub max_retries: u32,
}

/// R1 / R2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Schedule {
    /// When pushing begins; a time already past (or none) means at once.
    pub start_at: Option<Millis>,
    /// Tasks not yet pushed are cancelled then; none: never stopped by time.
    pub end_at: Option<Millis>,
    /// Push only inside start..end's time of day, every day.
    pub daily_repeat: bool,
    /// Offset from UTC, minutes, that "the same date" and the daily window are read in.
    pub utc_offset_minutes: i32,
}

/// A rollout as asked for: structurally parsed, not yet checked against the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRequest {
    pub name: Option<String>,
    pub description: String,
    pub method: UpdateMethod,
    pub rollout_type: Option<RolloutType>,
    pub scope: Scope,
    pub source_versions: Vec<Version>,
    pub schedule: Schedule,
    pub push_mode: PushMode,
    pub rate: Option<RateRequest>,
    pub max_concurrency: Option<i64>,
    pub retry: Option<(i64, i64)>,
    pub timeout_minutes: Option<i64>,
    pub retry_timeouts: bool,
    pub multi_module: bool,
    pub override_previous: bool,
    pub only_new_reports: bool,
    pub app_confirm: bool,
    pub download_protocol: DownloadProtocol,
    pub tags: Vec<(String, String)>,
    pub start_on_creation: bool,
    /// G1.
    pub abort_rules: Vec<AbortRuleRequest>,
    /// G3.
    pub waves: Vec<WaveRequest>,
    /// G4.
    pub window: Option<WindowRequest>,
    /// G6: push even to devices that already report the target version.
    pub force_reinstall: bool,
    /// W2: a tenant's policy per hook.
    pub policies: RolloutPolicies,
}

/// G4, as asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRequest {
    pub cron: String,
    pub duration_minutes: i64,
    pub time_zone: String,
    pub on_close: WindowClose,
}

impl RolloutRequest {
    /// A request with every option at its default, for `scope`.
    pub fn new(method: UpdateMethod, scope: Scope) -> Self {
        Self {
            name: None,
            description: String::new(),
            method,
            rollout_type: None,
            scope,
            source_versions: vec![],
            schedule: Schedule::default(),
            push_mode: PushMode::Push,
            rate: None,
            max_concurrency: None,
            retry: None,
            timeout_minutes: None,
            retry_timeouts: false,
            multi_module: false,
            override_previous: false,
            only_new_reports: false,
            app_confirm: false,
            download_protocol: DownloadProtocol::Https,
            tags: vec![],
            start_on_creation: true,
            abort_rules: vec![],
            waves: vec![],
            window: None,
            force_reinstall: false,
            policies: RolloutPolicies::default(),
        }
    }
}

/// What the rules need to know of the package.
#[derive(Debug, Clone)]
pub struct PackageFacts {
    pub kind: PackageKind,
    pub source_version: Option<Version>,
    pub status: PackageStatus,
    /// Sizes of its files, bytes.
    pub file_sizes: Vec<u64>,
}

/// A rollout that obeys every rule; only [`RolloutRequest::validate`] builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    pub name: String,
    pub description: String,
    pub method: UpdateMethod,
    pub rollout_type: RolloutType,
    pub scope: Scope,
    /// Empty: any version. For a diff package, exactly its source version (B9).
    pub source_versions: Vec<Version>,
    pub schedule: Schedule,
    pub push_mode: PushMode,
    /// None: no rate limit (or pull mode).
    pub rate: Option<PushRate>,
    pub max_concurrency: Option<u32>,
    pub retry: Option<Retry>,
    pub timeout_minutes: Option<u32>,
    pub retry_timeouts: bool,
    pub multi_module: bool,
    pub override_previous: bool,
    pub only_new_reports: bool,
    pub app_confirm: bool,
    pub download_protocol: DownloadProtocol,
    pub tags: Vec<(String, String)>,
    pub start_on_creation: bool,
    /// G1: stop when failures rise.
    pub abort_rules: Vec<AbortRule>,
    /// G3: ordered waves (none, or 2 to 10).
    pub waves: Vec<Wave>,
    /// G4: pushes only inside these windows.
    pub window: Option<MaintenanceWindow>,
    /// G6: devices already on the target get a task too.
    pub force_reinstall: bool,
    /// W2: a tenant's policy per hook; the built-in behaviour where none.
    pub policies: RolloutPolicies,
}

impl Schedule {
    /// R1: whether the end time has passed (never, with a daily repeat: its end only closes
    /// each day's window).
    pub fn ended(&self, now: Millis) -> bool {
        !self.daily_repeat && self.end_at.is_some_and(|e| now >= e)
    }

    /// R1 / R2: whether pushes may go out at `now`.
    pub fn allows_push(&self, now: Millis) -> bool {
        self.push_time_between(now - 1, now) > 0
    }

    /// R1 / R2: how much of the time `(from, to]` pushes were allowed in: after the start,
    /// before the end, and with a daily repeat inside the start..end time of day (read in
    /// the schedule's offset). The rate's allowance accrues over exactly this time, so a
    /// window of an hour at 10 a minute releases exactly 10 × 60.
    pub fn push_time_between(&self, from: Millis, to: Millis) -> Millis {
        let mut lo = from;
        let mut hi = to;
        if let Some(s) = self.start_at {
            lo = lo.max(s);
        }
        if let (false, Some(e)) = (self.daily_repeat, self.end_at) {
            hi = hi.min(e);
        }
        if hi <= lo {
            return 0;
        }
        match (self.daily_repeat, self.start_at, self.end_at) {
            (true, Some(start), Some(end)) => {
                let off = i64::from(self.utc_offset_minutes) * L::MINUTE;
                let (open, close) = (
                    (start + off).rem_euclid(L::DAY),
                    (end + off).rem_euclid(L::DAY),
                );
                // each local day's window that (lo, hi] touches
                let mut total = 0;
                let mut day = (lo + off).div_euclid(L::DAY);
                let last = (hi + off).div_euclid(L::DAY);
                while day <= last {
                    let w_lo = day * L::DAY + open - off;
                    let w_hi = day * L::DAY + close - off;
                    total += (hi.min(w_hi) - lo.max(w_lo)).max(0);
                    day += 1;
                }
                total
            }
            _ => hi - lo,
        }
    }
}

impl RolloutSpec {
    /// Whether the start waits for a time still ahead of `now` (R1: a past start is now).
    pub fn starts_later(&self, now: Millis) -> bool {
        self.schedule.start_at.is_some_and(|s| s > now)
    }

    /// R1, R2, G4: how much of `(from, to]` pushes were allowed in: the schedule's time,
    /// and inside a maintenance window when there is one (a window and a daily repeat are
    /// never both set).
    pub fn push_time_between(&self, from: Millis, to: Millis) -> Millis {
        match &self.window {
            None => self.schedule.push_time_between(from, to),
            Some(w) => {
                let mut lo = from;
                let mut hi = to;
                if let Some(s) = self.schedule.start_at {
                    lo = lo.max(s);
                }
                if let Some(e) = self.schedule.end_at {
                    hi = hi.min(e);
                }
                w.covered(lo, hi)
            }
        }
    }

    /// Whether pushes may go out at `now`.
    pub fn allows_push(&self, now: Millis) -> bool {
        self.push_time_between(now - 1, now) > 0
    }

    /// G3: the wave running now (`current`, 1-based; 0 without waves).
    pub fn wave(&self, current: u32) -> Option<&Wave> {
        (current as usize)
            .checked_sub(1)
            .and_then(|i| self.waves.get(i))
    }

    /// G3: the rate and concurrency in force in wave `current` (a wave's own, or the
    /// rollout's).
    pub fn rate_in(&self, current: u32) -> Option<PushRate> {
        self.wave(current).and_then(|w| w.rate).or(self.rate)
    }

    pub fn concurrency_in(&self, current: u32) -> Option<u32> {
        self.wave(current)
            .and_then(|w| w.max_concurrency)
            .or(self.max_concurrency)
    }
}

fn in_range(field: &str, v: i64, (lo, hi): (u32, u32), what: &str) -> Result<u32, Invalid> {
    if v < i64::from(lo) || v > i64::from(hi) {
        return Err(Invalid::new(
            field,
            format!("{what} must be an integer from {lo} to {hi}, got {v}"),
        ));
    }
    // in range, so it fits
    Ok(u32::try_from(v).unwrap_or(hi))
}

/// R5: the factor rounded to two decimals, in hundredths, checked against 1.20..5.00.
pub fn factor_centi(field: &str, factor: f64) -> Result<u32, Invalid> {
    let centi = (factor * 100.0).round();
    let (lo, hi) = L::FACTOR_CENTI;
    if !centi.is_finite() || centi < f64::from(lo) || centi > f64::from(hi) {
        return Err(Invalid::new(
            field,
            format!(
                "the increment factor must be 1.20 to 5.00 (rounded to two decimals), got {factor}"
            ),
        ));
    }
    Ok(centi as u32)
}

/// R15: at most 10 tags; key 1–30 letters, digits and `.`; value 1–1024 characters; all
/// keys and values together at most 4096 characters; keys unique.
pub fn check_rollout_tags(field: &str, tags: &[(String, String)]) -> Result<(), Invalid> {
    if tags.len() > L::MAX_TAGS {
        return Err(Invalid::new(
            field,
            format!("at most {} tags, got {}", L::MAX_TAGS, tags.len()),
        ));
    }
    let mut total = 0;
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in tags {
        let kn = k.chars().count();
        if kn < L::TAG_KEY_LEN.0
            || kn > L::TAG_KEY_LEN.1
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        {
            return Err(Invalid::new(
                format!("{field}.{k}"),
                "a tag key is 1 to 30 characters: letters, digits and .",
            ));
        }
        if !seen.insert(k.as_str()) {
            return Err(Invalid::new(
                format!("{field}.{k}"),
                "tag keys must be unique",
            ));
        }
        bounded_text(
            &format!("{field}.{k}"),
            v,
            L::TAG_VALUE_LEN.0,
            L::TAG_VALUE_LEN.1,
        )?;
        total += kn + v.chars().count();
    }
    if total > L::TAGS_TOTAL {
        return Err(Invalid::new(
            field,
            format!(
                "all tag keys and values together may be at most {} characters, got {total}",
                L::TAGS_TOTAL
            ),
        ));
    }
    Ok(())
}

/// The calendar date of `at` in the given offset (days since the epoch).
/// R4 / R5: a push rate as asked for, checked against the seeds' limits.
pub fn validate_rate(req: RateRequest) -> Result<PushRate, Invalid> {
    Ok(match req {
        RateRequest::Constant { per_minute } => PushRate::Constant {
            per_minute: in_range(
                "rate.per_minute",
                per_minute,
                L::CONSTANT_RATE,
                "the constant rate",
            )?,
        },
        RateRequest::Variable {
            base,
            factor,
            max,
            threshold,
            count_on,
        } => {
            let base = in_range("rate.base", base, L::BASE_RATE, "the base rate")?;
            let max = in_range("rate.max", max, L::MAX_RATE, "the maximum rate")?;
            if base > max {
                return Err(Invalid::new(
                    "rate.base",
                    "the base rate must not exceed the maximum rate",
                ));
            }
            PushRate::Variable {
                base,
                factor_centi: factor_centi("rate.factor", factor)?,
                max,
                threshold: in_range("rate.threshold", threshold, L::THRESHOLD, "the threshold")?,
                count_on,
            }
        }
    })
}

/// What may change in a rollout that runs (R6, R15, R16, B9).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RolloutChange {
    pub rate: Option<RateRequest>,
    pub source_versions: Option<Vec<Version>>,
    /// `Some(None)` removes the device timeout.
    pub timeout_minutes: Option<Option<i64>>,
    pub tags: Option<Vec<(String, String)>>,
    /// G1: replaces the abort rules (re-arming any that fired).
    pub abort_rules: Option<Vec<AbortRuleRequest>>,
}

/// A change checked against the rollout it applies to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckedChange {
    pub rate: Option<PushRate>,
    pub source_versions: Option<Vec<Version>>,
    pub timeout_minutes: Option<Option<u32>>,
    pub tags: Option<Vec<(String, String)>>,
    pub abort_rules: Option<Vec<AbortRule>>,
}

impl RolloutChange {
    /// Checks the change against the rollout's spec and package: a rate keeps its kind
    /// (R6); source versions change only in a dynamic rollout of a full package that is not
    /// group-scoped (B9, R16); the timeout only in a dynamic rollout, and still longer than
    /// the retry interval (R8, R16); tags by the tag rules (R15).
    pub fn check(self, spec: &RolloutSpec, pkg: &PackageFacts) -> Result<CheckedChange, Invalid> {
        let is_dynamic = spec.method == UpdateMethod::Dynamic;
        let rate = match self.rate {
            None => None,
            Some(req) => {
                let new = validate_rate(req)?;
                let same_kind = matches!(
                    (&spec.rate, &new),
                    (Some(PushRate::Constant { .. }), PushRate::Constant { .. })
                        | (Some(PushRate::Variable { .. }), PushRate::Variable { .. })
                );
                if !same_kind {
                    return Err(Invalid::new(
                        "rate.kind",
                        match spec.rate {
                            None => "this rollout has no push rate; one cannot be added while it runs",
                            Some(_) => "a running rollout's rate keeps its kind: constant stays constant, variable stays variable",
                        },
                    ));
                }
                Some(new)
            }
        };
        let source_versions = match self.source_versions {
            None => None,
            Some(mut vs) => {
                if !is_dynamic {
                    return Err(Invalid::new(
                        "source_versions",
                        "only a dynamic rollout's source versions can change",
                    ));
                }
                if matches!(spec.scope, Scope::Group(_)) {
                    return Err(Invalid::new(
                        "source_versions",
                        "a group-scoped dynamic rollout's source versions cannot change",
                    ));
                }
                if pkg.kind == PackageKind::Diff {
                    return Err(Invalid::new(
                        "source_versions",
                        "a diff package applies to its source version only",
                    ));
                }
                vs.sort();
                vs.dedup();
                if vs.is_empty() || vs.len() > L::MAX_SOURCE_VERSIONS {
                    return Err(Invalid::new(
                        "source_versions",
                        format!(
                            "a dynamic rollout of a full package needs 1 to {} source versions",
                            L::MAX_SOURCE_VERSIONS
                        ),
                    ));
                }
                Some(vs)
            }
        };
        let timeout_minutes = match self.timeout_minutes {
            None => None,
            Some(t) => {
                if !is_dynamic {
                    return Err(Invalid::new(
                        "timeout_minutes",
                        "only a dynamic rollout's device timeout can change",
                    ));
                }
                let t = t.map(timeout_minutes).transpose()?;
                match (t, spec.retry) {
                    (Some(t), Some(r)) if r.interval_minutes >= t => {
                        return Err(Invalid::new(
                            "timeout_minutes",
                            format!(
                            "the device timeout must stay longer than the retry interval ({} min)",
                            r.interval_minutes
                        ),
                        ))
                    }
                    (None, _) if spec.retry_timeouts => {
                        return Err(Invalid::new(
                            "timeout_minutes",
                            "this rollout retries timeouts; it keeps a device timeout",
                        ))
                    }
                    _ => {}
                }
                Some(t)
            }
        };
        if let Some(tags) = &self.tags {
            check_rollout_tags("tags", tags)?;
        }
        let abort_rules = self.abort_rules.map(validate_abort_rules).transpose()?;
        Ok(CheckedChange {
            rate,
            source_versions,
            timeout_minutes,
            tags: self.tags,
            abort_rules,
        })
    }
}

/// R9: a device timeout, 1..1440 minutes.
fn timeout_minutes(n: i64) -> Result<u32, Invalid> {
    in_range(
        "timeout_minutes",
        n,
        L::TIMEOUT_MINUTES,
        "the device timeout (minutes)",
    )
}

fn local_day(at: Millis, offset_minutes: i32) -> i64 {
    (at + i64::from(offset_minutes) * L::MINUTE).div_euclid(L::DAY)
}

impl RolloutRequest {
    /// Checks every seed rule, single and cross-field, and fills defaults (type by the
    /// package's status, R17; source version of a diff, B9).
    pub fn validate(self, pkg: &PackageFacts, now: Millis) -> Result<RolloutSpec, Invalid> {
        let r = self;
        let name = match r.name {
            Some(n) => DisplayName::parse_trimmed("name", &n)?.into_string(),
            None => String::new(),
        };
        bounded_text(
            "description",
            &r.description,
            0,
            limits::MAX_DESCRIPTION_LEN,
        )?;
        let is_dynamic = r.method == UpdateMethod::Dynamic;

        // Scope (B5–B8).
        match &r.scope {
            Scope::Selected(DeviceSource::Names(n))
            | Scope::Phased {
                devices: DeviceSource::Names(n),
                ..
            } if n.is_empty() || n.len() > L::MAX_INLINE_DEVICES => {
                return Err(Invalid::new(
                    "scope.device_names",
                    format!(
                        "give 1 to {} device names inline, or upload a CSV device list for up to 1,000,000",
                        L::MAX_INLINE_DEVICES
                    ),
                ));
            }
            Scope::Attribute { name, value } => {
                AttributeName::parse("scope.name", name.as_str())?;
                match value {
                    AttributeValue::OneOf(vs) => {
                        check_values("scope.values", vs, limits::MAX_ATTRIBUTE_VALUE_LEN)?
                    }
                    AttributeValue::Range { min, max } => {
                        if !min.is_finite() || !max.is_finite() || min > max {
                            return Err(Invalid::new(
                                "scope.min",
                                "a value range needs finite numbers with min <= max",
                            ));
                        }
                    }
                }
            }
            Scope::Tag { key, values } => {
                TagKey::parse("scope.key", key.as_str())?;
                check_values("scope.values", values, limits::MAX_TAG_VALUE_LEN)?;
            }
            Scope::AssetNodes(nodes) if nodes.is_empty() || nodes.len() > MAX_SCOPE_IDS => {
                return Err(Invalid::new(
                    "scope.node_ids",
                    format!("give 1 to {MAX_SCOPE_IDS} asset nodes (in at most {MAX_ASSET_TREES_PER_SCOPE} trees)"),
                ));
            }
            _ => {}
        }
        if let Scope::Phased { percent, .. } = &r.scope {
            in_range(
                "scope.percent",
                i64::from(*percent),
                L::PERCENT,
                "the adoption percentage",
            )?;
            if is_dynamic {
                return Err(Invalid::new(
                    "scope.kind",
                    "a phased scope is for static rollouts only",
                ));
            }
        }

        // Source versions (B9).
        if r.source_versions.len() > L::MAX_SOURCE_VERSIONS {
            return Err(Invalid::new(
                "source_versions",
                format!("give at most {} versions", L::MAX_SOURCE_VERSIONS),
            ));
        }
        let is_selected = matches!(r.scope, Scope::Selected(_));
        let mut source_versions = r.source_versions;
        source_versions.sort();
        source_versions.dedup();
        match (pkg.kind, &pkg.source_version) {
            (PackageKind::Diff, Some(src)) => {
                if source_versions.iter().any(|v| v != src) {
                    return Err(Invalid::new(
                        "source_versions",
                        format!(
                            "a diff package applies to {:?} only; give that version or none",
                            src.as_str()
                        ),
                    ));
                }
                if is_selected && !source_versions.is_empty() {
                    return Err(Invalid::new(
                        "source_versions",
                        "source versions are not used with a selected scope (a diff still applies only to its source version)",
                    ));
                }
                source_versions = vec![src.clone()];
            }
            _ => {
                if is_selected && !source_versions.is_empty() {
                    return Err(Invalid::new(
                        "source_versions",
                        "source versions are not used with a selected scope; leave them out",
                    ));
                }
                if is_dynamic && source_versions.is_empty() {
                    return Err(Invalid::new(
                        "source_versions",
                        "a dynamic rollout of a full package needs at least one source version",
                    ));
                }
            }
        }

        // Schedule (R1, R2).
        let s = r.schedule;
        in_range_i32(
            "schedule.utc_offset_minutes",
            s.utc_offset_minutes,
            L::UTC_OFFSET,
        )?;
        if let Some(start) = s.start_at {
            if start - now > L::MAX_START_AHEAD {
                return Err(Invalid::new(
                    "schedule.start_at",
                    "a scheduled start lies at most 7 days ahead",
                ));
            }
        }
        let effective_start = s.start_at.map_or(now, |st| st.max(now));
        if let Some(end) = s.end_at {
            let run = end - effective_start;
            if !(L::MIN_RUN..=L::MAX_RUN).contains(&run) {
                return Err(Invalid::new(
                    "schedule.end_at",
                    "the end lies 1 hour to 30 days after the start (a start already past counts from now)",
                ));
            }
        }
        if s.daily_repeat {
            let (Some(start), Some(end)) = (s.start_at, s.end_at) else {
                return Err(Invalid::new(
                    "schedule.daily_repeat",
                    "daily repeat needs a start and an end on the same date",
                ));
            };
            if local_day(start, s.utc_offset_minutes) != local_day(end, s.utc_offset_minutes) {
                return Err(Invalid::new(
                    "schedule.daily_repeat",
                    "daily repeat is allowed only when start and end fall on the same date",
                ));
            }
        }

        // Push mode and rate (R3–R5).
        let rate = match (r.push_mode, r.rate) {
            (PushMode::Pull, Some(_)) => {
                return Err(Invalid::new(
                    "rate",
                    "a push rate is not used when push_mode is pull (devices ask)",
                ))
            }
            (_, None) => None,
            (PushMode::Push, Some(req)) => Some(validate_rate(req)?),
        };
        let max_concurrency = r
            .max_concurrency
            .map(|n| {
                in_range(
                    "max_concurrency",
                    n,
                    L::MAX_CONCURRENCY,
                    "the maximum concurrency",
                )
            })
            .transpose()?;

        // Retry and timeout (R8, R9).
        let timeout_minutes = r.timeout_minutes.map(timeout_minutes).transpose()?;
        let retry = match r.retry {
            None => None,
            Some((interval, count)) => {
                let interval = u32::try_from(interval)
                    .ok()
                    .filter(|i| L::RETRY_INTERVALS.contains(i))
                    .ok_or_else(|| {
                        Invalid::new(
                            "retry.interval_minutes",
                            "must be 0 (at once), 10, 30, 60 or 1440 minutes",
                        )
                    })?;
                let max_retries = u32::try_from(count)
                    .ok()
                    .filter(|c| L::RETRY_COUNTS.contains(c))
                    .ok_or_else(|| Invalid::new("retry.max_retries", "must be 1, 2 or 5"))?;
                if let Some(t) = timeout_minutes {
                    if interval >= t {
                        return Err(Invalid::new(
                            "retry.interval_minutes",
                            format!("the retry interval ({interval} min) must be shorter than the device timeout ({t} min)"),
                        ));
                    }
                }
                Some(Retry {
                    interval_minutes: interval,
                    max_retries,
                })
            }
        };
        if r.retry_timeouts && (retry.is_none() || timeout_minutes.is_none()) {
            return Err(Invalid::new(
                "retry_timeouts",
                "retrying timeouts needs both a retry policy and a device timeout",
            ));
        }

        // Multi-module, override, R12, R14, R15.
        if r.multi_module && r.override_previous {
            return Err(Invalid::new(
                "override_previous",
                "multi_module and override_previous cannot both be on",
            ));
        }
        if r.only_new_reports && !is_dynamic {
            return Err(Invalid::new(
                "only_new_reports",
                "only a dynamic rollout can apply to devices that newly report versions",
            ));
        }
        if r.download_protocol == DownloadProtocol::Mqtt {
            if pkg.file_sizes.len() != 1 || pkg.file_sizes[0] > L::MQTT_MAX_FILE {
                return Err(Invalid::new(
                    "download_protocol",
                    "MQTT download needs a package of exactly one file of at most 16 MB",
                ));
            }
            return Err(Invalid::new(
                "download_protocol",
                "MQTT file download is not supported by this server yet; use https",
            ));
        }
        check_rollout_tags("tags", &r.tags)?;

        // G1, G3, G4, G6.
        let abort_rules = validate_abort_rules(r.abort_rules)?;
        let waves = validate_waves(r.waves, r.push_mode)?;
        if !waves.is_empty() && is_dynamic {
            return Err(Invalid::new(
                "waves",
                "waves split a static rollout's devices; a dynamic rollout takes devices as they come",
            ));
        }
        let window = match r.window {
            None => None,
            Some(w) => {
                if s.daily_repeat {
                    return Err(Invalid::new(
                        "window",
                        "give a maintenance window or a daily repeat, not both (a daily repeat is one such window)",
                    ));
                }
                if r.push_mode == PushMode::Pull {
                    return Err(Invalid::new(
                        "window",
                        "a maintenance window limits pushes; it is not used when push_mode is pull (devices ask)",
                    ));
                }
                Some(MaintenanceWindow::parse(
                    &w.cron,
                    w.duration_minutes,
                    &w.time_zone,
                    w.on_close,
                )?)
            }
        };
        if r.force_reinstall && is_dynamic {
            return Err(Invalid::new(
                "force_reinstall",
                "force_reinstall is for static rollouts: a dynamic rollout would take back every device it updated",
            ));
        }

        // W2
        r.policies.check(rate.is_some(), r.push_mode, &waves)?;

        // Type (R17) by the package's status unless given.
        let rollout_type = r.rollout_type.unwrap_or(match pkg.status {
            PackageStatus::Verified | PackageStatus::NoNeed => RolloutType::Update,
            PackageStatus::Unverified => RolloutType::Verification,
        });

        Ok(RolloutSpec {
            name,
            description: r.description,
            method: r.method,
            rollout_type,
            scope: r.scope,
            source_versions,
            schedule: s,
            push_mode: r.push_mode,
            rate,
            max_concurrency,
            retry,
            timeout_minutes,
            retry_timeouts: r.retry_timeouts,
            multi_module: r.multi_module,
            override_previous: r.override_previous,
            only_new_reports: r.only_new_reports,
            app_confirm: r.app_confirm,
            download_protocol: r.download_protocol,
            tags: r.tags,
            start_on_creation: r.start_on_creation,
            abort_rules,
            waves,
            window,
            force_reinstall: r.force_reinstall,
            policies: r.policies,
        })
    }
}

fn in_range_i32(field: &str, v: i32, (lo, hi): (i32, i32)) -> Result<(), Invalid> {
    if v < lo || v > hi {
        return Err(Invalid::new(
            field,
            format!("must be from {lo} to {hi}, got {v}"),
        ));
    }
    Ok(())
}

fn check_values(field: &str, vs: &[String], max_len: usize) -> Result<(), Invalid> {
    if vs.is_empty() || vs.len() > L::MAX_SCOPE_VALUES {
        return Err(Invalid::new(
            field,
            format!("give 1 to {} values", L::MAX_SCOPE_VALUES),
        ));
    }
    for v in vs {
        bounded_text(field, v, 0, max_len)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: Millis = 1_795_000_000_000;

    fn full() -> PackageFacts {
        PackageFacts {
            kind: PackageKind::Full,
            source_version: None,
            status: PackageStatus::Verified,
            file_sizes: vec![100],
        }
    }

    fn v(s: &str) -> Version {
        Version::parse("v", s).unwrap()
    }

    fn req() -> RolloutRequest {
        RolloutRequest::new(UpdateMethod::Static, Scope::All)
    }

    #[track_caller]
    fn field_of(r: RolloutRequest, pkg: &PackageFacts) -> String {
        r.validate(pkg, NOW).unwrap_err().field
    }

    #[test]
    fn defaults_are_valid_and_type_follows_the_package_status() {
        let s = req().validate(&full(), NOW).unwrap();
        assert_eq!(s.rollout_type, RolloutType::Update);
        let mut p = full();
        p.status = PackageStatus::Unverified;
        assert_eq!(
            req().validate(&p, NOW).unwrap().rollout_type,
            RolloutType::Verification
        );
        p.status = PackageStatus::NoNeed;
        assert_eq!(
            req().validate(&p, NOW).unwrap().rollout_type,
            RolloutType::Update
        );
    }

    #[test]
    fn constant_rate_limits() {
        for (n, ok) in [(9, false), (10, true), (10_000, true), (10_001, false)] {
            let mut r = req();
            r.rate = Some(RateRequest::Constant { per_minute: n });
            assert_eq!(r.clone().validate(&full(), NOW).is_ok(), ok, "{n}");
            if !ok {
                assert_eq!(field_of(r, &full()), "rate.per_minute");
            }
        }
    }

    fn variable(base: i64, factor: f64, max: i64, threshold: i64) -> RolloutRequest {
        let mut r = req();
        r.rate = Some(RateRequest::Variable {
            base,
            factor,
            max,
            threshold,
            count_on: RateCountOn::Pushed,
        });
        r
    }

    #[test]
    fn variable_rate_limits_and_factor_rounding() {
        assert!(variable(50, 2.0, 10_000, 1000)
            .validate(&full(), NOW)
            .is_ok());
        assert_eq!(field_of(variable(0, 2.0, 100, 1), &full()), "rate.base");
        assert_eq!(
            field_of(variable(10_001, 2.0, 10_000, 1), &full()),
            "rate.base"
        );
        assert_eq!(field_of(variable(200, 2.0, 100, 1), &full()), "rate.base");
        assert_eq!(field_of(variable(1, 2.0, 9, 1), &full()), "rate.max");
        assert_eq!(field_of(variable(1, 2.0, 10_001, 1), &full()), "rate.max");
        assert_eq!(field_of(variable(1, 2.0, 10, 0), &full()), "rate.threshold");
        assert_eq!(
            field_of(variable(1, 2.0, 10, 100_001), &full()),
            "rate.threshold"
        );
        assert_eq!(field_of(variable(1, 1.19, 10, 1), &full()), "rate.factor");
        assert_eq!(field_of(variable(1, 5.01, 10, 1), &full()), "rate.factor");
        assert_eq!(
            field_of(variable(1, f64::NAN, 10, 1), &full()),
            "rate.factor"
        );
        // rounded to two decimals: 1.199 -> 1.20 is allowed, 4.999 -> 5.00 too
        let s = variable(1, 1.199, 10, 1).validate(&full(), NOW).unwrap();
        assert!(matches!(
            s.rate,
            Some(PushRate::Variable {
                factor_centi: 120,
                ..
            })
        ));
        let s = variable(1, 2.345_6, 10, 1).validate(&full(), NOW).unwrap();
        assert!(matches!(
            s.rate,
            Some(PushRate::Variable {
                factor_centi: 235,
                ..
            })
        ));
    }

    #[test]
    fn pull_mode_takes_no_rate() {
        let mut r = req();
        r.push_mode = PushMode::Pull;
        r.rate = Some(RateRequest::Constant { per_minute: 100 });
        assert_eq!(field_of(r, &full()), "rate");
    }

    #[test]
    fn retry_interval_must_be_shorter_than_the_timeout() {
        let mut r = req();
        r.timeout_minutes = Some(60);
        r.retry = Some((30, 2));
        assert!(r.clone().validate(&full(), NOW).is_ok());
        r.retry = Some((60, 2));
        assert_eq!(field_of(r.clone(), &full()), "retry.interval_minutes");
        r.timeout_minutes = Some(1440);
        r.retry = Some((1440, 1));
        assert_eq!(field_of(r.clone(), &full()), "retry.interval_minutes");
        r.retry = Some((60, 1));
        assert!(r.clone().validate(&full(), NOW).is_ok());
        // without a timeout any interval is allowed
        r.timeout_minutes = None;
        r.retry = Some((1440, 5));
        assert!(r.validate(&full(), NOW).is_ok());
    }

    #[test]
    fn retry_and_timeout_values() {
        for (i, c, field) in [
            (5, 1, "retry.interval_minutes"),
            (-1, 1, "retry.interval_minutes"),
            (10, 3, "retry.max_retries"),
            (10, 0, "retry.max_retries"),
        ] {
            let mut r = req();
            r.retry = Some((i, c));
            assert_eq!(field_of(r, &full()), field, "{i} {c}");
        }
        for t in [0, 1441] {
            let mut r = req();
            r.timeout_minutes = Some(t);
            assert_eq!(field_of(r, &full()), "timeout_minutes");
        }
        let mut r = req();
        r.retry_timeouts = true;
        assert_eq!(field_of(r, &full()), "retry_timeouts");
        let mut r = req();
        r.max_concurrency = Some(0);
        assert_eq!(field_of(r, &full()), "max_concurrency");
    }

    #[test]
    fn schedule_rules() {
        let mut r = req();
        r.schedule.start_at = Some(NOW + 7 * L::DAY);
        assert!(r.clone().validate(&full(), NOW).is_ok());
        r.schedule.start_at = Some(NOW + 7 * L::DAY + 1);
        assert_eq!(field_of(r.clone(), &full()), "schedule.start_at");
        // a past start starts at once; the end counts from now
        r.schedule.start_at = Some(NOW - L::DAY);
        r.schedule.end_at = Some(NOW + L::HOUR);
        let s = r.clone().validate(&full(), NOW).unwrap();
        assert!(!s.starts_later(NOW));
        r.schedule.end_at = Some(NOW + L::HOUR - 1);
        assert_eq!(field_of(r.clone(), &full()), "schedule.end_at");
        r.schedule.start_at = Some(NOW + L::HOUR);
        r.schedule.end_at = Some(NOW + L::HOUR + 30 * L::DAY);
        assert!(r.clone().validate(&full(), NOW).is_ok());
        r.schedule.end_at = Some(NOW + L::HOUR + 30 * L::DAY + 1);
        assert_eq!(field_of(r, &full()), "schedule.end_at");
    }

    #[test]
    fn push_time_is_clipped_to_start_end_and_the_daily_window() {
        let day = L::DAY;
        let s = Schedule {
            start_at: Some(10 * day + 2 * L::HOUR),
            end_at: Some(10 * day + 3 * L::HOUR),
            daily_repeat: false,
            utc_offset_minutes: 0,
        };
        assert_eq!(s.push_time_between(0, 20 * day), L::HOUR);
        assert!(!s.allows_push(10 * day + 2 * L::HOUR));
        assert!(s.allows_push(10 * day + 2 * L::HOUR + 1));
        assert!(s.ended(10 * day + 3 * L::HOUR));
        let daily = Schedule {
            daily_repeat: true,
            ..s
        };
        assert!(!daily.ended(12 * day));
        // three days of windows of an hour each, and nothing between them
        assert_eq!(daily.push_time_between(0, 13 * day), 3 * L::HOUR);
        assert_eq!(daily.push_time_between(11 * day, 11 * day + 2 * L::HOUR), 0);
        assert!(daily.allows_push(11 * day + 2 * L::HOUR + 30 * L::MINUTE));
        // read in UTC+8: the same instants are the window of local 10:00 to 11:00
        let east = Schedule {
            utc_offset_minutes: 480,
            ..daily
        };
        assert_eq!(east.push_time_between(11 * day, 12 * day), L::HOUR);
    }

    #[test]
    fn daily_repeat_only_within_one_date() {
        // NOW is 2026-11-18 ~ 20:26 UTC; pick tomorrow 09:00–17:00 UTC
        let day = NOW.div_euclid(L::DAY) + 1;
        let mut r = req();
        r.schedule.daily_repeat = true;
        assert_eq!(field_of(r.clone(), &full()), "schedule.daily_repeat");
        r.schedule.start_at = Some(day * L::DAY + 9 * L::HOUR);
        r.schedule.end_at = Some(day * L::DAY + 17 * L::HOUR);
        assert!(r.clone().validate(&full(), NOW).is_ok());
        r.schedule.end_at = Some((day + 1) * L::DAY + 9 * L::HOUR);
        assert_eq!(field_of(r.clone(), &full()), "schedule.daily_repeat");
        // the same instants on one date in UTC+8 are 17:00–01:00 there: two dates
        r.schedule.end_at = Some(day * L::DAY + 17 * L::HOUR);
        r.schedule.utc_offset_minutes = 480;
        assert_eq!(field_of(r.clone(), &full()), "schedule.daily_repeat");
        r.schedule.utc_offset_minutes = 841;
        assert_eq!(field_of(r, &full()), "schedule.utc_offset_minutes");
    }

    #[test]
    fn phased_is_static_only_and_takes_the_floor() {
        let names = DeviceSource::Names(vec![DeviceName::parse("n", "d1").unwrap()]);
        let mut r = RolloutRequest::new(
            UpdateMethod::Dynamic,
            Scope::Phased {
                devices: names.clone(),
                percent: 50,
            },
        );
        r.source_versions = vec![v("1.0")];
        assert_eq!(field_of(r, &full()), "scope.kind");
        for p in [0, 101] {
            let r = RolloutRequest::new(
                UpdateMethod::Static,
                Scope::Phased {
                    devices: names.clone(),
                    percent: p,
                },
            );
            assert_eq!(field_of(r, &full()), "scope.percent");
        }
        assert_eq!(Scope::phased_take(7, 50), 3);
        assert_eq!(Scope::phased_take(1_000_000, 33), 330_000);
        assert_eq!(Scope::phased_take(1, 99), 0);
        let r = RolloutRequest::new(
            UpdateMethod::Static,
            Scope::Selected(DeviceSource::Names(vec![])),
        );
        assert_eq!(field_of(r, &full()), "scope.device_names");
    }

    #[test]
    fn source_version_rules() {
        // required for a full dynamic rollout
        let r = RolloutRequest::new(UpdateMethod::Dynamic, Scope::All);
        assert_eq!(field_of(r, &full()), "source_versions");
        // not used with selected
        let sel = Scope::Selected(DeviceSource::Names(vec![
            DeviceName::parse("n", "d").unwrap()
        ]));
        let mut r = RolloutRequest::new(UpdateMethod::Static, sel);
        r.source_versions = vec![v("1.0")];
        assert_eq!(field_of(r, &full()), "source_versions");
        // a diff package: its source version and nothing else; filled in when left out
        let diff = PackageFacts {
            kind: PackageKind::Diff,
            source_version: Some(v("1.0")),
            ..full()
        };
        let mut r = req();
        r.source_versions = vec![v("0.9")];
        assert_eq!(field_of(r.clone(), &diff), "source_versions");
        r.source_versions = vec![];
        assert_eq!(
            r.validate(&diff, NOW).unwrap().source_versions,
            vec![v("1.0")]
        );
        let mut r = RolloutRequest::new(UpdateMethod::Dynamic, Scope::All);
        r.source_versions = vec![v("1.0"), v("1.0")];
        assert_eq!(
            r.validate(&diff, NOW).unwrap().source_versions,
            vec![v("1.0")]
        );
    }

    #[test]
    fn multi_module_and_override_exclusive_and_r12_dynamic_only() {
        let mut r = req();
        r.multi_module = true;
        r.override_previous = true;
        assert_eq!(field_of(r, &full()), "override_previous");
        let mut r = req();
        r.only_new_reports = true;
        assert_eq!(field_of(r, &full()), "only_new_reports");
    }

    #[test]
    fn mqtt_download_is_refused_with_the_reason() {
        let mut r = req();
        r.download_protocol = DownloadProtocol::Mqtt;
        let e = r.clone().validate(&full(), NOW).unwrap_err();
        assert_eq!(e.field, "download_protocol");
        assert!(e.message.contains("not supported"), "{}", e.message);
        let big = PackageFacts {
            file_sizes: vec![L::MQTT_MAX_FILE + 1],
            ..full()
        };
        let e = r.clone().validate(&big, NOW).unwrap_err();
        assert!(e.message.contains("16 MB"), "{}", e.message);
        let two = PackageFacts {
            file_sizes: vec![1, 1],
            ..full()
        };
        assert!(r
            .validate(&two, NOW)
            .unwrap_err()
            .message
            .contains("one file"));
    }

    #[test]
    fn tag_rules() {
        let t = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert!(check_rollout_tags("tags", &[t("a.b1", "x")]).is_ok());
        assert_eq!(
            check_rollout_tags("tags", &[t("a_b", "x")])
                .unwrap_err()
                .field,
            "tags.a_b"
        );
        assert!(check_rollout_tags("tags", &[t(&"k".repeat(30), "x")]).is_ok());
        assert!(check_rollout_tags("tags", &[t(&"k".repeat(31), "x")]).is_err());
        assert!(check_rollout_tags("tags", &[t("k", "")]).is_err());
        assert!(check_rollout_tags("tags", &[t("k", &"v".repeat(1025))]).is_err());
        let eleven: Vec<_> = (0..11).map(|i| t(&format!("k{i}"), "v")).collect();
        assert_eq!(
            check_rollout_tags("tags", &eleven).unwrap_err().field,
            "tags"
        );
        // 4 × (2 + 1000) = 4008 fits; a fifth pushes past 4096
        let mut big: Vec<_> = (0..4)
            .map(|i| t(&format!("k{i}"), &"v".repeat(1000)))
            .collect();
        assert!(check_rollout_tags("tags", &big).is_ok());
        big.push(t("k9", &"v".repeat(100)));
        assert_eq!(check_rollout_tags("tags", &big).unwrap_err().field, "tags");
        assert!(check_rollout_tags("tags", &[t("a", "1"), t("a", "2")]).is_err());
    }

    #[test]
    fn scope_value_rules() {
        let r = RolloutRequest::new(
            UpdateMethod::Static,
            Scope::Attribute {
                name: "temp".into(),
                value: AttributeValue::Range { min: 5.0, max: 1.0 },
            },
        );
        assert_eq!(field_of(r, &full()), "scope.min");
        let r = RolloutRequest::new(
            UpdateMethod::Static,
            Scope::Tag {
                key: "k".into(),
                values: vec![],
            },
        );
        assert_eq!(field_of(r, &full()), "scope.values");
        let r = RolloutRequest::new(
            UpdateMethod::Static,
            Scope::Tag {
                key: "bad key".into(),
                values: vec!["a".into()],
            },
        );
        assert_eq!(field_of(r, &full()), "scope.key");
        let r = RolloutRequest::new(UpdateMethod::Static, Scope::AssetNodes(vec![]));
        assert_eq!(field_of(r, &full()), "scope.node_ids");
    }
}
