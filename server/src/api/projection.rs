//! Campaign projection and policy dry run over HTTP (SPEC G7, W5): for a rollout as it would
//! be created, which devices it takes (paged; a scope policy asked exactly as creation asks
//! it) and when they would be pushed under its schedule, window, waves, rate and concurrency,
//! the tenant's rate and approval policies asked in simulated time. Nothing is created and
//! nothing is pushed.

use super::auth::Auth;
use super::extract::Json;
use super::rollouts::{to_request, CreateRollout};
use super::{ApiError, ApiResult, AppState};
use crate::clock::rfc3339;
use crate::domain::projection::{project_with, Assume, BuiltIn, Hooks, Stop, STEP};
use crate::domain::{limits, role::Action, PackageId};
use actix_web::{post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(project_rollout);
}

type E = super::error::ErrorBody;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectRollout {
    /// The rollout exactly as `POST /v1/packages/{id}/rollouts` would take it.
    pub rollout: CreateRollout,
    /// Minutes a device is assumed to hold a concurrency slot after its push, 0..1440
    /// (default 0: it succeeds at once).
    #[serde(default)]
    pub install_minutes: i64,
    /// The page of device names (by name): skip this many, 0 by default.
    #[serde(default)]
    pub offset: u64,
    /// Names per page, 0 to 1000 (default 100).
    pub limit: Option<u64>,
    /// Minutes between timeline points, 1..1440; by default as few as keep it to at most
    /// 1,440 points.
    pub step_minutes: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TimelinePoint {
    /// Minutes from the projection's start.
    pub minute: i64,
    pub at: String,
    /// Devices pushed by then, in all.
    pub pushed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DevicePush {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<String>,
    /// W5: why the approval policy rejected its task (it is never pushed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WaveProjection {
    pub wave: u32,
    pub tasks: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionDto {
    /// Devices the rollout would take.
    pub devices: u64,
    /// Earlier not-yet-started tasks of those devices it would cancel (override, R10/R11).
    pub replaced: u64,
    /// A page of them, in the order the engine releases them, each with when it would be
    /// pushed (absent: not within the projection).
    pub device_names: Vec<String>,
    pub devices_page: Vec<DevicePush>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<WaveProjection>,
    /// When pushing would begin (now, or the scheduled start).
    pub starts_at: String,
    /// Cumulative pushes, one point per step that pushed.
    pub timeline: Vec<TimelinePoint>,
    /// Devices pushed within the projection.
    pub pushed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_push_at: Option<String>,
    /// `done` (every device pushed), `ended` (the end time came first), `manual_gate` (a
    /// wave waits to be advanced by hand), `horizon` (37 days passed), or with a rate
    /// policy `paused` / `aborted` (by the policy, or after its failures).
    pub stops: String,
    /// With `paused` or `aborted`: when, and the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// W5: tasks the approval policy would reject.
    pub rejected: u64,
    /// With `manual_gate`: the wave that waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_after_wave: Option<u32>,
    /// What the projection assumed of devices.
    pub assumes: String,
}

/// Projects a rollout without creating it (SPEC G7): its devices, exactly as creation would
/// choose them, and its push timeline under the engine's own rules, in simulated minutes.
#[utoipa::path(tag = "rollouts", params(("id" = i64, Path, description = "package id")), request_body = ProjectRollout,
    responses((status = 200, body = ProjectionDto), (status = 400, body = E), (status = 403, body = E),
        (status = 404, body = E), (status = 409, body = E), (status = 422, body = E)))]
#[post("/v1/packages/{id}/rollouts/projection")]
async fn project_rollout(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<ProjectRollout>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRollouts)?;
    let b = body.into_inner();
    if !(0..=1440).contains(&b.install_minutes) {
        return Err(ApiError::invalid(
            "install_minutes",
            format!("must be from 0 to 1440, got {}", b.install_minutes),
        ));
    }
    let limit = b.limit.unwrap_or(limits::DEFAULT_PAGE_LIMIT);
    if limit > limits::MAX_PAGE_LIMIT {
        return Err(ApiError::invalid(
            "limit",
            format!("must be at most {}", limits::MAX_PAGE_LIMIT),
        ));
    }
    if let Some(s) = b.step_minutes {
        if !(1..=1440).contains(&s) {
            return Err(ApiError::invalid(
                "step_minutes",
                format!("must be from 1 to 1440, got {s}"),
            ));
        }
    }
    let package = PackageId(*id);
    let facts = state.store.package_facts(tenant, package).await?;
    let now = state.now();
    let mut spec = to_request(b.rollout)?.validate(&facts, now)?;
    let dry = state
        .store
        .project_rollout(
            tenant,
            package,
            spec.clone(),
            Some(state.policies.as_ref()),
            now,
            (b.offset, limit),
        )
        .await?;
    spec.waves = dry.waves.clone();
    let assume = Assume {
        install: b.install_minutes * 60_000,
    };
    // W5: the rate and approval policies, asked in simulated time
    let mut hooks: Box<dyn Hooks + Send> =
        if spec.policies.rate.is_some() || spec.policies.approval.is_some() {
            let pkg = state.store.get_package(tenant, package).await?;
            Box::new(
                state
                    .policies
                    .dry_run(
                        tenant,
                        &spec.policies,
                        pkg.module,
                        pkg.version.into_string(),
                        dry.release_order.clone(),
                    )
                    .await
                    .map_err(ApiError::PolicyFailed)?,
            )
        } else {
            Box::new(BuiltIn)
        };
    // at most 37 days of minutes, with policy calls: off the request threads
    let devices = dry.devices;
    let spec_for = spec.clone();
    let page = b.offset..b.offset + dry.names.len() as u64;
    let p = web::block(move || project_with(&spec_for, devices, now, assume, hooks.as_mut(), page))
        .await
        .map_err(|e| ApiError::Internal(format!("the projection did not finish: {e}")))?;
    let start = spec.schedule.start_at.map_or(now, |s| s.max(now));
    let span = p.last_push_at.map_or(0, |l| (l - start) / STEP);
    let step = b.step_minutes.unwrap_or((span + 1439) / 1440).max(1);
    let mut timeline: Vec<TimelinePoint> = Vec::new();
    let mut last_bucket = None;
    for (at, pushed) in &p.points {
        let minute = (at - start) / STEP;
        // one point per step: the last of each (and so always the very last)
        let bucket = (minute + step - 1) / step;
        let point = TimelinePoint {
            minute,
            at: rfc3339(*at),
            pushed: *pushed,
        };
        if last_bucket == Some(bucket) {
            if let Some(l) = timeline.last_mut() {
                *l = point;
            }
        } else {
            timeline.push(point);
            last_bucket = Some(bucket);
        }
    }
    let devices_page = dry
        .names
        .iter()
        .zip(&p.page)
        .map(|(name, at)| DevicePush {
            name: name.clone(),
            pushed_at: match at {
                Some(Ok(t)) => Some(rfc3339(*t)),
                _ => None,
            },
            rejected: match at {
                Some(Err(why)) => Some(why.clone()),
                _ => None,
            },
        })
        .collect();
    let (stops, waiting_after_wave, stopped) = match &p.stop {
        Stop::Done => ("done", None, None),
        Stop::Ended => ("ended", None, None),
        Stop::ManualGate { wave } => ("manual_gate", Some(*wave), None),
        Stop::Horizon => ("horizon", None, None),
        Stop::Paused { at, reason } => ("paused", None, Some((*at, reason.clone()))),
        Stop::Aborted { at, reason } => ("aborted", None, Some((*at, reason.clone()))),
    };
    Ok(HttpResponse::Ok().json(ProjectionDto {
        devices: dry.devices,
        replaced: dry.replaced,
        device_names: dry.names,
        devices_page,
        waves: dry
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| WaveProjection {
                wave: i as u32 + 1,
                tasks: w.tasks,
            })
            .collect(),
        starts_at: rfc3339(start),
        timeline,
        pushed: p.pushed,
        last_push_at: p.last_push_at.map(rfc3339),
        stops: stops.into(),
        stopped_at: stopped.as_ref().map(|(at, _)| rfc3339(*at)),
        stop_reason: stopped.map(|(_, r)| r),
        rejected: p.rejected,
        waiting_after_wave,
        assumes: format!(
            "every device is online and succeeds, holding a concurrency slot for {} minutes after its push; waves advance as soon as their gates allow",
            b.install_minutes
        ),
    }))
}

#[derive(OpenApi)]
#[openapi(
    paths(project_rollout),
    components(schemas(
        ProjectRollout,
        ProjectionDto,
        TimelinePoint,
        WaveProjection,
        DevicePush
    ))
)]
pub struct Doc;
