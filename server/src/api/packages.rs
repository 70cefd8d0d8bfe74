//! Packages: create, list, read (with signed download URLs), change status or description,
//! delete; files uploaded as streamed raw bodies with server-computed digests (SPEC P1,
//! P2, P3, V3).

use super::auth::Auth;
use super::dto::{PageDto, PageQuery};
use super::extract::{Json, Query};
use super::stream::BodyChunks;
use super::{ApiError, ApiResult, AppState};
use crate::clock::{rfc3339, Millis};
use crate::domain::{
    role::Action, FileName, ModuleName, NewPackage, Package, PackageFile, PackageFileId, PackageId,
    PackageKind, PackageStatus, ProductId, SignMethod, Version,
};
use crate::firmware::FirmwareError;
use crate::store::{NewPackageFile, PackageFilter, PackagePatch};
use actix_web::{delete, get, patch, post, put, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create_package)
        .service(list_packages)
        .service(get_package)
        .service(update_package)
        .service(delete_package)
        .service(upload_file)
        .service(delete_file);
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePackage {
    /// OTA module the package updates; `default` when left out.
    pub module: Option<String>,
    /// The version devices report once updated.
    pub version: String,
    /// `full` (default) or `diff`.
    #[schema(value_type = Option<PackageKind>)]
    pub kind: Option<String>,
    /// Required for a `diff` (the one version it applies to); not allowed for `full`.
    pub source_version: Option<String>,
    /// The digest devices check: `md5` (default) or `sha256`.
    #[schema(value_type = Option<SignMethod>)]
    pub sign_method: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePackage {
    /// `no_need` or `unverified`; `verified` is set only by a verification rollout.
    #[schema(value_type = Option<PackageStatus>)]
    pub status: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PackageListQuery {
    /// Only packages of this product.
    pub product_id: Option<i64>,
    /// Only packages of this module.
    pub module: Option<String>,
    /// Only packages in this status.
    #[param(value_type = Option<PackageStatus>)]
    pub status: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PackageDto {
    pub id: i64,
    pub product_id: i64,
    pub module: String,
    pub version: String,
    pub kind: PackageKind,
    /// The version a diff applies to; absent for a full package.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    pub sign_method: SignMethod,
    pub status: PackageStatus,
    pub description: String,
    pub created_at: String,
    /// G5: when the package was withdrawn (no new rollout may use it until reinstated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withdrawn_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withdrawn_reason: Option<String>,
    /// Files in upload order.
    pub files: Vec<PackageFileDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PackageFileDto {
    pub id: i64,
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex, computed by the server.
    pub md5: String,
    /// Lowercase hex, computed by the server.
    pub sha256: String,
    /// The digest of the package's sign method (what a device checks).
    pub sign: String,
    /// Signed URL; needs no key, supports range requests, and expires.
    pub download_url: String,
    pub download_url_expires_at: String,
    pub created_at: String,
}

fn file_dto(
    state: &AppState,
    f: PackageFile,
    sign_method: SignMethod,
    now: Millis,
) -> PackageFileDto {
    PackageFileDto {
        id: f.id.0,
        sign: f.sign(sign_method).to_owned(),
        download_url: state.firmware.url_for(&state.public_url, f.id, now),
        download_url_expires_at: rfc3339(state.firmware.expires_at(now).saturating_mul(1000)),
        name: f.name.into_string(),
        size: f.size,
        md5: f.md5,
        sha256: f.sha256,
        created_at: rfc3339(f.created_at),
    }
}

fn package_dto(state: &AppState, p: Package, files: Vec<PackageFile>, now: Millis) -> PackageDto {
    PackageDto {
        id: p.id.0,
        product_id: p.product_id.0,
        module: p.module.into_string(),
        version: p.version.into_string(),
        kind: p.kind,
        source_version: p.source_version.map(Version::into_string),
        sign_method: p.sign_method,
        status: p.status,
        description: p.description,
        created_at: rfc3339(p.created_at),
        withdrawn_at: p.withdrawn.as_ref().map(|(at, _)| rfc3339(*at)),
        withdrawn_reason: p.withdrawn.map(|(_, why)| why),
        files: files
            .into_iter()
            .map(|f| file_dto(state, f, p.sign_method, now))
            .collect(),
    }
}

/// A package with its files, as every package reply shows it.
pub(super) async fn package_reply(
    state: &AppState,
    p: Package,
    now: Millis,
) -> ApiResult<PackageDto> {
    let files = state.store.package_files(p.tenant_id, p.id).await?;
    Ok(package_dto(state, p, files, now))
}

fn parse_kind(v: Option<&str>) -> Result<PackageKind, ApiError> {
    match v {
        None => Ok(PackageKind::Full),
        Some(s) => PackageKind::parse(&s.to_ascii_lowercase())
            .ok_or_else(|| ApiError::invalid("kind", format!("must be full or diff, got {s:?}"))),
    }
}

fn parse_sign_method(v: Option<&str>) -> Result<SignMethod, ApiError> {
    match v {
        None => Ok(SignMethod::Md5),
        Some(s) => SignMethod::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
            ApiError::invalid("sign_method", format!("must be md5 or sha256, got {s:?}"))
        }),
    }
}

fn parse_status(v: &str) -> Result<PackageStatus, ApiError> {
    PackageStatus::parse(v).ok_or_else(|| {
        ApiError::invalid(
            "status",
            format!("must be unverified, verified or no_need, got {v:?}"),
        )
    })
}

/// Removes a stored file whose record is gone or was never written; a failure is logged,
/// not returned, because the database is already right.
async fn discard(state: &AppState, key: &str) {
    if let Err(e) = state.firmware.delete(key).await {
        tracing::warn!(storage_key = key, error = %e, "could not remove a firmware file");
    }
}

/// Creates a package of a product, `unverified`, without files yet (SPEC P1).
#[utoipa::path(tag = "packages", params(("id" = i64, Path, description = "product id")), request_body = CreatePackage,
    responses((status = 201, body = PackageDto), (status = 400, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
#[post("/v1/products/{id}/packages")]
async fn create_package(
    state: web::Data<AppState>,
    auth: Auth,
    product: web::Path<i64>,
    body: Json<CreatePackage>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManagePackages)?;
    let body = body.into_inner();
    let module = match body.module.as_deref().map(str::trim) {
        None | Some("") => ModuleName::default_module(),
        Some(m) => ModuleName::parse("module", m)?,
    };
    let source_version = match body.source_version.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(Version::parse("source_version", s)?),
    };
    let new = NewPackage::new(
        module,
        Version::parse("version", body.version.trim())?,
        parse_kind(body.kind.as_deref())?,
        source_version,
        parse_sign_method(body.sign_method.as_deref())?,
        body.description,
    )?;
    let now = state.now();
    let p = state
        .store
        .create_package(tenant, ProductId(*product), new, now)
        .await?;
    Ok(HttpResponse::Created().json(package_dto(&state, p, vec![], now)))
}

/// Lists the tenant's packages with their files, filtered by product, module and status.
#[utoipa::path(tag = "packages", params(PackageListQuery),
    responses((status = 200, body = PageDto<PackageDto>), (status = 400, body = super::error::ErrorBody)))]
#[get("/v1/packages")]
async fn list_packages(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<PackageListQuery>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.tenant();
    let q = q.into_inner();
    let page = PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .request()?;
    let filter = PackageFilter {
        product: q.product_id.map(ProductId),
        module: q
            .module
            .map(|m| ModuleName::parse("module", m))
            .transpose()?,
        status: q.status.as_deref().map(parse_status).transpose()?,
    };
    let page = state.store.list_packages(tenant, &filter, page).await?;
    let ids: Vec<PackageId> = page.items.iter().map(|p| p.id).collect();
    let mut files: HashMap<PackageId, Vec<PackageFile>> = HashMap::new();
    for f in state.store.package_files_of(tenant, &ids).await? {
        files.entry(f.package_id).or_default().push(f);
    }
    let now = state.now();
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, |p| {
        let fs = files.remove(&p.id).unwrap_or_default();
        package_dto(&state, p, fs, now)
    })))
}

/// Reads one package with its files and their signed download URLs.
#[utoipa::path(tag = "packages", params(("id" = i64, Path)),
    responses((status = 200, body = PackageDto), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/packages/{id}")]
async fn get_package(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.tenant();
    let p = state.store.get_package(tenant, PackageId(*id)).await?;
    let files = state.store.package_files(tenant, p.id).await?;
    Ok(HttpResponse::Ok().json(package_dto(&state, p, files, state.now())))
}

/// Marks a package `no_need` (or back to `unverified`), or changes its description
/// (SPEC P2). `verified` cannot be set by hand.
#[utoipa::path(tag = "packages", params(("id" = i64, Path)), request_body = UpdatePackage,
    responses((status = 200, body = PackageDto), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
#[patch("/v1/packages/{id}")]
async fn update_package(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<UpdatePackage>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManagePackages)?;
    let body = body.into_inner();
    let patch = PackagePatch {
        status: body.status.as_deref().map(parse_status).transpose()?,
        description: body.description,
    };
    let p = state
        .store
        .update_package(tenant, PackageId(*id), patch)
        .await?;
    let files = state.store.package_files(tenant, p.id).await?;
    Ok(HttpResponse::Ok().json(package_dto(&state, p, files, state.now())))
}

/// Deletes a package and removes its files (SPEC P3).
#[utoipa::path(tag = "packages", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
#[delete("/v1/packages/{id}")]
async fn delete_package(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManagePackages)?;
    let files = state.store.delete_package(tenant, PackageId(*id)).await?;
    for f in files {
        discard(&state, &f.storage_key).await;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Uploads one file of a package as the raw request body (any content type), streamed to
/// disk; the server computes size, MD5 and SHA-256 (SPEC P1). The size limit is
/// `firmware.max_file_bytes`; the JSON body limit does not apply.
#[utoipa::path(tag = "packages",
    params(("id" = i64, Path), ("name" = String, Path, description = "file name: 1 to 128 letters, digits and _ - . +")),
    request_body(content = String, content_type = "application/octet-stream", description = "the file's bytes"),
    responses((status = 201, body = PackageFileDto), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody)))]
#[put("/v1/packages/{id}/files/{name}")]
async fn upload_file(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<(i64, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManagePackages)?;
    let (id, name) = path.into_inner();
    let name = FileName::parse_file("name", name)?;
    let p = state.store.get_package(tenant, PackageId(id)).await?;
    // Refuse what is sure to fail before taking in a large body.
    if state
        .store
        .package_file_by_name(tenant, p.id, &name)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "package {} has a file named {:?} already; delete it first or choose another name",
            p.id,
            name.as_str()
        )));
    }
    let limit = state.firmware.max_file_bytes();
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(FirmwareError::TooLarge { limit }.into());
    }
    // The firmware storage enforces the limit as the bytes arrive.
    let body = BodyChunks::new(payload, u64::MAX);
    let chunks = futures_util::stream::unfold(body, |mut b| async move {
        b.next().await.transpose().map(|chunk| (chunk, b))
    });
    let stored = state.firmware.store_stream::<_, ApiError>(chunks).await?;
    let record = NewPackageFile {
        name,
        size: stored.size,
        md5: stored.md5,
        sha256: stored.sha256,
        storage_key: stored.key.clone(),
    };
    let now = state.now();
    match state
        .store
        .add_package_file(tenant, p.id, record, now)
        .await
    {
        Ok(f) => Ok(HttpResponse::Created().json(file_dto(&state, f, p.sign_method, now))),
        Err(e) => {
            discard(&state, &stored.key).await;
            Err(e.into())
        }
    }
}

/// Deletes one file of a package and removes it from disk.
#[utoipa::path(tag = "packages", params(("id" = i64, Path), ("file_id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
#[delete("/v1/packages/{id}/files/{file_id}")]
async fn delete_file(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<(i64, i64)>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManagePackages)?;
    let (id, file) = path.into_inner();
    let f = state
        .store
        .delete_package_file(tenant, PackageId(id), PackageFileId(file))
        .await?;
    discard(&state, &f.storage_key).await;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_package,
    list_packages,
    get_package,
    update_package,
    delete_package,
    upload_file,
    delete_file
))]
pub struct Doc;
