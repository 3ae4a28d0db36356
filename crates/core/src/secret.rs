//! Opaque secrets (refresh tokens, authorization codes, client secrets, login-session cookies) and the
//! SHA-256 hashes under which they are stored.
//!
//! A secret is 256 random bits, base64url-encoded behind a short prefix that names its kind, so that secret
//! scanners can recognise a leaked Tessera credential (`tsr_…` is a refresh token). The store only ever sees
//! the [`TokenHash`]; the plaintext exists in memory while a request is served and is zeroized on drop.

use std::fmt;

use aws_lc_rs::{constant_time, digest, hmac};
use tessera_token::b64;
use zeroize::Zeroizing;

/// Random bytes behind every opaque secret.
pub const SECRET_BYTES: usize = 32;
/// Length of the base64url text of [`SECRET_BYTES`] bytes.
const SECRET_B64_LEN: usize = 43;

/// The kind of an opaque secret, spelled as its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `tsr_`: a refresh token.
    RefreshToken,
    /// `tsc_`: an authorization code.
    AuthorizationCode,
    /// `tss_`: a confidential client's secret.
    ClientSecret,
    /// `tsl_`: a browser login session (the cookie).
    LoginSession,
    /// `tsp_`: a password-reset link.
    PasswordReset,
}

impl SecretKind {
    /// The prefix every secret of this kind starts with.
    pub fn prefix(self) -> &'static str {
        match self {
            SecretKind::RefreshToken => "tsr_",
            SecretKind::AuthorizationCode => "tsc_",
            SecretKind::ClientSecret => "tss_",
            SecretKind::LoginSession => "tsl_",
            SecretKind::PasswordReset => "tsp_",
        }
    }
}

/// An opaque secret's plaintext. `Debug` shows its kind and a hash prefix, never the secret.
pub struct OpaqueSecret {
    kind: SecretKind,
    text: Zeroizing<String>,
}

impl OpaqueSecret {
    /// Makes a secret of `kind` from 256 random bits (the caller owns the random source).
    pub fn from_random(kind: SecretKind, random: &[u8; SECRET_BYTES]) -> Self {
        let prefix = kind.prefix();
        let mut text = Zeroizing::new(String::with_capacity(prefix.len() + SECRET_B64_LEN));
        text.push_str(prefix);
        text.push_str(&Zeroizing::new(b64::encode(random)));
        OpaqueSecret { kind, text }
    }

    /// Reads a presented secret of `kind`. `None` if it is not one: wrong prefix, wrong length, or not
    /// canonical base64url. A `None` means "unknown", never an error worth more words on the wire.
    pub fn parse(kind: SecretKind, presented: &str) -> Option<Self> {
        let body = presented.strip_prefix(kind.prefix())?;
        if body.len() != SECRET_B64_LEN || !b64::decode(body).is_ok_and(|raw| raw.len() == SECRET_BYTES) {
            return None;
        }
        Some(OpaqueSecret { kind, text: Zeroizing::new(presented.to_owned()) })
    }

    /// The kind of this secret.
    pub fn kind(&self) -> SecretKind {
        self.kind
    }

    /// The plaintext, to hand to its owner once. Never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The hash under which this secret is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.text)
    }
}

impl fmt::Debug for OpaqueSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpaqueSecret({:?}, sha256:{})", self.kind, self.hash().short())
    }
}

/// The SHA-256 of an opaque secret: what the database stores and what logs may show (as [`TokenHash::short`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// SHA-256 of the secret's text.
    pub fn of(secret: &str) -> Self {
        let d = digest::digest(&digest::SHA256, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        TokenHash(out)
    }

    /// SHA-256 of the parts' concatenation, without building it: `of_parts(&["a", "|", "b"])` is `of("a|b")`.
    pub fn of_parts(parts: &[&str]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in parts {
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        TokenHash(out)
    }

    /// Reads a stored hash; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(TokenHash(bytes.try_into().ok()?))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The first 8 hex digits: enough to correlate log lines, far too little to find the secret.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Compares two hashes in constant time (for client secrets, whose hash is compared, not looked up).
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.short())
    }
}

/// The key that derives a refresh token's successor from the token itself.
///
/// Rotation makes the successor `tsr_` + HMAC-SHA256(key, parent). Every server node holding the key derives
/// the same successor, so a client that retries a rotation it never saw the answer to (DESIGN §3's retry
/// window) gets the same successor back without the plaintext ever being stored.
pub struct SuccessorKey(hmac::Key);

impl SuccessorKey {
    /// A key from 32 bytes of secret material (the server derives them from its key-encryption key).
    pub fn new(material: &[u8; 32]) -> Self {
        SuccessorKey(hmac::Key::new(hmac::HMAC_SHA256, material))
    }

    /// The successor of `parent`.
    pub fn successor(&self, parent: &OpaqueSecret) -> OpaqueSecret {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"tessera refresh successor v1\0");
        ctx.update(parent.expose().as_bytes());
        let tag = ctx.sign();
        let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
        bytes.copy_from_slice(tag.as_ref());
        OpaqueSecret::from_random(parent.kind(), &bytes)
    }
}

impl fmt::Debug for SuccessorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SuccessorKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_carry_their_prefix_and_parse_back() {
        let s = OpaqueSecret::from_random(SecretKind::RefreshToken, &[7; 32]);
        assert!(s.expose().starts_with("tsr_"));
        assert_eq!(s.expose().len(), 4 + 43);
        let back = OpaqueSecret::parse(SecretKind::RefreshToken, s.expose()).unwrap();
        assert_eq!(back.hash(), s.hash());
        assert!(OpaqueSecret::parse(SecretKind::AuthorizationCode, s.expose()).is_none());
        assert!(OpaqueSecret::parse(SecretKind::RefreshToken, "tsr_short").is_none());
        assert!(OpaqueSecret::parse(SecretKind::RefreshToken, &format!("{}=", s.expose())).is_none());
    }

    #[test]
    fn a_hash_of_parts_is_the_hash_of_their_concatenation() {
        assert!(TokenHash::of_parts(&["jkt", "|", "jti"]) == TokenHash::of("jkt|jti"));
        assert!(TokenHash::of_parts(&["jkt|", "jti"]) == TokenHash::of("jkt|jti"));
        assert!(TokenHash::of_parts(&[]) == TokenHash::of(""));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = OpaqueSecret::from_random(SecretKind::ClientSecret, &[9; 32]);
        let shown = format!("{s:?}");
        assert!(!shown.contains(&s.expose()[4..]), "{shown}");
        assert!(shown.contains(&s.hash().short()));
    }

    #[test]
    fn successor_is_deterministic_per_key_and_parent() {
        let parent = OpaqueSecret::from_random(SecretKind::RefreshToken, &[1; 32]);
        let k1 = SuccessorKey::new(&[2; 32]);
        let k2 = SuccessorKey::new(&[3; 32]);
        assert_eq!(k1.successor(&parent).expose(), k1.successor(&parent).expose());
        assert_ne!(k1.successor(&parent).expose(), k2.successor(&parent).expose());
        assert_ne!(k1.successor(&parent).expose(), parent.expose());
        assert!(OpaqueSecret::parse(SecretKind::RefreshToken, k1.successor(&parent).expose()).is_some());
    }

    #[test]
    fn hashes_compare_in_constant_time_and_by_value() {
        let a = TokenHash::of("tss_a");
        assert!(a.ct_eq(&TokenHash::of("tss_a")));
        assert!(!a.ct_eq(&TokenHash::of("tss_b")));
        assert_eq!(TokenHash::from_slice(a.as_bytes()), Some(a));
        assert_eq!(TokenHash::from_slice(&[0; 31]), None);
    }
}
