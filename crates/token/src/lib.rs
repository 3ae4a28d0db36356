//! Tessera's token crate: sans-IO JOSE/JWT.
//!
//! It parses compact JWS strictly, verifies signatures with keys that are each bound to one algorithm, and
//! validates access-token claims against a policy and a caller-supplied time. It has no clock, no network, no
//! files and no async runtime. The flow is typed:
//!
//! ```text
//! &str --UnverifiedJwt::parse--> UnverifiedJwt --verify(&KeySet)--> VerifiedJwt
//!      --validate(&Validation, now)--> AccessClaims
//! ```
//!
//! Only EdDSA, ES256, RS256 and PS256 exist: `none` and HMAC cannot be expressed. DPoP proofs (RFC 9449)
//! have their own entry point, [`verify_proof`], the only one that accepts a key embedded in a header.
//! Client assertions (RFC 7523 `private_key_jwt`) are checked by [`verify_assertion`] against a client's
//! registered [`ClientKeys`].
//!
//! ```
//! use tessera_token::{AccessClaims, Algorithm, Audience, KeySet, SigningKey, UnixTime, Validation};
//!
//! let key = SigningKey::generate(Algorithm::EdDSA)?;
//! let keys: KeySet = [key.verifying_key().clone()].into_iter().collect();
//! let claims = AccessClaims {
//!     iss: "https://id.example".into(), sub: "alice".into(), aud: Audience::one("orders"),
//!     exp: 1_700_000_300, iat: 1_700_000_000, nbf: None, jti: "t1".into(), client_id: "web".into(),
//!     scope: Some("orders:read".into()), sid: None, roles: vec![], auth_time: None, amr: vec![],
//!     acr: None, cnf: None, act: None, origin: Vec::new(), extra: Default::default(),
//! };
//! let token = key.sign_jwt("at+jwt", &claims)?;
//! let policy = Validation::access_token("https://id.example", "orders");
//! let checked = tessera_token::validate_access_token(&token, &keys, &policy, UnixTime(1_700_000_100))?;
//! assert_eq!(checked.sub, "alice");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod alg;
pub mod assertion;
pub mod b64;
pub mod claims;
pub mod dpop;
pub mod error;
mod json;
mod jwk;
pub mod jws;
pub mod key;
pub mod validate;

pub use alg::Algorithm;
pub use assertion::{AssertionPolicy, AssertionRejection, ClientAssertion, ClientKeys, verify_assertion};
pub use claims::{AccessClaims, Actor, Audience, Confirmation, Origin};
pub use dpop::{
    DpopProof, NewProof, ProofKey, ProofPolicy, ProofRejection, ProofRequest, proof_header, verify_proof,
    verify_proof_with_key,
};
pub use error::{KeyError, Rejection};
pub use jws::{DEFAULT_MAX_TOKEN_LEN, Header, UnverifiedJwt, VerifiedJwt};
pub use key::{KeySet, RsaBits, SigningKey, VerifyingKey};
pub use validate::{TokenType, UnixTime, Validation};

/// Parses, verifies and validates an access token in one call.
///
/// # Errors
/// The [`Rejection`] naming the first problem found.
pub fn validate_access_token(
    token: &str,
    keys: &KeySet,
    policy: &Validation,
    now: UnixTime,
) -> Result<AccessClaims, Rejection> {
    UnverifiedJwt::parse(token)?.verify(keys)?.validate(policy, now)
}
