//! Rollouts, their tasks and audit events (SPEC B1–B10, P2, P3, R10, R11, R13, R17, O1–O4).
//!
//! Fleet scale is the normal case: a rollout's tasks are written with one `INSERT … SELECT`
//! over the scope's condition inside the transaction that writes the rollout and its first
//! event (the unit of work), never a round trip per device nor the device set in memory.
//! Bulk transitions (cancel, confirm, re-run, override) are guarded set-based updates that
//! write one audit row per task they move; creation writes one rollout event saying how many
//! tasks it made, not a million task events. Counts by state come from a `GROUP BY` over the
//! `(rollout_id, state, id)` index, which the index alone answers.

use super::entity::{
    device, device_attribute, device_list, device_list_member, device_module, rollout,
    rollout_event, task, task_event,
};
use super::search::lock_tenant;
use super::{
    is_unique_violation, Page, PageRequest, ScopeHook, Store, StoreError, StoreResult,
    MAX_BIND_PARAMS,
};
use crate::clock::Millis;
use crate::domain::*;
use sea_orm::sea_query::{Alias, Expr, Query, SelectStatement};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend,
    EntityTrait, FromQueryResult, Order, QueryFilter, QueryOrder, QuerySelect, Set, Statement,
    Value,
};
use std::collections::BTreeMap;

/// Who or what caused a change (O4): the cause and, for API calls, the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub cause: Cause,
    pub who: Option<String>,
}

impl Actor {
    pub fn key(key: ApiKeyId) -> Self {
        Self {
            cause: Cause::Api,
            who: Some(format!("key:{key}")),
        }
    }
}

/// A rollout as stored, with its options.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub id: RolloutId,
    pub tenant_id: TenantId,
    pub product_id: ProductId,
    pub package_id: PackageId,
    pub module: ModuleName,
    pub target_version: Version,
    pub state: RolloutState,
    pub spec: RolloutSpec,
    /// O1: a dynamic rollout whose strategy was cancelled takes no new devices.
    pub strategy_cancelled: bool,
    /// Tasks written at creation.
    pub task_count: u64,
    pub created_by: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// G3: the wave running now (1-based; 0 without waves).
    pub current_wave: u32,
    /// G1: its finished tasks by outcome, as kept while they finished.
    pub outcomes: Outcomes,
}

/// G7: what a rollout would take, made and rolled back.
#[derive(Debug, Clone, PartialEq)]
pub struct DryRun {
    pub devices: u64,
    /// A page of their names, in the order the engine releases them (task order).
    pub names: Vec<String>,
    /// Its waves with their task counts.
    pub waves: Vec<Wave>,
    /// Earlier not-yet-started tasks it would replace (R10, R11).
    pub replaced: u64,
    /// W5: every device in release order, when an approval policy will be asked about
    /// them (empty otherwise).
    pub release_order: Vec<DeviceId>,
}

enum Made {
    Created(Box<Rollout>),
    Projected(DryRun),
}

/// Task counts of a rollout by state (O2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskCounts(pub BTreeMap<TaskState, u64>);

impl TaskCounts {
    pub fn get(&self, s: TaskState) -> u64 {
        self.0.get(&s).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// One task with its device's name (O2).
#[derive(Debug, Clone, PartialEq, FromQueryResult)]
pub struct TaskRow {
    pub id: i64,
    pub rollout_id: i64,
    pub device_id: i64,
    pub device_name: String,
    pub state: String,
    pub retries: i32,
    pub progress: i32,
    pub failure_reason: Option<String>,
    pub last_message: Option<String>,
    pub late_success_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// One audit record (O4): of a rollout (`task_id` absent) or of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: i64,
    pub rollout_id: RolloutId,
    pub task_id: Option<TaskId>,
    pub at: Millis,
    pub event: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub tasks: Option<u64>,
    pub cause: String,
    pub actor: Option<String>,
    pub detail: String,
}

/// Which tasks a list shows.
#[derive(Debug, Clone, Copy)]
pub enum TaskOwner {
    Rollout(RolloutId),
    Device(DeviceId),
    Package(PackageId),
}

/// Filters of the rollout list.
#[derive(Debug, Clone, Default)]
pub struct RolloutFilter {
    pub package: Option<PackageId>,
    pub state: Option<RolloutState>,
}

/// Up to this many unknown names are kept for the reply; the count is exact.
pub const MAX_UNKNOWN_LISTED: usize = 1_000_000;

/// `?` placeholders as the backend wants them (`$1`, `$2`, … on PostgreSQL).
pub(super) fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = if backend == DbBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

pub(super) fn in_list(states: &[TaskState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

fn json_text(v: serde_json::Value) -> String {
    v.to_string()
}

fn scope_json(scope: &Scope, list: Option<DeviceListId>) -> serde_json::Value {
    use serde_json::json;
    match scope {
        Scope::All => json!({}),
        Scope::Selected(_) => json!({ "device_list_id": list.map(|l| l.0) }),
        Scope::Phased { percent, .. } => {
            json!({ "device_list_id": list.map(|l| l.0), "percent": percent })
        }
        Scope::Group(g) => json!({ "group_id": g.0 }),
        Scope::Attribute { name, value } => match value {
            AttributeValue::OneOf(vs) => json!({ "name": name, "values": vs }),
            AttributeValue::Range { min, max } => json!({ "name": name, "min": min, "max": max }),
        },
        Scope::Tag { key, values } => json!({ "key": key, "values": values }),
        Scope::AssetNodes(nodes) => {
            json!({ "node_ids": nodes.iter().map(|n| n.0).collect::<Vec<_>>() })
        }
    }
}

fn scope_from(kind: &str, text: &str) -> Scope {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let list = || DeviceSource::List(DeviceListId(v["device_list_id"].as_i64().unwrap_or(0)));
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    match kind {
        "selected" => Scope::Selected(list()),
        "phased" => Scope::Phased {
            devices: list(),
            percent: v["percent"].as_u64().unwrap_or(0) as u32,
        },
        "group" => Scope::Group(GroupId(v["group_id"].as_i64().unwrap_or(0))),
        "attribute" => Scope::Attribute {
            name: v["name"].as_str().unwrap_or_default().to_owned(),
            value: if v.get("min").is_some() {
                AttributeValue::Range {
                    min: v["min"].as_f64().unwrap_or(0.0),
                    max: v["max"].as_f64().unwrap_or(0.0),
                }
            } else {
                AttributeValue::OneOf(strings("values"))
            },
        },
        "tag" => Scope::Tag {
            key: v["key"].as_str().unwrap_or_default().to_owned(),
            values: strings("values"),
        },
        "asset_nodes" => Scope::AssetNodes(
            v["node_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_i64())
                        .map(AssetNodeId)
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => Scope::All,
    }
}

fn word<T>(s: &str, parse: fn(&str) -> Option<T>, default: T) -> T {
    parse(s).unwrap_or(default)
}

fn to_u32(v: Option<i32>) -> Option<u32> {
    v.and_then(|n| u32::try_from(n).ok())
}

pub(crate) fn to_rollout(m: rollout::Model) -> Rollout {
    let outcomes = super::safety::outcomes_of(&m);
    let rate = match m.rate_kind.as_deref() {
        Some("constant") => Some(PushRate::Constant {
            per_minute: to_u32(m.rate_base).unwrap_or(0),
        }),
        Some("variable") => Some(PushRate::Variable {
            base: to_u32(m.rate_base).unwrap_or(0),
            factor_centi: to_u32(m.rate_factor_centi).unwrap_or(0),
            max: to_u32(m.rate_max).unwrap_or(0),
            threshold: to_u32(m.rate_threshold).unwrap_or(0),
            count_on: word(
                m.rate_count_on.as_deref().unwrap_or(""),
                RateCountOn::parse,
                RateCountOn::Pushed,
            ),
        }),
        _ => None,
    };
    let source_versions: Vec<String> = serde_json::from_str(&m.source_versions).unwrap_or_default();
    let tags: Vec<(String, String)> = serde_json::from_str(&m.tags).unwrap_or_default();
    let policies = super::policies::policies_of(&m);
    let spec = RolloutSpec {
        name: m.name,
        description: m.description,
        method: word(&m.method, UpdateMethod::parse, UpdateMethod::Static),
        rollout_type: word(&m.rollout_type, RolloutType::parse, RolloutType::Update),
        scope: scope_from(&m.scope_kind, &m.scope),
        source_versions: source_versions
            .into_iter()
            .map(Version::from_trusted)
            .collect(),
        schedule: Schedule {
            start_at: m.start_at,
            end_at: m.end_at,
            daily_repeat: m.daily_repeat,
            utc_offset_minutes: m.utc_offset_minutes,
        },
        push_mode: word(&m.push_mode, PushMode::parse, PushMode::Push),
        rate,
        max_concurrency: to_u32(m.max_concurrency),
        retry: match (to_u32(m.retry_interval_minutes), to_u32(m.retry_max)) {
            (Some(i), Some(n)) => Some(Retry {
                interval_minutes: i,
                max_retries: n,
            }),
            _ => None,
        },
        timeout_minutes: to_u32(m.timeout_minutes),
        retry_timeouts: m.retry_timeouts,
        multi_module: m.multi_module,
        override_previous: m.override_previous,
        only_new_reports: m.only_new_reports,
        app_confirm: m.app_confirm,
        download_protocol: word(
            &m.download_protocol,
            DownloadProtocol::parse,
            DownloadProtocol::Https,
        ),
        tags,
        start_on_creation: true,
        abort_rules: super::safety::abort_rules_from(&m.abort_rules),
        waves: super::safety::waves_from(&m.waves),
        window: super::safety::window_from(m.maintenance_window.as_deref()),
        force_reinstall: m.force_reinstall,
        policies,
    };
    Rollout {
        id: RolloutId(m.id),
        tenant_id: TenantId(m.tenant_id),
        product_id: ProductId(m.product_id),
        package_id: PackageId(m.package_id),
        module: ModuleName::from_trusted(m.module),
        target_version: Version::from_trusted(m.target_version),
        state: word(&m.state, RolloutState::parse, RolloutState::Draft),
        spec,
        strategy_cancelled: m.strategy_cancelled,
        task_count: u64::try_from(m.task_count).unwrap_or(0),
        created_by: m.created_by_key.map(|k| format!("key:{k}")),
        created_at: m.created_at,
        started_at: m.started_at,
        finished_at: m.finished_at,
        current_wave: u32::try_from(m.current_wave).unwrap_or(0),
        outcomes,
    }
}

fn i32_of(v: Option<u32>) -> Option<i32> {
    v.and_then(|n| i32::try_from(n).ok())
}

/// Sets the state-change columns of a bulk transition and records one event per task moved,
/// atomically: on PostgreSQL one statement (rows locked, old state returned by the update);
/// on SQLite two statements under the write lock the transaction already holds.
/// `filter` is SQL over `task` columns (with `?` values) and must include the state guard.
#[allow(clippy::too_many_arguments)]
pub(super) async fn bulk_transition(
    txn: &DatabaseTransaction,
    filter: &str,
    values: Vec<Value>,
    to: TaskState,
    extra_set: &str,
    actor: &Actor,
    detail: &str,
    now: Millis,
) -> StoreResult<u64> {
    let backend = txn.get_database_backend();
    let set_finished = if to.is_terminal() { "?" } else { "NULL" };
    let ev_vals = |mut v: Vec<Value>| {
        v.insert(0, Value::from(now));
        v.insert(1, Value::from(actor.cause.as_str()));
        v.insert(2, Value::from(actor.who.clone()));
        v.insert(3, Value::from(detail));
        v
    };
    match backend {
        DbBackend::Postgres => {
            let sql = format!(
                "WITH old AS (SELECT id, state FROM task WHERE {filter} FOR UPDATE), \
                 moved AS (UPDATE task SET state = '{to}', updated_at = ?, finished_at = {fin}{extra} \
                   FROM old WHERE task.id = old.id RETURNING task.id, task.rollout_id, old.state AS from_state) \
                 INSERT INTO task_event (task_id, rollout_id, at, from_state, to_state, cause, actor, detail) \
                 SELECT id, rollout_id, ?, from_state, '{to}', ?, ?, ? FROM moved",
                to = to.as_str(),
                fin = set_finished,
                extra = extra_set,
            );
            let mut v = values;
            let mut head = vec![Value::from(now)];
            if to.is_terminal() {
                head.push(Value::from(now));
            }
            // order: filter values (CTE old), then SET values, then event values
            let filter_vals = std::mem::take(&mut v);
            let mut all = filter_vals;
            all.extend(head);
            all.push(Value::from(now));
            all.push(Value::from(actor.cause.as_str()));
            all.push(Value::from(actor.who.clone()));
            all.push(Value::from(detail));
            let r = txn.execute(stmt(backend, &sql, all)).await?;
            Ok(r.rows_affected())
        }
        _ => {
            let ins = format!(
                "INSERT INTO task_event (task_id, rollout_id, at, from_state, to_state, cause, actor, detail) \
                 SELECT id, rollout_id, ?, state, '{to}', ?, ?, ? FROM task WHERE {filter}",
                to = to.as_str()
            );
            txn.execute(stmt(backend, &ins, ev_vals(values.clone())))
                .await?;
            let upd = format!(
                "UPDATE task SET state = '{to}', updated_at = ?, finished_at = {fin}{extra} WHERE {filter}",
                to = to.as_str(),
                fin = set_finished,
                extra = extra_set,
            );
            let mut v = vec![Value::from(now)];
            if to.is_terminal() {
                v.push(Value::from(now));
            }
            v.extend(values);
            let r = txn.execute(stmt(backend, &upd, v)).await?;
            Ok(r.rows_affected())
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn rollout_event(
    txn: &impl ConnectionTrait,
    tenant: TenantId,
    rollout: RolloutId,
    event: &str,
    from: Option<RolloutState>,
    to: Option<RolloutState>,
    tasks: Option<u64>,
    actor: &Actor,
    detail: String,
    now: Millis,
) -> StoreResult<()> {
    rollout_event::ActiveModel {
        tenant_id: Set(tenant.0),
        rollout_id: Set(rollout.0),
        at: Set(now),
        event: Set(event.to_owned()),
        from_state: Set(from.map(|s| s.as_str().to_owned())),
        to_state: Set(to.map(|s| s.as_str().to_owned())),
        tasks: Set(tasks.and_then(|n| i64::try_from(n).ok())),
        cause: Set(actor.cause.as_str().to_owned()),
        actor: Set(actor.who.clone()),
        detail: Set(detail),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    Ok(())
}

impl Store {
    /// What the rollout rules need to know of a package (R14, R17, B9).
    pub async fn package_facts(
        &self,
        tenant: TenantId,
        package: PackageId,
    ) -> StoreResult<PackageFacts> {
        let p = self.get_package(tenant, package).await?;
        let files = self.package_files(tenant, package).await?;
        Ok(PackageFacts {
            kind: p.kind,
            source_version: p.source_version,
            status: p.status,
            file_sizes: files.iter().map(|f| f.size).collect(),
        })
    }

    /// SPEC B5: resolves uploaded device names of a product into a stored device list, all
    /// or nothing. The names go into a temporary table in batches, one anti-join finds the
    /// unknown ones (then nothing is stored and they are returned, in input order), and one
    /// `INSERT … SELECT` joins the rest to their devices. `names` must be ready at disk
    /// speed (a spool), since the write transaction is open while it is read.
    pub async fn create_device_list<S>(
        &self,
        tenant: TenantId,
        product: ProductId,
        mut names: S,
        now: Millis,
    ) -> StoreResult<(DeviceListId, u64)>
    where
        S: futures_util::Stream<Item = std::io::Result<DeviceName>> + Unpin,
    {
        use futures_util::StreamExt;
        let p = self.get_product(tenant, product).await?;
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        stage_names_table(&txn).await?;
        let mut batch: Vec<DeviceName> = Vec::with_capacity(STAGE_BATCH);
        let mut row: i64 = 0;
        while let Some(n) = names.next().await {
            batch.push(n.map_err(StoreError::Spool)?);
            if batch.len() >= STAGE_BATCH {
                stage_names(&txn, &mut row, std::mem::take(&mut batch)).await?;
            }
        }
        stage_names(&txn, &mut row, batch).await?;
        if row == 0 {
            return Err(Invalid::new("body", "the list holds no device names").into());
        }
        // PostgreSQL has no foreign key on the members (migration `hot_keys`): the tenant
        // lock keeps a device from being deleted while they are written.
        lock_tenant(&txn, tenant).await?;
        let list = finish_device_list(&txn, backend, tenant, p.id, now).await?;
        txn.commit().await?;
        Ok(list)
    }

    /// Creates a rollout and its tasks in one transaction (SPEC B1–B10, P2, R10, R11, R13,
    /// R17): all of it commits, or none.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_rollout(
        &self,
        tenant: TenantId,
        package: PackageId,
        spec: RolloutSpec,
        actor: &Actor,
        created_by: Option<ApiKeyId>,
        scope: Option<&dyn ScopeHook>,
        now: Millis,
    ) -> StoreResult<Rollout> {
        match self
            .make_rollout(tenant, package, spec, actor, created_by, scope, now, None)
            .await?
        {
            Made::Created(r) => Ok(*r),
            Made::Projected(_) => Err(StoreError::Database(sea_orm::DbErr::Custom(
                "a rollout was projected when it was to be created".into(),
            ))),
        }
    }

    /// G7: which devices a rollout would take, made exactly as [`Store::create_rollout`]
    /// makes it, inside a transaction that is then rolled back: the count, the page
    /// `(offset, limit)` of device names in release order, and its waves with their task
    /// counts.
    pub async fn project_rollout(
        &self,
        tenant: TenantId,
        package: PackageId,
        spec: RolloutSpec,
        scope: Option<&dyn ScopeHook>,
        now: Millis,
        page: (u64, u64),
    ) -> StoreResult<DryRun> {
        let actor = Actor {
            cause: Cause::Api,
            who: None,
        };
        match self
            .make_rollout(tenant, package, spec, &actor, None, scope, now, Some(page))
            .await?
        {
            Made::Projected(d) => Ok(d),
            Made::Created(_) => Err(StoreError::Database(sea_orm::DbErr::Custom(
                "a rollout was created when it was to be projected".into(),
            ))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn make_rollout(
        &self,
        tenant: TenantId,
        package: PackageId,
        spec: RolloutSpec,
        actor: &Actor,
        created_by: Option<ApiKeyId>,
        scope: Option<&dyn ScopeHook>,
        now: Millis,
        dry: Option<(u64, u64)>,
    ) -> StoreResult<Made> {
        let pkg = self.get_package(tenant, package).await?;
        // G5
        if let Some((at, reason)) = &pkg.withdrawn {
            return Err(StoreError::Conflict(format!(
                "package {} was withdrawn at {} ({reason}); reinstate it before a new rollout uses it",
                pkg.id,
                crate::clock::rfc3339(*at)
            )));
        }
        let prod = self.get_product(tenant, pkg.product_id).await?;
        // P2
        if spec.rollout_type == RolloutType::Update
            && prod.require_verification
            && pkg.status == PackageStatus::Unverified
        {
            return Err(StoreError::Conflict(format!(
                "product {} requires a verified package for update rollouts and package {} is \
                 unverified; run a verification rollout (type verification) first, or mark the \
                 package no_need",
                prod.id, pkg.id
            )));
        }
        // Scopes over the registry resolve (and 404 foreign ids) before the transaction.
        let selection = self.scope_selection(tenant, &spec).await?;

        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        // One rollout creation per tenant at a time: override and "has an open task"
        // decisions (R10, R11) must see each other's tasks.
        lock_tenant(&txn, tenant).await?;

        // R11: a group's new dynamic rollout keeps its existing one's settings.
        if let (UpdateMethod::Dynamic, Scope::Group(g)) = (spec.method, &spec.scope) {
            let open = rollout::Entity::find()
                .filter(rollout::Column::TenantId.eq(tenant.0))
                .filter(rollout::Column::GroupId.eq(g.0))
                .filter(rollout::Column::Method.eq("dynamic"))
                .filter(rollout::Column::StrategyCancelled.eq(false))
                .filter(rollout::Column::State.is_in(open_rollout_states()))
                .one(&txn)
                .await?;
            if let Some(o) = open {
                if o.multi_module != spec.multi_module
                    || o.override_previous != spec.override_previous
                {
                    return Err(Invalid::new(
                        "multi_module",
                        format!(
                            "group {g} has the dynamic rollout {} with multi_module {} and \
                             override_previous {}; a new dynamic rollout of the group must use the same",
                            o.id, o.multi_module, o.override_previous
                        ),
                    )
                    .into());
                }
            }
        }

        // Selected and phased scopes become a device list (inline names resolved here).
        let list = match &spec.scope {
            Scope::Selected(src) | Scope::Phased { devices: src, .. } => Some(match src {
                DeviceSource::List(l) => {
                    let row = device_list::Entity::find_by_id(l.0)
                        .filter(device_list::Column::TenantId.eq(tenant.0))
                        .one(&txn)
                        .await?
                        .ok_or(StoreError::NotFound("device list"))?;
                    if row.product_id != pkg.product_id.0 {
                        return Err(Invalid::new(
                            "scope.device_list_id",
                            format!(
                                "device list {} holds devices of product {}, the package is of product {}",
                                row.id, row.product_id, pkg.product_id
                            ),
                        )
                        .into());
                    }
                    (*l, u64::try_from(row.devices).unwrap_or(0))
                }
                DeviceSource::Names(names) => {
                    stage_names_table(&txn).await?;
                    let mut row = 0;
                    for chunk in names.chunks(STAGE_BATCH) {
                        stage_names(&txn, &mut row, chunk.to_vec()).await?;
                    }
                    finish_device_list(&txn, backend, tenant, pkg.product_id, now).await?
                }
            }),
            _ => None,
        };

        let start_later = spec.starts_later(now);
        let state = if !spec.start_on_creation {
            RolloutState::Draft
        } else if start_later {
            RolloutState::Scheduled
        } else {
            RolloutState::Running
        };
        let (rate_kind, rb, rf, rm, rt, rc) = match spec.rate {
            None => (None, None, None, None, None, None),
            Some(PushRate::Constant { per_minute }) => {
                (Some("constant"), Some(per_minute), None, None, None, None)
            }
            Some(PushRate::Variable {
                base,
                factor_centi,
                max,
                threshold,
                count_on,
            }) => (
                Some("variable"),
                Some(base),
                Some(factor_centi),
                Some(max),
                Some(threshold),
                Some(count_on.as_str()),
            ),
        };
        let is_dynamic = spec.method == UpdateMethod::Dynamic;
        let row = rollout::ActiveModel {
            tenant_id: Set(tenant.0),
            product_id: Set(pkg.product_id.0),
            package_id: Set(pkg.id.0),
            module: Set(pkg.module.as_str().to_owned()),
            target_version: Set(pkg.version.as_str().to_owned()),
            name: Set(if spec.name.is_empty() {
                format!("{} {}", pkg.module.as_str(), pkg.version.as_str())
            } else {
                spec.name.clone()
            }),
            description: Set(spec.description.clone()),
            method: Set(spec.method.as_str().to_owned()),
            rollout_type: Set(spec.rollout_type.as_str().to_owned()),
            state: Set(state.as_str().to_owned()),
            scope_kind: Set(spec.scope.kind().to_owned()),
            scope: Set(json_text(scope_json(&spec.scope, list.map(|l| l.0)))),
            device_list_id: Set(list.map(|l| l.0 .0)),
            group_id: Set(match spec.scope {
                Scope::Group(g) => Some(g.0),
                _ => None,
            }),
            source_versions: Set(json_text(serde_json::Value::from(
                spec.source_versions
                    .iter()
                    .map(|v| v.as_str().to_owned())
                    .collect::<Vec<_>>(),
            ))),
            start_at: Set(spec.schedule.start_at),
            end_at: Set(spec.schedule.end_at),
            daily_repeat: Set(spec.schedule.daily_repeat),
            utc_offset_minutes: Set(spec.schedule.utc_offset_minutes),
            push_mode: Set(spec.push_mode.as_str().to_owned()),
            rate_kind: Set(rate_kind.map(str::to_owned)),
            rate_base: Set(i32_of(rb)),
            rate_factor_centi: Set(i32_of(rf)),
            rate_max: Set(i32_of(rm)),
            rate_threshold: Set(i32_of(rt)),
            rate_count_on: Set(rc.map(str::to_owned)),
            max_concurrency: Set(i32_of(spec.max_concurrency)),
            retry_interval_minutes: Set(i32_of(spec.retry.map(|r| r.interval_minutes))),
            retry_max: Set(i32_of(spec.retry.map(|r| r.max_retries))),
            timeout_minutes: Set(i32_of(spec.timeout_minutes)),
            retry_timeouts: Set(spec.retry_timeouts),
            multi_module: Set(spec.multi_module),
            override_previous: Set(spec.override_previous),
            only_new_reports: Set(spec.only_new_reports),
            app_confirm: Set(spec.app_confirm),
            download_protocol: Set(spec.download_protocol.as_str().to_owned()),
            tags: Set(serde_json::to_string(&spec.tags).unwrap_or_else(|_| "[]".into())),
            open_dynamic_package_id: Set(is_dynamic.then_some(pkg.id.0)),
            strategy_cancelled: Set(false),
            task_count: Set(0),
            created_by_key: Set(created_by.map(|k| k.0)),
            created_at: Set(now),
            started_at: Set((state == RolloutState::Running).then_some(now)),
            finished_at: Set(None),
            abort_rules: Set(super::safety::abort_rules_json(&spec.abort_rules)),
            waves: Set(super::safety::waves_json(&spec.waves)),
            current_wave: Set(i32::from(!spec.waves.is_empty())),
            maintenance_window: Set(spec.window.as_ref().map(super::safety::window_json)),
            force_reinstall: Set(spec.force_reinstall),
            scope_policy_id: Set(spec.policies.scope.as_ref().map(|a| a.policy.0)),
            approval_policy_id: Set(spec.policies.approval.as_ref().map(|a| a.policy.0)),
            rate_policy_id: Set(spec.policies.rate.as_ref().map(|a| a.policy.0)),
            policy_config: Set(super::policies::policy_config_json(&spec.policies)),
            ..Default::default()
        }
        .insert(&txn)
        .await;
        let row = match row {
            Ok(r) => r,
            Err(e) if is_unique_violation(&e) => {
                // B2: name the open dynamic rollout
                drop(txn);
                let existing: Option<i64> = rollout::Entity::find()
                    .select_only()
                    .column(rollout::Column::Id)
                    .filter(rollout::Column::OpenDynamicPackageId.eq(pkg.id.0))
                    .into_tuple()
                    .one(self.db())
                    .await?;
                return Err(StoreError::Conflict(format!(
                    "package {} has the open dynamic rollout {}; cancel it (or its dynamic \
                     strategy) before creating another",
                    pkg.id,
                    existing.map_or_else(|| "?".to_owned(), |i| i.to_string())
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let id = RolloutId(row.id);

        // The tasks, set-based (B4–B10, R10, R11). R12: only devices reporting later.
        let mut created = 0;
        if !spec.only_new_reports {
            let cond = self.task_condition(
                backend,
                tenant,
                &pkg,
                &spec,
                selection.as_ref(),
                list.map(|l| l.0),
            );
            let initial = if spec.app_confirm {
                TaskState::Confirming
            } else {
                TaskState::Waiting
            };
            let mut candidates = Query::select();
            candidates
                .column((device::Entity, device::Column::Id))
                .from(device::Entity)
                .cond_where(cond);
            if let Scope::Phased { percent, .. } = &spec.scope {
                let take = Scope::phased_take(list.map_or(0, |l| l.1), *percent);
                candidates
                    .order_by((device::Entity, device::Column::Id), Order::Asc)
                    .limit(take);
            }
            // W2: a scope policy narrows the candidates
            let (candidates, staged) =
                super::policies::scoped_candidates(&txn, tenant, &spec.policies, scope, candidates)
                    .await?;
            if spec.waves.is_empty() {
                created = insert_tasks(&txn, backend, id, initial, now, candidates).await?;
            } else {
                let waves;
                (created, waves) =
                    insert_tasks_in_waves(&txn, backend, id, initial, now, candidates, &spec.waves)
                        .await?;
                rollout::Entity::update_many()
                    .col_expr(
                        rollout::Column::Waves,
                        Expr::value(super::safety::waves_json(&waves)),
                    )
                    .filter(rollout::Column::Id.eq(id.0))
                    .exec(&txn)
                    .await?;
            }
            super::policies::drop_scope_candidates(&txn, staged).await?;
        }

        // R10 / R11: earlier not-yet-started tasks of the same devices are replaced.
        let mut replaced = 0;
        if created > 0 && (spec.override_previous || spec.multi_module) {
            let mut filter = format!(
                "state IN ({}) AND rollout_id <> ? AND device_id IN (SELECT device_id FROM task WHERE rollout_id = ?)",
                in_list(TaskState::NOT_STARTED)
            );
            let mut vals: Vec<Value> = vec![id.0.into(), id.0.into()];
            if spec.multi_module {
                filter.push_str(
                    " AND rollout_id IN (SELECT id FROM rollout WHERE tenant_id = ? AND product_id = ? AND module = ?)",
                );
                vals.extend([
                    tenant.0.into(),
                    pkg.product_id.0.into(),
                    pkg.module.as_str().into(),
                ]);
            }
            replaced = bulk_transition(
                &txn,
                &filter,
                vals,
                TaskState::Cancelled,
                "",
                &Actor {
                    cause: Cause::Policy,
                    who: actor.who.clone(),
                },
                &format!("replaced by rollout {id}"),
                now,
            )
            .await?;
        }

        rollout::ActiveModel {
            id: Set(id.0),
            task_count: Set(i64::try_from(created).unwrap_or(i64::MAX)),
            ..Default::default()
        }
        .update(&txn)
        .await?;
        let detail = if replaced > 0 {
            format!(
                "created with {created} tasks; {replaced} earlier tasks of its devices cancelled"
            )
        } else {
            format!("created with {created} tasks")
        };
        rollout_event(
            &txn,
            tenant,
            id,
            "created",
            None,
            Some(state),
            Some(created),
            actor,
            detail,
            now,
        )
        .await?;
        if let Some((offset, limit)) = dry {
            #[derive(FromQueryResult)]
            struct Name {
                name: String,
            }
            let names = Name::find_by_statement(stmt(
                backend,
                "SELECT d.name FROM task t JOIN device d ON d.id = t.device_id \
                 WHERE t.rollout_id = ? ORDER BY t.id LIMIT ? OFFSET ?",
                vec![
                    id.0.into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                    i64::try_from(offset).unwrap_or(i64::MAX).into(),
                ],
            ))
            .all(&txn)
            .await?
            .into_iter()
            .map(|n| n.name)
            .collect();
            let waves = rollout::Entity::find_by_id(id.0)
                .one(&txn)
                .await?
                .map(|m| super::safety::waves_from(&m.waves))
                .unwrap_or_default();
            let release_order = match spec.policies.approval {
                None => vec![],
                Some(_) => {
                    #[derive(FromQueryResult)]
                    struct D {
                        device_id: i64,
                    }
                    D::find_by_statement(stmt(
                        backend,
                        "SELECT device_id FROM task WHERE rollout_id = ? ORDER BY id",
                        vec![id.0.into()],
                    ))
                    .all(&txn)
                    .await?
                    .into_iter()
                    .map(|d| DeviceId(d.device_id))
                    .collect()
                }
            };
            // dropped, not committed: nothing of it stays
            txn.rollback().await?;
            return Ok(Made::Projected(DryRun {
                devices: created,
                names,
                waves,
                replaced,
                release_order,
            }));
        }
        txn.commit().await?;
        Ok(Made::Created(Box::new(self.get_rollout(tenant, id).await?)))
    }

    /// The registry condition of a group, asset-tree, attribute or tag scope (404 for
    /// foreign ids); `None` for the scopes that need none.
    async fn scope_selection(
        &self,
        tenant: TenantId,
        spec: &RolloutSpec,
    ) -> StoreResult<Option<super::DeviceSelection>> {
        Ok(match &spec.scope {
            Scope::Group(g) => Some(
                self.resolve_device_filter(tenant, &DeviceFilter::group(*g))
                    .await
                    .map_err(|e| rename_field(e, "group_id", "scope.group_id"))?,
            ),
            Scope::AssetNodes(nodes) => Some(
                self.resolve_device_filter(tenant, &DeviceFilter::asset_nodes(nodes.clone()))
                    .await
                    .map_err(|e| rename_field(e, "asset_node_ids", "scope.node_ids"))?,
            ),
            Scope::Attribute {
                name,
                value: AttributeValue::OneOf(vs),
            } => Some(
                self.resolve_device_filter(
                    tenant,
                    &DeviceFilter {
                        labels: vec![LabelMatch::new(
                            LabelKind::Attribute,
                            "scope.name",
                            name,
                            ValueMatch::OneOf(vs.clone()),
                        )?],
                        ..Default::default()
                    },
                )
                .await?,
            ),
            Scope::Tag { key, values } => Some(
                self.resolve_device_filter(
                    tenant,
                    &DeviceFilter {
                        labels: vec![LabelMatch::new(
                            LabelKind::Tag,
                            "scope.key",
                            key,
                            ValueMatch::OneOf(values.clone()),
                        )?],
                        ..Default::default()
                    },
                )
                .await?,
            ),
            _ => None,
        })
    }

    /// B1, B3, R12: devices whose version reports (in `devices`, just recorded) now match a
    /// running dynamic rollout of their product join it while it runs: in its scope and
    /// source versions, not on the target, with no open task that keeps them out (R10,
    /// R11), no open task in it already, and fewer than 10 tasks in it so far (B3). An
    /// override rollout cancels their earlier not-yet-started tasks (R11). Returns how
    /// many tasks were made.
    pub async fn join_dynamic_rollouts(
        &self,
        devices: &[DeviceId],
        scope: Option<&dyn ScopeHook>,
        now: Millis,
    ) -> StoreResult<u64> {
        if devices.is_empty() {
            return Ok(0);
        }
        let open: Vec<rollout::Model> = rollout::Entity::find()
            .filter(rollout::Column::Method.eq("dynamic"))
            .filter(rollout::Column::StrategyCancelled.eq(false))
            .filter(rollout::Column::State.is_in(["running", "paused"]))
            .all(self.db())
            .await?;
        let mut total = 0;
        let mut recovered = Vec::new();
        for m in open {
            let r = to_rollout(m);
            if r.spec.schedule.ended(now) {
                continue;
            }
            let pkg = self.get_package(r.tenant_id, r.package_id).await?;
            let selection = self.scope_selection(r.tenant_id, &r.spec).await?;
            let list = list_of(&r.spec.scope);
            let txn = self.begin_write().await?;
            let backend = txn.get_database_backend();
            lock_tenant(&txn, r.tenant_id).await?;
            let mut joined: Vec<i64> = Vec::new();
            for chunk in devices.chunks(MAX_BIND_PARAMS / 4) {
                let mut cond = self.task_condition(
                    backend,
                    r.tenant_id,
                    &pkg,
                    &r.spec,
                    selection.as_ref(),
                    list,
                );
                let dcol = || Expr::col((device::Entity, device::Column::Id));
                cond = cond.add(dcol().is_in(chunk.iter().map(|d| d.0)));
                cond = cond.add(not_capped_in(r.id));
                let mut q = Query::select();
                q.column((device::Entity, device::Column::Id))
                    .from(device::Entity)
                    .cond_where(cond);
                #[derive(FromQueryResult)]
                struct Id {
                    id: i64,
                }
                let ids = Id::find_by_statement(backend.build(&q)).all(&txn).await?;
                joined.extend(ids.into_iter().map(|t| t.id));
            }
            if joined.is_empty() {
                continue;
            }
            // W2: a scope policy decides who of them joins; failing, none does (W3)
            if let Some(policy) = &r.spec.policies.scope {
                let kept = match scope {
                    Some(h) => {
                        super::policies::select_devices(&txn, r.tenant_id, policy, h, &joined)
                            .await?
                    }
                    None => Err("the scope policy could not be run here".to_owned()),
                };
                match kept {
                    Ok(k) => {
                        joined = k;
                        recovered.push(r.id);
                    }
                    Err(why) => {
                        txn.rollback().await?;
                        let max = scope.map_or(1, |h| h.max_failures());
                        self.policy_failed(&r, Hook::Scope, &why, max, now).await?;
                        continue;
                    }
                }
                if joined.is_empty() {
                    txn.rollback().await?;
                    continue;
                }
            }
            let initial = if r.spec.app_confirm {
                TaskState::Confirming
            } else {
                TaskState::Waiting
            };
            for chunk in joined.chunks(MAX_BIND_PARAMS / 2) {
                let mut sql = String::from(
                    "INSERT INTO task (rollout_id, device_id, state, created_at, updated_at) VALUES ",
                );
                let mut vals: Vec<Value> = Vec::new();
                for (i, d) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "({}, ?, '{}', {now}, {now})",
                        r.id.0,
                        initial.as_str()
                    ));
                    vals.push((*d).into());
                }
                txn.execute(stmt(backend, &sql, vals)).await?;
                if r.spec.override_previous {
                    let mut vals: Vec<Value> = vec![r.id.0.into()];
                    vals.extend(chunk.iter().map(|d| Value::from(*d)));
                    bulk_transition(
                        &txn,
                        &format!(
                            "state IN ({}) AND rollout_id <> ? AND device_id IN ({})",
                            in_list(TaskState::NOT_STARTED),
                            placeholders(chunk.len())
                        ),
                        vals,
                        TaskState::Cancelled,
                        "",
                        &Actor {
                            cause: Cause::Policy,
                            who: None,
                        },
                        &format!("replaced by rollout {}", r.id),
                        now,
                    )
                    .await?;
                }
            }
            let n = joined.len() as u64;
            txn.execute(stmt(
                backend,
                "UPDATE rollout SET task_count = task_count + ? WHERE id = ?",
                vec![i64::try_from(n).unwrap_or(0).into(), r.id.0.into()],
            ))
            .await?;
            rollout_event(
                &txn,
                r.tenant_id,
                r.id,
                "devices_joined",
                Some(r.state),
                Some(r.state),
                Some(n),
                &Actor {
                    cause: Cause::Device,
                    who: None,
                },
                format!("{n} devices joined on their version reports"),
                now,
            )
            .await?;
            txn.commit().await?;
            total += n;
        }
        // after the writes: a separate write inside one would wait on its own lock (SQLite)
        for id in recovered {
            self.policy_recovered(id).await?;
        }
        Ok(total)
    }

    /// R6, R15, R16, B9: changes what may change in an unfinished rollout: its rate (same
    /// kind; the rate state is rebased, keeping the count), a dynamic rollout's source
    /// versions (an added version brings in the devices already on it) and device timeout
    /// (only tasks made from now on take the new one), and its tags (later pushes carry
    /// them).
    pub async fn change_rollout(
        &self,
        tenant: TenantId,
        id: RolloutId,
        change: RolloutChange,
        actor: &Actor,
        scope: Option<&dyn ScopeHook>,
        now: Millis,
    ) -> StoreResult<Rollout> {
        let r = self.get_rollout(tenant, id).await?;
        if r.state.is_finished() {
            return Err(StoreError::Conflict(format!(
                "rollout {id} is {}; a finished rollout does not change",
                r.state.as_str()
            )));
        }
        let facts = self.package_facts(tenant, r.package_id).await?;
        let change = change.check(&r.spec, &facts)?;
        let selection = self.scope_selection(tenant, &r.spec).await?;
        let pkg = self.get_package(tenant, r.package_id).await?;
        let txn = self.begin_write().await?;
        let backend = txn.get_database_backend();
        lock_tenant(&txn, tenant).await?;
        let m = rollout::Entity::find_by_id(id.0)
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound("rollout"))?;
        let mut what = Vec::new();
        let mut upd = rollout::Entity::update_many().filter(rollout::Column::Id.eq(id.0));
        if let Some(rate) = &change.rate {
            let saved = super::engine::saved_rate(&m);
            let old = r.spec.rate.as_ref().map(RateState::initial);
            let state = saved
                .or(old)
                .unwrap_or_else(|| RateState::initial(rate))
                .rebased(rate, u64::try_from(m.succeeded_total).unwrap_or(0));
            let (base, factor, max, threshold) = match *rate {
                PushRate::Constant { per_minute } => (per_minute, None, None, None),
                PushRate::Variable {
                    base,
                    factor_centi,
                    max,
                    threshold,
                    ..
                } => (base, Some(factor_centi), Some(max), Some(threshold)),
            };
            upd = upd
                .col_expr(rollout::Column::RateBase, Expr::value(i32_of(Some(base))))
                .col_expr(
                    rollout::Column::RateFactorCenti,
                    Expr::value(i32_of(factor)),
                )
                .col_expr(rollout::Column::RateMax, Expr::value(i32_of(max)))
                .col_expr(
                    rollout::Column::RateThreshold,
                    Expr::value(i32_of(threshold)),
                )
                .col_expr(
                    rollout::Column::RatePerMinute,
                    Expr::value(i32_of(Some(state.per_minute))),
                )
                .col_expr(
                    rollout::Column::RateNextThreshold,
                    Expr::value(state.next_threshold.and_then(|n| i64::try_from(n).ok())),
                );
            what.push("rate");
        }
        if let Some(t) = change.timeout_minutes {
            // tasks made so far keep the timeout they were made under (0: none)
            txn.execute(stmt(
                backend,
                "UPDATE task SET timeout_minutes = ? WHERE rollout_id = ? AND timeout_minutes IS NULL",
                vec![
                    i32_of(r.spec.timeout_minutes).unwrap_or(0).into(),
                    id.0.into(),
                ],
            ))
            .await?;
            upd = upd.col_expr(rollout::Column::TimeoutMinutes, Expr::value(i32_of(t)));
            what.push("timeout_minutes");
        }
        if let Some(tags) = &change.tags {
            upd = upd.col_expr(
                rollout::Column::Tags,
                Expr::value(serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())),
            );
            what.push("tags");
        }
        if let Some(rules) = &change.abort_rules {
            upd = upd.col_expr(
                rollout::Column::AbortRules,
                Expr::value(super::safety::abort_rules_json(rules)),
            );
            what.push("abort_rules");
        }
        let mut joined = 0;
        if let Some(vs) = &change.source_versions {
            upd = upd.col_expr(
                rollout::Column::SourceVersions,
                Expr::value(json_text(serde_json::Value::from(
                    vs.iter().map(|v| v.as_str().to_owned()).collect::<Vec<_>>(),
                ))),
            );
            what.push("source_versions");
        }
        if !what.is_empty() {
            upd.exec(&txn).await?;
        }
        // B9: devices already on an added version join (a removed one leaves its devices'
        // tasks alone); R12 rollouts take only devices that report from now on.
        if let Some(vs) = change.source_versions {
            if !r.spec.only_new_reports && r.state != RolloutState::Draft {
                let added: Vec<Version> = vs
                    .into_iter()
                    .filter(|v| !r.spec.source_versions.contains(v))
                    .collect();
                if !added.is_empty() {
                    let mut spec = r.spec.clone();
                    spec.source_versions = added;
                    let list = list_of(&spec.scope);
                    let cond = self
                        .task_condition(backend, tenant, &pkg, &spec, selection.as_ref(), list)
                        .add(not_capped_in(id));
                    let mut candidates = Query::select();
                    candidates
                        .column((device::Entity, device::Column::Id))
                        .from(device::Entity)
                        .cond_where(cond);
                    let initial = if spec.app_confirm {
                        TaskState::Confirming
                    } else {
                        TaskState::Waiting
                    };
                    let (candidates, staged) = super::policies::scoped_candidates(
                        &txn,
                        tenant,
                        &r.spec.policies,
                        scope,
                        candidates,
                    )
                    .await?;
                    joined = insert_tasks(&txn, backend, id, initial, now, candidates).await?;
                    super::policies::drop_scope_candidates(&txn, staged).await?;
                    txn.execute(stmt(
                        backend,
                        "UPDATE rollout SET task_count = task_count + ? WHERE id = ?",
                        vec![i64::try_from(joined).unwrap_or(0).into(), id.0.into()],
                    ))
                    .await?;
                }
            }
        }
        let mut detail = format!("changed {}", what.join(", "));
        if joined > 0 {
            detail.push_str(&format!(
                "; {joined} devices on added source versions joined"
            ));
        }
        rollout_event(
            &txn,
            tenant,
            id,
            "changed",
            Some(r.state),
            Some(r.state),
            (joined > 0).then_some(joined),
            actor,
            detail,
            now,
        )
        .await?;
        txn.commit().await?;
        self.get_rollout(tenant, id).await
    }

    /// The condition on `device` rows that get a task.
    fn task_condition(
        &self,
        backend: DbBackend,
        tenant: TenantId,
        pkg: &Package,
        spec: &RolloutSpec,
        selection: Option<&super::DeviceSelection>,
        list: Option<DeviceListId>,
    ) -> Condition {
        let dcol = |c: device::Column| Expr::col((device::Entity, c));
        let mut c = Condition::all()
            .add(dcol(device::Column::TenantId).eq(tenant.0))
            .add(dcol(device::Column::ProductId).eq(pkg.product_id.0));
        if let Some(sel) = selection {
            c = c.add(sel.condition());
        }
        if let Some(l) = list {
            let mut q = Query::select();
            q.column(device_list_member::Column::DeviceId)
                .from(device_list_member::Entity)
                .and_where(Expr::col(device_list_member::Column::ListId).eq(l.0));
            c = c.add(dcol(device::Column::Id).in_subquery(q));
        }
        if let Scope::Attribute {
            name,
            value: AttributeValue::Range { min, max },
        } = &spec.scope
        {
            // Only values that read as numbers compare (a text value is never in a range).
            // sea-query numbers PostgreSQL placeholders ($1) and uses ? on SQLite.
            let numeric = match backend {
                DbBackend::Postgres => "(CASE WHEN value ~ '^\\s*-{0,1}[0-9]+(\\.[0-9]+){0,1}([eE][-+]{0,1}[0-9]+){0,1}\\s*$' THEN CAST(value AS DOUBLE PRECISION) END) BETWEEN $1 AND $2",
                _ => "(value <> '' AND value NOT GLOB '*[^0-9.eE+-]*' AND CAST(value AS REAL) BETWEEN ? AND ?)",
            };
            let mut q = Query::select();
            q.column(device_attribute::Column::DeviceId)
                .from(device_attribute::Entity)
                .and_where(device_attribute::Column::TenantId.eq(tenant.0))
                .and_where(device_attribute::Column::Name.eq(name.as_str()))
                .and_where(Expr::cust_with_values(numeric, [*min, *max]));
            c = c.add(dcol(device::Column::Id).in_subquery(q));
        }
        // B9: the source-version filter (a diff's is its source version).
        if !spec.source_versions.is_empty() {
            let mut q = Query::select();
            q.column(device_module::Column::DeviceId)
                .from(device_module::Entity)
                .and_where(device_module::Column::ProductId.eq(pkg.product_id.0))
                .and_where(device_module::Column::Module.eq(pkg.module.as_str()))
                .and_where(
                    device_module::Column::Version
                        .is_in(spec.source_versions.iter().map(|v| v.as_str().to_owned())),
                );
            c = c.add(dcol(device::Column::Id).in_subquery(q));
        }
        // B10: never a device already on the target (a primary-key probe per device),
        // unless the rollout forces a re-install (G6).
        let mut on_target = Query::select();
        on_target
            .expr(Expr::val(1))
            .from(device_module::Entity)
            .and_where(
                Expr::col((device_module::Entity, device_module::Column::DeviceId))
                    .equals((device::Entity, device::Column::Id)),
            )
            .and_where(device_module::Column::Module.eq(pkg.module.as_str()))
            .and_where(device_module::Column::Version.eq(pkg.version.as_str()));
        if !spec.force_reinstall {
            c = c.add(Expr::exists(on_target).not());
        }
        // R10 / R11: which existing tasks keep a device out of this rollout.
        let (blocking, same_module): (&[TaskState], bool) =
            match (spec.override_previous, spec.multi_module) {
                // override: only in-progress tasks stay and block
                (true, _) => (&[TaskState::InProgress], false),
                // multi-module: other modules never block; same module in progress does
                (false, true) => (&[TaskState::InProgress], true),
                // neither: any open task keeps the device out
                (false, false) => (TaskState::OPEN, false),
            };
        let mut open = Query::select();
        open.expr(Expr::val(1))
            .from(task::Entity)
            .and_where(
                Expr::col((task::Entity, task::Column::DeviceId))
                    .equals((device::Entity, device::Column::Id)),
            )
            .and_where(
                Expr::col((task::Entity, task::Column::State))
                    .is_in(blocking.iter().map(|s| s.as_str())),
            );
        if same_module {
            let mut q: SelectStatement = Query::select();
            q.column(rollout::Column::Id)
                .from(rollout::Entity)
                .and_where(rollout::Column::TenantId.eq(tenant.0))
                .and_where(rollout::Column::ProductId.eq(pkg.product_id.0))
                .and_where(rollout::Column::Module.eq(pkg.module.as_str()));
            open.and_where(Expr::col((task::Entity, task::Column::RolloutId)).in_subquery(q));
        }
        c.add(Expr::exists(open).not())
    }

    pub async fn get_rollout(&self, tenant: TenantId, id: RolloutId) -> StoreResult<Rollout> {
        rollout::Entity::find_by_id(id.0)
            .filter(rollout::Column::TenantId.eq(tenant.0))
            .one(self.db())
            .await?
            .map(to_rollout)
            .ok_or(StoreError::NotFound("rollout"))
    }

    /// The tenant's rollouts in id order, filtered.
    pub async fn list_rollouts(
        &self,
        tenant: TenantId,
        filter: &RolloutFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Rollout>> {
        let mut q = rollout::Entity::find()
            .filter(rollout::Column::TenantId.eq(tenant.0))
            .filter(rollout::Column::Id.gt(page.after));
        if let Some(p) = filter.package {
            q = q.filter(rollout::Column::PackageId.eq(p.0));
        }
        if let Some(s) = filter.state {
            q = q.filter(rollout::Column::State.eq(s.as_str()));
        }
        let rows = q
            .order_by_asc(rollout::Column::Id)
            .limit(page.limit + 1)
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id).map(to_rollout))
    }

    /// O2: task counts by state, from the `(rollout_id, state, id)` index alone.
    pub async fn task_counts(&self, tenant: TenantId, id: RolloutId) -> StoreResult<TaskCounts> {
        let r = self.get_rollout(tenant, id).await?;
        let rows: Vec<(String, i64)> = task::Entity::find()
            .select_only()
            .column(task::Column::State)
            .column_as(Expr::col(task::Column::Id).count(), "n")
            .filter(task::Column::RolloutId.eq(r.id.0))
            .group_by(task::Column::State)
            .into_tuple()
            .all(self.db())
            .await?;
        Ok(TaskCounts(
            rows.into_iter()
                .filter_map(|(s, n)| Some((TaskState::parse(&s)?, u64::try_from(n).ok()?)))
                .collect(),
        ))
    }

    /// R17: starts a draft rollout by hand (scheduled when its start is still ahead).
    pub async fn start_rollout(
        &self,
        tenant: TenantId,
        id: RolloutId,
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<Rollout> {
        self.rollout_transition(
            tenant,
            id,
            RolloutEvent::Start,
            actor,
            now,
            "started by hand",
        )
        .await
    }

    /// Moves a rollout by the state machine; `Cancel` also cancels its open tasks (O1).
    pub(super) async fn rollout_transition(
        &self,
        tenant: TenantId,
        id: RolloutId,
        event: RolloutEvent,
        actor: &Actor,
        now: Millis,
        detail: &str,
    ) -> StoreResult<Rollout> {
        let txn = self.begin_write().await?;
        let r = rollout::Entity::find_by_id(id.0)
            .filter(rollout::Column::TenantId.eq(tenant.0))
            .one(&txn)
            .await?
            .map(to_rollout)
            .ok_or(StoreError::NotFound("rollout"))?;
        let later = r.spec.starts_later(now);
        let to = r.state.on(event, later).ok_or_else(|| {
            StoreError::Conflict(format!(
                "rollout {id} is {}; it cannot be {}",
                r.state.as_str(),
                match event {
                    RolloutEvent::Start => "started",
                    RolloutEvent::Cancel => "cancelled",
                    RolloutEvent::Pause => "paused",
                    RolloutEvent::Resume => "resumed",
                    _ => "changed",
                }
            ))
        })?;
        // guarded: only from the state read, so a racing change is not overwritten
        let mut upd = rollout::Entity::update_many()
            .col_expr(rollout::Column::State, Expr::value(to.as_str()))
            .filter(rollout::Column::Id.eq(id.0))
            .filter(rollout::Column::State.eq(r.state.as_str()));
        if to == RolloutState::Running && r.started_at.is_none() {
            upd = upd.col_expr(rollout::Column::StartedAt, Expr::value(now));
        }
        if to.is_finished() {
            upd = upd
                .col_expr(rollout::Column::FinishedAt, Expr::value(now))
                .col_expr(
                    rollout::Column::OpenDynamicPackageId,
                    Expr::value(Option::<i64>::None),
                );
        }
        let n = upd.exec(&txn).await?.rows_affected;
        if n != 1 {
            return Err(StoreError::Conflict(format!(
                "rollout {id} changed meanwhile; read it and try again"
            )));
        }
        let mut tasks = None;
        if to == RolloutState::Cancelled {
            tasks = Some(
                bulk_transition(
                    &txn,
                    &format!("rollout_id = ? AND state IN ({})", in_list(TaskState::OPEN)),
                    vec![id.0.into()],
                    TaskState::Cancelled,
                    "",
                    actor,
                    "the rollout was cancelled",
                    now,
                )
                .await?,
            );
        }
        let detail = match tasks {
            Some(n) => format!("{detail}; {n} unfinished tasks cancelled"),
            None => detail.to_owned(),
        };
        rollout_event(
            &txn,
            tenant,
            id,
            event.as_str(),
            Some(r.state),
            Some(to),
            tasks,
            actor,
            detail,
            now,
        )
        .await?;
        txn.commit().await?;
        self.get_rollout(tenant, id).await
    }

    /// O1: cancels a whole rollout; every unfinished task becomes cancelled.
    pub async fn cancel_rollout(
        &self,
        tenant: TenantId,
        id: RolloutId,
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<Rollout> {
        self.rollout_transition(
            tenant,
            id,
            RolloutEvent::Cancel,
            actor,
            now,
            "cancelled by hand",
        )
        .await
    }

    /// O1: cancels only a dynamic rollout's strategy: no new devices join, existing tasks
    /// go on; the package may then have another dynamic rollout (B2).
    pub async fn cancel_strategy(
        &self,
        tenant: TenantId,
        id: RolloutId,
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<Rollout> {
        let txn = self.begin_write().await?;
        let r = rollout::Entity::find_by_id(id.0)
            .filter(rollout::Column::TenantId.eq(tenant.0))
            .one(&txn)
            .await?
            .map(to_rollout)
            .ok_or(StoreError::NotFound("rollout"))?;
        if r.spec.method != UpdateMethod::Dynamic {
            return Err(StoreError::Conflict(format!(
                "rollout {id} is static; only a dynamic rollout has a strategy to cancel"
            )));
        }
        if r.strategy_cancelled || r.state.is_finished() {
            return Err(StoreError::Conflict(format!(
                "rollout {id} takes no new devices already (it is {}{})",
                r.state.as_str(),
                if r.strategy_cancelled {
                    ", strategy cancelled"
                } else {
                    ""
                }
            )));
        }
        rollout::Entity::update_many()
            .col_expr(rollout::Column::StrategyCancelled, Expr::value(true))
            .col_expr(
                rollout::Column::OpenDynamicPackageId,
                Expr::value(Option::<i64>::None),
            )
            .filter(rollout::Column::Id.eq(id.0))
            .exec(&txn)
            .await?;
        rollout_event(
            &txn,
            tenant,
            id,
            "strategy_cancelled",
            Some(r.state),
            Some(r.state),
            None,
            actor,
            "dynamic strategy cancelled: no new devices join; existing tasks go on".into(),
            now,
        )
        .await?;
        txn.commit().await?;
        self.get_rollout(tenant, id).await
    }

    /// O1: cancels a rollout's tasks in the given states (any of the open ones, in-progress
    /// included: such a task is marked cancelled and a later success is still recorded).
    pub async fn cancel_tasks_by_state(
        &self,
        tenant: TenantId,
        id: RolloutId,
        states: &[TaskState],
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<u64> {
        let txn = self.begin_write().await?;
        let r = self.rollout_in(&txn, tenant, id).await?;
        let n = bulk_transition(
            &txn,
            &format!("rollout_id = ? AND state IN ({})", in_list(states)),
            vec![id.0.into()],
            TaskState::Cancelled,
            "",
            actor,
            "cancelled by state",
            now,
        )
        .await?;
        let words: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        rollout_event(
            &txn,
            tenant,
            id,
            "tasks_cancelled",
            Some(r.state),
            Some(r.state),
            Some(n),
            actor,
            format!("{n} tasks in {} cancelled", words.join(", ")),
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(n)
    }

    /// O1 (Alibaba CancelOTATaskByDevice): cancels a package's not-yet-started tasks of the
    /// given devices, across all its rollouts.
    pub async fn cancel_package_tasks(
        &self,
        tenant: TenantId,
        package: PackageId,
        devices: &[DeviceId],
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<u64> {
        let p = self.get_package(tenant, package).await?;
        let txn = self.begin_write().await?;
        let mut total = 0;
        for chunk in devices.chunks(MAX_BIND_PARAMS / 2) {
            let mut vals: Vec<Value> = vec![tenant.0.into(), p.id.0.into()];
            vals.extend(chunk.iter().map(|d| Value::from(d.0)));
            total += bulk_transition(
                &txn,
                &format!(
                    "rollout_id IN (SELECT id FROM rollout WHERE tenant_id = ? AND package_id = ?) \
                     AND device_id IN ({}) AND state IN ({})",
                    placeholders(chunk.len()),
                    in_list(TaskState::NOT_STARTED)
                ),
                vals,
                TaskState::Cancelled,
                "",
                actor,
                "the package's pending tasks of this device were cancelled",
                now,
            )
            .await?;
        }
        txn.commit().await?;
        Ok(total)
    }

    /// O3: failed tasks go back to `waiting` with their retries reset; a completed rollout
    /// runs again.
    pub async fn rerun_failed(
        &self,
        tenant: TenantId,
        id: RolloutId,
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<u64> {
        let txn = self.begin_write().await?;
        let r = self.rollout_in(&txn, tenant, id).await?;
        if r.state == RolloutState::Cancelled {
            return Err(StoreError::Conflict(format!(
                "rollout {id} is cancelled; create a new rollout instead"
            )));
        }
        let n = bulk_transition(
            &txn,
            "rollout_id = ? AND state = 'failed'",
            vec![id.0.into()],
            TaskState::Waiting,
            ", retries = 0, failure_reason = NULL, due_at = NULL",
            actor,
            "re-run by hand",
            now,
        )
        .await?;
        // G1: no failed task is left, so none counts as a finished failure
        rollout::Entity::update_many()
            .col_expr(rollout::Column::FailedTotal, Expr::value(0i64))
            .col_expr(rollout::Column::TimedOutTotal, Expr::value(0i64))
            .filter(rollout::Column::Id.eq(id.0))
            .exec(&txn)
            .await?;
        let mut to = r.state;
        if n > 0 && r.state == RolloutState::Completed {
            to = RolloutState::Running;
            rollout::Entity::update_many()
                .col_expr(rollout::Column::State, Expr::value(to.as_str()))
                .col_expr(
                    rollout::Column::FinishedAt,
                    Expr::value(Option::<i64>::None),
                )
                .filter(rollout::Column::Id.eq(id.0))
                .exec(&txn)
                .await?;
        }
        rollout_event(
            &txn,
            tenant,
            id,
            "rerun_failed",
            Some(r.state),
            Some(to),
            Some(n),
            actor,
            format!("{n} failed tasks re-run"),
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(n)
    }

    /// R13: confirms many tasks at once (those not in `confirming`, or not the tenant's,
    /// are left alone and not counted).
    pub async fn confirm_tasks(
        &self,
        tenant: TenantId,
        ids: &[TaskId],
        actor: &Actor,
        now: Millis,
    ) -> StoreResult<u64> {
        let txn = self.begin_write().await?;
        let mut total = 0;
        for chunk in ids.chunks(MAX_BIND_PARAMS / 2) {
            let mut vals: Vec<Value> = vec![tenant.0.into()];
            vals.extend(chunk.iter().map(|t| Value::from(t.0)));
            total += bulk_transition(
                &txn,
                &format!(
                    "rollout_id IN (SELECT id FROM rollout WHERE tenant_id = ?) AND id IN ({}) AND state = 'confirming'",
                    placeholders(chunk.len())
                ),
                vals,
                TaskState::Waiting,
                "",
                actor,
                "confirmed",
                now,
            )
            .await?;
        }
        txn.commit().await?;
        Ok(total)
    }

    async fn rollout_in(
        &self,
        txn: &DatabaseTransaction,
        tenant: TenantId,
        id: RolloutId,
    ) -> StoreResult<Rollout> {
        rollout::Entity::find_by_id(id.0)
            .filter(rollout::Column::TenantId.eq(tenant.0))
            .one(txn)
            .await?
            .map(to_rollout)
            .ok_or(StoreError::NotFound("rollout"))
    }

    /// O2: a page of tasks of a rollout, a device or a package, by task id, optionally in
    /// one state. The owner must be the tenant's (404 otherwise).
    pub async fn list_tasks(
        &self,
        tenant: TenantId,
        owner: TaskOwner,
        state: Option<TaskState>,
        page: PageRequest,
    ) -> StoreResult<Page<TaskRow>> {
        let mut q = Query::select();
        q.expr_as(
            Expr::col((task::Entity, task::Column::Id)),
            Alias::new("id"),
        )
        .columns([
            (task::Entity, task::Column::RolloutId),
            (task::Entity, task::Column::DeviceId),
            (task::Entity, task::Column::State),
            (task::Entity, task::Column::Retries),
            (task::Entity, task::Column::Progress),
            (task::Entity, task::Column::FailureReason),
            (task::Entity, task::Column::LastMessage),
            (task::Entity, task::Column::LateSuccessAt),
            (task::Entity, task::Column::CreatedAt),
            (task::Entity, task::Column::UpdatedAt),
            (task::Entity, task::Column::StartedAt),
            (task::Entity, task::Column::FinishedAt),
        ])
        .expr_as(
            Expr::col((device::Entity, device::Column::Name)),
            Alias::new("device_name"),
        )
        .from(task::Entity)
        .inner_join(
            device::Entity,
            Expr::col((device::Entity, device::Column::Id))
                .equals((task::Entity, task::Column::DeviceId)),
        )
        .and_where(Expr::col((task::Entity, task::Column::Id)).gt(page.after))
        .order_by((task::Entity, task::Column::Id), Order::Asc)
        .limit(page.limit + 1);
        match owner {
            TaskOwner::Rollout(r) => {
                self.get_rollout(tenant, r).await?;
                q.and_where(Expr::col((task::Entity, task::Column::RolloutId)).eq(r.0));
            }
            TaskOwner::Device(d) => {
                self.get_device(tenant, d).await?;
                q.and_where(Expr::col((task::Entity, task::Column::DeviceId)).eq(d.0));
            }
            TaskOwner::Package(p) => {
                self.get_package(tenant, p).await?;
                let mut sub = Query::select();
                sub.column(rollout::Column::Id)
                    .from(rollout::Entity)
                    .and_where(rollout::Column::TenantId.eq(tenant.0))
                    .and_where(rollout::Column::PackageId.eq(p.0));
                q.and_where(Expr::col((task::Entity, task::Column::RolloutId)).in_subquery(sub));
            }
        }
        if let Some(s) = state {
            q.and_where(Expr::col((task::Entity, task::Column::State)).eq(s.as_str()));
        }
        let rows = TaskRow::find_by_statement(self.backend().build(&q))
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id))
    }

    /// O4: a rollout's own events, or (with `task`) one task's, in order.
    pub async fn audit_events(
        &self,
        tenant: TenantId,
        rollout_id: RolloutId,
        task_id: Option<TaskId>,
        page: PageRequest,
    ) -> StoreResult<Page<AuditEvent>> {
        let r = self.get_rollout(tenant, rollout_id).await?;
        match task_id {
            None => {
                let rows = rollout_event::Entity::find()
                    .filter(rollout_event::Column::RolloutId.eq(r.id.0))
                    .filter(rollout_event::Column::Id.gt(page.after))
                    .order_by_asc(rollout_event::Column::Id)
                    .limit(page.limit + 1)
                    .all(self.db())
                    .await?;
                Ok(Page::from_rows(rows, page, |e| e.id).map(|e| AuditEvent {
                    id: e.id,
                    rollout_id: RolloutId(e.rollout_id),
                    task_id: None,
                    at: e.at,
                    event: e.event,
                    from_state: e.from_state,
                    to_state: e.to_state,
                    tasks: e.tasks.and_then(|n| u64::try_from(n).ok()),
                    cause: e.cause,
                    actor: e.actor,
                    detail: e.detail,
                }))
            }
            Some(t) => {
                let rows = task_event::Entity::find()
                    .filter(task_event::Column::TaskId.eq(t.0))
                    .filter(task_event::Column::RolloutId.eq(r.id.0))
                    .filter(task_event::Column::Id.gt(page.after))
                    .order_by_asc(task_event::Column::Id)
                    .limit(page.limit + 1)
                    .all(self.db())
                    .await?;
                Ok(Page::from_rows(rows, page, |e| e.id).map(|e| AuditEvent {
                    id: e.id,
                    rollout_id: RolloutId(e.rollout_id),
                    task_id: Some(TaskId(e.task_id)),
                    at: e.at,
                    event: "task_state".into(),
                    from_state: e.from_state,
                    to_state: Some(e.to_state),
                    tasks: None,
                    cause: e.cause,
                    actor: e.actor,
                    detail: e.detail,
                }))
            }
        }
    }

    /// P3: a package with an unfinished rollout cannot be deleted; the error names it.
    pub(crate) async fn check_no_unfinished_rollout(
        &self,
        c: &impl ConnectionTrait,
        package: i64,
    ) -> StoreResult<()> {
        let open: Option<(i64, String)> = rollout::Entity::find()
            .select_only()
            .columns([rollout::Column::Id, rollout::Column::State])
            .filter(rollout::Column::PackageId.eq(package))
            .filter(rollout::Column::State.is_in(open_rollout_states()))
            .into_tuple()
            .one(c)
            .await?;
        match open {
            Some((id, state)) => Err(StoreError::Conflict(format!(
                "package {package} has the unfinished rollout {id} ({state}); cancel it or let it \
                 finish before deleting the package"
            ))),
            None => Ok(()),
        }
    }

    /// Package files are frozen once a rollout uses the package: the digest a device checks
    /// cannot change under it.
    pub(crate) async fn check_files_not_frozen(
        &self,
        c: &impl ConnectionTrait,
        package: i64,
    ) -> StoreResult<()> {
        let used: Option<i64> = rollout::Entity::find()
            .select_only()
            .column(rollout::Column::Id)
            .filter(rollout::Column::PackageId.eq(package))
            .into_tuple()
            .one(c)
            .await?;
        match used {
            Some(id) => Err(StoreError::Conflict(format!(
                "package {package} is used by rollout {id}; its files are frozen (create a new \
                 package version instead)"
            ))),
            None => Ok(()),
        }
    }
}

fn open_rollout_states() -> Vec<&'static str> {
    [
        RolloutState::Draft,
        RolloutState::Scheduled,
        RolloutState::Running,
        RolloutState::Paused,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect()
}

fn rename_field(e: StoreError, from: &str, to: &str) -> StoreError {
    match e {
        StoreError::Invalid(mut i) if i.field == from => {
            i.field = to.to_owned();
            StoreError::Invalid(i)
        }
        other => other,
    }
}

/// The uploaded device list a selected or phased scope names.
fn list_of(scope: &Scope) -> Option<DeviceListId> {
    match scope {
        Scope::Selected(DeviceSource::List(l))
        | Scope::Phased {
            devices: DeviceSource::List(l),
            ..
        } => Some(*l),
        _ => None,
    }
}

/// B3: the device has had fewer than 10 tasks in this dynamic rollout (a device with none
/// passes, so this also serves the first join).
fn not_capped_in(rollout: RolloutId) -> sea_orm::sea_query::SimpleExpr {
    let mut done = Query::select();
    done.expr(Expr::col(task::Column::Id).count())
        .from(task::Entity)
        .and_where(Expr::col((task::Entity, task::Column::RolloutId)).eq(rollout.0))
        .and_where(
            Expr::col((task::Entity, task::Column::DeviceId))
                .equals((device::Entity, device::Column::Id)),
        );
    Expr::expr(sea_orm::sea_query::SimpleExpr::SubQuery(
        None,
        Box::new(sea_orm::sea_query::SubQueryStatement::SelectStatement(done)),
    ))
    .lt(i64::from(rollout_limits::MAX_DYNAMIC_UPDATES_PER_DEVICE))
}

/// Names staged per statement (two binds each).
const STAGE_BATCH: usize = 10_000;

/// A fresh temporary table for staged names, private to this transaction's connection.
async fn stage_names_table(txn: &DatabaseTransaction) -> StoreResult<()> {
    match txn.get_database_backend() {
        DbBackend::Postgres => {
            txn.execute_unprepared(
                "CREATE TEMP TABLE IF NOT EXISTS staged_name (row BIGINT NOT NULL, name TEXT NOT NULL) ON COMMIT DROP",
            )
            .await?;
        }
        _ => {
            txn.execute_unprepared(
                "CREATE TEMP TABLE IF NOT EXISTS staged_name (row INTEGER NOT NULL, name TEXT NOT NULL)",
            )
            .await?;
        }
    }
    // a pooled SQLite connection may keep the table from an earlier call
    txn.execute_unprepared("DELETE FROM staged_name").await?;
    Ok(())
}

async fn stage_names(
    txn: &DatabaseTransaction,
    row: &mut i64,
    names: Vec<DeviceName>,
) -> StoreResult<()> {
    if names.is_empty() {
        return Ok(());
    }
    let backend = txn.get_database_backend();
    if backend == DbBackend::Postgres {
        // One text parameter per batch, split by the server: binding 20,000 parameters
        // costs PostgreSQL more than the insert. A device name never holds a newline.
        let first = *row;
        let mut text = String::with_capacity(names.len() * 24);
        for (i, n) in names.into_iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            text.push_str(n.as_str());
            *row += 1;
        }
        txn.execute(stmt(
            backend,
            "INSERT INTO staged_name (row, name) SELECT CAST(? AS BIGINT) + o, n \
             FROM unnest(string_to_array(?, E'\\n')) WITH ORDINALITY AS t(n, o)",
            vec![first.into(), text.into()],
        ))
        .await?;
        return Ok(());
    }
    let mut sql = String::from("INSERT INTO staged_name (row, name) VALUES ");
    let mut vals: Vec<Value> = Vec::with_capacity(names.len() * 2);
    for (i, n) in names.into_iter().enumerate() {
        *row += 1;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?)");
        vals.push((*row).into());
        vals.push(n.into_string().into());
    }
    txn.execute(stmt(txn.get_database_backend(), &sql, vals))
        .await?;
    Ok(())
}

/// Turns the staged names into a device list: unknown names refuse it (in input order),
/// the rest are joined to their devices in one statement (duplicates once).
async fn finish_device_list(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    tenant: TenantId,
    product: ProductId,
    now: Millis,
) -> StoreResult<(DeviceListId, u64)> {
    #[derive(FromQueryResult)]
    struct Name {
        name: String,
    }
    let unknown = Name::find_by_statement(stmt(
        backend,
        "SELECT s.name AS name FROM staged_name s WHERE NOT EXISTS \
         (SELECT 1 FROM device d WHERE d.product_id = ? AND d.name = s.name) ORDER BY s.row",
        vec![product.0.into()],
    ))
    .all(txn)
    .await?;
    if !unknown.is_empty() {
        let total = unknown.len() as u64;
        let names = unknown
            .into_iter()
            .take(MAX_UNKNOWN_LISTED)
            .map(|n| n.name)
            .collect();
        return Err(StoreError::UnknownDevices { names, total });
    }
    let list = device_list::ActiveModel {
        tenant_id: Set(tenant.0),
        product_id: Set(product.0),
        devices: Set(0),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    let n = txn
        .execute(stmt(
            backend,
            "INSERT INTO device_list_member (list_id, device_id) SELECT DISTINCT ?, d.id \
             FROM staged_name s JOIN device d ON d.product_id = ? AND d.name = s.name",
            vec![list.id.into(), product.0.into()],
        ))
        .await?
        .rows_affected();
    device_list::ActiveModel {
        id: Set(list.id),
        devices: Set(i64::try_from(n).unwrap_or(i64::MAX)),
        ..Default::default()
    }
    .update(txn)
    .await?;
    if backend == DbBackend::Sqlite {
        txn.execute_unprepared("DELETE FROM staged_name").await?;
    } else {
        // Fresh statistics for the planner: without them it takes a million-member list
        // for a few thousand and probes device, device_module and task once per member
        // when a rollout is created over it (a nested loop of tens of seconds).
        txn.execute_unprepared("ANALYZE device_list_member").await?;
    }
    Ok((DeviceListId(list.id), n))
}

/// Writes one task per candidate device (the `id` column of `candidates`), set-based.
///
/// The candidates read `task` (R10/R11 look for open tasks), so on PostgreSQL they are
/// collected into a temporary table first: an `INSERT … SELECT` that probes the very table
/// it fills can be planned as a nested loop over a sequential scan of `task` (when its
/// statistics say it is empty), and every probe then reads every row inserted so far, which
/// is quadratic (two minutes for 100,000 devices). SQLite collects such a SELECT into a
/// temporary table of its own accord.
async fn insert_tasks(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    rollout: RolloutId,
    initial: TaskState,
    now: Millis,
    candidates: SelectStatement,
) -> StoreResult<u64> {
    let columns = [
        task::Column::RolloutId,
        task::Column::DeviceId,
        task::Column::State,
        task::Column::CreatedAt,
        task::Column::UpdatedAt,
    ];
    let mut insert = Query::insert();
    insert.into_table(task::Entity).columns(columns);
    if backend == DbBackend::Postgres {
        stage_candidates(txn, backend, candidates).await?;
        let mut select = Query::select();
        select
            .expr(Expr::val(rollout.0))
            .column(Alias::new("id"))
            .expr(Expr::val(initial.as_str()))
            .expr(Expr::val(now))
            .expr(Expr::val(now))
            .from(Alias::new("rollout_candidate"));
        insert.select_from(select).map_err(bad_query)?;
        let n = txn.execute(backend.build(&insert)).await?.rows_affected();
        txn.execute_unprepared("DROP TABLE rollout_candidate")
            .await?;
        return Ok(n);
    }
    let mut select = Query::select();
    select
        .expr(Expr::val(rollout.0))
        .column((Alias::new("c"), Alias::new("id")))
        .expr(Expr::val(initial.as_str()))
        .expr(Expr::val(now))
        .expr(Expr::val(now))
        .from_subquery(candidates, Alias::new("c"));
    insert.select_from(select).map_err(bad_query)?;
    Ok(txn.execute(backend.build(&insert)).await?.rows_affected())
}

fn bad_query(e: sea_orm::sea_query::error::Error) -> StoreError {
    StoreError::Database(sea_orm::DbErr::Custom(e.to_string()))
}

/// Collects a candidate query's device ids into the temporary table `rollout_candidate`
/// (dropped by the caller, and on PostgreSQL at commit at the latest). Parameters are not
/// allowed in PostgreSQL's CREATE TABLE … AS, so it is created, then filled.
async fn stage_candidates(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    candidates: SelectStatement,
) -> StoreResult<()> {
    txn.execute_unprepared(if backend == DbBackend::Postgres {
        "CREATE TEMP TABLE rollout_candidate (id BIGINT NOT NULL) ON COMMIT DROP"
    } else {
        "CREATE TEMP TABLE rollout_candidate (id INTEGER NOT NULL)"
    })
    .await?;
    let mut collect = Query::insert();
    collect
        .into_table(Alias::new("rollout_candidate"))
        .columns([Alias::new("id")])
        .select_from(candidates)
        .map_err(bad_query)?;
    txn.execute(backend.build(&collect)).await?;
    Ok(())
}

/// G3: inserts the tasks of a rollout split into waves. Candidates are ranked in a stable
/// pseudo-random order (a fixed permutation of device ids, so a wave is a spread of the
/// fleet, not its oldest devices) and the tasks are inserted in that order, so each wave is
/// one run of task ids and release, which takes tasks by id, never scans a later wave.
/// Returns the tasks made and the waves with their task counts.
async fn insert_tasks_in_waves(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    rollout: RolloutId,
    initial: TaskState,
    now: Millis,
    candidates: SelectStatement,
    waves: &[Wave],
) -> StoreResult<(u64, Vec<Wave>)> {
    stage_candidates(txn, backend, candidates).await?;
    #[derive(FromQueryResult)]
    struct N {
        n: i64,
    }
    let total = N::find_by_statement(stmt(
        backend,
        "SELECT COUNT(*) AS n FROM rollout_candidate",
        vec![],
    ))
    .one(txn)
    .await?
    .map_or(0, |r| u64::try_from(r.n).unwrap_or(0));
    let bounds = wave_bounds(total, waves);
    let mut case = String::from("CASE");
    for (i, b) in bounds.iter().enumerate() {
        case.push_str(&format!(" WHEN rn <= {b} THEN {}", i + 1));
    }
    case.push_str(&format!(" ELSE {} END", bounds.len()));
    // all values are numbers the server made; the state is one of its own words
    let n = txn
        .execute(stmt(
            backend,
            &format!(
                "INSERT INTO task (rollout_id, device_id, state, created_at, updated_at, wave) \
                 SELECT ?, id, ?, ?, ?, {case} FROM \
                 (SELECT id, ROW_NUMBER() OVER (ORDER BY ((id % 1000003) * 999983) % 1000003, id) AS rn \
                  FROM rollout_candidate) ranked ORDER BY rn"
            ),
            vec![
                rollout.0.into(),
                initial.as_str().into(),
                now.into(),
                now.into(),
            ],
        ))
        .await?
        .rows_affected();
    txn.execute_unprepared("DROP TABLE rollout_candidate")
        .await?;
    let mut prev = 0;
    let sized = waves
        .iter()
        .zip(&bounds)
        .map(|(w, b)| {
            let tasks = b - prev;
            prev = *b;
            Wave { tasks, ..w.clone() }
        })
        .collect();
    Ok((n, sized))
}
