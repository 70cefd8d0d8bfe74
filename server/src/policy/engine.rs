//! The policy engine: one wasmtime `Engine` per process (fuel, epoch interruption with a
//! ticker thread, the pooling allocator), components checked and compiled once and cached by
//! their sha256, and each call in a fresh store under a memory limit, a fuel budget and a
//! deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{
    types::ComponentItem, Component, ComponentExportIndex, InstancePre, Linker,
};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use super::host::{self, wit_approval, wit_rate, wit_types, CallState, LogLimits};
use super::{
    PolicyDevice, PolicyError, PolicyTask, RateAction, RateDecision, RateStats, Requirements,
    Verdict,
};

/// The WIT package's interfaces, as component import/export names.
const HOST: &str = "ota:policy/host@1.0.0";
const TYPES: &str = "ota:policy/types@1.0.0";
const SCOPE: &str = "ota:policy/scope@1.0.0";
const APPROVAL: &str = "ota:policy/approval@1.0.0";
const RATE: &str = "ota:policy/rate@1.0.0";

/// WASI 0.2 interfaces a plain `wasm32-wasip2` Rust guest imports (std's startup, stdio,
/// `HashMap`'s random seed, `SystemTime`), all served by the deterministic stand-in.
/// Filesystem, sockets and HTTP are not here: a policy that imports them is refused.
const WASI_ALLOWED: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// The interval of the epoch ticker: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What one call may use, and how many calls may run at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory per call.
    pub memory_bytes: usize,
    /// Fuel per call (about one unit per WebAssembly instruction).
    pub fuel: u64,
    /// Wall-clock time per call (checked every 10 ms).
    pub deadline: Duration,
    /// Instances alive at once (concurrent calls).
    pub instances: u32,
    /// Devices or tasks per call.
    pub max_batch: usize,
    /// A rate state's encoded size.
    pub max_state_bytes: usize,
    /// Log lines per call, and bytes per line.
    pub log_lines: usize,
    pub log_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 32 << 20,
            fuel: 1_000_000_000,
            deadline: Duration::from_secs(1),
            instances: 128,
            max_batch: 1_000,
            max_state_bytes: 64 << 10,
            log_lines: 100,
            log_line_bytes: 2_048,
        }
    }
}

/// Which hooks a component provides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks {
    pub scope: bool,
    pub approval: bool,
    pub rate: bool,
}

#[derive(Clone)]
struct ScopeIdx {
    requirements: ComponentExportIndex,
    select: ComponentExportIndex,
}

#[derive(Clone)]
struct ApprovalIdx {
    requirements: ComponentExportIndex,
    approve: ComponentExportIndex,
}

/// A checked, compiled component, ready to instantiate. Cheap to share (`Arc`).
pub struct CompiledPolicy {
    digest: String,
    hooks: Hooks,
    pre: InstancePre<CallState>,
    scope: Option<ScopeIdx>,
    approval: Option<ApprovalIdx>,
    rate: Option<ComponentExportIndex>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("digest", &self.digest)
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl CompiledPolicy {
    /// The sha256 of the component's bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }
}

/// The policy engine. Clone it freely: clones share the compiled cache and the ticker.
#[derive(Clone)]
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Arc<Linker<CallState>>,
    limits: Limits,
    cache: Arc<Mutex<HashMap<String, Arc<CompiledPolicy>>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("limits", &self.limits)
            .finish()
    }
}

fn engine_err(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Engine(e.to_string())
}

impl Engine {
    /// Builds the engine and starts its epoch ticker thread (it stops when the last clone of
    /// this engine is dropped).
    pub fn new(limits: Limits) -> Result<Self, PolicyError> {
        let mut pool = PoolingAllocationConfig::default();
        // Without the pool every live instance reserves address space for a 4 GiB memory;
        // with it, slots sized to the call's limit are reserved once and reused.
        pool.total_component_instances(limits.instances)
            .total_core_instances(limits.instances * 8)
            .total_memories(limits.instances * 2)
            .total_tables(limits.instances * 8)
            .max_memories_per_component(2)
            .max_memory_size(limits.memory_bytes);
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            // fuel bounds the instructions of a call, deterministically
            .consume_fuel(true)
            // the epoch bounds its wall-clock time, host calls included
            .epoch_interruption(true)
            .memory_reservation(limits.memory_bytes as u64)
            .memory_guard_size(64 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&cfg).map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        host::link(&mut linker).map_err(engine_err)?;

        // A deadline never fires unless something advances the epoch.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            })
            .map_err(engine_err)?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            limits,
            cache: Arc::default(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs `f` with this engine on tokio's blocking pool: the way to call a policy from an
    /// async task (see the module's note on why not on an async worker).
    pub async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> R + Send + 'static,
    ) -> Result<R, PolicyError> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(engine_err)
    }

    /// Checks a component (a component, a supported set of hooks, imports on the
    /// allow-list), compiles it and smoke-runs each hook under the production limits. The
    /// same bytes are compiled once: later calls return the cached policy.
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<CompiledPolicy>, PolicyError> {
        let digest = hex::encode(Sha256::digest(bytes));
        if let Some(p) = self.lock_cache().get(&digest) {
            return Ok(p.clone());
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PolicyError::NotAComponent(format!("{e:#}")))?;
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if !import_allowed(name) {
                return Err(PolicyError::ForbiddenImport(name.to_owned()));
            }
        }
        let mut hooks = Hooks::default();
        for (name, item) in ty.exports(&self.engine) {
            if !matches!(item, ComponentItem::ComponentInstance(_)) {
                return Err(PolicyError::UnsupportedExports(format!(
                    "`{name}` is not an interface of ota:policy@1.0.0"
                )));
            }
            match name {
                SCOPE => hooks.scope = true,
                APPROVAL => hooks.approval = true,
                RATE => hooks.rate = true,
                other => {
                    return Err(PolicyError::UnsupportedExports(format!(
                        "`{other}` is not an interface of ota:policy@1.0.0"
                    )))
                }
            }
        }
        if hooks == Hooks::default() {
            return Err(PolicyError::UnsupportedExports(
                "it exports none of scope, approval, rate".into(),
            ));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PolicyError::ForbiddenImport(format!("{e:#}")))?;
        let func = |iface: &str, name: &str| -> Result<ComponentExportIndex, PolicyError> {
            let i = component
                .get_export_index(None, iface)
                .ok_or_else(|| PolicyError::UnsupportedExports(format!("no `{iface}`")))?;
            component.get_export_index(Some(&i), name).ok_or_else(|| {
                PolicyError::UnsupportedExports(format!("`{iface}` has no function `{name}`"))
            })
        };
        let policy = CompiledPolicy {
            digest: digest.clone(),
            hooks,
            scope: match hooks.scope {
                true => Some(ScopeIdx {
                    requirements: func(SCOPE, "requirements")?,
                    select: func(SCOPE, "select")?,
                }),
                false => None,
            },
            approval: match hooks.approval {
                true => Some(ApprovalIdx {
                    requirements: func(APPROVAL, "requirements")?,
                    approve: func(APPROVAL, "approve")?,
                }),
                false => None,
            },
            rate: match hooks.rate {
                true => Some(func(RATE, "tick")?),
                false => None,
            },
            pre,
        };
        self.smoke_run(&policy)?;
        let policy = Arc::new(policy);
        self.lock_cache().insert(digest, policy.clone());
        Ok(policy)
    }

    /// Drops a compiled policy from the cache (its bytes were deleted).
    pub fn forget(&self, digest: &str) {
        self.lock_cache().remove(digest);
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CompiledPolicy>>> {
        // a panic while holding the lock cannot leave the map half-written
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls each hook once on empty input (a wrong signature, a trap at start or a runaway
    /// start-up refuses the upload); an error the policy returns itself is fine, since it
    /// usually means the call had no config.
    fn smoke_run(&self, p: &CompiledPolicy) -> Result<(), PolicyError> {
        let ok = |r: Result<(), PolicyError>| match r {
            Ok(()) | Err(PolicyError::Returned { .. }) => Ok(()),
            Err(PolicyError::Engine(e)) => Err(PolicyError::UnsupportedExports(e)),
            Err(e) => Err(e),
        };
        if p.hooks.scope {
            ok(self.scope_requirements(p, &[]).map(drop))?;
            ok(self.scope_select(p, &[], &[]).map(drop))?;
        }
        if p.hooks.approval {
            ok(self.approval_requirements(p, &[]).map(drop))?;
            ok(self.approve(p, &[], 0, &[]).map(drop))?;
        }
        if p.hooks.rate {
            ok(self.rate_tick(p, &[], &RateStats::default(), &[]).map(drop))?;
        }
        Ok(())
    }

    /// Runs `f` on a fresh instance of `p` in a fresh store, and classifies a failure.
    fn call<R>(
        &self,
        p: &CompiledPolicy,
        config: &[u8],
        now_ms: u64,
        f: impl FnOnce(&mut Store<CallState>, &wasmtime::component::Instance) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        let label = p.digest.get(..12).unwrap_or(&p.digest).to_owned();
        let state = CallState::new(
            label,
            config.to_vec(),
            now_ms,
            self.limits.memory_bytes,
            LogLimits {
                lines: self.limits.log_lines,
                line_bytes: self.limits.log_line_bytes,
            },
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(self.limits.fuel).map_err(engine_err)?;
        let ticks = self.limits.deadline.as_millis() / EPOCH_TICK.as_millis();
        // +1: the next tick may come at once
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1));
        store.epoch_deadline_trap();
        let result = p
            .pre
            .instantiate(&mut store)
            .and_then(|instance| f(&mut store, &instance));
        store.data_mut().finish();
        result.map_err(|e| classify(e, store.data()))
    }

    fn check_batch(&self, n: usize) -> Result<(), PolicyError> {
        if n > self.limits.max_batch {
            return Err(PolicyError::TooMuchInput(format!(
                "{n} items; at most {} a call",
                self.limits.max_batch
            )));
        }
        Ok(())
    }

    /// `scope.requirements`: the device fields `select` reads.
    pub fn scope_requirements(
        &self,
        p: &CompiledPolicy,
        config: &[u8],
    ) -> Result<Requirements, PolicyError> {
        let idx = p.scope.as_ref().ok_or(PolicyError::NoSuchHook("scope"))?;
        let f = idx.requirements;
        let r = self.call(p, config, 0, |store, inst| {
            let func = inst.get_typed_func::<(), (wit_types::DeviceFields,)>(&mut *store, f)?;
            let (r,) = func.call(&mut *store, ())?;
            Ok(r)
        })?;
        Ok(requirements(r))
    }

    /// `scope.select` on at most `max_batch` devices: one answer per device.
    pub fn scope_select(
        &self,
        p: &CompiledPolicy,
        config: &[u8],
        devices: &[PolicyDevice],
    ) -> Result<Vec<bool>, PolicyError> {
        let idx = p.scope.as_ref().ok_or(PolicyError::NoSuchHook("scope"))?;
        self.check_batch(devices.len())?;
        let f = idx.select;
        let out = self.call(p, config, 0, |store, inst| {
            let func = inst
                .get_typed_func::<(&[PolicyDevice],), (Result<Vec<bool>, wit_types::PolicyError>,)>(
                    &mut *store,
                    f,
                )?;
            let (r,) = func.call(&mut *store, (devices,))?;
            Ok(r)
        })?;
        let out = out.map_err(returned)?;
        if out.len() != devices.len() {
            return Err(PolicyError::BadOutput {
                why: format!(
                    "select answered {} times for {} devices",
                    out.len(),
                    devices.len()
                ),
            });
        }
        Ok(out)
    }

    /// `approval.requirements`: the device fields `approve` reads.
    pub fn approval_requirements(
        &self,
        p: &CompiledPolicy,
        config: &[u8],
    ) -> Result<Requirements, PolicyError> {
        let idx = p
            .approval
            .as_ref()
            .ok_or(PolicyError::NoSuchHook("approval"))?;
        let f = idx.requirements;
        let r = self.call(p, config, 0, |store, inst| {
            let func = inst.get_typed_func::<(), (wit_types::DeviceFields,)>(&mut *store, f)?;
            let (r,) = func.call(&mut *store, ())?;
            Ok(r)
        })?;
        Ok(requirements(r))
    }

    /// `approval.approve` at logical time `now_ms`: one verdict per task.
    pub fn approve(
        &self,
        p: &CompiledPolicy,
        config: &[u8],
        now_ms: u64,
        tasks: &[PolicyTask],
    ) -> Result<Vec<Verdict>, PolicyError> {
        let idx = p
            .approval
            .as_ref()
            .ok_or(PolicyError::NoSuchHook("approval"))?;
        self.check_batch(tasks.len())?;
        let f = idx.approve;
        let out = self.call(p, config, now_ms, |store, inst| {
            let func = inst.get_typed_func::<
                (u64, &[PolicyTask]),
                (Result<Vec<wit_approval::Verdict>, wit_types::PolicyError>,),
            >(&mut *store, f)?;
            let (r,) = func.call(&mut *store, (now_ms, tasks))?;
            Ok(r)
        })?;
        let out = out.map_err(returned)?;
        if out.len() != tasks.len() {
            return Err(PolicyError::BadOutput {
                why: format!(
                    "approve answered {} times for {} tasks",
                    out.len(),
                    tasks.len()
                ),
            });
        }
        Ok(out
            .into_iter()
            .map(|v| match v {
                wit_approval::Verdict::Approve => Verdict::Approve,
                wit_approval::Verdict::Defer(s) => Verdict::Defer(s.max(1)),
                wit_approval::Verdict::Reject(r) => Verdict::Reject(reason(r)),
            })
            .collect())
    }

    /// `rate.tick` on the rollout's stats (logical time `stats.now_ms`) and the state the
    /// previous tick returned.
    pub fn rate_tick(
        &self,
        p: &CompiledPolicy,
        config: &[u8],
        stats: &RateStats,
        state: &[u8],
    ) -> Result<RateDecision, PolicyError> {
        let f = p.rate.ok_or(PolicyError::NoSuchHook("rate"))?;
        if state.len() > self.limits.max_state_bytes {
            return Err(PolicyError::TooMuchInput(format!(
                "a state of {} bytes; at most {}",
                state.len(),
                self.limits.max_state_bytes
            )));
        }
        let out = self.call(p, config, stats.now_ms, |store, inst| {
            let func = inst.get_typed_func::<
                (RateStats, &[u8]),
                (Result<wit_rate::Decision, wit_types::PolicyError>,),
            >(&mut *store, f)?;
            let (r,) = func.call(&mut *store, (*stats, state))?;
            Ok(r)
        })?;
        let d = out.map_err(returned)?;
        if d.state.len() > self.limits.max_state_bytes {
            return Err(PolicyError::BadOutput {
                why: format!(
                    "a rate state of {} bytes; at most {}",
                    d.state.len(),
                    self.limits.max_state_bytes
                ),
            });
        }
        Ok(RateDecision {
            action: match d.action {
                wit_rate::Action::Release(n) => RateAction::Release(n),
                wit_rate::Action::Pause(r) => RateAction::Pause(reason(r)),
                wit_rate::Action::Abort(r) => RateAction::Abort(reason(r)),
            },
            state: d.state,
        })
    }
}

/// Whether a component may import `name`: the host interfaces of `ota:policy@1.0.0`, and the
/// WASI 0.2 interfaces on the allow-list.
fn import_allowed(name: &str) -> bool {
    if name == HOST || name == TYPES {
        return true;
    }
    match name.split_once('@') {
        Some((iface, version)) => version.starts_with("0.2.") && WASI_ALLOWED.contains(&iface),
        None => false,
    }
}

fn requirements(r: wit_types::DeviceFields) -> Requirements {
    Requirements {
        attribute_keys: r.attribute_keys,
        tag_keys: r.tag_keys,
        module_names: r.module_names,
        groups: r.groups,
    }
}

fn returned(e: wit_types::PolicyError) -> PolicyError {
    PolicyError::Returned {
        code: reason(e.code),
        message: reason(e.message),
    }
}

/// A reason or message from a policy, cut to a length that fits an event record.
fn reason(mut s: String) -> String {
    const MAX: usize = 1_024;
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Maps a failed call to its cause: the limits first (fuel, deadline, memory), then a trap
/// with the panic message the SDK's hook logged, if any.
fn classify(e: wasmtime::Error, state: &CallState) -> PolicyError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return PolicyError::OutOfFuel,
        Some(Trap::Interrupt) => return PolicyError::Deadline,
        _ => {}
    }
    if state.limiter.hit {
        return PolicyError::MemoryLimit;
    }
    if let Some(panic) = &state.panic {
        return PolicyError::Trap {
            message: panic.clone(),
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(t) => PolicyError::Trap {
            message: t.to_string(),
        },
        // not a trap: the instance could not be made or the types did not match
        None => PolicyError::Engine(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_takes_plain_guest_imports_and_refuses_the_rest() {
        for ok in [
            "ota:policy/host@1.0.0",
            "wasi:cli/environment@0.2.6",
            "wasi:io/streams@0.2.0",
            "wasi:random/insecure-seed@0.2.3",
        ] {
            assert!(import_allowed(ok), "{ok}");
        }
        for refused in [
            "ota:policy/host@2.0.0",
            "wasi:filesystem/preopens@0.2.6",
            "wasi:sockets/tcp@0.2.6",
            "wasi:http/outgoing-handler@0.2.6",
            "wasi:cli/environment@0.3.0",
            "wasi:cli/environment",
            "my:own/thing@1.0.0",
        ] {
            assert!(!import_allowed(refused), "{refused}");
        }
    }

    #[test]
    fn garbage_is_not_a_component() {
        let e = Engine::new(Limits {
            instances: 4,
            ..Limits::default()
        })
        .map_err(|e| e.to_string());
        let Ok(e) = e else {
            panic!("engine: {e:?}");
        };
        assert!(matches!(
            e.compile(b"\0asm\x01\0\0\0"),
            Err(PolicyError::NotAComponent(_))
        ));
        assert!(matches!(
            e.compile(b"hello"),
            Err(PolicyError::NotAComponent(_))
        ));
    }
}
