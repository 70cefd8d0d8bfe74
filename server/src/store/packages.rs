//! Packages and their file records (SPEC P1, P2, P3). The bytes live in the firmware
//! storage; the caller stores them first, records them here, and removes them from disk
//! when a record is refused or deleted.

use super::entity::{package, package_file};
use super::{is_unique_violation, Page, PageRequest, Store, StoreError, StoreResult};
use crate::clock::Millis;
use crate::domain::*;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

/// Filters of the package list; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct PackageFilter {
    pub product: Option<ProductId>,
    pub module: Option<ModuleName>,
    pub status: Option<PackageStatus>,
}

/// What may be changed by hand.
#[derive(Debug, Clone, Default)]
pub struct PackagePatch {
    /// Only `no_need` or `unverified` (SPEC P2).
    pub status: Option<PackageStatus>,
    pub description: Option<String>,
}

/// A file the firmware storage holds already, to record under a package.
#[derive(Debug, Clone)]
pub struct NewPackageFile {
    pub name: FileName,
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    pub storage_key: String,
}

pub(crate) fn to_package(m: package::Model) -> Package {
    Package {
        id: PackageId(m.id),
        tenant_id: TenantId(m.tenant_id),
        product_id: ProductId(m.product_id),
        module: ModuleName::from_trusted(m.module),
        version: Version::from_trusted(m.version),
        kind: PackageKind::parse(&m.kind).unwrap_or(PackageKind::Full),
        // '' stands for "none" so the unique index also covers full packages
        source_version: Some(m.source_version)
            .filter(|s| !s.is_empty())
            .map(Version::from_trusted),
        sign_method: SignMethod::parse(&m.sign_method).unwrap_or(SignMethod::Md5),
        status: PackageStatus::parse(&m.status).unwrap_or(PackageStatus::Unverified),
        description: m.description,
        created_at: m.created_at,
        withdrawn: m
            .withdrawn_at
            .map(|at| (at, m.withdrawn_reason.unwrap_or_default())),
    }
}

pub(crate) fn to_package_file(m: package_file::Model) -> PackageFile {
    PackageFile {
        id: PackageFileId(m.id),
        tenant_id: TenantId(m.tenant_id),
        package_id: PackageId(m.package_id),
        name: FileName::from_trusted(m.name),
        size: u64::try_from(m.size).unwrap_or(0),
        md5: m.md5,
        sha256: m.sha256,
        storage_key: m.storage_key,
        created_at: m.created_at,
    }
}

fn is_foreign_key_violation(e: &DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_))
    )
}

impl Store {
    /// Creates a package of `product`, `unverified` (SPEC P1, P2). The same module, version,
    /// kind and source version twice in one product is a conflict.
    pub async fn create_package(
        &self,
        tenant: TenantId,
        product: ProductId,
        new: NewPackage,
        now: Millis,
    ) -> StoreResult<Package> {
        let p = self.get_product(tenant, product).await?;
        let source = new
            .source_version()
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let res = package::ActiveModel {
            tenant_id: Set(tenant.0),
            product_id: Set(p.id.0),
            module: Set(new.module().as_str().to_owned()),
            version: Set(new.version().as_str().to_owned()),
            kind: Set(new.kind().as_str().to_owned()),
            source_version: Set(source.clone()),
            sign_method: Set(new.sign_method().as_str().to_owned()),
            status: Set(PackageStatus::Unverified.as_str().to_owned()),
            description: Set(new.description().to_owned()),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(self.db())
        .await;
        match res {
            Ok(row) => Ok(to_package(row)),
            Err(e) if is_unique_violation(&e) => {
                let existing = package::Entity::find()
                    .select_only()
                    .column(package::Column::Id)
                    .filter(package::Column::ProductId.eq(p.id.0))
                    .filter(package::Column::Module.eq(new.module().as_str()))
                    .filter(package::Column::Version.eq(new.version().as_str()))
                    .filter(package::Column::Kind.eq(new.kind().as_str()))
                    .filter(package::Column::SourceVersion.eq(source.as_str()))
                    .into_tuple::<i64>()
                    .one(self.db())
                    .await?;
                let what = match new.source_version() {
                    Some(s) => format!("a diff package from {:?}", s.as_str()),
                    None => "a full package".to_owned(),
                };
                let which = existing
                    .map(|id| format!(" (package {id})"))
                    .unwrap_or_default();
                Err(StoreError::Conflict(format!(
                    "{what} of module {:?} version {:?} exists already in product {}{which}; \
                     use another version or delete that package first",
                    new.module().as_str(),
                    new.version().as_str(),
                    p.id
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_package(&self, tenant: TenantId, id: PackageId) -> StoreResult<Package> {
        package::Entity::find_by_id(id.0)
            .filter(package::Column::TenantId.eq(tenant.0))
            .one(self.db())
            .await?
            .map(to_package)
            .ok_or(StoreError::NotFound("package"))
    }

    /// The tenant's packages in id order, filtered.
    pub async fn list_packages(
        &self,
        tenant: TenantId,
        filter: &PackageFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Package>> {
        let mut q = package::Entity::find()
            .filter(package::Column::TenantId.eq(tenant.0))
            .filter(package::Column::Id.gt(page.after));
        if let Some(p) = filter.product {
            q = q.filter(package::Column::ProductId.eq(p.0));
        }
        if let Some(m) = &filter.module {
            q = q.filter(package::Column::Module.eq(m.as_str()));
        }
        if let Some(s) = filter.status {
            q = q.filter(package::Column::Status.eq(s.as_str()));
        }
        let rows = q
            .order_by_asc(package::Column::Id)
            .limit(page.limit + 1)
            .all(self.db())
            .await?;
        Ok(Page::from_rows(rows, page, |r| r.id).map(to_package))
    }

    /// Changes the status by hand (only `no_need` or `unverified`, SPEC P2) or the
    /// description.
    pub async fn update_package(
        &self,
        tenant: TenantId,
        id: PackageId,
        patch: PackagePatch,
    ) -> StoreResult<Package> {
        if let Some(s) = patch.status {
            check_manual_status(s)?;
        }
        if let Some(d) = &patch.description {
            bounded_text("description", d, 0, limits::MAX_DESCRIPTION_LEN)?;
        }
        let p = self.get_package(tenant, id).await?;
        let mut active = package::ActiveModel {
            id: Set(p.id.0),
            ..Default::default()
        };
        if let Some(s) = patch.status {
            active.status = Set(s.as_str().to_owned());
        }
        if let Some(d) = patch.description {
            active.description = Set(d);
        }
        if !active.is_changed() {
            return Ok(p);
        }
        Ok(to_package(active.update(self.db()).await?))
    }

    /// Deletes a package and its file records and returns the records, whose stored files
    /// the caller removes. A package with an unfinished rollout is refused (SPEC P3); its
    /// finished rollouts, their tasks and events go with it.
    pub async fn delete_package(
        &self,
        tenant: TenantId,
        id: PackageId,
    ) -> StoreResult<Vec<PackageFile>> {
        let txn = self.begin_write().await?;
        let p = package::Entity::find_by_id(id.0)
            .filter(package::Column::TenantId.eq(tenant.0))
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound("package"))?;
        self.check_no_unfinished_rollout(&txn, p.id).await?;
        let files = package_file::Entity::find()
            .filter(package_file::Column::PackageId.eq(p.id))
            .order_by_asc(package_file::Column::Id)
            .all(&txn)
            .await?;
        package_file::Entity::delete_many()
            .filter(package_file::Column::PackageId.eq(p.id))
            .exec(&txn)
            .await?;
        // Its finished rollouts go with it (their rows and events by cascade); their tasks
        // explicitly, as PostgreSQL has no key to cascade them (migration `hot_keys`).
        let backend = txn.get_database_backend();
        for sql in [
            "DELETE FROM task_event WHERE rollout_id IN (SELECT id FROM rollout WHERE package_id = ?)",
            "DELETE FROM task WHERE rollout_id IN (SELECT id FROM rollout WHERE package_id = ?)",
        ] {
            txn.execute(super::rollouts::stmt(backend, sql, vec![p.id.into()]))
                .await?;
        }
        package::Entity::delete_by_id(p.id).exec(&txn).await?;
        txn.commit().await?;
        Ok(files.into_iter().map(to_package_file).collect())
    }

    /// Records a stored file under a package. A second file of the same name is a conflict.
    pub async fn add_package_file(
        &self,
        tenant: TenantId,
        package: PackageId,
        file: NewPackageFile,
        now: Millis,
    ) -> StoreResult<PackageFile> {
        let p = self.get_package(tenant, package).await?;
        self.check_files_not_frozen(self.db(), p.id.0).await?;
        let size = i64::try_from(file.size)
            .map_err(|_| Invalid::new("body", "the file is too large to record"))?;
        let name = file.name.as_str().to_owned();
        let res = package_file::ActiveModel {
            tenant_id: Set(tenant.0),
            package_id: Set(p.id.0),
            name: Set(name.clone()),
            size: Set(size),
            md5: Set(file.md5),
            sha256: Set(file.sha256),
            storage_key: Set(file.storage_key),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(self.db())
        .await;
        match res {
            Ok(row) => Ok(to_package_file(row)),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "package {} has a file named {name:?} already; delete it first or choose another name",
                p.id
            ))),
            // the package was deleted while its file was being uploaded
            Err(e) if is_foreign_key_violation(&e) => Err(StoreError::NotFound("package")),
            Err(e) => Err(e.into()),
        }
    }

    /// The file of a package with this name, if any.
    pub async fn package_file_by_name(
        &self,
        tenant: TenantId,
        package: PackageId,
        name: &FileName,
    ) -> StoreResult<Option<PackageFile>> {
        Ok(package_file::Entity::find()
            .filter(package_file::Column::TenantId.eq(tenant.0))
            .filter(package_file::Column::PackageId.eq(package.0))
            .filter(package_file::Column::Name.eq(name.as_str()))
            .one(self.db())
            .await?
            .map(to_package_file))
    }

    /// The files of one package, in upload order.
    pub async fn package_files(
        &self,
        tenant: TenantId,
        package: PackageId,
    ) -> StoreResult<Vec<PackageFile>> {
        self.package_files_of(tenant, &[package]).await
    }

    /// The files of several packages (one page of a list), by package then upload order.
    pub async fn package_files_of(
        &self,
        tenant: TenantId,
        packages: &[PackageId],
    ) -> StoreResult<Vec<PackageFile>> {
        if packages.is_empty() {
            return Ok(vec![]);
        }
        let rows = package_file::Entity::find()
            .filter(package_file::Column::TenantId.eq(tenant.0))
            .filter(package_file::Column::PackageId.is_in(packages.iter().map(|p| p.0)))
            .order_by_asc(package_file::Column::PackageId)
            .order_by_asc(package_file::Column::Id)
            .all(self.db())
            .await?;
        Ok(rows.into_iter().map(to_package_file).collect())
    }

    /// Deletes one file record of a package and returns it; the caller removes the bytes.
    pub async fn delete_package_file(
        &self,
        tenant: TenantId,
        package: PackageId,
        file: PackageFileId,
    ) -> StoreResult<PackageFile> {
        let txn = self.begin_write().await?;
        let row = package_file::Entity::find_by_id(file.0)
            .filter(package_file::Column::TenantId.eq(tenant.0))
            .filter(package_file::Column::PackageId.eq(package.0))
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound("package file"))?;
        self.check_files_not_frozen(&txn, row.package_id).await?;
        package_file::Entity::delete_by_id(row.id)
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(to_package_file(row))
    }

    /// A file by id for a download, whoever's it is: the signed token that names it is
    /// the credential (SPEC V3), so this lookup is not tenant-scoped.
    pub async fn package_file_for_download(
        &self,
        id: PackageFileId,
    ) -> StoreResult<Option<PackageFile>> {
        Ok(package_file::Entity::find_by_id(id.0)
            .one(self.db())
            .await?
            .map(to_package_file))
    }
}
