//! Safer rollouts (SPEC G1, G3–G6): abort rules and the finished-task counts they read,
//! waves (each task's wave, the rollout's current one and its successes), maintenance
//! windows, force re-install, and a package's withdrawal (kill switch).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261204_000002_safety"
    }
}

fn a(s: &'static str) -> Alias {
    Alias::new(s)
}

fn add(table: &'static str, col: ColumnDef) -> TableAlterStatement {
    Table::alter().table(a(table)).add_column(col).to_owned()
}

fn big_default(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name))
        .big_integer()
        .not_null()
        .default(0)
        .to_owned()
}

fn text(name: &'static str, default: &'static str) -> ColumnDef {
    ColumnDef::new(a(name))
        .text()
        .not_null()
        .default(default)
        .to_owned()
}

const ROLLOUT: [&str; 9] = [
    "abort_rules",
    "failed_total",
    "timed_out_total",
    "rejected_total",
    "waves",
    "current_wave",
    "wave_succeeded",
    "maintenance_window",
    "force_reinstall",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for col in [
            // G1: JSON list of rules (with when each fired)
            text("abort_rules", "[]"),
            // G1: tasks finished in each failure kind (a failure with a retry due is not
            // finished); successes are `succeeded_total`
            big_default("failed_total"),
            big_default("timed_out_total"),
            big_default("rejected_total"),
            // G3: JSON list of waves with their task counts; the wave running now (0: none)
            text("waves", "[]"),
            ColumnDef::new(a("current_wave"))
                .integer()
                .not_null()
                .default(0)
                .to_owned(),
            // G3: successes in the current wave, for its gate
            big_default("wave_succeeded"),
            // G4: JSON window, or NULL
            ColumnDef::new(a("maintenance_window"))
                .text()
                .null()
                .to_owned(),
            // G6
            ColumnDef::new(a("force_reinstall"))
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
        ] {
            m.alter_table(add("rollout", col)).await?;
        }
        // G3: the task's wave (0: the rollout has none)
        m.alter_table(add(
            "task",
            ColumnDef::new(a("wave"))
                .small_integer()
                .not_null()
                .default(0)
                .to_owned(),
        ))
        .await?;
        // G5: a withdrawn package is used by no rollout until it is reinstated
        for col in [
            ColumnDef::new(a("withdrawn_at"))
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(a("withdrawn_reason"))
                .text()
                .null()
                .to_owned(),
        ] {
            m.alter_table(add("package", col)).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let drop = |t: &'static str, c: &'static str| {
            Table::alter().table(a(t)).drop_column(a(c)).to_owned()
        };
        for col in ["withdrawn_at", "withdrawn_reason"] {
            m.alter_table(drop("package", col)).await?;
        }
        m.alter_table(drop("task", "wave")).await?;
        for col in ROLLOUT {
            m.alter_table(drop("rollout", col)).await?;
        }
        Ok(())
    }
}
