//! Tenants' policies steering rollouts of the real binary (on a manual clock) over MQTT,
//! to simulated Link Kit devices: one rollout with a policy on every hook, and a hostile
//! policy that pauses its own rollout while another tenant's goes on updating devices.
//! Time moves only through `POST /v1/clock/advance`; every wait is on the rollout's own
//! counts, with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::api::*;
use e2e::sim::{Behaviour, SimStats};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A UTC offset, `+HH:00`, at which the local hour is `local` when the UTC hour is `utc`.
fn offset_for(local: i64, utc: i64) -> String {
    let mut o = local - utc;
    if o < -11 {
        o += 24;
    }
    if o > 12 {
        o -= 24;
    }
    format!("{}{:02}:00", if o < 0 { '-' } else { '+' }, o.abs())
}

// Each hook changes what a real rollout does, over MQTT: the scope policy takes half the
// fleet, the approval policy lets only devices in their local night be pushed, and the rate
// policy releases one a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_hook_steers_a_real_rollout_over_mqtt() {
    let (_srv, api, mqtt) = manual_server().await;
    let stats = Arc::new(SimStats::default());
    let names: Vec<String> = (0..24).map(|i| format!("p{i:02}")).collect();
    let (_, pkg) = product(&api, "a1Pol", &names, "2.0.0").await;
    let mut fleet = Vec::new();
    for name in &names {
        fleet.push(device(&mqtt, "a1Pol", name, "1.0.0", Behaviour::Succeed, &stats).await);
    }
    api.wait_online(24).await;
    // the server's clock decides whose night it is: read it, and give every other eu device
    // a zone where it is 03:00 now, the rest one where it is 15:00
    let now_ms = api.get("/v1/clock").await["now_ms"].as_i64().unwrap();
    let utc_hour = (now_ms / 3_600_000) % 24;
    let (night, day) = (offset_for(3, utc_hour), offset_for(15, utc_hour));
    api.set_attributes(&names, |i| {
        json!({"region": if i % 2 == 0 { "eu" } else { "us" },
               "tz": if i % 4 == 0 { &night } else { &day }})
    })
    .await;
    let scope = api.upload_policy("eu-only", "canary-scope").await;
    let approval = api.upload_policy("night", "maintenance-approval").await;
    let rate = api.upload_policy("breaker", "circuit-breaker").await;
    let r = api
        .post(
            &format!("/v1/packages/{pkg}/rollouts"),
            json!({"scope": {"kind": "all"}, "policies": {
                "scope": {"id": scope["id"],
                          "config": {"attribute": "region", "percent": {"eu": 100}, "default": 0}},
                "approval": {"id": approval["id"],
                             "config": {"attribute": "tz", "start_hour": 1, "end_hour": 5}},
                "rate": {"id": rate["id"],
                         "config": {"per_minute": 60, "max_failure_percent": 50, "min_finished": 100}}}}),
        )
        .await;
    let rollout = r["id"].as_i64().unwrap();
    // scope: the twelve eu devices
    assert_eq!(r["tasks_created"], 12, "{r}");
    // rate: one a second; approval: only the six in their night, the others deferred
    for second in 1..=6u64 {
        api.advance(1).await;
        let c = api
            .wait_counts(rollout, "the pushed device to update", |c| {
                n(c, "succeeded") == second && n(c, "pushed") + n(c, "in_progress") == 0
            })
            .await;
        assert_eq!(n(&c, "waiting"), 12 - second, "{c}");
    }
    for _ in 0..5 {
        api.advance(1).await;
    }
    let c = api.counts(rollout).await;
    assert_eq!(n(&c, "succeeded"), 6, "{c}");
    assert_eq!(n(&c, "waiting"), 6, "{c}");
    assert_eq!(stats.pushes.load(Ordering::Relaxed), 6);
    let done = api
        .get(&format!(
            "/v1/rollouts/{rollout}/tasks?state=succeeded&limit=100"
        ))
        .await;
    let mut updated: Vec<String> = done["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["device_name"].as_str().unwrap().to_owned())
        .collect();
    updated.sort();
    let want: Vec<String> = (0..24).step_by(4).map(|i| format!("p{i:02}")).collect();
    assert_eq!(updated, want);
    drop(fleet);
}

// A hostile policy is contained: a rate policy whose answer breaks the limits fails each
// tick, nothing is pushed on its behalf and its rollout pauses with the reason, while
// another tenant's rollout on the same server updates its devices second by second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_policy_pauses_its_rollout_while_another_tenant_pushes() {
    let (srv, api, mqtt) = manual_server().await;
    let other = api.with_key(srv.create_tenant("globex").await.unwrap());
    let (bad_stats, good_stats) = (Arc::new(SimStats::default()), Arc::new(SimStats::default()));
    let bad_names: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    let good_names: Vec<String> = (0..10).map(|i| format!("g{i}")).collect();
    let (_, bad_pkg) = product(&api, "a1Hostile", &bad_names, "2.0.0").await;
    let (_, good_pkg) = product(&other, "a1Good", &good_names, "2.0.0").await;
    let mut fleet = Vec::new();
    for name in &bad_names {
        fleet.push(
            device(
                &mqtt,
                "a1Hostile",
                name,
                "1.0.0",
                Behaviour::Succeed,
                &bad_stats,
            )
            .await,
        );
    }
    for name in &good_names {
        fleet.push(
            device(
                &mqtt,
                "a1Good",
                name,
                "1.0.0",
                Behaviour::Succeed,
                &good_stats,
            )
            .await,
        );
    }
    api.wait_online(10).await;
    other.wait_online(10).await;
    let huge = api.upload_policy("huge", "huge-output").await;
    let bad = api
        .post(
            &format!("/v1/packages/{bad_pkg}/rollouts"),
            json!({"scope": {"kind": "all"}, "policies": {"rate": {"id": huge["id"]}}}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let good = other
        .post(
            &format!("/v1/packages/{good_pkg}/rollouts"),
            json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 60}}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    for second in 1..=10u64 {
        api.advance(1).await;
        other
            .wait_counts(good, "the other tenant's device to update", |c| {
                n(c, "succeeded") == second
            })
            .await;
    }
    let r = api.get(&format!("/v1/rollouts/{bad}")).await;
    assert_eq!(r["state"], "paused", "{r}");
    assert_eq!(n(&r["counts"], "waiting"), 10, "{r}");
    assert_eq!(bad_stats.pushes.load(Ordering::Relaxed), 0);
    assert_eq!(good_stats.pushes.load(Ordering::Relaxed), 10);
    let events = api
        .get(&format!("/v1/rollouts/{bad}/events?limit=100"))
        .await;
    let pause = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "pause")
        .cloned()
        .unwrap_or_else(|| panic!("no pause: {events}"));
    let detail = pause["detail"].as_str().unwrap();
    assert!(
        detail.contains("rate policy huge v1: bad_output"),
        "{detail}"
    );
    // the next tick sees every task of the other tenant's rollout finished
    api.advance(1).await;
    assert_eq!(
        other.get(&format!("/v1/rollouts/{good}")).await["state"],
        "completed"
    );
    drop(fleet);
}
