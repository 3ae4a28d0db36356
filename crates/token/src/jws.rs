//! Compact JWS: parse (`UnverifiedJwt`), verify against a [`KeySet`] (`VerifiedJwt`), and sign.
//!
//! Parsing is strict and cheap: a size limit, exactly three segments of strict base64url, and a header that
//! is a JSON object with no duplicate members, no `crit`, and no key or key-URL members. Nothing in a header
//! is ever fetched. The claims are not parsed until the signature has verified.

use std::fmt;

use serde::Serialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::alg::Algorithm;
use crate::b64;
use crate::error::{KeyError, Rejection};
use crate::json::{self, StrictValue, set_once};
use crate::key::{KeySet, SigningKey, VerifyingKey};

/// The default size limit for a compact token: 8 KiB.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;

/// The longest signature any supported key makes: RSA-8192, 1024 bytes.
const MAX_SIGNATURE_LEN: usize = 1024;

/// Headers up to this size are decoded on the stack.
const HEADER_STACK_LEN: usize = 512;

/// A JOSE header as we accept it: the algorithm is one we support, and nothing we refuse is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The signature algorithm.
    pub alg: Algorithm,
    /// The key id, if present.
    pub kid: Option<String>,
    /// The token type, if present.
    pub typ: Option<String>,
    /// The content type, if present.
    pub cty: Option<String>,
}

/// What the header visitor saw, before the accept/refuse decision.
#[derive(Default)]
pub(crate) struct RawHeader {
    /// `Some(None)`: an `alg` we do not support.
    pub(crate) alg: Option<Option<Algorithm>>,
    pub(crate) kid: Option<String>,
    pub(crate) typ: Option<String>,
    pub(crate) cty: Option<String>,
    pub(crate) crit: bool,
    pub(crate) key_url: bool,
    /// An `x5c` member: a certificate chain, which no Tessera token may carry.
    pub(crate) cert_chain: bool,
    /// The `jwk` member, read strictly. Only a DPoP proof may carry one.
    pub(crate) jwk: Option<Value>,
}

impl<'de> de::Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawHeaderVisitor)
    }
}

/// A header member name, read without allocating for the names we know.
enum HeaderField {
    Alg,
    Kid,
    Typ,
    Cty,
    Jwk,
    /// A member we refuse (`crit`, `jku`, `x5u`, `x5c`) or ignore.
    Other(String),
}

impl<'de> de::Deserialize<'de> for HeaderField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HeaderField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header member name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HeaderField, E> {
                Ok(match v {
                    "alg" => HeaderField::Alg,
                    "kid" => HeaderField::Kid,
                    "typ" => HeaderField::Typ,
                    "cty" => HeaderField::Cty,
                    "jwk" => HeaderField::Jwk,
                    other => HeaderField::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The `alg` value: a supported algorithm, or `None` for any other string.
struct AlgValue(Option<Algorithm>);

impl<'de> de::Deserialize<'de> for AlgValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AlgValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an algorithm name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AlgValue, E> {
                Ok(AlgValue(Algorithm::from_header(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct RawHeaderVisitor;

impl<'de> Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JOSE header object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut h = RawHeader::default();
        let mut others: Vec<String> = Vec::new();
        while let Some(field) = map.next_key::<HeaderField>()? {
            match field {
                HeaderField::Alg => set_once(&mut h.alg, map.next_value::<AlgValue>()?.0, "alg")?,
                HeaderField::Kid => set_once(&mut h.kid, map.next_value()?, "kid")?,
                HeaderField::Typ => set_once(&mut h.typ, map.next_value()?, "typ")?,
                HeaderField::Cty => set_once(&mut h.cty, map.next_value()?, "cty")?,
                HeaderField::Jwk => set_once(&mut h.jwk, map.next_value::<StrictValue>()?.0, "jwk")?,
                HeaderField::Other(name) => {
                    if others.contains(&name) {
                        return Err(json::duplicate(&name));
                    }
                    match name.as_str() {
                        "crit" => h.crit = true,
                        "jku" | "x5u" => h.key_url = true,
                        "x5c" => h.cert_chain = true,
                        _ => {}
                    }
                    // Read (and so check for duplicates and depth) but never interpret the value.
                    let _: StrictValue = map.next_value()?;
                    others.push(name);
                }
            }
        }
        Ok(h)
    }
}

impl RawHeader {
    /// Decodes and reads a base64url header segment, on the stack when it is small.
    pub(crate) fn decode(segment: &str) -> Result<Self, Rejection> {
        let mut buf = [0u8; HEADER_STACK_LEN];
        match b64::decode_into(segment, &mut buf).map_err(|_| Rejection::InvalidBase64)? {
            Some(bytes) => json::parse_segment(bytes, Rejection::InvalidHeader),
            None => json::parse_segment(
                &b64::decode(segment).map_err(|_| Rejection::InvalidBase64)?,
                Rejection::InvalidHeader,
            ),
        }
    }

    /// The checks every signed object shares: no `crit`, no key URL, no certificate chain, and a supported
    /// `alg`.
    pub(crate) fn common_checks(&self) -> Result<Algorithm, Rejection> {
        if self.crit {
            return Err(Rejection::CritHeader);
        }
        if self.key_url {
            return Err(Rejection::KeyUrlHeader);
        }
        if self.cert_chain {
            return Err(Rejection::EmbeddedKeyHeader);
        }
        self.alg.ok_or(Rejection::InvalidHeader)?.ok_or(Rejection::UnsupportedAlgorithm)
    }
}

impl Header {
    /// Checks a token's header: the common checks, and no embedded key.
    fn from_raw(raw: RawHeader) -> Result<Self, Rejection> {
        let alg = raw.common_checks()?;
        if raw.jwk.is_some() {
            return Err(Rejection::EmbeddedKeyHeader);
        }
        Ok(Self { alg, kid: raw.kid, typ: raw.typ, cty: raw.cty })
    }
}

/// A compact JWS cut into its three segments, with the size, serialization and segment-count checks done.
pub(crate) struct Segments<'a> {
    pub(crate) header: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signature: &'a str,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'a str,
}

impl<'a> Segments<'a> {
    /// Splits `token`, refusing it if it is longer than `max_len` bytes, is JSON, or does not have exactly
    /// three segments with a non-empty header.
    pub(crate) fn split(token: &'a str, max_len: usize) -> Result<Self, Rejection> {
        if token.len() > max_len {
            return Err(Rejection::TooLarge);
        }
        if token.trim_start().starts_with('{') {
            return Err(Rejection::JsonSerialization);
        }
        let mut parts = token.splitn(4, '.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Malformed);
        };
        if header.is_empty() {
            return Err(Rejection::Malformed);
        }
        let signing_input = &token[..header.len() + 1 + payload.len()];
        Ok(Self { header, payload, signature, signing_input })
    }
}

/// Verifies a base64url `signature` over `signing_input` with `key`, decoding it on the stack.
pub(crate) fn verify_segment(
    key: &VerifyingKey,
    signing_input: &str,
    signature: &str,
) -> Result<(), Rejection> {
    let mut buf = [0u8; MAX_SIGNATURE_LEN];
    let signature = b64::decode_into(signature, &mut buf)
        .map_err(|_| Rejection::InvalidBase64)?
        .ok_or(Rejection::BadSignature)?;
    key.verify(signing_input.as_bytes(), signature)
}

/// A compact JWS whose structure and header were checked, but whose signature was not.
///
/// The only way forward is [`UnverifiedJwt::verify`]; the claims cannot be read from this type. Its `Debug`
/// shows the header only: the token itself is a bearer credential.
pub struct UnverifiedJwt<'a> {
    signing_input: &'a str,
    header: Header,
    payload: Vec<u8>,
    /// Checked to be strict base64url; decoded on the stack by `verify`.
    signature: &'a str,
}

impl fmt::Debug for UnverifiedJwt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedJwt").field("header", &self.header).finish_non_exhaustive()
    }
}

impl<'a> UnverifiedJwt<'a> {
    /// Parses `token` with the default 8 KiB limit.
    ///
    /// # Errors
    /// The [`Rejection`] naming the first problem found.
    pub fn parse(token: &'a str) -> Result<Self, Rejection> {
        Self::parse_with_limit(token, DEFAULT_MAX_TOKEN_LEN)
    }

    /// Parses `token`, refusing it if it is longer than `max_len` bytes.
    ///
    /// # Errors
    /// The [`Rejection`] naming the first problem found.
    pub fn parse_with_limit(token: &'a str, max_len: usize) -> Result<Self, Rejection> {
        let parts = Segments::split(token, max_len)?;
        // The header first: a refused algorithm or header member is reported whatever follows it.
        let header = Header::from_raw(RawHeader::decode(parts.header)?)?;
        if parts.payload.is_empty() {
            return Err(Rejection::Malformed);
        }
        let payload = b64::decode(parts.payload).map_err(|_| Rejection::InvalidBase64)?;
        b64::check(parts.signature).map_err(|_| Rejection::InvalidBase64)?;
        Ok(Self { signing_input: parts.signing_input, header, payload, signature: parts.signature })
    }

    /// The checked header.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Verifies the signature with the key named by the header's `kid`. The key's own algorithm must equal
    /// the header's `alg`.
    ///
    /// # Errors
    /// [`Rejection::MissingKid`], [`Rejection::UnknownKid`], [`Rejection::AlgorithmMismatch`] or
    /// [`Rejection::BadSignature`].
    pub fn verify(self, keys: &KeySet) -> Result<VerifiedJwt, Rejection> {
        let kid = self.header.kid.as_deref().ok_or(Rejection::MissingKid)?;
        let key = keys.get(kid).ok_or(Rejection::UnknownKid)?;
        if key.alg() != self.header.alg {
            return Err(Rejection::AlgorithmMismatch);
        }
        verify_segment(key, self.signing_input, self.signature)?;
        Ok(VerifiedJwt { header: self.header, payload: self.payload })
    }
}

/// A token whose signature verified against a trusted key. Its claims are not yet validated: see
/// [`VerifiedJwt::validate`]. Its `Debug` shows the header and the payload's length.
#[derive(Clone)]
pub struct VerifiedJwt {
    header: Header,
    payload: Vec<u8>,
}

impl fmt::Debug for VerifiedJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedJwt")
            .field("header", &self.header)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl VerifiedJwt {
    /// The checked header.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The verified payload bytes (JSON, not yet validated).
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

#[derive(Serialize)]
struct OutHeader<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'a str,
}

impl SigningKey {
    /// Signs `claims` as a compact JWS with header `{alg, kid, typ}`.
    ///
    /// # Errors
    /// [`KeyError::InvalidEncoding`] if the claims cannot be serialized, [`KeyError::Crypto`] if signing
    /// fails.
    pub fn sign_jwt<C: Serialize + ?Sized>(&self, typ: &str, claims: &C) -> Result<String, KeyError> {
        let header = serde_json::to_vec(&OutHeader { alg: self.alg().as_str(), kid: self.kid(), typ })
            .map_err(|_| KeyError::InvalidEncoding)?;
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::InvalidEncoding)?;
        let mut out = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 360);
        b64::encode_into(&header, &mut out);
        out.push('.');
        b64::encode_into(&payload, &mut out);
        let signature = self.sign(out.as_bytes())?;
        out.push('.');
        b64::encode_into(&signature, &mut out);
        Ok(out)
    }
}
