//! Test-only helpers shared by Tessera's test suites.
//!
//! [`DpopClient`] plays a DPoP client (RFC 9449) with the `jsonwebtoken` crate rather than ours, so that a
//! proof our code accepts was made by somebody else's JOSE implementation. It is never linked into a
//! shipped binary: only `[dev-dependencies]` name this crate.
//!
//! [`Receiver`] plays an alert receiver (a webhook or a SET endpoint) that tests can make fail or hang.
//! [`SmtpSink`] plays a mail relay that keeps every message. [`Relay`] plays a TCP load balancer, or a network
//! path a test can cut.

pub mod receiver;
pub mod relay;
pub mod smtp;
pub use receiver::{Received, Receiver};
pub use relay::Relay;
pub use smtp::{Mail, SmtpSink};

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The GeoIP fixture databases (`test-city.mmdb`, `test-asn.mmdb`, written by `geoip/generate.py`): the
/// documentation ranges placed in Berlin (192.0.2.0/24, AS64500), Potsdam (203.0.113.0/24, AS64500),
/// Sydney (198.51.100.0/24, AS64501) and New York (2001:db8:1::/48, AS64502).
pub fn geoip_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geoip")
}

/// Why a helper could not do its job. Tests unwrap it.
#[derive(Debug)]
pub struct KitError(pub String);

impl fmt::Display for KitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KitError {}

fn err(what: impl fmt::Display) -> KitError {
    KitError(what.to_string())
}

/// A client's key pair: the DPoP proofs (RFC 9449) and the client assertions (RFC 7523) it signs.
pub struct DpopClient {
    alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
}

impl fmt::Debug for DpopClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopClient").field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// Makes each proof `jti` distinct within a test run.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh proof id.
#[must_use]
pub fn fresh_jti() -> String {
    let mut bytes = [0u8; 12];
    let random = aws_lc_rs::rand::fill(&mut bytes).is_ok();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if random { format!("{hex}-{n}") } else { format!("jti-{n}") }
}

impl DpopClient {
    /// A new client key for `alg`: `"EdDSA"`, `"ES256"`, `"RS256"` or `"PS256"`.
    ///
    /// # Errors
    /// [`KitError`] for another algorithm or if key generation fails.
    pub fn new(alg: &str) -> Result<Self, KitError> {
        let (alg, key) = match alg {
            "EdDSA" => {
                let pair = Ed25519KeyPair::generate().map_err(err)?;
                (Algorithm::EdDSA, EncodingKey::from_ed_der(pair.to_pkcs8v1().map_err(err)?.as_ref()))
            }
            "ES256" => {
                let pair = EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(err)?;
                (Algorithm::ES256, EncodingKey::from_ec_der(pair.to_pkcs8v1().map_err(err)?.as_ref()))
            }
            "RS256" | "PS256" => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(err)?;
                let pkcs8 = pair.as_der().map_err(err)?;
                let info = pkcs8::PrivateKeyInfo::try_from(pkcs8.as_ref()).map_err(err)?;
                let alg = if alg == "RS256" { Algorithm::RS256 } else { Algorithm::PS256 };
                (alg, EncodingKey::from_rsa_der(info.private_key))
            }
            other => return Err(err(format!("no DPoP client for {other}"))),
        };
        let jwk = Jwk::from_encoding_key(&key, alg).map_err(err)?;
        Ok(Self { alg, key, jwk })
    }

    /// The RFC 7638 thumbprint of the public key, as `jsonwebtoken` computes it.
    ///
    /// # Errors
    /// [`KitError`] if the thumbprint cannot be computed.
    pub fn thumbprint(&self) -> Result<String, KitError> {
        self.jwk.thumbprint(ThumbprintHash::SHA256).map_err(err)
    }

    /// The public JWK, as it goes into the proof header.
    ///
    /// # Errors
    /// [`KitError`] if it cannot be serialized.
    pub fn public_jwk(&self) -> Result<Value, KitError> {
        serde_json::to_value(&self.jwk).map_err(err)
    }

    /// A well-formed proof for `method` and `url` made at `iat`, with `ath` for `access_token` and the
    /// server's `nonce` when given.
    ///
    /// # Errors
    /// [`KitError`] if signing fails.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        iat: u64,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, KitError> {
        let mut claims = json!({ "jti": fresh_jti(), "htm": method, "htu": url, "iat": iat });
        if let Some(token) = access_token {
            claims["ath"] = Value::String(ath(token));
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = Value::String(nonce.to_owned());
        }
        self.sign(&claims, |_| {})
    }

    /// Signs any `claims` with this key, letting `edit` change the header first (for attacks).
    ///
    /// # Errors
    /// [`KitError`] if signing fails.
    pub fn sign(&self, claims: &Value, edit: impl FnOnce(&mut Header)) -> Result<String, KitError> {
        let mut header = Header::new(self.alg);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(self.jwk.clone());
        edit(&mut header);
        jsonwebtoken::encode(&header, claims, &self.key).map_err(err)
    }
}

impl DpopClient {
    /// The JWKS a client registers for `private_key_jwt`: this public key, labelled `kid`.
    ///
    /// # Errors
    /// [`KitError`] if it cannot be serialized.
    pub fn jwks(&self, kid: &str) -> Result<Value, KitError> {
        let mut jwk = self.public_jwk()?;
        jwk["kid"] = Value::String(kid.to_owned());
        Ok(json!({ "keys": [jwk] }))
    }

    /// A client assertion (RFC 7523 §3) for `client_id` addressed to `aud`, issued at `iat` and expiring
    /// `lifetime` seconds later, signed under the label `kid`.
    ///
    /// # Errors
    /// [`KitError`] if signing fails.
    pub fn client_assertion(
        &self,
        kid: &str,
        client_id: &str,
        aud: &str,
        iat: u64,
        lifetime: u64,
    ) -> Result<String, KitError> {
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": aud, "jti": fresh_jti(),
            "iat": iat, "exp": iat + lifetime,
        });
        self.sign_jwt(&claims, kid, |_| {})
    }

    /// Signs any `claims` as a plain JWT with `kid` in the header, letting `edit` change the header first.
    ///
    /// # Errors
    /// [`KitError`] if signing fails.
    pub fn sign_jwt(
        &self,
        claims: &Value,
        kid: &str,
        edit: impl FnOnce(&mut Header),
    ) -> Result<String, KitError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        edit(&mut header);
        jsonwebtoken::encode(&header, claims, &self.key).map_err(err)
    }
}

/// A JWT signed with HMAC-SHA256 over `secret`, with `kid` in the header: what a client_secret_jwt client
/// would send, which a `private_key_jwt` verifier must refuse.
///
/// # Errors
/// [`KitError`] if signing fails.
pub fn hmac_jwt(claims: &Value, kid: &str, secret: &[u8]) -> Result<String, KitError> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).map_err(err)
}

/// A proof signed with HMAC-SHA256 over a shared secret, which no DPoP verifier may accept.
///
/// # Errors
/// [`KitError`] if signing fails.
pub fn hmac_proof(claims: &Value) -> Result<String, KitError> {
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("dpop+jwt".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(b"a shared secret anyone could hold"))
        .map_err(err)
}

/// The `ath` of an access token, computed here rather than by the code under test.
#[must_use]
pub fn ath(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}
