//! The tenants' policies as the engine and the API use them (SPEC W1–W3, DESIGN §7): an
//! upload checked and compiled, each version compiled once and kept, every call run on
//! tokio's blocking pool under the configured limits, and a failure said in words that name
//! the policy and its classified cause (the rollout event and the pause record it).

use crate::config::PolicyConfig;
use crate::domain::*;
use crate::policy::{
    CompiledPolicy, Engine, Limits, PolicyDevice, PolicyError, PolicyTask, RateDecision, RateStats,
};
use crate::store::{ScopeHook, Store, StoreError};
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A loaded policy version: what the registry says of it, and the compiled component.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub info: PolicyInfo,
    pub compiled: Arc<CompiledPolicy>,
}

impl Loaded {
    pub fn has(&self, hook: Hook) -> bool {
        self.info.hooks.contains(&hook)
    }

    fn label(&self, hook: Hook) -> String {
        format!(
            "{} policy {} v{}",
            hook.as_str(),
            self.info.name,
            self.info.version
        )
    }
}

/// The policy service: one per process, shared by the API and the engine.
pub struct Policies {
    store: Store,
    cfg: PolicyConfig,
    /// Built on first use: a server whose tenants use no policy never reserves the pool.
    engine: OnceLock<Result<Engine, PolicyError>>,
    loaded: Mutex<HashMap<PolicyId, Loaded>>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies").field("cfg", &self.cfg).finish()
    }
}

impl Policies {
    pub fn new(store: Store, cfg: PolicyConfig) -> Self {
        Self {
            store,
            cfg,
            engine: OnceLock::new(),
            loaded: Mutex::default(),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    fn engine(&self) -> Result<Engine, PolicyError> {
        self.engine
            .get_or_init(|| {
                Engine::new(Limits {
                    memory_bytes: self.cfg.memory_mib << 20,
                    fuel: self.cfg.fuel,
                    deadline: Duration::from_millis(self.cfg.deadline_ms),
                    instances: self.cfg.instances,
                    ..Limits::default()
                })
            })
            .clone()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<PolicyId, Loaded>> {
        // a panic while holding the lock cannot leave the map half-written
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// W1: checks an upload against the interface and the import allow-list, compiles it
    /// and smoke-runs each hook under the production limits.
    pub async fn check(&self, component: Vec<u8>) -> Result<Arc<CompiledPolicy>, PolicyError> {
        let engine = self.engine()?;
        engine
            .blocking(move |e| e.compile(&component))
            .await
            .and_then(|r| r)
    }

    /// A tenant's policy version, compiled (once per version and process).
    pub async fn load(&self, tenant: TenantId, id: PolicyId) -> Result<Loaded, LoadError> {
        let cached = self.cache().get(&id).cloned();
        if let Some(l) = cached {
            // the cache is keyed by id; the tenant is checked on every load all the same
            self.store.get_policy(tenant, id).await?;
            return Ok(l);
        }
        let (info, bytes) = self.store.policy_component(tenant, id).await?;
        let compiled = self.check(bytes).await?;
        let l = Loaded { info, compiled };
        self.cache().insert(id, l.clone());
        Ok(l)
    }

    /// As [`Policies::load`], for the engine, which names the rollout's tenant itself and
    /// needs no second look at the registry once a version is loaded.
    async fn load_for_run(&self, tenant: TenantId, id: PolicyId) -> Result<Loaded, String> {
        let cached = self.cache().get(&id).cloned();
        if let Some(l) = cached {
            return Ok(l);
        }
        self.load(tenant, id)
            .await
            .map_err(|e| format!("policy {id} could not be loaded: {e}"))
    }

    /// After a version is deleted: its compiled form goes too.
    pub fn forget(&self, id: PolicyId, digest: &str) {
        self.cache().remove(&id);
        if let Ok(e) = self.engine() {
            e.forget(digest);
        }
    }

    fn failed(l: &Loaded, hook: Hook, e: &PolicyError) -> String {
        format!("{}: {}: {e}", l.label(hook), e.code())
    }

    /// W2 approval: the device fields the approval hook reads.
    pub async fn approval_fields(
        &self,
        tenant: TenantId,
        a: &PolicyAttachment,
    ) -> Result<DeviceFields, String> {
        let l = self.load_for_run(tenant, a.policy).await?;
        let engine = self.engine().map_err(|e| e.to_string())?;
        let (p, config) = (l.compiled.clone(), a.config.clone().into_bytes());
        match engine
            .blocking(move |e| e.approval_requirements(&p, &config))
            .await
            .and_then(|r| r)
        {
            Ok(r) => Ok(r.into()),
            Err(e) => Err(Self::failed(&l, Hook::Approval, &e)),
        }
    }

    /// W2 approval: a verdict per task, at logical time `now`.
    pub async fn approve(
        &self,
        tenant: TenantId,
        a: &PolicyAttachment,
        now: crate::clock::Millis,
        tasks: Vec<PolicyTask>,
    ) -> Result<Vec<Verdict>, String> {
        let l = self.load_for_run(tenant, a.policy).await?;
        let engine = self.engine().map_err(|e| e.to_string())?;
        let (p, config) = (l.compiled.clone(), a.config.clone().into_bytes());
        let now = u64::try_from(now).unwrap_or(0);
        let max = engine.limits().max_batch;
        match engine
            .blocking(move |e| {
                let mut out = Vec::with_capacity(tasks.len());
                for chunk in tasks.chunks(max) {
                    out.extend(e.approve(&p, &config, now, chunk)?);
                }
                Ok(out)
            })
            .await
            .and_then(|r| r)
        {
            Ok(v) => Ok(v),
            Err(e) => Err(Self::failed(&l, Hook::Approval, &e)),
        }
    }

    /// W2 rate: one tick.
    pub async fn rate_tick(
        &self,
        tenant: TenantId,
        a: &PolicyAttachment,
        stats: RateStats,
        state: Vec<u8>,
    ) -> Result<RateDecision, String> {
        let l = self.load_for_run(tenant, a.policy).await?;
        let engine = self.engine().map_err(|e| e.to_string())?;
        let (p, config) = (l.compiled.clone(), a.config.clone().into_bytes());
        match engine
            .blocking(move |e| e.rate_tick(&p, &config, &stats, &state))
            .await
            .and_then(|r| r)
        {
            Ok(d) => Ok(d),
            Err(e) => Err(Self::failed(&l, Hook::Rate, &e)),
        }
    }
}

impl ScopeHook for Policies {
    fn fields<'a>(
        &'a self,
        tenant: TenantId,
        a: &'a PolicyAttachment,
    ) -> BoxFuture<'a, Result<DeviceFields, String>> {
        Box::pin(async move {
            let l = self.load_for_run(tenant, a.policy).await?;
            let engine = self.engine().map_err(|e| e.to_string())?;
            let (p, config) = (l.compiled.clone(), a.config.clone().into_bytes());
            match engine
                .blocking(move |e| e.scope_requirements(&p, &config))
                .await
                .and_then(|r| r)
            {
                Ok(r) => Ok(r.into()),
                Err(e) => Err(Self::failed(&l, Hook::Scope, &e)),
            }
        })
    }

    fn select<'a>(
        &'a self,
        tenant: TenantId,
        a: &'a PolicyAttachment,
        devices: Vec<DeviceRecord>,
    ) -> BoxFuture<'a, Result<Vec<bool>, String>> {
        Box::pin(async move {
            let l = self.load_for_run(tenant, a.policy).await?;
            let engine = self.engine().map_err(|e| e.to_string())?;
            let (p, config) = (l.compiled.clone(), a.config.clone().into_bytes());
            let devices: Vec<PolicyDevice> = devices.into_iter().map(Into::into).collect();
            let max = engine.limits().max_batch;
            match engine
                .blocking(move |e| {
                    let mut out = Vec::with_capacity(devices.len());
                    for chunk in devices.chunks(max) {
                        out.extend(e.scope_select(&p, &config, chunk)?);
                    }
                    Ok(out)
                })
                .await
                .and_then(|r| r)
            {
                Ok(v) => Ok(v),
                Err(e) => Err(Self::failed(&l, Hook::Scope, &e)),
            }
        })
    }

    fn max_failures(&self) -> u32 {
        self.cfg.max_failures
    }
}

/// W5: a rollout's rate and approval policies as a projection asks them, in simulated time
/// and without pushing anything. Its calls are synchronous (the sandbox's, and the device
/// records read through `handle`): use it on a blocking thread, never an async worker.
pub struct DryRunHooks {
    engine: Engine,
    store: Store,
    handle: tokio::runtime::Handle,
    tenant: TenantId,
    module: ModuleName,
    target: String,
    rate: Option<(Loaded, Vec<u8>, Vec<u8>)>,
    approval: Option<(Loaded, Vec<u8>, DeviceFields)>,
    /// Devices by release position.
    release_order: Vec<DeviceId>,
    max_failures: u32,
}

impl Policies {
    /// The hooks a dry run of a rollout with `policies` asks; `release_order` is its devices
    /// in release order (needed with an approval policy).
    pub async fn dry_run(
        &self,
        tenant: TenantId,
        policies: &RolloutPolicies,
        module: ModuleName,
        target: String,
        release_order: Vec<DeviceId>,
    ) -> Result<DryRunHooks, String> {
        let engine = self.engine().map_err(|e| e.to_string())?;
        let rate = match &policies.rate {
            Some(a) => Some((
                self.load_for_run(tenant, a.policy).await?,
                a.config.clone().into_bytes(),
                Vec::new(),
            )),
            None => None,
        };
        let approval = match &policies.approval {
            Some(a) => Some((
                self.load_for_run(tenant, a.policy).await?,
                a.config.clone().into_bytes(),
                self.approval_fields(tenant, a).await?,
            )),
            None => None,
        };
        Ok(DryRunHooks {
            engine,
            store: self.store.clone(),
            handle: tokio::runtime::Handle::current(),
            tenant,
            module,
            target,
            rate,
            approval,
            release_order,
            max_failures: self.cfg.max_failures,
        })
    }
}

impl crate::domain::projection::Hooks for DryRunHooks {
    fn rate(
        &mut self,
        i: &crate::domain::projection::RateInput,
    ) -> Option<Result<crate::domain::projection::RateStep, String>> {
        use crate::domain::projection::RateStep;
        let (l, config, state) = self.rate.as_mut()?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let stats = RateStats {
            waiting: i.waiting,
            releasable: i.releasable,
            pushed: i.pushed,
            succeeded: i.succeeded,
            rejected: i.rejected,
            released_total: i.released_total,
            now_ms: u(i.now),
            elapsed_ms: u(i.elapsed),
            window_ms: u(i.window),
            tick_ms: u32::try_from(i.step).unwrap_or(u32::MAX),
            ..RateStats::default()
        };
        Some(
            match self.engine.rate_tick(&l.compiled, config, &stats, state) {
                Ok(d) => {
                    *state = d.state;
                    Ok(match d.action {
                        crate::policy::RateAction::Release(n) => RateStep::Release(n),
                        crate::policy::RateAction::Pause(r) => RateStep::Pause(r),
                        crate::policy::RateAction::Abort(r) => RateStep::Abort(r),
                    })
                }
                Err(e) => Err(Policies::failed(l, Hook::Rate, &e)),
            },
        )
    }

    fn approve(
        &mut self,
        at: crate::clock::Millis,
        positions: &[u64],
    ) -> Option<Result<Vec<Verdict>, String>> {
        let (l, config, fields) = self.approval.as_ref()?;
        let ids: Vec<DeviceId> = positions
            .iter()
            .filter_map(|p| self.release_order.get(*p as usize).copied())
            .collect();
        let records = match self.handle.block_on(self.store.approval_records(
            self.tenant,
            &self.module,
            &ids,
            fields,
        )) {
            Ok(r) => r,
            Err(e) => return Some(Err(format!("device records could not be read: {e}"))),
        };
        let mut by_id: HashMap<i64, (DeviceRecord, String)> =
            records.into_iter().map(|(d, v)| (d.id.0, (d, v))).collect();
        let tasks: Vec<PolicyTask> = positions
            .iter()
            .zip(&ids)
            .filter_map(|(p, id)| {
                let (device, from_version) = by_id.remove(&id.0)?;
                Some(PolicyTask::of(
                    ApprovalTask {
                        task: TaskId(i64::try_from(*p).unwrap_or(i64::MAX)),
                        device,
                        from_version,
                        attempt: 0,
                    },
                    0,
                    &self.target,
                ))
            })
            .collect();
        if tasks.len() != positions.len() {
            return Some(Err("a device of the dry run is gone".into()));
        }
        let now = u64::try_from(at).unwrap_or(0);
        let mut out = Vec::with_capacity(tasks.len());
        for chunk in tasks.chunks(self.engine.limits().max_batch) {
            match self.engine.approve(&l.compiled, config, now, chunk) {
                Ok(v) => out.extend(v),
                Err(e) => return Some(Err(Policies::failed(l, Hook::Approval, &e))),
            }
        }
        Some(Ok(out))
    }

    fn max_failures(&self) -> u32 {
        self.max_failures
    }
}
