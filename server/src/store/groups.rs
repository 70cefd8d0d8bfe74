//! Device groups: a tenant-wide tree with unique sibling names and a depth limit, and bulk
//! membership that is all or nothing (SPEC D3). Group scopes are read through
//! [`Store::resolve_device_filter`] with `include_subgroups`.

use super::entity::{device_group, group_member};
use super::search::{check_device_ids, lock_tenant};
use super::{Page, PageRequest, Store, StoreError, StoreResult, MAX_BIND_PARAMS};
use crate::clock::Millis;
use crate::domain::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

fn to_group(m: device_group::Model) -> Group {
    Group {
        id: GroupId(m.id),
        parent_id: m.parent_id.map(GroupId),
        name: DisplayName::from_trusted(m.name),
        description: m.description,
        created_at: m.created_at,
    }
}

async fn find_group<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    id: GroupId,
    what: &'static str,
) -> StoreResult<device_group::Model> {
    device_group::Entity::find_by_id(id.0)
        .filter(device_group::Column::TenantId.eq(tenant.0))
        .one(c)
        .await?
        .ok_or(StoreError::NotFound(what))
}

/// The level of group `id` in its tree (a root is level 1).
async fn group_level<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    id: GroupId,
) -> StoreResult<usize> {
    let mut level = 1;
    let mut cur = find_group(c, tenant, id, "group").await?.parent_id;
    while let Some(p) = cur {
        level += 1;
        if level > limits::MAX_GROUP_DEPTH + 1 {
            break; // deeper than allowed already; no need to walk further
        }
        cur = find_group(c, tenant, GroupId(p), "group").await?.parent_id;
    }
    Ok(level)
}

/// Refuses a name another child of `parent` (or another root) carries already.
async fn check_sibling_name<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    parent: Option<GroupId>,
    name: &DisplayName,
    except: Option<GroupId>,
) -> StoreResult<()> {
    let mut q = device_group::Entity::find()
        .filter(device_group::Column::TenantId.eq(tenant.0))
        .filter(device_group::Column::Name.eq(name.as_str()));
    q = match parent {
        Some(p) => q.filter(device_group::Column::ParentId.eq(p.0)),
        None => q.filter(device_group::Column::ParentId.is_null()),
    };
    if let Some(e) = except {
        q = q.filter(device_group::Column::Id.ne(e.0));
    }
    if let Some(other) = q.one(c).await? {
        let place = match parent {
            Some(p) => format!("under group {p}"),
            None => "at the top level".to_owned(),
        };
        return Err(StoreError::Conflict(format!(
            "group {} is named {:?} already {place}; sibling groups need distinct names",
            other.id,
            name.as_str()
        )));
    }
    Ok(())
}

impl Store {
    /// Creates a group, at the top level or under `new.parent` (SPEC D3).
    pub async fn create_group(
        &self,
        tenant: TenantId,
        new: NewGroup,
        now: Millis,
    ) -> StoreResult<Group> {
        let txn = self.begin_write().await?;
        lock_tenant(&txn, tenant).await?;
        if let Some(p) = new.parent {
            find_group(&txn, tenant, p, "parent group").await?;
            let level = group_level(&txn, tenant, p).await?;
            if level >= limits::MAX_GROUP_DEPTH {
                return Err(Invalid::new(
                    "parent_id",
                    format!(
                        "group {p} is at level {level}; groups nest at most {} levels deep",
                        limits::MAX_GROUP_DEPTH
                    ),
                )
                .into());
            }
        }
        check_sibling_name(&txn, tenant, new.parent, &new.name, None).await?;
        let row = device_group::ActiveModel {
            tenant_id: Set(tenant.0),
            parent_id: Set(new.parent.map(|p| p.0)),
            name: Set(new.name.into_string()),
            description: Set(new.description),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(to_group(row))
    }

    pub async fn get_group(&self, tenant: TenantId, id: GroupId) -> StoreResult<Group> {
        find_group(self.db(), tenant, id, "group")
            .await
            .map(to_group)
    }

    /// The children of `parent`, or the top-level groups, in id order.
    pub async fn list_groups(
        &self,
        tenant: TenantId,
        parent: Option<GroupId>,
        page: PageRequest,
    ) -> StoreResult<Page<Group>> {
        let mut q = device_group::Entity::find()
            .filter(device_group::Column::TenantId.eq(tenant.0))
            .filter(device_group::Column::Id.gt(page.after));
        q = match parent {
            Some(p) => {
                find_group(self.db(), tenant, p, "parent group").await?;
                q.filter(device_group::Column::ParentId.eq(p.0))
            }
            None => q.filter(device_group::Column::ParentId.is_null()),
        };
        let rows = q
            .order_by_asc(device_group::Column::Id)
            .limit(page.limit + 1)
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id).map(to_group))
    }

    /// Renames a group or changes its description.
    pub async fn update_group(
        &self,
        tenant: TenantId,
        id: GroupId,
        patch: GroupPatch,
    ) -> StoreResult<Group> {
        let txn = self.begin_write().await?;
        lock_tenant(&txn, tenant).await?;
        let row = find_group(&txn, tenant, id, "group").await?;
        if let Some(n) = &patch.name {
            check_sibling_name(&txn, tenant, row.parent_id.map(GroupId), n, Some(id)).await?;
        }
        let mut active: device_group::ActiveModel = row.into();
        if let Some(n) = patch.name {
            active.name = Set(n.into_string());
        }
        if let Some(d) = patch.description {
            active.description = Set(d);
        }
        let row = active.update(&txn).await?;
        txn.commit().await?;
        Ok(to_group(row))
    }

    /// Deletes a group and its memberships (the devices stay); refused while it has
    /// subgroups, so a whole branch is never removed by one call.
    pub async fn delete_group(&self, tenant: TenantId, id: GroupId) -> StoreResult<()> {
        let txn = self.begin_write().await?;
        lock_tenant(&txn, tenant).await?;
        let g = find_group(&txn, tenant, id, "group").await?;
        let children = device_group::Entity::find()
            .filter(device_group::Column::TenantId.eq(tenant.0))
            .filter(device_group::Column::ParentId.eq(g.id))
            .count(&txn)
            .await?;
        if children > 0 {
            return Err(StoreError::Conflict(format!(
                "group {} has {children} subgroups; delete or empty them first",
                g.id
            )));
        }
        group_member::Entity::delete_many()
            .filter(group_member::Column::TenantId.eq(tenant.0))
            .filter(group_member::Column::GroupId.eq(g.id))
            .exec(&txn)
            .await?;
        device_group::Entity::delete_by_id(g.id).exec(&txn).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Adds devices to a group, all or nothing: every id must name a device of the tenant
    /// (at most 10,000 per call). Devices already in the group stay; returns how many
    /// joined.
    pub async fn add_group_members(
        &self,
        tenant: TenantId,
        group: GroupId,
        devices: &[DeviceId],
    ) -> StoreResult<u64> {
        let txn = self.begin_write().await?;
        let g = find_group(&txn, tenant, group, "group").await?;
        let ids = check_device_ids(&txn, tenant, devices).await?;
        let mut added = 0;
        for chunk in ids.chunks(MAX_BIND_PARAMS / 3) {
            added += group_member::Entity::insert_many(chunk.iter().map(|d| {
                group_member::ActiveModel {
                    group_id: Set(g.id),
                    device_id: Set(*d),
                    tenant_id: Set(tenant.0),
                }
            }))
            .on_conflict(
                OnConflict::columns([
                    group_member::Column::GroupId,
                    group_member::Column::DeviceId,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        }
        txn.commit().await?;
        Ok(added)
    }

    /// Removes devices from a group, all or nothing (every id must name a device of the
    /// tenant); returns how many left it.
    pub async fn remove_group_members(
        &self,
        tenant: TenantId,
        group: GroupId,
        devices: &[DeviceId],
    ) -> StoreResult<u64> {
        let txn = self.begin_write().await?;
        let g = find_group(&txn, tenant, group, "group").await?;
        let ids = check_device_ids(&txn, tenant, devices).await?;
        let mut removed = 0;
        for chunk in ids.chunks(MAX_BIND_PARAMS - 2) {
            removed += group_member::Entity::delete_many()
                .filter(group_member::Column::TenantId.eq(tenant.0))
                .filter(group_member::Column::GroupId.eq(g.id))
                .filter(group_member::Column::DeviceId.is_in(chunk.iter().copied()))
                .exec(&txn)
                .await?
                .rows_affected;
        }
        txn.commit().await?;
        Ok(removed)
    }

    /// The groups a device is a direct member of, in id order.
    pub async fn device_groups(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> StoreResult<Vec<Group>> {
        let d = self.get_device(tenant, device).await?;
        let ids: Vec<i64> = group_member::Entity::find()
            .select_only()
            .column(group_member::Column::GroupId)
            .filter(group_member::Column::TenantId.eq(tenant.0))
            .filter(group_member::Column::DeviceId.eq(d.id.0))
            .into_tuple()
            .all(self.db())
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_BIND_PARAMS - 1) {
            out.extend(
                device_group::Entity::find()
                    .filter(device_group::Column::TenantId.eq(tenant.0))
                    .filter(device_group::Column::Id.is_in(chunk.iter().copied()))
                    .order_by_asc(device_group::Column::Id)
                    .all(self.db())
                    .await?
                    .into_iter()
                    .map(to_group),
            );
        }
        out.sort_by_key(|g| g.id);
        Ok(out)
    }
}
