//! Tessera's storage: one trait family ([`Store`]) and two backends behind it, SQLite (the embedded default)
//! and PostgreSQL (several server nodes). Call sites hold an `Arc<dyn Store>` and never ask which backend
//! it is.
//!
//! Both backends run the same SQL text ([`sql_body.rs`](../src/tessera_store/sql_body.rs.html) is compiled
//! once per backend), so they cannot drift apart; only the schema's column types and the connection set-up
//! differ. Every multi-row change is one transaction. Refresh rotation is a single compare-and-swap
//! (`UPDATE … WHERE rotated_at IS NULL`), so concurrent rotations of one token yield at most one successor.
//! Revocation sequence numbers come from a counter row incremented inside the inserting transaction, which
//! serialises revocation writers and makes sequence order equal to commit order.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tessera_core::audit::{ChainBreak, ChainSummary, ChainVerifier};
use tessera_core::mfa::MfaPolicy;
use tessera_core::throttle::Counter;
use tessera_core::{KeyState, TokenHash};

mod model;
mod postgres;
mod sqlite;

pub use model::{
    Alert, AlertOutcome, AuditQuery, AuditRecord, AuditState, AuthCode, Client, CodeUse, Contained,
    Containment, Event, Family, Incident, IncidentAction, KeyRecord, LoginSession, NewAlert, NewIncident,
    NewRevocation, OriginRef, RefreshRecord, Resource, Revocation, Rotation, Time, TokenRef, TotpFactor,
    User, WebauthnCredential,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// How long a revocation entry is kept: the longest access-token lifetime (900 s) plus a minute of leeway.
/// After that no token it could match is still valid anywhere.
pub const REVOCATION_HORIZON_SECS: i64 = 960;

/// How long a spent authorization code is kept, so that a replay is still recognised and punished.
pub const SPENT_CODE_RETENTION_SECS: i64 = 86_400;

/// A storage failure. The message never contains a secret or a value a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A unique key already exists (a username, a client id, an audience, a kid).
    Conflict(&'static str),
    /// The database cannot be reached or did not answer in time: try again later (HTTP 503).
    Unavailable(String),
    /// A stored value could not be read back (a corrupt row, an unknown enum spelling).
    Corrupt(String),
    /// Any other database error.
    Database(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict(what) => write!(f, "{what} already exists"),
            StoreError::Unavailable(why) => write!(f, "database unavailable: {why}"),
            StoreError::Corrupt(why) => write!(f, "stored data unreadable: {why}"),
            StoreError::Database(why) => write!(f, "database error: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict("record"),
            // PostgreSQL's connection exceptions (class 08), shutdown and start-up (57P0x), and "too many
            // connections" (53300): the database is away or busy, not wrong.
            sqlx::Error::Database(db) if db.code().is_some_and(|c| unavailable_code(&c)) => {
                StoreError::Unavailable(db.to_string())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                StoreError::Corrupt(e.to_string())
            }
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// Whether a SQLSTATE says the database is unreachable or refusing work for now.
fn unavailable_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code == "53300"
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Database(format!("migration failed: {e}"))
    }
}

/// Shorthand for store results.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A committed change that other writers announced (PostgreSQL `NOTIFY`), so that a node acts on it at once
/// instead of at its next poll. Announcements are hints: whoever hears one re-reads the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New revocation entries.
    Revocations,
    /// The signing keys changed (a rotation, a promotion, a revocation).
    Keys,
    /// Users, clients or resources changed (the change counter moved).
    Directory,
    /// The listener is connected (again): announcements made while it was not may have been missed, so
    /// re-read everything once.
    Listening,
    /// The listener lost its connection: until [`Change::Listening`], poll.
    Lost,
}

/// Everything the server keeps. Implemented by [`SqliteStore`] and [`PostgresStore`]; the conformance suite
/// in `tests/conformance.rs` holds both to the same behaviour.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// `"sqlite"` or `"postgres"`, for logs and metrics only.
    fn backend(&self) -> &'static str;
    /// Applies the embedded migrations that have not been applied yet.
    async fn migrate(&self) -> Result<()>;
    /// A round trip to the database (readiness).
    async fn ping(&self) -> Result<()>;
    /// Announcements of changes committed by any writer sharing this database (every node, the CLI), or
    /// `None` where the backend makes none (SQLite: one node, which polls). The first call starts the
    /// listener; it reconnects by itself and says so ([`Change::Lost`], [`Change::Listening`]).
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Creates a user; [`StoreError::Conflict`] if the username is taken.
    async fn create_user(&self, user: &User) -> Result<()>;
    /// A user by id.
    async fn user_by_id(&self, id: &str) -> Result<Option<User>>;
    /// A user by username.
    async fn user_by_name(&self, username: &str) -> Result<Option<User>>;
    /// Every user, by username.
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Enables or disables a user; `false` if there is no such user.
    async fn set_user_disabled(&self, id: &str, disabled: bool) -> Result<bool>;
    /// Replaces a user's roles; `false` if there is no such user.
    async fn set_user_roles(&self, id: &str, roles: &[String]) -> Result<bool>;
    /// Sets a new password hash, clears a forced reset and, in the same transaction, revokes every session
    /// of the user (as [`Store::revoke_user`]). `None` if there is no such user, else the revocation's
    /// sequence number.
    async fn set_password(&self, id: &str, password_hash: &str, now: Time) -> Result<Option<i64>>;
    /// Sets or clears "must reset the password at the next login"; `false` if there is no such user.
    async fn set_must_reset_password(&self, id: &str, must: bool) -> Result<bool>;
    /// Requires every session of the user authenticated at or before `now` to log in again before it may
    /// refresh (`require_step_up`); `false` if there is no such user.
    async fn require_step_up(&self, id: &str, now: Time) -> Result<bool>;

    /// Sets or clears the address a user's notices and reset links go to; `false` if there is no such user.
    async fn set_user_email(&self, id: &str, email: Option<&str>) -> Result<bool>;
    /// Stores a password-reset link's hash for the user until `expires_at`.
    async fn create_password_reset(
        &self,
        hash: &TokenHash,
        user_id: &str,
        expires_at: Time,
        now: Time,
    ) -> Result<()>;
    /// The user a live (unused, unexpired) reset link belongs to.
    async fn password_reset(&self, hash: &TokenHash, now: Time) -> Result<Option<String>>;
    /// Spends a live reset link (and retires the user's other links); its user, or `None` if it was not
    /// live. Concurrent uses of one link: exactly one gets the user.
    async fn use_password_reset(&self, hash: &TokenHash, now: Time) -> Result<Option<String>>;
    /// The user's TOTP factor, confirmed or being enrolled.
    async fn totp_factor(&self, user_id: &str) -> Result<Option<TotpFactor>>;
    /// Starts (or restarts) enrolling a TOTP secret; a confirmed one stays in use until this one is confirmed.
    async fn begin_totp(&self, user_id: &str, pending_sealed: &[u8], now: Time) -> Result<()>;
    /// Puts the secret being enrolled in use, with `step` (the confirming code's) as the last one used, and
    /// replaces the recovery codes with `recovery` (their hashes), in one transaction; `false` if nothing
    /// was being enrolled.
    async fn confirm_totp(&self, user_id: &str, step: i64, recovery: &[TokenHash], now: Time)
    -> Result<bool>;
    /// Records `step` as used if it is later than the last one used; `false` if it is not (a code used
    /// twice, or a race that another request won).
    async fn use_totp_step(&self, user_id: &str, step: i64) -> Result<bool>;
    /// Replaces every recovery code of the user with `recovery` (their hashes).
    async fn replace_recovery_codes(&self, user_id: &str, recovery: &[TokenHash], now: Time) -> Result<()>;
    /// Spends the recovery code with this hash; `false` if there is no such unused code.
    async fn use_recovery_code(&self, user_id: &str, hash: &TokenHash, now: Time) -> Result<bool>;
    /// How many unused recovery codes the user has.
    async fn recovery_codes_left(&self, user_id: &str) -> Result<i64>;
    /// Removes every second factor of the user (TOTP, WebAuthn credentials and recovery codes); `false` if
    /// there was none.
    async fn reset_mfa(&self, user_id: &str) -> Result<bool>;
    /// The user's WebAuthn credentials, oldest first.
    async fn webauthn_credentials(&self, user_id: &str) -> Result<Vec<WebauthnCredential>>;
    /// Registers a WebAuthn credential; [`StoreError::Conflict`] if its id is registered already (to this
    /// user or any other).
    async fn add_webauthn_credential(&self, credential: &WebauthnCredential) -> Result<()>;
    /// After a sign-in it signed: stores the credential's updated state (its counter) and the time;
    /// `false` if the user has no such credential.
    async fn use_webauthn_credential(
        &self,
        user_id: &str,
        id: &str,
        credential: &str,
        now: Time,
    ) -> Result<bool>;
    /// Removes one of the user's WebAuthn credentials; `false` if there was no such credential.
    async fn remove_webauthn_credential(&self, user_id: &str, id: &str) -> Result<bool>;
    /// Keeps the state of a WebAuthn ceremony for `user_id` under the hash of its handle until
    /// `expires_at` (and prunes expired ones).
    async fn put_webauthn_ceremony(
        &self,
        handle: &TokenHash,
        user_id: &str,
        purpose: &str,
        state: &str,
        expires_at: Time,
        now: Time,
    ) -> Result<()>;
    /// Takes (removes) a live ceremony: its user, purpose and state; `None` if there is no such live
    /// ceremony. Of concurrent takes of one handle, exactly one gets it.
    async fn take_webauthn_ceremony(
        &self,
        handle: &TokenHash,
        now: Time,
    ) -> Result<Option<(String, String, String)>>;
    /// Sets a client's MFA policy; `false` if there is no such client.
    async fn set_client_mfa(&self, id: &str, mfa: MfaPolicy) -> Result<bool>;

    /// Registers a client; [`StoreError::Conflict`] if the id is taken.
    async fn create_client(&self, client: &Client) -> Result<()>;
    /// A client by id.
    async fn client(&self, id: &str) -> Result<Option<Client>>;
    /// Every client, by id.
    async fn list_clients(&self) -> Result<Vec<Client>>;
    /// Replaces a confidential client's secret hash, or removes it (`None`: `client_secret_*` is switched off
    /// for the client); `false` if there is no such confidential client.
    async fn set_client_secret(&self, id: &str, secret_hash: Option<&TokenHash>) -> Result<bool>;
    /// Registers, replaces or removes (`None`) a confidential client's public JWKS for `private_key_jwt`;
    /// `false` if there is no such confidential client.
    async fn set_client_jwks(&self, id: &str, jwks: Option<&str>) -> Result<bool>;
    /// Replaces the audiences a confidential client serves; `false` if there is no such confidential client.
    async fn set_client_serves(&self, id: &str, serves: &[String]) -> Result<bool>;
    /// Enables or disables a client; `false` if there is no such client.
    async fn set_client_disabled(&self, id: &str, disabled: bool) -> Result<bool>;

    /// Registers a resource; [`StoreError::Conflict`] if the audience exists.
    async fn create_resource(&self, resource: &Resource) -> Result<()>;
    /// A resource by audience.
    async fn resource(&self, audience: &str) -> Result<Option<Resource>>;
    /// Every resource, by audience.
    async fn list_resources(&self) -> Result<Vec<Resource>>;

    /// Stores a new key; [`StoreError::Conflict`] if the kid exists.
    async fn insert_key(&self, key: &KeyRecord) -> Result<()>;
    /// Every key, oldest first.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>>;
    /// Makes `kid` the current key and retires the previous current key, in one transaction. `false` if
    /// `kid` does not exist or is revoked.
    async fn activate_key(&self, kid: &str, now: Time) -> Result<bool>;
    /// Stores `key` (a `next` key) unless a `next` key is already waiting, serialised with every other key change,
    /// so that of several nodes due to rotate exactly one does. `false` (and nothing stored) if a `next` key
    /// exists.
    async fn schedule_key(&self, key: &KeyRecord) -> Result<bool>;
    /// Moves a key to `state` (for retiring or revoking); `false` if there is no such key.
    async fn set_key_state(&self, kid: &str, state: KeyState, now: Time) -> Result<bool>;
    /// Deletes a key (after its last token expired); `false` if there is no such key.
    async fn delete_key(&self, kid: &str) -> Result<bool>;

    /// Stores a new login session.
    async fn create_login_session(&self, session: &LoginSession) -> Result<()>;
    /// A login session by its cookie's hash.
    async fn login_session(&self, hash: &TokenHash) -> Result<Option<LoginSession>>;
    /// Ends a login session and revokes every refresh family started from it, in one transaction.
    /// Returns the number of families revoked.
    async fn end_login_session(&self, hash: &TokenHash, reason: &str, now: Time) -> Result<u64>;

    /// Stores a new authorization code.
    async fn insert_code(&self, code: &AuthCode) -> Result<()>;
    /// Spends a code: the first call gets [`CodeUse::Fresh`], every later one [`CodeUse::Replayed`] (and marks
    /// the code replayed).
    async fn redeem_code(&self, hash: &TokenHash, now: Time) -> Result<CodeUse>;

    /// Starts a refresh family, with its first refresh token if the client may refresh. A family redeemed
    /// from a code that has been replayed meanwhile is refused ([`StoreError::Conflict`]).
    async fn create_family(&self, family: &Family, first: Option<&RefreshRecord>) -> Result<()>;
    /// A family by id.
    async fn family(&self, id: &str) -> Result<Option<Family>>;
    /// A refresh token and its family, by the token's hash.
    async fn refresh_token(&self, hash: &TokenHash) -> Result<Option<(RefreshRecord, Family)>>;
    /// The compare-and-swap at the heart of rotation: marks `old` rotated and stores `successor`, only if
    /// `old` has not been rotated and its family is not revoked. Exactly one of any number of concurrent
    /// calls for one token gets [`Rotation::Rotated`]. With `event` (the issuance it answers), the event is
    /// appended to the audit chain in the same transaction, if and only if this call rotated.
    async fn rotate_refresh(
        &self,
        old: &TokenHash,
        successor: &RefreshRecord,
        event: Option<&Event>,
        now: Time,
    ) -> Result<Rotation>;
    /// Revokes a family and adds a session revocation for its `sid`. `true` if this call revoked it.
    async fn revoke_family(&self, id: &str, reason: &str, now: Time) -> Result<bool>;
    /// Binds a family that has no DPoP key yet to `jkt`; returns the key the family is bound to afterwards
    /// (`jkt`, or the one a concurrent request bound first; `None` if the family is gone).
    async fn bind_family_key(&self, id: &str, jkt: &str) -> Result<Option<String>>;
    /// Revokes every family redeemed from a code (the code was replayed). Returns how many.
    async fn revoke_code_families(&self, code: &TokenHash, reason: &str, now: Time) -> Result<u64>;

    /// Commits one revocation entry and returns its sequence number.
    async fn revoke(&self, revocation: &NewRevocation, now: Time) -> Result<i64>;
    /// Revokes everything of a user: every family (with a session entry each) and login session, and a user
    /// entry with not-before `now`; with `force_reset`, also sets "must reset the password", in the same
    /// transaction. Returns the user entry's sequence number.
    async fn revoke_user(&self, user_id: &str, reason: &str, force_reset: bool, now: Time) -> Result<i64>;
    /// Revokes everything of a client: every family, and a client entry with not-before `now`.
    async fn revoke_client(&self, client_id: &str, reason: &str, now: Time) -> Result<i64>;
    /// Revocations with a sequence number above `after`, in order, at most `limit`.
    async fn revocations_after(&self, after: i64, limit: i64) -> Result<Vec<Revocation>>;
    /// Every revocation that can still match a valid token.
    async fn live_revocations(&self, now: Time) -> Result<Vec<Revocation>>;
    /// A number that grows with every change to users, clients and resources (for cache invalidation).
    async fn change_seq(&self) -> Result<i64>;
    /// The highest sequence number committed so far (0 if none).
    async fn revocation_seq(&self) -> Result<i64>;
    /// Whether any live revocation matches the token.
    async fn is_revoked(&self, token: TokenRef<'_>, now: Time) -> Result<bool>;
    /// Deletes what can no longer matter: expired revocations, codes, login sessions, single-use ids and
    /// login throttle counters, and
    /// families past their absolute lifetime. Returns the number of rows deleted.
    async fn prune(&self, now: Time) -> Result<u64>;
    /// Marks the single-use id `id_hash` in `scope` (a DPoP proof's or a client assertion's `jti`) as used
    /// until `expires_at`. `true` the first time; `false` if it was already used and has not yet expired.
    /// Shared by every node on the same database.
    async fn use_once(&self, scope: &str, id_hash: &TokenHash, expires_at: Time, now: Time) -> Result<bool>;

    /// The login throttle counter kept under `key`, with its version for [`Store::swap_throttle`].
    async fn throttle(&self, key: &str) -> Result<Option<(Counter, i64)>>;
    /// Replaces the counter under `key` if its version is still `version` (`None`: there is no counter yet)
    /// with `new` (kept until its `expires_at`) or, with `None`, removes it. `false` if another attempt
    /// changed it first: read it again and decide again.
    async fn swap_throttle(
        &self,
        key: &str,
        version: Option<i64>,
        new: Option<(&Counter, Time)>,
    ) -> Result<bool>;

    /// Claims a detection key (its hash) until `expires_at` and, in the same transaction, queues `alerts`.
    /// `true` if this call claimed it; `false` (and nothing queued) while another claim holds it, so that
    /// every node raises a finding once.
    async fn raise_detection(
        &self,
        key: &TokenHash,
        rule: &str,
        expires_at: Time,
        alerts: &[NewAlert],
        now: Time,
    ) -> Result<bool>;
    /// Replaces a queued alert's payload and makes it due at `next_at`, if it is still pending and has not
    /// been attempted; `false` otherwise (its hold ran out and it went as it was).
    async fn update_alert(&self, id: &str, payload: &str, next_at: Time) -> Result<bool>;
    /// Takes up to `limit` pending alerts due at `now`, oldest first, leasing each until `lease_until` (and
    /// counting the attempt), so that no other node takes them meanwhile.
    async fn take_alerts(&self, now: Time, lease_until: Time, limit: i64) -> Result<Vec<Alert>>;
    /// Records how a delivery attempt ended.
    async fn finish_alert(&self, id: &str, outcome: &AlertOutcome, now: Time) -> Result<()>;
    /// Alerts, newest first: all, or those in one state.
    async fn list_alerts(&self, state: Option<&str>, limit: i64) -> Result<Vec<Alert>>;
    /// How many alerts are pending (the outbox depth).
    async fn pending_alerts(&self) -> Result<i64>;

    /// Appends a security event to the audit chain; returns once it is committed.
    async fn append_event(&self, event: &Event) -> Result<()>;
    /// Appends several events to the audit chain, in order and contiguously; returns once they are
    /// committed. Concurrent appends share one transaction (group commit).
    async fn append_events(&self, events: &[Event]) -> Result<()>;
    /// Appends guards' usage events like [`Store::append_events`], but behind every other append: a flood
    /// of usage must not hold up the events of responses, revocations and issued tokens.
    async fn append_usage(&self, events: &[Event]) -> Result<()>;
    /// The newest events, optionally of one kind, newest first.
    async fn recent_events(&self, kind: Option<&str>, limit: i64) -> Result<Vec<Event>>;
    /// Events matching `query`, oldest first, with their chain links.
    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
    /// The chain's latest checkpoint and its head.
    async fn audit_state(&self) -> Result<AuditState>;
    /// Removes the oldest events written before `before`, at most `max` of them: records a checkpoint at
    /// the last one removed (with its hash), deletes them, and appends an `audit_pruned` event, in one
    /// transaction. Only a prefix of the chain is ever removed, so what remains verifies from the
    /// checkpoint. Returns the number removed.
    async fn prune_audit(&self, before: Time, max: i64, now: Time) -> Result<u64>;

    /// Opens an incident, or finds the live (not closed) one about the same subject: the incident, and
    /// `true` if this call opened it. Of concurrent opens about one subject, one opens and the others find it.
    async fn open_incident(&self, new: &NewIncident, now: Time) -> Result<(Incident, bool)>;
    /// An incident by number.
    async fn incident(&self, id: i64) -> Result<Option<Incident>>;
    /// Incidents, newest first: all, or those in one state (`open`, `contained`, `closed`).
    async fn list_incidents(&self, state: Option<&str>, limit: i64) -> Result<Vec<Incident>>;
    /// What was done on an incident, in order.
    async fn incident_actions(&self, id: i64) -> Result<Vec<IncidentAction>>;
    /// Records one action on an incident (a detection joining it, an automatic response); `false` if there
    /// is no such incident.
    async fn record_incident_action(
        &self,
        id: i64,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        now: Time,
    ) -> Result<bool>;
    /// Contains a live incident in one transaction: revokes every session and refresh family of its user, a
    /// user entry with not-before `now`, and forces a password reset; then what `how` adds (second factors,
    /// the client and its secret, source blocks). Each step runs once per target over the incident's life
    /// (a repeat skips what is done), and each taken step is recorded on the incident and as an
    /// `admin_action` event on the audit chain, in the same transaction. `None` if there is no such live
    /// incident (missing, or closed).
    async fn contain_incident(&self, id: i64, how: &Containment, now: Time) -> Result<Option<Contained>>;
    /// Closes a live incident; `None` if there is no such live incident.
    async fn close_incident(&self, id: i64, actor: &str, now: Time) -> Result<Option<Incident>>;
}

/// Events read per page while verifying or exporting the audit chain.
pub const AUDIT_PAGE: i64 = 10_000;

/// Walks the audit chain from its latest checkpoint to its head, page by page. The outer `Result` is the
/// store's; the inner one is the chain's verdict: its summary, or the first broken link. Events appended
/// while the walk runs lie past the head read at its start and are left for the next walk.
///
/// # Errors
/// A [`StoreError`] if the database cannot be read.
pub async fn verify_audit_chain(
    store: &dyn Store,
) -> Result<std::result::Result<(AuditState, ChainSummary), ChainBreak>> {
    let state = store.audit_state().await?;
    let mut verifier = ChainVerifier::from_checkpoint(state.checkpoint_seq, state.checkpoint_hash);
    let mut after = state.checkpoint_seq;
    while after < state.head_seq {
        let query = AuditQuery { after_seq: after, limit: AUDIT_PAGE, ..AuditQuery::default() };
        let page = store.audit_events(&query).await?;
        if page.is_empty() {
            break;
        }
        for r in page.iter().take_while(|r| r.seq <= state.head_seq) {
            if let Err(broken) = verifier.check(r.seq, &r.event, r.prev_hash, r.hash) {
                return Ok(Err(broken));
            }
            after = r.seq;
        }
        if page.last().is_some_and(|r| r.seq > state.head_seq) {
            break;
        }
    }
    Ok(verifier.finish(state.head_seq, state.head_hash).map(|summary| (state, summary)))
}

/// Opens the store a URL names (`sqlite://PATH` or `postgres://…`), creating an SQLite file if needed, and
/// applies the migrations.
///
/// # Errors
/// [`StoreError::Unavailable`] if the database cannot be reached; `Database` for a bad URL or a failed
/// migration.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(PostgresStore::connect(url, None).await?)
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Arc::new(SqliteStore::open(std::path::Path::new(path)).await?)
    } else {
        return Err(StoreError::Database("the database URL must start with sqlite:// or postgres://".into()));
    };
    store.migrate().await?;
    Ok(store)
}
