//! PostgreSQL only: the foreign keys of the tables written a million rows at a time (tasks,
//! their audit rows, device-list members, version reports) are dropped.
//!
//! Why: PostgreSQL checks a foreign key with a trigger per inserted row that locks the
//! referenced row (`SELECT … FOR KEY SHARE`), which writes that row's header. Creating a
//! rollout over 1,000,000 devices thereby locked, dirtied and WAL-logged every device row and
//! the rollout row a million times; measured on this machine it was two thirds of the
//! creation time, and every device report paid it again for its audit and history rows.
//! The store keeps the integrity these keys gave: every writer of these tables reads the
//! parents it names in the same statement, and the deletes that cascaded (a device, a
//! package's finished rollouts) now delete the rows explicitly, under the tenant lock that
//! every task-creating transaction also holds (so no task is made for a device being
//! deleted). SQLite checks keys in-process for a few nanoseconds a row and keeps them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000002_hot_keys"
    }
}

/// (table, column, referenced table)
const KEYS: [(&str, &str, &str); 6] = [
    ("task", "rollout_id", "rollout"),
    ("task", "device_id", "device"),
    ("task_event", "task_id", "task"),
    ("device_list_member", "list_id", "device_list"),
    ("device_list_member", "device_id", "device"),
    ("version_report", "device_id", "device"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let c = m.get_connection();
        if c.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        for (table, column, _) in KEYS {
            // The keys were created unnamed; PostgreSQL named them. Found by column, so a
            // database whose names differ still loses exactly these.
            c.execute_unprepared(&format!(
                "DO $$ DECLARE k text; BEGIN \
                   FOR k IN SELECT con.conname FROM pg_constraint con \
                     JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = ANY (con.conkey) \
                     WHERE con.contype = 'f' AND con.conrelid = '{table}'::regclass AND att.attname = '{column}' \
                   LOOP EXECUTE format('ALTER TABLE {table} DROP CONSTRAINT %I', k); END LOOP; \
                 END $$"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let c = m.get_connection();
        if c.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        for (table, column, to) in KEYS {
            c.execute_unprepared(&format!(
                "ALTER TABLE {table} ADD FOREIGN KEY ({column}) REFERENCES {to} (id) ON DELETE CASCADE"
            ))
            .await?;
        }
        Ok(())
    }
}
