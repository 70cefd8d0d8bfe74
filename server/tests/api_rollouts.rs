//! Rollouts and tasks through the HTTP API on SQLite and PostgreSQL: every scope, the
//! seed rules that need the database (B2, B10, P2, R10, R11), status, cancel, re-run,
//! confirm, audit, and the P3 guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::TestRequest;
use common::*;
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

db_tests!(
    scope_all_takes_the_product_filtered_by_source_version_never_the_target,
    selected_unknown_names_refuse_everything_and_list_them,
    phased_takes_the_floor_of_the_percentage,
    group_scope_includes_subgroups,
    a_groups_dynamic_rollouts_keep_its_override_and_multi_module_settings,
    attribute_value_range_tag_and_asset_tree_scopes,
    one_open_dynamic_rollout_per_package,
    source_version_rules_through_the_api,
    override_and_multi_module_against_existing_tasks,
    app_confirmation_and_confirm_many,
    type_follows_status_p2_refusal_and_start_by_hand,
    cancel_whole_strategy_by_state_and_by_device,
    status_counts_lists_paging_and_csv,
    rerun_failed_tasks,
    audit_records_cause_and_key_without_a_row_per_created_task,
    package_with_unfinished_rollout_is_kept_and_files_frozen,
    every_option_rule_answers_400_naming_the_field,
    scope_queries_use_indexes,
);

struct Fx {
    product: i64,
    package: i64,
    devices: Vec<i64>,
}

async fn post<S, B>(app: &S, key: &str, path: &str, body: Value) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    call(app, Some(key), "POST", path, Some(body)).await
}

/// A product with `versions.len()` devices `d0…` reporting those versions of `default`
/// (`""`: never reported) and a full package 2.0 marked no_need.
async fn fixture<S, B>(app: &S, key: &str, versions: &[&str]) -> Fx
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let product = create_product(app, key, "cam", "alink").await;
    let mut devices = vec![];
    for (i, v) in versions.iter().enumerate() {
        let r = post(
            app,
            key,
            &format!("/v1/products/{product}/devices"),
            json!({"name": format!("d{i}")}),
        )
        .await;
        r.expect(201);
        let id = r.json()["id"].as_i64().unwrap();
        if !v.is_empty() {
            post(
                app,
                key,
                &format!("/v1/devices/{id}/versions"),
                json!({"version": v}),
            )
            .await
            .expect(200);
        }
        devices.push(id);
    }
    let package = package(app, key, product, "2.0", None).await;
    Fx {
        product,
        package,
        devices,
    }
}

async fn package<S, B>(app: &S, key: &str, product: i64, version: &str, module: Option<&str>) -> i64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut body = json!({"version": version});
    if let Some(m) = module {
        body["module"] = json!(m);
    }
    let r = post(app, key, &format!("/v1/products/{product}/packages"), body).await;
    r.expect(201);
    let id = r.json()["id"].as_i64().unwrap();
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

async fn create<S, B>(app: &S, key: &str, package: i64, body: Value) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    post(app, key, &format!("/v1/packages/{package}/rollouts"), body).await
}

/// Device names of a rollout's tasks, in task order.
async fn task_devices<S, B>(app: &S, key: &str, rollout: i64, state: Option<&str>) -> Vec<String>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let q = state.map(|s| format!("?state={s}")).unwrap_or_default();
    let r = call(
        app,
        Some(key),
        "GET",
        &format!("/v1/rollouts/{rollout}/tasks{q}"),
        None,
    )
    .await;
    r.expect(200);
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["device_name"].as_str().unwrap().to_owned())
        .collect()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// SPEC B4 and B10: scope all = the product's devices matching the source filter, never a
// device already on the target; devices of another product never.
async fn scope_all_takes_the_product_filtered_by_source_version_never_the_target(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.1", "2.0", ""]).await;
    // another product's device on 1.0 stays out
    let other = create_product(&app, &t.admin, "other", "alink").await;
    let o = post(
        &app,
        &t.admin,
        &format!("/v1/products/{other}/devices"),
        json!({"name": "x"}),
    )
    .await
    .json();
    post(
        &app,
        &t.admin,
        &format!("/v1/devices/{}/versions", o["id"]),
        json!({"version": "1.0"}),
    )
    .await
    .expect(200);

    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}, "source_versions": ["1.0"]}),
    )
    .await;
    r.expect(201);
    let r = r.json();
    assert_eq!(r["state"], "running");
    assert_eq!(r["tasks_created"], 1);
    assert_eq!(r["counts"]["waiting"], 1);
    assert_eq!(
        task_devices(&app, &t.admin, r["id"].as_i64().unwrap(), None).await,
        names(&["d0"])
    );

    // without a filter: every device but the one on 2.0 (d1 has no open task in the
    // first rollout, d0 has one and is kept out: R11 default)
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}}),
    )
    .await;
    r.expect(201);
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(
        task_devices(&app, &t.admin, id, None).await,
        names(&["d1", "d3"])
    );
}

// SPEC B5: inline and CSV lists; an unknown name refuses everything, listed (JSON and CSV);
// the template is downloadable.
async fn selected_unknown_names_refuse_everything_and_list_them(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0", "1.0"]).await;
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "selected", "device_names": ["d0", "nope", "d2", "zz"]}}),
    )
    .await;
    r.expect(422);
    assert_eq!(r.json()["code"], "unknown_devices");
    assert_eq!(r.json()["names"], json!(["nope", "zz"]));
    assert_eq!(r.json()["total"], 2);
    let list = call(&app, Some(&t.admin), "GET", "/v1/rollouts", None)
        .await
        .json();
    assert_eq!(list["items"], json!([]), "nothing was created");

    let tpl = call(
        &app,
        Some(&t.admin),
        "GET",
        "/v1/device-lists/template.csv",
        None,
    )
    .await;
    tpl.expect(200);
    assert!(tpl.text().starts_with("deviceName\n"));

    let path = format!("/v1/products/{}/device-lists", fx.product);
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "text/csv",
        "deviceName\nd0\nbad1\nd1\nbad2\n",
    )
    .await;
    r.expect(422);
    assert_eq!(r.json()["names"], json!(["bad1", "bad2"]));
    let req = TestRequest::post()
        .uri(&path)
        .insert_header(("Authorization", format!("Bearer {}", t.admin)))
        .insert_header(("Content-Type", "text/csv"))
        .insert_header(("Accept", "text/csv"))
        .set_payload("deviceName\nd0\nbad1\n");
    let r = send(&app, req).await;
    r.expect(422);
    assert_eq!(r.text(), "deviceName\nbad1\n");

    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "text/csv",
        "deviceName\nd0\nd2\nd0\n",
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["devices"], 2);
    let list = r.json()["id"].as_i64().unwrap();
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "selected", "device_list_id": list}}),
    )
    .await;
    r.expect(201);
    assert_eq!(
        task_devices(&app, &t.admin, r.json()["id"].as_i64().unwrap(), None).await,
        names(&["d0", "d2"])
    );
    // a bad name in the CSV names its row
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "text/csv",
        "deviceName\nd0\nbad name\n",
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "row 2");
}

// SPEC B6
async fn phased_takes_the_floor_of_the_percentage(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0"; 7]).await;
    let all: Vec<String> = (0..7).map(|i| format!("d{i}")).collect();
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "phased", "device_names": all, "percent": 50}}),
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["tasks_created"], 3, "floor(7 × 50 / 100)");
    let r = create(&app, &t.admin, fx.package, json!({"method": "dynamic", "source_versions": ["1.0"], "scope": {"kind": "phased", "device_names": ["d0"], "percent": 50}})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "scope.kind");
}

// SPEC B7
async fn group_scope_includes_subgroups(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0", "1.0"]).await;
    let g = post(&app, &t.admin, "/v1/groups", json!({"name": "top"}))
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    let sub = post(
        &app,
        &t.admin,
        "/v1/groups",
        json!({"name": "sub", "parent_id": g}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    post(
        &app,
        &t.admin,
        &format!("/v1/groups/{g}/devices"),
        json!({"device_ids": [fx.devices[0]]}),
    )
    .await
    .expect(200);
    post(
        &app,
        &t.admin,
        &format!("/v1/groups/{sub}/devices"),
        json!({"device_ids": [fx.devices[2]]}),
    )
    .await
    .expect(200);
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "group", "group_id": g}}),
    )
    .await;
    r.expect(201);
    assert_eq!(
        task_devices(&app, &t.admin, r.json()["id"].as_i64().unwrap(), None).await,
        names(&["d0", "d2"])
    );
    // a foreign or unknown group is 404
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "group", "group_id": 999_999}}),
    )
    .await;
    r.expect(404);
}

// Part of R11 and B7: a group scope may be dynamic, and a group's new dynamic rollout must
// use the multi-module and override settings of the group's open one.
async fn a_groups_dynamic_rollouts_keep_its_override_and_multi_module_settings(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0"]).await;
    let g = post(&app, &t.admin, "/v1/groups", json!({"name": "fleet"}))
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    post(
        &app,
        &t.admin,
        &format!("/v1/groups/{g}/devices"),
        json!({"device_ids": [fx.devices[0]]}),
    )
    .await
    .expect(200);
    let dynamic = |override_previous: bool| {
        json!({"method": "dynamic", "scope": {"kind": "group", "group_id": g},
               "source_versions": ["1.0"], "override_previous": override_previous})
    };
    let first = create(&app, &t.admin, fx.package, dynamic(false)).await;
    first.expect(201);
    let first_id = first.json()["id"].as_i64().unwrap();
    assert_eq!(
        task_devices(&app, &t.admin, first_id, None).await,
        names(&["d0"])
    );
    // another package's dynamic rollout of the same group, with other settings
    let other = package(&app, &t.admin, fx.product, "3.0", None).await;
    let r = create(&app, &t.admin, other, dynamic(true)).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "multi_module");
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains(&format!("dynamic rollout {first_id}")),
        "{msg}"
    );
    // the same settings are fine
    create(&app, &t.admin, other, dynamic(false))
        .await
        .expect(201);
}

// SPEC B8
async fn attribute_value_range_tag_and_asset_tree_scopes(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0", "1.0", "1.0"]).await;
    let d = &fx.devices;
    for (i, temp) in ["5", "12.5", "abc", "20"].iter().enumerate() {
        call(
            &app,
            Some(&t.admin),
            "PUT",
            &format!("/v1/devices/{}/attributes", d[i]),
            Some(json!({"temp": temp, "site": format!("s{}", i % 2)})),
        )
        .await
        .expect(200);
        call(
            &app,
            Some(&t.admin),
            "PUT",
            &format!("/v1/devices/{}/tags", d[i]),
            Some(json!({"env": if i < 2 {"prod"} else {"lab"}})),
        )
        .await
        .expect(200);
    }
    let run = |scope: Value| {
        let app = &app;
        let key = t.admin.clone();
        let pkg = fx.package;
        async move {
            let r = create(app, &key, pkg, json!({"scope": scope})).await;
            r.expect(201);
            let id = r.json()["id"].as_i64().unwrap();
            let got = task_devices(app, &key, id, None).await;
            // free the devices for the next scope (R11: an open task keeps a device out)
            post(app, &key, &format!("/v1/rollouts/{id}/cancel"), json!({}))
                .await
                .expect(200);
            got
        }
    };
    assert_eq!(
        run(json!({"kind": "attribute", "name": "temp", "min": 10, "max": 20})).await,
        names(&["d1", "d3"])
    );
    assert_eq!(
        run(json!({"kind": "attribute", "name": "site", "values": ["s0"]})).await,
        names(&["d0", "d2"])
    );
    assert_eq!(
        run(json!({"kind": "tag", "key": "env", "values": ["prod", "x"]})).await,
        names(&["d0", "d1"])
    );
    let tree = post(&app, &t.admin, "/v1/asset-trees", json!({"name": "plant"}))
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    let root = post(
        &app,
        &t.admin,
        &format!("/v1/asset-trees/{tree}/nodes"),
        json!({"name": "root"}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    let leaf = post(
        &app,
        &t.admin,
        &format!("/v1/asset-trees/{tree}/nodes"),
        json!({"name": "leaf", "parent_id": root}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    post(
        &app,
        &t.admin,
        &format!("/v1/asset-nodes/{leaf}/devices"),
        json!({"device_ids": [d[3]]}),
    )
    .await
    .expect(200);
    post(
        &app,
        &t.admin,
        &format!("/v1/asset-nodes/{root}/devices"),
        json!({"device_ids": [d[1]]}),
    )
    .await
    .expect(200);
    assert_eq!(
        run(json!({"kind": "asset_nodes", "node_ids": [root]})).await,
        names(&["d1", "d3"])
    );
    // more than 5 trees is refused
    let mut nodes = vec![];
    for i in 0..6 {
        let tr = post(
            &app,
            &t.admin,
            "/v1/asset-trees",
            json!({"name": format!("t{i}")}),
        )
        .await
        .json()["id"]
            .as_i64()
            .unwrap();
        nodes.push(
            post(
                &app,
                &t.admin,
                &format!("/v1/asset-trees/{tr}/nodes"),
                json!({"name": "n"}),
            )
            .await
            .json()["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "asset_nodes", "node_ids": nodes}}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "scope.node_ids");
}

// SPEC B2: a second open dynamic rollout is refused naming the first; after the first's
// strategy is cancelled another may be created.
async fn one_open_dynamic_rollout_per_package(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0"]).await;
    let body = json!({"method": "dynamic", "source_versions": ["1.0"], "scope": {"kind": "all"}});
    let first = create(&app, &t.admin, fx.package, body.clone()).await;
    first.expect(201);
    let first = first.json()["id"].as_i64().unwrap();
    let r = create(&app, &t.admin, fx.package, body.clone()).await;
    r.expect(409);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains(&format!("rollout {first}")),
        "{}",
        r.text()
    );
    let s = post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{first}/cancel-strategy"),
        json!({}),
    )
    .await;
    s.expect(200);
    assert_eq!(s.json()["strategy_cancelled"], true);
    assert_eq!(s.json()["state"], "running", "existing tasks go on");
    create(&app, &t.admin, fx.package, body).await.expect(201);
}

// Part of B9 (the creation rules; changing a running dynamic rollout's versions is the
// scheduler issue's)
async fn source_version_rules_through_the_api(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.5"]).await;
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"method": "dynamic", "scope": {"kind": "all"}}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_versions");
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"source_versions": ["1.0"], "scope": {"kind": "selected", "device_names": ["d0"]}}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_versions");
    let diff = post(
        &app,
        &t.admin,
        &format!("/v1/products/{}/packages", fx.product),
        json!({"version": "2.1", "kind": "diff", "source_version": "1.5"}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    let r = create(
        &app,
        &t.admin,
        diff,
        json!({"source_versions": ["1.0"], "scope": {"kind": "all"}}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_versions");
    let r = create(
        &app,
        &t.admin,
        diff,
        json!({"scope": {"kind": "all"}, "type": "verification"}),
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["source_versions"], json!(["1.5"]));
    assert_eq!(
        task_devices(&app, &t.admin, r.json()["id"].as_i64().unwrap(), None).await,
        names(&["d1"])
    );
}

// SPEC R10, R11: override on: earlier not-started tasks cancelled; off: such devices
// skipped (the group rule is proved by
// a_groups_dynamic_rollouts_keep_its_override_and_multi_module_settings); multi-module: only
// the same module's earlier not-started tasks are replaced, another module's stay; the two
// cannot both be on.
async fn override_and_multi_module_against_existing_tasks(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0"]).await;
    let a = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "selected", "device_names": ["d0"]}}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    let p2 = package(&app, &t.admin, fx.product, "3.0", None).await;
    // no override: d0 has an open task and gets none
    let b = create(&app, &t.admin, p2, json!({"scope": {"kind": "all"}})).await;
    b.expect(201);
    let b = b.json()["id"].as_i64().unwrap();
    assert_eq!(task_devices(&app, &t.admin, b, None).await, names(&["d1"]));
    // override: d0's task in A and d1's in B are cancelled, the new rollout takes both
    let p3 = package(&app, &t.admin, fx.product, "4.0", None).await;
    let c = create(
        &app,
        &t.admin,
        p3,
        json!({"scope": {"kind": "all"}, "override_previous": true}),
    )
    .await;
    c.expect(201);
    assert_eq!(c.json()["tasks_created"], 2);
    assert_eq!(
        task_devices(&app, &t.admin, a, Some("cancelled")).await,
        names(&["d0"])
    );
    assert_eq!(
        task_devices(&app, &t.admin, b, Some("cancelled")).await,
        names(&["d1"])
    );
    // multi-module: a task of module mcu leaves the default module's tasks alone
    let mcu = package(&app, &t.admin, fx.product, "9.0", Some("mcu")).await;
    let m = create(
        &app,
        &t.admin,
        mcu,
        json!({"scope": {"kind": "all"}, "multi_module": true}),
    )
    .await;
    m.expect(201);
    assert_eq!(m.json()["tasks_created"], 2);
    let c = c.json()["id"].as_i64().unwrap();
    assert_eq!(
        task_devices(&app, &t.admin, c, Some("waiting")).await,
        names(&["d0", "d1"])
    );
    // multi-module: a later task of the same module replaces the earlier not-started one
    let m = m.json()["id"].as_i64().unwrap();
    let mcu2 = package(&app, &t.admin, fx.product, "9.1", Some("mcu")).await;
    let m2 = create(
        &app,
        &t.admin,
        mcu2,
        json!({"scope": {"kind": "all"}, "multi_module": true}),
    )
    .await;
    m2.expect(201);
    assert_eq!(m2.json()["tasks_created"], 2);
    assert_eq!(
        task_devices(&app, &t.admin, m, Some("cancelled")).await,
        names(&["d0", "d1"])
    );
    assert_eq!(
        task_devices(&app, &t.admin, c, Some("waiting")).await,
        names(&["d0", "d1"]),
        "the default module's tasks stay"
    );
    let r = create(
        &app,
        &t.admin,
        mcu,
        json!({"scope": {"kind": "all"}, "multi_module": true, "override_previous": true}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "override_previous");
}

// SPEC R13
async fn app_confirmation_and_confirm_many(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0", "1.0"]).await;
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}, "app_confirm": true}),
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["counts"]["confirming"], 3);
    let id = r.json()["id"].as_i64().unwrap();
    let tasks = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}/tasks"),
        None,
    )
    .await
    .json();
    let ids: Vec<i64> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    let c = post(
        &app,
        &t.admin,
        "/v1/tasks/confirm",
        json!({"task_ids": ids}),
    )
    .await;
    c.expect(200);
    assert_eq!(c.json()["tasks"], 2);
    // again: nothing left to confirm among them
    assert_eq!(
        post(
            &app,
            &t.admin,
            "/v1/tasks/confirm",
            json!({"task_ids": ids})
        )
        .await
        .json()["tasks"],
        0
    );
    let g = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}"),
        None,
    )
    .await
    .json();
    assert_eq!(
        (
            g["counts"]["confirming"].as_u64(),
            g["counts"]["waiting"].as_u64()
        ),
        (Some(1), Some(2))
    );
    // another tenant's key confirms nothing
    let other = t.other_tenant("globex").await;
    assert_eq!(
        post(
            &app,
            &other,
            "/v1/tasks/confirm",
            json!({"task_ids": [tasks["items"][2]["id"]]})
        )
        .await
        .json()["tasks"],
        0
    );
}

// SPEC R17 (type by status, start on creation or by hand) and P2 (a product requiring
// verification refuses an update rollout of an unverified package).
async fn type_follows_status_p2_refusal_and_start_by_hand(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0"]).await;
    call(
        &app,
        Some(&t.admin),
        "PATCH",
        &format!("/v1/products/{}", fx.product),
        Some(json!({"require_verification": true})),
    )
    .await
    .expect(200);
    let unverified = post(
        &app,
        &t.admin,
        &format!("/v1/products/{}/packages", fx.product),
        json!({"version": "5.0"}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    let r = create(
        &app,
        &t.admin,
        unverified,
        json!({"scope": {"kind": "all"}, "type": "update"}),
    )
    .await;
    r.expect(409);
    assert!(
        r.json()["message"].as_str().unwrap().contains("verif"),
        "{}",
        r.text()
    );
    let r = create(
        &app,
        &t.admin,
        unverified,
        json!({"scope": {"kind": "all"}, "start_on_creation": false}),
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["type"], "verification");
    assert_eq!(r.json()["state"], "draft");
    let id = r.json()["id"].as_i64().unwrap();
    let s = post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{id}/start"),
        json!({}),
    )
    .await;
    s.expect(200);
    assert_eq!(s.json()["state"], "running");
    post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{id}/start"),
        json!({}),
    )
    .await
    .expect(409);
    // no_need package: update by default
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}, "override_previous": true}),
    )
    .await;
    assert_eq!(r.json()["type"], "update");
}

/// Sets a task's state directly (no API moves tasks into pushed/in_progress/failed
/// before the scheduler exists).
async fn set_task_state(t: &TestCtx, rollout: i64, device: i64, state: &str) {
    t.store
        .raw_connection()
        .execute_unprepared(&format!("UPDATE task SET state = '{state}' WHERE rollout_id = {rollout} AND device_id = {device}"))
        .await
        .unwrap();
}

// Part of O1: the four cancel forms (that a later success report on a cancelled in-progress
// task is still recorded needs device events, which come with the scheduler).
async fn cancel_whole_strategy_by_state_and_by_device(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0", "1.0", "1.0"]).await;
    let id = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    set_task_state(&t, id, fx.devices[0], "in_progress").await;
    set_task_state(&t, id, fx.devices[1], "succeeded").await;
    set_task_state(&t, id, fx.devices[2], "pushed").await;
    // by state, in_progress included
    let r = post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{id}/tasks/cancel"),
        json!({"states": ["in_progress"]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["tasks"], 1);
    assert_eq!(
        task_devices(&app, &t.admin, id, Some("cancelled")).await,
        names(&["d0"])
    );
    let r = post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{id}/tasks/cancel"),
        json!({"states": ["succeeded"]}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "states");
    // a package's not-started tasks of given devices
    let r = post(
        &app,
        &t.admin,
        &format!("/v1/packages/{}/tasks/cancel", fx.package),
        json!({"device_ids": [fx.devices[2], fx.devices[1]]}),
    )
    .await;
    r.expect(200);
    assert_eq!(
        r.json()["tasks"],
        1,
        "d2 pushed is cancelled, d1 succeeded stays"
    );
    // whole rollout
    let r = post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{id}/cancel"),
        json!({}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["state"], "cancelled");
    assert_eq!(r.json()["counts"]["cancelled"], 3);
    assert_eq!(r.json()["counts"]["succeeded"], 1);
    post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{id}/cancel"),
        json!({}),
    )
    .await
    .expect(409);
    // strategy of a static rollout: refused
    let s = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{s}/cancel-strategy"),
        json!({}),
    )
    .await
    .expect(409);
}

// Part of O2: counts, success rate and progress; task lists per rollout, device and package,
// filtered and paged; CSV export (a task's progress and last device message come with the
// scheduler's device events).
async fn status_counts_lists_paging_and_csv(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0", "1.0", "1.0"]).await;
    let id = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    set_task_state(&t, id, fx.devices[0], "succeeded").await;
    set_task_state(&t, id, fx.devices[1], "failed").await;
    let g = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}"),
        None,
    )
    .await
    .json();
    assert_eq!(g["counts"]["succeeded"], 1);
    assert_eq!(g["counts"]["waiting"], 2);
    assert_eq!(g["success_rate"], 0.5);
    assert_eq!(g["progress"], 0.5);
    let p1 = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}/tasks?limit=3"),
        None,
    )
    .await
    .json();
    assert_eq!(p1["items"].as_array().unwrap().len(), 3);
    let cur = p1["next_cursor"].as_str().unwrap();
    let p2 = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}/tasks?limit=3&cursor={cur}"),
        None,
    )
    .await
    .json();
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert!(p2.get("next_cursor").is_none());
    assert_eq!(
        task_devices(&app, &t.admin, id, Some("waiting")).await,
        names(&["d2", "d3"])
    );
    let r = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}/tasks?state=done"),
        None,
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "state");
    let dev = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/devices/{}/tasks", fx.devices[0]),
        None,
    )
    .await
    .json();
    assert_eq!(dev["items"][0]["state"], "succeeded");
    let pk = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/packages/{}/tasks?state=failed", fx.package),
        None,
    )
    .await
    .json();
    assert_eq!(pk["items"].as_array().unwrap().len(), 1);
    let csv = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}/tasks.csv?state=waiting"),
        None,
    )
    .await;
    csv.expect(200);
    let lines: Vec<&str> = csv
        .text()
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(lines.len(), 3, "{}", csv.text());
    assert!(lines[0].starts_with("task_id,"));
    assert!(lines[1].contains(",d2,waiting,"));
    let csv = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/packages/{}/tasks.csv", fx.package),
        None,
    )
    .await;
    assert_eq!(csv.text().lines().count(), 5);
    let list = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts?package_id={}&state=running", fx.package),
        None,
    )
    .await
    .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

// SPEC O3
async fn rerun_failed_tasks(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0"]).await;
    let id = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    set_task_state(&t, id, fx.devices[0], "failed").await;
    set_task_state(&t, id, fx.devices[1], "succeeded").await;
    let r = post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{id}/tasks/rerun-failed"),
        json!({}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["tasks"], 1);
    assert_eq!(
        task_devices(&app, &t.admin, id, Some("waiting")).await,
        names(&["d0"])
    );
    assert_eq!(
        task_devices(&app, &t.admin, id, Some("succeeded")).await,
        names(&["d1"])
    );
}

// Part of O4: changes made through the API are recorded with cause and key; creating N
// tasks writes one rollout event, not N task events (device, timer and policy causes come
// with the scheduler).
async fn audit_records_cause_and_key_without_a_row_per_created_task(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0", "1.0", "1.0"]).await;
    let id = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}, "app_confirm": true}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    let n: i64 = {
        use sea_orm::{FromQueryResult, Statement};
        #[derive(FromQueryResult)]
        struct N {
            n: i64,
        }
        N::find_by_statement(Statement::from_string(
            t.store.backend(),
            "SELECT COUNT(*) AS n FROM task_event",
        ))
        .one(t.store.raw_connection())
        .await
        .unwrap()
        .unwrap()
        .n
    };
    assert_eq!(n, 0, "creation writes no task events");
    let ev = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}/events"),
        None,
    )
    .await
    .json();
    let e = &ev["items"][0];
    assert_eq!(
        (
            e["event"].as_str(),
            e["tasks"].as_u64(),
            e["cause"].as_str()
        ),
        (Some("created"), Some(3), Some("api"))
    );
    assert!(e["actor"].as_str().unwrap().starts_with("key:"));
    let tasks = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}/tasks"),
        None,
    )
    .await
    .json();
    let task = tasks["items"][0]["id"].as_i64().unwrap();
    post(
        &app,
        &t.admin,
        "/v1/tasks/confirm",
        json!({"task_ids": [task]}),
    )
    .await
    .expect(200);
    post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{id}/cancel"),
        json!({}),
    )
    .await
    .expect(200);
    let te = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}/events?task_id={task}"),
        None,
    )
    .await
    .json();
    let steps: Vec<(String, String)> = te["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from_state"].as_str().unwrap().into(),
                e["to_state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("confirming".into(), "waiting".into()),
            ("waiting".into(), "cancelled".into())
        ]
    );
    assert_eq!(te["items"][1]["cause"], "api");
    let ev = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/rollouts/{id}/events"),
        None,
    )
    .await
    .json();
    assert_eq!(ev["items"][1]["event"], "cancel");
    assert_eq!(ev["items"][1]["tasks"], 3);
}

// SPEC P3 (an unfinished rollout keeps its package; a finished one lets it go) and files
// frozen once a rollout uses the package.
async fn package_with_unfinished_rollout_is_kept_and_files_frozen(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0"]).await;
    let id = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": {"kind": "all"}}),
    )
    .await
    .json()["id"]
        .as_i64()
        .unwrap();
    let r = call(
        &app,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/packages/{}", fx.package),
        None,
    )
    .await;
    r.expect(409);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains(&format!("rollout {id}")));
    let f = call_raw(
        &app,
        Some(&t.admin),
        "PUT",
        &format!("/v1/packages/{}/files/fw.bin", fx.package),
        "application/octet-stream",
        b"x".to_vec(),
    )
    .await;
    f.expect(409);
    assert!(f.json()["message"].as_str().unwrap().contains("frozen"));
    post(
        &app,
        &t.admin,
        &format!("/v1/rollouts/{id}/cancel"),
        json!({}),
    )
    .await
    .expect(200);
    call(
        &app,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/packages/{}", fx.package),
        None,
    )
    .await
    .expect(204);
}

// Every option rule through the API: the wrong value answers 400 naming the field.
async fn every_option_rule_answers_400_naming_the_field(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let fx = fixture(&app, &t.admin, &["1.0"]).await;
    let all = json!({"kind": "all"});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"method": "sometimes"}), "method"),
        (json!({"type": "x"}), "type"),
        (json!({"scope": {"kind": "nearby"}}), "scope.kind"),
        (
            json!({"scope": {"kind": "all", "percent": 5}}),
            "scope.percent",
        ),
        (
            json!({"scope": {"kind": "phased", "device_names": ["d0"], "percent": 0}}),
            "scope.percent",
        ),
        (
            json!({"scope": {"kind": "phased", "device_names": ["d0"], "percent": 101}}),
            "scope.percent",
        ),
        (
            json!({"scope": {"kind": "selected", "device_names": []}}),
            "scope.device_names",
        ),
        (
            json!({"scope": {"kind": "attribute", "name": "t", "min": 3, "max": 1}}),
            "scope.min",
        ),
        (
            json!({"scope": {"kind": "tag", "key": "k", "values": []}}),
            "scope.values",
        ),
        (
            json!({"rate": {"kind": "constant", "per_minute": 9}}),
            "rate.per_minute",
        ),
        (
            json!({"rate": {"kind": "constant", "per_minute": 10001}}),
            "rate.per_minute",
        ),
        (
            json!({"rate": {"kind": "variable", "base": 0, "factor": 2, "max": 100, "threshold": 10}}),
            "rate.base",
        ),
        (
            json!({"rate": {"kind": "variable", "base": 200, "factor": 2, "max": 100, "threshold": 10}}),
            "rate.base",
        ),
        (
            json!({"rate": {"kind": "variable", "base": 5, "factor": 1.19, "max": 100, "threshold": 10}}),
            "rate.factor",
        ),
        (
            json!({"rate": {"kind": "variable", "base": 5, "factor": 5.01, "max": 100, "threshold": 10}}),
            "rate.factor",
        ),
        (
            json!({"rate": {"kind": "variable", "base": 5, "factor": 2, "max": 9, "threshold": 10}}),
            "rate.max",
        ),
        (
            json!({"rate": {"kind": "variable", "base": 5, "factor": 2, "max": 10001, "threshold": 10}}),
            "rate.max",
        ),
        (
            json!({"rate": {"kind": "variable", "base": 5, "factor": 2, "max": 100, "threshold": 0}}),
            "rate.threshold",
        ),
        (
            json!({"rate": {"kind": "variable", "base": 5, "factor": 2, "max": 100, "threshold": 100001}}),
            "rate.threshold",
        ),
        (
            json!({"rate": {"kind": "variable", "base": 5, "factor": 2, "max": 100, "threshold": 1, "count_on": "x"}}),
            "rate.count_on",
        ),
        (
            json!({"push_mode": "pull", "rate": {"kind": "constant", "per_minute": 100}}),
            "rate",
        ),
        (json!({"max_concurrency": 0}), "max_concurrency"),
        (
            json!({"retry": {"interval_minutes": 5, "max_retries": 1}}),
            "retry.interval_minutes",
        ),
        (
            json!({"retry": {"interval_minutes": 10, "max_retries": 3}}),
            "retry.max_retries",
        ),
        (
            json!({"retry": {"interval_minutes": 60, "max_retries": 1}, "timeout_minutes": 60}),
            "retry.interval_minutes",
        ),
        (json!({"timeout_minutes": 0}), "timeout_minutes"),
        (json!({"timeout_minutes": 1441}), "timeout_minutes"),
        (json!({"retry_timeouts": true}), "retry_timeouts"),
        (
            json!({"schedule": {"start_at": "2026-11-26T00:00:00Z"}}),
            "schedule.start_at",
        ),
        (
            json!({"schedule": {"start_at": "soon"}}),
            "schedule.start_at",
        ),
        (
            json!({"schedule": {"start_at": "2026-11-19T00:00:00Z", "end_at": "2026-11-19T00:30:00Z"}}),
            "schedule.end_at",
        ),
        (
            json!({"schedule": {"start_at": "2026-11-19T00:00:00Z", "end_at": "2026-12-20T00:00:00Z"}}),
            "schedule.end_at",
        ),
        (
            json!({"schedule": {"start_at": "2026-11-19T09:00:00Z", "end_at": "2026-11-20T17:00:00Z", "daily_repeat": true}}),
            "schedule.daily_repeat",
        ),
        (
            json!({"multi_module": true, "override_previous": true}),
            "override_previous",
        ),
        (json!({"only_new_reports": true}), "only_new_reports"),
        (json!({"download_protocol": "mqtt"}), "download_protocol"),
        (json!({"download_protocol": "ftp"}), "download_protocol"),
        (json!({"tags": {"bad_key": "v"}}), "tags.bad_key"),
        (json!({"tags": {"k": ""}}), "tags.k"),
        (json!({"name": ""}), "name"),
    ];
    for (patch, field) in cases {
        let mut body = json!({"scope": all});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = create(&app, &t.admin, fx.package, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{body}: {}", r.text());
    }
    // R14: the refusal says MQTT download is not supported yet
    let r = create(
        &app,
        &t.admin,
        fx.package,
        json!({"scope": all, "download_protocol": "mqtt", }),
    )
    .await;
    assert!(
        r.json()["message"].as_str().unwrap().contains("16 MB")
            || r.json()["message"]
                .as_str()
                .unwrap()
                .contains("not supported")
    );
    // a valid daily window and variable rate pass, the factor rounded to two decimals
    let r = create(&app, &t.admin, fx.package, json!({"scope": all, "schedule": {"start_at": "2026-11-19T09:00:00Z", "end_at": "2026-11-19T17:00:00Z", "daily_repeat": true}, "rate": {"kind": "variable", "base": 50, "factor": 2.004, "max": 10000, "threshold": 1000}})).await;
    r.expect(201);
    assert_eq!(r.json()["state"], "scheduled");
    assert_eq!(r.json()["rate"]["factor"], 2.0);
}

// The scope queries' plans use indexes on both backends (printed for the record).
async fn scope_queries_use_indexes(db: Db) {
    use sea_orm::{FromQueryResult, JsonValue, Statement};
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let _fx = fixture(&app, &t.admin, &["1.0"]).await;
    let (prefix, q) = match db {
        Db::Sqlite => (
            "EXPLAIN QUERY PLAN ",
            "SELECT COUNT(*) FROM task WHERE rollout_id = 1 GROUP BY state",
        ),
        Db::Postgres => (
            "EXPLAIN ",
            "SELECT COUNT(*) FROM task WHERE rollout_id = 1 GROUP BY state",
        ),
    };
    let store = t.store.clone();
    let plan_of = |sql: String| {
        let store = store.clone();
        async move {
            let rows = JsonValue::find_by_statement(Statement::from_string(store.backend(), sql))
                .all(store.raw_connection())
                .await
                .unwrap();
            format!("{rows:?}")
        }
    };
    if db == Db::Postgres {
        t.store
            .raw_connection()
            .execute_unprepared("SET enable_seqscan = off")
            .await
            .unwrap();
    }
    let plan = plan_of(format!("{prefix}{q}")).await;
    println!("{db:?} counts: {plan}");
    assert!(plan.contains("ix_task_rollout_state"), "{plan}");
    let q = "SELECT d.id FROM device d WHERE d.tenant_id = 1 AND d.product_id = 1 AND d.id IN \
             (SELECT device_id FROM device_module WHERE product_id = 1 AND module = 'default' AND version IN ('1.0')) \
             AND NOT EXISTS (SELECT 1 FROM device_module m WHERE m.device_id = d.id AND m.module = 'default' AND m.version = '2.0') \
             AND NOT EXISTS (SELECT 1 FROM task t WHERE t.device_id = d.id AND t.state IN ('waiting'))";
    let plan = plan_of(format!("{prefix}{q}")).await;
    println!("{db:?} scope all + source versions: {plan}");
    assert!(
        plan.contains("ix_device_module")
            || plan.contains("device_module_pkey")
            || plan.contains("sqlite_autoindex_device_module"),
        "{plan}"
    );
    assert!(plan.contains("ix_task_device"), "{plan}");
}
