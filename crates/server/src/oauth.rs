//! The wire side of OAuth: RFC 6749 §5.2 error responses, form parameters, and client authentication.
//!
//! A client only ever sees an error code and a fixed description; the detailed reason goes to the log.

use std::collections::HashSet;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tessera_core::TokenHash;
use tessera_store::{Client, StoreError};

use tessera_core::ClientKind;
use tessera_token::UnixTime;
use tessera_token::assertion::{self, AssertionPolicy, AssertionRejection, ClientKeys, verify_assertion};
use zeroize::Zeroizing;

use crate::AppState;

/// An OAuth error response (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: StatusCode,
    /// The RFC error code.
    pub error: &'static str,
    /// A fixed, human-readable description; never contains input or internal detail.
    pub description: &'static str,
    /// A fresh DPoP nonce for the `DPoP-Nonce` header (RFC 9449 §8).
    pub dpop_nonce: Option<String>,
}

impl OAuthError {
    const fn new(status: StatusCode, error: &'static str, description: &'static str) -> Self {
        OAuthError { status, error, description, dpop_nonce: None }
    }
    /// `invalid_dpop_proof` (RFC 9449 §5).
    pub const fn invalid_dpop_proof(description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_dpop_proof", description)
    }
    /// `use_dpop_nonce` (RFC 9449 §8), carrying the nonce to use.
    pub fn use_dpop_nonce(nonce: String) -> Self {
        OAuthError {
            dpop_nonce: Some(nonce),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "use_dpop_nonce",
                "the DPoP proof must carry the server's nonce",
            )
        }
    }
    /// `invalid_request`.
    pub const fn invalid_request(description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }
    /// `invalid_client`, 401 with a `WWW-Authenticate` challenge.
    pub const fn invalid_client() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed")
    }
    /// `invalid_grant`.
    pub const fn invalid_grant(description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }
    /// `unauthorized_client`.
    pub const fn unauthorized_client(description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", description)
    }
    /// `unsupported_grant_type`.
    pub const fn unsupported_grant_type() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", "the grant type is not supported")
    }
    /// `invalid_scope`.
    pub const fn invalid_scope() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", "the requested scope is not allowed")
    }
    /// `invalid_target` (RFC 8707).
    pub const fn invalid_target() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", "the requested resource is not allowed")
    }
    /// `server_error`: our fault, logged in detail.
    pub const fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the server could not complete the request",
        )
    }
    /// `access_denied` (403): the request's source is blocked for now (`block_source`).
    pub const fn blocked() -> Self {
        Self::new(StatusCode::FORBIDDEN, "access_denied", "requests from this address are blocked for now")
    }
    /// `temporarily_unavailable`: the database is down or overloaded.
    pub const fn temporarily_unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "try again later")
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "database unavailable");
                OAuthError::temporarily_unavailable()
            }
            other => {
                tracing::error!(error = %other, "store failure");
                OAuthError::server_error()
            }
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "error_description": self.description });
        let mut response = (self.status, no_store_json(body.to_string())).into_response();
        if let Some(nonce) = self.dpop_nonce.as_deref().and_then(|n| HeaderValue::from_str(n).ok()) {
            response.headers_mut().insert(crate::dpop::DPOP_NONCE, nonce);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tessera\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

/// A JSON body with `Cache-Control: no-store` (RFC 6749 §5.1), for anything that carries or concerns tokens.
pub fn no_store_json(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Form parameters of a POST (or a query string). Each parameter may appear once (RFC 6749 §3.1), except
/// the ones listed as repeatable; an empty value counts as absent.
#[derive(Default)]
pub struct Params {
    pairs: Vec<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be secrets (client_secret, code, refresh_token, password): names only.
        f.debug_list().entries(self.pairs.iter().map(|(k, _)| k)).finish()
    }
}

/// Parameters that may legitimately repeat (RFC 8707 `resource`, RFC 8693 `audience`).
const REPEATABLE: &[&str] = &["resource", "audience"];

impl Params {
    /// Reads `application/x-www-form-urlencoded` bytes.
    ///
    /// # Errors
    /// `invalid_request` if a parameter repeats.
    pub fn parse(bytes: &[u8]) -> Result<Params, OAuthError> {
        let mut seen = HashSet::new();
        let mut pairs = Vec::new();
        for (k, v) in form_urlencoded::parse(bytes) {
            if v.is_empty() {
                continue;
            }
            if k.contains('\0') || v.contains('\0') {
                return Err(OAuthError::invalid_request("a parameter contains a NUL character"));
            }
            if !REPEATABLE.contains(&k.as_ref()) && !seen.insert(k.to_string()) {
                return Err(OAuthError::invalid_request("a parameter was repeated"));
            }
            pairs.push((k.into_owned(), Zeroizing::new(v.into_owned())));
        }
        Ok(Params { pairs })
    }

    /// Reads a POST body, which must be form-encoded.
    ///
    /// # Errors
    /// `invalid_request` for another content type or a repeated parameter.
    pub fn from_form(headers: &HeaderMap, body: &[u8]) -> Result<Params, OAuthError> {
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        if !form {
            return Err(OAuthError::invalid_request("the body must be application/x-www-form-urlencoded"));
        }
        Params::parse(body)
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// How a client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A confidential client proved its secret (`client_secret_basic` or `client_secret_post`).
    Secret,
    /// A confidential client signed a client assertion with a registered key (`private_key_jwt`).
    PrivateKeyJwt,
    /// A public client identified itself (no secret exists).
    None,
}

impl ClientAuth {
    /// Whether the client proved a credential: a secret or a key.
    pub fn is_confidential(self) -> bool {
        matches!(self, ClientAuth::Secret | ClientAuth::PrivateKeyJwt)
    }
}

/// The `client_assertion_type` of RFC 7523 §2.2.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The single-use scope of client assertion ids in the store.
const ASSERTION_SCOPE: &str = "client_assertion";

/// Authenticates the client of a token, revocation or introspection request: `client_secret_basic`,
/// `client_secret_post`, `private_key_jwt`, or a public client's bare `client_id`. Using two methods at
/// once is refused, and so is a secret for a client whose secret was switched off.
///
/// # Errors
/// `invalid_client` (401) for anything that does not authenticate; `invalid_request` for two methods.
pub async fn authenticate_client(
    state: &AppState,
    headers: &HeaderMap,
    params: &Params,
    now: i64,
) -> Result<(Client, ClientAuth), OAuthError> {
    let basic = basic_credentials(headers)?;
    let posted_secret = params.get("client_secret");
    match (params.get("client_assertion_type"), params.get("client_assertion")) {
        (None, None) => {}
        (Some(kind), Some(assertion)) => {
            if basic.is_some() || posted_secret.is_some() {
                return Err(OAuthError::invalid_request("use one client authentication method"));
            }
            if kind != JWT_BEARER_ASSERTION {
                return Err(OAuthError::invalid_client());
            }
            return private_key_jwt(state, params.get("client_id"), assertion, now).await;
        }
        _ => {
            return Err(OAuthError::invalid_request(
                "client_assertion and client_assertion_type must be sent together",
            ));
        }
    }
    let directory = &state.directory;
    let (id, secret) = match (basic, params.get("client_id"), posted_secret) {
        (Some(_), _, Some(_)) => {
            return Err(OAuthError::invalid_request("use one client authentication method"));
        }
        (Some((id, secret)), body_id, None) => {
            if body_id.is_some_and(|b| b != id.as_str()) {
                return Err(OAuthError::invalid_request("client_id does not match the credentials"));
            }
            (id, Some(secret))
        }
        (None, Some(id), secret) => (id.to_owned(), secret.map(|s| Zeroizing::new(s.to_owned()))),
        (None, None, _) => return Err(OAuthError::invalid_client()),
    };
    let client =
        directory.client(&id).await?.filter(|c| !c.disabled).ok_or_else(OAuthError::invalid_client)?;
    match (&client.secret_hash, secret) {
        (Some(stored), Some(secret)) if stored.ct_eq(&TokenHash::of(&secret)) => {
            Ok((client, ClientAuth::Secret))
        }
        // Only a public client may name itself without a credential: a confidential client whose secret was
        // switched off must sign an assertion.
        (None, None) if client.kind == ClientKind::Public => Ok((client, ClientAuth::None)),
        _ => Err(OAuthError::invalid_client()),
    }
}

/// `private_key_jwt` (RFC 7523 §2.2): the assertion must be signed by a key the client registered, name the
/// client as `iss` and `sub`, be addressed to this server (its issuer or token endpoint), expire soon, and
/// carry a `jti` never used before by this client on any node.
async fn private_key_jwt(
    state: &AppState,
    client_id: Option<&str>,
    assertion: &str,
    now: i64,
) -> Result<(Client, ClientAuth), OAuthError> {
    let claimed = assertion::claimed_client(assertion);
    let id = match (client_id, claimed.as_deref()) {
        (Some(id), Some(claimed)) if id != claimed => return Err(OAuthError::invalid_client()),
        (Some(id), _) | (None, Some(id)) => id.to_owned(),
        (None, None) => return Err(OAuthError::invalid_client()),
    };
    let client = state
        .directory
        .client(&id)
        .await?
        .filter(|c| !c.disabled && c.kind == ClientKind::Confidential)
        .ok_or_else(OAuthError::invalid_client)?;
    let Some(jwks) = client.jwks.as_deref() else {
        tracing::info!(client = %client.id, "client assertion from a client with no registered keys");
        return Err(OAuthError::invalid_client());
    };
    let keys = ClientKeys::parse(jwks).map_err(|e| {
        tracing::error!(client = %client.id, error = %e, "a client's registered JWKS is unusable");
        OAuthError::invalid_client()
    })?;
    let token_endpoint = format!("{}/token", state.config.issuer);
    let policy = AssertionPolicy {
        client_id: &client.id,
        audiences: &[state.config.issuer.as_str(), token_endpoint.as_str()],
        max_lifetime_secs: assertion::DEFAULT_ASSERTION_MAX_LIFETIME_SECS,
        leeway_secs: assertion::DEFAULT_ASSERTION_LEEWAY_SECS,
    };
    let checked = verify_assertion(assertion, &keys, &policy, UnixTime(u64::try_from(now).unwrap_or(0)))
        .map_err(|r| {
            tracing::warn!(client = %client.id, reason = %r, "client assertion refused");
            OAuthError::invalid_client()
        })?;
    let id_hash = TokenHash::of_parts(&[&client.id, "\0", &checked.jti]);
    let until = i64::try_from(checked.replay_until(&policy)).unwrap_or(i64::MAX);
    if !state.store.use_once(ASSERTION_SCOPE, &id_hash, until, now).await? {
        tracing::warn!(
            client = %client.id,
            jti = %id_hash.short(),
            reason = AssertionRejection::Replayed.name(),
            "client assertion replayed"
        );
        return Err(OAuthError::invalid_client());
    }
    Ok((client, ClientAuth::PrivateKeyJwt))
}

/// `Authorization: Basic` credentials, form-decoded (RFC 6749 §2.3.1). `None` without the header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, Zeroizing<String>)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| OAuthError::invalid_client())?;
    let Some(encoded) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) else {
        return Err(OAuthError::invalid_client());
    };
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| OAuthError::invalid_client())?,
    );
    let text = std::str::from_utf8(&decoded).map_err(|_| OAuthError::invalid_client())?;
    let (id, secret) = text.split_once(':').ok_or_else(OAuthError::invalid_client)?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes()).map(|(_, v)| v.into_owned()).collect()
    };
    Ok(Some((unescape(id), Zeroizing::new(unescape(secret)))))
}
