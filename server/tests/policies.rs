//! Tenants' rollout policies through the HTTP API, on SQLite and PostgreSQL, with the real
//! components of `policies/` (built by `scripts/build-policies`): upload, versions and
//! tenant isolation (W1); each hook changing what a rollout does, in simulated time (W2);
//! failing and hostile policies contained to their own rollout (W3); a dry run that asks
//! them in simulated time and pushes nothing, checked against the engine (W5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use common::fleet::*;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;

db_tests!(
    policies_are_uploaded_as_versions_and_kept_per_tenant,
    each_hook_changes_what_a_rollout_does,
    failing_policies_pause_only_their_own_rollout,
    a_dry_run_asks_the_policies_and_pushes_nothing,
);

/// Where the built components are: `POLICY_WASM_DIR`, else `target/policies`.
fn wasm(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("POLICY_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/policies"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. Build the policy components first: scripts/build-policies",
            path.display()
        )
    })
}

async fn upload<S, B>(app: &S, key: &str, name: &str, component: &str) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    call_raw(
        app,
        Some(key),
        "POST",
        &format!("/v1/policies?name={name}"),
        "application/wasm",
        wasm(component),
    )
    .await
}

async fn uploaded<S, B>(app: &S, key: &str, name: &str, component: &str) -> i64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = upload(app, key, name, component).await;
    r.expect(201);
    r.json()["id"].as_i64().unwrap()
}

async fn key_of_role<S, B>(app: &S, admin: &str, role: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = post(app, admin, "/v1/keys", json!({"name": role, "role": role})).await;
    r.expect(201);
    r.json()["secret"].as_str().unwrap().to_owned()
}

/// Sets one attribute on each device of the fleet, by index.
async fn set_attribute<S, B>(
    app: &S,
    key: &str,
    f: &Fleet,
    name: &str,
    value: impl Fn(usize) -> String,
) where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    for (i, d) in f.devices.iter().enumerate() {
        call(
            app,
            Some(key),
            "PATCH",
            &format!("/v1/devices/{d}/attributes"),
            Some(json!({ name: value(i) })),
        )
        .await
        .expect(200);
    }
}

/// Device indexes of a rollout's tasks in `state` (all states when `None`).
async fn task_devices(e: &EngineCtx, rollout: i64, state: Option<&str>) -> Vec<usize> {
    use sea_orm::ConnectionTrait;
    let db = e.t.store.raw_connection();
    let filter = state.map_or(String::new(), |s| format!(" AND t.state = '{s}'"));
    let rows = db
        .query_all(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT d.name FROM task t JOIN device d ON d.id = t.device_id \
                 WHERE t.rollout_id = {rollout}{filter} ORDER BY d.name"
            ),
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let n: String = r.try_get("", "name").unwrap();
            n[1..].parse().unwrap()
        })
        .collect()
}

// SPEC W1
async fn policies_are_uploaded_as_versions_and_kept_per_tenant(db: Db) {
    let e = EngineCtx::with_config(db, |c| c.policy.max_upload_bytes = 4 << 20).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();

    // each upload of a name is its next version, checked and described
    let r = upload(&app, key, "canary", "canary-scope").await;
    r.expect(201);
    let v1 = r.json();
    assert_eq!(v1["name"], "canary");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["hooks"], json!(["scope"]));
    assert_eq!(v1["size"], wasm("canary-scope").len());
    use sha2::Digest;
    assert_eq!(
        v1["digest"],
        hex::encode(sha2::Sha256::digest(wasm("canary-scope")))
    );
    let v2 = upload(&app, key, "canary", "canary-scope").await.json();
    assert_eq!(v2["version"], 2);
    let rate = upload(&app, key, "ramp", "variable-rate").await.json();
    assert_eq!(rate["version"], 1);
    assert_eq!(rate["hooks"], json!(["rate"]));
    let got = call(
        &app,
        Some(key),
        "GET",
        &format!("/v1/policies/{}", v2["id"]),
        None,
    )
    .await;
    got.expect(200);
    assert_eq!(got.json(), v2);
    let list = call(&app, Some(key), "GET", "/v1/policies?name=canary", None).await;
    list.expect(200);
    let versions: Vec<u64> = list.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2]);

    // what is not a policy is refused at upload, and nothing is stored
    for (component, code) in [
        ("wrong-exports", "unsupported_exports"),
        ("forbidden-import", "forbidden_import"),
    ] {
        let r = upload(&app, key, "bad", component).await;
        r.expect(422);
        assert_eq!(r.json()["code"], "policy_rejected", "{}", r.text());
        assert!(
            r.json()["message"].as_str().unwrap().contains(code),
            "{}",
            r.text()
        );
    }
    let r = call_raw(
        &app,
        Some(key),
        "POST",
        "/v1/policies?name=bad",
        "application/wasm",
        b"\0asm\x01\0\0\0".to_vec(),
    )
    .await;
    r.expect(422);
    let r = call_raw(
        &app,
        Some(key),
        "POST",
        "/v1/policies?name=bad",
        "application/wasm",
        vec![],
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "body");
    let r = call_raw(
        &app,
        Some(key),
        "POST",
        "/v1/policies?name=b%20d",
        "application/wasm",
        wasm("panic"),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "name");
    let r = call_raw(
        &app,
        Some(key),
        "POST",
        "/v1/policies?name=big",
        "application/wasm",
        vec![0u8; (4 << 20) + 1],
    )
    .await;
    r.expect(413);
    let none = call(&app, Some(key), "GET", "/v1/policies?name=bad", None).await;
    assert_eq!(none.json()["items"], json!([]));

    // only admins manage policies; everyone of the tenant reads them
    let operator = key_of_role(&app, key, "operator").await;
    upload(&app, &operator, "mine", "canary-scope")
        .await
        .expect(403);
    call(&app, Some(&operator), "GET", "/v1/policies", None)
        .await
        .expect(200);
    call(
        &app,
        Some(&operator),
        "DELETE",
        &format!("/v1/policies/{}", v1["id"]),
        None,
    )
    .await
    .expect(403);

    // another tenant neither sees, attaches nor deletes them
    let other = e.t.other_tenant("globex").await;
    call(
        &app,
        Some(&other),
        "GET",
        &format!("/v1/policies/{}", v1["id"]),
        None,
    )
    .await
    .expect(404);
    let theirs = call(&app, Some(&other), "GET", "/v1/policies", None).await;
    assert_eq!(theirs.json()["items"], json!([]));
    call(
        &app,
        Some(&other),
        "DELETE",
        &format!("/v1/policies/{}", v1["id"]),
        None,
    )
    .await
    .expect(404);
    let fo = fleet_of_key(&e, &app, &other, "other", 3, true, true).await;
    let r = post(
        &app,
        &other,
        &format!("/v1/packages/{}/rollouts", fo.package),
        json!({"scope": {"kind": "all"}, "policies": {"scope": {"id": v1["id"]}}}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "policies.scope.id");

    // a version is attached to the hook it exports, with a config
    let f = fleet(&e, &app, 4, true, true).await;
    refused(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "policies": {"rate": {"id": v1["id"]}}}),
        "policies.rate.id",
    )
    .await;
    refused(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 10},
               "policies": {"rate": {"id": rate["id"]}}}),
        "policies.rate",
    )
    .await;
    refused(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "push_mode": "pull", "policies": {"rate": {"id": rate["id"]}}}),
        "policies.rate",
    )
    .await;
    refused(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "policies": {"scope": {"id": v2["id"],
               "config": {"pad": "x".repeat(70_000)}}}}),
        "policies.scope.config",
    )
    .await;
    let config = json!({"attribute": "region", "percent": {}, "default": 100});
    let r = post(
        &app,
        key,
        &format!("/v1/packages/{}/rollouts", f.package),
        json!({"scope": {"kind": "all"}, "start_on_creation": false,
               "policies": {"scope": {"id": v2["id"], "config": config}}}),
    )
    .await;
    r.expect(201);
    let draft = r.json();
    assert_eq!(draft["policies"]["scope"]["id"], v2["id"]);
    assert_eq!(draft["policies"]["scope"]["config"], config);
    assert_eq!(draft["tasks_created"], 4);

    // a version in use by an unfinished rollout stays; once that ends, it can go
    let r = call(
        &app,
        Some(key),
        "DELETE",
        &format!("/v1/policies/{}", v2["id"]),
        None,
    )
    .await;
    r.expect(409);
    assert!(r.text().contains(&draft["id"].to_string()), "{}", r.text());
    post(
        &app,
        key,
        &format!("/v1/rollouts/{}/cancel", draft["id"]),
        json!({}),
    )
    .await
    .expect(200);
    call(
        &app,
        Some(key),
        "DELETE",
        &format!("/v1/policies/{}", v2["id"]),
        None,
    )
    .await
    .expect(204);
    call(
        &app,
        Some(key),
        "GET",
        &format!("/v1/policies/{}", v2["id"]),
        None,
    )
    .await
    .expect(404);
    // the finished rollout still names the version it ran
    assert_eq!(
        rollout(&app, key, draft["id"].as_i64().unwrap()).await["policies"]["scope"]["id"],
        v2["id"]
    );
}

// SPEC W2
async fn each_hook_changes_what_a_rollout_does(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();

    // scope: the canary policy takes every "eu" device and no other
    let f = fleet(&e, &app, 40, true, true).await;
    set_attribute(&app, key, &f, "region", |i| {
        (if i % 4 == 0 { "eu" } else { "us" }).into()
    })
    .await;
    let canary = uploaded(&app, key, "canary", "canary-scope").await;
    let scoped = json!({"scope": {"kind": "all"}, "start_on_creation": false,
        "policies": {"scope": {"id": canary,
            "config": {"attribute": "region", "percent": {"eu": 100, "us": 0}, "default": 0}}}});
    let r = create(&app, key, f.package, scoped.clone()).await;
    let eu: Vec<usize> = (0..40).filter(|i| i % 4 == 0).collect();
    assert_eq!(task_devices(&e, r, None).await, eu);
    // the same rollout without the policy: the built-in scope takes all
    let plain = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "start_on_creation": false, "override_previous": true}),
    )
    .await;
    assert_eq!(task_devices(&e, plain, None).await.len(), 40);
    for id in [r, plain] {
        post(&app, key, &format!("/v1/rollouts/{id}/cancel"), json!({}))
            .await
            .expect(200);
    }
    // a partial canary is stable: two creations take the very same devices
    let half = json!({"scope": {"kind": "all"}, "start_on_creation": false,
        "policies": {"scope": {"id": canary,
            "config": {"attribute": "region", "percent": {"eu": 50, "us": 50}, "default": 0}}}});
    let a = create(&app, key, f.package, half.clone()).await;
    let first = task_devices(&e, a, None).await;
    post(&app, key, &format!("/v1/rollouts/{a}/cancel"), json!({}))
        .await
        .expect(200);
    let b = create(&app, key, f.package, half).await;
    assert_eq!(task_devices(&e, b, None).await, first);
    assert!(!first.is_empty() && first.len() < 40, "{first:?}");
    post(&app, key, &format!("/v1/rollouts/{b}/cancel"), json!({}))
        .await
        .expect(200);

    // approval: released only in the device's local night (01:00-05:00); the clock starts
    // at 11:06:40 UTC, which is 03:06 at -08:00, 23:06 at +12:00 and 11:06 in UTC
    let g = fleet_named(&e, &app, "lamp", 9, true, true).await;
    set_attribute(&app, key, &g, "tz", |i| {
        ["-08:00", "+12:00", "UTC"][i % 3].into()
    })
    .await;
    let night = uploaded(&app, key, "night", "maintenance-approval").await;
    let approved = create(
        &app,
        key,
        g.package,
        json!({"scope": {"kind": "all"},
               "policies": {"approval": {"id": night,
                   "config": {"attribute": "tz", "start_hour": 1, "end_hour": 5}}}}),
    )
    .await;
    advance(&app, key, 1).await;
    assert_eq!(
        task_devices(&e, approved, Some("pushed")).await,
        vec![0, 3, 6]
    );
    assert_eq!(count(&app, key, approved, "waiting").await, 6);
    // deferred, not asked again before their time: +12:00 reaches 01:00 at 13:00 UTC
    advance(&app, key, 60 * 60).await;
    assert_eq!(count(&app, key, approved, "waiting").await, 6);
    advance(&app, key, 60 * 60).await;
    assert_eq!(
        task_devices(&e, approved, Some("pushed")).await,
        vec![0, 1, 3, 4, 6, 7]
    );
    assert_eq!(count(&app, key, approved, "waiting").await, 3);

    // rate: the variable-rate policy releases exactly what the built-in rate releases,
    // tick by tick, with the same settings side by side
    let h = fleet_named(&e, &app, "meter2", 300, true, true).await;
    let k = fleet_named(&e, &app, "meter3", 300, true, true).await;
    let ramp = uploaded(&app, key, "ramp", "variable-rate").await;
    let settings =
        json!({"base": 10, "factor": 2.0, "max": 200, "threshold": 20, "count_on": "pushed"});
    let by_policy = create(
        &app,
        key,
        h.package,
        json!({"scope": {"kind": "all"}, "policies": {"rate": {"id": ramp, "config": settings}}}),
    )
    .await;
    let mut builtin = settings.clone();
    builtin["kind"] = json!("variable");
    let by_builtin = create(
        &app,
        key,
        k.package,
        json!({"scope": {"kind": "all"}, "rate": builtin}),
    )
    .await;
    let mut seen = Vec::new();
    while seen.last() != Some(&300) {
        assert!(seen.len() < 60, "{seen:?}");
        advance(&app, key, 7).await;
        let p = pushed_total(&app, key, by_policy).await;
        assert_eq!(
            p,
            pushed_total(&app, key, by_builtin).await,
            "after {seen:?}"
        );
        seen.push(p);
    }
    assert!(seen[0] > 0 && seen[0] < 10, "{seen:?}");
    assert!(
        seen.windows(2).any(|w| w[1] - w[0] > 10),
        "the rate never grew: {seen:?}"
    );
}

// SPEC W3
async fn failing_policies_pause_only_their_own_rollout(db: Db) {
    let e = EngineCtx::with_config(db, |c| {
        // a loop hits its deadline quickly, long before it could run out of fuel
        c.policy.deadline_ms = 200;
        c.policy.fuel = 100_000_000_000;
    })
    .await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 30, true, true).await;

    // at creation a failing scope takes no device: the rollout is not made, and the reply
    // says which policy failed and why, classified
    for (component, why) in [
        ("endless-loop", "deadline"),
        ("memory-bomb", "memory_limit"),
        ("panic", "policy bug: cannot read device"),
    ] {
        let id = uploaded(&app, key, component, component).await;
        let r = post(
            &app,
            key,
            &format!("/v1/packages/{}/rollouts", f.package),
            json!({"scope": {"kind": "all"}, "policies": {"scope": {"id": id}}}),
        )
        .await;
        r.expect(422);
        assert_eq!(r.json()["code"], "policy_failed", "{}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_owned();
        assert!(
            msg.contains(&format!("scope policy {component} v1")),
            "{msg}"
        );
        assert!(msg.contains(why), "{msg}");
    }
    let all = call(&app, Some(key), "GET", "/v1/rollouts", None).await;
    assert_eq!(all.json()["items"], json!([]));

    // at run time: a rate policy whose state outgrows its limit fails every tick; nothing
    // is released on its behalf and after three failures in a row its rollout pauses, while
    // another tenant's rollout on the same engine goes on pushing
    let huge = uploaded(&app, key, "huge", "huge-output").await;
    let bad = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "policies": {"rate": {"id": huge}}}),
    )
    .await;
    let other = e.t.other_tenant("globex").await;
    let g = fleet_of_key(&e, &app, &other, "other", 200, true, true).await;
    let og = create(
        &app,
        &other,
        g.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 60}}),
    )
    .await;
    for tick in 1..=3 {
        advance(&app, key, 1).await;
        assert_eq!(pushed_total(&app, key, bad).await, 0);
        assert_eq!(pushed_total(&app, &other, og).await, tick);
    }
    let r = rollout(&app, key, bad).await;
    assert_eq!(r["state"], "paused");
    let ev = rollout_events(&app, key, bad).await;
    let failed: Vec<&Value> = ev
        .iter()
        .filter(|e| e["event"] == "policy_failed")
        .collect();
    assert_eq!(failed.len(), 3, "{ev:?}");
    assert!(failed[0]["detail"]
        .as_str()
        .unwrap()
        .contains("rate policy huge v1: bad_output"));
    let pause = ev.iter().find(|e| e["event"] == "pause").unwrap();
    let detail = pause["detail"].as_str().unwrap();
    assert!(
        detail.contains("the rate policy failed 3 times in a row"),
        "{detail}"
    );
    assert!(detail.contains("a rate state of 1048576 bytes"), "{detail}");
    assert_eq!(pause["cause"], "policy");
    for _ in 0..5 {
        advance(&app, key, 1).await;
    }
    assert_eq!(pushed_total(&app, key, bad).await, 0);
    assert_eq!(pushed_total(&app, &other, og).await, 8);

    // a dynamic rollout whose scope policy loops takes no joining device; after three
    // failed batches it pauses, and the device reports go on being recorded
    let f3 = fleet_named(&e, &app, "joiner", 6, true, true).await;
    let endless = uploaded(&app, key, "endless", "endless-loop").await;
    let dynamic = create(
        &app,
        key,
        f3.package,
        json!({"method": "dynamic", "scope": {"kind": "all"}, "source_versions": ["1.0.0"],
               "only_new_reports": true, "policies": {"scope": {"id": endless}}}),
    )
    .await;
    for i in 0..3 {
        e.engine
            .apply_events(&[inform(&f3, i, "1.0.0")])
            .await
            .unwrap();
    }
    let r = rollout(&app, key, dynamic).await;
    assert_eq!(r["state"], "paused", "{r}");
    assert_eq!(r["tasks_created"], 0);
    let ev = rollout_events(&app, key, dynamic).await;
    let pause = ev.iter().find(|e| e["event"] == "pause").unwrap();
    assert!(
        pause["detail"]
            .as_str()
            .unwrap()
            .contains("scope policy endless v1: deadline"),
        "{pause}"
    );
    let versions = call(
        &app,
        Some(key),
        "GET",
        &format!("/v1/devices/{}/versions", f3.devices[2]),
        None,
    )
    .await;
    assert!(versions.text().contains("1.0.0"), "{}", versions.text());
}

/// When each task of a rollout was pushed, by device index.
async fn pushed_at(e: &EngineCtx, rollout: i64) -> std::collections::BTreeMap<usize, i64> {
    use sea_orm::ConnectionTrait;
    let db = e.t.store.raw_connection();
    let rows = db
        .query_all(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT d.name, t.pushed_at FROM task t JOIN device d ON d.id = t.device_id \
                 WHERE t.rollout_id = {rollout} AND t.pushed_at IS NOT NULL"
            ),
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let n: String = r.try_get("", "name").unwrap();
            (n[1..].parse().unwrap(), r.try_get("", "pushed_at").unwrap())
        })
        .collect()
}

// SPEC W5
async fn a_dry_run_asks_the_policies_and_pushes_nothing(db: Db) {
    // ten-second ticks: the engine's pushes land inside the projection's minutes, and two
    // simulated hours pass in a few hundred ticks
    let e = EngineCtx::with_config(db, |c| c.scheduler.tick_ms = 10_000).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 40, true, true).await;
    // every fourth device is in the eu; of those, half are in their night now (-08:00 at
    // 11:06:40 UTC) and half not (+12:00, whose night starts at 13:00 UTC)
    for (i, d) in f.devices.iter().enumerate() {
        let tz = if i % 8 == 0 { "-08:00" } else { "+12:00" };
        let region = if i % 4 == 0 { "eu" } else { "us" };
        call(
            &app,
            Some(key),
            "PATCH",
            &format!("/v1/devices/{d}/attributes"),
            Some(json!({"region": region, "tz": tz})),
        )
        .await
        .expect(200);
    }
    let canary = uploaded(&app, key, "canary", "canary-scope").await;
    let night = uploaded(&app, key, "night", "maintenance-approval").await;
    let ramp = uploaded(&app, key, "ramp", "variable-rate").await;
    let body = json!({"scope": {"kind": "all"}, "policies": {
        "scope": {"id": canary, "config": {"attribute": "region", "percent": {"eu": 100}, "default": 0}},
        "approval": {"id": night, "config": {"attribute": "tz", "start_hour": 1, "end_hour": 5}},
        "rate": {"id": ramp, "config": {"base": 10, "factor": 2.0, "max": 100, "threshold": 50, "count_on": "pushed"}}}});
    let r = post(
        &app,
        key,
        &format!("/v1/packages/{}/rollouts/projection", f.package),
        json!({"rollout": body, "limit": 100}),
    )
    .await;
    r.expect(200);
    let p = r.json();
    // the scope policy's devices, in release order
    assert_eq!(p["devices"], 10, "{p}");
    let eu: Vec<String> = (0..40).step_by(4).map(|i| format!("d{i:05}")).collect();
    assert_eq!(p["device_names"], json!(eu));
    // the approval policy's night ones in the first minute; the others when their night
    // begins (13:00 UTC is 6,800 s after the start: in the projection's 114th minute)
    let start = T0;
    let projected: std::collections::BTreeMap<usize, i64> = p["devices_page"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let i: usize = d["name"].as_str().unwrap()[1..].parse().unwrap();
            let at = chrono::DateTime::parse_from_rfc3339(d["pushed_at"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            (i, at)
        })
        .collect();
    for (i, at) in &projected {
        let minute = if i % 8 == 0 { 1 } else { 114 };
        assert_eq!(*at, start + minute * 60_000, "d{i:05}: {p}");
    }
    assert_eq!(p["pushed"], 10);
    assert_eq!(p["stops"], "done");
    assert_eq!(p["rejected"], 0);
    // nothing was created, nothing pushed
    let all = call(&app, Some(key), "GET", "/v1/rollouts", None).await;
    assert_eq!(all.json()["items"], json!([]));

    // the engine, given the same rollout, pushes each device inside its projected minute
    let id = create(&app, key, f.package, body).await;
    advance(&app, key, 6_840).await;
    let engine = pushed_at(&e, id).await;
    assert_eq!(
        engine.keys().collect::<Vec<_>>(),
        projected.keys().collect::<Vec<_>>()
    );
    for (i, at) in &engine {
        let want = projected[i];
        assert!(
            *at <= want && *at > want - 60_000,
            "d{i:05}: pushed at {at}, projected {want}"
        );
    }

    // a rate policy that fails: the dry run stops where the engine would pause, and says why
    let huge = uploaded(&app, key, "huge", "huge-output").await;
    let r = post(
        &app,
        key,
        &format!("/v1/packages/{}/rollouts/projection", f.package),
        json!({"rollout": {"scope": {"kind": "all"}, "policies": {"rate": {"id": huge}}}}),
    )
    .await;
    r.expect(200);
    let p = r.json();
    assert_eq!(p["stops"], "paused", "{p}");
    assert_eq!(p["pushed"], 0);
    // (the clock has moved on by the engine's 6,840 s)
    assert_eq!(
        p["stopped_at"],
        ota_server::clock::rfc3339(T0 + 6_840_000 + 3 * 60_000)
    );
    let why = p["stop_reason"].as_str().unwrap();
    assert!(
        why.contains("failed 3 times in a row") && why.contains("rate policy huge v1: bad_output"),
        "{why}"
    );
}
