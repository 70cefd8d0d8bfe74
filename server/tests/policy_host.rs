//! The policy engine against real components built with the SDK (`scripts/build-policies`):
//! each policy in `policies/` decides as it should through the sandbox, the variable-rate
//! component releases exactly what the built-in rate releases at every tick, and every
//! hostile component is refused on compile or contained when called, with the engine going
//! on serving a good policy right after. The rollout integration is not covered here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ota_server::domain::rate::RateState;
use ota_server::domain::{PushRate, RateCountOn};
use ota_server::policy::{
    CompiledPolicy, Engine, Limits, PolicyDevice, PolicyError, PolicyTask, RateAction, RateStats,
    Verdict,
};

/// Where the built components are: `POLICY_WASM_DIR`, else `target/policies`.
fn wasm_dir() -> PathBuf {
    std::env::var_os("POLICY_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/policies"))
}

fn wasm(name: &str) -> Vec<u8> {
    let path = wasm_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. Build the policy components first: scripts/build-policies",
            path.display()
        )
    })
}

fn engine() -> Engine {
    Engine::new(Limits {
        instances: 16,
        ..Limits::default()
    })
    .unwrap()
}

fn compile(e: &Engine, name: &str) -> Arc<CompiledPolicy> {
    e.compile(&wasm(name))
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

fn device(id: u64, region: &str) -> PolicyDevice {
    PolicyDevice {
        id,
        name: format!("dev-{id}"),
        product: "p".into(),
        online: true,
        attributes: Some(vec![("region".into(), region.into())]),
        ..PolicyDevice::default()
    }
}

const CANARY: &[u8] = br#"{"attribute": "region", "percent": {"eu": 5, "us": 10}, "default": 0}"#;

/// A good policy still answers: the engine was not harmed by what came before.
fn still_serves(e: &Engine) {
    let p = compile(e, "canary-scope");
    let devices: Vec<PolicyDevice> = (0..1_000).map(|i| device(i, "us")).collect();
    let out = e.scope_select(&p, CANARY, &devices).unwrap();
    let taken = out.iter().filter(|t| **t).count();
    assert!((60..=140).contains(&taken), "{taken} of 1,000 at 10 %");
}

// The canary scope takes a stable share per region, asks only for its attribute, and says
// which hooks it provides; compiling the same bytes twice hits the cache.
#[test]
fn canary_scope_selects_a_stable_share_per_region() {
    let e = engine();
    let p = compile(&e, "canary-scope");
    assert!(p.hooks().scope && !p.hooks().approval && !p.hooks().rate);
    assert!(Arc::ptr_eq(&p, &compile(&e, "canary-scope")));
    let req = e.scope_requirements(&p, CANARY).unwrap();
    assert_eq!(req.attribute_keys, vec!["region".to_owned()]);
    assert!(req.tag_keys.is_empty() && !req.groups);
    for (region, lo, hi) in [("eu", 25, 75), ("us", 70, 130), ("cn", 0, 0)] {
        let devices: Vec<PolicyDevice> = (0..1_000).map(|i| device(i, region)).collect();
        let a = e.scope_select(&p, CANARY, &devices).unwrap();
        let b = e.scope_select(&p, CANARY, &devices).unwrap();
        assert_eq!(a, b, "stable across calls");
        let n = a.iter().filter(|t| **t).count();
        assert!((lo..=hi).contains(&n), "{region}: {n}");
    }
    // a bad config is the policy's own error, not a trap
    let err = e.scope_select(&p, br#"{"percent": 5}"#, &[device(1, "eu")]);
    assert!(
        matches!(err, Err(PolicyError::Returned { ref code, .. }) if code == "bad_config"),
        "{err:?}"
    );
    // more than a batch is refused before the call
    let many: Vec<PolicyDevice> = (0..1_001).map(|i| device(i, "eu")).collect();
    assert!(matches!(
        e.scope_select(&p, CANARY, &many),
        Err(PolicyError::TooMuchInput(_))
    ));
    assert!(matches!(
        e.approve(&p, CANARY, 0, &[]),
        Err(PolicyError::NoSuchHook("approval"))
    ));
}

// The maintenance window approves inside local night hours and defers to the window's
// start outside them, reading the zone from a device attribute, at the logical time given.
#[test]
fn maintenance_approval_defers_outside_local_night() {
    let e = engine();
    let p = compile(&e, "maintenance-approval");
    let config = br#"{"attribute": "tz", "start_hour": 1, "end_hour": 5}"#;
    assert_eq!(
        e.approval_requirements(&p, config).unwrap().attribute_keys,
        vec!["tz".to_owned()]
    );
    let task = |id: u64, tz: &str| PolicyTask {
        id,
        device: PolicyDevice {
            id,
            name: format!("d{id}"),
            attributes: Some(vec![("tz".into(), tz.into())]),
            ..PolicyDevice::default()
        },
        rollout_id: 7,
        from_version: "1.0".into(),
        to_version: "2.0".into(),
        attempt: 0,
    };
    // 2026-07-01 00:30 UTC
    let now = 1_782_865_800_000;
    let v = e
        .approve(
            &p,
            config,
            now,
            &[task(1, "+08:00"), task(2, "Europe/Berlin"), task(3, "UTC")],
        )
        .unwrap();
    assert_eq!(
        v,
        vec![
            Verdict::Defer(16 * 3_600 + 1_800),
            Verdict::Approve,
            Verdict::Defer(1_800)
        ]
    );
}

// The circuit breaker releases at its constant rate and pauses with the figures once the
// failure share passes its threshold after the minimum of finished tasks.
#[test]
fn circuit_breaker_pauses_on_failures() {
    let e = engine();
    let p = compile(&e, "circuit-breaker");
    let config = br#"{"per_minute": 120, "max_failure_percent": 10, "min_finished": 50}"#;
    let stats = RateStats {
        waiting: 1_000,
        releasable: 1_000,
        window_ms: 60_000,
        tick_ms: 60_000,
        ..RateStats::default()
    };
    let d = e.rate_tick(&p, config, &stats, &[]).unwrap();
    assert_eq!(d.action, RateAction::Release(120));
    let later = RateStats {
        released_total: 120,
        succeeded: 80,
        failed: 20,
        ..stats
    };
    let d = e.rate_tick(&p, config, &later, &d.state).unwrap();
    let RateAction::Pause(why) = d.action else {
        panic!("{:?}", d.action)
    };
    assert!(why.contains("20 of 100") && why.contains("20.0%"), "{why}");
}

/// Runs the built-in rate and the variable-rate component side by side, one-second ticks,
/// over `devices` waiting tasks; `short(tick)` says how many of the released the host could
/// not take that tick (tasks gone). Asserts equal releases at every tick; returns the total.
fn side_by_side(
    rate: PushRate,
    config: &[u8],
    devices: u64,
    ticks: u64,
    succeeded: impl Fn(u64) -> u64,
    short: impl Fn(u64, u64) -> u64,
) -> Vec<u64> {
    let e = engine();
    let p = compile(&e, "variable-rate");
    let mut builtin = RateState::initial(&rate);
    let mut state = Vec::new();
    let (mut waiting, mut released_total) = (devices, 0u64);
    let mut cumulative = Vec::new();
    for tick in 0..ticks {
        let succ = succeeded(released_total);
        let want = builtin.release(&rate, 1_000, waiting, succ, 1_000);
        let stats = RateStats {
            waiting,
            releasable: waiting,
            pushed: released_total,
            succeeded: succ,
            released_total,
            now_ms: 1_780_000_000_000 + tick * 1_000,
            elapsed_ms: tick * 1_000,
            window_ms: 1_000,
            tick_ms: 1_000,
            ..RateStats::default()
        };
        let d = e.rate_tick(&p, config, &stats, &state).unwrap();
        assert_eq!(d.action, RateAction::Release(want), "at tick {}", tick + 1);
        state = d.state;
        let gone = short(tick, want).min(want);
        if gone > 0 {
            builtin.refund(gone);
        }
        released_total += want - gone;
        waiting -= want - gone;
        cumulative.push(released_total);
    }
    cumulative
}

// The seed's worked example (base 50, factor 2, max 10,000, threshold 1,000 counted on
// pushes, 20,000 devices): the component releases exactly what the built-in rate releases at
// every one-second tick, and so reaches 1,000 at minute 20, 2,000 at 30, 3,000 at 35, 4,000
// at 37.5 and then 10,000 a minute.
#[test]
fn variable_rate_component_matches_the_built_in_rate_tick_by_tick() {
    let rate = PushRate::Variable {
        base: 50,
        factor_centi: 200,
        max: 10_000,
        threshold: 1_000,
        count_on: RateCountOn::Pushed,
    };
    let config =
        br#"{"base": 50, "factor": 2.0, "max": 10000, "threshold": 1000, "count_on": "pushed"}"#;
    let t = side_by_side(rate, config, 20_000, 2_460, |_| 0, |_, _| 0);
    let at = |sec: usize| t[sec - 1];
    assert_eq!(
        [
            at(60),
            at(1_199),
            at(1_200),
            at(1_799),
            at(1_800),
            at(2_100),
            at(2_249),
            at(2_250),
            at(2_325)
        ],
        [50, 999, 1_000, 1_998, 2_000, 3_000, 3_993, 4_000, 5_000]
    );
    assert_eq!(at(2_460) - at(2_400), 10_000);
}

// Counted on successes, and with ticks where the host could release fewer tasks than the
// rate allowed (the allowance and the count come back): still equal at every tick.
#[test]
fn variable_rate_component_matches_on_successes_and_refunds() {
    let rate = PushRate::Variable {
        base: 60,
        factor_centi: 150,
        max: 2_000,
        threshold: 100,
        count_on: RateCountOn::Succeeded,
    };
    let config =
        br#"{"base": 60, "factor": 1.5, "max": 2000, "threshold": 100, "count_on": "succeeded"}"#;
    side_by_side(
        rate,
        config,
        5_000,
        900,
        |released| released * 2 / 3,
        |tick, n| if tick % 7 == 3 { n / 2 } else { 0 },
    );
    let pushed = PushRate::Variable {
        base: 7,
        factor_centi: 300,
        max: 5_000,
        threshold: 20,
        count_on: RateCountOn::Pushed,
    };
    let config = br#"{"base": 7, "factor": 3, "max": 5000, "threshold": 20}"#;
    side_by_side(
        pushed,
        config,
        3_000,
        600,
        |_| 0,
        |tick, n| if tick % 5 == 0 { n } else { 0 },
    );
}

// An endless loop is stopped by fuel (or, with fuel to spare, by the deadline).
#[test]
fn an_endless_loop_runs_out_of_fuel_or_time() {
    let e = Engine::new(Limits {
        instances: 8,
        fuel: 50_000_000,
        deadline: Duration::from_secs(30),
        ..Limits::default()
    })
    .unwrap();
    let p = compile(&e, "endless-loop");
    assert_eq!(
        e.scope_select(&p, &[], &[device(1, "eu")]),
        Err(PolicyError::OutOfFuel)
    );
    still_serves(&e);

    let e = Engine::new(Limits {
        instances: 8,
        fuel: u64::MAX / 4,
        deadline: Duration::from_millis(100),
        ..Limits::default()
    })
    .unwrap();
    let p = compile(&e, "endless-loop");
    let started = Instant::now();
    assert_eq!(
        e.scope_select(&p, &[], &[device(1, "eu")]),
        Err(PolicyError::Deadline)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    still_serves(&e);
}

// A memory bomb hits the per-call memory limit; a panic is a trap carrying its message.
#[test]
fn a_memory_bomb_and_a_panic_are_contained() {
    let e = engine();
    let bomb = compile(&e, "memory-bomb");
    assert_eq!(
        e.scope_select(&bomb, &[], &[device(1, "eu")]),
        Err(PolicyError::MemoryLimit)
    );
    still_serves(&e);
    let panics = compile(&e, "panic");
    match e.scope_select(&panics, &[], &[device(1, "eu")]) {
        Err(PolicyError::Trap { message }) => {
            assert!(
                message.contains("policy bug: cannot read device dev-1"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // a trapped call leaves nothing behind: the next call on the same policy runs afresh
    assert_eq!(e.scope_select(&panics, &[], &[]), Ok(vec![]));
    still_serves(&e);
}

// Wrong exports, a forbidden import and bytes that are no component are refused on compile.
#[test]
fn components_outside_the_interface_are_refused() {
    let e = engine();
    match e.compile(&wasm("wrong-exports")) {
        Err(PolicyError::UnsupportedExports(why)) => assert!(why.contains("wasi:cli/run"), "{why}"),
        other => panic!("{other:?}"),
    }
    match e.compile(&wasm("forbidden-import")) {
        Err(PolicyError::ForbiddenImport(name)) => {
            assert!(
                name.starts_with("wasi:sockets/") || name.starts_with("wasi:filesystem/"),
                "{name}"
            )
        }
        other => panic!("{other:?}"),
    }
    // an empty component is a component, but provides no hook; a core module is none
    assert!(matches!(
        e.compile(b"\0asm\x0d\0\x01\0"),
        Err(PolicyError::UnsupportedExports(_))
    ));
    assert!(matches!(
        e.compile(b"\0asm\x01\0\0\0"),
        Err(PolicyError::NotAComponent(_))
    ));
    still_serves(&e);
}

// Output larger than allowed: more answers than devices, a flood of log lines (capped by
// the host), a rate state over 64 KiB. Each is a bad output, and the engine goes on.
#[test]
fn huge_output_is_refused() {
    let e = engine();
    let p = compile(&e, "huge-output");
    match e.scope_select(&p, &[], &[device(1, "eu"), device(2, "us")]) {
        Err(PolicyError::BadOutput { why }) => assert!(why.contains("5 times for 2"), "{why}"),
        other => panic!("{other:?}"),
    }
    let stats = RateStats {
        waiting: 10,
        releasable: 10,
        ..RateStats::default()
    };
    match e.rate_tick(&p, &[], &stats, &[]) {
        Err(PolicyError::BadOutput { why }) => assert!(why.contains("65536"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        e.rate_tick(&p, &[], &stats, &vec![0u8; 65_537]),
        Err(PolicyError::TooMuchInput(_))
    ));
    still_serves(&e);
}

// From async code the engine runs a call on tokio's blocking pool; many at once share the
// pooled instance slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_from_async_code_on_the_blocking_pool() {
    let e = engine();
    let p = compile(&e, "canary-scope");
    let calls = (0..32).map(|i| {
        let p = p.clone();
        e.blocking(move |e| {
            let devices: Vec<PolicyDevice> = (0..100).map(|d| device(i * 100 + d, "eu")).collect();
            e.scope_select(&p, CANARY, &devices)
        })
    });
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.unwrap().unwrap().len(), 100);
    }
}
