//! Strict base64url without padding (RFC 7515 §2): no `=`, no `+` or `/`, no whitespace, no non-zero
//! trailing bits. Every encoded value has exactly one accepted spelling.

use base64_simd::URL_SAFE_NO_PAD;

/// Encodes `bytes` as base64url without padding.
#[must_use]
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode_to_string(bytes)
}

/// Appends the base64url encoding of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_append(bytes, out);
}

/// Decodes strict base64url without padding.
///
/// # Errors
/// Returns an error for any character outside the base64url alphabet, padding, or a non-canonical final
/// character.
pub fn decode(text: &str) -> Result<Vec<u8>, base64_simd::Error> {
    URL_SAFE_NO_PAD.decode_to_vec(text)
}

/// Checks that `text` is strict base64url without decoding it.
pub(crate) fn check(text: &str) -> Result<(), base64_simd::Error> {
    URL_SAFE_NO_PAD.check(text.as_bytes())
}

/// Decodes into `buf` when the result fits, without allocating; `None` when it does not fit.
pub(crate) fn decode_into<'b>(text: &str, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, base64_simd::Error> {
    let len = URL_SAFE_NO_PAD.decoded_length(text.as_bytes())?;
    match buf.get_mut(..len) {
        Some(out) => URL_SAFE_NO_PAD
            .decode(text.as_bytes(), base64_simd::Out::from_slice(out))
            .map(|decoded| Some(&*decoded)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_spelling_decodes() {
        assert_eq!(decode("AQAB").ok(), Some(vec![1, 0, 1]));
        assert_eq!(decode("_-8").ok(), Some(vec![0xff, 0xef]));
        let mut buf = [0u8; 2];
        assert_eq!(decode_into("_-8", &mut buf).ok(), Some(Some(&[0xff, 0xef][..])));
        assert_eq!(decode_into("AQAB", &mut buf).ok(), Some(None), "too long for the buffer");
        assert!(decode_into("AR", &mut buf).is_err());
        assert!(check("AR").is_err() && check("AQAB").is_ok());
        for bad in ["AQAB=", "AQ==", "+/8", "AQ AB", "AQAB\n", "AR", "_-9"] {
            assert!(decode(bad).is_err(), "{bad:?} must be refused");
        }
    }

    /// Exhaustive over every 2- and 3-character string: one spelling per value, nothing else decodes.
    #[test]
    fn every_short_string_decodes_only_in_its_canonical_spelling() {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut accepted = 0;
        for &a in ALPHABET {
            for &b in ALPHABET {
                for tail in std::iter::once(None).chain(ALPHABET.iter().copied().map(Some)) {
                    let mut s = vec![a, b];
                    s.extend(tail);
                    let text = std::str::from_utf8(&s).unwrap();
                    let mut buf = [0u8; 2];
                    let decoded = decode(text);
                    assert_eq!(check(text).is_ok(), decoded.is_ok(), "{text}");
                    assert_eq!(
                        decode_into(text, &mut buf).ok().flatten().map(<[u8]>::to_vec),
                        decoded.as_ref().ok().cloned()
                    );
                    if let Ok(bytes) = decoded {
                        assert_eq!(encode(&bytes), text);
                        accepted += 1;
                    }
                }
            }
        }
        // Exactly the 2^8 one-byte and 2^16 two-byte values.
        assert_eq!(accepted, 256 + 65536);
    }
}
