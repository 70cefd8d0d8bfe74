//! Products: create, read, update, delete (SPEC D1; the P2 verification setting).

use super::auth::Auth;
use super::dto::{PageDto, PageQuery};
use super::extract::{Json, Query};
use super::{ApiResult, AppState};
use crate::clock::rfc3339;
use crate::domain::{
    bounded_text, limits, role::Action, DisplayName, Product, ProductId, ProductKey, Protocol,
};
use crate::store::{NewProduct, ProductPatch};
use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create_product)
        .service(list_products)
        .service(get_product)
        .service(update_product)
        .service(delete_product);
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// Display name, 1 to 128 characters.
    pub name: String,
    /// How the devices speak MQTT.
    pub protocol: Protocol,
    /// The key devices already carry (moving a fleet); generated when left out.
    pub product_key: Option<String>,
    /// SPEC P2: update rollouts of this product need a verified package (default false).
    #[serde(default)]
    pub require_verification: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    pub name: Option<String>,
    pub require_verification: Option<bool>,
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductDto {
    pub id: i64,
    pub product_key: String,
    pub name: String,
    pub protocol: Protocol,
    pub require_verification: bool,
    pub description: String,
    pub created_at: String,
}

pub(crate) fn dto(p: Product) -> ProductDto {
    ProductDto {
        id: p.id.0,
        product_key: p.product_key.into_string(),
        name: p.name.into_string(),
        protocol: p.protocol,
        require_verification: p.require_verification,
        description: p.description,
        created_at: rfc3339(p.created_at),
    }
}

/// Creates a product.
#[utoipa::path(tag = "products", request_body = CreateProduct,
    responses((status = 201, body = ProductDto), (status = 400, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[post("/v1/products")]
async fn create_product(
    state: web::Data<AppState>,
    auth: Auth,
    body: Json<CreateProduct>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let body = body.into_inner();
    bounded_text(
        "description",
        &body.description,
        0,
        limits::MAX_DESCRIPTION_LEN,
    )?;
    let new = NewProduct {
        product_key: body
            .product_key
            .map(|k| ProductKey::parse("product_key", k))
            .transpose()?,
        name: DisplayName::parse_trimmed("name", &body.name)?,
        protocol: body.protocol,
        require_verification: body.require_verification,
        description: body.description,
    };
    let p = state.store.create_product(tenant, new, state.now()).await?;
    Ok(HttpResponse::Created().json(dto(p)))
}

/// Lists the tenant's products.
#[utoipa::path(tag = "products", params(PageQuery), responses((status = 200, body = PageDto<ProductDto>)))]
#[get("/v1/products")]
async fn list_products(
    state: web::Data<AppState>,
    auth: Auth,
    q: Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let page = state
        .store
        .list_products(auth.tenant(), q.request()?)
        .await?;
    Ok(HttpResponse::Ok().json(PageDto::from_page(page, dto)))
}

/// Reads one product.
#[utoipa::path(tag = "products", params(("id" = i64, Path)), responses((status = 200, body = ProductDto), (status = 404, body = super::error::ErrorBody)))]
#[get("/v1/products/{id}")]
async fn get_product(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let p = state
        .store
        .get_product(auth.tenant(), ProductId(*id))
        .await?;
    Ok(HttpResponse::Ok().json(dto(p)))
}

/// Changes a product's name, description or verification setting (the protocol and key
/// are fixed: devices carry them).
#[utoipa::path(tag = "products", params(("id" = i64, Path)), request_body = UpdateProduct,
    responses((status = 200, body = ProductDto), (status = 404, body = super::error::ErrorBody)))]
#[patch("/v1/products/{id}")]
async fn update_product(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
    body: Json<UpdateProduct>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    let body = body.into_inner();
    if let Some(d) = &body.description {
        bounded_text("description", d, 0, limits::MAX_DESCRIPTION_LEN)?;
    }
    let patch = ProductPatch {
        name: body
            .name
            .map(|n| DisplayName::parse_trimmed("name", &n))
            .transpose()?,
        require_verification: body.require_verification,
        description: body.description,
    };
    let p = state
        .store
        .update_product(tenant, ProductId(*id), patch)
        .await?;
    Ok(HttpResponse::Ok().json(dto(p)))
}

/// Deletes a product that has no devices and no packages left.
#[utoipa::path(tag = "products", params(("id" = i64, Path)), responses((status = 204), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
#[delete("/v1/products/{id}")]
async fn delete_product(
    state: web::Data<AppState>,
    auth: Auth,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let tenant = auth.require(Action::ManageRegistry)?;
    state.store.delete_product(tenant, ProductId(*id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_product,
    list_products,
    get_product,
    update_product,
    delete_product
))]
pub struct Doc;
