//! The rollout engine in simulated time, through the HTTP API, on SQLite and PostgreSQL:
//! the seed's worked example of the variable rate, constant-rate limits, concurrency,
//! retries, device timeouts, pause and resume, schedule start and end, daily windows, pull
//! mode and success by version report. Time moves only through `POST /v1/clock/advance`
//! (the manual clock); device reports enter the engine as the router hands them up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use common::fleet::*;
use common::*;
use ota_server::dispatch::router::{DeviceEvent, DeviceEventKind};
use ota_server::dispatch::Uplink;
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

db_tests!(
    the_seed_worked_example_counted_on_pushes,
    variable_rate_counted_on_successes,
    constant_rate_limits_are_exact,
    concurrency_counts_pending_and_pushed_only,
    retries_after_the_interval_up_to_the_count,
    timeout_from_first_progress_not_restarted_and_not_retried_unless_opted_in,
    pause_stops_pushes_and_timers_of_unstarted_tasks_stand_still,
    scheduled_start_and_end_cancel_unpushed_tasks,
    daily_repeat_pushes_only_inside_the_window,
    pull_mode_and_offline_devices,
    success_only_by_version_report_and_verification_marks_the_package,
    dynamic_rollouts_take_devices_that_come_to_match,
    a_running_rollout_changes_rate_sources_timeout_and_tags,
    a_restarted_engine_continues_exactly,
);

// SPEC R5: the seed's worked example through the API in simulated time: base 50, factor 2,
// max 10,000, threshold 1,000 pushed, 20,000 online devices. Cumulative pushes reach 1,000
// at minute 20, 2,000 at 30, 3,000 at 35, 4,000 at 37.5, then 10,000 per minute.
async fn the_seed_worked_example_counted_on_pushes(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 20_000, true, true).await;
    let v = |base: i64, factor: f64, max: i64, threshold: i64| {
        json!({"scope": {"kind": "all"}, "rate": {"kind": "variable", "base": base,
               "factor": factor, "max": max, "threshold": threshold}})
    };
    refused(&app, key, f.package, v(0, 2.0, 100, 10), "rate.base").await;
    refused(&app, key, f.package, v(200, 2.0, 100, 10), "rate.base").await;
    refused(&app, key, f.package, v(5, 1.19, 100, 10), "rate.factor").await;
    refused(&app, key, f.package, v(5, 5.01, 100, 10), "rate.factor").await;
    refused(&app, key, f.package, v(5, 2.0, 9, 10), "rate.max").await;
    refused(&app, key, f.package, v(5, 2.0, 10_001, 10), "rate.max").await;
    refused(&app, key, f.package, v(5, 2.0, 100, 0), "rate.threshold").await;
    refused(
        &app,
        key,
        f.package,
        v(5, 2.0, 100, 100_001),
        "rate.threshold",
    )
    .await;
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "variable", "base": 50, "factor": 2.0,
               "max": 10000, "threshold": 1000, "count_on": "pushed"}}),
    )
    .await;
    // the factor is kept to two decimals (this one takes no device: they all have a task)
    let r = post(
        &app,
        key,
        &format!("/v1/packages/{}/rollouts", f.package),
        v(50, 1.999, 10_000, 1_000),
    )
    .await;
    r.expect(201);
    assert_eq!(r.json()["rate"]["factor"], 2.0);
    let mut at = 0u64;
    for (sec, want) in [
        (60, 50),
        (1_199, 999),
        (1_200, 1_000),
        (1_799, 1_998),
        (1_800, 2_000),
        (2_100, 3_000),
        (2_249, 3_993),
        (2_250, 4_000),
        (2_325, 5_000),
    ] {
        advance(&app, key, sec - at).await;
        at = sec;
        assert_eq!(pushed_total(&app, key, id).await, want, "at second {sec}");
    }
    // 800 → 1,600 → 3,200 → 6,400 → capped at 10,000 per minute from 8,000 pushes on
    advance(&app, key, 2_400 - at).await;
    let before = pushed_total(&app, key, id).await;
    assert!(before > 8_000, "{before}");
    advance(&app, key, 60).await;
    assert_eq!(pushed_total(&app, key, id).await - before, 10_000);
}

// Part of R5: the threshold counted on succeeded devices (the rate grows only when devices
// report the target version).
async fn variable_rate_counted_on_successes(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 2_000, true, true).await;
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "variable", "base": 60, "factor": 2.0,
               "max": 10000, "threshold": 100, "count_on": "succeeded"}}),
    )
    .await;
    advance(&app, key, 180).await;
    assert_eq!(
        pushed_total(&app, key, id).await,
        180,
        "no successes: 60 a minute"
    );
    let events: Vec<DeviceEvent> = (0..100).map(|i| inform(&f, i, "2.0.0")).collect();
    e.engine.apply_events(&events).await.unwrap();
    assert_eq!(count(&app, key, id, "succeeded").await, 100);
    advance(&app, key, 60).await;
    assert_eq!(
        pushed_total(&app, key, id).await,
        180 + 120,
        "100 successes: 120 a minute"
    );
}

// SPEC R4: a constant rate at both limits, exact.
async fn constant_rate_limits_are_exact(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let slow = fleet(&e, &app, 100, true, true).await;
    let fast = fleet(&e, &app, 20_000, true, true).await;
    let s = create(
        &app,
        key,
        slow.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 10}}),
    )
    .await;
    let q = create(
        &app,
        key,
        fast.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 10000}}),
    )
    .await;
    advance(&app, key, 5).await;
    assert_eq!(
        pushed_total(&app, key, s).await,
        0,
        "10 a minute: none before 6 s"
    );
    advance(&app, key, 1).await;
    assert_eq!(pushed_total(&app, key, s).await, 1);
    advance(&app, key, 54).await;
    assert_eq!(pushed_total(&app, key, s).await, 10);
    assert_eq!(pushed_total(&app, key, q).await, 10_000);
    advance(&app, key, 30).await;
    assert_eq!(pushed_total(&app, key, s).await, 15);
    assert_eq!(pushed_total(&app, key, q).await, 15_000);
    // out of range rates are refused, naming the field
    for bad in [9, 10_001] {
        let r = post(
            &app,
            key,
            &format!("/v1/packages/{}/rollouts", slow.package),
            json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": bad}}),
        )
        .await;
        r.expect(400);
        assert_eq!(r.json()["field"], "rate.per_minute");
    }
}

// SPEC R7: at most N tasks pending or pushed; in-progress tasks do not count.
async fn concurrency_counts_pending_and_pushed_only(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 20, true, true).await;
    // two devices offline: their released tasks wait as pending and still count
    let db = e.t.store.raw_connection();
    db.execute_unprepared(&format!(
        "UPDATE device SET online = false WHERE id IN ({}, {})",
        f.devices[0], f.devices[1]
    ))
    .await
    .unwrap();
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "max_concurrency": 5}),
    )
    .await;
    advance(&app, key, 1).await;
    let r = rollout(&app, key, id).await;
    assert_eq!(r["counts"]["pending"], 2);
    assert_eq!(r["counts"]["pushed"], 3);
    advance(&app, key, 10).await;
    assert_eq!(
        count(&app, key, id, "waiting").await,
        15,
        "nothing more while full"
    );
    // three devices start: in progress no longer counts, three more are released
    let ev: Vec<DeviceEvent> = (2..5).map(|i| progress(&f, i, 10)).collect();
    e.engine.apply_events(&ev).await.unwrap();
    advance(&app, key, 1).await;
    let r = rollout(&app, key, id).await;
    assert_eq!(r["counts"]["in_progress"], 3);
    assert_eq!(r["counts"]["pending"], 2);
    assert_eq!(r["counts"]["pushed"], 3);
    assert_eq!(r["counts"]["waiting"], 12);
}

// SPEC R8: a failed task is retried after the interval, at most the given count; then it
// stays failed and the rollout completes.
async fn retries_after_the_interval_up_to_the_count(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 1, true, true).await;
    // the seed's choices only: no retry, at once, 10, 30, 60 or 1440 minutes; 1, 2 or 5 times
    for (interval, count, field) in [
        (15, 1, "retry.interval_minutes"),
        (10, 3, "retry.max_retries"),
    ] {
        let body = json!({"scope": {"kind": "all"},
            "retry": {"interval_minutes": interval, "max_retries": count}});
        refused(&app, key, f.package, body, field).await;
    }
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "retry": {"interval_minutes": 10, "max_retries": 2},
               "timeout_minutes": 30}),
    )
    .await;
    let dev = f.devices[0];
    for round in 0..3 {
        advance(&app, key, 1).await;
        assert_eq!(task_row(&e, id, dev).await.0, "pushed", "round {round}");
        e.engine.apply_events(&[progress(&f, 0, -2)]).await.unwrap();
        let (state, retries, due, reason) = task_row(&e, id, dev).await;
        assert_eq!((state.as_str(), retries), ("failed", round));
        assert_eq!(reason.as_deref(), Some("download_failed"));
        if round < 2 {
            assert!(due.is_some(), "a retry is due");
            advance(&app, key, 599).await;
            assert_eq!(
                task_row(&e, id, dev).await.0,
                "failed",
                "not before 10 minutes"
            );
        } else {
            assert!(due.is_none(), "no retries left");
        }
    }
    advance(&app, key, 1).await;
    assert_eq!(rollout(&app, key, id).await["state"], "completed");
    // the retry interval must be shorter than the timeout
    let other = fleet(&e, &app, 1, true, true).await;
    let r = post(
        &app,
        key,
        &format!("/v1/packages/{}/rollouts", other.package),
        json!({"scope": {"kind": "all"}, "retry": {"interval_minutes": 60, "max_retries": 1},
               "timeout_minutes": 30}),
    )
    .await;
    r.expect(400);
}

// SPEC R9: the timeout counts from the first progress report, a re-push on reconnect does
// not restart it, a timed-out task fails with reason `timeout` and is not retried unless
// the rollout opts in.
async fn timeout_from_first_progress_not_restarted_and_not_retried_unless_opted_in(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let a = fleet(&e, &app, 1, true, true).await;
    let b = fleet(&e, &app, 1, true, true).await;
    for bad in [0, 1_441] {
        let body = json!({"scope": {"kind": "all"}, "timeout_minutes": bad});
        refused(&app, key, a.package, body, "timeout_minutes").await;
    }
    let plain = create(
        &app,
        key,
        a.package,
        json!({"scope": {"kind": "all"}, "timeout_minutes": 5,
               "retry": {"interval_minutes": 0, "max_retries": 1}}),
    )
    .await;
    let opted = create(
        &app,
        key,
        b.package,
        json!({"scope": {"kind": "all"}, "timeout_minutes": 5, "retry_timeouts": true,
               "retry": {"interval_minutes": 0, "max_retries": 1}}),
    )
    .await;
    advance(&app, key, 1).await;
    // pushed long before the first progress: the clock has not started
    advance(&app, key, 600).await;
    assert_eq!(task_row(&e, plain, a.devices[0]).await.0, "pushed");
    e.engine
        .apply_events(&[progress(&a, 0, 10), progress(&b, 0, 10)])
        .await
        .unwrap();
    advance(&app, key, 180).await;
    // reconnect (re-push) and more progress do not restart it
    e.engine
        .apply_events(&[
            report(&a, 0, DeviceEventKind::Connected),
            progress(&a, 0, 50),
            progress(&b, 0, 50),
        ])
        .await
        .unwrap();
    advance(&app, key, 119).await;
    assert_eq!(task_row(&e, plain, a.devices[0]).await.0, "in_progress");
    advance(&app, key, 1).await;
    let (state, _, due, reason) = task_row(&e, plain, a.devices[0]).await;
    assert_eq!(
        (state.as_str(), reason.as_deref()),
        ("failed", Some("timeout"))
    );
    assert!(due.is_none(), "not retried");
    // opted in, with a retry at once: in the same tick it failed, went back to waiting
    // and was released and pushed again
    let (state, retries, _, _) = task_row(&e, opted, b.devices[0]).await;
    assert_eq!(
        (state.as_str(), retries),
        ("pushed", 1),
        "retried at once and pushed"
    );
}

// SPEC G2: a paused rollout pushes nothing and the timers of its not-yet-started tasks (a
// retry waiting for its interval) stand still until it resumes.
async fn pause_stops_pushes_and_timers_of_unstarted_tasks_stand_still(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 100, true, true).await;
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 60},
               "retry": {"interval_minutes": 10, "max_retries": 1}, "timeout_minutes": 60}),
    )
    .await;
    advance(&app, key, 2).await;
    assert_eq!(pushed_total(&app, key, id).await, 2);
    e.engine.apply_events(&[progress(&f, 0, -1)]).await.unwrap();
    advance(&app, key, 60).await; // retry due 10 minutes after the failure
    post(&app, key, &format!("/v1/rollouts/{id}/pause"), json!({}))
        .await
        .expect(200);
    let paused_at = pushed_total(&app, key, id).await;
    advance(&app, key, 3_600).await;
    assert_eq!(
        pushed_total(&app, key, id).await,
        paused_at,
        "nothing pushed while paused"
    );
    assert_eq!(task_row(&e, id, f.devices[0]).await.0, "failed");
    post(&app, key, &format!("/v1/rollouts/{id}/resume"), json!({}))
        .await
        .expect(200);
    // no allowance accrued while paused: one a second from the resume, not an hour's worth
    advance(&app, key, 1).await;
    assert_eq!(pushed_total(&app, key, id).await, paused_at + 1);
    // the retry had 9 minutes to go when paused; after the hour it still has 9
    advance(&app, key, 538).await;
    assert_eq!(task_row(&e, id, f.devices[0]).await.0, "failed");
    advance(&app, key, 1).await;
    let (state, retries, _, _) = task_row(&e, id, f.devices[0]).await;
    assert_ne!(state, "failed");
    assert_eq!(retries, 1);
}

// SPEC R1: a scheduled start pushes nothing before its time; at the end, tasks not yet
// pushed are cancelled.
async fn scheduled_start_and_end_cancel_unpushed_tasks(db: Db) {
    // ten-second ticks: the allowance is clipped to the start and end exactly either way
    let e = EngineCtx::with_config(db, |c| c.scheduler.tick_ms = 10_000).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 1_000, true, true).await;
    let at = |ms: i64| ota_server::clock::rfc3339(T0 + ms);
    let (day, hour) = (86_400_000, 3_600_000);
    let sched = |start: i64, end: Option<i64>| {
        json!({"scope": {"kind": "all"}, "schedule": {"start_at": at(start),
               "end_at": end.map(at)}})
    };
    refused(
        &app,
        key,
        f.package,
        sched(7 * day + 1, None),
        "schedule.start_at",
    )
    .await;
    refused(
        &app,
        key,
        f.package,
        sched(0, Some(hour - 1)),
        "schedule.end_at",
    )
    .await;
    refused(
        &app,
        key,
        f.package,
        sched(0, Some(30 * day + 1)),
        "schedule.end_at",
    )
    .await;
    let start = ota_server::clock::rfc3339(T0 + 600_000);
    let end = ota_server::clock::rfc3339(T0 + 600_000 + 3_600_000);
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 10},
               "schedule": {"start_at": start, "end_at": end}}),
    )
    .await;
    assert_eq!(rollout(&app, key, id).await["state"], "scheduled");
    advance(&app, key, 599).await;
    assert_eq!(pushed_total(&app, key, id).await, 0);
    assert_eq!(rollout(&app, key, id).await["state"], "scheduled");
    advance(&app, key, 1).await; // a tick at the start itself
    assert_eq!(rollout(&app, key, id).await["state"], "running");
    advance(&app, key, 3_600).await;
    let r = rollout(&app, key, id).await;
    assert_eq!(r["counts"]["pushed"], 600, "10 a minute for an hour");
    assert_eq!(r["counts"]["cancelled"], 400, "the rest was never pushed");
    assert_eq!(r["counts"]["waiting"].as_u64().unwrap_or(0), 0);
}

// SPEC R2: with a daily repeat the rollout pushes only inside the start..end time of day,
// every day.
async fn daily_repeat_pushes_only_inside_the_window(db: Db) {
    // minute ticks over a day and more: the window clips the allowance exactly
    let e = EngineCtx::with_config(db, |c| c.scheduler.tick_ms = 60_000).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 1_000, true, true).await;
    // start and end on two dates: refused
    let r = json!({"scope": {"kind": "all"}, "schedule": {
        "start_at": ota_server::clock::rfc3339(T0 + 3_600_000),
        "end_at": ota_server::clock::rfc3339(T0 + 25 * 3_600_000), "daily_repeat": true}});
    refused(&app, key, f.package, r, "schedule.daily_repeat").await;
    // T0 is 2026-11-18 (UTC); a window from one hour ahead, one hour long
    let start = T0 + 3_600_000;
    let end = start + 3_600_000;
    let id = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 10},
               "schedule": {"start_at": ota_server::clock::rfc3339(start),
                            "end_at": ota_server::clock::rfc3339(end), "daily_repeat": true}}),
    )
    .await;
    advance(&app, key, 3_600).await;
    assert_eq!(pushed_total(&app, key, id).await, 0);
    advance(&app, key, 3_600).await;
    assert_eq!(
        pushed_total(&app, key, id).await,
        600,
        "one window of an hour"
    );
    advance(&app, key, 23 * 3_600 - 1).await;
    assert_eq!(
        pushed_total(&app, key, id).await,
        600,
        "closed until the next day"
    );
    assert_eq!(
        rollout(&app, key, id).await["state"],
        "running",
        "the end only closes the day's window"
    );
    advance(&app, key, 1 + 1_800).await;
    assert_eq!(pushed_total(&app, key, id).await, 900);
}

// SPEC R3: in pull mode nothing is pushed unasked and a device that asks gets its task at
// once; an offline device's released task waits as pending and is pushed when it connects.
async fn pull_mode_and_offline_devices(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 3, false, true).await;
    let g = fleet(&e, &app, 2, false, true).await;
    let pull = create(
        &app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "push_mode": "pull", "max_concurrency": 1}),
    )
    .await;
    let push = create(&app, key, g.package, json!({"scope": {"kind": "all"}})).await;
    advance(&app, key, 60).await;
    assert_eq!(
        count(&app, key, pull, "waiting").await,
        3,
        "pull: nothing pushed unasked"
    );
    assert_eq!(
        count(&app, key, push, "pending").await,
        2,
        "offline: released, not pushed"
    );
    let ask = |i| {
        report(
            &f,
            i,
            DeviceEventKind::Message(Uplink::Pull { module: None }),
        )
    };
    e.engine.apply_events(&[ask(0)]).await.unwrap();
    assert_eq!(task_row(&e, pull, f.devices[0]).await.0, "pushed");
    // the concurrency limit holds for asking devices too
    e.engine.apply_events(&[ask(1)]).await.unwrap();
    assert_eq!(task_row(&e, pull, f.devices[1]).await.0, "waiting");
    e.engine
        .apply_events(&[report(&g, 1, DeviceEventKind::Connected)])
        .await
        .unwrap();
    assert_eq!(task_row(&e, push, g.devices[1]).await.0, "pushed");
    assert_eq!(task_row(&e, push, g.devices[0]).await.0, "pending");
    // in push mode a device may still ask, and gets its task at once
    let ask_push = report(
        &g,
        0,
        DeviceEventKind::Message(Uplink::Pull { module: None }),
    );
    e.engine.apply_events(&[ask_push]).await.unwrap();
    assert_eq!(task_row(&e, push, g.devices[0]).await.0, "pushed");
}

// SPEC P2
// Progress 100 alone is not success; the version report is (V1). A product that requires
// verification refuses an update rollout of its unverified package; a verification rollout
// whose devices all succeed marks the package verified, and then an update rollout is taken.
async fn success_only_by_version_report_and_verification_marks_the_package(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 2, true, false).await;
    let product = call(
        &app,
        Some(key),
        "GET",
        &format!("/v1/packages/{}", f.package),
        None,
    )
    .await
    .json()["product_id"]
        .as_i64()
        .unwrap();
    call(
        &app,
        Some(key),
        "PATCH",
        &format!("/v1/products/{product}"),
        Some(json!({"require_verification": true})),
    )
    .await
    .expect(200);
    let update = json!({"type": "update", "scope": {"kind": "all"}});
    let refused = post(
        &app,
        key,
        &format!("/v1/packages/{}/rollouts", f.package),
        update.clone(),
    )
    .await;
    refused.expect(409);
    assert!(refused.text().contains("verif"), "{}", refused.text());
    let id = create(&app, key, f.package, json!({"scope": {"kind": "all"}})).await;
    assert_eq!(rollout(&app, key, id).await["type"], "verification");
    advance(&app, key, 1).await;
    e.engine
        .apply_events(&[progress(&f, 0, 100), progress(&f, 1, 100)])
        .await
        .unwrap();
    assert_eq!(count(&app, key, id, "in_progress").await, 2);
    e.engine
        .apply_events(&[inform(&f, 0, "1.0.0"), inform(&f, 1, "2.0.0")])
        .await
        .unwrap();
    assert_eq!(
        count(&app, key, id, "succeeded").await,
        1,
        "only the target version"
    );
    e.engine
        .apply_events(&[inform(&f, 0, "2.0.0"), inform(&f, 0, "2.0.0")])
        .await
        .unwrap();
    assert_eq!(count(&app, key, id, "succeeded").await, 2);
    advance(&app, key, 1).await;
    assert_eq!(rollout(&app, key, id).await["state"], "completed");
    let p = call(
        &app,
        Some(key),
        "GET",
        &format!("/v1/packages/{}", f.package),
        None,
    )
    .await;
    assert_eq!(p.json()["status"], "verified");
    // verified: an update rollout of it is taken now
    post(
        &app,
        key,
        &format!("/v1/packages/{}/rollouts", f.package),
        update,
    )
    .await
    .expect(201);
}

/// Records a version report as the router does before handing the report up.
async fn reported(e: &EngineCtx, f: &Fleet, i: usize, version: &str) -> DeviceEvent {
    let app = e.t.service().await;
    post(
        &app,
        &e.t.admin,
        &format!("/v1/devices/{}/versions", f.devices[i]),
        json!({ "version": version }),
    )
    .await
    .expect(200);
    inform(f, i, version)
}

// SPEC B1
// SPEC B3
// SPEC R12
// A dynamic rollout takes a device that is activated later (its first version report) and
// one whose reported version comes to match, while it runs; a device updated 10 times by it
// is not taken again; with "only new reports" nothing is taken at creation, and a device
// reporting after the start is.
async fn dynamic_rollouts_take_devices_that_come_to_match(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 4, true, true).await;
    // d0 runs 1.0.0 before the rollout; d1 runs 0.9.0; d2 and d3 never reported
    let ev = vec![
        reported(&e, &f, 0, "1.0.0").await,
        reported(&e, &f, 1, "0.9.0").await,
    ];
    e.engine.apply_events(&ev).await.unwrap();
    let id = create(
        &app,
        key,
        f.package,
        json!({"method": "dynamic", "scope": {"kind": "all"}, "source_versions": ["1.0.0"]}),
    )
    .await;
    assert_eq!(
        rollout(&app, key, id).await["tasks_created"],
        1,
        "d0 at creation"
    );
    // d2 activates on 1.0.0, d1 comes to run 1.0.0: both join; d3 on 0.8.0 does not
    let ev = vec![
        reported(&e, &f, 2, "1.0.0").await,
        reported(&e, &f, 1, "1.0.0").await,
        reported(&e, &f, 3, "0.8.0").await,
    ];
    e.engine.apply_events(&ev).await.unwrap();
    let r = rollout(&app, key, id).await;
    assert_eq!(r["tasks_created"], 3);
    assert_eq!(r["counts"]["waiting"], 3, "no tick yet: d0 waits too");
    advance(&app, key, 1).await;
    assert_eq!(count(&app, key, id, "pushed").await, 3);
    // B3: d0 is updated, then goes back to 1.0.0, over and over: 10 updates at most
    for round in 1..=11 {
        let ev = vec![reported(&e, &f, 0, "2.0.0").await];
        e.engine.apply_events(&ev).await.unwrap();
        let ev = vec![reported(&e, &f, 0, "1.0.0").await];
        e.engine.apply_events(&ev).await.unwrap();
        advance(&app, key, 1).await;
        let tasks =
            e.t.store
                .raw_connection()
                .query_one(sea_orm::Statement::from_string(
                    e.t.store.raw_connection().get_database_backend(),
                    format!(
                        "SELECT COUNT(*) AS n FROM task WHERE rollout_id = {id} AND device_id = {}",
                        f.devices[0]
                    ),
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get::<i64>("", "n")
                .unwrap();
        assert_eq!(tasks, (round + 1).min(10), "round {round}");
    }
    // R12: only devices that report after the start
    let g = fleet(&e, &app, 2, true, true).await;
    let ev = vec![reported(&e, &g, 0, "1.0.0").await];
    e.engine.apply_events(&ev).await.unwrap();
    let fresh = create(
        &app,
        key,
        g.package,
        json!({"method": "dynamic", "scope": {"kind": "all"}, "source_versions": ["1.0.0"],
               "only_new_reports": true}),
    )
    .await;
    assert_eq!(rollout(&app, key, fresh).await["tasks_created"], 0);
    let ev = vec![reported(&e, &g, 1, "1.0.0").await];
    e.engine.apply_events(&ev).await.unwrap();
    assert_eq!(rollout(&app, key, fresh).await["tasks_created"], 1);
}

// SPEC R6
// SPEC R16
// The rate of a running rollout changes but not its kind; a dynamic rollout's source
// versions change (B9's running-rollout rules: an added version brings in the devices on it,
// a removed one leaves its tasks alone, a group-scoped one refuses; B9's creation rules are
// in api_rollouts); a new device timeout applies only to tasks made from then on, and can be
// removed. Tags change too (part of R15: what the push carries is not checked here).
async fn a_running_rollout_changes_rate_sources_timeout_and_tags(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 40, true, true).await;
    let mut ev = vec![];
    for i in 0..30 {
        ev.push(reported(&e, &f, i, if i < 20 { "1.0.0" } else { "1.1.0" }).await);
    }
    e.engine.apply_events(&ev).await.unwrap();
    let id = create(
        &app,
        key,
        f.package,
        json!({"method": "dynamic", "scope": {"kind": "all"}, "source_versions": ["1.0.0"],
               "rate": {"kind": "constant", "per_minute": 60}, "timeout_minutes": 10,
               "tags": {"a": "1"}}),
    )
    .await;
    assert_eq!(rollout(&app, key, id).await["tasks_created"], 20);
    advance(&app, key, 5).await;
    assert_eq!(pushed_total(&app, key, id).await, 5);
    // R6: a faster constant rate takes effect from the next tick
    let r = patch_rollout(
        &app,
        key,
        id,
        json!({"rate": {"kind": "constant", "per_minute": 600}}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["rate"]["per_minute"], 600);
    advance(&app, key, 1).await;
    assert_eq!(pushed_total(&app, key, id).await, 15);
    // … but not its kind
    let r = patch_rollout(
        &app,
        key,
        id,
        json!({"rate": {"kind": "variable", "base": 10, "factor": 2.0, "max": 100, "threshold": 5}}),
    )
    .await;
    r.expect(400);
    assert_eq!(r.json()["field"], "rate.kind");
    // R16: the timeout; tasks made before keep 10 minutes, new ones take 20
    patch_rollout(&app, key, id, json!({"timeout_minutes": 20}))
        .await
        .expect(200);
    // B9: an added version brings in the 10 devices already on it
    let r = patch_rollout(
        &app,
        key,
        id,
        json!({"source_versions": ["1.0.0", "1.1.0"]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["tasks_created"], 30);
    advance(&app, key, 2).await;
    let ev = vec![progress(&f, 0, 10), progress(&f, 25, 10)];
    e.engine.apply_events(&ev).await.unwrap();
    let now = ota_server::clock::Clock::now_millis(&e.t.clock);
    let due = |d: Option<i64>| (d.unwrap() - now) / 60_000;
    assert_eq!(
        due(task_row(&e, id, f.devices[0]).await.2),
        10,
        "made before the change"
    );
    assert_eq!(
        due(task_row(&e, id, f.devices[25]).await.2),
        20,
        "made after it"
    );
    // removed: tasks made from now on have no timeout
    patch_rollout(&app, key, id, json!({"timeout_minutes": null}))
        .await
        .expect(200);
    assert_eq!(rollout(&app, key, id).await["timeout_minutes"], Value::Null);
    let ev = vec![reported(&e, &f, 35, "1.1.0").await];
    e.engine.apply_events(&ev).await.unwrap();
    advance(&app, key, 5).await;
    e.engine
        .apply_events(&[progress(&f, 35, 10)])
        .await
        .unwrap();
    assert_eq!(task_row(&e, id, f.devices[35]).await.2, None);
    // R15: tags change while it runs, by the tag rules
    let r = patch_rollout(&app, key, id, json!({"tags": {"b": "2"}})).await;
    r.expect(200);
    assert_eq!(r.json()["tags"], json!({"b": "2"}));
    let r = patch_rollout(&app, key, id, json!({"tags": {"bad key": "x"}})).await;
    r.expect(400);
    // B9: a removed version leaves the tasks of devices on it alone, and takes no more
    let before = rollout(&app, key, id).await;
    patch_rollout(&app, key, id, json!({"source_versions": ["1.1.0"]}))
        .await
        .expect(200);
    let ev = vec![reported(&e, &f, 36, "1.0.0").await];
    e.engine.apply_events(&ev).await.unwrap();
    let after = rollout(&app, key, id).await;
    assert_eq!(after["tasks_created"], before["tasks_created"]);
    assert_eq!(after["counts"], before["counts"]);
    // B9: a group-scoped dynamic rollout's source versions do not change
    let h = fleet(&e, &app, 1, true, true).await;
    let group = post(&app, key, "/v1/groups", json!({"name": "g"}))
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    let grouped = create(
        &app,
        key,
        h.package,
        json!({"method": "dynamic", "scope": {"kind": "group", "group_id": group},
               "source_versions": ["1.0.0"]}),
    )
    .await;
    let r = patch_rollout(&app, key, grouped, json!({"source_versions": ["1.1.0"]})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_versions");
    // a static rollout's source versions and timeout do not change
    let g = fleet(&e, &app, 1, true, true).await;
    let st = create(&app, key, g.package, json!({"scope": {"kind": "all"}})).await;
    let r = patch_rollout(&app, key, st, json!({"source_versions": ["1.0.0"]})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "source_versions");
    let r = patch_rollout(&app, key, st, json!({"timeout_minutes": 5})).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "timeout_minutes");
}

/// Cumulative pushes after each of `steps` advances of `secs`.
async fn timeline<S, B>(app: &S, key: &str, id: i64, steps: usize, secs: u64) -> Vec<u64>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut out = vec![];
    for _ in 0..steps {
        advance(app, key, secs).await;
        out.push(pushed_total(app, key, id).await);
    }
    out
}

// The rate state and the logical time live in the database: an engine that starts afresh
// mid-rollout (a restarted server) continues the timeline exactly where the uninterrupted
// one goes, threshold crossings and the bucket's remainder included.
async fn a_restarted_engine_continues_exactly(db: Db) {
    let body = json!({"scope": {"kind": "all"}, "rate": {"kind": "variable", "base": 7,
        "factor": 1.5, "max": 200, "threshold": 25, "count_on": "pushed"}});
    let a = EngineCtx::new(db).await;
    let app_a = a.t.service().await;
    let fa = fleet(&a, &app_a, 600, true, true).await;
    let ra = create(&app_a, &a.t.admin, fa.package, body.clone()).await;
    let whole = timeline(&app_a, &a.t.admin, ra, 18, 37).await;

    let b = EngineCtx::new(db).await;
    let app_b = b.t.service().await;
    let fb = fleet(&b, &app_b, 600, true, true).await;
    let rb = create(&app_b, &b.t.admin, fb.package, body).await;
    let mut first = timeline(&app_b, &b.t.admin, rb, 9, 37).await;
    // the restart: a new engine with nothing in memory, on the same database and clock
    let fresh = ota_server::scheduler::Scheduler::new(
        b.t.store.clone(),
        b.t.state.clock.clone(),
        b.t.state.gateway.get().unwrap().clone(),
        b.t.state.firmware.clone(),
        b.t.state.public_url.clone(),
        b.t.state.metrics.clone(),
        b.t.state.config.scheduler.clone(),
        b.t.state.policies.clone(),
    );
    for _ in 9..18 {
        fresh.advance(&b.t.clock, 37_000).await.unwrap();
        first.push(pushed_total(&app_b, &b.t.admin, rb).await);
    }
    assert_eq!(first, whole);
    // the rate grew several times and the fleet is not used up, so the check has teeth
    assert!(whole[17] > 200 && whole[17] < 600, "{whole:?}");
}
