//! Tenant rollout policies (SPEC W1–W3): the uploaded components, one row per version of a
//! name; what each rollout attaches per hook with its config; the rate policy's persisted
//! state and the count of consecutive policy failures; and an approval's deferral of a task.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000001_policies"
    }
}

fn a(s: &'static str) -> Alias {
    Alias::new(s)
}

fn add(table: &'static str, col: ColumnDef) -> TableAlterStatement {
    Table::alter().table(a(table)).add_column(col).to_owned()
}

fn big_null(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name)).big_integer().null().to_owned()
}

const ROLLOUT: [&str; 6] = [
    "scope_policy_id",
    "approval_policy_id",
    "rate_policy_id",
    "policy_config",
    "rate_policy_state",
    "policy_failures",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(a("policy"))
                .col(
                    ColumnDef::new(a("id"))
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(ColumnDef::new(a("tenant_id")).big_integer().not_null())
                .col(ColumnDef::new(a("name")).string().not_null())
                .col(ColumnDef::new(a("version")).integer().not_null())
                // sha256 of the component, hex: the compiled cache's key
                .col(ColumnDef::new(a("digest")).string().not_null())
                // the exported hooks, comma-separated in hook order
                .col(ColumnDef::new(a("hooks")).string().not_null())
                .col(ColumnDef::new(a("size")).big_integer().not_null())
                .col(ColumnDef::new(a("component")).blob().not_null())
                .col(ColumnDef::new(a("created_by_key")).big_integer().null())
                .col(ColumnDef::new(a("created_at")).big_integer().not_null())
                .foreign_key(
                    ForeignKey::create()
                        .from(a("policy"), a("tenant_id"))
                        .to(a("tenant"), a("id"))
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_policy_version")
                .table(a("policy"))
                .col(a("tenant_id"))
                .col(a("name"))
                .col(a("version"))
                .unique()
                .to_owned(),
        )
        .await?;
        // SQLite adds one column per ALTER TABLE. The policy columns hold ids without a
        // foreign key: a finished rollout keeps naming the version it ran after that
        // version is deleted (deleting one a rollout still runs is refused).
        for col in [
            big_null("scope_policy_id"),
            big_null("approval_policy_id"),
            big_null("rate_policy_id"),
            // JSON object: hook -> the config given at attachment (JSON text)
            ColumnDef::new(a("policy_config"))
                .text()
                .not_null()
                .default("{}")
                .to_owned(),
            // the rate policy's opaque state, as its last tick returned it
            ColumnDef::new(a("rate_policy_state"))
                .blob()
                .null()
                .to_owned(),
            // W3: failed policy calls in a row (a success resets it)
            ColumnDef::new(a("policy_failures"))
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
        ] {
            m.alter_table(add("rollout", col)).await?;
        }
        // an approval's deferral: not released before this time
        m.alter_table(add("task", big_null("not_before"))).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let drop = |t: &'static str, c: &'static str| {
            Table::alter().table(a(t)).drop_column(a(c)).to_owned()
        };
        m.alter_table(drop("task", "not_before")).await?;
        for col in ROLLOUT {
            m.alter_table(drop("rollout", col)).await?;
        }
        m.drop_table(Table::drop().table(a("policy")).to_owned())
            .await?;
        Ok(())
    }
}
