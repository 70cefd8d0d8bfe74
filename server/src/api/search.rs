//! Device search with a CSV export of the matching names, ready to upload as a rollout
//! scope (SPEC D5), and version statistics per product and module (SPEC D6).

use super::auth::Auth;
use super::devices::{device_dto, DeviceDto};
use super::dto::{PageDto, PageQuery};
use super::extract::Query;
use super::stream::{csv_field, paged_csv};
use super::{ApiError, ApiResult, AppState};
use crate::domain::{
    AssetNodeId, DeviceFilter, DeviceId, GroupId, Invalid, LabelKind, LabelMatch, ModuleMatch,
    ModuleName, ProductId, TenantId, ValueMatch, Version,
};
use crate::store::PageRequest;
use actix_web::{get, web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(export_devices)
        .service(search_devices)
        .service(version_stats);
}

/// The filters of a device search; every one given must hold.
#[derive(Debug, Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Devices of this product (required for the CSV export).
    pub product_id: Option<i64>,
    /// The device name starts with this (case-sensitive).
    pub name_prefix: Option<String>,
    /// Members of this group or, unless `include_subgroups=false`, of any of its subgroups.
    pub group_id: Option<i64>,
    /// With `group_id`: include subgroups (default true).
    pub include_subgroups: Option<bool>,
    /// Devices bound to this asset node or to a node below it.
    pub asset_node_id: Option<i64>,
    /// `name:value` (split at the first `:`): the attribute has this value; `name` alone:
    /// the device has the attribute.
    pub attribute: Option<String>,
    /// `key:value` (split at the first `:`), or `key` alone. For tag keys that contain `:`
    /// use `tag_key` and `tag_value` instead.
    pub tag: Option<String>,
    pub tag_key: Option<String>,
    pub tag_value: Option<String>,
    /// With `version`: the module whose current version is compared (default `default`);
    /// alone: devices that report this module.
    pub module: Option<String>,
    /// The device currently runs this version of `module`.
    pub version: Option<String>,
    /// Online (true) or offline (false) devices.
    pub online: Option<bool>,
    /// `next_cursor` of the previous page (not for the export).
    pub cursor: Option<String>,
    /// Devices per page, 1 to 1000 (default 100; not for the export).
    pub limit: Option<u64>,
}

impl SearchQuery {
    /// The domain filter these parameters describe; errors name the parameter.
    pub fn filter(&self) -> Result<DeviceFilter, Invalid> {
        let mut f = DeviceFilter {
            product: self.product_id.map(ProductId),
            name_prefix: self.name_prefix.clone(),
            ..Default::default()
        };
        if let Some(g) = self.group_id {
            f.groups = vec![GroupId(g)];
            f.include_subgroups = self.include_subgroups.unwrap_or(true);
        } else if self.include_subgroups.is_some() {
            return Err(Invalid::new("include_subgroups", "give it with group_id"));
        }
        if let Some(n) = self.asset_node_id {
            f.asset_nodes = vec![AssetNodeId(n)];
            f.include_descendants = true;
        }
        if let Some(a) = &self.attribute {
            f.labels
                .push(LabelMatch::parse(LabelKind::Attribute, "attribute", a)?);
        }
        match (&self.tag, &self.tag_key, &self.tag_value) {
            (Some(_), Some(_), _) => {
                return Err(Invalid::new("tag", "give either tag or tag_key, not both"))
            }
            (_, None, Some(_)) => return Err(Invalid::new("tag_value", "give it with tag_key")),
            (Some(t), None, None) => f.labels.push(LabelMatch::parse(LabelKind::Tag, "tag", t)?),
            (None, Some(k), v) => {
                let value = match v {
                    Some(v) => ValueMatch::OneOf(vec![v.clone()]),
                    None => ValueMatch::Any,
                };
                f.labels
                    .push(LabelMatch::new(LabelKind::Tag, "tag_key", k, value)?);
            }
            (None, None, None) => {}
        }
        if self.module.is_some() || self.version.is_some() {
            let module = match &self.module {
                Some(m) => ModuleName::parse("module", m.as_str())?,
                None => ModuleName::default_module(),
            };
            let versions = match &self.version {
                Some(v) => vec![Version::parse("version", v.as_str())?],
                None => vec![],
            };
            f.module = Some(ModuleMatch { module, versions });
        }
        f.online = self.online;
        f.validate()?;
        Ok(f)
    }
}

/// One page of devices matching `filter`, as the wire page with current module versions.
pub(crate) async fn device_page(
    state: &AppState,
    tenant: TenantId,
    filter: &DeviceFilter,
    page: PageRequest,
) -> ApiResult<PageDto<DeviceDto>> {
    let sel = state.store.resolve_device_filter(tenant, filter).await?;
    let page = state.store.search_devices(tenant, &sel, page).await?;
    let ids: Vec<DeviceId> = page.items.iter().map(|d| d.id).collect();
    let mut modules = state.store.modules_of_devices(tenant, &ids).await?;
    Ok(PageDto::from_page(page, |d| {
        let m = modules.remove(&d.id).unwrap_or_default();
        device_dto(d, m)
    }))
}

/// Searches the tenant's devices (SPEC D5), in id order.
#[utoipa::path(tag = "devices", params(SearchQuery),
    responses((status = 200, body = PageDto<DeviceDto>), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/devices")]
async fn search_devices(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<SearchQuery>,
) -> ApiResult<HttpResponse> {
    let page = PageQuery {
        cursor: q.cursor.clone(),
        limit: q.limit,
    }
    .request()?;
    let filter = q.filter()?;
    Ok(HttpResponse::Ok().json(device_page(&state, auth.tenant(), &filter, page).await?))
}

/// Streams the names of the matching devices as CSV (header `deviceName`, one name a
/// line), ready to upload as a rollout scope. Takes the search filters; `product_id` is
/// required, since device names are unique only within a product.
#[utoipa::path(tag = "devices", params(SearchQuery),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/devices/export.csv")]
async fn export_devices(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<SearchQuery>,
) -> ApiResult<HttpResponse> {
    if q.cursor.is_some() || q.limit.is_some() {
        return Err(ApiError::invalid(
            "cursor",
            "the export streams every match; cursor and limit are for the search",
        ));
    }
    if q.product_id.is_none() {
        return Err(ApiError::invalid(
            "product_id",
            "required: a rollout scope names devices of one product",
        ));
    }
    let tenant = auth.tenant();
    let filter = q.filter()?;
    let sel = Arc::new(state.store.resolve_device_filter(tenant, &filter).await?);
    let st = state.clone();
    Ok(paged_csv("devices.csv", "deviceName", move |after| {
        let st = st.clone();
        let sel = sel.clone();
        async move {
            let rows = st
                .store
                .search_device_names(tenant, &sel, after, 10_000)
                .await?;
            Ok(rows
                .into_iter()
                .map(|(id, name)| (id.0, csv_field(name.as_str()).into_owned()))
                .collect())
        }
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionStatsQuery {
    /// The OTA module (default `default`).
    pub module: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionCountDto {
    pub version: String,
    /// Devices that report this version now.
    pub devices: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionStatsDto {
    pub product_id: i64,
    pub module: String,
    /// Most devices first, then by version.
    pub versions: Vec<VersionCountDto>,
    /// Devices that reported the module at all.
    pub devices: u64,
}

/// The versions of a module the product's devices report now, with counts (SPEC D6): the
/// list an operator picks source versions from.
#[utoipa::path(tag = "products", params(("id" = i64, Path), VersionStatsQuery),
    responses((status = 200, body = VersionStatsDto), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/products/{id}/versions")]
async fn version_stats(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<VersionStatsQuery>,
) -> ApiResult<HttpResponse> {
    let module = match &q.module {
        Some(m) => ModuleName::parse("module", m.as_str())?,
        None => ModuleName::default_module(),
    };
    let counts = state
        .store
        .version_stats(auth.tenant(), ProductId(*id), &module)
        .await?;
    let devices = counts.iter().map(|c| c.devices).sum();
    Ok(HttpResponse::Ok().json(VersionStatsDto {
        product_id: *id,
        module: module.into_string(),
        versions: counts
            .into_iter()
            .map(|c| VersionCountDto {
                version: c.version.into_string(),
                devices: c.devices,
            })
            .collect(),
        devices,
    }))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(search_devices, export_devices, version_stats))]
pub struct Doc;
