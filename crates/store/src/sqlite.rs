//! The SQLite backend: the embedded default, one file in the data directory, in WAL mode.
//!
//! Writes go through a pool of exactly one connection, so writers in this process queue in memory instead of
//! spinning on SQLite's lock; reads use a separate pool and see the last committed state (WAL). Transactions
//! that write start with `BEGIN IMMEDIATE`, so a transaction never has to upgrade a read lock (which SQLite
//! can refuse with `SQLITE_BUSY` no matter how long it waits). Another process (the management CLI) shares the
//! file through SQLite's own locking and a five-second busy timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{Result, StoreError};

type Db = sqlx::Sqlite;
type WritePool = SqlitePool;
type StoreImpl = SqliteStore;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Connections in the read pool.
const READERS: u32 = 4;

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    read: SqlitePool,
    write: SqlitePool,
    rotations: tokio::sync::mpsc::Sender<Queued<RotationJob, Rotation>>,
    single_use: tokio::sync::mpsc::Sender<Queued<OnceJob, bool>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`. Does not migrate; see [`crate::Store::migrate`].
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the file cannot be opened or created.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk (fsync of the WAL) before the client hears of it.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let unavailable =
            |e: sqlx::Error| StoreError::Unavailable(format!("cannot open {}: {e}", path.display()));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        let rotations = spawn_rotation_writer(&write);
        let single_use = spawn_single_use_writer(&write);
        Ok(SqliteStore { path: path.to_owned(), read, write, rotations, single_use })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    fn read(&self) -> &SqlitePool {
        &self.read
    }

    fn write(&self) -> &SqlitePool {
        &self.write
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Db>> {
        begin_write_on(&self.write).await
    }

    fn backend_name(&self) -> &'static str {
        "sqlite"
    }
}

/// Writing transactions take the write lock at once.
async fn begin_write_on(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, Db>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// A batch of rotations in one transaction: for each, the compare-and-swap, then the successor's insert if
/// it won (two statements each; in-process, so cheap, and the one commit carries the fsync).
async fn rotate_batch(pool: &SqlitePool, batch: &[RotationJob]) -> Result<Vec<Rotation>> {
    let mut tx = begin_write_on(pool).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let won = sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = $1, successor = $2 \
             WHERE hash = $3 AND rotated_at IS NULL AND family_id = $4 AND EXISTS ( \
               SELECT 1 FROM refresh_families f WHERE f.id = $4 AND f.revoked_at IS NULL)",
        )
        .bind(job.now)
        .bind(job.successor.hash.as_bytes())
        .bind(job.old.as_bytes())
        .bind(&job.successor.family_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if won == 1 {
            insert_refresh(&mut tx, &job.successor).await?;
            outcomes.push(Rotation::Rotated);
        } else {
            outcomes.push(Rotation::Lost);
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

include!("sql_body.rs");
