//! Liveness and readiness (SPEC M5).

use super::{ApiError, AppState};
use actix_web::{get, web, HttpResponse};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(health).service(ready).service(metrics);
}

/// Liveness: the process answers.
#[utoipa::path(tag = "health", security(()), responses((status = 200, description = "alive")))]
#[get("/health")]
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the database answers too.
#[utoipa::path(tag = "health", security(()), responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
#[get("/ready")]
async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|_| ApiError::Unavailable("the database does not answer".into()))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(tag = "health", security(()), responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
#[get("/metrics")]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(state.metrics.render())
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(health, ready, metrics))]
pub struct Doc;
