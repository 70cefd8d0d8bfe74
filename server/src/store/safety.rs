//! What safer rollouts keep and change (SPEC G1, G3–G6): abort rules, waves and windows as
//! stored on the rollout row, the finished-task counts the rules read (kept as tasks finish,
//! never counted over the tasks), wave gates, window closes, and a package's withdrawal.

use super::engine::Moved;
use super::entity::{package, rollout};
use super::rollouts::{bulk_transition, in_list, rollout_event, stmt, to_rollout, Actor, Rollout};
use super::{Store, StoreError, StoreResult};
use crate::clock::Millis;
use crate::domain::*;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, FromQueryResult, QueryFilter,
};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

fn rate_json(r: &PushRate) -> Json {
    match *r {
        PushRate::Constant { per_minute } => json!({"kind": "constant", "per_minute": per_minute}),
        PushRate::Variable {
            base,
            factor_centi,
            max,
            threshold,
            count_on,
        } => json!({"kind": "variable", "base": base, "factor_centi": factor_centi,
                    "max": max, "threshold": threshold, "count_on": count_on.as_str()}),
    }
}

fn rate_from(v: &Json) -> Option<PushRate> {
    let n = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
    match v["kind"].as_str()? {
        "constant" => Some(PushRate::Constant {
            per_minute: n("per_minute")?,
        }),
        "variable" => Some(PushRate::Variable {
            base: n("base")?,
            factor_centi: n("factor_centi")?,
            max: n("max")?,
            threshold: n("threshold")?,
            count_on: RateCountOn::parse(v["count_on"].as_str()?)?,
        }),
        _ => None,
    }
}

pub(super) fn abort_rules_json(rules: &[AbortRule]) -> String {
    Json::from(
        rules
            .iter()
            .map(|r| {
                json!({"kind": r.kind.as_str(), "threshold_centi": r.threshold_centi,
                       "min_finished": r.min_finished, "action": r.action.as_str(),
                       "fired_at": r.fired_at})
            })
            .collect::<Vec<_>>(),
    )
    .to_string()
}

pub(super) fn abort_rules_from(text: &str) -> Vec<AbortRule> {
    let v: Json = serde_json::from_str(text).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some(AbortRule {
                        kind: AbortKind::parse(r["kind"].as_str()?)?,
                        threshold_centi: u32::try_from(r["threshold_centi"].as_u64()?).ok()?,
                        min_finished: r["min_finished"].as_u64()?,
                        action: AbortAction::parse(r["action"].as_str()?)?,
                        fired_at: r["fired_at"].as_i64(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn waves_json(waves: &[Wave]) -> String {
    Json::from(
        waves
            .iter()
            .map(|w| {
                let mut v = json!({"advance": w.advance.as_str(),
                    "success_threshold": w.success_threshold, "tasks": w.tasks,
                    "max_concurrency": w.max_concurrency,
                    "rate": w.rate.as_ref().map(rate_json)});
                match w.size {
                    WaveSize::Percent(p) => v["percent"] = p.into(),
                    WaveSize::Count(c) => v["count"] = c.into(),
                    WaveSize::Rest => {}
                }
                v
            })
            .collect::<Vec<_>>(),
    )
    .to_string()
}

pub(super) fn waves_from(text: &str) -> Vec<Wave> {
    let v: Json = serde_json::from_str(text).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|w| Wave {
                    size: match (w["percent"].as_u64(), w["count"].as_u64()) {
                        (Some(p), _) => WaveSize::Percent(u32::try_from(p).unwrap_or(0)),
                        (_, Some(c)) => WaveSize::Count(c),
                        _ => WaveSize::Rest,
                    },
                    advance: w["advance"]
                        .as_str()
                        .and_then(WaveAdvance::parse)
                        .unwrap_or(WaveAdvance::Manual),
                    success_threshold: w["success_threshold"]
                        .as_u64()
                        .and_then(|t| u32::try_from(t).ok())
                        .unwrap_or(100),
                    rate: rate_from(&w["rate"]),
                    max_concurrency: w["max_concurrency"]
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok()),
                    tasks: w["tasks"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn window_json(w: &MaintenanceWindow) -> String {
    json!({"cron": w.cron, "duration_minutes": w.duration_ms / 60_000,
           "time_zone": w.time_zone.name(), "on_close": w.on_close.as_str()})
    .to_string()
}

pub(super) fn window_from(text: Option<&str>) -> Option<MaintenanceWindow> {
    let v: Json = serde_json::from_str(text?).ok()?;
    let parsed = MaintenanceWindow::parse(
        v["cron"].as_str()?,
        v["duration_minutes"].as_i64()?,
        v["time_zone"].as_str()?,
        WindowClose::parse(v["on_close"].as_str()?)?,
    );
    match parsed {
        Ok(w) => Some(w),
        Err(e) => {
            // it was checked on the way in; a time-zone database without the zone is the
            // only way here, and no window must then mean no pushes rather than any time
            tracing::error!(error = %e, "a stored maintenance window no longer parses");
            MaintenanceWindow::parse("0 0 1 1 *", 1, "UTC", WindowClose::Wait).ok()
        }
    }
}

fn policy() -> Actor {
    Actor {
        cause: Cause::Policy,
        who: None,
    }
}

/// Adds each rollout's count to one of its counter columns.
pub(super) async fn bump(
    txn: &DatabaseTransaction,
    column: &str,
    counts: &BTreeMap<i64, u64>,
) -> StoreResult<()> {
    for (rollout, n) in counts {
        txn.execute(stmt(
            txn.get_database_backend(),
            &format!("UPDATE rollout SET {column} = {column} + ? WHERE id = ?"),
            vec![i64::try_from(*n).unwrap_or(0).into(), (*rollout).into()],
        ))
        .await?;
    }
    Ok(())
}

/// G1: failures that are final (no retry due) by rollout.
pub(super) fn final_failures(moved: &[Moved]) -> BTreeMap<i64, u64> {
    let mut out = BTreeMap::new();
    for m in moved.iter().filter(|m| m.due_at.is_none()) {
        *out.entry(m.rollout_id).or_default() += 1;
    }
    out
}

/// G3: successes by rollout and wave, counted for the wave only while it is the current one.
pub(super) async fn bump_wave_successes(
    txn: &DatabaseTransaction,
    moved: &[Moved],
) -> StoreResult<()> {
    let mut by: BTreeMap<(i64, i32), u64> = BTreeMap::new();
    for m in moved.iter().filter(|m| m.wave > 0) {
        *by.entry((m.rollout_id, m.wave)).or_default() += 1;
    }
    for ((rollout, wave), n) in by {
        txn.execute(stmt(
            txn.get_database_backend(),
            "UPDATE rollout SET wave_succeeded = wave_succeeded + ? WHERE id = ? AND current_wave = ?",
            vec![
                i64::try_from(n).unwrap_or(0).into(),
                rollout.into(),
                wave.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

/// G1: a rollout's finished-task counts, from its row.
pub(super) fn outcomes_of(m: &rollout::Model) -> Outcomes {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Outcomes {
        succeeded: n(m.succeeded_total),
        failed: n(m.failed_total),
        timed_out: n(m.timed_out_total),
        rejected: n(m.rejected_total),
    }
}

/// Tasks of one wave by state (G3 status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaveCounts {
    pub wave: u32,
    pub counts: BTreeMap<TaskState, u64>,
}

impl Store {
    /// G1: fires the abort rules that running rollouts now meet, from the counts kept as
    /// tasks finished; a rule pauses or cancels its rollout with an event that records the
    /// rule and the figures. Returns the rollouts stopped.
    pub async fn fire_abort_rules(&self, now: Millis) -> StoreResult<Vec<RolloutId>> {
        let armed: Vec<rollout::Model> = rollout::Entity::find()
            .filter(rollout::Column::State.eq("running"))
            .filter(rollout::Column::AbortRules.ne("[]"))
            .all(self.db())
            .await?;
        let mut stopped = Vec::new();
        for m in armed {
            let outcomes = outcomes_of(&m);
            let mut rules = abort_rules_from(&m.abort_rules);
            let Some(i) = rules.iter().position(|r| r.fires(&outcomes)) else {
                continue;
            };
            let why = format!("rule {}: {}", i + 1, rules[i].explain(&outcomes));
            rules[i].fired_at = Some(now);
            let (tenant, id) = (TenantId(m.tenant_id), RolloutId(m.id));
            rollout::Entity::update_many()
                .col_expr(
                    rollout::Column::AbortRules,
                    Expr::value(abort_rules_json(&rules)),
                )
                .filter(rollout::Column::Id.eq(m.id))
                .exec(self.db())
                .await?;
            let done = match rules[i].action {
                AbortAction::Pause => self.pause_by(tenant, id, &policy(), now, &why).await,
                AbortAction::Cancel => {
                    self.rollout_transition(tenant, id, RolloutEvent::Cancel, &policy(), now, &why)
                        .await
                }
            };
            match done {
                Ok(_) => stopped.push(id),
                // changed meanwhile (paused or cancelled by hand): nothing left to stop
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(stopped)
    }

    /// G3: running rollouts whose current wave reached its success threshold move to the
    /// next wave (waves that advance by hand wait). Returns the rollouts that moved.
    pub async fn advance_due_waves(&self, now: Millis) -> StoreResult<Vec<RolloutId>> {
        let staged: Vec<rollout::Model> = rollout::Entity::find()
            .filter(rollout::Column::State.eq("running"))
            .filter(rollout::Column::CurrentWave.gt(0))
            .all(self.db())
            .await?;
        let mut moved = Vec::new();
        for m in staged {
            let succeeded = u64::try_from(m.wave_succeeded).unwrap_or(0);
            let r = to_rollout(m);
            let Some(wave) = r.spec.wave(r.current_wave) else {
                continue;
            };
            if r.current_wave as usize >= r.spec.waves.len()
                || wave.advance != WaveAdvance::Auto
                || !wave.threshold_reached(succeeded)
            {
                continue;
            }
            let why = format!(
                "wave {} reached its success threshold: {succeeded} of {} tasks succeeded (threshold {}%)",
                r.current_wave, wave.tasks, wave.success_threshold
            );
            if self.next_wave(&r, &policy(), now, &why).await? {
                moved.push(r.id);
            }
        }
        Ok(moved)
    }

    /// G3: starts the next wave of a rollout by hand, whatever the current wave's threshold.
    pub async fn advance_wave(
        &self,
        tenant: TenantId,
        id: RolloutId,
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<Rollout> {
        let r = self.get_rollout(tenant, id).await?;
        if r.spec.waves.is_empty() {
            return Err(StoreError::Conflict(format!("rollout {id} has no waves")));
        }
        if r.state.is_finished() || r.state == RolloutState::Draft {
            return Err(StoreError::Conflict(format!(
                "rollout {id} is {}; only a scheduled, running or paused rollout moves to its next wave",
                r.state.as_str()
            )));
        }
        if r.current_wave as usize >= r.spec.waves.len() {
            return Err(StoreError::Conflict(format!(
                "rollout {id} is in its last wave ({})",
                r.current_wave
            )));
        }
        let succeeded: i64 = rollout::Entity::find_by_id(id.0)
            .one(self.db())
            .await?
            .map_or(0, |m| m.wave_succeeded);
        let why = format!(
            "wave {} left by hand with {succeeded} of {} tasks succeeded",
            r.current_wave,
            r.spec.wave(r.current_wave).map_or(0, |w| w.tasks)
        );
        if !self.next_wave(&r, actor, now, &why).await? {
            return Err(StoreError::Conflict(format!(
                "rollout {id} changed meanwhile; read it and try again"
            )));
        }
        self.get_rollout(tenant, id).await
    }

    /// Moves `r` from its current wave to the next (guarded on the wave read). A wave with a
    /// rate of its own starts that rate afresh; so does the rollout's rate after one.
    async fn next_wave(
        &self,
        r: &Rollout,
        actor: &Actor,
        now: Millis,
        why: &str,
    ) -> StoreResult<bool> {
        let from = r.current_wave;
        let to = from + 1;
        let own = |w: u32| r.spec.wave(w).is_some_and(|w| w.rate.is_some());
        let txn = self.begin_write().await?;
        let mut upd = rollout::Entity::update_many()
            .col_expr(rollout::Column::CurrentWave, Expr::value(to as i32))
            .col_expr(rollout::Column::WaveSucceeded, Expr::value(0i64))
            .filter(rollout::Column::Id.eq(r.id.0))
            .filter(rollout::Column::CurrentWave.eq(from as i32));
        if own(from) || own(to) {
            upd = upd
                .col_expr(
                    rollout::Column::RatePerMinute,
                    Expr::value(Option::<i32>::None),
                )
                .col_expr(
                    rollout::Column::RateNextThreshold,
                    Expr::value(Option::<i64>::None),
                )
                .col_expr(rollout::Column::RateBucket, Expr::value(0i64))
                .col_expr(rollout::Column::ReleasedTotal, Expr::value(0i64));
        }
        if upd.exec(&txn).await?.rows_affected != 1 {
            return Ok(false);
        }
        rollout_event(
            &txn,
            r.tenant_id,
            r.id,
            "wave_started",
            Some(r.state),
            Some(r.state),
            r.spec.wave(to).map(|w| w.tasks),
            actor,
            format!("wave {to} of {} started: {why}", r.spec.waves.len()),
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// G4: a window of `r` closed: its tasks not yet pushed are cancelled (the rollout asked
    /// for that rather than waiting for the next window).
    pub async fn cancel_at_window_close(&self, r: &Rollout, now: Millis) -> StoreResult<u64> {
        let txn = self.begin_write().await?;
        let n = bulk_transition(
            &txn,
            "rollout_id = ? AND state IN ('confirming', 'waiting', 'pending')",
            vec![r.id.0.into()],
            TaskState::Cancelled,
            "",
            &policy(),
            "the maintenance window closed before it was pushed",
            now,
        )
        .await?;
        if n > 0 {
            rollout_event(
                &txn,
                r.tenant_id,
                r.id,
                "window_closed",
                Some(r.state),
                Some(r.state),
                Some(n),
                &policy(),
                format!("the maintenance window closed: {n} tasks not yet pushed cancelled"),
                now,
            )
            .await?;
        }
        txn.commit().await?;
        Ok(n)
    }

    /// G3: a rollout's tasks by wave and state.
    pub async fn wave_counts(
        &self,
        tenant: TenantId,
        id: RolloutId,
    ) -> StoreResult<Vec<WaveCounts>> {
        let r = self.get_rollout(tenant, id).await?;
        #[derive(FromQueryResult)]
        struct Row {
            wave: i32,
            state: String,
            n: i64,
        }
        let rows = Row::find_by_statement(stmt(
            self.db().get_database_backend(),
            "SELECT CAST(wave AS INTEGER) AS wave, state, COUNT(*) AS n FROM task \
             WHERE rollout_id = ? GROUP BY wave, state",
            vec![r.id.0.into()],
        ))
        .all(self.db())
        .await?;
        let mut out: Vec<WaveCounts> = (1..=r.spec.waves.len())
            .map(|w| WaveCounts {
                wave: w as u32,
                counts: TaskState::ALL.iter().map(|s| (*s, 0)).collect(),
            })
            .collect();
        for row in rows {
            let (Some(slot), Some(state)) = (
                usize::try_from(row.wave)
                    .ok()
                    .and_then(|w| w.checked_sub(1))
                    .and_then(|i| out.get_mut(i)),
                TaskState::parse(&row.state),
            ) else {
                continue;
            };
            slot.counts.insert(state, u64::try_from(row.n).unwrap_or(0));
        }
        Ok(out)
    }

    /// G5 (kill switch): withdraws a package in one transaction: every rollout of it that
    /// has not finished is cancelled (a dynamic one takes no more devices), its unfinished
    /// tasks are cancelled, those not yet pushed and those in flight alike (as a cancelled
    /// rollout's are, O1: a device that still reports success is recorded as a late
    /// success, so it shows which devices took the package), no failed task is retried,
    /// and no new rollout may use the package until it is reinstated. Returns the package
    /// and the rollouts stopped with the tasks cancelled.
    pub async fn withdraw_package(
        &self,
        tenant: TenantId,
        id: PackageId,
        reason: &str,
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<(Package, Vec<RolloutId>, u64)> {
        let p = self.get_package(tenant, id).await?;
        if let Some((at, _)) = &p.withdrawn {
            return Err(StoreError::Conflict(format!(
                "package {id} was withdrawn already (at {})",
                crate::clock::rfc3339(*at)
            )));
        }
        let txn = self.begin_write().await?;
        let n = package::Entity::update_many()
            .col_expr(package::Column::WithdrawnAt, Expr::value(now))
            .col_expr(package::Column::WithdrawnReason, Expr::value(reason))
            .filter(package::Column::Id.eq(id.0))
            .filter(package::Column::TenantId.eq(tenant.0))
            .filter(package::Column::WithdrawnAt.is_null())
            .exec(&txn)
            .await?
            .rows_affected;
        if n != 1 {
            return Err(StoreError::Conflict(format!(
                "package {id} was withdrawn meanwhile"
            )));
        }
        let open: Vec<rollout::Model> = rollout::Entity::find()
            .filter(rollout::Column::TenantId.eq(tenant.0))
            .filter(rollout::Column::PackageId.eq(id.0))
            .filter(rollout::Column::State.is_in(["draft", "scheduled", "running", "paused"]))
            .all(&txn)
            .await?;
        let mut stopped = Vec::new();
        let mut cancelled = 0;
        let detail = format!("package {id} withdrawn: {reason}");
        for m in open {
            let from = RolloutState::parse(&m.state).unwrap_or(RolloutState::Running);
            rollout::Entity::update_many()
                .col_expr(rollout::Column::State, Expr::value("cancelled"))
                .col_expr(rollout::Column::FinishedAt, Expr::value(now))
                .col_expr(
                    rollout::Column::OpenDynamicPackageId,
                    Expr::value(Option::<i64>::None),
                )
                .col_expr(
                    rollout::Column::StrategyCancelled,
                    Expr::value(m.method == "dynamic"),
                )
                .filter(rollout::Column::Id.eq(m.id))
                .exec(&txn)
                .await?;
            let n = bulk_transition(
                &txn,
                &format!("rollout_id = ? AND state IN ({})", in_list(TaskState::OPEN)),
                vec![m.id.into()],
                TaskState::Cancelled,
                "",
                actor,
                &detail,
                now,
            )
            .await?;
            txn.execute(stmt(
                txn.get_database_backend(),
                "UPDATE task SET due_at = NULL WHERE rollout_id = ? AND state = 'failed' AND due_at IS NOT NULL",
                vec![m.id.into()],
            ))
            .await?;
            rollout_event(
                &txn,
                tenant,
                RolloutId(m.id),
                "withdrawn",
                Some(from),
                Some(RolloutState::Cancelled),
                Some(n),
                actor,
                format!("{detail}; {n} unfinished tasks cancelled"),
                now,
            )
            .await?;
            cancelled += n;
            stopped.push(RolloutId(m.id));
        }
        txn.commit().await?;
        Ok((self.get_package(tenant, id).await?, stopped, cancelled))
    }

    /// G5: a withdrawn package may be used by new rollouts again (stopped ones stay so).
    pub async fn reinstate_package(&self, tenant: TenantId, id: PackageId) -> StoreResult<Package> {
        let p = self.get_package(tenant, id).await?;
        if p.withdrawn.is_none() {
            return Err(StoreError::Conflict(format!(
                "package {id} is not withdrawn"
            )));
        }
        package::Entity::update_many()
            .col_expr(
                package::Column::WithdrawnAt,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(
                package::Column::WithdrawnReason,
                Expr::value(Option::<String>::None),
            )
            .filter(package::Column::Id.eq(p.id.0))
            .filter(package::Column::TenantId.eq(tenant.0))
            .exec(self.db())
            .await?;
        self.get_package(tenant, id).await
    }
}
