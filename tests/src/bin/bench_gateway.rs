//! Benchmark of the device gateway: pushes published through the embedded broker to connected
//! test devices, and uplinks received and routed, per second. In-process server on SQLite;
//! devices are rumqttc clients with Link Kit credentials on loopback.

use anyhow::{anyhow, Result};
use hmac::{Hmac, Mac};
use ota_server::app::{build_state, start_gateway};
use ota_server::clock::SystemClock;
use ota_server::config::Config;
use ota_server::dispatch::gateway::DeviceIdentity;
use ota_server::dispatch::router::NoOffers;
use ota_server::dispatch::FirmwarePush;
use ota_server::domain::*;
use ota_server::metrics::MessageKind;
use ota_server::store::{NewProduct, Store};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn password(pk: &str, dn: &str, secret: &str, ts: &str) -> Result<String> {
    let content = format!("clientId{pk}&{dn}deviceName{dn}productKey{pk}timestamp{ts}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())?;
    mac.update(content.as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let devices: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let pushes_per_device: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(500);
    let uplinks_per_device: usize = pushes_per_device;
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    config.mqtt.port = 0;
    // the benchmark fires pushes open loop; the scheduler paces them in production
    config.mqtt.max_mqueue_len = pushes_per_device * 2;
    // and measures the router's throughput, not the per-device uplink allowance
    config.mqtt.uplinks_per_sec = 1e9;
    config.mqtt.uplink_burst = u32::MAX;
    let store = Store::connect(
        &format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display()),
        8,
    )
    .await?;
    let now = chrono_now();
    let (tenant, _) = store
        .create_tenant(&DisplayName::parse("n", "bench")?, now)
        .await?;
    let product = store
        .create_product(
            tenant.id,
            NewProduct {
                product_key: Some(ProductKey::parse("pk", "pkBench")?),
                name: DisplayName::parse("n", "bench")?,
                protocol: Protocol::Alink,
                require_verification: false,
                description: String::new(),
            },
            now,
        )
        .await?;
    let state = build_state(
        config,
        store.clone(),
        Arc::new(SystemClock),
        "http://127.0.0.1:1".into(),
    )
    .await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(100_000);
    let gw = start_gateway(&state, Some(Arc::new(NoOffers)), Some(tx)).await?;
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let port = gw
        .embedded
        .as_ref()
        .ok_or_else(|| anyhow!("the embedded broker is not running"))?
        .tcp_addr
        .port();

    let received = Arc::new(AtomicU64::new(0));
    let mut clients = vec![];
    for i in 0..devices {
        let dn = format!("dev{i:05}");
        let d = store
            .create_device(
                tenant.id,
                product.id,
                NewDevice {
                    name: DeviceName::parse("n", dn.clone())?,
                    secret: None,
                },
                now,
            )
            .await?;
        let ts = (now + i as i64).to_string();
        let mut o = MqttOptions::new(
            format!("pkBench&{dn}|securemode=3,signmethod=hmacsha1,timestamp={ts}|"),
            "127.0.0.1",
            port,
        );
        o.set_credentials(
            format!("{dn}&pkBench"),
            password("pkBench", &dn, &d.secret, &ts)?,
        );
        o.set_keep_alive(Duration::from_secs(60));
        o.set_inflight(1000);
        let (client, mut ev) = AsyncClient::new(o, 10_000);
        let received = received.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("bench client {dn}: {e}");
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .map_err(|_| anyhow!("device {i} did not connect"))??;
        clients.push((
            client,
            DeviceIdentity {
                product_key: "pkBench".into(),
                device: format!("dev{i:05}"),
            },
        ));
    }

    let push = FirmwarePush {
        module: ModuleName::default_module(),
        version: Version::parse("v", "2.0.0")?,
        url: "http://127.0.0.1:1/dl/token".into(),
        size: 1024,
        sign_method: SignMethod::Md5,
        sign: "0123456789abcdef0123456789abcdef".into(),
        is_diff: false,
        ext_data: vec![],
    };
    let total = (devices * pushes_per_device) as u64;
    let start = Instant::now();
    for _ in 0..pushes_per_device {
        for (_, id) in &clients {
            gw.router.push(Protocol::Alink, id, &push).await;
        }
    }
    let sent = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let got = received.load(Ordering::Relaxed);
    println!("bench-gateway: {devices} devices connected to the embedded broker");
    println!(
        "bench-gateway: pushes: {got} of {total} delivered in {:.2} s: {:.0} pushes/s delivered (published in {:.2} s: {:.0}/s)",
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64(),
        sent.as_secs_f64(),
        total as f64 / sent.as_secs_f64()
    );

    e2e::table_row(
        "gateway: pushes delivered per second (in process)",
        "-",
        &format!("{:.0}/s", got as f64 / elapsed.as_secs_f64()),
    );
    let metrics = state.metrics.clone();
    let routed = || metrics.message_count(MessageKind::Progress);
    let utotal = (devices * uplinks_per_device) as u64;
    let start = Instant::now();
    let mut senders = vec![];
    for (client, id) in &clients {
        let client = client.clone();
        let topic = format!("/ota/device/progress/{}/{}", id.product_key, id.device);
        senders.push(tokio::spawn(async move {
            for n in 0..uplinks_per_device {
                let payload = format!(
                    "{{\"id\":\"{n}\",\"params\":{{\"step\":\"{}\",\"desc\":\"bench\"}}}}",
                    n % 100
                );
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    for s in senders {
        s.await?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while routed() < utotal && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    println!(
        "bench-gateway: uplinks: {} of {utotal} routed in {:.2} s: {:.0} uplinks/s",
        routed(),
        elapsed.as_secs_f64(),
        routed() as f64 / elapsed.as_secs_f64()
    );
    e2e::table_row(
        "gateway: uplinks routed per second (in process)",
        "-",
        &format!("{:.0}/s", routed() as f64 / elapsed.as_secs_f64()),
    );
    Ok(())
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
