//! Device attributes and tags: name → value labels, read, replaced as a set, or merged
//! (SPEC D4). Each write runs in one transaction with the device row locked.

use super::entity::{device, device_attribute, device_tag};
use super::{Store, StoreError, StoreResult};
use crate::domain::*;
use sea_orm::sea_query::LockType;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect, Set};
use std::collections::BTreeMap;

/// Name → value, sorted by name.
pub type LabelSet = BTreeMap<String, String>;

async fn lock_device<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    id: DeviceId,
) -> StoreResult<i64> {
    device::Entity::find_by_id(id.0)
        .filter(device::Column::TenantId.eq(tenant.0))
        .lock(LockType::NoKeyUpdate)
        .one(c)
        .await?
        .map(|d| d.id)
        .ok_or(StoreError::NotFound("device"))
}

async fn read_set<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    device: i64,
    kind: LabelKind,
) -> Result<LabelSet, DbErr> {
    Ok(match kind {
        LabelKind::Attribute => device_attribute::Entity::find()
            .filter(device_attribute::Column::TenantId.eq(tenant.0))
            .filter(device_attribute::Column::DeviceId.eq(device))
            .all(c)
            .await?
            .into_iter()
            .map(|r| (r.name, r.value))
            .collect(),
        LabelKind::Tag => device_tag::Entity::find()
            .filter(device_tag::Column::TenantId.eq(tenant.0))
            .filter(device_tag::Column::DeviceId.eq(device))
            .all(c)
            .await?
            .into_iter()
            .map(|r| (r.key, r.value))
            .collect(),
    })
}

/// Makes the device's labels of `kind` exactly `set` (at most 100 rows, one statement).
async fn write_set<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    device: i64,
    kind: LabelKind,
    set: &LabelSet,
) -> Result<(), DbErr> {
    match kind {
        LabelKind::Attribute => {
            device_attribute::Entity::delete_many()
                .filter(device_attribute::Column::TenantId.eq(tenant.0))
                .filter(device_attribute::Column::DeviceId.eq(device))
                .exec(c)
                .await?;
            if !set.is_empty() {
                device_attribute::Entity::insert_many(set.iter().map(|(k, v)| {
                    device_attribute::ActiveModel {
                        device_id: Set(device),
                        name: Set(k.clone()),
                        tenant_id: Set(tenant.0),
                        value: Set(v.clone()),
                    }
                }))
                .exec_without_returning(c)
                .await?;
            }
        }
        LabelKind::Tag => {
            device_tag::Entity::delete_many()
                .filter(device_tag::Column::TenantId.eq(tenant.0))
                .filter(device_tag::Column::DeviceId.eq(device))
                .exec(c)
                .await?;
            if !set.is_empty() {
                device_tag::Entity::insert_many(set.iter().map(|(k, v)| device_tag::ActiveModel {
                    device_id: Set(device),
                    key: Set(k.clone()),
                    tenant_id: Set(tenant.0),
                    value: Set(v.clone()),
                }))
                .exec_without_returning(c)
                .await?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// The device's attributes or tags.
    pub async fn device_labels(
        &self,
        tenant: TenantId,
        device: DeviceId,
        kind: LabelKind,
    ) -> StoreResult<LabelSet> {
        let d = self.get_device(tenant, device).await?;
        Ok(read_set(self.db(), tenant, d.id.0, kind).await?)
    }

    /// Replaces the device's labels of one kind by `labels`; returns the new set.
    pub async fn replace_device_labels(
        &self,
        tenant: TenantId,
        device: DeviceId,
        labels: &Labels,
    ) -> StoreResult<LabelSet> {
        labels.kind.check_count(labels.set.len())?;
        let txn = self.begin_write().await?;
        let id = lock_device(&txn, tenant, device).await?;
        write_set(&txn, tenant, id, labels.kind, &labels.set).await?;
        txn.commit().await?;
        Ok(labels.set.clone())
    }

    /// Merges `patch` into the device's labels (a `None` value deletes); the result must
    /// stay within the count limit. Returns the new set.
    pub async fn merge_device_labels(
        &self,
        tenant: TenantId,
        device: DeviceId,
        patch: &LabelPatch,
    ) -> StoreResult<LabelSet> {
        let txn = self.begin_write().await?;
        let id = lock_device(&txn, tenant, device).await?;
        let current = read_set(&txn, tenant, id, patch.kind).await?;
        let next = patch.apply(current.clone());
        patch.kind.check_count(next.len())?;
        if next != current {
            write_set(&txn, tenant, id, patch.kind, &next).await?;
        }
        txn.commit().await?;
        Ok(next)
    }
}
