//! Minting tokens: RFC 9068 access tokens, OIDC ID tokens, and the token response.

use serde::Serialize;
use tessera_token::{AccessClaims, Actor, Audience, Confirmation, Origin};

use crate::AppState;
use crate::config::MAX_ACCESS_TOKEN_TTL;
use crate::crypto::sortable_id;
use crate::oauth::OAuthError;

/// What an access token says.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    /// `sub`: the user id, or the client id for client_credentials.
    pub sub: String,
    /// `client_id`.
    pub client_id: String,
    /// The single `aud`.
    pub audience: String,
    /// Granted scope, space-separated.
    pub scope: String,
    /// `sid`: the refresh family, absent for client_credentials.
    pub sid: Option<String>,
    /// The user's roles.
    pub roles: Vec<String>,
    /// When the user authenticated.
    pub auth_time: Option<i64>,
    /// How.
    pub amr: Vec<String>,
    /// Lifetime, seconds (capped at 900).
    pub ttl: i64,
    /// The thumbprint of the DPoP key the token is bound to (`cnf.jkt`).
    pub jkt: Option<String>,
    /// For an exchanged token (RFC 8693 §4.1): the service acting on the subject's behalf.
    pub act: Option<Actor>,
    /// For an exchanged token: the tokens it was exchanged from, the original first.
    pub origin: Vec<Origin>,
}

/// A signed access token and its `jti`. `Debug` shows the `jti`, never the token.
pub struct Minted {
    /// The JWT.
    pub token: String,
    /// Its id.
    pub jti: String,
    /// Its lifetime, seconds.
    pub expires_in: i64,
    /// Whether it is bound to a DPoP key.
    pub dpop_bound: bool,
    /// What the audit log records of it.
    pub issued: Issued,
}

/// What the audit log records of an issued access token: who, for what, and its id; never the token.
#[derive(Debug, Clone, Default)]
pub struct Issued {
    /// `jti`.
    pub jti: String,
    /// `sub`.
    pub sub: String,
    /// `sid`.
    pub sid: Option<String>,
    /// `client_id`.
    pub client_id: String,
    /// `aud`.
    pub audience: String,
    /// Granted scope.
    pub scope: String,
    /// Bound to a DPoP key.
    pub dpop_bound: bool,
    /// That key's thumbprint (public: it names the key, it is not the key).
    pub jkt: Option<String>,
    /// Lifetime, seconds.
    pub expires_in: i64,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("jti", &self.jti)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Signs an access token with the current key.
///
/// # Errors
/// `server_error` if signing fails.
pub fn access_token(state: &AppState, grant: AccessGrant, now: i64) -> Result<Minted, OAuthError> {
    let ttl = grant.ttl.clamp(1, MAX_ACCESS_TOKEN_TTL);
    let dpop_bound = grant.jkt.is_some();
    let jti = sortable_id(now).map_err(internal)?;
    let issued = Issued {
        jti: jti.clone(),
        sub: grant.sub.clone(),
        sid: grant.sid.clone(),
        client_id: grant.client_id.clone(),
        audience: grant.audience.clone(),
        scope: grant.scope.clone(),
        dpop_bound,
        jkt: grant.jkt.clone(),
        expires_in: ttl,
    };
    let claims = AccessClaims {
        iss: state.config.issuer.clone(),
        sub: grant.sub,
        aud: Audience::one(grant.audience),
        exp: unsigned(now + ttl),
        iat: unsigned(now),
        nbf: Some(unsigned(now)),
        jti: jti.clone(),
        client_id: grant.client_id,
        scope: (!grant.scope.is_empty()).then_some(grant.scope),
        sid: grant.sid,
        roles: grant.roles,
        auth_time: grant.auth_time.map(unsigned),
        acr: tessera_core::mfa::acr_for(&grant.amr).map(str::to_owned),
        amr: grant.amr,
        cnf: grant.jkt.map(|jkt| Confirmation { jkt: Some(jkt), other: Default::default() }),
        act: grant.act,
        origin: grant.origin,
        extra: Default::default(),
    };
    let keyring = state.keyring();
    let token = keyring.signer().sign_jwt("at+jwt", &claims).map_err(internal)?;
    Ok(Minted { token, jti, expires_in: ttl, dpop_bound, issued })
}

/// OIDC Core §2 ID token claims.
#[derive(Debug, Serialize)]
pub struct IdClaims {
    /// Issuer.
    pub iss: String,
    /// User id.
    pub sub: String,
    /// The client.
    pub aud: String,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// When the user authenticated.
    pub auth_time: i64,
    /// The authorization request's nonce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Authentication methods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The authentication context the methods reach (`urn:tessera:acr:pwd` or `urn:tessera:acr:mfa`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Session id (the refresh family).
    pub sid: String,
    /// With the `profile` scope: the username.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}

/// Signs an ID token.
///
/// # Errors
/// `server_error` if signing fails.
pub fn id_token(state: &AppState, claims: &IdClaims) -> Result<String, OAuthError> {
    state.keyring().signer().sign_jwt("JWT", claims).map_err(internal)
}

/// The successful token response (RFC 6749 §5.1). `Debug` shows which tokens it carries, not the tokens.
#[derive(Serialize)]
pub struct TokenResponse {
    /// The JWT access token.
    pub access_token: String,
    /// `Bearer`, or `DPoP` for a DPoP-bound token.
    pub token_type: &'static str,
    /// Seconds.
    pub expires_in: i64,
    /// Granted scope.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The opaque refresh token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The OIDC ID token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// For token exchange (RFC 8693 §2.2.1): the type of the token issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
    /// What the audit log records; not sent.
    #[serde(skip)]
    pub issued: Issued,
}

fn unsigned(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

fn internal(e: impl std::fmt::Display) -> OAuthError {
    tracing::error!(error = %e, "token minting failed");
    OAuthError::server_error()
}

impl TokenResponse {
    /// The response for `minted`: `token_type` is `DPoP` when it is bound to a key, else `Bearer`.
    pub fn new(
        minted: Minted,
        scope: String,
        refresh_token: Option<String>,
        id_token: Option<String>,
    ) -> Self {
        TokenResponse {
            issued: minted.issued,
            access_token: minted.token,
            token_type: if minted.dpop_bound { "DPoP" } else { "Bearer" },
            expires_in: minted.expires_in,
            scope,
            refresh_token,
            id_token,
            issued_token_type: None,
        }
    }
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[REDACTED]"))
            .field("id_token", &self.id_token.as_ref().map(|_| "[REDACTED]"))
            .finish_non_exhaustive()
    }
}
