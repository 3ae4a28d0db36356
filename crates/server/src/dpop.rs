//! DPoP (RFC 9449) at the authorization server: reading a request's proof, refusing replays through the
//! shared single-use id cache, and server nonces.
//!
//! Nonces are stateless: an HMAC of the current minute under a key derived from the master key, so every
//! node with the same master key issues and accepts the same ones. A nonce is accepted in its own minute
//! and the next.

use axum::http::{HeaderMap, HeaderName};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tessera_core::TokenHash;
use tessera_token::UnixTime;
use tessera_token::dpop::{Ath, DpopProof, ProofPolicy, ProofRejection, ProofRequest};

use crate::AppState;
use crate::oauth::OAuthError;

/// The `DPoP` request header that carries a proof.
pub const DPOP: HeaderName = HeaderName::from_static("dpop");
/// The `DPoP-Nonce` response header.
pub const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// How long one nonce is issued for, seconds. It is accepted for twice as long.
const NONCE_WINDOW: i64 = 60;

/// The algorithms a client may sign proofs with, for discovery.
pub fn signing_algs() -> Vec<&'static str> {
    tessera_token::dpop::PROOF_ALGORITHMS.to_vec()
}

/// The nonce for the window holding `now`.
pub fn nonce_at(state: &AppState, now: i64) -> String {
    let window = now.div_euclid(NONCE_WINDOW);
    let tag = aws_lc_rs::hmac::sign(state.kek.nonce_key(), &window.to_be_bytes());
    URL_SAFE_NO_PAD.encode(&tag.as_ref()[..18])
}

/// The current nonce, if the server asks for nonces.
pub fn current_nonce(state: &AppState, now: i64) -> Option<String> {
    state.config.dpop_nonce.then(|| nonce_at(state, now))
}

/// The proof policy from the configuration.
pub fn policy(state: &AppState) -> ProofPolicy {
    ProofPolicy {
        max_age_secs: u64::try_from(state.config.dpop_proof_max_age).unwrap_or(60),
        ..ProofPolicy::default()
    }
}

/// Why a request's proof was refused, for the caller to answer in its own dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofFailure {
    /// The proof is missing where required, malformed, for another request, too old, or replayed.
    Invalid(&'static str),
    /// The proof lacks the current nonce: answer with this one.
    Nonce(String),
    /// The replay cache could not be reached.
    Unavailable,
}

impl From<ProofFailure> for OAuthError {
    fn from(f: ProofFailure) -> Self {
        match f {
            ProofFailure::Invalid(_) => OAuthError::invalid_dpop_proof("the DPoP proof is invalid"),
            ProofFailure::Nonce(nonce) => OAuthError::use_dpop_nonce(nonce),
            ProofFailure::Unavailable => OAuthError::temporarily_unavailable(),
        }
    }
}

/// The request's proof, checked for `method` at `path` on this issuer (with `access_token`'s hash when one
/// is presented). `Ok(None)` when the request has no `DPoP` header; two headers, or an empty one, are
/// refused. The proof's id is then taken in the replay cache, so a second use anywhere fails.
///
/// # Errors
/// A [`ProofFailure`]; its detail is logged here.
pub async fn request_proof(
    state: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    access_token: Option<&str>,
    now: i64,
) -> Result<Option<DpopProof>, ProofFailure> {
    let mut values = headers.get_all(DPOP).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        tracing::info!(reason = "dpop_multiple_proofs", "DPoP proof refused");
        return Err(ProofFailure::Invalid("dpop_multiple_proofs"));
    }
    let proof = value.to_str().map_err(|_| ProofFailure::Invalid("dpop_invalid_jws"))?;
    let url = format!("{}{path}", state.config.issuer);
    let nonces: Vec<String> = if state.config.dpop_nonce {
        vec![nonce_at(state, now), nonce_at(state, now - NONCE_WINDOW)]
    } else {
        Vec::new()
    };
    let accepted: Vec<&str> = nonces.iter().map(String::as_str).collect();
    let request =
        ProofRequest { method, url: &url, access_token: access_token.map(Ath::of), nonces: &accepted };
    let policy = policy(state);
    let rejected = |rejection| match rejection {
        ProofRejection::NonceRequired => ProofFailure::Nonce(nonce_at(state, now)),
        rejection => refused(rejection, "proof refused"),
    };
    let checked = state
        .proof_keys
        .verify(proof, &request, &policy, UnixTime(u64::try_from(now).unwrap_or(0)))
        .map_err(rejected)?;
    let id = TokenHash::of_parts(&[&checked.jkt, "|", &checked.jti]);
    let until = i64::try_from(checked.replay_until(&policy)).unwrap_or(i64::MAX);
    match state.store.use_once("dpop", &id, until, now).await {
        Ok(true) => Ok(Some(checked)),
        Ok(false) => Err(refused(ProofRejection::Replayed, "proof replayed")),
        Err(e) => {
            tracing::warn!(error = %e, "DPoP replay cache unavailable");
            Err(ProofFailure::Unavailable)
        }
    }
}

fn refused(rejection: ProofRejection, what: &'static str) -> ProofFailure {
    tracing::info!(reason = rejection.name(), "DPoP {what}");
    ProofFailure::Invalid(rejection.name())
}
