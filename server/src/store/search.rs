//! Device search (SPEC D5) and the device-selection query that rollout scopes reuse (B4,
//! B7, B8): a [`DeviceFilter`] is resolved once into a [`DeviceSelection`] (ids checked
//! against the tenant, group and asset subtrees expanded), then queried page by page in
//! id order. Also version statistics (SPEC D6).

use super::entity::{
    asset_node, asset_node_device, device, device_attribute, device_group, device_module,
    device_tag, group_member, tenant,
};
use super::{
    devices::to_device, Page, PageRequest, Store, StoreError, StoreResult, MAX_BIND_PARAMS,
};
use crate::domain::*;
use sea_orm::sea_query::{Expr, Func, LockType, Query, SelectStatement};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use std::collections::{BTreeSet, HashMap};

/// A resolved [`DeviceFilter`] of one tenant: what the page queries run on. Built only by
/// [`Store::resolve_device_filter`], so its ids are known to belong to the tenant.
#[derive(Debug, Clone)]
pub struct DeviceSelection {
    tenant: TenantId,
    product: Option<ProductId>,
    name_prefix: Option<String>,
    /// Member of one of these groups (subtrees expanded when asked for).
    groups: Option<Vec<i64>>,
    /// Bound to one of these asset nodes (subtrees expanded).
    asset_nodes: Option<Vec<i64>>,
    labels: Vec<LabelMatch>,
    module: Option<ModuleMatch>,
    exclude_version: Option<(ModuleName, Version)>,
    online: Option<bool>,
}

impl DeviceSelection {
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    pub fn product(&self) -> Option<ProductId> {
        self.product
    }

    /// The condition on `device` rows; every subquery filters on the tenant too.
    pub(crate) fn condition(&self) -> Condition {
        let t = self.tenant.0;
        let mut c = Condition::all().add(device::Column::TenantId.eq(t));
        if let Some(p) = self.product {
            c = c.add(device::Column::ProductId.eq(p.0));
        }
        if let Some(prefix) = &self.name_prefix {
            // SUBSTR compares exactly on both backends (SQLite's LIKE ignores ASCII case,
            // PostgreSQL's does not; range comparisons would follow PostgreSQL's collation).
            let n = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
            c = c.add(
                Expr::expr(
                    Func::cust(sea_orm::sea_query::Alias::new("SUBSTR"))
                        .arg(Expr::col((device::Entity, device::Column::Name)))
                        .arg(1i32)
                        .arg(n),
                )
                .eq(prefix.as_str()),
            );
        }
        if let Some(groups) = &self.groups {
            let mut q = Query::select();
            q.column(group_member::Column::DeviceId)
                .from(group_member::Entity)
                .and_where(group_member::Column::TenantId.eq(t))
                .and_where(group_member::Column::GroupId.is_in(groups.iter().copied()));
            c = c.add(device::Column::Id.in_subquery(q));
        }
        if let Some(nodes) = &self.asset_nodes {
            let mut q = Query::select();
            q.column(asset_node_device::Column::DeviceId)
                .from(asset_node_device::Entity)
                .and_where(asset_node_device::Column::TenantId.eq(t))
                .and_where(asset_node_device::Column::NodeId.is_in(nodes.iter().copied()));
            c = c.add(device::Column::Id.in_subquery(q));
        }
        for m in &self.labels {
            c = c.add(device::Column::Id.in_subquery(label_subquery(self.tenant, m)));
        }
        if let Some(m) = &self.module {
            let mut q = module_subquery(self.tenant, &m.module);
            if !m.versions.is_empty() {
                q.and_where(
                    device_module::Column::Version
                        .is_in(m.versions.iter().map(|v| v.as_str().to_owned())),
                );
            }
            c = c.add(device::Column::Id.in_subquery(q));
        }
        if let Some((module, version)) = &self.exclude_version {
            let mut q = module_subquery(self.tenant, module);
            q.and_where(device_module::Column::Version.eq(version.as_str()));
            c = c.add(device::Column::Id.not_in_subquery(q));
        }
        if let Some(online) = self.online {
            c = c.add(device::Column::Online.eq(online));
        }
        c
    }
}

fn module_subquery(tenant: TenantId, module: &ModuleName) -> SelectStatement {
    let mut q = Query::select();
    q.column(device_module::Column::DeviceId)
        .from(device_module::Entity)
        .and_where(device_module::Column::TenantId.eq(tenant.0))
        .and_where(device_module::Column::Module.eq(module.as_str()));
    q
}

fn label_subquery(tenant: TenantId, m: &LabelMatch) -> SelectStatement {
    let mut q = Query::select();
    match m.kind {
        LabelKind::Attribute => {
            q.column(device_attribute::Column::DeviceId)
                .from(device_attribute::Entity)
                .and_where(device_attribute::Column::TenantId.eq(tenant.0))
                .and_where(device_attribute::Column::Name.eq(m.name.as_str()));
            if let ValueMatch::OneOf(vs) = &m.value {
                q.and_where(device_attribute::Column::Value.is_in(vs.iter().cloned()));
            }
        }
        LabelKind::Tag => {
            q.column(device_tag::Column::DeviceId)
                .from(device_tag::Entity)
                .and_where(device_tag::Column::TenantId.eq(tenant.0))
                .and_where(device_tag::Column::Key.eq(m.name.as_str()));
            if let ValueMatch::OneOf(vs) = &m.value {
                q.and_where(device_tag::Column::Value.is_in(vs.iter().cloned()));
            }
        }
    }
    q
}

/// Takes the tenant's row lock for the rest of the transaction (PostgreSQL; SQLite has one
/// writer anyway), so checks such as "sibling names are unique" cannot race.
pub(crate) async fn lock_tenant<C: ConnectionTrait>(c: &C, tenant: TenantId) -> StoreResult<()> {
    // NO KEY UPDATE: it serializes these writers without blocking inserts elsewhere that
    // only reference the tenant row (their foreign-key checks take KEY SHARE).
    tenant::Entity::find_by_id(tenant.0)
        .lock(LockType::NoKeyUpdate)
        .one(c)
        .await?
        .ok_or(StoreError::NotFound("tenant"))?;
    Ok(())
}

/// Checks that every id names a device of the tenant; returns them deduplicated. Unknown
/// and other tenants' ids are refused alike (field `device_ids`), naming the first few.
pub(crate) async fn check_device_ids<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    ids: &[DeviceId],
) -> StoreResult<Vec<i64>> {
    if ids.is_empty() || ids.len() > MAX_DEVICES_PER_CALL {
        return Err(Invalid::new(
            "device_ids",
            format!(
                "give 1 to {MAX_DEVICES_PER_CALL} device ids; got {}",
                ids.len()
            ),
        )
        .into());
    }
    let wanted: BTreeSet<i64> = ids.iter().map(|d| d.0).collect();
    let wanted: Vec<i64> = wanted.into_iter().collect();
    let mut found = BTreeSet::new();
    for chunk in wanted.chunks(MAX_BIND_PARAMS - 1) {
        let rows: Vec<i64> = device::Entity::find()
            .select_only()
            .column(device::Column::Id)
            .filter(device::Column::TenantId.eq(tenant.0))
            .filter(device::Column::Id.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(c)
            .await?;
        found.extend(rows);
    }
    let missing: Vec<i64> = wanted
        .iter()
        .copied()
        .filter(|i| !found.contains(i))
        .collect();
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(20).map(i64::to_string).collect();
        let more = if missing.len() > shown.len() {
            format!(" and {} more", missing.len() - shown.len())
        } else {
            String::new()
        };
        return Err(Invalid::new(
            "device_ids",
            format!(
                "no such devices: {}{more}; nothing was changed",
                shown.join(", ")
            ),
        )
        .into());
    }
    Ok(wanted)
}

/// Which tree-shaped table [`subtree`] walks.
#[derive(Clone, Copy)]
pub(crate) enum Tree {
    Groups,
    AssetNodes,
}

/// The ids of `roots` and of every node below them, walking parent links level by level.
/// Refuses to expand to more than [`MAX_SCOPE_IDS`] ids (`field` names the input).
pub(crate) async fn subtree<C: ConnectionTrait>(
    c: &C,
    tenant: TenantId,
    tree: Tree,
    roots: Vec<i64>,
    field: &str,
) -> StoreResult<Vec<i64>> {
    let mut all: BTreeSet<i64> = roots.iter().copied().collect();
    let mut frontier = roots;
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for chunk in frontier.chunks(MAX_BIND_PARAMS - 1) {
            let chunk = chunk.iter().copied();
            let rows: Vec<i64> = match tree {
                Tree::Groups => {
                    device_group::Entity::find()
                        .select_only()
                        .column(device_group::Column::Id)
                        .filter(device_group::Column::TenantId.eq(tenant.0))
                        .filter(device_group::Column::ParentId.is_in(chunk))
                        .into_tuple()
                        .all(c)
                        .await?
                }
                Tree::AssetNodes => {
                    asset_node::Entity::find()
                        .select_only()
                        .column(asset_node::Column::Id)
                        .filter(asset_node::Column::TenantId.eq(tenant.0))
                        .filter(asset_node::Column::ParentId.is_in(chunk))
                        .into_tuple()
                        .all(c)
                        .await?
                }
            };
            // parent links never form a cycle (a parent is fixed at creation), but stay safe
            next.extend(rows.into_iter().filter(|id| all.insert(*id)));
        }
        if all.len() > MAX_SCOPE_IDS {
            return Err(Invalid::new(
                field,
                format!("this selection spans more than {MAX_SCOPE_IDS} groups or nodes; choose smaller subtrees"),
            )
            .into());
        }
        frontier = next;
    }
    Ok(all.into_iter().collect())
}

impl Store {
    /// Checks a filter against the tenant (404 for unknown or foreign product, group and
    /// asset-node ids; at most [`MAX_ASSET_TREES_PER_SCOPE`] trees) and expands group and
    /// asset subtrees. Resolve again to see groups or nodes created since.
    pub async fn resolve_device_filter(
        &self,
        tenant: TenantId,
        filter: &DeviceFilter,
    ) -> StoreResult<DeviceSelection> {
        filter.validate()?;
        if let Some(p) = filter.product {
            self.get_product(tenant, p).await?;
        }
        let groups = if filter.groups.is_empty() {
            None
        } else {
            let roots = existing_group_ids(self.db(), tenant, &filter.groups)
                .await?
                .ok_or(StoreError::NotFound("group"))?;
            Some(if filter.include_subgroups {
                subtree(self.db(), tenant, Tree::Groups, roots, "group_id").await?
            } else {
                roots
            })
        };
        let asset_nodes = if filter.asset_nodes.is_empty() {
            None
        } else {
            Some(
                self.asset_scope(tenant, &filter.asset_nodes, filter.include_descendants)
                    .await?,
            )
        };
        Ok(DeviceSelection {
            tenant,
            product: filter.product,
            name_prefix: filter.name_prefix.clone(),
            groups,
            asset_nodes,
            labels: filter.labels.clone(),
            module: filter.module.clone(),
            exclude_version: filter.exclude_version.clone(),
            online: filter.online,
        })
    }

    /// SPEC B8: the asset nodes `nodes` and, with `descendants`, every node below them,
    /// as ids. The nodes must belong to the tenant (404 otherwise) and lie in at most
    /// [`MAX_ASSET_TREES_PER_SCOPE`] trees.
    pub async fn asset_scope(
        &self,
        tenant: TenantId,
        nodes: &[AssetNodeId],
        descendants: bool,
    ) -> StoreResult<Vec<i64>> {
        let wanted: BTreeSet<i64> = nodes.iter().map(|n| n.0).collect();
        if wanted.len() > MAX_SCOPE_IDS {
            return Err(Invalid::new(
                "asset_node_ids",
                format!("give at most {MAX_SCOPE_IDS} asset nodes"),
            )
            .into());
        }
        let wanted: Vec<i64> = wanted.into_iter().collect();
        let rows: Vec<(i64, i64)> = asset_node::Entity::find()
            .select_only()
            .columns([asset_node::Column::Id, asset_node::Column::TreeId])
            .filter(asset_node::Column::TenantId.eq(tenant.0))
            .filter(asset_node::Column::Id.is_in(wanted.iter().copied()))
            .into_tuple()
            .all(self.db())
            .await?;
        if rows.len() != wanted.len() {
            return Err(StoreError::NotFound("asset node"));
        }
        let trees: BTreeSet<i64> = rows.iter().map(|r| r.1).collect();
        if trees.len() > MAX_ASSET_TREES_PER_SCOPE {
            return Err(Invalid::new(
                "asset_node_ids",
                format!(
                    "the nodes lie in {} asset trees; a scope spans at most {MAX_ASSET_TREES_PER_SCOPE}",
                    trees.len()
                ),
            )
            .into());
        }
        if !descendants {
            return Ok(wanted);
        }
        subtree(
            self.db(),
            tenant,
            Tree::AssetNodes,
            wanted,
            "asset_node_ids",
        )
        .await
    }

    /// One page of the devices a selection matches, in id order (SPEC D5).
    pub async fn search_devices(
        &self,
        tenant: TenantId,
        sel: &DeviceSelection,
        page: PageRequest,
    ) -> StoreResult<Page<Device>> {
        same_tenant(tenant, sel)?;
        let rows = device::Entity::find()
            .filter(sel.condition())
            .filter(device::Column::Id.gt(page.after))
            .order_by_asc(device::Column::Id)
            .limit(page.limit + 1)
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id).map(to_device))
    }

    /// Up to `limit` `(id, name)` of matching devices with an id above `after`, in id order:
    /// the building block for streaming a selection of any size (CSV export, rollout task
    /// creation). An empty result means the end.
    pub async fn search_device_names(
        &self,
        tenant: TenantId,
        sel: &DeviceSelection,
        after: i64,
        limit: u64,
    ) -> StoreResult<Vec<(DeviceId, DeviceName)>> {
        same_tenant(tenant, sel)?;
        let rows: Vec<(i64, String)> = device::Entity::find()
            .select_only()
            .columns([device::Column::Id, device::Column::Name])
            .filter(sel.condition())
            .filter(device::Column::Id.gt(after))
            .order_by_asc(device::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(self.db())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, n)| (DeviceId(id), DeviceName::from_trusted(n)))
            .collect())
    }

    /// Which of `ids` the selection matches (for dynamic rollouts: does a device that just
    /// reported or was activated fall into the scope?). Unknown ids are simply left out.
    pub async fn select_matching(
        &self,
        tenant: TenantId,
        sel: &DeviceSelection,
        ids: &[DeviceId],
    ) -> StoreResult<Vec<DeviceId>> {
        same_tenant(tenant, sel)?;
        let mut out = Vec::new();
        // the selection itself may carry 2 × MAX_SCOPE_IDS binds; stay well under the limit
        for chunk in ids.chunks(MAX_BIND_PARAMS / 6) {
            let rows: Vec<i64> = device::Entity::find()
                .select_only()
                .column(device::Column::Id)
                .filter(sel.condition())
                .filter(device::Column::Id.is_in(chunk.iter().map(|d| d.0)))
                .order_by_asc(device::Column::Id)
                .into_tuple()
                .all(self.db())
                .await?;
            out.extend(rows.into_iter().map(DeviceId));
        }
        Ok(out)
    }

    /// How many devices the selection matches.
    pub async fn count_devices(&self, tenant: TenantId, sel: &DeviceSelection) -> StoreResult<u64> {
        same_tenant(tenant, sel)?;
        Ok(device::Entity::find()
            .filter(sel.condition())
            .count(self.db())
            .await?)
    }

    /// Current module versions of many devices at once (for search result pages).
    pub async fn modules_of_devices(
        &self,
        tenant: TenantId,
        ids: &[DeviceId],
    ) -> StoreResult<HashMap<DeviceId, Vec<ModuleVersion>>> {
        let mut out: HashMap<DeviceId, Vec<ModuleVersion>> = HashMap::new();
        for chunk in ids.chunks(MAX_BIND_PARAMS - 1) {
            let rows = device_module::Entity::find()
                .filter(device_module::Column::TenantId.eq(tenant.0))
                .filter(device_module::Column::DeviceId.is_in(chunk.iter().map(|d| d.0)))
                .order_by_asc(device_module::Column::DeviceId)
                .order_by_asc(device_module::Column::Module)
                .all(self.db())
                .await?;
            for m in rows {
                out.entry(DeviceId(m.device_id))
                    .or_default()
                    .push(ModuleVersion {
                        module: ModuleName::from_trusted(m.module),
                        version: Version::from_trusted(m.version),
                        updated_at: m.updated_at,
                    });
            }
        }
        Ok(out)
    }

    /// SPEC D6: the versions of `module` the product's devices report now, with how many
    /// devices run each; most devices first, then by version.
    pub async fn version_stats(
        &self,
        tenant: TenantId,
        product: ProductId,
        module: &ModuleName,
    ) -> StoreResult<Vec<VersionCount>> {
        let p = self.get_product(tenant, product).await?;
        let rows: Vec<(String, i64)> = device_module::Entity::find()
            .select_only()
            .column(device_module::Column::Version)
            .column_as(
                Expr::col(device_module::Column::DeviceId).count(),
                "devices",
            )
            .filter(device_module::Column::TenantId.eq(tenant.0))
            .filter(device_module::Column::ProductId.eq(p.id.0))
            .filter(device_module::Column::Module.eq(module.as_str()))
            .group_by(device_module::Column::Version)
            .into_tuple()
            .all(self.db())
            .await?;
        // sorted here, not in SQL: PostgreSQL would order versions by its collation
        let mut out: Vec<VersionCount> = rows
            .into_iter()
            .map(|(v, n)| VersionCount {
                version: Version::from_trusted(v),
                devices: u64::try_from(n).unwrap_or(0),
            })
            .collect();
        sort_version_counts(&mut out);
        Ok(out)
    }
}

fn same_tenant(tenant: TenantId, sel: &DeviceSelection) -> StoreResult<()> {
    if sel.tenant == tenant {
        Ok(())
    } else {
        Err(StoreError::NotFound("device selection"))
    }
}

/// `ids` (deduplicated) when every one is a group of the tenant; `None` when any is
/// unknown or foreign.
async fn existing_group_ids(
    c: &impl ConnectionTrait,
    tenant: TenantId,
    ids: &[GroupId],
) -> StoreResult<Option<Vec<i64>>> {
    let wanted: BTreeSet<i64> = ids.iter().map(|g| g.0).collect();
    if wanted.len() > MAX_SCOPE_IDS {
        return Err(
            Invalid::new("group_ids", format!("give at most {MAX_SCOPE_IDS} groups")).into(),
        );
    }
    let found: Vec<i64> = device_group::Entity::find()
        .select_only()
        .column(device_group::Column::Id)
        .filter(device_group::Column::TenantId.eq(tenant.0))
        .filter(device_group::Column::Id.is_in(wanted.iter().copied()))
        .into_tuple()
        .all(c)
        .await?;
    Ok((found.len() == wanted.len()).then(|| wanted.into_iter().collect()))
}
