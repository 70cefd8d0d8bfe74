//! Tenant rollout policies as WebAssembly components (SPEC W1–W3, DESIGN §7): the one
//! [`Engine`] that compiles, checks and runs them sandboxed, and the plain types a caller
//! passes in and gets back. Only this module uses wasmtime; the WIT it binds is
//! `sdk/wit/policy.wit` (`ota:policy@1.0.0`).
//!
//! Every call is synchronous CPU work bounded by fuel and a deadline (one second by
//! default). Run it on `tokio::task::spawn_blocking` (or a plain thread), never directly on
//! an async worker: besides blocking the worker, the WASI stand-in's stdio (wasmtime-wasi's
//! sync bindings) enters the current tokio runtime with `block_on`, which panics on a worker
//! thread if the policy writes to stdout.

mod engine;
mod host;

pub use engine::{CompiledPolicy, Engine, Hooks, Limits};

/// Why a policy was refused or a call failed. The call failures say what the scheduler
/// records: scope then takes no device, approval defers, rate releases nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("not a valid WebAssembly component: {0}")]
    NotAComponent(String),
    /// The component exports none of the hooks, or a hook with the wrong shape.
    #[error("the component exports no supported policy hook ({0})")]
    UnsupportedExports(String),
    /// The component imports something outside the allow-list.
    #[error("the component imports `{0}`, which policies may not use")]
    ForbiddenImport(String),
    /// The component does not export this hook.
    #[error("the policy has no {0} hook")]
    NoSuchHook(&'static str),
    /// The call used up its fuel (instruction budget).
    #[error("the policy ran out of fuel")]
    OutOfFuel,
    /// The call ran past its wall-clock deadline.
    #[error("the policy ran past its deadline")]
    Deadline,
    /// The policy asked for more memory than a call may use.
    #[error("the policy exceeded its memory limit")]
    MemoryLimit,
    /// The policy trapped; a panic's message when the SDK's hook logged one.
    #[error("the policy trapped: {message}")]
    Trap { message: String },
    /// The policy returned its own error.
    #[error("the policy returned an error: {code}: {message}")]
    Returned { code: String, message: String },
    /// The policy answered, but not in a shape the host accepts.
    #[error("the policy's output is not acceptable: {why}")]
    BadOutput { why: String },
    /// Too much input for one call (the host's caller must batch).
    #[error("too much input for one call: {0}")]
    TooMuchInput(String),
    /// The engine could not run the call (no free instance slot, or a host fault).
    #[error("the policy engine failed: {0}")]
    Engine(String),
}

impl PolicyError {
    /// A short stable word for the failure, for rollout events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAComponent(_) => "not_a_component",
            Self::UnsupportedExports(_) => "unsupported_exports",
            Self::ForbiddenImport(_) => "forbidden_import",
            Self::NoSuchHook(_) => "no_such_hook",
            Self::OutOfFuel => "out_of_fuel",
            Self::Deadline => "deadline",
            Self::MemoryLimit => "memory_limit",
            Self::Trap { .. } => "trap",
            Self::Returned { .. } => "returned_error",
            Self::BadOutput { .. } => "bad_output",
            Self::TooMuchInput(_) => "too_much_input",
            Self::Engine(_) => "engine",
        }
    }
}

/// A module of a device and the version it reported.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    wasmtime::component::ComponentType,
    wasmtime::component::Lower,
)]
#[component(record)]
pub struct PolicyModule {
    pub name: String,
    pub version: String,
}

/// A device as a policy sees it, projected by the caller to the policy's
/// [`Requirements`]: a field it did not ask for is `None` (which also costs nothing to pass
/// into the sandbox, where an empty list costs an allocation call); one it asked for is
/// `Some`, holding only the declared keys the device has.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    wasmtime::component::ComponentType,
    wasmtime::component::Lower,
)]
#[component(record)]
pub struct PolicyDevice {
    pub id: u64,
    pub name: String,
    pub product: String,
    pub online: bool,
    pub modules: Option<Vec<PolicyModule>>,
    pub attributes: Option<Vec<(String, String)>>,
    pub tags: Option<Vec<(String, String)>>,
    pub groups: Option<Vec<String>>,
}

/// The device fields a hook reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    pub attribute_keys: Vec<String>,
    pub tag_keys: Vec<String>,
    pub module_names: Vec<String>,
    pub groups: bool,
}

/// A task about to be released, for an approval policy.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    wasmtime::component::ComponentType,
    wasmtime::component::Lower,
)]
#[component(record)]
pub struct PolicyTask {
    pub id: u64,
    pub device: PolicyDevice,
    #[component(name = "rollout-id")]
    pub rollout_id: u64,
    #[component(name = "from-version")]
    pub from_version: String,
    #[component(name = "to-version")]
    pub to_version: String,
    pub attempt: u32,
}

/// An approval policy's answer for one task (the domain's type: it crosses no wire).
pub use crate::domain::Verdict;

impl From<crate::domain::DeviceRecord> for PolicyDevice {
    fn from(d: crate::domain::DeviceRecord) -> Self {
        let module = |(name, version)| PolicyModule { name, version };
        Self {
            id: u64::try_from(d.id.0).unwrap_or(0),
            name: d.name,
            product: d.product,
            online: d.online,
            modules: d.modules.map(|m| m.into_iter().map(module).collect()),
            attributes: d.attributes,
            tags: d.tags,
            groups: d.groups,
        }
    }
}

impl PolicyTask {
    /// The approval hook's view of a task of rollout `rollout` to `to_version`.
    pub fn of(t: crate::domain::ApprovalTask, rollout: i64, to_version: &str) -> Self {
        Self {
            id: u64::try_from(t.task.0).unwrap_or(0),
            device: t.device.into(),
            rollout_id: u64::try_from(rollout).unwrap_or(0),
            from_version: t.from_version,
            to_version: to_version.to_owned(),
            attempt: t.attempt,
        }
    }
}

impl From<Requirements> for crate::domain::DeviceFields {
    fn from(r: Requirements) -> Self {
        Self {
            attribute_keys: r.attribute_keys,
            tag_keys: r.tag_keys,
            module_names: r.module_names,
            groups: r.groups,
        }
    }
}

/// The rollout's figures at a tick; see `rollout-stats` in the WIT for each field.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    wasmtime::component::ComponentType,
    wasmtime::component::Lower,
)]
#[component(record)]
pub struct RateStats {
    pub waiting: u64,
    pub releasable: u64,
    pub pending: u64,
    pub pushed: u64,
    #[component(name = "in-progress")]
    pub in_progress: u64,
    pub succeeded: u64,
    pub failed: u64,
    #[component(name = "timed-out")]
    pub timed_out: u64,
    pub rejected: u64,
    pub cancelled: u64,
    #[component(name = "released-total")]
    pub released_total: u64,
    #[component(name = "now-ms")]
    pub now_ms: u64,
    #[component(name = "elapsed-ms")]
    pub elapsed_ms: u64,
    #[component(name = "window-ms")]
    pub window_ms: u64,
    #[component(name = "tick-ms")]
    pub tick_ms: u32,
}

/// What a rate policy decided at a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateAction {
    /// Release this many now (never more than the stats' `releasable`).
    Release(u64),
    Pause(String),
    Abort(String),
}

/// A rate tick's decision and the state to persist for the next tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateDecision {
    pub action: RateAction,
    pub state: Vec<u8>,
}
