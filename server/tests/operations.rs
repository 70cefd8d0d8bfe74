//! Whole requirement lines of operating rollouts, each proved in one test through the HTTP
//! API in simulated time, on SQLite and PostgreSQL: the four ways to cancel (O1), status of
//! rollouts, tasks, devices and packages with filtered, paged and CSV lists (O2), and the
//! audit trail of every state change with its cause (O4).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use common::fleet::*;
use common::*;
use ota_server::clock::rfc3339;
use ota_server::dispatch::router::DeviceEventKind;
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

db_tests!(
    cancel_a_rollout_its_strategy_a_packages_device_tasks_and_by_state,
    status_of_rollouts_tasks_devices_and_packages,
    every_state_change_is_recorded_with_its_cause,
    deleting_a_device_or_a_package_leaves_no_rows_behind,
);

async fn get<S, B>(app: &S, key: &str, path: &str) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let r = call(app, Some(key), "GET", path, None).await;
    r.expect(200);
    r.json()
}

/// A rollout's tasks as the task list shows them, in list order.
async fn tasks<S, B>(app: &S, key: &str, rollout: i64) -> Vec<Value>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    get(
        app,
        key,
        &format!("/v1/rollouts/{rollout}/tasks?limit=1000"),
    )
    .await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// The rollout's task of `device`.
async fn task_of<S, B>(app: &S, key: &str, rollout: i64, device: i64) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    tasks(app, key, rollout)
        .await
        .into_iter()
        .find(|t| t["device_id"] == device)
        .unwrap_or_else(|| panic!("no task of device {device} in rollout {rollout}"))
}

/// The state of each task of a rollout, by fleet index of its device (`None`: no task).
async fn states<S, B>(app: &S, key: &str, rollout: i64, f: &Fleet) -> Vec<Option<String>>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let all = tasks(app, key, rollout).await;
    f.devices
        .iter()
        .map(|d| {
            all.iter()
                .find(|t| t["device_id"] == *d)
                .map(|t| t["state"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn some(v: &[&str]) -> Vec<Option<String>> {
    v.iter()
        .map(|s| (!s.is_empty()).then(|| s.to_string()))
        .collect()
}

async fn set_offline(e: &EngineCtx, device: i64) {
    e.t.store
        .raw_connection()
        .execute_unprepared(&format!(
            "UPDATE device SET online = false WHERE id = {device}"
        ))
        .await
        .unwrap();
}

async fn confirm<S, B>(app: &S, key: &str, task_ids: Vec<i64>)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let n = task_ids.len();
    let r = post(
        app,
        key,
        "/v1/tasks/confirm",
        json!({ "task_ids": task_ids }),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["tasks"], n);
}

/// A static rollout (app confirmation on) of a fleet of seven whose tasks stand in every
/// state: d0 succeeded, d1 failed, d2 in_progress, d3 pushed, d4 pending (offline),
/// d5 confirming, d6 waiting.
async fn every_state<S, B>(e: &EngineCtx, app: &S, key: &str, name: &str) -> (Fleet, i64)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let f = fleet_named(e, app, name, 7, true, true).await;
    set_offline(e, f.devices[4]).await;
    let id = create(
        app,
        key,
        f.package,
        json!({"scope": {"kind": "all"}, "app_confirm": true}),
    )
    .await;
    let mut first = vec![];
    for d in &f.devices[..5] {
        first.push(task_of(app, key, id, *d).await["id"].as_i64().unwrap());
    }
    confirm(app, key, first).await;
    advance(app, key, 1).await;
    let d6 = task_of(app, key, id, f.devices[6]).await["id"]
        .as_i64()
        .unwrap();
    confirm(app, key, vec![d6]).await;
    e.engine
        .apply_events(&[
            inform(&f, 0, "2.0.0"),
            progress(&f, 1, -2),
            progress(&f, 2, 30),
        ])
        .await
        .unwrap();
    assert_eq!(
        states(app, key, id, &f).await,
        some(&[
            "succeeded",
            "failed",
            "in_progress",
            "pushed",
            "pending",
            "confirming",
            "waiting"
        ])
    );
    (f, id)
}

// SPEC O1: cancelling a whole rollout cancels every unfinished task (confirming, waiting,
// pending, pushed, in_progress) and leaves finished ones, and nothing is pushed after; cancelling
// a dynamic rollout's strategy stops devices joining while its tasks go on to the end;
// cancelling a package's pending tasks of given devices takes their not-yet-started tasks
// across the package's rollouts and nothing else; cancelling by state takes each of the
// five states, and a cancelled in-progress task sends the device nothing, stays cancelled
// and still records the success the device reports later.
async fn cancel_a_rollout_its_strategy_a_packages_device_tasks_and_by_state(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let pushes = || e.t.state.metrics.pushes.get();

    // the whole rollout
    let (f, id) = every_state(&e, &app, key, "meter").await;
    let sent = pushes();
    let r = post(&app, key, &format!("/v1/rollouts/{id}/cancel"), json!({})).await;
    r.expect(200);
    let r = r.json();
    assert_eq!(r["state"], "cancelled");
    assert_eq!(
        (
            r["counts"]["cancelled"].as_u64(),
            r["counts"]["succeeded"].as_u64(),
            r["counts"]["failed"].as_u64()
        ),
        (Some(5), Some(1), Some(1))
    );
    assert_eq!(
        states(&app, key, id, &f).await,
        some(&[
            "succeeded",
            "failed",
            "cancelled",
            "cancelled",
            "cancelled",
            "cancelled",
            "cancelled"
        ])
    );
    // nothing is pushed after: not on a tick, not to the offline device when it connects
    advance(&app, key, 60).await;
    e.engine
        .apply_events(&[report(&f, 4, DeviceEventKind::Connected)])
        .await
        .unwrap();
    assert_eq!(pushes(), sent);
    assert_eq!(count(&app, key, id, "cancelled").await, 5);
    post(&app, key, &format!("/v1/rollouts/{id}/cancel"), json!({}))
        .await
        .expect(409);

    // only the dynamic strategy
    let g = fleet_named(&e, &app, "valve", 4, true, true).await;
    e.engine
        .apply_events(&[inform(&g, 0, "1.0.0"), inform(&g, 1, "1.0.0")])
        .await
        .unwrap();
    let dy = create(
        &app,
        key,
        g.package,
        json!({"method": "dynamic", "scope": {"kind": "all"}, "source_versions": ["1.0.0"]}),
    )
    .await;
    advance(&app, key, 1).await;
    assert_eq!(count(&app, key, dy, "pushed").await, 2);
    let r = post(
        &app,
        key,
        &format!("/v1/rollouts/{dy}/cancel-strategy"),
        json!({}),
    )
    .await;
    r.expect(200);
    assert_eq!(
        (
            r.json()["strategy_cancelled"].as_bool(),
            r.json()["state"].as_str()
        ),
        (Some(true), Some("running"))
    );
    // a device that comes to match no longer joins
    e.engine
        .apply_events(&[inform(&g, 2, "1.0.0")])
        .await
        .unwrap();
    assert_eq!(rollout(&app, key, dy).await["tasks_created"], 2);
    assert_eq!(states(&app, key, dy, &g).await[2], None);
    // the existing tasks go on to the end, and then the rollout completes
    e.engine
        .apply_events(&[progress(&g, 0, 50), progress(&g, 1, 50)])
        .await
        .unwrap();
    e.engine
        .apply_events(&[inform(&g, 0, "2.0.0"), inform(&g, 1, "2.0.0")])
        .await
        .unwrap();
    assert_eq!(count(&app, key, dy, "succeeded").await, 2);
    advance(&app, key, 1).await;
    assert_eq!(rollout(&app, key, dy).await["state"], "completed");
    // a static rollout has no strategy to cancel
    let h = fleet_named(&e, &app, "pump", 1, true, true).await;
    let st = create(&app, key, h.package, json!({"scope": {"kind": "all"}})).await;
    post(
        &app,
        key,
        &format!("/v1/rollouts/{st}/cancel-strategy"),
        json!({}),
    )
    .await
    .expect(409);

    // a package's pending tasks of given devices, across its rollouts
    let p = fleet_named(&e, &app, "gauge", 6, true, true).await;
    set_offline(&e, p.devices[1]).await;
    let sel = |names: &[&str]| json!({"scope": {"kind": "selected", "device_names": names}});
    let x = create(&app, key, p.package, sel(&["d00000", "d00001", "d00002"])).await;
    let y = create(&app, key, p.package, sel(&["d00003", "d00004"])).await;
    // d5's only task is of another package of the product
    let other = package_with(
        &app,
        key,
        product_of(&app, key, p.package).await,
        json!({"version": "2.1.0", "sign_method": "md5"}),
        &[("fw.bin", 512)],
    )
    .await;
    let z = create(&app, key, other, sel(&["d00005"])).await;
    advance(&app, key, 1).await;
    e.engine.apply_events(&[progress(&p, 2, 10)]).await.unwrap();
    assert_eq!(
        states(&app, key, x, &p).await,
        some(&["pushed", "pending", "in_progress", "", "", ""])
    );
    let by_device = format!("/v1/packages/{}/tasks/cancel", p.package);
    let cancel_for = |ids: Vec<i64>| post(&app, key, &by_device, json!({ "device_ids": ids }));
    let r = cancel_for(vec![]).await;
    r.expect(400);
    assert_eq!(r.json()["field"], "device_ids");
    let d = &p.devices;
    let r = cancel_for(vec![d[0], d[1], d[2], d[3], d[5]]).await;
    r.expect(200);
    assert_eq!(r.json()["tasks"], 3, "d0 pushed, d1 pending, d3 pushed");
    assert_eq!(
        states(&app, key, x, &p).await,
        some(&["cancelled", "cancelled", "in_progress", "", "", ""]),
        "the started task stays"
    );
    assert_eq!(
        states(&app, key, y, &p).await,
        some(&["", "", "", "cancelled", "pushed", ""]),
        "a device not named stays"
    );
    assert_eq!(
        states(&app, key, z, &p).await,
        some(&["", "", "", "", "", "pushed"]),
        "another package's task stays"
    );

    // by state: each of the five on its own
    let (f, id) = every_state(&e, &app, key, "meter").await;
    for bad in [json!([]), json!(["succeeded"]), json!(["done"])] {
        let r = post(
            &app,
            key,
            &format!("/v1/rollouts/{id}/tasks/cancel"),
            json!({ "states": bad }),
        )
        .await;
        r.expect(400);
        assert_eq!(r.json()["field"], "states");
    }
    let sent = pushes();
    for (state, device) in [
        ("confirming", 5),
        ("waiting", 6),
        ("pending", 4),
        ("pushed", 3),
        ("in_progress", 2),
    ] {
        let r = post(
            &app,
            key,
            &format!("/v1/rollouts/{id}/tasks/cancel"),
            json!({ "states": [state] }),
        )
        .await;
        r.expect(200);
        assert_eq!(r.json()["tasks"], 1, "{state}");
        assert_eq!(
            task_of(&app, key, id, f.devices[device]).await["state"],
            "cancelled",
            "{state}"
        );
    }
    assert_eq!(pushes(), sent, "the devices are sent nothing");
    assert_eq!(
        states(&app, key, id, &f).await,
        some(&[
            "succeeded",
            "failed",
            "cancelled",
            "cancelled",
            "cancelled",
            "cancelled",
            "cancelled"
        ])
    );
    // the cancelled in-progress device finishes anyway: its success is recorded, the task
    // stays cancelled
    e.engine
        .apply_events(&[inform(&f, 2, "2.0.0")])
        .await
        .unwrap();
    let t = task_of(&app, key, id, f.devices[2]).await;
    assert_eq!(t["state"], "cancelled");
    let now = ota_server::clock::Clock::now_millis(&e.t.clock);
    assert_eq!(t["late_success_at"], rfc3339(now), "{t}");
    let dev = get(&app, key, &format!("/v1/devices/{}", f.devices[2])).await;
    assert!(dev.to_string().contains("2.0.0"), "{dev}");
    // a task cancelled before it was ever pushed records no late success
    e.engine
        .apply_events(&[inform(&f, 6, "2.0.0")])
        .await
        .unwrap();
    assert!(task_of(&app, key, id, f.devices[6]).await["late_success_at"].is_null());
}

// SPEC O2: a rollout shows its counts in every state, its success rate and its progress; a
// task its state, progress %, retries, timestamps and the device's last message; a device
// all its tasks of every rollout; a package every task of all its rollouts (and none of
// another package's); each list filters by state and pages, and rollout and package lists
// export as CSV (filtered too).
async fn status_of_rollouts_tasks_devices_and_packages(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let key = e.t.admin.as_str();
    let f = fleet(&e, &app, 8, true, true).await;
    let sel = |names: &[&str]| {
        json!({"scope": {"kind": "selected", "device_names": names},
               "retry": {"interval_minutes": 0, "max_retries": 1}})
    };
    let x = create(
        &app,
        key,
        f.package,
        sel(&["d00000", "d00001", "d00002", "d00003", "d00004", "d00005"]),
    )
    .await;
    let y = create(&app, key, f.package, sel(&["d00006", "d00007"])).await;
    advance(&app, key, 1).await;
    // d0 succeeds; d1 fails, is retried at once and fails again; d2 declines; d3 is at 40 %
    e.engine
        .apply_events(&[
            progress(&f, 3, 40),
            progress(&f, 0, 60),
            progress(&f, 1, -2),
            progress(&f, 2, -5),
        ])
        .await
        .unwrap();
    e.engine
        .apply_events(&[inform(&f, 0, "2.0.0")])
        .await
        .unwrap();
    advance(&app, key, 1).await;
    assert_eq!(task_row(&e, x, f.devices[1]).await.0, "pushed", "retried");
    e.engine.apply_events(&[progress(&f, 1, -2)]).await.unwrap();

    // per rollout: every state counted, success rate and progress
    let r = rollout(&app, key, x).await;
    assert_eq!(
        r["counts"],
        json!({"confirming": 0, "waiting": 0, "pending": 0, "pushed": 2, "in_progress": 1,
               "succeeded": 1, "failed": 1, "rejected": 1, "cancelled": 0})
    );
    let rate = r["success_rate"].as_f64().unwrap();
    assert!((rate - 1.0 / 3.0).abs() < 1e-9, "{rate}");
    assert_eq!(r["progress"], 0.5);
    let ry = rollout(&app, key, y).await;
    assert!(ry.get("success_rate").is_none(), "none finished yet: {ry}");
    assert_eq!(ry["progress"], 0.0);

    // per task: state, progress, retries, timestamps, the device's last message
    let t0 = rfc3339(T0);
    let t1 = rfc3339(T0 + 1_000);
    let t2 = rfc3339(T0 + 2_000);
    let t = task_of(&app, key, x, f.devices[3]).await;
    assert_eq!(
        (
            &t["state"],
            &t["progress"],
            &t["retries"],
            &t["last_message"]
        ),
        (
            &json!("in_progress"),
            &json!(40),
            &json!(0),
            &json!("step 40")
        )
    );
    assert_eq!(
        (&t["created_at"], &t["started_at"], &t["updated_at"]),
        (&json!(t0), &json!(t1), &json!(t1))
    );
    assert!(t.get("finished_at").is_none(), "{t}");
    let t = task_of(&app, key, x, f.devices[1]).await;
    assert_eq!(
        (
            &t["state"],
            &t["retries"],
            &t["failure_reason"],
            &t["last_message"],
            &t["finished_at"]
        ),
        (
            &json!("failed"),
            &json!(1),
            &json!("download_failed"),
            &json!("step -2"),
            &json!(t2)
        )
    );
    let t = task_of(&app, key, x, f.devices[0]).await;
    assert_eq!(
        (&t["state"], &t["progress"], &t["finished_at"]),
        (&json!("succeeded"), &json!(100), &json!(t1))
    );
    let t = task_of(&app, key, x, f.devices[2]).await;
    assert_eq!(
        (&t["state"], &t["failure_reason"]),
        (&json!("rejected"), &json!("declined"))
    );

    // a rollout's tasks filtered by state, and paged
    let page = |path: String| {
        let app = &app;
        async move { get(app, key, &path).await }
    };
    let names = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["device_name"].as_str().unwrap().to_owned())
            .collect()
    };
    let p = page(format!("/v1/rollouts/{x}/tasks?state=pushed")).await;
    let mut pushed = names(&p);
    pushed.sort();
    assert_eq!(pushed, ["d00004", "d00005"]);
    let bad = call(
        &app,
        Some(key),
        "GET",
        &format!("/v1/rollouts/{x}/tasks?state=done"),
        None,
    )
    .await;
    bad.expect(400);
    assert_eq!(bad.json()["field"], "state");
    let mut seen = vec![];
    let mut path = format!("/v1/rollouts/{x}/tasks?limit=4");
    loop {
        let p = page(path.clone()).await;
        assert!(p["items"].as_array().unwrap().len() <= 4);
        seen.extend(names(&p));
        match p["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/rollouts/{x}/tasks?limit=4&cursor={c}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        ["d00000", "d00001", "d00002", "d00003", "d00004", "d00005"]
    );

    // per device: all its tasks, of every rollout (d0 is also in a rollout of another package)
    let other = package_with(
        &app,
        key,
        product_of(&app, key, f.package).await,
        json!({"version": "2.1.0", "sign_method": "md5"}),
        &[("fw.bin", 512)],
    )
    .await;
    let z = create(
        &app,
        key,
        other,
        json!({"scope": {"kind": "selected", "device_names": ["d00000"]}}),
    )
    .await;
    let dev = page(format!("/v1/devices/{}/tasks", f.devices[0])).await;
    let rollouts: Vec<i64> = dev["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rollout_id"].as_i64().unwrap())
        .collect();
    assert_eq!(rollouts, [x, z]);
    let dev = page(format!("/v1/devices/{}/tasks?state=waiting", f.devices[0])).await;
    assert_eq!(dev["items"].as_array().unwrap().len(), 1);
    assert_eq!(dev["items"][0]["rollout_id"], z);
    let dev = page(format!("/v1/devices/{}/tasks?limit=1", f.devices[0])).await;
    assert_eq!(dev["items"][0]["rollout_id"], x);
    assert!(dev["next_cursor"].is_string());

    // per package: every task of all its rollouts, none of the other package's
    let pkg = page(format!("/v1/packages/{}/tasks", f.package)).await;
    let mut all = names(&pkg);
    all.sort();
    assert_eq!(
        all,
        ["d00000", "d00001", "d00002", "d00003", "d00004", "d00005", "d00006", "d00007"]
    );
    let pkg = page(format!("/v1/packages/{}/tasks?state=pushed", f.package)).await;
    let mut by_rollout: Vec<(i64, String)> = pkg["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["rollout_id"].as_i64().unwrap(),
                t["device_name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_rollout.sort();
    assert_eq!(
        by_rollout,
        [
            (x, "d00004".to_owned()),
            (x, "d00005".to_owned()),
            (y, "d00006".to_owned()),
            (y, "d00007".to_owned())
        ]
    );
    let mut seen = 0;
    let mut path = format!("/v1/packages/{}/tasks?limit=3", f.package);
    let mut pages = 0;
    loop {
        let p = page(path.clone()).await;
        pages += 1;
        seen += p["items"].as_array().unwrap().len();
        match p["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/packages/{}/tasks?limit=3&cursor={c}", f.package),
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, 8));

    // CSV exports, whole and filtered
    let csv = |path: String| {
        let app = &app;
        async move {
            let r = call(app, Some(key), "GET", &path, None).await;
            r.expect(200);
            assert!(
                r.headers
                    .get("content-type")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("text/csv"),
                "{path}"
            );
            r.text().lines().map(str::to_owned).collect::<Vec<_>>()
        }
    };
    let lines = csv(format!("/v1/rollouts/{x}/tasks.csv")).await;
    assert_eq!(
        lines[0],
        "task_id,rollout_id,device_name,state,progress,retries,failure_reason,created_at,updated_at,finished_at"
    );
    assert_eq!(lines.len(), 7);
    let lines = csv(format!("/v1/rollouts/{x}/tasks.csv?state=failed")).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].contains(&format!(
            ",{x},d00001,failed,0,1,download_failed,{t0},{t2},{t2}"
        )),
        "{lines:?}"
    );
    let lines = csv(format!("/v1/packages/{}/tasks.csv", f.package)).await;
    assert_eq!(lines.len(), 9);
    let lines = csv(format!("/v1/packages/{}/tasks.csv?state=pushed", f.package)).await;
    assert_eq!(lines.len(), 5);
    assert!(lines[1..].iter().all(|l| l.contains(",pushed,")));

    // the rollouts themselves, filtered by state and paged
    post(&app, key, &format!("/v1/rollouts/{y}/cancel"), json!({}))
        .await
        .expect(200);
    let running = page("/v1/rollouts?state=running&limit=1".to_owned()).await;
    assert_eq!(running["items"][0]["id"], x);
    let c = running["next_cursor"].as_str().unwrap().to_owned();
    let next = page(format!("/v1/rollouts?state=running&limit=1&cursor={c}")).await;
    assert_eq!(next["items"][0]["id"], z);
    assert!(next.get("next_cursor").is_none());
    let cancelled = page(format!(
        "/v1/rollouts?state=cancelled&package_id={}",
        f.package
    ))
    .await;
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["items"][0]["id"], y);
}

/// A rollout's own events, or one task's, oldest first.
async fn events<S, B>(app: &S, key: &str, rollout: i64, task: Option<i64>) -> Vec<Value>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let q = task.map(|t| format!("&task_id={t}")).unwrap_or_default();
    get(
        app,
        key,
        &format!("/v1/rollouts/{rollout}/events?limit=1000{q}"),
    )
    .await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// (event, from, to, cause, actor) of each event.
fn trail(events: &[Value]) -> Vec<(String, String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    events
        .iter()
        .map(|e| {
            (
                s(&e["event"]),
                s(&e["from_state"]),
                s(&e["to_state"]),
                s(&e["cause"]),
                s(&e["actor"]),
            )
        })
        .collect()
}

fn row(
    event: &str,
    from: &str,
    to: &str,
    cause: &str,
    actor: &str,
) -> (String, String, String, String, String) {
    (
        event.into(),
        from.into(),
        to.into(),
        cause.into(),
        actor.into(),
    )
}

// SPEC O4: every change of a rollout's or a task's state is recorded with its cause and read
// back: API calls with the key that made them (create, start, pause, resume, cancel tasks by
// state, cancel), device messages (progress, failure, success, a device joining a dynamic
// rollout), timers (the scheduled start, a retry, a timeout, the completion) and policy
// decisions (the engine releasing tasks, an abort rule pausing the rollout).
async fn every_state_change_is_recorded_with_its_cause(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let admin = e.t.admin.as_str();
    let r = post(
        &app,
        admin,
        "/v1/keys",
        json!({"name": "ops", "role": "operator"}),
    )
    .await;
    r.expect(201);
    let ops = r.json()["secret"].as_str().unwrap().to_owned();
    let ops_who = format!("key:{}", r.json()["id"]);
    let keys = get(&app, admin, "/v1/keys").await;
    let admin_id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "admin")
        .unwrap()["id"]
        .clone();
    let admin_who = format!("key:{admin_id}");
    let ops = ops.as_str();

    // a static rollout made and started by the operator, to start a minute on
    let f = fleet(&e, &app, 3, true, true).await;
    let id = create(
        &app,
        ops,
        f.package,
        json!({"scope": {"kind": "all"}, "start_on_creation": false,
               "schedule": {"start_at": rfc3339(T0 + 60_000)},
               "timeout_minutes": 1, "retry": {"interval_minutes": 0, "max_retries": 1}}),
    )
    .await;
    assert_eq!(rollout(&app, ops, id).await["state"], "draft");
    post(&app, ops, &format!("/v1/rollouts/{id}/start"), json!({}))
        .await
        .expect(200);
    // the start comes: the engine begins it, and releases its tasks on the next tick
    advance(&app, admin, 60).await;
    assert_eq!(rollout(&app, admin, id).await["state"], "running");
    advance(&app, admin, 1).await;
    assert_eq!(count(&app, admin, id, "pushed").await, 3);
    post(&app, ops, &format!("/v1/rollouts/{id}/pause"), json!({}))
        .await
        .expect(200);
    post(&app, ops, &format!("/v1/rollouts/{id}/resume"), json!({}))
        .await
        .expect(200);
    // d0 succeeds; d1 fails, is retried and succeeds; d2 starts and times out
    e.engine
        .apply_events(&[
            progress(&f, 0, 10),
            progress(&f, 1, -2),
            progress(&f, 2, 10),
        ])
        .await
        .unwrap();
    e.engine
        .apply_events(&[inform(&f, 0, "2.0.0")])
        .await
        .unwrap();
    advance(&app, admin, 1).await;
    e.engine.apply_events(&[progress(&f, 1, 10)]).await.unwrap();
    e.engine
        .apply_events(&[inform(&f, 1, "2.0.0")])
        .await
        .unwrap();
    advance(&app, admin, 60).await;
    assert_eq!(
        task_row(&e, id, f.devices[2]).await.3.as_deref(),
        Some("timeout")
    );
    advance(&app, admin, 1).await;
    assert_eq!(rollout(&app, admin, id).await["state"], "completed");

    // the rollout's own trail
    let ev = events(&app, admin, id, None).await;
    assert_eq!(
        trail(&ev),
        [
            row("created", "", "draft", "api", &ops_who),
            row("start", "draft", "scheduled", "api", &ops_who),
            row("begin", "scheduled", "running", "timer", ""),
            row("pause", "running", "paused", "api", &ops_who),
            row("resume", "paused", "running", "api", &ops_who),
            row("finish", "running", "completed", "timer", ""),
        ]
    );
    assert_eq!(ev[0]["tasks"], 3);
    assert_eq!(ev[0]["at"], rfc3339(T0));
    assert_eq!(ev[2]["at"], rfc3339(T0 + 60_000));
    // each task's
    let task = |i: usize| {
        let app = &app;
        let f = &f;
        async move {
            let t = task_of(app, admin, id, f.devices[i]).await["id"]
                .as_i64()
                .unwrap();
            let ev = events(app, admin, id, Some(t)).await;
            assert!(ev
                .iter()
                .all(|e| e["task_id"] == t && e["event"] == "task_state"));
            ev
        }
    };
    let ev = task(0).await;
    assert_eq!(
        trail(&ev),
        [
            row("task_state", "waiting", "pushed", "policy", ""),
            row("task_state", "pushed", "in_progress", "device", ""),
            row("task_state", "in_progress", "succeeded", "device", ""),
        ]
    );
    assert_eq!(ev[0]["at"], rfc3339(T0 + 61_000));
    assert!(ev[1]["detail"].as_str().unwrap().contains("10%"), "{ev:?}");
    assert!(
        ev[2]["detail"].as_str().unwrap().contains("2.0.0"),
        "{ev:?}"
    );
    let ev = task(1).await;
    assert_eq!(
        trail(&ev),
        [
            row("task_state", "waiting", "pushed", "policy", ""),
            row("task_state", "pushed", "failed", "device", ""),
            row("task_state", "failed", "waiting", "timer", ""),
            row("task_state", "waiting", "pushed", "policy", ""),
            row("task_state", "pushed", "in_progress", "device", ""),
            row("task_state", "in_progress", "succeeded", "device", ""),
        ]
    );
    assert!(ev[1]["detail"]
        .as_str()
        .unwrap()
        .contains("download_failed"));
    assert!(ev[2]["detail"].as_str().unwrap().contains("retry"));
    let ev = task(2).await;
    assert_eq!(
        trail(&ev),
        [
            row("task_state", "waiting", "pushed", "policy", ""),
            row("task_state", "pushed", "in_progress", "device", ""),
            row("task_state", "in_progress", "failed", "timer", ""),
        ]
    );
    assert!(
        ev[2]["detail"].as_str().unwrap().contains("timeout"),
        "{ev:?}"
    );

    // a dynamic rollout made by the admin key: a device joins, an abort rule pauses it,
    // tasks are cancelled by state, then the whole rollout
    let g = fleet_named(&e, &app, "valve", 3, true, true).await;
    e.engine
        .apply_events(&[inform(&g, 0, "1.0.0"), inform(&g, 1, "1.0.0")])
        .await
        .unwrap();
    let dy = create(
        &app,
        admin,
        g.package,
        json!({"method": "dynamic", "scope": {"kind": "all"}, "source_versions": ["1.0.0"],
               "abort_rules": [{"kind": "failed", "threshold_percent": 50.0,
                                "min_finished": 1, "action": "pause"}]}),
    )
    .await;
    e.engine
        .apply_events(&[inform(&g, 2, "1.0.0")])
        .await
        .unwrap();
    advance(&app, admin, 1).await;
    assert_eq!(count(&app, admin, dy, "pushed").await, 3);
    e.engine.apply_events(&[progress(&g, 0, -2)]).await.unwrap();
    assert_eq!(rollout(&app, admin, dy).await["state"], "paused");
    let r = post(
        &app,
        admin,
        &format!("/v1/rollouts/{dy}/tasks/cancel"),
        json!({"states": ["pushed"]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["tasks"], 2);
    post(&app, admin, &format!("/v1/rollouts/{dy}/cancel"), json!({}))
        .await
        .expect(200);
    let ev = events(&app, admin, dy, None).await;
    assert_eq!(
        trail(&ev),
        [
            row("created", "", "running", "api", &admin_who),
            row("devices_joined", "running", "running", "device", ""),
            row("pause", "running", "paused", "policy", ""),
            row("tasks_cancelled", "paused", "paused", "api", &admin_who),
            row("cancel", "paused", "cancelled", "api", &admin_who),
        ]
    );
    assert_eq!(
        (ev[0]["tasks"].as_u64(), ev[1]["tasks"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(
        ev[2]["detail"]
            .as_str()
            .unwrap()
            .contains("1 of 1 finished tasks failed"),
        "{ev:?}"
    );
    assert_eq!(ev[3]["tasks"], 2);
    assert_eq!(ev[4]["tasks"], 0, "nothing left open: {ev:?}");
    let t = task_of(&app, admin, dy, g.devices[1]).await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        trail(&events(&app, admin, dy, Some(t)).await),
        [
            row("task_state", "waiting", "pushed", "policy", ""),
            row("task_state", "pushed", "cancelled", "api", &admin_who),
        ]
    );
}

/// Rows of `table` matching `cond`, read directly.
async fn rows_where(e: &EngineCtx, table: &str, cond: &str) -> i64 {
    let db = e.t.store.raw_connection();
    let r = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table} WHERE {cond}"),
        ))
        .await
        .unwrap()
        .unwrap();
    r.try_get("", "n").unwrap()
}

// PostgreSQL keeps no foreign keys on tasks, their events, list members and version reports
// (migration `hot_keys`): the deletes that cascaded delete them explicitly. On both
// databases, a deleted device takes its tasks, their audit rows, its list memberships and
// its version history with it, and its rollout's status still reads; a deleted package takes
// its finished rollouts' tasks and events, and leaves other packages' rows alone.
async fn deleting_a_device_or_a_package_leaves_no_rows_behind(db: Db) {
    let e = EngineCtx::new(db).await;
    let app = e.t.service().await;
    let admin = e.t.admin.as_str();
    let f = fleet(&e, &app, 3, true, true).await;
    let product = product_of(&app, admin, f.package).await;
    let r = call_raw(
        &app,
        Some(admin),
        "POST",
        &format!("/v1/products/{product}/device-lists"),
        "text/csv",
        "deviceName\nd00000\nd00001\nd00002\n",
    )
    .await;
    r.expect(201);
    let list = r.json()["id"].as_i64().unwrap();
    let id = create(
        &app,
        admin,
        f.package,
        json!({"scope": {"kind": "selected", "device_list_id": list}}),
    )
    .await;
    advance(&app, admin, 1).await;
    assert_eq!(count(&app, admin, id, "pushed").await, 3);
    e.engine
        .apply_events(&[progress(&f, 0, 10), progress(&f, 1, 10)])
        .await
        .unwrap();
    e.engine
        .apply_events(&[inform(&f, 0, "2.0.0"), inform(&f, 1, "2.0.0")])
        .await
        .unwrap();
    let gone = f.devices[0];
    let of_gone = format!("device_id = {gone}");
    let events_of_gone = format!("task_id IN (SELECT id FROM task WHERE device_id = {gone})");
    assert_eq!(rows_where(&e, "task", &of_gone).await, 1);
    assert!(rows_where(&e, "task_event", &events_of_gone).await >= 3);
    assert_eq!(rows_where(&e, "device_list_member", &of_gone).await, 1);
    assert_eq!(rows_where(&e, "version_report", &of_gone).await, 1);

    call(
        &app,
        Some(admin),
        "DELETE",
        &format!("/v1/devices/{gone}"),
        None,
    )
    .await
    .expect(204);
    call(
        &app,
        Some(admin),
        "DELETE",
        &format!("/v1/devices/{gone}"),
        None,
    )
    .await
    .expect(404);
    for table in ["task", "device_list_member", "version_report"] {
        assert_eq!(rows_where(&e, table, &of_gone).await, 0, "{table}");
    }
    let orphans = "task_id NOT IN (SELECT id FROM task)";
    assert_eq!(rows_where(&e, "task_event", orphans).await, 0);
    // the others' rows stay, and the rollout reads without the device
    let d1 = f.devices[1];
    assert_eq!(
        rows_where(&e, "task", &format!("device_id = {d1}")).await,
        1
    );
    assert_eq!(
        rows_where(&e, "version_report", &format!("device_id = {d1}")).await,
        1
    );
    assert_eq!(tasks(&app, admin, id).await.len(), 2);
    assert_eq!(count(&app, admin, id, "succeeded").await, 1);

    // a second package with its own (unfinished) rollout over the remaining devices
    let other = package_with(
        &app,
        admin,
        product,
        json!({"version": "3.0.0"}),
        &[("fw.bin", 1024)],
    )
    .await;
    let kept = create(&app, admin, other, json!({"scope": {"kind": "all"}})).await;
    let kept_tasks = rows_where(&e, "task", &format!("rollout_id = {kept}")).await;
    assert!(kept_tasks > 0);
    // the first rollout is finished by cancelling it; then its package may go
    post(&app, admin, &format!("/v1/rollouts/{id}/cancel"), json!({}))
        .await
        .expect(200);
    call(
        &app,
        Some(admin),
        "DELETE",
        &format!("/v1/packages/{}", f.package),
        None,
    )
    .await
    .expect(204);
    let of_rollout = format!("rollout_id = {id}");
    assert_eq!(rows_where(&e, "task", &of_rollout).await, 0);
    assert_eq!(rows_where(&e, "task_event", &of_rollout).await, 0);
    assert_eq!(rows_where(&e, "task_event", orphans).await, 0);
    assert_eq!(
        rows_where(&e, "task", &format!("rollout_id = {kept}")).await,
        kept_tasks
    );
}
