//! Set-up shared by the benches: a typical access token, and the raw aws-lc-rs operations it is compared to.

#![allow(dead_code, reason = "each bench uses part of the set-up")]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, ParsedPublicKey, RsaKeyPair, UnparsedPublicKey,
};
use tessera_token::{
    AccessClaims, Algorithm, Audience, KeySet, SigningKey, UnixTime, Validation, b64, validate_access_token,
};

pub const NOW: u64 = 1_700_000_000;

/// Claims of the size and shape Tessera issues after a login with MFA.
pub fn typical_claims() -> AccessClaims {
    AccessClaims {
        iss: "https://id.example.com/tenants/acme".into(),
        sub: "3f6b1c2e-8a4d-4e7f-9b1a-2c3d4e5f6a7b".into(),
        aud: Audience::one("https://orders.api.example.com"),
        exp: NOW + 300,
        iat: NOW,
        nbf: Some(NOW),
        jti: "b3J0LXRva2VuLWlkLTAwMDAwMQ".into(),
        client_id: "orders-web-frontend".into(),
        scope: Some("openid orders:read orders:write".into()),
        sid: Some("c2Vzc2lvbi0wMDAwMDE".into()),
        roles: vec!["customer".into(), "orders-clerk".into()],
        auth_time: Some(NOW - 30),
        amr: vec!["pwd".into(), "otp".into()],
        acr: Some("urn:tessera:acr:mfa".into()),
        cnf: None,
        act: None,
        origin: Vec::new(),
        extra: serde_json::Map::new(),
    }
}

pub fn raw_verifier(alg: Algorithm) -> &'static dyn signature::VerificationAlgorithm {
    match alg {
        Algorithm::EdDSA => &signature::ED25519,
        Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
    }
}

pub enum RawSigner {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding),
}

impl RawSigner {
    pub fn new(key: &SigningKey) -> Self {
        let der = key.to_pkcs8_der().unwrap();
        match key.alg() {
            Algorithm::EdDSA => Self::Ed(Ed25519KeyPair::from_pkcs8(&der).unwrap()),
            Algorithm::ES256 => {
                Self::Ec(EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap())
            }
            Algorithm::RS256 => {
                Self::Rsa(RsaKeyPair::from_pkcs8(&der).unwrap(), &signature::RSA_PKCS1_SHA256)
            }
            Algorithm::PS256 => Self::Rsa(RsaKeyPair::from_pkcs8(&der).unwrap(), &signature::RSA_PSS_SHA256),
        }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            Self::Ed(k) => k.sign(msg).as_ref().to_vec(),
            Self::Ec(k) => k.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec(),
            Self::Rsa(k, enc) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(*enc, &SystemRandom::new(), msg, &mut sig).unwrap();
                sig
            }
        }
    }
}

/// One algorithm's key, token, and the raw operations over the same bytes.
pub struct Fixture {
    pub alg: Algorithm,
    pub key: SigningKey,
    pub keys: KeySet,
    pub policy: Validation,
    pub claims: AccessClaims,
    pub token: String,
    pub input: String,
    pub sig: Vec<u8>,
    pub parsed: ParsedPublicKey,
    pub unparsed: UnparsedPublicKey<Vec<u8>>,
    pub signer: RawSigner,
}

impl Fixture {
    pub fn new(alg: Algorithm) -> Self {
        let claims = typical_claims();
        let key = SigningKey::generate(alg).unwrap();
        let keys: KeySet = [key.verifying_key().clone()].into_iter().collect();
        let policy = Validation::access_token(claims.iss.clone(), "https://orders.api.example.com");
        let token = key.sign_jwt("at+jwt", &claims).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let (input, sig) = (input.to_owned(), b64::decode(sig).unwrap());
        let spki = key.verifying_key().to_spki_der().unwrap();
        let parsed = ParsedPublicKey::new(raw_verifier(alg), &spki).unwrap();
        let unparsed = UnparsedPublicKey::new(raw_verifier(alg), spki);
        parsed.verify_sig(input.as_bytes(), &sig).unwrap();
        unparsed.verify(input.as_bytes(), &sig).unwrap();
        validate_access_token(&token, &keys, &policy, UnixTime(NOW)).unwrap();
        let signer = RawSigner::new(&key);
        Self { alg, key, keys, policy, claims, token, input, sig, parsed, unparsed, signer }
    }
}
