//! Online state written in batches: the router marks a device online or offline without
//! waiting, and a writer task records every mark made since its last write in one statement
//! per state. A fleet reconnecting at once costs a few statements, not one per device, and
//! nothing on the CONNECT path or in the router waits for the database.
//!
//! Marks coalesce per device (the latest wins), so what is pending is bounded by the number
//! of devices, however fast they come and go. A device that connected and left again
//! between two writes is still recorded as having connected (its first connection is its
//! activation, SPEC D1), then as offline.

use crate::clock::Millis;
use crate::domain::DeviceId;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
struct Pending {
    /// Per device: online now, as of when, and whether it connected since the last write.
    marks: Mutex<HashMap<DeviceId, (bool, Millis, bool)>>,
    wake: Notify,
    /// Flushes asked for; the writer reports the last it started a pass after.
    requested: AtomicU64,
}

/// The router's side of the writer.
pub struct Presence {
    pending: Arc<Pending>,
    /// The last flush epoch written, for callers that wait for the registry to catch up.
    written: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Presence {
    /// Starts the writer task on `store`.
    pub fn start(store: Store) -> Self {
        let pending = Arc::new(Pending::default());
        let (written, _) = tokio::sync::watch::channel(0);
        let written = Arc::new(written);
        tokio::spawn(write_batches(store, pending.clone(), written.clone()));
        Self { pending, written }
    }

    /// Records, soon, that the device is online (or not) as of `at`.
    pub fn mark(&self, device: DeviceId, online: bool, at: Millis) {
        if let Ok(mut m) = self.pending.marks.lock() {
            let connected = online || m.get(&device).is_some_and(|p| p.2);
            m.insert(device, (online, at, connected));
        }
        self.pending.wake.notify_one();
    }

    /// Waits until every mark made before the call is written (or `timeout` passes);
    /// whether it was.
    pub async fn flushed(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.written.subscribe();
        // A pass of the writer that starts after this takes every mark made before it.
        let epoch = self.pending.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.pending.wake.notify_one();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n >= epoch))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn write_batches(
    store: Store,
    pending: Arc<Pending>,
    written: Arc<tokio::sync::watch::Sender<u64>>,
) {
    loop {
        let wake = pending.wake.notified();
        let epoch = pending.requested.load(Ordering::SeqCst);
        let batch = pending
            .marks
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default();
        // the online pass first: it takes those that connected and left since, too
        for online in [true, false] {
            let mut ids = Vec::new();
            let mut at = 0;
            for (id, (o, t, connected)) in &batch {
                if *o == online || (online && *connected) {
                    ids.push(*id);
                    at = at.max(*t);
                }
            }
            if ids.is_empty() {
                continue;
            }
            if let Err(e) = store.set_devices_online(&ids, online, at).await {
                tracing::error!(error = %e, devices = ids.len(), online, "recording online state failed");
            }
        }
        written.send_if_modified(|n| {
            let changed = *n != epoch;
            *n = epoch;
            changed
        });
        if batch.is_empty() {
            wake.await;
        }
    }
}
