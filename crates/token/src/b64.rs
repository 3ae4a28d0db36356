//! Strict base64url without padding (RFC 7515 §2): no `=`, no `+` or `/`, no whitespace, no non-zero
//! trailing bits. Every encoded value has exactly one accepted spelling.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes `bytes` as base64url without padding.
#[must_use]
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Appends the base64url encoding of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

/// Decodes strict base64url without padding.
///
/// # Errors
/// Returns an error for any character outside the base64url alphabet, padding, or a non-canonical final
/// character.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_spelling_decodes() {
        assert_eq!(decode("AQAB").ok(), Some(vec![1, 0, 1]));
        assert_eq!(decode("_-8").ok(), Some(vec![0xff, 0xef]));
        for bad in ["AQAB=", "AQ==", "+/8", "AQ AB", "AQAB\n", "AR", "_-9"] {
            assert!(decode(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
