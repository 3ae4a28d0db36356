//! Second factors in the browser: the code step of a sign-in (and of a step-up for a client that asks for
//! more than the session has), TOTP enrolment with a server-rendered QR code, recovery codes, and the
//! account page that manages them.
//!
//! Between the password and the code, the browser holds a *challenge*: the user, the authorization request
//! to return to and the time, sealed (AES-256-GCM under the key-encryption key) into a short-lived cookie.
//! No session exists until the second factor is shown. Wrong codes are charged to the same throttle counters
//! as wrong passwords, so six digits cannot be guessed by brute force.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tessera_core::TokenHash;
use tessera_core::mfa::{self as factor, RECOVERY_CODES, TOTP_SECRET_BYTES};
use tessera_store::{Event, LoginSession, StoreError, User};

use crate::authorize::{back_to, open_session, signed_in, throttled_message, with_retry_after};
use crate::crypto::random_bytes;
use crate::oauth::Params;
use crate::web::{self, escape, page};
use crate::{AppState, RequestMeta, now, throttle};

/// How long the code step may take after the password, seconds.
const CHALLENGE_TTL: i64 = 300;
/// What the sealed challenge is bound to (associated data).
const CHALLENGE_LABEL: &str = "mfa-challenge";
/// Longest authorization request a challenge carries back (a cookie must stay under 4 KiB).
const MAX_RETURN: usize = 2048;

/// What a session proven with a second factor records (RFC 8176): a password, a one-time code, and so
/// more than one factor.
pub fn mfa_amr() -> Vec<String> {
    vec!["pwd".into(), "otp".into(), "mfa".into()]
}

fn challenge_cookie(state: &AppState) -> &'static str {
    if state.config.is_https() { "__Host-tessera_mfa" } else { "tessera_mfa" }
}

/// The sealed state between the password and what must follow it before a session: the code, a new
/// password (a forced reset), or both.
#[derive(Serialize, Deserialize)]
pub(crate) struct Challenge {
    /// The user.
    pub u: String,
    /// The authorization request to return to.
    pub r: String,
    /// When the password was checked.
    pub t: i64,
    /// A new password must be set before the session (`must_reset_password`).
    #[serde(default)]
    pub p: bool,
    /// The methods shown so far, once every factor the user has was shown (the session's `amr`); empty
    /// while the code is still due.
    #[serde(default)]
    pub a: Vec<String>,
}

/// The `Set-Cookie` carrying `challenge`, sealed.
pub(crate) fn seal_challenge(state: &AppState, challenge: &Challenge) -> Option<HeaderValue> {
    let json = serde_json::to_vec(challenge).ok()?;
    let sealed = state.kek.seal(CHALLENGE_LABEL, &json).ok()?;
    let value = tessera_token::b64::encode(&sealed);
    Some(web::set_cookie(state, challenge_cookie(state), &value, CHALLENGE_TTL))
}

/// Back to the login form with `message`, the challenge removed: a sign-in whose second step cannot go on.
pub(crate) fn start_over(state: &AppState, csrf: &str, set: Option<HeaderValue>, message: &str) -> Response {
    let response = web::login_form(csrf, "", Some(message), StatusCode::BAD_REQUEST);
    web::with_cookie(web::with_cookie(response, Some(clear_challenge(state))), set)
}

/// The `Set-Cookie` that removes the challenge.
pub(crate) fn clear_challenge(state: &AppState) -> HeaderValue {
    web::set_cookie(state, challenge_cookie(state), "", 0)
}

/// The confirmed second factors a user has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Factors {
    /// An authenticator app (TOTP).
    pub totp: bool,
    /// At least one passkey or security key (WebAuthn).
    pub passkeys: bool,
}

impl Factors {
    /// Whether there is any.
    pub fn any(self) -> bool {
        self.totp || self.passkeys
    }
}

/// The user's confirmed second factors.
///
/// # Errors
/// If the store cannot be read.
pub async fn factors(state: &AppState, user_id: &str) -> Result<Factors, StoreError> {
    Ok(Factors {
        totp: state.store.totp_factor(user_id).await?.is_some_and(|f| f.secret_sealed.is_some()),
        passkeys: !state.store.webauthn_credentials(user_id).await?.is_empty(),
    })
}

/// Whether the user has a confirmed second factor.
///
/// # Errors
/// If the store cannot be read.
pub async fn has_factor(state: &AppState, user_id: &str) -> Result<bool, StoreError> {
    Ok(factors(state, user_id).await?.any())
}

/// The second-step form (a code, and the passkey prompt when the user has one), with the challenge
/// cookie for `user_id` (who has just shown the password, or holds a session that needs more) returning to
/// `return_to`. With `reset`, a new password is due after the second factor.
pub fn ask(
    state: &AppState,
    csrf: &str,
    user_id: &str,
    return_to: &str,
    (reset, factors): (bool, Factors),
    now: i64,
) -> Response {
    let return_to = if return_to.len() > MAX_RETURN { "" } else { return_to };
    let challenge =
        Challenge { u: user_id.to_owned(), r: return_to.to_owned(), t: now, p: reset, a: Vec::new() };
    let Some(cookie) = seal_challenge(state, &challenge) else {
        return web::unavailable();
    };
    web::with_cookie(code_form(csrf, factors, None, StatusCode::OK), Some(cookie))
}

/// The second step of a sign-in: the passkey prompt when the user has a passkey, and one field, `code`, for
/// the authenticator app's code or a recovery code.
pub(crate) fn code_form(csrf: &str, factors: Factors, error: Option<&str>, status: StatusCode) -> Response {
    let error =
        error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    let passkey = if factors.passkeys { crate::passkeys::sign_in_prompt(csrf) } else { String::new() };
    let (label, hint) = if factors.totp {
        ("Code from your authenticator app", "Lost your device? Type one of your recovery codes instead.")
    } else {
        ("Recovery code", "Lost your passkey? Type one of your recovery codes.")
    };
    let body = format!(
        "{error}{passkey}<form method=\"post\" action=\"/login/mfa\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>{label} <input name=\"code\" autocomplete=\"one-time-code\" \
         required{autofocus}></label>\
         <p>{hint}</p>\
         <button type=\"submit\">Verify</button></form>",
        csrf = escape(csrf),
        autofocus = if factors.passkeys { "" } else { " autofocus" },
    );
    page(status, "Two-step verification", &body)
}

/// The challenge the browser holds, if it is ours and fresh.
pub(crate) fn read_challenge(state: &AppState, headers: &HeaderMap, now: i64) -> Option<Challenge> {
    let value = web::cookie(headers, challenge_cookie(state))?;
    let sealed = tessera_token::b64::decode(value).ok()?;
    let json = state.kek.open(CHALLENGE_LABEL, &sealed).ok()?;
    let challenge: Challenge = serde_json::from_slice(&json).ok()?;
    (challenge.t <= now && now - challenge.t < CHALLENGE_TTL).then_some(challenge)
}

/// Which second factor `code` is for the user, spent so it cannot be used again: `"totp"` or
/// `"recovery_code"`; `None` for a wrong or already used code.
async fn spend_code(
    state: &AppState,
    user_id: &str,
    code: &str,
    now: i64,
) -> Result<Option<&'static str>, StoreError> {
    if let Some(recovery) = factor::normalize_recovery_code(code) {
        let spent = state.store.use_recovery_code(user_id, &TokenHash::of(&recovery), now).await?;
        return Ok(spent.then_some("recovery_code"));
    }
    let Some(stored) = state.store.totp_factor(user_id).await? else { return Ok(None) };
    let Some(sealed) = stored.secret_sealed else { return Ok(None) };
    let Ok(secret) = state.kek.open(&totp_label(user_id), &sealed) else {
        tracing::warn!("a TOTP secret cannot be opened: sealed under another master key");
        return Ok(None);
    };
    match factor::totp_check(&secret, code, now, stored.last_step) {
        Some(step) => Ok(state.store.use_totp_step(user_id, step).await?.then_some("totp")),
        None => Ok(None),
    }
}

/// The associated data a user's TOTP secret is sealed with: a secret copied to another user's row does not
/// open.
fn totp_label(user_id: &str) -> String {
    format!("totp:{user_id}")
}

/// A `failure_kind`/`success` event of a second factor for `user_id` (`(true, reason)` a success).
pub(crate) fn factor_event(
    meta: &RequestMeta,
    user_id: &str,
    (passed, reason): (bool, &str),
    now: i64,
) -> Event {
    Event {
        kind: if passed { "mfa_success" } else { "mfa_failure" }.into(),
        sub: Some(user_id.to_owned()),
        reason: Some(reason.into()),
        outcome: Some(if passed { "success" } else { "failure" }.into()),
        ..meta.event(now)
    }
}

/// The outcome of a throttled check of a second factor as what follows: the value it passed with, or the
/// response to send (`refuse` with `wrong` for a wrong answer, a throttled one's wait with `429`).
#[allow(
    clippy::result_large_err,
    reason = "the error is the response a handler returns next; boxing it only to unbox it there buys nothing"
)]
pub(crate) fn settle<T>(
    checked: throttle::Checked<T>,
    refuse: impl Fn(&str, StatusCode) -> Response,
    wrong: &str,
) -> Result<T, Response> {
    match checked {
        throttle::Checked::Passed(passed) => Ok(passed),
        throttle::Checked::Wrong => Err(refuse(wrong, StatusCode::OK)),
        throttle::Checked::Refused { wait } => {
            Err(with_retry_after(refuse(&throttled_message(wait), StatusCode::TOO_MANY_REQUESTS), wait))
        }
        throttle::Checked::Unavailable => Err(web::unavailable()),
    }
}

/// A code checked against the throttle and the user's factors, with its events: `Ok` with the method, or
/// the response to send instead.
async fn check_code(
    state: &AppState,
    meta: &RequestMeta,
    user: &User,
    code: &str,
    now: i64,
    refuse: impl Fn(&str, StatusCode) -> Response,
) -> Result<&'static str, Response> {
    let reasons = ("mfa_failure", "wrong_code");
    let checked =
        throttle::checked(state, meta, user, reasons, now, spend_code(state, &user.id, code, now)).await;
    let method = settle(checked, refuse, "That code is not right. Try the current one.")?;
    state.event(factor_event(meta, &user.id, (true, method), now)).await;
    Ok(method)
}

/// A second step of a sign-in under way (a code or a passkey): its challenge, user and factors, and the
/// page's CSRF token.
pub(crate) struct SecondStep {
    pub challenge: Challenge,
    pub user: User,
    pub factors: Factors,
    pub csrf: String,
    pub set: Option<HeaderValue>,
}

impl SecondStep {
    /// The second-step page again, with `message`.
    pub(crate) fn refuse(&self, message: &str, status: StatusCode) -> Response {
        web::with_cookie(code_form(&self.csrf, self.factors, Some(message), status), self.set.clone())
    }
}

/// The second step a form posted to `/login/mfa` or `/login/passkey` continues: a fresh challenge of an
/// enabled user, behind the CSRF check; or the login form to start over.
pub(crate) async fn second_step(
    state: &AppState,
    headers: &HeaderMap,
    form: &Params,
    now: i64,
) -> Result<SecondStep, Response> {
    let (csrf, set) = web::csrf_token(state, headers);
    let expired = |message: &str| start_over(state, &csrf, set.clone(), message);
    if !web::csrf_ok(state, headers, form.get("csrf")) {
        return Err(expired("The form expired. Please sign in again."));
    }
    let Some(challenge) = read_challenge(state, headers, now).filter(|c| c.a.is_empty()) else {
        return Err(expired("Your sign-in took too long. Please sign in again."));
    };
    let user = match state.directory.user(&challenge.u).await {
        Ok(Some(user)) if !user.disabled && user.must_reset_password == challenge.p => user,
        Ok(_) => return Err(expired("Please sign in again.")),
        Err(e) => {
            tracing::warn!(error = %e, "second step: store failure");
            return Err(web::unavailable());
        }
    };
    let Ok(factors) = factors(state, &user.id).await else { return Err(web::unavailable()) };
    Ok(SecondStep { challenge, user, factors, csrf, set })
}

/// `POST /login/mfa`: the code step. On success the session is opened (a step-up ends the weaker one it
/// replaces) and the browser returns to the authorization request.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Params::parse(&body).unwrap_or_default();
    let now = now();
    let step = match second_step(&state, &headers, &form, now).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let code = form.get("code").unwrap_or("");
    if let Err(response) = check_code(&state, &meta, &step.user, code, now, |m, s| step.refuse(m, s)).await {
        return response;
    }
    second_factor_shown(&state, &meta, &headers, step, mfa_amr(), now).await
}

/// After the second step of a sign-in succeeded with `amr`: the new password of a forced reset, or the
/// session (a step-up ends the password-only session this browser held) and back to the authorization
/// request.
pub(crate) async fn second_factor_shown(
    state: &AppState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    step: SecondStep,
    amr: Vec<String>,
    now: i64,
) -> Response {
    let SecondStep { challenge, user, csrf, set, .. } = step;
    if let Some((old, _)) = web::current_session(state, headers, now).await
        && old.user_id == user.id
        && let Err(e) = state.store.end_login_session(&old.hash, "step_up", now).await
    {
        tracing::warn!(error = %e, "cannot end the replaced login session");
    }
    if challenge.p {
        // A forced reset: the new password next, now that every factor was shown.
        let next = Challenge { a: amr, t: now, ..challenge };
        return web::with_cookie(crate::password::new_password_form(state, &csrf, &next, None), set);
    }
    let response = signed_in(state, meta, headers, &user, amr, &challenge.r, now).await;
    web::with_cookie(web::with_cookie(response, Some(clear_challenge(state))), set)
}

/// A new factor was just shown while enrolling it: the session `old` is replaced by one with `amr`. The
/// new session's cookie, or `None` (the old one stays) if it cannot be stored.
pub(crate) async fn upgrade_session(
    state: &AppState,
    user: &User,
    old: &LoginSession,
    amr: Vec<String>,
    now: i64,
) -> Option<HeaderValue> {
    let cookie = open_session(state, user, amr, now).await?;
    if let Err(e) = state.store.end_login_session(&old.hash, "step_up", now).await {
        tracing::warn!(error = %e, "cannot end the replaced login session");
    }
    Some(cookie)
}

/// For a signed-in user whose session has less than the authorization request asks for: the code form
/// (a step-up) when the user has a factor, else the account page to enrol one first.
pub async fn step_up(
    state: &AppState,
    headers: &HeaderMap,
    session: &LoginSession,
    return_to: &str,
    now: i64,
) -> Response {
    let (csrf, set) = web::csrf_token(state, headers);
    match factors(state, &session.user_id).await {
        Ok(factors) if factors.any() => {
            web::with_cookie(ask(state, &csrf, &session.user_id, return_to, (false, factors), now), set)
        }
        Ok(_) => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("return", return_to);
            let location = format!("/account?{}", query.finish());
            let mut response = StatusCode::SEE_OTHER.into_response();
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "step-up: store failure");
            web::unavailable()
        }
    }
}

/// `GET /account`: who is signed in, their second factors, and the forms that manage them.
pub async fn account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let return_to = params.get("return").unwrap_or("");
    let Some((_, user)) = web::current_session(&state, &headers, now()).await else {
        return back_to("");
    };
    let (csrf, set) = web::csrf_token(&state, &headers);
    let response = match account_page(&state, &user, &csrf, return_to, None).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, "account: store failure");
            web::unavailable()
        }
    };
    web::with_cookie(response, set)
}

pub(crate) async fn account_page(
    state: &AppState,
    user: &User,
    csrf: &str,
    return_to: &str,
    notice: Option<&str>,
) -> Result<Response, StoreError> {
    let hidden = format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"return\" value=\"{}\">",
        escape(csrf),
        escape(return_to)
    );
    let notice = notice.map(|n| format!("<p role=\"status\">{}</p>", escape(n))).unwrap_or_default();
    let required = if return_to.is_empty() {
        String::new()
    } else {
        "<p class=\"error\" role=\"alert\">The application you are signing in to requires two-step \
         verification. Set it up to continue.</p>"
            .to_owned()
    };
    let keys = state.store.webauthn_credentials(&user.id).await?;
    let totp = state.store.totp_factor(&user.id).await?.is_some_and(|f| f.secret_sealed.is_some());
    let factors = Factors { totp, passkeys: !keys.is_empty() };
    let status = if factors.any() {
        let left = state.store.recovery_codes_left(&user.id).await?;
        format!("<p>Two-step verification is <b>on</b>. Recovery codes left: {left}.</p>")
    } else {
        format!("{required}<p>Two-step verification is <b>off</b>.</p>")
    };
    let app = if factors.totp {
        format!(
            "<h3>Authenticator app</h3><p>Set up.</p>\
             <form method=\"post\" action=\"/account/recovery-codes\">{hidden}\
             <label>Code from your authenticator app <input name=\"code\" autocomplete=\"one-time-code\" \
             required></label><button type=\"submit\">Make new recovery codes</button></form>"
        )
    } else if factors.passkeys {
        format!(
            "<form method=\"post\" action=\"/account/recovery-codes\">{hidden}<button type=\"submit\">Make \
             new recovery codes</button> (within 5 minutes of signing in with your passkey)</form>\
             <h3>Authenticator app</h3><form method=\"post\" action=\"/account/totp\">{hidden}\
             <button type=\"submit\">Set up an authenticator app</button></form>"
        )
    } else {
        format!(
            "<h3>Authenticator app</h3><form method=\"post\" action=\"/account/totp\">{hidden}\
             <button type=\"submit\">Set up an authenticator app</button></form>"
        )
    };
    let passkeys = crate::passkeys::account_section(state, &keys, &hidden);
    let body = format!(
        "{notice}<p>Signed in as <b>{}</b>.</p><h2>Two-step verification</h2>{status}{passkeys}{app}{}",
        escape(&user.username),
        crate::password::change_form(&hidden)
    );
    Ok(page(StatusCode::OK, "Your account", &body))
}

/// The signed-in user of a form posted to an account page, with the form; or the response to send.
pub(crate) async fn account_form(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(LoginSession, User, Params), Response> {
    let form = Params::parse(body).unwrap_or_default();
    if !web::csrf_ok(state, headers, form.get("csrf")) {
        return Err(page(
            StatusCode::BAD_REQUEST,
            "Request refused",
            "<p>The form expired. Go back and try again.</p>",
        ));
    }
    match web::current_session(state, headers, now()).await {
        Some((session, user)) => Ok((session, user, form)),
        None => Err(back_to("")),
    }
}

/// Like [`account_form`], for a form that adds, replaces or removes a second factor: a user who has one
/// must hold a session proven with one (`mfa` in its `amr`), so that a password alone can neither plant a
/// factor of its own beside the user's nor take the user's away.
pub(crate) async fn factor_form(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(LoginSession, User, Params), Response> {
    let (session, user, form) = account_form(state, headers, body).await?;
    let has = has_factor(state, &user.id).await.map_err(|_| web::unavailable())?;
    if has && !session.amr.iter().any(|m| m == "mfa") {
        return Err(page(
            StatusCode::FORBIDDEN,
            "Your account",
            "<p class=\"error\" role=\"alert\">This session was opened with the password alone. To change \
             your second factors, sign out and sign in again with one of them.</p>",
        ));
    }
    Ok((session, user, form))
}

/// `POST /account/totp`: a new secret to enrol, shown as a QR code, the `otpauth://` URI and the secret
/// itself, with the form that confirms it by a first code.
pub async fn begin_totp(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (_, user, form) = match factor_form(&state, &headers, &body).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let now = now();
    let Ok(random) = random_bytes() else {
        return web::unavailable();
    };
    let secret = &random[..TOTP_SECRET_BYTES];
    let stored = match state.kek.seal(&totp_label(&user.id), secret) {
        Ok(sealed) => state.store.begin_totp(&user.id, &sealed, now).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.0),
    };
    if let Err(e) = stored {
        tracing::warn!(error = %e, "cannot store a TOTP secret being enrolled");
        return web::unavailable();
    }
    let uri = factor::otpauth_uri(&issuer_label(&state), &user.username, secret);
    let (csrf, set) = web::csrf_token(&state, &headers);
    let body = format!(
        "<p>Scan this code with your authenticator app, then type the 6-digit code it shows.</p>\
         <div>{qr}</div>\
         <p>Cannot scan? Enter this key: <code>{key}</code></p>\
         <p><small>Or open <a href=\"{uri}\">{uri_text}</a></small></p>\
         <form method=\"post\" action=\"/account/totp/confirm\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"return\" value=\"{ret}\">\
         <label>Code <input name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" required autofocus></label>\
         <button type=\"submit\">Turn on two-step verification</button></form>",
        qr = qr_svg(&uri),
        key = escape(&factor::base32(secret)),
        uri = escape(&uri),
        uri_text = escape(&uri),
        csrf = escape(&csrf),
        ret = escape(form.get("return").unwrap_or("")),
    );
    web::with_cookie(page(StatusCode::OK, "Set up an authenticator app", &body), set)
}

/// What authenticator apps show as the account's issuer: the issuer's host.
fn issuer_label(state: &AppState) -> String {
    let host = state.config.issuer.split("://").nth(1).unwrap_or(&state.config.issuer);
    format!("Tessera {}", host.split('/').next().unwrap_or(host))
}

/// The QR code of `text` as inline SVG (no script, no external asset: the page's CSP allows it).
fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .quiet_zone(true)
                .build();
            // Inline in HTML: without the XML declaration.
            match svg.find("<svg") {
                Some(start) => svg[start..].to_owned(),
                None => svg,
            }
        }
        Err(_) => "<p>(The QR code cannot be drawn; enter the key below.)</p>".to_owned(),
    }
}

/// `POST /account/totp/confirm`: the first code puts the secret in use; the recovery codes are shown once,
/// and the session is upgraded to a two-factor one.
pub async fn confirm_totp(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, form) = match factor_form(&state, &headers, &body).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let now = now();
    let return_to = form.get("return").unwrap_or("").to_owned();
    let (csrf, set) = web::csrf_token(&state, &headers);
    let pending = match state.store.totp_factor(&user.id).await {
        Ok(found) => found.and_then(|f| f.pending_sealed),
        Err(_) => return web::unavailable(),
    };
    let secret = pending.and_then(|sealed| state.kek.open(&totp_label(&user.id), &sealed).ok());
    let step = secret.as_ref().and_then(|s| factor::totp_check(s, form.get("code").unwrap_or(""), now, 0));
    let Some(step) = step else {
        state.event(factor_event(&meta, &user.id, (false, "enrolment_code"), now)).await;
        let message = "That code did not match. Set up the app again and type the code it shows.";
        return match account_page(&state, &user, &csrf, &return_to, Some(message)).await {
            Ok(response) => web::with_cookie(response, set),
            Err(_) => web::unavailable(),
        };
    };
    let Some((codes, hashes)) = new_recovery_codes() else { return web::unavailable() };
    match state.store.confirm_totp(&user.id, step, &hashes, now).await {
        Ok(true) => {}
        Ok(false) | Err(_) => return web::unavailable(),
    }
    state.event(factor_event(&meta, &user.id, (true, "totp_enrolled"), now)).await;
    // The code just typed proves the factor: the session becomes a two-factor one.
    let cookie = upgrade_session(&state, &user, &session, mfa_amr(), now).await;
    let response = recovery_page(&codes, &return_to, "Two-step verification is on.");
    web::with_cookie(web::with_cookie(response, cookie), set)
}

/// `POST /account/recovery-codes`: with a current code, replaces every recovery code with 10 new ones,
/// shown once.
pub async fn regenerate_recovery_codes(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, form) = match account_form(&state, &headers, &body).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let now = now();
    let return_to = form.get("return").unwrap_or("").to_owned();
    let (_, set) = web::csrf_token(&state, &headers);
    let Ok(factors) = factors(&state, &user.id).await else { return web::unavailable() };
    let refuse = |message: &str, status: StatusCode| {
        let body = format!(
            "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"/account\">Back</a></p>",
            escape(message)
        );
        web::with_cookie(page(status, "Your account", &body), set.clone())
    };
    if !factors.totp {
        // Passkeys only: the key itself must have been shown in the last few minutes (a session's own
        // sign-in, or the key's registration); a recovery code cannot mint more recovery codes.
        let by_key = session.amr.iter().any(|m| m == "hwk" || m == "swk");
        let fresh = by_key && now - session.auth_time <= CHALLENGE_TTL;
        if !factors.passkeys || !fresh {
            let message = "Sign in again with your passkey, then make new recovery codes within 5 minutes.";
            return refuse(message, StatusCode::FORBIDDEN);
        }
        return replace_recovery_codes(&state, &meta, &user, &return_to, now, set).await;
    }
    let code = form.get("code").unwrap_or("");
    // Only a current authenticator code: a recovery code cannot mint more recovery codes.
    if factor::normalize_recovery_code(code).is_some() {
        return web::with_cookie(
            page(
                StatusCode::OK,
                "Your account",
                "<p class=\"error\">Type the code from your authenticator app.</p>",
            ),
            set,
        );
    }
    if let Err(response) = check_code(&state, &meta, &user, code, now, refuse).await {
        return response;
    }
    replace_recovery_codes(&state, &meta, &user, &return_to, now, set).await
}

/// Replaces every recovery code of `user` with ten new ones and shows them, once.
async fn replace_recovery_codes(
    state: &AppState,
    meta: &RequestMeta,
    user: &User,
    return_to: &str,
    now: i64,
    set: Option<HeaderValue>,
) -> Response {
    let Some((codes, hashes)) = new_recovery_codes() else {
        return web::unavailable();
    };
    if state.store.replace_recovery_codes(&user.id, &hashes, now).await.is_err() {
        return web::unavailable();
    }
    state.event(factor_event(meta, &user.id, (true, "recovery_codes_replaced"), now)).await;
    web::with_cookie(
        recovery_page(&codes, return_to, "New recovery codes are ready; the old ones no longer work."),
        set,
    )
}

/// Ten new recovery codes and their hashes.
/// Enrols `secret` as the user's authenticator app, as a confirmed enrolment would, with 10 new recovery
/// codes (returned, to be shown once): for provisioning users from elsewhere (and `tessera demo`).
///
/// # Errors
/// If the secret cannot be sealed or the store fails.
pub async fn provision_totp(
    state: &AppState,
    user_id: &str,
    secret: &[u8],
    now: i64,
) -> Result<Vec<String>, String> {
    let sealed = state.kek.seal(&totp_label(user_id), secret).map_err(|e| e.to_string())?;
    state.store.begin_totp(user_id, &sealed, now).await.map_err(|e| e.to_string())?;
    let (codes, hashes) = new_recovery_codes().ok_or("the system random source failed")?;
    // The step before now's counts as used: the first code accepted is the current one.
    let step = factor::totp_step(now) - 2;
    if !state.store.confirm_totp(user_id, step, &hashes, now).await.map_err(|e| e.to_string())? {
        return Err("the enrolment was not confirmed".into());
    }
    Ok(codes)
}

pub(crate) fn new_recovery_codes() -> Option<(Vec<String>, Vec<TokenHash>)> {
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let random = random_bytes().ok()?;
        let mut ten = [0u8; 10];
        ten.copy_from_slice(&random[..10]);
        codes.push(factor::recovery_code(&ten));
    }
    let hashes = codes.iter().map(|c| TokenHash::of(c)).collect();
    Some((codes, hashes))
}

/// The recovery codes, shown this once, and the way on.
pub(crate) fn recovery_page(codes: &[String], return_to: &str, headline: &str) -> Response {
    let list: String = codes.iter().map(|c| format!("<li><code>{}</code></li>", escape(c))).collect();
    let next = if return_to.is_empty() { "/account".to_owned() } else { format!("/authorize?{return_to}") };
    let body = format!(
        "<p role=\"status\">{}</p><p>Keep these recovery codes somewhere safe. Each signs you in once if \
         you lose your device. They are shown only now.</p><ol class=\"recovery-codes\">{list}</ol>\
         <p><a href=\"{}\">Continue</a></p>",
        escape(headline),
        escape(&next)
    );
    page(StatusCode::OK, "Recovery codes", &body)
}
