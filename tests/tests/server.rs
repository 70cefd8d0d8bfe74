//! The real binary end to end: embedded defaults (SQLite), PostgreSQL by environment,
//! HTTPS, the config CLI and the OpenAPI document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::*;
use serde_json::{json, Value};

async fn walk_through(srv: &Server, http: &reqwest::Client) {
    let key = srv.create_tenant("acme").await.unwrap();
    let base = &srv.base;
    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let r = http
        .get(format!("{base}/v1/products"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let p: Value = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(&key)
        .json(&json!({"name": "Smart meter", "protocol": "alink", "product_key": "a1Meter"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = p["id"].as_i64().unwrap();
    let mut csv = String::from("name\n");
    for i in 0..10_000 {
        csv.push_str(&format!("meter-{i:05}\n"));
    }
    let r = http
        .post(format!("{base}/v1/products/{pid}/devices/import"))
        .bearer_auth(&key)
        .header("Content-Type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["imported"], 10_000);
    let creds = http
        .get(format!("{base}/v1/products/{pid}/devices/credentials.csv"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(creds.lines().count(), 10_001);
}

// SPEC M3, M5
#[tokio::test]
async fn serves_on_embedded_defaults_with_sqlite() {
    let srv = Server::start(ServerOptions::default()).await.unwrap();
    walk_through(&srv, &client(None).unwrap()).await;
    assert!(
        srv.data_dir.join("ota.db").exists(),
        "SQLite lives in the data dir"
    );
    let log = srv.log.lock().unwrap().join("\n");
    assert!(
        log.contains("request") && log.contains("route=/v1/products/{id}/devices/import"),
        "requests are logged through tracing, by route: {log}"
    );
    // Prometheus metrics at /metrics: the HTTP requests just made, by route pattern and
    // status, and the device side's families, present from the start.
    let r = client(None)
        .unwrap()
        .get(format!("{}/metrics", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    for line in [
        "ota_http_requests_total{method=\"POST\",route=\"/v1/products/{id}/devices/import\",status=\"201\"} 1",
        "ota_http_requests_total{method=\"GET\",route=\"/v1/products\",status=\"401\"} 1",
        "ota_devices_online 0",
        "ota_device_logins_refused_total{reason=\"wrong_secret\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(
        text.contains("ota_http_request_duration_seconds_bucket{"),
        "{text}"
    );
}

// SPEC M3, V1: on its embedded defaults the binary runs an MQTT broker too, and a device
// built with the Link Kit SDK connects to it with its device secret.
#[tokio::test]
async fn embedded_broker_takes_sdk_devices() {
    let srv = Server::start(ServerOptions::default()).await.unwrap();
    let mqtt = srv
        .mqtt
        .clone()
        .expect("the embedded broker's address is logged");
    let port = mqtt.rsplit(':').next().unwrap().to_owned();
    let key = srv.create_tenant("acme").await.unwrap();
    let http = client(None).unwrap();
    let base = &srv.base;
    let p: Value = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(&key)
        .json(&json!({"name": "m", "protocol": "alink", "product_key": "a1E2E"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d: Value = http
        .post(format!("{base}/v1/products/{}/devices", p["id"]))
        .bearer_auth(&key)
        .json(&json!({"name": "lk-e2e"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = std::env::var("SDK_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv/bin/python"));
    let out = tokio::process::Command::new(py)
        .arg(root.join("tests/sdk/alink_device.py"))
        .args([
            "--port",
            &port,
            "--pk",
            "a1E2E",
            "--dn",
            "lk-e2e",
            "--secret",
            d["secret"].as_str().unwrap(),
            "--mode",
            "connect",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"connected\""),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the connection is recorded (in the background: the device may be told first)
    let dev = wait_for_device(&http, base, &key, &d["id"], |d| {
        d["activated_at"].is_string()
    })
    .await;
    assert!(dev["activated_at"].is_string(), "{dev}");
}

/// Polls the device through the API until `cond` holds; panics after 30 s.
async fn wait_for_device(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    id: &Value,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let dev: Value = http
            .get(format!("{base}/v1/devices/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if cond(&dev) {
            return dev;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {dev}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

// DESIGN §8: a server killed while a device is connected restarts at once on the same MQTT
// port (the old connections sit in TIME-WAIT; the listener sets SO_REUSEADDR), and the device
// it held is no longer online: the new process settles what the old one left.
#[tokio::test]
async fn a_killed_server_restarts_on_its_port_and_settles_online_state() {
    let srv = Server::start(ServerOptions::default()).await.unwrap();
    let mqtt = srv.mqtt.clone().expect("the embedded broker's address");
    let key = srv.create_tenant("acme").await.unwrap();
    let http = client(None).unwrap();
    let base = srv.base.clone();
    let p: Value = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(&key)
        .json(&json!({"name": "m", "protocol": "alink", "product_key": "a1Rst"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d: Value = http
        .post(format!("{base}/v1/products/{}/devices", p["id"]))
        .bearer_auth(&key)
        .json(&json!({"name": "lk-rst"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = std::env::var("SDK_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv/bin/python"));
    let port = mqtt.rsplit(':').next().unwrap().to_owned();
    let mut dev = tokio::process::Command::new(py)
        .arg(root.join("tests/sdk/raw_device.py"))
        .args([
            "--port",
            &port,
            "--pk",
            "a1Rst",
            "--dn",
            "lk-rst",
            "--secret",
            d["secret"].as_str().unwrap(),
            "--mode",
            "hold",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_device(&http, &base, &key, &d["id"], |d| d["online"] == true).await;
    // The server goes first, so its side of the connection is the one left in TIME-WAIT;
    // then the device, so it cannot come back to the new process.
    let mut srv = srv;
    srv.child.kill().await.unwrap();
    dev.kill().await.unwrap();
    let srv = srv.restart().await.unwrap();
    assert_eq!(srv.mqtt.as_deref(), Some(mqtt.as_str()), "the same port");
    let dev_now: Value = http
        .get(format!("{}/v1/devices/{}", srv.base, d["id"]))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dev_now["online"], false, "{dev_now}");
}

// SPEC M3
#[tokio::test]
async fn runs_on_postgresql_by_environment() {
    let url = fresh_pg_database().await.unwrap();
    let srv = Server::start(ServerOptions {
        env: vec![("OTA_DATABASE__URL".into(), url)],
        ..Default::default()
    })
    .await
    .unwrap();
    walk_through(&srv, &client(None).unwrap()).await;
    assert!(
        !srv.data_dir.join("ota.db").exists(),
        "no SQLite file when PostgreSQL is configured"
    );
}

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let keyf = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&keyf, ck.signing_key.serialize_pem()).unwrap();
    let srv = Server::start(ServerOptions {
        env: vec![
            ("OTA_HTTP__TLS__CERT".into(), cert.display().to_string()),
            ("OTA_HTTP__TLS__KEY".into(), keyf.display().to_string()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(srv.base.starts_with("https://"), "{}", srv.base);
    let http = client(Some(ck.cert.pem().as_bytes())).unwrap();
    walk_through(&srv, &http).await;
    // a client that does not trust the certificate cannot talk to it
    let plain = client(None).unwrap();
    assert!(plain
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn config_cli_prints_defaults_and_rejects_unknown_keys() {
    let bin = server_bin(false);
    let out = cli(&bin, &["config", "print-default"], &[]).await.unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[http]") && text.contains("port = 8080"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = cli(
        &bin,
        &["--data-dir", d, "config", "show"],
        &[("OTA_HTTP__PROT", "1")],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prot"));
    let out = cli(
        &bin,
        &["--data-dir", d, "--port", "9999", "config", "show"],
        &[("OTA_FIRMWARE__URL_SECRET", "topsecret")],
    )
    .await
    .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("port = 9999"), "{shown}");
    assert!(
        !shown.contains("topsecret"),
        "secrets are redacted: {shown}"
    );
}

// SPEC M2
#[tokio::test]
async fn openapi_document_describes_the_api() {
    let srv = Server::start(ServerOptions::default()).await.unwrap();
    let doc: Value = client(None)
        .unwrap()
        .get(format!("{}/v1/openapi.json", srv.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/products",
        "/v1/products/{id}/devices/import",
        "/v1/keys",
        "/v1/devices/{id}/versions",
    ] {
        assert!(
            paths.contains_key(p),
            "missing {p}: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}
