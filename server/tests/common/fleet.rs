//! Fleets and rollouts for engine tests: a product with devices and a package, rollouts
//! made and read through the API, simulated time, and device reports as the router hands
//! them up.

use super::*;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use ota_server::dispatch::gateway::DeviceIdentity;
use ota_server::dispatch::router::{DeviceEvent, DeviceEventKind};
use ota_server::dispatch::Uplink;
use ota_server::domain::{DeviceId, ModuleName, Protocol, TenantId, Version};
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

pub struct Fleet {
    pub product_key: String,
    pub package: i64,
    /// Device ids by name index (`d00000`, …).
    pub devices: Vec<i64>,
}

pub async fn post<S, B>(app: &S, key: &str, path: &str, body: Value) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    call(app, Some(key), "POST", path, Some(body)).await
}

/// A product with `n` devices (all online when `online`) and a package 2.0.0 with a file,
/// marked no_need (or left unverified when `verified` is false).
pub async fn fleet<S, B>(e: &EngineCtx, app: &S, n: usize, online: bool, verified: bool) -> Fleet
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    fleet_named(e, app, "meter", n, online, verified).await
}

/// As [`fleet`], for a product of the given name (one test may hold several fleets).
pub async fn fleet_named<S, B>(
    e: &EngineCtx,
    app: &S,
    name: &str,
    n: usize,
    online: bool,
    verified: bool,
) -> Fleet
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    fleet_of_key(e, app, e.t.admin.as_str(), name, n, online, verified).await
}

/// As [`fleet_named`], made with `key` (in that key's tenant).
pub async fn fleet_of_key<S, B>(
    e: &EngineCtx,
    app: &S,
    key: &str,
    name: &str,
    n: usize,
    online: bool,
    verified: bool,
) -> Fleet
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = post(
        app,
        key,
        "/v1/products",
        json!({"name": name, "protocol": "alink"}),
    )
    .await;
    r.expect(201);
    let product = r.json()["id"].as_i64().unwrap();
    let product_key = r.json()["product_key"].as_str().unwrap().to_owned();
    let names: Vec<String> = (0..n).map(|i| format!("d{i:05}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    import_names(app, key, product, &refs).await;
    let r = post(
        app,
        key,
        &format!("/v1/products/{product}/packages"),
        json!({"version": "2.0.0", "sign_method": "md5"}),
    )
    .await;
    r.expect(201);
    let package = r.json()["id"].as_i64().unwrap();
    call_raw(
        app,
        Some(key),
        "PUT",
        &format!("/v1/packages/{package}/files/fw.bin"),
        "application/octet-stream",
        vec![7u8; 1024],
    )
    .await
    .expect(201);
    if verified {
        call(
            app,
            Some(key),
            "PATCH",
            &format!("/v1/packages/{package}"),
            Some(json!({"status": "no_need"})),
        )
        .await
        .expect(200);
    }
    let db = e.t.store.raw_connection();
    if online {
        db.execute_unprepared(&format!(
            "UPDATE device SET online = true WHERE product_id = {product}"
        ))
        .await
        .unwrap();
    }
    let rows = db
        .query_all(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT id FROM device WHERE product_id = {product} ORDER BY name"),
        ))
        .await
        .unwrap();
    let devices = rows
        .iter()
        .map(|r| r.try_get::<i64>("", "id").unwrap())
        .collect();
    Fleet {
        product_key,
        package,
        devices,
    }
}

pub async fn create<S, B>(app: &S, key: &str, package: i64, body: Value) -> i64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = post(app, key, &format!("/v1/packages/{package}/rollouts"), body).await;
    r.expect(201);
    r.json()["id"].as_i64().unwrap()
}

/// Asserts that creating a rollout of `package` with `body` answers 400 naming `field`.
pub async fn refused<S, B>(app: &S, key: &str, package: i64, body: Value, field: &str)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = post(
        app,
        key,
        &format!("/v1/packages/{package}/rollouts"),
        body.clone(),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], field, "{body}");
}

pub async fn advance<S, B>(app: &S, key: &str, seconds: u64)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    post(app, key, "/v1/clock/advance", json!({ "seconds": seconds }))
        .await
        .expect(200);
}

/// The rollout with its counts.
pub async fn rollout<S, B>(app: &S, key: &str, id: i64) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(app, Some(key), "GET", &format!("/v1/rollouts/{id}"), None).await;
    r.expect(200);
    r.json()
}

pub async fn count<S, B>(app: &S, key: &str, id: i64, state: &str) -> u64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    rollout(app, key, id).await["counts"][state]
        .as_u64()
        .unwrap_or(0)
}

/// Tasks pushed at least once: pushed now, or moved on from there.
pub async fn pushed_total<S, B>(app: &S, key: &str, id: i64) -> u64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let c = &rollout(app, key, id).await["counts"];
    ["pushed", "in_progress", "succeeded", "failed", "rejected"]
        .iter()
        .map(|s| c[s].as_u64().unwrap_or(0))
        .sum()
}

/// A device report as the router hands it up.
pub fn report(f: &Fleet, i: usize, kind: DeviceEventKind) -> DeviceEvent {
    DeviceEvent {
        tenant: TenantId(0),
        device: DeviceId(f.devices[i]),
        identity: DeviceIdentity {
            product_key: f.product_key.clone(),
            device: format!("d{i:05}"),
        },
        protocol: Protocol::Alink,
        at: 0,
        kind,
        request_id: None,
    }
}

pub fn progress(f: &Fleet, i: usize, step: i32) -> DeviceEvent {
    report(
        f,
        i,
        DeviceEventKind::Message(Uplink::Progress {
            module: None,
            step,
            desc: format!("step {step}"),
        }),
    )
}

pub fn inform(f: &Fleet, i: usize, version: &str) -> DeviceEvent {
    report(
        f,
        i,
        DeviceEventKind::Message(Uplink::Inform {
            module: ModuleName::default_module(),
            version: Version::parse("version", version).unwrap(),
        }),
    )
}

/// A task's columns, read directly.
pub async fn task_row(
    e: &EngineCtx,
    rollout: i64,
    device: i64,
) -> (String, i32, Option<i64>, Option<String>) {
    let db = e.t.store.raw_connection();
    let r = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT state, retries, due_at, failure_reason FROM task WHERE rollout_id = {rollout} AND device_id = {device}"
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    (
        r.try_get("", "state").unwrap(),
        r.try_get("", "retries").unwrap(),
        r.try_get("", "due_at").unwrap(),
        r.try_get("", "failure_reason").unwrap(),
    )
}

/// Creates a package of `product` from `body` with the given files (name, size), marked
/// no_need; returns its id.
pub async fn package_with<S, B>(
    app: &S,
    key: &str,
    product: i64,
    body: Value,
    files: &[(&str, usize)],
) -> i64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = post(app, key, &format!("/v1/products/{product}/packages"), body).await;
    r.expect(201);
    let id = r.json()["id"].as_i64().unwrap();
    for (name, size) in files {
        call_raw(
            app,
            Some(key),
            "PUT",
            &format!("/v1/packages/{id}/files/{name}"),
            "application/octet-stream",
            vec![3u8; *size],
        )
        .await
        .expect(201);
    }
    call(
        app,
        Some(key),
        "PATCH",
        &format!("/v1/packages/{id}"),
        Some(json!({"status": "no_need"})),
    )
    .await
    .expect(200);
    id
}

/// The product a package belongs to.
pub async fn product_of<S, B>(app: &S, key: &str, package: i64) -> i64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(
        app,
        Some(key),
        "GET",
        &format!("/v1/packages/{package}"),
        None,
    )
    .await;
    r.expect(200);
    r.json()["product_id"].as_i64().unwrap()
}

/// `PATCH /v1/rollouts/{id}` with `body`.
pub async fn patch_rollout<S, B>(app: &S, key: &str, id: i64, body: Value) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    call(
        app,
        Some(key),
        "PATCH",
        &format!("/v1/rollouts/{id}"),
        Some(body),
    )
    .await
}

/// A rollout's audit events (rollout-level), oldest first.
pub async fn rollout_events<S, B>(app: &S, key: &str, id: i64) -> Vec<Value>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(
        app,
        Some(key),
        "GET",
        &format!("/v1/rollouts/{id}/events?limit=1000"),
        None,
    )
    .await;
    r.expect(200);
    r.json()["items"].as_array().unwrap().clone()
}
