//! Products: a hardware model with its device protocol (SPEC D1, P2 setting).

use super::entity::{device, package, product};
use super::{is_unique_violation, Page, PageRequest, Store, StoreError, StoreResult};
use crate::clock::Millis;
use crate::domain::*;
use rand::Rng;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

#[derive(Debug, Clone)]
pub struct NewProduct {
    /// Given when devices already carry a key (moving a fleet); generated otherwise.
    pub product_key: Option<ProductKey>,
    pub name: DisplayName,
    pub protocol: Protocol,
    pub require_verification: bool,
    pub description: String,
}

#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub name: Option<DisplayName>,
    pub require_verification: Option<bool>,
    pub description: Option<String>,
}

pub(crate) fn to_product(m: product::Model) -> Product {
    Product {
        id: ProductId(m.id),
        tenant_id: TenantId(m.tenant_id),
        product_key: ProductKey::from_trusted(m.product_key),
        name: DisplayName::from_trusted(m.name),
        protocol: Protocol::parse(&m.protocol).unwrap_or(Protocol::Alink),
        require_verification: m.require_verification,
        description: m.description,
        created_at: m.created_at,
    }
}

/// An 11-character key in the style of Alibaba product keys.
fn generate_product_key() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::thread_rng();
    (0..11)
        .map(|i| {
            // a leading letter keeps keys valid identifiers everywhere
            let n = if i == 0 { 52 } else { ALPHABET.len() };
            ALPHABET[rng.gen_range(0..n)] as char
        })
        .collect()
}

impl Store {
    pub async fn create_product(
        &self,
        tenant: TenantId,
        new: NewProduct,
        now: Millis,
    ) -> StoreResult<Product> {
        let given = new.product_key.is_some();
        // A generated key can collide; retry a few times before reporting it.
        for _ in 0..5 {
            let key = match &new.product_key {
                Some(k) => k.as_str().to_owned(),
                None => generate_product_key(),
            };
            let res = product::ActiveModel {
                tenant_id: Set(tenant.0),
                product_key: Set(key.clone()),
                name: Set(new.name.as_str().to_owned()),
                protocol: Set(new.protocol.as_str().to_owned()),
                require_verification: Set(new.require_verification),
                description: Set(new.description.clone()),
                created_at: Set(now),
                ..Default::default()
            }
            .insert(self.db())
            .await;
            match res {
                Ok(row) => return Ok(to_product(row)),
                Err(e) if is_unique_violation(&e) && given => {
                    return Err(StoreError::Conflict(format!(
                        "product_key {key:?} is in use; choose another or leave it out to get a generated one"
                    )))
                }
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(
            "could not generate a free product key; try again".into(),
        ))
    }

    pub async fn get_product(&self, tenant: TenantId, id: ProductId) -> StoreResult<Product> {
        product::Entity::find_by_id(id.0)
            .filter(product::Column::TenantId.eq(tenant.0))
            .one(self.db())
            .await?
            .map(to_product)
            .ok_or(StoreError::NotFound("product"))
    }

    /// Looks a product up by the key devices carry; not tenant-scoped, because a device's
    /// credentials are what tell which tenant it belongs to.
    pub async fn product_by_key(&self, key: &str) -> StoreResult<Option<Product>> {
        Ok(product::Entity::find()
            .filter(product::Column::ProductKey.eq(key))
            .one(self.db())
            .await?
            .map(to_product))
    }

    pub async fn list_products(
        &self,
        tenant: TenantId,
        page: PageRequest,
    ) -> StoreResult<Page<Product>> {
        let rows = product::Entity::find()
            .filter(product::Column::TenantId.eq(tenant.0))
            .filter(product::Column::Id.gt(page.after))
            .order_by_asc(product::Column::Id)
            .limit(page.limit + 1)
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id).map(to_product))
    }

    pub async fn update_product(
        &self,
        tenant: TenantId,
        id: ProductId,
        patch: ProductPatch,
    ) -> StoreResult<Product> {
        let row = product::Entity::find_by_id(id.0)
            .filter(product::Column::TenantId.eq(tenant.0))
            .one(self.db())
            .await?
            .ok_or(StoreError::NotFound("product"))?;
        let mut active: product::ActiveModel = row.into();
        if let Some(n) = patch.name {
            active.name = Set(n.into_string());
        }
        if let Some(r) = patch.require_verification {
            active.require_verification = Set(r);
        }
        if let Some(d) = patch.description {
            active.description = Set(d);
        }
        Ok(to_product(active.update(self.db()).await?))
    }

    /// Deletes an empty product; one that still has devices or packages is refused, so a
    /// mistyped id cannot wipe a fleet.
    pub async fn delete_product(&self, tenant: TenantId, id: ProductId) -> StoreResult<()> {
        let p = self.get_product(tenant, id).await?;
        let devices = device::Entity::find()
            .filter(device::Column::ProductId.eq(p.id.0))
            .count(self.db())
            .await?;
        let packages = package::Entity::find()
            .filter(package::Column::ProductId.eq(p.id.0))
            .count(self.db())
            .await?;
        if devices > 0 || packages > 0 {
            return Err(StoreError::Conflict(format!(
                "product {} still has {devices} devices and {packages} packages; delete them first",
                p.id
            )));
        }
        product::Entity::delete_by_id(p.id.0)
            .exec(self.db())
            .await?;
        Ok(())
    }
}
