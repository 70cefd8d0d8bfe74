//! The OpenAPI document, generated from the handlers' annotations (SPEC M2), with the replies
//! that every operation can give added in one place, and the route table the 405 replies
//! are built from.

use actix_web::dev::ResourceDef;
use actix_web::{get, web, HttpResponse};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
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

/// The whole document: the root merged with each resource module's part, then completed.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Root::openapi();
    for part in [
        super::health::Doc::openapi(),
        Doc::openapi(),
        super::keys::Doc::openapi(),
        super::products::Doc::openapi(),
        super::devices::Doc::openapi(),
        super::search::Doc::openapi(),
        super::groups::Doc::openapi(),
        super::assets::Doc::openapi(),
        super::packages::Doc::openapi(),
        super::policies::Doc::openapi(),
        super::rollouts::Doc::openapi(),
        super::safety::Doc::openapi(),
        super::projection::Doc::openapi(),
        super::downloads::Doc::openapi(),
    ] {
        doc.merge(part);
    }
    unique_operation_ids(&mut doc.paths.paths);
    document_json_import(&mut doc.paths.paths);
    for item in doc.paths.paths.values_mut() {
        for (_, op) in operations_mut(item) {
            add_common_replies(op);
        }
    }
    doc
}

/// Each route of the document as an actix pattern with its methods (upper case).
pub fn route_table() -> &'static [(ResourceDef, Vec<String>)] {
    static TABLE: OnceLock<Vec<(ResourceDef, Vec<String>)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        document()
            .paths
            .paths
            .iter_mut()
            .map(|(path, item)| {
                let methods = operations_mut(item)
                    .into_iter()
                    .map(|(m, _)| m.to_owned())
                    .collect();
                (ResourceDef::new(path.as_str()), methods)
            })
            .collect()
    })
}

/// The operations of a path with their methods.
fn operations_mut(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("GET", item.get.as_mut()),
        ("HEAD", item.head.as_mut()),
        ("POST", item.post.as_mut()),
        ("PUT", item.put.as_mut()),
        ("PATCH", item.patch.as_mut()),
        ("DELETE", item.delete.as_mut()),
        ("OPTIONS", item.options.as_mut()),
        ("TRACE", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

/// utoipa names an operation after its handler, so a handler that serves two methods (GET
/// and HEAD of a download) gives two operations one id; OpenAPI wants ids unique. The
/// second and later get `_{method}` appended.
fn unique_operation_ids(paths: &mut BTreeMap<String, PathItem>) {
    let mut seen = std::collections::HashSet::new();
    for item in paths.values_mut() {
        for (method, op) in operations_mut(item) {
            if let Some(id) = op.operation_id.clone() {
                if !seen.insert(id.clone()) {
                    let unique = format!("{id}_{}", method.to_ascii_lowercase());
                    seen.insert(unique.clone());
                    op.operation_id = Some(unique);
                }
            }
        }
    }
}

/// The device import takes a JSON array as well as CSV. Its handler is being rewritten
/// elsewhere, so the JSON form is described here rather than in its annotation; this adds
/// it only when the annotation does not already.
fn document_json_import(paths: &mut BTreeMap<String, PathItem>) {
    let Some(op) = paths
        .get_mut("/v1/products/{id}/devices/import")
        .and_then(|item| item.post.as_mut())
    else {
        return;
    };
    let body = op.request_body.get_or_insert_with(RequestBody::new);
    if body.content.contains_key("application/json") {
        return;
    }
    let row = ObjectBuilder::new()
        .property(
            "name",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("the device name")),
        )
        .required("name")
        .property(
            "secret",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "8 to 128 printable ASCII characters; generated when left out",
                )),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let rows: Schema = ArrayBuilder::new().items(row).build().into();
    body.content.insert(
        "application/json".into(),
        Content::new(Some(RefOr::T(rows))),
    );
}

/// Replies any operation can give, so a client (and a fuzzer checking replies against the
/// document) finds every status documented: 401/403 for keyed routes, 400 for routes with
/// input, 404 for routes with ids, 413/415 for JSON bodies, 500 everywhere. Replies an
/// annotation documents itself are kept as written.
fn add_common_replies(op: &mut Operation) {
    let keyed = match &op.security {
        None => true, // the document's default: a bearer key
        Some(reqs) => !reqs
            .iter()
            .all(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({}))),
    };
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_path_ids = params
        .iter()
        .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Path));
    let has_input = !params.is_empty() || op.request_body.is_some();
    let json_body = op
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.contains_key("application/json"));
    let mut add = |status: &str, what: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(error_reply(what)));
    };
    if keyed {
        add(
            "401",
            "unauthenticated: the bearer key is missing, unknown or revoked",
        );
        add("403", "forbidden: the key's role may not do this");
    }
    if has_input {
        add("400", "invalid_input: `field` names the input at fault");
    }
    if has_path_ids {
        add("404", "not_found, also for another tenant's ids");
    }
    if json_body {
        add(
            "413",
            "payload_too_large: the JSON body exceeds http.max_json_bytes",
        );
        add(
            "415",
            "unsupported_media_type: send the body as application/json",
        );
    }
    add("500", "internal: the server log has the details");
}

fn error_reply(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody")))),
        )
        .build()
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(openapi_json);
}

/// This document.
#[utoipa::path(tag = "health", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
#[get("/v1/openapi.json")]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

#[derive(OpenApi)]
#[openapi(paths(openapi_json))]
struct Doc;
