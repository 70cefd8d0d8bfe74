//! The foundation schema: tenants and keys, the device registry, packages and their files.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000001_foundation"
    }
}

fn a(s: &'static str) -> Alias {
    Alias::new(s)
}

fn id() -> ColumnDef {
    ColumnDef::new(a("id"))
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

fn big(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name)).big_integer().not_null().to_owned()
}

fn big_null(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name)).big_integer().null().to_owned()
}

fn text(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name)).string().not_null().to_owned()
}

fn boolean(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name))
        .boolean()
        .not_null()
        .default(false)
        .to_owned()
}

fn fk(table: &'static str, col: &'static str, to: &'static str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(a(table), a(col))
        .to(a(to), a("id"))
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

fn index(
    table: &'static str,
    name: &'static str,
    cols: &[&'static str],
    unique: bool,
) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(name).table(a(table));
    for c in cols {
        i.col(a(c));
    }
    if unique {
        i.unique();
    }
    i.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(a("server_setting"))
                .col(ColumnDef::new(a("name")).string().not_null().primary_key())
                .col(text("value"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(a("tenant"))
                .col(id())
                .col(text("name"))
                .col(big("created_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("tenant", "ux_tenant_name", &["name"], true))
            .await?;

        m.create_table(
            Table::create()
                .table(a("api_key"))
                .col(id())
                .col(big("tenant_id"))
                .col(text("name"))
                .col(text("role"))
                .col(text("prefix"))
                .col(text("key_hash"))
                .col(big("created_at"))
                .col(big_null("revoked_at"))
                .foreign_key(&mut fk("api_key", "tenant_id", "tenant"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("api_key", "ux_api_key_hash", &["key_hash"], true))
            .await?;
        m.create_index(index("api_key", "ix_api_key_tenant", &["tenant_id"], false))
            .await?;

        m.create_table(
            Table::create()
                .table(a("product"))
                .col(id())
                .col(big("tenant_id"))
                .col(text("product_key"))
                .col(text("name"))
                .col(text("protocol"))
                .col(boolean("require_verification"))
                .col(text("description"))
                .col(big("created_at"))
                .foreign_key(&mut fk("product", "tenant_id", "tenant"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("product", "ux_product_key", &["product_key"], true))
            .await?;
        m.create_index(index("product", "ix_product_tenant", &["tenant_id"], false))
            .await?;

        m.create_table(
            Table::create()
                .table(a("device"))
                .col(id())
                .col(big("tenant_id"))
                .col(big("product_id"))
                .col(text("name"))
                .col(text("secret"))
                .col(boolean("online"))
                .col(big_null("activated_at"))
                .col(big_null("last_seen_at"))
                .col(big("created_at"))
                .foreign_key(&mut fk("device", "tenant_id", "tenant"))
                .foreign_key(&mut fk("device", "product_id", "product"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "device",
            "ux_device_product_name",
            &["product_id", "name"],
            true,
        ))
        .await?;
        m.create_index(index(
            "device",
            "ix_device_tenant_name",
            &["tenant_id", "name"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("device_module"))
                .col(big("device_id"))
                .col(text("module"))
                .col(big("tenant_id"))
                .col(big("product_id"))
                .col(text("version"))
                .col(big("updated_at"))
                .primary_key(Index::create().col(a("device_id")).col(a("module")))
                .foreign_key(&mut fk("device_module", "device_id", "device"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "device_module",
            "ix_device_module_version",
            &["product_id", "module", "version"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("version_report"))
                .col(id())
                .col(big("tenant_id"))
                .col(big("device_id"))
                .col(text("module"))
                .col(text("version"))
                .col(big("reported_at"))
                .foreign_key(&mut fk("version_report", "device_id", "device"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "version_report",
            "ix_version_report_device",
            &["device_id", "id"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("device_group"))
                .col(id())
                .col(big("tenant_id"))
                .col(big_null("parent_id"))
                .col(text("name"))
                .col(text("description"))
                .col(big("created_at"))
                .foreign_key(&mut fk("device_group", "tenant_id", "tenant"))
                .foreign_key(&mut fk("device_group", "parent_id", "device_group"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "device_group",
            "ix_device_group_parent",
            &["tenant_id", "parent_id"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("group_member"))
                .col(big("group_id"))
                .col(big("device_id"))
                .col(big("tenant_id"))
                .primary_key(Index::create().col(a("group_id")).col(a("device_id")))
                .foreign_key(&mut fk("group_member", "group_id", "device_group"))
                .foreign_key(&mut fk("group_member", "device_id", "device"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "group_member",
            "ix_group_member_device",
            &["device_id"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("device_attribute"))
                .col(big("device_id"))
                .col(text("name"))
                .col(big("tenant_id"))
                .col(text("value"))
                .primary_key(Index::create().col(a("device_id")).col(a("name")))
                .foreign_key(&mut fk("device_attribute", "device_id", "device"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "device_attribute",
            "ix_device_attribute_value",
            &["tenant_id", "name", "value"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("device_tag"))
                .col(big("device_id"))
                .col(text("key"))
                .col(big("tenant_id"))
                .col(text("value"))
                .primary_key(Index::create().col(a("device_id")).col(a("key")))
                .foreign_key(&mut fk("device_tag", "device_id", "device"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "device_tag",
            "ix_device_tag_value",
            &["tenant_id", "key", "value"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("asset_tree"))
                .col(id())
                .col(big("tenant_id"))
                .col(text("name"))
                .col(big("created_at"))
                .foreign_key(&mut fk("asset_tree", "tenant_id", "tenant"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(a("asset_node"))
                .col(id())
                .col(big("tenant_id"))
                .col(big("tree_id"))
                .col(big_null("parent_id"))
                .col(text("name"))
                .col(big("created_at"))
                .foreign_key(&mut fk("asset_node", "tree_id", "asset_tree"))
                .foreign_key(&mut fk("asset_node", "parent_id", "asset_node"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "asset_node",
            "ix_asset_node_parent",
            &["tree_id", "parent_id"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("asset_node_device"))
                .col(big("node_id"))
                .col(big("device_id"))
                .col(big("tenant_id"))
                .primary_key(Index::create().col(a("node_id")).col(a("device_id")))
                .foreign_key(&mut fk("asset_node_device", "node_id", "asset_node"))
                .foreign_key(&mut fk("asset_node_device", "device_id", "device"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "asset_node_device",
            "ix_asset_node_device_device",
            &["device_id"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("package"))
                .col(id())
                .col(big("tenant_id"))
                .col(big("product_id"))
                .col(text("module"))
                .col(text("version"))
                .col(text("kind"))
                // '' for a full package, so the unique index below also covers full packages
                .col(text("source_version"))
                .col(text("sign_method"))
                .col(text("status"))
                .col(text("description"))
                .col(big("created_at"))
                .foreign_key(&mut fk("package", "tenant_id", "tenant"))
                .foreign_key(&mut fk("package", "product_id", "product"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "package",
            "ux_package_identity",
            &["product_id", "module", "version", "kind", "source_version"],
            true,
        ))
        .await?;
        m.create_index(index(
            "package",
            "ix_package_tenant",
            &["tenant_id", "id"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("package_file"))
                .col(id())
                .col(big("tenant_id"))
                .col(big("package_id"))
                .col(text("name"))
                .col(big("size"))
                .col(text("md5"))
                .col(text("sha256"))
                .col(text("storage_key"))
                .col(big("created_at"))
                .foreign_key(&mut fk("package_file", "package_id", "package"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "package_file",
            "ux_package_file_name",
            &["package_id", "name"],
            true,
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "package_file",
            "package",
            "asset_node_device",
            "asset_node",
            "asset_tree",
            "device_tag",
            "device_attribute",
            "group_member",
            "device_group",
            "version_report",
            "device_module",
            "device",
            "product",
            "api_key",
            "tenant",
            "server_setting",
        ] {
            m.drop_table(Table::drop().table(a(t)).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
