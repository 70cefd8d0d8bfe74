//! API keys of the caller's tenant (admin only; SPEC M1).

use super::auth::Auth;
use super::dto::{ts, PageDto, PageQuery};
use super::extract::{Json, Query};
use super::{ApiResult, AppState};
use crate::clock::rfc3339;
use crate::domain::{role::Action, ApiKey, ApiKeyId, DisplayName, Role};
use actix_web::{delete, get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create_key)
        .service(list_keys)
        .service(revoke_key);
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// What the key is for, 1 to 128 characters.
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyDto {
    pub id: i64,
    pub name: String,
    pub role: Role,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyDto {
    #[serde(flatten)]
    pub key: KeyDto,
    /// The key itself: shown this once, stored only as a hash.
    pub secret: String,
}

fn dto(k: ApiKey) -> KeyDto {
    KeyDto {
        id: k.id.0,
        name: k.name.into_string(),
        role: k.role,
        prefix: k.prefix,
        created_at: rfc3339(k.created_at),
        revoked_at: ts(k.revoked_at),
    }
}

/// Creates an API key with a role.
#[utoipa::path(tag = "keys", request_body = CreateKey,
    responses((status = 201, body = CreatedKeyDto), (status = 400, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody)))]
#[post("/v1/keys")]
async fn create_key(
    state: web::Data<AppState>,
    auth: Auth,
    body: Json<CreateKey>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageKeys)?;
    let name = DisplayName::parse_trimmed("name", &body.name)?;
    let created = state
        .store
        .create_api_key(tenant, &name, body.role, state.now())
        .await?;
    Ok(HttpResponse::Created().json(CreatedKeyDto {
        key: dto(created.key),
        secret: created.secret,
    }))
}

/// Lists the tenant's API keys (never their secrets).
#[utoipa::path(tag = "keys", params(PageQuery), responses((status = 200, body = PageDto<KeyDto>)))]
#[get("/v1/keys")]
async fn list_keys(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageKeys)?;
    let page = state.store.list_api_keys(tenant, q.request()?).await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, dto)))
}

/// Revokes an API key at once; the tenant's last admin key cannot be revoked.
#[utoipa::path(tag = "keys", params(("id" = i64, Path)), responses((status = 200, body = KeyDto), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[delete("/v1/keys/{id}")]
async fn revoke_key(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageKeys)?;
    let key = state
        .store
        .revoke_api_key(tenant, ApiKeyId(*id), state.now())
        .await?;
    Ok(HttpResponse::Ok().json(dto(key)))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(create_key, list_keys, revoke_key))]
pub struct Doc;
