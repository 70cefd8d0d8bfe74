//! The README's vendor walk-through, run as written: the shell block between
//! `<!-- vendor-policy:begin -->` and `<!-- vendor-policy:end -->` creates a policy crate
//! outside the workspace (in a fresh temp dir) against the SDK of this checkout, builds it
//! for wasm32-wasip2, uploads it to the real server and attaches it to a rollout. The test
//! then checks through the API that the policy is stored and that the rollout took exactly
//! the devices the policy selects.
//!
//! The crate's build output goes to `policies/target` (`CARGO_TARGET_DIR`), which
//! `scripts/build-policies` fills with the SDK's dependencies, so a repeated run is fast.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::api::{product, Api};
use e2e::{Server, ServerOptions};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BEGIN: &str = "<!-- vendor-policy:begin -->";
const END: &str = "<!-- vendor-policy:end -->";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The shell block between the markers, without its fence lines.
fn readme_block(readme: &str) -> String {
    assert_eq!(readme.matches(BEGIN).count(), 1, "one {BEGIN} in README.md");
    assert_eq!(readme.matches(END).count(), 1, "one {END} in README.md");
    let inner = readme
        .split(BEGIN)
        .nth(1)
        .unwrap()
        .split(END)
        .next()
        .unwrap();
    let lines: Vec<&str> = inner.trim().lines().collect();
    assert!(
        lines.len() > 2 && lines[0].trim() == "```sh" && lines[lines.len() - 1].trim() == "```",
        "the markers must enclose exactly one ```sh fence: {inner}"
    );
    lines[1..lines.len() - 1].join("\n") + "\n"
}

/// The device's board attribute, if any: the policy in the README takes rev-b and rev-c.
fn board(i: usize) -> Option<&'static str> {
    match i % 4 {
        0 => Some("rev-a"),
        1 => Some("rev-b"),
        2 => Some("rev-c"),
        _ => None,
    }
}

// SPEC W4: a vendor writes a policy as ordinary Rust against the SDK and builds it with the
// one documented command (the README's block, run as written, in a crate outside the
// workspace), and the rollout takes exactly the devices it selects; and `policies/`'s
// variable rate, written with the same SDK, releases tick for tick what the built-in rate
// releases with the same settings, on the real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_vendor_policy_commands_build_upload_and_attach_a_policy() {
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
        key: key.clone(),
    };

    // a product with 10 devices: board rev-a, rev-b, rev-c or none in turn; one device
    // without a board has rev-b under another attribute, which the policy must not read;
    // a package with a file, marked no_need
    let names: Vec<String> = (0..10).map(|i| format!("meter-{i:02}")).collect();
    let (_, pkg) = product(&api, "a1Vendor", &names, "2.0.0").await;
    api.set_attributes(&names, |i| match board(i) {
        Some(b) => json!({ "board": b, "hw": "rev-a" }),
        None => json!({ "hw": "rev-b" }),
    })
    .await;
    let expected: Vec<String> = (0..10)
        .filter(|i| matches!(board(*i), Some("rev-b" | "rev-c")))
        .map(|i| names[i].clone())
        .collect();
    assert_eq!(expected.len(), 5);

    // the README's block, as written, in a fresh directory outside the repository
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme_block(&readme);
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let run = tokio::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&block)
        .current_dir(work.path())
        .env("API", &srv.base)
        .env("AUTH", format!("Authorization: Bearer {key}"))
        .env("J", "Content-Type: application/json")
        .env("PACKAGE", pkg.to_string())
        .env("OTA_SRC", &root)
        .env("CARGO_TARGET_DIR", root.join("policies/target"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(1200), run)
        .await
        .expect("the README block did not finish in 20 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let log = srv.log.lock().unwrap();
        let tail = log[log.len().saturating_sub(30)..].join("\n");
        panic!(
            "the README block failed ({}):\n--- block ---\n{block}--- stdout ---\n{stdout}\n\
             --- stderr ---\n{stderr}\n--- server log (tail) ---\n{tail}",
            out.status
        );
    }
    eprintln!(
        "README block ran in {:.1} s; stdout: {stdout}",
        started.elapsed().as_secs_f64()
    );

    // the policy is stored: version 1 of its name, exporting the scope hook
    let policies = api.get("/v1/policies?name=board-scope").await;
    let items = policies["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{policies}");
    let policy = &items[0];
    assert_eq!(policy["version"], 1, "{policy}");
    assert_eq!(policy["hooks"], json!(["scope"]), "{policy}");
    assert!(policy["size"].as_u64().unwrap() > 0, "{policy}");

    // the block created one rollout of the package, with the policy and its config attached
    let rollouts = api.get(&format!("/v1/rollouts?package_id={pkg}")).await;
    let items = rollouts["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{rollouts}");
    let id = items[0]["id"].as_i64().unwrap();
    let rollout = api.get(&format!("/v1/rollouts/{id}")).await;
    assert_eq!(
        rollout["policies"]["scope"]["id"], policy["id"],
        "{rollout}"
    );
    assert_eq!(
        rollout["policies"]["scope"]["config"],
        json!({"attribute": "board", "values": ["rev-b", "rev-c"]}),
        "{rollout}"
    );
    assert_eq!(rollout["tasks_created"], expected.len(), "{rollout}");

    // and its tasks are exactly the devices the policy selects
    let tasks = api.get(&format!("/v1/rollouts/{id}/tasks?limit=100")).await;
    let mut names: Vec<String> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["device_name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, expected, "{tasks}");

    // the seed's variable rate as a policy of policies/, beside the built-in one: two
    // rollouts of 400 devices each (offline, so what is released waits as `pending`)
    let ramp = api.upload_policy("ramp", "variable-rate").await;
    let settings =
        json!({"base": 20, "factor": 1.5, "max": 300, "threshold": 40, "count_on": "pushed"});
    let fleet = |p: &str| (0..400).map(|i| format!("{p}{i:03}")).collect::<Vec<_>>();
    let (_, by_policy_pkg) = product(&api, "a1Ramp", &fleet("r"), "2.0.0").await;
    let (_, builtin_pkg) = product(&api, "a1Base", &fleet("b"), "2.0.0").await;
    let by_policy = api
        .post(
            &format!("/v1/packages/{by_policy_pkg}/rollouts"),
            json!({"scope": {"kind": "all"}, "policies": {"rate": {"id": ramp["id"], "config": settings}}}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let mut builtin = settings.clone();
    builtin["kind"] = json!("variable");
    let by_builtin = api
        .post(
            &format!("/v1/packages/{builtin_pkg}/rollouts"),
            json!({"scope": {"kind": "all"}, "rate": builtin}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&400) {
        assert!(seen.len() < 200, "{seen:?}");
        api.advance(3).await;
        let a = api.counts(by_policy).await["pending"].as_u64().unwrap_or(0);
        let b = api.counts(by_builtin).await["pending"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(a, b, "after {seen:?}");
        seen.push(a);
    }
    assert!(
        seen.windows(2).any(|w| w[1] - w[0] > 5),
        "the rate never grew: {seen:?}"
    );
}
