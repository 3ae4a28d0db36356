//! Endpoints that take tokens back: userinfo (OIDC Core §5.3), revocation (RFC 7009) and introspection
//! (RFC 7662).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tessera_core::flow::has_scope;
use tessera_core::{ClientKind, OpaqueSecret, RevocationKind, SecretKind};
use tessera_store::{Event, NewRevocation, OriginRef, TokenRef};
use tessera_token::{AccessClaims, UnixTime, UnverifiedJwt, Validation};

use crate::oauth::{OAuthError, Params, authenticate_client, no_store_json};
use crate::{AppState, RequestMeta, now};

/// Why an access token is not accepted here. The name goes to the log; the wire sees `invalid_token`.
#[derive(Debug)]
pub struct TokenProblem(pub &'static str);

/// The [`TokenProblem`] when the revocation set cannot be read (the database is down): not the token's fault.
pub const REVOCATION_UNAVAILABLE: &str = "revocation_check_unavailable";

/// Verifies, validates and checks the revocation set for an access token issued by this server, whatever
/// its audience (userinfo and introspection serve every audience); returns its claims and the `kid` of the
/// key that signed it.
///
/// # Errors
/// A [`TokenProblem`] naming the reason.
pub async fn check_access_token(
    state: &AppState,
    token: &str,
    now: i64,
) -> Result<(AccessClaims, String), TokenProblem> {
    let keyring = state.keyring();
    let verified = UnverifiedJwt::parse(token)
        .and_then(|t| t.verify(keyring.published()))
        .map_err(|r| TokenProblem(r.name()))?;
    let payload: Value =
        serde_json::from_slice(verified.payload()).map_err(|_| TokenProblem("malformed_claims"))?;
    let audience = match payload.get("aud") {
        Some(Value::String(a)) => a.clone(),
        Some(Value::Array(list)) => list.first().and_then(Value::as_str).unwrap_or_default().to_owned(),
        _ => String::new(),
    };
    let policy = Validation::access_token(state.config.issuer.clone(), audience);
    let claims = verified
        .validate(&policy, UnixTime(u64::try_from(now).unwrap_or(0)))
        .map_err(|r| TokenProblem(r.name()))?;
    let kid = verified.header().kid.clone().unwrap_or_default();
    let origin: Vec<OriginRef<'_>> = claims
        .origin
        .iter()
        .map(|o| OriginRef {
            jti: &o.jti,
            client_id: &o.client_id,
            kid: &o.kid,
            iat: i64::try_from(o.iat).unwrap_or(i64::MAX),
        })
        .collect();
    let reference = TokenRef {
        jti: &claims.jti,
        sid: claims.sid.as_deref(),
        sub: &claims.sub,
        client_id: &claims.client_id,
        kid: &kid,
        iat: i64::try_from(claims.iat).unwrap_or(i64::MAX),
        origin: &origin,
    };
    let revoked = state.store.is_revoked(reference, now).await;
    drop(origin);
    match revoked {
        Ok(false) => Ok((claims, kid)),
        Ok(true) => Err(TokenProblem("revoked")),
        Err(_) => Err(TokenProblem(REVOCATION_UNAVAILABLE)),
    }
}

/// The access token of `Authorization: Bearer …` or `Authorization: DPoP …`, and whether the scheme was
/// DPoP; `Err` names what is wrong.
pub(crate) fn access_token(headers: &HeaderMap) -> Result<Option<(&str, bool)>, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err("two_authorization_headers");
    }
    let value = value.to_str().map_err(|_| "malformed_authorization")?;
    let (scheme, token) = value.split_once(' ').ok_or("malformed_authorization")?;
    let dpop = scheme.eq_ignore_ascii_case("dpop");
    if !(dpop || scheme.eq_ignore_ascii_case("bearer")) || token.is_empty() || token.contains(' ') {
        return Err("malformed_authorization");
    }
    Ok(Some((token, dpop)))
}

/// An RFC 6750 §3 / RFC 9449 §7.1 error: the status with a `WWW-Authenticate` challenge for both schemes,
/// the error on the scheme it concerns.
pub(crate) fn token_error(status: StatusCode, error: Option<&'static str>, dpop: bool) -> Response {
    let algs = crate::dpop::signing_algs().join(" ");
    let (bearer, dpop_challenge) = match (error, dpop) {
        (Some(e), false) => {
            (format!("Bearer realm=\"tessera\", error=\"{e}\""), format!("DPoP algs=\"{algs}\""))
        }
        (Some(e), true) => {
            ("Bearer realm=\"tessera\"".to_owned(), format!("DPoP error=\"{e}\", algs=\"{algs}\""))
        }
        (None, _) => ("Bearer realm=\"tessera\"".to_owned(), format!("DPoP algs=\"{algs}\"")),
    };
    let mut response = status.into_response();
    for challenge in [bearer, dpop_challenge] {
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            response.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /userinfo` (and POST): the signed-in user's claims, for an access token with the `openid` scope.
pub async fn userinfo(State(state): State<Arc<AppState>>, method: Method, headers: HeaderMap) -> Response {
    let (token, dpop) = match access_token(&headers) {
        Ok(Some(found)) => found,
        Ok(None) => return token_error(StatusCode::UNAUTHORIZED, None, false),
        Err(reason) => {
            tracing::info!(reason, "userinfo: bad authorization header");
            return token_error(StatusCode::BAD_REQUEST, Some("invalid_request"), false);
        }
    };
    let now = now();
    let claims = match check_access_token(&state, token, now).await {
        Ok((claims, _)) => claims,
        Err(TokenProblem(reason)) => {
            tracing::info!(reason, "userinfo: token refused");
            return token_error(StatusCode::UNAUTHORIZED, Some("invalid_token"), dpop);
        }
    };
    if let Some(refusal) =
        check_binding(&state, &claims, &headers, method.as_str(), "/userinfo", token, dpop, now).await
    {
        return refusal;
    }
    let scope = claims.scope.clone().unwrap_or_default();
    if !has_scope(&scope, "openid") {
        return token_error(StatusCode::FORBIDDEN, Some("insufficient_scope"), dpop);
    }
    let user = match state.directory.user(&claims.sub).await {
        Ok(Some(user)) if !user.disabled => user,
        Ok(_) => return token_error(StatusCode::UNAUTHORIZED, Some("invalid_token"), dpop),
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let mut body = json!({ "sub": user.id });
    if has_scope(&scope, "profile") {
        body["preferred_username"] = json!(user.username);
    }
    let mut response = no_store_json(body.to_string());
    if let Some(nonce) = crate::dpop::current_nonce(&state, now).and_then(|n| HeaderValue::from_str(&n).ok())
    {
        response.headers_mut().insert(crate::dpop::DPOP_NONCE, nonce);
    }
    response
}

/// Checks a token's DPoP binding at userinfo (or the admin API, at `path`): a bound token only with the `DPoP` scheme and a proof by its
/// key; the `DPoP` scheme only with a bound token (RFC 9449 §7). `Some` is the refusal to send.
#[allow(clippy::too_many_arguments, reason = "one request's parts, each needed for the proof's check")]
pub(crate) async fn check_binding(
    state: &AppState,
    claims: &AccessClaims,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    token: &str,
    dpop: bool,
    now: i64,
) -> Option<Response> {
    let refuse = |reason: &'static str, error: &'static str| {
        tracing::info!(reason, "userinfo: token refused");
        Some(token_error(StatusCode::UNAUTHORIZED, Some(error), true))
    };
    let bound = match tessera_token::dpop::required_key(claims.cnf.as_ref(), dpop) {
        Ok(None) => return None,
        Ok(Some(jkt)) => jkt,
        Err(reason) => return refuse(reason, "invalid_token"),
    };
    match crate::dpop::request_proof(state, headers, method, path, Some(token), now).await {
        Ok(Some(proof)) if proof.jkt == bound => None,
        Ok(Some(_)) => refuse(tessera_token::ProofRejection::KeyMismatch.name(), "invalid_dpop_proof"),
        Ok(None) => refuse("dpop_missing_proof", "invalid_dpop_proof"),
        Err(crate::dpop::ProofFailure::Nonce(nonce)) => {
            let mut answer = token_error(StatusCode::UNAUTHORIZED, Some("use_dpop_nonce"), true);
            if let Ok(v) = HeaderValue::from_str(&nonce) {
                answer.headers_mut().insert(crate::dpop::DPOP_NONCE, v);
            }
            Some(answer)
        }
        Err(crate::dpop::ProofFailure::Unavailable) => {
            Some(OAuthError::temporarily_unavailable().into_response())
        }
        Err(crate::dpop::ProofFailure::Invalid(reason)) => refuse(reason, "invalid_dpop_proof"),
    }
}

/// `POST /revoke` (RFC 7009). A client may revoke only its own tokens; an unknown token answers 200.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match revoke_inner(&state, &meta, &headers, &body).await {
        Ok(()) => {
            (StatusCode::OK, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn revoke_inner(
    state: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), OAuthError> {
    let params = Params::from_form(headers, body)?;
    let now = now();
    let (client, _) = authenticate_client(state, headers, &params, now).await?;
    let token = params.get("token").ok_or(OAuthError::invalid_request("token is required"))?;
    if let Some(refresh) = OpaqueSecret::parse(SecretKind::RefreshToken, token) {
        if let Some((_, family)) = state.store.refresh_token(&refresh.hash()).await?
            && family.client_id == client.id
            && state.store.revoke_family(&family.id, "revoked_by_client", now).await?
        {
            state.revocations.wake();
            state
                .event(Event {
                    kind: "token_revoked".into(),
                    sub: Some(family.user_id.clone()),
                    sid: Some(family.id.clone()),
                    client_id: Some(client.id.clone()),
                    reason: Some("refresh_token".into()),
                    ..meta.event(now)
                })
                .await;
        }
        return Ok(());
    }
    // An access token: its signature must be ours; only its own client may revoke it.
    let keyring = state.keyring();
    let Ok(verified) = UnverifiedJwt::parse(token).and_then(|t| t.verify(keyring.published())) else {
        return Ok(());
    };
    let Ok(claims) = serde_json::from_slice::<Value>(verified.payload()) else { return Ok(()) };
    let field = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if let (Some(jti), Some(owner)) = (field("jti"), field("client_id"))
        && owner == client.id
        && exp > now
    {
        let entry = NewRevocation {
            kind: RevocationKind::Token,
            subject: jti.clone(),
            not_before: None,
            expires_at: exp + 60,
            reason: "revoked_by_client".into(),
        };
        state.store.revoke(&entry, now).await?;
        state.revocations.wake();
        state
            .event(Event {
                kind: "token_revoked".into(),
                sub: field("sub"),
                sid: field("sid"),
                jti: Some(jti),
                client_id: Some(client.id.clone()),
                reason: Some("access_token".into()),
                ..meta.event(now)
            })
            .await;
    }
    Ok(())
}

/// `POST /introspect` (RFC 7662), for confidential clients. An inactive token gets exactly
/// `{"active":false}`. A client learns about a token only if it is the token's client or the token's
/// audience is one the client serves.
pub async fn introspect(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    match introspect_inner(&state, &headers, &body).await {
        Ok(body) => no_store_json(body.to_string()),
        Err(e) => e.into_response(),
    }
}

async fn introspect_inner(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
    let params = Params::from_form(headers, body)?;
    let now = now();
    let (client, auth) = authenticate_client(state, headers, &params, now).await?;
    if client.kind != ClientKind::Confidential || !auth.is_confidential() {
        return Err(OAuthError::invalid_client());
    }
    let token = params.get("token").ok_or(OAuthError::invalid_request("token is required"))?;
    let inactive = json!({ "active": false });
    if let Some(refresh) = OpaqueSecret::parse(SecretKind::RefreshToken, token) {
        let Some((record, family)) = state.store.refresh_token(&refresh.hash()).await? else {
            return Ok(inactive);
        };
        let live = record.rotated_at.is_none()
            && family.revoked_at.is_none()
            && record.expires_at > now
            && family.expires_at > now
            && family.client_id == client.id;
        if !live {
            return Ok(inactive);
        }
        let mut out = json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": family.client_id,
            "sub": family.user_id,
            "sid": family.id,
            "scope": record.scope,
            "exp": record.expires_at,
            "iat": record.created_at,
            "iss": state.config.issuer,
        });
        if let Some(jkt) = family.dpop_jkt {
            out["cnf"] = json!({ "jkt": jkt });
        }
        return Ok(out);
    }
    let Ok((claims, _)) = check_access_token(state, token, now).await else { return Ok(inactive) };
    let allowed = claims.client_id == client.id || claims.aud.0.iter().any(|a| client.serves.contains(a));
    if !allowed {
        return Ok(inactive);
    }
    let jkt = claims.cnf.as_ref().and_then(|c| c.jkt.clone());
    let mut out = json!({
        "active": true,
        "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
        "iss": claims.iss,
        "sub": claims.sub,
        "aud": claims.aud.0,
        "client_id": claims.client_id,
        "exp": claims.exp,
        "iat": claims.iat,
        "jti": claims.jti,
    });
    if let Some(scope) = claims.scope {
        out["scope"] = json!(scope);
    }
    if let Some(sid) = claims.sid {
        out["sid"] = json!(sid);
    }
    if let Some(nbf) = claims.nbf {
        out["nbf"] = json!(nbf);
    }
    if let Some(jkt) = jkt {
        out["cnf"] = json!({ "jkt": jkt });
    }
    // RFC 8693 §4.1: a delegated token says who acts for the subject.
    if let Some(act) = claims.act {
        out["act"] = serde_json::to_value(act).unwrap_or_default();
    }
    Ok(out)
}
