//! Simulated Link Kit devices over MQTT (rumqttc), speaking the topics and payloads the real
//! SDK does: they report their version on connect and answer a push by behaviour (succeed,
//! fail at a step, fail once, go silent), for end-to-end tests and benchmarks.

use anyhow::Result;
use hmac::{Hmac, Mac};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a device does with a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Progress 50, then it reports the pushed version.
    Succeed,
    /// Progress 10, then the negative step, every time.
    Fail(i32),
    /// Fails with the step the first time, succeeds after.
    FailOnce(i32),
    /// Progress 10, then nothing: its task times out.
    Silent,
}

/// Counts of what simulated devices saw, shared by a fleet.
#[derive(Debug)]
pub struct SimStats {
    pub pushes: AtomicU64,
    pub connected: AtomicU64,
    pub uplinks: AtomicU64,
    /// Milliseconds since `start` of the first and last push received.
    pub first_push_ms: AtomicU64,
    pub last_push_ms: AtomicU64,
    pub start: std::time::Instant,
}

impl Default for SimStats {
    fn default() -> Self {
        Self {
            pushes: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            uplinks: AtomicU64::new(0),
            first_push_ms: AtomicU64::new(u64::MAX),
            last_push_ms: AtomicU64::new(0),
            start: std::time::Instant::now(),
        }
    }
}

impl SimStats {
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One simulated device; dropping the handle's client ends its session.
pub struct SimDevice {
    pub name: String,
    pk: String,
    pub client: AsyncClient,
    pub version: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl SimDevice {
    /// The device now runs `version` (updated by other means) and reports it.
    pub async fn report_version(&self, version: &str) -> Result<()> {
        if let Ok(mut g) = self.version.lock() {
            *g = version.to_owned();
        }
        self.client
            .publish(
                format!("/ota/device/inform/{}/{}", self.pk, self.name),
                QoS::AtLeastOnce,
                false,
                json!({"id": 1, "params": {"version": version}}).to_string(),
            )
            .await?;
        Ok(())
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Link Kit CONNECT credentials (securemode 3, HMAC-SHA1 over the device secret).
pub fn alink_credentials(pk: &str, dn: &str, secret: &str) -> Result<(String, String, String)> {
    let ts = "1700000000000";
    let client_id = format!("{pk}&{dn}|securemode=3,signmethod=hmacsha1,timestamp={ts}|");
    let username = format!("{dn}&{pk}");
    let content = format!("clientId{pk}&{dn}deviceName{dn}productKey{pk}timestamp{ts}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())?;
    mac.update(content.as_bytes());
    Ok((
        client_id,
        username,
        hex::encode(mac.finalize().into_bytes()),
    ))
}

async fn publish(c: &AsyncClient, topic: &str, body: Value, stats: &SimStats) {
    stats.uplinks.fetch_add(1, Ordering::Relaxed);
    let _ = c
        .publish(topic, QoS::AtMostOnce, false, body.to_string())
        .await;
}

/// Where and how a fleet of simulated devices connects.
#[derive(Debug, Clone)]
pub struct SimBroker {
    pub host: String,
    pub port: u16,
    /// Subscribe to the downlink topics (an external broker does not do it for them).
    pub subscribe: bool,
}

/// Connects a device to the broker and runs it until dropped.
pub async fn start_device(
    broker: &SimBroker,
    (pk, dn, secret): (&str, &str, &str),
    version: &str,
    behaviour: Behaviour,
    stats: Arc<SimStats>,
) -> Result<SimDevice> {
    let (client_id, user, pass) = alink_credentials(pk, dn, secret)?;
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    let subscribe = broker.subscribe;
    opts.set_credentials(user, pass);
    opts.set_keep_alive(Duration::from_secs(60));
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let version = Arc::new(Mutex::new(version.to_owned()));
    let (pk_owned, name) = (pk.to_owned(), dn.to_owned());
    let (c, v, pk, dn) = (
        client.clone(),
        version.clone(),
        pk.to_owned(),
        dn.to_owned(),
    );
    let task = tokio::spawn(async move {
        let inform = format!("/ota/device/inform/{pk}/{dn}");
        let progress = format!("/ota/device/progress/{pk}/{dn}");
        let mut failed_once = false;
        let mut id = 0u64;
        loop {
            let ev = match events.poll().await {
                Ok(ev) => ev,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match ev {
                Event::Incoming(Packet::ConnAck(_)) => {
                    if subscribe {
                        let _ = c
                            .subscribe(format!("/ota/device/upgrade/{pk}/{dn}"), QoS::AtLeastOnce)
                            .await;
                    }
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                    let ver = v.lock().map(|g| g.clone()).unwrap_or_default();
                    publish(
                        &c,
                        &inform,
                        json!({"id": 1, "params": {"version": ver}}),
                        &stats,
                    )
                    .await;
                }
                Event::Incoming(Packet::Publish(p))
                    if p.topic.starts_with("/ota/device/upgrade/") =>
                {
                    let at = stats.elapsed_ms();
                    stats.first_push_ms.fetch_min(at, Ordering::Relaxed);
                    stats.last_push_ms.fetch_max(at, Ordering::Relaxed);
                    stats.pushes.fetch_add(1, Ordering::Relaxed);
                    let Ok(msg) = serde_json::from_slice::<Value>(&p.payload) else {
                        continue;
                    };
                    let target = msg["data"]["version"].as_str().unwrap_or("").to_owned();
                    id += 1;
                    let step = |s: i32| json!({"id": id.to_string(), "params": {"step": s.to_string(), "desc": ""}});
                    let fail_now = match behaviour {
                        Behaviour::Fail(s) => Some(s),
                        Behaviour::FailOnce(s) if !failed_once => {
                            failed_once = true;
                            Some(s)
                        }
                        _ => None,
                    };
                    if let Some(s) = fail_now {
                        publish(&c, &progress, step(10), &stats).await;
                        publish(&c, &progress, step(s), &stats).await;
                    } else if behaviour == Behaviour::Silent {
                        publish(&c, &progress, step(10), &stats).await;
                    } else {
                        publish(&c, &progress, step(50), &stats).await;
                        if let Ok(mut g) = v.lock() {
                            *g = target.clone();
                        }
                        publish(
                            &c,
                            &inform,
                            json!({"id": 1, "params": {"version": target}}),
                            &stats,
                        )
                        .await;
                    }
                }
                _ => {}
            }
        }
    });
    Ok(SimDevice {
        pk: pk_owned,
        name,
        client,
        version,
        task,
    })
}
