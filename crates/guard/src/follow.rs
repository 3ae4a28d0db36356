//! The guard's background tasks: following the server's revocation stream, and housekeeping (loading and
//! refreshing keys, pruning expired revocations, publishing gauges).
//!
//! The stream is server-sent events: a `snapshot`, then `revocation` entries and `heartbeat`s. Every event
//! counts as having heard from the server. On any failure the follower reconnects with backoff and resumes
//! with `Last-Event-ID`, so no entry is missed; until it hears again, the staleness bound runs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::time::{sleep, timeout};

use crate::guard::{Inner, unix_now};
use crate::revocation::Entry;

/// With nothing read for this long (three missed heartbeats) the connection is presumed dead.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One server-sent event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) event: String,
    pub(crate) data: String,
    pub(crate) id: Option<String>,
}

/// An incremental parser for `text/event-stream` (the WHATWG rules we need: `event`, `data`, `id`, comments,
/// `\n` or `\r\n` line ends).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no line end (so a long line is scanned once, not per chunk).
    scanned: usize,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds a chunk; returns the events it completed. `Err` when a line or an event exceeds `limit` bytes.
    pub(crate) fn feed(&mut self, chunk: &[u8], limit: usize) -> Result<Vec<SseEvent>, ()> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        // `start`: where the current line begins; `from`: where to look for its end.
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(offset) = self.buf[from..].iter().position(|&b| b == b'\n') {
            let end = from + offset;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            from = start;
            if line.is_empty() {
                if self.has_data || !self.current.event.is_empty() {
                    out.push(std::mem::take(&mut self.current));
                }
                self.current = SseEvent::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.current.event = value.to_owned(),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                    if self.current.data.len() > limit {
                        return Err(());
                    }
                }
                "id" => self.current.id = Some(value.to_owned()),
                _ => {}
            }
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > limit {
            return Err(());
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
struct Snapshot {
    seq: i64,
    resumed_after: Option<i64>,
    entries: Vec<Entry>,
}

/// Starts the follower and housekeeping tasks; both stop when the guard is dropped.
pub(crate) fn spawn(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let mut stopped = inner.alive.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            () = follow(weak) => {}
            _ = stopped.changed() => {}
        }
    });
    let weak = Arc::downgrade(inner);
    let mut stopped = inner.alive.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            () = housekeeping(weak) => {}
            _ = stopped.changed() => {}
        }
    });
}

async fn follow(weak: Weak<Inner>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let connected = connect(&inner).await;
        let resp = match connected {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(error = %e, "revocation stream: cannot connect");
                drop(inner);
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        inner.metrics.stream_connected.set(1);
        // A snapshot line holds every live entry, each about 150 bytes of JSON.
        let limit = inner.config.max_revocations.saturating_mul(256).max(1 << 20);
        drop(inner);
        let result = read(&weak, resp, limit, &mut backoff).await;
        let Some(inner) = weak.upgrade() else { return };
        inner.metrics.stream_connected.set(0);
        inner.metrics.stream_reconnects.inc();
        if let Err(e) = result {
            tracing::warn!(error = %e, "revocation stream ended");
        }
        drop(inner);
        sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(inner: &Inner) -> Result<http::Response<Incoming>, String> {
    let url = format!("{}/revocations/stream", inner.config.issuer.trim_end_matches('/'));
    let mut headers = vec![("accept", "text/event-stream".to_owned())];
    if inner.synced.load(Ordering::Acquire) {
        let seq = inner.revocations.read().map(|r| r.seq()).unwrap_or(0);
        headers.push(("last-event-id", seq.to_string()));
    }
    let resp = inner.http.send(http::Method::GET, &url, Some(&inner.auth), &headers, None).await?;
    match resp.status().as_u16() {
        200..=299 => {}
        401 => {
            return Err(format!(
                "{url}: HTTP 401: the server does not accept this guard's client credentials"
            ));
        }
        403 => {
            return Err(format!(
                "{url}: HTTP 403: this guard's client does not serve an audience (tessera client set-serves ID AUDIENCE)"
            ));
        }
        status => return Err(format!("{url}: HTTP {status}")),
    }
    Ok(resp)
}

async fn read(
    weak: &Weak<Inner>,
    resp: http::Response<Incoming>,
    limit: usize,
    backoff: &mut Duration,
) -> Result<(), String> {
    let mut parser = SseParser::default();
    let mut body = resp.into_body();
    loop {
        let frame = match timeout(READ_TIMEOUT, body.frame()).await {
            Err(_) => return Err("no heartbeat within the read timeout".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Ok(()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else { continue };
        let events = parser.feed(&chunk, limit).map_err(|()| "an event exceeds the size limit".to_owned())?;
        let Some(inner) = weak.upgrade() else { return Ok(()) };
        for event in events {
            handle(&inner, &event)?;
            if event.event == "snapshot" {
                *backoff = BACKOFF_MIN;
            }
        }
    }
}

fn handle(inner: &Inner, event: &SseEvent) -> Result<(), String> {
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    match event.event.as_str() {
        "snapshot" => {
            let snap: Snapshot =
                serde_json::from_str(&event.data).map_err(|e| format!("bad snapshot: {e}"))?;
            let mut set = inner.revocations.write().map_err(|_| "revocation set poisoned".to_owned())?;
            // Merge only a backlog that continues exactly from our state; anything else (a server restored
            // from a backup, another database) replaces the set.
            let continues = snap.resumed_after == Some(set.seq()) && snap.seq >= set.seq();
            if continues && inner.synced.load(Ordering::Acquire) {
                for entry in snap.entries {
                    set.apply(entry, now);
                }
                let seq = set.seq().max(snap.seq);
                set.advance_to(seq);
            } else {
                set.replace(snap.seq, snap.entries, now);
            }
            inner.counted(&set);
            inner.metrics.revocation_seq.set(set.seq());
            drop(set);
            inner.synced.store(true, Ordering::Release);
        }
        "revocation" => {
            let entry: Entry = serde_json::from_str(&event.data).map_err(|e| format!("bad entry: {e}"))?;
            let mut set = inner.revocations.write().map_err(|_| "revocation set poisoned".to_owned())?;
            set.apply(entry, now);
            inner.counted(&set);
            inner.metrics.revocation_seq.set(set.seq());
        }
        _ => {}
    }
    inner.heard();
    Ok(())
}

async fn housekeeping(weak: Weak<Inner>) {
    let mut next_jwks = tokio::time::Instant::now();
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            if tokio::time::Instant::now() >= next_jwks {
                match inner.keys.refresh(&inner.http, &inner.config.issuer).await {
                    Ok(_) => next_jwks = tokio::time::Instant::now() + inner.config.jwks_refresh,
                    Err(e) => {
                        inner.metrics.jwks_fetch_failures.inc();
                        tracing::warn!(error = %e, "JWKS fetch failed");
                        next_jwks = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
            if let Ok(mut set) = inner.revocations.write() {
                set.prune(now);
                inner.counted(&set);
            }
        }
        sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_survive_any_chunking() {
        let stream = b": hello\nevent: snapshot\nid: 3\ndata: {\"a\":1}\n\nevent: heartbeat\r\ndata: {}\r\n\r\nevent: revocation\nid: 4\ndata: x\ndata: y\n\n";
        let want = vec![
            SseEvent { event: "snapshot".into(), data: "{\"a\":1}".into(), id: Some("3".into()) },
            SseEvent { event: "heartbeat".into(), data: "{}".into(), id: None },
            SseEvent { event: "revocation".into(), data: "x\ny".into(), id: Some("4".into()) },
        ];
        for size in 1..stream.len() {
            let mut parser = SseParser::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(size) {
                got.extend(parser.feed(chunk, 1 << 20).unwrap());
            }
            assert_eq!(got, want, "chunk size {size}");
        }
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = SseParser::default();
        assert!(parser.feed(&[b'a'; 100], 64).is_err());
    }
}
