//! Tenants, keys, roles, products and devices through the HTTP API, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use serde_json::json;

db_tests!(
    every_v1_call_needs_a_valid_bearer_key,
    roles_limit_what_a_key_may_do,
    other_tenants_ids_answer_404,
    products_validate_and_conflict_on_keys,
    devices_are_created_with_secrets_and_unique_names,
    csv_import_is_all_or_nothing_and_names_the_bad_rows,
    json_import_creates_devices,
    import_rejects_names_that_exist_already,
    import_with_a_bad_row_after_several_write_batches_leaves_nothing,
    import_row_limit_is_enforced,
    csv_import_refuses_extra_columns_and_sloppy_quotes,
    json_import_refuses_a_huge_element,
    version_reports_keep_current_and_history,
    credentials_export_lists_every_device,
    a_device_that_comes_and_goes_between_presence_writes_is_activated,
);

// The presence writer coalesces marks per device: one that connected and left before the
// next write is recorded as activated (its first connection), and offline.
async fn a_device_that_comes_and_goes_between_presence_writes_is_activated(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{p}/devices"),
        Some(json!({"name":"dev-1"})),
    )
    .await;
    r.expect(201);
    let id = r.json()["id"].as_i64().unwrap();
    let presence = ota_server::dispatch::presence::Presence::start(t.store.clone());
    // marked twice before the writer takes either (it cannot run: this task holds the thread)
    presence.mark(ota_server::domain::DeviceId(id), true, T0 + 1_000);
    presence.mark(ota_server::domain::DeviceId(id), false, T0 + 2_000);
    assert!(presence.flushed(std::time::Duration::from_secs(30)).await);
    let r = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/devices/{id}"),
        None,
    )
    .await;
    r.expect(200);
    let d = r.json();
    assert_eq!(d["online"], false, "{d}");
    assert!(d["activated_at"].is_string(), "{d}");
}

// SPEC M1
async fn every_v1_call_needs_a_valid_bearer_key(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let r = call(&app, None, "GET", "/v1/products", None).await;
    r.expect(401);
    assert_eq!(r.json()["code"], "unauthenticated");
    call(&app, Some("ota_0000"), "GET", "/v1/products", None)
        .await
        .expect(401);
    call(&app, Some(&t.admin), "GET", "/v1/products", None)
        .await
        .expect(200);
    // a revoked key stops working at once
    let k = call(
        &app,
        Some(&t.admin),
        "POST",
        "/v1/keys",
        Some(json!({"name":"ci","role":"viewer"})),
    )
    .await;
    k.expect(201);
    let (id, secret) = (
        k.json()["id"].as_i64().unwrap(),
        k.json()["secret"].as_str().unwrap().to_owned(),
    );
    call(&app, Some(&secret), "GET", "/v1/products", None)
        .await
        .expect(200);
    call(
        &app,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/keys/{id}"),
        None,
    )
    .await
    .expect(200);
    call(&app, Some(&secret), "GET", "/v1/products", None)
        .await
        .expect(401);
    // keys are stored hashed: the list shows a prefix, never the key
    let list = call(&app, Some(&t.admin), "GET", "/v1/keys", None).await;
    assert!(!list.text().contains(&secret));
    assert!(list.text().contains(&secret[..12]));
}

// SPEC M1
async fn roles_limit_what_a_key_may_do(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let mut keys = std::collections::HashMap::new();
    for role in ["operator", "viewer"] {
        let r = call(
            &app,
            Some(&t.admin),
            "POST",
            "/v1/keys",
            Some(json!({"name": role, "role": role})),
        )
        .await;
        r.expect(201);
        keys.insert(role, r.json()["secret"].as_str().unwrap().to_owned());
    }
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let body = json!({"name":"p2","protocol":"enos"});
    let r = call(
        &app,
        Some(&keys["viewer"]),
        "POST",
        "/v1/products",
        Some(body.clone()),
    )
    .await;
    r.expect(403);
    assert_eq!(r.json()["code"], "forbidden");
    call(
        &app,
        Some(&keys["operator"]),
        "POST",
        "/v1/products",
        Some(body),
    )
    .await
    .expect(403);
    call(
        &app,
        Some(&keys["operator"]),
        "POST",
        "/v1/keys",
        Some(json!({"name":"x","role":"admin"})),
    )
    .await
    .expect(403);
    // everyone reads
    for k in keys.values() {
        call(
            &app,
            Some(k),
            "GET",
            &format!("/v1/products/{product}"),
            None,
        )
        .await
        .expect(200);
    }
    // the last admin key cannot be revoked
    let list = call(&app, Some(&t.admin), "GET", "/v1/keys", None)
        .await
        .json();
    let admin_id = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "admin")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    call(
        &app,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/keys/{admin_id}"),
        None,
    )
    .await
    .expect(409);
}

// SPEC M1
async fn other_tenants_ids_answer_404(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let other = t.other_tenant("globex").await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    import_names(&app, &t.admin, product, &["dev-1"]).await;
    let dev = t
        .store
        .get_device_by_name(
            ota_server::domain::TenantId(1),
            ota_server::domain::ProductId(product),
            &ota_server::domain::DeviceName::parse("n", "dev-1").unwrap(),
        )
        .await
        .unwrap();
    for (m, path) in [
        ("GET", format!("/v1/products/{product}")),
        ("DELETE", format!("/v1/products/{product}")),
        ("GET", format!("/v1/devices/{}", dev.id)),
        ("DELETE", format!("/v1/devices/{}", dev.id)),
        ("GET", format!("/v1/devices/{}/versions", dev.id)),
    ] {
        let r = call(&app, Some(&other), m, &path, None).await;
        r.expect(404);
        assert_eq!(r.json()["code"], "not_found", "{m} {path}");
    }
    let r = call(
        &app,
        Some(&other),
        "POST",
        &format!("/v1/products/{product}/devices"),
        Some(json!({"name":"x"})),
    )
    .await;
    r.expect(404);
    let list = call(&app, Some(&other), "GET", "/v1/products", None)
        .await
        .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    // and the owner still has everything
    call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/devices/{}", dev.id),
        None,
    )
    .await
    .expect(200);
}

// SPEC D1, M2
async fn products_validate_and_conflict_on_keys(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        "/v1/products",
        Some(json!({"name":"A","protocol":"zigbee"})),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "protocol");
    assert!(r.json()["message"].as_str().unwrap().contains("zigbee"));
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        "/v1/products",
        Some(json!({"name":"A","protocol":"alink","product_key":"bad key"})),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "product_key");
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        "/v1/products",
        Some(json!({"name":"A","protocol":"alink","colour":"red"})),
    )
    .await;
    r.expect(400);
    assert!(r.json()["message"].as_str().unwrap().contains("colour"));
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        "/v1/products",
        Some(json!({"name":"A","protocol":"alink","product_key":"a1PK"})),
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["product_key"], "a1PK");
    // product keys are global: devices carry them without a tenant
    let other = t.other_tenant("globex").await;
    let r = call(
        &app,
        Some(&other),
        "POST",
        "/v1/products",
        Some(json!({"name":"B","protocol":"enos","product_key":"a1PK"})),
    )
    .await;
    r.expect(409);
    let gen = call(
        &app,
        Some(&t.admin),
        "POST",
        "/v1/products",
        Some(json!({"name":"C","protocol":"enos"})),
    )
    .await;
    gen.expect(201);
    assert_eq!(gen.json()["product_key"].as_str().unwrap().len(), 11);
    let id = gen.json()["id"].as_i64().unwrap();
    let r = call(
        &app,
        Some(&t.admin),
        "PATCH",
        &format!("/v1/products/{id}"),
        Some(json!({"require_verification": true})),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["require_verification"], true);
    // a product with devices is not deleted
    import_names(&app, &t.admin, id, &["d1"]).await;
    call(
        &app,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/products/{id}"),
        None,
    )
    .await
    .expect(409);
}

// SPEC D1
async fn devices_are_created_with_secrets_and_unique_names(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{p}/devices"),
        Some(json!({"name":"dev-1"})),
    )
    .await;
    r.expect(201);
    let d = r.json();
    assert_eq!(d["secret"].as_str().unwrap().len(), 32);
    assert_eq!(d["online"], false);
    assert!(d.get("activated_at").is_none());
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{p}/devices"),
        Some(json!({"name":"dev-1"})),
    )
    .await;
    r.expect(409);
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{p}/devices"),
        Some(json!({"name":"dev/1"})),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "name");
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{p}/devices"),
        Some(json!({"name":"dev-2","secret":"short"})),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "secret");
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{p}/devices"),
        Some(json!({"name":"dev-2","secret":"0123456789abcdef"})),
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["secret"], "0123456789abcdef");
    let id = r.json()["id"].as_i64().unwrap();
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/devices/{id}/secret"),
        None,
    )
    .await;
    r.expect(200);
    assert_ne!(r.json()["secret"], "0123456789abcdef");
    call(
        &app,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/devices/{id}"),
        None,
    )
    .await
    .expect(204);
    call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/devices/{id}"),
        None,
    )
    .await
    .expect(404);
}

// SPEC D1
async fn csv_import_is_all_or_nothing_and_names_the_bad_rows(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    let path = format!("/v1/products/{p}/devices/import");
    let bad = "DeviceName,DeviceSecret\nok-1,\nbad/name,\nok-2,tiny\nok-1,\n\"ok,3\",\n";
    let r = call_raw(&app, Some(&t.admin), "POST", &path, "text/csv", bad).await;
    r.expect(422);
    let j = r.json();
    assert_eq!(j["code"], "invalid_rows");
    assert_eq!(j["total"], 4);
    let rows: Vec<(i64, String)> = j["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_i64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (2, "name".into()),
            (3, "secret".into()),
            (4, "name".into()),
            (5, "name".into())
        ]
    );
    // nothing was written: the good rows are not there
    let creds = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/products/{p}/devices/credentials.csv"),
        None,
    )
    .await;
    creds.expect(200);
    assert_eq!(creds.text(), "name,secret\n");
    // a good file lands whole, given secrets kept
    let good = "name,secret\nok-1,\nok-2,secret-of-ok-2\n\n";
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "text/csv; charset=utf-8",
        good,
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["imported"], 2);
    let creds = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/products/{p}/devices/credentials.csv"),
        None,
    )
    .await
    .text();
    assert!(creds.contains("ok-2,secret-of-ok-2\n"), "{creds}");
    assert_eq!(creds.lines().count(), 3);
    // a header is required; unknown columns are named
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "text/csv",
        "name,colour\nx,red\n",
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "header");
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "text/plain",
        "name\nx\n",
    )
    .await;
    r.expect(415);
    let r = call_raw(&app, Some(&t.admin), "POST", &path, "text/csv", "name\n").await;
    r.expect(400);
}

// SPEC D1
async fn json_import_creates_devices(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "enos").await;
    let path = format!("/v1/products/{p}/devices/import");
    let body = json!([{"name":"j-1"},{"name":"j-2","secret":"abcdefgh12"}]).to_string();
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "application/json",
        body,
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["imported"], 2);
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "application/json",
        r#"[{"name":"j-3"},{"nme":"x"}]"#,
    )
    .await;
    r.expect(422);
    assert_eq!(r.json()["rows"][0]["row"], 2);
    assert!(r.json()["rows"][0]["message"]
        .as_str()
        .unwrap()
        .contains("nme"));
}

// SPEC D1
async fn import_rejects_names_that_exist_already(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    import_names(&app, &t.admin, p, &["a", "b"]).await;
    let path = format!("/v1/products/{p}/devices/import");
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "text/csv",
        "name\nc\nb\nd\n",
    )
    .await;
    r.expect(422);
    assert_eq!(r.json()["rows"][0]["row"], 2);
    assert!(r.json()["rows"][0]["message"]
        .as_str()
        .unwrap()
        .contains("exists already"));
    let creds = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/products/{p}/devices/credentials.csv"),
        None,
    )
    .await
    .text();
    assert_eq!(
        creds.lines().count(),
        3,
        "c and d were not written: {creds}"
    );
}

// SPEC D2
async fn version_reports_keep_current_and_history(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{p}/devices"),
        Some(json!({"name":"dev-1"})),
    )
    .await;
    let id = r.json()["id"].as_i64().unwrap();
    let vpath = format!("/v1/devices/{id}/versions");
    for (module, version) in [(None, "1.0.0"), (Some("mcu"), "0.9"), (None, "1.1.0")] {
        t.clock.advance(std::time::Duration::from_secs(60));
        let mut body = json!({"version": version});
        if let Some(m) = module {
            body["module"] = json!(m);
        }
        call(&app, Some(&t.admin), "POST", &vpath, Some(body))
            .await
            .expect(200);
    }
    let d = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/devices/{id}"),
        None,
    )
    .await
    .json();
    let modules: Vec<(String, String)> = d["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["module"].as_str().unwrap().into(),
                m["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        modules,
        vec![
            ("default".into(), "1.1.0".into()),
            ("mcu".into(), "0.9".into())
        ]
    );
    let h = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("{vpath}?limit=2"),
        None,
    )
    .await
    .json();
    let versions: Vec<&str> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec!["1.0.0", "0.9"]);
    let cursor = h["next_cursor"].as_str().unwrap();
    let h2 = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("{vpath}?limit=2&cursor={cursor}"),
        None,
    )
    .await
    .json();
    assert_eq!(h2["items"][0]["version"], "1.1.0");
    assert!(h2.get("next_cursor").is_none());
    let only_default = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("{vpath}?module=default"),
        None,
    )
    .await
    .json();
    assert_eq!(only_default["items"].as_array().unwrap().len(), 2);
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &vpath,
        Some(json!({"version": "has space"})),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "version");
    call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("{vpath}?limit=0"),
        None,
    )
    .await
    .expect(400);
}

// SPEC D1
async fn credentials_export_lists_every_device(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    let names: Vec<String> = (0..25_000).map(|i| format!("dev-{i:05}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    import_names(&app, &t.admin, p, &refs).await;
    let csv = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/products/{p}/devices/credentials.csv"),
        None,
    )
    .await;
    csv.expect(200);
    let text = csv.text();
    let got: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(
        got, refs,
        "every device once, in creation order, across export pages"
    );
}

/// Count of a product's devices, through the credentials export.
async fn device_count<S, B>(app: &S, key: &str, product: i64) -> usize
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody,
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
    r.text().lines().count() - 1
}

// An import is written in batches of a few thousand rows; a clash found in a late batch, and a
// bad row found while spooling, still leave nothing behind, and the rows at fault come back in
// row order with a precise reason each.
async fn import_with_a_bad_row_after_several_write_batches_leaves_nothing(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    import_names(&app, &t.admin, p, &["existing"]).await;
    let mut csv = String::from("name\n");
    for i in 0..14_000 {
        csv.push_str(&format!("dev-{i:05}\n"));
    }
    csv.push_str("dev-00007\n"); // row 14,001: repeats row 8, which went in 2 batches earlier
    csv.push_str("existing\n"); // row 14,002
    csv.push_str("bad/name\n"); // row 14,003
    csv.push_str("dev-14003\ndev-14003\n"); // rows 14,004-5: a clash inside one batch
    let path = format!("/v1/products/{p}/devices/import");
    let r = call_raw(&app, Some(&t.admin), "POST", &path, "text/csv", csv).await;
    r.expect(422);
    let j = r.json();
    assert_eq!(j["total"], 4, "{j}");
    let rows: Vec<(u64, String, String)> = j["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![14_001, 14_002, 14_003, 14_005]
    );
    assert!(rows[0].2.contains("more than once"), "{rows:?}");
    assert!(rows[1].2.contains("exists already"), "{rows:?}");
    assert_eq!(rows[2].1, "name");
    assert!(rows[3].2.contains("first in row 14004"), "{rows:?}");
    assert!(j["message"]
        .as_str()
        .unwrap()
        .starts_with("4 rows are invalid"));
    assert_eq!(
        device_count(&app, &t.admin, p).await,
        1,
        "nothing was written"
    );
    // one bad row is one row
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "text/csv",
        "name\nok\nexisting\n",
    )
    .await;
    r.expect(422);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("1 row is invalid"));
}

async fn import_row_limit_is_enforced(db: Db) {
    assert_eq!(
        ota_server::config::Config::default()
            .devices
            .import_max_rows,
        1_000_000,
        "SPEC D1: 1,000,000 rows in one call"
    );
    let t = TestCtx::with_config(db, |c| c.devices.import_max_rows = 10).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    let path = format!("/v1/products/{p}/devices/import");
    let rows = |n: usize| {
        let mut csv = String::from("name\n");
        for i in 0..n {
            csv.push_str(&format!("d{i}\n"));
        }
        csv
    };
    let r = call_raw(&app, Some(&t.admin), "POST", &path, "text/csv", rows(11)).await;
    r.expect(422);
    let j = r.json();
    assert_eq!(j["rows"][0]["row"], 11);
    assert_eq!(j["rows"][0]["field"], "rows");
    assert!(j["rows"][0]["message"]
        .as_str()
        .unwrap()
        .contains("at most 10 rows"));
    assert_eq!(device_count(&app, &t.admin, p).await, 0);
    let json: Vec<_> = (0..11).map(|i| json!({"name": format!("j{i}")})).collect();
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "application/json",
        serde_json::to_string(&json).unwrap(),
    )
    .await;
    r.expect(422);
    assert_eq!(r.json()["rows"][0]["field"], "rows");
    let r = call_raw(&app, Some(&t.admin), "POST", &path, "text/csv", rows(10)).await;
    r.expect(201);
    assert_eq!(r.json()["imported"], 10);
}

async fn csv_import_refuses_extra_columns_and_sloppy_quotes(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    let path = format!("/v1/products/{p}/devices/import");
    for (body, row, says) in [
        ("name\nok-1\nok-2,extra\n", 2, "2 fields"),
        ("name,secret\nok-1,secret-1\nok-2\n", 2, "1 fields"),
        ("name\nok-1\n\"ok-2", 2, "not closed"),
        ("name\n\"ok\"-1\nok-2\n", 1, "closing quote"),
    ] {
        let r = call_raw(&app, Some(&t.admin), "POST", &path, "text/csv", body).await;
        r.expect(422);
        let j = r.json();
        assert_eq!(j["total"], 1, "{body:?}: {j}");
        assert_eq!(j["rows"][0]["row"], row, "{body:?}: {j}");
        assert_eq!(j["rows"][0]["field"], "row", "{body:?}: {j}");
        assert!(
            j["rows"][0]["message"].as_str().unwrap().contains(says),
            "{body:?}: {j}"
        );
    }
    assert_eq!(device_count(&app, &t.admin, p).await, 0);
}

async fn json_import_refuses_a_huge_element(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let p = create_product(&app, &t.admin, "Meter", "alink").await;
    let path = format!("/v1/products/{p}/devices/import");
    let huge = format!(
        "[{{\"name\":\"a\"}},{{\"name\":\"b\",\"secret\":\"{}\"}}]",
        "x".repeat(2 * 1024 * 1024)
    );
    let r = call_raw(
        &app,
        Some(&t.admin),
        "POST",
        &path,
        "application/json",
        huge,
    )
    .await;
    r.expect(400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("longer than"));
    assert_eq!(device_count(&app, &t.admin, p).await, 0);
}

// Two (here four) processes starting together on one PostgreSQL database each run the
// migrations at start; the advisory lock makes the later ones wait and find nothing to do,
// instead of racing on the same tables.
#[actix_web::test]
async fn concurrent_starts_on_one_postgresql_schema_migrate_once() {
    use ota_migrations::MigratorTrait;
    use sea_orm::ConnectionTrait;
    let url = pg_base_url();
    for round in 0..3 {
        let schema = format!("mig_{}_{round}_{}", std::process::id(), T0);
        let admin = sea_orm::Database::connect(&url).await.unwrap();
        admin
            .execute_unprepared(&format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\""
            ))
            .await
            .unwrap();
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                let schema = schema.clone();
                tokio::spawn(async move {
                    ota_server::store::Store::connect_with_schema(&url, 2, Some(&schema)).await
                })
            })
            .collect();
        for s in starts {
            let store = s.await.unwrap().expect("every process starts");
            store.close().await.unwrap();
        }
        let applied = admin
            .query_one(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!("SELECT count(*) AS n FROM \"{schema}\".seaql_migrations"),
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        assert_eq!(
            applied as usize,
            ota_migrations::Migrator::migrations().len(),
            "each migration is recorded once"
        );
        admin
            .execute_unprepared(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
        admin.close().await.unwrap();
    }
}
