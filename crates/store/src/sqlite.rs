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
    audit: AuditWriter,
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
        // No test query before handing out a connection: each statement is a hand-off to SQLite's worker
        // thread, and an in-process file connection cannot go stale the way a network one can.
        // The writer's page cache holds 64 MiB (SQLite's default is 2 MiB): the audit log's indexes are
        // most of what it writes, and an index page still cached is not read again (5% less CPU per event
        // in the ingest bench).
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone().pragma("cache_size", "-65536"))
            .await
            .map_err(unavailable)?;
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        let chain = ChainCache::default();
        let rotations = spawn_rotation_writer(&write, std::sync::Arc::clone(&chain));
        let audit = spawn_audit_writer(&write, chain);
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

    /// None: one node on one file, which polls for what the CLI writes beside it.
    #[allow(clippy::unused_self, reason = "the same signature as the PostgreSQL backend's")]
    fn announcements(&self) -> Option<tokio::sync::broadcast::Receiver<crate::Change>> {
        None
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

/// Appends a batch to the audit chain (group commit). On SQLite every statement is a hand-off to the
/// connection's worker thread, which under load costs more than the statement itself, so each transaction
/// is one multi-statement call: `BEGIN IMMEDIATE`, one INSERT of at most [`EVENT_ROWS_PER_INSERT`] events,
/// the head update, `COMMIT`, with `synchronous = NORMAL` around it (the commit is in the WAL before anyone
/// is answered, which a crash of the server process cannot undo; a power loss can undo the last moments,
/// until the next FULL commit of any other write flushes them). The writer remembers the head it wrote
/// last: if another process (the CLI) or a pruning appended since, the first number collides, the
/// transaction is rolled back and retried from the head as stored. Callers' events are never split across
/// transactions.
async fn audit_batch(pool: &SqlitePool, cache: &mut ChainCache, batch: &[Vec<Event>]) -> Result<Vec<()>> {
    let mut conn = pool.acquire().await?;
    let mut group: Vec<&Event> = Vec::new();
    let mut jobs = batch.iter().peekable();
    while let Some(job) = jobs.next() {
        group.extend(job.iter());
        let next_fits = jobs.peek().is_some_and(|next| group.len() + next.len() <= EVENT_ROWS_PER_INSERT);
        if !next_fits {
            append_group(&mut conn, cache, &group).await?;
            group.clear();
        }
    }
    Ok(vec![(); batch.len()])
}

/// SQLite has one writer: usage transactions cannot overlap.
const PAIRED_USAGE: bool = false;

// The writer never pairs usage on SQLite; were it asked to, it would write the two one after the other.
use self::audit_in_turn as audit_pair;

/// Appends one caller-aligned group of events in one transaction; see [`audit_batch`].
async fn append_group(
    conn: &mut sqlx::pool::PoolConnection<Db>,
    cache: &ChainCache,
    events: &[&Event],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    if events.len() > EVENT_ROWS_PER_INSERT {
        // One caller's very large append: the ordinary transaction, several statements.
        let mut tx = sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE").await?;
        let head = append_cached(&mut tx, cache, events).await?;
        tx.commit().await?;
        if let Some(head) = head {
            put_cached(cache, head);
        }
        return Ok(());
    }
    for _ in 0..3 {
        let start = match take_cached(cache) {
            Some(known) => known,
            None => head_row(&mut **conn).await?,
        };
        let (rows, end) = chain_rows(start, events);
        let mut sql = sqlx::QueryBuilder::<Db>::new("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE; ");
        push_event_insert(&mut sql, &rows);
        sql.push("; UPDATE audit_head SET seq = ")
            .push_bind(end.0)
            .push(", hash = ")
            .push_bind(end.1.0.to_vec())
            .push(" WHERE id = 1; COMMIT; PRAGMA synchronous = FULL");
        match sql.build().execute(&mut **conn).await {
            Ok(_) => {
                put_cached(cache, end);
                return Ok(());
            }
            Err(e) => {
                // Whatever failed, leave the connection as it was: no transaction, FULL.
                let _ = sqlx::query("ROLLBACK").execute(&mut **conn).await;
                if sqlx::query("PRAGMA synchronous = FULL").execute(&mut **conn).await.is_err() {
                    conn.close_on_drop();
                }
                match conflict(e, "audit chain head") {
                    StoreError::Conflict(_) => continue,
                    other => return Err(other),
                }
            }
        }
    }
    Err(StoreError::Unavailable("the audit chain's head keeps moving under this writer".into()))
}

/// Writing transactions take the write lock at once.
async fn begin_write_on(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, Db>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// The head of the audit chain as this process last wrote it, shared by its two writers (rotations and
/// audit appends), which take turns on the one write connection. Each reads it only once it holds the
/// connection, so it is current unless another process (the CLI) appended since; then the first number
/// collides and the head is read from the table ([`append_cached`]).
type ChainCache = std::sync::Arc<std::sync::Mutex<Option<ChainHead>>>;

fn take_cached(cache: &ChainCache) -> Option<ChainHead> {
    cache.lock().map(|mut head| head.take()).unwrap_or(None)
}

fn put_cached(cache: &ChainCache, head: ChainHead) {
    if let Ok(mut cached) = cache.lock() {
        *cached = Some(head);
    }
}

async fn head_row<'e, E: sqlx::Executor<'e, Database = Db>>(db: E) -> Result<ChainHead> {
    let (seq, hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(db).await?;
    Ok((seq, ChainHash::from_slice(&hash).ok_or_else(|| corrupt("audit_head"))?))
}

/// Appends `events` inside `tx` from the cached head, or from the table's if there is none or it turns out
/// stale (on SQLite a failed statement leaves the transaction open, so the append is simply redone).
/// Returns the new head, for the cache once the transaction commits.
async fn append_cached(
    tx: &mut sqlx::Transaction<'_, Db>,
    cache: &ChainCache,
    events: &[&Event],
) -> Result<Option<ChainHead>> {
    if events.is_empty() {
        return Ok(None);
    }
    let start = match take_cached(cache) {
        Some(known) => known,
        None => head_row(&mut **tx).await?,
    };
    let (start, end) = match insert_chained(tx, start, events).await {
        Ok(end) => (start, end),
        Err(StoreError::Conflict(_)) => {
            let fresh = head_row(&mut **tx).await?;
            (fresh, insert_chained(tx, fresh, events).await?)
        }
        Err(e) => return Err(e),
    };
    if !move_head(tx, start.0, end).await? {
        return Err(StoreError::Conflict("audit chain head"));
    }
    Ok(Some(end))
}

/// A batch of rotations in one transaction: for each, the compare-and-swap, then the successor's insert if
/// it won (two statements each; in-process, so cheap, and the one commit carries the fsync); then the
/// winners' audit events.
async fn rotate_batch(
    pool: &SqlitePool,
    cache: &mut ChainCache,
    batch: &[RotationJob],
) -> Result<Vec<Rotation>> {
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
    let head = append_cached(&mut tx, cache, &won_events(batch, &outcomes)).await?;
    tx.commit().await?;
    if let Some(head) = head {
        put_cached(cache, head);
    }
    Ok(outcomes)
}

include!("sql_body.rs");

/// Rows per INSERT statement of events: 18 bound values each, under SQLite's limit of 32,766.
const EVENT_ROWS_PER_INSERT: usize = 1000;

/// Appends one INSERT of `rows` (at most [`EVENT_ROWS_PER_INSERT`]) to `sql`.
fn push_event_insert<'a>(sql: &mut sqlx::QueryBuilder<'a, Db>, rows: &[ChainRow<'a>]) {
    sql.push(concat!("INSERT INTO events (id, ", event_cols!(), ", prev_hash, hash) "));
    sql.push_values(rows, |mut row, (seq, e, prev, hash)| {
        row.push_bind(*seq)
            .push_bind(e.at)
            .push_bind(e.kind.as_str())
            .push_bind(e.ip.as_deref())
            .push_bind(e.user_agent.as_deref())
            .push_bind(e.sub.as_deref())
            .push_bind(e.sid.as_deref())
            .push_bind(e.jti.as_deref())
            .push_bind(e.client_id.as_deref())
            .push_bind(e.audience.as_deref())
            .push_bind(e.service.as_deref())
            .push_bind(e.route.as_deref())
            .push_bind(e.outcome.as_deref())
            .push_bind(e.reason.as_deref())
            .push_bind(e.actor.as_deref())
            .push_bind(e.detail.as_deref())
            .push_bind(prev.0.to_vec())
            .push_bind(hash.0.to_vec());
    });
}

/// Inserts numbered, hashed events: multi-row INSERTs of [`EVENT_ROWS_PER_INSERT`] rows.
async fn insert_event_rows(tx: &mut sqlx::Transaction<'_, Db>, rows: &[ChainRow<'_>]) -> Result<()> {
    for chunk in rows.chunks(EVENT_ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<Db>::new("");
        push_event_insert(&mut insert, chunk);
        insert.build().execute(&mut **tx).await.map_err(|e| conflict(e, "audit chain head"))?;
    }
    Ok(())
}
