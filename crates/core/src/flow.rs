//! The OAuth flows' decisions, as pure functions: which audience and scope a request gets, whether a PKCE
//! verifier matches, and what a presented refresh token means (rotate, retry, or theft).

use std::collections::BTreeSet;

use aws_lc_rs::digest;
use tessera_token::b64;

/// Why a request cannot be granted; each maps to one RFC error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowError {
    /// `invalid_target` (RFC 8707): no acceptable audience.
    InvalidTarget,
    /// `invalid_scope`: a scope outside what is allowed.
    InvalidScope,
}

/// Picks the single audience of a token: the one `resource` requested, which the client must be allowed; or,
/// with none requested, the client's only allowed audience.
///
/// # Errors
/// [`FlowError::InvalidTarget`] for several resources, a resource the client may not use, or no resource
/// when the client has several (or no) audiences.
pub fn select_audience(requested: &[&str], allowed: &[String]) -> Result<String, FlowError> {
    match (requested, allowed) {
        ([one], _) if allowed.iter().any(|a| a == one) => Ok((*one).to_owned()),
        ([], [only]) => Ok(only.clone()),
        _ => Err(FlowError::InvalidTarget),
    }
}

/// The scope to grant: the requested scopes if every one is in each of `allowed` (the client's, the
/// resource's, …); with nothing requested, every scope all of them allow. Returned space-separated, sorted,
/// without duplicates.
///
/// # Errors
/// [`FlowError::InvalidScope`] if any requested scope is not allowed.
pub fn grant_scope(requested: Option<&str>, allowed: &[&[String]]) -> Result<String, FlowError> {
    let candidates = allowed.first().copied().unwrap_or_default();
    choose_scope(requested, candidates, |s| allowed.iter().all(|set| set.iter().any(|a| a == s)))
}

/// The requested scopes if each is `permitted`, else every permitted one of `candidates`; sorted, unique,
/// space-separated.
fn choose_scope(
    requested: Option<&str>,
    candidates: &[String],
    permitted: impl Fn(&str) -> bool,
) -> Result<String, FlowError> {
    let chosen: BTreeSet<&str> = match requested {
        Some(text) => {
            let wanted: BTreeSet<&str> = text.split(' ').filter(|s| !s.is_empty()).collect();
            if !wanted.iter().all(|s| permitted(s)) {
                return Err(FlowError::InvalidScope);
            }
            wanted
        }
        None => candidates.iter().map(String::as_str).filter(|s| permitted(s)).collect(),
    };
    Ok(chosen.into_iter().collect::<Vec<_>>().join(" "))
}

/// The OpenID Connect scopes: about the user, not about any resource, so no resource has to define them.
pub const OIDC_SCOPES: &[&str] = &["openid", "profile", "offline_access"];

/// The scope of a user's authorization: each requested scope must be allowed to the client, and unless it
/// is an OIDC scope, defined by the token's resource (with no resource, only OIDC scopes can be granted).
/// With nothing requested, every scope that would pass.
///
/// # Errors
/// [`FlowError::InvalidScope`] if any requested scope fails.
pub fn grant_user_scope(
    requested: Option<&str>,
    client_scopes: &[String],
    resource_scopes: Option<&[String]>,
) -> Result<String, FlowError> {
    choose_scope(requested, client_scopes, |s| {
        client_scopes.iter().any(|c| c == s)
            && (OIDC_SCOPES.contains(&s) || resource_scopes.is_some_and(|r| r.iter().any(|x| x == s)))
    })
}

/// Narrows a granted scope on refresh: the requested scopes must all be in `granted`; none requested keeps
/// `granted`.
///
/// # Errors
/// [`FlowError::InvalidScope`] if the request asks for anything not granted before.
pub fn narrow_scope(requested: Option<&str>, granted: &str) -> Result<String, FlowError> {
    let granted_set: Vec<String> = granted.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    grant_scope(requested.or(Some(granted)), &[&granted_set])
}

/// Whether a scope string contains `scope`.
pub fn has_scope(scopes: &str, scope: &str) -> bool {
    scopes.split(' ').any(|s| s == scope)
}

/// Whether `challenge` is a well-formed S256 challenge (43 base64url characters, RFC 7636 §4.2).
pub fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43 && b64::decode(challenge).is_ok_and(|raw| raw.len() == 32)
}

/// Whether `jkt` is a well-formed RFC 7638 SHA-256 thumbprint (43 base64url characters), as the
/// authorization request's `dpop_jkt` must be (RFC 9449 §10).
pub fn is_thumbprint(jkt: &str) -> bool {
    is_s256_challenge(jkt)
}

/// Checks a PKCE verifier against an S256 challenge (RFC 7636 §4.6). The verifier must be 43–128 characters
/// of the unreserved set.
pub fn verify_pkce(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let computed = b64::encode(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref());
    // The challenge is not secret (it travelled through the browser); equality is enough.
    computed == challenge
}

/// What the refresh grant must do with a presented refresh token that exists and whose family is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Never rotated: rotate it now.
    Rotate,
    /// Rotated moments ago and its successor is unused: a retry by a client that lost the answer. Return the
    /// same successor.
    ReturnSuccessor,
    /// Anything else: a rotated token presented again. Treat as theft and revoke the family.
    Reuse,
}

/// Decides what a presented refresh token means (DESIGN §3). A `retry_window` of 0 disables retries. The
/// window is measured both ways: a request that read the clock just before the winner (or on a node whose
/// clock is slightly behind) is a retry too. `rotated_at` is when it was rotated, if it was;
/// `successor_unused` whether its successor has not been rotated in turn. The caller has already checked the
/// client binding (a token presented by another client never gets here as a retry).
pub fn refresh_decision(
    rotated_at: Option<i64>,
    successor_unused: bool,
    now: i64,
    retry_window: i64,
) -> RefreshDecision {
    match rotated_at {
        None => RefreshDecision::Rotate,
        Some(at) if retry_window > 0 && successor_unused && (now - at).abs() <= retry_window => {
            RefreshDecision::ReturnSuccessor
        }
        Some(_) => RefreshDecision::Reuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn audience_is_the_single_allowed_resource() {
        let allowed = v(&["https://a", "https://b"]);
        assert_eq!(select_audience(&["https://a"], &allowed), Ok("https://a".into()));
        assert_eq!(select_audience(&["https://c"], &allowed), Err(FlowError::InvalidTarget));
        assert_eq!(select_audience(&["https://a", "https://b"], &allowed), Err(FlowError::InvalidTarget));
        assert_eq!(select_audience(&[], &allowed), Err(FlowError::InvalidTarget));
        assert_eq!(select_audience(&[], &v(&["https://a"])), Ok("https://a".into()));
        assert_eq!(select_audience(&[], &[]), Err(FlowError::InvalidTarget));
    }

    #[test]
    fn scope_must_be_allowed_by_every_party() {
        let client = v(&["openid", "orders:read", "orders:write"]);
        let resource = v(&["orders:read", "orders:write", "admin"]);
        assert_eq!(grant_scope(Some("orders:read"), &[&client, &resource]), Ok("orders:read".into()));
        assert_eq!(grant_scope(Some("admin"), &[&client, &resource]), Err(FlowError::InvalidScope));
        assert_eq!(grant_scope(None, &[&client, &resource]), Ok("orders:read orders:write".into()));
        assert_eq!(
            grant_scope(Some("orders:write  orders:read orders:read"), &[&client]),
            Ok("orders:read orders:write".into())
        );
    }

    #[test]
    fn user_scope_needs_the_client_and_for_api_scopes_the_resource() {
        let client = v(&["openid", "profile", "orders:read", "admin"]);
        let resource = v(&["orders:read", "orders:write"]);
        assert_eq!(
            grant_user_scope(Some("openid orders:read"), &client, Some(&resource)),
            Ok("openid orders:read".into())
        );
        assert_eq!(
            grant_user_scope(Some("orders:write"), &client, Some(&resource)),
            Err(FlowError::InvalidScope)
        );
        assert_eq!(grant_user_scope(Some("admin"), &client, Some(&resource)), Err(FlowError::InvalidScope));
        assert_eq!(grant_user_scope(Some("orders:read"), &client, None), Err(FlowError::InvalidScope));
        assert_eq!(grant_user_scope(None, &client, Some(&resource)), Ok("openid orders:read profile".into()));
        assert_eq!(grant_user_scope(None, &client, None), Ok("openid profile".into()));
    }

    #[test]
    fn refresh_scope_can_only_narrow() {
        assert_eq!(narrow_scope(Some("a"), "a b"), Ok("a".into()));
        assert_eq!(narrow_scope(None, "b a"), Ok("a b".into()));
        assert_eq!(narrow_scope(Some("a c"), "a b"), Err(FlowError::InvalidScope));
    }

    #[test]
    fn pkce_s256_matches_the_rfc_7636_example_and_nothing_else() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_s256_challenge(challenge));
        assert!(verify_pkce(verifier, challenge));
        assert!(!verify_pkce("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj", challenge));
        assert!(!verify_pkce(challenge, challenge), "the challenge itself is not a verifier for it");
        assert!(!verify_pkce("short", challenge));
        assert!(!is_s256_challenge("plain-challenge"));
    }

    #[test]
    fn refresh_retry_inside_the_window_gets_the_successor_and_anything_else_is_reuse() {
        use RefreshDecision::*;
        assert_eq!(refresh_decision(None, true, 100, 10), Rotate);
        assert_eq!(refresh_decision(Some(95), true, 100, 10), ReturnSuccessor);
        assert_eq!(refresh_decision(Some(90), true, 100, 10), ReturnSuccessor);
        assert_eq!(refresh_decision(Some(89), true, 100, 10), Reuse, "outside the window");
        assert_eq!(refresh_decision(Some(99), false, 100, 10), Reuse, "the successor was used already");
        assert_eq!(refresh_decision(Some(99), true, 100, 0), Reuse, "window disabled");
        assert_eq!(refresh_decision(Some(100), true, 100, 0), Reuse, "window disabled, same second");
        assert_eq!(
            refresh_decision(Some(101), true, 100, 10),
            ReturnSuccessor,
            "a racing request that read the clock a second earlier than the winner is still a retry"
        );
    }
}

/// Whether a redirect URI may be registered (OAuth 2.1 §2.3.1, RFC 9700 §4.1): an absolute `https` URI, or
/// `http` on a loopback host for native apps, or a private-use scheme (`com.example.app:/cb`); never a
/// fragment.
pub fn is_registrable_redirect_uri(uri: &str) -> bool {
    if uri.contains('#') || uri.contains(char::is_whitespace) || uri.is_empty() {
        return false;
    }
    if let Some(rest) = uri.strip_prefix("https://") {
        return !rest.is_empty() && !rest.starts_with('/');
    }
    if let Some(rest) = uri.strip_prefix("http://") {
        let host = rest.split(['/', '?']).next().unwrap_or("");
        let host = host
            .rsplit_once(':')
            .map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
        return matches!(host, "127.0.0.1" | "[::1]" | "localhost");
    }
    // Private-use scheme: reverse-domain with a dot, per RFC 8252 §7.1.
    match uri.split_once(':') {
        Some((scheme, rest)) => {
            scheme.contains('.')
                && !rest.is_empty()
                && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
        }
        None => false,
    }
}

/// Whether `given` is one of the `registered` redirect URIs: an exact match, except that a loopback IP
/// redirect (`http://127.0.0.1` or `http://[::1]`) matches on any port (RFC 8252 §7.3: native apps listen on
/// an ephemeral port).
pub fn redirect_uri_matches(registered: &[String], given: &str) -> bool {
    registered.iter().any(|r| {
        r == given || matches!((loopback_parts(r), loopback_parts(given)), (Some(a), Some(b)) if a == b)
    })
}

/// `(host, path-and-query)` of a loopback IP `http` URI, without its port.
fn loopback_parts(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("http://")?;
    let host = ["127.0.0.1", "[::1]"].into_iter().find(|h| rest.starts_with(h))?;
    let after = &rest[host.len()..];
    let after = match after.strip_prefix(':') {
        Some(port) => {
            let digits = port.find(|c: char| !c.is_ascii_digit()).unwrap_or(port.len());
            if digits == 0 {
                return None;
            }
            &port[digits..]
        }
        None => after,
    };
    (after.is_empty() || after.starts_with('/') || after.starts_with('?')).then_some((host, after))
}

#[cfg(test)]
mod redirect_tests {
    use super::is_registrable_redirect_uri as ok;

    #[test]
    fn redirect_uris_match_exactly_except_a_loopback_port() {
        use super::redirect_uri_matches as matches;
        let reg = vec!["https://app.example/cb".to_owned(), "http://127.0.0.1/cb".to_owned()];
        assert!(matches(&reg, "https://app.example/cb"));
        assert!(!matches(&reg, "https://app.example/cb/"));
        assert!(!matches(&reg, "https://app.example:8443/cb"), "only loopback ports are free");
        assert!(matches(&reg, "http://127.0.0.1:51234/cb"));
        assert!(matches(&reg, "http://127.0.0.1/cb"));
        assert!(!matches(&reg, "http://127.0.0.1:51234/other"));
        assert!(!matches(&reg, "http://127.0.0.1.evil.example/cb"));
        assert!(!matches(&reg, "http://127.0.0.1:/cb"));
        assert!(!matches(&reg, "http://[::1]:5000/cb"), "another host");
        assert!(!matches(&["http://localhost/cb".to_owned()], "http://localhost:5000/cb"), "names are exact");
    }

    #[test]
    fn only_https_loopback_http_and_private_schemes_register() {
        assert!(ok("https://app.example/cb"));
        assert!(ok("http://127.0.0.1:8765/cb"));
        assert!(ok("http://localhost/cb"));
        assert!(ok("com.example.app:/oauth2redirect"));
        assert!(!ok("http://app.example/cb"), "plain http off loopback");
        assert!(!ok("https://app.example/cb#frag"));
        assert!(!ok("javascript:alert(1)"));
        assert!(!ok("https://"));
        assert!(!ok("http://localhost.evil.example/cb"));
    }
}
