//! The `detection_delay` scenario: how long from a theft to its automatic response.
//!
//! For each of `n` refresh families, a refresh token is rotated twice and then presented again (a reuse,
//! certain theft). The server revokes the family at once; the detector, following the audit log, raises
//! `refresh_token_reuse`, runs its responses (`revoke_session`) and then releases the alert to the webhook,
//! which is this process. The time from sending the reuse to the alert's arrival is recorded: an upper
//! bound on event-to-response, since the responses run before the alert is released.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::Conn;

#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall-clock time")]
fn instant() -> Instant {
    Instant::now()
}

/// The webhook the server's alerts come to: each alert's session (`detection.sid`) and arrival time.
pub(crate) struct Webhook {
    /// `http://127.0.0.1:port/alerts`.
    pub(crate) url: String,
    arrivals: mpsc::UnboundedReceiver<(String, Instant)>,
}

/// The HMAC key the server signs alerts with during the bench (the bench does not check signatures).
pub(crate) const WEBHOOK_SECRET: &str = "tessera-bench-webhook-secret-0123456789";

impl Webhook {
    pub(crate) async fn start() -> Result<Webhook, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let url = format!("http://{}/alerts", listener.local_addr().map_err(|e| e.to_string())?);
        let (tx, arrivals) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let at = instant();
                            let body =
                                req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                            if let Some(sid) = json["detection"]["sid"].as_str() {
                                let _ = tx.send((sid.to_owned(), at));
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b""))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Webhook { url, arrivals })
    }
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `families.len()` thefts, one every `gap`, and reports the delay from each reuse to its alert.
/// `families` pairs each family's id with its first refresh token.
pub(crate) async fn detection_delay(
    addr: &str,
    webhook: &mut Webhook,
    families: Vec<(String, String)>,
    gap: Duration,
) -> Result<String, String> {
    let n = families.len();
    let mut conn = Conn::open(addr).await?;
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(n);
    let mut delays = Vec::with_capacity(n);
    let collect = |sid: String, at: Instant, sent: &HashMap<String, Instant>, delays: &mut Vec<Duration>| {
        if let Some(t0) = sent.get(&sid) {
            delays.push(at.saturating_duration_since(*t0));
        }
    };
    for (sid, first) in families {
        let mut token = first.clone();
        for _ in 0..2 {
            let (status, body) = conn
                .post("/token", None, format!("grant_type=refresh_token&client_id=app&refresh_token={token}"))
                .await?;
            if status != 200 {
                return Err(format!("a rotation answered {status}"));
            }
            let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            token = json["refresh_token"].as_str().ok_or("no refresh_token")?.to_owned();
        }
        sent.insert(sid, instant());
        let (status, _) = conn
            .post("/token", None, format!("grant_type=refresh_token&client_id=app&refresh_token={first}"))
            .await?;
        if status != 400 {
            return Err(format!("the reuse answered {status}, not 400 invalid_grant"));
        }
        let pause = tokio::time::sleep(gap);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                Some((sid, at)) = webhook.arrivals.recv() => collect(sid, at, &sent, &mut delays),
            }
        }
    }
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    while delays.len() < n {
        tokio::select! {
            () = &mut deadline => break,
            Some((sid, at)) = webhook.arrivals.recv() => collect(sid, at, &sent, &mut delays),
        }
    }
    let missing = n - delays.len();
    delays.sort_unstable();
    Ok(format!(
        "| detection_delay (reuse → response → alert) | {n} thefts, one every {} ms | p50 {:.0} ms | p99 {:.0} ms | max {:.0} ms | {missing} missing |",
        gap.as_millis(),
        percentile_ms(&delays, 0.50),
        percentile_ms(&delays, 0.99),
        percentile_ms(&delays, 1.0),
    ))
}
