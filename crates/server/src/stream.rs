//! The revocation stream for guards: `GET /revocations/stream`, server-sent events.
//!
//! On connect a guard gets a `snapshot` event (the live revocation set and its sequence number), or, when it
//! resumes with `Last-Event-ID` (or `?after=N`), every entry after that number. Then it gets a `revocation`
//! event for each entry as soon as this node sees it committed, and a `heartbeat` every few seconds. Each event
//! carries its sequence number as the SSE id, so a reconnecting guard resumes exactly where it stopped.
//! Entries pruned in the meantime had expired: no token they could match is still valid.
//!
//! One follower task per node reads new entries from the store (the store is the only source: revocations
//! made by the CLI, by another node, or by this one all arrive the same way) and fans them out to every
//! connected guard, so database load does not grow with the number of guards. It reads when woken: by this
//! node's own commits, and on PostgreSQL by every other writer's (`NOTIFY`, see [`tessera_store::Change`]);
//! and it polls, every [`POLL`] while nothing announces changes (SQLite, or the listening connection is
//! down) and every [`LISTENING_POLL`] as a safety net while something does. Entries are read by sequence
//! number, so a missed announcement delays an entry by one poll at most and never loses it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt as _};
use serde_json::json;
use tessera_core::RevocationKind;
use tessera_core::net::SourceBlocks;
use tessera_store::Revocation;
use tokio::sync::broadcast;

use crate::oauth::{OAuthError, Params};
use crate::{AppState, now};

/// How often the follower reads new entries while no announcement wakes it.
pub const POLL: Duration = Duration::from_millis(50);
/// How often it reads while announcements wake it (PostgreSQL with its listener connected).
pub const LISTENING_POLL: Duration = Duration::from_millis(500);
/// How often an idle stream sends a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// With no successful read of the store for this long, the node stops sending heartbeats.
const FOLLOWER_STALE_SECS: i64 = 10;
/// Entries buffered per guard before a slow guard is disconnected (it then resumes from its last id).
const BUFFER: usize = 4096;

/// The node's fan-out of newly committed revocations.
#[derive(Debug)]
pub struct RevocationFeed {
    sender: broadcast::Sender<Arc<Revocation>>,
    last: AtomicI64,
    /// When the follower last read the store successfully (Unix seconds).
    healthy_at: AtomicI64,
    wake: tokio::sync::Notify,
    /// Whether the store's announcements are heard now (then the follower polls only as a safety net).
    listening: std::sync::atomic::AtomicBool,
    /// The sources blocked now (`source` entries), for the server's own endpoints; and whether any is, so
    /// that requests skip the lock while none is.
    blocks: std::sync::RwLock<SourceBlocks>,
    blocking: std::sync::atomic::AtomicBool,
}

impl RevocationFeed {
    /// A feed that starts after sequence number `from`, with the `live` entries committed up to it (the
    /// source blocks among them apply at once).
    pub fn new(from: i64, live: &[Revocation]) -> Self {
        let feed = RevocationFeed {
            sender: broadcast::channel(BUFFER).0,
            last: AtomicI64::new(from),
            healthy_at: AtomicI64::new(now()),
            wake: tokio::sync::Notify::new(),
            listening: std::sync::atomic::AtomicBool::new(false),
            blocks: std::sync::RwLock::new(SourceBlocks::default()),
            blocking: std::sync::atomic::AtomicBool::new(false),
        };
        let now = now();
        for entry in live {
            feed.note(entry, now);
        }
        feed
    }

    /// Applies a source entry to the block list.
    fn note(&self, entry: &Revocation, now: i64) {
        if entry.kind != RevocationKind::Source {
            return;
        }
        if let Ok(mut blocks) = self.blocks.write() {
            blocks.prune(now);
            blocks.apply(&entry.subject, entry.not_before.is_some(), entry.expires_at, now);
            self.blocking.store(!blocks.is_empty(), Ordering::Release);
        }
    }

    /// Whether requests from `ip` are blocked now (`block_source`).
    /// Costs one atomic load while nothing is blocked.
    pub fn blocks(&self, ip: std::net::IpAddr) -> bool {
        if !self.blocking.load(Ordering::Acquire) {
            return false;
        }
        // A poisoned lock means a writer panicked mid-update: refuse rather than guess.
        self.blocks.read().map_or(true, |b| b.blocks(ip, now()))
    }

    /// Asks the follower to read now instead of at its next tick: this node just committed a revocation.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when [`RevocationFeed::wake`] is called.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Records whether the store's announcements are heard (see [`LISTENING_POLL`]).
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
    }

    /// How long the follower waits for a wake before it reads anyway.
    pub fn poll_interval(&self) -> Duration {
        if self.listening.load(Ordering::Acquire) { LISTENING_POLL } else { POLL }
    }

    /// Reads and publishes every entry committed since the last call.
    ///
    /// # Errors
    /// A store failure (the next call retries from the same point).
    pub async fn follow_once(&self, state: &AppState) -> Result<(), tessera_store::StoreError> {
        loop {
            let after = self.last.load(Ordering::Acquire);
            let entries = state.store.revocations_after(after, 1000).await?;
            let full = entries.len() == 1000;
            let mut signer_revoked = false;
            for entry in entries {
                self.last.store(entry.seq, Ordering::Release);
                self.note(&entry, now());
                signer_revoked |=
                    entry.kind == RevocationKind::Key && entry.subject == state.keyring().signer().kid();
                let _ = self.sender.send(Arc::new(entry));
            }
            if signer_revoked {
                // An emergency rotation on another node (or by the CLI): stop signing with the withdrawn key
                // now, not at the next key reload.
                if let Err(e) = crate::reload_keys(state).await {
                    tracing::error!(error = %e, "this node's signing key was revoked and the keys cannot be reloaded");
                }
            }
            if !full {
                self.healthy_at.store(now(), Ordering::Release);
                return Ok(());
            }
        }
    }
}

fn entry_json(r: &Revocation) -> serde_json::Value {
    json!({
        "seq": r.seq,
        "kind": r.kind.as_str(),
        "subject": r.subject,
        "not_before": r.not_before,
        "expires_at": r.expires_at,
        "reason": r.reason,
    })
}

/// `GET /revocations/stream`, for confidential clients of resource servers (clients with an audience).
pub async fn stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(refusal) = crate::ingest::authenticate_resource_server(&state, &headers).await {
        return refusal;
    }
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or_else(|| params.get("after"))
        .map(|v| v.trim().parse::<i64>());
    let after = match resume {
        None => None,
        Some(Ok(seq)) if seq >= 0 => Some(seq),
        Some(_) => {
            return OAuthError::invalid_request("Last-Event-ID must be a sequence number").into_response();
        }
    };
    // Subscribe before reading the backlog, so that nothing committed in between is missed; duplicates are
    // dropped by sequence number.
    let receiver = state.revocations.sender.subscribe();
    let now = now();
    let head = match state.store.revocation_seq().await {
        Ok(head) => head,
        Err(e) => return OAuthError::from(e).into_response(),
    };
    // A guard ahead of this database (restored from a backup, or another database) gets a full snapshot:
    // resuming would skip every new entry up to its old number.
    let after = after.filter(|&seq| seq <= head);
    let backlog = match after {
        Some(after) => state.store.revocations_after(after, i64::MAX).await,
        None => state.store.live_revocations(now).await,
    };
    let backlog: Vec<Revocation> = match backlog {
        Ok(entries) => entries.into_iter().filter(|r| r.expires_at > now).collect(),
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let head = backlog.iter().map(|r| r.seq).max().unwrap_or(0).max(head).max(after.unwrap_or(0));
    let snapshot = json!({
        "seq": head,
        "resumed_after": after,
        "entries": backlog.iter().map(entry_json).collect::<Vec<_>>(),
    });
    let first = Event::default().event("snapshot").id(head.to_string()).data(snapshot.to_string());
    let closing = state.closing.subscribe();
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Arc::clone(&state);
    let gauge = state.metrics.stream_opened();
    let live = stream::unfold(
        (receiver, closing, head, beat),
        move |(mut receiver, mut closing, last, mut beat)| {
            let feed = Arc::clone(&feed);
            // Moved into every step, so the count drops when the stream does (the guard went away).
            let _counted = &gauge;
            async move {
                loop {
                    // `None`: a heartbeat is due.
                    let next = tokio::select! {
                        next = receiver.recv() => Some(next),
                        _ = beat.tick() => None,
                        // The server is shutting down: end the stream; the guard reconnects and resumes.
                        _ = closing.wait_for(|c| *c) => return None,
                    };
                    let Some(next) = next else {
                        // A heartbeat vouches that this node is still reading new revocations: with its
                        // follower failing (database unreachable from here) the guard hears nothing and its
                        // staleness bound runs, instead of being kept "fresh" by a node that sees no revocations.
                        let healthy_at = feed.revocations.healthy_at.load(Ordering::Acquire);
                        if crate::now() - healthy_at > FOLLOWER_STALE_SECS {
                            continue;
                        }
                        let event = Event::default().event("heartbeat").data("{}");
                        return Some((Ok::<_, Infallible>(event), (receiver, closing, last, beat)));
                    };
                    match next {
                        Ok(entry) if entry.seq <= last => continue,
                        Ok(entry) => {
                            let event = Event::default()
                                .event("revocation")
                                .id(entry.seq.to_string())
                                .data(entry_json(&entry).to_string());
                            return Some((Ok::<_, Infallible>(event), (receiver, closing, entry.seq, beat)));
                        }
                        // A guard too slow to keep up is disconnected; it resumes from its last id.
                        Err(_) => return None,
                    }
                }
            }
        },
    );
    let events = stream::once(async move { Ok::<_, Infallible>(first) }).chain(live);
    Sse::new(events).into_response()
}
