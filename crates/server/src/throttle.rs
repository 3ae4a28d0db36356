//! The login throttle at work: reserves an attempt on the account's and the source's counters (in the
//! store, shared by every node) before a password is checked, and settles them afterwards.
//!
//! The decision is [`tessera_core::throttle`]'s; this module applies it with a compare-and-swap on the
//! stored counter, so that concurrent attempts on every node see each other. On one node the updates take
//! turns (one short lock around a read and a write, far cheaper than the hash that follows), so a burst at
//! one counter (a flood at one account, many users behind one NAT) never loses a compare-and-swap to its own
//! node; the compare-and-swap settles races between nodes. The account's counter is keyed
//! by a pseudonym of the typed name, never the name itself, and exists for unknown names as for real ones:
//! how a sign-in is throttled says nothing about whether the account exists.

use tessera_core::throttle::{self, Counter, Limits, Verdict};
use tessera_store::{Event, StoreError, User};

use crate::{AppState, RequestMeta};

/// Compare-and-swap rounds before an attempt is refused as contended (fail closed).
const MAX_ROUNDS: usize = 16;

/// The two counters a sign-in attempt is charged to.
pub struct Keys {
    account: String,
    source: Option<String>,
}

impl Keys {
    /// The counters of `username` (case and surrounding space ignored) from `ip`.
    pub fn new(state: &AppState, username: &str, ip: Option<&str>) -> Self {
        let name = username.trim().to_lowercase();
        Keys {
            account: format!("acct:{}", state.kek.pseudonym(&name)),
            source: ip.map(|ip| format!("ip:{ip}")),
        }
    }
}

/// What the throttle says about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Check the password. If it is wrong, the account's (`account_locks`) or the source's
    /// (`source_locks`) counter is now locked.
    Check {
        /// A failure locks the account.
        account_locks: bool,
        /// A failure locks the source.
        source_locks: bool,
    },
    /// Refused before any password check; try again at `retry_at`.
    Refused {
        /// The earliest time the next attempt may be made.
        retry_at: i64,
    },
}

/// Reserves the attempt on the source's counter, then the account's. The source goes first so that a
/// locked source cannot spend (and lock) a victim's account attempts.
///
/// # Errors
/// If the store cannot be read or written: the caller refuses the attempt.
pub async fn admit(state: &AppState, keys: &Keys, now: i64) -> Result<Gate, StoreError> {
    let policy = &state.config.login;
    let _turn = state.throttle_turn.lock().await;
    let mut source_locks = false;
    if let Some(source) = &keys.source {
        match reserve(state, policy.source(), source, now).await? {
            Verdict::Attempt { locks, .. } => source_locks = locks,
            Verdict::Refused { retry_at, .. } => return Ok(Gate::Refused { retry_at }),
        }
    }
    match reserve(state, policy.account(), &keys.account, now).await? {
        Verdict::Attempt { locks, .. } => Ok(Gate::Check { account_locks: locks, source_locks }),
        Verdict::Refused { retry_at, .. } => Ok(Gate::Refused { retry_at }),
    }
}

async fn reserve(state: &AppState, limits: Limits, key: &str, now: i64) -> Result<Verdict, StoreError> {
    let policy = &state.config.login;
    for _ in 0..MAX_ROUNDS {
        let stored = state.store.throttle(key).await?;
        let verdict = throttle::reserve(policy, limits, stored.map(|(c, _)| c), now);
        let Verdict::Attempt { counter, .. } = verdict else { return Ok(verdict) };
        let kept = (&counter, expiry(&counter, policy.window_secs));
        if state.store.swap_throttle(key, stored.map(|(_, v)| v), Some(kept)).await? {
            return Ok(verdict);
        }
    }
    Ok(Verdict::Refused { retry_at: now + 1, locked: false })
}

/// Charges a request for a mailed link (a password reset) to the counter of the source `ip`, which no
/// success ever clears: a source that asks for links to many accounts is slowed, then locked, with the
/// source limits of sign-ins (`[login] source_*`). `Ok(None)` admits the request; `Ok(Some(wait))` refuses
/// it for `wait` seconds. Requests without a known source are charged to nothing here; the per-user limit
/// still holds for them.
///
/// # Errors
/// If the store cannot be read or written: the caller refuses the request.
pub async fn charge_link(state: &AppState, ip: Option<&str>, now: i64) -> Result<Option<i64>, StoreError> {
    let Some(ip) = ip else { return Ok(None) };
    let _turn = state.throttle_turn.lock().await;
    match reserve(state, state.config.login.source(), &format!("link:ip:{ip}"), now).await? {
        Verdict::Attempt { .. } => Ok(None),
        Verdict::Refused { retry_at, .. } => Ok(Some((retry_at - now).max(1))),
    }
}

/// When a counter can no longer refuse anything.
fn expiry(c: &Counter, window: i64) -> i64 {
    c.locked_until.max(c.next_at).max(c.last_at + window)
}

/// How a throttled check of a known user's secret ended.
pub enum Checked<T> {
    /// The secret was right; the counters are settled.
    Passed(T),
    /// The secret was wrong; the failure (and any lock it caused) is recorded.
    Wrong,
    /// Refused before the check; try again after `wait` seconds.
    Refused {
        /// Seconds until the next attempt may be made.
        wait: i64,
    },
    /// The store failed.
    Unavailable,
}

/// Checks a secret of `user` (a current password, a second-factor code) behind the throttle, like a
/// sign-in: reserves the attempt, runs `check` (a future, polled only once the attempt is reserved), settles
/// the counters, and records a failure as a `failure_kind` event (reason `throttled`, or `wrong_reason`)
/// with any lock it caused.
pub async fn checked<T>(
    state: &AppState,
    meta: &RequestMeta,
    user: &User,
    (failure_kind, wrong_reason): (&str, &str),
    now: i64,
    check: impl Future<Output = Result<Option<T>, StoreError>>,
) -> Checked<T> {
    let keys = Keys::new(state, &user.username, meta.ip.as_deref());
    let failed = |reason: &str| Event {
        kind: failure_kind.into(),
        sub: Some(user.id.clone()),
        reason: Some(reason.into()),
        outcome: Some("failure".into()),
        detail: Some(
            serde_json::json!({ "username_pseudonym": state.kek.pseudonym(&user.username) }).to_string(),
        ),
        ..meta.event(now)
    };
    let locks = match admit(state, &keys, now).await {
        Ok(Gate::Check { account_locks, source_locks }) => (account_locks, source_locks),
        Ok(Gate::Refused { retry_at }) => {
            state.metrics.login_throttled();
            state.event(failed("throttled")).await;
            return Checked::Refused { wait: retry_at - now };
        }
        Err(e) => {
            tracing::warn!(error = %e, "throttle unavailable");
            return Checked::Unavailable;
        }
    };
    match check.await {
        Ok(Some(passed)) => {
            self::passed(state, &keys).await;
            Checked::Passed(passed)
        }
        Ok(None) => {
            let event = failed(wrong_reason);
            state.event(event.clone()).await;
            crate::authorize::record_locks(state, event, locks, now).await;
            Checked::Wrong
        }
        Err(e) => {
            tracing::warn!(error = %e, "store failure while checking a secret");
            Checked::Unavailable
        }
    }
}

/// The failures still counted on the account and the source before the attempt being made (whose own
/// reservation is not counted): what risk scoring calls recent failures.
pub async fn failures(state: &AppState, keys: &Keys, now: i64) -> (u32, u32) {
    let window = state.config.login.window_secs;
    let count = |found: Option<(Counter, i64)>| {
        found
            .map(|(c, _)| c)
            .filter(|c| c.locked_until > now || c.last_at > now - window)
            .map_or(0, |c| c.failures.saturating_sub(1))
    };
    let account = count(state.store.throttle(&keys.account).await.ok().flatten());
    let source = match &keys.source {
        Some(source) => count(state.store.throttle(source).await.ok().flatten()),
        None => 0,
    };
    (account, source)
}

/// A correct password: the account's counter is cleared and the source gets its reserved attempt back.
/// Best effort: a store failure here leaves the counters as they were (stricter, never looser).
pub async fn passed(state: &AppState, keys: &Keys) {
    let policy = &state.config.login;
    let _turn = state.throttle_turn.lock().await;
    for _ in 0..MAX_ROUNDS {
        match state.store.throttle(&keys.account).await {
            Ok(Some((_, version))) => {
                match state.store.swap_throttle(&keys.account, Some(version), None).await {
                    Ok(false) => continue,
                    Ok(true) | Err(_) => break,
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let Some(source) = &keys.source else { return };
    for _ in 0..MAX_ROUNDS {
        let Ok(Some((counter, version))) = state.store.throttle(source).await else { return };
        let kept = throttle::forgive(policy, policy.source(), counter);
        let new = kept.as_ref().map(|c| (c, expiry(c, policy.window_secs)));
        if !matches!(state.store.swap_throttle(source, Some(version), new).await, Ok(false)) {
            return;
        }
    }
}
