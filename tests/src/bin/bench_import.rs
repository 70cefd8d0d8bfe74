//! Benchmark: imports 1,000,000 devices through the API into a fresh server (release build,
//! embedded SQLite) and prints the time and the server's peak RSS.

use anyhow::{bail, Result};
use e2e::*;
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<()> {
    let rows: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let srv = Server::start(ServerOptions {
        release: true,
        env: vec![("OTA_LOG__LEVEL".into(), "warn,ota_server=info".into())],
        ..Default::default()
    })
    .await?;
    let key = srv.create_tenant("bench").await?;
    let http = client(None)?;
    let p: serde_json::Value = http
        .post(format!("{}/v1/products", srv.base))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "bench", "protocol": "alink"}))
        .send()
        .await?
        .json()
        .await?;
    let pid = p["id"].as_i64().unwrap_or_default();
    let mut csv = String::with_capacity(rows * 20);
    csv.push_str("name\n");
    for i in 0..rows {
        csv.push_str(&format!("bench-device-{i:07}\n"));
    }
    let bytes = csv.len();
    let rss_before = srv.pid().and_then(peak_rss_bytes).unwrap_or(0);
    let start = Instant::now();
    let r = http
        .post(format!("{}/v1/products/{pid}/devices/import", srv.base))
        .bearer_auth(&key)
        .header("Content-Type", "text/csv")
        .body(csv)
        .send()
        .await?;
    let status = r.status();
    let body = r.text().await?;
    let elapsed = start.elapsed();
    if status != 201 {
        bail!("import failed: {status} {body}");
    }
    let peak = srv.pid().and_then(peak_rss_bytes).unwrap_or(0);
    println!(
        "bench-import: {rows} devices, {:.1} MB of CSV",
        bytes as f64 / 1e6
    );
    println!("bench-import: reply {body}");
    println!(
        "bench-import: time {:.2} s ({:.0} devices/s)",
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64()
    );
    println!(
        "bench-import: server peak RSS {:.0} MB (before the import {:.0} MB)",
        peak as f64 / 1048576.0,
        rss_before as f64 / 1048576.0
    );
    table_row(
        &format!("device import, {rows} rows (SQLite)"),
        "-",
        &format!(
            "{:.2} s, peak RSS {:.0} MB",
            elapsed.as_secs_f64(),
            peak as f64 / 1048576.0
        ),
    );
    // The server logs how long it read and validated the upload (no lock held) and how long
    // it wrote it (one transaction).
    if let Some(line) = srv.log.lock().ok().and_then(|l| {
        l.iter()
            .rev()
            .find(|l| l.contains("devices imported"))
            .cloned()
    }) {
        println!("bench-import: server log: {}", line.trim());
    }
    Ok(())
}
