//! What a policy's instance sees of the server during one call: the `ota:policy/host` import
//! (config, a capped log), a memory limiter that remembers refusing, and a deterministic
//! WASI stand-in: no files, no network, no environment or arguments, clocks fixed at the
//! call's logical time, seeded randomness, stdout and stderr captured into the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::component::{HasData, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "rollout-policy",
});

pub(crate) use exports::ota::policy::{approval as wit_approval, rate as wit_rate};
use ota::policy::host::Level;
pub(crate) use ota::policy::types as wit_types;

/// Per-call limits on what the policy may write to the server's log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogLimits {
    pub lines: usize,
    pub line_bytes: usize,
}

/// Lines the whole process may log from policies per second; the rest are counted and
/// dropped, so a noisy policy cannot flood the log of everyone else.
const LINES_PER_SECOND: u64 = 200;
/// Bytes of stdout/stderr kept per call; a guest that writes more gets a write error.
const STDIO_BYTES: usize = 16 * 1024;

/// A process-wide token bucket of log lines: the second it was last refilled and the lines
/// taken in it, packed into one atomic.
static LOG_BUDGET: AtomicU64 = AtomicU64::new(0);

fn take_log_line(now_secs: u64) -> bool {
    let mut cur = LOG_BUDGET.load(Ordering::Relaxed);
    loop {
        let (sec, used) = (cur >> 20, cur & 0xf_ffff);
        let (sec_now, used_now) = if sec == now_secs & 0xfff_ffff_ffff {
            (sec, used)
        } else {
            (now_secs & 0xfff_ffff_ffff, 0)
        };
        if used_now >= LINES_PER_SECOND {
            return false;
        }
        let next = (sec_now << 20) | (used_now + 1);
        match LOG_BUDGET.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => cur = seen,
        }
    }
}

/// Refuses memory or table growth past the call's limit, and remembers that it did, so the
/// trap that follows is reported as the memory limit rather than a plain trap.
pub(crate) struct Limiter {
    pub memory_bytes: usize,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // tables hold function references; a Rust guest needs a few hundred
        if desired > 100_000 {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }
}

/// The store's data for one call.
pub(crate) struct CallState {
    pub label: String,
    pub config: Vec<u8>,
    pub limiter: Limiter,
    log_limits: LogLimits,
    logged: usize,
    dropped: usize,
    /// what the SDK's panic hook logged, the reason of the trap that follows
    pub panic: Option<String>,
    wasi: WasiCtx,
    table: ResourceTable,
    stdout: MemoryOutputPipe,
}

/// A wall clock stopped at the call's logical time.
struct LogicalWallClock(Duration);

impl wasmtime_wasi::HostWallClock for LogicalWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// A monotonic clock that never moves during a call.
struct StoppedClock(u64);

impl wasmtime_wasi::HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0
    }
}

impl CallState {
    pub fn new(
        label: String,
        config: Vec<u8>,
        now_ms: u64,
        memory_bytes: usize,
        log_limits: LogLimits,
    ) -> Self {
        let stdout = MemoryOutputPipe::new(STDIO_BYTES);
        // Seeded from the logical time, so a replayed call draws the same numbers.
        let seed: Vec<u8> = now_ms
            .to_le_bytes()
            .iter()
            .chain(b"ota-policy")
            .copied()
            .collect();
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stdout.clone())
            .secure_random(wasmtime_wasi::Deterministic::new(seed.clone()))
            .insecure_random(wasmtime_wasi::Deterministic::new(seed))
            .insecure_random_seed(u128::from(now_ms))
            .wall_clock(LogicalWallClock(Duration::from_millis(now_ms)))
            .monotonic_clock(StoppedClock(now_ms.saturating_mul(1_000_000)))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        Self {
            label,
            config,
            limiter: Limiter {
                memory_bytes,
                hit: false,
            },
            log_limits,
            logged: 0,
            dropped: 0,
            panic: None,
            wasi,
            table: ResourceTable::new(),
            stdout,
        }
    }

    fn emit(&mut self, level: Level, message: &str) {
        if let Some(panic) = message.strip_prefix("panic: ") {
            self.panic = Some(truncate(panic, self.log_limits.line_bytes).to_owned());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.logged >= self.log_limits.lines || !take_log_line(now) {
            self.dropped += 1;
            return;
        }
        self.logged += 1;
        let msg = truncate(message, self.log_limits.line_bytes);
        let policy = self.label.as_str();
        match level {
            Level::Debug => tracing::debug!(policy, "{msg}"),
            Level::Info => tracing::info!(policy, "{msg}"),
            Level::Warn => tracing::warn!(policy, "{msg}"),
            Level::Error => tracing::error!(policy, "{msg}"),
        }
    }

    /// Sends what the guest wrote to stdout/stderr to the log, and says how much was dropped.
    pub fn finish(&mut self) {
        let out = self.stdout.contents();
        if !out.is_empty() {
            let text = String::from_utf8_lossy(&out).into_owned();
            for line in text.lines().filter(|l| !l.is_empty()) {
                self.emit(Level::Info, line);
            }
        }
        if self.dropped > 0 {
            let (policy, dropped) = (self.label.as_str(), self.dropped);
            tracing::warn!(policy, dropped, "policy log lines dropped (over the cap)");
        }
    }
}

/// The longest prefix of `s` within `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl ota::policy::host::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        self.emit(level, &message);
    }

    fn config(&mut self) -> Vec<u8> {
        self.config.clone()
    }
}

impl ota::policy::types::Host for CallState {}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `HasData` for the bindgen'd host interfaces: they get the call's state itself.
pub(crate) struct HostData;

impl HasData for HostData {
    type Data<'a> = &'a mut CallState;
}

/// Adds the `ota:policy` host interfaces and the WASI stand-in to a linker.
pub(crate) fn link(linker: &mut wasmtime::component::Linker<CallState>) -> wasmtime::Result<()> {
    ota::policy::host::add_to_linker::<CallState, HostData>(linker, |s| s)?;
    ota::policy::types::add_to_linker::<CallState, HostData>(linker, |s| s)?;
    // The allow-list refuses components importing filesystem or sockets before they are
    // linked; the stand-in has no preopens and no network besides.
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    Ok(())
}
