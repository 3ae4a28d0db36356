//! Why the guard refused a request, and the RFC 6750 answer for it.
//!
//! The wire sees only the RFC error code and a fixed description; the detailed reason (a stable
//! `snake_case` name) goes to metrics and usage events.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

/// The response header that hands a client a DPoP nonce (RFC 9449 §8.1).
pub const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No `Authorization` header at all: 401 with a bare challenge (RFC 6750 §3.1).
    MissingToken,
    /// A token that is malformed, misplaced, invalid, expired or revoked: 401 `invalid_token`.
    InvalidToken {
        /// The detailed reason.
        reason: &'static str,
    },
    /// A DPoP-bound token whose proof is missing, malformed, for another request, by another key, too old
    /// or replayed: 401 `invalid_dpop_proof` (RFC 9449 §7.1).
    InvalidDpopProof {
        /// The detailed reason.
        reason: &'static str,
    },
    /// A DPoP proof without the nonce this guard asks for: 401 `use_dpop_nonce` with the nonce in a
    /// `DPoP-Nonce` header (RFC 9449 §9); the client signs a new proof with it.
    UseDpopNonce {
        /// The current nonce.
        nonce: String,
    },
    /// A valid token without what the route needs: 403 `insufficient_scope`.
    InsufficientScope {
        /// The scopes the route needs (for the `scope` attribute).
        scope: String,
    },
    /// A route the policy does not list (default deny), or a path spelt ambiguously: 403.
    Forbidden {
        /// The detailed reason.
        reason: &'static str,
    },
    /// The request's source is blocked (`block_source`): 403 `access_denied`, whatever the route.
    Blocked,
    /// The guard cannot decide safely (no keys yet, revocation state stale or unknown): 503.
    Unavailable {
        /// The detailed reason.
        reason: &'static str,
    },
}

impl Denial {
    /// The stable reason name for metrics and events.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken { reason }
            | Self::InvalidDpopProof { reason }
            | Self::Forbidden { reason }
            | Self::Unavailable { reason } => reason,
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::Blocked => "blocked_source",
            Self::UseDpopNonce { .. } => "dpop_nonce_required",
        }
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken
            | Self::InvalidToken { .. }
            | Self::InvalidDpopProof { .. }
            | Self::UseDpopNonce { .. } => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. } | Self::Forbidden { .. } | Self::Blocked => StatusCode::FORBIDDEN,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `WWW-Authenticate` value for the `Bearer` scheme, if this refusal carries one.
    #[must_use]
    pub fn challenge(&self, realm: &str) -> Option<String> {
        let realm = realm.replace(['"', '\\'], "");
        match self {
            Self::MissingToken | Self::InvalidDpopProof { .. } | Self::UseDpopNonce { .. } => {
                Some(format!("Bearer realm=\"{realm}\""))
            }
            Self::InvalidToken { .. } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                self.description()
            )),
            Self::InsufficientScope { scope } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{}\", scope=\"{scope}\"",
                self.description()
            )),
            Self::Forbidden { .. } | Self::Blocked | Self::Unavailable { .. } => None,
        }
    }

    /// The `WWW-Authenticate` value for the `DPoP` scheme (RFC 9449 §7.1), offered beside every `Bearer`
    /// challenge so that clients learn DPoP is accepted and with which algorithms.
    #[must_use]
    pub fn dpop_challenge(&self, realm: &str) -> Option<String> {
        let realm = realm.replace(['"', '\\'], "");
        let algs = tessera_token::dpop::PROOF_ALGORITHMS.join(" ");
        match self {
            Self::InvalidDpopProof { .. } | Self::UseDpopNonce { .. } => Some(format!(
                "DPoP realm=\"{realm}\", error=\"{}\", error_description=\"{}\", algs=\"{algs}\"",
                self.error_code(),
                self.description()
            )),
            Self::MissingToken | Self::InvalidToken { .. } | Self::InsufficientScope { .. } => {
                Some(format!("DPoP realm=\"{realm}\", algs=\"{algs}\""))
            }
            Self::Forbidden { .. } | Self::Blocked | Self::Unavailable { .. } => None,
        }
    }

    fn error_code(&self) -> &'static str {
        match self {
            Self::MissingToken => "invalid_request",
            Self::InvalidToken { .. } => "invalid_token",
            Self::InvalidDpopProof { .. } => "invalid_dpop_proof",
            Self::UseDpopNonce { .. } => "use_dpop_nonce",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::Forbidden { .. } | Self::Blocked => "access_denied",
            Self::Unavailable { .. } => "temporarily_unavailable",
        }
    }

    fn description(&self) -> &'static str {
        match self {
            Self::MissingToken => "a bearer token is required",
            Self::InvalidToken { .. } => {
                "the access token is missing, malformed, invalid, expired or revoked"
            }
            Self::InvalidDpopProof { .. } => {
                "the DPoP proof is missing, invalid, for another request, or was used before"
            }
            Self::UseDpopNonce { .. } => "the DPoP proof must carry the nonce in the DPoP-Nonce header",
            Self::InsufficientScope { .. } => "the access token lacks the scope or role this route requires",
            Self::Forbidden { .. } => "this route is not allowed",
            Self::Blocked => "requests from this address are blocked for now",
            Self::Unavailable { .. } => "the service cannot check tokens right now",
        }
    }

    /// The full response: status, `WWW-Authenticate`, `Cache-Control: no-store` and a small JSON body.
    #[must_use]
    pub fn into_response<B: From<Bytes>>(self, realm: &str) -> Response<B> {
        let body = serde_json::json!({ "error": self.error_code(), "error_description": self.description() });
        let mut resp = Response::new(B::from(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for challenge in [self.challenge(realm), self.dpop_challenge(realm)].into_iter().flatten() {
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.append(header::WWW_AUTHENTICATE, value);
            }
        }
        if matches!(self, Self::Unavailable { .. }) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Self::UseDpopNonce { nonce } = &self
            && let Ok(value) = HeaderValue::from_str(nonce)
        {
            headers.insert(DPOP_NONCE, value);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_rfc6750() {
        let r: Response<Bytes> = Denial::InvalidToken { reason: "bad_signature" }.into_response("orders");
        assert_eq!(r.status(), 401);
        let c = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(c.starts_with("Bearer realm=\"orders\", error=\"invalid_token\""), "{c}");
        assert!(!r.body().windows(9).any(|w| w == b"signature"), "the detailed reason stays off the wire");
        let r: Response<Bytes> =
            Denial::InsufficientScope { scope: "orders:write".into() }.into_response("o");
        assert_eq!(r.status(), 403);
        let c = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(c.contains("error=\"insufficient_scope\"") && c.ends_with("scope=\"orders:write\""), "{c}");
        let r: Response<Bytes> = Denial::MissingToken.into_response("o");
        let challenges: Vec<_> = r.headers().get_all(header::WWW_AUTHENTICATE).iter().collect();
        assert_eq!(challenges, ["Bearer realm=\"o\"", "DPoP realm=\"o\", algs=\"EdDSA ES256 RS256 PS256\""]);
        let r: Response<Bytes> = Denial::InvalidDpopProof { reason: "dpop_replayed" }.into_response("o");
        assert_eq!(r.status(), 401);
        let dpop = r.headers().get_all(header::WWW_AUTHENTICATE).iter().nth(1).unwrap().to_str().unwrap();
        assert!(dpop.starts_with("DPoP realm=\"o\", error=\"invalid_dpop_proof\""), "{dpop}");
        let r: Response<Bytes> = Denial::UseDpopNonce { nonce: "n-1".into() }.into_response("o");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[DPOP_NONCE], "n-1");
        let dpop = r.headers().get_all(header::WWW_AUTHENTICATE).iter().nth(1).unwrap().to_str().unwrap();
        assert!(dpop.starts_with("DPoP realm=\"o\", error=\"use_dpop_nonce\""), "{dpop}");
        let r: Response<Bytes> = Denial::Unavailable { reason: "stale_revocations" }.into_response("o");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    }
}
