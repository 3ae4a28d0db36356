//! Second factors, pure: TOTP (RFC 6238) codes and their check, the `otpauth://` enrolment URI, recovery
//! codes, the authentication context (`acr`) a set of methods (`amr`, RFC 8176) reaches, and each client's
//! MFA policy.
//!
//! TOTP is HMAC-SHA1 over a 30-second counter, truncated to 6 digits (RFC 4226 §5.3), as every
//! authenticator app computes it. A code is accepted within one step either side of now, and only for a
//! step later than the last one accepted for that user, so a code cannot be used twice.

use aws_lc_rs::hmac;

/// The step of a TOTP code, seconds.
pub const TOTP_STEP: i64 = 30;
/// Digits of a TOTP code.
pub const TOTP_DIGITS: u32 = 6;
/// Bytes of a TOTP secret (160 bits, RFC 4226 §4's recommendation).
pub const TOTP_SECRET_BYTES: usize = 20;
/// Recovery codes made at a time.
pub const RECOVERY_CODES: usize = 10;

/// `acr` of a password-only sign-in.
pub const ACR_PASSWORD: &str = "urn:tessera:acr:pwd";
/// `acr` of a sign-in with a second factor.
pub const ACR_MFA: &str = "urn:tessera:acr:mfa";

/// The TOTP code for counter `step`.
pub fn totp_at(secret: &[u8], step: i64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = u32::from_be_bytes([mac[offset] & 0x7f, mac[offset + 1], mac[offset + 2], mac[offset + 3]]);
    binary % 10_u32.pow(TOTP_DIGITS)
}

/// The step `now` falls in.
pub fn totp_step(now: i64) -> i64 {
    now.div_euclid(TOTP_STEP)
}

/// The step whose code `code` is, within one step of `now` and after `last_used` (the last step accepted
/// for this secret; 0 if none). `None` for a wrong, malformed or already used code. Spaces are ignored.
pub fn totp_check(secret: &[u8], code: &str, now: i64, last_used: i64) -> Option<i64> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() != TOTP_DIGITS as usize || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u32 = digits.parse().ok()?;
    let current = totp_step(now);
    let mut found = None;
    // Every candidate is computed, so the time taken does not say which step matched.
    for step in [current - 1, current, current + 1] {
        let matches = constant_eq(totp_at(secret, step), value);
        if matches && step > last_used && found.is_none() {
            found = Some(step);
        }
    }
    found
}

fn constant_eq(a: u32, b: u32) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(&a.to_be_bytes(), &b.to_be_bytes()).is_ok()
}

/// RFC 4648 base32 without padding, upper case: how authenticator apps take a secret.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0_u32, 0_u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The `otpauth://totp/…` URI an authenticator app scans (Google Authenticator's key URI format).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let label: String = form_encode(&format!("{issuer}:{account}"));
    format!(
        "otpauth://totp/{label}?secret={}&issuer={}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP}",
        base32(secret),
        form_encode(issuer)
    )
}

/// Percent-encodes everything but unreserved characters (RFC 3986), spaces as `%20`.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A recovery code from 10 random bytes: 16 base32 characters in four groups (`abcd-efgh-ijkl-mnop`), 80
/// bits, easy to read off paper.
pub fn recovery_code(random: &[u8; 10]) -> String {
    let text = base32(random).to_ascii_lowercase();
    let groups: Vec<&str> = [0, 4, 8, 12].iter().map(|&i| &text[i..i + 4]).collect();
    groups.join("-")
}

/// A typed recovery code in the form it was made in: lower case, dashes where they belong, spaces and
/// stray dashes ignored. `None` if it cannot be one.
pub fn normalize_recovery_code(typed: &str) -> Option<String> {
    let plain: String =
        typed.chars().filter(|c| !c.is_whitespace() && *c != '-').map(|c| c.to_ascii_lowercase()).collect();
    if plain.len() != 16 || !plain.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)) {
        return None;
    }
    Some(format!("{}-{}-{}-{}", &plain[0..4], &plain[4..8], &plain[8..12], &plain[12..16]))
}

/// The `acr` that authentication methods reach: [`ACR_MFA`] with a second factor, [`ACR_PASSWORD`] with
/// a password alone, none otherwise (a client's own tokens).
pub fn acr_for(amr: &[String]) -> Option<&'static str> {
    if amr.iter().any(|m| m == "mfa") {
        Some(ACR_MFA)
    } else if amr.iter().any(|m| m == "pwd") {
        Some(ACR_PASSWORD)
    } else {
        None
    }
}

/// When a client's users must show a second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MfaPolicy {
    /// At every sign-in; a user without a factor must enrol one first.
    Required,
    /// When the sign-in's risk asks for it (a device not seen before, among other signals): a user with a
    /// factor on a known device and network signs in with the password.
    #[default]
    Risky,
    /// Never asked for by this client's sign-ins (a request's `acr_values` still can).
    Off,
}

impl MfaPolicy {
    /// The stored and configured spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MfaPolicy::Required => "required",
            MfaPolicy::Risky => "risky",
            MfaPolicy::Off => "off",
        }
    }

    /// The policy spelled `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [MfaPolicy::Required, MfaPolicy::Risky, MfaPolicy::Off].into_iter().find(|p| p.as_str() == text)
    }
}

/// Whether a sign-in for a client under `policy` needs a second factor: when the policy requires it, when
/// the request's `acr_values` ask for [`ACR_MFA`], or when the risk asks for it and the policy is `risky`.
pub fn needs_second_factor(policy: MfaPolicy, acr_values: Option<&str>, risky: bool) -> bool {
    policy == MfaPolicy::Required || asks_for_mfa(acr_values) || (risky && policy == MfaPolicy::Risky)
}

/// Whether `acr_values` ask for [`ACR_MFA`].
pub fn asks_for_mfa(acr_values: Option<&str>) -> bool {
    acr_values.is_some_and(|v| v.split(' ').any(|a| a == ACR_MFA))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B's SHA-1 seed.
    const SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc_6238_sha1_vectors_at_six_digits() {
        // The RFC's 8-digit values, last six digits.
        for (time, code) in [
            (59, 287_082),
            (1_111_111_109, 81_804),
            (1_111_111_111, 50_471),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
            (20_000_000_000, 353_130),
        ] {
            assert_eq!(totp_at(SEED, totp_step(time)), code, "at {time}");
        }
    }

    #[test]
    fn a_code_is_accepted_one_step_either_side_and_never_twice() {
        let now = 1_111_111_111;
        let step = totp_step(now);
        let code = |s: i64| format!("{:06}", totp_at(SEED, s));
        assert_eq!(totp_check(SEED, &code(step), now, 0), Some(step));
        assert_eq!(totp_check(SEED, &code(step - 1), now, 0), Some(step - 1));
        assert_eq!(totp_check(SEED, &code(step + 1), now, 0), Some(step + 1));
        assert_eq!(totp_check(SEED, &code(step - 2), now, 0), None, "two steps old");
        assert_eq!(totp_check(SEED, &code(step), now, step), None, "already used");
        assert_eq!(totp_check(SEED, &code(step - 1), now, step), None, "older than the last used");
        assert_eq!(totp_check(SEED, "050 471", now, 0), Some(step), "spaces are ignored");
        for bad in ["", "12345", "1234567", "abcdef", "05047１"] {
            assert_eq!(totp_check(SEED, bad, now, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn base32_matches_rfc_4648() {
        for (input, out) in
            [("", ""), ("f", "MY"), ("fo", "MZXQ"), ("foo", "MZXW6"), ("foobar", "MZXW6YTBOI")]
        {
            assert_eq!(base32(input.as_bytes()), out);
        }
    }

    #[test]
    fn otpauth_uri_names_issuer_account_and_parameters() {
        let uri = otpauth_uri("Tessera Example", "alice@example.com", SEED);
        assert_eq!(
            uri,
            "otpauth://totp/Tessera%20Example%3Aalice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Tessera%20Example&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn recovery_codes_read_back_however_they_are_typed() {
        let code = recovery_code(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5]);
        assert_eq!(code.len(), 19);
        assert_eq!(normalize_recovery_code(&code.to_uppercase().replace('-', " ")), Some(code.clone()));
        assert_eq!(normalize_recovery_code("too-short"), None);
        assert_eq!(normalize_recovery_code("abcd-efgh-ijkl-mno1"), None, "1 is not base32");
    }

    #[test]
    fn acr_follows_the_methods_and_policy_decides_the_second_factor() {
        let amr = |m: &[&str]| m.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(acr_for(&amr(&["pwd", "otp", "mfa"])), Some(ACR_MFA));
        assert_eq!(acr_for(&amr(&["pwd"])), Some(ACR_PASSWORD));
        assert_eq!(acr_for(&[]), None);
        assert!(needs_second_factor(MfaPolicy::Required, None, false));
        assert!(needs_second_factor(MfaPolicy::Risky, None, true));
        assert!(!needs_second_factor(MfaPolicy::Risky, None, false), "a familiar sign-in is not asked");
        assert!(!needs_second_factor(MfaPolicy::Off, None, true));
        assert!(needs_second_factor(MfaPolicy::Off, Some("x urn:tessera:acr:mfa"), false));
        assert!(!needs_second_factor(MfaPolicy::Risky, Some(ACR_PASSWORD), false));
        assert_eq!(MfaPolicy::parse("required"), Some(MfaPolicy::Required));
        assert_eq!(MfaPolicy::parse("sometimes"), None);
    }
}
