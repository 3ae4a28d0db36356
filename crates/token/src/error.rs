//! Why a token or a key was refused.
//!
//! [`Rejection`] is the detailed, internal reason a token failed parsing, verification or validation. Each
//! variant has a stable `snake_case` name ([`Rejection::name`]) that the audit log records; the wire only ever
//! sees the RFC error code (`invalid_token`). [`KeyError`] says why key material could not be used.

use std::fmt;

/// The reason a token was refused. Stable names: see [`Rejection::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// The token is larger than the configured limit (8 KiB by default).
    TooLarge,
    /// The token uses the JWS JSON serialization; only the compact form is accepted.
    JsonSerialization,
    /// The token is not exactly three dot-separated segments.
    Malformed,
    /// A segment is not strict base64url without padding.
    InvalidBase64,
    /// The header is not a JSON object with the expected member types.
    InvalidHeader,
    /// A JSON object in the header or claims repeats a member name.
    DuplicateMember,
    /// The header names an algorithm other than EdDSA, ES256, RS256 or PS256 (including `none` and HMAC).
    UnsupportedAlgorithm,
    /// The header carries `crit`: we understand no extensions.
    CritHeader,
    /// The header embeds a key (`jwk`, `x5c`); keys come only from the configured key set.
    EmbeddedKeyHeader,
    /// The header points at a key URL (`jku`, `x5u`); such URLs are never fetched.
    KeyUrlHeader,
    /// The header has no `kid`.
    MissingKid,
    /// No key in the key set has the header's `kid`.
    UnknownKid,
    /// The header's `alg` differs from the algorithm the key is bound to.
    AlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// The header `typ` is not the one the policy expects (for example a plain `JWT` offered as `at+jwt`).
    WrongType,
    /// The claims are not a JSON object of the expected member types.
    InvalidClaims,
    /// A required claim is absent.
    MissingClaim(&'static str),
    /// `iss` differs from the expected issuer.
    WrongIssuer,
    /// `aud` does not contain the expected audience.
    WrongAudience,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` lies in the future (beyond the leeway).
    NotYetValid,
    /// `iat` lies in the future (beyond the leeway).
    IssuedInFuture,
    /// `iat` is older than the policy's maximum token age.
    TooOld,
}

impl Rejection {
    /// The stable `snake_case` name of this reason, used as the audit event's reason.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::TooLarge => "token_too_large",
            Self::JsonSerialization => "json_serialization",
            Self::Malformed => "malformed_token",
            Self::InvalidBase64 => "invalid_base64",
            Self::InvalidHeader => "invalid_header",
            Self::DuplicateMember => "duplicate_member",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::CritHeader => "crit_header",
            Self::EmbeddedKeyHeader => "embedded_key_header",
            Self::KeyUrlHeader => "key_url_header",
            Self::MissingKid => "missing_kid",
            Self::UnknownKid => "unknown_kid",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::WrongType => "wrong_typ",
            Self::InvalidClaims => "invalid_claims",
            Self::MissingClaim(_) => "missing_claim",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::TooOld => "too_old",
        }
    }

    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: [Self; 23] = [
        Self::TooLarge,
        Self::JsonSerialization,
        Self::Malformed,
        Self::InvalidBase64,
        Self::InvalidHeader,
        Self::DuplicateMember,
        Self::UnsupportedAlgorithm,
        Self::CritHeader,
        Self::EmbeddedKeyHeader,
        Self::KeyUrlHeader,
        Self::MissingKid,
        Self::UnknownKid,
        Self::AlgorithmMismatch,
        Self::BadSignature,
        Self::WrongType,
        Self::InvalidClaims,
        Self::MissingClaim("exp"),
        Self::WrongIssuer,
        Self::WrongAudience,
        Self::Expired,
        Self::NotYetValid,
        Self::IssuedInFuture,
        Self::TooOld,
    ];
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingClaim(claim) => write!(f, "missing_claim ({claim})"),
            other => f.write_str(other.name()),
        }
    }
}

impl std::error::Error for Rejection {}

/// Why key material could not be generated, imported or used. Never carries key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The algorithm name is not one of EdDSA, ES256, RS256, PS256.
    UnsupportedAlgorithm(String),
    /// The JWK is malformed or of a type we do not support; the text names the member, never its value.
    InvalidJwk(String),
    /// The JWK's `alg` disagrees with the algorithm asked for, or the key type does not fit the algorithm.
    AlgorithmMismatch,
    /// An RSA JWK or PEM key was imported without saying whether it is for RS256 or PS256.
    AlgorithmRequired,
    /// The JWK's `kid` is not its RFC 7638 thumbprint.
    KidMismatch,
    /// A public key set contains private key members.
    PrivateMaterialInPublicSet,
    /// Two keys in one set have the same `kid`.
    DuplicateKid,
    /// The PEM or DER encoding could not be read.
    InvalidEncoding,
    /// The crypto library refused the key (inconsistent components, wrong curve, RSA below 2048 bits, ...).
    Rejected(&'static str),
    /// The crypto library failed to generate or sign.
    Crypto,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedAlgorithm(alg) => {
                write!(f, "unsupported algorithm {}: expected EdDSA, ES256, RS256 or PS256", shown(alg))
            }
            Self::InvalidJwk(what) => write!(f, "invalid JWK: {what}"),
            Self::AlgorithmMismatch => f.write_str("the key does not fit the algorithm"),
            Self::AlgorithmRequired => f.write_str("an RSA key needs an explicit algorithm (RS256 or PS256)"),
            Self::KidMismatch => f.write_str("the JWK's kid is not its RFC 7638 thumbprint"),
            Self::PrivateMaterialInPublicSet => f.write_str("the key set contains private key material"),
            Self::DuplicateKid => f.write_str("two keys in the set have the same kid"),
            Self::InvalidEncoding => f.write_str("the key encoding could not be read"),
            Self::Rejected(why) => write!(f, "the key was rejected: {why}"),
            Self::Crypto => f.write_str("the crypto library failed"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A short, public value for an error message: escaped (so it stays on one line) and truncated.
/// Only ever used for public members such as `kty`, `use` and `alg`, never for private ones.
pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 24;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

impl From<aws_lc_rs::error::KeyRejected> for KeyError {
    fn from(e: aws_lc_rs::error::KeyRejected) -> Self {
        Self::Rejected(e.description_())
    }
}

impl From<aws_lc_rs::error::Unspecified> for KeyError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Self::Crypto
    }
}
