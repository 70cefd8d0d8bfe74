//! Benchmark of the policy engine: a scope policy's cost per device over 1,000,000 devices
//! (records built, batches of 1,000, each in a fresh instance) and one rate tick including a
//! fresh instance, each beside the same policy code run natively. The components come from
//! `scripts/build-policies` (`POLICY_WASM_DIR`, default `target/policies`).

use anyhow::{anyhow, Context, Result};
use ota_policy_sdk::{Policy, ScopePolicy};
use ota_server::policy::{Engine, Limits, PolicyDevice, RateAction, RateStats};
use std::path::PathBuf;
use std::time::Instant;

const DEVICES: u64 = 1_000_000;
const BATCH: u64 = 1_000;
const TICKS: u64 = 20_000;
const CANARY: &str = r#"{"attribute": "region", "percent": {"eu": 5, "us": 10}, "default": 1}"#;
const RATE: &str = r#"{"base": 50, "factor": 2.0, "max": 10000, "threshold": 1000}"#;
const REGIONS: [&str; 4] = ["eu", "us", "cn", "jp"];

fn wasm(name: &str) -> Result<Vec<u8>> {
    let dir = std::env::var_os("POLICY_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/policies"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path)
        .with_context(|| format!("{}: run scripts/build-policies first", path.display()))
}

fn stats(tick: u64, released: u64) -> RateStats {
    RateStats {
        waiting: 1_000_000 - released,
        releasable: 1_000_000 - released,
        released_total: released,
        now_ms: 1_780_000_000_000 + tick * 1_000,
        elapsed_ms: tick * 1_000,
        window_ms: 1_000,
        tick_ms: 1_000,
        ..RateStats::default()
    }
}

fn main() -> Result<()> {
    let engine = Engine::new(Limits::default()).map_err(|e| anyhow!("{e}"))?;

    // scope: canary per region over a million devices, in the sandbox
    let t = Instant::now();
    let scope = engine
        .compile(&wasm("canary-scope")?)
        .map_err(|e| anyhow!("{e}"))?;
    println!(
        "compile + smoke-run canary-scope: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let mut taken = 0usize;
    for b in 0..DEVICES / BATCH {
        let devices: Vec<PolicyDevice> = (b * BATCH..(b + 1) * BATCH)
            .map(|i| PolicyDevice {
                id: i,
                name: format!("device-{i:08}"),
                product: "a1B2c3D4e5F".into(),
                online: true,
                attributes: Some(vec![("region".into(), REGIONS[(i % 4) as usize].into())]),
                ..PolicyDevice::default()
            })
            .collect();
        let out = engine
            .scope_select(&scope, CANARY.as_bytes(), &devices)
            .map_err(|e| anyhow!("{e}"))?;
        taken += out.iter().filter(|t| **t).count();
    }
    let wasm_ns = t.elapsed().as_nanos() as f64 / DEVICES as f64;

    // the same policy code, native
    let t = Instant::now();
    let mut native_taken = 0usize;
    for b in 0..DEVICES / BATCH {
        let devices: Vec<ota_policy_sdk::Device> = (b * BATCH..(b + 1) * BATCH)
            .map(|i| ota_policy_sdk::Device {
                id: i,
                name: format!("device-{i:08}"),
                product: "a1B2c3D4e5F".into(),
                online: true,
                attributes: vec![("region".into(), REGIONS[(i % 4) as usize].into())],
                ..ota_policy_sdk::Device::default()
            })
            .collect();
        let p = canary_scope::Canary::new(ota_policy_sdk::parse_config(CANARY.as_bytes())?)?;
        native_taken += p.select(&devices)?.iter().filter(|t| **t).count();
    }
    let native_ns = t.elapsed().as_nanos() as f64 / DEVICES as f64;
    if taken != native_taken {
        return Err(anyhow!("sandbox took {taken}, native {native_taken}"));
    }
    println!(
        "scope select, per device (records built, batches of {BATCH}): wasm {:.3} µs, native {:.3} µs ({taken} of {DEVICES} taken)",
        wasm_ns / 1e3,
        native_ns / 1e3
    );
    e2e::table_row(
        "scope policy per device, 1M devices (native)",
        "< 1 µs",
        &format!("{:.3} µs ({:.3} µs)", wasm_ns / 1e3, native_ns / 1e3),
    );

    // rate: one tick, each in a fresh instance, the state carried between ticks
    let rate = engine
        .compile(&wasm("variable-rate")?)
        .map_err(|e| anyhow!("{e}"))?;
    let (mut state, mut released) = (Vec::new(), 0u64);
    let t = Instant::now();
    for tick in 0..TICKS {
        let d = engine
            .rate_tick(&rate, RATE.as_bytes(), &stats(tick, released), &state)
            .map_err(|e| anyhow!("{e}"))?;
        if let RateAction::Release(n) = d.action {
            released += n;
        }
        state = d.state;
    }
    let wasm_us = t.elapsed().as_secs_f64() * 1e6 / TICKS as f64;
    let wasm_released = released;

    let (mut state, mut released) = (Vec::new(), 0u64);
    let t = Instant::now();
    for tick in 0..TICKS {
        let s = stats(tick, released);
        let native = ota_policy_sdk::RolloutStats {
            waiting: s.waiting,
            releasable: s.releasable,
            released_total: s.released_total,
            now_ms: s.now_ms,
            elapsed_ms: s.elapsed_ms,
            window_ms: s.window_ms,
            tick_ms: s.tick_ms,
            ..ota_policy_sdk::RolloutStats::default()
        };
        let p = variable_rate::VariableRate::new(ota_policy_sdk::parse_config(RATE.as_bytes())?)?;
        let (action, next) = ota_policy_sdk::run_tick(&p, &native, &state)?;
        if let ota_policy_sdk::Action::Release(n) = action {
            released += n;
        }
        state = next;
    }
    let native_us = t.elapsed().as_secs_f64() * 1e6 / TICKS as f64;
    if released != wasm_released {
        return Err(anyhow!(
            "sandbox released {wasm_released}, native {released}"
        ));
    }
    println!(
        "rate tick incl. fresh instance: wasm {wasm_us:.2} µs, native {native_us:.3} µs ({TICKS} ticks, {released} released)"
    );
    e2e::table_row(
        "rate policy tick incl. fresh instance (native)",
        "< 30 µs",
        &format!("{wasm_us:.2} µs ({native_us:.3} µs)"),
    );
    Ok(())
}
