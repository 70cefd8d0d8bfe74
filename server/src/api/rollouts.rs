//! Rollouts and tasks over HTTP: create (every scope and option of both seeds), read with
//! status counts, list, start, cancel (whole, strategy, by state, a package's tasks per
//! device), re-run failed, confirm many, task lists with CSV export, the audit trail, and
//! uploaded device lists for `selected`/`phased` scopes (SPEC B1–B10, P2, R1–R17, O1–O4).

use super::auth::Auth;
use super::dto::{PageDto, PageQuery};
use super::extract::{Json, Query};
use super::stream::{csv_field, paged_csv, BodyChunks, CsvRecords, QuoteProblem};
use super::{ApiError, ApiResult, AppState};
use crate::clock::{rfc3339, Millis};
use crate::domain::{
    limits, role::Action, AssetNodeId, AttributeValue, DeviceId, DeviceListId, DeviceName,
    DeviceSource, DownloadProtocol, GroupId, PackageId, ProductId, PushMode, PushRate, RateCountOn,
    RateRequest, RolloutId, RolloutRequest, RolloutState, RolloutType, Schedule, Scope, TaskId,
    TaskState, UpdateMethod, Version,
};
use crate::store::{Actor, AuditEvent, Rollout, RolloutFilter, TaskCounts, TaskOwner, TaskRow};
use actix_web::{get, patch, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create_rollout)
        .service(list_rollouts)
        .service(get_rollout)
        .service(start_rollout)
        .service(cancel_rollout)
        .service(change_rollout)
        .service(pause_rollout)
        .service(resume_rollout)
        .service(cancel_strategy)
        .service(cancel_tasks)
        .service(rerun_failed)
        .service(rollout_tasks)
        .service(rollout_tasks_csv)
        .service(rollout_events)
        .service(device_tasks)
        .service(package_tasks)
        .service(package_tasks_csv)
        .service(cancel_package_tasks)
        .service(confirm_tasks)
        .service(device_list_template)
        .service(create_device_list);
}

type E = super::error::ErrorBody;

/// Which devices the rollout takes; `kind` says which other fields apply.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeDto {
    /// `all`, `selected`, `phased`, `group`, `attribute`, `tag` or `asset_nodes`.
    pub kind: String,
    /// `selected`/`phased`: 1 to 10,000 device names; or give `device_list_id`.
    pub device_names: Option<Vec<String>>,
    /// `selected`/`phased`: an uploaded device list (up to 1,000,000 names).
    pub device_list_id: Option<i64>,
    /// `phased`: adoption percentage 1..100; the rollout takes floor(count × percent / 100).
    pub percent: Option<i64>,
    /// `group`: the group; its subgroups are included.
    pub group_id: Option<i64>,
    /// `attribute`: the attribute name.
    pub name: Option<String>,
    /// `attribute` (instead of a range) and `tag`: 1 to 100 values.
    pub values: Option<Vec<String>>,
    /// `attribute`: numeric range, both ends included.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `tag`: the tag key.
    pub key: Option<String>,
    /// `asset_nodes`: nodes (in at most 5 trees); devices on them and below.
    pub node_ids: Option<Vec<i64>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDto {
    /// RFC 3339; at most 7 days ahead; a time already past starts at once.
    pub start_at: Option<String>,
    /// RFC 3339; 1 hour to 30 days after the start; at the end unpushed tasks are cancelled.
    pub end_at: Option<String>,
    /// Push only inside the start–end time of day, every day (start and end on one date).
    #[serde(default)]
    pub daily_repeat: bool,
    /// Offset from UTC (minutes, -720..840) the date and daily window are read in.
    #[serde(default)]
    pub utc_offset_minutes: i32,
}

/// Push rate: `constant` (per_minute 10..10,000) or `variable` (base 1..10,000 ≤ max,
/// factor 1.20..5.00, max 10..10,000, threshold 1..100,000 counted on pushed or succeeded).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateDto {
    /// `constant` or `variable`.
    pub kind: String,
    pub per_minute: Option<i64>,
    pub base: Option<i64>,
    pub factor: Option<f64>,
    pub max: Option<i64>,
    pub threshold: Option<i64>,
    /// `pushed` (default) or `succeeded`.
    pub count_on: Option<String>,
}

/// Retry after failure: interval 0 (at once), 10, 30, 60 or 1440 minutes; 1, 2 or 5 times.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDto {
    pub interval_minutes: i64,
    pub max_retries: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// 1 to 128 characters; default "<module> <version>".
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    /// `static` (default) or `dynamic`.
    pub method: Option<String>,
    /// `update` or `verification`; by default from the package's status.
    #[serde(rename = "type")]
    pub rollout_type: Option<String>,
    pub scope: ScopeDto,
    /// Versions devices must run now (required for a full dynamic rollout; not with
    /// `selected`; for a diff, its source version only).
    #[serde(default)]
    pub source_versions: Vec<String>,
    pub schedule: Option<ScheduleDto>,
    /// `push` (default) or `pull` (devices ask).
    pub push_mode: Option<String>,
    /// Absent: no rate limit.
    pub rate: Option<RateDto>,
    /// At most this many tasks pending or pushed at once.
    pub max_concurrency: Option<i64>,
    pub retry: Option<RetryDto>,
    /// Device timeout, 1..1440 minutes from the first progress report.
    pub timeout_minutes: Option<i64>,
    /// Retry timed-out tasks too (needs retry and timeout).
    #[serde(default)]
    pub retry_timeouts: bool,
    #[serde(default)]
    pub multi_module: bool,
    #[serde(default)]
    pub override_previous: bool,
    /// Dynamic only: only devices that report versions after the start.
    #[serde(default)]
    pub only_new_reports: bool,
    /// Tasks wait in `confirming` until confirmed.
    #[serde(default)]
    pub app_confirm: bool,
    /// `https` (default); `mqtt` is refused until the MQTT file download is built.
    pub download_protocol: Option<String>,
    /// At most 10; key 1–30 letters, digits and `.`; value 1–1024; 4096 characters in all.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Default true; false creates a `draft` to start by hand.
    pub start_on_creation: Option<bool>,
    /// G1: at most 10 rules; the first that is met pauses or cancels the rollout.
    #[serde(default)]
    pub abort_rules: Vec<super::safety::AbortRuleDto>,
    /// G3: none, or 2 to 10 ordered waves (static rollouts only).
    #[serde(default)]
    pub waves: Vec<super::safety::WaveDto>,
    /// G4: pushes only inside these windows (not with a daily repeat, nor in pull mode).
    pub window: Option<super::safety::WindowDto>,
    /// G6: devices already on the target get a task too (static rollouts only); such a
    /// task succeeds only on a version report after the device reported progress.
    #[serde(default)]
    pub force_reinstall: bool,
    /// W2: a tenant's policy version per hook, with its config.
    #[serde(default)]
    pub policies: super::policies::PoliciesDto,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateOut {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_on: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutDto {
    pub id: i64,
    pub package_id: i64,
    pub product_id: i64,
    pub module: String,
    pub target_version: String,
    pub name: String,
    pub description: String,
    pub method: String,
    #[serde(rename = "type")]
    pub rollout_type: String,
    pub state: String,
    pub scope_kind: String,
    /// The scope's parameters (inline names are stored as a device list).
    #[schema(value_type = Object)]
    pub scope: serde_json::Value,
    pub source_versions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
    pub daily_repeat: bool,
    pub utc_offset_minutes: i32,
    pub push_mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_interval_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<u32>,
    pub retry_timeouts: bool,
    pub multi_module: bool,
    pub override_previous: bool,
    pub only_new_reports: bool,
    pub app_confirm: bool,
    pub download_protocol: String,
    pub tags: BTreeMap<String, String>,
    /// A dynamic rollout whose strategy was cancelled takes no new devices.
    pub strategy_cancelled: bool,
    /// Tasks created with the rollout.
    pub tasks_created: u64,
    /// Tasks by state (every state listed).
    pub counts: BTreeMap<String, u64>,
    /// Succeeded / (succeeded + failed + rejected), 0..1; absent before any task finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Finished tasks (any terminal state) / all tasks, 0..1.
    pub progress: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub abort_rules: Vec<super::safety::AbortRuleOut>,
    /// Finished tasks by outcome, as the abort rules count them.
    pub outcomes: super::safety::OutcomesOut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<super::safety::WaveOut>,
    /// The wave running now (1-based), with waves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_wave: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<super::safety::WindowOut>,
    pub force_reinstall: bool,
    /// W2: the policy version per hook (a hook left out runs the built-in behaviour).
    #[serde(skip_serializing_if = "super::policies::PoliciesDto::is_empty")]
    pub policies: super::policies::PoliciesDto,
}

fn rollout_dto(
    r: Rollout,
    counts: Option<&TaskCounts>,
    waves: Option<&[crate::store::WaveCounts]>,
) -> RolloutDto {
    let s = r.spec;
    let mut c = BTreeMap::new();
    let mut succeeded = 0;
    let mut ended = 0;
    let mut finished = 0;
    let mut total = 0;
    for st in TaskState::ALL {
        let n = counts.map_or(0, |k| k.get(*st));
        c.insert(st.as_str().to_owned(), n);
        total += n;
        if st.is_terminal() {
            finished += n;
        }
        match st {
            TaskState::Succeeded => {
                succeeded += n;
                ended += n
            }
            TaskState::Failed | TaskState::Rejected => ended += n,
            _ => {}
        }
    }
    let (scope_kind, scope) = scope_out(&s.scope);
    RolloutDto {
        id: r.id.0,
        package_id: r.package_id.0,
        product_id: r.product_id.0,
        module: r.module.into_string(),
        target_version: r.target_version.into_string(),
        name: s.name,
        description: s.description,
        method: s.method.as_str().into(),
        rollout_type: s.rollout_type.as_str().into(),
        state: r.state.as_str().into(),
        scope_kind,
        scope,
        source_versions: s
            .source_versions
            .into_iter()
            .map(Version::into_string)
            .collect(),
        start_at: s.schedule.start_at.map(rfc3339),
        end_at: s.schedule.end_at.map(rfc3339),
        daily_repeat: s.schedule.daily_repeat,
        utc_offset_minutes: s.schedule.utc_offset_minutes,
        push_mode: s.push_mode.as_str().into(),
        rate: s.rate.map(rate_out),
        max_concurrency: s.max_concurrency,
        retry_interval_minutes: s.retry.map(|r| r.interval_minutes),
        max_retries: s.retry.map(|r| r.max_retries),
        timeout_minutes: s.timeout_minutes,
        retry_timeouts: s.retry_timeouts,
        multi_module: s.multi_module,
        override_previous: s.override_previous,
        only_new_reports: s.only_new_reports,
        app_confirm: s.app_confirm,
        download_protocol: s.download_protocol.as_str().into(),
        tags: s.tags.into_iter().collect(),
        strategy_cancelled: r.strategy_cancelled,
        tasks_created: r.task_count,
        counts: c,
        success_rate: (ended > 0).then(|| succeeded as f64 / ended as f64),
        progress: if total == 0 {
            0.0
        } else {
            finished as f64 / total as f64
        },
        created_by: r.created_by,
        created_at: rfc3339(r.created_at),
        started_at: r.started_at.map(rfc3339),
        finished_at: r.finished_at.map(rfc3339),
        abort_rules: super::safety::abort_rules_out(s.abort_rules),
        outcomes: super::safety::outcomes_out(r.outcomes),
        current_wave: (!s.waves.is_empty()).then_some(r.current_wave),
        waves: super::safety::waves_out(s.waves, waves),
        window: s.window.map(super::safety::window_out),
        force_reinstall: s.force_reinstall,
        policies: super::policies::policies_out(&s.policies),
    }
}

pub(super) fn rate_out(r: PushRate) -> RateOut {
    match r {
        PushRate::Constant { per_minute } => RateOut {
            kind: "constant".into(),
            per_minute: Some(per_minute),
            base: None,
            factor: None,
            max: None,
            threshold: None,
            count_on: None,
        },
        PushRate::Variable {
            base,
            factor_centi,
            max,
            threshold,
            count_on,
        } => RateOut {
            kind: "variable".into(),
            per_minute: None,
            base: Some(base),
            factor: Some(f64::from(factor_centi) / 100.0),
            max: Some(max),
            threshold: Some(threshold),
            count_on: Some(count_on.as_str().into()),
        },
    }
}

fn scope_out(s: &Scope) -> (String, serde_json::Value) {
    use serde_json::json;
    let v = match s {
        Scope::All => json!({}),
        Scope::Selected(DeviceSource::List(l)) => json!({"device_list_id": l.0}),
        Scope::Phased {
            devices: DeviceSource::List(l),
            percent,
        } => json!({"device_list_id": l.0, "percent": percent}),
        Scope::Selected(_) | Scope::Phased { .. } => json!({}),
        Scope::Group(g) => json!({"group_id": g.0}),
        Scope::Attribute { name, value } => match value {
            AttributeValue::OneOf(vs) => json!({"name": name, "values": vs}),
            AttributeValue::Range { min, max } => json!({"name": name, "min": min, "max": max}),
        },
        Scope::Tag { key, values } => json!({"key": key, "values": values}),
        Scope::AssetNodes(n) => json!({"node_ids": n.iter().map(|x| x.0).collect::<Vec<_>>()}),
    };
    (s.kind().to_owned(), v)
}

fn need<T>(v: Option<T>, field: &str, why: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::invalid(field, why.to_owned()))
}

fn parse_time(field: &str, v: Option<&str>) -> Result<Option<Millis>, ApiError> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|_| {
                ApiError::invalid(
                    field,
                    "must be an RFC 3339 time such as 2026-03-21T09:00:00Z",
                )
            })
    })
    .transpose()
}

fn source(d: &ScopeDto) -> Result<DeviceSource, ApiError> {
    match (&d.device_names, d.device_list_id) {
        (Some(names), None) => Ok(DeviceSource::Names(
            names
                .iter()
                .map(|n| DeviceName::parse("scope.device_names", n.as_str()))
                .collect::<Result<_, _>>()?,
        )),
        (None, Some(l)) => Ok(DeviceSource::List(DeviceListId(l))),
        _ => Err(ApiError::invalid(
            "scope.device_names",
            "give either device_names (inline) or device_list_id (an uploaded CSV list)",
        )),
    }
}

/// Refuses fields that do not belong to the scope's kind, so nothing is silently ignored.
fn only(d: &ScopeDto, allowed: &[&str]) -> Result<(), ApiError> {
    let given = [
        ("device_names", d.device_names.is_some()),
        ("device_list_id", d.device_list_id.is_some()),
        ("percent", d.percent.is_some()),
        ("group_id", d.group_id.is_some()),
        ("name", d.name.is_some()),
        ("values", d.values.is_some()),
        ("min", d.min.is_some()),
        ("max", d.max.is_some()),
        ("key", d.key.is_some()),
        ("node_ids", d.node_ids.is_some()),
    ];
    for (f, set) in given {
        if set && !allowed.contains(&f) {
            return Err(ApiError::invalid(
                format!("scope.{f}"),
                format!("not used with scope kind {}", d.kind),
            ));
        }
    }
    Ok(())
}

fn parse_scope(d: &ScopeDto) -> Result<Scope, ApiError> {
    Ok(match d.kind.as_str() {
        "all" => {
            only(d, &[])?;
            Scope::All
        }
        "selected" => {
            only(d, &["device_names", "device_list_id"])?;
            Scope::Selected(source(d)?)
        }
        "phased" => {
            only(d, &["device_names", "device_list_id", "percent"])?;
            let p = need(d.percent, "scope.percent", "a phased scope needs percent, 1 to 100")?;
            Scope::Phased {
                devices: source(d)?,
                percent: u32::try_from(p).unwrap_or(0).min(1000),
            }
        }
        "group" => {
            only(d, &["group_id"])?;
            Scope::Group(GroupId(need(d.group_id, "scope.group_id", "a group scope needs group_id")?))
        }
        "attribute" => {
            only(d, &["name", "values", "min", "max"])?;
            let name = need(d.name.clone(), "scope.name", "an attribute scope needs the attribute name")?;
            let value = match (&d.values, d.min, d.max) {
                (Some(vs), None, None) => AttributeValue::OneOf(vs.clone()),
                (None, Some(min), Some(max)) => AttributeValue::Range { min, max },
                _ => {
                    return Err(ApiError::invalid(
                        "scope.values",
                        "give values, or a numeric range with both min and max",
                    ))
                }
            };
            Scope::Attribute { name, value }
        }
        "tag" => {
            only(d, &["key", "values"])?;
            Scope::Tag {
                key: need(d.key.clone(), "scope.key", "a tag scope needs the tag key")?,
                values: need(d.values.clone(), "scope.values", "a tag scope needs 1 to 100 values")?,
            }
        }
        "asset_nodes" => {
            only(d, &["node_ids"])?;
            Scope::AssetNodes(
                need(d.node_ids.clone(), "scope.node_ids", "an asset scope needs node_ids")?
                    .into_iter()
                    .map(AssetNodeId)
                    .collect(),
            )
        }
        other => {
            return Err(ApiError::invalid(
                "scope.kind",
                format!("must be all, selected, phased, group, attribute, tag or asset_nodes, got {other:?}"),
            ))
        }
    })
}

pub(super) fn parse_rate(r: RateDto) -> Result<RateRequest, ApiError> {
    match r.kind.as_str() {
        "constant" => {
            for (f, set) in [
                ("base", r.base.is_some()),
                ("factor", r.factor.is_some()),
                ("max", r.max.is_some()),
                ("threshold", r.threshold.is_some()),
                ("count_on", r.count_on.is_some()),
            ] {
                if set {
                    return Err(ApiError::invalid(
                        format!("rate.{f}"),
                        "not used with a constant rate",
                    ));
                }
            }
            Ok(RateRequest::Constant {
                per_minute: need(
                    r.per_minute,
                    "rate.per_minute",
                    "a constant rate needs per_minute, 10 to 10000",
                )?,
            })
        }
        "variable" => {
            if r.per_minute.is_some() {
                return Err(ApiError::invalid(
                    "rate.per_minute",
                    "not used with a variable rate; give base",
                ));
            }
            Ok(RateRequest::Variable {
                base: need(
                    r.base,
                    "rate.base",
                    "a variable rate needs base, 1 to 10000",
                )?,
                factor: need(
                    r.factor,
                    "rate.factor",
                    "a variable rate needs factor, 1.20 to 5.00",
                )?,
                max: need(r.max, "rate.max", "a variable rate needs max, 10 to 10000")?,
                threshold: need(
                    r.threshold,
                    "rate.threshold",
                    "a variable rate needs threshold, 1 to 100000",
                )?,
                count_on: match r.count_on.as_deref() {
                    None => RateCountOn::Pushed,
                    Some(s) => RateCountOn::parse_field("rate.count_on", s)?,
                },
            })
        }
        other => Err(ApiError::invalid(
            "rate.kind",
            format!("must be constant or variable, got {other:?}"),
        )),
    }
}

pub(super) fn to_request(b: CreateRollout) -> Result<RolloutRequest, ApiError> {
    let method = match b.method.as_deref() {
        None => UpdateMethod::Static,
        Some(m) => UpdateMethod::parse_field("method", m)?,
    };
    let mut r = RolloutRequest::new(method, parse_scope(&b.scope)?);
    r.name = b.name;
    r.description = b.description;
    r.rollout_type = b
        .rollout_type
        .as_deref()
        .map(|t| RolloutType::parse_field("type", t))
        .transpose()?;
    r.source_versions = b
        .source_versions
        .iter()
        .map(|v| Version::parse("source_versions", v.as_str()))
        .collect::<Result<_, _>>()?;
    let sched = b.schedule.unwrap_or_default();
    r.schedule = Schedule {
        start_at: parse_time("schedule.start_at", sched.start_at.as_deref())?,
        end_at: parse_time("schedule.end_at", sched.end_at.as_deref())?,
        daily_repeat: sched.daily_repeat,
        utc_offset_minutes: sched.utc_offset_minutes,
    };
    r.push_mode = match b.push_mode.as_deref() {
        None => PushMode::Push,
        Some(m) => PushMode::parse_field("push_mode", m)?,
    };
    r.rate = b.rate.map(parse_rate).transpose()?;
    r.max_concurrency = b.max_concurrency;
    r.retry = b.retry.map(|x| (x.interval_minutes, x.max_retries));
    r.timeout_minutes = b.timeout_minutes;
    r.retry_timeouts = b.retry_timeouts;
    r.multi_module = b.multi_module;
    r.override_previous = b.override_previous;
    r.only_new_reports = b.only_new_reports;
    r.app_confirm = b.app_confirm;
    r.download_protocol = match b.download_protocol.as_deref() {
        None => DownloadProtocol::Https,
        Some(p) => DownloadProtocol::parse_field("download_protocol", p)?,
    };
    r.tags = b.tags.into_iter().collect();
    r.start_on_creation = b.start_on_creation.unwrap_or(true);
    r.abort_rules = super::safety::parse_abort_rules(b.abort_rules)?;
    r.waves = super::safety::parse_waves(b.waves)?;
    r.window = b.window.map(super::safety::parse_window).transpose()?;
    r.force_reinstall = b.force_reinstall;
    r.policies = super::policies::parse_policies(b.policies)?;
    Ok(r)
}

/// Creates a rollout of a package and its tasks in one transaction (SPEC B1–B10, P2, R1–R17).
/// A 422 `unknown_devices` lists inline names that are not devices of the product.
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path, description = "package id")), request_body = CreateRollout,
    responses((status = 201, body = RolloutDto), (status = 400, body = E), (status = 403, body = E),
        (status = 404, body = E), (status = 409, body = E), (status = 422, body = E)))]
#[post("/v1/packages/{id}/rollouts")]
async fn create_rollout(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<CreateRollout>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let package = PackageId(*id);
    let facts = state.store.package_facts(tenant, package).await?;
    let now = state.now();
    let spec = to_request(body.into_inner())?.validate(&facts, now)?;
    super::policies::check_attachments(&state, tenant, &spec.policies).await?;
    let r = state
        .store
        .create_rollout(
            tenant,
            package,
            spec,
            &Actor::key(auth.0.key),
            Some(auth.0.key),
            Some(state.policies.as_ref()),
            now,
        )
        .await?;
    Ok(HttpResponse::Created().json(full_dto(&state, r).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RolloutListQuery {
    /// Only rollouts of this package.
    pub package_id: Option<i64>,
    /// draft, scheduled, running, paused, completed or cancelled.
    pub state: Option<String>,
    pub cursor: Option<String>,
    /// 1 to 1000 (default 100).
    pub limit: Option<u64>,
}

/// Lists the tenant's rollouts (without counts; read one for its status).
#[utoipa::path(tag = "rollouts", params(RolloutListQuery),
    responses((status = 200, body = PageDto<RolloutDto>), (status = 400, body = E)))]
#[get("/v1/rollouts")]
async fn list_rollouts(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<RolloutListQuery>,
) -> ApiResult<HttpResponse> {
    let q = q.into_inner();
    let page = PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .request()?;
    let filter = RolloutFilter {
        package: q.package_id.map(PackageId),
        state: q
            .state
            .as_deref()
            .map(|s| RolloutState::parse_field("state", s))
            .transpose()?,
    };
    let page = state
        .store
        .list_rollouts(auth.tenant(), &filter, page)
        .await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, |r| rollout_dto(r, None, None))))
}

/// Reads a rollout with its task counts by state, success rate and progress (SPEC O2).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutDto), (status = 404, body = E)))]
#[get("/v1/rollouts/{id}")]
async fn get_rollout(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.tenant();
    let r = state.store.get_rollout(tenant, RolloutId(*id)).await?;
    Ok(HttpResponse::Ok().json(full_dto(&state, r).await?))
}

/// A rollout with its task counts (and each wave's, with waves).
async fn full_dto(state: &AppState, r: Rollout) -> ApiResult<RolloutDto> {
    let counts = state.store.task_counts(r.tenant_id, r.id).await?;
    let waves = if r.spec.waves.is_empty() {
        None
    } else {
        Some(state.store.wave_counts(r.tenant_id, r.id).await?)
    };
    Ok(rollout_dto(r, Some(&counts), waves.as_deref()))
}

pub(super) async fn reply_rollout(state: &AppState, r: Rollout) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(full_dto(state, r).await?))
}

/// Starts a draft rollout by hand (SPEC R17); it is `scheduled` while its start is ahead.
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutDto), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[post("/v1/rollouts/{id}/start")]
async fn start_rollout(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let r = state
        .store
        .start_rollout(tenant, RolloutId(*id), &Actor::key(auth.0.key), state.now())
        .await?;
    reply_rollout(&state, r).await
}

/// Cancels a whole rollout: every unfinished task becomes cancelled (SPEC O1).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutDto), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[post("/v1/rollouts/{id}/cancel")]
async fn cancel_rollout(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let r = state
        .store
        .cancel_rollout(tenant, RolloutId(*id), &Actor::key(auth.0.key), state.now())
        .await?;
    reply_rollout(&state, r).await
}

/// What may change in an unfinished rollout; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRollout {
    /// A new push rate of the same kind (constant stays constant, variable stays variable).
    pub rate: Option<RateDto>,
    /// Dynamic rollouts of a full package, not group-scoped: devices already on an added
    /// version join; a removed version leaves tasks alone.
    pub source_versions: Option<Vec<String>>,
    /// Dynamic rollouts: minutes 1..1440, or `null` to remove; only tasks made from now on
    /// take it.
    #[schema(value_type = Option<i64>, nullable)]
    #[serde(default, deserialize_with = "present")]
    pub timeout_minutes: Option<Option<i64>>,
    /// Replaces the tags; later pushes carry them.
    pub tags: Option<BTreeMap<String, String>>,
    /// G1: replaces the abort rules (a rule that fired is armed again).
    pub abort_rules: Option<Vec<super::safety::AbortRuleDto>>,
}

/// Tells a field given as `null` (Some(None)) from one left out (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

/// Changes a rollout while it runs: its push rate (SPEC R6), a dynamic rollout's source
/// versions and device timeout (B9, R16), its tags (R15).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)), request_body = ChangeRollout,
    responses((status = 200, body = RolloutDto), (status = 400, body = E), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[patch("/v1/rollouts/{id}")]
async fn change_rollout(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<ChangeRollout>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let b = body.0;
    let source_versions = b
        .source_versions
        .map(|vs| {
            vs.iter()
                .map(|v| Version::parse("source_versions", v))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let change = crate::domain::RolloutChange {
        rate: b.rate.map(parse_rate).transpose()?,
        source_versions,
        timeout_minutes: b.timeout_minutes,
        tags: b.tags.map(|t| t.into_iter().collect()),
        abort_rules: b
            .abort_rules
            .map(super::safety::parse_abort_rules)
            .transpose()?,
    };
    let r = state
        .store
        .change_rollout(
            tenant,
            RolloutId(*id),
            change,
            &Actor::key(auth.0.key),
            Some(state.policies.as_ref()),
            state.now(),
        )
        .await?;
    reply_rollout(&state, r).await
}

/// Pauses a running rollout: it pushes nothing, and the timers of its not-yet-started
/// tasks stand still until it is resumed (SPEC G2).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutDto), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[post("/v1/rollouts/{id}/pause")]
async fn pause_rollout(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let r = state
        .store
        .pause_rollout(tenant, RolloutId(*id), &Actor::key(auth.0.key), state.now())
        .await?;
    reply_rollout(&state, r).await
}

/// Resumes a paused rollout (SPEC G2).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutDto), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[post("/v1/rollouts/{id}/resume")]
async fn resume_rollout(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let r = state
        .store
        .resume_rollout(tenant, RolloutId(*id), &Actor::key(auth.0.key), state.now())
        .await?;
    reply_rollout(&state, r).await
}

/// Cancels only a dynamic rollout's strategy: no new devices join, existing tasks go on
/// (SPEC O1).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutDto), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[post("/v1/rollouts/{id}/cancel-strategy")]
async fn cancel_strategy(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let r = state
        .store
        .cancel_strategy(tenant, RolloutId(*id), &Actor::key(auth.0.key), state.now())
        .await?;
    reply_rollout(&state, r).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelByState {
    /// Any of confirming, waiting, pending, pushed, in_progress.
    pub states: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Affected {
    /// How many tasks changed.
    pub tasks: u64,
}

/// Cancels a rollout's tasks in the given states, `in_progress` included (marked
/// cancelled; a later success report is still recorded) (SPEC O1).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)), request_body = CancelByState,
    responses((status = 200, body = Affected), (status = 400, body = E), (status = 403, body = E), (status = 404, body = E)))]
#[post("/v1/rollouts/{id}/tasks/cancel")]
async fn cancel_tasks(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<CancelByState>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let body = body.into_inner();
    if body.states.is_empty() {
        return Err(ApiError::invalid(
            "states",
            "give at least one of confirming, waiting, pending, pushed, in_progress",
        ));
    }
    let mut states = Vec::new();
    for s in &body.states {
        let st = TaskState::parse_field("states", s)?;
        if st.is_terminal() {
            return Err(ApiError::invalid(
                "states",
                format!("{s} is final; cancel tasks in confirming, waiting, pending, pushed or in_progress"),
            ));
        }
        states.push(st);
    }
    let n = state
        .store
        .cancel_tasks_by_state(
            tenant,
            RolloutId(*id),
            &states,
            &Actor::key(auth.0.key),
            state.now(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(Affected { tasks: n }))
}

/// Re-runs a rollout's failed tasks: back to waiting, retries reset (SPEC O3).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)),
    responses((status = 200, body = Affected), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[post("/v1/rollouts/{id}/tasks/rerun-failed")]
async fn rerun_failed(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let n = state
        .store
        .rerun_failed(tenant, RolloutId(*id), &Actor::key(auth.0.key), state.now())
        .await?;
    Ok(HttpResponse::Ok().json(Affected { tasks: n }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    /// Only tasks in this state.
    pub state: Option<String>,
    pub cursor: Option<String>,
    /// 1 to 1000 (default 100).
    pub limit: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskExportQuery {
    /// Only tasks in this state.
    pub state: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDto {
    pub id: i64,
    pub rollout_id: i64,
    pub device_id: i64,
    pub device_name: String,
    pub state: String,
    /// 0..100, as the device last reported.
    pub progress: i32,
    pub retries: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The device's last message about this task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message: Option<String>,
    /// A success the device reported after the task was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_success_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

fn task_dto(t: TaskRow) -> TaskDto {
    TaskDto {
        id: t.id,
        rollout_id: t.rollout_id,
        device_id: t.device_id,
        device_name: t.device_name,
        state: t.state,
        progress: t.progress,
        retries: t.retries,
        failure_reason: t.failure_reason,
        last_message: t.last_message,
        late_success_at: t.late_success_at.map(rfc3339),
        created_at: rfc3339(t.created_at),
        updated_at: rfc3339(t.updated_at),
        started_at: t.started_at.map(rfc3339),
        finished_at: t.finished_at.map(rfc3339),
    }
}

fn state_filter(s: Option<&str>) -> Result<Option<TaskState>, ApiError> {
    s.map(|s| TaskState::parse_field("state", s).map_err(ApiError::from))
        .transpose()
}

async fn task_page(
    state: &AppState,
    auth: &Auth,
    owner: TaskOwner,
    q: TaskListQuery,
) -> ApiResult<HttpResponse> {
    let page = PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .request()?;
    let st = state_filter(q.state.as_deref())?;
    let page = state
        .store
        .list_tasks(auth.tenant(), owner, st, page)
        .await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, task_dto)))
}

const TASK_CSV_HEADER: &str =
    "task_id,rollout_id,device_name,state,progress,retries,failure_reason,created_at,updated_at,finished_at";

async fn task_csv(
    state: web::Data<AppState>,
    auth: &Auth,
    owner: TaskOwner,
    filter: Option<&str>,
    filename: &str,
) -> ApiResult<HttpResponse> {
    let tenant = auth.tenant();
    let st = state_filter(filter)?;
    // 404 before the stream starts
    state
        .store
        .list_tasks(tenant, owner, st, crate::store::PageRequest::first(1))
        .await?;
    Ok(paged_csv(filename, TASK_CSV_HEADER, move |after| {
        let state = state.clone();
        async move {
            let page = state
                .store
                .list_tasks(
                    tenant,
                    owner,
                    st,
                    crate::store::PageRequest {
                        after,
                        limit: limits::MAX_PAGE_LIMIT,
                    },
                )
                .await?;
            Ok(page
                .items
                .into_iter()
                .map(|t| {
                    let line = format!(
                        "{},{},{},{},{},{},{},{},{},{}",
                        t.id,
                        t.rollout_id,
                        csv_field(&t.device_name),
                        t.state,
                        t.progress,
                        t.retries,
                        csv_field(t.failure_reason.as_deref().unwrap_or("")),
                        rfc3339(t.created_at),
                        rfc3339(t.updated_at),
                        t.finished_at.map(rfc3339).unwrap_or_default()
                    );
                    (t.id, line)
                })
                .collect())
        }
    }))
}

/// A page of a rollout's tasks, by task id, optionally in one state (SPEC O2).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path), TaskListQuery),
    responses((status = 200, body = PageDto<TaskDto>), (status = 400, body = E), (status = 404, body = E)))]
#[get("/v1/rollouts/{id}/tasks")]
async fn rollout_tasks(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<TaskListQuery>,
) -> ApiResult<HttpResponse> {
    task_page(
        &state,
        &auth,
        TaskOwner::Rollout(RolloutId(*id)),
        q.into_inner(),
    )
    .await
}

/// Streams a rollout's tasks as CSV, optionally in one state (SPEC O2).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path), TaskExportQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = E), (status = 404, body = E)))]
#[get("/v1/rollouts/{id}/tasks.csv")]
async fn rollout_tasks_csv(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<TaskExportQuery>,
) -> ApiResult<HttpResponse> {
    let owner = TaskOwner::Rollout(RolloutId(*id));
    task_csv(state, &auth, owner, q.state.as_deref(), "tasks.csv").await
}

/// All tasks of a device, of every rollout (SPEC O2).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path), TaskListQuery),
    responses((status = 200, body = PageDto<TaskDto>), (status = 400, body = E), (status = 404, body = E)))]
#[get("/v1/devices/{id}/tasks")]
async fn device_tasks(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<TaskListQuery>,
) -> ApiResult<HttpResponse> {
    task_page(
        &state,
        &auth,
        TaskOwner::Device(DeviceId(*id)),
        q.into_inner(),
    )
    .await
}

/// Every task of all rollouts of a package (EnOS "Device List", SPEC O2).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path), TaskListQuery),
    responses((status = 200, body = PageDto<TaskDto>), (status = 400, body = E), (status = 404, body = E)))]
#[get("/v1/packages/{id}/tasks")]
async fn package_tasks(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<TaskListQuery>,
) -> ApiResult<HttpResponse> {
    task_page(
        &state,
        &auth,
        TaskOwner::Package(PackageId(*id)),
        q.into_inner(),
    )
    .await
}

/// Streams every task of all rollouts of a package as CSV (SPEC O2).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path), TaskExportQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = E), (status = 404, body = E)))]
#[get("/v1/packages/{id}/tasks.csv")]
async fn package_tasks_csv(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<TaskExportQuery>,
) -> ApiResult<HttpResponse> {
    let owner = TaskOwner::Package(PackageId(*id));
    task_csv(state, &auth, owner, q.state.as_deref(), "package-tasks.csv").await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceIds {
    /// 1 to 10,000 devices.
    pub device_ids: Vec<i64>,
}

/// Cancels a package's not-yet-started tasks (confirming, waiting, pending, pushed) of the
/// given devices, across its rollouts (Alibaba CancelOTATaskByDevice, SPEC O1).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path, description = "package id")), request_body = DeviceIds,
    responses((status = 200, body = Affected), (status = 400, body = E), (status = 403, body = E), (status = 404, body = E)))]
#[post("/v1/packages/{id}/tasks/cancel")]
async fn cancel_package_tasks(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<DeviceIds>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let ids = body.into_inner().device_ids;
    if ids.is_empty() || ids.len() > crate::domain::MAX_DEVICES_PER_CALL {
        return Err(ApiError::invalid(
            "device_ids",
            "give 1 to 10000 device ids",
        ));
    }
    let ids: Vec<DeviceId> = ids.into_iter().map(DeviceId).collect();
    let n = state
        .store
        .cancel_package_tasks(
            tenant,
            PackageId(*id),
            &ids,
            &Actor::key(auth.0.key),
            state.now(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(Affected { tasks: n }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIds {
    /// 1 to 10,000 tasks.
    pub task_ids: Vec<i64>,
}

/// Confirms many tasks waiting for the app's confirmation at once (Alibaba
/// ConfirmOTATask, SPEC R13); tasks not in `confirming` are left alone and not counted.
#[utoipa::path(tag = "rollouts", request_body = TaskIds,
    responses((status = 200, body = Affected), (status = 400, body = E), (status = 403, body = E)))]
#[post("/v1/tasks/confirm")]
async fn confirm_tasks(
    state: web::Data<AppState>,
    auth: Auth,
    body: Json<TaskIds>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let ids = body.into_inner().task_ids;
    if ids.is_empty() || ids.len() > crate::domain::MAX_DEVICES_PER_CALL {
        return Err(ApiError::invalid("task_ids", "give 1 to 10000 task ids"));
    }
    let ids: Vec<TaskId> = ids.into_iter().map(TaskId).collect();
    let n = state
        .store
        .confirm_tasks(tenant, &ids, &Actor::key(auth.0.key), state.now())
        .await?;
    Ok(HttpResponse::Ok().json(Affected { tasks: n }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// One task's events instead of the rollout's own.
    pub task_id: Option<i64>,
    pub cursor: Option<String>,
    /// 1 to 1000 (default 100).
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventDto {
    pub id: i64,
    pub rollout_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<i64>,
    pub at: String,
    /// created, start, cancel, strategy_cancelled, tasks_cancelled, rerun_failed, task_state…
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_state: Option<String>,
    /// Tasks the event touched (rollout events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u64>,
    /// api, device, timer or policy.
    pub cause: String,
    /// For API calls, the key (`key:<id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub detail: String,
}

fn event_dto(e: AuditEvent) -> EventDto {
    EventDto {
        id: e.id,
        rollout_id: e.rollout_id.0,
        task_id: e.task_id.map(|t| t.0),
        at: rfc3339(e.at),
        event: e.event,
        from_state: e.from_state,
        to_state: e.to_state,
        tasks: e.tasks,
        cause: e.cause,
        actor: e.actor,
        detail: e.detail,
    }
}

/// The audit trail of a rollout, or of one of its tasks (SPEC O4).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path), EventQuery),
    responses((status = 200, body = PageDto<EventDto>), (status = 400, body = E), (status = 404, body = E)))]
#[get("/v1/rollouts/{id}/events")]
async fn rollout_events(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<EventQuery>,
) -> ApiResult<HttpResponse> {
    let q = q.into_inner();
    let page = PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .request()?;
    let page = state
        .store
        .audit_events(auth.tenant(), RolloutId(*id), q.task_id.map(TaskId), page)
        .await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, event_dto)))
}

/// The CSV template of a device list: a `deviceName` header and one name a line.
#[utoipa::path(tag = "rollouts",
    responses((status = 200, content_type = "text/csv", body = String)))]
#[get("/v1/device-lists/template.csv")]
async fn device_list_template(_auth: Auth) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "Content-Disposition",
            "attachment; filename=\"device-list-template.csv\"",
        ))
        .body("deviceName\ndevice-0001\ndevice-0002\n")
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceListDto {
    /// Give it as `scope.device_list_id`.
    pub id: i64,
    pub product_id: i64,
    /// Distinct devices in the list.
    pub devices: u64,
}

/// Uploads a CSV of up to 1,000,000 device names of a product (header `deviceName`) as a
/// device list for a `selected` or `phased` scope (SPEC B5). The body is spooled and
/// checked first, then written in one transaction. If any name is unknown, nothing is
/// created and the 422 reply lists them; ask with `Accept: text/csv` to get every unknown
/// name as a CSV file instead.
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path, description = "product id")),
    request_body(content = String, content_type = "text/csv", description = "deviceName header, one name a line"),
    responses((status = 201, body = DeviceListDto), (status = 400, body = E), (status = 403, body = E),
        (status = 404, body = E), (status = 413, body = E), (status = 415, body = E),
        (status = 422, description = "unknown names; JSON, or CSV when asked with Accept: text/csv",
            content((E = "application/json"), (String = "text/csv")))))]
#[post("/v1/products/{id}/device-lists")]
async fn create_device_list(
    state: web::Data<AppState>,
    auth: Auth,
    product: web::Path<i64>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let header = |h| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    if !header(actix_web::http::header::CONTENT_TYPE).starts_with("text/csv") {
        return Err(ApiError::UnsupportedMediaType(
            "send the device list as text/csv".into(),
        ));
    }
    let wants_csv = header(actix_web::http::header::ACCEPT).contains("text/csv");
    let product = state.store.get_product(tenant, ProductId(*product)).await?;
    let mut spool = NameSpool::create(&state.config.data_dir)
        .await
        .map_err(|e| ApiError::Internal(format!("creating the list spool: {e}")))?;
    let mut body = BodyChunks::new(payload, state.config.devices.import_max_bytes);
    spool_csv_names(&mut body, &mut spool, state.config.devices.import_max_rows).await?;
    let names = spool
        .into_names()
        .await
        .map_err(|e| ApiError::Internal(format!("rewinding the list spool: {e}")))?;
    match state
        .store
        .create_device_list(tenant, product.id, names, state.now())
        .await
    {
        Ok((id, n)) => Ok(HttpResponse::Created().json(DeviceListDto {
            id: id.0,
            product_id: product.id.0,
            devices: n,
        })),
        Err(crate::store::StoreError::UnknownDevices { names, .. }) if wants_csv => {
            let mut out = String::from("deviceName\n");
            for n in names {
                out.push_str(&csv_field(&n));
                out.push('\n');
            }
            Ok(HttpResponse::UnprocessableEntity()
                .content_type("text/csv; charset=utf-8")
                .insert_header((
                    "Content-Disposition",
                    "attachment; filename=\"invalid-device-names.csv\"",
                ))
                .body(out))
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads a one-column CSV of device names into the spool, validating each; the first bad
/// row refuses the whole upload with its row number.
async fn spool_csv_names(
    body: &mut BodyChunks,
    spool: &mut NameSpool,
    max_rows: u64,
) -> ApiResult<()> {
    let mut reader = CsvRecords::default();
    let mut header_seen = false;
    let mut row: u64 = 0;
    loop {
        let chunk = body.next().await?;
        let mut records: Vec<(Vec<String>, QuoteProblem)> = Vec::new();
        reader.feed(chunk.as_deref().unwrap_or(b""), &mut |r, p| {
            records.push((r, p));
            Ok(())
        })?;
        for (rec, problem) in records {
            if !header_seen {
                header_seen = true;
                let h: String = rec
                    .first()
                    .map(|s| {
                        s.trim()
                            .trim_start_matches('\u{feff}')
                            .replace(['_', ' '], "")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default();
                if rec.len() != 1 || !matches!(h.as_str(), "devicename" | "name" | "devicekey") {
                    return Err(ApiError::invalid(
                        "header",
                        "the first line must be the header deviceName (one column)",
                    ));
                }
                continue;
            }
            if rec.len() == 1 && rec[0].trim().is_empty() && problem.is_none() {
                continue;
            }
            row += 1;
            if row > max_rows {
                return Err(ApiError::invalid(
                    "body",
                    format!("a device list holds at most {max_rows} names"),
                ));
            }
            if let Some(p) = problem {
                return Err(ApiError::invalid(format!("row {row}"), p));
            }
            if rec.len() != 1 {
                return Err(ApiError::invalid(
                    format!("row {row}"),
                    "one device name a line",
                ));
            }
            let name = DeviceName::parse(&format!("row {row}"), rec[0].trim())?;
            spool
                .push(&name)
                .await
                .map_err(|e| ApiError::Internal(format!("writing the list spool: {e}")))?;
        }
        if chunk.is_none() {
            return Ok(());
        }
    }
}

/// Validated device names spooled one a line to an anonymous temporary file (as the device
/// import does: no lock held while the upload arrives, no names held in memory).
struct NameSpool {
    file: tokio::io::BufWriter<tokio::fs::File>,
}

impl NameSpool {
    async fn create(data_dir: &std::path::Path) -> std::io::Result<Self> {
        let dir = data_dir.join("tmp");
        tokio::fs::create_dir_all(&dir).await?;
        let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
            .await
            .map_err(std::io::Error::other)??;
        Ok(Self {
            file: tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file)),
        })
    }

    async fn push(&mut self, name: &DeviceName) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.write_all(name.as_str().as_bytes()).await?;
        self.file.write_all(b"\n").await
    }

    async fn into_names(
        mut self,
    ) -> std::io::Result<impl futures_util::Stream<Item = std::io::Result<DeviceName>> + Unpin>
    {
        use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt};
        self.file.flush().await?;
        let mut file = self.file.into_inner();
        file.seek(std::io::SeekFrom::Start(0)).await?;
        let lines = tokio::io::BufReader::with_capacity(256 * 1024, file).lines();
        Ok(Box::pin(futures_util::stream::unfold(
            lines,
            |mut lines| async move {
                match lines.next_line().await {
                    Ok(None) => None,
                    // validated before it was spooled
                    Ok(Some(l)) => Some((Ok(DeviceName::from_trusted(l)), lines)),
                    Err(e) => Some((Err(e), lines)),
                }
            },
        )))
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_rollout,
    list_rollouts,
    get_rollout,
    start_rollout,
    cancel_rollout,
    cancel_strategy,
    cancel_tasks,
    rerun_failed,
    change_rollout,
    pause_rollout,
    resume_rollout,
    rollout_tasks,
    rollout_tasks_csv,
    rollout_events,
    device_tasks,
    package_tasks,
    package_tasks_csv,
    cancel_package_tasks,
    confirm_tasks,
    device_list_template,
    create_device_list
))]
pub struct Doc;
