//! The external-broker gateway: any MQTT 3.1.1 broker (Mosquitto, EMQX) through rumqttc.
//! The server subscribes to the OTA uplink topics of every device, through a shared
//! subscription so several server processes split the uplinks, and publishes downlinks
//! to the devices' topics. The broker authenticates devices and enforces their ACLs, and
//! devices must subscribe to their own downlink topics: the vendor SDKs do not.

use super::gateway::{BufferShare, DeviceGateway, DeviceIdentity, GatewayEvent};
use super::topics::parse_uplink_topic;
use super::DispatchError;
use crate::clock::SharedClock;
use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;
use tokio::sync::mpsc;

/// How to reach the external broker.
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: String,
    pub password: String,
    /// `$share/{group}/...` subscriptions; empty subscribes plainly (one server process).
    pub shared_group: String,
}

/// Every OTA uplink topic of every device; downlinks (`upgrade`, `*_reply`) are left out so
/// the server never hears its own messages back.
const UPLINK_FILTERS: [&str; 8] = [
    "/ota/device/inform/+/+",
    "/ota/device/progress/+/+",
    "/sys/+/+/thing/ota/firmware/get",
    "/sys/+/+/ota/device/inform",
    "/sys/+/+/ota/device/progress",
    "/sys/+/+/ota/device/getversion",
    "/sys/+/+/ota/device/request",
    "/sys/+/+/ota/device/upgrade_reply",
];

pub struct ExternalBroker {
    client: AsyncClient,
    /// True while every uplink subscription of the current connection is acknowledged.
    subscribed: tokio::sync::watch::Receiver<bool>,
}

impl ExternalBroker {
    /// Connects (retrying in the background while the broker is away) and forwards uplinks.
    pub fn start(
        opts: ExternalOptions,
        events: mpsc::Sender<GatewayEvent>,
        clock: SharedClock,
    ) -> Result<Self, DispatchError> {
        let mut o = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(true);
        o.set_max_packet_size(1024 * 1024, 1024 * 1024);
        if !opts.username.is_empty() {
            o.set_credentials(opts.username.clone(), opts.password.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(o, 10_000);
        let filters: Vec<String> = UPLINK_FILTERS
            .iter()
            .map(|f| {
                if opts.shared_group.is_empty() {
                    (*f).to_owned()
                } else {
                    // The OTA topics begin with an empty level ("/ota/..."), which the filter
                    // keeps: "$share/<group>//ota/...".
                    format!("$share/{}/{f}", opts.shared_group)
                }
            })
            .collect();
        let sub = client.clone();
        let (ready_tx, subscribed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut acked = 0usize;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acked += 1;
                        if acked == filters.len() {
                            let _ = ready_tx.send(true);
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        acked = 0;
                        // A clean session forgets subscriptions: make them on every connect.
                        for f in &filters {
                            if let Err(e) = sub.subscribe(f.as_str(), QoS::AtLeastOnce).await {
                                tracing::error!(filter = %f, error = %e, "subscribing on the external broker failed");
                            }
                        }
                        tracing::info!("connected to the external MQTT broker");
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let ev = match parse_uplink_topic(&p.topic) {
                            Ok(t) => GatewayEvent::Uplink {
                                device: DeviceIdentity {
                                    product_key: t.product_key.to_owned(),
                                    device: t.device.to_owned(),
                                },
                                topic: p.topic.clone(),
                                payload: p.payload.clone(),
                                at: clock.now_millis(),
                                // one event loop reads the broker: the channel's count bounds it
                                share: BufferShare::default(),
                            },
                            Err(e) => GatewayEvent::Refused {
                                device: None,
                                reason: e.to_string(),
                            },
                        };
                        if events.send(ev).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = ready_tx.send(false);
                        tracing::warn!(error = %e, "external MQTT broker connection lost; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self { client, subscribed })
    }

    /// Waits until the uplink subscriptions are in place, at most `timeout`.
    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        let mut rx = self.subscribed.clone();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[async_trait]
impl DeviceGateway for ExternalBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), DispatchError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| DispatchError::Broker(format!("publishing to {topic}: {e}")))
    }

    /// Sessions on an external broker are the broker's: revoke the device there.
    async fn disconnect(&self, _device: &DeviceIdentity) -> Result<bool, DispatchError> {
        Ok(false)
    }

    fn is_connected(&self, _device: &DeviceIdentity) -> Option<bool> {
        None
    }

    fn knows_presence(&self) -> bool {
        false
    }
}

/// Splits `mqtt://host:port` (or `tcp://`) into host and port.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), DispatchError> {
    let bad = || {
        DispatchError::Broker(format!(
            "mqtt.external.url {url:?}: expected mqtt://host:port"
        ))
    };
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.trim_end_matches('/').parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(
            parse_broker_url("tcp://[::1]:1883").unwrap(),
            ("::1".into(), 1883)
        );
        for bad in [
            "127.0.0.1:1883",
            "mqtt://host",
            "mqtt://:1883",
            "mqtt://h:x",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uplink_filters_cover_every_uplink_and_no_downlink() {
        use crate::dispatch::topics;
        for f in UPLINK_FILTERS {
            let concrete = f.replace('+', "x1");
            assert!(topics::parse_uplink_topic(&concrete).is_ok(), "{concrete}");
        }
        let down = [
            topics::alink_upgrade_topic("x1", "x1"),
            topics::alink_get_reply_topic("x1", "x1"),
            topics::enos_upgrade_topic("x1", "x1"),
        ];
        for d in down {
            assert!(!UPLINK_FILTERS.iter().any(|f| matches(f, &d)), "{d}");
        }
    }

    fn matches(filter: &str, topic: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        f.len() == t.len() && f.iter().zip(&t).all(|(a, b)| *a == "+" || a == b)
    }
}
