//! What the rollout engine reads and writes (SPEC R1–R9, G2; DESIGN §3–§5): the rollouts it
//! runs with their persisted rate state, the next tasks to release, due timers, and device
//! reports applied in batches. Every task change is a guarded update (`… WHERE state IN
//! (…)`) that writes its audit row in the same statement or transaction, so a late or
//! duplicated report, or a second process, never moves a task backwards. Nothing here holds
//! a row per device in memory beyond one batch.

use super::entity::{package, rollout, task};
use super::rollouts::{in_list, placeholders, rollout_event, stmt, to_rollout, Actor, Rollout};
use super::{Store, StoreResult, MAX_BIND_PARAMS};
use crate::clock::Millis;
use crate::domain::*;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, QuerySelect, Value,
};
use std::collections::BTreeMap;

/// A rollout the engine works on, with the state it persists between ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveRollout {
    pub rollout: Rollout,
    /// Rate state; `None` without a rate limit.
    pub rate: Option<RateState>,
    pub succeeded_total: u64,
    /// G3: successes in the current wave.
    pub wave_succeeded: u64,
    /// The logical time accounted for so far (`None`: not yet ticked).
    pub ticked_at: Option<Millis>,
    pub paused_at: Option<Millis>,
    /// W2: what the rate policy's last tick returned (empty before its first).
    pub policy_state: Vec<u8>,
    /// Tasks released so far (by the rate policy, or the built-in rate).
    pub released_total: u64,
    /// W3: failed policy calls in a row.
    pub policy_failures: u32,
}

/// A task to push now, with what encoding the push needs.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct PushTarget {
    pub task_id: i64,
    pub rollout_id: i64,
    pub device_id: i64,
    pub device_name: String,
    pub product_key: String,
    pub protocol: String,
    pub online: bool,
}

/// Which waiting tasks a release takes.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'a> {
    /// The first `n` in release (task id) order.
    First(u64),
    /// These (an approval policy approved them); any no longer waiting are skipped.
    Ids(&'a [i64]),
}

/// A device's report, as the task state machine reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskReport {
    /// The device runs `version` of `module`: success when it is a task's target.
    Version {
        module: ModuleName,
        version: Version,
    },
    /// Progress 0..100; the first starts the device timeout (R9).
    Progress {
        module: Option<ModuleName>,
        percent: i32,
        desc: String,
    },
    /// A negative step: a failure kind, or the device declined (`rejected`).
    Failure {
        module: Option<ModuleName>,
        step: i32,
        desc: String,
    },
}

/// What a batch of reports changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportOutcome {
    /// Tasks that succeeded, by rollout.
    pub succeeded: BTreeMap<i64, u64>,
    /// Tasks that moved at all.
    pub moved: u64,
}

/// The failure reason a negative step stands for (device protocols §1 and §2 step tables).
pub fn failure_reason(step: i32) -> &'static str {
    match step {
        -1 => "upgrade_failed",
        -2 => "download_failed",
        -3 => "verify_failed",
        -4 => "flash_failed",
        -5 => "declined",
        _ => "device_failure",
    }
}

/// A task one transition moved.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub(super) struct Moved {
    pub id: i64,
    pub rollout_id: i64,
    pub device_id: i64,
    /// G3: its wave (0: none).
    pub wave: i32,
    /// Its deadline after the move (a failure with a retry due is not finished).
    pub due_at: Option<i64>,
}

/// One guarded transition over the tasks `filter` selects, with its audit rows, returning
/// the tasks moved. `set` adds SQL assignments (columns
/// qualified `task.`), with `set_vals` for their `?`; audit rows are written only where the
/// state changes (a second progress report is not a state change).
#[allow(clippy::too_many_arguments)]
pub(super) async fn transition(
    txn: &DatabaseTransaction,
    filter: &str,
    filter_vals: Vec<Value>,
    to: TaskState,
    set: &str,
    set_vals: Vec<Value>,
    actor: &Actor,
    detail: &str,
    now: Millis,
) -> StoreResult<Vec<Moved>> {
    let backend = txn.get_database_backend();
    let fin = if to.is_terminal() {
        format!(", finished_at = {now}")
    } else {
        String::new()
    };
    let ev = |v: &mut Vec<Value>| {
        v.push(now.into());
        v.push(actor.cause.as_str().into());
        v.push(actor.who.clone().into());
        v.push(detail.into());
    };
    let to = to.as_str();
    let rows = match backend {
        DbBackend::Postgres => {
            let sql = format!(
                "WITH old AS (SELECT id, state FROM task WHERE {filter} FOR UPDATE), \
                 moved AS (UPDATE task SET state = '{to}', updated_at = {now}{fin}{set} \
                   FROM old WHERE task.id = old.id \
                   RETURNING task.id, task.rollout_id, task.device_id, CAST(task.wave AS INTEGER) AS wave, \
                   task.due_at, old.state AS from_state), \
                 ev AS (INSERT INTO task_event (task_id, rollout_id, at, from_state, to_state, cause, actor, detail) \
                   SELECT id, rollout_id, ?, from_state, '{to}', ?, ?, ? FROM moved WHERE from_state <> '{to}') \
                 SELECT id, rollout_id, device_id, wave, due_at FROM moved"
            );
            let mut v = filter_vals;
            v.extend(set_vals);
            ev(&mut v);
            Moved::find_by_statement(stmt(backend, &sql, v))
                .all(txn)
                .await?
        }
        _ => {
            let ins = format!(
                "INSERT INTO task_event (task_id, rollout_id, at, from_state, to_state, cause, actor, detail) \
                 SELECT id, rollout_id, ?, state, '{to}', ?, ?, ? FROM task WHERE ({filter}) AND state <> '{to}'"
            );
            let mut v = Vec::new();
            ev(&mut v);
            v.extend(filter_vals.clone());
            txn.execute(stmt(backend, &ins, v)).await?;
            let upd = format!(
                "UPDATE task SET state = '{to}', updated_at = {now}{fin}{set} WHERE {filter} \
                 RETURNING id, rollout_id, device_id, CAST(wave AS INTEGER) AS wave, due_at"
            );
            let mut v = set_vals;
            v.extend(filter_vals);
            Moved::find_by_statement(stmt(backend, &upd, v))
                .all(txn)
                .await?
        }
    };
    Ok(rows)
}

/// The rows (device_id, module, version, at) as a query for `WITH v(…) AS (…)`. SQLite
/// gets `VALUES (?, ?, ?, ?), …`; PostgreSQL gets four text parameters unnested in
/// parallel (see [`ids_in`] for why; modules and versions hold no comma).
fn version_values<'a>(
    backend: DbBackend,
    rows: &[(i64, &'a str, &'a str, Millis)],
) -> (String, Vec<Value>) {
    if backend == DbBackend::Postgres {
        return (
            "SELECT * FROM unnest(CAST(string_to_array(?, ',') AS BIGINT[]), \
             string_to_array(?, ','), string_to_array(?, ','), \
             CAST(string_to_array(?, ',') AS BIGINT[]))"
                .to_owned(),
            vec![
                joined(rows.iter().map(|r| r.0)).into(),
                joined(rows.iter().map(|r| r.1)).into(),
                joined(rows.iter().map(|r| r.2)).into(),
                joined(rows.iter().map(|r| r.3)).into(),
            ],
        );
    }
    let mut sql = String::from("VALUES ");
    let mut vals = Vec::new();
    for (i, (d, m, v, at)) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?)");
        vals.extend([Value::from(*d), (*m).into(), (*v).into(), Value::from(*at)]);
    }
    (sql, vals)
}

/// What goes inside `column IN (…)` for `ids`, with its parameters. On PostgreSQL the ids
/// travel as one text parameter that the server splits: the statement's text is then the
/// same for every batch size, so it is parsed and planned once per connection instead of
/// once per batch, and binding thousands of parameters (which cost more than the update
/// they fed) goes away. SQLite binds parameters in-process for nothing.
fn ids_in(backend: DbBackend, ids: &[i64]) -> (String, Vec<Value>) {
    if backend == DbBackend::Postgres {
        return (
            "SELECT unnest(CAST(string_to_array(?, ',') AS BIGINT[]))".to_owned(),
            vec![joined(ids.iter()).into()],
        );
    }
    (
        placeholders(ids.len()),
        ids.iter().map(|i| (*i).into()).collect(),
    )
}

/// Items joined by commas (none of the values so passed can hold one).
fn joined<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let mut out = String::new();
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item.to_string());
    }
    out
}

fn timer() -> Actor {
    Actor {
        cause: Cause::Timer,
        who: None,
    }
}

fn device_actor() -> Actor {
    Actor {
        cause: Cause::Device,
        who: None,
    }
}

/// The rate state a rollout row holds, once the engine has saved one.
pub(super) fn saved_rate(m: &rollout::Model) -> Option<RateState> {
    m.rate_per_minute.map(|per_minute| RateState {
        per_minute: u32::try_from(per_minute).unwrap_or(0),
        next_threshold: m.rate_next_threshold.and_then(|n| u64::try_from(n).ok()),
        bucket: m.rate_bucket,
        released: u64::try_from(m.released_total).unwrap_or(0),
    })
}

fn to_active(m: rollout::Model) -> ActiveRollout {
    let succeeded_total = u64::try_from(m.succeeded_total).unwrap_or(0);
    let wave_succeeded = u64::try_from(m.wave_succeeded).unwrap_or(0);
    let ticked_at = m.ticked_at;
    let paused_at = m.paused_at;
    let policy_state = m.rate_policy_state.clone().unwrap_or_default();
    let released_total = u64::try_from(m.released_total).unwrap_or(0);
    let policy_failures = u32::try_from(m.policy_failures).unwrap_or(0);
    let saved = saved_rate(&m);
    let rollout = to_rollout(m);
    let rate = rollout
        .spec
        .rate_in(rollout.current_wave)
        .map(|r| saved.unwrap_or_else(|| RateState::initial(&r)));
    ActiveRollout {
        rollout,
        rate,
        succeeded_total,
        wave_succeeded,
        ticked_at,
        paused_at,
        policy_state,
        released_total,
        policy_failures,
    }
}

impl Store {
    /// R1: scheduled rollouts whose start has come begin running.
    pub async fn begin_due_rollouts(&self, now: Millis) -> StoreResult<Vec<RolloutId>> {
        let due: Vec<rollout::Model> = rollout::Entity::find()
            .filter(rollout::Column::State.eq(RolloutState::Scheduled.as_str()))
            .filter(rollout::Column::StartAt.lte(now))
            .all(self.db())
            .await?;
        let mut begun = Vec::new();
        for r in due {
            let txn = self.begin_write().await?;
            let n = rollout::Entity::update_many()
                .col_expr(rollout::Column::State, Expr::value("running"))
                .col_expr(rollout::Column::StartedAt, Expr::value(now))
                // the allowance accrues from the start itself, however late the tick
                .col_expr(
                    rollout::Column::TickedAt,
                    Expr::value(r.start_at.unwrap_or(now).min(now)),
                )
                .filter(rollout::Column::Id.eq(r.id))
                .filter(rollout::Column::State.eq("scheduled"))
                .exec(&txn)
                .await?
                .rows_affected;
            if n == 1 {
                rollout_event(
                    &txn,
                    TenantId(r.tenant_id),
                    RolloutId(r.id),
                    RolloutEvent::Begin.as_str(),
                    Some(RolloutState::Scheduled),
                    Some(RolloutState::Running),
                    None,
                    &timer(),
                    "the scheduled start came".into(),
                    now,
                )
                .await?;
                begun.push(RolloutId(r.id));
            }
            txn.commit().await?;
        }
        Ok(begun)
    }

    /// A rollout by id alone: the engine works across tenants (its callers hold ids the
    /// store gave them, never ids from a request).
    pub async fn rollout_any_tenant(&self, id: RolloutId) -> StoreResult<Rollout> {
        rollout::Entity::find_by_id(id.0)
            .one(self.db())
            .await?
            .map(to_rollout)
            .ok_or(super::StoreError::NotFound("rollout"))
    }

    /// The rollouts the engine works on: running and paused ones.
    pub async fn active_rollouts(&self) -> StoreResult<Vec<ActiveRollout>> {
        Ok(rollout::Entity::find()
            .filter(rollout::Column::State.is_in(["running", "paused"]))
            .all(self.db())
            .await?
            .into_iter()
            .map(to_active)
            .collect())
    }

    /// Persists a rollout's rate state and the logical time it accounts for (DESIGN §5).
    pub async fn save_rate(
        &self,
        id: RolloutId,
        rate: Option<&RateState>,
        ticked_at: Millis,
    ) -> StoreResult<()> {
        let mut u = rollout::Entity::update_many()
            .col_expr(rollout::Column::TickedAt, Expr::value(ticked_at))
            .filter(rollout::Column::Id.eq(id.0));
        if let Some(r) = rate {
            u = u
                .col_expr(
                    rollout::Column::RatePerMinute,
                    Expr::value(i32::try_from(r.per_minute).unwrap_or(i32::MAX)),
                )
                .col_expr(
                    rollout::Column::RateNextThreshold,
                    Expr::value(r.next_threshold.and_then(|n| i64::try_from(n).ok())),
                )
                .col_expr(rollout::Column::RateBucket, Expr::value(r.bucket))
                .col_expr(
                    rollout::Column::ReleasedTotal,
                    Expr::value(i64::try_from(r.released).unwrap_or(i64::MAX)),
                );
        }
        u.exec(self.db()).await?;
        Ok(())
    }

    /// R7: tasks of a rollout that count against its concurrency (`pending` and `pushed`).
    pub async fn concurrency_used(&self, id: RolloutId) -> StoreResult<u64> {
        let n = task::Entity::find()
            .filter(task::Column::RolloutId.eq(id.0))
            .filter(task::Column::State.is_in(["pending", "pushed"]))
            .count(self.db())
            .await?;
        Ok(n)
    }

    /// How many tasks wait for release, counted up to `cap` (an index range, never more);
    /// with waves (G3), only those of waves up to `wave`.
    pub async fn waiting_tasks(
        &self,
        id: RolloutId,
        wave: u32,
        cap: u64,
        now: Millis,
    ) -> StoreResult<u64> {
        #[derive(FromQueryResult)]
        struct N {
            n: i64,
        }
        let backend = self.db().get_database_backend();
        let n = N::find_by_statement(stmt(
            backend,
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM task WHERE rollout_id = ? AND state = 'waiting' AND wave <= ? \
             AND (not_before IS NULL OR not_before <= ?) LIMIT ?) w",
            vec![
                id.0.into(),
                i64::from(wave).into(),
                now.into(),
                i64::try_from(cap).unwrap_or(i64::MAX).into(),
            ],
        ))
        .one(self.db())
        .await?
        .map_or(0, |r| r.n);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Releases up to `n` waiting tasks of a rollout, in task order: those whose device is
    /// online become `pushed` and are returned to be pushed; the others become `pending`
    /// and are pushed when their device connects (R3). `online` says whether a device can
    /// be pushed to now (the gateway knows better than the registry's batched flag).
    pub async fn release_tasks(
        &self,
        tenant: TenantId,
        id: RolloutId,
        wave: u32,
        pick: Pick<'_>,
        online: impl Fn(&PushTarget) -> bool,
        now: Millis,
    ) -> StoreResult<(u64, Vec<PushTarget>)> {
        if matches!(pick, Pick::First(0)) || matches!(pick, Pick::Ids(ids) if ids.is_empty()) {
            return Ok((0, vec![]));
        }
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        let lock = if backend == DbBackend::Postgres {
            " FOR UPDATE OF t SKIP LOCKED"
        } else {
            ""
        };
        let mut vals: Vec<Value> = vec![
            id.0.into(),
            i64::from(wave).into(),
            tenant.0.into(),
            now.into(),
        ];
        let which = match pick {
            Pick::First(n) => {
                vals.push(i64::try_from(n).unwrap_or(i64::MAX).into());
                "ORDER BY t.id LIMIT ?".to_owned()
            }
            Pick::Ids(ids) => {
                let (ph, v) = ids_in(backend, ids);
                vals.extend(v);
                format!("AND t.id IN ({ph}) ORDER BY t.id")
            }
        };
        let picked = PushTarget::find_by_statement(stmt(
            backend,
            &format!(
                "SELECT t.id AS task_id, t.rollout_id, t.device_id, d.name AS device_name, \
                 p.product_key, p.protocol, d.online FROM task t \
                 JOIN device d ON d.id = t.device_id JOIN product p ON p.id = d.product_id \
                 WHERE t.rollout_id = ? AND t.state = 'waiting' AND t.wave <= ? AND d.tenant_id = ? \
                 AND (t.not_before IS NULL OR t.not_before <= ?) {which}{lock}"
            ),
            vals,
        ))
        .all(&txn)
        .await?;
        let (online, offline): (Vec<_>, Vec<_>) = picked.into_iter().partition(|t| online(t));
        let mut released = 0;
        let mut pushed_ids = std::collections::HashSet::new();
        let push_now = format!(", pushed_at = {now}");
        let policy = Actor {
            cause: Cause::Policy,
            who: None,
        };
        for (group, to, set, detail) in [
            (
                &online,
                TaskState::Pushed,
                push_now.as_str(),
                "released and pushed",
            ),
            (
                &offline,
                TaskState::Pending,
                "",
                "released; the device is offline, pushed when it connects",
            ),
        ] {
            for chunk in group.chunks(MAX_BIND_PARAMS / 2) {
                let ids: Vec<i64> = chunk.iter().map(|t| t.task_id).collect();
                let (ph, vals) = ids_in(backend, &ids);
                let moved = transition(
                    &txn,
                    &format!("id IN ({ph}) AND state = 'waiting'"),
                    vals,
                    to,
                    set,
                    vec![],
                    &policy,
                    detail,
                    now,
                )
                .await?;
                released += moved.len() as u64;
                if to == TaskState::Pushed {
                    pushed_ids.extend(moved.into_iter().map(|m| m.id));
                }
            }
        }
        txn.commit().await?;
        Ok((
            released,
            online
                .into_iter()
                .filter(|t| pushed_ids.contains(&t.task_id))
                .collect(),
        ))
    }

    /// R3: what the given devices are owed now that they connected (or asked): their
    /// `pending` and `pushed` tasks of running push-mode rollouts; `pending` ones become
    /// `pushed`. Pull-mode rollouts push nothing unasked.
    /// `repush`: also send again what was pushed before (a device that connects may have
    /// lost it with its session); a version report only promotes `pending` tasks.
    /// `quiet`: rollouts that may not push now (outside their schedule or window: R2, G4).
    pub async fn owed_pushes(
        &self,
        devices: &[DeviceId],
        repush: bool,
        quiet: &[i64],
        now: Millis,
    ) -> StoreResult<Vec<PushTarget>> {
        let mut out = Vec::new();
        if devices.is_empty() {
            return Ok(out);
        }
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        // server-made ids, written inline
        let not_quiet = if quiet.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = quiet.iter().map(i64::to_string).collect();
            format!(" AND id NOT IN ({})", ids.join(","))
        };
        for chunk in devices.chunks(MAX_BIND_PARAMS / 4) {
            let ids: Vec<i64> = chunk.iter().map(|d| d.0).collect();
            let (ph, vals) = ids_in(backend, &ids);
            // the move first, then what to send is read by the tasks moved (and, on a
            // reconnect, those pushed before): a release committed meanwhile is not missed
            let moved = transition(
                &txn,
                &format!(
                    "device_id IN ({ph}) AND state = 'pending' AND rollout_id IN \
                     (SELECT id FROM rollout WHERE state = 'running' AND push_mode = 'push'{not_quiet})"
                ),
                vals.clone(),
                TaskState::Pushed,
                &format!(", pushed_at = {now}"),
                vec![],
                &device_actor(),
                "pushed: the device connected",
                now,
            )
            .await?;
            let moved: Vec<i64> = moved.into_iter().map(|m| m.id).collect();
            let mut filter = if moved.is_empty() {
                "1 = 0".to_owned()
            } else {
                format!("t.id IN ({})", placeholders(moved.len()))
            };
            let mut all_vals: Vec<Value> = moved.iter().map(|i| Value::from(*i)).collect();
            if repush {
                let not_quiet = not_quiet.replace(" id ", " r.id ");
                filter = format!(
                    "({filter}) OR (t.device_id IN ({ph}) AND t.state = 'pushed' \
                     AND r.state = 'running' AND r.push_mode = 'push'{not_quiet})"
                );
                all_vals.extend(vals);
            }
            let mut found = PushTarget::find_by_statement(stmt(
                backend,
                &format!(
                    "SELECT t.id AS task_id, t.rollout_id, t.device_id, d.name AS device_name, \
                     p.product_key, p.protocol, d.online FROM task t \
                     JOIN device d ON d.id = t.device_id JOIN product p ON p.id = d.product_id \
                     JOIN rollout r ON r.id = t.rollout_id WHERE {filter} ORDER BY t.id"
                ),
                all_vals,
            ))
            .all(&txn)
            .await?;
            out.append(&mut found);
        }
        txn.commit().await?;
        Ok(out)
    }

    /// R3 (pull): a device asks for its update of `module`. Its task of a running rollout is
    /// returned (a `waiting` one is released at once when the rollout's concurrency allows,
    /// and becomes `pushed`).
    pub async fn pull_task(
        &self,
        device: DeviceId,
        module: &ModuleName,
        now: Millis,
    ) -> StoreResult<Option<PushTarget>> {
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        #[derive(FromQueryResult)]
        struct Row {
            task_id: i64,
            state: String,
            max_concurrency: Option<i32>,
            rollout_id: i64,
        }
        let row = Row::find_by_statement(stmt(
            backend,
            "SELECT t.id AS task_id, t.state, r.max_concurrency, r.id AS rollout_id FROM task t \
             JOIN rollout r ON r.id = t.rollout_id \
             WHERE t.device_id = ? AND r.module = ? AND r.state = 'running' AND t.wave <= r.current_wave \
             AND t.state IN ('waiting', 'pending', 'pushed', 'in_progress') ORDER BY t.id DESC LIMIT 1",
            vec![device.0.into(), module.as_str().into()],
        ))
        .one(&txn)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if row.state == "waiting" || row.state == "pending" {
            if row.state == "waiting" {
                if let Some(limit) = row.max_concurrency {
                    let used = task::Entity::find()
                        .filter(task::Column::RolloutId.eq(row.rollout_id))
                        .filter(task::Column::State.is_in(["pending", "pushed"]))
                        .count(&txn)
                        .await?;
                    if used >= u64::try_from(limit).unwrap_or(0) {
                        return Ok(None);
                    }
                }
            }
            transition(
                &txn,
                "id = ? AND state IN ('waiting', 'pending')",
                vec![row.task_id.into()],
                TaskState::Pushed,
                &format!(", pushed_at = {now}"),
                vec![],
                &device_actor(),
                "the device asked for its update",
                now,
            )
            .await?;
        }
        let target = PushTarget::find_by_statement(stmt(
            backend,
            "SELECT t.id AS task_id, t.rollout_id, t.device_id, d.name AS device_name, \
             p.product_key, p.protocol, d.online FROM task t \
             JOIN device d ON d.id = t.device_id JOIN product p ON p.id = d.product_id \
             WHERE t.id = ?",
            vec![row.task_id.into()],
        ))
        .one(&txn)
        .await?;
        txn.commit().await?;
        Ok(target)
    }

    /// R1: rollouts whose end time passed: tasks not yet pushed are cancelled.
    pub async fn end_due_rollouts(&self, now: Millis) -> StoreResult<u64> {
        let ended: Vec<rollout::Model> = rollout::Entity::find()
            .filter(rollout::Column::State.is_in(["running", "paused"]))
            .filter(rollout::Column::DailyRepeat.eq(false))
            .filter(rollout::Column::EndAt.lte(now))
            .all(self.db())
            .await?;
        let mut total = 0;
        for r in ended {
            let txn = self.begin_write().await?;
            let n = transition(
                &txn,
                "rollout_id = ? AND state IN ('confirming', 'waiting', 'pending')",
                vec![r.id.into()],
                TaskState::Cancelled,
                "",
                vec![],
                &timer(),
                "the rollout's end time passed before it was pushed",
                now,
            )
            .await?
            .len() as u64;
            if n > 0 {
                rollout_event(
                    &txn,
                    TenantId(r.tenant_id),
                    RolloutId(r.id),
                    "ended",
                    None,
                    None,
                    Some(n),
                    &timer(),
                    format!("end time passed: {n} tasks not yet pushed cancelled"),
                    now,
                )
                .await?;
            }
            txn.commit().await?;
            total += n;
        }
        Ok(total)
    }

    /// R8 / R9: tasks whose deadline passed. In-progress tasks time out (failed, reason
    /// `timeout`; retried only when the rollout opts in); failed tasks whose retry is due go
    /// back to `waiting` while their rollout runs (a paused rollout's stand still: G2).
    /// Found through the partial index on `due_at`.
    pub async fn expire_timers(&self, now: Millis) -> StoreResult<(u64, u64)> {
        let txn = self.begin_write().await?;
        let timed_out = transition(
            &txn,
            "due_at IS NOT NULL AND due_at <= ? AND state = 'in_progress'",
            vec![now.into()],
            TaskState::Failed,
            &format!(
                ", failure_reason = 'timeout', due_at = (SELECT CASE WHEN r.retry_timeouts \
                 AND r.retry_max IS NOT NULL AND task.retries < r.retry_max \
                 THEN {now} + r.retry_interval_minutes * 60000 END FROM rollout r WHERE r.id = task.rollout_id)"
            ),
            vec![],
            &timer(),
            "no success within the device timeout",
            now,
        )
        .await?;
        // G1: a timeout with no retry due is a finished task
        super::safety::bump(
            &txn,
            "timed_out_total",
            &super::safety::final_failures(&timed_out),
        )
        .await?;
        let timed_out = timed_out.len() as u64;
        let retried = transition(
            &txn,
            "due_at IS NOT NULL AND due_at <= ? AND state = 'failed' \
             AND rollout_id IN (SELECT id FROM rollout WHERE state = 'running')",
            vec![now.into()],
            TaskState::Waiting,
            ", retries = task.retries + 1, due_at = NULL, failure_reason = NULL, progress = 0",
            vec![],
            &timer(),
            "retry after failure",
            now,
        )
        .await?
        .len() as u64;
        txn.commit().await?;
        Ok((timed_out, retried))
    }

    /// Completes running rollouts with nothing left to do: no open task and no retry due,
    /// and for a dynamic rollout also its end passed or its strategy cancelled. A
    /// verification rollout whose every task succeeded marks its package verified (P2).
    pub async fn complete_finished_rollouts(&self, now: Millis) -> StoreResult<Vec<RolloutId>> {
        let running: Vec<rollout::Model> = rollout::Entity::find()
            .filter(rollout::Column::State.eq("running"))
            .all(self.db())
            .await?;
        let mut done = Vec::new();
        for m in running {
            let r = to_rollout(m);
            if r.spec.method == UpdateMethod::Dynamic
                && !r.strategy_cancelled
                && !r.spec.schedule.ended(now)
            {
                continue;
            }
            // any one open task keeps it running: a presence probe, not a count
            let open = task::Entity::find()
                .select_only()
                .column(task::Column::Id)
                .filter(task::Column::RolloutId.eq(r.id.0))
                .filter(
                    sea_orm::Condition::any()
                        .add(task::Column::State.is_in(TaskState::OPEN.iter().map(|s| s.as_str())))
                        .add(
                            sea_orm::Condition::all()
                                .add(task::Column::State.eq("failed"))
                                .add(task::Column::DueAt.is_not_null()),
                        ),
                )
                .into_tuple::<i64>()
                .one(self.db())
                .await?
                .map_or(0, |_| 1);
            if open > 0 {
                continue;
            }
            let txn = self.begin_write().await?;
            let n = rollout::Entity::update_many()
                .col_expr(rollout::Column::State, Expr::value("completed"))
                .col_expr(rollout::Column::FinishedAt, Expr::value(now))
                .col_expr(
                    rollout::Column::OpenDynamicPackageId,
                    Expr::value(Option::<i64>::None),
                )
                .filter(rollout::Column::Id.eq(r.id.0))
                .filter(rollout::Column::State.eq("running"))
                .exec(&txn)
                .await?
                .rows_affected;
            if n != 1 {
                continue;
            }
            let mut detail = "every task finished".to_owned();
            if r.spec.rollout_type == RolloutType::Verification {
                let not_succeeded = task::Entity::find()
                    .filter(task::Column::RolloutId.eq(r.id.0))
                    .filter(task::Column::State.ne("succeeded"))
                    .count(&txn)
                    .await?;
                let any = task::Entity::find()
                    .filter(task::Column::RolloutId.eq(r.id.0))
                    .count(&txn)
                    .await?;
                if any > 0 && not_succeeded == 0 {
                    package::Entity::update_many()
                        .col_expr(package::Column::Status, Expr::value("verified"))
                        .filter(package::Column::Id.eq(r.package_id.0))
                        .filter(package::Column::Status.eq("unverified"))
                        .exec(&txn)
                        .await?;
                    detail.push_str("; every device succeeded, the package is verified");
                } else {
                    detail.push_str("; not every device succeeded, the package stays unverified");
                }
            }
            rollout_event(
                &txn,
                r.tenant_id,
                r.id,
                RolloutEvent::Finish.as_str(),
                Some(RolloutState::Running),
                Some(RolloutState::Completed),
                None,
                &timer(),
                detail,
                now,
            )
            .await?;
            txn.commit().await?;
            done.push(r.id);
        }
        Ok(done)
    }

    /// Applies a batch of device reports in one transaction: progress first, then failures,
    /// then successes, each a guarded set-based update per distinct report, so a report
    /// that comes late or twice never moves a task backwards.
    pub async fn apply_reports(
        &self,
        reports: &[(DeviceId, TaskReport)],
        now: Millis,
    ) -> StoreResult<ReportOutcome> {
        let mut out = ReportOutcome::default();
        if reports.is_empty() {
            return Ok(out);
        }
        // group devices by identical report, so one statement moves them all
        let mut progress: BTreeMap<(Option<String>, i32, String), Vec<i64>> = BTreeMap::new();
        let mut failures: BTreeMap<(Option<String>, i32, String), Vec<i64>> = BTreeMap::new();
        let mut versions: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
        for (d, r) in reports {
            match r {
                TaskReport::Progress {
                    module,
                    percent,
                    desc,
                } => progress
                    .entry((
                        module.as_ref().map(|m| m.as_str().to_owned()),
                        *percent,
                        desc.clone(),
                    ))
                    .or_default()
                    .push(d.0),
                TaskReport::Failure { module, step, desc } => failures
                    .entry((
                        module.as_ref().map(|m| m.as_str().to_owned()),
                        *step,
                        desc.clone(),
                    ))
                    .or_default()
                    .push(d.0),
                TaskReport::Version { module, version } => versions
                    .entry((module.as_str().to_owned(), version.as_str().to_owned()))
                    .or_default()
                    .push(d.0),
            }
        }
        let txn = self.begin_write().await?;
        let dev = device_actor();
        for ((module, percent, desc), devices) in progress {
            for chunk in devices.chunks(MAX_BIND_PARAMS / 2) {
                let (ph, mut vals) = ids_in(txn.get_database_backend(), chunk);
                let mut filter =
                    format!("device_id IN ({ph}) AND state IN ('pushed', 'in_progress')");
                if let Some(m) = &module {
                    filter.push_str(" AND rollout_id IN (SELECT id FROM rollout WHERE module = ?)");
                    vals.push(m.clone().into());
                }
                // R9: the timeout counts from the first progress report only
                let set = format!(
                    ", progress = {percent}, last_message = ?, \
                     started_at = COALESCE(task.started_at, {now}), \
                     due_at = CASE WHEN task.started_at IS NULL THEN \
                       (SELECT {now} + (CASE WHEN task.timeout_minutes IS NULL THEN r.timeout_minutes \
                          WHEN task.timeout_minutes = 0 THEN NULL ELSE task.timeout_minutes END) * 60000 \
                        FROM rollout r WHERE r.id = task.rollout_id) ELSE task.due_at END"
                );
                out.moved += transition(
                    &txn,
                    &filter,
                    vals,
                    TaskState::InProgress,
                    &set,
                    vec![desc.clone().into()],
                    &dev,
                    &format!("progress {percent}%"),
                    now,
                )
                .await?
                .len() as u64;
            }
        }
        for ((module, step, desc), devices) in failures {
            let reason = failure_reason(step);
            let to = if step == -5 {
                TaskState::Rejected
            } else {
                TaskState::Failed
            };
            for chunk in devices.chunks(MAX_BIND_PARAMS / 2) {
                let (ph, mut vals) = ids_in(txn.get_database_backend(), chunk);
                let mut filter =
                    format!("device_id IN ({ph}) AND state IN ('pushed', 'in_progress')");
                if let Some(m) = &module {
                    filter.push_str(" AND rollout_id IN (SELECT id FROM rollout WHERE module = ?)");
                    vals.push(m.clone().into());
                }
                // R8: a retry is due after the interval while retries are left
                let retry = if to == TaskState::Failed {
                    format!(
                        ", due_at = (SELECT CASE WHEN r.retry_max IS NOT NULL AND task.retries < r.retry_max \
                         THEN {now} + r.retry_interval_minutes * 60000 END FROM rollout r WHERE r.id = task.rollout_id)"
                    )
                } else {
                    ", due_at = NULL".to_owned()
                };
                let moved = transition(
                    &txn,
                    &filter,
                    vals,
                    to,
                    &format!(", failure_reason = '{reason}', last_message = ?{retry}"),
                    vec![desc.clone().into()],
                    &dev,
                    &format!("step {step}: {reason}"),
                    now,
                )
                .await?;
                // G1: finished failures, by kind (a failure with a retry due is not finished)
                let column = if to == TaskState::Rejected {
                    "rejected_total"
                } else {
                    "failed_total"
                };
                super::safety::bump(&txn, column, &super::safety::final_failures(&moved)).await?;
                out.moved += moved.len() as u64;
            }
        }
        for ((module, version), devices) in versions {
            for chunk in devices.chunks(MAX_BIND_PARAMS / 2) {
                let (ph, vals) = ids_in(txn.get_database_backend(), chunk);
                let mut filter_vals = vals.clone();
                filter_vals.push(module.clone().into());
                filter_vals.push(version.clone().into());
                let moved = transition(
                    &txn,
                    &format!(
                        "device_id IN ({ph}) AND state IN ({}) AND rollout_id IN \
                         (SELECT id FROM rollout WHERE module = ? AND target_version = ?) \
                         AND (task.started_at IS NOT NULL OR rollout_id NOT IN \
                           (SELECT id FROM rollout WHERE force_reinstall))",
                        in_list(TaskState::OPEN)
                    ),
                    filter_vals,
                    TaskState::Succeeded,
                    ", progress = 100, due_at = NULL, failure_reason = NULL",
                    vec![],
                    &dev,
                    &format!("the device reports {version}"),
                    now,
                )
                .await?;
                out.moved += moved.len() as u64;
                super::safety::bump_wave_successes(&txn, &moved).await?;
                for m in moved {
                    *out.succeeded.entry(m.rollout_id).or_default() += 1;
                }
                // O1: a success after the task was cancelled is still recorded
                let mut late_vals = vec![Value::from(now)];
                late_vals.extend(vals);
                late_vals.push(module.clone().into());
                late_vals.push(version.clone().into());
                txn.execute(stmt(
                    txn.get_database_backend(),
                    &format!(
                        "UPDATE task SET late_success_at = ? WHERE device_id IN ({ph}) \
                         AND state = 'cancelled' AND late_success_at IS NULL AND pushed_at IS NOT NULL \
                         AND rollout_id IN (SELECT id FROM rollout WHERE module = ? AND target_version = ?)"
                    ),
                    late_vals,
                ))
                .await?;
            }
        }
        super::safety::bump(&txn, "succeeded_total", &out.succeeded).await?;
        txn.commit().await?;
        Ok(out)
    }

    /// Records a batch of version reports (V1, V2) in one transaction: each device's current
    /// version per module (the latest report in the batch wins) and every report in the
    /// history. A module past the per-device limit, or a device deleted meanwhile, is skipped.
    pub async fn record_version_reports(
        &self,
        reports: &[(DeviceId, ModuleName, Version, Millis)],
    ) -> StoreResult<()> {
        if reports.is_empty() {
            return Ok(());
        }
        let mut latest: BTreeMap<(i64, &str), (&str, Millis)> = BTreeMap::new();
        for (d, m, v, at) in reports {
            latest.insert((d.0, m.as_str()), (v.as_str(), *at));
        }
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        let limit = limits::MAX_MODULES_PER_DEVICE;
        // the module is known, or the device has room for one more
        let allowed = format!(
            "(EXISTS (SELECT 1 FROM device_module m WHERE m.device_id = d.id AND m.module = v.module) \
             OR (SELECT COUNT(*) FROM device_module m WHERE m.device_id = d.id) < {limit})"
        );
        let rows: Vec<(i64, &str, &str, Millis)> = latest
            .iter()
            .map(|((d, m), (v, at))| (*d, *m, *v, *at))
            .collect();
        for chunk in rows.chunks(MAX_BIND_PARAMS / 4) {
            let (values, vals) = version_values(backend, chunk);
            let up = format!(
                "WITH v(device_id, module, version, at) AS ({values}) \
                 INSERT INTO device_module (device_id, module, tenant_id, product_id, version, updated_at) \
                 SELECT d.id, v.module, d.tenant_id, d.product_id, v.version, v.at FROM v \
                 JOIN device d ON d.id = v.device_id WHERE {allowed} \
                 ON CONFLICT (device_id, module) DO UPDATE SET version = excluded.version, \
                 updated_at = excluded.updated_at"
            );
            txn.execute(stmt(backend, &up, vals)).await?;
        }
        // every report in the history, duplicates within the batch included
        let all: Vec<(i64, &str, &str, Millis)> = reports
            .iter()
            .map(|(d, m, v, at)| (d.0, m.as_str(), v.as_str(), *at))
            .collect();
        for chunk in all.chunks(MAX_BIND_PARAMS / 4) {
            let (values, vals) = version_values(backend, chunk);
            let hist = format!(
                "WITH v(device_id, module, version, at) AS ({values}) \
                 INSERT INTO version_report (tenant_id, device_id, module, version, reported_at) \
                 SELECT d.tenant_id, d.id, v.module, v.version, v.at FROM v \
                 JOIN device d ON d.id = v.device_id \
                 JOIN device_module dm ON dm.device_id = d.id AND dm.module = v.module"
            );
            txn.execute(stmt(backend, &hist, vals)).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// G2: pauses a running rollout by hand.
    pub async fn pause_rollout(
        &self,
        tenant: TenantId,
        id: RolloutId,
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<Rollout> {
        self.pause_by(tenant, id, actor, now, "paused by hand")
            .await
    }

    /// Pauses a running rollout (by hand, or by an abort rule: G1), saying why.
    pub(super) async fn pause_by(
        &self,
        tenant: TenantId,
        id: RolloutId,
        actor: &Actor,
        now: Millis,
        why: &str,
    ) -> StoreResult<Rollout> {
        let r = self
            .rollout_transition(tenant, id, RolloutEvent::Pause, actor, now, why)
            .await?;
        rollout::Entity::update_many()
            .col_expr(rollout::Column::PausedAt, Expr::value(now))
            .filter(rollout::Column::Id.eq(id.0))
            .exec(self.db())
            .await?;
        Ok(r)
    }

    /// G2: resumes a paused rollout: the timers of its not-yet-started tasks (retries due)
    /// move on by the time it stood still, and no push allowance accrued meanwhile.
    pub async fn resume_rollout(
        &self,
        tenant: TenantId,
        id: RolloutId,
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<Rollout> {
        let before = self.get_rollout(tenant, id).await?;
        let paused_at: Option<i64> = rollout::Entity::find_by_id(id.0)
            .one(self.db())
            .await?
            .and_then(|m| m.paused_at);
        let r = self
            .rollout_transition(
                tenant,
                id,
                RolloutEvent::Resume,
                actor,
                now,
                "resumed by hand",
            )
            .await?;
        let stood = paused_at.map_or(0, |p| (now - p).max(0));
        let txn = self.begin_write().await?;
        txn.execute(stmt(
            txn.get_database_backend(),
            "UPDATE task SET due_at = due_at + ? WHERE rollout_id = ? AND state = 'failed' AND due_at IS NOT NULL",
            vec![stood.into(), before.id.0.into()],
        ))
        .await?;
        rollout::Entity::update_many()
            .col_expr(rollout::Column::PausedAt, Expr::value(Option::<i64>::None))
            .col_expr(rollout::Column::TickedAt, Expr::value(now))
            // W3: a resumed rollout gives its policies a fresh run of tries
            .col_expr(rollout::Column::PolicyFailures, Expr::value(0))
            .filter(rollout::Column::Id.eq(id.0))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(r)
    }
}
