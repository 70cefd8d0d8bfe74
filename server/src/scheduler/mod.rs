//! The rollout engine (SPEC R1–R9, R13, G1–G4; DESIGN §3–§6): on every tick of the
//! [`Clock`] it begins scheduled rollouts, ends those whose end passed, fires due timers
//! (device timeout, retry) and abort rules, opens the next wave where a gate allows,
//! releases what each running rollout's schedule, window, wave, rate and concurrency allow
//! and pushes it through the device gateway; device reports come up over a channel and are
//! applied in batches. Everything it decides from is in the database (rate state, logical
//! time, deadlines), so a restart continues exactly where the last tick stopped.
//!
//! [`Clock`]: crate::clock::Clock

use crate::clock::{Millis, SharedClock};
use crate::config::SchedulerConfig;
use crate::dispatch::events::{FirmwarePush, Uplink};
use crate::dispatch::gateway::{DeviceGateway, DeviceIdentity};
use crate::dispatch::router::{encode_push, DeviceEvent, DeviceEventKind};
use crate::dispatch::{alink, enos};
use crate::domain::*;
use crate::firmware::Firmware;
use crate::metrics::Metrics;
use crate::policy::{RateAction, RateStats};
use crate::store::{ActiveRollout, Pick, PushTarget, Rollout, Store, StoreError, TaskReport};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

pub mod policies;
pub use policies::Policies;

/// Approval calls per rollout and tick at most: a policy that defers nearly everything
/// cannot make one tick walk the whole rollout.
const APPROVAL_ROUNDS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// What one tick did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub begun: usize,
    pub released: u64,
    pub pushed: u64,
    pub timed_out: u64,
    pub retried: u64,
    pub ended_tasks: u64,
    pub completed: usize,
    /// G1: rollouts an abort rule stopped.
    pub aborted: usize,
    /// G3: rollouts that moved to their next wave.
    pub waves_started: usize,
    /// G4: tasks cancelled as a window closed.
    pub window_cancelled: u64,
}

pub struct Scheduler {
    store: Store,
    clock: SharedClock,
    gateway: Arc<dyn DeviceGateway>,
    firmware: Firmware,
    public_url: String,
    metrics: Arc<Metrics>,
    cfg: SchedulerConfig,
    policies: Arc<Policies>,
    /// One tick at a time: ticks read and then write each rollout's rate state.
    ticking: tokio::sync::Mutex<()>,
    push_ids: AtomicU64,
    /// Running rollouts that may not push now (outside their schedule's time or window, R2
    /// and G4), as of the last tick: a device that connects then is not pushed to.
    quiet: std::sync::Mutex<Vec<i64>>,
}

impl Scheduler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        clock: SharedClock,
        gateway: Arc<dyn DeviceGateway>,
        firmware: Firmware,
        public_url: String,
        metrics: Arc<Metrics>,
        cfg: SchedulerConfig,
        policies: Arc<Policies>,
    ) -> Self {
        let seed = u64::try_from(clock.now_millis()).unwrap_or(0) % 1_000_000_000;
        Self {
            store,
            clock,
            gateway,
            firmware,
            public_url,
            metrics,
            cfg,
            policies,
            ticking: tokio::sync::Mutex::new(()),
            push_ids: AtomicU64::new(seed),
            quiet: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn tick_ms(&self) -> Millis {
        i64::try_from(self.cfg.tick_ms).unwrap_or(1000)
    }

    /// Ticks on the system clock until the process ends; a failing tick is logged and the
    /// next one tries again.
    pub async fn run_ticks(self: Arc<Self>) {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(self.cfg.tick_ms));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "rollout engine tick failed; the next tick retries");
            }
        }
    }

    /// Moves a manual clock forward by `total_ms`, one tick's length at a time, running the
    /// engine after each step exactly as the system clock would; returns the ticks run.
    pub async fn advance(
        &self,
        clock: &crate::clock::ManualClock,
        total_ms: u64,
    ) -> Result<u64, SchedulerError> {
        let mut left = total_ms;
        let mut ticks = 0;
        while left > 0 {
            let step = left.min(self.cfg.tick_ms);
            clock.advance(std::time::Duration::from_millis(step));
            left -= step;
            self.tick().await?;
            ticks += 1;
        }
        Ok(ticks)
    }

    /// One tick at the clock's current time.
    pub async fn tick(&self) -> Result<TickReport, SchedulerError> {
        let _one = self.ticking.lock().await;
        let now = self.clock.now_millis();
        let mut rep = TickReport {
            begun: self.store.begin_due_rollouts(now).await?.len(),
            ..Default::default()
        };
        let (timed_out, retried) = self.store.expire_timers(now).await?;
        rep.timed_out = timed_out;
        rep.retried = retried;
        // before any release: a rule the last reports met stops its rollout in this tick
        rep.aborted = self.store.fire_abort_rules(now).await?.len();
        rep.waves_started = self.store.advance_due_waves(now).await?.len();
        let mut quiet = Vec::new();
        for a in self.store.active_rollouts().await? {
            if !a.rollout.spec.allows_push(now) {
                quiet.push(a.rollout.id.0);
            }
            match self.release(&a, now).await {
                Ok((released, pushed, cancelled)) => {
                    rep.released += released;
                    rep.pushed += pushed;
                    rep.window_cancelled += cancelled;
                }
                // one rollout's failure does not stop the others
                Err(e) => tracing::warn!(rollout = %a.rollout.id, error = %e, "releasing failed"),
            }
        }
        if let Ok(mut q) = self.quiet.lock() {
            *q = quiet;
        }
        // after the release, so the allowance of the last moment before the end is used
        rep.ended_tasks = self.store.end_due_rollouts(now).await?;
        rep.completed = self.store.complete_finished_rollouts(now).await?.len();
        Ok(rep)
    }

    /// Releases and pushes what one rollout may now, then cancels what a window that closed
    /// meanwhile leaves unpushed (G4, when the rollout asks for it); returns (released,
    /// pushed, cancelled).
    async fn release(
        &self,
        a: &ActiveRollout,
        now: Millis,
    ) -> Result<(u64, u64, u64), SchedulerError> {
        let r = &a.rollout;
        let since = a.ticked_at.or(r.started_at).unwrap_or(now).min(now);
        let (released, pushed) = self.release_between(a, since, now).await?;
        let mut cancelled = 0;
        if let Some(w) = &r.spec.window {
            if r.state == RolloutState::Running
                && w.on_close == WindowClose::Cancel
                && w.closed_between(since, now)
            {
                cancelled = self.store.cancel_at_window_close(r, now).await?;
            }
        }
        Ok((released, pushed, cancelled))
    }

    async fn release_between(
        &self,
        a: &ActiveRollout,
        since: Millis,
        now: Millis,
    ) -> Result<(u64, u64), SchedulerError> {
        let r = &a.rollout;
        let mut rate = a.rate;
        let window = r.spec.push_time_between(since, now);
        let pushing = r.state == RolloutState::Running
            && r.spec.push_mode == PushMode::Push
            && (window > 0 || r.spec.allows_push(now));
        if !pushing {
            // no allowance accrues while paused, pulling only, or outside the window
            self.store.save_rate(r.id, rate.as_ref(), now).await?;
            return Ok((0, 0));
        }
        let cap = self.cfg.max_release_per_tick;
        let wave = r.current_wave;
        let room = match r.spec.concurrency_in(wave) {
            Some(limit) => {
                u64::from(limit).saturating_sub(self.store.concurrency_used(r.id).await?)
            }
            None => cap,
        }
        .min(cap);
        let available = if room == 0 {
            0
        } else {
            self.store.waiting_tasks(r.id, wave, room, now).await?
        };
        let n = if let Some(att) = &r.spec.policies.rate {
            // W2: the tenant's rate policy decides; it is asked only while pushing is allowed
            match self
                .rate_policy(a, att, available, window, since, now)
                .await?
            {
                Some(n) => n.min(available),
                None => return Ok((0, 0)),
            }
        } else {
            // a wave with a rate of its own counts its own successes (G3)
            let succeeded = if r.spec.wave(wave).is_some_and(|w| w.rate.is_some()) {
                a.wave_succeeded
            } else {
                a.succeeded_total
            };
            match (&mut rate, r.spec.rate_in(wave)) {
                (Some(state), Some(spec)) => {
                    state.release(&spec, window, available, succeeded, self.tick_ms())
                }
                _ => available,
            }
        };
        // Connected by the gateway's word (the registry's flag is written in batches, so it
        // can lag a device that just connected), or by the registry's; a gateway that cannot
        // tell (an external broker) pushes to all.
        let knows = self.gateway.knows_presence();
        let online = |t: &PushTarget| {
            !knows
                || t.online
                || self.gateway.is_connected(&DeviceIdentity {
                    product_key: t.product_key.clone(),
                    device: t.device_name.clone(),
                }) == Some(true)
        };
        let (released, targets) = match &r.spec.policies.approval {
            None => {
                self.store
                    .release_tasks(r.tenant_id, r.id, wave, Pick::First(n), online, now)
                    .await?
            }
            Some(att) => match self.approved(r, att, wave, n, now).await? {
                Some(ids) => {
                    self.store
                        .release_tasks(r.tenant_id, r.id, wave, Pick::Ids(&ids), online, now)
                        .await?
                }
                None => (0, vec![]),
            },
        };
        if r.spec.policies.rate.is_some() {
            self.store
                .save_policy_state(r.id, None, released, now)
                .await?;
        } else {
            if released < n {
                if let Some(state) = &mut rate {
                    state.refund(n - released);
                }
            }
            self.store.save_rate(r.id, rate.as_ref(), now).await?;
        }
        let pushed = self.push_all(targets, now).await;
        Ok((released, pushed))
    }

    /// W2 rate: one tick of the rollout's rate policy. Returns how many it releases, or
    /// `None` when it releases nothing this tick: it paused or aborted the rollout, or it
    /// failed (W3: counted, and the rollout pauses after too many in a row).
    async fn rate_policy(
        &self,
        a: &ActiveRollout,
        att: &PolicyAttachment,
        releasable: u64,
        window: Millis,
        since: Millis,
        now: Millis,
    ) -> Result<Option<u64>, SchedulerError> {
        let r = &a.rollout;
        let counts = self.store.task_counts(r.tenant_id, r.id).await?;
        let o = r.outcomes;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let stats = RateStats {
            waiting: counts.get(TaskState::Waiting) + counts.get(TaskState::Confirming),
            releasable,
            pending: counts.get(TaskState::Pending),
            pushed: counts.get(TaskState::Pushed),
            in_progress: counts.get(TaskState::InProgress),
            succeeded: o.succeeded,
            failed: o.failed + o.timed_out,
            timed_out: o.timed_out,
            rejected: o.rejected,
            cancelled: counts.get(TaskState::Cancelled),
            released_total: a.released_total,
            now_ms: u(now),
            elapsed_ms: u(now - r.started_at.unwrap_or(now)),
            window_ms: u(window),
            tick_ms: u32::try_from(now - since).unwrap_or(u32::MAX),
        };
        let decision = self
            .policies
            .rate_tick(r.tenant_id, att, stats, a.policy_state.clone())
            .await;
        let d = match decision {
            Ok(d) => d,
            Err(why) => {
                tracing::warn!(rollout = %r.id, %why, "a rate policy failed; nothing released");
                self.store.save_policy_state(r.id, None, 0, now).await?;
                self.policy_failed(r, Hook::Rate, &why, now).await?;
                return Ok(None);
            }
        };
        if a.policy_failures > 0 {
            self.store.policy_recovered(r.id).await?;
        }
        self.store
            .save_policy_state(r.id, Some(d.state), 0, now)
            .await?;
        Ok(match d.action {
            RateAction::Release(n) => Some(n),
            RateAction::Pause(reason) => {
                self.store.stop_by_policy(r, false, &reason, now).await?;
                None
            }
            RateAction::Abort(reason) => {
                self.store.stop_by_policy(r, true, &reason, now).await?;
                None
            }
        })
    }

    /// W2 approval: asks the rollout's approval policy about the releasable tasks in
    /// release order until `n` are approved (a deferred or rejected task does not use up
    /// the tick's allowance; at most [`APPROVAL_ROUNDS`] calls a tick); applies its
    /// deferrals and rejections and returns the approved task ids, or `None` when it failed
    /// (W3: every task stays waiting, as if deferred).
    async fn approved(
        &self,
        r: &Rollout,
        att: &PolicyAttachment,
        wave: u32,
        n: u64,
        now: Millis,
    ) -> Result<Option<Vec<i64>>, SchedulerError> {
        let mut approved = Vec::new();
        let mut after = 0;
        let mut fields = None;
        for _ in 0..APPROVAL_ROUNDS {
            let want = n.saturating_sub(approved.len() as u64);
            if want == 0 {
                break;
            }
            let asked = async {
                let f = match &fields {
                    Some(f) => f,
                    None => fields.insert(self.policies.approval_fields(r.tenant_id, att).await?),
                };
                let tasks = self
                    .store
                    .approval_candidates(r, wave, want, after, f, now)
                    .await
                    .map_err(|e| e.to_string())?;
                let ids: Vec<i64> = tasks.iter().map(|t| t.task.0).collect();
                if ids.is_empty() {
                    return Ok((ids, vec![]));
                }
                let tasks = tasks
                    .into_iter()
                    .map(|t| crate::policy::PolicyTask::of(t, r.id.0, r.target_version.as_str()))
                    .collect();
                let verdicts = self.policies.approve(r.tenant_id, att, now, tasks).await?;
                Ok::<_, String>((ids, verdicts))
            }
            .await;
            let (ids, verdicts) = match asked {
                Ok(v) => v,
                Err(why) => {
                    tracing::warn!(rollout = %r.id, %why, "an approval policy failed; nothing released");
                    self.policy_failed(r, Hook::Approval, &why, now).await?;
                    return Ok(None);
                }
            };
            let Some(last) = ids.last().copied() else {
                break;
            };
            after = last;
            let mut deferred = Vec::new();
            let mut rejected = Vec::new();
            for (id, v) in ids.into_iter().zip(verdicts) {
                match v {
                    Verdict::Approve => approved.push(id),
                    Verdict::Defer(s) => deferred.push((TaskId(id), now + i64::from(s) * 1000)),
                    Verdict::Reject(why) => rejected.push((TaskId(id), why)),
                }
            }
            self.store
                .apply_verdicts(r, &deferred, &rejected, now)
                .await?;
        }
        if fields.is_some() {
            self.store.policy_recovered(r.id).await?;
        }
        Ok(Some(approved))
    }

    /// W3: records a policy's failure against its rollout (pausing it after too many in a
    /// row); the engine goes on with every other rollout.
    async fn policy_failed(
        &self,
        r: &Rollout,
        hook: Hook,
        why: &str,
        now: Millis,
    ) -> Result<(), SchedulerError> {
        let max = self.policies.config().max_failures;
        if self.store.policy_failed(r, hook, why, max, now).await? {
            tracing::warn!(rollout = %r.id, %why, "a rollout paused: its policy failed {max} times in a row");
        }
        Ok(())
    }

    /// The push of one rollout's package, with a download URL signed now.
    async fn firmware_push(&self, rollout: RolloutId, now: Millis) -> Option<FirmwarePush> {
        let found = async {
            let r = self.store.rollout_any_tenant(rollout).await?;
            let pkg = self.store.get_package(r.tenant_id, r.package_id).await?;
            let files = self.store.package_files(r.tenant_id, r.package_id).await?;
            Ok::<_, StoreError>((r, pkg, files))
        }
        .await;
        let (r, pkg, files) = match found {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%rollout, error = %e, "the rollout's package could not be read");
                return None;
            }
        };
        let Some(file) = files.first() else {
            tracing::warn!(%rollout, "the rollout's package has no file; nothing to push");
            return None;
        };
        Some(FirmwarePush {
            module: pkg.module.clone(),
            version: pkg.version.clone(),
            url: self.firmware.url_for(&self.public_url, file.id, now),
            size: file.size,
            sign_method: pkg.sign_method,
            sign: match pkg.sign_method {
                SignMethod::Md5 => file.md5.clone(),
                SignMethod::Sha256 => file.sha256.clone(),
            },
            is_diff: pkg.kind == PackageKind::Diff,
            ext_data: r.spec.tags.clone(),
        })
    }

    /// Encodes and publishes pushes; returns how many went out.
    async fn push_all(&self, targets: Vec<PushTarget>, now: Millis) -> u64 {
        let mut pushes: HashMap<i64, Option<FirmwarePush>> = HashMap::new();
        let mut sent = 0;
        for t in targets {
            if let std::collections::hash_map::Entry::Vacant(slot) = pushes.entry(t.rollout_id) {
                slot.insert(self.firmware_push(RolloutId(t.rollout_id), now).await);
            }
            let Some(Some(push)) = pushes.get(&t.rollout_id) else {
                continue;
            };
            if self.push_one(&t, push).await {
                sent += 1;
            }
        }
        sent
    }

    async fn push_one(&self, t: &PushTarget, push: &FirmwarePush) -> bool {
        let Some(protocol) = Protocol::parse(&t.protocol) else {
            return false;
        };
        let device = DeviceIdentity {
            product_key: t.product_key.clone(),
            device: t.device_name.clone(),
        };
        let id = self.push_ids.fetch_add(1, Ordering::Relaxed);
        match encode_push(protocol, &device, push, id) {
            Ok(d) => match self.gateway.publish(&d.topic, d.payload.into()).await {
                Ok(()) => {
                    self.metrics.pushes.inc();
                    true
                }
                Err(e) => {
                    tracing::warn!(topic = %d.topic, error = %e, "publishing a push failed");
                    false
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "a push could not be encoded");
                false
            }
        }
    }

    /// Applies device events in batches until the router stops sending them: reports move
    /// tasks (one transaction per batch), connecting devices get what they are owed, pulls
    /// are answered.
    pub async fn run_events(self: Arc<Self>, mut events: mpsc::Receiver<DeviceEvent>) {
        let max = self.cfg.event_batch.max(1);
        let mut batch = Vec::with_capacity(max);
        while events.recv_many(&mut batch, max).await > 0 {
            if let Err(e) = self.apply_events(&batch).await {
                tracing::warn!(error = %e, events = batch.len(), "applying device reports failed");
            }
            batch.clear();
        }
    }

    /// Applies one batch of device events.
    pub async fn apply_events(&self, batch: &[DeviceEvent]) -> Result<(), SchedulerError> {
        let now = self.clock.now_millis();
        let mut reports = Vec::new();
        let mut connected = Vec::new();
        let mut informed = Vec::new();
        let mut asks = Vec::new();
        for ev in batch {
            match &ev.kind {
                DeviceEventKind::Connected => connected.push(ev.device),
                DeviceEventKind::Disconnected => {}
                DeviceEventKind::Message(m) => match m {
                    Uplink::Inform { module, version } => {
                        informed.push(ev.device);
                        reports.push((
                            ev.device,
                            TaskReport::Version {
                                module: module.clone(),
                                version: version.clone(),
                            },
                        ));
                    }
                    Uplink::Progress { module, step, desc } => reports.push((
                        ev.device,
                        if *step >= 0 {
                            TaskReport::Progress {
                                module: module.clone(),
                                percent: (*step).min(100),
                                desc: desc.clone(),
                            }
                        } else {
                            TaskReport::Failure {
                                module: module.clone(),
                                step: *step,
                                desc: desc.clone(),
                            }
                        },
                    )),
                    Uplink::Pull { .. } | Uplink::GetVersion => asks.push(ev),
                    Uplink::UpgradeReply { .. } => {}
                },
            }
        }
        let versions: Vec<_> = batch
            .iter()
            .filter_map(|ev| match &ev.kind {
                DeviceEventKind::Message(Uplink::Inform { module, version }) => {
                    Some((ev.device, module.clone(), version.clone(), ev.at))
                }
                _ => None,
            })
            .collect();
        self.store.record_version_reports(&versions).await?;
        let outcome = self.store.apply_reports(&reports, now).await?;
        if outcome.moved > 0 {
            // G1: a rule these reports meet stops its rollout before anything else is pushed
            self.store.fire_abort_rules(now).await?;
        }
        // B1: devices whose reported version now matches a dynamic rollout join it
        self.store
            .join_dynamic_rollouts(&informed, Some(self.policies.as_ref()), now)
            .await?;
        let quiet = self.quiet.lock().map(|q| q.clone()).unwrap_or_default();
        if !connected.is_empty() {
            let owed = self
                .store
                .owed_pushes(&connected, true, &quiet, now)
                .await?;
            self.push_all(owed, now).await;
        }
        if !informed.is_empty() {
            // without presence (an external broker) a version report is the only sign a
            // device is back, so what was pushed before goes out again
            let repush = !self.gateway.knows_presence();
            let owed = self
                .store
                .owed_pushes(&informed, repush, &quiet, now)
                .await?;
            self.push_all(owed, now).await;
        }
        for ev in asks {
            self.answer(ev, now).await?;
        }
        Ok(())
    }

    /// R3: a device asks for its update (Link Kit `firmware/get`, EnOS `ota.request`) or for
    /// the versions it may take (EnOS `getversion`).
    async fn answer(&self, ev: &DeviceEvent, now: Millis) -> Result<(), SchedulerError> {
        let DeviceEventKind::Message(m) = &ev.kind else {
            return Ok(());
        };
        let module = match m {
            Uplink::Pull { module } => module.clone(),
            _ => None,
        }
        .unwrap_or_else(ModuleName::default_module);
        let task = self.store.pull_task(ev.device, &module, now).await?;
        let push = match &task {
            Some(t) => self.firmware_push(RolloutId(t.rollout_id), now).await,
            None => None,
        };
        let (pk, dn) = (
            ev.identity.product_key.as_str(),
            ev.identity.device.as_str(),
        );
        let reply = match (m, ev.protocol) {
            (Uplink::Pull { .. }, Protocol::Alink) => {
                alink::encode_get_reply(pk, dn, ev.request_id.as_ref(), push.as_ref())
            }
            (Uplink::GetVersion, Protocol::Enos) => match &ev.request_id {
                Some(rid) => enos::encode_getversion_reply(pk, dn, rid, push.as_slice()),
                None => return Ok(()),
            },
            // EnOS "Device Request Upgrade": acknowledged by the router; the answer is a push
            (Uplink::Pull { .. }, Protocol::Enos) => {
                if let (Some(t), Some(p)) = (&task, &push) {
                    self.push_one(t, p).await;
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        match reply {
            Ok(d) => {
                if let Err(e) = self.gateway.publish(&d.topic, d.payload.into()).await {
                    tracing::warn!(topic = %d.topic, error = %e, "answering a device failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "encoding an answer failed"),
        }
        Ok(())
    }
}
