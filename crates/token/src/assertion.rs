//! Client assertions (RFC 7523 §2.2, OIDC `private_key_jwt`): a client proves who it is with a short-lived
//! JWT signed by a key it registered, instead of a shared secret.
//!
//! [`ClientKeys`] is a client's registered JWKS, checked once at registration. [`verify_assertion`] checks
//! one assertion against those keys, the expected issuer/subject (the client id), the audiences the server
//! answers to, and the time. Whether the assertion's `jti` was used before is the caller's check: it needs
//! shared state. Time is an argument.

use std::fmt;

use serde::Deserialize;

use crate::alg::Algorithm;
use crate::b64;
use crate::claims::Audience;
use crate::error::{KeyError, Rejection};
use crate::json::{self, NumericDate, StrictValue};
use crate::jwk::{RawJwk, parse_json};
use crate::jws::{RawHeader, Segments, verify_segment};
use crate::key::VerifyingKey;
use crate::validate::UnixTime;

/// The size limit for an assertion.
pub const MAX_ASSERTION_LEN: usize = 8 * 1024;
/// The longest an assertion may live, from its `iat` (or from now) to its `exp`, by default: 300 s.
pub const DEFAULT_ASSERTION_MAX_LIFETIME_SECS: u64 = 300;
/// Clock skew allowed for `exp`, `nbf` and `iat` by default: 30 s.
pub const DEFAULT_ASSERTION_LEEWAY_SECS: u64 = 30;
/// The most keys a client may register. Each candidate key costs one signature check, so the bound keeps
/// a bad assertion cheap to refuse.
pub const MAX_CLIENT_KEYS: usize = 8;
/// The longest `jti` accepted, so that the single-use cache's entries stay small.
pub const MAX_ASSERTION_JTI_LEN: usize = 256;

/// A client's registered public signing keys. An RSA key without `alg` may sign RS256 or PS256 and is held
/// once for each.
#[derive(Clone)]
pub struct ClientKeys {
    keys: Vec<(Option<String>, VerifyingKey)>,
}

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|(_, k)| k)).finish()
    }
}

impl ClientKeys {
    /// Reads a client's JWKS (`{"keys":[...]}`). Keys marked `"use":"enc"` are skipped. Refused: any key
    /// with private members, any other key we cannot verify with, more than [`MAX_CLIENT_KEYS`] keys, and a
    /// set with no signing key at all. A key's `kid` may be any label the client chose.
    ///
    /// # Errors
    /// [`KeyError`] naming the first problem; it never quotes key material.
    pub fn parse(json: &str) -> Result<Self, KeyError> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<RawJwk>,
        }
        let jwks: Jwks = parse_json(json, "a JWKS")?;
        if jwks.keys.len() > MAX_CLIENT_KEYS {
            return Err(KeyError::InvalidJwk(format!("more than {MAX_CLIENT_KEYS} keys")));
        }
        let mut keys = Vec::new();
        for raw in &jwks.keys {
            if raw.has_private_members() {
                return Err(KeyError::PrivateMaterialInPublicSet);
            }
            if raw.use_.as_deref() == Some("enc") {
                continue;
            }
            let algs: &[Algorithm] = match (raw.alg.as_deref(), raw.kty.as_str()) {
                (None, "RSA") => &[Algorithm::RS256, Algorithm::PS256],
                _ => &[],
            };
            if algs.is_empty() {
                keys.push((raw.kid.clone(), VerifyingKey::from_raw_any_kid(raw, None)?));
            }
            for alg in algs {
                keys.push((raw.kid.clone(), VerifyingKey::from_raw_any_kid(raw, Some(*alg))?));
            }
        }
        if keys.is_empty() {
            return Err(KeyError::InvalidJwk("no signing key".into()));
        }
        Ok(Self { keys })
    }

    /// The RFC 7638 thumbprints of the keys, each once, for display.
    #[must_use]
    pub fn thumbprints(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.keys.iter().map(|(_, k)| k.kid()).collect();
        out.dedup();
        out
    }

    /// The keys an assertion with this header may be signed by: of the header's `alg`, and with its `kid`
    /// (a label or a thumbprint) when it names one.
    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.iter().filter_map(move |(label, key)| {
            let named = kid.is_none_or(|kid| label.as_deref() == Some(kid) || key.kid() == kid);
            (key.alg() == alg && named).then_some(key)
        })
    }
}

/// What an assertion must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct AssertionPolicy<'a> {
    /// The client the assertion must be about: its `iss` and `sub`.
    pub client_id: &'a str,
    /// The audiences the server answers to (its issuer identifier and its token endpoint URL). Every `aud`
    /// value must be one of them, so an assertion addressed to other servers too is refused.
    pub audiences: &'a [&'a str],
    /// The longest lifetime accepted, in seconds.
    pub max_lifetime_secs: u64,
    /// Allowed clock skew, in seconds.
    pub leeway_secs: u64,
}

/// An assertion that passed every stateless check. The caller still refuses a `jti` used before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAssertion {
    /// The assertion's unique id.
    pub jti: String,
    /// Its expiry.
    pub exp: u64,
    /// The thumbprint of the key that signed it.
    pub key_thumbprint: String,
}

impl ClientAssertion {
    /// Until when a single-use cache must remember this assertion's `jti`: past the last second it could
    /// still be accepted.
    #[must_use]
    pub fn replay_until(&self, policy: &AssertionPolicy<'_>) -> u64 {
        self.exp.saturating_add(policy.leeway_secs).saturating_add(1)
    }
}

/// Why a client assertion was refused. Stable names: see [`AssertionRejection::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AssertionRejection {
    /// Not a well-formed JWS we accept (size, structure, base64, algorithm — `none` and HMAC included —,
    /// `crit`, an embedded key or key URL, duplicate members), or the signature does not verify.
    Jws(Rejection),
    /// No registered key of the header's `alg` (and `kid`, when given) exists.
    NoMatchingKey,
    /// The claims are not a JSON object of the expected member types.
    InvalidClaims,
    /// A required claim (`iss`, `sub`, `aud`, `exp`, `jti`) is absent or empty.
    MissingClaim(&'static str),
    /// `iss` or `sub` is not the client.
    WrongClient,
    /// An `aud` value is neither the issuer nor the token endpoint.
    WrongAudience,
    /// `exp` has passed.
    Expired,
    /// `exp` lies further ahead than the policy allows.
    LifetimeTooLong,
    /// `nbf` lies in the future.
    NotYetValid,
    /// `iat` lies in the future.
    IssuedInFuture,
    /// The `jti` was used before. Raised by the caller's single-use cache.
    Replayed,
}

impl AssertionRejection {
    /// The stable `snake_case` name of this reason, for the log and the audit trail.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Jws(_) => "assertion_invalid_jws",
            Self::NoMatchingKey => "assertion_no_matching_key",
            Self::InvalidClaims => "assertion_invalid_claims",
            Self::MissingClaim(_) => "assertion_missing_claim",
            Self::WrongClient => "assertion_wrong_client",
            Self::WrongAudience => "assertion_wrong_audience",
            Self::Expired => "assertion_expired",
            Self::LifetimeTooLong => "assertion_lifetime_too_long",
            Self::NotYetValid => "assertion_not_yet_valid",
            Self::IssuedInFuture => "assertion_issued_in_future",
            Self::Replayed => "assertion_replayed",
        }
    }
}

impl fmt::Display for AssertionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Jws(inner) => write!(f, "assertion_invalid_jws ({inner})"),
            Self::MissingClaim(claim) => write!(f, "assertion_missing_claim ({claim})"),
            other => f.write_str(other.name()),
        }
    }
}

impl std::error::Error for AssertionRejection {}

impl From<Rejection> for AssertionRejection {
    fn from(r: Rejection) -> Self {
        Self::Jws(r)
    }
}

#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
    iat: Option<NumericDate>,
    jti: Option<String>,
}

impl RawClaims {
    fn times(&self) -> (Option<u64>, Option<u64>, Option<u64>) {
        let secs = |d: Option<NumericDate>| d.map(|NumericDate(s)| s);
        (secs(self.exp), secs(self.nbf), secs(self.iat))
    }
}

fn claims_of(payload: &[u8]) -> Result<RawClaims, AssertionRejection> {
    let StrictValue(value) = json::parse_segment(payload, Rejection::InvalidClaims).map_err(|e| {
        if e == Rejection::DuplicateMember { e.into() } else { AssertionRejection::InvalidClaims }
    })?;
    serde_json::from_value(value).map_err(|_| AssertionRejection::InvalidClaims)
}

/// The client an assertion claims to come from (its `sub`), read without checking anything, so the caller
/// can look up that client's keys when the request names no `client_id`. Nothing else may be trusted
/// before [`verify_assertion`].
#[must_use]
pub fn claimed_client(assertion: &str) -> Option<String> {
    let parts = Segments::split(assertion, MAX_ASSERTION_LEN).ok()?;
    let payload = b64::decode(parts.payload).ok()?;
    claims_of(&payload).ok()?.sub.filter(|s| !s.is_empty())
}

/// Checks a client assertion: the header (a supported `alg`, no embedded key, key URL or `crit`), the
/// signature by one of the client's registered keys, then `iss` and `sub` (the client), `aud`, `exp` (not
/// passed, not too far ahead), `nbf`, `iat` and `jti`.
///
/// # Errors
/// The [`AssertionRejection`] naming the first problem found.
pub fn verify_assertion(
    assertion: &str,
    keys: &ClientKeys,
    policy: &AssertionPolicy<'_>,
    now: UnixTime,
) -> Result<ClientAssertion, AssertionRejection> {
    let parts = Segments::split(assertion, MAX_ASSERTION_LEN)?;
    let header = RawHeader::decode(parts.header)?;
    let alg = header.common_checks()?;
    if header.jwk.is_some() {
        return Err(Rejection::EmbeddedKeyHeader.into());
    }
    if parts.payload.is_empty() {
        return Err(Rejection::Malformed.into());
    }
    let payload = b64::decode(parts.payload).map_err(|_| Rejection::InvalidBase64)?;
    let mut signer = None;
    let mut tried = false;
    for key in keys.candidates(alg, header.kid.as_deref()) {
        tried = true;
        if verify_segment(key, parts.signing_input, parts.signature).is_ok() {
            signer = Some(key);
            break;
        }
    }
    let signer = match (signer, tried) {
        (Some(key), _) => key,
        (None, true) => return Err(Rejection::BadSignature.into()),
        (None, false) => return Err(AssertionRejection::NoMatchingKey),
    };

    let claims = claims_of(&payload)?;
    let (exp, nbf, iat) = claims.times();
    let present =
        |v: Option<String>, name| v.filter(|s| !s.is_empty()).ok_or(AssertionRejection::MissingClaim(name));
    let iss = present(claims.iss, "iss")?;
    let sub = present(claims.sub, "sub")?;
    let aud = claims.aud.ok_or(AssertionRejection::MissingClaim("aud"))?;
    let exp = exp.ok_or(AssertionRejection::MissingClaim("exp"))?;
    let jti = present(claims.jti, "jti")?;
    if iss != policy.client_id || sub != policy.client_id {
        return Err(AssertionRejection::WrongClient);
    }
    if aud.0.is_empty() || !aud.0.iter().all(|a| policy.audiences.contains(&a.as_str())) {
        return Err(AssertionRejection::WrongAudience);
    }
    let UnixTime(now) = now;
    let leeway = policy.leeway_secs;
    if now >= exp.saturating_add(leeway) {
        return Err(AssertionRejection::Expired);
    }
    let lifetime_from = iat.map_or(now, |iat| iat.min(now));
    if exp > lifetime_from.saturating_add(policy.max_lifetime_secs).saturating_add(leeway) {
        return Err(AssertionRejection::LifetimeTooLong);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(AssertionRejection::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(AssertionRejection::IssuedInFuture);
    }
    if jti.len() > MAX_ASSERTION_JTI_LEN {
        return Err(AssertionRejection::InvalidClaims);
    }
    Ok(ClientAssertion { jti, exp, key_thumbprint: signer.kid().to_owned() })
}
