//! Usage events: what the guard granted and refused, counted per token, route, source and reason, and sent
//! to the server in batches as the guard's own client (`POST /guard/events`).
//!
//! Counting on the request path only touches a map under a short lock; the key holds no strings. A flush
//! swaps the map out and sends it. The number of distinct keys per interval is capped, and so is the backlog
//! kept while the server is unreachable; what is over is counted as dropped, never blocks a request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::guard::{Identity, Inner};

/// Distinct (token, route, source, outcome) keys kept per interval.
const MAX_KEYS: usize = 10_000;
/// Events kept for resending while the server is unreachable.
const MAX_BACKLOG: usize = 50_000;
/// Events per request to the server.
const BATCH: usize = 1_000;

#[derive(Hash, PartialEq, Eq)]
struct Key {
    reason: &'static str,
    /// The token's SHA-256 (zero for a request without a validated token).
    token: [u8; 32],
    route: Option<usize>,
    ip: Option<IpAddr>,
}

struct Usage {
    count: u64,
    first: u64,
    last: u64,
    identity: Option<Arc<Identity>>,
}

#[derive(Default)]
struct State {
    usage: HashMap<Key, Usage>,
    /// Lateral-movement events and the route each was tried on (named when drained).
    lateral: Vec<(Option<usize>, Value)>,
    backlog: Vec<Value>,
    dropped: u64,
}

/// The guard's usage counter.
#[derive(Clone, Default)]
pub(crate) struct Reporter {
    state: Arc<Mutex<State>>,
}

#[derive(Deserialize)]
struct Foreign {
    sub: Option<String>,
    sid: Option<String>,
    client_id: Option<String>,
    jti: Option<String>,
    aud: Option<Value>,
}

impl Reporter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn count(
        &self,
        reason: &'static str,
        identity: Option<&Arc<Identity>>,
        route: Option<usize>,
        ip: Option<IpAddr>,
        now: u64,
    ) {
        let Ok(mut state) = self.state.lock() else { return };
        let key = Key { reason, token: identity.map_or([0; 32], |i| i.token_hash), route, ip };
        let full = state.usage.len() >= MAX_KEYS;
        match state.usage.get_mut(&key) {
            Some(u) => {
                u.count += 1;
                u.last = now;
            }
            None if full => state.dropped += 1,
            None => {
                state
                    .usage
                    .insert(key, Usage { count: 1, first: now, last: now, identity: identity.cloned() });
            }
        }
    }

    pub(crate) fn granted(
        &self,
        identity: &Arc<Identity>,
        route: Option<usize>,
        ip: Option<IpAddr>,
        now: u64,
    ) {
        self.count("", Some(identity), route, ip, now);
    }

    pub(crate) fn rejected(
        &self,
        reason: &'static str,
        identity: Option<&Arc<Identity>>,
        route: Option<usize>,
        ip: Option<IpAddr>,
        now: u64,
    ) {
        self.count(reason, identity, route, ip, now);
    }

    /// Records a genuine token for another audience, with the identifiers it carries.
    pub(crate) fn lateral(&self, payload: &[u8], route: Option<usize>, ip: Option<IpAddr>, now: u64) {
        let Ok(found) = serde_json::from_slice::<Foreign>(payload) else { return };
        let Ok(mut state) = self.state.lock() else { return };
        if state.lateral.len() >= MAX_KEYS {
            state.dropped += 1;
            return;
        }
        state.lateral.push((
            route,
            json!({
                "kind": "lateral_movement_attempt",
                "count": 1,
                "first_at": now,
                "last_at": now,
                "ip": ip.map(|ip| ip.to_string()),
                "sub": found.sub,
                "sid": found.sid,
                "client_id": found.client_id,
                "jti": found.jti,
                "token_audience": found.aud,
                "reason": "wrong_audience",
            }),
        ));
    }

    /// Takes everything counted so far, as events ready to send.
    fn drain(&self, inner_routes: &dyn Fn(usize) -> Option<String>) -> (Vec<Value>, u64) {
        let Ok(mut state) = self.state.lock() else { return (Vec::new(), 0) };
        let usage = std::mem::take(&mut state.usage);
        let mut events = std::mem::take(&mut state.backlog);
        for (key, u) in usage {
            let id = u.identity.as_ref().map(|i| &i.claims);
            events.push(json!({
                "kind": if key.reason.is_empty() { "token_used" } else { "token_rejected" },
                "count": u.count,
                "first_at": u.first,
                "last_at": u.last,
                "ip": key.ip.map(|ip| ip.to_string()),
                "route": key.route.and_then(inner_routes),
                "reason": (!key.reason.is_empty()).then_some(key.reason),
                "sub": id.map(|c| &c.sub),
                "sid": id.and_then(|c| c.sid.as_ref()),
                "client_id": id.map(|c| &c.client_id),
                "jti": id.map(|c| &c.jti),
            }));
        }
        for (route, mut e) in std::mem::take(&mut state.lateral) {
            e["route"] = json!(route.and_then(inner_routes));
            events.push(e);
        }
        (events, std::mem::take(&mut state.dropped))
    }

    fn requeue(&self, events: Vec<Value>) -> u64 {
        let Ok(mut state) = self.state.lock() else { return 0 };
        let room = MAX_BACKLOG.saturating_sub(state.backlog.len());
        let lost = events.len().saturating_sub(room);
        state.backlog.extend(events.into_iter().take(room));
        u64::try_from(lost).unwrap_or(u64::MAX)
    }
}

/// Sends what was counted; what could not be sent is kept for the next flush (up to the backlog cap).
async fn flush(inner: &Inner) {
    let routes = |i: usize| inner.route(Some(i)).map(|r| r.pattern.clone());
    let (events, dropped) = inner.reporter.drain(&routes);
    inner.metrics.events_dropped.inc_by(dropped);
    if events.is_empty() {
        return;
    }
    let url = format!("{}/guard/events", inner.config.issuer.trim_end_matches('/'));
    let mut rest = events;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(BATCH));
        let batch = rest;
        rest = tail;
        let body = json!({ "audience": inner.config.audience, "events": batch });
        let sent = inner.http.post_json(&url, &inner.auth, body.to_string().into_bytes()).await;
        match sent {
            Ok(status) if status.is_success() => {
                inner.metrics.events_sent.inc_by(u64::try_from(batch.len()).unwrap_or(u64::MAX));
            }
            Ok(status) if matches!(status.as_u16(), 400 | 413 | 422) => {
                // The server will never take this batch (a bug on one side): resending it would block every
                // later event behind it.
                tracing::warn!(
                    status = status.as_u16(),
                    events = batch.len(),
                    "usage events refused; dropped"
                );
                inner.metrics.events_dropped.inc_by(u64::try_from(batch.len()).unwrap_or(u64::MAX));
            }
            other => {
                let status = other.as_ref().map(|s| s.as_u16()).ok();
                tracing::warn!(?status, "usage events not delivered; kept for the next attempt");
                let mut unsent = batch;
                unsent.extend(rest);
                let lost = inner.reporter.requeue(unsent);
                inner.metrics.events_dropped.inc_by(lost);
                return;
            }
        }
    }
}

/// Starts the reporting task: a flush every interval. Call [`crate::Guard::flush_usage`] before dropping the guard
/// to send what was counted since the last one.
pub(crate) fn spawn(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let mut stopped = inner.alive.subscribe();
    let interval = inner.config.report_interval;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stopped.changed() => return,
            }
            let Some(inner) = weak.upgrade() else { return };
            flush(&inner).await;
        }
    });
}

impl Inner {
    /// Sends pending usage events now (the gateway calls it on shutdown).
    pub(crate) async fn flush_usage(&self) {
        flush(self).await;
    }
}
