//! What the rollout engine persists (SPEC R1–R9, G2; DESIGN §5, §9): each rollout's rate
//! state and logical time, so a restarted server (or another process) continues exactly;
//! per-task push time and timeout; and a partial index that finds due timers without
//! touching the million tasks that have none.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261204_000001_scheduler"
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

fn big_null(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name)).big_integer().null().to_owned()
}

fn int_null(name: &'static str) -> ColumnDef {
    ColumnDef::new(a(name)).integer().null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for col in [
            // the current push rate, devices per minute (R4, R5)
            int_null("rate_per_minute"),
            // the counted total at which a variable rate grows next (R5)
            big_null("rate_next_threshold"),
            // unused push allowance, in 1/60,000 of a push (rate per minute × milliseconds)
            big_default("rate_bucket"),
            // pushes released so far (what a variable rate counted on pushes counts)
            big_default("released_total"),
            // tasks that succeeded (what a variable rate counted on successes counts)
            big_default("succeeded_total"),
            // the logical time the engine last accounted for (rate refill, pause)
            big_null("ticked_at"),
            // when a pause began (G2: timers of not-yet-started tasks stand still)
            big_null("paused_at"),
        ] {
            m.alter_table(add("rollout", col)).await?;
        }
        for col in [
            big_null("pushed_at"),
            // the device timeout this task was created under when the rollout's changed
            // later (R16); NULL: the rollout's
            int_null("timeout_minutes"),
        ] {
            m.alter_table(add("task", col)).await?;
        }
        // Timers: only tasks with a deadline are in it, so creating a million tasks (which
        // have none) costs nothing here. Partial indexes read the same on both databases.
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX ix_task_due ON task (due_at, rollout_id) WHERE due_at IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("ix_task_due")
                .table(a("task"))
                .to_owned(),
        )
        .await?;
        for col in ["pushed_at", "timeout_minutes"] {
            m.alter_table(
                Table::alter()
                    .table(a("task"))
                    .drop_column(a(col))
                    .to_owned(),
            )
            .await?;
        }
        for col in [
            "rate_per_minute",
            "rate_next_threshold",
            "rate_bucket",
            "released_total",
            "succeeded_total",
            "ticked_at",
            "paused_at",
        ] {
            m.alter_table(
                Table::alter()
                    .table(a("rollout"))
                    .drop_column(a(col))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
