//! Keys: generation, import (PKCS#8 PEM, JWK), public JWKS export, and the key set tokens are verified
//! against.
//!
//! Every key is bound to one [`Algorithm`] for its whole life, and its `kid` is its RFC 7638 thumbprint.
//! Private keys live inside aws-lc-rs key objects, which AWS-LC wipes when they are freed; every copy we
//! make (PKCS#8 documents, JWK members) is a [`Zeroizing`] buffer. No type here prints private material.

use std::fmt;

use aws_lc_rs::encoding::{AsBigEndian, AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPairComponents, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, RsaKeyPair};
use pkcs8::der::Decode as _;
use pkcs8::der::pem::LineEnding;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::alg::Algorithm;
use crate::b64;
use crate::error::{KeyError, Rejection};
use crate::jwk::{POINT_LEN, PublicParams, RawJwk, decode_member, decode_secret, ec_point, parse_json};

/// Length of an Ed25519 or fixed-form ES256 signature.
const SIG64: usize = 64;

/// The modulus size of a generated RSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RsaBits {
    /// 2048 bits, the minimum we accept.
    #[default]
    B2048,
    /// 3072 bits.
    B3072,
    /// 4096 bits.
    B4096,
}

impl RsaBits {
    const fn size(self) -> KeySize {
        match self {
            Self::B2048 => KeySize::Rsa2048,
            Self::B3072 => KeySize::Rsa3072,
            Self::B4096 => KeySize::Rsa4096,
        }
    }
}

/// A public key bound to its algorithm and identified by its thumbprint.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    kid: String,
    params: PublicParams,
    parsed: ParsedPublicKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey").field("alg", &self.alg).field("kid", &self.kid).finish()
    }
}

impl VerifyingKey {
    fn from_params(alg: Algorithm, params: PublicParams) -> Result<Self, KeyError> {
        let parsed = match (&params, alg) {
            (PublicParams::Okp { x }, Algorithm::EdDSA) => {
                let x = decode_member("x", x)?;
                if x.len() != POINT_LEN {
                    return Err(KeyError::InvalidJwk("member x must be 32 bytes".into()));
                }
                ParsedPublicKey::new(&signature::ED25519, x)?
            }
            (PublicParams::Ec { x, y }, Algorithm::ES256) => {
                ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, ec_point(x, y)?)?
            }
            (PublicParams::Rsa { n, e }, Algorithm::RS256 | Algorithm::PS256) => {
                let (n, e) = (decode_member("n", n)?, decode_member("e", e)?);
                check_rsa_modulus(&n)?;
                let params = if alg == Algorithm::RS256 {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &signature::RSA_PSS_2048_8192_SHA256
                };
                PublicKeyComponents { n: &n[..], e: &e[..] }.to_parsed_public_key(params)?
            }
            _ => return Err(KeyError::AlgorithmMismatch),
        };
        Ok(Self { alg, kid: params.thumbprint(), params, parsed })
    }

    /// Reads a public JWK. Its `alg` (or `alg_hint`) decides the algorithm; a JWK with private members is
    /// refused, and so is a `kid` that is not the key's thumbprint.
    ///
    /// # Errors
    /// [`KeyError`] if the JWK is malformed, unsupported, private, or inconsistent.
    pub fn from_jwk(json: &str, alg_hint: Option<Algorithm>) -> Result<Self, KeyError> {
        Self::from_raw(&RawJwk::parse(json)?, alg_hint)
    }

    fn from_raw(raw: &RawJwk, alg_hint: Option<Algorithm>) -> Result<Self, KeyError> {
        let key = Self::from_raw_any_kid(raw, alg_hint)?;
        raw.check_kid(&key.kid)?;
        Ok(key)
    }

    /// Like [`Self::from_raw`], but a `kid` member is not checked: a client's key may carry any label.
    pub(crate) fn from_raw_any_kid(raw: &RawJwk, alg_hint: Option<Algorithm>) -> Result<Self, KeyError> {
        if raw.has_private_members() {
            return Err(KeyError::PrivateMaterialInPublicSet);
        }
        let alg = raw.algorithm(alg_hint)?;
        Self::from_params(alg, raw.public_params(alg)?)
    }

    /// Reads a client's public key given as a JSON object (a DPoP proof's `jwk` header), for the algorithm
    /// the proof names. Private members are refused; a `kid` member is ignored, because the key is known by
    /// its thumbprint.
    pub(crate) fn from_client_jwk(jwk: Value, alg: Algorithm) -> Result<Self, KeyError> {
        let raw: RawJwk =
            serde_json::from_value(jwk).map_err(|_| KeyError::InvalidJwk("not a JWK object".into()))?;
        Self::from_raw_any_kid(&raw, Some(alg))
    }

    /// The algorithm this key verifies.
    #[must_use]
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The key id: the RFC 7638 thumbprint.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK, with `alg`, `kid` and `use`. It has no private members: this type holds none.
    #[must_use]
    pub fn to_jwk(&self) -> Value {
        let mut obj = Map::new();
        self.params.write_members(&mut obj);
        obj.insert("alg".into(), Value::String(self.alg.as_str().into()));
        obj.insert("kid".into(), Value::String(self.kid.clone()));
        obj.insert("use".into(), Value::String("sig".into()));
        Value::Object(obj)
    }

    /// The public JWK with only its key members (`kty`, `crv`, `x`, `y`, `n`, `e`): the form a DPoP proof
    /// embeds.
    #[must_use]
    pub fn to_bare_jwk(&self) -> Value {
        let mut obj = Map::new();
        self.params.write_members(&mut obj);
        Value::Object(obj)
    }

    /// The public key as X.509 `SubjectPublicKeyInfo` DER.
    ///
    /// # Errors
    /// [`KeyError::Crypto`] if the crypto library cannot serialize the key.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, KeyError> {
        let der: PublicKeyX509Der<'static> = self.parsed.as_der()?;
        Ok(der.as_ref().to_vec())
    }

    /// The public key as a PEM `PUBLIC KEY` document.
    ///
    /// # Errors
    /// [`KeyError`] if the key cannot be serialized.
    pub fn to_spki_pem(&self) -> Result<String, KeyError> {
        pkcs8::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &self.to_spki_der()?)
            .map_err(|_| KeyError::InvalidEncoding)
    }

    /// Verifies `signature` over `message` with this key's algorithm.
    ///
    /// Ed25519 and ES256 signatures must be exactly 64 bytes: a DER-encoded ECDSA signature is refused
    /// before the crypto library sees it. aws-lc-rs refuses ECDSA `r` or `s` equal to 0 or at least `n`,
    /// and non-canonical Ed25519 `S` (proven by the Wycheproof tests).
    ///
    /// # Errors
    /// [`Rejection::BadSignature`] if the signature does not verify.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), Rejection> {
        if matches!(self.alg, Algorithm::EdDSA | Algorithm::ES256) && signature.len() != SIG64 {
            return Err(Rejection::BadSignature);
        }
        self.parsed.verify_sig(message, signature).map_err(|_| Rejection::BadSignature)
    }
}

/// Refuses RSA moduli outside 2048..=8192 bits or with a leading zero byte (which would give one key two
/// thumbprints).
fn check_rsa_modulus(n: &[u8]) -> Result<(), KeyError> {
    let Some(&top) = n.first().filter(|&&b| b != 0) else {
        return Err(KeyError::InvalidJwk("member n is empty or has a leading zero".into()));
    };
    let bits = (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize);
    if bits < 2048 {
        return Err(KeyError::Rejected("RSA keys must be at least 2048 bits"));
    }
    if bits > 8192 {
        return Err(KeyError::Rejected("RSA keys must be at most 8192 bits"));
    }
    Ok(())
}

enum Private {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private signing key bound to its algorithm. `Debug` shows only the algorithm and `kid`.
pub struct SigningKey {
    public: VerifyingKey,
    private: Private,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.public.alg)
            .field("kid", &self.public.kid)
            .field("private", &"[REDACTED]")
            .finish()
    }
}

impl SigningKey {
    /// Generates a new key for `alg` (RSA keys are 2048 bits; see [`SigningKey::generate_rsa`]).
    ///
    /// # Errors
    /// [`KeyError::Crypto`] if the crypto library fails.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        Self::generate_rsa(alg, RsaBits::default())
    }

    /// Generates a new key for `alg`, with an RSA modulus of `bits` when `alg` is RS256 or PS256.
    ///
    /// # Errors
    /// [`KeyError::Crypto`] if the crypto library fails.
    pub fn generate_rsa(alg: Algorithm, bits: RsaBits) -> Result<Self, KeyError> {
        let private = match alg {
            Algorithm::EdDSA => Private::Ed25519(Ed25519KeyPair::generate()?),
            Algorithm::ES256 => {
                Private::Ecdsa(EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)?)
            }
            Algorithm::RS256 | Algorithm::PS256 => Private::Rsa(RsaKeyPair::generate(bits.size())?),
        };
        Self::from_private(alg, private)
    }

    fn from_private(alg: Algorithm, private: Private) -> Result<Self, KeyError> {
        let params = match &private {
            Private::Ed25519(kp) => PublicParams::Okp { x: b64::encode(kp.public_key().as_ref()) },
            Private::Ecdsa(kp) => {
                let point = kp.public_key().as_ref();
                let coords = point.get(1..).filter(|c| c.len() == 2 * POINT_LEN);
                let (x, y) = coords.ok_or(KeyError::Crypto)?.split_at(POINT_LEN);
                PublicParams::Ec { x: b64::encode(x), y: b64::encode(y) }
            }
            Private::Rsa(kp) => {
                let public = kp.public_key();
                PublicParams::Rsa {
                    n: b64::encode(public.modulus().big_endian_without_leading_zero()),
                    e: b64::encode(public.exponent().big_endian_without_leading_zero()),
                }
            }
        };
        Ok(Self { public: VerifyingKey::from_params(alg, params)?, private })
    }

    /// Reads an unencrypted PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`) for `alg`.
    ///
    /// # Errors
    /// [`KeyError`] if the PEM cannot be read or the key does not fit `alg`.
    pub fn from_pkcs8_pem(pem: &str, alg: Algorithm) -> Result<Self, KeyError> {
        let (label, doc) = pkcs8::SecretDocument::from_pem(pem).map_err(|_| KeyError::InvalidEncoding)?;
        if label != "PRIVATE KEY" {
            return Err(KeyError::Rejected("expected a PKCS#8 \"PRIVATE KEY\" PEM block"));
        }
        Self::from_pkcs8_der(doc.as_bytes(), alg)
    }

    /// Reads an unencrypted PKCS#8 private key in DER for `alg`.
    ///
    /// # Errors
    /// [`KeyError`] if the DER cannot be read or the key does not fit `alg`.
    pub fn from_pkcs8_der(der: &[u8], alg: Algorithm) -> Result<Self, KeyError> {
        let private = match alg {
            Algorithm::EdDSA => Private::Ed25519(Ed25519KeyPair::from_pkcs8(der)?),
            Algorithm::ES256 => {
                Private::Ecdsa(EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)?)
            }
            Algorithm::RS256 | Algorithm::PS256 => Private::Rsa(RsaKeyPair::from_pkcs8(der)?),
        };
        Self::from_private(alg, private)
    }

    /// Reads a private JWK. Its `alg` (or `alg_hint`) decides the algorithm; RSA keys need one of them and
    /// all CRT members. A `kid` other than the thumbprint is refused.
    ///
    /// # Errors
    /// [`KeyError`] if the JWK is malformed, public only, unsupported, or inconsistent.
    pub fn from_jwk(json: &str, alg_hint: Option<Algorithm>) -> Result<Self, KeyError> {
        let raw = RawJwk::parse(json)?;
        let alg = raw.algorithm(alg_hint)?;
        let params = raw.public_params(alg)?;
        let private = match &params {
            PublicParams::Okp { x } => {
                let d = decode_secret("d", raw.d.as_ref())?;
                Private::Ed25519(Ed25519KeyPair::from_seed_and_public_key(&d, &decode_member("x", x)?)?)
            }
            PublicParams::Ec { x, y } => {
                let d = decode_secret("d", raw.d.as_ref())?;
                Private::Ecdsa(EcdsaKeyPair::from_private_key_and_public_key(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &d,
                    &ec_point(x, y)?,
                )?)
            }
            PublicParams::Rsa { n, e } => {
                if raw.oth.is_some() {
                    return Err(KeyError::InvalidJwk("multi-prime RSA keys are not supported".into()));
                }
                let (n, e) = (decode_member("n", n)?, decode_member("e", e)?);
                check_rsa_modulus(&n)?;
                let components = KeyPairComponents {
                    public_key: PublicKeyComponents { n, e },
                    d: decode_secret("d", raw.d.as_ref())?,
                    p: decode_secret("p", raw.p.as_ref())?,
                    q: decode_secret("q", raw.q.as_ref())?,
                    dP: decode_secret("dp", raw.dp.as_ref())?,
                    dQ: decode_secret("dq", raw.dq.as_ref())?,
                    qInv: decode_secret("qi", raw.qi.as_ref())?,
                };
                Private::Rsa(RsaKeyPair::from_components(&components)?)
            }
        };
        let key = Self::from_private(alg, private)?;
        raw.check_kid(key.kid())?;
        Ok(key)
    }

    /// The algorithm this key signs with.
    #[must_use]
    pub fn alg(&self) -> Algorithm {
        self.public.alg
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    /// The public half.
    #[must_use]
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs `message`, returning the JWS signature bytes (64-byte `r‖s` for ES256).
    ///
    /// # Errors
    /// [`KeyError::Crypto`] if the crypto library fails.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.private {
            Private::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            Private::Ecdsa(kp) => Ok(kp.sign(&SystemRandom::new(), message)?.as_ref().to_vec()),
            Private::Rsa(kp) => {
                let padding: &'static dyn signature::RsaEncoding = match self.public.alg {
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(padding, &SystemRandom::new(), message, &mut sig)?;
                Ok(sig)
            }
        }
    }

    /// The private key as unencrypted PKCS#8 v1 DER, wiped on drop.
    ///
    /// # Errors
    /// [`KeyError::Crypto`] if the crypto library cannot serialize the key.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        Ok(Zeroizing::new(match &self.private {
            Private::Ed25519(kp) => kp.to_pkcs8v1()?.as_ref().to_vec(),
            Private::Ecdsa(kp) => kp.to_pkcs8v1()?.as_ref().to_vec(),
            Private::Rsa(kp) => AsDer::<Pkcs8V1Der<'_>>::as_der(kp)?.as_ref().to_vec(),
        }))
    }

    /// The private key as a PKCS#8 PEM document, wiped on drop.
    ///
    /// # Errors
    /// [`KeyError`] if the key cannot be serialized.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let der = self.to_pkcs8_der()?;
        pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &der)
            .map(Zeroizing::new)
            .map_err(|_| KeyError::InvalidEncoding)
    }

    /// The private JWK (public members, `alg`, `kid`, `use` and the private members), wiped on drop.
    ///
    /// # Errors
    /// [`KeyError`] if the key cannot be serialized.
    pub fn to_private_jwk(&self) -> Result<Zeroizing<String>, KeyError> {
        let mut members: Vec<(&'static str, Zeroizing<String>)> = Vec::new();
        match &self.private {
            Private::Ed25519(kp) => {
                let seed = kp.seed()?.as_be_bytes()?;
                members.push(("d", Zeroizing::new(b64::encode(seed.as_ref()))));
            }
            Private::Ecdsa(kp) => {
                let d = kp.private_key().as_be_bytes()?;
                members.push(("d", Zeroizing::new(b64::encode(d.as_ref()))));
            }
            Private::Rsa(_) => {
                let der = self.to_pkcs8_der()?;
                let info = pkcs8::PrivateKeyInfo::from_der(&der).map_err(|_| KeyError::Crypto)?;
                let rsa = pkcs1::RsaPrivateKey::from_der(info.private_key).map_err(|_| KeyError::Crypto)?;
                for (name, value) in [
                    ("d", rsa.private_exponent),
                    ("p", rsa.prime1),
                    ("q", rsa.prime2),
                    ("dp", rsa.exponent1),
                    ("dq", rsa.exponent2),
                    ("qi", rsa.coefficient),
                ] {
                    members.push((name, Zeroizing::new(b64::encode(value.as_bytes()))));
                }
            }
        }
        let mut obj = Map::new();
        self.public.params.write_members(&mut obj);
        obj.insert("alg".into(), Value::String(self.alg().as_str().into()));
        obj.insert("kid".into(), Value::String(self.kid().into()));
        obj.insert("use".into(), Value::String("sig".into()));
        // Serialize the public part, then splice the private members in by hand so that no
        // non-zeroizing `Value` ever holds them.
        let public = serde_json::to_string(&Value::Object(obj)).map_err(|_| KeyError::Crypto)?;
        // Exact capacity: a reallocation would free a copy of the private members without wiping it.
        let capacity =
            public.len() + members.iter().map(|(name, value)| name.len() + value.len() + 6).sum::<usize>();
        let mut out = Zeroizing::new(String::with_capacity(capacity));
        out.push_str(public.strip_suffix('}').ok_or(KeyError::Crypto)?);
        for (name, value) in &members {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":\"");
            out.push_str(value);
            out.push('"');
        }
        out.push('}');
        debug_assert_eq!(out.len(), capacity);
        Ok(out)
    }
}

/// The set of public keys tokens are verified against, looked up by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

impl KeySet {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`, refusing it if the set already has a key with its `kid`: one RSA modulus bound to RS256
    /// and to PS256 has one thumbprint, and which of the two verifies would be ambiguous.
    ///
    /// # Errors
    /// [`KeyError::DuplicateKid`].
    pub fn try_insert(&mut self, key: VerifyingKey) -> Result<(), KeyError> {
        if self.get(key.kid()).is_some() {
            return Err(KeyError::DuplicateKid);
        }
        self.keys.push(key);
        Ok(())
    }

    /// Adds `key`, replacing any key with the same `kid`.
    pub fn insert(&mut self, key: VerifyingKey) {
        self.keys.retain(|k| k.kid != key.kid);
        self.keys.push(key);
    }

    /// Removes the key with `kid`, returning whether there was one.
    pub fn remove(&mut self, kid: &str) -> bool {
        let before = self.keys.len();
        self.keys.retain(|k| k.kid != kid);
        before != self.keys.len()
    }

    /// The key with `kid`, if any.
    #[must_use]
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The keys, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.iter()
    }

    /// The number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads a JWKS (`{"keys":[...]}`). Keys marked `"use":"enc"` are skipped; any key with private members
    /// makes the whole set refused, and so does any other key we cannot use, and two keys with one `kid`
    /// (an RSA modulus published for both RS256 and PS256).
    ///
    /// # Errors
    /// [`KeyError`] naming the first problem.
    pub fn from_jwks(json: &str) -> Result<Self, KeyError> {
        #[derive(serde::Deserialize)]
        struct Jwks {
            keys: Vec<RawJwk>,
        }
        let jwks: Jwks = parse_json(json, "a JWKS")?;
        let mut set = Self::new();
        for raw in &jwks.keys {
            if raw.has_private_members() {
                return Err(KeyError::PrivateMaterialInPublicSet);
            }
            if raw.use_.as_deref() == Some("enc") {
                continue;
            }
            set.try_insert(VerifyingKey::from_raw(raw, None)?)?;
        }
        Ok(set)
    }

    /// The public JWKS document. It can contain no private members: [`VerifyingKey`] holds none.
    #[must_use]
    pub fn to_jwks(&self) -> Value {
        let keys = self.keys.iter().map(VerifyingKey::to_jwk).collect();
        let mut obj = Map::new();
        obj.insert("keys".into(), Value::Array(keys));
        Value::Object(obj)
    }
}

impl FromIterator<VerifyingKey> for KeySet {
    fn from_iter<I: IntoIterator<Item = VerifyingKey>>(iter: I) -> Self {
        let mut set = Self::new();
        for key in iter {
            set.insert(key);
        }
        set
    }
}
