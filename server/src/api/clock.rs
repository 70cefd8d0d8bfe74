//! The manual clock's endpoints, present only when the server runs on one (`serve --clock
//! manual`): read the clock, and advance it tick by tick with the rollout engine running each
//! tick, so days of a rollout play out in seconds (DESIGN §6). Not part of the OpenAPI
//! document: a production server never has them.

use super::auth::Auth;
use super::extract::Json;
use super::{ApiError, AppState};
use crate::clock::rfc3339;
use crate::domain::role::Action;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use std::time::Duration;

/// At most this much time in one call (30 days: the longest rollout window, R1).
const MAX_ADVANCE_SECS: u64 = 30 * 24 * 3600;

pub fn configure(manual: bool) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        if manual {
            cfg.route("/v1/clock", web::get().to(now))
                .route("/v1/clock/advance", web::post().to(advance));
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    /// Seconds to move the clock forward; the engine ticks at each tick boundary.
    seconds: Option<u64>,
    /// Milliseconds, for a step finer than a second.
    millis: Option<u64>,
}

fn reply(state: &AppState, ticks: u64) -> HttpResponse {
    let now = state.now();
    HttpResponse::Ok().json(serde_json::json!({
        "now": rfc3339(now),
        "now_ms": now,
        "ticks": ticks,
    }))
}

async fn now(state: web::Data<AppState>, auth: Auth) -> Result<HttpResponse, ApiError> {
    auth.require(Action::Read)?;
    Ok(reply(&state, 0))
}

async fn advance(
    state: web::Data<AppState>,
    auth: Auth,
    body: Json<Advance>,
) -> Result<HttpResponse, ApiError> {
    auth.require(Action::ManageRollouts)?;
    let total_ms = match (body.0.seconds, body.0.millis) {
        (Some(s), None) if (1..=MAX_ADVANCE_SECS).contains(&s) => s * 1000,
        (None, Some(ms)) if (1..=MAX_ADVANCE_SECS * 1000).contains(&ms) => ms,
        _ => {
            return Err(ApiError::Invalid {
                field: "seconds".into(),
                message: format!(
                    "give either seconds (1 to {MAX_ADVANCE_SECS}) or millis, not both"
                ),
            })
        }
    };
    let Some(clock) = state.manual_clock.get() else {
        return Err(ApiError::NotFound("clock".into()));
    };
    let ticks = match state.scheduler.get() {
        Some(s) => s.advance(clock, total_ms).await.map_err(|e| {
            tracing::error!(error = %e, "a tick failed while advancing the manual clock");
            ApiError::Internal(e.to_string())
        })?,
        None => {
            clock.advance(Duration::from_millis(total_ms));
            0
        }
    };
    Ok(reply(&state, ticks))
}
