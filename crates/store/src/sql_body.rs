// The one implementation of `Store`, compiled once per backend: `sqlite.rs` and `postgres.rs` each define
// `Db`, `WritePool`, `begin_write_on(&WritePool)`, `announcements()` (the listener behind `Store::changes`), `rotate_batch` (the one piece of SQL that differs: a
// batch of rotations' compare-and-swaps and successor inserts), `StoreImpl` (with `read()`, `write()`, `begin_write()`,
// `backend_name()`, a `rotations` and a `single_use` sender) and `MIGRATOR`, then `include!` this file. Both backends therefore run the very same SQL text; `$n` placeholders are understood
// by both. Nothing here may name a backend.

use async_trait::async_trait;
use sqlx::Row;
use tessera_core::{ChainHash, ClientKind, EventKind, GrantType, KeyState, RevocationKind, TokenHash};

use crate::model::{Alert, AlertOutcome, NewAlert, TotpFactor, WebauthnCredential};
use crate::model::{
    AuditQuery, AuditRecord, AuditState, AuthCode, Client, CodeUse, Event, Family, KeyRecord, LoginSession,
    NewRevocation, OriginRef, RefreshRecord, Resource, Revocation, Rotation, Time, TokenRef, User,
};
use crate::model::{Contained, Containment, Incident, IncidentAction, NewIncident};
use crate::{REVOCATION_HORIZON_SECS, SPENT_CODE_RETENTION_SECS, Store};
use tessera_core::mfa::MfaPolicy;
use tessera_core::throttle::Counter;

type DbRow = <Db as sqlx::Database>::Row;
type Tx = sqlx::Transaction<'static, Db>;

macro_rules! user_cols {
    () => {
        "id, username, password_hash, roles, disabled, created_at, password_changed_at, must_reset_password, step_up_after, email"
    };
}
macro_rules! client_cols {
    () => {
        "id, name, kind, secret_hash, redirect_uris, grant_types, audiences, scopes, access_ttl, \
         refresh_idle_ttl, refresh_absolute_ttl, first_party, disabled, created_at, require_dpop, jwks, exchange_audiences, serves, mfa"
    };
}
macro_rules! key_cols {
    () => {
        "kid, alg, state, public_jwk, private_sealed, created_at, activated_at, retired_at"
    };
}
macro_rules! code_cols {
    () => {
        "hash, client_id, user_id, redirect_uri, code_challenge, scope, audience, nonce, login_session, \
         auth_time, amr, created_at, expires_at, dpop_jkt"
    };
}
macro_rules! family_cols {
    () => {
        "f.id AS f_id, f.client_id AS f_client_id, f.user_id AS f_user_id, f.scope AS f_scope, \
         f.audience AS f_audience, f.auth_time AS f_auth_time, f.amr AS f_amr, \
         f.login_session AS f_login_session, f.code_hash AS f_code_hash, f.created_at AS f_created_at, \
         f.expires_at AS f_expires_at, f.revoked_at AS f_revoked_at, f.dpop_jkt AS f_dpop_jkt"
    };
}
macro_rules! revocation_cols {
    () => {
        "seq, kind, subject, not_before, created_at, expires_at, reason"
    };
}
macro_rules! alert_cols {
    () => {
        "id, sink, detection, payload, state, created_at, next_at, attempts, last_error, delivered_at"
    };
}
macro_rules! incident_cols {
    () => {
        "id, subject, user_id, sid, jti, client_id, reason, detection, state, opened_at, opened_by, \
         contained_at, closed_at, closed_by"
    };
}
macro_rules! event_cols {
    () => {
        "at, kind, ip, user_agent, sub, sid, jti, client_id, audience, service, route, outcome, reason, actor, detail"
    };
}

/// Inserts a key row; [`StoreError::Conflict`] if the kid exists.
async fn insert_key_row<'e>(executor: impl sqlx::Executor<'e, Database = Db>, k: &KeyRecord) -> Result<()> {
    sqlx::query(concat!(
        "INSERT INTO signing_keys (",
        key_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&k.kid)
    .bind(&k.alg)
    .bind(k.state.as_str())
    .bind(&k.public_jwk)
    .bind(&k.private_sealed)
    .bind(k.created_at)
    .bind(k.activated_at)
    .bind(k.retired_at)
    .execute(executor)
    .await
    .map_err(|e| conflict(e, "key"))?;
    Ok(())
}

/// Takes the key changes' lock: the current key's row (a write transaction on SQLite is exclusive anyway;
/// on PostgreSQL two nodes promoting or scheduling at once queue here, and the second then sees what the
/// first committed).
async fn lock_keys(tx: &mut Tx) -> Result<()> {
    sqlx::query("UPDATE signing_keys SET state = state WHERE state = 'current'").execute(&mut **tx).await?;
    Ok(())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn to_list(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

fn from_list(row: &DbRow, col: &str) -> Result<Vec<String>> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|_| corrupt(col))
}

fn parse_enum<T: std::str::FromStr>(text: &str, col: &str) -> Result<T> {
    text.parse().map_err(|_| corrupt(col))
}

fn hash_col(row: &DbRow, col: &str) -> Result<TokenHash> {
    let bytes: Vec<u8> = row.try_get(col)?;
    TokenHash::from_slice(&bytes).ok_or_else(|| corrupt(col))
}

fn opt_hash_col(row: &DbRow, col: &str) -> Result<Option<TokenHash>> {
    let bytes: Option<Vec<u8>> = row.try_get(col)?;
    bytes.map(|b| TokenHash::from_slice(&b).ok_or_else(|| corrupt(col))).transpose()
}

fn opt_hash(hash: Option<&TokenHash>) -> Option<Vec<u8>> {
    hash.map(|h| h.as_bytes().to_vec())
}

fn user_from(row: &DbRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        roles: from_list(row, "roles")?,
        disabled: row.try_get("disabled")?,
        created_at: row.try_get("created_at")?,
        password_changed_at: row.try_get("password_changed_at")?,
        must_reset_password: row.try_get("must_reset_password")?,
        step_up_after: row.try_get("step_up_after")?,
        email: row.try_get("email")?,
    })
}

fn alert_from(row: &DbRow) -> Result<Alert> {
    let attempts: i32 = row.try_get("attempts")?;
    Ok(Alert {
        id: row.try_get("id")?,
        sink: row.try_get("sink")?,
        detection: row.try_get("detection")?,
        payload: row.try_get("payload")?,
        state: row.try_get("state")?,
        created_at: row.try_get("created_at")?,
        next_at: row.try_get("next_at")?,
        attempts: i64::from(attempts),
        last_error: row.try_get("last_error")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

fn incident_from(row: &DbRow) -> Result<Incident> {
    Ok(Incident {
        id: row.try_get("id")?,
        subject: row.try_get("subject")?,
        user_id: row.try_get("user_id")?,
        sid: row.try_get("sid")?,
        jti: row.try_get("jti")?,
        client_id: row.try_get("client_id")?,
        reason: row.try_get("reason")?,
        detection: row.try_get("detection")?,
        state: row.try_get("state")?,
        opened_at: row.try_get("opened_at")?,
        opened_by: row.try_get("opened_by")?,
        contained_at: row.try_get("contained_at")?,
        closed_at: row.try_get("closed_at")?,
        closed_by: row.try_get("closed_by")?,
    })
}

fn incident_action_from(row: &DbRow) -> Result<IncidentAction> {
    Ok(IncidentAction {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
    })
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// How long a delivered or given-up alert is kept for `tessera alerts list`.
const ALERT_RETENTION_SECS: Time = 30 * 86_400;

fn client_from(row: &DbRow) -> Result<Client> {
    let kind: String = row.try_get("kind")?;
    let grants = from_list(row, "grant_types")?
        .iter()
        .map(|g| parse_enum::<GrantType>(g, "grant_types"))
        .collect::<Result<Vec<_>>>()?;
    Ok(Client {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind: parse_enum::<ClientKind>(&kind, "kind")?,
        secret_hash: opt_hash_col(row, "secret_hash")?,
        redirect_uris: from_list(row, "redirect_uris")?,
        grant_types: grants,
        audiences: from_list(row, "audiences")?,
        scopes: from_list(row, "scopes")?,
        access_ttl: row.try_get("access_ttl")?,
        refresh_idle_ttl: row.try_get("refresh_idle_ttl")?,
        refresh_absolute_ttl: row.try_get("refresh_absolute_ttl")?,
        first_party: row.try_get("first_party")?,
        disabled: row.try_get("disabled")?,
        created_at: row.try_get("created_at")?,
        require_dpop: row.try_get("require_dpop")?,
        jwks: row.try_get("jwks")?,
        exchange_audiences: from_list(row, "exchange_audiences")?,
        serves: from_list(row, "serves")?,
        mfa: {
            let mfa: String = row.try_get("mfa")?;
            MfaPolicy::parse(&mfa).ok_or_else(|| StoreError::Corrupt(format!("clients.mfa: {mfa}")))?
        },
    })
}

fn resource_from(row: &DbRow) -> Result<Resource> {
    Ok(Resource {
        audience: row.try_get("audience")?,
        scopes: from_list(row, "scopes")?,
        created_at: row.try_get("created_at")?,
    })
}

fn key_from(row: &DbRow) -> Result<KeyRecord> {
    let state: String = row.try_get("state")?;
    Ok(KeyRecord {
        kid: row.try_get("kid")?,
        alg: row.try_get("alg")?,
        state: parse_enum::<KeyState>(&state, "state")?,
        public_jwk: row.try_get("public_jwk")?,
        private_sealed: row.try_get("private_sealed")?,
        created_at: row.try_get("created_at")?,
        activated_at: row.try_get("activated_at")?,
        retired_at: row.try_get("retired_at")?,
    })
}

fn session_from(row: &DbRow) -> Result<LoginSession> {
    Ok(LoginSession {
        hash: hash_col(row, "hash")?,
        user_id: row.try_get("user_id")?,
        auth_time: row.try_get("auth_time")?,
        amr: from_list(row, "amr")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn code_from(row: &DbRow) -> Result<AuthCode> {
    Ok(AuthCode {
        hash: hash_col(row, "hash")?,
        client_id: row.try_get("client_id")?,
        user_id: row.try_get("user_id")?,
        redirect_uri: row.try_get("redirect_uri")?,
        code_challenge: row.try_get("code_challenge")?,
        scope: row.try_get("scope")?,
        audience: row.try_get("audience")?,
        nonce: row.try_get("nonce")?,
        login_session: opt_hash_col(row, "login_session")?,
        auth_time: row.try_get("auth_time")?,
        amr: from_list(row, "amr")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        dpop_jkt: row.try_get("dpop_jkt")?,
    })
}

fn family_from(row: &DbRow) -> Result<Family> {
    Ok(Family {
        id: row.try_get("f_id")?,
        client_id: row.try_get("f_client_id")?,
        user_id: row.try_get("f_user_id")?,
        scope: row.try_get("f_scope")?,
        audience: row.try_get("f_audience")?,
        auth_time: row.try_get("f_auth_time")?,
        amr: from_list(row, "f_amr")?,
        login_session: opt_hash_col(row, "f_login_session")?,
        code_hash: opt_hash_col(row, "f_code_hash")?,
        created_at: row.try_get("f_created_at")?,
        expires_at: row.try_get("f_expires_at")?,
        revoked_at: row.try_get("f_revoked_at")?,
        dpop_jkt: row.try_get("f_dpop_jkt")?,
    })
}

fn refresh_from(row: &DbRow) -> Result<RefreshRecord> {
    Ok(RefreshRecord {
        hash: hash_col(row, "hash")?,
        family_id: row.try_get("family_id")?,
        generation: row.try_get("generation")?,
        scope: row.try_get("scope")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        rotated_at: row.try_get("rotated_at")?,
        successor: opt_hash_col(row, "successor")?,
    })
}

fn revocation_from(row: &DbRow) -> Result<Revocation> {
    let kind: String = row.try_get("kind")?;
    Ok(Revocation {
        seq: row.try_get("seq")?,
        kind: parse_enum::<RevocationKind>(&kind, "kind")?,
        subject: row.try_get("subject")?,
        not_before: row.try_get("not_before")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        reason: row.try_get("reason")?,
    })
}

fn event_from(row: &DbRow) -> Result<Event> {
    Ok(Event {
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        sub: row.try_get("sub")?,
        sid: row.try_get("sid")?,
        jti: row.try_get("jti")?,
        client_id: row.try_get("client_id")?,
        audience: row.try_get("audience")?,
        service: row.try_get("service")?,
        route: row.try_get("route")?,
        outcome: row.try_get("outcome")?,
        reason: row.try_get("reason")?,
        actor: row.try_get("actor")?,
        detail: row.try_get("detail")?,
    })
}

fn chain_col(row: &DbRow, col: &str) -> Result<Option<ChainHash>> {
    let bytes: Option<Vec<u8>> = row.try_get(col)?;
    bytes.map(|b| ChainHash::from_slice(&b).ok_or_else(|| corrupt(col))).transpose()
}

fn audit_record_from(row: &DbRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: row.try_get("id")?,
        event: event_from(row)?,
        prev_hash: chain_col(row, "prev_hash")?,
        hash: chain_col(row, "hash")?,
    })
}

/// Where the chain ends: the last event's number and hash.
type ChainHead = (i64, ChainHash);

/// Hashes `events` onto `head` and inserts them, numbered from the head's number + 1, inside the caller's
/// transaction; returns the new head. Does not touch `audit_head`: the caller moves it. A head that is no
/// longer the chain's end shows up as a conflict on the first number.
async fn insert_chained(
    tx: &mut sqlx::Transaction<'_, Db>,
    head: ChainHead,
    events: &[&Event],
) -> Result<ChainHead> {
    let (rows, end) = chain_rows(head, events);
    insert_event_rows(tx, &rows).await?;
    Ok(end)
}

/// An event with its number and links, ready to insert.
type ChainRow<'a> = (i64, &'a Event, ChainHash, ChainHash);

/// Numbers and hashes `events` onto `head`; the rows and the new head.
fn chain_rows<'a>(head: ChainHead, events: &[&'a Event]) -> (Vec<ChainRow<'a>>, ChainHead) {
    let (mut seq, mut prev) = head;
    let mut rows = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let hash = e.chain_hash(seq, &prev);
        rows.push((seq, *e, prev, hash));
        prev = hash;
    }
    (rows, (seq, prev))
}

/// Moves the head from `from` to `to` if it is still at `from`; whether it was.
async fn move_head(tx: &mut sqlx::Transaction<'_, Db>, from: i64, to: ChainHead) -> Result<bool> {
    let moved = sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1 AND seq = $3")
        .bind(to.0)
        .bind(to.1.0.to_vec())
        .bind(from)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(moved == 1)
}

/// Appends `events` to the audit chain inside the caller's transaction, locking the head first (its row
/// lock, held to the commit, orders every writer on every node): for pruning, and PostgreSQL's writer.
async fn append_chained(tx: &mut sqlx::Transaction<'_, Db>, events: &[&Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    // A no-op update takes the row lock and reads the head in one statement.
    let (seq, hash): (i64, Vec<u8>) =
        sqlx::query_as("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut **tx)
            .await?;
    let head = (seq, ChainHash::from_slice(&hash).ok_or_else(|| corrupt("audit_head"))?);
    let end = insert_chained(tx, head, events).await?;
    if !move_head(tx, head.0, end).await? {
        return Err(StoreError::Conflict("audit chain head"));
    }
    Ok(())
}

/// The most appends (each one caller's events) committed in one transaction.
const MAX_AUDIT_BATCH: usize = 1024;

/// The most guards' usage events one audit transaction takes (or one guard's batch, if that is larger; the
/// server takes at most 1,000 per batch): what an append of any other kind may have to wait for.
const MAX_BULK_ROWS: usize = 1000;

/// The audit writer's two queues: every append but the guards' usage, and the guards' usage.
#[derive(Debug)]
struct AuditWriter {
    normal: tokio::sync::mpsc::Sender<Queued<Vec<Event>, ()>>,
    bulk: tokio::sync::mpsc::Sender<Queued<Vec<Event>, ()>>,
}

/// The audit writer: appends from every request of this node share one transaction and one commit. Its
/// state is the backend's [`ChainCache`], shared with the rotation writer. Guards' usage batches come on a
/// queue of their own and never share a transaction with other appends: a transaction takes either every
/// other append waiting, or (when none waits) up to [`MAX_BULK_ROWS`] events of usage. The event of a
/// detection's response, a revocation or a token's issue then waits for one short transaction of usage at
/// most, and commits in a small one of its own, not behind every guard's thousands of events (on a busy node
/// that wait was seconds).
fn spawn_audit_writer(pool: &WritePool, mut cache: ChainCache) -> AuditWriter {
    let (normal, mut normal_queue) =
        tokio::sync::mpsc::channel::<Queued<Vec<Event>, ()>>(4 * MAX_AUDIT_BATCH);
    let (bulk, mut bulk_queue) = tokio::sync::mpsc::channel::<Queued<Vec<Event>, ()>>(64);
    let pool = pool.clone();
    tokio::spawn(async move {
        loop {
            let (first, usage) = tokio::select! {
                biased;
                Some(queued) = normal_queue.recv() => (queued, false),
                Some(queued) = bulk_queue.recv() => (queued, true),
                else => break,
            };
            let mut batch = vec![first];
            let queue = if usage { &mut bulk_queue } else { &mut normal_queue };
            take_waiting(queue, &mut batch, if usage { MAX_BULK_ROWS } else { usize::MAX });
            // A second usage transaction beside the first, when the backend can overlap them and no other
            // append waits (that one goes first, as above).
            let mut second = Vec::new();
            if usage && PAIRED_USAGE && normal_queue.is_empty() {
                take_waiting(&mut bulk_queue, &mut second, MAX_BULK_ROWS);
            }
            let (work, replies): (Vec<Vec<Event>>, Vec<_>) =
                batch.into_iter().map(|q| (q.job, q.reply)).unzip();
            if second.is_empty() {
                answer(replies, audit_batch(&pool, &mut cache, &work).await);
            } else {
                let (next, next_replies): (Vec<Vec<Event>>, Vec<_>) =
                    second.into_iter().map(|q| (q.job, q.reply)).unzip();
                let (first, second) = audit_pair(&pool, &mut cache, &work, &next).await;
                answer(replies, first);
                answer(next_replies, second);
            }
        }
    });
    AuditWriter { normal, bulk }
}

/// Two batches of appends in two transactions, one after the other.
async fn audit_in_turn(
    pool: &WritePool,
    cache: &mut ChainCache,
    first: &[Vec<Event>],
    second: &[Vec<Event>],
) -> (Result<Vec<()>>, Result<Vec<()>>) {
    let first = audit_batch(pool, cache, first).await;
    (first, audit_batch(pool, cache, second).await)
}

/// Moves appends waiting on `queue` into `batch` while it holds fewer than [`MAX_AUDIT_BATCH`] appends and
/// `max_rows` events.
fn take_waiting(
    queue: &mut tokio::sync::mpsc::Receiver<Queued<Vec<Event>, ()>>,
    batch: &mut Vec<Queued<Vec<Event>, ()>>,
    max_rows: usize,
) {
    let mut rows: usize = batch.iter().map(|q| q.job.len()).sum();
    while batch.len() < MAX_AUDIT_BATCH && rows < max_rows {
        match queue.try_recv() {
            Ok(queued) => {
                rows += queued.job.len();
                batch.push(queued);
            }
            Err(_) => break,
        }
    }
}

/// Takes the next sequence number and inserts the entry, inside the caller's transaction. The counter row
/// stays locked until the transaction ends, so sequence order is commit order.
async fn insert_revocation(tx: &mut Tx, r: &NewRevocation, now: Time) -> Result<i64> {
    let seq: i64 =
        sqlx::query_scalar("UPDATE revocation_counter SET value = value + 1 WHERE id = 1 RETURNING value")
            .fetch_one(&mut **tx)
            .await?;
    sqlx::query(
        "INSERT INTO revocations (seq, kind, subject, not_before, created_at, expires_at, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(seq)
    .bind(r.kind.as_str())
    .bind(&r.subject)
    .bind(r.not_before)
    .bind(now)
    .bind(r.expires_at)
    .bind(&r.reason)
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}

/// Revokes one family inside the caller's transaction, with a session entry for its `sid`. `true` if it
/// was live.
async fn revoke_family_in(tx: &mut Tx, id: &str, reason: &str, now: Time) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE refresh_families SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if done == 0 {
        return Ok(false);
    }
    let entry = NewRevocation {
        kind: RevocationKind::Session,
        subject: id.to_owned(),
        not_before: None,
        expires_at: now + REVOCATION_HORIZON_SECS,
        reason: reason.to_owned(),
    };
    insert_revocation(tx, &entry, now).await?;
    Ok(true)
}

/// Which families [`revoke_families_where`] revokes.
#[derive(Clone, Copy)]
enum Filter<'a> {
    User(&'a str),
    Login(&'a TokenHash),
    Code(&'a TokenHash),
}

/// Revokes every live family of a user, a login session or a code, each with a session entry.
async fn revoke_families_where(tx: &mut Tx, filter: Filter<'_>, reason: &str, now: Time) -> Result<u64> {
    let query = match filter {
        Filter::User(id) => {
            sqlx::query_scalar("SELECT id FROM refresh_families WHERE user_id = $1 AND revoked_at IS NULL")
                .bind(id.to_owned())
        }
        Filter::Login(hash) => sqlx::query_scalar(
            "SELECT id FROM refresh_families WHERE login_session = $1 AND revoked_at IS NULL",
        )
        .bind(hash.as_bytes().to_vec()),
        Filter::Code(hash) => {
            sqlx::query_scalar("SELECT id FROM refresh_families WHERE code_hash = $1 AND revoked_at IS NULL")
                .bind(hash.as_bytes().to_vec())
        }
    };
    let ids: Vec<String> = query.fetch_all(&mut **tx).await?;
    let mut count = 0;
    for id in ids {
        if revoke_family_in(tx, &id, reason, now).await? {
            count += 1;
        }
    }
    Ok(count)
}

#[async_trait]
impl Store for StoreImpl {
    fn backend(&self) -> &'static str {
        self.backend_name()
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(self.write()).await?;
        Ok(())
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<crate::Change>> {
        self.announcements()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.read()).await?;
        Ok(())
    }

    async fn create_user(&self, user: &User) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(concat!(
            "INSERT INTO users (",
            user_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&user.id)
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(to_list(&user.roles))
        .bind(user.disabled)
        .bind(user.created_at)
        .bind(user.password_changed_at)
        .bind(user.must_reset_password)
        .bind(user.step_up_after)
        .bind(&user.email)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict(e, "user"))?;
        bump_changes(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.read())
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE username = $1"))
            .bind(username)
            .fetch_optional(self.read())
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users ORDER BY username"))
            .fetch_all(self.read())
            .await?;
        rows.iter().map(user_from).collect()
    }

    async fn set_user_disabled(&self, id: &str, disabled: bool) -> Result<bool> {
        let query = sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2").bind(disabled).bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn set_user_roles(&self, id: &str, roles: &[String]) -> Result<bool> {
        let query = sqlx::query("UPDATE users SET roles = $1 WHERE id = $2").bind(to_list(roles)).bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn set_password(&self, id: &str, password_hash: &str, now: Time) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE users SET password_hash = $1, password_changed_at = $2, must_reset_password = FALSE \
             WHERE id = $3",
        )
        .bind(password_hash)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(None);
        }
        let seq = revoke_user_in(&mut tx, id, "password_changed", now).await?;
        bump_changes(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(seq))
    }

    async fn set_must_reset_password(&self, id: &str, must: bool) -> Result<bool> {
        let query =
            sqlx::query("UPDATE users SET must_reset_password = $1 WHERE id = $2").bind(must).bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn require_step_up(&self, id: &str, now: Time) -> Result<bool> {
        let query = sqlx::query("UPDATE users SET step_up_after = $1 WHERE id = $2").bind(now).bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn set_user_email(&self, id: &str, email: Option<&str>) -> Result<bool> {
        let query = sqlx::query("UPDATE users SET email = $1 WHERE id = $2").bind(email).bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn create_password_reset(
        &self,
        hash: &TokenHash,
        user_id: &str,
        expires_at: Time,
        now: Time,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO password_resets (hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(hex(hash.as_bytes()))
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn password_reset(&self, hash: &TokenHash, now: Time) -> Result<Option<String>> {
        let user: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM password_resets WHERE hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(hex(hash.as_bytes()))
        .bind(now)
        .fetch_optional(self.read())
        .await?;
        Ok(user)
    }

    async fn use_password_reset(&self, hash: &TokenHash, now: Time) -> Result<Option<String>> {
        let mut tx = self.begin_write().await?;
        let user: Option<String> = sqlx::query_scalar(
            "UPDATE password_resets SET used_at = $2 WHERE hash = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING user_id",
        )
        .bind(hex(hash.as_bytes()))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(user) = &user {
            // One link at a time: a used link retires every other one the user was sent.
            sqlx::query("UPDATE password_resets SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
                .bind(user)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(user)
    }

    async fn totp_factor(&self, user_id: &str) -> Result<Option<TotpFactor>> {
        let row = sqlx::query(
            "SELECT secret_sealed, pending_sealed, last_step, confirmed_at FROM totp_factors WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.read())
        .await?;
        row.map(|r| -> Result<TotpFactor> {
            Ok(TotpFactor {
                secret_sealed: r.try_get("secret_sealed")?,
                pending_sealed: r.try_get("pending_sealed")?,
                last_step: r.try_get("last_step")?,
                confirmed_at: r.try_get("confirmed_at")?,
            })
        })
        .transpose()
    }

    async fn begin_totp(&self, user_id: &str, pending_sealed: &[u8], now: Time) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO totp_factors (user_id, pending_sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET pending_sealed = excluded.pending_sealed",
        )
        .bind(user_id)
        .bind(pending_sealed)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn confirm_totp(
        &self,
        user_id: &str,
        step: i64,
        recovery: &[TokenHash],
        now: Time,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE totp_factors SET secret_sealed = pending_sealed, pending_sealed = NULL, last_step = $2, \
             confirmed_at = $3 WHERE user_id = $1 AND pending_sealed IS NOT NULL",
        )
        .bind(user_id)
        .bind(step)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        put_recovery_codes(&mut tx, user_id, recovery, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn use_totp_step(&self, user_id: &str, step: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE totp_factors SET last_step = $2 WHERE user_id = $1 AND last_step < $2 \
             AND secret_sealed IS NOT NULL",
        )
        .bind(user_id)
        .bind(step)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn replace_recovery_codes(&self, user_id: &str, recovery: &[TokenHash], now: Time) -> Result<()> {
        let mut tx = self.begin_write().await?;
        put_recovery_codes(&mut tx, user_id, recovery, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn use_recovery_code(&self, user_id: &str, hash: &TokenHash, now: Time) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND hash = $2 AND used_at IS NULL",
        )
        .bind(user_id)
        .bind(hex(hash.as_bytes()))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn recovery_codes_left(&self, user_id: &str) -> Result<i64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL")
                .bind(user_id)
                .fetch_one(self.read())
                .await?;
        Ok(n)
    }

    async fn reset_mfa(&self, user_id: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        for sql in [
            "DELETE FROM totp_factors WHERE user_id = $1",
            "DELETE FROM webauthn_credentials WHERE user_id = $1",
            "DELETE FROM recovery_codes WHERE user_id = $1",
        ] {
            n += sqlx::query(sql).bind(user_id).execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn webauthn_credentials(&self, user_id: &str) -> Result<Vec<WebauthnCredential>> {
        let rows = sqlx::query(
            "SELECT id, user_id, name, credential, created_at, last_used_at FROM webauthn_credentials \
             WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(self.read())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WebauthnCredential {
                    id: r.try_get("id")?,
                    user_id: r.try_get("user_id")?,
                    name: r.try_get("name")?,
                    credential: r.try_get("credential")?,
                    created_at: r.try_get("created_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                })
            })
            .collect()
    }

    async fn add_webauthn_credential(&self, c: &WebauthnCredential) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO webauthn_credentials (id, user_id, name, credential, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&c.id)
        .bind(&c.user_id)
        .bind(&c.name)
        .bind(&c.credential)
        .bind(c.created_at)
        .bind(c.last_used_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict(e, "webauthn credential"))?;
        tx.commit().await?;
        Ok(())
    }

    async fn use_webauthn_credential(
        &self,
        user_id: &str,
        id: &str,
        credential: &str,
        now: Time,
    ) -> Result<bool> {
        let query = sqlx::query(
            "UPDATE webauthn_credentials SET credential = $3, last_used_at = $4 WHERE user_id = $1 AND id = $2",
        )
        .bind(user_id)
        .bind(id)
        .bind(credential)
        .bind(now);
        written_once(self.begin_write().await?, query).await
    }

    async fn remove_webauthn_credential(&self, user_id: &str, id: &str) -> Result<bool> {
        let query = sqlx::query("DELETE FROM webauthn_credentials WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id);
        written_once(self.begin_write().await?, query).await
    }

    async fn put_webauthn_ceremony(
        &self,
        handle: &TokenHash,
        user_id: &str,
        purpose: &str,
        state: &str,
        expires_at: Time,
        now: Time,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO webauthn_ceremonies (handle, user_id, purpose, state, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hex(handle.as_bytes()))
        .bind(user_id)
        .bind(purpose)
        .bind(state)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict(e, "webauthn ceremony"))?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_webauthn_ceremony(
        &self,
        handle: &TokenHash,
        now: Time,
    ) -> Result<Option<(String, String, String)>> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, String, String)> = sqlx::query_as(
            "DELETE FROM webauthn_ceremonies WHERE handle = $1 AND expires_at > $2 RETURNING user_id, purpose, state",
        )
        .bind(hex(handle.as_bytes()))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn set_client_mfa(&self, id: &str, mfa: MfaPolicy) -> Result<bool> {
        let query = sqlx::query("UPDATE clients SET mfa = $1 WHERE id = $2").bind(mfa.as_str()).bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn create_client(&self, c: &Client) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let grants: Vec<String> = c.grant_types.iter().map(|g| g.as_str().to_owned()).collect();
        sqlx::query(concat!(
            "INSERT INTO clients (",
            client_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        ))
        .bind(&c.id)
        .bind(&c.name)
        .bind(c.kind.as_str())
        .bind(opt_hash(c.secret_hash.as_ref()))
        .bind(to_list(&c.redirect_uris))
        .bind(to_list(&grants))
        .bind(to_list(&c.audiences))
        .bind(to_list(&c.scopes))
        .bind(c.access_ttl)
        .bind(c.refresh_idle_ttl)
        .bind(c.refresh_absolute_ttl)
        .bind(c.first_party)
        .bind(c.disabled)
        .bind(c.created_at)
        .bind(c.require_dpop)
        .bind(&c.jwks)
        .bind(to_list(&c.exchange_audiences))
        .bind(to_list(&c.serves))
        .bind(c.mfa.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict(e, "client"))?;
        bump_changes(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn client(&self, id: &str) -> Result<Option<Client>> {
        let row = sqlx::query(concat!("SELECT ", client_cols!(), " FROM clients WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.read())
            .await?;
        row.as_ref().map(client_from).transpose()
    }

    async fn list_clients(&self) -> Result<Vec<Client>> {
        let rows = sqlx::query(concat!("SELECT ", client_cols!(), " FROM clients ORDER BY id"))
            .fetch_all(self.read())
            .await?;
        rows.iter().map(client_from).collect()
    }

    async fn set_client_secret(&self, id: &str, secret_hash: Option<&TokenHash>) -> Result<bool> {
        let query =
            sqlx::query("UPDATE clients SET secret_hash = $1 WHERE id = $2 AND kind = 'confidential'")
                .bind(opt_hash(secret_hash))
                .bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn set_client_jwks(&self, id: &str, jwks: Option<&str>) -> Result<bool> {
        let query = sqlx::query("UPDATE clients SET jwks = $1 WHERE id = $2 AND kind = 'confidential'")
            .bind(jwks)
            .bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn set_client_serves(&self, id: &str, serves: &[String]) -> Result<bool> {
        let query = sqlx::query("UPDATE clients SET serves = $1 WHERE id = $2 AND kind = 'confidential'")
            .bind(to_list(serves))
            .bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn set_client_disabled(&self, id: &str, disabled: bool) -> Result<bool> {
        let query = sqlx::query("UPDATE clients SET disabled = $1 WHERE id = $2").bind(disabled).bind(id);
        update_counted(self.begin_write().await?, query).await
    }

    async fn create_resource(&self, r: &Resource) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO resources (audience, scopes, created_at) VALUES ($1, $2, $3)")
            .bind(&r.audience)
            .bind(to_list(&r.scopes))
            .bind(r.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict(e, "resource"))?;
        bump_changes(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn resource(&self, audience: &str) -> Result<Option<Resource>> {
        let row = sqlx::query("SELECT audience, scopes, created_at FROM resources WHERE audience = $1")
            .bind(audience)
            .fetch_optional(self.read())
            .await?;
        row.as_ref().map(resource_from).transpose()
    }

    async fn list_resources(&self) -> Result<Vec<Resource>> {
        let rows = sqlx::query("SELECT audience, scopes, created_at FROM resources ORDER BY audience")
            .fetch_all(self.read())
            .await?;
        rows.iter().map(resource_from).collect()
    }

    async fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        insert_key_row(self.write(), k).await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        let rows =
            sqlx::query(concat!("SELECT ", key_cols!(), " FROM signing_keys ORDER BY created_at, kid"))
                .fetch_all(self.read())
                .await?;
        rows.iter().map(key_from).collect()
    }

    async fn activate_key(&self, kid: &str, now: Time) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        lock_keys(&mut tx).await?;
        let target: Option<String> = sqlx::query_scalar("SELECT state FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .fetch_optional(&mut *tx)
            .await?;
        match target.as_deref() {
            None | Some("revoked") => return Ok(false),
            Some("current") => return Ok(true),
            Some(_) => {}
        }
        sqlx::query("UPDATE signing_keys SET state = 'retired', retired_at = $1 WHERE state = 'current'")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE signing_keys SET state = 'current', activated_at = $1, retired_at = NULL WHERE kid = $2",
        )
        .bind(now)
        .bind(kid)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn schedule_key(&self, k: &KeyRecord) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        lock_keys(&mut tx).await?;
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM signing_keys WHERE state = 'next'")
            .fetch_one(&mut *tx)
            .await?;
        if waiting > 0 {
            return Ok(false);
        }
        insert_key_row(&mut *tx, k).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_key_state(&self, kid: &str, state: KeyState, now: Time) -> Result<bool> {
        let retired_at = matches!(state, KeyState::Retired | KeyState::Revoked).then_some(now);
        let n = sqlx::query(
            "UPDATE signing_keys SET state = $1, retired_at = COALESCE($2, retired_at) WHERE kid = $3",
        )
        .bind(state.as_str())
        .bind(retired_at)
        .bind(kid)
        .execute(self.write())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn delete_key(&self, kid: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .execute(self.write())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn create_login_session(&self, s: &LoginSession) -> Result<()> {
        sqlx::query(
            "INSERT INTO login_sessions (hash, user_id, auth_time, amr, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(s.hash.as_bytes())
        .bind(&s.user_id)
        .bind(s.auth_time)
        .bind(to_list(&s.amr))
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.revoked_at)
        .execute(self.write())
        .await
        .map_err(|e| conflict(e, "login session"))?;
        Ok(())
    }

    async fn login_session(&self, hash: &TokenHash) -> Result<Option<LoginSession>> {
        let row = sqlx::query(
            "SELECT hash, user_id, auth_time, amr, created_at, expires_at, revoked_at FROM login_sessions \
             WHERE hash = $1",
        )
        .bind(hash.as_bytes())
        .fetch_optional(self.read())
        .await?;
        row.as_ref().map(session_from).transpose()
    }

    async fn end_login_session(&self, hash: &TokenHash, reason: &str, now: Time) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE login_sessions SET revoked_at = $1 WHERE hash = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(hash.as_bytes())
            .execute(&mut *tx)
            .await?;
        let n = revoke_families_where(&mut tx, Filter::Login(hash), reason, now).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn insert_code(&self, c: &AuthCode) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO auth_codes (",
            code_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(c.hash.as_bytes())
        .bind(&c.client_id)
        .bind(&c.user_id)
        .bind(&c.redirect_uri)
        .bind(&c.code_challenge)
        .bind(&c.scope)
        .bind(&c.audience)
        .bind(&c.nonce)
        .bind(opt_hash(c.login_session.as_ref()))
        .bind(c.auth_time)
        .bind(to_list(&c.amr))
        .bind(c.created_at)
        .bind(c.expires_at)
        .bind(&c.dpop_jkt)
        .execute(self.write())
        .await
        .map_err(|e| conflict(e, "code"))?;
        Ok(())
    }

    async fn redeem_code(&self, hash: &TokenHash, now: Time) -> Result<CodeUse> {
        let fresh = sqlx::query(concat!(
            "UPDATE auth_codes SET used_at = $1 WHERE hash = $2 AND used_at IS NULL RETURNING ",
            code_cols!()
        ))
        .bind(now)
        .bind(hash.as_bytes())
        .fetch_optional(self.write())
        .await?;
        if let Some(row) = fresh {
            return Ok(CodeUse::Fresh(code_from(&row)?));
        }
        let spent = sqlx::query(concat!(
            "UPDATE auth_codes SET replayed_at = COALESCE(replayed_at, $1) WHERE hash = $2 RETURNING ",
            code_cols!()
        ))
        .bind(now)
        .bind(hash.as_bytes())
        .fetch_optional(self.write())
        .await?;
        Ok(match spent {
            Some(row) => CodeUse::Replayed(code_from(&row)?),
            None => CodeUse::Unknown,
        })
    }

    async fn create_family(&self, f: &Family, first: Option<&RefreshRecord>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if let Some(code) = &f.code_hash {
            // Lock the code's row for this transaction: a replay waits for this family to commit (and then
            // revokes it), or has already marked the code and this family is refused.
            let replayed: Option<Option<i64>> = sqlx::query_scalar(
                "UPDATE auth_codes SET used_at = used_at WHERE hash = $1 RETURNING replayed_at",
            )
            .bind(code.as_bytes())
            .fetch_optional(&mut *tx)
            .await?;
            if matches!(replayed, Some(Some(_))) {
                return Err(StoreError::Conflict("replayed code"));
            }
        }
        sqlx::query(
            "INSERT INTO refresh_families (id, client_id, user_id, scope, audience, auth_time, amr, \
             login_session, code_hash, created_at, expires_at, revoked_at, dpop_jkt) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&f.id)
        .bind(&f.client_id)
        .bind(&f.user_id)
        .bind(&f.scope)
        .bind(&f.audience)
        .bind(f.auth_time)
        .bind(to_list(&f.amr))
        .bind(opt_hash(f.login_session.as_ref()))
        .bind(opt_hash(f.code_hash.as_ref()))
        .bind(f.created_at)
        .bind(f.expires_at)
        .bind(f.revoked_at)
        .bind(&f.dpop_jkt)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict(e, "family"))?;
        if let Some(first) = first {
            insert_refresh(&mut tx, first).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn family(&self, id: &str) -> Result<Option<Family>> {
        let row = sqlx::query(concat!("SELECT ", family_cols!(), " FROM refresh_families f WHERE f.id = $1"))
            .bind(id)
            .fetch_optional(self.read())
            .await?;
        row.as_ref().map(family_from).transpose()
    }

    async fn refresh_token(&self, hash: &TokenHash) -> Result<Option<(RefreshRecord, Family)>> {
        let row = sqlx::query(concat!(
            "SELECT t.hash, t.family_id, t.generation, t.scope, t.created_at, t.expires_at, t.rotated_at, \
             t.successor, ",
            family_cols!(),
            " FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id WHERE t.hash = $1"
        ))
        .bind(hash.as_bytes())
        .fetch_optional(self.read())
        .await?;
        match row {
            Some(row) => Ok(Some((refresh_from(&row)?, family_from(&row)?))),
            None => Ok(None),
        }
    }

    async fn rotate_refresh(
        &self,
        old: &TokenHash,
        successor: &RefreshRecord,
        event: Option<&Event>,
        now: Time,
    ) -> Result<Rotation> {
        let job = RotationJob { old: *old, successor: successor.clone(), event: event.cloned(), now };
        enqueue(&self.rotations, job, "rotation").await
    }

    async fn bind_family_key(&self, id: &str, jkt: &str) -> Result<Option<String>> {
        sqlx::query("UPDATE refresh_families SET dpop_jkt = $1 WHERE id = $2 AND dpop_jkt IS NULL")
            .bind(jkt)
            .bind(id)
            .execute(self.write())
            .await?;
        let bound: Option<Option<String>> =
            sqlx::query_scalar("SELECT dpop_jkt FROM refresh_families WHERE id = $1")
                .bind(id)
                .fetch_optional(self.write())
                .await?;
        Ok(bound.flatten())
    }

    async fn revoke_family(&self, id: &str, reason: &str, now: Time) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = revoke_family_in(&mut tx, id, reason, now).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn revoke_code_families(&self, code: &TokenHash, reason: &str, now: Time) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let n = revoke_families_where(&mut tx, Filter::Code(code), reason, now).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn revoke(&self, r: &NewRevocation, now: Time) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let seq = insert_revocation(&mut tx, r, now).await?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn revoke_user(&self, user_id: &str, reason: &str, force_reset: bool, now: Time) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let seq = revoke_user_in(&mut tx, user_id, reason, now).await?;
        if force_reset {
            sqlx::query("UPDATE users SET must_reset_password = TRUE WHERE id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            bump_changes(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(seq)
    }

    async fn revoke_client(&self, client_id: &str, reason: &str, now: Time) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1, revoke_reason = $2 \
             WHERE client_id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
        let entry = NewRevocation {
            kind: RevocationKind::Client,
            subject: client_id.to_owned(),
            not_before: Some(now),
            expires_at: now + REVOCATION_HORIZON_SECS,
            reason: reason.to_owned(),
        };
        let seq = insert_revocation(&mut tx, &entry, now).await?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn revocations_after(&self, after: i64, limit: i64) -> Result<Vec<Revocation>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            revocation_cols!(),
            " FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(self.read())
        .await?;
        rows.iter().map(revocation_from).collect()
    }

    async fn live_revocations(&self, now: Time) -> Result<Vec<Revocation>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            revocation_cols!(),
            " FROM revocations WHERE expires_at > $1 ORDER BY seq"
        ))
        .bind(now)
        .fetch_all(self.read())
        .await?;
        rows.iter().map(revocation_from).collect()
    }

    async fn change_seq(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT value FROM change_counter WHERE id = 1").fetch_one(self.read()).await?)
    }

    async fn revocation_seq(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT value FROM revocation_counter WHERE id = 1")
            .fetch_one(self.read())
            .await?)
    }

    async fn is_revoked(&self, t: TokenRef<'_>, now: Time) -> Result<bool> {
        let mut q = sqlx::QueryBuilder::<Db>::new("SELECT seq FROM revocations WHERE expires_at > ");
        q.push_bind(now);
        q.push(" AND ((kind = 'session' AND subject = ").push_bind(t.sid.unwrap_or(""));
        q.push(") OR (kind = 'user' AND subject = ").push_bind(t.sub);
        q.push(" AND ").push_bind(t.iat).push(" <= not_before)");
        // The token's own jti, client and key, then those of every token it was exchanged from (which share
        // its sub and sid): one statement, one round trip, however long the chain.
        let own = OriginRef { jti: t.jti, client_id: t.client_id, kid: t.kid, iat: t.iat };
        for o in std::iter::once(&own).chain(t.origin) {
            q.push(" OR (kind = 'token' AND subject = ").push_bind(o.jti);
            q.push(") OR (kind = 'client' AND subject = ").push_bind(o.client_id);
            q.push(" AND ").push_bind(o.iat).push(" <= not_before)");
            q.push(" OR (kind = 'key' AND subject = ").push_bind(o.kid).push(")");
        }
        q.push(") LIMIT 1");
        let hit: Option<i64> = q.build_query_scalar().fetch_optional(self.read()).await?;
        Ok(hit.is_some())
    }

    async fn prune(&self, now: Time) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        n += sqlx::query("DELETE FROM revocations WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM auth_codes WHERE expires_at <= $1")
            .bind(now - SPENT_CODE_RETENTION_SECS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM used_ids WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM password_resets WHERE expires_at <= $1")
            .bind(now - SPENT_CODE_RETENTION_SECS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM login_throttle WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM detections WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM alert_outbox WHERE state <> 'pending' AND created_at <= $1")
            .bind(now - ALERT_RETENTION_SECS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM login_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let horizon = now - REVOCATION_HORIZON_SECS;
        n += sqlx::query(
            "DELETE FROM refresh_tokens WHERE family_id IN (SELECT id FROM refresh_families WHERE expires_at <= $1)",
        )
        .bind(horizon)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        n += sqlx::query("DELETE FROM refresh_families WHERE expires_at <= $1")
            .bind(horizon)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn use_once(&self, scope: &str, id_hash: &TokenHash, expires_at: Time, now: Time) -> Result<bool> {
        self.take_once(OnceJob { scope: scope.to_owned(), id_hash: *id_hash, expires_at, now }).await
    }

    async fn throttle(&self, key: &str) -> Result<Option<(Counter, i64)>> {
        let row = sqlx::query(
            "SELECT failures, next_at, locked_until, last_at, version FROM login_throttle WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(self.read())
        .await?;
        row.map(|r| -> Result<(Counter, i64)> {
            let failures: i64 = r.try_get("failures")?;
            let counter = Counter {
                failures: u32::try_from(failures)
                    .map_err(|_| StoreError::Corrupt("throttle failures".into()))?,
                next_at: r.try_get("next_at")?,
                locked_until: r.try_get("locked_until")?,
                last_at: r.try_get("last_at")?,
            };
            Ok((counter, r.try_get("version")?))
        })
        .transpose()
    }

    async fn swap_throttle(
        &self,
        key: &str,
        version: Option<i64>,
        new: Option<(&Counter, Time)>,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let query = match (version, new) {
            (None, None) => return Ok(true),
            (None, Some((c, expires_at))) => sqlx::query(
                "INSERT INTO login_throttle (key, failures, next_at, locked_until, last_at, expires_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, 1) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(i64::from(c.failures))
            .bind(c.next_at)
            .bind(c.locked_until)
            .bind(c.last_at)
            .bind(expires_at),
            (Some(v), Some((c, expires_at))) => sqlx::query(
                "UPDATE login_throttle SET failures = $2, next_at = $3, locked_until = $4, last_at = $5, \
                 expires_at = $6, version = version + 1 WHERE key = $1 AND version = $7",
            )
            .bind(key)
            .bind(i64::from(c.failures))
            .bind(c.next_at)
            .bind(c.locked_until)
            .bind(c.last_at)
            .bind(expires_at)
            .bind(v),
            (Some(v), None) => {
                sqlx::query("DELETE FROM login_throttle WHERE key = $1 AND version = $2").bind(key).bind(v)
            }
        };
        let n = query.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn raise_detection(
        &self,
        key: &TokenHash,
        rule: &str,
        expires_at: Time,
        alerts: &[NewAlert],
        now: Time,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let claimed = sqlx::query(
            "INSERT INTO detections (key_hash, rule, raised_at, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key_hash) DO UPDATE SET rule = excluded.rule, raised_at = excluded.raised_at, \
             expires_at = excluded.expires_at WHERE detections.expires_at <= $3",
        )
        .bind(hex(key.as_bytes()))
        .bind(rule)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            return Ok(false);
        }
        for a in alerts {
            sqlx::query(
                "INSERT INTO alert_outbox (id, sink, detection, payload, state, created_at, next_at, attempts) \
                 VALUES ($1, $2, $3, $4, 'pending', $5, $6, 0)",
            )
            .bind(&a.id)
            .bind(&a.sink)
            .bind(&a.detection)
            .bind(&a.payload)
            .bind(now)
            .bind(a.next_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn update_alert(&self, id: &str, payload: &str, next_at: Time) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE alert_outbox SET payload = $1, next_at = $2 \
             WHERE id = $3 AND state = 'pending' AND attempts = 0",
        )
        .bind(payload)
        .bind(next_at)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn take_alerts(&self, now: Time, lease_until: Time, limit: i64) -> Result<Vec<Alert>> {
        let mut tx = self.begin_write().await?;
        // Re-checked in the outer WHERE: on PostgreSQL a row another node leased meanwhile is skipped once
        // its lock is released (READ COMMITTED re-evaluates the condition on the updated row).
        let rows = sqlx::query(concat!(
            "UPDATE alert_outbox SET next_at = $1, attempts = attempts + 1 \
             WHERE state = 'pending' AND next_at <= $2 AND id IN (SELECT id FROM alert_outbox \
             WHERE state = 'pending' AND next_at <= $2 ORDER BY next_at, id LIMIT $3) RETURNING ",
            alert_cols!()
        ))
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut alerts = rows.iter().map(alert_from).collect::<Result<Vec<_>>>()?;
        alerts.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(alerts)
    }

    async fn finish_alert(&self, id: &str, outcome: &AlertOutcome, now: Time) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let query = match outcome {
            AlertOutcome::Delivered => sqlx::query(
                "UPDATE alert_outbox SET state = 'delivered', delivered_at = $1, last_error = NULL \
                 WHERE id = $2 AND state = 'pending'",
            )
            .bind(now)
            .bind(id),
            AlertOutcome::Retry { error, next_at } => sqlx::query(
                "UPDATE alert_outbox SET next_at = $1, last_error = $2 WHERE id = $3 AND state = 'pending'",
            )
            .bind(*next_at)
            .bind(error)
            .bind(id),
            AlertOutcome::Failed { error } => sqlx::query(
                "UPDATE alert_outbox SET state = 'failed', last_error = $1 WHERE id = $2 AND state = 'pending'",
            )
            .bind(error)
            .bind(id),
        };
        query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_alerts(&self, state: Option<&str>, limit: i64) -> Result<Vec<Alert>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            alert_cols!(),
            " FROM alert_outbox WHERE ($1 IS NULL OR state = $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(state)
        .bind(limit)
        .fetch_all(self.read())
        .await?;
        rows.iter().map(alert_from).collect()
    }

    async fn pending_alerts(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM alert_outbox WHERE state = 'pending'")
            .fetch_one(self.read())
            .await?)
    }

    async fn append_event(&self, e: &Event) -> Result<()> {
        self.append_events(std::slice::from_ref(e)).await
    }

    async fn append_events(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        enqueue(&self.audit.normal, events.to_vec(), "audit").await
    }

    async fn append_usage(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        enqueue(&self.audit.bulk, events.to_vec(), "audit").await
    }

    async fn recent_events(&self, kind: Option<&str>, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_cols!(),
            " FROM events WHERE ($1 IS NULL OR kind = $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(kind)
        .bind(limit)
        .fetch_all(self.read())
        .await?;
        rows.iter().map(event_from).collect()
    }

    async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut sql = sqlx::QueryBuilder::<Db>::new(concat!(
            "SELECT id, ",
            event_cols!(),
            ", prev_hash, hash FROM events WHERE id > "
        ));
        sql.push_bind(q.after_seq);
        let exact =
            [("sub", &q.sub), ("sid", &q.sid), ("jti", &q.jti), ("client_id", &q.client_id), ("ip", &q.ip)];
        for (col, value) in exact {
            if let Some(v) = value {
                sql.push(format_args!(" AND {col} = ")).push_bind(v.as_str());
            }
        }
        if !q.kinds.is_empty() {
            sql.push(" AND kind IN (");
            let mut kinds = sql.separated(", ");
            for k in &q.kinds {
                kinds.push_bind(k.as_str());
            }
            sql.push(")");
        }
        if let Some(since) = q.since {
            sql.push(" AND at >= ").push_bind(since);
        }
        if let Some(until) = q.until {
            sql.push(" AND at < ").push_bind(until);
        }
        sql.push(if q.newest { " ORDER BY id DESC LIMIT " } else { " ORDER BY id LIMIT " })
            .push_bind(q.limit);
        let rows = sql.build().fetch_all(self.read()).await?;
        let mut records = rows.iter().map(audit_record_from).collect::<Result<Vec<_>>>()?;
        if q.newest {
            records.reverse();
        }
        Ok(records)
    }

    async fn audit_state(&self) -> Result<AuditState> {
        audit_state_in(self.read()).await
    }

    async fn prune_audit(&self, before: Time, max: i64, now: Time) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        // The head's row lock first: a concurrent prune on another node waits here, then sees this one's
        // checkpoint.
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1").execute(&mut *tx).await?;
        let state = audit_state_in(&mut *tx).await?;
        // The prefix of the chain written before `before`: up to the first younger event.
        let first_kept: Option<i64> =
            sqlx::query_scalar("SELECT id FROM events WHERE id > $1 AND at >= $2 ORDER BY id LIMIT 1")
                .bind(state.checkpoint_seq)
                .bind(before)
                .fetch_optional(&mut *tx)
                .await?;
        let through = first_kept.map_or(state.head_seq, |id| id - 1).min(state.checkpoint_seq + max);
        if through <= state.checkpoint_seq {
            return Ok(0);
        }
        let hash: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM events WHERE id = $1")
            .bind(through)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
        let hash = hash.and_then(|h| ChainHash::from_slice(&h)).ok_or_else(|| corrupt("events.hash"))?;
        sqlx::query("INSERT INTO audit_checkpoints (through_seq, hash, created_at, reason) VALUES ($1, $2, $3, 'retention')")
            .bind(through)
            .bind(hash.0.to_vec())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM events WHERE id <= $1")
            .bind(through)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let detail = serde_json::json!({
            "through_seq": through,
            "through_hash": hash.hex(),
            "removed": removed,
            "before": before,
        });
        let event = Event {
            reason: Some("retention".into()),
            detail: Some(detail.to_string()),
            ..Event::new(EventKind::AuditPruned, now)
        };
        append_chained(&mut tx, &[&event]).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn open_incident(&self, new: &NewIncident, now: Time) -> Result<(Incident, bool)> {
        let mut tx = self.begin_write().await?;
        // The live one first: an insert that conflicts still spends a number, and responders read the
        // numbers as a sequence. The insert's conflict clause covers a race with another node.
        let live = sqlx::query(concat!(
            "SELECT ",
            incident_cols!(),
            " FROM incidents WHERE subject = $1 AND closed_at IS NULL"
        ))
        .bind(&new.subject)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = live {
            let incident = incident_from(&row)?;
            tx.commit().await?;
            return Ok((incident, false));
        }
        let opened: Option<i64> = sqlx::query_scalar(
            "INSERT INTO incidents (subject, user_id, sid, jti, client_id, reason, detection, state, opened_at, \
             opened_by) VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9) ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(&new.subject)
        .bind(&new.user_id)
        .bind(&new.sid)
        .bind(&new.jti)
        .bind(&new.client_id)
        .bind(&new.reason)
        .bind(&new.detection)
        .bind(now)
        .bind(&new.opened_by)
        .fetch_optional(&mut *tx)
        .await?;
        let row = match opened {
            Some(id) => {
                sqlx::query(concat!("SELECT ", incident_cols!(), " FROM incidents WHERE id = $1"))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    incident_cols!(),
                    " FROM incidents WHERE subject = $1 AND closed_at IS NULL"
                ))
                .bind(&new.subject)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let incident = incident_from(&row)?;
        tx.commit().await?;
        Ok((incident, opened.is_some()))
    }

    async fn incident(&self, id: i64) -> Result<Option<Incident>> {
        let row = sqlx::query(concat!("SELECT ", incident_cols!(), " FROM incidents WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.read())
            .await?;
        row.as_ref().map(incident_from).transpose()
    }

    async fn list_incidents(&self, state: Option<&str>, limit: i64) -> Result<Vec<Incident>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            incident_cols!(),
            " FROM incidents WHERE ($1 IS NULL OR state = $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(state)
        .bind(limit)
        .fetch_all(self.read())
        .await?;
        rows.iter().map(incident_from).collect()
    }

    async fn incident_actions(&self, id: i64) -> Result<Vec<IncidentAction>> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, target, outcome FROM incident_actions WHERE incident_id = $1 \
             ORDER BY seq",
        )
        .bind(id)
        .fetch_all(self.read())
        .await?;
        rows.iter().map(incident_action_from).collect()
    }

    async fn record_incident_action(
        &self,
        id: i64,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        now: Time,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let found = sqlx::query("UPDATE incidents SET state = state WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if found == 0 {
            return Ok(false);
        }
        let a = IncidentAction {
            seq: 0,
            at: now,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
        };
        add_incident_action(&mut tx, id, &a).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn contain_incident(&self, id: i64, how: &Containment, now: Time) -> Result<Option<Contained>> {
        let mut tx = self.begin_write().await?;
        if !lock_live_incident(&mut tx, id).await? {
            return Ok(None);
        }
        let before = incident_in(&mut tx, id).await?;
        let done: Vec<IncidentAction> = sqlx::query(
            "SELECT seq, at, actor, action, target, outcome FROM incident_actions WHERE incident_id = $1 \
             ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(incident_action_from)
        .collect::<Result<_>>()?;
        let mut steps: Vec<(&str, String)> = Vec::new();
        if let Some(user) = &before.user_id {
            let target = format!("user:{user}");
            for action in ["revoke_sessions", "revoke_user", "force_password_reset"] {
                steps.push((action, target.clone()));
            }
            if how.reset_mfa {
                steps.push(("reset_mfa", target));
            }
        }
        if let Some((client, _)) = &how.client {
            steps.push(("revoke_client", format!("client:{client}")));
            steps.push(("rotate_client_secret", format!("client:{client}")));
        }
        for (source, _, _) in &how.block {
            steps.push(("block_source", format!("ip:{source}")));
        }
        let reason = format!("incident_{id}");
        let mut taken = Vec::new();
        let mut already = Vec::new();
        let mut events = Vec::new();
        let mut revocation_seq = 0;
        for (action, target) in steps {
            if let Some(prior) = done.iter().find(|a| a.action == action && a.target == target) {
                already.push(prior.clone());
                continue;
            }
            let (outcome, seq) = contain_step(&mut tx, action, &target, how, &reason, now).await?;
            revocation_seq = revocation_seq.max(seq);
            let mut a = IncidentAction {
                seq: 0,
                at: now,
                actor: how.actor.clone(),
                action: action.to_owned(),
                target: target.clone(),
                outcome,
            };
            a.seq = add_incident_action(&mut tx, id, &a).await?;
            let (kind, subject) = target.split_once(':').unwrap_or(("", &target));
            let detail = serde_json::json!({ "incident": id, "target": target, "result": a.outcome });
            events.push(Event {
                reason: Some(action.to_owned()),
                outcome: Some("success".to_owned()),
                actor: Some(how.actor.clone()),
                sub: before.user_id.clone(),
                client_id: (kind == "client").then(|| subject.to_owned()),
                ip: (kind == "ip").then(|| subject.to_owned()),
                detail: Some(detail.to_string()),
                ..Event::new(EventKind::AdminAction, now)
            });
            taken.push(a);
        }
        sqlx::query(
            "UPDATE incidents SET state = 'contained', contained_at = COALESCE(contained_at, $1) WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let refs: Vec<&Event> = events.iter().collect();
        append_chained(&mut tx, &refs).await?;
        let incident = incident_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(Contained { incident, taken, already, revocation_seq }))
    }

    async fn close_incident(&self, id: i64, actor: &str, now: Time) -> Result<Option<Incident>> {
        let mut tx = self.begin_write().await?;
        if !lock_live_incident(&mut tx, id).await? {
            return Ok(None);
        }
        sqlx::query("UPDATE incidents SET state = 'closed', closed_at = $1, closed_by = $2 WHERE id = $3")
            .bind(now)
            .bind(actor)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let a = IncidentAction {
            seq: 0,
            at: now,
            actor: actor.to_owned(),
            action: "close".to_owned(),
            target: format!("incident:{id}"),
            outcome: "closed".to_owned(),
        };
        add_incident_action(&mut tx, id, &a).await?;
        let incident = incident_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(incident))
    }
}

/// Appends an action to an incident's record inside the caller's transaction (which holds the incident's
/// row lock, so numbers do not collide).
async fn add_incident_action(tx: &mut Tx, id: i64, a: &IncidentAction) -> Result<i64> {
    let seq: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM incident_actions WHERE incident_id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    sqlx::query(
        "INSERT INTO incident_actions (incident_id, seq, at, actor, action, target, outcome) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(seq)
    .bind(a.at)
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.target)
    .bind(&a.outcome)
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}

/// Takes the row lock of a live incident for the rest of the transaction; `false` if there is none.
async fn lock_live_incident(tx: &mut Tx, id: i64) -> Result<bool> {
    let n = sqlx::query("UPDATE incidents SET state = state WHERE id = $1 AND closed_at IS NULL")
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(n == 1)
}

async fn incident_in(tx: &mut Tx, id: i64) -> Result<Incident> {
    let row = sqlx::query(concat!("SELECT ", incident_cols!(), " FROM incidents WHERE id = $1"))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    incident_from(&row)
}

/// One containment step: runs inside the transaction, returns its outcome and the highest revocation
/// number it wrote.
async fn contain_step(
    tx: &mut Tx,
    action: &str,
    target: &str,
    how: &Containment,
    reason: &str,
    now: Time,
) -> Result<(String, i64)> {
    let (kind, subject) = target.split_once(':').unwrap_or(("", target));
    let mut seq = 0;
    let outcome = match (action, kind) {
        ("revoke_sessions", "user") => {
            let families = revoke_families_where(tx, Filter::User(subject), reason, now).await?;
            let logins = sqlx::query(
                "UPDATE login_sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(subject)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if families > 0 {
                seq = sqlx::query_scalar("SELECT value FROM revocation_counter WHERE id = 1")
                    .fetch_one(&mut **tx)
                    .await?;
            }
            format!("revoked {families} refresh families and {logins} sign-in sessions")
        }
        ("revoke_user", "user") | ("revoke_client", "client") => {
            let kind = if kind == "user" { RevocationKind::User } else { RevocationKind::Client };
            if kind == RevocationKind::Client {
                sqlx::query(
                    "UPDATE refresh_families SET revoked_at = $1, revoke_reason = $2 \
                     WHERE client_id = $3 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(reason)
                .bind(subject)
                .execute(&mut **tx)
                .await?;
            }
            let entry = NewRevocation {
                kind,
                subject: subject.to_owned(),
                not_before: Some(now),
                expires_at: now + REVOCATION_HORIZON_SECS,
                reason: reason.to_owned(),
            };
            seq = insert_revocation(tx, &entry, now).await?;
            "every token issued before now refused".to_owned()
        }
        ("force_password_reset", "user") => {
            let n = sqlx::query("UPDATE users SET must_reset_password = TRUE WHERE id = $1")
                .bind(subject)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            bump_changes(tx).await?;
            if n == 1 { "required at the next sign-in" } else { "skipped: the user is not in this store" }
                .to_owned()
        }
        ("reset_mfa", "user") => {
            let mut n = 0;
            for sql in [
                "DELETE FROM totp_factors WHERE user_id = $1",
                "DELETE FROM webauthn_credentials WHERE user_id = $1",
                "DELETE FROM recovery_codes WHERE user_id = $1",
            ] {
                n += sqlx::query(sql).bind(subject).execute(&mut **tx).await?.rows_affected();
            }
            if n > 0 { "second factors removed: enrolment required" } else { "no second factor was enrolled" }
                .to_owned()
        }
        ("rotate_client_secret", "client") => match how.client.as_ref().and_then(|(_, hash)| hash.as_ref()) {
            Some(hash) => {
                let n = sqlx::query(
                    "UPDATE clients SET secret_hash = $1 WHERE id = $2 AND kind = 'confidential'",
                )
                .bind(hash.as_bytes().to_vec())
                .bind(subject)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                bump_changes(tx).await?;
                if n == 1 {
                    "rotated: the old secret no longer authenticates"
                } else {
                    "skipped: no such confidential client"
                }
                .to_owned()
            }
            None => "skipped: the client has no secret".to_owned(),
        },
        ("block_source", "ip") => {
            let (until, shown) = how
                .block
                .iter()
                .find(|b| b.0 == subject)
                .map_or((now, String::new()), |b| (b.1, b.2.clone()));
            let entry = NewRevocation {
                kind: RevocationKind::Source,
                subject: subject.to_owned(),
                not_before: None,
                expires_at: until,
                reason: reason.to_owned(),
            };
            seq = insert_revocation(tx, &entry, now).await?;
            format!("blocked until {shown}")
        }
        _ => return Err(StoreError::Database(format!("unknown containment step {action} on {kind}"))),
    };
    Ok((outcome, seq))
}

async fn audit_state_in<'e, E: sqlx::Executor<'e, Database = Db>>(db: E) -> Result<AuditState> {
    let row = sqlx::query(
        "SELECT h.seq AS head_seq, h.hash AS head_hash, c.through_seq, c.hash AS cp_hash, c.created_at, c.reason \
         FROM audit_head h, audit_checkpoints c WHERE h.id = 1 \
         ORDER BY c.through_seq DESC LIMIT 1",
    )
    .fetch_one(db)
    .await?;
    let hash = |col: &str| -> Result<ChainHash> {
        let bytes: Vec<u8> = row.try_get(col)?;
        ChainHash::from_slice(&bytes).ok_or_else(|| corrupt(col))
    };
    Ok(AuditState {
        checkpoint_seq: row.try_get("through_seq")?,
        checkpoint_hash: hash("cp_hash")?,
        checkpoint_at: row.try_get("created_at")?,
        checkpoint_reason: row.try_get("reason")?,
        head_seq: row.try_get("head_seq")?,
        head_hash: hash("head_hash")?,
    })
}

/// One rotation for the rotation writer.
struct RotationJob {
    old: TokenHash,
    successor: RefreshRecord,
    /// Appended to the audit chain with the rotation, if it wins.
    event: Option<Event>,
    now: Time,
}

/// The most rotations committed in one transaction.
const MAX_ROTATION_BATCH: usize = 128;

/// One single-use id for the single-use writer.
struct OnceJob {
    scope: String,
    id_hash: TokenHash,
    expires_at: Time,
    now: Time,
}

/// A job waiting for a batch writer, with where its outcome goes.
struct Queued<J, O> {
    job: J,
    reply: tokio::sync::oneshot::Sender<Result<O>>,
}

/// What a batch writer runs: one transaction for the whole batch, one outcome per job, in order.
type BatchFuture<'a, O> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<O>>> + Send + 'a>>;

/// Starts a batch writer (group commit). It takes every job waiting, up to `max`, runs them with `run` in
/// one transaction, and answers each after the commit; a failed batch fails all its jobs. Concurrent writes
/// thus share one commit (and one flush to disk) instead of paying for one each, and no job is answered
/// before it is durable. Two use it: refresh rotations (each still its own compare-and-swap) and single-use
/// ids (DPoP proofs, client assertions; each still its own "take if not taken"). One writer of each kind
/// per node: SQLite has one write lock anyway, and on PostgreSQL two or four rotation writers measured no
/// better (the CPU, not the commit, is then the limit). The task ends when the store is dropped.
fn spawn_batch_writer<J: Send + 'static, O: Send + 'static, S: Send + 'static>(
    pool: &WritePool,
    max: usize,
    mut state: S,
    run: for<'a> fn(&'a WritePool, &'a mut S, &'a [J]) -> BatchFuture<'a, O>,
) -> tokio::sync::mpsc::Sender<Queued<J, O>> {
    let (jobs, mut queue) = tokio::sync::mpsc::channel::<Queued<J, O>>(4 * max);
    let pool = pool.clone();
    tokio::spawn(async move {
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while batch.len() < max {
                match queue.try_recv() {
                    Ok(queued) => batch.push(queued),
                    Err(_) => break,
                }
            }
            let (work, replies): (Vec<J>, Vec<_>) = batch.into_iter().map(|q| (q.job, q.reply)).unzip();
            answer(replies, run(&pool, &mut state, &work).await);
        }
    });
    jobs
}

/// Answers each job of a batch with its outcome, or all of them with the batch's error.
fn answer<O>(replies: Vec<tokio::sync::oneshot::Sender<Result<O>>>, outcomes: Result<Vec<O>>) {
    match outcomes {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Sends `job` to a batch writer and waits for its outcome.
async fn enqueue<J, O>(writer: &tokio::sync::mpsc::Sender<Queued<J, O>>, job: J, what: &str) -> Result<O> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let stopped = || StoreError::Unavailable(format!("the {what} writer stopped"));
    writer.send(Queued { job, reply }).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// The rotation writer.
fn spawn_rotation_writer(
    pool: &WritePool,
    cache: ChainCache,
) -> tokio::sync::mpsc::Sender<Queued<RotationJob, Rotation>> {
    spawn_batch_writer(pool, MAX_ROTATION_BATCH, cache, |pool, cache, batch| {
        Box::pin(rotate_batch(pool, cache, batch))
    })
}

/// The audit events of the rotations that won, in job order.
fn won_events<'a>(batch: &'a [RotationJob], outcomes: &[Rotation]) -> Vec<&'a Event> {
    batch
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| **outcome == Rotation::Rotated)
        .filter_map(|(job, _)| job.event.as_ref())
        .collect()
}

/// Runs a one-row UPDATE of a user, client or resource in `tx`, counts the change, and commits; whether the
/// row existed.
/// Runs a write that touches at most one row in `tx` and commits; whether it touched one.
async fn written_once<'q>(
    mut tx: Tx,
    query: sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>>,
) -> Result<bool> {
    let n = query.execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(n == 1)
}

async fn update_counted<'q>(
    mut tx: Tx,
    query: sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>>,
) -> Result<bool> {
    let n = query.execute(&mut *tx).await?.rows_affected();
    bump_changes(&mut tx).await?;
    tx.commit().await?;
    Ok(n == 1)
}

/// Replaces the user's recovery codes with `recovery`, inside the caller's transaction.
async fn put_recovery_codes(tx: &mut Tx, user_id: &str, recovery: &[TokenHash], now: Time) -> Result<()> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1").bind(user_id).execute(&mut **tx).await?;
    for hash in recovery {
        sqlx::query("INSERT INTO recovery_codes (user_id, hash, created_at) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(hex(hash.as_bytes()))
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Counts a change to users, clients or resources, inside the caller's transaction.
async fn bump_changes(tx: &mut Tx) -> Result<()> {
    sqlx::query("UPDATE change_counter SET value = value + 1 WHERE id = 1").execute(&mut **tx).await?;
    Ok(())
}

/// Maps a unique violation to a conflict naming `what`.
fn conflict(e: sqlx::Error, what: &'static str) -> StoreError {
    match StoreError::from(e) {
        StoreError::Conflict(_) => StoreError::Conflict(what),
        other => other,
    }
}

async fn insert_refresh(tx: &mut Tx, r: &RefreshRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, family_id, generation, scope, created_at, expires_at, rotated_at, \
         successor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.hash.as_bytes())
    .bind(&r.family_id)
    .bind(r.generation)
    .bind(&r.scope)
    .bind(r.created_at)
    .bind(r.expires_at)
    .bind(r.rotated_at)
    .bind(opt_hash(r.successor.as_ref()))
    .execute(&mut **tx)
    .await
    .map_err(|e| conflict(e, "refresh token"))?;
    Ok(())
}

/// Revokes every family and login session of a user, with a session entry per live family (so that a token
/// issued in the same second as the user entry's not-before is still caught) and a user entry.
async fn revoke_user_in(tx: &mut Tx, user_id: &str, reason: &str, now: Time) -> Result<i64> {
    revoke_families_where(tx, Filter::User(user_id), reason, now).await?;
    sqlx::query("UPDATE login_sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    let entry = NewRevocation {
        kind: RevocationKind::User,
        subject: user_id.to_owned(),
        not_before: Some(now),
        expires_at: now + REVOCATION_HORIZON_SECS,
        reason: reason.to_owned(),
    };
    insert_revocation(tx, &entry, now).await
}
