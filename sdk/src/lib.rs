//! The vendor's side of the OTA server's rollout policies: plain Rust traits for the three
//! hooks of the WIT package `ota:policy@1.0.0` (`sdk/wit/policy.wit`), one macro that turns a
//! type implementing them into a WebAssembly component, and a fake host to test it natively.
//!
//! A policy is a type built from its attachment's JSON config ([`Policy::new`]) once per
//! call; it implements one or more of [`ScopePolicy`], [`ApprovalPolicy`] and [`RatePolicy`].
//! Which hooks the component exports is chosen with this crate's cargo features `scope`,
//! `approval` and `rate`; enable exactly the ones your type implements.
//!
//! # Example
//!
//! `Cargo.toml` of the vendor's crate:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! ota-policy-sdk = { path = "../ota/sdk", features = ["scope"] }
//! serde = { version = "1", features = ["derive"] }
//!
//! [dev-dependencies]
//! ota-policy-sdk = { path = "../ota/sdk", features = ["scope", "testing"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use ota_policy_sdk::{export_policy, Device, Policy, PolicyError, Requirements, ScopePolicy};
//! use serde::Deserialize;
//!
//! /// Takes the devices whose `region` attribute is one of the configured regions.
//! pub struct Regions {
//!     regions: Vec<String>,
//! }
//!
//! #[derive(Deserialize)]
//! pub struct Config {
//!     regions: Vec<String>,
//! }
//!
//! impl Policy for Regions {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, PolicyError> {
//!         if config.regions.is_empty() {
//!             return Err(PolicyError::new("bad_config", "name at least one region"));
//!         }
//!         Ok(Self { regions: config.regions })
//!     }
//! }
//!
//! impl ScopePolicy for Regions {
//!     fn requirements(&self) -> Requirements {
//!         Requirements::attributes(["region"])
//!     }
//!     fn select(&self, devices: &[Device]) -> Result<Vec<bool>, PolicyError> {
//!         Ok(devices
//!             .iter()
//!             .map(|d| d.attribute("region").is_some_and(|r| self.regions.iter().any(|x| x == r)))
//!             .collect())
//!     }
//! }
//!
//! export_policy!(Regions);
//!
//! // A native unit test with the fake host (feature `testing`):
//! # #[cfg(feature = "testing")]
//! # {
//! use ota_policy_sdk::testing::{device, Harness};
//! let mut h = Harness::with_config(r#"{"regions": ["eu"]}"#);
//! let picked = h.select::<Regions>(&[
//!     device(1, "a").with_attribute("region", "eu"),
//!     device(2, "b").with_attribute("region", "us"),
//! ]);
//! assert_eq!(picked, Ok(vec![true, false]));
//! # }
//! ```
//!
//! Build the component with `cargo build --release --target wasm32-wasip2`; the file is
//! `target/wasm32-wasip2/release/<crate>.wasm`.
//!
//! # Rules the host enforces
//! - Every call runs in a fresh instance with a fuel budget, a deadline and a memory limit:
//!   keep no state between calls except a rate policy's [`RatePolicy::State`].
//! - No files, network, environment or real clock: time comes in as arguments
//!   (`now_ms`), randomness is seeded and fixed. A panic becomes a failed call whose message
//!   the host keeps (the panic hook logs it through [`log`]).
//! - `select` and `approve` must return exactly one answer per input, in order; a rate state
//!   is at most [`MAX_STATE_BYTES`] once encoded.

use serde::de::DeserializeOwned;
use serde::Serialize;

#[cfg(all(target_arch = "wasm32", feature = "bump-allocator"))]
pub mod bump;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;
mod host;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use host::{config, log};

/// The largest encoded rate state the host accepts.
pub const MAX_STATE_BYTES: usize = 64 * 1024;

/// Log levels of `host.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// A failure the policy reports: a short snake_case `code` and a message saying what is
/// wrong. The hook then fails as a whole (scope takes nothing, approval defers, rate releases
/// nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub code: String,
    pub message: String,
}

impl PolicyError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for PolicyError {}

/// A module of a device and the version it reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleVersion {
    pub name: String,
    pub version: String,
}

/// A device, projected to what the policy's [`Requirements`] asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    pub id: u64,
    pub name: String,
    pub product: String,
    pub online: bool,
    pub modules: Vec<ModuleVersion>,
    pub attributes: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    pub groups: Vec<String>,
}

fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Device {
    /// The value of an attribute, if the device has it (and the policy asked for it).
    pub fn attribute(&self, key: &str) -> Option<&str> {
        lookup(&self.attributes, key)
    }
    /// The value of a tag.
    pub fn tag(&self, key: &str) -> Option<&str> {
        lookup(&self.tags, key)
    }
    /// The version a module reported.
    pub fn module(&self, name: &str) -> Option<&str> {
        self.modules
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.version.as_str())
    }
    /// Builder for tests: adds an attribute.
    pub fn with_attribute(mut self, key: &str, value: &str) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }
}

/// The device fields a hook reads; the host fills only these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    pub attribute_keys: Vec<String>,
    pub tag_keys: Vec<String>,
    pub module_names: Vec<String>,
    pub groups: bool,
}

impl Requirements {
    /// Only these attributes.
    pub fn attributes<const N: usize>(keys: [&str; N]) -> Self {
        Self {
            attribute_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Self::default()
        }
    }
}

/// A task about to be released, for an approval policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Task {
    pub id: u64,
    pub device: Device,
    pub rollout_id: u64,
    pub from_version: String,
    pub to_version: String,
    pub attempt: u32,
}

/// An approval policy's answer for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    /// Ask again no sooner than this many seconds later.
    Defer(u32),
    /// Never release it; the task ends `rejected` with this reason.
    Reject(String),
}

/// The rollout's figures at a scheduler tick (see `rollout-stats` in the WIT for each one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutStats {
    pub waiting: u64,
    pub releasable: u64,
    pub pending: u64,
    pub pushed: u64,
    pub in_progress: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub rejected: u64,
    pub cancelled: u64,
    pub released_total: u64,
    pub now_ms: u64,
    pub elapsed_ms: u64,
    pub window_ms: u64,
    pub tick_ms: u32,
}

impl RolloutStats {
    /// Tasks that ended for good: succeeded, failed (time-outs included) or rejected.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.rejected
    }
}

/// What a rate policy decides at a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Release this many tasks now (the host releases at most `releasable`).
    Release(u64),
    /// Pause the rollout with this reason.
    Pause(String),
    /// Cancel the rollout for good with this reason.
    Abort(String),
}

/// A policy built from its attachment's config, once per call.
pub trait Policy: Sized {
    /// The config's JSON shape. An attachment without config reads as `{}`; a policy that
    /// takes none can use [`serde::de::IgnoredAny`].
    type Config: DeserializeOwned;
    fn new(config: Self::Config) -> Result<Self, PolicyError>;
}

/// Which candidate devices join a rollout.
pub trait ScopePolicy: Policy {
    /// The device fields `select` reads; by default none beyond id, name, product, online.
    fn requirements(&self) -> Requirements {
        Requirements::default()
    }
    /// One boolean per device, in order (at most 1,000 devices a call).
    fn select(&self, devices: &[Device]) -> Result<Vec<bool>, PolicyError>;
}

/// Whether each task may be released now.
pub trait ApprovalPolicy: Policy {
    fn requirements(&self) -> Requirements {
        Requirements::default()
    }
    /// One verdict per task, in order. `now_ms`: logical time, ms since the Unix epoch.
    fn approve(&self, now_ms: u64, tasks: &[Task]) -> Result<Vec<Verdict>, PolicyError>;
}

/// How many tasks a rollout releases at each scheduler tick.
pub trait RatePolicy: Policy {
    /// Carried from tick to tick by the host (JSON-encoded, at most [`MAX_STATE_BYTES`]);
    /// the first tick starts from `Default`.
    type State: Serialize + DeserializeOwned + Default;
    fn tick(&self, stats: &RolloutStats, state: &mut Self::State) -> Result<Action, PolicyError>;
}

/// Parses a config blob: empty reads as `{}`.
pub fn parse_config<C: DeserializeOwned>(bytes: &[u8]) -> Result<C, PolicyError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| PolicyError::new("bad_config", e.to_string()))
}

/// Builds the policy from the host's config.
pub fn from_host_config<P: Policy>() -> Result<P, PolicyError> {
    P::new(parse_config(&config())?)
}

/// Decodes a rate state: empty is the first tick's `Default`.
pub fn decode_state<S: DeserializeOwned + Default>(bytes: &[u8]) -> Result<S, PolicyError> {
    if bytes.is_empty() {
        return Ok(S::default());
    }
    serde_json::from_slice(bytes).map_err(|e| PolicyError::new("bad_state", e.to_string()))
}

/// Encodes a rate state, refusing one larger than the host keeps.
pub fn encode_state<S: Serialize>(state: &S) -> Result<Vec<u8>, PolicyError> {
    let bytes =
        serde_json::to_vec(state).map_err(|e| PolicyError::new("bad_state", e.to_string()))?;
    if bytes.len() > MAX_STATE_BYTES {
        return Err(PolicyError::new(
            "state_too_large",
            format!(
                "the rate state is {} bytes; at most {MAX_STATE_BYTES}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// One rate tick as the host runs it: decode the state, tick, encode the new state.
pub fn run_tick<P: RatePolicy>(
    policy: &P,
    stats: &RolloutStats,
    state: &[u8],
) -> Result<(Action, Vec<u8>), PolicyError> {
    let mut s: P::State = decode_state(state)?;
    let action = policy.tick(stats, &mut s)?;
    Ok((action, encode_state(&s)?))
}

/// Checks that a batched hook answered once per input.
pub fn check_len<T>(out: Vec<T>, inputs: usize, hook: &str) -> Result<Vec<T>, PolicyError> {
    if out.len() == inputs {
        Ok(out)
    } else {
        Err(PolicyError::new(
            "bad_output",
            format!("{hook} answered {} times for {inputs} inputs", out.len()),
        ))
    }
}

/// A serde helper: a config value that must be a whole number in a range.
pub fn in_range(field: &str, value: u64, lo: u64, hi: u64) -> Result<u64, PolicyError> {
    if value < lo || value > hi {
        return Err(PolicyError::new(
            "bad_config",
            format!("{field} must be {lo} to {hi}, got {value}"),
        ));
    }
    Ok(value)
}

/// Exports a policy type as the component's hooks (those enabled by the crate features
/// `scope`, `approval`, `rate`). Use it once, at the crate root of a `cdylib`. On targets
/// other than `wasm32` it expands to nothing, so the same crate runs its unit tests natively.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __OtaPolicyExport = $crate::guest::Adapter<$policy>;
            $crate::guest::bindings::__ota_policy_export_world!(__OtaPolicyExport with_types_in $crate::guest::bindings);
        };
    };
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    struct Big {
        blob: Vec<u8>,
    }

    #[test]
    fn empty_config_reads_as_an_empty_object() {
        #[derive(serde::Deserialize)]
        struct C {
            #[serde(default)]
            n: u32,
        }
        let c: C = parse_config(b"  ").unwrap();
        assert_eq!(c.n, 0);
        let e = parse_config::<C>(b"{\"n\": -1}").err().unwrap();
        assert_eq!(e.code, "bad_config");
    }

    #[test]
    fn states_round_trip_and_are_capped() {
        let s = Big { blob: vec![1; 10] };
        let bytes = encode_state(&s).unwrap();
        assert_eq!(decode_state::<Big>(&bytes).unwrap(), s);
        assert_eq!(decode_state::<Big>(&[]).unwrap(), Big::default());
        let huge = Big {
            blob: vec![200; MAX_STATE_BYTES],
        };
        assert_eq!(encode_state(&huge).unwrap_err().code, "state_too_large");
    }

    #[test]
    fn the_fake_host_keeps_logs_and_config() {
        let mut h = testing::Harness::with_config("{\"a\": 1}");
        let cfg = h.run(|| {
            log(Level::Warn, "careful");
            config()
        });
        assert_eq!(cfg, b"{\"a\": 1}");
        assert_eq!(h.logs(), &[(Level::Warn, "careful".to_owned())]);
        // outside the harness the thread's host is empty again
        assert!(config().is_empty());
        assert_eq!(
            check_len(vec![true], 2, "select").unwrap_err().code,
            "bad_output"
        );
    }
}
