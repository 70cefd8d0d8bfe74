//! Tenants and their API keys (SPEC M1). Keys are random, shown once, kept as SHA-256.

use super::entity::{api_key, tenant};
use super::{is_unique_violation, Page, PageRequest, Store, StoreError, StoreResult};
use crate::clock::Millis;
use crate::domain::*;
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use sha2::{Digest, Sha256};

/// Prefix of every key, so a leaked one is recognisable by secret scanners.
const KEY_PREFIX: &str = "ota_";
const SHOWN_PREFIX_LEN: usize = 12;

/// A freshly made key: `secret` is shown to the caller once and never stored.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub key: ApiKey,
    pub secret: String,
}

pub(crate) fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn generate_key() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

fn to_tenant(m: tenant::Model) -> Tenant {
    Tenant {
        id: TenantId(m.id),
        name: DisplayName::from_trusted(m.name),
        created_at: m.created_at,
    }
}

fn to_key(m: api_key::Model) -> ApiKey {
    ApiKey {
        id: ApiKeyId(m.id),
        tenant_id: TenantId(m.tenant_id),
        name: DisplayName::from_trusted(m.name),
        role: Role::parse(&m.role).unwrap_or(Role::Viewer),
        prefix: m.prefix,
        created_at: m.created_at,
        revoked_at: m.revoked_at,
    }
}

async fn insert_key(
    db: &impl sea_orm::ConnectionTrait,
    tenant: TenantId,
    name: &DisplayName,
    role: Role,
    now: Millis,
) -> StoreResult<NewApiKey> {
    let secret = generate_key();
    let row = api_key::ActiveModel {
        tenant_id: Set(tenant.0),
        name: Set(name.as_str().to_owned()),
        role: Set(role.as_str().to_owned()),
        prefix: Set(secret[..SHOWN_PREFIX_LEN].to_owned()),
        key_hash: Set(hash_key(&secret)),
        created_at: Set(now),
        revoked_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(NewApiKey {
        key: to_key(row),
        secret,
    })
}

impl Store {
    /// Creates a tenant with a first admin key.
    pub async fn create_tenant(
        &self,
        name: &DisplayName,
        now: Millis,
    ) -> StoreResult<(Tenant, NewApiKey)> {
        let txn = self.begin_write().await?;
        let row = tenant::ActiveModel {
            name: Set(name.as_str().to_owned()),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a tenant named {:?} exists already", name.as_str()))
            } else {
                e.into()
            }
        })?;
        let key_name = DisplayName::from_trusted("initial admin key".to_owned());
        let key = insert_key(&txn, TenantId(row.id), &key_name, Role::Admin, now).await?;
        txn.commit().await?;
        Ok((to_tenant(row), key))
    }

    /// All tenants (operator tooling, not the tenant API).
    pub async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        Ok(tenant::Entity::find()
            .order_by_asc(tenant::Column::Id)
            .all(self.db())
            .await?
            .into_iter()
            .map(to_tenant)
            .collect())
    }

    pub async fn create_api_key(
        &self,
        tenant: TenantId,
        name: &DisplayName,
        role: Role,
        now: Millis,
    ) -> StoreResult<NewApiKey> {
        insert_key(self.db(), tenant, name, role, now).await
    }

    pub async fn list_api_keys(
        &self,
        tenant: TenantId,
        page: PageRequest,
    ) -> StoreResult<Page<ApiKey>> {
        let rows = api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(tenant.0))
            .filter(api_key::Column::Id.gt(page.after))
            .order_by_asc(api_key::Column::Id)
            .limit(page.limit + 1)
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id).map(to_key))
    }

    /// Revokes a key; revoking twice is harmless. A tenant cannot revoke its last admin key,
    /// even when two revokes race: the check and the revoke are one guarded UPDATE, and on
    /// PostgreSQL the tenant row is locked first so that concurrent revokes of the tenant's
    /// keys take turns (under READ COMMITTED each would otherwise count the admins from a
    /// snapshot taken before the other's revoke). SQLite runs one write at a time anyway.
    pub async fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        now: Millis,
    ) -> StoreResult<ApiKey> {
        use sea_orm::sea_query::{Expr, Query, SimpleExpr};
        let txn = self.begin_write().await?;
        if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
            tenant::Entity::find_by_id(tenant.0)
                .lock_exclusive()
                .one(&txn)
                .await?;
        }
        let other_admins_remain = Expr::expr(SimpleExpr::SubQuery(
            None,
            Box::new(
                Query::select()
                    .expr(Expr::col(api_key::Column::Id).count())
                    .from(api_key::Entity)
                    .and_where(api_key::Column::TenantId.eq(tenant.0))
                    .and_where(api_key::Column::Role.eq(Role::Admin.as_str()))
                    .and_where(api_key::Column::RevokedAt.is_null())
                    .to_owned()
                    .into_sub_query_statement(),
            ),
        ))
        .gt(1);
        let revoked = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(id.0))
            .filter(api_key::Column::TenantId.eq(tenant.0))
            .filter(api_key::Column::RevokedAt.is_null())
            .filter(
                sea_orm::Condition::any()
                    .add(api_key::Column::Role.ne(Role::Admin.as_str()))
                    .add(other_admins_remain),
            )
            .exec(&txn)
            .await?
            .rows_affected;
        let row = api_key::Entity::find_by_id(id.0)
            .filter(api_key::Column::TenantId.eq(tenant.0))
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound("api key"))?;
        txn.commit().await?;
        if revoked == 0 && row.revoked_at.is_none() {
            return Err(StoreError::Conflict(
                "this is the tenant's last admin key; create another admin key first".into(),
            ));
        }
        Ok(to_key(row))
    }

    /// Resolves a bearer key to its caller; unknown and revoked keys give `None`.
    pub async fn authenticate(&self, secret: &str) -> StoreResult<Option<Caller>> {
        if !secret.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let row = api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(hash_key(secret)))
            .filter(api_key::Column::RevokedAt.is_null())
            .one(self.db())
            .await?;
        Ok(row.and_then(|r| {
            Some(Caller {
                tenant: TenantId(r.tenant_id),
                key: ApiKeyId(r.id),
                role: Role::parse(&r.role)?,
            })
        }))
    }
}
