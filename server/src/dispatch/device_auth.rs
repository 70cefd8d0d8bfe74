//! Device authentication and topic rights against the registry: CONNECT credentials are
//! checked with the product's signing scheme and the device secret in the store.

use super::gateway::{DeviceAuth, DeviceIdentity, Refusal};
use super::{auth, topics};
use crate::metrics::LoginRefusal;
use crate::store::Store;
use async_trait::async_trait;

pub struct StoreDeviceAuth {
    store: Store,
}

impl StoreDeviceAuth {
    pub fn new(store: Store) -> Self {
        Self { store }
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
        let (product, device) = self
            .store
            .device_by_identity(identity.product_key.as_str(), identity.device_name.as_str())
            .await
            .map_err(|e| Refusal::new(LoginRefusal::StoreError, e.to_string()))?
            .ok_or_else(|| Refusal::new(LoginRefusal::UnknownDevice, "no such device"))?;
        if !auth::verify(product.protocol, &identity, password, &device.secret) {
            return Err(Refusal::new(
                LoginRefusal::WrongSecret,
                "the signature does not match the device secret",
            ));
        }
        Ok(DeviceIdentity {
            product_key: product.product_key.into_string(),
            device: device.name.into_string(),
        })
    }

    async fn downlink_topics(&self, device: &DeviceIdentity) -> Vec<String> {
        match self.store.product_by_key(&device.product_key).await {
            Ok(Some(p)) => {
                topics::subscriptions_on_connect(p.protocol, &device.product_key, &device.device)
            }
            Ok(None) => vec![],
            Err(e) => {
                tracing::error!(error = %e, "product lookup failed while subscribing a device");
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
}
