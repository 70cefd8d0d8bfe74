//! Benchmark of rollout creation at fleet scale: a fresh release-built server (SQLite, or
//! PostgreSQL with `--postgres`) with 1,000,000 devices, 90 % of them on version 1.0.0 and
//! 10 % already on the target 2.0.0; then
//! 1. a rollout with scope `all` and the source-version filter 1.0.0 (900,000 tasks),
//! 2. that rollout cancelled as a whole,
//! 3. a 1,000,000-row device-list CSV uploaded and a `selected` rollout over it.
//!
//! It prints each step's time and the server's peak RSS. Arguments: devices (default
//! 1,000,000), `--postgres` (uses `TEST_PG_URL`, default the local server's `test` database,
//! in a fresh schema).
//!
//! The devices' reported versions are written straight into the database (one statement):
//! a million version reports over MQTT would measure the gateway, not rollout creation.

use anyhow::{anyhow, bail, Result};
use e2e::*;
use serde_json::{json, Value};
use std::time::Instant;

async fn post(http: &reqwest::Client, key: &str, url: String, body: Value) -> Result<Value> {
    let r = http.post(&url).bearer_auth(key).json(&body).send().await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        bail!("POST {url}: {status} {v}");
    }
    Ok(v)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let postgres = args.iter().any(|a| a == "--postgres");
    let devices: usize = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let pg_url = if postgres {
        Some(fresh_pg_database().await?)
    } else {
        None
    };
    let mut env = vec![(
        "OTA_LOG__LEVEL".to_owned(),
        "warn,ota_server=info".to_owned(),
    )];
    if let Some(u) = &pg_url {
        env.push(("OTA_DATABASE__URL".into(), u.clone()));
    }
    let srv = Server::start(ServerOptions {
        release: true,
        env,
        ..Default::default()
    })
    .await?;
    let pid = srv.pid().ok_or_else(|| anyhow!("no server pid"))?;
    let key = srv.create_tenant("bench").await?;
    let http = client(None)?;
    let base = srv.base.clone();
    let product = post(
        &http,
        &key,
        format!("{base}/v1/products"),
        json!({"name": "bench", "protocol": "alink", "product_key": "a1Bench"}),
    )
    .await?["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("no product id"))?;
    let mut csv = String::with_capacity(devices * 20);
    csv.push_str("name\n");
    for i in 0..devices {
        csv.push_str(&format!("bench-{i:07}\n"));
    }
    let r = http
        .post(format!("{base}/v1/products/{product}/devices/import"))
        .bearer_auth(&key)
        .header("Content-Type", "text/csv")
        .body(csv.clone())
        .send()
        .await?;
    if r.status() != 201 {
        bail!("import: {}", r.text().await?);
    }
    eprintln!("bench-rollout: {devices} devices imported");
    let package = post(
        &http,
        &key,
        format!("{base}/v1/products/{product}/packages"),
        json!({"module": "default", "version": "2.0.0", "kind": "full", "sign_method": "md5"}),
    )
    .await?;
    let package = package["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("no package id"))?;
    let r = http
        .put(format!("{base}/v1/packages/{package}/files/fw.bin"))
        .bearer_auth(&key)
        .body(vec![7u8; 4096])
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("file upload: {}", r.text().await?);
    }
    // 90 % report 1.0.0, 10 % the target already (B10 leaves them out).
    let versions = "INSERT INTO device_module (device_id, module, tenant_id, product_id, version, updated_at) \
         SELECT id, 'default', tenant_id, product_id, \
         CASE WHEN id % 10 = 0 THEN '2.0.0' ELSE '1.0.0' END, 0 FROM device";
    match &pg_url {
        Some(u) => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(u).await?;
            sqlx::query(versions).execute(&mut c).await?;
            sqlx::query("ANALYZE device, device_module, task")
                .execute(&mut c)
                .await?;
        }
        None => {
            use sqlx::Connection;
            let url = format!("sqlite://{}", srv.data_dir.join("ota.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await?;
            sqlx::query(versions).execute(&mut c).await?;
            // SQLite's ANALYZE takes one name or none
            sqlx::query("ANALYZE").execute(&mut c).await?;
        }
    }
    let rss_before = peak_rss_bytes(pid).unwrap_or(0);
    eprintln!("bench-rollout: versions written; creating rollouts");

    let t = Instant::now();
    let all = post(
        &http,
        &key,
        format!("{base}/v1/packages/{package}/rollouts"),
        json!({"scope": {"kind": "all"}, "source_versions": ["1.0.0"]}),
    )
    .await?;
    let t_all = t.elapsed();
    eprintln!("bench-rollout: scope all took {:.2} s", t_all.as_secs_f64());
    let all_id = all["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("no rollout id: {all}"))?;
    let status: Value = http
        .get(format!("{base}/v1/rollouts/{all_id}"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;

    let t = Instant::now();
    post(
        &http,
        &key,
        format!("{base}/v1/rollouts/{all_id}/cancel"),
        json!({}),
    )
    .await?;
    let t_cancel = t.elapsed();

    // The device-list template's header.
    csv.replace_range(.."name\n".len(), "deviceName\n");
    let t = Instant::now();
    let r = http
        .post(format!("{base}/v1/products/{product}/device-lists"))
        .bearer_auth(&key)
        .header("Content-Type", "text/csv")
        .body(csv)
        .send()
        .await?;
    if r.status() != 201 {
        bail!("device list: {}", r.text().await?);
    }
    let list: Value = r.json().await?;
    let t_list = t.elapsed();
    let selected = post(
        &http,
        &key,
        format!("{base}/v1/packages/{package}/rollouts"),
        json!({"scope": {"kind": "selected", "device_list_id": list["id"]}}),
    )
    .await?;
    let t_csv = t.elapsed();
    let selected_status: Value = http
        .get(format!(
            "{base}/v1/rollouts/{}",
            selected["id"].as_i64().unwrap_or_default()
        ))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    let peak = peak_rss_bytes(pid).unwrap_or(0);

    let db = if postgres { "PostgreSQL" } else { "SQLite" };
    println!("bench-rollout: {devices} devices on {db}");
    println!(
        "bench-rollout: scope all + source version: {:.2} s, {} tasks (status: {})",
        t_all.as_secs_f64(),
        status["counts"]["waiting"],
        status["counts"]
    );
    println!(
        "bench-rollout: cancel that rollout: {:.2} s",
        t_cancel.as_secs_f64()
    );
    println!(
        "bench-rollout: selected from a {devices}-row CSV: {:.2} s in all (upload {:.2} s), {} tasks",
        t_csv.as_secs_f64(),
        t_list.as_secs_f64(),
        selected_status["counts"]["waiting"]
    );
    println!(
        "bench-rollout: server peak RSS {:.0} MB (before the rollouts {:.0} MB)",
        peak as f64 / 1048576.0,
        rss_before as f64 / 1048576.0
    );
    table_row(
        &format!("rollout over {devices} devices, scope all + source version ({db})"),
        "< 5 s",
        &format!("{:.2} s", t_all.as_secs_f64()),
    );
    table_row(
        &format!("rollout over a {devices}-row CSV, upload + create ({db})"),
        "< 15 s",
        &format!("{:.2} s", t_csv.as_secs_f64()),
    );
    table_row(
        &format!("rollout creation peak RSS ({db})"),
        "< 300 MB",
        &format!("{:.0} MB", peak as f64 / 1048576.0),
    );
    Ok(())
}
