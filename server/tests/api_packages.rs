//! Packages, streamed file uploads with server-computed digests, and signed, range-capable
//! downloads through the HTTP API, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::TestRequest;
use common::*;
use md5::Md5;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

db_tests!(
    uploads_stream_in_chunks_and_the_server_computes_the_digests,
    diff_needs_a_source_version_and_full_forbids_one,
    the_same_package_twice_is_a_conflict,
    viewers_read_only_and_other_tenants_see_nothing,
    the_size_limit_answers_413_and_leaves_no_file,
    status_no_need_by_hand_but_never_verified,
    deleting_removes_the_files_from_disk,
    downloads_serve_ranges_and_resume,
    download_tokens_that_are_altered_or_expired_are_denied,
    lists_filter_and_page,
);

/// Deterministic bytes that differ at every offset (xorshift).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Files left in the firmware directory.
fn stored_files(t: &TestCtx) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(t.dir.path().join("firmware"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// PUTs `parts` as a streamed body of that many chunks, with no Content-Length.
async fn put_chunks<S, B>(app: &S, key: &str, path: &str, parts: &[&[u8]]) -> Reply
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let chunks: Vec<Result<bytes::Bytes, actix_http::error::PayloadError>> = parts
        .iter()
        .map(|p| Ok(bytes::Bytes::copy_from_slice(p)))
        .collect();
    let stream: actix_http::BoxedPayloadStream = Box::pin(futures_util::stream::iter(chunks));
    let req = TestRequest::put()
        .uri(path)
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Content-Type", "application/octet-stream"))
        .to_request();
    let (req, _) = req.replace_payload(actix_http::Payload::from(stream));
    let resp = actix_web::test::call_service(app, req).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = actix_web::test::read_body(resp).await;
    Reply {
        status,
        headers,
        body,
    }
}

async fn create_package<S, B>(app: &S, key: &str, product: i64, body: Value) -> i64
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(
        app,
        Some(key),
        "POST",
        &format!("/v1/products/{product}/packages"),
        Some(body),
    )
    .await;
    r.expect(201);
    r.json()["id"].as_i64().unwrap()
}

async fn upload<S, B>(app: &S, key: &str, package: i64, name: &str, bytes: &[u8]) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call_raw(
        app,
        Some(key),
        "PUT",
        &format!("/v1/packages/{package}/files/{name}"),
        "application/octet-stream",
        bytes.to_vec(),
    )
    .await;
    r.expect(201);
    r.json()
}

/// The path part of a download URL handed out with the test public URL.
fn dl_path(url: &Value) -> String {
    url.as_str()
        .unwrap()
        .strip_prefix("http://ota.test")
        .unwrap()
        .to_owned()
}

async fn new_key<S, B>(app: &S, admin: &str, role: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(
        app,
        Some(admin),
        "POST",
        "/v1/keys",
        Some(json!({"name": role, "role": role})),
    )
    .await;
    r.expect(201);
    r.json()["secret"].as_str().unwrap().to_owned()
}

// SPEC P1
// SPEC M2
async fn uploads_stream_in_chunks_and_the_server_computes_the_digests(db: Db) {
    // A JSON limit far below the file size: uploads must not be subject to it.
    let t = TestCtx::with_config(db, |c| c.http.max_json_bytes = 1024).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let operator = new_key(&app, &t.admin, "operator").await;
    let pkg = create_package(
        &app,
        &operator,
        product,
        json!({"module": "mcu", "version": "2.0.1", "sign_method": "sha256", "description": "fixes"}),
    )
    .await;
    let data = content(300_000, 7);
    let parts: Vec<&[u8]> = vec![
        &data[..1],
        &data[1..65_536],
        &data[65_536..200_000],
        &data[200_000..],
    ];
    let r = put_chunks(
        &app,
        &operator,
        &format!("/v1/packages/{pkg}/files/app-2.0.1.bin"),
        &parts,
    )
    .await;
    r.expect(201);
    let f = r.json();
    assert_eq!(f["name"], "app-2.0.1.bin");
    assert_eq!(f["size"], 300_000);
    assert_eq!(f["md5"], md5_hex(&data));
    assert_eq!(f["sha256"], sha256_hex(&data));
    assert_eq!(f["sign"], sha256_hex(&data), "sign follows the sign method");
    assert!(f["download_url"]
        .as_str()
        .unwrap()
        .starts_with("http://ota.test/dl/"));
    // a package is a set of files; a second one keeps its own digests
    let small = b"second file".to_vec();
    upload(&app, &operator, pkg, "extra.bin", &small).await;
    let p = call(
        &app,
        Some(&operator),
        "GET",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await;
    p.expect(200);
    let p = p.json();
    assert_eq!(p["module"], "mcu");
    assert_eq!(p["version"], "2.0.1");
    assert_eq!(p["kind"], "full");
    assert_eq!(p["sign_method"], "sha256");
    assert_eq!(p["status"], "unverified");
    assert_eq!(p["description"], "fixes");
    let files = p["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["sha256"], sha256_hex(&data));
    assert_eq!(files[1]["name"], "extra.bin");
    assert_eq!(files[1]["md5"], md5_hex(&small));
    assert_eq!(files[1]["size"], small.len());
    // the bytes on disk are the bytes sent
    let got = send(
        &app,
        TestRequest::get().uri(&dl_path(&files[0]["download_url"])),
    )
    .await;
    got.expect(200);
    assert_eq!(got.body.as_ref(), &data[..]);
    // a name in use, a bad name and an empty body are refused, leaving nothing behind
    let before = stored_files(&t);
    assert_eq!(before.len(), 2);
    let r = call_raw(
        &app,
        Some(&operator),
        "PUT",
        &format!("/v1/packages/{pkg}/files/extra.bin"),
        "application/octet-stream",
        b"again".to_vec(),
    )
    .await;
    r.expect(409);
    assert!(r.json()["message"].as_str().unwrap().contains("extra.bin"));
    let r = call_raw(
        &app,
        Some(&operator),
        "PUT",
        &format!("/v1/packages/{pkg}/files/bad%20name"),
        "application/octet-stream",
        b"x".to_vec(),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "name");
    let r = call_raw(
        &app,
        Some(&operator),
        "PUT",
        &format!("/v1/packages/{pkg}/files/empty.bin"),
        "application/octet-stream",
        Vec::new(),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "body");
    assert_eq!(stored_files(&t), before);
    // the OpenAPI document describes the new routes
    let doc = call(&app, None, "GET", "/v1/openapi.json", None)
        .await
        .json();
    for path in [
        "/v1/products/{id}/packages",
        "/v1/packages",
        "/v1/packages/{id}",
        "/v1/packages/{id}/files/{name}",
        "/v1/packages/{id}/files/{file_id}",
        "/dl/{token}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
}

// SPEC P1
async fn diff_needs_a_source_version_and_full_forbids_one(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let path = format!("/v1/products/{product}/packages");
    let post = |body: Value| call(&app, Some(&t.admin), "POST", &path, Some(body));
    let r = post(json!({"version": "2.0", "kind": "diff"})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_version");
    assert_eq!(r.json()["code"], "invalid_input");
    let r = post(json!({"version": "2.0", "kind": "full", "source_version": "1.0"})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_version");
    let r = post(json!({"version": "2.0", "kind": "diff", "source_version": "2.0"})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_version");
    let r = post(json!({"version": "2.0", "kind": "patch"})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "kind");
    let r = post(json!({"version": "2.0", "sign_method": "crc32"})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "sign_method");
    let r = post(json!({"version": "2/0"})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "version");
    let r = post(json!({"version": "2.0", "module": "a b"})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "module");
    // a diff names its source; a full package has none, and defaults apply
    let r =
        post(json!({"version": "2.0", "kind": "diff", "source_version": "1.0", "module": "wifi"}))
            .await;
    r.expect(201);
    let d = r.json();
    assert_eq!(d["kind"], "diff");
    assert_eq!(d["source_version"], "1.0");
    assert_eq!(d["module"], "wifi");
    assert_eq!(d["product_id"], product);
    let r = post(json!({"version": "2.0"})).await;
    r.expect(201);
    let f = r.json();
    assert_eq!(f["kind"], "full");
    assert!(f.get("source_version").is_none(), "{f}");
    assert_eq!(f["module"], "default");
    assert_eq!(f["sign_method"], "md5");
    assert_eq!(f["status"], "unverified");
    assert_eq!(f["files"], json!([]));
    // an unknown product is 404
    call(
        &app,
        Some(&t.admin),
        "POST",
        "/v1/products/999999/packages",
        Some(json!({"version": "1"})),
    )
    .await
    .expect(404);
}

// SPEC P1
async fn the_same_package_twice_is_a_conflict(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let other_product = create_product(&app, &t.admin, "Gateway", "enos").await;
    let first = create_package(&app, &t.admin, product, json!({"version": "3.0"})).await;
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{product}/packages"),
        Some(json!({"version": "3.0", "description": "again"})),
    )
    .await;
    r.expect(409);
    assert_eq!(r.json()["code"], "conflict");
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains(&format!("package {first}")), "{msg}");
    assert!(msg.contains("3.0"), "{msg}");
    // another module, another product, or diffs from different sources are distinct
    create_package(
        &app,
        &t.admin,
        product,
        json!({"version": "3.0", "module": "mcu"}),
    )
    .await;
    create_package(&app, &t.admin, other_product, json!({"version": "3.0"})).await;
    create_package(
        &app,
        &t.admin,
        product,
        json!({"version": "3.0", "kind": "diff", "source_version": "2.0"}),
    )
    .await;
    create_package(
        &app,
        &t.admin,
        product,
        json!({"version": "3.0", "kind": "diff", "source_version": "2.5"}),
    )
    .await;
    let r = call(
        &app,
        Some(&t.admin),
        "POST",
        &format!("/v1/products/{product}/packages"),
        Some(json!({"version": "3.0", "kind": "diff", "source_version": "2.0"})),
    )
    .await;
    r.expect(409);
    assert!(r.json()["message"].as_str().unwrap().contains("diff"));
}

// SPEC M1
async fn viewers_read_only_and_other_tenants_see_nothing(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let viewer = new_key(&app, &t.admin, "viewer").await;
    let operator = new_key(&app, &t.admin, "operator").await;
    let path = format!("/v1/products/{product}/packages");
    let r = call(
        &app,
        Some(&viewer),
        "POST",
        &path,
        Some(json!({"version": "1.0"})),
    )
    .await;
    r.expect(403);
    assert_eq!(r.json()["code"], "forbidden");
    // operators manage packages
    let pkg = create_package(&app, &operator, product, json!({"version": "1.0"})).await;
    let file = upload(&app, &operator, pkg, "fw.bin", b"firmware").await;
    let file_id = file["id"].as_i64().unwrap();
    // viewers may read but not change
    call(
        &app,
        Some(&viewer),
        "GET",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .expect(200);
    call(&app, Some(&viewer), "GET", "/v1/packages", None)
        .await
        .expect(200);
    call_raw(
        &app,
        Some(&viewer),
        "PUT",
        &format!("/v1/packages/{pkg}/files/other.bin"),
        "application/octet-stream",
        b"x".to_vec(),
    )
    .await
    .expect(403);
    call(
        &app,
        Some(&viewer),
        "PATCH",
        &format!("/v1/packages/{pkg}"),
        Some(json!({"status": "no_need"})),
    )
    .await
    .expect(403);
    call(
        &app,
        Some(&viewer),
        "DELETE",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .expect(403);
    call(
        &app,
        Some(&viewer),
        "DELETE",
        &format!("/v1/packages/{pkg}/files/{file_id}"),
        None,
    )
    .await
    .expect(403);
    // another tenant: 404 for every id, and an empty list
    let other = t.other_tenant("globex").await;
    let r = call(
        &app,
        Some(&other),
        "GET",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await;
    r.expect(404);
    assert_eq!(r.json()["code"], "not_found");
    call(
        &app,
        Some(&other),
        "POST",
        &path,
        Some(json!({"version": "9.0"})),
    )
    .await
    .expect(404);
    call(
        &app,
        Some(&other),
        "PATCH",
        &format!("/v1/packages/{pkg}"),
        Some(json!({"status": "no_need"})),
    )
    .await
    .expect(404);
    call_raw(
        &app,
        Some(&other),
        "PUT",
        &format!("/v1/packages/{pkg}/files/evil.bin"),
        "application/octet-stream",
        b"x".to_vec(),
    )
    .await
    .expect(404);
    call(
        &app,
        Some(&other),
        "DELETE",
        &format!("/v1/packages/{pkg}/files/{file_id}"),
        None,
    )
    .await
    .expect(404);
    call(
        &app,
        Some(&other),
        "DELETE",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .expect(404);
    let list = call(&app, Some(&other), "GET", "/v1/packages", None).await;
    list.expect(200);
    assert_eq!(list.json()["items"], json!([]));
    // nothing of the first tenant changed
    let p = call(
        &app,
        Some(&viewer),
        "GET",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .json();
    assert_eq!(p["status"], "unverified");
    assert_eq!(p["files"].as_array().unwrap().len(), 1);
    assert_eq!(stored_files(&t).len(), 1);
}

// SPEC P1
async fn the_size_limit_answers_413_and_leaves_no_file(db: Db) {
    let t = TestCtx::with_config(db, |c| c.firmware.max_file_bytes = 1000).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let pkg = create_package(&app, &t.admin, product, json!({"version": "1.0"})).await;
    let path = format!("/v1/packages/{pkg}/files/fw.bin");
    // declared too large
    let r = call_raw(
        &app,
        Some(&t.admin),
        "PUT",
        &path,
        "application/octet-stream",
        content(1001, 1),
    )
    .await;
    r.expect(413);
    assert_eq!(r.json()["code"], "payload_too_large");
    assert!(r.json()["message"].as_str().unwrap().contains("1000 bytes"));
    // streamed without a length: refused as the bytes pass the limit
    let big = content(1500, 2);
    let r = put_chunks(
        &app,
        &t.admin,
        &path,
        &[&big[..600], &big[600..1200], &big[1200..]],
    )
    .await;
    r.expect(413);
    assert!(r.json()["message"].as_str().unwrap().contains("1000 bytes"));
    assert!(stored_files(&t).is_empty(), "{:?}", stored_files(&t));
    let p = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .json();
    assert_eq!(p["files"], json!([]));
    // exactly at the limit is fine
    let exact = content(1000, 3);
    let f = upload(&app, &t.admin, pkg, "fw.bin", &exact).await;
    assert_eq!(f["size"], 1000);
    assert_eq!(stored_files(&t).len(), 1);
}

// Part of P2: the status set by hand (verification rollouts prove the rest).
async fn status_no_need_by_hand_but_never_verified(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let pkg = create_package(&app, &t.admin, product, json!({"version": "1.0"})).await;
    let path = format!("/v1/packages/{pkg}");
    let patch = |body: Value| call(&app, Some(&t.admin), "PATCH", &path, Some(body));
    let r = patch(json!({"status": "no_need"})).await;
    r.expect(200);
    assert_eq!(r.json()["status"], "no_need");
    let r = patch(json!({"status": "verified"})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "status");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("verification rollout"),
        "{}",
        r.text()
    );
    let r = patch(json!({"status": "done"})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "status");
    // the refused changes changed nothing
    let got = call(&app, Some(&t.admin), "GET", &path, None).await.json();
    assert_eq!(got["status"], "no_need");
    let r = patch(json!({"status": "unverified", "description": "back to testing"})).await;
    r.expect(200);
    assert_eq!(r.json()["status"], "unverified");
    assert_eq!(r.json()["description"], "back to testing");
    let r = patch(json!({"description": "x".repeat(1025)})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "description");
    patch(json!({"status": "no_need"})).await.expect(200);
    let list = call(
        &app,
        Some(&t.admin),
        "GET",
        "/v1/packages?status=no_need",
        None,
    )
    .await
    .json();
    assert_eq!(list["items"][0]["id"], pkg);
    let list = call(
        &app,
        Some(&t.admin),
        "GET",
        "/v1/packages?status=unverified",
        None,
    )
    .await
    .json();
    assert_eq!(list["items"], json!([]));
}

// Part of P3: deletion removes the files (the unfinished-rollout guard comes with rollouts).
async fn deleting_removes_the_files_from_disk(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let keep = create_package(&app, &t.admin, product, json!({"version": "1.0"})).await;
    let pkg = create_package(&app, &t.admin, product, json!({"version": "2.0"})).await;
    upload(&app, &t.admin, keep, "keep.bin", &content(100, 9)).await;
    let a = upload(&app, &t.admin, pkg, "a.bin", &content(5000, 4)).await;
    let b = upload(&app, &t.admin, pkg, "b.bin", &content(7000, 5)).await;
    assert_eq!(stored_files(&t).len(), 3);
    // one file alone
    call(
        &app,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/packages/{pkg}/files/{}", a["id"]),
        None,
    )
    .await
    .expect(204);
    assert_eq!(stored_files(&t).len(), 2);
    let r = send(&app, TestRequest::get().uri(&dl_path(&a["download_url"]))).await;
    r.expect(404);
    let p = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .json();
    assert_eq!(p["files"].as_array().unwrap().len(), 1);
    // the whole package
    call(
        &app,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .expect(204);
    call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .expect(404);
    call(
        &app,
        Some(&t.admin),
        "DELETE",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .expect(404);
    let r = send(&app, TestRequest::get().uri(&dl_path(&b["download_url"]))).await;
    r.expect(404);
    assert_eq!(r.json()["code"], "not_found");
    // only the other package's file is left on disk, and it still downloads
    assert_eq!(stored_files(&t).len(), 1);
    let k = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/packages/{keep}"),
        None,
    )
    .await
    .json();
    send(
        &app,
        TestRequest::get().uri(&dl_path(&k["files"][0]["download_url"])),
    )
    .await
    .expect(200);
}

// SPEC V3
async fn downloads_serve_ranges_and_resume(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let pkg = create_package(&app, &t.admin, product, json!({"version": "1.0"})).await;
    let data = content(100_000, 11);
    let f = upload(&app, &t.admin, pkg, "fw-1.0.bin", &data).await;
    let path = dl_path(&f["download_url"]);
    // no bearer key: the token is the credential
    let full = send(&app, TestRequest::get().uri(&path)).await;
    full.expect(200);
    assert_eq!(full.body.as_ref(), &data[..]);
    let h = |r: &Reply, name: &str| {
        r.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(h(&full, "content-type"), "application/octet-stream");
    assert!(h(&full, "content-disposition").contains("fw-1.0.bin"));
    assert_eq!(h(&full, "accept-ranges"), "bytes");
    assert_eq!(md5_hex(&full.body), f["md5"].as_str().unwrap());
    // one range
    let r = send(
        &app,
        TestRequest::get()
            .uri(&path)
            .insert_header(("Range", "bytes=10-19")),
    )
    .await;
    r.expect(206);
    assert_eq!(r.body.as_ref(), &data[10..20]);
    assert_eq!(h(&r, "content-range"), "bytes 10-19/100000");
    // resume: the first 40,000 bytes, then the rest from that offset
    let head = send(
        &app,
        TestRequest::get()
            .uri(&path)
            .insert_header(("Range", "bytes=0-39999")),
    )
    .await;
    head.expect(206);
    let etag = h(&head, "etag");
    assert!(!etag.is_empty());
    let rest = send(
        &app,
        TestRequest::get()
            .uri(&path)
            .insert_header(("Range", "bytes=40000-"))
            .insert_header(("If-Range", etag.clone())),
    )
    .await;
    rest.expect(206);
    assert_eq!(h(&rest, "content-range"), "bytes 40000-99999/100000");
    let mut joined = head.body.to_vec();
    joined.extend_from_slice(&rest.body);
    assert_eq!(joined, data);
    assert_eq!(sha256_hex(&joined), f["sha256"].as_str().unwrap());
    // the last bytes by suffix
    let tail = send(
        &app,
        TestRequest::get()
            .uri(&path)
            .insert_header(("Range", "bytes=-5")),
    )
    .await;
    tail.expect(206);
    assert_eq!(tail.body.as_ref(), &data[99_995..]);
    // a range past the end
    let r = send(
        &app,
        TestRequest::get()
            .uri(&path)
            .insert_header(("Range", "bytes=100000-")),
    )
    .await;
    r.expect(416);
    assert_eq!(h(&r, "content-range"), "bytes */100000");
    // an If-Range that no longer matches gets the whole file
    let r = send(
        &app,
        TestRequest::get()
            .uri(&path)
            .insert_header(("Range", "bytes=40000-"))
            .insert_header(("If-Range", "\"not-this-file\"")),
    )
    .await;
    r.expect(200);
    assert_eq!(r.body.as_ref(), &data[..]);
    assert!(r.headers.get("content-range").is_none());
    // HEAD is answered too (a device may ask for the size first)
    let r = send(
        &app,
        TestRequest::default()
            .method(actix_web::http::Method::HEAD)
            .uri(&path),
    )
    .await;
    r.expect(200);
    assert_eq!(h(&r, "accept-ranges"), "bytes");
}

// SPEC V3
async fn download_tokens_that_are_altered_or_expired_are_denied(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let product = create_product(&app, &t.admin, "Meter", "alink").await;
    let pkg = create_package(&app, &t.admin, product, json!({"version": "1.0"})).await;
    let data = content(2048, 13);
    let f = upload(&app, &t.admin, pkg, "fw.bin", &data).await;
    let path = dl_path(&f["download_url"]);
    let token = path.strip_prefix("/dl/").unwrap().to_owned();
    // alter one character of the token
    let mut altered = token.clone().into_bytes();
    altered[3] = if altered[3] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let r = send(&app, TestRequest::get().uri(&format!("/dl/{altered}"))).await;
    r.expect(403);
    assert_eq!(r.json()["code"], "download_denied");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("not issued by this server"));
    // not a token at all
    let r = send(&app, TestRequest::get().uri("/dl/not-a-token")).await;
    r.expect(403);
    assert_eq!(r.json()["code"], "download_denied");
    assert!(r.json()["message"].as_str().unwrap().contains("malformed"));
    // valid until the ttl runs out, then expired
    let ttl = t.state.config.firmware.url_ttl_secs;
    t.clock.advance(Duration::from_secs(ttl - 1));
    send(&app, TestRequest::get().uri(&path)).await.expect(200);
    t.clock.advance(Duration::from_secs(2));
    let r = send(&app, TestRequest::get().uri(&path)).await;
    r.expect(403);
    assert_eq!(r.json()["code"], "download_denied");
    assert!(r.json()["message"].as_str().unwrap().contains("expired"));
    // reading the package again hands out a fresh URL that works
    let p = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/packages/{pkg}"),
        None,
    )
    .await
    .json();
    let fresh = dl_path(&p["files"][0]["download_url"]);
    assert_ne!(fresh, path);
    let r = send(&app, TestRequest::get().uri(&fresh)).await;
    r.expect(200);
    assert_eq!(r.body.as_ref(), &data[..]);
}

// SPEC P1
// SPEC M2
async fn lists_filter_and_page(db: Db) {
    let t = TestCtx::new(db).await;
    let app = t.service().await;
    let meter = create_product(&app, &t.admin, "Meter", "alink").await;
    let gateway = create_product(&app, &t.admin, "Gateway", "enos").await;
    let mut meter_ids = vec![];
    for v in ["1.0", "1.1", "1.2"] {
        meter_ids.push(create_package(&app, &t.admin, meter, json!({"version": v})).await);
    }
    let mcu = create_package(
        &app,
        &t.admin,
        meter,
        json!({"version": "1.0", "module": "mcu"}),
    )
    .await;
    let gw = create_package(&app, &t.admin, gateway, json!({"version": "1.0"})).await;
    upload(&app, &t.admin, gw, "gw.bin", b"gateway").await;
    let ids = |v: &Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect()
    };
    let all = call(&app, Some(&t.admin), "GET", "/v1/packages", None).await;
    all.expect(200);
    assert_eq!(ids(&all.json()).len(), 5);
    // files come with the list
    let listed_gw = all.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == gw)
        .cloned()
        .unwrap();
    assert_eq!(listed_gw["files"][0]["name"], "gw.bin");
    let r = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/packages?product_id={gateway}"),
        None,
    )
    .await
    .json();
    assert_eq!(ids(&r), vec![gw]);
    let r = call(
        &app,
        Some(&t.admin),
        "GET",
        &format!("/v1/packages?product_id={meter}&module=mcu"),
        None,
    )
    .await
    .json();
    assert_eq!(ids(&r), vec![mcu]);
    // pages of two, in id order, through the cursor
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/packages?product_id={meter}&module=default&limit=2&cursor={c}"),
            None => format!("/v1/packages?product_id={meter}&module=default&limit=2"),
        };
        let page = call(&app, Some(&t.admin), "GET", &q, None).await;
        page.expect(200);
        let page = page.json();
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, meter_ids);
    // bad filters name the field
    let r = call(
        &app,
        Some(&t.admin),
        "GET",
        "/v1/packages?status=shipped",
        None,
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "status");
    let r = call(&app, Some(&t.admin), "GET", "/v1/packages?limit=0", None).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "limit");
}
