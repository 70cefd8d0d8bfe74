//! Tenants' rollout policies (SPEC W1, W2): upload a WebAssembly component as a new version
//! of a name (checked against the policy interface and the import allow-list, compiled and
//! smoke-run before it is stored), list, read and delete versions, and the `policies` part
//! of a rollout that attaches a version per hook with its JSON config.

use super::auth::Auth;
use super::dto::{PageDto, PageQuery};
use super::extract::Query;
use super::stream::BodyChunks;
use super::{ApiError, ApiResult, AppState};
use crate::clock::rfc3339;
use crate::domain::{
    role::Action, Hook, PolicyAttachment, PolicyId, PolicyInfo, PolicyName, RolloutPolicies,
    TenantId,
};
use crate::scheduler::policies::LoadError;
use crate::store::StoreError;
use actix_web::{delete, get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

type E = super::error::ErrorBody;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(upload_policy)
        .service(list_policies)
        .service(get_policy)
        .service(delete_policy);
}

/// One stored version of a policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyDto {
    pub id: i64,
    pub name: String,
    /// 1 for the first upload of a name, then one more for each.
    pub version: u32,
    /// sha256 of the component, lowercase hex.
    pub digest: String,
    /// The hooks it exports: `scope`, `approval`, `rate`.
    pub hooks: Vec<String>,
    /// Bytes.
    pub size: u64,
    pub created_at: String,
}

fn policy_dto(p: PolicyInfo) -> PolicyDto {
    PolicyDto {
        id: p.id.0,
        name: p.name.into_string(),
        version: p.version,
        digest: p.digest,
        hooks: p.hooks.iter().map(|h| h.as_str().to_owned()).collect(),
        size: p.size,
        created_at: rfc3339(p.created_at),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The policy's name: 1 to 64 letters, digits and _ - . (the upload becomes its next
    /// version).
    pub name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PolicyListQuery {
    /// Only versions of this name.
    pub name: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u64>,
}

/// A policy version attached to one hook of a rollout.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDto {
    /// The policy version's id (from `POST /v1/policies`).
    pub id: i64,
    /// Handed to the policy as its config (`host.config`, JSON text); at most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
}

/// W2: a tenant's policy per hook; a hook left out keeps the built-in behaviour.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoliciesDto {
    /// Which candidate devices join (at creation, and as devices join a dynamic rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<AttachDto>,
    /// Per task about to be released: approve, defer or reject (push mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<AttachDto>,
    /// Each tick: how many to release, or pause or abort; replaces `rate` (push mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<AttachDto>,
}

impl PoliciesDto {
    pub fn is_empty(&self) -> bool {
        self.scope.is_none() && self.approval.is_none() && self.rate.is_none()
    }
}

/// The wire form of a rollout's policies into the domain's.
pub(super) fn parse_policies(d: PoliciesDto) -> ApiResult<RolloutPolicies> {
    let att = |a: Option<AttachDto>| -> Option<PolicyAttachment> {
        a.map(|a| PolicyAttachment {
            policy: PolicyId(a.id),
            config: a.config.map(|c| c.to_string()).unwrap_or_default(),
        })
    };
    Ok(RolloutPolicies {
        scope: att(d.scope),
        approval: att(d.approval),
        rate: att(d.rate),
    })
}

/// The domain's rollout policies on the wire.
pub(super) fn policies_out(p: &RolloutPolicies) -> PoliciesDto {
    let out = |a: Option<&PolicyAttachment>| {
        a.map(|a| AttachDto {
            id: a.policy.0,
            config: match a.config.is_empty() {
                true => None,
                false => serde_json::from_str(&a.config).ok(),
            },
        })
    };
    PoliciesDto {
        scope: out(p.scope.as_ref()),
        approval: out(p.approval.as_ref()),
        rate: out(p.rate.as_ref()),
    }
}

/// W1, W2: each attached version is the tenant's own and exports its hook; loading it also
/// compiles it, so the engine's first tick does not.
pub(super) async fn check_attachments(
    state: &AppState,
    tenant: TenantId,
    p: &RolloutPolicies,
) -> ApiResult<()> {
    for (hook, a) in p.attached() {
        let field = format!("policies.{}.id", hook.as_str());
        let loaded = match state.policies.load(tenant, a.policy).await {
            Ok(l) => l,
            Err(LoadError::Store(StoreError::NotFound(_))) => {
                return Err(ApiError::invalid(
                    field,
                    format!("there is no policy {} (of this tenant)", a.policy),
                ))
            }
            Err(LoadError::Store(e)) => return Err(e.into()),
            Err(LoadError::Policy(e)) => return Err(e.into()),
        };
        if !loaded.has(hook) {
            return Err(ApiError::invalid(
                field,
                format!(
                    "policy {} v{} exports no {} hook (it exports {})",
                    loaded.info.name,
                    loaded.info.version,
                    hook.as_str(),
                    loaded
                        .info
                        .hooks
                        .iter()
                        .map(|h| h.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Uploads a policy: the raw body is a WebAssembly component (`cargo build --release
/// --target wasm32-wasip2` of a crate using `ota-policy-sdk`). It is checked against
/// `ota:policy@1.0.0` (it must export at least one of scope, approval, rate) and the import
/// allow-list, compiled, and each hook smoke-run under the production limits; then stored
/// as the next version of `name`. A refused component gets 422 `policy_rejected` saying why.
#[utoipa::path(tag = "policies", params(UploadQuery),
    request_body(content = String, content_type = "application/octet-stream", description = "the component's bytes (any content type is taken; `application/wasm` is the usual one)"),
    responses((status = 201, body = PolicyDto), (status = 400, body = E), (status = 403, body = E),
        (status = 413, body = E), (status = 422, body = E)))]
#[post("/v1/policies")]
async fn upload_policy(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<UploadQuery>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManagePolicies)?;
    let name = PolicyName::parse("name", q.into_inner().name)?;
    let max = state.policies.config().max_upload_bytes;
    let mut body = BodyChunks::new(payload, max as u64);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await? {
        bytes.extend_from_slice(&chunk);
    }
    if bytes.is_empty() {
        return Err(ApiError::invalid(
            "body",
            "send the component's bytes as the body",
        ));
    }
    let compiled = state.policies.check(bytes.clone()).await?;
    let h = compiled.hooks();
    let hooks: Vec<Hook> = [
        (h.scope, Hook::Scope),
        (h.approval, Hook::Approval),
        (h.rate, Hook::Rate),
    ]
    .into_iter()
    .filter_map(|(has, hook)| has.then_some(hook))
    .collect();
    let p = state
        .store
        .create_policy(
            tenant,
            &name,
            &bytes,
            compiled.digest(),
            &hooks,
            Some(auth.0.key),
            state.now(),
        )
        .await?;
    Ok(HttpResponse::Created().json(policy_dto(p)))
}

/// Lists the tenant's policy versions, oldest first.
#[utoipa::path(tag = "policies", params(PolicyListQuery),
    responses((status = 200, body = PageDto<PolicyDto>), (status = 400, body = E)))]
#[get("/v1/policies")]
async fn list_policies(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<PolicyListQuery>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.tenant();
    let q = q.into_inner();
    let page = PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .request()?;
    let name = q.name.map(|n| PolicyName::parse("name", n)).transpose()?;
    let page = state
        .store
        .list_policies(tenant, name.as_ref(), page)
        .await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, policy_dto)))
}

/// Reads one policy version.
#[utoipa::path(tag = "policies", params(("id" = i64, Path)),
    responses((status = 200, body = PolicyDto), (status = 404, body = E)))]
#[get("/v1/policies/{id}")]
async fn get_policy(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let p = state.store.get_policy(auth.tenant(), PolicyId(*id)).await?;
    Ok(HttpResponse::Ok().json(policy_dto(p)))
}

/// Deletes a policy version; refused (409) while an unfinished rollout uses it.
#[utoipa::path(tag = "policies", params(("id" = i64, Path)),
    responses((status = 204), (status = 403, body = E), (status = 404, body = E), (status = 409, body = E)))]
#[delete("/v1/policies/{id}")]
async fn delete_policy(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManagePolicies)?;
    let p = state.store.delete_policy(tenant, PolicyId(*id)).await?;
    state.policies.forget(p.id, &p.digest);
    Ok(HttpResponse::NoContent().finish())
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(upload_policy, list_policies, get_policy, delete_policy),
    components(schemas(PolicyDto, AttachDto, PoliciesDto))
)]
pub struct Doc;
