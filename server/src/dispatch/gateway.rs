//! The device gateway seam: what the rest of the server needs from a broker (publish
//! downlinks) and what a broker reports upward (connections and uplinks), so the embedded
//! broker and an external one are interchangeable.

use super::DispatchError;
use crate::clock::Millis;
use crate::metrics::LoginRefusal;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// A device as its MQTT credentials name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    pub product_key: String,
    pub device: String,
}

/// What a gateway reports upward; consumed by the uplink router.
#[derive(Debug, Clone)]
pub enum GatewayEvent {
    Connected {
        device: DeviceIdentity,
        at: Millis,
    },
    Disconnected {
        device: DeviceIdentity,
        at: Millis,
    },
    Uplink {
        device: DeviceIdentity,
        topic: String,
        payload: Bytes,
        at: Millis,
        /// The payload's share of the gateway's uplink buffer, given back when the event is
        /// dropped (after the router handled it).
        share: BufferShare,
    },
    /// A message the gateway would not take (counted and logged by the router, SPEC V4).
    Refused {
        device: Option<DeviceIdentity>,
        reason: String,
    },
}

/// Holds an uplink's bytes against the gateway's uplink buffer until dropped; empty when the
/// gateway does not count bytes.
#[derive(Debug, Clone, Default)]
pub struct BufferShare(#[allow(dead_code)] Option<Arc<tokio::sync::OwnedSemaphorePermit>>);

impl BufferShare {
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self(Some(Arc::new(permit)))
    }
}

/// Sends messages to devices.
#[async_trait]
pub trait DeviceGateway: Send + Sync {
    /// Publishes `payload` on `topic` at QoS 1.
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), DispatchError>;

    /// Ends the device's session, if it has one here (its secret changed or it was deleted);
    /// whether one was ended.
    async fn disconnect(&self, device: &DeviceIdentity) -> Result<bool, DispatchError>;

    /// Whether the device has a session here now, when the gateway knows (the embedded
    /// broker does; an external one does not say).
    fn is_connected(&self, device: &DeviceIdentity) -> Option<bool>;

    /// Whether this gateway sees devices connect and disconnect (the embedded broker does;
    /// an external broker does not tell, so every device counts as reachable and a push to
    /// an offline one is repeated when it next reports its version).
    fn knows_presence(&self) -> bool {
        true
    }
}

/// Why a CONNECT was refused: the reason counted, and a detail for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: LoginRefusal,
    pub detail: String,
}

impl Refusal {
    pub fn new(reason: LoginRefusal, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Who may connect and what they may touch; the protocol rules live behind it.
#[async_trait]
pub trait DeviceAuth: Send + Sync {
    /// The device these CONNECT credentials prove, or why they prove none.
    async fn authenticate(
        &self,
        client_id: &str,
        username: &str,
        password: &[u8],
    ) -> Result<DeviceIdentity, Refusal>;
    /// Topics the device receives on without subscribing (its downlinks).
    async fn downlink_topics(&self, device: &DeviceIdentity) -> Vec<String>;
    fn may_publish(&self, device: &DeviceIdentity, topic: &str) -> bool;
    fn may_subscribe(&self, device: &DeviceIdentity, filter: &str) -> bool;
    /// Drops anything remembered of the device's credentials (they changed, or it is gone).
    fn forget(&self, device: &DeviceIdentity);
}
