//! Persistence: the only module that touches sea-orm. Every tenant-scoped function takes the
//! tenant id first, so no query can forget it; rows are turned into domain records here.

mod assets;
mod devices;
mod engine;
pub mod entity;
mod groups;
mod labels;
mod packages;
mod paging;
mod policies;
mod products;
mod rollouts;
mod safety;
mod search;
mod settings;
mod tenants;

pub use devices::*;
pub use engine::*;
pub use labels::LabelSet;
pub use packages::*;
pub use paging::*;
pub use policies::{ScopeHook, SCOPE_BATCH};
pub use products::*;
pub use rollouts::*;
pub use safety::WaveCounts;
pub use search::DeviceSelection;
pub use tenants::*;

use crate::domain::Invalid;
use ota_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, TransactionTrait,
};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("invalid rows")]
    InvalidRows(RowErrors),
    #[error("database: {0}")]
    Database(#[from] DbErr),
    /// SPEC B5: device names that are not devices of the product (the first ones, in input
    /// order) and how many there are in all; nothing was created.
    #[error("unknown devices")]
    UnknownDevices { names: Vec<String>, total: u64 },
    /// Reading a spooled upload back failed (disk trouble, not the caller's input).
    #[error("reading the spooled upload: {0}")]
    Spool(std::io::Error),
    /// W3: a tenant's policy failed where its answer was needed now (creating a rollout),
    /// so nothing was made on its behalf.
    #[error("{0}")]
    PolicyFailed(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Problems with individual rows of a bulk input (1-based row numbers, header not counted).
/// Rows may fail in any order (validation first, clashes found later); the lowest-numbered
/// [`RowErrors::MAX_LISTED`] are kept, so a reply lists the first rows at fault, in order.
#[derive(Debug, Clone, Default)]
pub struct RowErrors {
    rows: Vec<RowError>,
    total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub row: u64,
    pub field: String,
    pub message: String,
}

impl RowErrors {
    pub const MAX_LISTED: usize = 1000;

    pub fn push(&mut self, row: u64, field: impl Into<String>, message: impl Into<String>) {
        self.total += 1;
        self.rows.push(RowError {
            row,
            field: field.into(),
            message: message.into(),
        });
        // Amortised: trim only when twice the listed number have gathered.
        if self.rows.len() >= 2 * Self::MAX_LISTED {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.rows.sort_by_key(|r| r.row);
        self.rows.truncate(Self::MAX_LISTED);
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// How many rows failed in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The lowest-numbered rows at fault, at most [`RowErrors::MAX_LISTED`], by row number.
    pub fn listed(mut self) -> Vec<RowError> {
        self.trim();
        self.rows
    }
}

/// The database handle every repository function works through.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Connects, tunes SQLite (WAL, busy timeout), and runs pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        Self::connect_with_schema(url, max_connections, None).await
    }

    /// As [`Store::connect`], with PostgreSQL's `search_path` set to `schema` (tests give
    /// each case a fresh schema in one database).
    pub async fn connect_with_schema(
        url: &str,
        max_connections: u32,
        schema: Option<&str>,
    ) -> StoreResult<Self> {
        let mut opt = ConnectOptions::new(url.to_owned());
        opt.max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .sqlx_logging(false);
        if let Some(s) = schema {
            opt.set_schema_search_path(s.to_owned());
        }
        opt.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                .create_if_missing(true)
        });
        let lock_opt = {
            let mut o = opt.clone();
            o.max_connections(1).min_connections(1);
            o
        };
        let db = Database::connect(opt).await?;
        if db.get_database_backend() == DbBackend::Postgres {
            // Two processes starting together on one database must not both migrate: the
            // first takes a session-level advisory lock (on a connection of its own, so the
            // pool may be of any size) and the second waits, then finds nothing to do.
            let lock = Database::connect(lock_opt).await?;
            lock.execute_unprepared(MIGRATION_LOCK).await?;
            let migrated = Migrator::up(&db, None).await;
            // Closing the connection releases the lock even if the unlock fails.
            let _ = lock.execute_unprepared(MIGRATION_UNLOCK).await;
            lock.close().await?;
            migrated?;
        } else {
            // SQLite: one process owns the data directory and its database file.
            Migrator::up(&db, None).await?;
        }
        Ok(Self { db })
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Readiness: the database answers a trivial query.
    pub async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await?;
        Ok(())
    }

    pub(crate) fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The raw connection, for tests and benchmarks that must set up states no API call
    /// makes yet (a failed task before the scheduler exists) or read query plans.
    #[doc(hidden)]
    pub fn raw_connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A transaction that writes. On SQLite it takes the write lock with its first
    /// statement: in WAL mode a transaction that reads and then writes fails at once with
    /// SQLITE_BUSY_SNAPSHOT (517) when another connection commits in between, and no busy
    /// timeout helps; one whose first statement writes waits for the lock instead.
    pub(crate) async fn begin_write(&self) -> StoreResult<DatabaseTransaction> {
        let txn = self.db.begin().await?;
        if self.backend() == DbBackend::Sqlite {
            txn.execute_unprepared("UPDATE tenant SET id = id WHERE 0")
                .await?;
        }
        Ok(txn)
    }

    pub async fn close(self) -> StoreResult<()> {
        self.db.close().await?;
        Ok(())
    }
}

/// One lock per schema, so test schemas in one database do not wait on each other.
const MIGRATION_LOCK: &str =
    "SELECT pg_advisory_lock(hashtext('ota-migrations:' || current_schema()))";
const MIGRATION_UNLOCK: &str =
    "SELECT pg_advisory_unlock(hashtext('ota-migrations:' || current_schema()))";

/// Whether a database error is a unique-constraint violation (both backends).
pub(crate) fn is_unique_violation(e: &DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Largest number of bind parameters one statement may carry on every backend
/// (SQLite's limit is 32,766, PostgreSQL's 65,535).
pub(crate) const MAX_BIND_PARAMS: usize = 30_000;
