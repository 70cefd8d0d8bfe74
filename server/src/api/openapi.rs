//! The OpenAPI document, generated from the handlers' annotations (SPEC M2).

use actix_web::{get, web, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "OTA server API", description = "Self-hosted over-the-air firmware updates. Every /v1 call needs `Authorization: Bearer <key>`."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(super::error::ErrorBody))
)]
struct Root;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The whole document: the root merged with each resource module's part.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Root::openapi();
    for part in [
        super::health::Doc::openapi(),
        super::keys::Doc::openapi(),
        super::products::Doc::openapi(),
        super::devices::Doc::openapi(),
        super::search::Doc::openapi(),
        super::groups::Doc::openapi(),
        super::assets::Doc::openapi(),
        super::packages::Doc::openapi(),
        super::downloads::Doc::openapi(),
    ] {
        doc.merge(part);
    }
    doc
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(openapi_json);
}

#[get("/v1/openapi.json")]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(document())
}
