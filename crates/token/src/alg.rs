//! The signature algorithms Tessera signs and verifies with.
//!
//! There is deliberately no `none` and no HMAC variant: an unsigned token cannot be expressed, and a shared
//! secret would let every service that can verify also forge.

use std::fmt;
use std::str::FromStr;

use crate::error::KeyError;

/// A JWS signature algorithm (RFC 7518 / RFC 8037 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037). The default: fastest to sign, among the fastest to verify.
    EdDSA,
    /// ECDSA on P-256 with SHA-256, signature as the fixed 64-byte `r‖s`.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048 to 8192-bit keys.
    RS256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt, 2048 to 8192-bit keys.
    PS256,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Self; 4] = [Self::EdDSA, Self::ES256, Self::RS256, Self::PS256];

    /// The JOSE name, as it appears in a header's `alg`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
        }
    }

    /// Reads a header's `alg`. Matching is exact and case-sensitive (RFC 7515 §4.1.1): `none`, `None`,
    /// `HS256` and anything else return `None`.
    #[must_use]
    pub fn from_header(alg: &str) -> Option<Self> {
        match alg {
            "EdDSA" => Some(Self::EdDSA),
            "ES256" => Some(Self::ES256),
            "RS256" => Some(Self::RS256),
            "PS256" => Some(Self::PS256),
            _ => None,
        }
    }

    /// The JWK key type (`kty`) that keys of this algorithm have.
    #[must_use]
    pub const fn key_type(self) -> &'static str {
        match self {
            Self::EdDSA => "OKP",
            Self::ES256 => "EC",
            Self::RS256 | Self::PS256 => "RSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_header(s).ok_or_else(|| KeyError::UnsupportedAlgorithm(s.to_owned()))
    }
}
