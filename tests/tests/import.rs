//! A device import never stalls the rest of the server: while a slow upload arrives, devices
//! connect over MQTT and their version reports are stored at once (issue 6, item 1), on
//! SQLite and on PostgreSQL, through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::*;
use hmac::{Hmac, Mac};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DEVICES: usize = 20;
/// The upload goes on until the reports are checked, at most this many rows.
const MAX_SLOW_ROWS: usize = 3_000;
const ROW_EVERY: Duration = Duration::from_millis(20);
/// How long the reports may take to be stored, counted from the last one sent. An import
/// that held the database while its upload arrived would keep them waiting until it ends
/// (the upload goes on for up to a minute), or until SQLite's 30 s busy timeout.
const REPORT_BOUND: Duration = Duration::from_secs(10);

fn alink_password(pk: &str, dn: &str, secret: &str, ts: &str) -> String {
    let content = format!("clientId{pk}&{dn}deviceName{dn}productKey{pk}timestamp{ts}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(content.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Connects a Link Kit style device and waits for its CONNACK.
async fn connect(port: u16, pk: &str, dn: &str, secret: &str) -> AsyncClient {
    let ts = "1700000000000";
    let mut o = MqttOptions::new(
        format!("{pk}&{dn}|securemode=3,signmethod=hmacsha1,timestamp={ts}|"),
        "127.0.0.1",
        port,
    );
    o.set_credentials(format!("{dn}&{pk}"), alink_password(pk, dn, secret, ts));
    o.set_keep_alive(Duration::from_secs(60));
    let (client, mut ev) = AsyncClient::new(o, 16);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("CONNACK in time")
        .unwrap();
    client
}

async fn slow_import_does_not_stall_devices(env: Vec<(String, String)>) {
    let srv = Server::start(ServerOptions {
        env,
        ..Default::default()
    })
    .await
    .unwrap();
    let key = srv.create_tenant("acme").await.unwrap();
    let http = client(None).unwrap();
    let base = srv.base.clone();
    let port: u16 = srv
        .mqtt
        .as_ref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let p: Value = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(&key)
        .json(&json!({"name": "m", "protocol": "alink", "product_key": "a1Stall"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = p["id"].as_i64().unwrap();
    let mut devices = vec![];
    for i in 0..DEVICES {
        let d: Value = http
            .post(format!("{base}/v1/products/{pid}/devices"))
            .bearer_auth(&key)
            .json(&json!({ "name": format!("live-{i}") }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        devices.push(d);
    }

    // The slow upload: a header at once, then a row every few tens of milliseconds until
    // the test has seen the reports stored. The server has started on it once the first
    // rows have been taken off the channel.
    let (row_tx, row_rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let producer = tokio::spawn(async move {
        let _ = row_tx.send(Ok("name\n".to_owned())).await;
        let mut started = Some(started_tx);
        let mut sent = 0;
        while sent < MAX_SLOW_ROWS && stop_rx.try_recv().is_err() {
            tokio::time::sleep(ROW_EVERY).await;
            if row_tx.send(Ok(format!("slow-{sent:04}\n"))).await.is_err() {
                break;
            }
            sent += 1;
            if sent == 5 {
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
        }
        sent
    });
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(row_rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    }));
    let import = {
        let http = http.clone();
        let key = key.clone();
        let url = format!("{base}/v1/products/{pid}/devices/import");
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(&key)
                .header("Content-Type", "text/csv")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        })
    };
    started_rx.await.unwrap();

    // Meanwhile the fleet connects and reports.
    let mut clients = vec![];
    for d in &devices {
        let dn = d["name"].as_str().unwrap();
        let c = connect(port, "a1Stall", dn, d["secret"].as_str().unwrap()).await;
        c.publish(
            format!("/ota/device/inform/a1Stall/{dn}"),
            QoS::AtLeastOnce,
            false,
            r#"{"id":"1","params":{"version":"3.1.4"}}"#,
        )
        .await
        .unwrap();
        clients.push(c);
    }
    let sent = Instant::now();
    let mut stored = 0;
    while sent.elapsed() < REPORT_BOUND {
        stored = 0;
        for d in &devices {
            let v: Value = http
                .get(format!("{base}/v1/devices/{}", d["id"]))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["modules"][0]["version"] == "3.1.4" && v["online"] == true {
                stored += 1;
            }
        }
        if stored == DEVICES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let problems = || -> Vec<String> {
        srv.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .cloned()
            .collect()
    };
    assert_eq!(
        stored,
        DEVICES,
        "every report is stored within {REPORT_BOUND:?} of being sent; server problems: {:?}",
        problems()
    );
    assert!(
        !producer.is_finished() && !import.is_finished(),
        "the reports were stored while the import was still arriving"
    );
    stop_tx.send(()).unwrap();
    let sent = producer.await.unwrap();
    let (status, j) = import.await.unwrap();
    assert_eq!(status, 201, "{j}; server problems: {:?}", problems());
    assert_eq!(j["imported"], sent);
}

#[tokio::test]
async fn slow_import_does_not_stall_devices_on_sqlite() {
    slow_import_does_not_stall_devices(vec![]).await;
}

#[tokio::test]
async fn slow_import_does_not_stall_devices_on_postgresql() {
    let url = fresh_pg_database().await.unwrap();
    // One pooled connection: an import that held it while the upload arrived would stall
    // everything else.
    slow_import_does_not_stall_devices(vec![
        ("OTA_DATABASE__URL".into(), url),
        ("OTA_DATABASE__MAX_CONNECTIONS".into(), "2".into()),
    ])
    .await;
}
