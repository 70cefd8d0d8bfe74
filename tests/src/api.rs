//! What the end-to-end tests share: an API client for one tenant's key, products with
//! devices and a package made over HTTP, simulated devices on the server's broker, and the
//! real binary on a manual clock.

use crate::sim::{start_device, Behaviour, SimBroker, SimDevice, SimStats};
use crate::{Server, ServerOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
}

impl Api {
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn advance(&self, seconds: u64) {
        self.post("/v1/clock/advance", json!({ "seconds": seconds }))
            .await;
    }
    pub async fn counts(&self, rollout: i64) -> Value {
        self.get(&format!("/v1/rollouts/{rollout}")).await["counts"].clone()
    }
    /// Waits (real time, with a deadline) until `done` holds for the rollout's counts.
    pub async fn wait_counts(
        &self,
        rollout: i64,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = self.counts(rollout).await;
            if done(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "waited in vain for {what}: {c}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn n(c: &Value, state: &str) -> u64 {
    c[state].as_u64().unwrap_or(0)
}

/// A product `pk` with devices `names` (secret = "s-" + name) and a package `version` with a
/// file, marked no_need; returns (product id, package id).
pub async fn product(api: &Api, pk: &str, names: &[String], version: &str) -> (i64, i64) {
    let p = api
        .post(
            "/v1/products",
            json!({"name": pk, "protocol": "alink", "product_key": pk}),
        )
        .await;
    let product = p["id"].as_i64().unwrap();
    let mut csv = String::from("name,secret\n");
    for d in names {
        csv.push_str(&format!("{d},{}\n", secret(d)));
    }
    let r = api
        .http
        .post(format!("{}/v1/products/{product}/devices/import", api.base))
        .bearer_auth(&api.key)
        .header("Content-Type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let pkg = api
        .post(
            &format!("/v1/products/{product}/packages"),
            json!({"version": version, "sign_method": "md5"}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let r = api
        .http
        .put(format!("{}/v1/packages/{pkg}/files/fw.bin", api.base))
        .bearer_auth(&api.key)
        .body(vec![1u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    api.call(
        reqwest::Method::PATCH,
        &format!("/v1/packages/{pkg}"),
        Some(json!({"status": "no_need"})),
    )
    .await;
    (product, pkg)
}

pub async fn device(
    mqtt: &SimBroker,
    pk: &str,
    name: &str,
    version: &str,
    b: Behaviour,
    stats: &Arc<SimStats>,
) -> SimDevice {
    start_device(mqtt, (pk, name, &secret(name)), version, b, stats.clone())
        .await
        .unwrap()
}

/// The real binary, a fresh tenant on it, and a broker address for simulated devices.
pub async fn manual_server() -> (Server, Api, SimBroker) {
    let srv = Server::start(ServerOptions {
        serve_args: vec!["--clock".into(), "manual".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let key = srv.create_tenant("acme").await.unwrap();
    let api = Api {
        http: reqwest::Client::new(),
        base: srv.base.clone(),
        key,
    };
    let addr = srv.mqtt.clone().unwrap();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mqtt = SimBroker {
        host: host.to_owned(),
        port: port.parse::<u16>().unwrap(),
        subscribe: false,
    };
    (srv, api, mqtt)
}

pub fn secret(name: &str) -> String {
    format!("secret-of-{name}-0123456789")
}

impl Api {
    /// The same server as another tenant's key.
    pub fn with_key(&self, key: String) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            key,
        }
    }

    /// Waits (real time, with a deadline) until `n` devices of the tenant are online.
    pub async fn wait_online(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let body = self.get("/v1/devices?online=true&limit=1000").await;
            if body["items"].as_array().map(Vec::len) == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "devices did not come online: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets the attributes of each named device to what `attrs` gives for its index.
    pub async fn set_attributes(&self, names: &[String], attrs: impl Fn(usize) -> Value) {
        let devices = self.get("/v1/devices?limit=1000").await;
        for d in devices["items"].as_array().unwrap() {
            let name = d["name"].as_str().unwrap();
            if let Some(i) = names.iter().position(|n| n == name) {
                self.call(
                    reqwest::Method::PATCH,
                    &format!("/v1/devices/{}/attributes", d["id"]),
                    Some(attrs(i)),
                )
                .await;
            }
        }
    }

    /// Uploads a built policy component (`target/policies/<component>.wasm`) as `name`;
    /// returns the stored version.
    pub async fn upload_policy(&self, name: &str, component: &str) -> Value {
        let r = self
            .http
            .post(format!("{}/v1/policies?name={name}", self.base))
            .bearer_auth(&self.key)
            .header("Content-Type", "application/wasm")
            .body(policy_component(component))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 201, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// A policy component built by `scripts/build-policies` (`POLICY_WASM_DIR`, else
/// `target/policies`).
pub fn policy_component(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("POLICY_WASM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/policies")
        });
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. Build the policy components first: scripts/build-policies",
            path.display()
        )
    })
}
