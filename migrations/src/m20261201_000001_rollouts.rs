//! Rollouts and their tasks (SPEC B1–B10, R1–R17, O1–O4): rollouts with every option as a
//! column the scheduler can read, tasks narrow enough to write a million in well under a
//! second, audit events, and uploaded device lists (B5 CSV scopes).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000001_rollouts"
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

fn int_default(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name))
        .integer()
        .not_null()
        .default(0)
        .to_owned()
}

fn int_null(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name)).integer().null().to_owned()
}

fn text(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name)).string().not_null().to_owned()
}

fn text_null(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name)).string().null().to_owned()
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
                .table(a("device_list"))
                .col(id())
                .col(big("tenant_id"))
                .col(big("product_id"))
                .col(big("devices"))
                .col(big("created_at"))
                .foreign_key(&mut fk("device_list", "tenant_id", "tenant"))
                .foreign_key(&mut fk("device_list", "product_id", "product"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(a("device_list_member"))
                .col(big("list_id"))
                .col(big("device_id"))
                .primary_key(Index::create().col(a("list_id")).col(a("device_id")))
                .foreign_key(&mut fk("device_list_member", "list_id", "device_list"))
                .foreign_key(&mut fk("device_list_member", "device_id", "device"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(a("rollout"))
                .col(id())
                .col(big("tenant_id"))
                .col(big("product_id"))
                .col(big("package_id"))
                .col(text("module"))
                .col(text("target_version"))
                .col(text("name"))
                .col(text("description"))
                .col(text("method"))
                .col(text("rollout_type"))
                .col(text("state"))
                .col(text("scope_kind"))
                // the scope's parameters as JSON (names of an inline list are in device_list)
                .col(text("scope"))
                .col(big_null("device_list_id"))
                .col(big_null("group_id"))
                .col(text("source_versions"))
                .col(big_null("start_at"))
                .col(big_null("end_at"))
                .col(boolean("daily_repeat"))
                .col(int_default("utc_offset_minutes"))
                .col(text("push_mode"))
                .col(text_null("rate_kind"))
                .col(int_null("rate_base"))
                .col(int_null("rate_factor_centi"))
                .col(int_null("rate_max"))
                .col(int_null("rate_threshold"))
                .col(text_null("rate_count_on"))
                .col(int_null("max_concurrency"))
                .col(int_null("retry_interval_minutes"))
                .col(int_null("retry_max"))
                .col(int_null("timeout_minutes"))
                .col(boolean("retry_timeouts"))
                .col(boolean("multi_module"))
                .col(boolean("override_previous"))
                .col(boolean("only_new_reports"))
                .col(boolean("app_confirm"))
                .col(text("download_protocol"))
                .col(text("tags"))
                // B2: set to package_id while a dynamic rollout is open; unique, so a second
                // open one cannot be created even by two racing calls
                .col(big_null("open_dynamic_package_id"))
                .col(boolean("strategy_cancelled"))
                .col(big("task_count"))
                .col(big_null("created_by_key"))
                .col(big("created_at"))
                .col(big_null("started_at"))
                .col(big_null("finished_at"))
                .foreign_key(&mut fk("rollout", "tenant_id", "tenant"))
                .foreign_key(&mut fk("rollout", "package_id", "package"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "rollout",
            "ux_rollout_open_dynamic",
            &["open_dynamic_package_id"],
            true,
        ))
        .await?;
        m.create_index(index(
            "rollout",
            "ix_rollout_tenant",
            &["tenant_id", "id"],
            false,
        ))
        .await?;
        m.create_index(index(
            "rollout",
            "ix_rollout_package",
            &["package_id", "state"],
            false,
        ))
        .await?;
        m.create_index(index(
            "rollout",
            "ix_rollout_state",
            &["state", "start_at"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("task"))
                .col(id())
                .col(big("rollout_id"))
                .col(big("device_id"))
                .col(text("state"))
                .col(int_default("retries"))
                .col(int_default("progress"))
                .col(text_null("failure_reason"))
                .col(text_null("last_message"))
                // a success reported after the task was cancelled (O1)
                .col(big_null("late_success_at"))
                .col(big("created_at"))
                .col(big("updated_at"))
                .col(big_null("started_at"))
                .col(big_null("finished_at"))
                // the task's next deadline (retry, timeout), for the scheduler's timers
                .col(big_null("due_at"))
                .foreign_key(&mut fk("task", "rollout_id", "rollout"))
                .foreign_key(&mut fk("task", "device_id", "device"))
                .to_owned(),
        )
        .await?;
        // counts by state (GROUP BY over the index alone) and state-filtered pages
        m.create_index(index(
            "task",
            "ix_task_rollout_state",
            &["rollout_id", "state", "id"],
            false,
        ))
        .await?;
        // a device's tasks (R10, R11, O2 per device)
        m.create_index(index(
            "task",
            "ix_task_device",
            &["device_id", "state"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("rollout_event"))
                .col(id())
                .col(big("tenant_id"))
                .col(big("rollout_id"))
                .col(big("at"))
                .col(text("event"))
                .col(text_null("from_state"))
                .col(text_null("to_state"))
                .col(big_null("tasks"))
                .col(text("cause"))
                .col(text_null("actor"))
                .col(text("detail"))
                .foreign_key(&mut fk("rollout_event", "rollout_id", "rollout"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "rollout_event",
            "ix_rollout_event_rollout",
            &["rollout_id", "id"],
            false,
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(a("task_event"))
                .col(id())
                .col(big("task_id"))
                .col(big("rollout_id"))
                .col(big("at"))
                .col(text_null("from_state"))
                .col(text("to_state"))
                .col(text("cause"))
                .col(text_null("actor"))
                .col(text("detail"))
                .foreign_key(&mut fk("task_event", "task_id", "task"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "task_event",
            "ix_task_event_task",
            &["task_id", "id"],
            false,
        ))
        .await?;

        // Scope queries: devices of a product in id order (scope `all`), and attribute
        // values by device for numeric ranges.
        m.create_index(index(
            "device",
            "ix_device_product_id",
            &["product_id", "id"],
            false,
        ))
        .await?;
        m.create_index(index(
            "device_module",
            "ix_device_module_device_version",
            &["product_id", "module", "device_id", "version"],
            false,
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for i in [
            ("device", "ix_device_product_id"),
            ("device_module", "ix_device_module_device_version"),
        ] {
            m.drop_index(Index::drop().name(i.1).table(a(i.0)).to_owned())
                .await?;
        }
        for t in [
            "task_event",
            "rollout_event",
            "task",
            "rollout",
            "device_list_member",
            "device_list",
        ] {
            m.drop_table(Table::drop().table(a(t)).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
