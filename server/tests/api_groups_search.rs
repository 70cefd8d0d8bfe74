//! Groups, attributes and tags, asset trees, device search with CSV export, and version
//! statistics through the HTTP API, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use common::*;
use ota_server::domain::{
    AssetNodeId, DeviceFilter, DeviceId, ModuleMatch, ModuleName, ProductId, TenantId, Version,
};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};

db_tests!(
    group_tree_has_a_depth_limit_and_scopes_include_subgroups,
    a_device_may_be_in_several_groups,
    membership_changes_are_all_or_nothing,
    attributes_and_tags_replace_and_merge_with_validation,
    asset_trees_bind_devices_and_resolve_nodes_and_below,
    search_filters_alone_and_combined_and_pages,
    csv_export_equals_the_search_result,
    version_stats_count_current_versions,
    other_tenants_get_404_and_see_nothing,
);

/// Device name → id of every device of `product`, read through the search.
async fn device_ids<S, B>(app: &S, key: &str, product: i64) -> HashMap<String, i64>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(
        app,
        Some(key),
        "GET",
        &format!("/v1/devices?product_id={product}&limit=1000"),
        None,
    )
    .await;
    r.expect(200);
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Names of the devices a search finds, following `next_cursor` through pages of `limit`.
async fn search<S, B>(app: &S, key: &str, query: &str, limit: u64) -> Vec<String>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut names = vec![];
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/devices?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = call(app, Some(key), "GET", &path, None).await;
        r.expect(200);
        let v = r.json();
        let items = v["items"].as_array().unwrap();
        assert!(items.len() as u64 <= limit);
        names.extend(items.iter().map(|d| d["name"].as_str().unwrap().to_owned()));
        pages += 1;
        assert!(pages < 1000, "paging does not end");
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return names,
        }
    }
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

fn sort(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn post<S, B>(app: &S, key: &str, path: &str, body: Value) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    call(app, Some(key), "POST", path, Some(body)).await
}

async fn create_group<S, B>(app: &S, key: &str, name: &str, parent: Option<i64>) -> i64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = post(
        app,
        key,
        "/v1/groups",
        json!({"name": name, "parent_id": parent}),
    )
    .await;
    r.expect(201);
    r.json()["id"].as_i64().unwrap()
}

async fn create_node<S, B>(app: &S, key: &str, tree: i64, name: &str, parent: Option<i64>) -> i64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = post(
        app,
        key,
        &format!("/v1/asset-trees/{tree}/nodes"),
        json!({"name": name, "parent_id": parent}),
    )
    .await;
    r.expect(201);
    r.json()["id"].as_i64().unwrap()
}

/// Names in a page of devices.
fn names(r: &Reply) -> Vec<String> {
    sort(
        r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect(),
    )
}

async fn tenant_of(t: &TestCtx, key: &str) -> TenantId {
    t.store.authenticate(key).await.unwrap().unwrap().tenant
}

// SPEC D3, M1
async fn group_tree_has_a_depth_limit_and_scopes_include_subgroups(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let k = &t.admin;
    let product = create_product(&app, k, "Meter", "alink").await;
    import_names(&app, k, product, &["d1", "d2", "d3", "d4"]).await;
    let ids = device_ids(&app, k, product).await;

    // a chain of 5 levels is allowed, a 6th is refused naming the parent
    let mut chain = vec![create_group(&app, k, "L1", None).await];
    for level in 2..=5 {
        let parent = *chain.last().unwrap();
        chain.push(create_group(&app, k, &format!("L{level}"), Some(parent)).await);
    }
    let r = post(
        &app,
        k,
        "/v1/groups",
        json!({"name":"L6","parent_id":chain[4]}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "parent_id");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("at most 5 levels"));
    // sibling names are unique; the same name elsewhere is fine; names are trimmed
    let r = post(
        &app,
        k,
        "/v1/groups",
        json!({"name":" L2 ","parent_id":chain[0]}),
    )
    .await;
    r.expect(409);
    assert_eq!(r.json()["code"], "conflict");
    post(&app, k, "/v1/groups", json!({"name":"L2"}))
        .await
        .expect(201);
    post(&app, k, "/v1/groups", json!({"name":"L2"}))
        .await
        .expect(409);
    // an unknown parent is 404; a bad name names the field
    post(
        &app,
        k,
        "/v1/groups",
        json!({"name":"x","parent_id":999_999}),
    )
    .await
    .expect(404);
    let r = post(&app, k, "/v1/groups", json!({"name":"  "})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "name");
    // reading: roots, children, one group
    let roots = call(&app, Some(k), "GET", "/v1/groups", None).await.json();
    let root_names: BTreeSet<_> = roots["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(root_names, ["L1", "L2"].map(String::from).into());
    let kids = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/groups?parent_id={}", chain[0]),
        None,
    )
    .await
    .json();
    assert_eq!(kids["items"].as_array().unwrap().len(), 1);
    assert_eq!(kids["items"][0]["id"], chain[1]);
    assert_eq!(kids["items"][0]["parent_id"], chain[0]);
    // rename: a sibling's name is refused, a new one taken
    let sib = create_group(&app, k, "other", Some(chain[0])).await;
    let r = call(
        &app,
        Some(k),
        "PATCH",
        &format!("/v1/groups/{sib}"),
        Some(json!({"name":"L2"})),
    )
    .await;
    r.expect(409);
    let r = call(
        &app,
        Some(k),
        "PATCH",
        &format!("/v1/groups/{sib}"),
        Some(json!({"name":"Sibling","description":"east wing"})),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["name"], "Sibling");
    let g = call(&app, Some(k), "GET", &format!("/v1/groups/{sib}"), None).await;
    assert_eq!(g.json()["description"], "east wing");

    // members at levels 1, 2 and 5; a group scope includes all subgroups
    for (g, d) in [(chain[0], "d1"), (chain[1], "d2"), (chain[4], "d3")] {
        let r = post(
            &app,
            k,
            &format!("/v1/groups/{g}/devices"),
            json!({"device_ids":[ids[d]]}),
        )
        .await;
        r.expect(200);
        assert_eq!(r.json()["changed"], 1);
    }
    let direct = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/groups/{}/devices", chain[0]),
        None,
    )
    .await;
    direct.expect(200);
    assert_eq!(names(&direct), sorted(&["d1"]));
    let all = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/groups/{}/devices?include_subgroups=true", chain[0]),
        None,
    )
    .await;
    assert_eq!(names(&all), sorted(&["d1", "d2", "d3"]));
    let mid = call(
        &app,
        Some(k),
        "GET",
        &format!(
            "/v1/groups/{}/devices?include_subgroups=true&limit=1",
            chain[1]
        ),
        None,
    )
    .await;
    assert_eq!(names(&mid), sorted(&["d2"]));
    assert!(mid.json()["next_cursor"].is_string());
    // the store's group filter says the same (the group scope of a rollout builds on it)
    let tenant = tenant_of(&t, k).await;
    let sel = t
        .store
        .resolve_device_filter(
            tenant,
            &DeviceFilter::group(ota_server::domain::GroupId(chain[0])),
        )
        .await
        .unwrap();
    assert_eq!(t.store.count_devices(tenant, &sel).await.unwrap(), 3);

    // a group with subgroups cannot be deleted; a leaf goes with its memberships
    let r = call(
        &app,
        Some(k),
        "DELETE",
        &format!("/v1/groups/{}", chain[3]),
        None,
    )
    .await;
    r.expect(409);
    assert!(r.json()["message"].as_str().unwrap().contains("subgroups"));
    call(
        &app,
        Some(k),
        "DELETE",
        &format!("/v1/groups/{}", chain[4]),
        None,
    )
    .await
    .expect(204);
    let all = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/groups/{}/devices?include_subgroups=true", chain[0]),
        None,
    )
    .await;
    assert_eq!(names(&all), sorted(&["d1", "d2"]));
    let groups = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/devices/{}/groups", ids["d3"]),
        None,
    )
    .await;
    assert_eq!(groups.json().as_array().unwrap().len(), 0);
    call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/devices/{}", ids["d3"]),
        None,
    )
    .await
    .expect(200);
    call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/groups/{}", chain[4]),
        None,
    )
    .await
    .expect(404);
    // now L4 is a leaf and can go; deleting the same group twice is 404
    call(
        &app,
        Some(k),
        "DELETE",
        &format!("/v1/groups/{}", chain[3]),
        None,
    )
    .await
    .expect(204);
    call(
        &app,
        Some(k),
        "DELETE",
        &format!("/v1/groups/{}", chain[3]),
        None,
    )
    .await
    .expect(404);

    // writes need an admin key, every role reads
    let viewer = post(&app, k, "/v1/keys", json!({"name":"v","role":"viewer"})).await;
    let viewer = viewer.json()["secret"].as_str().unwrap().to_owned();
    post(&app, &viewer, "/v1/groups", json!({"name":"nope"}))
        .await
        .expect(403);
    post(
        &app,
        &viewer,
        &format!("/v1/groups/{}/devices", chain[0]),
        json!({"device_ids":[ids["d4"]]}),
    )
    .await
    .expect(403);
    call(
        &app,
        Some(&viewer),
        "GET",
        &format!("/v1/groups/{}/devices", chain[0]),
        None,
    )
    .await
    .expect(200);
}

// SPEC D3
async fn a_device_may_be_in_several_groups(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let k = &t.admin;
    let product = create_product(&app, k, "Meter", "alink").await;
    import_names(&app, k, product, &["a", "b"]).await;
    let ids = device_ids(&app, k, product).await;
    let g1 = create_group(&app, k, "north", None).await;
    let g2 = create_group(&app, k, "south", None).await;
    for g in [g1, g2] {
        post(
            &app,
            k,
            &format!("/v1/groups/{g}/devices"),
            json!({"device_ids":[ids["a"]]}),
        )
        .await
        .expect(200);
    }
    post(
        &app,
        k,
        &format!("/v1/groups/{g2}/devices"),
        json!({"device_ids":[ids["b"]]}),
    )
    .await
    .expect(200);
    // adding a member again changes nothing
    let r = post(
        &app,
        k,
        &format!("/v1/groups/{g1}/devices"),
        json!({"device_ids":[ids["a"], ids["a"]]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["changed"], 0);
    let groups = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/devices/{}/groups", ids["a"]),
        None,
    )
    .await
    .json();
    let gids: Vec<i64> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_i64().unwrap())
        .collect();
    assert_eq!(gids, vec![g1, g2]);
    assert_eq!(
        search(&app, k, &format!("group_id={g1}"), 10).await,
        vec!["a"]
    );
    assert_eq!(
        sort(search(&app, k, &format!("group_id={g2}"), 10).await),
        sorted(&["a", "b"])
    );
    // leaving one group keeps the other membership
    let r = post(
        &app,
        k,
        &format!("/v1/groups/{g2}/devices/remove"),
        json!({"device_ids":[ids["a"]]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["changed"], 1);
    assert_eq!(
        search(&app, k, &format!("group_id={g2}"), 10).await,
        vec!["b"]
    );
    assert_eq!(
        search(&app, k, &format!("group_id={g1}"), 10).await,
        vec!["a"]
    );
}

// SPEC D3, M1
async fn membership_changes_are_all_or_nothing(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let k = &t.admin;
    let product = create_product(&app, k, "Meter", "alink").await;
    import_names(&app, k, product, &["a", "b"]).await;
    let ids = device_ids(&app, k, product).await;
    let other = t.other_tenant("globex").await;
    let op = create_product(&app, &other, "Theirs", "alink").await;
    import_names(&app, &other, op, &["x"]).await;
    let foreign = device_ids(&app, &other, op).await["x"];
    let g = create_group(&app, k, "g", None).await;

    // one unknown and one foreign id: 400 naming both, nothing added
    let r = post(
        &app,
        k,
        &format!("/v1/groups/{g}/devices"),
        json!({"device_ids":[ids["a"], 999_999, foreign]}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "device_ids");
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("999999") && msg.contains(&foreign.to_string()),
        "{msg}"
    );
    let members = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/groups/{g}/devices"),
        None,
    )
    .await;
    assert!(names(&members).is_empty());
    // bounds: none, and more than 10,000
    let r = post(
        &app,
        k,
        &format!("/v1/groups/{g}/devices"),
        json!({"device_ids":[]}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "device_ids");
    let many: Vec<i64> = (1..=10_001).collect();
    post(
        &app,
        k,
        &format!("/v1/groups/{g}/devices"),
        json!({"device_ids": many}),
    )
    .await
    .expect(400);
    // a good call adds both; a removal with a bad id changes nothing
    let r = post(
        &app,
        k,
        &format!("/v1/groups/{g}/devices"),
        json!({"device_ids":[ids["a"], ids["b"]]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["changed"], 2);
    let r = post(
        &app,
        k,
        &format!("/v1/groups/{g}/devices/remove"),
        json!({"device_ids":[ids["a"], foreign]}),
    )
    .await;
    r.expect(400);
    let members = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/groups/{g}/devices"),
        None,
    )
    .await;
    assert_eq!(names(&members), sorted(&["a", "b"]));
    // an unknown group is 404
    post(
        &app,
        k,
        "/v1/groups/999999/devices",
        json!({"device_ids":[ids["a"]]}),
    )
    .await
    .expect(404);
    // a deleted device leaves its groups
    call(
        &app,
        Some(k),
        "DELETE",
        &format!("/v1/devices/{}", ids["a"]),
        None,
    )
    .await
    .expect(204);
    let members = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/groups/{g}/devices"),
        None,
    )
    .await;
    assert_eq!(names(&members), sorted(&["b"]));
}

// SPEC D4, M1
async fn attributes_and_tags_replace_and_merge_with_validation(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let k = &t.admin;
    let product = create_product(&app, k, "Meter", "alink").await;
    import_names(&app, k, product, &["a"]).await;
    let id = device_ids(&app, k, product).await["a"];
    let attrs = format!("/v1/devices/{id}/attributes");
    let tags = format!("/v1/devices/{id}/tags");

    let r = call(&app, Some(k), "GET", &attrs, None).await;
    r.expect(200);
    assert_eq!(r.json(), json!({}));
    let r = call(
        &app,
        Some(k),
        "PUT",
        &attrs,
        Some(json!({"color":"red","site":"plant-a"})),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json(), json!({"color":"red","site":"plant-a"}));
    // merge: set, add, delete with null
    let r = call(
        &app,
        Some(k),
        "PATCH",
        &attrs,
        Some(json!({"color":"blue","floor":"3","site":null})),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json(), json!({"color":"blue","floor":"3"}));
    let r = call(&app, Some(k), "GET", &attrs, None).await;
    assert_eq!(r.json(), json!({"color":"blue","floor":"3"}));
    // replace drops what is not given
    call(&app, Some(k), "PUT", &attrs, Some(json!({"floor":"4"})))
        .await
        .expect(200);
    assert_eq!(
        call(&app, Some(k), "GET", &attrs, None).await.json(),
        json!({"floor":"4"})
    );

    // validation names the field; nothing changes
    for (body, field) in [
        (json!({"bad name":"x"}), "attributes.bad name"),
        (json!({"color":"x".repeat(1025)}), "attributes.color"),
        (json!({"color":"a\u{0007}b"}), "attributes.color"),
        (json!({"n": 5}), "attributes.n"),
        (json!({"a:b":"x"}), "attributes.a:b"),
    ] {
        let r = call(&app, Some(k), "PUT", &attrs, Some(body)).await;
        r.expect(400);
        assert_eq!(r.json()["field"], field);
    }
    let too_many: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("a{i}"), json!("v"))).collect();
    let r = call(&app, Some(k), "PUT", &attrs, Some(Value::Object(too_many))).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "attributes");
    // a merge that would pass 100 is refused too
    let hundred: serde_json::Map<String, Value> =
        (0..99).map(|i| (format!("a{i}"), json!("v"))).collect();
    call(&app, Some(k), "PATCH", &attrs, Some(Value::Object(hundred)))
        .await
        .expect(200);
    let r = call(
        &app,
        Some(k),
        "PATCH",
        &attrs,
        Some(json!({"x":"1","y":"2"})),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "attributes");
    let now = call(&app, Some(k), "GET", &attrs, None).await.json();
    assert_eq!(now.as_object().unwrap().len(), 100);
    assert!(now.get("x").is_none());
    let r = call(
        &app,
        Some(k),
        "PATCH",
        &attrs,
        Some(json!({"x":"1","floor":null})),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json().as_object().unwrap().len(), 100);

    // tags: keys may hold ':'; empty values are allowed; their own namespace
    let r = call(
        &app,
        Some(k),
        "PUT",
        &tags,
        Some(json!({"aliyun:env":"prod","beta":""})),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json(), json!({"aliyun:env":"prod","beta":""}));
    let r = call(&app, Some(k), "PATCH", &tags, Some(json!({"bad key":"x"}))).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "tags.bad key");
    let r = call(&app, Some(k), "PATCH", &tags, Some(json!({"beta": 1}))).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "tags.beta");
    let r = call(&app, Some(k), "PATCH", &tags, Some(json!({"beta":null}))).await;
    assert_eq!(r.json(), json!({"aliyun:env":"prod"}));
    assert!(call(&app, Some(k), "GET", &attrs, None)
        .await
        .json()
        .get("aliyun:env")
        .is_none());
    // a non-object body is a 400 on the body
    call(&app, Some(k), "PUT", &tags, Some(json!(["x"])))
        .await
        .expect(400);

    // the device DTO stays as it was
    let d = call(&app, Some(k), "GET", &format!("/v1/devices/{id}"), None)
        .await
        .json();
    assert!(d.get("attributes").is_none() && d.get("tags").is_none());
    assert_eq!(d["name"], "a");

    // roles and tenants
    let viewer = post(&app, k, "/v1/keys", json!({"name":"v","role":"viewer"})).await;
    let viewer = viewer.json()["secret"].as_str().unwrap().to_owned();
    call(&app, Some(&viewer), "PUT", &tags, Some(json!({})))
        .await
        .expect(403);
    call(&app, Some(&viewer), "GET", &tags, None)
        .await
        .expect(200);
    let other = t.other_tenant("globex").await;
    for m in ["GET", "PUT", "PATCH"] {
        let body = (m != "GET").then(|| json!({"x":"1"}));
        call(&app, Some(&other), m, &attrs, body.clone())
            .await
            .expect(404);
        call(&app, Some(&other), m, &tags, body).await.expect(404);
    }
    call(&app, Some(k), "GET", "/v1/devices/999999/tags", None)
        .await
        .expect(404);
}

// SPEC D4 (asset-node binding; the rollout scope of B8 is proved with rollouts)
async fn asset_trees_bind_devices_and_resolve_nodes_and_below(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let k = &t.admin;
    let product = create_product(&app, k, "Meter", "alink").await;
    import_names(&app, k, product, &["d1", "d2", "d3", "d4"]).await;
    let ids = device_ids(&app, k, product).await;
    let r = post(&app, k, "/v1/asset-trees", json!({"name":"Sites"})).await;
    r.expect(201);
    let tree = r.json()["id"].as_i64().unwrap();
    post(&app, k, "/v1/asset-trees", json!({"name":"Sites"}))
        .await
        .expect(409);
    let root = create_node(&app, k, tree, "Plant A", None).await;
    let hall = create_node(&app, k, tree, "Hall 1", Some(root)).await;
    let line = create_node(&app, k, tree, "Line 7", Some(hall)).await;
    post(
        &app,
        k,
        &format!("/v1/asset-trees/{tree}/nodes"),
        json!({"name":"Hall 1","parent_id":root}),
    )
    .await
    .expect(409);
    for (node, d) in [(root, "d1"), (hall, "d2"), (line, "d3")] {
        let r = post(
            &app,
            k,
            &format!("/v1/asset-nodes/{node}/devices"),
            json!({"device_ids":[ids[d]]}),
        )
        .await;
        r.expect(200);
        assert_eq!(r.json()["changed"], 1);
    }
    let nodes = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/asset-trees/{tree}/nodes"),
        None,
    )
    .await
    .json();
    let listed: Vec<(i64, Value)> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_i64().unwrap(), n["parent_id"].clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (root, Value::Null),
            (hall, json!(root)),
            (line, json!(hall))
        ]
    );

    // a node alone, a node and below, and the search filter (always "and below")
    let only = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/asset-nodes/{hall}/devices"),
        None,
    )
    .await;
    assert_eq!(names(&only), sorted(&["d2"]));
    let below = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/asset-nodes/{hall}/devices?include_descendants=true"),
        None,
    )
    .await;
    assert_eq!(names(&below), sorted(&["d2", "d3"]));
    assert_eq!(
        sort(search(&app, k, &format!("asset_node_id={root}"), 2).await),
        sorted(&["d1", "d2", "d3"])
    );

    // the store function rollout scopes use: up to 5 trees, nodes and below
    let tenant = tenant_of(&t, k).await;
    let mut tree_nodes = vec![AssetNodeId(hall)];
    for i in 0..5 {
        let r = post(&app, k, "/v1/asset-trees", json!({"name": format!("T{i}")})).await;
        let tr = r.json()["id"].as_i64().unwrap();
        let n = create_node(&app, k, tr, "n", None).await;
        if i == 0 {
            post(
                &app,
                k,
                &format!("/v1/asset-nodes/{n}/devices"),
                json!({"device_ids":[ids["d4"]]}),
            )
            .await
            .expect(200);
        }
        tree_nodes.push(AssetNodeId(n));
    }
    let sel = t
        .store
        .resolve_device_filter(tenant, &DeviceFilter::asset_nodes(tree_nodes[..5].to_vec()))
        .await
        .unwrap();
    let found: Vec<String> = t
        .store
        .search_device_names(tenant, &sel, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, n)| n.into_string())
        .collect();
    assert_eq!(sort(found), sorted(&["d2", "d3", "d4"]));
    let six = t
        .store
        .resolve_device_filter(tenant, &DeviceFilter::asset_nodes(tree_nodes.clone()))
        .await
        .unwrap_err();
    assert!(six.to_string().contains("at most 5"), "{six}");
    // which of some devices a scope matches (dynamic rollouts ask this)
    let m = t
        .store
        .select_matching(
            tenant,
            &sel,
            &[DeviceId(ids["d1"]), DeviceId(ids["d3"]), DeviceId(999_999)],
        )
        .await
        .unwrap();
    assert_eq!(m, vec![DeviceId(ids["d3"])]);

    // a parent from another tree is refused; the depth limit is 16
    let r = post(
        &app,
        k,
        &format!("/v1/asset-trees/{tree}/nodes"),
        json!({"name":"x","parent_id":tree_nodes[1].0}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "parent_id");
    let mut parent = line; // level 3
    for level in 4..=16 {
        parent = create_node(&app, k, tree, &format!("level {level}"), Some(parent)).await;
    }
    let r = post(
        &app,
        k,
        &format!("/v1/asset-trees/{tree}/nodes"),
        json!({"name":"level 17","parent_id":parent}),
    )
    .await;
    r.expect(400);
    assert!(r.json()["message"].as_str().unwrap().contains("16"));

    // unbinding, and deleting: refused with children, a leaf takes its bindings along
    let r = post(
        &app,
        k,
        &format!("/v1/asset-nodes/{root}/devices/remove"),
        json!({"device_ids":[ids["d1"]]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["changed"], 1);
    call(
        &app,
        Some(k),
        "DELETE",
        &format!("/v1/asset-nodes/{hall}"),
        None,
    )
    .await
    .expect(409);
    call(
        &app,
        Some(k),
        "DELETE",
        &format!("/v1/asset-trees/{tree}"),
        None,
    )
    .await
    .expect(409);
    let leaf = tree_nodes[1].0;
    call(
        &app,
        Some(k),
        "DELETE",
        &format!("/v1/asset-nodes/{leaf}"),
        None,
    )
    .await
    .expect(204);
    call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/asset-nodes/{leaf}"),
        None,
    )
    .await
    .expect(404);
    // d4's binding went with its node; the device stays
    let mut rest = vec![tree_nodes[0]];
    rest.extend_from_slice(&tree_nodes[2..]);
    let sel = t
        .store
        .resolve_device_filter(tenant, &DeviceFilter::asset_nodes(rest))
        .await
        .unwrap();
    assert_eq!(t.store.count_devices(tenant, &sel).await.unwrap(), 2);
    call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/devices/{}", ids["d4"]),
        None,
    )
    .await
    .expect(200);
    assert_eq!(
        sort(search(&app, k, &format!("asset_node_id={root}"), 10).await),
        sorted(&["d2", "d3"])
    );
}

// SPEC D5, D2
async fn search_filters_alone_and_combined_and_pages(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let k = &t.admin;
    let p1 = create_product(&app, k, "Meter", "alink").await;
    let p2 = create_product(&app, k, "Pump", "enos").await;
    import_names(
        &app,
        k,
        p1,
        &["dev-1", "dev-2", "dev-3", "Dev-4", "devX", "a_b", "abc"],
    )
    .await;
    import_names(&app, k, p2, &["dev-1", "pump-9"]).await;
    let ids = device_ids(&app, k, p1).await;
    let ids2 = device_ids(&app, k, p2).await;
    let tenant = tenant_of(&t, k).await;
    for d in ["dev-1", "dev-3"] {
        t.store
            .set_device_online(tenant, DeviceId(ids[d]), true, T0)
            .await
            .unwrap();
    }
    for (d, attrs, tags) in [
        (
            "dev-1",
            json!({"color":"red","hw":"rev:2"}),
            json!({"env":"prod","aliyun:zone":"a"}),
        ),
        ("dev-2", json!({"color":"red"}), json!({"env":"test"})),
        ("dev-3", json!({"color":"blue"}), json!({"env":"prod"})),
    ] {
        call(
            &app,
            Some(k),
            "PUT",
            &format!("/v1/devices/{}/attributes", ids[d]),
            Some(attrs),
        )
        .await
        .expect(200);
        call(
            &app,
            Some(k),
            "PUT",
            &format!("/v1/devices/{}/tags", ids[d]),
            Some(tags),
        )
        .await
        .expect(200);
    }
    for (id, module, version) in [
        (ids["dev-1"], "default", "1.0"),
        (ids["dev-2"], "default", "1.0"),
        (ids["dev-3"], "default", "2.0"),
        (ids["dev-3"], "mcu", "1.0"),
        (ids2["dev-1"], "default", "1.0"),
    ] {
        post(
            &app,
            k,
            &format!("/v1/devices/{id}/versions"),
            json!({"module": module, "version": version}),
        )
        .await
        .expect(200);
    }
    let g = create_group(&app, k, "g", None).await;
    let sub = create_group(&app, k, "sub", Some(g)).await;
    post(
        &app,
        k,
        &format!("/v1/groups/{g}/devices"),
        json!({"device_ids":[ids["dev-1"]]}),
    )
    .await
    .expect(200);
    post(
        &app,
        k,
        &format!("/v1/groups/{sub}/devices"),
        json!({"device_ids":[ids["dev-2"], ids2["pump-9"]]}),
    )
    .await
    .expect(200);

    let cases: Vec<(String, Vec<&str>)> = vec![
        (format!("product_id={p1}"), vec!["dev-1", "dev-2", "dev-3", "Dev-4", "devX", "a_b", "abc"]),
        (format!("product_id={p2}"), vec!["dev-1", "pump-9"]),
        // no product: the whole tenant
        ("name_prefix=dev-".into(), vec!["dev-1", "dev-2", "dev-3", "dev-1"]),
        // prefixes are exact: case-sensitive, `_` and `%` are no wildcards
        (format!("product_id={p1}&name_prefix=Dev"), vec!["Dev-4"]),
        (format!("product_id={p1}&name_prefix=a_"), vec!["a_b"]),
        (format!("product_id={p1}&name_prefix=a%25"), vec![]),
        (format!("group_id={g}"), vec!["dev-1", "dev-2", "pump-9"]),
        (format!("group_id={g}&include_subgroups=false"), vec!["dev-1"]),
        (format!("group_id={sub}&product_id={p1}"), vec!["dev-2"]),
        ("attribute=color:red".into(), vec!["dev-1", "dev-2"]),
        ("attribute=color".into(), vec!["dev-1", "dev-2", "dev-3"]),
        // the value may hold ':' (split at the first)
        ("attribute=hw:rev:2".into(), vec!["dev-1"]),
        ("tag=env:prod".into(), vec!["dev-1", "dev-3"]),
        ("tag=env".into(), vec!["dev-1", "dev-2", "dev-3"]),
        ("tag_key=aliyun:zone&tag_value=a".into(), vec!["dev-1"]),
        ("tag_key=aliyun:zone".into(), vec!["dev-1"]),
        ("tag=color:red".into(), vec![]),
        ("version=1.0".into(), vec!["dev-1", "dev-2", "dev-1"]),
        (format!("product_id={p1}&module=default&version=1.0"), vec!["dev-1", "dev-2"]),
        ("module=mcu&version=1.0".into(), vec!["dev-3"]),
        ("module=mcu".into(), vec!["dev-3"]),
        ("module=default&version=3.0".into(), vec![]),
        ("online=true".into(), vec!["dev-1", "dev-3"]),
        (format!("online=false&product_id={p2}"), vec!["dev-1", "pump-9"]),
        // combinations
        (format!("product_id={p1}&attribute=color:red&tag=env:prod"), vec!["dev-1"]),
        (format!("product_id={p1}&online=true&version=2.0"), vec!["dev-3"]),
        (format!("group_id={g}&online=false"), vec!["dev-2", "pump-9"]),
        (format!("product_id={p1}&name_prefix=dev&tag=env:prod&online=true&group_id={g}&attribute=color:red&version=1.0"), vec!["dev-1"]),
    ];
    for (q, want) in cases {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        // pages of 2 and one page give the same, in id order
        let paged = search(&app, k, &q, 2).await;
        let whole = search(&app, k, &q, 1000).await;
        assert_eq!(paged, whole, "{q}");
        assert_eq!(sort(paged), want, "{q}");
    }
    // results carry the device DTO with module versions, in id order
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/devices?product_id={p1}&name_prefix=dev-3"),
        None,
    )
    .await;
    let d = &r.json()["items"][0];
    assert_eq!(d["id"], ids["dev-3"]);
    assert_eq!(d["online"], true);
    assert_eq!(d["modules"].as_array().unwrap().len(), 2);
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/devices?product_id={p1}&limit=3"),
        None,
    )
    .await;
    let got: Vec<i64> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    let mut all: Vec<i64> = ids.values().copied().collect();
    all.sort();
    assert_eq!(got, all[..3].to_vec());
    assert_eq!(r.json()["next_cursor"], all[2].to_string());

    // the store filter later scopes reuse: several source versions, and "not already on
    // the target version" (devices that never reported the module count as not on it)
    let module = |versions: &[&str]| ModuleMatch {
        module: ModuleName::default_module(),
        versions: versions
            .iter()
            .map(|v| Version::parse("v", *v).unwrap())
            .collect(),
    };
    let target = (
        ModuleName::default_module(),
        Version::parse("v", "2.0").unwrap(),
    );
    for (filter, want) in [
        (
            DeviceFilter {
                product: Some(ProductId(p1)),
                module: Some(module(&["1.0", "2.0"])),
                exclude_version: Some(target.clone()),
                ..Default::default()
            },
            vec!["dev-1", "dev-2"],
        ),
        (
            DeviceFilter {
                product: Some(ProductId(p1)),
                exclude_version: Some(target.clone()),
                ..Default::default()
            },
            vec!["dev-1", "dev-2", "Dev-4", "devX", "a_b", "abc"],
        ),
    ] {
        let sel = t
            .store
            .resolve_device_filter(tenant, &filter)
            .await
            .unwrap();
        let mut got: Vec<String> = t
            .store
            .search_device_names(tenant, &sel, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, n)| n.into_string())
            .collect();
        got.sort();
        assert_eq!(got, sorted(&want));
        assert_eq!(
            t.store.count_devices(tenant, &sel).await.unwrap(),
            want.len() as u64
        );
    }

    // bad input names the parameter; unknown ids are 404
    for (q, field) in [
        ("attribute=bad name:1", "attribute"),
        ("tag=bad key", "tag"),
        ("tag=a&tag_key=b", "tag"),
        ("tag_value=x", "tag_value"),
        ("module=a/b", "module"),
        ("version=a b", "version"),
        ("limit=0", "limit"),
        ("cursor=abc", "cursor"),
        ("include_subgroups=true", "include_subgroups"),
        ("colour=red", "colour"),
        ("online=maybe", "online"),
    ] {
        let r = call(
            &app,
            Some(k),
            "GET",
            &format!("/v1/devices?{}", q.replace(' ', "%20")),
            None,
        )
        .await;
        r.expect(400);
        assert_eq!(r.json()["field"], field, "{q}");
    }
    for q in [
        "group_id=999999",
        "product_id=999999",
        "asset_node_id=999999",
    ] {
        call(&app, Some(k), "GET", &format!("/v1/devices?{q}"), None)
            .await
            .expect(404);
    }
}

// SPEC D5
async fn csv_export_equals_the_search_result(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let k = &t.admin;
    let product = create_product(&app, k, "Meter", "alink").await;
    let all: Vec<String> = (0..30).map(|i| format!("m-{i:02}")).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    import_names(&app, k, product, &refs).await;
    let ids = device_ids(&app, k, product).await;
    let g = create_group(&app, k, "even", None).await;
    let even: Vec<i64> = (0..30)
        .step_by(2)
        .map(|i| ids[&format!("m-{i:02}")])
        .collect();
    post(
        &app,
        k,
        &format!("/v1/groups/{g}/devices"),
        json!({"device_ids": even}),
    )
    .await
    .expect(200);
    for q in [
        format!("product_id={product}"),
        format!("product_id={product}&group_id={g}"),
        format!("product_id={product}&name_prefix=m-1"),
        format!("product_id={product}&name_prefix=zzz"),
    ] {
        let r = call(
            &app,
            Some(k),
            "GET",
            &format!("/v1/devices/export.csv?{q}"),
            None,
        )
        .await;
        r.expect(200);
        assert!(r
            .headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        let text = r.text();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("deviceName"), "{q}");
        let exported: Vec<String> = lines.map(str::to_owned).collect();
        assert_eq!(exported, search(&app, k, &q, 7).await, "{q}");
    }
    let text = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/devices/export.csv?product_id={product}&group_id={g}"),
        None,
    )
    .await
    .text();
    assert_eq!(text.lines().count(), 16);
    // the export is one product's names, as a rollout scope needs; no paging parameters
    let r = call(&app, Some(k), "GET", "/v1/devices/export.csv", None).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "product_id");
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/devices/export.csv?product_id={product}&limit=5"),
        None,
    )
    .await;
    r.expect(400);
    call(
        &app,
        Some(k),
        "GET",
        "/v1/devices/export.csv?product_id=999999",
        None,
    )
    .await
    .expect(404);
    // the export's route is not taken for a device id, and ids still read devices
    let id = ids["m-00"];
    let r = call(&app, Some(k), "GET", &format!("/v1/devices/{id}"), None).await;
    r.expect(200);
    assert_eq!(r.json()["name"], "m-00");
    // the exported file is accepted by the import's header rule (deviceName)
    let p2 = create_product(&app, k, "Copy", "alink").await;
    let text = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/devices/export.csv?product_id={product}&name_prefix=m-2"),
        None,
    )
    .await
    .text();
    call_raw(
        &app,
        Some(k),
        "POST",
        &format!("/v1/products/{p2}/devices/import"),
        "text/csv",
        text,
    )
    .await
    .expect(201);
    assert_eq!(device_ids(&app, k, p2).await.len(), 10);
}

// SPEC D6, D2
async fn version_stats_count_current_versions(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let k = &t.admin;
    let product = create_product(&app, k, "Meter", "alink").await;
    let other_product = create_product(&app, k, "Pump", "alink").await;
    import_names(&app, k, product, &["a", "b", "c", "d", "e", "f"]).await;
    import_names(&app, k, other_product, &["z"]).await;
    let ids = device_ids(&app, k, product).await;
    let z = device_ids(&app, k, other_product).await["z"];
    let report = |id: i64, module: &'static str, version: &'static str| {
        (id, json!({"module": module, "version": version}))
    };
    for (id, body) in [
        report(ids["a"], "default", "1.0"),
        report(ids["b"], "default", "1.0"),
        report(ids["c"], "default", "0.9"),
        report(ids["d"], "default", "0.9"),
        report(ids["e"], "default", "1.1"),
        // e moves on: only its current version counts
        report(ids["e"], "default", "2.0"),
        report(ids["f"], "default", "2.0"),
        report(ids["f"], "default", "2.0"),
        report(ids["a"], "mcu", "m1"),
        report(z, "default", "1.0"),
    ] {
        post(&app, k, &format!("/v1/devices/{id}/versions"), body)
            .await
            .expect(200);
    }
    // a report without a module is for `default`
    post(
        &app,
        k,
        &format!("/v1/devices/{}/versions", ids["c"]),
        json!({"version":"2.0"}),
    )
    .await
    .expect(200);
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/products/{product}/versions?module=default"),
        None,
    )
    .await;
    r.expect(200);
    let v = r.json();
    assert_eq!(v["module"], "default");
    assert_eq!(v["devices"], 6);
    assert_eq!(
        v["versions"],
        json!([
            {"version":"2.0","devices":3},
            {"version":"1.0","devices":2},
            {"version":"0.9","devices":1},
        ])
    );
    // the module defaults to `default`
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/products/{product}/versions"),
        None,
    )
    .await;
    assert_eq!(r.json()["versions"], v["versions"]);
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/products/{product}/versions?module=mcu"),
        None,
    )
    .await;
    assert_eq!(r.json()["versions"], json!([{"version":"m1","devices":1}]));
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/products/{product}/versions?module=wifi"),
        None,
    )
    .await;
    assert_eq!(r.json()["versions"], json!([]));
    assert_eq!(r.json()["devices"], 0);
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/products/{other_product}/versions"),
        None,
    )
    .await;
    assert_eq!(r.json()["versions"], json!([{"version":"1.0","devices":1}]));
    // ties sort by version
    post(
        &app,
        k,
        &format!("/v1/devices/{}/versions", ids["a"]),
        json!({"version":"0.9"}),
    )
    .await
    .expect(200);
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/products/{product}/versions"),
        None,
    )
    .await;
    assert_eq!(
        r.json()["versions"],
        json!([
            {"version":"2.0","devices":3},
            {"version":"0.9","devices":2},
            {"version":"1.0","devices":1},
        ])
    );
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/products/{product}/versions?module=a/b"),
        None,
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "module");
    call(&app, Some(k), "GET", "/v1/products/999999/versions", None)
        .await
        .expect(404);
}

// SPEC M1, D3, D4, D5, D6
async fn other_tenants_get_404_and_see_nothing(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let k = &t.admin;
    let product = create_product(&app, k, "Meter", "alink").await;
    import_names(&app, k, product, &["a"]).await;
    let dev = device_ids(&app, k, product).await["a"];
    let g = create_group(&app, k, "g", None).await;
    post(
        &app,
        k,
        &format!("/v1/groups/{g}/devices"),
        json!({"device_ids":[dev]}),
    )
    .await
    .expect(200);
    let tree = post(&app, k, "/v1/asset-trees", json!({"name":"Sites"}))
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    let node = create_node(&app, k, tree, "n", None).await;
    call(
        &app,
        Some(k),
        "PUT",
        &format!("/v1/devices/{dev}/tags"),
        Some(json!({"env":"prod"})),
    )
    .await
    .expect(200);

    let other = t.other_tenant("globex").await;
    for (m, path, body) in [
        ("GET", format!("/v1/groups/{g}"), None),
        (
            "PATCH",
            format!("/v1/groups/{g}"),
            Some(json!({"name":"mine"})),
        ),
        ("DELETE", format!("/v1/groups/{g}"), None),
        ("GET", format!("/v1/groups/{g}/devices"), None),
        (
            "POST",
            format!("/v1/groups/{g}/devices"),
            Some(json!({"device_ids":[dev]})),
        ),
        ("GET", format!("/v1/groups?parent_id={g}"), None),
        (
            "POST",
            "/v1/groups".into(),
            Some(json!({"name":"x","parent_id":g})),
        ),
        ("GET", format!("/v1/devices/{dev}/groups"), None),
        ("GET", format!("/v1/asset-trees/{tree}"), None),
        ("GET", format!("/v1/asset-trees/{tree}/nodes"), None),
        (
            "POST",
            format!("/v1/asset-trees/{tree}/nodes"),
            Some(json!({"name":"x"})),
        ),
        ("DELETE", format!("/v1/asset-trees/{tree}"), None),
        ("GET", format!("/v1/asset-nodes/{node}"), None),
        ("DELETE", format!("/v1/asset-nodes/{node}"), None),
        ("GET", format!("/v1/asset-nodes/{node}/devices"), None),
        (
            "POST",
            format!("/v1/asset-nodes/{node}/devices"),
            Some(json!({"device_ids":[dev]})),
        ),
        ("GET", format!("/v1/devices/{dev}/tags"), None),
        ("GET", format!("/v1/devices?group_id={g}"), None),
        ("GET", format!("/v1/devices?asset_node_id={node}"), None),
        ("GET", format!("/v1/devices?product_id={product}"), None),
        (
            "GET",
            format!("/v1/devices/export.csv?product_id={product}"),
            None,
        ),
        ("GET", format!("/v1/products/{product}/versions"), None),
    ] {
        let r = call(&app, Some(&other), m, &path, body).await;
        r.expect(404);
        assert_eq!(r.json()["code"], "not_found", "{m} {path}");
    }
    // the other tenant's own group cannot take this tenant's device
    let og = create_group(&app, &other, "theirs", None).await;
    let r = post(
        &app,
        &other,
        &format!("/v1/groups/{og}/devices"),
        json!({"device_ids":[dev]}),
    )
    .await;
    r.expect(400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains(&dev.to_string()));
    // and its searches and lists are empty
    for path in [
        "/v1/devices",
        "/v1/devices?tag=env:prod",
        "/v1/devices?name_prefix=a",
        "/v1/asset-trees",
    ] {
        let r = call(&app, Some(&other), "GET", path, None).await;
        r.expect(200);
        assert_eq!(r.json()["items"].as_array().unwrap().len(), 0, "{path}");
    }
    let roots = call(&app, Some(&other), "GET", "/v1/groups", None)
        .await
        .json();
    assert_eq!(roots["items"].as_array().unwrap().len(), 1);
    // the owner's data is untouched
    call(&app, Some(k), "GET", &format!("/v1/groups/{g}"), None)
        .await
        .expect(200);
    let r = call(
        &app,
        Some(k),
        "GET",
        &format!("/v1/groups/{g}/devices"),
        None,
    )
    .await;
    assert_eq!(names(&r), sorted(&["a"]));
}
