//! The browser side: HTML pages with their security headers, cookies, and CSRF protection.
//!
//! Pages are plain HTML forms that work without JavaScript; only the passkey prompt needs our one script
//! (`/assets/webauthn.js`, the only source the CSP allows). Every page is sent with a strict CSP,
//! `X-Frame-Options: DENY`, `Referrer-Policy: same-origin` and `Cache-Control: no-store`. (`same-origin`,
//! not `no-referrer`: under `no-referrer` browsers send `Origin: null` with the pages' own form posts,
//! which the CSRF check rightly refuses; `same-origin` still tells no other site where the user came
//! from.) CSRF protection is a double submit: a random token in a cookie (`__Host-` prefixed under https)
//! that every form must echo. The session and CSRF cookies are HttpOnly, SameSite=Lax, and Secure when the
//! issuer is https.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tessera_core::{OpaqueSecret, SecretKind, TokenHash};
use tessera_store::{LoginSession, User};

use crate::AppState;
use crate::crypto::random_id;

const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; \
                   img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

/// Escapes text for HTML content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A complete HTML page; `body` must already be escaped.
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Tessera</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}}\
         label{{display:block;margin:.8rem 0}}input{{display:block;width:100%;padding:.4rem;box-sizing:border-box}}\
         button{{padding:.5rem 1.2rem;margin:.3rem .3rem 0 0}}.error{{color:#a00}}</style></head>\
         <body><h1>{title}</h1>\n{body}\n</body></html>\n",
        title = escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The page for a request that failed on our side (the store, randomness): 503, "try again later", and no
/// detail on the wire.
pub fn unavailable() -> Response {
    page(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "<p>Try again later.</p>")
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Cookie names: `__Host-` prefixed under https (which requires Secure, Path=/ and no Domain).
pub fn session_cookie(state: &AppState) -> &'static str {
    if state.config.is_https() { "__Host-tessera_session" } else { "tessera_session" }
}

/// The device cookie: a random id a browser keeps for [`DEVICE_MAX_AGE`], renewed at each sign-in, so that
/// a later sign-in can tell a browser the user signed in from before from a new one (`new_device`). It
/// proves nothing by itself (it is not a credential) and only its hash is recorded.
pub fn device_cookie(state: &AppState) -> &'static str {
    if state.config.is_https() { "__Host-tessera_device" } else { "tessera_device" }
}

/// How long a browser keeps the device cookie: 400 days, the most browsers allow.
pub const DEVICE_MAX_AGE: i64 = 400 * 86_400;

/// The browser's device id (from its cookie, or a new one), its hash prefix for the audit record, and the
/// `Set-Cookie` that keeps it another [`DEVICE_MAX_AGE`]. `None` when no random id can be made: the sign-in
/// then records no device (so `new_device` has nothing to judge), rather than one shared by everyone.
pub fn device(state: &AppState, headers: &HeaderMap) -> Option<(String, HeaderValue)> {
    let known = cookie(headers, device_cookie(state))
        .filter(|v| v.len() == 22 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let id = match known {
        Some(id) => id.to_owned(),
        None => random_id().ok()?,
    };
    let set = set_cookie(state, device_cookie(state), &id, DEVICE_MAX_AGE);
    Some((TokenHash::of(&id).short(), set))
}

fn csrf_cookie(state: &AppState) -> &'static str {
    if state.config.is_https() { "__Host-tessera_csrf" } else { "tessera_csrf" }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure under https; `max_age` 0 deletes it.
pub fn set_cookie(state: &AppState, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.config.is_https() { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("tessera_invalid=1; Max-Age=0"))
}

/// The CSRF token for a form: the request's CSRF cookie, or a new one to set.
pub fn csrf_token(state: &AppState, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, csrf_cookie(state)).filter(|v| v.len() == 22) {
        Some(existing) => (existing.to_owned(), None),
        None => {
            let token = random_id().unwrap_or_default();
            let set = set_cookie(state, csrf_cookie(state), &token, 12 * 3600);
            (token, Some(set))
        }
    }
}

/// Whether a form's `csrf` field matches the CSRF cookie, and the `Origin`, when sent, is the issuer's (or the
/// pages' configured origin).
pub fn csrf_ok(state: &AppState, headers: &HeaderMap, field: Option<&str>) -> bool {
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            // The issuer's origin, or the one the pages are configured to be shown from (`[webauthn]
            // origin`, when a proxy serves them under another name).
            let pages = state.config.webauthn.origin.trim_end_matches('/');
            (state.config.issuer.starts_with(origin) && {
                let rest = &state.config.issuer[origin.len()..];
                rest.is_empty() || rest.starts_with('/')
            }) || (!pages.is_empty() && origin == pages)
        }
    };
    match (cookie(headers, csrf_cookie(state)), field) {
        (Some(cookie), Some(field)) if cookie.len() == 22 => {
            origin_ok && TokenHash::of(cookie).ct_eq(&TokenHash::of(field))
        }
        _ => false,
    }
}

/// Adds a `Set-Cookie` header to a response.
pub fn with_cookie(mut response: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The request's live login session and its user: the cookie names a stored, unrevoked, unexpired session
/// of an enabled user.
pub async fn current_session(
    state: &AppState,
    headers: &HeaderMap,
    now: i64,
) -> Option<(LoginSession, User)> {
    let value = cookie(headers, session_cookie(state))?;
    let secret = OpaqueSecret::parse(SecretKind::LoginSession, value)?;
    let session = state.store.login_session(&secret.hash()).await.ok()??;
    if session.revoked_at.is_some() || session.expires_at <= now {
        return None;
    }
    let user = state.directory.user(&session.user_id).await.ok()??;
    (!user.disabled).then_some((session, user))
}

/// The login form, with an optional error line and the authorization request to return to.
pub fn login_form(csrf: &str, return_to: &str, error: Option<&str>, status: StatusCode) -> Response {
    let error =
        error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    let body = format!(
        "{error}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"return\" value=\"{ret}\">\
         <label>Username <input name=\"username\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Sign in</button></form>",
        csrf = escape(csrf),
        ret = escape(return_to)
    );
    page(status, "Sign in", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_attribute_breakouts() {
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tessera_session=tsl_x; tessera_session_old=2"),
        );
        assert_eq!(cookie(&h, "tessera_session"), Some("tsl_x"));
        assert_eq!(cookie(&h, "tessera"), None);
    }
}
