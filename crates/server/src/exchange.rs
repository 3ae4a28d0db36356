//! Token exchange (RFC 8693) at `POST /token`: a service trades an access token it received for a narrower
//! one to call the next service, instead of forwarding the user's token.
//!
//! The policy, in the order it is checked:
//! - the caller is a confidential client that proved a credential, and the target audience is in its
//!   exchange policy (`exchange_audiences`, empty by default);
//! - the subject token is an access token issued here, valid and not revoked, and it was issued for the
//!   caller: its audience is one the caller serves;
//! - the new scope is within the subject token's, the caller's and the target resource's;
//! - the new token keeps `sub`, `sid`, `roles`, `auth_time` and `amr`, so revoking the user or the session
//!   kills it; it carries `act` naming the caller (nesting any earlier `act`); it expires no later than
//!   the subject token;
//! - it names the tokens it came from in `origin` (the subject token and the subject's own origin), so
//!   revoking any of them, their clients or their keys revokes it at the server and at every guard; a
//!   chain is at most [`MAX_EXCHANGE_DEPTH`] exchanges long.

use tessera_core::{ClientKind, EventKind, GrantType, flow};
use tessera_store::Client;
use tessera_token::{AccessClaims, Actor, Origin};

use crate::endpoints::{REVOCATION_UNAVAILABLE, check_access_token};
use crate::issue::{self, AccessGrant, TokenResponse};
use crate::oauth::{ClientAuth, OAuthError, Params};
use crate::token::active_user;
use crate::{AppState, RequestMeta};

/// RFC 8693 §3: an OAuth access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 §3: a JWT (our access tokens are JWTs).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// How many exchanges one token may be from the original: enough for a request that crosses a few
/// services, short enough that every revocation check of the chain stays cheap.
pub const MAX_EXCHANGE_DEPTH: usize = 4;

/// The token-exchange grant.
///
/// # Errors
/// `unauthorized_client` for a caller without credentials, `invalid_request` for a subject or actor token
/// that is not acceptable (RFC 8693 §2.2.2), `invalid_target` for an audience outside the policy,
/// `invalid_scope` for a scope the subject token does not have.
pub async fn exchange(
    state: &AppState,
    meta: &RequestMeta,
    client: &Client,
    auth: ClientAuth,
    params: &Params,
    jkt: Option<String>,
    now: i64,
) -> Result<TokenResponse, OAuthError> {
    if client.kind != ClientKind::Confidential || !auth.is_confidential() {
        return Err(OAuthError::unauthorized_client("token exchange needs a confidential client"));
    }
    // Our access tokens are JWTs, so either name is honest; the answer echoes the one asked for.
    let issued_type = match params.get("requested_token_type") {
        None | Some(ACCESS_TOKEN_TYPE) => ACCESS_TOKEN_TYPE,
        Some(JWT_TOKEN_TYPE) => JWT_TOKEN_TYPE,
        Some(_) => return Err(OAuthError::invalid_request("only access tokens can be requested")),
    };
    let subject = typed_token(params, "subject_token", "subject_token_type")?
        .ok_or(OAuthError::invalid_request("subject_token and subject_token_type are required"))?;
    let target = target_audience(params)?;
    if !client.exchange_audiences.iter().any(|a| a == target) {
        tracing::info!(client = %client.id, "token exchange for an audience outside the client's policy");
        return Err(OAuthError::invalid_target());
    }
    let (subject, subject_kid) = accepted_token(state, subject, now, "subject").await?;
    if subject.origin.len() >= MAX_EXCHANGE_DEPTH {
        return Err(rejected("the subject token has been exchanged too many times"));
    }
    if !subject.aud.0.iter().any(|a| client.serves.contains(a)) {
        tracing::warn!(client = %client.id, jti = %subject.jti, "token exchange of a token issued for another service");
        return Err(OAuthError::invalid_request("the subject token was not issued for this client"));
    }
    // A sender-constrained token stays sender-constrained: the caller must bind the new one to its own key.
    if subject.cnf.is_some() && jkt.is_none() {
        return Err(OAuthError::invalid_dpop_proof("exchanging a DPoP-bound token needs a DPoP proof"));
    }
    if let Some(actor) = typed_token(params, "actor_token", "actor_token_type")? {
        // The actor token says who is acting; it must be the caller's own.
        let (actor, _) = accepted_token(state, actor, now, "actor").await?;
        if actor.client_id != client.id {
            return Err(OAuthError::invalid_request("the actor token is not the calling client's"));
        }
    }
    if subject.sid.is_some() {
        active_user(state, &subject.sub)
            .await
            .map_err(|_| rejected("the subject's user is disabled or gone"))?;
    }
    let resource = state.resource_scopes(target).await?;
    let held: Vec<String> = subject
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let scope = flow::grant_scope(params.get("scope"), &[&held, &client.scopes, &resource])?;
    if scope.is_empty() {
        return Err(OAuthError::invalid_scope());
    }
    // The new token dies with the subject token at the latest.
    let remaining = i64::try_from(subject.exp).unwrap_or(0) - now;
    if remaining <= 0 {
        return Err(rejected("the subject token is expired"));
    }
    let act = Actor {
        sub: Some(client.id.clone()),
        client_id: Some(client.id.clone()),
        act: subject.act.clone().map(Box::new),
        other: Default::default(),
    };
    let mut origin = subject.origin.clone();
    origin.push(Origin {
        jti: subject.jti.clone(),
        client_id: subject.client_id.clone(),
        iat: subject.iat,
        kid: subject_kid,
    });
    let grant = AccessGrant {
        sub: subject.sub.clone(),
        client_id: client.id.clone(),
        audience: target.to_owned(),
        scope: scope.clone(),
        sid: subject.sid.clone(),
        roles: subject.roles.clone(),
        auth_time: subject.auth_time.and_then(|t| i64::try_from(t).ok()),
        amr: subject.amr.clone(),
        ttl: client.access_ttl.min(remaining),
        jkt,
        act: Some(act),
        origin,
    };
    let minted = issue::access_token(state, grant, now)?;
    tracing::info!(client = %client.id, subject = %subject.jti, issued = %minted.jti, audience = %target, "token exchanged");
    let mut response = TokenResponse::new(minted, scope, None, None);
    response.issued_token_type = Some(issued_type);
    let mut event = crate::token::issued_event(
        &response,
        EventKind::TokenExchanged,
        GrantType::TokenExchange,
        meta,
        None,
        now,
    );
    let detail = serde_json::json!({
        "scope": response.issued.scope,
        "dpop": response.issued.dpop_bound,
        "expires_in": response.issued.expires_in,
        "subject_jti": subject.jti,
        "subject_client_id": subject.client_id,
    });
    event.detail = Some(detail.to_string());
    state.record(event).await?;
    Ok(response)
}

fn rejected(description: &'static str) -> OAuthError {
    OAuthError::invalid_request(description)
}

/// A token parameter and its type parameter, which go together; only access tokens (JWTs issued here) are
/// understood.
fn typed_token<'a>(params: &'a Params, token: &str, kind: &str) -> Result<Option<&'a str>, OAuthError> {
    match (params.get(token), params.get(kind)) {
        (None, None) => Ok(None),
        (Some(value), Some(ACCESS_TOKEN_TYPE | JWT_TOKEN_TYPE)) => Ok(Some(value)),
        (Some(_), Some(_)) => Err(rejected("only access tokens issued by this server can be exchanged")),
        _ => Err(rejected("a token and its type must be sent together")),
    }
}

/// The single audience asked for, by `resource` (RFC 8707) or `audience` (RFC 8693): exactly one.
fn target_audience(params: &Params) -> Result<&str, OAuthError> {
    let mut wanted = params.all("resource");
    wanted.extend(params.all("audience"));
    wanted.sort_unstable();
    wanted.dedup();
    match wanted.as_slice() {
        [one] => Ok(one),
        [] => Err(OAuthError::invalid_request("resource or audience is required")),
        _ => Err(OAuthError::invalid_target()),
    }
}

/// An access token issued here that is valid and not revoked at `now`; the reason for a refusal goes to
/// the log only.
async fn accepted_token(
    state: &AppState,
    token: &str,
    now: i64,
    role: &'static str,
) -> Result<(AccessClaims, String), OAuthError> {
    check_access_token(state, token, now).await.map_err(|problem| {
        tracing::info!(role, reason = problem.0, "token exchange: token refused");
        if problem.0 == REVOCATION_UNAVAILABLE {
            OAuthError::temporarily_unavailable()
        } else {
            rejected("the token is invalid, expired or revoked")
        }
    })
}
