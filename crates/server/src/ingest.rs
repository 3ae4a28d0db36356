//! `POST /guard/events`: usage events from guards and gateways, in batches, stored in the event log.
//!
//! Only a resource server's own confidential client may post, and it reports for the audiences it serves only.
//! Each event is checked field by field; a batch with one bad event is refused whole (400), so a guard
//! with a bug learns of it instead of losing data silently.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_core::ClientKind;
use tessera_store::{Client, Event};

use crate::oauth::{ClientAuth, OAuthError, Params, authenticate_client};
use crate::{AppState, now};

/// The most events in one request.
pub const MAX_BATCH: usize = 1000;
/// The event kinds a guard may report.
pub const GUARD_EVENT_KINDS: [&str; 3] = ["token_used", "token_rejected", "lateral_movement_attempt"];
const MAX_FIELD: usize = 256;

/// Authenticates a resource server's own client (confidential, secret-authenticated, serving an audience).
///
/// # Errors
/// The response to send: 401 for failed authentication, 403 for a client that is not a resource server's.
pub async fn authenticate_resource_server(state: &AppState, headers: &HeaderMap) -> Result<Client, Response> {
    let (client, auth) = authenticate_client(state, headers, &Params::default(), crate::now())
        .await
        .map_err(IntoResponse::into_response)?;
    if client.kind != ClientKind::Confidential || auth != ClientAuth::Secret || client.serves.is_empty() {
        let mut refusal = OAuthError::unauthorized_client("only a resource server's own client may do this");
        refusal.status = StatusCode::FORBIDDEN;
        return Err(refusal.into_response());
    }
    Ok(client)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    audience: Option<String>,
    events: Vec<Reported>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reported {
    kind: String,
    count: u64,
    first_at: i64,
    last_at: i64,
    ip: Option<String>,
    route: Option<String>,
    reason: Option<String>,
    sub: Option<String>,
    sid: Option<String>,
    client_id: Option<String>,
    jti: Option<String>,
    token_audience: Option<Value>,
}

fn short(v: Option<&String>) -> bool {
    v.is_none_or(|s| s.len() <= MAX_FIELD && !s.chars().any(char::is_control))
}

fn to_event(r: Reported, client: &Client, audience: &str, now: i64) -> Result<Event, &'static str> {
    if !GUARD_EVENT_KINDS.contains(&r.kind.as_str()) {
        return Err("unknown event kind");
    }
    if r.count == 0 || r.first_at > r.last_at || r.first_at <= 0 {
        return Err("bad count or times");
    }
    let ip = match r.ip.as_deref() {
        Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| "ip is not an address")?.to_string()),
        None => None,
    };
    let reason_ok = r.reason.as_deref().is_none_or(|s| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    });
    if !reason_ok {
        return Err("reason must be a snake_case name");
    }
    if ![&r.route, &r.sub, &r.sid, &r.client_id, &r.jti].into_iter().all(|f| short(f.as_ref())) {
        return Err("a field is too long or has control characters");
    }
    let token_audience = match &r.token_audience {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Array(_))) if v.to_string().len() <= 4 * MAX_FIELD => {
            Some(v.clone())
        }
        Some(_) => return Err("token_audience must be a string or an array of strings"),
    };
    let outcome = if r.kind == "token_used" { "allowed" } else { "refused" };
    let detail = json!({
        "count": r.count,
        "first_at": r.first_at,
        "token_audience": token_audience,
    });
    Ok(Event {
        // A guard's clock may run ahead; the log never holds an event from the future.
        at: r.last_at.min(now),
        kind: r.kind,
        ip,
        user_agent: None,
        sub: r.sub,
        sid: r.sid,
        jti: r.jti,
        client_id: r.client_id,
        audience: Some(audience.to_owned()),
        service: Some(client.id.clone()),
        route: r.route,
        outcome: Some(outcome.to_owned()),
        reason: r.reason,
        actor: None,
        detail: Some(detail.to_string()),
    })
}

/// `POST /guard/events`.
pub async fn events(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let client = match authenticate_resource_server(&state, &headers).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    let Ok(batch) = serde_json::from_slice::<Batch>(&body) else {
        return OAuthError::invalid_request("the body must be a JSON event batch").into_response();
    };
    if batch.events.len() > MAX_BATCH {
        return OAuthError::invalid_request("too many events in one batch").into_response();
    }
    let audience = match batch.audience {
        Some(a) if client.serves.contains(&a) => a,
        Some(_) => {
            let mut refusal = OAuthError::unauthorized_client("a guard reports for its own audience only");
            refusal.status = StatusCode::FORBIDDEN;
            return refusal.into_response();
        }
        None => client.serves.first().cloned().unwrap_or_default(),
    };
    let now = now();
    let mut stored = Vec::with_capacity(batch.events.len());
    let counts: Vec<u64> = batch.events.iter().map(|r| r.count).collect();
    for r in batch.events {
        match to_event(r, &client, &audience, now) {
            Ok(e) => stored.push(e),
            Err(why) => return OAuthError::invalid_request(why).into_response(),
        }
    }
    for (e, n) in stored.iter().zip(&counts) {
        if e.kind == "token_rejected" {
            state.metrics.guard_rejections(e.reason.as_deref().unwrap_or("unknown"), *n);
        }
    }
    let lateral = stored.iter().filter(|e| e.kind == "lateral_movement_attempt").count();
    if lateral > 0 {
        tracing::warn!(service = %client.id, count = lateral, "lateral movement attempt reported by a guard");
    }
    if let Err(e) = state.store.append_usage(&stored).await {
        return OAuthError::from(e).into_response();
    }
    let body = json!({ "accepted": stored.len() }).to_string();
    (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
