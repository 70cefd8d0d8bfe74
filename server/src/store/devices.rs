//! Devices of a product: single and bulk creation, module versions and their history
//! (SPEC D1, D2). A bulk import runs in one transaction: all rows land or none.

use super::entity::{device, device_module, version_report};
use super::{
    is_unique_violation, Page, PageRequest, RowErrors, Store, StoreError, StoreResult,
    MAX_BIND_PARAMS,
};
use crate::clock::Millis;
use crate::domain::*;
use rand::RngCore;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use std::collections::HashMap;

pub(crate) fn to_device(m: device::Model) -> Device {
    Device {
        id: DeviceId(m.id),
        tenant_id: TenantId(m.tenant_id),
        product_id: ProductId(m.product_id),
        name: DeviceName::from_trusted(m.name),
        secret: m.secret,
        online: m.online,
        activated_at: m.activated_at,
        last_seen_at: m.last_seen_at,
        created_at: m.created_at,
    }
}

/// 32 lowercase hex characters, like Alibaba device secrets.
pub fn generate_device_secret() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Rows per INSERT: two bound values each, under every backend's parameter limit.
const IMPORT_BATCH: usize = MAX_BIND_PARAMS / 2;

impl Store {
    pub async fn create_device(
        &self,
        tenant: TenantId,
        product: ProductId,
        new: NewDevice,
        now: Millis,
    ) -> StoreResult<Device> {
        let p = self.get_product(tenant, product).await?;
        let secret = new
            .secret
            .map(DeviceSecret::into_string)
            .unwrap_or_else(generate_device_secret);
        let row = device::ActiveModel {
            tenant_id: Set(tenant.0),
            product_id: Set(p.id.0),
            name: Set(new.name.as_str().to_owned()),
            secret: Set(secret),
            online: Set(false),
            activated_at: Set(None),
            last_seen_at: Set(None),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(self.db())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!(
                    "device {:?} exists already in product {}",
                    new.name.as_str(),
                    p.id
                ))
            } else {
                e.into()
            }
        })?;
        Ok(to_device(row))
    }

    pub async fn get_device(&self, tenant: TenantId, id: DeviceId) -> StoreResult<Device> {
        device::Entity::find_by_id(id.0)
            .filter(device::Column::TenantId.eq(tenant.0))
            .one(self.db())
            .await?
            .map(to_device)
            .ok_or(StoreError::NotFound("device"))
    }

    pub async fn get_device_by_name(
        &self,
        tenant: TenantId,
        product: ProductId,
        name: &DeviceName,
    ) -> StoreResult<Device> {
        device::Entity::find()
            .filter(device::Column::TenantId.eq(tenant.0))
            .filter(device::Column::ProductId.eq(product.0))
            .filter(device::Column::Name.eq(name.as_str()))
            .one(self.db())
            .await?
            .map(to_device)
            .ok_or(StoreError::NotFound("device"))
    }

    /// Deletes a device with its tasks, their audit rows, its list memberships and its
    /// version history. These go explicitly: on PostgreSQL those tables have no foreign key
    /// to cascade (see the migration `hot_keys`). The tenant lock keeps a rollout being
    /// created or joined meanwhile from giving the device a task.
    pub async fn delete_device(&self, tenant: TenantId, id: DeviceId) -> StoreResult<()> {
        let txn = self.begin_write().await?;
        super::search::lock_tenant(&txn, tenant).await?;
        let found = device::Entity::find_by_id(id.0)
            .filter(device::Column::TenantId.eq(tenant.0))
            .count(&txn)
            .await?;
        if found == 0 {
            return Err(StoreError::NotFound("device"));
        }
        let backend = txn.get_database_backend();
        for sql in [
            "DELETE FROM task_event WHERE task_id IN (SELECT id FROM task WHERE device_id = ?)",
            "DELETE FROM task WHERE device_id = ?",
            "DELETE FROM device_list_member WHERE device_id = ?",
            "DELETE FROM version_report WHERE device_id = ?",
            "DELETE FROM device WHERE id = ?",
        ] {
            txn.execute(super::rollouts::stmt(backend, sql, vec![id.0.into()]))
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Replaces a device's secret (a generated one when `secret` is `None`).
    pub async fn reset_device_secret(
        &self,
        tenant: TenantId,
        id: DeviceId,
        secret: Option<DeviceSecret>,
    ) -> StoreResult<Device> {
        let d = self.get_device(tenant, id).await?;
        let mut active: device::ActiveModel = device::ActiveModel {
            id: Set(d.id.0),
            ..Default::default()
        };
        active.secret = Set(secret
            .map(DeviceSecret::into_string)
            .unwrap_or_else(generate_device_secret));
        Ok(to_device(active.update(self.db()).await?))
    }

    /// Records a version report: the module's current version and one history row (SPEC D2).
    pub async fn record_version_report(
        &self,
        tenant: TenantId,
        device: DeviceId,
        module: &ModuleName,
        version: &Version,
        now: Millis,
    ) -> StoreResult<()> {
        let d = self.get_device(tenant, device).await?;
        let txn = self.begin_write().await?;
        let known = device_module::Entity::find()
            .filter(device_module::Column::DeviceId.eq(d.id.0))
            .count(&txn)
            .await?;
        let is_new_module = device_module::Entity::find_by_id((d.id.0, module.as_str().to_owned()))
            .one(&txn)
            .await?
            .is_none();
        if is_new_module && known as usize >= limits::MAX_MODULES_PER_DEVICE {
            return Err(StoreError::Invalid(Invalid::new(
                "module",
                format!(
                    "a device may report at most {} modules",
                    limits::MAX_MODULES_PER_DEVICE
                ),
            )));
        }
        device_module::Entity::insert(device_module::ActiveModel {
            device_id: Set(d.id.0),
            module: Set(module.as_str().to_owned()),
            tenant_id: Set(tenant.0),
            product_id: Set(d.product_id.0),
            version: Set(version.as_str().to_owned()),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([
                device_module::Column::DeviceId,
                device_module::Column::Module,
            ])
            .update_columns([
                device_module::Column::Version,
                device_module::Column::UpdatedAt,
            ])
            .to_owned(),
        )
        .exec(&txn)
        .await?;
        version_report::ActiveModel {
            tenant_id: Set(tenant.0),
            device_id: Set(d.id.0),
            module: Set(module.as_str().to_owned()),
            version: Set(version.as_str().to_owned()),
            reported_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn device_modules(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> StoreResult<Vec<ModuleVersion>> {
        let rows = device_module::Entity::find()
            .filter(device_module::Column::TenantId.eq(tenant.0))
            .filter(device_module::Column::DeviceId.eq(device.0))
            .order_by_asc(device_module::Column::Module)
            .all(self.db())
            .await?;
        Ok(rows
            .into_iter()
            .map(|m| ModuleVersion {
                module: ModuleName::from_trusted(m.module),
                version: Version::from_trusted(m.version),
                updated_at: m.updated_at,
            })
            .collect())
    }

    /// The device's version reports, oldest first, optionally for one module.
    pub async fn version_history(
        &self,
        tenant: TenantId,
        device: DeviceId,
        module: Option<&ModuleName>,
        page: PageRequest,
    ) -> StoreResult<Page<VersionReport>> {
        self.get_device(tenant, device).await?;
        let mut q = version_report::Entity::find()
            .filter(version_report::Column::TenantId.eq(tenant.0))
            .filter(version_report::Column::DeviceId.eq(device.0))
            .filter(version_report::Column::Id.gt(page.after));
        if let Some(m) = module {
            q = q.filter(version_report::Column::Module.eq(m.as_str()));
        }
        let rows = q
            .order_by_asc(version_report::Column::Id)
            .limit(page.limit + 1)
            .all(self.db())
            .await?;
        Ok(
            Page::from_rows(rows, page, |r| r.id).map(|r| VersionReport {
                id: r.id,
                module: ModuleName::from_trusted(r.module),
                version: Version::from_trusted(r.version),
                reported_at: r.reported_at,
            }),
        )
    }
}

/// What a finished import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    pub imported: u64,
}

/// One validated row of an import, with its 1-based number in the input.
pub type ImportRow = (u64, NewDevice);

impl Store {
    /// Writes an import's rows into `product`, all or nothing, in one transaction.
    ///
    /// `rows` must be ready to read at database speed (a spooled, validated file): the
    /// transaction holds SQLite's write lock, or a pooled PostgreSQL connection, for as long
    /// as it reads. `errors` are the rows that failed validation upstream; rows that clash
    /// with existing devices or with each other are added to them, and any error rolls all
    /// back. Duplicates are found by the unique index, so no set of every name is kept.
    pub async fn import_devices<S>(
        &self,
        tenant: TenantId,
        product: ProductId,
        mut rows: S,
        mut errors: RowErrors,
        now: Millis,
    ) -> StoreResult<ImportSummary>
    where
        S: futures_util::Stream<Item = std::io::Result<ImportRow>> + Unpin,
    {
        use futures_util::StreamExt;
        let p = self.get_product(tenant, product).await?;
        let txn = self.begin_write().await?;
        // Ids only grow, so a clashing row with a larger id came from this import.
        let max_before: i64 = device::Entity::find()
            .select_only()
            .column_as(device::Column::Id.max(), "m")
            .into_tuple::<Option<i64>>()
            .one(&txn)
            .await?
            .flatten()
            .unwrap_or(0);
        let mut import = ImportWriter {
            txn: &txn,
            tenant,
            product: p.id,
            now,
            max_before,
            errors: &mut errors,
            inserted: 0,
        };
        let mut batch: Vec<ImportRow> = Vec::with_capacity(IMPORT_BATCH);
        let mut any = false;
        while let Some(row) = rows.next().await {
            batch.push(row.map_err(StoreError::Spool)?);
            any = true;
            if batch.len() >= IMPORT_BATCH {
                import.write(std::mem::take(&mut batch)).await?;
            }
        }
        import.write(batch).await?;
        let inserted = import.inserted;
        if !errors.is_empty() {
            txn.rollback().await?;
            return Err(StoreError::InvalidRows(errors));
        }
        if !any {
            txn.rollback().await?;
            return Err(StoreError::Invalid(Invalid::new(
                "body",
                "the import holds no device rows",
            )));
        }
        txn.commit().await?;
        Ok(ImportSummary { imported: inserted })
    }
}

/// Writes batches of an import inside its transaction and explains the rows that clash.
struct ImportWriter<'a> {
    txn: &'a DatabaseTransaction,
    tenant: TenantId,
    product: ProductId,
    now: Millis,
    max_before: i64,
    errors: &'a mut RowErrors,
    inserted: u64,
}

impl ImportWriter<'_> {
    async fn write(&mut self, batch: Vec<ImportRow>) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // The common case is one statement; only a batch that clashes pays for the diagnosis.
        let sp = self.txn.begin().await?;
        let n = batch.len() as u64;
        match sp.execute(self.insert(&batch)?).await {
            Ok(_) => {
                sp.commit().await?;
                self.inserted += n;
                return Ok(());
            }
            Err(e) if is_unique_violation(&e) => sp.rollback().await?,
            Err(e) => return Err(e.into()),
        }
        let names: Vec<&str> = batch.iter().map(|(_, d)| d.name.as_str()).collect();
        let existing: HashMap<String, i64> = device::Entity::find()
            .select_only()
            .column(device::Column::Name)
            .column(device::Column::Id)
            .filter(device::Column::ProductId.eq(self.product.0))
            .filter(device::Column::Name.is_in(names))
            .into_tuple::<(String, i64)>()
            .all(self.txn)
            .await?
            .into_iter()
            .collect();
        let mut first_in_batch: HashMap<&str, u64> = HashMap::new();
        let mut clean = Vec::with_capacity(batch.len());
        for (row, d) in &batch {
            let name = d.name.as_str();
            if let Some(id) = existing.get(name) {
                let why = if *id > self.max_before {
                    format!("device {name:?} appears more than once in this import")
                } else {
                    format!("device {name:?} exists already in this product")
                };
                self.errors.push(*row, "name", why);
            } else if let Some(first) = first_in_batch.get(name) {
                self.errors.push(
                    *row,
                    "name",
                    format!("device {name:?} appears more than once in this import (first in row {first})"),
                );
            } else {
                first_in_batch.insert(name, *row);
                clean.push((*row, d.clone()));
            }
        }
        // The rest still goes in (to be rolled back), so later rows that repeat it are found.
        if !clean.is_empty() {
            self.txn.execute(self.insert(&clean)?).await?;
        }
        Ok(())
    }

    /// One multi-row INSERT. The tenant, product and time are the same for every row, so
    /// they go into the SQL as integer literals and only name and secret are bound: twice
    /// the rows per statement under the bind limit, and a third of the values to bind.
    fn insert(&self, batch: &[ImportRow]) -> StoreResult<sea_orm::Statement> {
        use std::fmt::Write as _;
        let backend = self.txn.get_database_backend();
        let (tenant, product, now) = (self.tenant.0, self.product.0, self.now);
        let mut sql = String::with_capacity(96 + batch.len() * 32);
        sql.push_str(
            "INSERT INTO device (tenant_id, product_id, name, secret, created_at) VALUES ",
        );
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(batch.len() * 2);
        for (i, (_, d)) in batch.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            let written = match backend {
                DbBackend::Postgres => write!(
                    sql,
                    "({tenant},{product},${},${},{now})",
                    2 * i + 1,
                    2 * i + 2
                ),
                _ => write!(sql, "({tenant},{product},?,?,{now})"),
            };
            written.map_err(|e| StoreError::Database(sea_orm::DbErr::Custom(e.to_string())))?;
            let secret = d
                .secret
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(generate_device_secret);
            values.push(d.name.as_str().into());
            values.push(secret.into());
        }
        Ok(sea_orm::Statement::from_sql_and_values(
            backend, sql, values,
        ))
    }
}

impl Store {
    /// A page of `(id, name, secret)` of a product's devices, by id after `after`.
    pub async fn device_credentials(
        &self,
        tenant: TenantId,
        product: ProductId,
        after: i64,
        limit: u64,
    ) -> StoreResult<Vec<(i64, String, String)>> {
        Ok(device::Entity::find()
            .select_only()
            .columns([
                device::Column::Id,
                device::Column::Name,
                device::Column::Secret,
            ])
            .filter(device::Column::TenantId.eq(tenant.0))
            .filter(device::Column::ProductId.eq(product.0))
            .filter(device::Column::Id.gt(after))
            .order_by_asc(device::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(self.db())
            .await?)
    }
}

impl Store {
    /// The product and device that MQTT credentials name. Not tenant-scoped: the product key
    /// is global, and the device's credentials are what tell its tenant.
    pub async fn device_by_identity(
        &self,
        product_key: &str,
        device_name: &str,
    ) -> StoreResult<Option<(Product, Device)>> {
        let Some(product) = self.product_by_key(product_key).await? else {
            return Ok(None);
        };
        let row = device::Entity::find()
            .filter(device::Column::ProductId.eq(product.id.0))
            .filter(device::Column::Name.eq(device_name))
            .one(self.db())
            .await?;
        Ok(row.map(|d| (product, to_device(d))))
    }

    /// The devices of a product with these names, in one query (the gateway loads the
    /// credentials of a reconnecting fleet in batches).
    pub async fn devices_named(
        &self,
        product: ProductId,
        names: &[String],
    ) -> StoreResult<Vec<Device>> {
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(MAX_BIND_PARAMS - 1) {
            let rows = device::Entity::find()
                .filter(device::Column::ProductId.eq(product.0))
                .filter(device::Column::Name.is_in(chunk.iter().cloned()))
                .all(self.db())
                .await?;
            out.extend(rows.into_iter().map(to_device));
        }
        Ok(out)
    }

    /// Records that devices connected (`online`) or disconnected, all at `now`: online state,
    /// last-seen time and, on a first connection, activation time (SPEC D1); one statement
    /// per [`MAX_BIND_PARAMS`] devices. Unknown ids (deleted devices) are skipped.
    pub async fn set_devices_online(
        &self,
        ids: &[DeviceId],
        online: bool,
        now: Millis,
    ) -> StoreResult<u64> {
        use sea_orm::sea_query::{Expr, Func};
        let mut changed = 0;
        for chunk in ids.chunks(MAX_BIND_PARAMS - 3) {
            let mut q = device::Entity::update_many()
                .col_expr(device::Column::Online, Expr::value(online))
                .col_expr(device::Column::LastSeenAt, Expr::value(now));
            if online {
                q = q.col_expr(
                    device::Column::ActivatedAt,
                    Func::coalesce([
                        Expr::col(device::Column::ActivatedAt).into(),
                        Expr::value(now),
                    ])
                    .into(),
                );
            }
            changed += q
                .filter(device::Column::Id.is_in(chunk.iter().map(|d| d.0)))
                .exec(self.db())
                .await?
                .rows_affected;
        }
        Ok(changed)
    }

    /// Marks every online device offline, in one statement; how many were. For a process
    /// starting its embedded broker: every session the registry remembers ended with the
    /// previous process, which may have stopped before recording it.
    pub async fn set_all_devices_offline(&self) -> StoreResult<u64> {
        use sea_orm::sea_query::Expr;
        Ok(device::Entity::update_many()
            .col_expr(device::Column::Online, Expr::value(false))
            .filter(device::Column::Online.eq(true))
            .exec(self.db())
            .await?
            .rows_affected)
    }

    /// Records that a device connected or disconnected: its online state, last-seen time,
    /// and on its first connection its activation time (SPEC D1).
    pub async fn set_device_online(
        &self,
        tenant: TenantId,
        id: DeviceId,
        online: bool,
        now: Millis,
    ) -> StoreResult<()> {
        use sea_orm::sea_query::{Expr, Func};
        let res = device::Entity::update_many()
            .col_expr(device::Column::Online, Expr::value(online))
            .col_expr(device::Column::LastSeenAt, Expr::value(now))
            .col_expr(
                device::Column::ActivatedAt,
                Func::coalesce([
                    Expr::col(device::Column::ActivatedAt).into(),
                    Expr::value(now),
                ])
                .into(),
            )
            .filter(device::Column::Id.eq(id.0))
            .filter(device::Column::TenantId.eq(tenant.0))
            .exec(self.db())
            .await?;
        if res.rows_affected == 0 {
            return Err(StoreError::NotFound("device"));
        }
        Ok(())
    }
}
