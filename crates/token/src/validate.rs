//! Claim validation: a policy and the current time turn a [`VerifiedJwt`] into [`AccessClaims`].
//!
//! Time is an argument ([`UnixTime`]); nothing here reads a clock.

use crate::claims::{AccessClaims, ParsedClaims};
use crate::error::Rejection;
use crate::jws::VerifiedJwt;

/// Seconds since the Unix epoch. The caller reads the clock; the token crate never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64);

/// The default clock-skew leeway: 30 s.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// The default maximum token age: 900 s, the longest access-token lifetime Tessera issues.
pub const DEFAULT_MAX_AGE_SECS: u64 = 900;

/// The `typ` a token must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// `at+jwt` (RFC 9068 §2.1); `application/at+jwt` is accepted too, as RFC 9068 §4 requires.
    AccessToken,
    /// `dpop+jwt` (RFC 9449 §4.2).
    DpopProof,
    /// `JWT`, as Tessera types its ID tokens.
    IdToken,
}

impl TokenType {
    /// The `typ` value Tessera writes for this type.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "at+jwt",
            Self::DpopProof => "dpop+jwt",
            Self::IdToken => "JWT",
        }
    }

    /// Whether a header `typ` names this type. Media types compare case-insensitively, and the
    /// `application/` prefix may be left out (RFC 7515 §4.1.9).
    #[must_use]
    pub fn matches(self, typ: Option<&str>) -> bool {
        let Some(typ) = typ else { return false };
        let bare = match typ.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
            _ => typ,
        };
        bare.eq_ignore_ascii_case(self.as_str())
    }
}

/// What a token must satisfy: issuer, audience, type, and time bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// The exact `iss` expected.
    pub issuer: String,
    /// The audience that `aud` must contain: this service's own.
    pub audience: String,
    /// The `typ` the header must carry.
    pub typ: TokenType,
    /// Allowed clock skew, in seconds, for `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// The oldest `iat` accepted, in seconds before now.
    pub max_age_secs: u64,
}

impl Validation {
    /// The policy for an access token for `audience` issued by `issuer`, with default leeway and age.
    #[must_use]
    pub fn access_token(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            typ: TokenType::AccessToken,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_age_secs: DEFAULT_MAX_AGE_SECS,
        }
    }
}

impl VerifiedJwt {
    /// Validates the header type and the claims against `policy` at `now`.
    ///
    /// Checks, in order: `typ`; claims well-formed with no duplicates and the RFC 9068 required claims
    /// (`iss`, `sub`, `aud`, `exp`, `iat`, `jti`, `client_id`); `iss`; `aud`; `exp`; `nbf`; `iat`; maximum age.
    ///
    /// # Errors
    /// The [`Rejection`] naming the first failed check.
    pub fn validate(&self, policy: &Validation, now: UnixTime) -> Result<AccessClaims, Rejection> {
        if !policy.typ.matches(self.header().typ.as_deref()) {
            return Err(Rejection::WrongType);
        }
        let claims = ParsedClaims::from_slice(self.payload())?;
        // An empty expected issuer or audience (a blank setting) matches nothing.
        if policy.issuer.is_empty() || claims.iss != policy.issuer {
            return Err(Rejection::WrongIssuer);
        }
        if policy.audience.is_empty() || !claims.aud.contains(&policy.audience) {
            return Err(Rejection::WrongAudience);
        }
        let UnixTime(now) = now;
        let leeway = policy.leeway_secs;
        if now >= claims.exp.saturating_add(leeway) {
            return Err(Rejection::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(Rejection::NotYetValid);
        }
        if claims.iat > now.saturating_add(leeway) {
            return Err(Rejection::IssuedInFuture);
        }
        if now > claims.iat.saturating_add(policy.max_age_secs) {
            return Err(Rejection::TooOld);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_type_accepts_rfc9068_spellings_only() {
        for ok in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"] {
            assert!(TokenType::AccessToken.matches(Some(ok)), "{ok}");
        }
        for bad in ["JWT", "jwt", "dpop+jwt", "at+jwt ", "application/jwt", "x/at+jwt", ""] {
            assert!(!TokenType::AccessToken.matches(Some(bad)), "{bad}");
        }
        assert!(!TokenType::AccessToken.matches(None));
        assert!(TokenType::IdToken.matches(Some("JWT")));
        assert!(TokenType::DpopProof.matches(Some("dpop+jwt")));
    }
}
