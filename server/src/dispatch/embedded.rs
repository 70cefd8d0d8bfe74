//! The embedded MQTT broker (rmqtt 0.24 as a library): authenticates devices with their
//! vendor's scheme, subscribes each to its downlink topics before CONNACK, pins it to its own
//! topics, keeps one session per device, and turns uplinks and connection changes into
//! [`GatewayEvent`]s (DESIGN §8).

use super::gateway::{BufferShare, DeviceAuth, DeviceGateway, DeviceIdentity, GatewayEvent};
use super::throttle::{LogLimiter, TokenBucket};
use super::DispatchError;
use crate::clock::SharedClock;
use crate::metrics::{Metrics, Rejection};
use async_trait::async_trait;
use bytes::Bytes;
use bytestring::ByteString;
use rmqtt::codec::types::{Publish as CodecPublish, QoS};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::router::{DefaultRouter, Router};
use rmqtt::server::MqttServer;
use rmqtt::session::SessionState;
use rmqtt::types::HashMap as RHashMap;
use rmqtt::types::{
    AllRelationsMap, AuthResult, From, Id, NodeId, Publish, PublishAclResult, Route,
    SubRelationsMap, SubsSearchParams, SubsSearchResult, Subscribe, SubscribeAclResult, TopicName,
};
use rmqtt::utils::Counter;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Where and how the embedded broker listens.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Plain TCP listener.
    pub addr: SocketAddr,
    /// TLS listener with certificate and key (PEM files), when wanted.
    pub tls: Option<(SocketAddr, String, String)>,
    /// Per-session queue of undelivered messages; overflow drops, so pushes are paced.
    pub max_mqueue_len: usize,
    /// Largest packet taken from a device; a larger one ends its session.
    pub max_packet_size: u32,
    /// Each device's uplink allowance: rate per second and burst.
    pub uplinks_per_sec: f64,
    pub uplink_burst: u32,
    /// Uplink payload bytes held between the broker and the router, all devices together.
    pub uplink_buffer_bytes: usize,
    /// Pending TCP connections each listener queues.
    pub listen_backlog: i32,
}

/// A running embedded broker; the downlink side of the device gateway.
pub struct EmbeddedBroker {
    scx: ServerContext,
    pub tcp_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    server_id: Id,
    sessions: Sessions,
    auth: Arc<dyn DeviceAuth>,
}

/// Which session currently speaks for a device (so older ones can be kicked and a late
/// disconnection of an older one is known as such), with the device's uplink allowance.
type Sessions = Arc<Mutex<HashMap<DeviceIdentity, Live>>>;

struct Live {
    /// The whole session identity: a device reconnecting with a fixed client id (Alibaba's C
    /// SDK) has two sessions with one client id, told apart by address and creation time.
    id: Id,
    uplinks: TokenBucket,
}

impl EmbeddedBroker {
    /// Binds the listeners and starts serving; device events go to `events`.
    pub async fn start(
        opts: EmbeddedOptions,
        auth: Arc<dyn DeviceAuth>,
        events: mpsc::Sender<GatewayEvent>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DispatchError> {
        // rmqtt refuses CONNECTs while the machine's load average or CPU use is high (its
        // "busy" check): a fleet would be locked out whenever the host is busy with anything
        // else. What a device may cost is bounded here instead (packet size, uplink rate,
        // buffered bytes).
        let scx = ServerContext::new().busy_check_enable(false).build().await;
        // DESIGN §8: rmqtt's router loses about 0.3 % of subscriptions when a device
        // reconnects back to back; serializing add and remove removes the race.
        let inner = DefaultRouter::new(Some(scx.clone()));
        *scx.extends.router_mut().await = Box::new(SerializedRouter {
            inner,
            lock: tokio::sync::Mutex::new(()),
        });
        let sessions: Sessions = Arc::default();
        let handler = Hooks {
            scx: scx.clone(),
            auth,
            events,
            clock,
            sessions: sessions.clone(),
            metrics,
            logged: Arc::default(),
            uplink_rate: (opts.uplinks_per_sec, opts.uplink_burst),
            buffer: Arc::new(tokio::sync::Semaphore::new(opts.uplink_buffer_bytes)),
        };
        let register = scx.extends.hook_mgr().register();
        for t in [
            Type::ClientAuthenticate,
            Type::ClientConnected,
            Type::ClientDisconnected,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::MessagePublish,
        ] {
            register.add(t, Box::new(handler.clone())).await;
        }
        register.start().await;

        let listener = |name: &str, addr: SocketAddr| {
            Builder::new()
                .name(name)
                .laddr(addr)
                .allow_anonymous(false)
                .max_mqueue_len(opts.max_mqueue_len)
                .max_clientid_len(256)
                .max_packet_size(opts.max_packet_size)
                .backlog(opts.listen_backlog)
                // Connections of the previous process linger in TIME-WAIT for a minute after a
                // restart; without this the listener cannot bind until they are gone.
                .reuseaddr(Some(true))
        };
        let tcp = listener("tcp", opts.addr)
            .bind()
            .map_err(|e| DispatchError::Broker(format!("binding MQTT {}: {e}", opts.addr)))?;
        let tcp_addr = tcp
            .local_addr()
            .map_err(|e| DispatchError::Broker(e.to_string()))?;
        // Listener ids default to the port, which collides when both ports are 0 (tests).
        let mut server = MqttServer::new(scx.clone()).listener_by_id(
            tcp.tcp()
                .map_err(|e| DispatchError::Broker(e.to_string()))?,
            1,
        );
        let mut tls_addr = None;
        if let Some((addr, cert, key)) = &opts.tls {
            let l = listener("tls", *addr)
                .tls_cert(Some(cert.clone()))
                .tls_key(Some(key.clone()))
                .bind()
                .map_err(|e| DispatchError::Broker(format!("binding MQTT TLS {addr}: {e}")))?;
            tls_addr = Some(
                l.local_addr()
                    .map_err(|e| DispatchError::Broker(e.to_string()))?,
            );
            server = server.listener_by_id(
                l.tls()
                    .map_err(|e| DispatchError::Broker(format!("MQTT TLS: {e}")))?,
                2,
            );
        }
        let server = server.build();
        tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        });
        let server_id = Id::new(scx.node.id(), 0, None, None, "ota-server".into(), None);
        Ok(Self {
            scx,
            tcp_addr,
            tls_addr,
            server_id,
            sessions,
            auth: handler.auth,
        })
    }
}

#[async_trait]
impl DeviceGateway for EmbeddedBroker {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), DispatchError> {
        let p = CodecPublish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: ByteString::from(topic),
            packet_id: None,
            payload,
            properties: None,
        };
        SessionState::forwards(
            &self.scx,
            From::from_system(self.server_id.clone()),
            Publish::from(p),
            false,
            None,
        )
        .await
        .map_err(|e| DispatchError::Broker(format!("publishing to {topic}: {e}")))
    }

    async fn disconnect(&self, device: &DeviceIdentity) -> Result<bool, DispatchError> {
        // First, so the device cannot come back with a secret read before the change.
        self.auth.forget(device);
        let id = self
            .sessions
            .lock()
            .map(|m| m.get(device).map(|l| l.id.clone()))
            .unwrap_or(None);
        let Some(id) = id else {
            return Ok(false);
        };
        let mut entry = self.scx.extends.shared().await.entry(id);
        entry
            .kick(true, true, true)
            .await
            .map_err(|e| DispatchError::Broker(format!("disconnecting a device: {e}")))?;
        Ok(true)
    }

    fn is_connected(&self, device: &DeviceIdentity) -> Option<bool> {
        self.sessions.lock().ok().map(|m| m.contains_key(device))
    }
}

#[derive(Clone)]
struct Hooks {
    scx: ServerContext,
    auth: Arc<dyn DeviceAuth>,
    events: mpsc::Sender<GatewayEvent>,
    clock: SharedClock,
    sessions: Sessions,
    metrics: Arc<Metrics>,
    logged: Arc<LogLimiter>,
    /// Each device's uplinks per second and burst.
    uplink_rate: (f64, u32),
    /// Uplink bytes on their way to the router; permits are bytes.
    buffer: Arc<tokio::sync::Semaphore>,
}

/// The device a session authenticated as, kept in the session's auth info.
fn identity_of(id: &Id) -> Option<DeviceIdentity> {
    // The username is `{device}&{product_key}` in both SDKs, and authentication checked it.
    let user = id.username.as_ref()?;
    let (device, product_key) = user.split_once('&')?;
    Some(DeviceIdentity {
        product_key: product_key.to_owned(),
        device: device.to_owned(),
    })
}

impl Hooks {
    /// Counts a dropped uplink and logs it at most once per device per minute (SPEC V4).
    fn refuse(&self, dev: &DeviceIdentity, reason: Rejection, detail: &str) {
        self.metrics.rejected(reason);
        let key = format!("{}/{}", dev.product_key, dev.device);
        if self.logged.first_in_minute(&key, self.clock.now_millis()) {
            tracing::warn!(device = %key, reason = reason.as_str(), detail, "device message rejected");
        }
    }

    async fn emit(&self, ev: GatewayEvent) {
        if self.events.send(ev).await.is_err() {
            tracing::warn!("device event channel closed; event dropped");
        }
    }
}

#[async_trait]
impl Handler for Hooks {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(ci) => {
                let client_id = ci.client_id().to_string();
                let username = ci.username().map(|u| u.to_string()).unwrap_or_default();
                let password = ci.password().map(|p| p.to_vec()).unwrap_or_default();
                let r = match self
                    .auth
                    .authenticate(&client_id, &username, &password)
                    .await
                {
                    Ok(_) => AuthResult::Allow(false, None),
                    Err(refusal) => {
                        self.metrics.login_refused(refusal.reason);
                        // The SDKs never report a refusal and retry forever: a misprovisioned
                        // fleet must show in the log, but not once per attempt.
                        let now = self.clock.now_millis();
                        if self
                            .logged
                            .first_in_minute(&format!("login {username}"), now)
                        {
                            tracing::warn!(
                                client_id,
                                username,
                                reason = refusal.reason.as_str(),
                                detail = refusal.detail,
                                "MQTT login refused (logged once a minute per device)"
                            );
                        }
                        AuthResult::BadUsernameOrPassword
                    }
                };
                (false, Some(HookResult::AuthResult(r)))
            }
            Parameter::ClientConnected(s) => {
                let Some(dev) = identity_of(&s.id) else {
                    return (true, acc);
                };
                // Subscribing here runs before CONNACK goes out, so a push sent in reply to
                // the device's first message cannot overtake its subscription.
                let entry = self.scx.extends.shared().await.entry(s.id.clone());
                for topic in self.auth.downlink_topics(&dev).await {
                    match Subscribe::from_v3(
                        &ByteString::from(topic.as_str()),
                        QoS::AtLeastOnce,
                        false,
                        false,
                    ) {
                        Ok(sub) => {
                            if let Err(e) = entry.subscribe(&sub).await {
                                tracing::error!(%topic, error = %e, "subscribing a device failed");
                            }
                        }
                        Err(e) => tracing::error!(%topic, error = %e, "bad downlink topic"),
                    }
                }
                let live = Live {
                    id: s.id.clone(),
                    uplinks: TokenBucket::new(
                        self.uplink_rate.0,
                        self.uplink_rate.1,
                        std::time::Instant::now(),
                    ),
                };
                let old = self
                    .sessions
                    .lock()
                    .map(|mut m| {
                        let old = m.insert(dev.clone(), live).map(|l| l.id);
                        // The gauge is the map's size: a takeover replaces an entry and adds
                        // nothing, however the hooks of the two sessions interleave.
                        self.metrics.devices_online.set(m.len() as i64);
                        old
                    })
                    .unwrap_or(None);
                // With the same client id rmqtt has already taken the old session over, and
                // a kick by client id would hit the new one.
                if let Some(old) = old.filter(|o| o.client_id != s.id.client_id) {
                    // SDK client ids carry a timestamp, so an old session of the same device
                    // can still be open; it must not receive the device's pushes twice.
                    let mut e = self.scx.extends.shared().await.entry(old);
                    if let Err(err) = e.kick(true, true, true).await {
                        tracing::debug!(error = %err, "kicking an older session failed");
                    }
                }
                self.emit(GatewayEvent::Connected {
                    device: dev,
                    at: self.clock.now_millis(),
                })
                .await;
                (true, acc)
            }
            Parameter::ClientDisconnected(s, _reason) => {
                let Some(dev) = identity_of(&s.id) else {
                    return (true, acc);
                };
                let current = self
                    .sessions
                    .lock()
                    .map(|mut m| {
                        // The whole identity: an older session with the same client id (a
                        // fixed-id SDK reconnecting) may end after the newer one began.
                        if m.get(&dev).is_some_and(|l| l.id == s.id) {
                            m.remove(&dev);
                            self.metrics.devices_online.set(m.len() as i64);
                            true
                        } else {
                            false
                        }
                    })
                    .unwrap_or(false);
                // An older session says nothing: the device is online on its new one.
                if current {
                    self.emit(GatewayEvent::Disconnected {
                        device: dev,
                        at: self.clock.now_millis(),
                    })
                    .await;
                }
                (true, acc)
            }
            Parameter::ClientSubscribeCheckAcl(s, sub) => {
                let allowed = identity_of(&s.id)
                    .is_some_and(|dev| self.auth.may_subscribe(&dev, &sub.topic_filter));
                let r = if allowed {
                    SubscribeAclResult::new_success(sub.opts.qos(), None)
                } else {
                    SubscribeAclResult::new_failure(
                        rmqtt::codec::v5::SubscribeAckReason::NotAuthorized,
                    )
                };
                (false, Some(HookResult::SubscribeAclResult(r)))
            }
            Parameter::MessagePublishCheckAcl(s, p) => {
                let allowed =
                    identity_of(&s.id).is_some_and(|dev| self.auth.may_publish(&dev, &p.topic));
                let r = if allowed {
                    PublishAclResult::allow()
                } else {
                    PublishAclResult::rejected(false, None)
                };
                (false, Some(HookResult::PublishAclResult(r)))
            }
            Parameter::MessagePublish(Some(s), _from, p) => {
                // This hook runs before the ACL check: only a device's own topics count.
                // Everything dropped here is dropped before the shared channel, so a flooding
                // device costs its own session's task, not the router's time.
                let Some(dev) = identity_of(&s.id) else {
                    return (true, acc);
                };
                let allowed = self
                    .sessions
                    .lock()
                    .map(|mut m| match m.get_mut(&dev) {
                        Some(l) => l.uplinks.take(std::time::Instant::now()),
                        // between CONNECT and the connected hook, or a session on its way out
                        None => true,
                    })
                    .unwrap_or(true);
                if !allowed {
                    self.refuse(
                        &dev,
                        Rejection::RateLimited,
                        "over the device's uplink rate",
                    );
                } else if !self.auth.may_publish(&dev, &p.topic) {
                    self.refuse(
                        &dev,
                        Rejection::NotAllowed,
                        &format!("publish to a foreign topic {}", p.topic),
                    );
                } else {
                    // Bytes waiting for the router are bounded: when the buffer is full the
                    // device's session waits (its TCP window closes), the server does not grow.
                    let bytes = u32::try_from(p.payload.len()).unwrap_or(u32::MAX);
                    let Ok(permit) = self.buffer.clone().acquire_many_owned(bytes).await else {
                        return (true, acc);
                    };
                    self.emit(GatewayEvent::Uplink {
                        device: dev,
                        topic: p.topic.to_string(),
                        payload: p.payload.clone(),
                        at: self.clock.now_millis(),
                        share: BufferShare::new(permit),
                    })
                    .await;
                }
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

/// rmqtt's default router with `add` and `remove` serialized (see [`EmbeddedBroker::start`]).
struct SerializedRouter {
    inner: DefaultRouter,
    lock: tokio::sync::Mutex<()>,
}

#[async_trait]
impl Router for SerializedRouter {
    async fn add(
        &self,
        topic_filter: &str,
        id: Id,
        opts: rmqtt::types::SubscriptionOptions,
    ) -> rmqtt::Result<()> {
        let _g = self.lock.lock().await;
        self.inner.add(topic_filter, id, opts).await
    }
    async fn remove(&self, topic_filter: &str, id: Id) -> rmqtt::Result<bool> {
        let _g = self.lock.lock().await;
        self.inner.remove(topic_filter, id).await
    }
    async fn matches(&self, id: Id, topic: &TopicName) -> rmqtt::Result<SubRelationsMap> {
        self.inner.matches(id, topic).await
    }
    async fn is_online(&self, node_id: NodeId, client_id: &str) -> bool {
        self.inner.is_online(node_id, client_id).await
    }
    async fn gets(&self, limit: usize) -> Vec<Route> {
        self.inner.gets(limit).await
    }
    async fn get(&self, topic: &str) -> rmqtt::Result<Vec<Route>> {
        self.inner.get(topic).await
    }
    async fn query_subscriptions(&self, q: &SubsSearchParams) -> Vec<SubsSearchResult> {
        self.inner.query_subscriptions(q).await
    }
    async fn topics_tree(&self) -> usize {
        self.inner.topics_tree().await
    }
    fn topics(&self) -> Counter {
        self.inner.topics()
    }
    fn routes(&self) -> Counter {
        self.inner.routes()
    }
    fn merge_topics(&self, topics_map: &RHashMap<NodeId, Counter>) -> Counter {
        self.inner.merge_topics(topics_map)
    }
    fn merge_routes(&self, routes_map: &RHashMap<NodeId, Counter>) -> Counter {
        self.inner.merge_routes(routes_map)
    }
    async fn list_topics(&self, top: usize) -> Vec<String> {
        self.inner.list_topics(top).await
    }
    async fn list_relations(&self, top: usize) -> Vec<serde_json::Value> {
        self.inner.list_relations(top).await
    }
    fn relations(&self) -> &AllRelationsMap {
        self.inner.relations()
    }
}
