//! Whole requirement lines of the rollout options, each proved in one test through the HTTP
//! API in simulated time, on SQLite and PostgreSQL: the source-version filter (B9), devices
//! on the target never tasked (B10), the download protocol (R14, in part: see its test) and
//! the rollout tags, from the limits to what a device receives (R15).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use common::fleet::*;
use common::sdk::{raw_alink_client, WAIT};
use common::*;
use serde_json::{json, Value};
use tokio::sync::mpsc;

db_tests!(
    source_versions_at_creation_and_while_a_dynamic_rollout_runs,
    devices_on_the_target_version_never_get_a_task,
    download_protocol_is_stored_and_mqtt_is_refused_past_its_limits,
    tags_are_limited_pushed_and_changed_while_running,
);

async fn get<S, B>(app: &S, key: &str, path: &str) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(app, Some(key), "GET", path, None).await;
    r.expect(200);
    r.json()
}

async fn cancel<S, B>(app: &S, key: &str, id: i64)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    post(app, key, &format!("/v1/rollouts/{id}/cancel"), json!({}))
        .await
        .expect(200);
}

/// Device names of a rollout's tasks, sorted.
async fn task_devices<S, B>(app: &S, key: &str, rollout: i64) -> Vec<String>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let page = get(
        app,
        key,
        &format!("/v1/rollouts/{rollout}/tasks?limit=1000"),
    )
    .await;
    let mut v: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["device_name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// The state of each task of a rollout, by device name.
async fn task_states<S, B>(
    app: &S,
    key: &str,
    rollout: i64,
) -> std::collections::BTreeMap<String, String>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let page = get(
        app,
        key,
        &format!("/v1/rollouts/{rollout}/tasks?limit=1000"),
    )
    .await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["device_name"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Fleet device names (`d00000`, …) by index.
fn dn(idx: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = idx.iter().map(|i| format!("d{i:05}")).collect();
    v.sort();
    v
}

// SPEC B9: the source-version filter is optional for a full static rollout (absent: every
// device; given: only devices on a listed version), required for a full dynamic one, refused
// with a selected scope, and for a diff package exactly its source version (filled in when
// left out, applied to a selected scope too, never changed); in a running dynamic rollout an
// added version takes the devices on it now and those that come to run it later, a removed
// one leaves the devices already in the rollout alone (their tasks go on) and takes no more;
// a group-scoped dynamic rollout's list (and a static one's) does not change.
async fn source_versions_at_creation_and_while_a_dynamic_rollout_runs(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let mut f = fleet(&e, &app, 8, true, true).await;
    let product = product_of(&app, key, f.package).await;
    // d0 and d4 run 1.0.0, d1 1.1.0, d2 1.2.0; the others never reported
    e.engine
        .apply_events(&[
            inform(&f, 0, "1.0.0"),
            inform(&f, 4, "1.0.0"),
            inform(&f, 1, "1.1.0"),
            inform(&f, 2, "1.2.0"),
        ])
        .await
        .unwrap();
    let all = json!({"kind": "all"});

    // optional for a full static rollout
    let id = create(&app, key, f.package, json!({"scope": all})).await;
    assert_eq!(rollout(&app, key, id).await["source_versions"], json!([]));
    assert_eq!(
        task_devices(&app, key, id).await,
        dn(&[0, 1, 2, 3, 4, 5, 6, 7])
    );
    cancel(&app, key, id).await;
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": all, "source_versions": ["1.2.0", "1.0.0"]}),
    )
    .await;
    assert_eq!(
        rollout(&app, key, id).await["source_versions"],
        json!(["1.0.0", "1.2.0"])
    );
    assert_eq!(task_devices(&app, key, id).await, dn(&[0, 2, 4]));
    cancel(&app, key, id).await;

    // required for a full dynamic rollout
    refused(
        &app,
        key,
        f.package,
        json!({"method": "dynamic", "scope": all}),
        "source_versions",
    )
    .await;
    refused(
        &app,
        key,
        f.package,
        json!({"method": "dynamic", "scope": all, "source_versions": []}),
        "source_versions",
    )
    .await;

    // not used with a selected scope
    let selected = json!({"kind": "selected", "device_names": ["d00000", "d00003"]});
    refused(
        &app,
        key,
        f.package,
        json!({"scope": selected, "source_versions": ["1.0.0"]}),
        "source_versions",
    )
    .await;
    let id = create(&app, key, f.package, json!({"scope": selected})).await;
    assert_eq!(task_devices(&app, key, id).await, dn(&[0, 3]));
    cancel(&app, key, id).await;

    // a diff package: its source version and nothing else
    let diff = package_with(
        &app,
        key,
        product,
        json!({"version": "2.1.0", "kind": "diff", "source_version": "1.1.0", "sign_method": "md5"}),
        &[("delta.bin", 512)],
    )
    .await;
    for bad in [json!(["1.0.0"]), json!(["1.1.0", "1.0.0"])] {
        refused(
            &app,
            key,
            diff,
            json!({"scope": all, "source_versions": bad}),
            "source_versions",
        )
        .await;
    }
    refused(
        &app,
        key,
        diff,
        json!({"scope": {"kind": "selected", "device_names": ["d00001"]}, "source_versions": ["1.1.0"]}),
        "source_versions",
    )
    .await;
    let id = create(
        &app,
        key,
        diff,
        json!({"scope": all, "source_versions": ["1.1.0"]}),
    )
    .await;
    assert_eq!(task_devices(&app, key, id).await, dn(&[1]));
    cancel(&app, key, id).await;
    let id = create(&app, key, diff, json!({"scope": all})).await;
    assert_eq!(
        rollout(&app, key, id).await["source_versions"],
        json!(["1.1.0"]),
        "filled in"
    );
    assert_eq!(task_devices(&app, key, id).await, dn(&[1]));
    cancel(&app, key, id).await;
    let id = create(
        &app,
        key,
        diff,
        json!({"scope": {"kind": "selected", "device_names": ["d00000", "d00001"]}}),
    )
    .await;
    assert_eq!(
        task_devices(&app, key, id).await,
        dn(&[1]),
        "a selected device on another version is not taken"
    );
    cancel(&app, key, id).await;
    // a dynamic rollout of a diff needs no list, and its list cannot change
    let id = create(&app, key, diff, json!({"method": "dynamic", "scope": all})).await;
    assert_eq!(
        rollout(&app, key, id).await["source_versions"],
        json!(["1.1.0"])
    );
    assert_eq!(task_devices(&app, key, id).await, dn(&[1]));
    let r = patch_rollout(
        &app,
        key,
        id,
        json!({"source_versions": ["1.1.0", "1.0.0"]}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_versions");
    cancel(&app, key, id).await;

    // a running dynamic rollout of the full package
    let id = create(
        &app,
        key,
        f.package,
        json!({"method": "dynamic", "scope": all, "source_versions": ["1.0.0"]}),
    )
    .await;
    assert_eq!(task_devices(&app, key, id).await, dn(&[0, 4]));
    advance(&app, key, 1).await;
    e.engine.apply_events(&[progress(&f, 4, 10)]).await.unwrap();
    // an added version brings in the devices on it now …
    let r = patch_rollout(
        &app,
        key,
        id,
        json!({"source_versions": ["1.0.0", "1.2.0"]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["source_versions"], json!(["1.0.0", "1.2.0"]));
    assert_eq!(r.json()["tasks_created"], 3);
    assert_eq!(task_devices(&app, key, id).await, dn(&[0, 2, 4]));
    // … and those that come to run it: d3 reports it first, d8 is created after the change
    let r = post(
        &app,
        key,
        &format!("/v1/products/{product}/devices"),
        json!({"name": "d00008"}),
    )
    .await;
    r.expect(201);
    f.devices.push(r.json()["id"].as_i64().unwrap());
    e.engine
        .apply_events(&[inform(&f, 3, "1.2.0"), inform(&f, 8, "1.2.0")])
        .await
        .unwrap();
    assert_eq!(task_devices(&app, key, id).await, dn(&[0, 2, 3, 4, 8]));
    // a removed version leaves the devices already in the rollout alone …
    let before = task_states(&app, key, id).await;
    assert_eq!(before["d00000"], "pushed");
    assert_eq!(before["d00004"], "in_progress");
    let r = patch_rollout(&app, key, id, json!({"source_versions": ["1.2.0"]})).await;
    r.expect(200);
    assert_eq!(r.json()["source_versions"], json!(["1.2.0"]));
    assert_eq!(r.json()["tasks_created"], 5);
    assert_eq!(task_states(&app, key, id).await, before);
    // … their tasks go on to success …
    e.engine
        .apply_events(&[inform(&f, 4, "2.0.0"), progress(&f, 0, 20)])
        .await
        .unwrap();
    let now = task_states(&app, key, id).await;
    assert_eq!(
        (now["d00004"].as_str(), now["d00000"].as_str()),
        ("succeeded", "in_progress")
    );
    // … and no more devices on it join
    e.engine
        .apply_events(&[inform(&f, 5, "1.0.0")])
        .await
        .unwrap();
    assert_eq!(task_devices(&app, key, id).await, dn(&[0, 2, 3, 4, 8]));
    // a full dynamic rollout keeps at least one version
    let r = patch_rollout(&app, key, id, json!({"source_versions": []})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_versions");

    // not changeable for a group-scoped dynamic rollout, nor for a static one
    let g = fleet_named(&e, &app, "valve", 1, true, true).await;
    let group = post(&app, key, "/v1/groups", json!({"name": "g"}))
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    let grouped = create(
        &app,
        key,
        g.package,
        json!({"method": "dynamic", "scope": {"kind": "group", "group_id": group},
               "source_versions": ["1.0.0"]}),
    )
    .await;
    let r = patch_rollout(
        &app,
        key,
        grouped,
        json!({"source_versions": ["1.0.0", "1.1.0"]}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_versions");
    assert_eq!(
        rollout(&app, key, grouped).await["source_versions"],
        json!(["1.0.0"])
    );
    let h = fleet_named(&e, &app, "pump", 1, true, true).await;
    let st = create(&app, key, h.package, json!({"scope": all})).await;
    let r = patch_rollout(&app, key, st, json!({"source_versions": ["1.0.0"]})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_versions");
}

// SPEC B10: devices already on the package's version get no task: not when a static rollout
// is created (scope all without a filter, with a filter that names the target, or selected
// by name), not when a dynamic one is created, not when one reports the target version to a
// running dynamic rollout, and not when an added source version brings devices in.
async fn devices_on_the_target_version_never_get_a_task(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 6, true, true).await;
    // d1 and d3 run the target 2.0.0; d0 runs 1.0.0, d4 1.1.0; d2 and d5 never reported
    e.engine
        .apply_events(&[
            inform(&f, 0, "1.0.0"),
            inform(&f, 1, "2.0.0"),
            inform(&f, 3, "2.0.0"),
            inform(&f, 4, "1.1.0"),
        ])
        .await
        .unwrap();
    let all = json!({"kind": "all"});

    // static, scope all without a filter
    let id = create(&app, key, f.package, json!({"scope": all})).await;
    assert_eq!(task_devices(&app, key, id).await, dn(&[0, 2, 4, 5]));
    cancel(&app, key, id).await;
    // static, with a filter that names the target too
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": all, "source_versions": ["1.0.0", "2.0.0"]}),
    )
    .await;
    assert_eq!(task_devices(&app, key, id).await, dn(&[0]));
    cancel(&app, key, id).await;
    // static, the devices named one by one
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "selected", "device_names": ["d00000", "d00001", "d00003"]}}),
    )
    .await;
    assert_eq!(rollout(&app, key, id).await["tasks_created"], 1);
    assert_eq!(task_devices(&app, key, id).await, dn(&[0]));
    cancel(&app, key, id).await;

    // dynamic, at creation
    let dy = create(
        &app,
        key,
        f.package,
        json!({"method": "dynamic", "scope": all, "source_versions": ["1.0.0", "2.0.0"]}),
    )
    .await;
    assert_eq!(task_devices(&app, key, dy).await, dn(&[0]));
    // joining by a version report: d2 reports the target and gets nothing, d5 reports a
    // source version and joins
    e.engine
        .apply_events(&[inform(&f, 2, "2.0.0"), inform(&f, 5, "1.0.0")])
        .await
        .unwrap();
    assert_eq!(task_devices(&app, key, dy).await, dn(&[0, 5]));
    cancel(&app, key, dy).await;

    // an added source version brings devices in; those on the target get none
    let dz = create(
        &app,
        key,
        f.package,
        json!({"method": "dynamic", "scope": all, "source_versions": ["1.0.0"]}),
    )
    .await;
    assert_eq!(task_devices(&app, key, dz).await, dn(&[0, 5]));
    let r = patch_rollout(
        &app,
        key,
        dz,
        json!({"source_versions": ["1.0.0", "1.1.0", "2.0.0"]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["tasks_created"], 3, "only d4 on 1.1.0 joined");
    assert_eq!(task_devices(&app, key, dz).await, dn(&[0, 4, 5]));

    // over all of it, the devices that ran the target throughout never had a task
    for i in [1, 3] {
        let tasks = get(&app, key, &format!("/v1/devices/{}/tasks", f.devices[i])).await;
        assert_eq!(tasks["items"], json!([]), "d{i}");
    }
}

// Part of R14, without its marker: the server cannot do MQTT downloads. What works: HTTPS is
// the default and an explicit choice, stored and read back; an unknown protocol is refused;
// `mqtt` is refused naming download_protocol for a package of two files and for a file over
// 16 MB (16 MiB passes that rule). What is missing: `mqtt` for a single file of at most
// 16 MB is refused too ("MQTT file download is not supported by this server yet",
// server/src/domain/rollout.rs, RolloutRequest::validate), so it is never stored, and the
// push (FirmwarePush, server/src/dispatch/events.rs) has no field for the protocol nor any
// MQTT file transfer behind it. When that is built, the last assertion becomes a 201 whose
// push a device takes over MQTT, and this test can carry the R14 marker.
async fn download_protocol_is_stored_and_mqtt_is_refused_past_its_limits(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 1, true, true).await;
    let product = product_of(&app, key, f.package).await;
    const MIB16: usize = 16 * 1024 * 1024;
    let pkg = |version: &str| json!({"version": version, "sign_method": "md5"});
    let two = package_with(
        &app,
        key,
        product,
        pkg("3.0.0"),
        &[("a.bin", 100), ("b.bin", 100)],
    )
    .await;
    let big = package_with(&app, key, product, pkg("4.0.0"), &[("big.bin", MIB16 + 1)]).await;
    let at_limit = package_with(&app, key, product, pkg("5.0.0"), &[("fw.bin", MIB16)]).await;

    // https: the default, and an explicit choice; stored and read back
    let id = create(&app, key, f.package, json!({"scope": {"kind": "all"}})).await;
    assert_eq!(rollout(&app, key, id).await["download_protocol"], "https");
    cancel(&app, key, id).await;
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "download_protocol": "https"}),
    )
    .await;
    assert_eq!(rollout(&app, key, id).await["download_protocol"], "https");
    let list = get(&app, key, &format!("/v1/rollouts?package_id={}", f.package)).await;
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["download_protocol"] == "https"));
    cancel(&app, key, id).await;
    refused(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "download_protocol": "ftp"}),
        "download_protocol",
    )
    .await;

    // mqtt: one file of at most 16 MB only
    let mqtt = json!({"scope": {"kind": "all"}, "download_protocol": "mqtt"});
    let message = |package: i64| {
        let body = mqtt.clone();
        let app = &app;
        async move {
            let r = post(app, key, &format!("/v1/packages/{package}/rollouts"), body).await;
            r.expect(400);
            assert_eq!(r.json()["field"], "download_protocol");
            r.json()["message"].as_str().unwrap().to_owned()
        }
    };
    for package in [two, big] {
        let m = message(package).await;
        assert!(m.contains("exactly one file of at most 16 MB"), "{m}");
    }
    // 16 MiB exactly passes the size rule, and so does the fleet's 1 KB file, but the
    // server refuses MQTT downloads altogether (the gap described above)
    for package in [at_limit, f.package] {
        let m = message(package).await;
        assert!(m.contains("not supported"), "{m}");
    }
}

/// The tags at every upper limit at once: 10 tags, a key of 30 characters (letters, digits
/// and `.`), a value of 1024, 4096 characters in all; and a key and value of one character.
fn tags_at_the_limits() -> serde_json::Map<String, Value> {
    let mut t = serde_json::Map::new();
    t.insert("k".into(), json!("v"));
    t.insert(
        "abcdefghij.0123456789.ABCDEFGH".into(),
        json!("x".repeat(1024)),
    );
    for i in 0..8 {
        t.insert(format!("t{i}"), json!("y".repeat(378)));
    }
    let total: usize = t
        .iter()
        .map(|(k, v)| k.chars().count() + v.as_str().unwrap().chars().count())
        .sum();
    assert_eq!((t.len(), total), (10, 4096));
    t
}

/// The next push a device receives (Link Kit upgrade topic), as JSON.
async fn next_push(
    rx: &mut mpsc::UnboundedReceiver<rumqttc::Publish>,
    pk: &str,
    name: &str,
) -> Value {
    let topic = format!("/ota/device/upgrade/{pk}/{name}");
    loop {
        let p = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no push to {name} in time"))
            .expect("the connection stays open");
        if p.topic == topic {
            return serde_json::from_slice(&p.payload).unwrap();
        }
    }
}

/// Device secrets by name, from the product's credentials export.
async fn secrets<S, B>(
    app: &S,
    key: &str,
    product: i64,
) -> std::collections::HashMap<String, String>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(
        app,
        Some(key),
        "GET",
        &format!("/v1/products/{product}/devices/credentials.csv"),
        None,
    )
    .await;
    r.expect(200);
    r.text()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(n, s)| (n.to_owned(), s.to_owned()))
        .collect()
}

// SPEC R15: tags past any limit (11 tags, a key of 31 characters or with other characters,
// an empty key or value, a value of 1025, 4097 characters in all) are refused naming the
// field, at creation and on change; tags at every limit are taken and read back, and the
// push a device receives carries them (Link Kit extData); they change while the rollout
// runs, and a push after the change carries the new tags.
async fn tags_are_limited_pushed_and_changed_while_running(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 2, false, true).await;
    let product = product_of(&app, key, f.package).await;
    let with = |tags: Value| json!({"scope": {"kind": "all"}, "tags": tags});
    let max = tags_at_the_limits();

    let mut eleven = max.clone();
    eleven.insert("z".into(), json!("1"));
    let mut over_total = max.clone();
    over_total.insert("t0".into(), json!("y".repeat(379)));
    let long_key = "a".repeat(31);
    let long_value = "v".repeat(1025);
    for (tags, field) in [
        (Value::Object(eleven.clone()), "tags".to_owned()),
        (Value::Object(over_total), "tags".to_owned()),
        (json!({ long_key.clone(): "1" }), format!("tags.{long_key}")),
        (json!({"bad-key": "1"}), "tags.bad-key".to_owned()),
        (json!({"bad key": "1"}), "tags.bad key".to_owned()),
        (json!({"": "1"}), "tags.".to_owned()),
        (json!({"k": ""}), "tags.k".to_owned()),
        (json!({ "k": long_value }), "tags.k".to_owned()),
    ] {
        refused(&app, key, f.package, with(tags), &field).await;
    }

    let id = create(&app, key, f.package, with(Value::Object(max.clone()))).await;
    assert_eq!(
        rollout(&app, key, id).await["tags"],
        Value::Object(max.clone())
    );
    // both devices are offline: their tasks are released and wait for them
    advance(&app, key, 1).await;
    assert_eq!(count(&app, key, id, "pending").await, 2);

    // d0 connects and is pushed the package with the tags
    let port = e.gateway.embedded.as_ref().unwrap().tcp_addr.port();
    let secret = secrets(&app, key, product).await;
    let (_d0, mut rx0) = raw_alink_client(&f.product_key, port, "d00000", &secret["d00000"]).await;
    let push = next_push(&mut rx0, &f.product_key, "d00000").await;
    assert_eq!(push["data"]["version"], "2.0.0", "{push}");
    assert_eq!(push["data"]["extData"], Value::Object(max.clone()));
    assert_eq!(task_row(&e, id, f.devices[0]).await.0, "pushed");

    // the tags change while the rollout runs, by the same rules
    let r = patch_rollout(&app, key, id, json!({"tags": eleven})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "tags");
    let r = patch_rollout(&app, key, id, json!({"tags": {"bad key": "x"}})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "tags.bad key");
    let r = patch_rollout(&app, key, id, json!({"tags": {"campaign": "summer"}})).await;
    r.expect(200);
    assert_eq!(r.json()["state"], "running");
    assert_eq!(r.json()["tags"], json!({"campaign": "summer"}));

    // d1 connects after the change: its push carries the new tags
    let (_d1, mut rx1) = raw_alink_client(&f.product_key, port, "d00001", &secret["d00001"]).await;
    let push = next_push(&mut rx1, &f.product_key, "d00001").await;
    assert_eq!(
        push["data"]["extData"],
        json!({"campaign": "summer"}),
        "{push}"
    );
    assert_eq!(task_row(&e, id, f.devices[1]).await.0, "pushed");
}
