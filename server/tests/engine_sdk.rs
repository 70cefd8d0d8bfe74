//! The rollout engine end to end with the vendors' real device SDKs (Link Kit and EnOS from
//! PyPI, run unchanged as Python processes, `tests/sdk/*.py`): a rollout created through the
//! API releases a task, the engine pushes it through the embedded broker (push mode) or
//! answers the device's own request (pull mode: Link Kit `firmware/get`, EnOS
//! `ota.request`), the device downloads from the URL the engine signed, checks the digest,
//! reports progress and then its new version, and the task succeeds; the rollout completes
//! on the next tick. Nothing stands in for the engine: no offers are set by hand. Time moves
//! only through `POST /v1/clock/advance`; waits are on the state itself, with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use common::sdk::{Device, WAIT};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

db_tests!(
    alink_device_updated_by_a_push_rollout,
    alink_device_updated_by_a_pull_rollout,
    enos_device_updated_by_a_push_rollout,
    enos_device_updated_by_a_pull_rollout,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sdk {
    LinkKit,
    Enos,
}

impl Sdk {
    fn protocol(self) -> &'static str {
        match self {
            Sdk::LinkKit => "alink",
            Sdk::Enos => "enos",
        }
    }
}

/// A tenant's product of one protocol with a package 2.0.0 (its file served for download),
/// on an engine whose API also listens on a real port.
struct Setup {
    e: EngineCtx,
    base: String,
    mqtt_port: u16,
    sdk: Sdk,
    product: i64,
    product_key: String,
    package: i64,
    /// The package file's digest in its sign method.
    sign: String,
    firmware: Vec<u8>,
}

async fn setup<S, B>(e: EngineCtx, base: String, app: &S, sdk: Sdk, sign_method: &str) -> Setup
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let key = e.t.admin.as_str();
    let mqtt_port = e.gateway.embedded.as_ref().unwrap().tcp_addr.port();
    let r = call(
        app,
        Some(key),
        "POST",
        "/v1/products",
        Some(json!({"name": "meter", "protocol": sdk.protocol()})),
    )
    .await;
    r.expect(201);
    let product = r.json()["id"].as_i64().unwrap();
    let product_key = r.json()["product_key"].as_str().unwrap().to_owned();
    let r = call(
        app,
        Some(key),
        "POST",
        &format!("/v1/products/{product}/packages"),
        Some(json!({"version": "2.0.0", "sign_method": sign_method})),
    )
    .await;
    r.expect(201);
    let package = r.json()["id"].as_i64().unwrap();
    let firmware: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    call_raw(
        app,
        Some(key),
        "PUT",
        &format!("/v1/packages/{package}/files/fw-2.0.0.bin"),
        "application/octet-stream",
        firmware.clone(),
    )
    .await
    .expect(201);
    let r = call(
        app,
        Some(key),
        "PATCH",
        &format!("/v1/packages/{package}"),
        Some(json!({"status": "no_need"})),
    )
    .await;
    r.expect(200);
    let sign = r.json()["files"][0][sign_method]
        .as_str()
        .unwrap()
        .to_owned();
    Setup {
        e,
        base,
        mqtt_port,
        sdk,
        product,
        product_key,
        package,
        sign,
        firmware,
    }
}

impl Setup {
    fn key(&self) -> &str {
        &self.e.t.admin
    }

    /// Registers a device; returns its id and secret.
    async fn device<S, B>(&self, app: &S, name: &str) -> (i64, String)
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        let r = call(
            app,
            Some(self.key()),
            "POST",
            &format!("/v1/products/{}/devices", self.product),
            Some(json!({ "name": name })),
        )
        .await;
        r.expect(201);
        let d = r.json();
        (
            d["id"].as_i64().unwrap(),
            d["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Runs the SDK device `name` in `mode` (the script's own modes).
    fn spawn(&self, name: &str, secret: &str, mode: &str) -> Device {
        let (script, key_flag) = match self.sdk {
            Sdk::LinkKit => ("alink_device.py", "--dn"),
            Sdk::Enos => ("enos_device.py", "--dk"),
        };
        let args: Vec<String> = [
            "--port",
            &self.mqtt_port.to_string(),
            "--pk",
            &self.product_key,
            key_flag,
            name,
            "--secret",
            secret,
            "--mode",
            mode,
            "--timeout",
            &WAIT.as_secs().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Device::spawn(script, &args)
    }

    async fn create_rollout<S, B>(&self, app: &S, body: Value) -> i64
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        let r = call(
            app,
            Some(self.key()),
            "POST",
            &format!("/v1/packages/{}/rollouts", self.package),
            Some(body),
        )
        .await;
        r.expect(201);
        r.json()["id"].as_i64().unwrap()
    }

    async fn advance<S, B>(&self, app: &S, seconds: u64)
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        call(
            app,
            Some(self.key()),
            "POST",
            "/v1/clock/advance",
            Some(json!({ "seconds": seconds })),
        )
        .await
        .expect(200);
    }

    async fn get<S, B>(&self, app: &S, path: &str) -> Value
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        let r = call(app, Some(self.key()), "GET", path, None).await;
        r.expect(200);
        r.json()
    }

    async fn count<S, B>(&self, app: &S, rollout: i64, state: &str) -> u64
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        self.get(app, &format!("/v1/rollouts/{rollout}")).await["counts"][state]
            .as_u64()
            .unwrap_or(0)
    }

    /// The rollout's task of `device`, as the task list shows it.
    async fn task<S, B>(&self, app: &S, rollout: i64, device: i64) -> Value
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        let page = self
            .get(app, &format!("/v1/rollouts/{rollout}/tasks?limit=100"))
            .await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["device_id"] == device)
            .cloned()
            .unwrap_or_else(|| panic!("no task of device {device}: {page}"))
    }

    /// The states a task went through, from its audit trail, oldest first.
    async fn trail<S, B>(&self, app: &S, rollout: i64, task: i64) -> Vec<String>
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        let page = self
            .get(
                app,
                &format!("/v1/rollouts/{rollout}/events?task_id={task}&limit=100"),
            )
            .await;
        let mut events: Vec<&Value> = page["items"].as_array().unwrap().iter().collect();
        events.sort_by_key(|e| e["id"].as_i64());
        events
            .iter()
            .filter_map(|e| e["to_state"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until the rollout counts `n` tasks in `state`, polling; panics after [`WAIT`].
    async fn wait_count<S, B>(&self, app: &S, rollout: i64, state: &str, n: u64)
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = self.get(app, &format!("/v1/rollouts/{rollout}")).await;
            if r["counts"][state].as_u64().unwrap_or(0) == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} tasks {state}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the registry shows the device online (the presence writer's batch).
    async fn wait_online<S, B>(&self, app: &S, device: i64)
    where
        S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let d = self.get(app, &format!("/v1/devices/{device}")).await;
            if d["online"] == true {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for the device to be online: {d}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks the firmware a device received: the package's version, digest and size, at a
    /// URL of this server.
    fn check_firmware(&self, fw: &Value, sign_method: &str) {
        assert_eq!(fw["version"], "2.0.0", "{fw}");
        assert_eq!(
            fw["sign"].as_str().unwrap().to_lowercase(),
            self.sign,
            "{fw}"
        );
        assert_eq!(
            fw["sign_method"].as_str().unwrap().to_lowercase(),
            sign_method,
            "{fw}"
        );
        assert_eq!(fw["size"], self.firmware.len(), "{fw}");
        assert!(
            fw["url"].as_str().unwrap().starts_with(&self.base),
            "served here: {fw}"
        );
    }

    /// Follows a device from the firmware it got to its end: the download passed the digest
    /// check and the script reported progress and the new version.
    async fn downloads_and_reports(&self, dev: &mut Device, sign_method: &str) -> Value {
        let fw = dev.expect("firmware").await;
        self.check_firmware(&fw, sign_method);
        let dl = dev.expect("downloaded").await;
        assert_eq!(dl["ok"], true, "the digest check passed: {dl}");
        dev.expect("done").await;
        fw
    }
}

/// The task succeeded after progress, with its whole trail: released (`pushed`, or `pending`
/// first when the device was offline), `in_progress` on the first progress report, then
/// `succeeded` on the version report.
async fn assert_succeeded<S, B>(s: &Setup, app: &S, rollout: i64, device: i64, was_pending: bool)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let t = s.task(app, rollout, device).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["progress"], 100, "{t}");
    assert!(
        t["started_at"].is_string(),
        "progress started the task: {t}"
    );
    assert!(t["finished_at"].is_string(), "{t}");
    assert_eq!(t["last_message"], "upgrade finished", "{t}");
    let trail = s.trail(app, rollout, t["id"].as_i64().unwrap()).await;
    let mut want = vec!["pushed", "in_progress", "succeeded"];
    if was_pending {
        want.insert(0, "pending");
    }
    let tail: Vec<&str> = trail
        .iter()
        .map(String::as_str)
        .filter(|s| *s != "waiting")
        .collect();
    assert_eq!(tail, want, "trail: {trail:?}");
}

/// A rollout with every task finished completes on the next tick.
async fn completes_on_the_next_tick<S, B>(s: &Setup, app: &S, rollout: i64)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    assert_eq!(
        s.get(app, &format!("/v1/rollouts/{rollout}")).await["state"],
        "running"
    );
    s.advance(app, 1).await;
    let r = s.get(app, &format!("/v1/rollouts/{rollout}")).await;
    assert_eq!(r["state"], "completed", "{r}");
}

/// Push mode, both ways a push reaches a device: one device is online when the rollout
/// releases its task (pushed at once), the other connects only after (its task is `pending`
/// and pushed when it connects). Each downloads, verifies, reports and succeeds.
async fn push_rollout(db: Db, sdk: Sdk, sign_method: &str) {
    let (e, base) = EngineCtx::with_http(db, |_| {}).await;
    let app = e.t.service().await;
    let s = setup(e, base, &app, sdk, sign_method).await;
    let (early, early_secret) = s.device(&app, "early").await;
    let (late, late_secret) = s.device(&app, "late").await;

    let mut dev = s.spawn("early", &early_secret, "push");
    dev.expect("connected").await;
    s.wait_online(&app, early).await;
    let rollout = s
        .create_rollout(
            &app,
            json!({"scope": {"kind": "all"}, "tags": {"campaign": "spring"}}),
        )
        .await;
    assert_eq!(s.count(&app, rollout, "waiting").await, 2);
    s.advance(&app, 1).await;
    assert_eq!(
        s.task(&app, rollout, late).await["state"],
        "pending",
        "offline: released, not pushed"
    );
    let fw = s.downloads_and_reports(&mut dev, sign_method).await;
    if sdk == Sdk::LinkKit {
        assert_eq!(fw["notice"], 1, "a push, not a reply to a pull: {fw}");
        assert!(
            fw["extra"].as_str().unwrap_or("").contains("spring"),
            "the rollout's tags: {fw}"
        );
    }
    assert_eq!(dev.finish().await, 0);
    s.wait_count(&app, rollout, "succeeded", 1).await;
    assert_succeeded(&s, &app, rollout, early, false).await;

    // the late device: its push waits for its connection
    assert_eq!(s.task(&app, rollout, late).await["state"], "pending");
    let mut dev = s.spawn("late", &late_secret, "push");
    dev.expect("connected").await;
    s.downloads_and_reports(&mut dev, sign_method).await;
    assert_eq!(dev.finish().await, 0);
    s.wait_count(&app, rollout, "succeeded", 2).await;
    assert_succeeded(&s, &app, rollout, late, true).await;
    completes_on_the_next_tick(&s, &app, rollout).await;
}

/// Pull mode: the engine pushes nothing unasked; the device asks once connected and the
/// engine answers with the update, which the device takes to success.
async fn pull_rollout(db: Db, sdk: Sdk, sign_method: &str) {
    let (e, base) = EngineCtx::with_http(db, |_| {}).await;
    let app = e.t.service().await;
    let s = setup(e, base, &app, sdk, sign_method).await;
    let (id, secret) = s.device(&app, "puller").await;
    let rollout = s
        .create_rollout(&app, json!({"scope": {"kind": "all"}, "push_mode": "pull"}))
        .await;
    s.advance(&app, 60).await;
    assert_eq!(
        s.count(&app, rollout, "waiting").await,
        1,
        "pull: nothing released unasked"
    );
    let mode = match sdk {
        Sdk::LinkKit => "pull",
        Sdk::Enos => "request",
    };
    let mut dev = s.spawn("puller", &secret, mode);
    dev.expect("connected").await;
    let fw = s.downloads_and_reports(&mut dev, sign_method).await;
    if sdk == Sdk::LinkKit {
        assert_eq!(fw["notice"], 2, "the answer to firmware/get: {fw}");
    }
    assert_eq!(dev.finish().await, 0);
    s.wait_count(&app, rollout, "succeeded", 1).await;
    assert_succeeded(&s, &app, rollout, id, false).await;
    completes_on_the_next_tick(&s, &app, rollout).await;
}

// A Link Kit device takes the engine's push (MD5, checked by the SDK's own download) whether
// it was online at the release or connected after it.
async fn alink_device_updated_by_a_push_rollout(db: Db) {
    push_rollout(db, Sdk::LinkKit, "md5").await;
}

// A Link Kit device asks with firmware/get and the engine's get_reply (SHA-256) brings the
// update.
async fn alink_device_updated_by_a_pull_rollout(db: Db) {
    pull_rollout(db, Sdk::LinkKit, "sha256").await;
}

// An EnOS device takes the engine's upgrade command (SHA-256) whether it was online at the
// release or connected after it.
async fn enos_device_updated_by_a_push_rollout(db: Db) {
    push_rollout(db, Sdk::Enos, "sha256").await;
}

// An EnOS device asks with ota.request and the engine answers with the upgrade command (MD5).
async fn enos_device_updated_by_a_pull_rollout(db: Db) {
    pull_rollout(db, Sdk::Enos, "md5").await;
}
