//! Safer rollouts in simulated time, through the HTTP API, on SQLite and PostgreSQL: abort
//! rules (G1), waves with success and manual gates (G3), maintenance windows across a
//! daylight-saving change (G4), the package kill switch (G5) and force re-install (G6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use common::fleet::*;
use common::*;
use ota_server::dispatch::router::DeviceEventKind;
use ota_server::dispatch::Uplink;
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

db_tests!(
    abort_rules_stop_a_rollout_when_failures_rise,
    waves_start_on_their_success_threshold_or_by_hand,
    windows_push_only_inside_and_follow_daylight_saving,
    withdrawing_a_package_stops_every_rollout_of_it,
    force_reinstall_pushes_to_devices_already_on_the_target,
);

fn has_event(events: &[Value], kind: &str, detail_has: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == kind && e["detail"].as_str().unwrap_or("").contains(detail_has))
}

async fn state<S, B>(app: &S, key: &str, id: i64) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    rollout(app, key, id).await["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Task states by device index, read directly.
async fn task_state(e: &EngineCtx, rollout: i64, device: i64) -> Option<String> {
    let db = e.t.store.raw_connection();
    db.query_one(sea_orm::Statement::from_string(
        db.get_database_backend(),
        format!("SELECT state FROM task WHERE rollout_id = {rollout} AND device_id = {device}"),
    ))
    .await
    .unwrap()
    .map(|r| r.try_get::<String>("", "state").unwrap())
}

// SPEC G1: abort rules of each failure kind (failed, timed out, rejected, any) with a
// threshold percentage and a minimum of finished tasks, acting by pause or by cancel; the
// event records the rule and the figures, and nothing is pushed after the rule fires.
async fn abort_rules_stop_a_rollout_when_failures_rise(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 100, true, true).await;
    let rule = |kind: &str, pct: f64, min: i64, action: &str| json!({"kind": kind, "threshold_percent": pct, "min_finished": min, "action": action});
    let with = |rules: Value| {
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 60},
               "abort_rules": rules})
    };
    for (bad, field) in [
        (
            rule("failed", 0.0, 10, "pause"),
            "abort_rules[0].threshold_percent",
        ),
        (
            rule("failed", 100.5, 10, "pause"),
            "abort_rules[0].threshold_percent",
        ),
        (
            rule("failed", 20.0, 0, "pause"),
            "abort_rules[0].min_finished",
        ),
        (rule("broken", 20.0, 10, "pause"), "abort_rules[0].kind"),
        (rule("failed", 20.0, 10, "stop"), "abort_rules[0].action"),
    ] {
        refused(&app, key, f.package, with(json!([bad])), field).await;
    }
    let id = create(
        &app,
        key,
        f.package,
        with(json!([rule("failed", 20.0, 10, "pause")])),
    )
    .await;
    advance(&app, key, 10).await;
    assert_eq!(pushed_total(&app, key, id).await, 10);
    // 7 succeed and 2 fail: 22 % of 9 finished, under the minimum of 10
    let mut reports: Vec<_> = (0..7).map(|i| inform(&f, i, "2.0.0")).collect();
    reports.extend([progress(&f, 7, -1), progress(&f, 8, -2)]);
    e.engine.apply_events(&reports).await.unwrap();
    assert_eq!(state(&app, key, id).await, "running");
    // the tenth finishes: 2 of 10 failed is exactly 20 %, and the rollout stops at once
    e.engine
        .apply_events(&[inform(&f, 9, "2.0.0")])
        .await
        .unwrap();
    let r = rollout(&app, key, id).await;
    assert_eq!(r["state"], "paused");
    assert_eq!(
        r["outcomes"],
        json!({"succeeded": 8, "failed": 2, "timed_out": 0, "rejected": 0})
    );
    assert!(r["abort_rules"][0]["fired_at"].is_string());
    let ev = rollout_events(&app, key, id).await;
    assert!(
        has_event(&ev, "pause", "2 of 10 finished tasks failed (20.00%)"),
        "{ev:?}"
    );
    advance(&app, key, 60).await;
    assert_eq!(
        pushed_total(&app, key, id).await,
        10,
        "nothing pushed after the rule fired"
    );
    // resumed by hand, the spent rule stays spent
    post(&app, key, &format!("/v1/rollouts/{id}/resume"), json!({}))
        .await
        .expect(200);
    advance(&app, key, 5).await;
    assert_eq!(state(&app, key, id).await, "running");
    assert_eq!(pushed_total(&app, key, id).await, 15);
    // new rules are armed: any failure kind at 20 % cancels on the next tick
    call(
        &app,
        Some(key),
        "PATCH",
        &format!("/v1/rollouts/{id}"),
        Some(json!({"abort_rules": [rule("any", 20.0, 10, "cancel")]})),
    )
    .await
    .expect(200);
    advance(&app, key, 1).await;
    let r = rollout(&app, key, id).await;
    assert_eq!(r["state"], "cancelled");
    assert_eq!(
        (
            r["counts"]["succeeded"].as_u64(),
            r["counts"]["failed"].as_u64(),
            r["counts"]["cancelled"].as_u64()
        ),
        (Some(8), Some(2), Some(90)),
        "the five pushed since the resume were cancelled with the rest"
    );
    assert!(has_event(
        &rollout_events(&app, key, id).await,
        "cancel",
        "2 of 10 finished tasks failed, timed out or were rejected"
    ));

    // timed out and rejected, on another fleet: one rejects, two time out, one succeeds
    let g = fleet_named(&e, &app, "valve", 4, true, true).await;
    let id = create(
        &app,
        key,
        g.package,
        json!({"scope": {"kind": "all"}, "timeout_minutes": 1, "abort_rules": [
            rule("rejected", 50.0, 4, "pause"), rule("timed_out", 50.0, 4, "cancel")]}),
    )
    .await;
    advance(&app, key, 1).await;
    assert_eq!(pushed_total(&app, key, id).await, 4);
    e.engine
        .apply_events(&[
            progress(&g, 0, -5),
            progress(&g, 1, 10),
            progress(&g, 2, 10),
            inform(&g, 3, "2.0.0"),
        ])
        .await
        .unwrap();
    assert_eq!(state(&app, key, id).await, "running", "1 of 2 finished");
    advance(&app, key, 61).await;
    let r = rollout(&app, key, id).await;
    assert_eq!(
        r["outcomes"],
        json!({"succeeded": 1, "failed": 0, "timed_out": 2, "rejected": 1})
    );
    assert_eq!(
        r["state"], "cancelled",
        "2 of 4 timed out; 1 of 4 rejected is under 50 %"
    );
    assert!(has_event(
        &rollout_events(&app, key, id).await,
        "cancel",
        "rule 2: abort rule (timed_out >= 50% after 4 finished tasks, then cancel) fired: 2 of 4 finished tasks timed out"
    ));
}

/// Each device index's wave, read directly.
async fn waves_of(e: &EngineCtx, f: &Fleet, rollout: i64) -> Vec<i32> {
    let db = e.t.store.raw_connection();
    let mut out = Vec::new();
    for d in &f.devices {
        let r = db
            .query_one(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT CAST(wave AS INTEGER) AS wave FROM task WHERE rollout_id = {rollout} AND device_id = {d}"
                ),
            ))
            .await
            .unwrap()
            .unwrap();
        out.push(r.try_get::<i32>("", "wave").unwrap());
    }
    out
}

// SPEC G3: a rollout split into ordered waves by percentage (and by count): the next wave
// starts only when the current one reaches its success threshold, or by hand at a manual
// gate; a wave carries its own rate; each device stays in its wave; status shows each
// wave's counts.
async fn waves_start_on_their_success_threshold_or_by_hand(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 100, true, true).await;
    refused(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "waves": [{}]}),
        "waves",
    )
    .await;
    refused(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "waves": [{"percent": 50}, {"count": 5}, {}]}),
        "waves[1].percent",
    )
    .await;
    refused(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "method": "dynamic", "source_versions": ["1.0.0"],
               "waves": [{"percent": 50}, {}]}),
        "waves",
    )
    .await;
    // a count-sized split on another fleet: 3, then 5, then the rest
    let g = fleet_named(&e, &app, "valve", 20, true, true).await;
    let by_count = create(
        &app,
        key,
        g.package,
        json!({"scope": {"kind": "all"}, "waves": [{"count": 3}, {"count": 5}, {}]}),
    )
    .await;
    let tasks: Vec<u64> = rollout(&app, key, by_count).await["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["tasks"].as_u64().unwrap())
        .collect();
    assert_eq!(tasks, vec![3, 5, 12]);

    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "waves": [
            {"percent": 10, "success_threshold": 80},
            {"percent": 30, "advance": "manual", "rate": {"kind": "constant", "per_minute": 60}},
            {}]}),
    )
    .await;
    let r = rollout(&app, key, id).await;
    assert_eq!(r["current_wave"], 1);
    let tasks: Vec<u64> = r["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["tasks"].as_u64().unwrap())
        .collect();
    assert_eq!(tasks, vec![10, 30, 60]);
    let assigned = waves_of(&e, &f, id).await;
    let in_wave =
        |w: i32| -> Vec<usize> { (0..assigned.len()).filter(|i| assigned[*i] == w).collect() };
    let (w1, w2, w3) = (in_wave(1), in_wave(2), in_wave(3));
    assert_eq!((w1.len(), w2.len(), w3.len()), (10, 30, 60));
    // a spread of the fleet, not its first ten devices
    assert_ne!(w1, (0..10).collect::<Vec<_>>());

    advance(&app, key, 1).await;
    assert_eq!(pushed_total(&app, key, id).await, 10, "only the first wave");
    let r = rollout(&app, key, id).await;
    assert_eq!(r["waves"][0]["counts"]["pushed"], 10);
    assert_eq!(r["waves"][1]["counts"]["waiting"], 30);
    assert_eq!(r["waves"][2]["counts"]["waiting"], 60);
    // a device of a later wave that asks gets nothing yet
    e.engine
        .apply_events(&[report(
            &f,
            w3[0],
            DeviceEventKind::Message(Uplink::Pull { module: None }),
        )])
        .await
        .unwrap();
    assert_eq!(
        task_state(&e, id, f.devices[w3[0]]).await.as_deref(),
        Some("waiting")
    );
    // 7 of 10 succeed: under the 80 % threshold
    let ok: Vec<_> = w1[..7].iter().map(|i| inform(&f, *i, "2.0.0")).collect();
    e.engine.apply_events(&ok).await.unwrap();
    advance(&app, key, 30).await;
    assert_eq!(rollout(&app, key, id).await["current_wave"], 1);
    assert_eq!(pushed_total(&app, key, id).await, 10);
    e.engine
        .apply_events(&[inform(&f, w1[7], "2.0.0")])
        .await
        .unwrap();
    // the next tick starts wave 2, at its own rate of one a second
    advance(&app, key, 1).await;
    assert_eq!(rollout(&app, key, id).await["current_wave"], 2);
    advance(&app, key, 9).await;
    assert_eq!(pushed_total(&app, key, id).await, 10 + 10);
    assert!(has_event(
        &rollout_events(&app, key, id).await,
        "wave_started",
        "wave 2 of 3 started: wave 1 reached its success threshold: 8 of 10 tasks succeeded"
    ));
    advance(&app, key, 60).await;
    assert_eq!(pushed_total(&app, key, id).await, 40);
    // every task of wave 2 succeeds, but its gate is manual
    let ok: Vec<_> = w2.iter().map(|i| inform(&f, *i, "2.0.0")).collect();
    e.engine.apply_events(&ok).await.unwrap();
    advance(&app, key, 60).await;
    let r = rollout(&app, key, id).await;
    assert_eq!(r["current_wave"], 2);
    assert_eq!(r["waves"][1]["counts"]["succeeded"], 30);
    assert_eq!(pushed_total(&app, key, id).await, 40);
    let r = post(
        &app,
        key,
        &format!("/v1/rollouts/{id}/waves/advance"),
        json!({}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["current_wave"], 3);
    advance(&app, key, 1).await;
    assert_eq!(
        pushed_total(&app, key, id).await,
        100,
        "the rollout's rate: none"
    );
    post(
        &app,
        key,
        &format!("/v1/rollouts/{id}/waves/advance"),
        json!({}),
    )
    .await
    .expect(409);
    assert_eq!(
        waves_of(&e, &f, id).await,
        assigned,
        "each device kept its wave"
    );
}

// SPEC G4: a cron window in a named time zone: pushes go out only inside it, the window
// follows the daylight-saving change in UTC, and at its close unpushed tasks wait for the
// next window or are cancelled, as each rollout chose.
async fn windows_push_only_inside_and_follow_daylight_saving(db: Db) {
    // ten-minute ticks: the allowance is clipped to the window's edges exactly either way
    let e = EngineCtx::with_config(db, |c| c.scheduler.tick_ms = 600_000).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let utc = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    };
    // two days before Europe/Berlin moves to summer time (2027-03-28, 01:00 UTC)
    e.t.clock.set(utc("2027-03-26T12:00:00Z"));
    let f = fleet(&e, &app, 2_000, true, true).await;
    let g = fleet_named(&e, &app, "valve", 700, true, true).await;
    let win = |cron: &str, minutes: i64, tz: &str, on_close: &str| {
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 10},
               "window": {"cron": cron, "duration_minutes": minutes, "time_zone": tz,
                          "on_close": on_close}})
    };
    for (body, field) in [
        (win("0 1 * *", 60, "UTC", "wait"), "window.cron"),
        (win("0 1 * * * *", 60, "UTC", "wait"), "window.cron"),
        (
            win("0 1 * * *", 0, "UTC", "wait"),
            "window.duration_minutes",
        ),
        (
            win("0 1 * * *", 60, "Europe/Atlantis", "wait"),
            "window.time_zone",
        ),
        (win("0 1 * * *", 60, "UTC", "later"), "window.on_close"),
    ] {
        refused(&app, key, f.package, body, field).await;
    }
    let mut daily = win("0 1 * * *", 60, "UTC", "wait");
    daily["schedule"] = json!({"start_at": "2027-03-26T13:00:00Z", "end_at": "2027-03-26T14:00:00Z",
                               "daily_repeat": true});
    refused(&app, key, f.package, daily, "window").await;
    let mut pull = win("0 1 * * *", 60, "UTC", "wait");
    pull["push_mode"] = json!("pull");
    pull.as_object_mut().unwrap().remove("rate");
    refused(&app, key, f.package, pull, "window").await;

    // 01:00 Berlin time for an hour: 00:00–01:00 UTC in winter, 23:00–00:00 UTC in summer
    let wait = create(
        &app,
        key,
        f.package,
        win("0 1 * * *", 60, "Europe/Berlin", "wait"),
    )
    .await;
    let cancel = create(
        &app,
        key,
        g.package,
        win("0 1 * * *", 60, "Europe/Berlin", "cancel"),
    )
    .await;
    let mut now = utc("2027-03-26T12:00:00Z");
    let mut until = |to: &str| {
        let secs = (utc(to) - now) / 1000;
        now = utc(to);
        secs as u64
    };
    for (to, want) in [
        ("2027-03-27T00:00:00Z", 0),
        ("2027-03-27T00:30:00Z", 300),
        ("2027-03-27T01:00:00Z", 600),
        ("2027-03-28T00:00:00Z", 600),
        // the last winter window: 01:00 CET, as the clocks change an hour after it opens
        ("2027-03-28T01:00:00Z", 1_200),
        ("2027-03-28T23:00:00Z", 1_200),
        // the first summer window opens at 23:00 UTC
        ("2027-03-29T00:00:00Z", 1_800),
        ("2027-03-29T23:00:00Z", 1_800),
    ] {
        advance(&app, key, until(to)).await;
        assert_eq!(pushed_total(&app, key, wait).await, want, "at {to}");
        if to == "2027-03-27T01:00:00Z" {
            // the other rollout cancelled at the close what the window left
            let r = rollout(&app, key, cancel).await;
            assert_eq!(pushed_total(&app, key, cancel).await, 600, "{r}");
            assert_eq!(r["counts"]["cancelled"], 100);
            assert!(has_event(
                &rollout_events(&app, key, cancel).await,
                "window_closed",
                "100 tasks not yet pushed cancelled"
            ));
        }
    }
    assert_eq!(count(&app, key, wait, "cancelled").await, 0);
    assert_eq!(count(&app, key, wait, "waiting").await, 200);
}

// SPEC G5: one call withdraws a package: unstarted tasks of every rollout of it are
// cancelled (in-flight ones too), its rollouts stop (a dynamic one takes no more devices),
// nothing more is pushed or retried, and no new rollout may use the package until it is
// reinstated.
async fn withdrawing_a_package_stops_every_rollout_of_it(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 100, true, true).await;
    let first = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 60},
               "retry": {"interval_minutes": 10, "max_retries": 2}}),
    )
    .await;
    advance(&app, key, 10).await;
    assert_eq!(pushed_total(&app, key, first).await, 10);
    // device 0 installs, device 1 failed and waits for its retry
    e.engine
        .apply_events(&[progress(&f, 0, 40), progress(&f, 1, -2)])
        .await
        .unwrap();
    let dynamic = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "method": "dynamic", "source_versions": ["1.0.0"]}),
    )
    .await;
    let path = format!("/v1/packages/{}/withdraw", f.package);
    post(&app, key, &path, json!({"reason": " "}))
        .await
        .expect(400);
    let r = post(
        &app,
        key,
        &path,
        json!({"reason": "bricks meters on rev B boards"}),
    )
    .await;
    r.expect(200);
    let w = r.json();
    assert_eq!(w["rollouts"], json!([first, dynamic]));
    assert_eq!(w["tasks_cancelled"], 99);
    assert_eq!(
        w["package"]["withdrawn_reason"],
        "bricks meters on rev B boards"
    );
    assert!(w["package"]["withdrawn_at"].is_string());
    post(&app, key, &path, json!({"reason": "again"}))
        .await
        .expect(409);
    let r = rollout(&app, key, first).await;
    assert_eq!(r["state"], "cancelled");
    assert_eq!(r["counts"]["waiting"], 0);
    assert_eq!(
        r["counts"]["cancelled"], 99,
        "waiting, pushed and in progress"
    );
    assert_eq!(r["counts"]["failed"], 1);
    assert!(has_event(
        &rollout_events(&app, key, first).await,
        "withdrawn",
        "bricks meters on rev B boards; 99 unfinished tasks cancelled"
    ));
    let d = rollout(&app, key, dynamic).await;
    assert_eq!(d["state"], "cancelled");
    assert_eq!(d["strategy_cancelled"], true);
    // no push, no retry, no new device
    e.engine
        .apply_events(&[inform(&f, 50, "1.0.0")])
        .await
        .unwrap();
    advance(&app, key, 1_200).await;
    let c = &rollout(&app, key, first).await["counts"];
    assert_eq!(
        (
            c["pushed"].as_u64(),
            c["cancelled"].as_u64(),
            c["failed"].as_u64()
        ),
        (Some(0), Some(99), Some(1))
    );
    assert_eq!(
        task_state(&e, first, f.devices[1]).await.as_deref(),
        Some("failed")
    );
    assert_eq!(task_state(&e, dynamic, f.devices[50]).await, None);
    let r = post(
        &app,
        key,
        &format!("/v1/packages/{}/rollouts", f.package),
        json!({"scope": {"kind": "all"}}),
    )
    .await;
    r.expect(409);
    assert!(r.json()["message"].as_str().unwrap().contains("withdrawn"));
    let r = post(
        &app,
        key,
        &format!("/v1/packages/{}/reinstate", f.package),
        json!({}),
    )
    .await;
    r.expect(200);
    assert!(r.json().get("withdrawn_at").is_none());
    post(
        &app,
        key,
        &format!("/v1/packages/{}/reinstate", f.package),
        json!({}),
    )
    .await
    .expect(409);
    let again = create(&app, key, f.package, json!({"scope": {"kind": "all"}})).await;
    assert_eq!(rollout(&app, key, again).await["tasks_created"], 100);
}

// SPEC G6: a force re-install rollout takes devices that already report the target
// version, and such a task succeeds only on a version report after the device reported
// progress (a report of the old install is not a re-install).
async fn force_reinstall_pushes_to_devices_already_on_the_target(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 10, true, true).await;
    let on_target: Vec<_> = (0..5).map(|i| inform(&f, i, "2.0.0")).collect();
    e.engine.apply_events(&on_target).await.unwrap();
    refused(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "method": "dynamic", "source_versions": ["1.0.0"],
               "force_reinstall": true}),
        "force_reinstall",
    )
    .await;
    let plain = create(&app, key, f.package, json!({"scope": {"kind": "all"}})).await;
    assert_eq!(rollout(&app, key, plain).await["tasks_created"], 5);
    post(
        &app,
        key,
        &format!("/v1/rollouts/{plain}/cancel"),
        json!({}),
    )
    .await
    .expect(200);
    let forced = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "force_reinstall": true}),
    )
    .await;
    let r = rollout(&app, key, forced).await;
    assert_eq!(r["tasks_created"], 10);
    assert_eq!(r["force_reinstall"], true);
    advance(&app, key, 1).await;
    assert_eq!(pushed_total(&app, key, forced).await, 10);
    // device 0 reconnects and reports the version it already ran: not a re-install
    e.engine
        .apply_events(&[inform(&f, 0, "2.0.0")])
        .await
        .unwrap();
    assert_eq!(
        task_state(&e, forced, f.devices[0]).await.as_deref(),
        Some("pushed")
    );
    e.engine
        .apply_events(&[progress(&f, 0, 100)])
        .await
        .unwrap();
    e.engine
        .apply_events(&[inform(&f, 0, "2.0.0")])
        .await
        .unwrap();
    assert_eq!(
        task_state(&e, forced, f.devices[0]).await.as_deref(),
        Some("succeeded")
    );
}
