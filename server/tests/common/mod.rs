//! Test harness: the whole API in-process on a manual clock, against SQLite (a temp file)
//! or PostgreSQL (a fresh schema per test in the database named by `TEST_PG_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::field_reassign_with_default)]

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::test::TestRequest;
use actix_web::{web, App};
use ota_server::api::{self, AppState};
use ota_server::clock::ManualClock;
use ota_server::config::Config;
use ota_server::domain::DisplayName;
use ota_server::store::Store;
use serde_json::Value;
use std::sync::Arc;

pub mod fleet;
pub mod sdk;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Generates one `#[actix_web::test]` per backend for each listed `async fn name(db: Db)`.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[actix_web::test] async fn $name() { super::$name($crate::common::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[actix_web::test] async fn $name() { super::$name($crate::common::Db::Postgres).await })*
        }
    };
}

pub const T0: i64 = 1_795_000_000_000; // 2026-11-18, a fixed start for the manual clock

pub struct TestCtx {
    pub state: web::Data<AppState>,
    pub clock: ManualClock,
    pub store: Store,
    /// Admin key of the first tenant.
    pub admin: String,
    pub dir: tempfile::TempDir,
    pub db: Db,
}

pub fn pg_base_url() -> String {
    std::env::var("TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn open_store(db: Db, dir: &std::path::Path) -> Store {
    match db {
        Db::Sqlite => {
            let url = format!("sqlite://{}?mode=rwc", dir.join("ota.db").display());
            Store::connect(&url, 4).await.unwrap()
        }
        Db::Postgres => {
            use sea_orm::ConnectionTrait;
            let url = pg_base_url();
            let schema = format!("t_{}_{}", std::process::id(), rand_suffix());
            let admin = sea_orm::Database::connect(&url)
                .await
                .expect("PostgreSQL must run at TEST_PG_URL for the postgres tests");
            admin
                .execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
                .await
                .unwrap();
            admin.close().await.unwrap();
            Store::connect_with_schema(&url, 4, Some(&schema))
                .await
                .unwrap()
        }
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}_{}", N.fetch_add(1, Ordering::SeqCst), nanos)
}

impl TestCtx {
    pub async fn new(db: Db) -> Self {
        Self::with_config(db, |_| {}).await
    }

    pub async fn with_config(db: Db, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::build(db, tweak, "http://ota.test".into()).await
    }

    /// As [`TestCtx::with_config`], with the API also served on a real port (in a thread of
    /// its own), so devices can download from the URLs it signs. Returns the base URL too.
    pub async fn with_http(db: Db, tweak: impl FnOnce(&mut Config)) -> (Self, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let t = Self::build(db, tweak, base.clone()).await;
        t.serve_http(listener);
        (t, base)
    }

    /// Serves the API on `listener` in a thread of its own, until the process ends.
    fn serve_http(&self, listener: std::net::TcpListener) {
        let state = self.state.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                actix_web::HttpServer::new(move || {
                    App::new().configure(api::configure(state.clone()))
                })
                .workers(2)
                .listen(listener)
                .unwrap()
                .run()
                .await
            })
        });
    }

    async fn build(db: Db, tweak: impl FnOnce(&mut Config), public_url: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.data_dir = dir.path().to_owned();
        config.firmware.url_secret = "test-url-secret".into();
        tweak(&mut config);
        let store = open_store(db, dir.path()).await;
        let clock = ManualClock::new(T0);
        let state = ota_server::app::build_state(
            config,
            store.clone(),
            Arc::new(clock.clone()),
            public_url,
        )
        .await
        .unwrap();
        let (_, key) = store
            .create_tenant(&DisplayName::parse("name", "acme").unwrap(), T0)
            .await
            .unwrap();
        Self {
            state: web::Data::new(state),
            clock,
            store,
            admin: key.secret,
            dir,
            db,
        }
    }

    /// The API as a service to call.
    pub async fn service(
        &self,
    ) -> impl Service<
        actix_http::Request,
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
    > {
        actix_web::test::init_service(App::new().configure(api::configure(self.state.clone())))
            .await
    }

    /// A second tenant with its admin key.
    pub async fn other_tenant(&self, name: &str) -> String {
        let (_, key) = self
            .store
            .create_tenant(&DisplayName::parse("name", name).unwrap(), T0)
            .await
            .unwrap();
        key.secret
    }
}

/// The reply of a call: status, headers and body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: actix_web::http::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        self
    }
}

/// Calls the API with a JSON body (or none) and a bearer key (or none).
pub async fn call<S, B>(
    app: &S,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut req = TestRequest::default()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path);
    if let Some(k) = key {
        req = req.insert_header(("Authorization", format!("Bearer {k}")));
    }
    if let Some(b) = body {
        req = req.set_json(b);
    }
    send(app, req).await
}

/// Calls the API with a raw body of the given content type.
pub async fn call_raw<S, B>(
    app: &S,
    key: Option<&str>,
    method: &str,
    path: &str,
    content_type: &str,
    body: impl Into<bytes::Bytes>,
) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut req = TestRequest::default()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .insert_header(("Content-Type", content_type.to_owned()))
        .set_payload(body.into());
    if let Some(k) = key {
        req = req.insert_header(("Authorization", format!("Bearer {k}")));
    }
    send(app, req).await
}

/// Sends a prepared request (for extra headers such as `Range`).
pub async fn send<S, B>(app: &S, req: TestRequest) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let resp = actix_web::test::call_service(app, req.to_request()).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = actix_web::test::read_body(resp).await;
    Reply {
        status,
        headers,
        body,
    }
}

/// Creates a product and returns its id.
pub async fn create_product<S, B>(app: &S, key: &str, name: &str, protocol: &str) -> i64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(
        app,
        Some(key),
        "POST",
        "/v1/products",
        Some(serde_json::json!({ "name": name, "protocol": protocol })),
    )
    .await;
    r.expect(201);
    r.json()["id"].as_i64().unwrap()
}

/// Imports devices by name through the CSV import and returns nothing; panics on failure.
pub async fn import_names<S, B>(app: &S, key: &str, product: i64, names: &[&str])
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut csv = String::from("name\n");
    for n in names {
        csv.push_str(n);
        csv.push('\n');
    }
    call_raw(
        app,
        Some(key),
        "POST",
        &format!("/v1/products/{product}/devices/import"),
        "text/csv",
        csv,
    )
    .await
    .expect(201);
}

/// A test context with the device gateway (embedded broker on a free port) and the rollout
/// engine running on the manual clock; `/v1/clock/advance` ticks it.
pub struct EngineCtx {
    pub t: TestCtx,
    pub engine: Arc<ota_server::scheduler::Scheduler>,
    pub gateway: ota_server::app::Gateway,
}

impl EngineCtx {
    pub async fn new(db: Db) -> Self {
        Self::with_config(db, |_| {}).await
    }

    pub async fn with_config(db: Db, tweak: impl FnOnce(&mut Config)) -> Self {
        let t = TestCtx::with_config(db, |c| {
            c.mqtt.port = 0;
            tweak(c);
        })
        .await;
        Self::start(t).await
    }

    /// As [`EngineCtx::with_config`], with the API also served on a real port (in a thread of
    /// its own, started once the engine and the manual clock are in place), so devices
    /// download from the URLs the engine signs. Returns the base URL too.
    pub async fn with_http(db: Db, tweak: impl FnOnce(&mut Config)) -> (Self, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let t = TestCtx::build(
            db,
            |c| {
                c.mqtt.port = 0;
                tweak(c);
            },
            base.clone(),
        )
        .await;
        let e = Self::start(t).await;
        e.t.serve_http(listener);
        (e, base)
    }

    async fn start(t: TestCtx) -> Self {
        let (up, events) = tokio::sync::mpsc::channel(16_384);
        let gateway = ota_server::app::start_gateway(&t.state, None, Some(up))
            .await
            .unwrap();
        let gw = t.state.gateway.get().unwrap().clone();
        let engine = ota_server::app::start_scheduler(&t.state, gw, events, false);
        let _ = t.state.manual_clock.set(t.clock.clone());
        Self { t, engine, gateway }
    }
}
