//! Alerts: what a detection tells the outside world, and their delivery from the durable outbox.
//!
//! A detection's alerts are queued in the transaction that claims it (`Store::raise_detection`), held for a
//! few seconds while its responses run, then rewritten with what the responses did and released. A node that
//! dies in between leaves them to go out anyway when the hold ends, saying the responses' results are
//! unknown. The deliverer on every node takes due rows under a lease, sends them, and records the outcome;
//! failures are retried with exponential backoff until [`AlertConfig::give_up_secs`], so an alert survives a
//! receiver outage and a server restart. Delivery is at least once: receivers deduplicate by the alert id
//! (the webhook's `Tessera-Alert-Id`, the SET's `jti`).
//!
//! Sinks:
//! - **webhook**: the alert as JSON, signed with HMAC-SHA256 over `"{t}.{body}"` in
//!   `Tessera-Signature: t=<unix seconds>,v1=<hex>` (the timestamp lets a receiver refuse replays);
//! - **Security Event Tokens** (RFC 8417), pushed as RFC 8935 describes and signed with the issuer's
//!   current key: one SET per event, CAEP `session-revoked` when a session or user was revoked, CAEP
//!   `credential-change` when a password reset was forced, and Tessera's own detection event always;
//! - **the log**, always.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera_core::detect::Detection;
use tessera_store::{Alert, AlertOutcome, NewAlert};

use crate::AppState;
use crate::response::Action;

/// The event type of Tessera's own detection SET.
pub const DETECTION_EVENT: &str = "urn:tessera:secevent:detection";
/// CAEP: a session was revoked.
pub const CAEP_SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP: a credential was created, changed or revoked.
pub const CAEP_CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";

/// How long a detection's alerts wait for its responses before they go out regardless.
pub const HOLD_SECS: i64 = 5;
/// How long a node may hold a taken alert before another may take it (longer than one attempt can last).
const LEASE_SECS: i64 = 15;
/// Time allowed for one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Alerts taken per round.
const BATCH: i64 = 32;
/// The longest wait between two attempts.
const MAX_BACKOFF_SECS: i64 = 300;

/// The `[alerts]` section.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// Where the webhook posts alerts (http or https); empty: no webhook.
    pub webhook_url: String,
    /// The webhook's HMAC-SHA256 key, at least 32 characters. Never logged.
    pub webhook_secret: String,
    /// Where Security Event Tokens are pushed (RFC 8935); empty: none.
    pub set_url: String,
    /// The SETs' `aud`; empty: `set_url`.
    pub set_audience: String,
    /// How long an undelivered alert is retried before it is given up (and logged as lost), seconds.
    pub give_up_secs: i64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook_url: String::new(),
            webhook_secret: String::new(),
            set_url: String::new(),
            set_audience: String::new(),
            give_up_secs: 3 * 86_400,
        }
    }
}

impl fmt::Debug for AlertConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertConfig")
            .field("webhook_url", &self.webhook_url)
            .field("set_url", &self.set_url)
            .field("set_audience", &self.set_audience)
            .field("give_up_secs", &self.give_up_secs)
            .finish_non_exhaustive()
    }
}

impl AlertConfig {
    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// The key at fault and why (never the secret).
    pub fn check(&self) -> Result<(), String> {
        let is_url = |u: &str| {
            u.strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.contains([' ', '#']))
        };
        if !self.webhook_url.is_empty() {
            if !is_url(&self.webhook_url) {
                return Err("alerts.webhook_url: must be an http:// or https:// URL".into());
            }
            if self.webhook_secret.len() < 32 {
                return Err(
                    "alerts.webhook_secret: must be at least 32 characters when a webhook is set".into()
                );
            }
        }
        if !self.set_url.is_empty() && !is_url(&self.set_url) {
            return Err("alerts.set_url: must be an http:// or https:// URL".into());
        }
        if !(60..=30 * 86_400).contains(&self.give_up_secs) {
            return Err("alerts.give_up_secs: must be between 60 and 2592000 (30 days)".into());
        }
        Ok(())
    }

    /// The sinks alerts are queued for.
    fn sinks(&self) -> Vec<&'static str> {
        let mut sinks = Vec::new();
        if !self.webhook_url.is_empty() {
            sinks.push("webhook");
        }
        if !self.set_url.is_empty() {
            sinks.push("set");
        }
        sinks
    }
}

/// What one response did, as alerts report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taken {
    /// The action's name.
    pub action: &'static str,
    /// Its outcome (`revoked`, `blocked`, `skipped:no_session`, `failed`, … or `unknown` while held).
    pub result: &'static str,
}

/// The detection as alerts describe it.
fn detection_json(d: &Detection) -> Value {
    json!({
        "key": d.key(),
        "rule": d.rule,
        "severity": d.severity.name(),
        "subject": d.subject,
        "explanation": d.explanation,
        "evidence": d.evidence,
        "sub": d.sub,
        "sid": d.sid,
        "jti": d.jti,
        "ip": d.ip,
        "last_at": d.last_at,
    })
}

/// A queued alert and how to rewrite it once the responses are known.
#[derive(Debug, Clone)]
pub struct Queued {
    id: String,
    sink: &'static str,
    /// For a SET: which event it carries.
    event: SetEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetEvent {
    Detection,
    SessionRevoked,
    CredentialChange,
}

/// The alerts a detection queues for the configured sinks, with the responses' results still unknown; and
/// how to find them again. `ids` makes unique ids (`crypto::sortable_id`).
///
/// # Errors
/// If an id cannot be made.
pub fn plan(
    state: &AppState,
    d: &Detection,
    actions: &[Action],
    now: i64,
    mut ids: impl FnMut() -> Result<String, String>,
) -> Result<(Vec<NewAlert>, Vec<Queued>), String> {
    let config = &state.config.alerts;
    let unknown: Vec<Taken> = actions.iter().map(|a| Taken { action: a.name(), result: "unknown" }).collect();
    let mut queued = Vec::new();
    if actions.contains(&Action::Alert) {
        for sink in config.sinks() {
            let events: &[SetEvent] = if sink == "set" {
                &[SetEvent::Detection, SetEvent::SessionRevoked, SetEvent::CredentialChange]
            } else {
                &[SetEvent::Detection]
            };
            for event in events {
                // A CAEP event only where its action is configured; its result decides later if it goes.
                let wanted = match event {
                    SetEvent::Detection => true,
                    SetEvent::SessionRevoked => {
                        (actions.contains(&Action::RevokeSession) && d.sid.is_some())
                            || (actions.contains(&Action::RevokeUser) && d.sub.is_some())
                    }
                    SetEvent::CredentialChange => actions.contains(&Action::RevokeUser) && d.sub.is_some(),
                };
                if wanted {
                    queued.push(Queued { id: ids()?, sink, event: *event });
                }
            }
        }
    }
    let rows = queued
        .iter()
        .map(|q| NewAlert {
            id: q.id.clone(),
            sink: q.sink.to_owned(),
            detection: d.key(),
            payload: payload(state, q, d, &unknown, false, now).to_string(),
            next_at: now + HOLD_SECS,
        })
        .collect();
    Ok((rows, queued))
}

/// Rewrites the queued alerts with what the responses did and releases them. A CAEP event whose action did
/// not happen (skipped or failed) is released as the detection event's companion anyway: it says so.
pub async fn release(state: &AppState, queued: &[Queued], d: &Detection, taken: &[Taken], now: i64) {
    let one = |q: &Queued| {
        let body = payload(state, q, d, taken, true, now).to_string();
        let id = q.id.clone();
        async move {
            match state.store.update_alert(&id, &body, now).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(alert = %id, "alert went out before its responses were known"),
                Err(e) => {
                    tracing::error!(error = %e, alert = %id, "cannot release alert; it goes out when its hold ends")
                }
            }
        }
    };
    futures_util::future::join_all(queued.iter().map(one)).await;
    state.alerts_due.notify_one();
}

/// The payload stored for one alert: the webhook's JSON body, or a SET's claims (signed at delivery).
fn payload(state: &AppState, q: &Queued, d: &Detection, taken: &[Taken], complete: bool, now: i64) -> Value {
    let issuer = &state.config.issuer;
    if q.sink == "webhook" {
        return json!({
            "id": q.id,
            "type": "detection",
            "issuer": issuer,
            "created_at": now,
            "detection": detection_json(d),
            "responses": taken,
            "responses_complete": complete,
        });
    }
    let config = &state.config.alerts;
    let audience = if config.set_audience.is_empty() { &config.set_url } else { &config.set_audience };
    let user = d.sub.as_ref().map(|sub| json!({ "format": "iss_sub", "iss": issuer, "sub": sub }));
    let result_of = |action: Action| taken.iter().find(|t| t.action == action.name()).map(|t| t.result);
    let (sub_id, event_type, event) = match q.event {
        SetEvent::Detection => (
            user.clone().unwrap_or_else(|| json!({ "format": "opaque", "id": d.key() })),
            DETECTION_EVENT,
            json!({
                "event_timestamp": d.last_at,
                "detection": detection_json(d),
                "responses": taken,
                "responses_complete": complete,
            }),
        ),
        SetEvent::SessionRevoked => {
            let session_revoked =
                result_of(Action::RevokeSession).is_some_and(|r| matches!(r, "revoked" | "already_revoked"));
            let sub_id = match (&d.sid, &user) {
                // The session when that is what was revoked; the user (all sessions) otherwise.
                (Some(sid), Some(user)) if session_revoked || result_of(Action::RevokeUser).is_none() => {
                    json!({ "format": "complex", "user": user, "session": { "format": "opaque", "id": sid } })
                }
                (Some(sid), None) => json!({ "format": "opaque", "id": sid }),
                (_, Some(user)) => json!({ "format": "complex", "user": user }),
                (None, None) => json!({ "format": "opaque", "id": d.key() }),
            };
            let result = result_of(Action::RevokeUser)
                .filter(|_| !session_revoked)
                .or_else(|| result_of(Action::RevokeSession))
                .unwrap_or("unknown");
            (
                sub_id,
                CAEP_SESSION_REVOKED,
                json!({
                    "event_timestamp": now,
                    "initiating_entity": "policy",
                    "reason_admin": { "en": d.explanation },
                    "tessera_result": result,
                }),
            )
        }
        SetEvent::CredentialChange => (
            user.clone().unwrap_or_else(|| json!({ "format": "opaque", "id": d.key() })),
            CAEP_CREDENTIAL_CHANGE,
            json!({
                "event_timestamp": now,
                "initiating_entity": "policy",
                "credential_type": "password",
                "change_type": "revoke",
                "reason_admin": { "en": format!("A password reset is required: {}", d.explanation) },
                "tessera_result": result_of(Action::RevokeUser).unwrap_or("unknown"),
            }),
        ),
    };
    json!({
        "iss": issuer,
        "jti": q.id,
        "iat": now,
        "aud": audience,
        "txn": d.key(),
        "sub_id": sub_id,
        "events": { event_type: event },
    })
}

/// `Tessera-Signature` for `body` sent at `t`: `t=<t>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>`.
pub fn webhook_signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// When to try again after `attempts` failed attempts: 1 s, 2 s, 4 s, … at most [`MAX_BACKOFF_SECS`].
pub fn backoff(attempts: i64, now: i64) -> i64 {
    let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
    now + 2_i64.saturating_pow(exp).min(MAX_BACKOFF_SECS)
}

/// The deliverer's HTTP client.
#[derive(Clone, Debug)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Sender {
    /// A client with rustls over aws-lc-rs and the Mozilla roots; no redirects are followed.
    ///
    /// # Errors
    /// If TLS cannot be set up.
    pub fn new() -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Ok(Sender { client })
    }

    /// Posts `body` and returns the status and (at most 4 KiB of) the response body.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut request = Request::builder().method(Method::POST).uri(url);
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|_| "bad header value".to_owned())?;
            request = request.header(*name, value);
        }
        let request = request
            .header(header::USER_AGENT, concat!("tessera/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "bad request".to_owned())?;
        let attempt = async {
            let response = self.client.request(request).await.map_err(|e| transport_error(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), 4096)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            Ok((status, body))
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await.map_err(|_| "timeout".to_owned())?
    }
}

/// A transport failure as a short, fixed description (never a URL's credentials).
fn transport_error(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() { "connection failed".into() } else { "transport error".into() }
}

/// Sends one alert; how the attempt ended.
async fn deliver(state: &AppState, sender: &Sender, alert: &Alert, now: i64) -> AlertOutcome {
    let config = &state.config.alerts;
    let retry = |error: String| {
        if now - alert.created_at >= config.give_up_secs {
            AlertOutcome::Failed { error: format!("gave up after {} attempts: {error}", alert.attempts) }
        } else {
            AlertOutcome::Retry { error, next_at: backoff(alert.attempts, now) }
        }
    };
    match alert.sink.as_str() {
        "webhook" if !config.webhook_url.is_empty() => {
            let body = alert.payload.as_bytes().to_vec();
            let signature = webhook_signature(config.webhook_secret.as_bytes(), now, &body);
            let headers = [
                ("content-type", "application/json".to_owned()),
                ("tessera-alert-id", alert.id.clone()),
                ("tessera-signature", signature),
            ];
            match sender.post(&config.webhook_url, &headers, body).await {
                Ok((status, _)) if status.is_success() => AlertOutcome::Delivered,
                Ok((status, _)) => retry(format!("status {}", status.as_u16())),
                Err(e) => retry(e),
            }
        }
        "set" if !config.set_url.is_empty() => {
            let Ok(claims) = serde_json::from_str::<Value>(&alert.payload) else {
                return AlertOutcome::Failed { error: "unreadable payload".into() };
            };
            let token = match state.keyring().signer().sign_jwt("secevent+jwt", &claims) {
                Ok(token) => token,
                Err(_) => return retry("cannot sign".into()),
            };
            let headers = [
                ("content-type", "application/secevent+jwt".to_owned()),
                ("accept", "application/json".to_owned()),
            ];
            match sender.post(&config.set_url, &headers, token.into_bytes()).await {
                Ok((status, _)) if status.is_success() => AlertOutcome::Delivered,
                // RFC 8935 §2.3: the receiver refused this SET; sending it again cannot help.
                Ok((StatusCode::BAD_REQUEST, body)) => AlertOutcome::Failed { error: set_error(&body) },
                Ok((status, _)) => retry(format!("status {}", status.as_u16())),
                Err(e) => retry(e),
            }
        }
        _ => AlertOutcome::Failed { error: format!("the {} sink is no longer configured", alert.sink) },
    }
}

/// The `err` code of an RFC 8935 error response, if it is one of the registered short codes.
fn set_error(body: &[u8]) -> String {
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("err").and_then(Value::as_str).map(str::to_owned))
        .filter(|c| c.len() <= 32 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    match code {
        Some(code) => format!("refused: {code}"),
        None => "refused: status 400".into(),
    }
}

/// One round: takes what is due, delivers it, records the outcomes, and updates the depth gauge.
///
/// # Errors
/// A store failure.
pub async fn round(state: &AppState, sender: &Sender, now: i64) -> Result<usize, tessera_store::StoreError> {
    let due = state.store.take_alerts(now, now + LEASE_SECS, BATCH).await?;
    let outcomes = futures_util::future::join_all(due.iter().map(|a| deliver(state, sender, a, now))).await;
    for (alert, outcome) in due.iter().zip(&outcomes) {
        match outcome {
            AlertOutcome::Delivered => {
                tracing::info!(alert = %alert.id, sink = %alert.sink, detection = %alert.detection, "alert delivered");
            }
            AlertOutcome::Retry { error, next_at } => {
                tracing::warn!(alert = %alert.id, sink = %alert.sink, attempts = alert.attempts, error = %error, retry_in = next_at - now, "alert delivery failed; will retry");
            }
            AlertOutcome::Failed { error } => {
                tracing::error!(alert = %alert.id, sink = %alert.sink, detection = %alert.detection, error = %error, "alert given up");
            }
        }
        state.metrics.alert_attempt(&alert.sink, outcome);
        state.store.finish_alert(&alert.id, outcome, now).await?;
    }
    state.metrics.set_alert_depth(state.store.pending_alerts().await?);
    Ok(due.len())
}

/// Delivers alerts until `stop`: every second, or at once when a detection released some.
pub async fn run(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let sender = match Sender::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "alert delivery cannot start; alerts stay queued");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.alerts_due.notified() => {}
            _ = stop.changed() => return,
        }
        loop {
            match round(&state, &sender, crate::now()).await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "alert delivery round failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signature_is_hmac_sha256_over_time_dot_body() {
        // Independently: python3 -c "import hmac,hashlib;
        //   print(hmac.new(b'k'*32, b'1700000000.{\"a\":1}', hashlib.sha256).hexdigest())"
        let sig = webhook_signature(&[b'k'; 32], 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(sig, "t=1700000000,v1=6935b796c0fec66e5dee52c86c7fd1218a424c32f1adb239ff2893c31e54f033");
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1, 100), 101);
        assert_eq!(backoff(2, 100), 102);
        assert_eq!(backoff(5, 100), 116);
        assert_eq!(backoff(9, 100), 356);
        assert_eq!(backoff(10, 100), 400);
        assert_eq!(backoff(1000, 100), 400);
    }

    #[test]
    fn only_registered_looking_set_error_codes_are_kept() {
        assert_eq!(set_error(br#"{"err":"invalid_key","description":"x"}"#), "refused: invalid_key");
        assert_eq!(set_error(br#"{"err":"<script>"}"#), "refused: status 400");
        assert_eq!(set_error(b"not json"), "refused: status 400");
    }

    #[test]
    fn config_refuses_a_webhook_without_a_strong_secret_and_never_shows_it() {
        let c = AlertConfig {
            webhook_url: "https://hooks.example/tessera".into(),
            webhook_secret: "short".into(),
            ..AlertConfig::default()
        };
        assert!(c.check().unwrap_err().starts_with("alerts.webhook_secret"));
        let c = AlertConfig { webhook_secret: "s".repeat(32), ..c };
        assert_eq!(c.check(), Ok(()));
        assert!(!format!("{c:?}").contains("sss"));
        let c = AlertConfig { set_url: "ftp://x".into(), ..AlertConfig::default() };
        assert!(c.check().unwrap_err().starts_with("alerts.set_url"));
    }
}
