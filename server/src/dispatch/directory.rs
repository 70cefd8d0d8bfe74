//! The devices the gateway knows: protocol, tenant, id and secret of a device by its MQTT
//! identity, cached while it may be connected, so neither a CONNECT that comes back nor an
//! uplink asks the database. Misses are loaded in batches: when a whole fleet reconnects at
//! once (after a restart), the CONNECTs waiting together cost one query per product, not one
//! each.
//!
//! Entries are dropped when a device's credentials change or it is deleted ([`forget`]) and
//! when its session ends, so the cache holds about the online devices. A load that overlaps a
//! `forget` is run again, so a secret read before a reset never outlives it.
//!
//! [`forget`]: DeviceDirectory::forget

use super::gateway::DeviceIdentity;
use crate::domain::{DeviceId, ProductId, Protocol, TenantId};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Most lookups answered by one batch.
const BATCH: usize = 2_000;

/// What the gateway needs of a registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub protocol: Protocol,
    pub tenant: TenantId,
    pub id: DeviceId,
    pub secret: String,
}

/// A lookup could not be answered (the database failed); the text says why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("device lookup failed: {0}")]
pub struct LookupError(String);

type Reply = oneshot::Sender<Result<Option<Arc<Known>>, LookupError>>;

struct Shared {
    devices: Mutex<HashMap<DeviceIdentity, Arc<Known>>>,
    /// Products by key; a product's protocol and id never change, and a product with devices
    /// cannot be deleted, so entries stay.
    products: Mutex<HashMap<String, (ProductId, Protocol)>>,
    /// Bumped by every `forget`; a batch that saw it move reloads.
    generation: AtomicU64,
}

pub struct DeviceDirectory {
    shared: Arc<Shared>,
    loads: mpsc::Sender<(DeviceIdentity, Reply)>,
}

impl DeviceDirectory {
    /// A directory over `store`; starts its loader task (call within a tokio runtime).
    pub fn new(store: Store) -> Self {
        let shared = Arc::new(Shared {
            devices: Mutex::default(),
            products: Mutex::default(),
            generation: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(BATCH * 4);
        tokio::spawn(load_batches(store, shared.clone(), rx));
        Self { shared, loads: tx }
    }

    /// The device, from the cache or the store; `None` if no such device is registered.
    pub async fn get(&self, who: &DeviceIdentity) -> Result<Option<Arc<Known>>, LookupError> {
        if let Some(k) = self.cached(who) {
            return Ok(Some(k));
        }
        let (tx, rx) = oneshot::channel();
        self.loads
            .send((who.clone(), tx))
            .await
            .map_err(|_| LookupError("the loader stopped".into()))?;
        rx.await
            .map_err(|_| LookupError("the loader stopped".into()))?
    }

    pub fn cached(&self, who: &DeviceIdentity) -> Option<Arc<Known>> {
        self.shared
            .devices
            .lock()
            .ok()
            .and_then(|m| m.get(who).cloned())
    }

    /// Drops what is known of a device: its secret changed, it was deleted, or its session
    /// ended.
    pub fn forget(&self, who: &DeviceIdentity) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut m) = self.shared.devices.lock() {
            m.remove(who);
        }
    }

    /// Drops a device whose session ended; its credentials did not change, so loads under
    /// way stand.
    pub fn evict(&self, who: &DeviceIdentity) {
        if let Ok(mut m) = self.shared.devices.lock() {
            m.remove(who);
        }
    }

    /// Devices held (about the online ones).
    pub fn len(&self) -> usize {
        self.shared.devices.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn load_batches(
    store: Store,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<(DeviceIdentity, Reply)>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let found = loop {
            let generation = shared.generation.load(Ordering::SeqCst);
            let found = load(&store, &shared, &batch).await;
            // A forget during the load may have changed what was read: read again.
            if shared.generation.load(Ordering::SeqCst) == generation {
                break found;
            }
        };
        match found {
            Ok(found) => {
                if let Ok(mut m) = shared.devices.lock() {
                    for (who, k) in &found {
                        m.insert(who.clone(), k.clone());
                    }
                }
                for (who, reply) in batch {
                    let _ = reply.send(Ok(found.get(&who).cloned()));
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One query per product named in the batch (and one per product not seen before).
async fn load(
    store: &Store,
    shared: &Shared,
    batch: &[(DeviceIdentity, Reply)],
) -> Result<HashMap<DeviceIdentity, Arc<Known>>, LookupError> {
    let mut by_product: HashMap<&str, Vec<String>> = HashMap::new();
    for (who, _) in batch {
        by_product
            .entry(who.product_key.as_str())
            .or_default()
            .push(who.device.clone());
    }
    let mut found = HashMap::new();
    for (key, names) in by_product {
        let product = shared
            .products
            .lock()
            .ok()
            .and_then(|m| m.get(key).copied());
        let (product, protocol) = match product {
            Some(p) => p,
            None => match store
                .product_by_key(key)
                .await
                .map_err(|e| LookupError(e.to_string()))?
            {
                Some(p) => {
                    let v = (p.id, p.protocol);
                    if let Ok(mut m) = shared.products.lock() {
                        m.insert(key.to_owned(), v);
                    }
                    v
                }
                None => continue,
            },
        };
        for d in store
            .devices_named(product, &names)
            .await
            .map_err(|e| LookupError(e.to_string()))?
        {
            found.insert(
                DeviceIdentity {
                    product_key: key.to_owned(),
                    device: d.name.into_string(),
                },
                Arc::new(Known {
                    protocol,
                    tenant: d.tenant_id,
                    id: d.id,
                    secret: d.secret,
                }),
            );
        }
    }
    Ok(found)
}
