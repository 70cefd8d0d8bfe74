//! Persistence: the only module that touches sea-orm. Every tenant-scoped function takes the
//! tenant id first, so no query can forget it; rows are turned into domain records here.

mod assets;
mod devices;
pub mod entity;
mod groups;
mod labels;
mod packages;
mod paging;
mod products;
mod search;
mod settings;
mod tenants;

pub use devices::*;
pub use labels::LabelSet;
pub use packages::*;
pub use paging::*;
pub use products::*;
pub use search::DeviceSelection;
pub use tenants::*;

use crate::domain::Invalid;
use ota_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
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
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Problems with individual rows of a bulk input (1-based row numbers, header not counted).
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct RowErrors {
    /// The first rows that failed, at most [`RowErrors::MAX_LISTED`].
    pub rows: Vec<RowError>,
    /// How many rows failed in all.
    pub total: u64,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RowError {
    pub row: u64,
    pub field: String,
    pub message: String,
}

impl RowErrors {
    pub const MAX_LISTED: usize = 1000;

    pub fn push(&mut self, row: u64, field: impl Into<String>, message: impl Into<String>) {
        self.total += 1;
        if self.rows.len() < Self::MAX_LISTED {
            self.rows.push(RowError {
                row,
                field: field.into(),
                message: message.into(),
            });
        }
    }
    pub fn is_empty(&self) -> bool {
        self.total == 0
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
        let db = Database::connect(opt).await?;
        Migrator::up(&db, None).await?;
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

    pub async fn close(self) -> StoreResult<()> {
        self.db.close().await?;
        Ok(())
    }
}

/// Whether a database error is a unique-constraint violation (both backends).
pub(crate) fn is_unique_violation(e: &DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Whether SQLite refused a statement because another connection holds the write lock
/// (SQLITE_BUSY and its extended codes).
pub(crate) fn is_sqlite_busy(e: &DbErr) -> bool {
    let text = e.to_string();
    text.contains("(code: 5)")
        || text.contains("(code: 517)")
        || text.contains("database is locked")
}

/// Largest number of bind parameters one statement may carry on every backend
/// (SQLite's limit is 32,766, PostgreSQL's 65,535).
pub(crate) const MAX_BIND_PARAMS: usize = 30_000;
