//! The uplink router: turns gateway events into registry changes (online state, version
//! reports), answers the requests devices wait on, re-offers waiting pushes when a device
//! reconnects or reports, and passes device messages up as [`DeviceEvent`]s. A message that
//! cannot be parsed, names an unknown device or is not allowed is dropped, counted and
//! logged at most once per device per minute (SPEC V4); nothing a device sends can stop the
//! router or touch another device.

use super::directory::DeviceDirectory;
use super::events::{DeviceMessage, FirmwarePush, RequestId, Uplink};
use super::gateway::{DeviceGateway, DeviceIdentity, GatewayEvent};
use super::presence::Presence;
use super::throttle::LogLimiter;
use super::topics::{parse_uplink_topic, EnosTopic, TopicKind};
use super::{alink, enos, CodecError, Downlink};
use crate::clock::{Millis, SharedClock};
use crate::domain::{DeviceId, ModuleName, Protocol, TenantId};
use crate::metrics::{MessageKind, Metrics, Rejection};
use crate::store::Store;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A device message resolved to its tenant and device, for the rollout engine.
#[derive(Debug, Clone)]
pub struct DeviceEvent {
    pub tenant: TenantId,
    pub device: DeviceId,
    pub identity: DeviceIdentity,
    pub protocol: Protocol,
    pub at: Millis,
    pub kind: DeviceEventKind,
    /// The request id of a message that expects a reply (a pull, EnOS `getversion`), for
    /// the engine to answer with.
    pub request_id: Option<RequestId>,
}

#[derive(Debug, Clone)]
pub enum DeviceEventKind {
    Connected,
    Disconnected,
    Message(Uplink),
}

/// What a device should be offered now: the rollout engine's answer; the router asks when a
/// device connects, reports a version or pulls.
#[async_trait]
pub trait Offers: Send + Sync {
    async fn pending(
        &self,
        tenant: TenantId,
        device: DeviceId,
        module: Option<&ModuleName>,
    ) -> Vec<FirmwarePush>;
}

/// Offers nothing: the state before any rollout exists.
pub struct NoOffers;

#[async_trait]
impl Offers for NoOffers {
    async fn pending(&self, _: TenantId, _: DeviceId, _: Option<&ModuleName>) -> Vec<FirmwarePush> {
        vec![]
    }
}

/// Offers held in memory, set by whoever decides them (tests, a single-process engine).
#[derive(Default)]
pub struct MemoryOffers {
    offers: std::sync::Mutex<HashMap<DeviceId, Vec<FirmwarePush>>>,
}

impl MemoryOffers {
    pub fn offer(&self, device: DeviceId, push: FirmwarePush) {
        if let Ok(mut m) = self.offers.lock() {
            let list = m.entry(device).or_default();
            list.retain(|p| p.module != push.module);
            list.push(push);
        }
    }
    pub fn withdraw(&self, device: DeviceId) {
        if let Ok(mut m) = self.offers.lock() {
            m.remove(&device);
        }
    }
}

#[async_trait]
impl Offers for MemoryOffers {
    async fn pending(
        &self,
        _: TenantId,
        device: DeviceId,
        module: Option<&ModuleName>,
    ) -> Vec<FirmwarePush> {
        self.offers
            .lock()
            .map(|m| {
                m.get(&device)
                    .map(|l| {
                        l.iter()
                            .filter(|p| module.is_none_or(|m| &p.module == m))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}

/// Encodes a push in the device's protocol; `id` numbers pushes for the device's logs.
pub fn encode_push(
    protocol: Protocol,
    device: &DeviceIdentity,
    push: &FirmwarePush,
    id: u64,
) -> Result<Downlink, CodecError> {
    match protocol {
        Protocol::Alink => alink::encode_push(&device.product_key, &device.device, push, id),
        Protocol::Enos => enos::encode_push(&device.product_key, &device.device, push, id),
    }
}

pub struct Router {
    pub store: Store,
    pub gateway: Arc<dyn DeviceGateway>,
    pub offers: Arc<dyn Offers>,
    /// The rollout engine answers pulls and version-list requests (off this loop).
    engine_answers: bool,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    /// Device messages go up here (the rollout engine); `None` until one listens.
    pub up: Option<mpsc::Sender<DeviceEvent>>,
    push_ids: AtomicU64,
    last_logged: LogLimiter,
    /// Devices by identity, cached from their CONNECT: an uplink needs no database lookup.
    pub directory: Arc<DeviceDirectory>,
    /// Online state, written in batches.
    pub presence: Presence,
}

type Resolved = (Protocol, TenantId, DeviceId);

impl Router {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        gateway: Arc<dyn DeviceGateway>,
        offers: Arc<dyn Offers>,
        engine_answers: bool,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        up: Option<mpsc::Sender<DeviceEvent>>,
        directory: Arc<DeviceDirectory>,
    ) -> Self {
        Self {
            gateway,
            offers,
            engine_answers,
            metrics,
            clock,
            up,
            push_ids: AtomicU64::new(clock_seed()),
            last_logged: Default::default(),
            presence: Presence::start(store.clone()),
            store,
            directory,
        }
    }

    /// Handles events until the gateway side closes the channel.
    pub async fn run(self: Arc<Self>, mut events: mpsc::Receiver<GatewayEvent>) {
        while let Some(ev) = events.recv().await {
            self.handle(ev).await;
        }
    }

    pub async fn handle(&self, ev: GatewayEvent) {
        match ev {
            GatewayEvent::Connected { device, at } => self.connection(device, true, at).await,
            GatewayEvent::Disconnected { device, at } => self.connection(device, false, at).await,
            GatewayEvent::Uplink {
                device,
                topic,
                payload,
                at,
                share: _held_until_handled,
            } => self.uplink(device, &topic, &payload, at).await,
            GatewayEvent::Refused { device, reason } => {
                self.reject(device.as_ref(), Rejection::NotAllowed, &reason);
            }
        }
    }

    /// Counts a dropped message and logs it at most once per device per minute.
    fn reject(&self, device: Option<&DeviceIdentity>, reason: Rejection, detail: &str) {
        self.metrics.rejected(reason);
        let key = device
            .map(|d| format!("{}/{}", d.product_key, d.device))
            .unwrap_or_default();
        let now = self.clock.now_millis();
        if self.last_logged.first_in_minute(&key, now) {
            tracing::warn!(device = %key, reason = reason.as_str(), detail, "device message rejected");
        }
    }

    async fn resolve(&self, device: &DeviceIdentity) -> Option<Resolved> {
        match self.directory.get(device).await {
            Ok(Some(k)) => Some((k.protocol, k.tenant, k.id)),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "device lookup failed");
                None
            }
        }
    }

    async fn send_up(&self, ev: DeviceEvent) {
        if let Some(up) = &self.up {
            if up.send(ev).await.is_err() {
                tracing::warn!("the rollout engine stopped listening to device events");
            }
        }
    }

    async fn connection(&self, device: DeviceIdentity, connected: bool, at: Millis) {
        // What the gateway says now wins over the event: the hooks of two sessions of one
        // device can send their events out of order, and the last event handled must not
        // leave a connected device offline (or the reverse).
        let online = self.gateway.is_connected(&device).unwrap_or(connected);
        let resolved = self.resolve(&device).await;
        if !online {
            // The cache holds about the online devices.
            self.directory.evict(&device);
        }
        let Some((protocol, tenant, id)) = resolved else {
            // deleted between CONNECT and now; nothing to record
            return;
        };
        self.presence.mark(id, online, at);
        if online != connected {
            // a stale event: the one that made the state it contradicts is passed up
            return;
        }
        if online {
            self.push_pending(protocol, tenant, id, &device, None).await;
        }
        let kind = if online {
            DeviceEventKind::Connected
        } else {
            DeviceEventKind::Disconnected
        };
        self.send_up(DeviceEvent {
            tenant,
            device: id,
            identity: device,
            protocol,
            at,
            kind,
            request_id: None,
        })
        .await;
    }

    /// Publishes every push waiting for the device (SPEC R3: an offline device gets its push
    /// when it comes back).
    async fn push_pending(
        &self,
        protocol: Protocol,
        tenant: TenantId,
        id: DeviceId,
        device: &DeviceIdentity,
        module: Option<&ModuleName>,
    ) {
        for push in self.offers.pending(tenant, id, module).await {
            self.push(protocol, device, &push).await;
        }
    }

    /// Encodes and publishes one push.
    pub async fn push(&self, protocol: Protocol, device: &DeviceIdentity, push: &FirmwarePush) {
        let n = self.push_ids.fetch_add(1, Ordering::Relaxed);
        match encode_push(protocol, device, push, n) {
            Ok(d) => self.publish(d).await,
            Err(e) => tracing::error!(error = %e, "a push could not be encoded"),
        }
    }

    async fn publish(&self, d: Downlink) {
        let is_push = d.topic.ends_with("/upgrade") || d.topic.starts_with("/ota/device/upgrade/");
        match self.gateway.publish(&d.topic, d.payload.into()).await {
            Ok(()) if is_push => {
                self.metrics.pushes.inc();
            }
            Ok(()) => {}
            Err(e) => tracing::warn!(topic = %d.topic, error = %e, "publishing to a device failed"),
        }
    }

    async fn uplink(&self, device: DeviceIdentity, topic: &str, payload: &[u8], at: Millis) {
        let parsed = match parse_uplink_topic(topic) {
            Ok(t) => t,
            Err(e) => return self.reject(Some(&device), Rejection::UnknownTopic, &e.to_string()),
        };
        if parsed.product_key != device.product_key || parsed.device != device.device {
            return self.reject(
                Some(&device),
                Rejection::NotAllowed,
                "topic names another device",
            );
        }
        let Some((protocol, tenant, id)) = self.resolve(&device).await else {
            return self.reject(Some(&device), Rejection::UnknownDevice, "no such device");
        };
        if parsed.protocol() != protocol {
            return self.reject(
                Some(&device),
                Rejection::WrongProtocol,
                &format!("the product speaks {}", protocol.as_str()),
            );
        }
        let decoded = match parsed.kind {
            TopicKind::Alink(k) => alink::decode(k, payload),
            TopicKind::Enos(k) => enos::decode(k, payload),
        };
        let (msg, request_id) = match decoded {
            Ok(v) => v,
            Err(e) => {
                // No reply: a message that does not parse has no id to echo, so an answer could
                // not reach the waiting SDK call; it times out on the device, as on the clouds.
                return self.reject(Some(&device), Rejection::Unparsable, &e.to_string());
            }
        };
        let message = DeviceMessage {
            product_key: device.product_key.clone(),
            device: device.device.clone(),
            kind: msg.clone(),
            request_id: request_id.clone(),
        };
        if !self
            .apply(protocol, tenant, id, &device, &parsed.kind, &message, at)
            .await
        {
            return;
        }
        self.metrics.message(uplink_kind(&msg));
        self.send_up(DeviceEvent {
            tenant,
            device: id,
            identity: device,
            protocol,
            at,
            kind: DeviceEventKind::Message(msg),
            request_id,
        })
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        protocol: Protocol,
        tenant: TenantId,
        id: DeviceId,
        device: &DeviceIdentity,
        kind: &TopicKind,
        msg: &DeviceMessage,
        at: Millis,
    ) -> bool {
        let (pk, dn) = (device.product_key.as_str(), device.device.as_str());
        match &msg.kind {
            // With the engine listening, it records version reports in its batches; the
            // router never waits for the database per message (DESIGN §9).
            Uplink::Inform { .. } if self.engine_answers => {
                self.enos_ack(kind, pk, dn, msg.request_id.as_ref()).await;
            }
            Uplink::Inform { module, version } => {
                match self
                    .store
                    .record_version_report(tenant, id, module, version, at)
                    .await
                {
                    Ok(()) => {}
                    Err(crate::store::StoreError::NotFound(_)) => {
                        // deleted while connected
                        self.directory.forget(device);
                        self.reject(Some(device), Rejection::UnknownDevice, "no such device");
                        return false;
                    }
                    Err(e) => tracing::warn!(error = %e, "recording a version report failed"),
                }
                self.enos_ack(kind, pk, dn, msg.request_id.as_ref()).await;
                self.push_pending(protocol, tenant, id, device, Some(module))
                    .await;
            }
            Uplink::Progress { .. } | Uplink::UpgradeReply { .. } => {
                self.enos_ack(kind, pk, dn, msg.request_id.as_ref()).await;
            }
            // The rollout engine answers what a device asks when it listens (off this loop:
            // the answer needs the database).
            Uplink::Pull { .. } | Uplink::GetVersion if self.engine_answers => {
                self.enos_ack(kind, pk, dn, msg.request_id.as_ref()).await;
            }
            Uplink::Pull { module } => match kind {
                TopicKind::Alink(_) => {
                    let offer = self.offers.pending(tenant, id, module.as_ref()).await;
                    match alink::encode_get_reply(pk, dn, msg.request_id.as_ref(), offer.first()) {
                        Ok(d) => self.publish(d).await,
                        Err(e) => tracing::error!(error = %e, "encoding a firmware reply failed"),
                    }
                }
                TopicKind::Enos(_) => {
                    // EnOS "Device Request Upgrade": acknowledge, then push what is waiting.
                    self.enos_ack(kind, pk, dn, msg.request_id.as_ref()).await;
                    self.push_pending(protocol, tenant, id, device, module.as_ref())
                        .await;
                }
            },
            Uplink::GetVersion => {
                if let Some(rid) = &msg.request_id {
                    let offers = self.offers.pending(tenant, id, None).await;
                    match enos::encode_getversion_reply(pk, dn, rid, &offers) {
                        Ok(d) => self.publish(d).await,
                        Err(e) => tracing::error!(error = %e, "encoding a version list failed"),
                    }
                }
            }
        }
        true
    }

    /// EnOS SDK calls block until their reply comes (checklist #3), so every EnOS request
    /// that expects one gets it.
    async fn enos_ack(&self, kind: &TopicKind, pk: &str, dk: &str, id: Option<&RequestId>) {
        let (TopicKind::Enos(t), Some(id)) = (kind, id) else {
            return;
        };
        if !t.expects_reply() || *t == EnosTopic::GetVersion {
            return;
        }
        match enos::encode_ack(pk, dk, *t, id) {
            Ok(d) => self.publish(d).await,
            Err(e) => tracing::error!(error = %e, "encoding an EnOS reply failed"),
        }
    }
}

fn uplink_kind(u: &Uplink) -> MessageKind {
    match u {
        Uplink::Inform { .. } => MessageKind::Inform,
        Uplink::Progress { .. } => MessageKind::Progress,
        Uplink::Pull { .. } => MessageKind::Pull,
        Uplink::GetVersion => MessageKind::GetVersion,
        Uplink::UpgradeReply { .. } => MessageKind::UpgradeReply,
    }
}

/// Push ids start from the clock so a restarted server does not reuse recent ones.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 1_000_000 * 1000)
        .unwrap_or(0)
}
