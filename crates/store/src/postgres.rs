//! The PostgreSQL backend, for several server nodes sharing one database.
//!
//! Every connection may carry a `search_path`, which the conformance suite uses to give each test its own
//! schema. Transactions run at READ COMMITTED: the compare-and-swaps (`UPDATE … WHERE rotated_at IS NULL`,
//! `… WHERE used_at IS NULL`) are re-checked by PostgreSQL against the newest row version after waiting on
//! the row lock, so two nodes cannot both win.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::broadcast;

use crate::{Change, Result, StoreError};

type Db = sqlx::Postgres;
type WritePool = PgPool;
type StoreImpl = PostgresStore;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per node, unless the URL's pool settings say otherwise.
const POOL_SIZE: u32 = 16;

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    rotations: tokio::sync::mpsc::Sender<Queued<RotationJob, Rotation>>,
    audit: AuditWriter,
    single_use: tokio::sync::mpsc::Sender<Queued<OnceJob, bool>>,
    options: PgConnectOptions,
    /// The announcement listener, started by the first [`crate::Store::changes`] call.
    announcer: std::sync::OnceLock<(broadcast::Sender<Change>, tokio::task::AbortHandle)>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some((_, task)) = self.announcer.get() {
            task.abort();
        }
    }
}

impl PostgresStore {
    /// Connects to `url`. With `schema`, every connection uses it as its `search_path` (it must exist).
    /// Does not migrate; see [`crate::Store::migrate`].
    ///
    /// # Errors
    /// [`StoreError::Database`] for a malformed URL, [`StoreError::Unavailable`] if the server cannot be
    /// reached.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Database("the PostgreSQL URL is malformed".into()))?;
        if let Some(schema) = schema {
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        let gate = ChainCache::default();
        let rotations = spawn_rotation_writer(&pool, gate.clone());
        let single_use = spawn_single_use_writer(&pool);
        let audit = spawn_audit_writer(&pool, gate);
        Ok(PostgresStore {
            pool,
            rotations,
            audit,
            single_use,
            options,
            announcer: std::sync::OnceLock::new(),
        })
    }

    /// Subscribes to the announcements, starting the listener on the first call.
    fn announcements(&self) -> Option<broadcast::Receiver<Change>> {
        let (sender, _) = self.announcer.get_or_init(|| {
            let sender = broadcast::channel(ANNOUNCEMENT_BUFFER).0;
            let task = tokio::spawn(announce(self.options.clone(), sender.clone()));
            (sender, task.abort_handle())
        });
        Some(sender.subscribe())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn read(&self) -> &PgPool {
        &self.pool
    }

    fn write(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Db>> {
        begin_write_on(&self.pool).await
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }
}

impl PostgresStore {
    /// Takes a single-use id through the group-commit writer: shared by every node through the table. The
    /// batch is committed without waiting for the WAL flush (`synchronous_commit = off` for that transaction
    /// only): a database crash may forget the ids of its last moments, whose proofs and assertions would then
    /// be accepted once more within their short lifetimes; every other write waits for the disk.
    async fn take_once(&self, job: OnceJob) -> Result<bool> {
        enqueue(&self.single_use, job, "single-use").await
    }
}

/// Announcements buffered per subscriber; one that falls further behind re-reads everything (it sees
/// `Lagged`, which it treats as [`Change::Listening`]).
const ANNOUNCEMENT_BUFFER: usize = 256;
/// The channels migration 0015's triggers notify, and what each announces.
const CHANNELS: [(&str, Change); 3] = [
    ("tessera_revocations", Change::Revocations),
    ("tessera_keys", Change::Keys),
    ("tessera_directory", Change::Directory),
];
/// Wait between attempts to (re)connect the listener.
const RELISTEN: Duration = Duration::from_secs(1);

/// Listens on one dedicated connection (not one of the pool's) and relays each announcement made in this
/// store's schema; says [`Change::Listening`] on every (re)connection and [`Change::Lost`] when the
/// connection drops, then reconnects. Runs until the store is dropped.
async fn announce(options: PgConnectOptions, sender: broadcast::Sender<Change>) {
    loop {
        match listen(&options).await {
            Ok((mut listener, schema)) => {
                tracing::debug!("listening for changes announced by other nodes");
                let _ = sender.send(Change::Listening);
                while let Ok(Some(note)) = listener.try_recv().await {
                    if note.payload() != schema {
                        continue;
                    }
                    if let Some((_, change)) = CHANNELS.iter().find(|(name, _)| *name == note.channel()) {
                        let _ = sender.send(*change);
                    }
                }
                tracing::warn!(
                    "lost the connection that hears other nodes' changes; polling until it is back"
                );
                let _ = sender.send(Change::Lost);
            }
            Err(e) => tracing::debug!(error = %e, "cannot listen for other nodes' changes yet"),
        }
        tokio::time::sleep(RELISTEN).await;
    }
}

/// A listening connection and the schema whose announcements are ours.
async fn listen(options: &PgConnectOptions) -> Result<(PgListener, String)> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    // A lost connection ends `try_recv` with `Ok(None)`; `announce` then starts over and says so.
    listener.eager_reconnect(false);
    let schema: String =
        sqlx::query_scalar("SELECT COALESCE(current_schema(), '')").fetch_one(&mut listener).await?;
    listener.listen_all(CHANNELS.iter().map(|(name, _)| *name)).await?;
    Ok((listener, schema))
}

/// The most single-use ids taken in one transaction.
const MAX_ONCE_BATCH: usize = 256;

/// The single-use writer.
/// A batch of audit appends in one transaction, committed without waiting for the WAL flush
/// (`synchronous_commit = off` for this transaction only): the events are in PostgreSQL, and visible to
/// every node, before anyone is answered; a database crash may lose its last moments' events, as it may
/// lose the single-use ids.
async fn audit_batch(pool: &PgPool, _: &mut ChainCache, batch: &[Vec<Event>]) -> Result<Vec<()>> {
    let all: Vec<&Event> = batch.iter().flatten().collect();
    let mut tx = begin_write_on(pool).await?;
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    append_chained(&mut tx, &all).await?;
    tx.commit().await?;
    Ok(vec![(); batch.len()])
}

fn spawn_single_use_writer(pool: &PgPool) -> tokio::sync::mpsc::Sender<Queued<OnceJob, bool>> {
    spawn_batch_writer(pool, MAX_ONCE_BATCH, (), |pool, (), batch| Box::pin(take_once_batch(pool, batch)))
}

/// Takes a batch of single-use ids in one statement and one transaction; for each, whether it was fresh.
///
/// One multi-row `INSERT … ON CONFLICT … RETURNING` instead of a statement per id: the rows it returns are
/// the ids taken now (new, or a row whose time had passed). An id repeated inside the batch is taken by its
/// first job only, in memory, since one statement cannot touch a row twice. The batch's earliest `now`
/// decides whether an old row has expired, so no row is retaken early.
async fn take_once_batch(pool: &PgPool, batch: &[OnceJob]) -> Result<Vec<bool>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    // Each distinct id once, at its first job; a repeat inside the batch is a replay of that job's id.
    let mut first: std::collections::HashMap<(&str, &[u8]), usize> = std::collections::HashMap::new();
    for (i, job) in batch.iter().enumerate() {
        first.entry((job.scope.as_str(), job.id_hash.as_bytes())).or_insert(i);
    }
    let now = batch.iter().map(|job| job.now).min().unwrap_or(0);
    let mut insert = sqlx::QueryBuilder::<Db>::new("INSERT INTO used_ids (scope, id_hash, expires_at) ");
    insert.push_values(first.iter(), |mut row, ((scope, id_hash), &i)| {
        row.push_bind(*scope).push_bind(*id_hash).push_bind(batch[i].expires_at);
    });
    // A row whose time has passed may be taken again: whatever it guarded is refused as too old anyway.
    insert
        .push(
            " ON CONFLICT (scope, id_hash) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE used_ids.expires_at <= ",
        )
        .push_bind(now)
        .push(" RETURNING scope, id_hash");
    let mut tx = begin_write_on(pool).await?;
    // Committed without waiting for the WAL flush: see `take_once`.
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    let rows = insert.build().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let mut fresh = vec![false; batch.len()];
    for row in &rows {
        let scope: String = row.try_get("scope")?;
        let id_hash: Vec<u8> = row.try_get("id_hash")?;
        if let Some(&i) = first.get(&(scope.as_str(), id_hash.as_slice())) {
            fresh[i] = true;
        }
    }
    Ok(fresh)
}

async fn begin_write_on(pool: &PgPool) -> Result<sqlx::Transaction<'static, Db>> {
    Ok(pool.begin().await?)
}

/// What this node's two chain writers (audit appends, rotations) share: the turn that keeps a rotation out
/// of a usage pair, and when the audit writer may pair usage again. Every node appends, so each transaction
/// still locks and reads the head ([`append_chained`]); nothing of the chain is remembered between batches.
#[derive(Debug, Clone, Default)]
struct ChainCache {
    /// Held by a usage pair for its two transactions, and by the rotation writer for each of its own: the
    /// second transaction of a pair moves the head only if no other writer took it since the first
    /// committed, and this node's rotations would otherwise take it at every pair.
    turn: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Until when usage is written one transaction at a time, after a pair's second transaction lost the
    /// head to another writer (another node's, most likely): under such contention pairs only waste work.
    unpaired_until: Option<tokio::time::Instant>,
}

/// PostgreSQL writes two usage transactions at once: see [`audit_pair`].
const PAIRED_USAGE: bool = true;

/// How long usage goes unpaired after a pair's second transaction lost the head.
const UNPAIRED_AFTER_CONTENTION: Duration = Duration::from_secs(1);

/// Two batches of guards' usage in two overlapping transactions, on two connections, so that PostgreSQL
/// inserts them (each row into the table and its indexes, most of an event's cost) on two cores instead of
/// one. The first locks and reads the head as every append does; the second is numbered and hashed onto
/// the first's end and inserted meanwhile, and once the first has committed it moves the head from there,
/// if no other writer has taken the head since (`FOR UPDATE NOWAIT`: a writer that did would be waiting on
/// the second's rows, so waiting for it in turn could only deadlock). When the second cannot follow, it is
/// rolled back and written again on its own, and the chain is as if the pair had never been tried. The
/// chain stays one sequence of links: only where the work happens changes, not what `audit verify` checks.
async fn audit_pair(
    pool: &PgPool,
    cache: &mut ChainCache,
    first: &[Vec<Event>],
    second: &[Vec<Event>],
) -> (Result<Vec<()>>, Result<Vec<()>>) {
    if cache.unpaired_until.is_some_and(|until| tokio::time::Instant::now() < until) {
        return audit_in_turn(pool, cache, first, second).await;
    }
    let a: Vec<&Event> = first.iter().flatten().collect();
    let b: Vec<&Event> = second.iter().flatten().collect();
    let turn = std::sync::Arc::clone(&cache.turn);
    let held = turn.lock().await;
    let outcome = pair(pool, &a, &b).await;
    drop(held);
    match outcome {
        Ok(Paired::Both) => (Ok(vec![(); first.len()]), Ok(vec![(); second.len()])),
        Ok(Paired::FirstOnly) => {
            cache.unpaired_until = Some(tokio::time::Instant::now() + UNPAIRED_AFTER_CONTENTION);
            (Ok(vec![(); first.len()]), audit_batch(pool, cache, second).await)
        }
        Ok(Paired::SecondFailed(e)) => (Ok(vec![(); first.len()]), Err(e)),
        Err(e) => (Err(e), audit_batch(pool, cache, second).await),
    }
}

/// What became of a pair whose first transaction committed.
enum Paired {
    /// Both committed.
    Both,
    /// The second was rolled back before its commit, and is still to be written.
    FirstOnly,
    /// The second's commit failed: it is not retried, as it may have taken effect.
    SecondFailed(StoreError),
}

/// Runs a pair; `Err` if the first failed (the second then never commits).
async fn pair(pool: &PgPool, a: &[&Event], b: &[&Event]) -> Result<Paired> {
    let mut first = begin_write_on(pool).await?;
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *first).await?;
    let (seq, hash): (i64, Vec<u8>) =
        sqlx::query_as("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut *first)
            .await?;
    let head = (seq, ChainHash::from_slice(&hash).ok_or_else(|| corrupt("audit_head"))?);
    let (rows_a, middle) = chain_rows(head, a);
    let (rows_b, end) = chain_rows(middle, b);
    let commit_first = async move {
        insert_event_rows(&mut first, &rows_a).await?;
        if !move_head(&mut first, head.0, middle).await? {
            return Err(StoreError::Conflict("audit chain head"));
        }
        first.commit().await?;
        Ok(())
    };
    let insert_second = async {
        let mut second = begin_write_on(pool).await?;
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *second).await?;
        insert_event_rows(&mut second, &rows_b).await?;
        Ok::<_, StoreError>(second)
    };
    let (committed, inserted) = tokio::join!(commit_first, insert_second);
    // On any early return the second transaction is dropped, which rolls it back.
    committed?;
    let Ok(mut second) = inserted else { return Ok(Paired::FirstOnly) };
    let followed = async {
        sqlx::query("SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE NOWAIT").execute(&mut *second).await?;
        move_head(&mut second, middle.0, end).await
    };
    if !matches!(followed.await, Ok(true)) {
        return Ok(Paired::FirstOnly);
    }
    Ok(match second.commit().await {
        Ok(()) => Paired::Both,
        Err(e) => Paired::SecondFailed(e.into()),
    })
}

/// A batch of rotations as one statement (one round trip, atomic on its own): the jobs arrive as arrays; the
/// UPDATE is the compare-and-swap of every job at once (a token named by several jobs is updated once, with
/// one of their successors, and RETURNING says which); the INSERT adds exactly the winners' successors.
/// A job is `Rotated` if its (token, successor) pair won, and only the first such job in the batch.
async fn rotate_batch(pool: &PgPool, cache: &mut ChainCache, batch: &[RotationJob]) -> Result<Vec<Rotation>> {
    // Not while a usage pair is under way (see `ChainCache::turn`).
    let _turn = cache.turn.lock().await;
    let col = |f: fn(&RotationJob) -> Vec<u8>| batch.iter().map(f).collect::<Vec<_>>();
    let olds = col(|j| j.old.as_bytes().to_vec());
    let successors = col(|j| j.successor.hash.as_bytes().to_vec());
    let families: Vec<String> = batch.iter().map(|j| j.successor.family_id.clone()).collect();
    let generations: Vec<i64> = batch.iter().map(|j| j.successor.generation).collect();
    let scopes: Vec<String> = batch.iter().map(|j| j.successor.scope.clone()).collect();
    let created: Vec<i64> = batch.iter().map(|j| j.successor.created_at).collect();
    let expires: Vec<i64> = batch.iter().map(|j| j.successor.expires_at).collect();
    let nows: Vec<i64> = batch.iter().map(|j| j.now).collect();
    let mut tx = begin_write_on(pool).await?;
    let rows = sqlx::query(
        "WITH jobs AS ( \
           SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], \
             $7::bigint[], $8::bigint[]) AS j(old, succ, family_id, generation, scope, created_at, expires_at, now)), \
         parent AS ( \
           UPDATE refresh_tokens t SET rotated_at = j.now, successor = j.succ FROM jobs j \
           WHERE t.hash = j.old AND t.rotated_at IS NULL AND t.family_id = j.family_id AND EXISTS ( \
             SELECT 1 FROM refresh_families f WHERE f.id = j.family_id AND f.revoked_at IS NULL) \
           RETURNING t.hash AS old, t.successor AS succ), \
         inserted AS ( \
           INSERT INTO refresh_tokens (hash, family_id, generation, scope, created_at, expires_at, rotated_at, \
             successor) \
           SELECT DISTINCT ON (j.succ) j.succ, j.family_id, j.generation, j.scope, j.created_at, j.expires_at, \
             NULL::bigint, NULL::bytea \
           FROM parent p JOIN jobs j ON j.old = p.old AND j.succ = p.succ \
           RETURNING 1) \
         SELECT p.old, p.succ FROM parent p",
    )
    .bind(olds)
    .bind(successors)
    .bind(families)
    .bind(generations)
    .bind(scopes)
    .bind(created)
    .bind(expires)
    .bind(nows)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| conflict(e, "refresh token"))?;
    let mut winners: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(rows.len());
    for row in &rows {
        winners.push((row.try_get("old")?, row.try_get("succ")?));
    }
    let outcomes: Vec<Rotation> = batch
        .iter()
        .map(|job| {
            let pair = (job.old.as_bytes().to_vec(), job.successor.hash.as_bytes().to_vec());
            match winners.iter().position(|w| *w == pair) {
                Some(at) => {
                    winners.swap_remove(at);
                    Rotation::Rotated
                }
                None => Rotation::Lost,
            }
        })
        .collect();
    append_chained(&mut tx, &won_events(batch, &outcomes)).await?;
    tx.commit().await?;
    Ok(outcomes)
}

include!("sql_body.rs");

/// Inserts numbered, hashed events in one statement: each column is one array parameter, unnested, so a
/// batch of thousands of events costs PostgreSQL 18 parameters to parse and bind instead of 18 per row.
async fn insert_event_rows(tx: &mut sqlx::Transaction<'_, Db>, rows: &[ChainRow<'_>]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&Event) -> &Option<String>| -> Vec<Option<&str>> {
        rows.iter().map(|(_, e, _, _)| f(e).as_deref()).collect()
    };
    sqlx::query(concat!(
        "INSERT INTO events (id, ",
        event_cols!(),
        ", prev_hash, hash) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
         $13::text[], $14::text[], $15::text[], $16::text[], $17::bytea[], $18::bytea[])"
    ))
    .bind(rows.iter().map(|(seq, _, _, _)| *seq).collect::<Vec<i64>>())
    .bind(rows.iter().map(|(_, e, _, _)| e.at).collect::<Vec<i64>>())
    .bind(rows.iter().map(|(_, e, _, _)| e.kind.as_str()).collect::<Vec<&str>>())
    .bind(text(|e| &e.ip))
    .bind(text(|e| &e.user_agent))
    .bind(text(|e| &e.sub))
    .bind(text(|e| &e.sid))
    .bind(text(|e| &e.jti))
    .bind(text(|e| &e.client_id))
    .bind(text(|e| &e.audience))
    .bind(text(|e| &e.service))
    .bind(text(|e| &e.route))
    .bind(text(|e| &e.outcome))
    .bind(text(|e| &e.reason))
    .bind(text(|e| &e.actor))
    .bind(text(|e| &e.detail))
    .bind(rows.iter().map(|(_, _, prev, _)| prev.0.to_vec()).collect::<Vec<Vec<u8>>>())
    .bind(rows.iter().map(|(_, _, _, hash)| hash.0.to_vec()).collect::<Vec<Vec<u8>>>())
    .execute(&mut **tx)
    .await
    .map_err(|e| conflict(e, "audit chain head"))?;
    Ok(())
}
