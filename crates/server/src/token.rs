//! `POST /token`: the authorization_code, refresh_token and client_credentials grants; token exchange is in
//! [`crate::exchange`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use tessera_core::flow::{self, FlowError, RefreshDecision};
use tessera_core::{ClientKind, EventKind, GrantType, OpaqueSecret, SecretKind, TokenHash};
use tessera_store::{Client, CodeUse, Event, Family, RefreshRecord, Rotation, StoreError, User};
use tessera_token::dpop::ProofRejection;

use crate::crypto::sortable_id;
use crate::dpop;
use crate::exchange;
use crate::issue::{self, AccessGrant, IdClaims, TokenResponse};
use crate::oauth::{ClientAuth, OAuthError, Params, authenticate_client, no_store_json};
use crate::{AppState, RequestMeta, now};

impl From<FlowError> for OAuthError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::InvalidTarget => OAuthError::invalid_target(),
            FlowError::InvalidScope => OAuthError::invalid_scope(),
        }
    }
}

/// The token endpoint.
pub async fn token(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = now();
    let mut response = match grant(&state, &meta, &headers, &body, now).await {
        Ok(response) => no_store_json(serde_json::to_string(&response).unwrap_or_default()),
        Err(e) => e.into_response(),
    };
    // With nonces on, every answer carries the current one, so a client never needs a failed round trip.
    if let Some(nonce) = dpop::current_nonce(&state, now).and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().entry(dpop::DPOP_NONCE).or_insert(nonce);
    }
    response
}

async fn grant(
    state: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<TokenResponse, OAuthError> {
    let params = Params::from_form(headers, body)?;
    let grant_type = params.get("grant_type").ok_or(OAuthError::invalid_request("grant_type is required"))?;
    let grant: GrantType = grant_type.parse().map_err(|_| OAuthError::unsupported_grant_type())?;
    // The proof first: a `use_dpop_nonce` answer must not spend the client's assertion, which the retry
    // (RFC 9449 §8) sends again.
    let proof = dpop::request_proof(state, headers, "POST", "/token", None, now).await?;
    let (client, auth) = authenticate_client(state, headers, &params, now).await?;
    if !client.grant_types.contains(&grant) {
        return Err(OAuthError::unauthorized_client("this client may not use this grant type"));
    }
    if proof.is_none() && client.require_dpop {
        return Err(OAuthError::invalid_dpop_proof("this client must send a DPoP proof"));
    }
    let jkt = proof.map(|p| p.jkt);
    let response = match grant {
        GrantType::ClientCredentials => client_credentials(state, &client, auth, &params, jkt, now).await?,
        GrantType::AuthorizationCode => authorization_code(state, meta, &client, &params, jkt, now).await?,
        GrantType::RefreshToken => refresh(state, meta, &client, &params, jkt, now).await?,
        GrantType::TokenExchange => exchange::exchange(state, meta, &client, auth, &params, jkt, now).await?,
    };
    // Exchange records its own event (naming the subject token), and a rotation its own in the rotation's
    // transaction.
    if !matches!(grant, GrantType::TokenExchange | GrantType::RefreshToken) {
        state.record(issued_event(&response, EventKind::TokenIssued, grant, meta, None, now)).await?;
    }
    state.metrics.token_issued(grant.as_str());
    Ok(response)
}

/// The audit event for an issued token response; `presented` is the refresh token a rotation spent.
pub(crate) fn issued_event(
    response: &TokenResponse,
    kind: EventKind,
    grant: GrantType,
    meta: &RequestMeta,
    presented: Option<&TokenHash>,
    now: i64,
) -> Event {
    let i = &response.issued;
    // Refresh tokens by a short hash prefix: enough to draw a family's lineage, never enough to use one.
    let detail = serde_json::json!({
        "scope": i.scope,
        "dpop": i.dpop_bound,
        "jkt": i.jkt,
        "expires_in": i.expires_in,
        "refresh_token": response.refresh_token.as_deref().map(|t| TokenHash::of(t).short()),
        "presented": presented.map(TokenHash::short),
        "device": meta.device,
        "id_token": response.id_token.is_some(),
    });
    Event {
        kind: kind.into(),
        sub: Some(i.sub.clone()),
        sid: i.sid.clone(),
        jti: Some(i.jti.clone()),
        client_id: Some(i.client_id.clone()),
        audience: Some(i.audience.clone()),
        outcome: Some("success".into()),
        reason: Some(grant.as_str().to_owned()),
        detail: Some(detail.to_string()),
        ..meta.event(now)
    }
}

async fn client_credentials(
    state: &AppState,
    client: &Client,
    auth: ClientAuth,
    params: &Params,
    jkt: Option<String>,
    now: i64,
) -> Result<TokenResponse, OAuthError> {
    if client.kind != ClientKind::Confidential || !auth.is_confidential() {
        return Err(OAuthError::unauthorized_client("client_credentials needs a confidential client"));
    }
    let audience = flow::select_audience(&params.all("resource"), &client.audiences)?;
    let resource = state.resource_scopes(&audience).await?;
    let scope = flow::grant_scope(params.get("scope"), &[&client.scopes, &resource])?;
    let minted = issue::access_token(
        state,
        AccessGrant {
            sub: client.id.clone(),
            client_id: client.id.clone(),
            audience,
            scope: scope.clone(),
            sid: None,
            roles: Vec::new(),
            auth_time: None,
            amr: Vec::new(),
            ttl: client.access_ttl,
            jkt,
            act: None,
            origin: Vec::new(),
        },
        now,
    )?;
    Ok(TokenResponse::new(minted, scope, None, None))
}

async fn authorization_code(
    state: &AppState,
    meta: &RequestMeta,
    client: &Client,
    params: &Params,
    jkt: Option<String>,
    now: i64,
) -> Result<TokenResponse, OAuthError> {
    let code = params.get("code").ok_or(OAuthError::invalid_request("code is required"))?;
    let redirect_uri =
        params.get("redirect_uri").ok_or(OAuthError::invalid_request("redirect_uri is required"))?;
    let verifier =
        params.get("code_verifier").ok_or(OAuthError::invalid_request("code_verifier is required"))?;
    let invalid = OAuthError::invalid_grant("the authorization code is invalid, expired or spent");
    let code = OpaqueSecret::parse(SecretKind::AuthorizationCode, code).ok_or_else(|| invalid.clone())?;
    let record = match state.store.redeem_code(&code.hash(), now).await? {
        CodeUse::Fresh(record) => record,
        CodeUse::Replayed(record) => {
            let revoked = state.store.revoke_code_families(&record.hash, "code_reuse", now).await?;
            state.revocations.wake();
            tracing::warn!(code = %record.hash.short(), client = %record.client_id, revoked, "authorization code replayed");
            state
                .event(Event {
                    kind: "code_reuse".into(),
                    sub: Some(record.user_id.clone()),
                    client_id: Some(record.client_id.clone()),
                    jti: Some(format!("sha256:{}", record.hash.short())),
                    reason: Some("code_reuse".into()),
                    ..meta.event(now)
                })
                .await;
            return Err(invalid);
        }
        CodeUse::Unknown => return Err(invalid),
    };
    if record.client_id != client.id
        || record.expires_at <= now
        || record.redirect_uri != redirect_uri
        || !flow::verify_pkce(verifier, &record.code_challenge)
    {
        return Err(invalid);
    }
    // RFC 9449 §10: a code requested with dpop_jkt is redeemable only with a proof by that key.
    if let Some(bound) = &record.dpop_jkt
        && jkt.as_deref() != Some(bound.as_str())
    {
        tracing::warn!(code = %record.hash.short(), client = %client.id, "authorization code redeemed without its DPoP key");
        return Err(match jkt {
            None => OAuthError::invalid_dpop_proof("this authorization code needs a DPoP proof by its key"),
            Some(_) => invalid,
        });
    }
    let user = active_user(state, &record.user_id).await?;
    let family = Family {
        id: sortable_id(now).map_err(|_| OAuthError::server_error())?,
        client_id: client.id.clone(),
        user_id: user.id.clone(),
        scope: record.scope.clone(),
        audience: record.audience.clone(),
        auth_time: record.auth_time,
        amr: record.amr.clone(),
        login_session: record.login_session,
        code_hash: Some(record.hash),
        created_at: now,
        expires_at: now + client.refresh_absolute_ttl,
        revoked_at: None,
        dpop_jkt: jkt.clone(),
    };
    let refresh = if client.grant_types.contains(&GrantType::RefreshToken) {
        let secret =
            crate::crypto::new_secret(SecretKind::RefreshToken).map_err(|_| OAuthError::server_error())?;
        let first = RefreshRecord {
            hash: secret.hash(),
            family_id: family.id.clone(),
            generation: 0,
            scope: record.scope.clone(),
            created_at: now,
            expires_at: (now + client.refresh_idle_ttl).min(family.expires_at),
            rotated_at: None,
            successor: None,
        };
        Some((secret, first))
    } else {
        None
    };
    match state.store.create_family(&family, refresh.as_ref().map(|(_, r)| r)).await {
        Ok(()) => {}
        // The code was replayed while this request ran: nothing is issued.
        Err(StoreError::Conflict(_)) => return Err(invalid),
        Err(e) => return Err(e.into()),
    }
    let id_token = if flow::has_scope(&record.scope, "openid") {
        let claims = IdClaims {
            iss: state.config.issuer.clone(),
            sub: user.id.clone(),
            aud: client.id.clone(),
            exp: now + state.config.id_token_ttl,
            iat: now,
            auth_time: record.auth_time,
            nonce: record.nonce.clone(),
            acr: tessera_core::mfa::acr_for(&record.amr).map(str::to_owned),
            amr: record.amr.clone(),
            sid: family.id.clone(),
            preferred_username: flow::has_scope(&record.scope, "profile").then(|| user.username.clone()),
        };
        Some(issue::id_token(state, &claims)?)
    } else {
        None
    };
    let minted =
        issue::access_token(state, user_grant(state, client, &user, &family, &record.scope, jkt), now)?;
    let refresh_token = refresh.map(|(secret, _)| secret.expose().to_owned());
    Ok(TokenResponse::new(minted, record.scope, refresh_token, id_token))
}

async fn refresh(
    state: &AppState,
    meta: &RequestMeta,
    client: &Client,
    params: &Params,
    jkt: Option<String>,
    now: i64,
) -> Result<TokenResponse, OAuthError> {
    let presented =
        params.get("refresh_token").ok_or(OAuthError::invalid_request("refresh_token is required"))?;
    let invalid = OAuthError::invalid_grant("the refresh token is invalid, expired or revoked");
    let secret = OpaqueSecret::parse(SecretKind::RefreshToken, presented).ok_or_else(|| invalid.clone())?;
    let hash = secret.hash();
    let Some((mut record, family)) = state.store.refresh_token(&hash).await? else { return Err(invalid) };
    if family.client_id != client.id {
        tracing::warn!(token = %hash.short(), family = %family.id, client = %client.id, "refresh token presented by another client");
        return Err(invalid);
    }
    if family.revoked_at.is_some() || family.expires_at <= now || record.expires_at <= now {
        return Err(invalid);
    }
    let mut family = family;
    // A public client's family started without DPoP is bound by its first refresh with a proof (RFC 9449
    // §5): from then on the refresh token is as useless without the key as one bound from the start.
    if family.dpop_jkt.is_none()
        && client.kind == ClientKind::Public
        && let Some(key) = &jkt
    {
        family.dpop_jkt = state.store.bind_family_key(&family.id, key).await?;
    }
    if let Some(bound) = &family.dpop_jkt
        && jkt.as_deref() != Some(bound.as_str())
    {
        // The refresh token is bound to a key this request did not prove: a copy without the key.
        tracing::warn!(token = %hash.short(), family = %family.id, client = %client.id, "refresh token presented without its DPoP key");
        let event = family_rejected(meta.event(now), &family, &client.id, ProofRejection::KeyMismatch.name());
        state.event(Event { jti: Some(format!("sha256:{}", hash.short())), ..event }).await;
        return Err(match jkt {
            None => OAuthError::invalid_dpop_proof("this refresh token needs a DPoP proof by its key"),
            Some(_) => invalid,
        });
    }
    let user = active_user(state, &family.user_id).await?;
    if user.step_up_after.is_some_and(|at| family.auth_time <= at) {
        // A detection asked for stronger proof (`require_step_up`): this session must sign in again.
        state.event(family_rejected(meta.event(now), &family, &client.id, "step_up_required")).await;
        return Err(OAuthError::invalid_grant("the session must sign in again"));
    }
    let scope = flow::narrow_scope(params.get("scope"), &record.scope)?;
    let successor = state.kek.successor_key().successor(&secret);
    // At most two rounds: a lost compare-and-swap re-reads the token once and decides again.
    for _ in 0..2 {
        let successor_unused = match record.successor {
            Some(next) => {
                state.store.refresh_token(&next).await?.is_some_and(|(s, _)| s.rotated_at.is_none())
            }
            None => true,
        };
        match flow::refresh_decision(
            record.rotated_at,
            successor_unused,
            now,
            state.config.refresh_retry_window,
        ) {
            RefreshDecision::Rotate => {
                let next = RefreshRecord {
                    hash: successor.hash(),
                    family_id: family.id.clone(),
                    generation: record.generation + 1,
                    // RFC 6749 §6: the new refresh token keeps the old one's scope; only this access token
                    // is narrowed.
                    scope: record.scope.clone(),
                    created_at: now,
                    expires_at: (now + client.refresh_idle_ttl).min(family.expires_at),
                    rotated_at: None,
                    successor: None,
                };
                // The access token is minted first, so that its audit event commits with the rotation: a
                // successor exists if and only if its issuance is on the log. A lost race discards it.
                let grant = user_grant(state, client, &user, &family, &scope, jkt.clone());
                let response = answer_refresh(state, grant, &successor, now)?;
                let event = issued_event(
                    &response,
                    EventKind::TokenRefreshed,
                    GrantType::RefreshToken,
                    meta,
                    Some(&hash),
                    now,
                );
                match state.store.rotate_refresh(&hash, &next, Some(&event), now).await? {
                    Rotation::Rotated => return Ok(response),
                    Rotation::Lost => {
                        let Some((fresh, _)) = state.store.refresh_token(&hash).await? else {
                            return Err(invalid);
                        };
                        record = fresh;
                    }
                }
            }
            RefreshDecision::ReturnSuccessor if record.successor == Some(successor.hash()) => {
                let grant = user_grant(state, client, &user, &family, &scope, jkt);
                let response = answer_refresh(state, grant, &successor, now)?;
                let event = issued_event(
                    &response,
                    EventKind::TokenRefreshed,
                    GrantType::RefreshToken,
                    meta,
                    Some(&hash),
                    now,
                );
                state.record(Event { reason: Some("refresh_token_retry".into()), ..event }).await?;
                return Ok(response);
            }
            RefreshDecision::ReturnSuccessor | RefreshDecision::Reuse => break,
        }
    }
    // A rotated token came back outside the retry window (or the family was revoked under us): theft.
    if state.store.revoke_family(&family.id, "refresh_token_reuse", now).await? {
        state.revocations.wake();
        state.metrics.refresh_reuse();
        tracing::warn!(token = %hash.short(), family = %family.id, client = %client.id, "refresh token reuse: family revoked");
        state
            .event(Event {
                kind: "refresh_token_reuse".into(),
                sub: Some(user.id.clone()),
                sid: Some(family.id.clone()),
                client_id: Some(client.id.clone()),
                jti: Some(format!("sha256:{}", hash.short())),
                reason: Some("refresh_token_reuse".into()),
                ..meta.event(now)
            })
            .await;
    }
    Err(invalid)
}

fn answer_refresh(
    state: &AppState,
    grant: AccessGrant,
    successor: &OpaqueSecret,
    now: i64,
) -> Result<TokenResponse, OAuthError> {
    let scope = grant.scope.clone();
    let minted = issue::access_token(state, grant, now)?;
    Ok(TokenResponse::new(minted, scope, Some(successor.expose().to_owned()), None))
}

fn user_grant(
    state: &AppState,
    client: &Client,
    user: &User,
    family: &Family,
    scope: &str,
    jkt: Option<String>,
) -> AccessGrant {
    AccessGrant {
        sub: user.id.clone(),
        client_id: client.id.clone(),
        audience: family.audience.clone().unwrap_or_else(|| state.config.issuer.clone()),
        scope: scope.to_owned(),
        sid: Some(family.id.clone()),
        roles: user.roles.clone(),
        auth_time: Some(family.auth_time),
        amr: family.amr.clone(),
        ttl: client.access_ttl,
        jkt,
        act: None,
        origin: Vec::new(),
    }
}

/// A `token_rejected` event about a refresh family: its user, session and client, and why.
fn family_rejected(base: Event, family: &tessera_store::Family, client_id: &str, reason: &str) -> Event {
    Event {
        kind: "token_rejected".into(),
        sub: Some(family.user_id.clone()),
        sid: Some(family.id.clone()),
        client_id: Some(client_id.to_owned()),
        reason: Some(reason.to_owned()),
        ..base
    }
}

pub(crate) async fn active_user(state: &AppState, id: &str) -> Result<User, OAuthError> {
    match state.directory.user(id).await? {
        Some(user) if !user.disabled => Ok(user),
        _ => Err(OAuthError::invalid_grant("the user is disabled or gone")),
    }
}
