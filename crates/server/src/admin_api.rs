//! The admin API: the incident operations of `tessera incident` over HTTP, for tooling and SOAR playbooks.
//! Every request carries an access token this server issued for the audience [`ADMIN_AUDIENCE`] with the
//! role `admin` (a DPoP-bound one with its proof); anything else is answered as RFC 6750 says. Answers are
//! JSON (or the report and timeline pages as HTML or Markdown when asked); errors are `{"error",
//! "error_description"}` and never carry internal detail.
//!
//! `POST /admin/incidents` opens, `GET /admin/incidents` lists, `GET /admin/incidents/{id}` shows,
//! `POST …/{id}/contain` contains, `POST …/{id}/close` closes, `GET …/{id}/timeline`, `…/{id}/lineage` and
//! `…/{id}/report` read; `GET /admin/timeline?user=|session=|token=|ip=` reads a timeline without an
//! incident.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tessera_store::{Event, Incident, IncidentAction, Store, StoreError};

use crate::endpoints::{TokenProblem, access_token, check_access_token, check_binding, token_error};
use crate::incident::{self, ContainOptions, IncidentError, Scope, Target, Window, incident_json};
use crate::{AppState, now};

/// The audience of admin tokens (registered as a resource at start, with the scope `admin`).
pub const ADMIN_AUDIENCE: &str = "tessera-admin";
/// The role an admin token must carry.
pub const ADMIN_ROLE: &str = "admin";

/// An error answer: status, a stable code, and a sentence for the operator.
fn error(status: StatusCode, code: &'static str, description: &str) -> Response {
    json_answer(status, &json!({ "error": code, "error_description": description }))
}

fn json_answer(status: StatusCode, body: &Value) -> Response {
    let mut r = crate::oauth::no_store_json(body.to_string());
    *r.status_mut() = status;
    r
}

/// A 400 `invalid_request` saying why.
fn bad(why: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", why)
}

fn ok(body: &Value) -> Response {
    json_answer(StatusCode::OK, body)
}

fn typed(content_type: &'static str, body: String) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON request body (an empty one reads as `{}`).
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, String> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    serde_json::from_slice(text).map_err(|e| {
        let why = if e.is_data() {
            "the body has an unknown or mistyped field"
        } else {
            "the body is not a JSON object"
        };
        why.to_owned()
    })
}

/// A query string read into `T` (every value a string; a repeated or unknown name is refused).
fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, String> {
    let mut map = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if map.insert(k.into_owned(), Value::String(v.into_owned())).is_some() {
            return Err("a query parameter is repeated".to_owned());
        }
    }
    serde_json::from_value(Value::Object(map)).map_err(|_| "an unknown query parameter".to_owned())
}

/// A number from the query.
fn number(value: Option<&String>, name: &str) -> Result<Option<i64>, String> {
    value.map(|v| v.parse::<i64>().map_err(|_| format!("{name} must be a number"))).transpose()
}

fn incident_error(e: IncidentError) -> Response {
    match e {
        IncidentError::NotFound(what) => error(StatusCode::NOT_FOUND, "not_found", &what),
        IncidentError::Invalid(what) => error(StatusCode::BAD_REQUEST, "invalid_request", &what),
        IncidentError::Store(e) => store_error(&e),
    }
}

fn store_error(e: &StoreError) -> Response {
    tracing::error!(error = %e, "admin API: store failure");
    match e {
        StoreError::Unavailable(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the database is unavailable")
        }
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the request could not be completed"),
    }
}

/// Checks the admin token; the actor to record (`admin:SUB`).
async fn admin(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) -> Result<String, Response> {
    let (token, dpop) = match access_token(headers) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(token_error(StatusCode::UNAUTHORIZED, None, false)),
        Err(_) => return Err(token_error(StatusCode::BAD_REQUEST, Some("invalid_request"), false)),
    };
    let now = now();
    let claims = match check_access_token(state, token, now).await {
        Ok((claims, _)) => claims,
        Err(TokenProblem(reason)) if reason == crate::endpoints::REVOCATION_UNAVAILABLE => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the database is unavailable",
            ));
        }
        Err(TokenProblem(reason)) => {
            tracing::info!(reason, "admin API: token refused");
            return Err(token_error(StatusCode::UNAUTHORIZED, Some("invalid_token"), dpop));
        }
    };
    if !claims.aud.contains(ADMIN_AUDIENCE) {
        tracing::info!(sub = %claims.sub, "admin API: a token for another audience");
        return Err(token_error(StatusCode::UNAUTHORIZED, Some("invalid_token"), dpop));
    }
    if let Some(refusal) =
        check_binding(state, &claims, headers, method.as_str(), path, token, dpop, now).await
    {
        return Err(refusal);
    }
    if !claims.roles.iter().any(|r| r == ADMIN_ROLE) {
        return Err(token_error(StatusCode::FORBIDDEN, Some("insufficient_scope"), dpop));
    }
    match state.directory.user(&claims.sub).await {
        Ok(Some(user)) if !user.disabled => Ok(format!("admin:{}", user.id)),
        Ok(_) => Err(token_error(StatusCode::UNAUTHORIZED, Some("invalid_token"), dpop)),
        Err(e) => Err(store_error(&e)),
    }
}

/// Records what an admin did on the audit chain.
async fn record(store: &dyn Store, actor: &str, action: &str, i: &Incident) -> Result<(), Response> {
    let event = Event {
        reason: Some(action.to_owned()),
        outcome: Some("success".into()),
        actor: Some(actor.to_owned()),
        sub: i.user_id.clone(),
        sid: i.sid.clone(),
        client_id: i.client_id.clone(),
        detail: Some(json!({ "incident": i.id, "subject": i.subject }).to_string()),
        ..Event::new(tessera_core::EventKind::AdminAction, now())
    };
    store.append_event(&event).await.map_err(|e| store_error(&e))
}

/// The pieces of a request every handler checks first.
struct Call {
    state: Arc<AppState>,
    actor: String,
}

async fn call(
    state: Arc<AppState>,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
) -> Result<Call, Response> {
    let actor = admin(&state, headers, method, uri.path()).await?;
    Ok(Call { state, actor })
}

/// The admin check, then the query string read into `Q`.
async fn call_with<Q: DeserializeOwned>(
    state: Arc<AppState>,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
) -> Result<(Call, Q), Response> {
    let c = call(state, headers, method, uri).await?;
    let q = query(uri).map_err(|why| bad(&why))?;
    Ok((c, q))
}

/// `POST /admin/incidents` body: exactly one of `user`, `session`, `token`, `client`, and a `reason`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct OpenBody {
    user: Option<String>,
    session: Option<String>,
    token: Option<String>,
    client: Option<String>,
    reason: Option<String>,
}

/// `POST /admin/incidents`: 201 with the new incident, or 200 with the live one it joined.
pub async fn open(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    bytes: Bytes,
) -> Response {
    let c = match call(state, &headers, &method, &uri).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let b: OpenBody = match body(&bytes) {
        Ok(b) => b,
        Err(why) => return bad(&why),
    };
    let target = match (b.user, b.session, b.token, b.client) {
        (Some(u), None, None, None) => Target::User(u),
        (None, Some(s), None, None) => Target::Session(s),
        (None, None, Some(t), None) => Target::Token(t),
        (None, None, None, Some(id)) => Target::Client(id),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "name exactly one of user, session, token, client",
            );
        }
    };
    match incident::open(c.state.store.as_ref(), &target, b.reason.as_deref(), &c.actor, now()).await {
        Ok((i, opened)) => {
            if opened && let Err(r) = record(c.state.store.as_ref(), &c.actor, "incident_open", &i).await {
                return r;
            }
            json_answer(if opened { StatusCode::CREATED } else { StatusCode::OK }, &incident_json(&i, &[]))
        }
        Err(e) => incident_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ListQuery {
    state: Option<String>,
    limit: Option<String>,
}

/// `GET /admin/incidents?state=&limit=`: newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (c, q): (Call, ListQuery) = match call_with(state, &headers, &method, &uri).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let limit = match number(q.limit.as_ref(), "limit") {
        Ok(l) => l.unwrap_or(100).clamp(1, 10_000),
        Err(why) => return bad(&why),
    };
    if q.state.as_deref().is_some_and(|s| !["open", "contained", "closed"].contains(&s)) {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "state must be open, contained or closed");
    }
    match c.state.store.list_incidents(q.state.as_deref(), limit).await {
        Ok(found) => {
            ok(&json!({ "incidents": found.iter().map(|i| incident_json(i, &[])).collect::<Vec<_>>() }))
        }
        Err(e) => store_error(&e),
    }
}

/// `GET /admin/incidents/{id}`: the incident and its actions.
pub async fn show(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<i64>,
) -> Response {
    let c = match call(state, &headers, &method, &uri).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let i = match incident::find(c.state.store.as_ref(), id).await {
        Ok(i) => i,
        Err(e) => return incident_error(e),
    };
    match c.state.store.incident_actions(id).await {
        Ok(actions) => ok(&incident_json(&i, &actions)),
        Err(e) => store_error(&e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ContainBody {
    reset_mfa: bool,
    client: Option<String>,
    block_ip: Vec<String>,
    block_secs: Option<i64>,
}

/// `POST /admin/incidents/{id}/contain` with `{reset_mfa, client, block_ip: [], block_secs}` (all optional):
/// the steps taken and skipped, and a rotated client secret (this once).
pub async fn contain(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<i64>,
    bytes: Bytes,
) -> Response {
    let c = match call(state, &headers, &method, &uri).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let b: ContainBody = match body(&bytes) {
        Ok(b) => b,
        Err(why) => return bad(&why),
    };
    let options = ContainOptions {
        reset_mfa: b.reset_mfa,
        client: b.client,
        block: b.block_ip,
        block_secs: b.block_secs.unwrap_or(c.state.config.responses.block_source_secs),
    };
    let trusted = &c.state.trusted_proxies;
    match incident::contain(c.state.store.as_ref(), trusted, id, &options, &c.actor, now()).await {
        Ok(done) => {
            // This node's guards hear of it now; other nodes' at their next poll of the sequence.
            c.state.revocations.wake();
            c.state.directory.invalidate();
            let step = |a: &IncidentAction| json!({ "action": a.action, "target": a.target, "outcome": a.outcome, "at": a.at });
            let d = &done.contained;
            ok(&json!({
                "incident": incident_json(&d.incident, &[]),
                "taken": d.taken.iter().map(step).collect::<Vec<_>>(),
                "already": d.already.iter().map(step).collect::<Vec<_>>(),
                "revocation_seq": d.revocation_seq,
                "client_secret": done.client_secret.as_ref().map(|s| s.as_str()),
            }))
        }
        Err(e) => incident_error(e),
    }
}

/// `POST /admin/incidents/{id}/close`.
pub async fn close(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<i64>,
) -> Response {
    let c = match call(state, &headers, &method, &uri).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match incident::close(c.state.store.as_ref(), id, &c.actor, now()).await {
        Ok(i) => match record(c.state.store.as_ref(), &c.actor, "incident_close", &i).await {
            Ok(()) => ok(&incident_json(&i, &[])),
            Err(r) => r,
        },
        Err(e) => incident_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TimelineQuery {
    format: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    user: Option<String>,
    session: Option<String>,
    token: Option<String>,
    ip: Option<String>,
}

async fn timeline_answer(state: &AppState, scope: Scope, q: &TimelineQuery) -> Response {
    let (since, until, limit) = match (
        number(q.since.as_ref(), "since"),
        number(q.until.as_ref(), "until"),
        number(q.limit.as_ref(), "limit"),
    ) {
        (Ok(s), Ok(u), Ok(l)) => (s, u, l),
        (Err(why), ..) | (_, Err(why), _) | (.., Err(why)) => return bad(&why),
    };
    let window = Window { since, until, limit: limit.unwrap_or(10_000) };
    let t = match incident::timeline(state.store.as_ref(), &scope, window).await {
        Ok(t) => t,
        Err(e) => return incident_error(e),
    };
    match q.format.as_deref().unwrap_or("json") {
        "json" => ok(&t.json()),
        "text" => typed("text/plain; charset=utf-8", t.text()),
        "html" => typed("text/html; charset=utf-8", incident::html::timeline(&t)),
        _ => error(StatusCode::BAD_REQUEST, "invalid_request", "format must be json, text or html"),
    }
}

/// `GET /admin/incidents/{id}/timeline?format=json|text|html&since=&until=&limit=`.
pub async fn incident_timeline(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<i64>,
) -> Response {
    let (c, q): (Call, TimelineQuery) = match call_with(state, &headers, &method, &uri).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    if q.user.is_some() || q.session.is_some() || q.token.is_some() || q.ip.is_some() {
        return bad("an incident's timeline takes no user, session, token or ip");
    }
    timeline_answer(&c.state, Scope::Incident(id), &q).await
}

/// `GET /admin/timeline?user=|session=|token=|ip=` (exactly one), with the same options.
pub async fn timeline(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (c, q): (Call, TimelineQuery) = match call_with(state, &headers, &method, &uri).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let scope = match (q.user.clone(), q.session.clone(), q.token.clone(), q.ip.clone()) {
        (Some(u), None, None, None) => Scope::User(u),
        (None, Some(s), None, None) => Scope::Session(s),
        (None, None, Some(t), None) => Scope::Token(t),
        (None, None, None, Some(ip)) => Scope::Ip(ip),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "name exactly one of user, session, token, ip",
            );
        }
    };
    timeline_answer(&c.state, scope, &q).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FormatQuery {
    format: Option<String>,
}

/// `GET /admin/incidents/{id}/lineage?format=json|text`.
pub async fn lineage(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<i64>,
) -> Response {
    let (c, q): (Call, FormatQuery) = match call_with(state, &headers, &method, &uri).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let lineages = match incident::lineages(c.state.store.as_ref(), id).await {
        Ok(l) => l,
        Err(e) => return incident_error(e),
    };
    match q.format.as_deref().unwrap_or("json") {
        "json" => ok(&json!({ "families": lineages.iter().map(|l| l.json()).collect::<Vec<_>>() })),
        "text" => typed(
            "text/plain; charset=utf-8",
            lineages.iter().map(|l| l.text()).collect::<Vec<_>>().join("\n"),
        ),
        _ => error(StatusCode::BAD_REQUEST, "invalid_request", "format must be json or text"),
    }
}

/// `GET /admin/incidents/{id}/report?format=markdown|html`.
pub async fn report(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<i64>,
) -> Response {
    let (c, q): (Call, FormatQuery) = match call_with(state, &headers, &method, &uri).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let report = match incident::report(c.state.store.as_ref(), id).await {
        Ok(r) => r,
        Err(e) => return incident_error(e),
    };
    match q.format.as_deref().unwrap_or("markdown") {
        "markdown" => typed("text/markdown; charset=utf-8", report.markdown()),
        "html" => typed("text/html; charset=utf-8", incident::html::report(&report)),
        _ => error(StatusCode::BAD_REQUEST, "invalid_request", "format must be markdown or html"),
    }
}
