//! DPoP proofs (RFC 9449): check a proof against the request it came with, and make one.
//!
//! A proof is a compact JWS whose header embeds the client's public key (`jwk`). This is the one place
//! Tessera accepts an embedded key: here the key is what the proof is about, not a trust anchor, and what a
//! token binds to is its RFC 7638 thumbprint (`cnf.jkt`), compared by the caller. Everything that needs
//! state stays with the caller too: whether the `jti` was seen before, and which nonces are current. Time
//! is an argument.

use std::fmt;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::alg::Algorithm;
use crate::b64;
use crate::claims::Confirmation;
use crate::error::{KeyError, Rejection};
use crate::json::{self, StrictValue};
use crate::jws::{RawHeader, Segments, verify_segment};
use crate::key::{SigningKey, VerifyingKey};
use crate::validate::{TokenType, UnixTime};

/// The oldest proof accepted by default: 60 s after its `iat`.
pub const DEFAULT_PROOF_MAX_AGE_SECS: u64 = 60;
/// How far in the future a proof's `iat` may lie by default (client clock skew): 30 s.
pub const DEFAULT_PROOF_LEEWAY_SECS: u64 = 30;
/// The size limit for a proof. An RSA-8192 key and signature fit.
pub const MAX_PROOF_LEN: usize = 8 * 1024;
/// The longest `jti` accepted, so that a replay cache's entries stay small.
pub const MAX_JTI_LEN: usize = 256;

/// The time window a proof must fall in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofPolicy {
    /// How long after its `iat` a proof is still accepted, in seconds.
    pub max_age_secs: u64,
    /// How far ahead of now a proof's `iat` may be, in seconds.
    pub leeway_secs: u64,
}

impl Default for ProofPolicy {
    fn default() -> Self {
        Self { max_age_secs: DEFAULT_PROOF_MAX_AGE_SECS, leeway_secs: DEFAULT_PROOF_LEEWAY_SECS }
    }
}

/// The SHA-256 of the access token a proof accompanies: what its `ath` claim carries (RFC 9449 §4.2). A
/// caller that already hashed the token (a guard's cache key) passes the digest instead of hashing again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ath([u8; 32]);

impl Ath {
    /// The hash of `token`.
    #[must_use]
    pub fn of(token: &str) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        Self(out)
    }

    /// The hash from a SHA-256 digest of the token computed elsewhere.
    #[must_use]
    pub const fn from_sha256(digest: [u8; 32]) -> Self {
        Self(digest)
    }
}

impl fmt::Debug for Ath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ath(..)")
    }
}

/// The request a proof came with, as the client addressed it.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The HTTP method, compared exactly (methods are case-sensitive).
    pub method: &'a str,
    /// The request URL as the client saw it: scheme, host, port and path. Query and fragment are ignored.
    /// The caller builds it from a base URL it checked when configured and the request's path: an `htu`
    /// spelt exactly as a plain http(s) URL here is taken without parsing; any other is parsed and normalised.
    pub url: &'a str,
    /// The hash of the access token the proof accompanies, which `ath` must carry; `None` at the token
    /// endpoint.
    pub access_token: Option<Ath>,
    /// The nonces the server currently accepts. Empty: the server asks for none.
    pub nonces: &'a [&'a str],
}

/// A proof that passed every stateless check. The caller still refuses a `jti` it has seen before.
#[derive(Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// The RFC 7638 thumbprint of the proof's key: what `cnf.jkt` must equal.
    pub jkt: String,
    /// The proof's unique id.
    pub jti: String,
    /// When the client made the proof.
    pub iat: u64,
    /// The algorithm the proof was signed with.
    pub alg: Algorithm,
}

impl fmt::Debug for DpopProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopProof")
            .field("jkt", &self.jkt)
            .field("iat", &self.iat)
            .field("alg", &self.alg)
            .finish()
    }
}

impl DpopProof {
    /// Until when a replay cache must remember this proof's `jti`: the first second at which the proof is
    /// too old anyway (it is accepted up to and including `iat + max_age`, so an entry that expires at
    /// `until <= now` is never forgotten while the proof could still pass).
    #[must_use]
    pub fn replay_until(&self, policy: &ProofPolicy) -> u64 {
        self.iat.saturating_add(policy.max_age_secs).saturating_add(1)
    }
}

/// Why a DPoP proof was refused. Stable names: see [`ProofRejection::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProofRejection {
    /// The proof is not a well-formed JWS we accept (size, structure, base64, algorithm — including `none`
    /// and HMAC —, `crit`, key URLs, duplicate members) or its signature does not verify.
    Jws(Rejection),
    /// The header `typ` is not `dpop+jwt`.
    WrongType,
    /// The header has no `jwk`.
    MissingJwk,
    /// The `jwk` is not a public key usable with the header's `alg`.
    InvalidJwk,
    /// The `jwk` carries private key members.
    PrivateJwk,
    /// The claims are not a JSON object of the expected member types.
    InvalidClaims,
    /// A required claim (`jti`, `htm`, `htu`, `iat`, or `ath` alongside an access token) is absent or empty.
    MissingClaim(&'static str),
    /// `htm` is not the request's method.
    MethodMismatch,
    /// `htu` is not the request's URL.
    UrlMismatch,
    /// `ath` is not the hash of the access token presented with it.
    AthMismatch,
    /// `iat` lies in the future beyond the leeway.
    IssuedInFuture,
    /// `iat` is older than the policy's window.
    TooOld,
    /// The server asks for a nonce and the proof carries none, or one no longer current
    /// (`use_dpop_nonce`).
    NonceRequired,
    /// The proof's `jti` was seen before within its window. Raised by the caller's replay cache.
    Replayed,
    /// The proof's key is not the one the token is bound to. Raised by the caller.
    KeyMismatch,
}

impl ProofRejection {
    /// The stable `snake_case` name of this reason, for metrics and the audit log.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Jws(_) => "dpop_invalid_jws",
            Self::WrongType => "dpop_wrong_typ",
            Self::MissingJwk => "dpop_missing_jwk",
            Self::InvalidJwk => "dpop_invalid_jwk",
            Self::PrivateJwk => "dpop_private_jwk",
            Self::InvalidClaims => "dpop_invalid_claims",
            Self::MissingClaim(_) => "dpop_missing_claim",
            Self::MethodMismatch => "dpop_method_mismatch",
            Self::UrlMismatch => "dpop_url_mismatch",
            Self::AthMismatch => "dpop_ath_mismatch",
            Self::IssuedInFuture => "dpop_issued_in_future",
            Self::TooOld => "dpop_too_old",
            Self::NonceRequired => "dpop_nonce_required",
            Self::Replayed => "dpop_replayed",
            Self::KeyMismatch => "dpop_key_mismatch",
        }
    }
}

impl fmt::Display for ProofRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Jws(inner) => write!(f, "dpop_invalid_jws ({inner})"),
            Self::MissingClaim(claim) => write!(f, "dpop_missing_claim ({claim})"),
            other => f.write_str(other.name()),
        }
    }
}

impl std::error::Error for ProofRejection {}

impl From<Rejection> for ProofRejection {
    fn from(r: Rejection) -> Self {
        Self::Jws(r)
    }
}

/// The claims as read, before the required ones are checked. Read straight from the JSON text, with every
/// member name at most once (members we do not read are still checked for duplicates, at every depth).
#[derive(Default)]
struct RawClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<json::NumericDate>,
    ath: Option<String>,
    nonce: Option<String>,
}

impl<'de> Deserialize<'de> for RawClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RawClaimsVisitor)
    }
}

struct RawClaimsVisitor;

/// A claim name: one of those read, or another (kept to refuse its repetition).
enum ClaimName {
    Jti,
    Htm,
    Htu,
    Iat,
    Ath,
    Nonce,
    Other(String),
}

impl<'de> Deserialize<'de> for ClaimName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ClaimName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ClaimName, E> {
                Ok(match v {
                    "jti" => ClaimName::Jti,
                    "htm" => ClaimName::Htm,
                    "htu" => ClaimName::Htu,
                    "iat" => ClaimName::Iat,
                    "ath" => ClaimName::Ath,
                    "nonce" => ClaimName::Nonce,
                    other => ClaimName::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> serde::de::Visitor<'de> for RawClaimsVisitor {
    type Value = RawClaims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a DPoP proof's claims object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawClaims, A::Error> {
        let mut c = RawClaims::default();
        let mut others: Vec<String> = Vec::new();
        while let Some(name) = map.next_key::<ClaimName>()? {
            match name {
                ClaimName::Jti => json::set_once(&mut c.jti, map.next_value()?, "jti")?,
                ClaimName::Htm => json::set_once(&mut c.htm, map.next_value()?, "htm")?,
                ClaimName::Htu => json::set_once(&mut c.htu, map.next_value()?, "htu")?,
                ClaimName::Iat => json::set_once(&mut c.iat, map.next_value()?, "iat")?,
                ClaimName::Ath => json::set_once(&mut c.ath, map.next_value()?, "ath")?,
                ClaimName::Nonce => json::set_once(&mut c.nonce, map.next_value()?, "nonce")?,
                ClaimName::Other(other) => {
                    if others.contains(&other) {
                        return Err(json::duplicate(&other));
                    }
                    map.next_value::<StrictValue>()?;
                    others.push(other);
                }
            }
        }
        Ok(c)
    }
}

/// A proof's header, checked, and the public key it embeds: the part that is the same in every proof a
/// client makes with one key. Parsing it (base64, JSON, the JWK, the key, its thumbprint) costs a few
/// microseconds, so a caller that sees many proofs may keep it, keyed by the header segment (see
/// [`proof_header`]), and check later proofs with [`verify_proof_with_key`]. Keep only keys of proofs that
/// verified, so that nobody can fill the cache without a private key.
#[derive(Clone)]
pub struct ProofKey {
    header: Box<str>,
    key: VerifyingKey,
    alg: Algorithm,
}

impl fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProofKey").field("jkt", &self.key.kid()).field("alg", &self.alg).finish()
    }
}

impl ProofKey {
    /// Checks a proof's header segment: `typ` is `dpop+jwt`, the `alg` is one we accept, there are no key
    /// URLs or `crit`, and `jwk` is a public key for that `alg`.
    ///
    /// # Errors
    /// The [`ProofRejection`] naming the first problem found.
    pub fn parse(header_segment: &str) -> Result<Self, ProofRejection> {
        let header = RawHeader::decode(header_segment)?;
        let alg = header.common_checks()?;
        if !TokenType::DpopProof.matches(header.typ.as_deref()) {
            return Err(ProofRejection::WrongType);
        }
        let jwk = header.jwk.ok_or(ProofRejection::MissingJwk)?;
        let key = VerifyingKey::from_client_jwk(jwk, alg).map_err(|e| match e {
            KeyError::PrivateMaterialInPublicSet => ProofRejection::PrivateJwk,
            _ => ProofRejection::InvalidJwk,
        })?;
        Ok(Self { header: header_segment.into(), key, alg })
    }

    /// The RFC 7638 thumbprint of the key: what `cnf.jkt` must equal.
    #[must_use]
    pub fn jkt(&self) -> &str {
        self.key.kid()
    }
}

/// The header segment of a proof, once the proof's size and shape are acceptable: the key under which a
/// [`ProofKey`] may be kept.
///
/// # Errors
/// [`ProofRejection::Jws`] for a proof too long, in JSON serialization, or not of three segments.
pub fn proof_header(proof: &str) -> Result<&str, ProofRejection> {
    Ok(Segments::split(proof, MAX_PROOF_LEN)?.header)
}

/// Checks `proof` against `request` at `now`: the header (`typ`, an embedded public key of the `alg`, no
/// key URLs or `crit`), the signature by that key, then `jti`, `htm`, `htu`, `iat`, `ath` and `nonce`.
///
/// # Errors
/// The [`ProofRejection`] naming the first problem found.
pub fn verify_proof(
    proof: &str,
    request: &ProofRequest<'_>,
    policy: &ProofPolicy,
    now: UnixTime,
) -> Result<DpopProof, ProofRejection> {
    let parts = Segments::split(proof, MAX_PROOF_LEN)?;
    let key = ProofKey::parse(parts.header)?;
    verify_parts(&parts, &key, request, policy, now)
}

/// [`verify_proof`] with the proof's header already checked: `key` must have been parsed from this proof's
/// header segment (compared byte for byte; a different one is refused).
///
/// # Errors
/// The [`ProofRejection`] naming the first problem found.
pub fn verify_proof_with_key(
    proof: &str,
    key: &ProofKey,
    request: &ProofRequest<'_>,
    policy: &ProofPolicy,
    now: UnixTime,
) -> Result<DpopProof, ProofRejection> {
    let parts = Segments::split(proof, MAX_PROOF_LEN)?;
    if parts.header != &*key.header {
        return Err(Rejection::Malformed.into());
    }
    verify_parts(&parts, key, request, policy, now)
}

/// The signature and the claims, once the header is known.
fn verify_parts(
    parts: &Segments<'_>,
    key: &ProofKey,
    request: &ProofRequest<'_>,
    policy: &ProofPolicy,
    now: UnixTime,
) -> Result<DpopProof, ProofRejection> {
    let (alg, key) = (key.alg, &key.key);
    if parts.payload.is_empty() {
        return Err(Rejection::Malformed.into());
    }
    let payload = b64::decode(parts.payload).map_err(|_| Rejection::InvalidBase64)?;
    verify_segment(key, parts.signing_input, parts.signature)?;

    let claims: RawClaims = json::parse_segment(&payload, Rejection::InvalidClaims).map_err(|e| {
        if e == Rejection::DuplicateMember { e.into() } else { ProofRejection::InvalidClaims }
    })?;
    let jti = claims.jti.filter(|j| !j.is_empty()).ok_or(ProofRejection::MissingClaim("jti"))?;
    if jti.len() > MAX_JTI_LEN {
        return Err(ProofRejection::InvalidClaims);
    }
    let htm = claims.htm.ok_or(ProofRejection::MissingClaim("htm"))?;
    let htu = claims.htu.ok_or(ProofRejection::MissingClaim("htu"))?;
    let json::NumericDate(iat) = claims.iat.ok_or(ProofRejection::MissingClaim("iat"))?;
    if htm != request.method {
        return Err(ProofRejection::MethodMismatch);
    }
    // The same text normalises the same way. The request's URL is built by the caller from a base URL it
    // checked when configured, so when it is plainly http(s) there is nothing to parse; anything else is
    // parsed, to refuse what is no http(s) URL.
    let same_url = if htu == request.url {
        plainly_http(request.url) || Target::parse(request.url).is_some()
    } else {
        matches!((Target::parse(&htu), Target::parse(request.url)), (Some(claimed), Some(actual)) if claimed == actual)
    };
    if !same_url {
        return Err(ProofRejection::UrlMismatch);
    }
    let UnixTime(now) = now;
    if iat > now.saturating_add(policy.leeway_secs) {
        return Err(ProofRejection::IssuedInFuture);
    }
    if now > iat.saturating_add(policy.max_age_secs) {
        return Err(ProofRejection::TooOld);
    }
    if let Some(Ath(expected)) = request.access_token {
        let ath = claims.ath.ok_or(ProofRejection::MissingClaim("ath"))?;
        if ath != b64::encode(&expected) {
            return Err(ProofRejection::AthMismatch);
        }
    }
    if !request.nonces.is_empty() && !claims.nonce.is_some_and(|n| request.nonces.contains(&n.as_str())) {
        return Err(ProofRejection::NonceRequired);
    }
    Ok(DpopProof { jkt: key.kid().to_owned(), jti, iat, alg })
}

/// The algorithms a DPoP proof may be signed with, as `WWW-Authenticate`'s `algs` and discovery list them.
pub const PROOF_ALGORITHMS: [&str; 4] = [
    Algorithm::EdDSA.as_str(),
    Algorithm::ES256.as_str(),
    Algorithm::RS256.as_str(),
    Algorithm::PS256.as_str(),
];

/// Whether a token presented with the `DPoP` scheme (`dpop_scheme`) or as `Bearer` needs a proof, from its
/// `cnf` (RFC 9449 §7): `Ok(None)` for a bearer token used as one, `Ok(Some(jkt))` when a proof by that key
/// is required, `Err(reason)` when the token must be refused (`invalid_token`): a bound token as Bearer,
/// the `DPoP` scheme for an unbound token, or a confirmation method other than `jkt`, which is never taken
/// as a bearer token.
///
/// # Errors
/// The refusal's stable reason name.
pub fn required_key(cnf: Option<&Confirmation>, dpop_scheme: bool) -> Result<Option<&str>, &'static str> {
    if cnf.is_some_and(|c| c.jkt.is_none() || !c.other.is_empty()) {
        return Err("unsupported_confirmation");
    }
    match (cnf.and_then(|c| c.jkt.as_deref()), dpop_scheme) {
        (None, false) => Ok(None),
        (Some(_), false) => Err("dpop_bound_token_as_bearer"),
        (None, true) => Err("dpop_scheme_for_bearer_token"),
        (Some(jkt), true) => Ok(Some(jkt)),
    }
}

/// The `ath` value for an access token: base64url of the SHA-256 of its ASCII form (RFC 9449 §4.2).
#[must_use]
pub fn access_token_hash(token: &str) -> String {
    b64::encode(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// A URL reduced to what `htu` is compared on, after RFC 3986 §6.2.2 and §6.2.3 normalisation: lower-case
/// scheme and host, the default port made explicit, dot segments removed, percent-encodings of unreserved
/// characters decoded and the rest in upper case. Query and fragment are dropped (RFC 9449 §4.3).
#[derive(Debug, PartialEq, Eq)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

/// Whether `url` is plainly an absolute http(s) URL: the scheme in lower case, a host without user info, and
/// only visible ASCII, with no query or fragment. What a caller builds from its checked base URL and a request
/// path passes; anything else goes through [`Target::parse`].
fn plainly_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    !authority.is_empty()
        && !authority.contains('@')
        && url.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
}

impl Target {
    fn parse(text: &str) -> Option<Self> {
        let url = url::Url::parse(text).ok()?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some()
        {
            return None;
        }
        Some(Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_owned(),
            port: url.port_or_known_default()?,
            path: normalise_percent(url.path()),
        })
    }
}

/// Decodes percent-encoded unreserved characters and upper-cases the hex digits of the others.
fn normalise_percent(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(hv), Some(lv)) = (hex(h), hex(l))
        {
            let c = hv << 4 | lv;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(c));
            } else {
                out.push('%');
                out.push(char::from(h.to_ascii_uppercase()));
                out.push(char::from(l.to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        // `url` has already percent-encoded every non-ASCII byte, so each byte here is one character.
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// What a client puts in a proof it makes.
#[derive(Debug, Clone, Copy)]
pub struct NewProof<'a> {
    /// The HTTP method of the request.
    pub method: &'a str,
    /// The request URL, without query or fragment.
    pub url: &'a str,
    /// A unique id for this proof.
    pub jti: &'a str,
    /// Now, by the client's clock.
    pub iat: u64,
    /// The access token the request carries, if any: its hash goes into `ath`.
    pub access_token: Option<&'a str>,
    /// The server's latest `DPoP-Nonce`, if it sent one.
    pub nonce: Option<&'a str>,
}

#[derive(Serialize)]
struct OutClaims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl SigningKey {
    /// Makes a DPoP proof for `proof` with this key, embedding the public key in the header.
    ///
    /// # Errors
    /// [`KeyError`] if serialization or signing fails.
    pub fn sign_dpop_proof(&self, proof: &NewProof<'_>) -> Result<String, KeyError> {
        let header: Value = json!({
            "typ": TokenType::DpopProof.as_str(),
            "alg": self.alg().as_str(),
            "jwk": self.verifying_key().to_bare_jwk(),
        });
        let claims = OutClaims {
            jti: proof.jti,
            htm: proof.method,
            htu: proof.url,
            iat: proof.iat,
            ath: proof.access_token.map(access_token_hash),
            nonce: proof.nonce,
        };
        let header = serde_json::to_vec(&header).map_err(|_| KeyError::InvalidEncoding)?;
        let payload = serde_json::to_vec(&claims).map_err(|_| KeyError::InvalidEncoding)?;
        let mut out = b64::encode(&header);
        out.push('.');
        out.push_str(&b64::encode(&payload));
        let signature = self.sign(out.as_bytes())?;
        out.push('.');
        out.push_str(&b64::encode(&signature));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_comparison_follows_rfc3986_normalisation() {
        let same = [
            ("https://id.example/token", "HTTPS://ID.EXAMPLE:443/token"),
            ("https://id.example/token", "https://id.example/token?x=1#frag"),
            ("https://id.example/a/%7Euser", "https://id.example/a/~user"),
            ("https://id.example/a%2fb", "https://id.example/a%2Fb"),
            ("https://id.example/a/./b/../c", "https://id.example/a/c"),
            ("http://127.0.0.1:80/", "http://127.0.0.1"),
        ];
        for (a, b) in same {
            assert_eq!(Target::parse(a), Target::parse(b), "{a} vs {b}");
            assert!(Target::parse(a).is_some(), "{a}");
        }
        let different = [
            ("https://id.example/token", "http://id.example/token"),
            ("https://id.example/token", "https://id.example:8443/token"),
            ("https://id.example/token", "https://id.example/token/"),
            ("https://id.example/token", "https://other.example/token"),
            ("https://id.example/a%2fb", "https://id.example/a/b"),
        ];
        for (a, b) in different {
            assert_ne!(Target::parse(a), Target::parse(b), "{a} vs {b}");
        }
        for refused in ["https://user@id.example/", "ftp://id.example/", "/token", "not a url"] {
            assert_eq!(Target::parse(refused), None, "{refused}");
            assert!(!plainly_http(refused), "{refused}");
        }
    }

    #[test]
    fn only_plain_http_urls_skip_the_parse_and_every_one_of_them_parses() {
        for plain in ["https://id.example/token", "http://127.0.0.1:8080/userinfo", "https://id.example"] {
            assert!(plainly_http(plain), "{plain}");
            assert!(Target::parse(plain).is_some(), "{plain}");
        }
        let parsed = [
            "HTTPS://id.example/token",
            "https://id.example/token?x=1",
            "https://id.example/token#f",
            "https:///token",
            "https://a b/token",
            "https://user:pw@id.example/token",
        ];
        for other in parsed {
            assert!(!plainly_http(other), "{other}");
        }
    }

    #[test]
    fn a_token_is_used_only_as_what_it_is() {
        let bound = Confirmation { jkt: Some("k".into()), other: Default::default() };
        let mut mtls = Confirmation::default();
        mtls.other.insert("x5t#S256".into(), serde_json::Value::String("t".into()));
        assert_eq!(required_key(None, false), Ok(None));
        assert_eq!(required_key(Some(&bound), true), Ok(Some("k")));
        assert_eq!(required_key(Some(&bound), false), Err("dpop_bound_token_as_bearer"));
        assert_eq!(required_key(None, true), Err("dpop_scheme_for_bearer_token"));
        assert_eq!(required_key(Some(&mtls), false), Err("unsupported_confirmation"));
        assert_eq!(required_key(Some(&mtls), true), Err("unsupported_confirmation"));
    }

    #[test]
    fn every_rejection_has_a_distinct_name() {
        let all = [
            ProofRejection::Jws(Rejection::BadSignature),
            ProofRejection::WrongType,
            ProofRejection::MissingJwk,
            ProofRejection::InvalidJwk,
            ProofRejection::PrivateJwk,
            ProofRejection::InvalidClaims,
            ProofRejection::MissingClaim("jti"),
            ProofRejection::MethodMismatch,
            ProofRejection::UrlMismatch,
            ProofRejection::AthMismatch,
            ProofRejection::IssuedInFuture,
            ProofRejection::TooOld,
            ProofRejection::NonceRequired,
            ProofRejection::Replayed,
            ProofRejection::KeyMismatch,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), all.len());
        assert!(names.iter().all(|n| n.starts_with("dpop_")));
    }
}
