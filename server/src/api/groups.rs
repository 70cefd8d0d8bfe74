//! Device groups: a tenant-wide tree, and bulk membership (SPEC D3).

use super::auth::Auth;
use super::devices::DeviceDto;
use super::dto::{PageDto, PageQuery};
use super::extract::{Json, Query};
use super::search::device_page;
use super::{ApiResult, AppState};
use crate::clock::rfc3339;
use crate::domain::{
    bounded_text, limits, role::Action, DeviceFilter, DeviceId, DisplayName, Group, GroupId,
    GroupPatch, NewGroup,
};
use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create_group)
        .service(list_groups)
        .service(get_group)
        .service(update_group)
        .service(delete_group)
        .service(add_members)
        .service(remove_members)
        .service(group_devices)
        .service(device_groups);
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// 1 to 128 characters, unique among the parent's children.
    pub name: String,
    /// The parent group; a top-level group when left out. Groups nest at most 5 levels.
    pub parent_id: Option<i64>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    pub name: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDto {
    pub id: i64,
    /// Absent for a top-level group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<i64>,
    pub name: String,
    pub description: String,
    pub created_at: String,
}

/// Device ids for a bulk membership or binding change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceIds {
    /// 1 to 10,000 device ids of this tenant; if any is unknown nothing changes.
    pub device_ids: Vec<i64>,
}

impl DeviceIds {
    pub fn ids(&self) -> Vec<DeviceId> {
        self.device_ids.iter().copied().map(DeviceId).collect()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Changed {
    /// How many memberships or bindings were actually added or removed (ids that already
    /// were, or were not, members count 0).
    pub changed: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListGroupsQuery {
    /// The children of this group; the top-level groups when left out.
    pub parent_id: Option<i64>,
    pub cursor: Option<String>,
    pub limit: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GroupDevicesQuery {
    /// Also the devices of every subgroup, at any depth (default false).
    #[serde(default)]
    pub include_subgroups: bool,
    pub cursor: Option<String>,
    pub limit: Option<u64>,
}

fn dto(g: Group) -> GroupDto {
    GroupDto {
        id: g.id.0,
        parent_id: g.parent_id.map(|p| p.0),
        name: g.name.into_string(),
        description: g.description,
        created_at: rfc3339(g.created_at),
    }
}

/// Creates a group, at the top level or under a parent.
#[utoipa::path(tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = GroupDto), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[post("/v1/groups")]
async fn create_group(
    state: web::Data<AppState>,
    auth: Auth,
    body: Json<CreateGroup>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let body = body.into_inner();
    bounded_text(
        "description",
        &body.description,
        0,
        limits::MAX_DESCRIPTION_LEN,
    )?;
    let new = NewGroup {
        name: DisplayName::parse_trimmed("name", &body.name)?,
        parent: body.parent_id.map(GroupId),
        description: body.description,
    };
    let g = state.store.create_group(tenant, new, state.now()).await?;
    Ok(HttpResponse::Created().json(dto(g)))
}

/// Lists the children of a group, or the top-level groups.
#[utoipa::path(tag = "groups", params(ListGroupsQuery),
    responses((status = 200, body = PageDto<GroupDto>), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/groups")]
async fn list_groups(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<ListGroupsQuery>,
) -> ApiResult<HttpResponse> {
    let page = PageQuery {
        cursor: q.cursor.clone(),
        limit: q.limit,
    }
    .request()?;
    let page = state
        .store
        .list_groups(auth.tenant(), q.parent_id.map(GroupId), page)
        .await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, dto)))
}

/// Reads one group.
#[utoipa::path(tag = "groups", params(("id" = i64, Path)),
    responses((status = 200, body = GroupDto), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/groups/{id}")]
async fn get_group(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let g = state.store.get_group(auth.tenant(), GroupId(*id)).await?;
    Ok(HttpResponse::Ok().json(dto(g)))
}

/// Renames a group or changes its description.
#[utoipa::path(tag = "groups", params(("id" = i64, Path)), request_body = UpdateGroup,
    responses((status = 200, body = GroupDto), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[patch("/v1/groups/{id}")]
async fn update_group(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<UpdateGroup>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let body = body.into_inner();
    if let Some(d) = &body.description {
        bounded_text("description", d, 0, limits::MAX_DESCRIPTION_LEN)?;
    }
    let patch = GroupPatch {
        name: body
            .name
            .map(|n| DisplayName::parse_trimmed("name", &n))
            .transpose()?,
        description: body.description,
    };
    let g = state
        .store
        .update_group(tenant, GroupId(*id), patch)
        .await?;
    Ok(HttpResponse::Ok().json(dto(g)))
}

/// Deletes a group and its memberships (not the devices); 409 while it has subgroups.
#[utoipa::path(tag = "groups", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[delete("/v1/groups/{id}")]
async fn delete_group(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    state.store.delete_group(tenant, GroupId(*id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Adds devices to a group, all or nothing (1 to 10,000 ids; unknown ids are listed in the
/// 400 reply and nothing changes). A device may be in several groups.
#[utoipa::path(tag = "groups", params(("id" = i64, Path)), request_body = DeviceIds,
    responses((status = 200, body = Changed), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[post("/v1/groups/{id}/devices")]
async fn add_members(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<DeviceIds>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let changed = state
        .store
        .add_group_members(tenant, GroupId(*id), &body.ids())
        .await?;
    Ok(HttpResponse::Ok().json(Changed { changed }))
}

/// Removes devices from a group, all or nothing.
#[utoipa::path(tag = "groups", params(("id" = i64, Path)), request_body = DeviceIds,
    responses((status = 200, body = Changed), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[post("/v1/groups/{id}/devices/remove")]
async fn remove_members(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<DeviceIds>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let changed = state
        .store
        .remove_group_members(tenant, GroupId(*id), &body.ids())
        .await?;
    Ok(HttpResponse::Ok().json(Changed { changed }))
}

/// The devices of a group, optionally with those of all its subgroups (SPEC D3), in id
/// order.
#[utoipa::path(tag = "groups", params(("id" = i64, Path), GroupDevicesQuery),
    responses((status = 200, body = PageDto<DeviceDto>), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/groups/{id}/devices")]
async fn group_devices(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<GroupDevicesQuery>,
) -> ApiResult<HttpResponse> {
    let page = PageQuery {
        cursor: q.cursor.clone(),
        limit: q.limit,
    }
    .request()?;
    let filter = DeviceFilter {
        groups: vec![GroupId(*id)],
        include_subgroups: q.include_subgroups,
        ..Default::default()
    };
    Ok(HttpResponse::Ok().json(device_page(&state, auth.tenant(), &filter, page).await?))
}

/// The groups a device is a direct member of.
#[utoipa::path(tag = "groups", params(("id" = i64, Path)),
    responses((status = 200, body = Vec<GroupDto>), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/devices/{id}/groups")]
async fn device_groups(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let groups = state
        .store
        .device_groups(auth.tenant(), DeviceId(*id))
        .await?;
    Ok(HttpResponse::Ok().json(groups.into_iter().map(dto).collect::<Vec<_>>()))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_group,
    list_groups,
    get_group,
    update_group,
    delete_group,
    add_members,
    remove_members,
    group_devices,
    device_groups
))]
pub struct Doc;
