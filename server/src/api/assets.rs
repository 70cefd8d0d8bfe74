//! What devices carry besides their identity (SPEC D4): attributes and tags (name → value,
//! replaced or merged), and asset trees whose nodes devices are bound to.

use super::auth::Auth;
use super::devices::DeviceDto;
use super::dto::{PageDto, PageQuery};
use super::extract::{Json, Query};
use super::groups::{Changed, DeviceIds};
use super::search::device_page;
use super::{ApiResult, AppState};
use crate::clock::rfc3339;
use crate::domain::{
    role::Action, AssetNode, AssetNodeId, AssetTree, AssetTreeId, DeviceFilter, DeviceId,
    DisplayName, Invalid, LabelKind,
};
use crate::store::LabelSet;
use actix_web::{delete, get, patch, post, put, web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get_attributes)
        .service(put_attributes)
        .service(patch_attributes)
        .service(get_tags)
        .service(put_tags)
        .service(patch_tags)
        .service(create_tree)
        .service(list_trees)
        .service(get_tree)
        .service(delete_tree)
        .service(create_node)
        .service(list_nodes)
        .service(get_node)
        .service(delete_node)
        .service(bind_devices)
        .service(unbind_devices)
        .service(node_devices);
}

/// Labels as a JSON object, name → value (string).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"color": "red", "site": "plant-a"}))]
pub struct LabelsDto(pub BTreeMap<String, String>);

/// Reads the body of a PUT: every value must be a string.
fn parse_set(
    kind: LabelKind,
    body: serde_json::Map<String, serde_json::Value>,
) -> ApiResult<LabelSet> {
    let mut set = BTreeMap::new();
    for (k, v) in body {
        match v {
            serde_json::Value::String(s) => {
                set.insert(k, s);
            }
            _ => {
                return Err(Invalid::new(
                    format!("{}.{k}", kind.field()),
                    "the value must be a string",
                )
                .into())
            }
        }
    }
    Ok(set)
}

/// Reads the body of a PATCH: string values set, `null` deletes.
fn parse_patch(
    kind: LabelKind,
    body: serde_json::Map<String, serde_json::Value>,
) -> ApiResult<BTreeMap<String, Option<String>>> {
    let mut patch = BTreeMap::new();
    for (k, v) in body {
        match v {
            serde_json::Value::String(s) => {
                patch.insert(k, Some(s));
            }
            serde_json::Value::Null => {
                patch.insert(k, None);
            }
            _ => {
                return Err(Invalid::new(
                    format!("{}.{k}", kind.field()),
                    "the value must be a string, or null to delete",
                )
                .into())
            }
        }
    }
    Ok(patch)
}

async fn read_labels(
    state: &AppState,
    auth: &Auth,
    id: i64,
    kind: LabelKind,
) -> ApiResult<HttpResponse> {
    let set = state
        .store
        .device_labels(auth.tenant(), DeviceId(id), kind)
        .await?;
    Ok(HttpResponse::Ok().json(LabelsDto(set)))
}

async fn replace_labels(
    state: &AppState,
    auth: &Auth,
    id: i64,
    kind: LabelKind,
    body: serde_json::Map<String, serde_json::Value>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let labels = kind.parse_set(parse_set(kind, body)?)?;
    let set = state
        .store
        .replace_device_labels(tenant, DeviceId(id), &labels)
        .await?;
    Ok(HttpResponse::Ok().json(LabelsDto(set)))
}

async fn merge_labels(
    state: &AppState,
    auth: &Auth,
    id: i64,
    kind: LabelKind,
    body: serde_json::Map<String, serde_json::Value>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let patch = kind.parse_patch(parse_patch(kind, body)?)?;
    let set = state
        .store
        .merge_device_labels(tenant, DeviceId(id), &patch)
        .await?;
    Ok(HttpResponse::Ok().json(LabelsDto(set)))
}

type JsonObject = Json<serde_json::Map<String, serde_json::Value>>;

/// Reads a device's attributes.
#[utoipa::path(tag = "devices", params(("id" = i64, Path)),
    responses((status = 200, body = LabelsDto), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/devices/{id}/attributes")]
async fn get_attributes(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    read_labels(&state, &auth, *id, LabelKind::Attribute).await
}

/// Replaces a device's attributes with the given object (name → string value; names are 1
/// to 64 letters, digits and `_ - .`; values at most 1024 characters; at most 100).
#[utoipa::path(tag = "devices", params(("id" = i64, Path)), request_body = LabelsDto,
    responses((status = 200, body = LabelsDto), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[put("/v1/devices/{id}/attributes")]
async fn put_attributes(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: JsonObject,
) -> ApiResult<HttpResponse> {
    replace_labels(&state, &auth, *id, LabelKind::Attribute, body.into_inner()).await
}

/// Merges the given object into a device's attributes; a `null` value deletes one.
#[utoipa::path(tag = "devices", params(("id" = i64, Path)), request_body = LabelsDto,
    responses((status = 200, body = LabelsDto), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[patch("/v1/devices/{id}/attributes")]
async fn patch_attributes(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: JsonObject,
) -> ApiResult<HttpResponse> {
    merge_labels(&state, &auth, *id, LabelKind::Attribute, body.into_inner()).await
}

/// Reads a device's tags.
#[utoipa::path(tag = "devices", params(("id" = i64, Path)),
    responses((status = 200, body = LabelsDto), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/devices/{id}/tags")]
async fn get_tags(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    read_labels(&state, &auth, *id, LabelKind::Tag).await
}

/// Replaces a device's tags with the given object (key → string value; keys are 1 to 64
/// letters, digits and `_ - . :`; values at most 1024 characters; at most 100).
#[utoipa::path(tag = "devices", params(("id" = i64, Path)), request_body = LabelsDto,
    responses((status = 200, body = LabelsDto), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[put("/v1/devices/{id}/tags")]
async fn put_tags(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: JsonObject,
) -> ApiResult<HttpResponse> {
    replace_labels(&state, &auth, *id, LabelKind::Tag, body.into_inner()).await
}

/// Merges the given object into a device's tags; a `null` value deletes one.
#[utoipa::path(tag = "devices", params(("id" = i64, Path)), request_body = LabelsDto,
    responses((status = 200, body = LabelsDto), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[patch("/v1/devices/{id}/tags")]
async fn patch_tags(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: JsonObject,
) -> ApiResult<HttpResponse> {
    merge_labels(&state, &auth, *id, LabelKind::Tag, body.into_inner()).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTree {
    /// 1 to 128 characters, unique among the tenant's asset trees.
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssetTreeDto {
    pub id: i64,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNode {
    /// 1 to 128 characters, unique among the parent's children.
    pub name: String,
    /// A node of the same tree; a top-level node when left out. At most 16 levels.
    pub parent_id: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssetNodeDto {
    pub id: i64,
    pub tree_id: i64,
    /// Absent for a top-level node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<i64>,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NodeDevicesQuery {
    /// Also the devices bound to nodes below this one (default false).
    #[serde(default)]
    pub include_descendants: bool,
    pub cursor: Option<String>,
    pub limit: Option<u64>,
}

fn tree_dto(t: AssetTree) -> AssetTreeDto {
    AssetTreeDto {
        id: t.id.0,
        name: t.name.into_string(),
        created_at: rfc3339(t.created_at),
    }
}

fn node_dto(n: AssetNode) -> AssetNodeDto {
    AssetNodeDto {
        id: n.id.0,
        tree_id: n.tree_id.0,
        parent_id: n.parent_id.map(|p| p.0),
        name: n.name.into_string(),
        created_at: rfc3339(n.created_at),
    }
}

/// Creates an asset tree.
#[utoipa::path(tag = "assets", request_body = CreateTree,
    responses((status = 201, body = AssetTreeDto), (status = 400, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[post("/v1/asset-trees")]
async fn create_tree(
    state: web::Data<AppState>,
    auth: Auth,
    body: Json<CreateTree>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let name = DisplayName::parse_trimmed("name", &body.name)?;
    let t = state
        .store
        .create_asset_tree(tenant, name, state.now())
        .await?;
    Ok(HttpResponse::Created().json(tree_dto(t)))
}

/// Lists the tenant's asset trees.
#[utoipa::path(tag = "assets", params(PageQuery), responses((status = 200, body = PageDto<AssetTreeDto>)))]
#[get("/v1/asset-trees")]
async fn list_trees(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let page = state
        .store
        .list_asset_trees(auth.tenant(), q.request()?)
        .await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, tree_dto)))
}

/// Reads one asset tree.
#[utoipa::path(tag = "assets", params(("id" = i64, Path)),
    responses((status = 200, body = AssetTreeDto), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/asset-trees/{id}")]
async fn get_tree(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let t = state
        .store
        .get_asset_tree(auth.tenant(), AssetTreeId(*id))
        .await?;
    Ok(HttpResponse::Ok().json(tree_dto(t)))
}

/// Deletes an asset tree; 409 while it has nodes.
#[utoipa::path(tag = "assets", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[delete("/v1/asset-trees/{id}")]
async fn delete_tree(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    state
        .store
        .delete_asset_tree(tenant, AssetTreeId(*id))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Creates a node in an asset tree, at the top or under a parent node.
#[utoipa::path(tag = "assets", params(("id" = i64, Path, description = "asset tree id")), request_body = CreateNode,
    responses((status = 201, body = AssetNodeDto), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[post("/v1/asset-trees/{id}/nodes")]
async fn create_node(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<CreateNode>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let name = DisplayName::parse_trimmed("name", &body.name)?;
    let n = state
        .store
        .create_asset_node(
            tenant,
            AssetTreeId(*id),
            body.parent_id.map(AssetNodeId),
            name,
            state.now(),
        )
        .await?;
    Ok(HttpResponse::Created().json(node_dto(n)))
}

/// Lists every node of an asset tree in id order (parents before children).
#[utoipa::path(tag = "assets", params(("id" = i64, Path, description = "asset tree id"), PageQuery),
    responses((status = 200, body = PageDto<AssetNodeDto>), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/asset-trees/{id}/nodes")]
async fn list_nodes(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let page = state
        .store
        .list_asset_nodes(auth.tenant(), AssetTreeId(*id), q.request()?)
        .await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, node_dto)))
}

/// Reads one asset node.
#[utoipa::path(tag = "assets", params(("id" = i64, Path)),
    responses((status = 200, body = AssetNodeDto), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/asset-nodes/{id}")]
async fn get_node(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let n = state
        .store
        .get_asset_node(auth.tenant(), AssetNodeId(*id))
        .await?;
    Ok(HttpResponse::Ok().json(node_dto(n)))
}

/// Deletes an asset node and its device bindings; 409 while it has child nodes.
#[utoipa::path(tag = "assets", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[delete("/v1/asset-nodes/{id}")]
async fn delete_node(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    state
        .store
        .delete_asset_node(tenant, AssetNodeId(*id))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Binds devices to an asset node, all or nothing (1 to 10,000 ids).
#[utoipa::path(tag = "assets", params(("id" = i64, Path)), request_body = DeviceIds,
    responses((status = 200, body = Changed), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[post("/v1/asset-nodes/{id}/devices")]
async fn bind_devices(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<DeviceIds>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let changed = state
        .store
        .bind_asset_devices(tenant, AssetNodeId(*id), &body.ids())
        .await?;
    Ok(HttpResponse::Ok().json(Changed { changed }))
}

/// Unbinds devices from an asset node, all or nothing.
#[utoipa::path(tag = "assets", params(("id" = i64, Path)), request_body = DeviceIds,
    responses((status = 200, body = Changed), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
#[post("/v1/asset-nodes/{id}/devices/remove")]
async fn unbind_devices(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<DeviceIds>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let changed = state
        .store
        .unbind_asset_devices(tenant, AssetNodeId(*id), &body.ids())
        .await?;
    Ok(HttpResponse::Ok().json(Changed { changed }))
}

/// The devices bound to an asset node, optionally with those on the nodes below it.
#[utoipa::path(tag = "assets", params(("id" = i64, Path), NodeDevicesQuery),
    responses((status = 200, body = PageDto<DeviceDto>), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/asset-nodes/{id}/devices")]
async fn node_devices(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    q: Query<NodeDevicesQuery>,
) -> ApiResult<HttpResponse> {
    let page = PageQuery {
        cursor: q.cursor.clone(),
        limit: q.limit,
    }
    .request()?;
    let filter = DeviceFilter {
        asset_nodes: vec![AssetNodeId(*id)],
        include_descendants: q.include_descendants,
        ..Default::default()
    };
    Ok(HttpResponse::Ok().json(device_page(&state, auth.tenant(), &filter, page).await?))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    get_attributes,
    put_attributes,
    patch_attributes,
    get_tags,
    put_tags,
    patch_tags,
    create_tree,
    list_trees,
    get_tree,
    delete_tree,
    create_node,
    list_nodes,
    get_node,
    delete_node,
    bind_devices,
    unbind_devices,
    node_devices
))]
pub struct Doc;
