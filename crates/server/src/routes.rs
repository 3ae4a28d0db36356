//! The small endpoints: discovery, JWKS, health, readiness and metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use tessera_core::GrantType;

use crate::{AppState, ClientAddr};

/// The discovery document (OIDC Discovery 1.0 and RFC 8414), rendered once at start.
pub fn discovery_document(state_issuer: &str, signing_alg: &str) -> String {
    let at = |path: &str| format!("{state_issuer}{path}");
    json!({
        "issuer": state_issuer,
        "authorization_endpoint": at("/authorize"),
        "token_endpoint": at("/token"),
        "jwks_uri": at("/jwks.json"),
        "userinfo_endpoint": at("/userinfo"),
        "end_session_endpoint": at("/logout"),
        "revocation_endpoint": at("/revoke"),
        "introspection_endpoint": at("/introspect"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": GrantType::ALL.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [signing_alg],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": crate::dpop::signing_algs(),
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "revocation_endpoint_auth_signing_alg_values_supported": crate::dpop::signing_algs(),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "introspection_endpoint_auth_signing_alg_values_supported": crate::dpop::signing_algs(),
        "code_challenge_methods_supported": ["S256"],
        "dpop_signing_alg_values_supported": crate::dpop::signing_algs(),
        "scopes_supported": ["openid", "profile", "offline_access"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "amr", "acr", "sid", "preferred_username"],
        "acr_values_supported": [tessera_core::mfa::ACR_MFA, tessera_core::mfa::ACR_PASSWORD],
        "authorization_response_iss_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
        "prompt_values_supported": ["none", "login", "consent"],
    })
    .to_string()
}

/// `GET /.well-known/openid-configuration` and `/.well-known/oauth-authorization-server`.
pub async fn discovery(State(state): State<Arc<AppState>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
        ],
        state.discovery.clone(),
    )
        .into_response()
}

/// `GET /jwks.json`: the published public keys. Guards cache it for a minute; a new key is published for
/// `key_publish_delay` (default five minutes) before it signs, so no cache can miss it.
pub async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    let body = state.keyring().jwks_json().to_owned();
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60")),
        ],
        body,
    )
        .into_response()
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the database answers within two seconds.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    // Shutting down: the load balancer should send new requests elsewhere while these finish.
    if *state.closing.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: database");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database timed out\n").into_response(),
    }
}

/// `GET /metrics`: Prometheus text format, for the clients in `metrics_allow` (loopback by default).
pub async fn metrics(State(state): State<Arc<AppState>>, client: Option<Extension<ClientAddr>>) -> Response {
    let allowed = client
        .is_some_and(|Extension(ClientAddr(ip))| state.metrics_allow.iter().any(|net| net.contains(&ip)));
    if !allowed {
        return (StatusCode::FORBIDDEN, "metrics are served only to the clients in metrics_allow\n")
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}
