//! The served OpenAPI document against the real binary: it is a valid OpenAPI document
//! (openapi-spec-validator), and a bounded, deterministic property-based fuzz of every
//! operation from it (schemathesis) finds no 5xx and no reply the document does not
//! describe: status codes, content types, headers and response schemas. Both tools come
//! from the project's venv, which `scripts/test` creates from `tests/sdk/requirements.txt`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn venv_tool(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.venv/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (it creates the venv from tests/sdk/requirements.txt)",
        path.display()
    );
    path
}

/// The replies schemathesis holds against the document.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// Runs a tool to its end (at most `limit`), returning whether it succeeded and its output.
async fn run(mut cmd: tokio::process::Command, limit: Duration) -> (bool, String) {
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} ran longer than {limit:?}"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Resources for the seeded passes to meet; returns the environment that names their ids.
async fn seed(http: &reqwest::Client, base: &str, key: &str) -> Vec<(String, String)> {
    let send = |method: reqwest::Method, path: String, body: Value| {
        let req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(key);
        async move {
            let r = req.json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let post = |path: String, body: Value| send(reqwest::Method::POST, path, body);
    let id = |v: &Value| v["id"].as_i64().unwrap().to_string();
    let product = id(&post(
        "/v1/products".into(),
        json!({"name": "Meter", "protocol": "alink"}),
    )
    .await);
    let device = id(&post(
        format!("/v1/products/{product}/devices"),
        json!({"name": "meter-1"}),
    )
    .await);
    post(
        format!("/v1/devices/{device}/versions"),
        json!({"version": "1.0"}),
    )
    .await;
    send(
        reqwest::Method::PUT,
        format!("/v1/devices/{device}/tags"),
        json!({"site": "a"}),
    )
    .await;
    let group = id(&post("/v1/groups".into(), json!({"name": "g"})).await);
    post(
        format!("/v1/groups/{group}/devices"),
        json!({"device_ids": [device.parse::<i64>().unwrap()]}),
    )
    .await;
    let tree = id(&post("/v1/asset-trees".into(), json!({"name": "t"})).await);
    let node = id(&post(
        format!("/v1/asset-trees/{tree}/nodes"),
        json!({"name": "n"}),
    )
    .await);
    let package = id(&post(
        format!("/v1/products/{product}/packages"),
        json!({"version": "2.0"}),
    )
    .await);
    let file: Value = http
        .put(format!("{base}/v1/packages/{package}/files/fw.bin"))
        .bearer_auth(key)
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = file["download_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    // A second admin key for the revoke operation to take: revoking the fuzzing key itself
    // would turn the rest of the run into 401s.
    let spare = id(&post("/v1/keys".into(), json!({"name": "spare", "role": "admin"})).await);
    [
        ("PRODUCT", product),
        ("DEVICE", device),
        ("GROUP", group),
        ("TREE", tree),
        ("NODE", node),
        ("PACKAGE", package),
        ("FILE", id(&file)),
        ("TOKEN", token),
        ("KEY", spare),
    ]
    .into_iter()
    .map(|(k, v)| (format!("OTA_FUZZ_{k}"), v))
    .collect()
}

// SPEC M2
#[tokio::test]
async fn the_document_validates_and_a_fuzz_finds_no_reply_it_does_not_describe() {
    let srv = Server::start(ServerOptions::default()).await.unwrap();
    let key = srv.create_tenant("fuzz").await.unwrap();
    let http = client(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doc_url = format!("{}/v1/openapi.json", srv.base);
    let doc = http
        .get(&doc_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc_file = dir.path().join("openapi.json");
    std::fs::write(&doc_file, &doc).unwrap();
    let mut validate = tokio::process::Command::new(venv_tool("openapi-spec-validator"));
    validate.arg(&doc_file);
    let (ok, out) = run(validate, Duration::from_secs(120)).await;
    assert!(ok, "the OpenAPI document does not validate:\n{out}");

    let env = seed(&http, &srv.base, &key).await;
    let seeded_config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/schemathesis-seeded.toml");
    // Three passes, each deterministic (the same cases every run) and bounded by a case
    // count: ~3,000 cases with random ids, valid and invalid input, and security probes;
    // ~1,100 valid cases on the seeded resources; then their deletes, last, so they do not
    // take the resources from the others.
    let passes: [(&str, Vec<&str>); 3] = [
        (
            "random ids",
            vec![
                "--mode",
                "all",
                "-n",
                "25",
                // would revoke the key the fuzz runs with; the seeded pass revokes a spare
                "--exclude-name",
                "DELETE /v1/keys/{id}",
            ],
        ),
        (
            "seeded resources",
            vec![
                "--mode",
                "positive",
                "-n",
                "20",
                "--exclude-method",
                "DELETE",
            ],
        ),
        (
            "seeded deletes",
            vec![
                "--mode",
                "positive",
                "-n",
                "20",
                "--include-method",
                "DELETE",
            ],
        ),
    ];
    for (i, (name, args)) in passes.iter().enumerate() {
        let mut st = tokio::process::Command::new(venv_tool("schemathesis"));
        if i > 0 {
            st.arg("--config-file").arg(&seeded_config);
        }
        st.arg("run")
            .arg(&doc_url)
            .args(["--header", &format!("Authorization: Bearer {key}")])
            .args(["--checks", CHECKS])
            .args(["--phases", "examples,coverage,fuzzing"])
            .arg("--generation-deterministic")
            .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // a schemathesis.toml of the machine must not change the run
            .current_dir(dir.path());
        let (ok, out) = run(st, Duration::from_secs(300)).await;
        let tail: Vec<&str> = out.lines().rev().take(150).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        assert!(
            ok,
            "schemathesis pass {name:?} failed:\n{}\nserver log (end):\n{}",
            tail.join("\n"),
            srv.log
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(40)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let summary = out
            .lines()
            .find(|l| l.contains(" generated, ") && l.contains(" passed"));
        println!("schemathesis {name}: {}", summary.unwrap_or("?").trim());
        assert!(
            out.contains(" passed"),
            "schemathesis pass {name:?} ran no case:\n{out}"
        );
    }
}
