//! Asset trees: named trees of nodes, with devices bound to nodes (SPEC D4). "Devices on
//! these nodes and below" for rollout scopes (B8) is [`Store::asset_scope`] plus
//! [`DeviceFilter::asset_nodes`].

use super::entity::{asset_node, asset_node_device, asset_tree};
use super::search::{check_device_ids, lock_tenant};
use super::{Page, PageRequest, Store, StoreError, StoreResult, MAX_BIND_PARAMS};
use crate::clock::Millis;
use crate::domain::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

fn to_tree(m: asset_tree::Model) -> AssetTree {
    AssetTree {
        id: AssetTreeId(m.id),
        name: DisplayName::from_trusted(m.name),
        created_at: m.created_at,
    }
}

fn to_node(m: asset_node::Model) -> AssetNode {
    AssetNode {
        id: AssetNodeId(m.id),
        tree_id: AssetTreeId(m.tree_id),
        parent_id: m.parent_id.map(AssetNodeId),
        name: DisplayName::from_trusted(m.name),
        created_at: m.created_at,
    }
}

async fn find_tree<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    id: AssetTreeId,
) -> StoreResult<asset_tree::Model> {
    asset_tree::Entity::find_by_id(id.0)
        .filter(asset_tree::Column::TenantId.eq(tenant.0))
        .one(c)
        .await?
        .ok_or(StoreError::NotFound("asset tree"))
}

async fn find_node<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    id: AssetNodeId,
    what: &'static str,
) -> StoreResult<asset_node::Model> {
    asset_node::Entity::find_by_id(id.0)
        .filter(asset_node::Column::TenantId.eq(tenant.0))
        .one(c)
        .await?
        .ok_or(StoreError::NotFound(what))
}

impl Store {
    pub async fn create_asset_tree(
        &self,
        tenant: TenantId,
        name: DisplayName,
        now: Millis,
    ) -> StoreResult<AssetTree> {
        let txn = self.begin_write().await?;
        lock_tenant(&txn, tenant).await?;
        let taken = asset_tree::Entity::find()
            .filter(asset_tree::Column::TenantId.eq(tenant.0))
            .filter(asset_tree::Column::Name.eq(name.as_str()))
            .one(&txn)
            .await?;
        if let Some(t) = taken {
            return Err(StoreError::Conflict(format!(
                "asset tree {} is named {:?} already; choose another name",
                t.id,
                name.as_str()
            )));
        }
        let row = asset_tree::ActiveModel {
            tenant_id: Set(tenant.0),
            name: Set(name.into_string()),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(to_tree(row))
    }

    pub async fn get_asset_tree(
        &self,
        tenant: TenantId,
        id: AssetTreeId,
    ) -> StoreResult<AssetTree> {
        find_tree(self.db(), tenant, id).await.map(to_tree)
    }

    pub async fn list_asset_trees(
        &self,
        tenant: TenantId,
        page: PageRequest,
    ) -> StoreResult<Page<AssetTree>> {
        let rows = asset_tree::Entity::find()
            .filter(asset_tree::Column::TenantId.eq(tenant.0))
            .filter(asset_tree::Column::Id.gt(page.after))
            .order_by_asc(asset_tree::Column::Id)
            .limit(page.limit + 1)
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id).map(to_tree))
    }

    /// Deletes an asset tree that has no nodes left.
    pub async fn delete_asset_tree(&self, tenant: TenantId, id: AssetTreeId) -> StoreResult<()> {
        let txn = self.begin_write().await?;
        let t = find_tree(&txn, tenant, id).await?;
        let nodes = asset_node::Entity::find()
            .filter(asset_node::Column::TenantId.eq(tenant.0))
            .filter(asset_node::Column::TreeId.eq(t.id))
            .count(&txn)
            .await?;
        if nodes > 0 {
            return Err(StoreError::Conflict(format!(
                "asset tree {} still has {nodes} nodes; delete them first",
                t.id
            )));
        }
        asset_tree::Entity::delete_by_id(t.id).exec(&txn).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Creates a node at the top of `tree` or under `parent` (a node of the same tree), at
    /// most [`limits::MAX_ASSET_TREE_DEPTH`] levels deep; sibling names are unique.
    pub async fn create_asset_node(
        &self,
        tenant: TenantId,
        tree: AssetTreeId,
        parent: Option<AssetNodeId>,
        name: DisplayName,
        now: Millis,
    ) -> StoreResult<AssetNode> {
        let txn = self.begin_write().await?;
        lock_tenant(&txn, tenant).await?;
        let t = find_tree(&txn, tenant, tree).await?;
        if let Some(p) = parent {
            let pn = find_node(&txn, tenant, p, "parent node").await?;
            if pn.tree_id != t.id {
                return Err(Invalid::new(
                    "parent_id",
                    format!(
                        "node {p} belongs to asset tree {}, not {}",
                        pn.tree_id, t.id
                    ),
                )
                .into());
            }
            let mut level = 1;
            let mut cur = pn.parent_id;
            while let Some(up) = cur {
                level += 1;
                if level > limits::MAX_ASSET_TREE_DEPTH {
                    break;
                }
                cur = find_node(&txn, tenant, AssetNodeId(up), "asset node")
                    .await?
                    .parent_id;
            }
            if level >= limits::MAX_ASSET_TREE_DEPTH {
                return Err(Invalid::new(
                    "parent_id",
                    format!(
                        "node {p} is at level {level}; asset trees are at most {} levels deep",
                        limits::MAX_ASSET_TREE_DEPTH
                    ),
                )
                .into());
            }
        }
        let mut q = asset_node::Entity::find()
            .filter(asset_node::Column::TenantId.eq(tenant.0))
            .filter(asset_node::Column::TreeId.eq(t.id))
            .filter(asset_node::Column::Name.eq(name.as_str()));
        q = match parent {
            Some(p) => q.filter(asset_node::Column::ParentId.eq(p.0)),
            None => q.filter(asset_node::Column::ParentId.is_null()),
        };
        if let Some(other) = q.one(&txn).await? {
            return Err(StoreError::Conflict(format!(
                "node {} is named {:?} already at this place of the tree; sibling nodes need distinct names",
                other.id,
                name.as_str()
            )));
        }
        let row = asset_node::ActiveModel {
            tenant_id: Set(tenant.0),
            tree_id: Set(t.id),
            parent_id: Set(parent.map(|p| p.0)),
            name: Set(name.into_string()),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(to_node(row))
    }

    pub async fn get_asset_node(
        &self,
        tenant: TenantId,
        id: AssetNodeId,
    ) -> StoreResult<AssetNode> {
        find_node(self.db(), tenant, id, "asset node")
            .await
            .map(to_node)
    }

    /// Every node of a tree in id order (parents come before their children).
    pub async fn list_asset_nodes(
        &self,
        tenant: TenantId,
        tree: AssetTreeId,
        page: PageRequest,
    ) -> StoreResult<Page<AssetNode>> {
        let t = find_tree(self.db(), tenant, tree).await?;
        let rows = asset_node::Entity::find()
            .filter(asset_node::Column::TenantId.eq(tenant.0))
            .filter(asset_node::Column::TreeId.eq(t.id))
            .filter(asset_node::Column::Id.gt(page.after))
            .order_by_asc(asset_node::Column::Id)
            .limit(page.limit + 1)
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id).map(to_node))
    }

    /// Deletes a node and its device bindings; refused while it has child nodes.
    pub async fn delete_asset_node(&self, tenant: TenantId, id: AssetNodeId) -> StoreResult<()> {
        let txn = self.begin_write().await?;
        let n = find_node(&txn, tenant, id, "asset node").await?;
        let children = asset_node::Entity::find()
            .filter(asset_node::Column::TenantId.eq(tenant.0))
            .filter(asset_node::Column::ParentId.eq(n.id))
            .count(&txn)
            .await?;
        if children > 0 {
            return Err(StoreError::Conflict(format!(
                "asset node {} has {children} child nodes; delete them first",
                n.id
            )));
        }
        asset_node_device::Entity::delete_many()
            .filter(asset_node_device::Column::TenantId.eq(tenant.0))
            .filter(asset_node_device::Column::NodeId.eq(n.id))
            .exec(&txn)
            .await?;
        asset_node::Entity::delete_by_id(n.id).exec(&txn).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Binds devices to a node, all or nothing (every id must name a device of the tenant,
    /// at most 10,000 per call); returns how many were newly bound.
    pub async fn bind_asset_devices(
        &self,
        tenant: TenantId,
        node: AssetNodeId,
        devices: &[DeviceId],
    ) -> StoreResult<u64> {
        let txn = self.begin_write().await?;
        let n = find_node(&txn, tenant, node, "asset node").await?;
        let ids = check_device_ids(&txn, tenant, devices).await?;
        let mut bound = 0;
        for chunk in ids.chunks(MAX_BIND_PARAMS / 3) {
            bound += asset_node_device::Entity::insert_many(chunk.iter().map(|d| {
                asset_node_device::ActiveModel {
                    node_id: Set(n.id),
                    device_id: Set(*d),
                    tenant_id: Set(tenant.0),
                }
            }))
            .on_conflict(
                OnConflict::columns([
                    asset_node_device::Column::NodeId,
                    asset_node_device::Column::DeviceId,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        }
        txn.commit().await?;
        Ok(bound)
    }

    /// Unbinds devices from a node, all or nothing; returns how many were unbound.
    pub async fn unbind_asset_devices(
        &self,
        tenant: TenantId,
        node: AssetNodeId,
        devices: &[DeviceId],
    ) -> StoreResult<u64> {
        let txn = self.begin_write().await?;
        let n = find_node(&txn, tenant, node, "asset node").await?;
        let ids = check_device_ids(&txn, tenant, devices).await?;
        let mut removed = 0;
        for chunk in ids.chunks(MAX_BIND_PARAMS - 2) {
            removed += asset_node_device::Entity::delete_many()
                .filter(asset_node_device::Column::TenantId.eq(tenant.0))
                .filter(asset_node_device::Column::NodeId.eq(n.id))
                .filter(asset_node_device::Column::DeviceId.is_in(chunk.iter().copied()))
                .exec(&txn)
                .await?
                .rows_affected;
        }
        txn.commit().await?;
        Ok(removed)
    }
}
