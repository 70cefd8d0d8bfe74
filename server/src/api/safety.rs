//! Safer rollouts over HTTP (SPEC G1, G3–G6): the wire shapes of abort rules, waves and
//! maintenance windows on a rollout, moving a rollout to its next wave by hand, and
//! withdrawing (kill switch) and reinstating a package.

use super::auth::Auth;
use super::extract::Json;
use super::packages::package_reply;
use super::rollouts::{parse_rate, rate_out, reply_rollout, RateDto, RateOut};
use super::{ApiError, ApiResult, AppState};
use crate::clock::rfc3339;
use crate::domain::{
    percent_text, role::Action, AbortAction, AbortKind, AbortRule, AbortRuleRequest,
    MaintenanceWindow, Outcomes, PackageId, RolloutId, TaskState, Wave, WaveAdvance, WaveRequest,
    WaveSize, WindowClose, WindowRequest,
};
use crate::store::{Actor, WaveCounts};
use actix_web::{post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{OpenApi, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(advance_wave)
        .service(withdraw_package)
        .service(reinstate_package);
}

type E = super::error::ErrorBody;

/// G1: stop the rollout when failures of `kind` reach `threshold_percent` of its finished
/// tasks, once `min_finished` have finished. A failure that will be retried is not finished.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortRuleDto {
    /// `failed`, `timed_out`, `rejected` or `any`.
    pub kind: String,
    /// 0.01 to 100, two decimals.
    pub threshold_percent: f64,
    /// 1 to 1,000,000.
    pub min_finished: i64,
    /// `pause` or `cancel`.
    pub action: String,
}

/// G3: one wave. Every wave but the last gives `percent` (1..99, under 100 in all) or
/// `count`, all the same one; the last takes the rest and gives neither. `advance` and
/// `success_threshold` say how the rollout leaves this wave (not on the last).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaveDto {
    pub percent: Option<i64>,
    pub count: Option<i64>,
    /// `auto` (default): when `success_threshold` percent of the wave's tasks succeeded;
    /// `manual`: only by `POST /v1/rollouts/{id}/waves/advance`.
    pub advance: Option<String>,
    /// 1..100, default 100.
    pub success_threshold: Option<i64>,
    /// This wave's own push rate (absent: the rollout's).
    pub rate: Option<RateDto>,
    /// This wave's own concurrency (absent: the rollout's).
    pub max_concurrency: Option<i64>,
}

/// G4: windows open at each time of `cron` (five fields: minute hour day-of-month month
/// day-of-week) read in `time_zone` (IANA name; daylight saving followed) and last
/// `duration_minutes` of real time (1..10,080). Pushes go out only inside a window.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowDto {
    pub cron: String,
    pub duration_minutes: i64,
    pub time_zone: String,
    /// At a window's close, tasks not yet pushed `wait` for the next window (default) or
    /// are `cancel`led.
    pub on_close: Option<String>,
}

pub(super) fn parse_abort_rules(
    rules: Vec<AbortRuleDto>,
) -> Result<Vec<AbortRuleRequest>, ApiError> {
    rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(AbortRuleRequest {
                kind: AbortKind::parse_field(&format!("abort_rules[{i}].kind"), &r.kind)?,
                threshold_percent: r.threshold_percent,
                min_finished: r.min_finished,
                action: AbortAction::parse_field(&format!("abort_rules[{i}].action"), &r.action)?,
            })
        })
        .collect()
}

pub(super) fn parse_waves(waves: Vec<WaveDto>) -> Result<Vec<WaveRequest>, ApiError> {
    waves
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            Ok(WaveRequest {
                percent: w.percent,
                count: w.count,
                advance: w
                    .advance
                    .as_deref()
                    .map(|a| WaveAdvance::parse_field(&format!("waves[{i}].advance"), a))
                    .transpose()?,
                success_threshold: w.success_threshold,
                rate: w
                    .rate
                    .map(parse_rate)
                    .transpose()
                    .map_err(|e| prefix(e, &format!("waves[{i}].")))?,
                max_concurrency: w.max_concurrency,
            })
        })
        .collect()
}

fn prefix(e: ApiError, with: &str) -> ApiError {
    match e {
        ApiError::Invalid { field, message } => ApiError::Invalid {
            field: format!("{with}{field}"),
            message,
        },
        other => other,
    }
}

pub(super) fn parse_window(w: WindowDto) -> Result<WindowRequest, ApiError> {
    Ok(WindowRequest {
        cron: w.cron,
        duration_minutes: w.duration_minutes,
        time_zone: w.time_zone,
        on_close: match w.on_close.as_deref() {
            None => WindowClose::Wait,
            Some(c) => WindowClose::parse_field("window.on_close", c)?,
        },
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AbortRuleOut {
    pub kind: String,
    pub threshold_percent: f64,
    pub min_finished: u64,
    pub action: String,
    /// When it fired; a fired rule is spent until the rules are replaced (`PATCH`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WaveOut {
    /// 1-based.
    pub wave: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// How the rollout leaves it (absent on the last wave).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Tasks it got at creation.
    pub tasks: u64,
    /// Its tasks by state (on a single rollout's read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WindowOut {
    pub cron: String,
    pub duration_minutes: i64,
    pub time_zone: String,
    pub on_close: String,
}

/// G1: finished tasks by outcome, as the abort rules read them.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutcomesOut {
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub rejected: u64,
}

pub(super) fn abort_rules_out(rules: Vec<AbortRule>) -> Vec<AbortRuleOut> {
    rules
        .into_iter()
        .map(|r| AbortRuleOut {
            kind: r.kind.as_str().into(),
            threshold_percent: percent_text(r.threshold_centi).parse().unwrap_or(0.0),
            min_finished: r.min_finished,
            action: r.action.as_str().into(),
            fired_at: r.fired_at.map(rfc3339),
        })
        .collect()
}

pub(super) fn waves_out(waves: Vec<Wave>, counts: Option<&[WaveCounts]>) -> Vec<WaveOut> {
    let last = waves.len();
    waves
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let n = i as u32 + 1;
            WaveOut {
                wave: n,
                percent: match w.size {
                    WaveSize::Percent(p) => Some(p),
                    _ => None,
                },
                count: match w.size {
                    WaveSize::Count(c) => Some(c),
                    _ => None,
                },
                advance: (i + 1 < last).then(|| w.advance.as_str().into()),
                success_threshold: (i + 1 < last).then_some(w.success_threshold),
                rate: w.rate.map(rate_out),
                max_concurrency: w.max_concurrency,
                tasks: w.tasks,
                counts: counts
                    .and_then(|c| c.iter().find(|c| c.wave == n))
                    .map(|c| {
                        TaskState::ALL
                            .iter()
                            .map(|s| (s.as_str().to_owned(), c.counts.get(s).copied().unwrap_or(0)))
                            .collect()
                    }),
            }
        })
        .collect()
}

pub(super) fn window_out(w: MaintenanceWindow) -> WindowOut {
    WindowOut {
        cron: w.cron,
        duration_minutes: w.duration_ms / 60_000,
        time_zone: w.time_zone.name().into(),
        on_close: w.on_close.as_str().into(),
    }
}

pub(super) fn outcomes_out(o: Outcomes) -> OutcomesOut {
    OutcomesOut {
        succeeded: o.succeeded,
        failed: o.failed,
        timed_out: o.timed_out,
        rejected: o.rejected,
    }
}

/// Starts the rollout's next wave now, whatever the current wave's success threshold
/// (SPEC G3: a manual gate, or overriding an automatic one).
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path)),
    responses((status = 200, body = super::rollouts::RolloutDto), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[post("/v1/rollouts/{id}/waves/advance")]
async fn advance_wave(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let r = state
        .store
        .advance_wave(tenant, RolloutId(*id), &Actor::key(auth.0.key), state.now())
        .await?;
    reply_rollout(&state, r).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Withdraw {
    /// Why (1 to 1024 characters); recorded on the package and in each stopped rollout's
    /// events.
    pub reason: String,
}

/// What a withdrawal stopped.
#[derive(Debug, Serialize, ToSchema)]
pub struct Withdrawn {
    pub package: super::packages::PackageDto,
    /// Rollouts cancelled.
    pub rollouts: Vec<i64>,
    /// Unfinished tasks that were cancelled.
    pub tasks_cancelled: u64,
}

/// Kill switch (SPEC G5): in one call every unfinished rollout of the package is cancelled
/// (dynamic ones take no more devices) with all its unfinished tasks, and no failed task is
/// retried; a device that still reports success is recorded as a late success. No new
/// rollout may use the package until it is reinstated.
#[utoipa::path(tag = "packages", params(("id" = i64, Path)), request_body = Withdraw,
    responses((status = 200, body = Withdrawn), (status = 400, body = E), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[post("/v1/packages/{id}/withdraw")]
async fn withdraw_package(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<Withdraw>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let reason = body.0.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > crate::domain::limits::MAX_DESCRIPTION_LEN {
        return Err(ApiError::invalid(
            "reason",
            "give a reason of 1 to 1024 characters",
        ));
    }
    let now = state.now();
    let (p, rollouts, n) = state
        .store
        .withdraw_package(
            tenant,
            PackageId(*id),
            &reason,
            &Actor::key(auth.0.key),
            now,
        )
        .await?;
    Ok(HttpResponse::Ok().json(Withdrawn {
        package: package_reply(&state, p, now).await?,
        rollouts: rollouts.into_iter().map(|r| r.0).collect(),
        tasks_cancelled: n,
    }))
}

/// Lets new rollouts use a withdrawn package again (SPEC G5); stopped rollouts stay so.
#[utoipa::path(tag = "packages", params(("id" = i64, Path)),
    responses((status = 200, body = super::packages::PackageDto), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[post("/v1/packages/{id}/reinstate")]
async fn reinstate_package(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let p = state
        .store
        .reinstate_package(tenant, PackageId(*id))
        .await?;
    let now = state.now();
    Ok(HttpResponse::Ok().json(package_reply(&state, p, now).await?))
}

#[derive(OpenApi)]
#[openapi(
    paths(advance_wave, withdraw_package, reinstate_package),
    components(schemas(
        AbortRuleDto,
        WaveDto,
        WindowDto,
        AbortRuleOut,
        WaveOut,
        WindowOut,
        OutcomesOut,
        Withdraw,
        Withdrawn
    ))
)]
pub struct Doc;
