//! Device authentication and topic rights against the registry: CONNECT credentials are
//! checked with the product's signing scheme and the device secret, read through the
//! [`DeviceDirectory`] (cached, loaded in batches).

use super::directory::DeviceDirectory;
use super::gateway::{DeviceAuth, DeviceIdentity, Refusal};
use super::{auth, topics};
use crate::metrics::LoginRefusal;
use async_trait::async_trait;
use std::sync::Arc;

pub struct StoreDeviceAuth {
    directory: Arc<DeviceDirectory>,
}

impl StoreDeviceAuth {
    pub fn new(directory: Arc<DeviceDirectory>) -> Self {
        Self { directory }
    }
}

#[async_trait]
impl DeviceAuth for StoreDeviceAuth {
    async fn authenticate(
        &self,
        client_id: &str,
        username: &str,
        password: &[u8],
    ) -> Result<DeviceIdentity, Refusal> {
        let identity = auth::parse_identity(client_id, username)
            .map_err(|e| Refusal::new(LoginRefusal::BadCredentials, e.to_string()))?;
        let who = DeviceIdentity {
            product_key: identity.product_key.as_str().to_owned(),
            device: identity.device_name.as_str().to_owned(),
        };
        let known = self
            .directory
            .get(&who)
            .await
            .map_err(|e| Refusal::new(LoginRefusal::StoreError, e.to_string()))?
            .ok_or_else(|| Refusal::new(LoginRefusal::UnknownDevice, "no such device"))?;
        if !auth::verify(known.protocol, &identity, password, &known.secret) {
            return Err(Refusal::new(
                LoginRefusal::WrongSecret,
                "the signature does not match the device secret",
            ));
        }
        Ok(who)
    }

    async fn downlink_topics(&self, device: &DeviceIdentity) -> Vec<String> {
        match self.directory.get(device).await {
            Ok(Some(k)) => {
                topics::subscriptions_on_connect(k.protocol, &device.product_key, &device.device)
            }
            Ok(None) => vec![],
            Err(e) => {
                tracing::error!(error = %e, "device lookup failed while subscribing a device");
                vec![]
            }
        }
    }

    fn may_publish(&self, device: &DeviceIdentity, topic: &str) -> bool {
        topics::topic_belongs_to(topic, &device.product_key, &device.device)
    }

    fn may_subscribe(&self, device: &DeviceIdentity, filter: &str) -> bool {
        topics::topic_belongs_to(filter, &device.product_key, &device.device)
    }

    fn forget(&self, device: &DeviceIdentity) {
        self.directory.forget(device);
    }
}
