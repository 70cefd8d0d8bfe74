//! Campaign projection (G7) through the HTTP API on SQLite and PostgreSQL: the devices a
//! rollout would take, exactly as creation chooses them and paged, and its push timeline
//! under schedule, window, waves, rate and concurrency, checked against the engine itself
//! in simulated time. Nothing is created.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::fleet::*;
use common::*;
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

db_tests!(
    the_projection_is_what_the_engine_then_does,
    the_projection_follows_windows_waves_and_gates,
);

fn at_minute(p: &Value, minute: i64) -> u64 {
    p["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .take_while(|pt| pt["minute"].as_i64().unwrap() <= minute)
        .last()
        .map_or(0, |pt| pt["pushed"].as_u64().unwrap())
}

async fn tasks_in_db(e: &EngineCtx) -> i64 {
    let db = e.t.store.raw_connection();
    db.query_one(sea_orm::Statement::from_string(
        db.get_database_backend(),
        "SELECT COUNT(*) AS n FROM task".to_owned(),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get::<i64>("", "n")
    .unwrap()
}

// G7 under a rate (the whole line, with windows and waves, is the next test): before a rollout starts, the server shows how many devices it takes (and which,
// paged) and when each would be pushed; for the seed's worked example the projected
// timeline is, minute by minute, what the engine then pushes.
async fn the_projection_is_what_the_engine_then_does(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 20_000, true, true).await;
    let body = json!({"scope": {"kind": "all"}, "rate": {"kind": "variable", "base": 50,
        "factor": 2.0, "max": 10000, "threshold": 1000, "count_on": "pushed"}});
    let path = format!("/v1/packages/{}/rollouts/projection", f.package);
    let r = post(
        &app,
        key,
        &path,
        json!({"rollout": body, "step_minutes": 1}),
    )
    .await;
    r.expect(200);
    let p = r.json();
    assert_eq!(p["devices"], 20_000);
    assert_eq!(p["stops"], "done");
    assert_eq!(p["pushed"], 20_000);
    let names: Vec<&str> = p["device_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 100);
    assert_eq!(names[0], "d00000");
    assert_eq!(names[99], "d00099");
    // when each would be pushed: 50 in the first minute, the 51st in the second
    let page = p["devices_page"].as_array().unwrap();
    assert_eq!(page[0]["name"], "d00000");
    assert_eq!(page[49]["pushed_at"], p["timeline"][0]["at"]);
    assert_eq!(page[50]["pushed_at"], p["timeline"][1]["at"]);
    assert_eq!(at_minute(&p, 20), 1_000);
    assert_eq!(at_minute(&p, 30), 2_000);
    let r = post(
        &app,
        key,
        &path,
        json!({"rollout": body, "offset": 19_990, "limit": 1000}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["device_names"].as_array().unwrap().len(), 10);
    let last = &r.json()["devices_page"][9];
    assert_eq!(last["name"], "d19999");
    assert_eq!(last["pushed_at"], p["last_push_at"]);
    // bad input names its field; nothing was created by any of it
    for (bad, field) in [
        (
            json!({"rollout": body, "install_minutes": 1441}),
            "install_minutes",
        ),
        (json!({"rollout": body, "limit": 1001}), "limit"),
        (json!({"rollout": body, "step_minutes": 0}), "step_minutes"),
        (
            json!({"rollout": {"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 5}}}),
            "rate.per_minute",
        ),
    ] {
        let r = post(&app, key, &path, bad).await;
        r.expect(400);
        assert_eq!(r.json()["field"], field);
    }
    assert_eq!(tasks_in_db(&e).await, 0);
    let r = call(&app, Some(key), "GET", "/v1/rollouts", None).await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 0);

    let id = create(&app, key, f.package, body).await;
    for minute in 1..=40 {
        advance(&app, key, 60).await;
        assert_eq!(
            pushed_total(&app, key, id).await,
            at_minute(&p, minute),
            "minute {minute}"
        );
    }
}

// SPEC G7: how many devices a rollout takes and when each would be pushed under its rate,
// maintenance window (no pushes until it opens) and waves (a wave's own rate; it stops at a
// manual gate); concurrency with an assumed install time spaces the pushes. It is the
// projection engine the W5 dry run runs with a rollout's policies (tests/policies.rs).
async fn the_projection_follows_windows_waves_and_gates(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 1_000, true, true).await;
    let path = format!("/v1/packages/{}/rollouts/projection", f.package);
    // the manual clock starts at 2026-11-18T11:06:40Z: the window opens at 13:00 UTC
    let r = post(
        &app,
        key,
        &path,
        json!({"rollout": {"scope": {"kind": "all"}, "rate": {"kind": "constant", "per_minute": 100},
            "window": {"cron": "0 13 * * *", "duration_minutes": 5, "time_zone": "UTC"},
            "waves": [{"percent": 10}, {"percent": 20, "advance": "manual",
                       "rate": {"kind": "constant", "per_minute": 50}}, {}]}}),
    )
    .await;
    r.expect(200);
    let p = r.json();
    assert_eq!(
        p["waves"],
        json!([{"wave": 1, "tasks": 100}, {"wave": 2, "tasks": 200}, {"wave": 3, "tasks": 700}])
    );
    // minutes count from the start (11:06:40): the first step that touches the window has
    // 40 s of it, at 100 a minute
    let first = &p["timeline"][0];
    assert_eq!(first["at"], "2026-11-18T13:00:40.000Z");
    assert_eq!(first["pushed"], 66);
    // every push inside a window (the last step ends 40 s after one closes)
    for pt in p["timeline"].as_array().unwrap() {
        let at = pt["at"].as_str().unwrap();
        assert!(("13:00:00".."13:05:41").contains(&&at[11..19]), "{pt}");
    }
    // wave 1 (100) and wave 2 (200, at its own 50 a minute) need a second day's window
    assert_eq!(p["pushed"], 300);
    assert_eq!(p["last_push_at"], "2026-11-19T13:00:40.000Z");
    assert_eq!(p["stops"], "manual_gate");
    assert_eq!(p["waiting_after_wave"], 2);
    // each device, in release order: wave 1's hundred in the first window's first two steps
    assert_eq!(p["devices"], 1_000);
    let page = p["devices_page"].as_array().unwrap();
    assert_eq!(page.len(), 100);
    assert_eq!(page[0]["pushed_at"], "2026-11-18T13:00:40.000Z");
    assert_eq!(page[65]["pushed_at"], "2026-11-18T13:00:40.000Z");
    assert_eq!(page[66]["pushed_at"], "2026-11-18T13:01:40.000Z");
    assert_eq!(page[99]["pushed_at"], "2026-11-18T13:01:40.000Z");

    let r = post(
        &app,
        key,
        &path,
        json!({"rollout": {"scope": {"kind": "all"}, "max_concurrency": 100},
               "install_minutes": 10}),
    )
    .await;
    r.expect(200);
    let p = r.json();
    assert_eq!(p["pushed"], 1_000);
    assert_eq!(at_minute(&p, 1), 100);
    assert_eq!(at_minute(&p, 10), 100);
    assert_eq!(at_minute(&p, 11), 200);
    assert_eq!(p["last_push_at"], "2026-11-18T12:37:40.000Z");
    assert_eq!(tasks_in_db(&e).await, 0);
}
