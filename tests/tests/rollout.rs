//! The real binary on a manual clock (`serve --clock manual`) updating simulated Link Kit
//! devices over MQTT through its embedded broker: a static rollout to 300 devices, some
//! failing at given steps, some failing once and retried, some going silent and timing out,
//! some offline until later, under a concurrency limit; and a dynamic rollout that takes a
//! device activated later and one whose version comes to match. Time moves only through
//! `POST /v1/clock/advance`; every wait is on the rollout's own counts, with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::api::*;
use e2e::sim::{Behaviour, SimDevice, SimStats};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_rollout_updates_simulated_devices_and_a_dynamic_one_takes_late_ones() {
    let (srv, api, mqtt) = manual_server().await;
    assert!(srv
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("RUNNING ON A MANUAL CLOCK")));
    let stats = Arc::new(SimStats::default());

    // 300 devices: 240 succeed, 20 fail once (-2) and succeed on retry, 15 always fail
    // verification (-3), 15 go silent after progress (timeout), 10 are offline until later
    let names: Vec<String> = (0..300).map(|i| format!("m{i:03}")).collect();
    let (_, pkg) = product(&api, "a1Sim", &names, "2.0.0").await;
    let behaviour = |i: usize| match i {
        0..=239 => Behaviour::Succeed,
        240..=259 => Behaviour::FailOnce(-2),
        260..=274 => Behaviour::Fail(-3),
        275..=289 => Behaviour::Silent,
        _ => Behaviour::Succeed,
    };
    let mut fleet = Vec::new();
    for (i, name) in names.iter().enumerate().take(290) {
        fleet.push(device(&mqtt, "a1Sim", name, "1.0.0", behaviour(i), &stats).await);
    }
    // the broker has them all, and the server has their reports, before the rollout starts
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = api.get("/v1/devices?online=true&limit=500").await;
        if body["items"].as_array().map(Vec::len) == Some(290) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "devices did not come online: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rollout = api
        .post(
            &format!("/v1/packages/{pkg}/rollouts"),
            json!({"scope": {"kind": "all"}, "max_concurrency": 40,
                   "retry": {"interval_minutes": 10, "max_retries": 1}, "timeout_minutes": 30}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    // a minute at a time; after each, every pushed device has answered before time moves on
    let mut late: Vec<SimDevice> = Vec::new();
    for minute in 1..=90 {
        api.advance(60).await;
        let c = api
            .wait_counts(rollout, "pushed devices to answer", |c| n(c, "pushed") == 0)
            .await;
        assert!(
            n(&c, "pending") + n(&c, "pushed") <= 40,
            "concurrency exceeded at minute {minute}: {c}"
        );
        if minute == 5 {
            // the offline ten come online: their pending tasks are pushed on connect
            for (i, name) in names.iter().enumerate().skip(290) {
                late.push(device(&mqtt, "a1Sim", name, "1.0.0", behaviour(i), &stats).await);
            }
        }
        if api.get(&format!("/v1/rollouts/{rollout}")).await["state"] == "completed" {
            break;
        }
    }
    let r = api.get(&format!("/v1/rollouts/{rollout}")).await;
    assert_eq!(r["state"], "completed", "{r}");
    let c = &r["counts"];
    assert_eq!(n(c, "succeeded"), 240 + 20 + 10, "{c}");
    assert_eq!(n(c, "failed"), 15 + 15, "{c}");
    // the always-failing were retried once; the silent timed out and were not retried
    let failed = api
        .get(&format!(
            "/v1/rollouts/{rollout}/tasks?state=failed&limit=100"
        ))
        .await;
    let items = failed["items"].as_array().unwrap();
    let reason = |r: &str| {
        items
            .iter()
            .filter(|t| t["failure_reason"] == r)
            .map(|t| t["retries"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(reason("verify_failed"), vec![1; 15]);
    assert_eq!(reason("timeout"), vec![0; 15]);

    // dynamic: a device activated later and one whose version comes to match both join
    let dyn_names: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
    let (_, pkg2) = product(&api, "a1Dyn", &dyn_names, "3.0.0").await;
    let n0 = device(&mqtt, "a1Dyn", "n0", "1.0.0", Behaviour::Succeed, &stats).await;
    let n1 = device(&mqtt, "a1Dyn", "n1", "0.9.0", Behaviour::Succeed, &stats).await;
    let dynamic = loop {
        // the rollout is created once n0's report is recorded, so it starts with n0
        let r = api
            .http
            .post(format!("{}/v1/packages/{pkg2}/rollouts", api.base))
            .bearer_auth(&api.key)
            .json(&json!({"method": "dynamic", "scope": {"kind": "all"},
                          "source_versions": ["1.0.0"], "start_on_creation": false}))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        let id = v["id"].as_i64().unwrap();
        if v["tasks_created"] == 1 {
            break id;
        }
        api.post(&format!("/v1/rollouts/{id}/cancel"), json!({}))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    api.post(&format!("/v1/rollouts/{dynamic}/start"), json!({}))
        .await;
    api.advance(1).await;
    api.wait_counts(dynamic, "n0 updated", |c| n(c, "succeeded") == 1)
        .await;
    // n2 is activated now; n1 comes to run 1.0.0
    let _n2 = device(&mqtt, "a1Dyn", "n2", "1.0.0", Behaviour::Succeed, &stats).await;
    n1.report_version("1.0.0").await.unwrap();
    api.wait_counts(dynamic, "n1 and n2 to join", |c| {
        n(c, "waiting") + n(c, "pushed") + n(c, "succeeded") == 3
    })
    .await;
    api.advance(1).await;
    api.wait_counts(dynamic, "all three updated", |c| n(c, "succeeded") == 3)
        .await;
    assert_eq!(*n1.version.lock().unwrap(), "3.0.0");
    drop(n0);
}

// Part of G1, end to end (the whole line is proved in server/tests/safety.rs): a firmware that every device fails to flash trips a "failed >= 50 %
// after 15 finished" rule exactly when the fifteenth device reports, over MQTT, and not one
// more device is pushed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_firmware_trips_an_abort_rule_and_pushes_stop() {
    let (_srv, api, mqtt) = manual_server().await;
    let stats = Arc::new(SimStats::default());
    let names: Vec<String> = (0..60).map(|i| format!("b{i:02}")).collect();
    let (_, pkg) = product(&api, "a1Bad", &names, "2.0.0").await;
    let mut fleet = Vec::new();
    for name in &names {
        fleet.push(device(&mqtt, "a1Bad", name, "1.0.0", Behaviour::Fail(-4), &stats).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get("/v1/devices?online=true&limit=500").await["items"]
        .as_array()
        .map(Vec::len)
        != Some(60)
    {
        assert!(Instant::now() < deadline, "devices did not come online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rollout = api
        .post(
            &format!("/v1/packages/{pkg}/rollouts"),
            json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 10},
                   "abort_rules": [{"kind": "failed", "threshold_percent": 50,
                                    "min_finished": 15, "action": "pause"}]}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    // one tick (a second) at a time, each pushed device answering before time moves on
    let mut ticks = 0;
    loop {
        api.advance(1).await;
        ticks += 1;
        let c = api
            .wait_counts(rollout, "pushed devices to answer", |c| {
                n(c, "pushed") + n(c, "in_progress") == 0
            })
            .await;
        if n(&c, "failed") >= 15 {
            // the engine fires the rule right after it applied the batch of reports that
            // met it (and every tick fires due rules before it releases anything)
            let deadline = Instant::now() + Duration::from_secs(30);
            while api.get(&format!("/v1/rollouts/{rollout}")).await["state"] != "paused" {
                assert!(Instant::now() < deadline, "the rule did not fire: {c}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(n(&c, "failed"), 15, "{c}");
            break;
        }
        assert!(ticks < 200, "the rule never fired: {c}");
    }
    // a minute later (ten pushes' worth), nothing more has been pushed
    let pushes = stats.pushes.load(std::sync::atomic::Ordering::Relaxed);
    api.advance(60).await;
    let c = api.counts(rollout).await;
    assert_eq!(n(&c, "waiting"), 45, "{c}");
    assert_eq!(
        stats.pushes.load(std::sync::atomic::Ordering::Relaxed),
        pushes
    );
    let events = api
        .get(&format!("/v1/rollouts/{rollout}/events?limit=1000"))
        .await;
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "pause"
                && e["detail"]
                    .as_str()
                    .unwrap()
                    .contains("15 of 15 finished tasks failed (100.00%)")),
        "{events}"
    );
    drop(fleet);
}
