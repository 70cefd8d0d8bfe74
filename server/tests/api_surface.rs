//! The API's surface as a whole, on SQLite and PostgreSQL: every route refuses another
//! tenant's ids, input errors name their field in wire terms, wrong methods answer 405,
//! download ranges follow RFC 9110, secret resets never take a bad body for none, and
//! concurrent revokes keep an admin key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::TestRequest;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

db_tests!(
    every_keyed_route_refuses_another_tenants_ids,
    secret_reset_refuses_bad_bodies_and_generates_without_one,
    body_query_and_path_errors_name_the_field_without_type_names,
    a_wrong_method_answers_405_with_allow,
    unusable_ranges_get_the_whole_file_and_unsatisfiable_ones_416,
    concurrent_revokes_always_leave_an_admin_key,
);

/// In every name tenant A gives its data, so any reply to tenant B that shows it is a leak.
const MARK: &str = "acmeonly";

/// Tenant A's resources, by the kind of id a route takes.
struct Fixture {
    ids: BTreeMap<&'static str, i64>,
    device_secret: String,
    download_path: String,
}

async fn fixture<S, B>(app: &S, key: &str) -> Fixture
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut ids = BTreeMap::new();
    let product = create_product(app, key, &format!("{MARK}-product"), "alink").await;
    ids.insert("product", product);
    let post = |path: String, body: Value| async move {
        let r = call(app, Some(key), "POST", &path, Some(body)).await;
        assert!(r.status.is_success(), "POST {path}: {}", r.text());
        r.json()
    };
    let d = post(
        format!("/v1/products/{product}/devices"),
        json!({"name": format!("{MARK}-device")}),
    )
    .await;
    let device = d["id"].as_i64().unwrap();
    ids.insert("device", device);
    post(
        format!("/v1/devices/{device}/versions"),
        json!({"version": "1.0"}),
    )
    .await;
    call(
        app,
        Some(key),
        "PUT",
        &format!("/v1/devices/{device}/attributes"),
        Some(json!({"site": format!("{MARK}-site")})),
    )
    .await
    .expect(200);
    let group = post(
        "/v1/groups".into(),
        json!({"name": format!("{MARK}-group")}),
    )
    .await;
    let group = group["id"].as_i64().unwrap();
    ids.insert("group", group);
    post(
        format!("/v1/groups/{group}/devices"),
        json!({"device_ids": [device]}),
    )
    .await;
    let tree = post(
        "/v1/asset-trees".into(),
        json!({"name": format!("{MARK}-tree")}),
    )
    .await;
    let tree = tree["id"].as_i64().unwrap();
    ids.insert("tree", tree);
    let node = post(
        format!("/v1/asset-trees/{tree}/nodes"),
        json!({"name": format!("{MARK}-node")}),
    )
    .await;
    let node = node["id"].as_i64().unwrap();
    ids.insert("node", node);
    post(
        format!("/v1/asset-nodes/{node}/devices"),
        json!({"device_ids": [device]}),
    )
    .await;
    let pkg = post(
        format!("/v1/products/{product}/packages"),
        json!({"version": "2.0", "description": format!("{MARK}-package")}),
    )
    .await;
    let pkg = pkg["id"].as_i64().unwrap();
    ids.insert("package", pkg);
    let f = call_raw(
        app,
        Some(key),
        "PUT",
        &format!("/v1/packages/{pkg}/files/{MARK}.bin"),
        "application/octet-stream",
        b"firmware".to_vec(),
    )
    .await;
    f.expect(201);
    ids.insert("file", f.json()["id"].as_i64().unwrap());
    let download_path = f.json()["download_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://ota.test")
        .unwrap()
        .to_owned();
    let r = post(
        format!("/v1/packages/{pkg}/rollouts"),
        json!({"scope": {"kind": "all"}, "description": format!("{MARK}-rollout"), "app_confirm": true}),
    )
    .await;
    ids.insert("rollout", r["id"].as_i64().unwrap());
    let tasks = call(
        app,
        Some(key),
        "GET",
        &format!("/v1/rollouts/{}/tasks", r["id"]),
        None,
    )
    .await
    .json();
    ids.insert("task", tasks["items"][0]["id"].as_i64().unwrap());
    let k = post(
        "/v1/keys".into(),
        json!({"name": format!("{MARK}-key"), "role": "viewer"}),
    )
    .await;
    ids.insert("key", k["id"].as_i64().unwrap());
    let p = call_raw(
        app,
        Some(key),
        "POST",
        &format!("/v1/policies?name={MARK}-policy"),
        "application/wasm",
        policy_component(),
    )
    .await;
    p.expect(201);
    ids.insert("policy", p.json()["id"].as_i64().unwrap());
    Fixture {
        ids,
        device_secret: d["secret"].as_str().unwrap().to_owned(),
        download_path,
    }
}

/// A real policy component (built by `scripts/build-policies`).
fn policy_component() -> Vec<u8> {
    let dir = std::env::var_os("POLICY_WASM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/policies")
        });
    std::fs::read(dir.join("canary-scope.wasm"))
        .expect("build the policy components first: scripts/build-policies")
}

/// The kind of id a path parameter takes, from the segment before it.
fn path_param_kind(path: &str, param: &str) -> &'static str {
    let segs: Vec<&str> = path.split('/').collect();
    let at = segs
        .iter()
        .position(|s| *s == format!("{{{param}}}"))
        .unwrap();
    match (segs[at - 1], param) {
        ("files", "file_id") => "file",
        ("files", "name") => "file name",
        ("products", "id") => "product",
        ("devices", "id") => "device",
        ("groups", "id") => "group",
        ("asset-trees", "id") => "tree",
        ("asset-nodes", "id") => "node",
        ("packages", "id") => "package",
        ("keys", "id") => "key",
        ("rollouts", "id") => "rollout",
        ("policies", "id") => "policy",
        _ => panic!("{path}: teach this test which kind of id {{{param}}} is"),
    }
}

/// The kind of id a query parameter filters by.
fn query_param_kind(path: &str, param: &str) -> Option<&'static str> {
    match (path, param) {
        (_, "product_id") => Some("product"),
        (_, "group_id") => Some("group"),
        (_, "asset_node_id") => Some("node"),
        ("/v1/groups", "parent_id") => Some("group"),
        (_, "package_id") => Some("package"),
        (_, "task_id") => Some("task"),
        (_, p) if p.ends_with("_id") => {
            panic!("{path}: teach this test which kind of id the query parameter {p} is")
        }
        _ => None,
    }
}

/// A body the operation would accept from its own tenant, so that a reply other than 404
/// cannot come from input validation hiding a leak.
fn body_for(op: &str, fx: &Fixture) -> (&'static str, Vec<u8>) {
    let device = fx.ids["device"];
    let j = |v: Value| ("application/json", serde_json::to_vec(&v).unwrap());
    match op {
        "POST /v1/products" => j(json!({"name": "walk", "protocol": "alink"})),
        "PATCH /v1/products/{id}" => j(json!({"name": "walk"})),
        "POST /v1/products/{id}/devices" => j(json!({"name": "walk-device"})),
        "POST /v1/products/{id}/devices/import" => j(json!([{"name": "walk-device"}])),
        "POST /v1/products/{id}/packages" => j(json!({"version": "9.9"})),
        "POST /v1/devices/{id}/secret" => j(json!({"secret": "walk-secret-1234"})),
        "POST /v1/devices/{id}/versions" => j(json!({"version": "3.0"})),
        "PUT /v1/devices/{id}/attributes"
        | "PATCH /v1/devices/{id}/attributes"
        | "PUT /v1/devices/{id}/tags"
        | "PATCH /v1/devices/{id}/tags" => j(json!({"walk": "x"})),
        "POST /v1/keys" => j(json!({"name": "walk", "role": "viewer"})),
        "POST /v1/groups" => j(json!({"name": "walk", "parent_id": fx.ids["group"]})),
        "PATCH /v1/groups/{id}" => j(json!({"name": "walk"})),
        "POST /v1/groups/{id}/devices"
        | "POST /v1/groups/{id}/devices/remove"
        | "POST /v1/asset-nodes/{id}/devices"
        | "POST /v1/asset-nodes/{id}/devices/remove" => j(json!({"device_ids": [device]})),
        "POST /v1/asset-trees" => j(json!({"name": "walk"})),
        "POST /v1/asset-trees/{id}/nodes" => j(json!({"name": "walk"})),
        "PATCH /v1/packages/{id}" => j(json!({"description": "walk"})),
        "POST /v1/packages/{id}/withdraw" => j(json!({"reason": "walk"})),
        "PUT /v1/packages/{id}/files/{name}" => ("application/octet-stream", b"walk".to_vec()),
        "POST /v1/packages/{id}/rollouts" => j(json!({"scope": {"kind": "all"}})),
        "POST /v1/packages/{id}/rollouts/projection" => {
            j(json!({"rollout": {"scope": {"kind": "all"}}}))
        }
        "POST /v1/rollouts/{id}/tasks/cancel" => j(json!({"states": ["waiting"]})),
        "PATCH /v1/rollouts/{id}" => j(json!({"tags": {"walk": "x"}})),
        "POST /v1/packages/{id}/tasks/cancel" => j(json!({"device_ids": [device]})),
        "POST /v1/tasks/confirm" => j(json!({"task_ids": [fx.ids["task"]]})),
        "POST /v1/products/{id}/device-lists" => ("text/csv", b"deviceName\nwalk\n".to_vec()),
        "POST /v1/policies" => ("application/wasm", policy_component()),
        _ => panic!("{op} takes a body: give this test one it would accept"),
    }
}

async fn send_as<S, B>(
    app: &S,
    key: &str,
    method: &str,
    uri: &str,
    body: Option<&(&'static str, Vec<u8>)>,
) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut req = TestRequest::default()
        .method(actix_web::http::Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri)
        .insert_header(("Authorization", format!("Bearer {key}")));
    if let Some((ctype, bytes)) = body {
        req = req
            .insert_header(("Content-Type", *ctype))
            .set_payload(bytes.clone());
    }
    send(app, req).await
}

const METHODS: [&str; 8] = [
    "get", "head", "post", "put", "patch", "delete", "options", "trace",
];

// SPEC M1
async fn every_keyed_route_refuses_another_tenants_ids(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin).await;
    let other = t.other_tenant("globex").await;
    let doc = call(&app, None, "GET", "/v1/openapi.json", None)
        .await
        .json();
    let paths = doc["paths"].as_object().unwrap();
    let mut walked = 0;
    let mut unkeyed = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let m = method.to_ascii_uppercase();
            let name = format!("{m} {path}");
            // Routes without a key have no tenant to cross; they are listed below.
            if op["security"] == json!([{}]) {
                unkeyed.insert(name);
                continue;
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut uri = path.clone();
            let mut has_ids = false;
            let mut query_ids = Vec::new();
            for p in &params {
                let pname = p["name"].as_str().unwrap();
                match p["in"].as_str().unwrap() {
                    "path" => {
                        let value = match path_param_kind(path, pname) {
                            "file name" => "walk.bin".to_owned(),
                            kind => {
                                has_ids = true;
                                fx.ids[kind].to_string()
                            }
                        };
                        uri = uri.replace(&format!("{{{pname}}}"), &value);
                    }
                    "query" => {
                        if let Some(kind) = query_param_kind(path, pname) {
                            query_ids.push((pname, format!("{pname}={}", fx.ids[kind])));
                        }
                    }
                    _ => {}
                }
            }
            let body = op.get("requestBody").map(|_| body_for(&name, &fx));
            let r = send_as(&app, &other, &m, &uri, body.as_ref()).await;
            assert!(!r.text().contains(MARK), "{name} leaks: {}", r.text());
            if has_ids {
                assert_eq!(r.status, 404, "{name} as {uri}: {}", r.text());
                assert_eq!(r.json()["code"], "not_found", "{name}");
            } else {
                assert!(!r.status.is_server_error(), "{name}: {}", r.text());
                // filtering by one of A's ids finds nothing of A's
                for (pname, q) in &query_ids {
                    let uri = format!("{uri}?{q}");
                    let r = send_as(&app, &other, &m, &uri, body.as_ref()).await;
                    assert!(!r.text().contains(MARK), "{m} {uri} leaks: {}", r.text());
                    // 404, or nothing found, or a refusal for another parameter's sake
                    let empty = r.status.is_success()
                        && match serde_json::from_slice::<Value>(&r.body) {
                            Ok(v) => v["items"].as_array().is_some_and(|i| i.is_empty()),
                            Err(_) => r.text().lines().count() <= 1, // a CSV header alone
                        };
                    let other_param = r.status == 400 && r.json()["field"] != *pname;
                    assert!(
                        r.status == 404 || empty || other_param,
                        "{m} {uri}: {}",
                        r.text()
                    );
                }
            }
            walked += 1;
        }
    }
    assert!(
        walked >= 40,
        "only {walked} keyed operations in the document"
    );
    assert_eq!(
        unkeyed,
        [
            "GET /dl/{token}",
            "GET /health",
            "GET /metrics",
            "GET /ready",
            "GET /v1/openapi.json",
            "HEAD /dl/{token}",
        ]
        .map(String::from)
        .into(),
        "a route that needs no key must be meant to"
    );
    // B changed nothing of A's
    let get = |path: String| {
        let app = &app;
        let key = t.admin.clone();
        async move {
            let r = call(app, Some(&key), "GET", &path, None).await;
            r.expect(200);
            r.json()
        }
    };
    let id = |k: &str| fx.ids[k];
    get(format!("/v1/products/{}", id("product"))).await;
    let d = get(format!("/v1/devices/{}", id("device"))).await;
    assert_eq!(d["modules"][0]["version"], "1.0");
    let attrs = get(format!("/v1/devices/{}/attributes", id("device"))).await;
    assert_eq!(attrs, json!({"site": format!("{MARK}-site")}));
    let members = get(format!("/v1/groups/{}/devices", id("group"))).await;
    assert_eq!(members["items"][0]["id"], id("device"));
    let bound = get(format!("/v1/asset-nodes/{}/devices", id("node"))).await;
    assert_eq!(bound["items"][0]["id"], id("device"));
    let pkg = get(format!("/v1/packages/{}", id("package"))).await;
    assert_eq!(pkg["files"][0]["id"], id("file"));
    get(format!("/v1/asset-trees/{}", id("tree"))).await;
    get(format!("/v1/policies/{}", id("policy"))).await;
    let keys = get("/v1/keys".into()).await;
    let key = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id("key"))
        .unwrap();
    assert!(key.get("revoked_at").is_none(), "{key}");
    let creds = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/products/{}/devices/credentials.csv", id("product")),
        None,
    )
    .await;
    assert!(creds.text().contains(&fx.device_secret), "{}", creds.text());
    send(&app, TestRequest::get().uri(&fx.download_path))
        .await
        .expect(200);
}

async fn device_secret<S, B>(app: &S, key: &str, product: i64) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let csv = call(
        app,
        Some(key),
        "GET",
        &format!("/v1/products/{product}/devices/credentials.csv"),
        None,
    )
    .await
    .text();
    csv.lines()
        .nth(1)
        .and_then(|l| l.split_once(','))
        .map(|(_, s)| s.to_owned())
        .unwrap()
}

async fn secret_reset_refuses_bad_bodies_and_generates_without_one(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let d = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{product}/devices"),
        Some(json!({"name": "m1", "secret": "first-secret-1"})),
    )
    .await;
    d.expect(201);
    let path = format!("/v1/devices/{}/secret", d.json()["id"]);
    let json_ct = "application/json";
    for (ctype, body, status, field) in [
        (json_ct, "{not json", 400, Some("body")),
        (
            json_ct,
            r#"{"secrt": "second-secret-2"}"#,
            400,
            Some("secrt"),
        ),
        (json_ct, r#"{"secret": 12345678}"#, 400, Some("secret")),
        (json_ct, "[]", 400, Some("body")),
        (json_ct, "null", 400, Some("body")),
        (json_ct, r#"{"secret": "short"}"#, 400, Some("secret")),
        ("text/plain", r#"{"secret": "second-secret-2"}"#, 415, None),
    ] {
        let r = call_raw(&app, Some(&t.admin), "POST", &path, ctype, body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        if let Some(f) = field {
            assert_eq!(r.json()["field"], f, "{body}: {}", r.text());
        }
        assert_eq!(
            device_secret(&app, &t.admin, product).await,
            "first-secret-1",
            "{body} must not change the secret"
        );
    }
    // no body at all: a generated secret
    let r = call(&app, Some(&t.admin), "POST", &path, None).await;
    r.expect(200);
    let generated = r.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(generated, "first-secret-1");
    assert_eq!(device_secret(&app, &t.admin, product).await, generated);
    // Content-Length: 0 is no body too
    let r = call_raw(&app, Some(&t.admin), "POST", &path, json_ct, "").await;
    r.expect(200);
    assert_ne!(r.json()["secret"], generated.as_str());
    // an empty object asks for nothing in particular: generated
    let r = call(&app, Some(&t.admin), "POST", &path, Some(json!({}))).await;
    r.expect(200);
    // a given secret is taken
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        Some(json!({"secret": "chosen-secret-3"})),
    )
    .await;
    r.expect(200);
    assert_eq!(
        device_secret(&app, &t.admin, product).await,
        "chosen-secret-3"
    );
}

/// Words of the server's code that must never reach a client: the schema names of the
/// document (the Rust types behind them) and Rust's own vocabulary.
fn rust_words(doc: &Value) -> Vec<String> {
    let mut words: Vec<String> = doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for w in [
        "i64", "u64", "i32", "u32", "usize", "struct", "enum", "Option", "Vec<", "String",
        "sequence", " map",
    ] {
        words.push(w.to_owned());
    }
    words
}

// SPEC M2
async fn body_query_and_path_errors_name_the_field_without_type_names(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let doc = call(&app, None, "GET", "/v1/openapi.json", None)
        .await
        .json();
    let words = rust_words(&doc);
    let group = call(
        &app,
        Some(&t.admin),
        "POST",
        "/v1/groups",
        Some(json!({"name": "g"})),
    )
    .await;
    group.expect(201);
    let members = format!("/v1/groups/{}/devices", group.json()["id"]);
    let cases: Vec<(&str, &str, String, &str)> = vec![
        // wrong type
        (
            "POST",
            "/v1/products",
            r#"{"name": 5, "protocol": "alink"}"#.into(),
            "name",
        ),
        (
            "POST",
            "/v1/products",
            r#"{"name": "a", "protocol": "alink", "require_verification": "yes"}"#.into(),
            "require_verification",
        ),
        // bad enum value
        (
            "POST",
            "/v1/products",
            r#"{"name": "a", "protocol": "zigbee"}"#.into(),
            "protocol",
        ),
        (
            "POST",
            "/v1/keys",
            r#"{"name": "a", "role": "boss"}"#.into(),
            "role",
        ),
        // unknown field
        (
            "POST",
            "/v1/products",
            r#"{"name": "a", "protocol": "alink", "colour": "red"}"#.into(),
            "colour",
        ),
        // missing field
        (
            "POST",
            "/v1/products",
            r#"{"protocol": "alink"}"#.into(),
            "name",
        ),
        // array instead of object
        ("POST", "/v1/products", "[]".into(), "body"),
        (
            "POST",
            "/v1/products",
            r#"["a", "alink", null, false, ""]"#.into(),
            "body",
        ),
        // invalid JSON syntax
        ("POST", "/v1/products", r#"{"name": "a",,}"#.into(), "body"),
        ("POST", "/v1/products", "".into(), "body"),
        // an element of an array
        (
            "POST",
            members.as_str(),
            r#"{"device_ids": [1, "two"]}"#.into(),
            "device_ids[1]",
        ),
        (
            "POST",
            members.as_str(),
            r#"{"device_ids": 7}"#.into(),
            "device_ids",
        ),
        (
            "PATCH",
            "/v1/products/1",
            r#"{"name": ["x"]}"#.into(),
            "name",
        ),
    ];
    for (m, path, body, field) in cases {
        let r = call_raw(
            &app,
            Some(&t.admin),
            m,
            path,
            "application/json",
            body.clone(),
        )
        .await;
        assert_eq!(r.status, 400, "{m} {path} {body}: {}", r.text());
        let v = r.json();
        assert_eq!(v["code"], "invalid_input", "{body}");
        assert_eq!(v["field"], field, "{m} {path} {body}: {v}");
        let msg = v["message"].as_str().unwrap();
        for w in &words {
            assert!(!msg.contains(w.as_str()), "{body}: {msg:?} says {w:?}");
        }
    }
    for (uri, field) in [
        ("/v1/products?limit=abc", "limit"),
        ("/v1/products?limit=-1", "limit"),
        ("/v1/products?limt=5", "limt"),
        ("/v1/devices?online=maybe", "online"),
        ("/v1/products/abc", "id"),
        ("/v1/products/99999999999999999999", "id"),
        ("/v1/groups/1x/devices", "id"),
    ] {
        let r = call(&app, Some(&t.admin), "GET", uri, None).await;
        assert_eq!(r.status, 400, "{uri}: {}", r.text());
        let v = r.json();
        assert_eq!(v["field"], field, "{uri}: {v}");
        let msg = v["message"].as_str().unwrap();
        for w in &words {
            assert!(!msg.contains(w.as_str()), "{uri}: {msg:?} says {w:?}");
        }
    }
}

async fn a_wrong_method_answers_405_with_allow(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    for (m, path, allow) in [
        ("PUT", "/v1/products", "GET, POST"),
        ("DELETE", "/v1/keys", "GET, POST"),
        ("PUT", "/v1/products/1", "GET, PATCH, DELETE"),
        ("POST", "/health", "GET"),
        ("POST", "/v1/openapi.json", "GET"),
        ("GET", "/v1/packages/1/files/3", "PUT, DELETE"),
        ("POST", "/dl/sometoken", "GET, HEAD"),
    ] {
        for key in [Some(t.admin.as_str()), None] {
            let r = call(&app, key, m, path, None).await;
            assert_eq!(r.status, 405, "{m} {path}: {}", r.text());
            assert_eq!(r.json()["code"], "method_not_allowed");
            let got: BTreeSet<&str> = r
                .headers
                .get("allow")
                .unwrap()
                .to_str()
                .unwrap()
                .split(", ")
                .collect();
            assert_eq!(got, allow.split(", ").collect(), "{m} {path}");
        }
    }
    // no such path: 404
    let r = call(&app, Some(&t.admin), "GET", "/v1/nothing-here", None).await;
    r.expect(404);
    assert_eq!(r.json()["code"], "not_found");
}

async fn unusable_ranges_get_the_whole_file_and_unsatisfiable_ones_416(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let pkg = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{product}/packages"),
        Some(json!({"version": "1.0"})),
    )
    .await;
    pkg.expect(201);
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let f = call_raw(
        &app,
        Some(&t.admin),
        "PUT",
        &format!("/v1/packages/{}/files/fw.bin", pkg.json()["id"]),
        "application/octet-stream",
        data.clone(),
    )
    .await;
    f.expect(201);
    let path = f.json()["download_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://ota.test")
        .unwrap()
        .to_owned();
    let get = |range: &'static str| {
        send(
            &app,
            TestRequest::get()
                .uri(&path)
                .insert_header(("Range", range)),
        )
    };
    // RFC 9110 §14.2: an invalid range set or an unknown unit is ignored; several ranges
    // get the whole file too (no multipart/byteranges)
    for range in [
        "bytes=abc",
        "bytes=5-2",
        "bytes=",
        "items=0-9",
        "bytes=0-9,20-29",
        "bytes=0-1, 5-6, 9-",
    ] {
        let r = get(range).await;
        assert_eq!(r.status, 200, "{range}: {}", r.text());
        assert_eq!(r.body.as_ref(), &data[..], "{range}");
        assert!(r.headers.get("content-range").is_none(), "{range}");
    }
    // a valid range still gets its bytes
    let r = get("bytes=10-19").await;
    r.expect(206);
    assert_eq!(r.body.as_ref(), &data[10..20]);
    // a valid range past the end stays unsatisfiable
    for range in ["bytes=1000-", "bytes=5000-6000"] {
        let r = get(range).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.headers.get("content-range").unwrap(), "bytes */1000");
    }
}

// SPEC M1
async fn concurrent_revokes_always_leave_an_admin_key(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    for round in 0..30 {
        // a fresh tenant with exactly two admin keys; each revokes itself, so that both
        // calls pass authentication whichever finishes first
        let (tenant, first) = t
            .store
            .create_tenant(
                &ota_server::domain::DisplayName::parse("name", format!("race-{round}")).unwrap(),
                T0,
            )
            .await
            .unwrap();
        let second = call(
            &app,
            Some(&first.secret),
            "POST",
            "/v1/keys",
            Some(json!({"name": "second", "role": "admin"})),
        )
        .await;
        second.expect(201);
        let ids = [first.key.id.0, second.json()["id"].as_i64().unwrap()];
        let second_secret = second.json()["secret"].as_str().unwrap().to_owned();
        let (path_a, path_b) = (
            format!("/v1/keys/{}", ids[0]),
            format!("/v1/keys/{}", ids[1]),
        );
        let (a, b) = futures_util::join!(
            call(&app, Some(&first.secret), "DELETE", &path_a, None),
            call(&app, Some(&second_secret), "DELETE", &path_b, None),
        );
        let mut statuses = [a.status.as_u16(), b.status.as_u16()];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 409],
            "round {round}: {} / {}",
            a.text(),
            b.text()
        );
        let keys = t
            .store
            .list_api_keys(
                tenant.id,
                ota_server::store::PageRequest::parse(None, None).unwrap(),
            )
            .await
            .unwrap();
        let active = keys.items.iter().filter(|k| k.revoked_at.is_none()).count();
        assert_eq!(active, 1, "round {round}");
    }
}
