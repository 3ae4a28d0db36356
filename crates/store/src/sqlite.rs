//! The SQLite backend: the embedded default, one file in the data directory, in WAL mode.
//!
//! Writes go through a pool of exactly one connection, so writers in this process queue in memory instead of
//! spinning on SQLite's lock; reads use a separate pool and see the last committed state (WAL). Transactions
//! that write start with `BEGIN IMMEDIATE`, so a transaction never has to upgrade a read lock (which SQLite
//! can refuse with `SQLITE_BUSY` no matter how long it waits). Another process (the management CLI) shares the
//! file through SQLite's own locking and a five-second busy timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_core::replay::{ReplayCache, Seen};

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
    audit: tokio::sync::mpsc::Sender<Queued<Vec<Event>, ()>>,
    /// Single-use ids taken by this process: the authority on SQLite, where one server process owns the file.
    /// Filled at the first use, from `used_ids`, so that the management CLI never pays for it.
    once: tokio::sync::OnceCell<ReplayCache>,
    /// Ids to write behind to `used_ids`, so that a restart still knows them.
    once_behind: tokio::sync::mpsc::Sender<OnceJob>,
    /// How many ids were kept in memory only because the write-behind queue was full.
    once_unwritten: std::sync::atomic::AtomicU64,
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
        let audit = spawn_audit_writer(&write);
        let once_behind = spawn_write_behind(&write);
        let once = tokio::sync::OnceCell::new();
        Ok(SqliteStore {
            path: path.to_owned(),
            read,
            write,
            rotations,
            audit,
            once,
            once_behind,
            once_unwritten: Default::default(),
        })
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

/// The most single-use ids held in memory (about 50 bytes each); past it, new ones are refused (503) rather
/// than old ones forgotten. At 10,000 DPoP requests a second with 90 s windows, about 900,000 are live.
const MAX_SINGLE_USE_IDS: usize = 4_000_000;

impl SqliteStore {
    /// The ids a previous process took and that have not yet been pruned; a retaken id's latest window.
    async fn load_single_use_ids(&self) -> Result<ReplayCache> {
        let once = ReplayCache::new(MAX_SINGLE_USE_IDS);
        let kept: Vec<(String, Vec<u8>, i64)> =
            sqlx::query_as("SELECT scope, id_hash, max(expires_at) FROM used_ids GROUP BY scope, id_hash")
                .fetch_all(&self.read)
                .await?;
        for (scope, id_hash, expires_at) in kept {
            once.record(scope.as_bytes(), &id_hash, u64::try_from(expires_at).unwrap_or(0), 0);
        }
        Ok(once)
    }

    /// Takes a single-use id in memory, then queues it for the disk. The memory is the authority (one server
    /// process per database file); the disk copy is read back at the next start, so a restart does not
    /// reopen the ids' windows, except for those of the last moments before a crash.
    async fn take_once(&self, job: OnceJob) -> Result<bool> {
        let once = self.once.get_or_try_init(|| self.load_single_use_ids()).await?;
        let until = u64::try_from(job.expires_at).unwrap_or(0);
        match once.record(
            job.scope.as_bytes(),
            job.id_hash.as_bytes(),
            until,
            u64::try_from(job.now).unwrap_or(0),
        ) {
            Seen::Fresh => {
                if self.once_behind.try_send(job).is_err() {
                    // One line per 1,024 ids, not one per id, when the disk falls behind.
                    let dropped = self.once_unwritten.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if dropped.is_multiple_of(1024) {
                        tracing::warn!(
                            unwritten = dropped + 1,
                            "single-use ids are arriving faster than they are written behind; these are kept in memory only"
                        );
                    }
                }
                Ok(true)
            }
            Seen::Replayed => Ok(false),
            Seen::Full | Seen::NamespaceFull => {
                Err(StoreError::Unavailable("the single-use id cache is full".into()))
            }
        }
    }
}

/// The most ids written behind in one transaction (three bound values each, well under SQLite's limit).
const WRITE_BEHIND_BATCH: usize = 4096;
/// How long the write-behind waits for a batch to gather after its first id: what a crash can lose.
const WRITE_BEHIND_GATHER: Duration = Duration::from_millis(25);

/// Writes single-use ids to `used_ids` in batches, off the request path.
fn spawn_write_behind(pool: &SqlitePool) -> tokio::sync::mpsc::Sender<OnceJob> {
    let (jobs, mut queue) = tokio::sync::mpsc::channel::<OnceJob>(4 * WRITE_BEHIND_BATCH);
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(WRITE_BEHIND_BATCH);
        while queue.recv_many(&mut batch, WRITE_BEHIND_BATCH).await > 0 {
            // Let a batch gather: one commit (and its fsync) per few hundred ids, not per few.
            tokio::time::sleep(WRITE_BEHIND_GATHER).await;
            while batch.len() < WRITE_BEHIND_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if let Err(e) = write_behind_batch(&pool, &batch).await {
                tracing::warn!(error = %e, ids = batch.len(), "single-use ids not written behind");
            }
            batch.clear();
        }
    });
    jobs
}

/// Appends a batch of taken ids to `used_ids`, an append-only log on SQLite: no unique key to look up, and
/// rows land at the end of the table and of its expiry index, so a batch touches a few pages, not one per id.
async fn write_behind_batch(pool: &SqlitePool, batch: &[OnceJob]) -> Result<()> {
    let mut insert = sqlx::QueryBuilder::<Db>::new("INSERT INTO used_ids (scope, id_hash, expires_at) ");
    insert.push_values(batch, |mut row, job| {
        row.push_bind(job.scope.as_str()).push_bind(job.id_hash.as_bytes()).push_bind(job.expires_at);
    });
    let mut tx = begin_write_on(pool).await?;
    insert.build().execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
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
