//! JSON Web Keys (RFC 7517/7518/8037) as we read and write them, and RFC 7638 thumbprints.
//!
//! Only the members of the key types we sign with are read. Private members are held in [`Zeroizing`]
//! strings so that they are wiped when the parsed JWK is dropped.

use aws_lc_rs::digest;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::alg::Algorithm;
use crate::b64;
use crate::error::{KeyError, shown};

/// A JWK as read from JSON. Unknown members are ignored; a repeated known member is an error.
#[derive(Deserialize)]
pub(crate) struct RawJwk {
    pub(crate) kty: String,
    pub(crate) crv: Option<String>,
    pub(crate) x: Option<String>,
    pub(crate) y: Option<String>,
    pub(crate) n: Option<String>,
    pub(crate) e: Option<String>,
    pub(crate) d: Option<Zeroizing<String>>,
    pub(crate) p: Option<Zeroizing<String>>,
    pub(crate) q: Option<Zeroizing<String>>,
    pub(crate) dp: Option<Zeroizing<String>>,
    pub(crate) dq: Option<Zeroizing<String>>,
    pub(crate) qi: Option<Zeroizing<String>>,
    pub(crate) oth: Option<serde::de::IgnoredAny>,
    pub(crate) alg: Option<String>,
    pub(crate) kid: Option<String>,
    #[serde(rename = "use")]
    pub(crate) use_: Option<String>,
}

/// Parses key JSON (a JWK or a JWKS, named by `what` in the error). The error names the kind of problem,
/// never quotes the input: it may hold private members.
pub(crate) fn parse_json<T: DeserializeOwned>(json: &str, what: &str) -> Result<T, KeyError> {
    serde_json::from_str(json).map_err(|e| {
        let problem = match e.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "JSON syntax error",
            serde_json::error::Category::Data => "unexpected or missing member",
            serde_json::error::Category::Eof => "truncated JSON",
        };
        KeyError::InvalidJwk(format!("not {what} ({problem})"))
    })
}

impl RawJwk {
    /// Parses one JWK.
    pub(crate) fn parse(json: &str) -> Result<Self, KeyError> {
        parse_json(json, "a JWK object")
    }
    /// Whether any private member (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`) is present.
    pub(crate) fn has_private_members(&self) -> bool {
        self.d.is_some()
            || self.p.is_some()
            || self.q.is_some()
            || self.dp.is_some()
            || self.dq.is_some()
            || self.qi.is_some()
            || self.oth.is_some()
    }

    /// Decides the key's algorithm from the JWK's `alg`, the caller's `wanted`, and the key type. The two
    /// must agree when both are given; an RSA key with neither is refused, because RS256 and PS256 keys look
    /// alike.
    pub(crate) fn algorithm(&self, wanted: Option<Algorithm>) -> Result<Algorithm, KeyError> {
        let declared = match self.alg.as_deref() {
            Some(name) => Some(name.parse::<Algorithm>()?),
            None => None,
        };
        let alg = match (declared, wanted) {
            (Some(a), Some(b)) if a != b => return Err(KeyError::AlgorithmMismatch),
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => match (self.kty.as_str(), self.crv.as_deref()) {
                ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
                ("EC", Some("P-256")) => Algorithm::ES256,
                ("RSA", _) => return Err(KeyError::AlgorithmRequired),
                _ => return Err(KeyError::InvalidJwk(format!("unsupported key type {}", shown(&self.kty)))),
            },
        };
        if self.kty != alg.key_type() {
            return Err(KeyError::AlgorithmMismatch);
        }
        match (alg, self.crv.as_deref()) {
            (Algorithm::EdDSA, Some("Ed25519")) | (Algorithm::ES256, Some("P-256")) => {}
            (Algorithm::RS256 | Algorithm::PS256, None) => {}
            _ => return Err(KeyError::AlgorithmMismatch),
        }
        if let Some(use_) = self.use_.as_deref()
            && use_ != "sig"
        {
            return Err(KeyError::InvalidJwk(format!("key use {} is not \"sig\"", shown(use_))));
        }
        Ok(alg)
    }

    /// The public parameters this JWK describes, for `alg`.
    pub(crate) fn public_params(&self, alg: Algorithm) -> Result<PublicParams, KeyError> {
        let get = |name: &'static str, v: &Option<String>| -> Result<String, KeyError> {
            v.clone().ok_or_else(|| KeyError::InvalidJwk(format!("missing member {name}")))
        };
        Ok(match alg {
            Algorithm::EdDSA => PublicParams::Okp { x: get("x", &self.x)? },
            Algorithm::ES256 => PublicParams::Ec { x: get("x", &self.x)?, y: get("y", &self.y)? },
            Algorithm::RS256 | Algorithm::PS256 => {
                PublicParams::Rsa { n: get("n", &self.n)?, e: get("e", &self.e)? }
            }
        })
    }

    /// Refuses a `kid` that is not the thumbprint: our key ids are always RFC 7638 thumbprints.
    pub(crate) fn check_kid(&self, thumbprint: &str) -> Result<(), KeyError> {
        match self.kid.as_deref() {
            Some(kid) if kid != thumbprint => Err(KeyError::KidMismatch),
            _ => Ok(()),
        }
    }
}

/// The public half of a key, in its JWK (base64url) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicParams {
    /// Ed25519: the 32-byte public key.
    Okp { x: String },
    /// P-256: the affine coordinates, 32 bytes each.
    Ec { x: String, y: String },
    /// RSA: modulus and exponent, big-endian without leading zeros.
    Rsa { n: String, e: String },
}

impl PublicParams {
    /// The RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order, base64url.
    pub(crate) fn thumbprint(&self) -> String {
        // The members are base64url strings and fixed names, none of which need JSON escaping.
        let canonical = match self {
            Self::Okp { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            Self::Ec { x, y } => format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
            Self::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        b64::encode(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// Writes the public members into `obj`.
    pub(crate) fn write_members(&self, obj: &mut serde_json::Map<String, serde_json::Value>) {
        let mut put = |k: &str, v: &str| {
            obj.insert(k.to_owned(), serde_json::Value::String(v.to_owned()));
        };
        match self {
            Self::Okp { x } => {
                put("kty", "OKP");
                put("crv", "Ed25519");
                put("x", x);
            }
            Self::Ec { x, y } => {
                put("kty", "EC");
                put("crv", "P-256");
                put("x", x);
                put("y", y);
            }
            Self::Rsa { n, e } => {
                put("kty", "RSA");
                put("n", n);
                put("e", e);
            }
        }
    }
}

/// Length of an Ed25519 public key and of a P-256 coordinate or scalar.
pub(crate) const POINT_LEN: usize = 32;

/// The uncompressed SEC 1 point `0x04 ‖ x ‖ y` of a P-256 JWK's coordinates.
pub(crate) fn ec_point(x: &str, y: &str) -> Result<Vec<u8>, KeyError> {
    let (x, y) = (decode_member("x", x)?, decode_member("y", y)?);
    if x.len() != POINT_LEN || y.len() != POINT_LEN {
        return Err(KeyError::InvalidJwk("members x and y must be 32 bytes".into()));
    }
    Ok([&[0x04][..], &x, &y].concat())
}

/// Decodes a base64url JWK member, naming the member (never its value) on error.
pub(crate) fn decode_member(name: &'static str, value: &str) -> Result<Vec<u8>, KeyError> {
    b64::decode(value).map_err(|_| KeyError::InvalidJwk(format!("member {name} is not base64url")))
}

/// Like [`decode_member`], for private members: the decoded bytes are wiped on drop.
pub(crate) fn decode_secret(
    name: &'static str,
    value: Option<&Zeroizing<String>>,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let value = value.ok_or_else(|| KeyError::InvalidJwk(format!("missing member {name}")))?;
    decode_member(name, value).map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 §3.1: the thumbprint of the example RSA key.
    #[test]
    fn rfc7638_example_thumbprint() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let params = PublicParams::Rsa { n: n.to_owned(), e: "AQAB".to_owned() };
        assert_eq!(params.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    /// RFC 8037 §A.3: the thumbprint of the example Ed25519 key.
    #[test]
    fn rfc8037_example_thumbprint() {
        let params = PublicParams::Okp { x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".to_owned() };
        assert_eq!(params.thumbprint(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
