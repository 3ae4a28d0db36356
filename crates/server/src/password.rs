//! The browser's password pages: setting a new password when one is forced (after an administrator or a
//! detection asked for it), and changing it from the account page. Either way the new password must pass
//! the rules ([`crate::passwords::Rules`]), and setting it revokes every session and token of the user in
//! the same transaction and pushes that to the guards; the browser that set it gets a fresh session.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tessera_core::{EventKind, OpaqueSecret, SecretKind, TokenHash};
use tessera_store::{Event, User};
use zeroize::Zeroizing;

use crate::authorize::{open_session, signed_in, throttled_message, with_retry_after};
use crate::mfa::{Challenge, clear_challenge, read_challenge, seal_challenge, start_over};
use crate::notify::Kind;
use crate::oauth::Params;
use crate::web::{self, escape, page, unavailable};
use crate::{AppState, RequestMeta, now, throttle};

/// The fields of a new password, with the browser's autocomplete hints.
fn new_password_fields() -> &'static str {
    "<label>New password <input type=\"password\" name=\"new_password\" autocomplete=\"new-password\" \
     required></label>\
     <label>New password again <input type=\"password\" name=\"new_password_again\" \
     autocomplete=\"new-password\" required></label>"
}

/// The set-new-password form of a forced reset, carrying `challenge` (every factor shown, a new password
/// due) in its sealed cookie.
pub(crate) fn new_password_form(
    state: &AppState,
    csrf: &str,
    challenge: &Challenge,
    error: Option<&str>,
) -> Response {
    let Some(cookie) = seal_challenge(state, challenge) else { return unavailable() };
    let error =
        error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    let body = format!(
        "{error}<p>Your password must be changed before you can go on. Choose a new one of at least {} \
         characters that you do not use anywhere else.</p>\
         <form method=\"post\" action=\"/login/password\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{}\
         <button type=\"submit\">Set the new password</button></form>",
        state.config.passwords.min_length,
        escape(csrf),
        new_password_fields(),
    );
    web::with_cookie(page(StatusCode::OK, "Set a new password", &body), Some(cookie))
}

/// The new password from a form, if both copies match and it passes the rules; else the reason.
async fn chosen(state: &AppState, user: &User, form: &Params) -> Result<Zeroizing<String>, String> {
    let new = Zeroizing::new(form.get("new_password").unwrap_or("").to_owned());
    if form.get("new_password_again") != Some(new.as_str()) {
        return Err("The two new passwords differ.".into());
    }
    state.password_rules.check(&user.username, &new).await.map_err(|why| {
        let mut why = why;
        if let Some(first) = why.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        format!("{why}.")
    })?;
    Ok(new)
}

/// Hashes and stores `new` for `user` (revoking every session and token of theirs), wakes the guards'
/// stream and records `password_changed` with `reason`. `None` if it could not be stored.
async fn store_password(
    state: &AppState,
    meta: &RequestMeta,
    user: &User,
    new: Zeroizing<String>,
    reason: &str,
    now: i64,
) -> Option<i64> {
    let hash = state.passwords.hash(new).await.ok()?;
    let seq = match state.store.set_password(&user.id, &hash, now).await {
        Ok(Some(seq)) => seq,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot store a new password");
            return None;
        }
    };
    state.revocations.wake();
    state.directory.invalidate();
    let text = format!(
        "The password of your account {} was changed. Every session of yours was signed out.\n\n\
         If you did not change it, contact your administrator at once: someone else knows it.",
        user.username
    );
    let reached =
        state.notifier.send(user, Kind::PasswordChanged, "Your password was changed", &text, now).await;
    state
        .event(Event {
            sub: Some(user.id.clone()),
            reason: Some(reason.into()),
            outcome: Some("success".into()),
            detail: Some(serde_json::json!({ "revocation_seq": seq, "notified": reached }).to_string()),
            kind: EventKind::PasswordChanged.name().into(),
            ..meta.event(now)
        })
        .await;
    Some(seq)
}

/// `POST /login/password`: the new password of a forced reset; then the session.
pub async fn forced_reset(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Params::parse(&body).unwrap_or_default();
    let (csrf, set) = web::csrf_token(&state, &headers);
    let now = now();
    let again = |message: &str| start_over(&state, &csrf, set.clone(), message);
    if !web::csrf_ok(&state, &headers, form.get("csrf")) {
        return again("The form expired. Please sign in again.");
    }
    let Some(challenge) = read_challenge(&state, &headers, now).filter(|c| c.p && !c.a.is_empty()) else {
        return again("Your sign-in took too long. Please sign in again.");
    };
    let user = match state.store.user_by_id(&challenge.u).await {
        Ok(Some(user)) if !user.disabled && user.must_reset_password => user,
        Ok(_) => return again("Please sign in again."),
        Err(_) => return unavailable(),
    };
    let new = match chosen(&state, &user, &form).await {
        Ok(new) => new,
        Err(why) => return web::with_cookie(new_password_form(&state, &csrf, &challenge, Some(&why)), set),
    };
    if store_password(&state, &meta, &user, new, "forced_reset", now).await.is_none() {
        return unavailable();
    }
    let response = signed_in(&state, &meta, &headers, &user, challenge.a.clone(), &challenge.r, now).await;
    web::with_cookie(web::with_cookie(response, Some(clear_challenge(&state))), set)
}

/// The change-password form of the account page.
pub(crate) fn change_form(hidden: &str) -> String {
    format!(
        "<h2>Password</h2><form method=\"post\" action=\"/account/password\">{hidden}\
         <label>Current password <input type=\"password\" name=\"current_password\" \
         autocomplete=\"current-password\" required></label>{}\
         <button type=\"submit\">Change the password</button></form>",
        new_password_fields()
    )
}

/// `POST /account/password`: with the current password, a new one. Every other session and token of the
/// user is revoked and the guards hear of it; this browser keeps a fresh session.
pub async fn change(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, form) = match crate::mfa::account_form(&state, &headers, &body).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let now = now();
    let (csrf, set) = web::csrf_token(&state, &headers);
    let return_to = form.get("return").unwrap_or("").to_owned();
    let show = |notice: &str, status: StatusCode| {
        let notice = notice.to_owned();
        let csrf = csrf.clone();
        let return_to = return_to.clone();
        let user = user.clone();
        let state = Arc::clone(&state);
        async move {
            match crate::mfa::account_page(&state, &user, &csrf, &return_to, Some(&notice)).await {
                Ok(mut response) => {
                    *response.status_mut() = status;
                    response
                }
                Err(_) => unavailable(),
            }
        }
    };
    // The current password is checked like a sign-in: throttled first.
    let current = Zeroizing::new(form.get("current_password").unwrap_or("").to_owned());
    let verify = async {
        state.metrics.password_check();
        Ok(state.passwords.verify(Some(&user.password_hash), current).await.then_some(()))
    };
    let reasons = ("login_failure", "wrong_current_password");
    match throttle::checked(&state, &meta, &user, reasons, now, verify).await {
        throttle::Checked::Passed(()) => {}
        throttle::Checked::Wrong => {
            state.metrics.login_failure();
            return web::with_cookie(show("The current password is not right.", StatusCode::OK).await, set);
        }
        throttle::Checked::Refused { wait } => {
            let response = show(&throttled_message(wait), StatusCode::TOO_MANY_REQUESTS).await;
            return web::with_cookie(with_retry_after(response, wait), set);
        }
        throttle::Checked::Unavailable => return unavailable(),
    }
    let new = match chosen(&state, &user, &form).await {
        Ok(new) => new,
        Err(why) => return web::with_cookie(show(&why, StatusCode::OK).await, set),
    };
    if store_password(&state, &meta, &user, new, "self_service", now).await.is_none() {
        return unavailable();
    }
    // Every session was revoked with the change; this browser gets a new one with the same methods.
    let cookie = open_session(&state, &user, session.amr.clone(), now).await;
    let notice = "Your password is changed. Every other session and token of yours was signed out.";
    let response = show(notice, StatusCode::OK).await;
    web::with_cookie(web::with_cookie(response, cookie), set)
}

/// How long a reset link works, seconds.
const RESET_TTL: i64 = 900;

/// `GET /password/forgot`: asks for the username.
pub async fn forgot_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (csrf, set) = web::csrf_token(&state, &headers);
    web::with_cookie(forgot_form(&csrf, None), set)
}

fn forgot_form(csrf: &str, notice: Option<&str>) -> Response {
    let notice = notice.map(|n| format!("<p role=\"status\">{}</p>", escape(n))).unwrap_or_default();
    let body = format!(
        "{notice}<p>Type your username. If the account has an address, a link to set a new password is sent \
         to it; it works once, for 15 minutes.</p>\
         <form method=\"post\" action=\"/password/forgot\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Username <input name=\"username\" autocomplete=\"username\" required autofocus></label>\
         <button type=\"submit\">Send the link</button></form>",
        escape(csrf)
    );
    page(StatusCode::OK, "Forgot your password?", &body)
}

/// `POST /password/forgot`: sends a single-use, 15-minute link to the user's address. The answer is the
/// same whether the account exists, has an address, or was sent a link a minute ago (at most one link a
/// minute per user). Requests are also charged to their source, like failed sign-ins: past the source's
/// free requests it waits (`429` with `Retry-After`), then is locked.
pub async fn forgot(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Params::parse(&body).unwrap_or_default();
    let (csrf, set) = web::csrf_token(&state, &headers);
    if !web::csrf_ok(&state, &headers, form.get("csrf")) {
        return web::with_cookie(forgot_form(&csrf, Some("The form expired. Try again.")), set);
    }
    let now = now();
    // Per source first, across every node: one network cannot ask for links to many accounts.
    match crate::throttle::charge_link(&state, meta.ip.as_deref(), now).await {
        Ok(None) => {}
        Ok(Some(wait)) => {
            state.metrics.login_throttled();
            let message = format!("Too many requests from your network. Try again in {wait} seconds.");
            let mut response = forgot_form(&csrf, Some(&message));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            return web::with_cookie(with_retry_after(response, wait), set);
        }
        Err(_) => return unavailable(),
    }
    let same =
        "If the account exists and has an address, a link is on its way. It works once, for 15 minutes.";
    let user = match state.store.user_by_name(form.get("username").unwrap_or("")).await {
        Ok(Some(user)) if !user.disabled => user,
        Ok(_) => return web::with_cookie(forgot_form(&csrf, Some(same)), set),
        Err(_) => return unavailable(),
    };
    // One link a minute per user, across every node: a flood of requests cannot flood the inbox.
    let recent = state.store.use_once("password_reset", &TokenHash::of(&user.id), now + 60, now).await;
    if !matches!(recent, Ok(true)) || !state.notifier.enabled() || user.email.is_none() {
        return web::with_cookie(forgot_form(&csrf, Some(same)), set);
    }
    let Ok(secret) = crate::crypto::new_secret(SecretKind::PasswordReset) else { return unavailable() };
    if state.store.create_password_reset(&secret.hash(), &user.id, now + RESET_TTL, now).await.is_err() {
        return unavailable();
    }
    let query =
        form_urlencoded::Serializer::new(String::new()).append_pair("token", secret.expose()).finish();
    let link = format!("{}/password/reset?{query}", state.config.issuer);
    let text = format!(
        "Someone asked to set a new password for your account {}.\n\nTo do so, open this link within 15 \
         minutes (it works once):\n\n{link}\n\nIf it was not you, ignore this message: your password stays \
         as it is.",
        user.username
    );
    let reached = state.notifier.send(&user, Kind::PasswordReset, "Set a new password", &text, now).await;
    state
        .event(Event {
            kind: EventKind::PasswordChanged.name().into(),
            sub: Some(user.id.clone()),
            reason: Some("reset_link_sent".into()),
            outcome: Some(if reached.is_empty() { "failure" } else { "success" }.into()),
            detail: Some(
                serde_json::json!({ "link": secret.hash().short(), "notified": reached }).to_string(),
            ),
            ..meta.event(now)
        })
        .await;
    web::with_cookie(forgot_form(&csrf, Some(same)), set)
}

/// The reset link's secret from a query or form, if it is one.
fn reset_secret(value: Option<&str>) -> Option<OpaqueSecret> {
    OpaqueSecret::parse(SecretKind::PasswordReset, value?)
}

fn reset_form(csrf: &str, token: &str, min_length: usize, error: Option<&str>) -> Response {
    let error =
        error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    let body = format!(
        "{error}<p>Choose a new password of at least {min_length} characters that you do not use anywhere \
         else.</p><form method=\"post\" action=\"/password/reset\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"token\" value=\"{}\">{}\
         <button type=\"submit\">Set the new password</button></form>",
        escape(csrf),
        escape(token),
        new_password_fields(),
    );
    page(StatusCode::OK, "Set a new password", &body)
}

fn dead_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Link expired",
        "<p>This link has expired or was already used. <a href=\"/password/forgot\">Ask for a new one</a>.</p>",
    )
}

/// `GET /password/reset?token=…`: the form, for a live link. Opening it spends nothing (mail scanners
/// open links too).
pub async fn reset_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let Some(secret) = reset_secret(params.get("token")) else { return dead_link() };
    match state.store.password_reset(&secret.hash(), now()).await {
        Ok(Some(_)) => {}
        Ok(None) => return dead_link(),
        Err(_) => return unavailable(),
    }
    let (csrf, set) = web::csrf_token(&state, &headers);
    let mut response = reset_form(&csrf, secret.expose(), state.config.passwords.min_length, None);
    // The link's secret is in this page's URL: keep it out of any Referer.
    response
        .headers_mut()
        .insert(axum::http::header::REFERRER_POLICY, axum::http::HeaderValue::from_static("no-referrer"));
    web::with_cookie(response, set)
}

/// `POST /password/reset`: spends the link and sets the new password (revoking every session of the
/// user); the user then signs in, with the second factor if they have one.
pub async fn reset(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Params::parse(&body).unwrap_or_default();
    let (csrf, set) = web::csrf_token(&state, &headers);
    let Some(secret) = reset_secret(form.get("token")) else { return dead_link() };
    let min = state.config.passwords.min_length;
    if !web::csrf_ok(&state, &headers, form.get("csrf")) {
        let response = reset_form(&csrf, secret.expose(), min, Some("The form expired. Try again."));
        return web::with_cookie(response, set);
    }
    let now = now();
    let user = match state.store.password_reset(&secret.hash(), now).await {
        Ok(Some(id)) => match state.store.user_by_id(&id).await {
            Ok(Some(user)) if !user.disabled => user,
            Ok(_) => return dead_link(),
            Err(_) => return unavailable(),
        },
        Ok(None) => return dead_link(),
        Err(_) => return unavailable(),
    };
    let new = match chosen(&state, &user, &form).await {
        Ok(new) => new,
        Err(why) => return web::with_cookie(reset_form(&csrf, secret.expose(), min, Some(&why)), set),
    };
    // Spent now, atomically: of two racing submissions, one sets the password.
    match state.store.use_password_reset(&secret.hash(), now).await {
        Ok(Some(id)) if id == user.id => {}
        Ok(_) => return dead_link(),
        Err(_) => return unavailable(),
    }
    if store_password(&state, &meta, &user, new, "reset_link", now).await.is_none() {
        return unavailable();
    }
    let body = "<p>Your new password is set, and every session of yours was signed out.</p>\
                <p><a href=\"/login\">Sign in</a></p>";
    web::with_cookie(page(StatusCode::OK, "Password set", body), set)
}
