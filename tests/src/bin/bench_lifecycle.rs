//! Benchmark of whole task lifecycles: N simulated Link Kit devices (default 10,000) connect
//! to a fresh release-built server, a rollout with no rate limit takes them all, and each
//! device answers its push with progress 50 and then the new version (downloading nothing).
//! Prints task lifecycles completed per second (push -> progress -> success, all persisted),
//! device uplinks persisted per second, and the raw rate at which pushes reached the devices,
//! for the embedded broker on SQLite, on PostgreSQL, and for the machine's Mosquitto
//! (external-broker mode, SQLite). Arguments: devices; `--only sqlite|postgres|mosquitto`.

use anyhow::{anyhow, bail, Result};
use e2e::sim::{start_device, Behaviour, SimBroker, SimDevice, SimStats};
use e2e::*;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PK: &str = "a1Life";

fn secret(i: usize) -> String {
    format!("life-secret-{i:06}-abcdef")
}

/// One run's figures.
struct Figures {
    /// From the first push reaching a device to the last success persisted.
    lifecycles_per_sec: f64,
    /// From the rollout's creation (the first tick waits up to one tick) to the last success.
    end_to_end_secs: f64,
    uplinks_per_sec: f64,
    pushes_per_sec: f64,
    peak_rss_mb: f64,
}

async fn run(devices: usize, mode: &str) -> Result<Figures> {
    let mut env = vec![
        (
            "OTA_LOG__LEVEL".to_owned(),
            "warn,ota_server=info".to_owned(),
        ),
        // every device's push in one tick, and its reports in large batches
        (
            "OTA_SCHEDULER__MAX_RELEASE_PER_TICK".to_owned(),
            devices.max(1).to_string(),
        ),
    ];
    if mode == "postgres" {
        env.push(("OTA_DATABASE__URL".into(), fresh_pg_database().await?));
    }
    if mode == "mosquitto" {
        env.push(("OTA_MQTT__MODE".into(), "external".into()));
        env.push((
            "OTA_MQTT__EXTERNAL__URL".into(),
            "mqtt://127.0.0.1:1883".into(),
        ));
        env.push((
            "OTA_MQTT__EXTERNAL__CLIENT_ID".into(),
            format!("bench-life-{}", std::process::id()),
        ));
    }
    let srv = Server::start(ServerOptions {
        release: true,
        env,
        ..Default::default()
    })
    .await?;
    let pid = srv.pid().ok_or_else(|| anyhow!("no server pid"))?;
    let key = srv.create_tenant("life").await?;
    let http = client(None)?;
    let base = srv.base.clone();
    let post = |path: String, body: Value| {
        let (http, key, base) = (http.clone(), key.clone(), base.clone());
        async move {
            let r = http
                .post(format!("{base}{path}"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await?;
            let status = r.status();
            let v: Value = r.json().await?;
            if !status.is_success() {
                bail!("{path}: {status} {v}");
            }
            Ok::<Value, anyhow::Error>(v)
        }
    };
    let product = post(
        "/v1/products".into(),
        json!({"name": "life", "protocol": "alink", "product_key": PK}),
    )
    .await?["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("no product id"))?;
    let mut csv = String::from("name,secret\n");
    for i in 0..devices {
        csv.push_str(&format!("life-{i:06},{}\n", secret(i)));
    }
    let r = http
        .post(format!("{base}/v1/products/{product}/devices/import"))
        .bearer_auth(&key)
        .header("Content-Type", "text/csv")
        .body(csv)
        .send()
        .await?;
    if r.status() != 201 {
        bail!("import failed: {}", r.text().await?);
    }
    let pkg = post(
        format!("/v1/products/{product}/packages"),
        json!({"version": "2.0.0", "sign_method": "md5"}),
    )
    .await?["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("no package id"))?;
    http.put(format!("{base}/v1/packages/{pkg}/files/fw.bin"))
        .bearer_auth(&key)
        .body(vec![0u8; 1024])
        .send()
        .await?;
    http.patch(format!("{base}/v1/packages/{pkg}"))
        .bearer_auth(&key)
        .json(&json!({"status": "no_need"}))
        .send()
        .await?;

    let broker = match mode {
        "mosquitto" => SimBroker {
            host: "127.0.0.1".into(),
            port: 1883,
            subscribe: true,
        },
        _ => {
            let addr = srv
                .mqtt
                .clone()
                .ok_or_else(|| anyhow!("no embedded broker address"))?;
            let (h, p) = addr
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("bad address {addr}"))?;
            SimBroker {
                host: h.to_owned(),
                port: p.parse()?,
                subscribe: false,
            }
        }
    };
    let stats = Arc::new(SimStats::default());
    let mut fleet: Vec<SimDevice> = Vec::with_capacity(devices);
    for chunk in (0..devices).collect::<Vec<_>>().chunks(500) {
        for i in chunk {
            let name = format!("life-{i:06}");
            fleet.push(
                start_device(
                    &broker,
                    (PK, &name, &secret(*i)),
                    "1.0.0",
                    Behaviour::Succeed,
                    stats.clone(),
                )
                .await?,
            );
        }
        // connect in steps, so the storm itself is not what is measured
        let want = fleet.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while stats.connected.load(Ordering::Relaxed) < want {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {want} devices connected",
                    stats.connected.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if mode != "mosquitto" {
        wait_online(&http, &base, devices as i64).await?;
    } else {
        // the subscriptions are in once every device's SUBACK came; rumqttc does not say,
        // so give Mosquitto a moment per thousand devices
        tokio::time::sleep(Duration::from_millis(200 + devices as u64 / 10)).await;
    }
    let before_uplinks = stats.uplinks.load(Ordering::Relaxed);
    let t0 = stats.elapsed_ms();
    let rollout = post(
        format!("/v1/packages/{pkg}/rollouts"),
        json!({"scope": {"kind": "all"}}),
    )
    .await?["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("no rollout id"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let done_ms = loop {
        let r: Value = http
            .get(format!("{base}/v1/rollouts/{rollout}"))
            .bearer_auth(&key)
            .send()
            .await?
            .json()
            .await?;
        if r["counts"]["succeeded"].as_u64() == Some(devices as u64) {
            break stats.elapsed_ms();
        }
        if Instant::now() > deadline {
            bail!("not every task succeeded in 10 minutes: {}", r["counts"]);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let uplinks = stats.uplinks.load(Ordering::Relaxed) - before_uplinks;
    let first = stats.first_push_ms.load(Ordering::Relaxed);
    let last = stats.last_push_ms.load(Ordering::Relaxed);
    let secs = |ms: u64| (ms.max(1)) as f64 / 1000.0;
    let figures = Figures {
        lifecycles_per_sec: devices as f64 / secs(done_ms.saturating_sub(first)),
        end_to_end_secs: secs(done_ms - t0),
        uplinks_per_sec: uplinks as f64 / secs(done_ms.saturating_sub(first)),
        pushes_per_sec: devices as f64 / secs(last.saturating_sub(first)),
        peak_rss_mb: peak_rss_bytes(pid).unwrap_or(0) as f64 / 1048576.0,
    };
    drop(fleet);
    Ok(figures)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let devices: usize = args
        .iter()
        .find(|a| a.chars().all(|c| c.is_ascii_digit()))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let fds = raise_fd_limit()?;
    if (fds as usize) < devices + 1000 {
        bail!("the open-file limit is {fds}; {devices} devices need more (raise `ulimit -n`)");
    }
    println!("bench-lifecycle: {devices} simulated Link Kit devices, a rollout with no rate limit, each device: push -> progress 50 -> reports the new version");
    for mode in ["sqlite", "postgres", "mosquitto"] {
        if only.as_deref().is_some_and(|o| o != mode) {
            continue;
        }
        let what = match mode {
            "sqlite" => "embedded broker, SQLite",
            "postgres" => "embedded broker, PostgreSQL",
            _ => "Mosquitto (external broker), SQLite",
        };
        match run(devices, mode).await {
            Ok(f) => {
                println!(
                    "bench-lifecycle: {what}: {:.0} lifecycles/s (first push to last success; {:.2} s from the rollout's creation), {:.0} uplinks persisted/s, pushes reached devices at {:.0}/s, server peak RSS {:.0} MB",
                    f.lifecycles_per_sec, f.end_to_end_secs, f.uplinks_per_sec, f.pushes_per_sec, f.peak_rss_mb
                );
                table_row(
                    &format!("task lifecycles per second, {devices} devices ({what})"),
                    ">= 10000/s",
                    &format!(
                        "{:.0}/s (uplinks {:.0}/s, pushes {:.0}/s)",
                        f.lifecycles_per_sec, f.uplinks_per_sec, f.pushes_per_sec
                    ),
                );
            }
            Err(e) => println!("bench-lifecycle: {what}: failed: {e}"),
        }
    }
    Ok(())
}
