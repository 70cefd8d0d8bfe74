//! Tenant policies in the database (SPEC W1–W3): uploaded versions with their component
//! bytes, what a rollout attaches per hook, device records projected to what a hook reads,
//! an approval's verdicts applied as guarded task transitions, the rate policy's state, and
//! the streak of failed calls that pauses a rollout.

use super::engine::transition;
use super::entity::{policy, rollout};
use super::rollouts::{placeholders, rollout_event, stmt, Actor, Rollout};
use super::{is_unique_violation, Page, PageRequest, Store, StoreError, StoreResult};
use crate::clock::Millis;
use crate::domain::*;
use futures_util::future::BoxFuture;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, QuerySelect, Set, Value,
};
use std::collections::HashMap;

/// Runs a tenant's scope policy for the store while it makes a rollout or lets devices
/// join one: the store finds the candidates, the implementer (which owns the sandbox)
/// answers. An `Err` is the policy's failure, said in words.
pub trait ScopeHook: Send + Sync {
    /// The device fields the policy reads.
    fn fields<'a>(
        &'a self,
        tenant: TenantId,
        policy: &'a PolicyAttachment,
    ) -> BoxFuture<'a, Result<DeviceFields, String>>;

    /// Whether each device joins, one answer per device, in order; at most
    /// [`SCOPE_BATCH`] devices a call.
    fn select<'a>(
        &'a self,
        tenant: TenantId,
        policy: &'a PolicyAttachment,
        devices: Vec<DeviceRecord>,
    ) -> BoxFuture<'a, Result<Vec<bool>, String>>;

    /// Failed calls in a row after which a running rollout pauses (W3).
    fn max_failures(&self) -> u32;
}

/// Devices per scope call.
pub const SCOPE_BATCH: usize = 1_000;

/// The hook words of a policy row, in hook order.
fn hooks_of(s: &str) -> Vec<Hook> {
    s.split(',').filter_map(Hook::parse).collect()
}

fn to_info(m: &policy::Model) -> PolicyInfo {
    PolicyInfo {
        id: PolicyId(m.id),
        name: PolicyName::from_trusted(m.name.clone()),
        version: u32::try_from(m.version).unwrap_or(0),
        digest: m.digest.clone(),
        hooks: hooks_of(&m.hooks),
        size: u64::try_from(m.size).unwrap_or(0),
        created_at: m.created_at,
    }
}

/// The configs of a rollout's attachments as stored: a JSON object of hook -> config text.
pub(super) fn policy_config_json(p: &RolloutPolicies) -> String {
    let map: serde_json::Map<String, serde_json::Value> = p
        .attached()
        .map(|(h, a)| (h.as_str().to_owned(), a.config.clone().into()))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// A rollout row's attachments.
pub(super) fn policies_of(m: &rollout::Model) -> RolloutPolicies {
    let configs: HashMap<String, String> =
        serde_json::from_str(&m.policy_config).unwrap_or_default();
    let att = |hook: Hook, id: Option<i64>| {
        id.map(|id| PolicyAttachment {
            policy: PolicyId(id),
            config: configs.get(hook.as_str()).cloned().unwrap_or_default(),
        })
    };
    RolloutPolicies {
        scope: att(Hook::Scope, m.scope_policy_id),
        approval: att(Hook::Approval, m.approval_policy_id),
        rate: att(Hook::Rate, m.rate_policy_id),
    }
}

/// Device records of `ids`, in that order, with the fields `fields` asks for. Works on the
/// pool or inside a transaction.
pub(super) async fn device_records<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    ids: &[i64],
    fields: &DeviceFields,
) -> StoreResult<Vec<DeviceRecord>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let backend = c.get_database_backend();
    #[derive(FromQueryResult)]
    struct Row {
        id: i64,
        name: String,
        product_key: String,
        online: bool,
    }
    let ph = placeholders(ids.len());
    let id_vals = || -> Vec<Value> { ids.iter().map(|i| Value::from(*i)).collect() };
    let mut vals = id_vals();
    vals.push(tenant.0.into());
    let rows = Row::find_by_statement(stmt(
        backend,
        &format!(
            "SELECT d.id, d.name, p.product_key, d.online FROM device d \
             JOIN product p ON p.id = d.product_id WHERE d.id IN ({ph}) AND d.tenant_id = ?"
        ),
        vals,
    ))
    .all(c)
    .await?;
    #[derive(FromQueryResult)]
    struct Pair {
        device_id: i64,
        k: String,
        v: String,
    }
    // (device, key, value) rows of one kind, restricted to the asked keys
    let pairs = |sql: &'static str, keys: &[String]| {
        let mut vals = id_vals();
        vals.extend(keys.iter().map(|k| Value::from(k.clone())));
        let q = sql
            .replace("{ids}", &ph)
            .replace("{keys}", &placeholders(keys.len()));
        async move {
            let mut m: HashMap<i64, Vec<(String, String)>> = HashMap::new();
            for p in Pair::find_by_statement(stmt(backend, &q, vals))
                .all(c)
                .await?
            {
                m.entry(p.device_id).or_default().push((p.k, p.v));
            }
            Ok::<_, StoreError>(m)
        }
    };
    let want = |keys: &[String]| !keys.is_empty();
    let attributes = match want(&fields.attribute_keys) {
        true => Some(
            pairs(
                "SELECT device_id, name AS k, value AS v FROM device_attribute \
                 WHERE device_id IN ({ids}) AND name IN ({keys}) ORDER BY device_id, name",
                &fields.attribute_keys,
            )
            .await?,
        ),
        false => None,
    };
    let tags = match want(&fields.tag_keys) {
        true => Some(
            pairs(
                "SELECT device_id, key AS k, value AS v FROM device_tag \
                 WHERE device_id IN ({ids}) AND key IN ({keys}) ORDER BY device_id, key",
                &fields.tag_keys,
            )
            .await?,
        ),
        false => None,
    };
    let modules = match want(&fields.module_names) {
        true => Some(
            pairs(
                "SELECT device_id, module AS k, version AS v FROM device_module \
                 WHERE device_id IN ({ids}) AND module IN ({keys}) ORDER BY device_id, module",
                &fields.module_names,
            )
            .await?,
        ),
        false => None,
    };
    let groups = match fields.groups {
        true => Some(
            pairs(
                "SELECT m.device_id, g.name AS k, '' AS v FROM group_member m \
                 JOIN device_group g ON g.id = m.group_id \
                 WHERE m.device_id IN ({ids}) ORDER BY m.device_id, g.name",
                &[],
            )
            .await?,
        ),
        false => None,
    };
    let mut by_id: HashMap<i64, Row> = rows.into_iter().map(|r| (r.id, r)).collect();
    let take = |m: &Option<HashMap<i64, Vec<(String, String)>>>, id: i64| {
        m.as_ref().map(|m| m.get(&id).cloned().unwrap_or_default())
    };
    Ok(ids
        .iter()
        .filter_map(|id| by_id.remove(id))
        .map(|r| DeviceRecord {
            id: DeviceId(r.id),
            attributes: take(&attributes, r.id),
            tags: take(&tags, r.id),
            modules: take(&modules, r.id),
            groups: take(&groups, r.id).map(|g| g.into_iter().map(|(n, _)| n).collect()),
            name: r.name,
            product: r.product_key,
            online: r.online,
        })
        .collect())
}

/// Narrows the candidates in the temporary table `scope_candidate` (id primary key) to
/// those the scope policy selects, a batch at a time in id order. The first failure stops
/// it and is returned.
pub(super) async fn filter_scope_candidates<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    policy: &PolicyAttachment,
    hook: &dyn ScopeHook,
) -> StoreResult<Result<(), String>> {
    let backend = c.get_database_backend();
    let fields = match hook.fields(tenant, policy).await {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let mut after = 0i64;
    loop {
        #[derive(FromQueryResult)]
        struct Id {
            id: i64,
        }
        let ids: Vec<i64> = Id::find_by_statement(stmt(
            backend,
            "SELECT id FROM scope_candidate WHERE id > ? ORDER BY id LIMIT ?",
            vec![after.into(), (SCOPE_BATCH as i64).into()],
        ))
        .all(c)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
        let Some(last) = ids.last().copied() else {
            return Ok(Ok(()));
        };
        after = last;
        let records = device_records(c, tenant, &ids, &fields).await?;
        let asked: Vec<i64> = records.iter().map(|r| r.id.0).collect();
        let verdicts = match hook.select(tenant, policy, records).await {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let out: Vec<Value> = asked
            .iter()
            .zip(verdicts)
            .filter(|(_, keep)| !keep)
            .map(|(id, _)| Value::from(*id))
            .collect();
        // devices that vanished meanwhile were not asked about; they leave too
        let gone: Vec<Value> = ids
            .iter()
            .filter(|i| !asked.contains(i))
            .map(|i| Value::from(*i))
            .collect();
        for drop in [out, gone] {
            if !drop.is_empty() {
                c.execute(stmt(
                    backend,
                    &format!(
                        "DELETE FROM scope_candidate WHERE id IN ({})",
                        placeholders(drop.len())
                    ),
                    drop,
                ))
                .await?;
            }
        }
    }
}

impl Store {
    /// W1: stores a checked component as the next version of its name.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_policy(
        &self,
        tenant: TenantId,
        name: &PolicyName,
        component: &[u8],
        digest: &str,
        hooks: &[Hook],
        created_by: Option<ApiKeyId>,
        now: Millis,
    ) -> StoreResult<PolicyInfo> {
        let txn = self.begin_write().await?;
        let last: Option<i32> = policy::Entity::find()
            .select_only()
            .column_as(policy::Column::Version.max(), "v")
            .filter(policy::Column::TenantId.eq(tenant.0))
            .filter(policy::Column::Name.eq(name.as_str()))
            .into_tuple::<Option<i32>>()
            .one(&txn)
            .await?
            .flatten();
        let row = policy::ActiveModel {
            tenant_id: Set(tenant.0),
            name: Set(name.as_str().to_owned()),
            version: Set(last.unwrap_or(0) + 1),
            digest: Set(digest.to_owned()),
            hooks: Set(hooks
                .iter()
                .map(|h| h.as_str())
                .collect::<Vec<_>>()
                .join(",")),
            size: Set(i64::try_from(component.len()).unwrap_or(i64::MAX)),
            component: Set(component.to_vec()),
            created_by_key: Set(created_by.map(|k| k.0)),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await
        .map_err(|e| match is_unique_violation(&e) {
            true => StoreError::Conflict(format!(
                "another version of policy {name} was uploaded at the same moment; upload again"
            )),
            false => e.into(),
        })?;
        txn.commit().await?;
        Ok(to_info(&row))
    }

    /// W1: a tenant's policy versions, oldest first, optionally of one name.
    pub async fn list_policies(
        &self,
        tenant: TenantId,
        name: Option<&PolicyName>,
        page: PageRequest,
    ) -> StoreResult<Page<PolicyInfo>> {
        let mut q = policy::Entity::find()
            .select_only()
            .columns([
                policy::Column::Id,
                policy::Column::TenantId,
                policy::Column::Name,
                policy::Column::Version,
                policy::Column::Digest,
                policy::Column::Hooks,
                policy::Column::Size,
                policy::Column::CreatedByKey,
                policy::Column::CreatedAt,
            ])
            // the bytes stay in the database: a list never loads components
            .column_as(Expr::cust("NULL"), "component")
            .filter(policy::Column::TenantId.eq(tenant.0))
            .filter(policy::Column::Id.gt(page.after));
        if let Some(n) = name {
            q = q.filter(policy::Column::Name.eq(n.as_str()));
        }
        #[derive(FromQueryResult)]
        struct Row {
            id: i64,
            name: String,
            version: i32,
            digest: String,
            hooks: String,
            size: i64,
            created_at: i64,
        }
        let rows = q
            .order_by_asc(policy::Column::Id)
            .limit(page.limit + 1)
            .into_model::<Row>()
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id).map(|r| PolicyInfo {
            id: PolicyId(r.id),
            name: PolicyName::from_trusted(r.name),
            version: u32::try_from(r.version).unwrap_or(0),
            digest: r.digest,
            hooks: hooks_of(&r.hooks),
            size: u64::try_from(r.size).unwrap_or(0),
            created_at: r.created_at,
        }))
    }

    /// W1: one of the tenant's policy versions (404 for another tenant's).
    pub async fn get_policy(&self, tenant: TenantId, id: PolicyId) -> StoreResult<PolicyInfo> {
        Ok(to_info(&self.policy_row(tenant, id).await?))
    }

    /// A policy version with its component's bytes.
    pub async fn policy_component(
        &self,
        tenant: TenantId,
        id: PolicyId,
    ) -> StoreResult<(PolicyInfo, Vec<u8>)> {
        let m = self.policy_row(tenant, id).await?;
        let info = to_info(&m);
        Ok((info, m.component))
    }

    async fn policy_row(&self, tenant: TenantId, id: PolicyId) -> StoreResult<policy::Model> {
        policy::Entity::find_by_id(id.0)
            .filter(policy::Column::TenantId.eq(tenant.0))
            .one(self.db())
            .await?
            .ok_or(StoreError::NotFound("policy"))
    }

    /// W1: deletes a policy version no unfinished rollout uses; returns it.
    pub async fn delete_policy(&self, tenant: TenantId, id: PolicyId) -> StoreResult<PolicyInfo> {
        let txn = self.begin_write().await?;
        let info = to_info(
            &policy::Entity::find_by_id(id.0)
                .filter(policy::Column::TenantId.eq(tenant.0))
                .one(&txn)
                .await?
                .ok_or(StoreError::NotFound("policy"))?,
        );
        let users: Vec<i64> = rollout::Entity::find()
            .select_only()
            .column(rollout::Column::Id)
            .filter(rollout::Column::TenantId.eq(tenant.0))
            .filter(rollout::Column::State.is_in(["draft", "scheduled", "running", "paused"]))
            .filter(
                rollout::Column::ScopePolicyId
                    .eq(id.0)
                    .or(rollout::Column::ApprovalPolicyId.eq(id.0))
                    .or(rollout::Column::RatePolicyId.eq(id.0)),
            )
            .order_by_asc(rollout::Column::Id)
            .limit(10)
            .into_tuple()
            .all(&txn)
            .await?;
        if !users.is_empty() {
            return Err(StoreError::Conflict(format!(
                "policy {} v{} is used by the unfinished rollout(s) {}; cancel them or let them finish first",
                info.name,
                info.version,
                users
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        policy::Entity::delete_by_id(id.0).exec(&txn).await?;
        txn.commit().await?;
        Ok(info)
    }

    /// W2 approval: the next up-to-`n` waiting tasks of a rollout after task `after`, not
    /// deferred past `now`, in release order, as the approval policy sees them.
    pub async fn approval_candidates(
        &self,
        r: &Rollout,
        wave: u32,
        n: u64,
        after: i64,
        fields: &DeviceFields,
        now: Millis,
    ) -> StoreResult<Vec<ApprovalTask>> {
        if n == 0 {
            return Ok(vec![]);
        }
        #[derive(FromQueryResult)]
        struct Row {
            id: i64,
            device_id: i64,
            retries: i32,
            version: Option<String>,
        }
        let backend = self.db().get_database_backend();
        let rows = Row::find_by_statement(stmt(
            backend,
            "SELECT t.id, t.device_id, t.retries, m.version FROM task t \
             LEFT JOIN device_module m ON m.device_id = t.device_id AND m.module = ? \
             WHERE t.rollout_id = ? AND t.state = 'waiting' AND t.wave <= ? AND t.id > ? \
             AND (t.not_before IS NULL OR t.not_before <= ?) ORDER BY t.id LIMIT ?",
            vec![
                r.module.as_str().into(),
                r.id.0.into(),
                i64::from(wave).into(),
                after.into(),
                now.into(),
                i64::try_from(n).unwrap_or(i64::MAX).into(),
            ],
        ))
        .all(self.db())
        .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.device_id).collect();
        let mut records: HashMap<i64, DeviceRecord> =
            device_records(self.db(), r.tenant_id, &ids, fields)
                .await?
                .into_iter()
                .map(|d| (d.id.0, d))
                .collect();
        Ok(rows
            .into_iter()
            .filter_map(|t| {
                records.remove(&t.device_id).map(|device| ApprovalTask {
                    task: TaskId(t.id),
                    device,
                    from_version: t.version.unwrap_or_default(),
                    attempt: u32::try_from(t.retries).unwrap_or(0),
                })
            })
            .collect())
    }

    /// W5: the approval policy's view of devices that have no task yet (a dry run): their
    /// records and the version each reported for `module` (empty when unknown).
    pub async fn approval_records(
        &self,
        tenant: TenantId,
        module: &ModuleName,
        ids: &[DeviceId],
        fields: &DeviceFields,
    ) -> StoreResult<Vec<(DeviceRecord, String)>> {
        let raw: Vec<i64> = ids.iter().map(|d| d.0).collect();
        let records = device_records(self.db(), tenant, &raw, fields).await?;
        let asked = DeviceFields {
            module_names: vec![module.as_str().to_owned()],
            ..Default::default()
        };
        let versions: HashMap<i64, String> = device_records(self.db(), tenant, &raw, &asked)
            .await?
            .into_iter()
            .filter_map(|d| {
                let v = d.modules?.into_iter().next()?.1;
                Some((d.id.0, v))
            })
            .collect();
        Ok(records
            .into_iter()
            .map(|d| {
                let v = versions.get(&d.id.0).cloned().unwrap_or_default();
                (d, v)
            })
            .collect())
    }

    /// W2 approval: deferred tasks wait until their time; rejected ones end `rejected` with
    /// the policy's reason (a guarded move from `waiting`, audited as the policy's).
    pub async fn apply_verdicts(
        &self,
        r: &Rollout,
        deferred: &[(TaskId, Millis)],
        rejected: &[(TaskId, String)],
        now: Millis,
    ) -> StoreResult<()> {
        if deferred.is_empty() && rejected.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        // one statement per distinct time (a policy defers its batch by a few lengths)
        let mut by_time: HashMap<Millis, Vec<Value>> = HashMap::new();
        for (t, until) in deferred {
            by_time.entry(*until).or_default().push(t.0.into());
        }
        for (until, ids) in by_time {
            let mut vals = vec![Value::from(until)];
            let ph = placeholders(ids.len());
            vals.extend(ids);
            vals.push(r.id.0.into());
            txn.execute(stmt(
                backend,
                &format!(
                    "UPDATE task SET not_before = ? WHERE id IN ({ph}) AND rollout_id = ? AND state = 'waiting'"
                ),
                vals,
            ))
            .await?;
        }
        let actor = Actor {
            cause: Cause::Policy,
            who: None,
        };
        for (t, reason) in rejected {
            transition(
                &txn,
                "id = ? AND rollout_id = ? AND state = 'waiting'",
                vec![t.0.into(), r.id.0.into()],
                TaskState::Rejected,
                ", failure_reason = 'policy_rejected', last_message = ?",
                vec![reason.clone().into()],
                &actor,
                &format!("rejected by the approval policy: {reason}"),
                now,
            )
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// W2 rate: the rate policy's state after a tick, with the logical time it covers.
    /// `released` tasks were released at this tick.
    pub async fn save_policy_state(
        &self,
        id: RolloutId,
        state: Option<Vec<u8>>,
        released: u64,
        ticked_at: Millis,
    ) -> StoreResult<()> {
        let mut u = rollout::Entity::update_many()
            .col_expr(rollout::Column::TickedAt, Expr::value(ticked_at))
            .col_expr(
                rollout::Column::ReleasedTotal,
                Expr::col(rollout::Column::ReleasedTotal)
                    .add(i64::try_from(released).unwrap_or(i64::MAX)),
            )
            .filter(rollout::Column::Id.eq(id.0));
        if let Some(state) = state {
            u = u.col_expr(rollout::Column::RatePolicyState, Expr::value(state));
        }
        u.exec(self.db()).await?;
        Ok(())
    }

    /// W2 rate: the rate policy paused the rollout, or aborted (cancelled) it, with its
    /// reason recorded as the rollout event.
    pub async fn stop_by_policy(
        &self,
        r: &Rollout,
        cancel: bool,
        reason: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let actor = Actor {
            cause: Cause::Policy,
            who: None,
        };
        let done = match cancel {
            true => self
                .rollout_transition(
                    r.tenant_id,
                    r.id,
                    RolloutEvent::Cancel,
                    &actor,
                    now,
                    &format!("aborted by the rate policy: {reason}"),
                )
                .await
                .map(|_| ()),
            false => self
                .pause_by(
                    r.tenant_id,
                    r.id,
                    &actor,
                    now,
                    &format!("paused by the rate policy: {reason}"),
                )
                .await
                .map(|_| ()),
        };
        match done {
            // paused or ended meanwhile
            Err(StoreError::Conflict(_)) => Ok(()),
            other => other,
        }
    }

    /// W3: a policy call of a rollout failed. Records it as a rollout event; at the
    /// `max`-th failure in a row a running rollout pauses with the reason. Returns whether it
    /// paused.
    pub async fn policy_failed(
        &self,
        r: &Rollout,
        hook: Hook,
        why: &str,
        max: u32,
        now: Millis,
    ) -> StoreResult<bool> {
        let backend = self.db().get_database_backend();
        #[derive(FromQueryResult)]
        struct N {
            policy_failures: i32,
        }
        let txn = self.begin_write().await?;
        txn.execute(stmt(
            backend,
            "UPDATE rollout SET policy_failures = policy_failures + 1 WHERE id = ?",
            vec![r.id.0.into()],
        ))
        .await?;
        let n = N::find_by_statement(stmt(
            backend,
            "SELECT policy_failures FROM rollout WHERE id = ?",
            vec![r.id.0.into()],
        ))
        .one(&txn)
        .await?
        .map_or(0, |n| n.policy_failures);
        let actor = Actor {
            cause: Cause::Policy,
            who: None,
        };
        rollout_event(
            &txn,
            r.tenant_id,
            r.id,
            "policy_failed",
            Some(r.state),
            Some(r.state),
            None,
            &actor,
            format!("{} policy failed ({n} in a row): {why}", hook.as_str()),
            now,
        )
        .await?;
        txn.commit().await?;
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n < max.max(1) || r.state != RolloutState::Running {
            return Ok(false);
        }
        let detail = format!(
            "paused: the {} policy failed {n} times in a row; the last: {why}",
            hook.as_str()
        );
        match self.pause_by(r.tenant_id, r.id, &actor, now, &detail).await {
            Ok(_) => Ok(true),
            // paused or ended meanwhile: nothing to do
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// W3: a policy call of the rollout succeeded, which ends a failure streak.
    pub async fn policy_recovered(&self, id: RolloutId) -> StoreResult<()> {
        rollout::Entity::update_many()
            .col_expr(rollout::Column::PolicyFailures, Expr::value(0))
            .filter(rollout::Column::Id.eq(id.0))
            .filter(rollout::Column::PolicyFailures.gt(0))
            .exec(self.db())
            .await?;
        Ok(())
    }
}

/// W2 scope: when the rollout has a scope policy, the candidates of `candidates` (a query
/// of device ids) are collected into the temporary table `scope_candidate`, narrowed by the
/// policy, and the query returned reads that table (drop it with
/// [`drop_scope_candidates`] once the tasks are written). Without one, `candidates` comes
/// back as it is. A failing policy fails the whole call: nothing is made on its behalf.
pub(super) async fn scoped_candidates(
    txn: &sea_orm::DatabaseTransaction,
    tenant: TenantId,
    policies: &RolloutPolicies,
    hook: Option<&dyn ScopeHook>,
    candidates: sea_orm::sea_query::SelectStatement,
) -> StoreResult<(sea_orm::sea_query::SelectStatement, bool)> {
    use sea_orm::sea_query::{Alias, Query};
    let Some(policy) = &policies.scope else {
        return Ok((candidates, false));
    };
    let hook = hook
        .ok_or_else(|| StoreError::PolicyFailed("the scope policy could not be run here".into()))?;
    let backend = txn.get_database_backend();
    txn.execute_unprepared(if backend == sea_orm::DbBackend::Postgres {
        "CREATE TEMP TABLE scope_candidate (id BIGINT PRIMARY KEY) ON COMMIT DROP"
    } else {
        "CREATE TEMP TABLE scope_candidate (id INTEGER PRIMARY KEY)"
    })
    .await?;
    let mut collect = Query::insert();
    collect
        .into_table(Alias::new("scope_candidate"))
        .columns([Alias::new("id")])
        .select_from(candidates)
        .map_err(|e| StoreError::Database(sea_orm::DbErr::Custom(e.to_string())))?;
    txn.execute(backend.build(&collect)).await?;
    if let Err(why) = filter_scope_candidates(txn, tenant, policy, hook).await? {
        return Err(StoreError::PolicyFailed(format!(
            "the scope policy failed, so the rollout takes no device: {why}"
        )));
    }
    let mut kept = Query::select();
    kept.column(Alias::new("id"))
        .from(Alias::new("scope_candidate"));
    Ok((kept, true))
}

/// Drops the table [`scoped_candidates`] made, when it made one.
pub(super) async fn drop_scope_candidates(
    txn: &sea_orm::DatabaseTransaction,
    staged: bool,
) -> StoreResult<()> {
    if staged {
        txn.execute_unprepared("DROP TABLE scope_candidate").await?;
    }
    Ok(())
}

/// W2 scope for devices joining a dynamic rollout: those of `ids` the policy selects, or
/// the policy's failure.
pub(super) async fn select_devices<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    policy: &PolicyAttachment,
    hook: &dyn ScopeHook,
    ids: &[i64],
) -> StoreResult<Result<Vec<i64>, String>> {
    let fields = match hook.fields(tenant, policy).await {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let mut kept = Vec::new();
    for chunk in ids.chunks(SCOPE_BATCH) {
        let records = device_records(c, tenant, chunk, &fields).await?;
        let asked: Vec<i64> = records.iter().map(|r| r.id.0).collect();
        match hook.select(tenant, policy, records).await {
            Ok(v) => kept.extend(asked.into_iter().zip(v).filter(|(_, k)| *k).map(|(i, _)| i)),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(kept))
}
