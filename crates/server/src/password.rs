//! The browser's password pages: setting a new password when one is forced (after an administrator or a
//! detection asked for it), and changing it from the account page. Either way the new password must pass
//! the rules ([`crate::passwords::Rules`]), and setting it revokes every session and token of the user in
//! the same transaction and pushes that to the guards; the browser that set it gets a fresh session.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tessera_core::EventKind;
use tessera_store::{Event, User};
use zeroize::Zeroizing;

use crate::authorize::{open_session, signed_in, throttled_message, with_retry_after};
use crate::mfa::{Challenge, clear_challenge, read_challenge, seal_challenge};
use crate::oauth::Params;
use crate::web::{self, escape, page};
use crate::{AppState, RequestMeta, now, throttle};

fn unavailable() -> Response {
    page(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "<p>Try again later.</p>")
}

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
    state
        .event(Event {
            sub: Some(user.id.clone()),
            reason: Some(reason.into()),
            outcome: Some("success".into()),
            detail: Some(serde_json::json!({ "revocation_seq": seq }).to_string()),
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
    let again = |message: &str| {
        let response = web::login_form(&csrf, "", Some(message), StatusCode::BAD_REQUEST);
        web::with_cookie(web::with_cookie(response, Some(clear_challenge(&state))), set.clone())
    };
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
    let keys = throttle::Keys::new(&state, &user.username, meta.ip.as_deref());
    let failed = |reason: &str| Event {
        kind: "login_failure".into(),
        sub: Some(user.id.clone()),
        reason: Some(reason.into()),
        outcome: Some("failure".into()),
        detail: Some(
            serde_json::json!({ "username_pseudonym": state.kek.pseudonym(&user.username) }).to_string(),
        ),
        ..meta.event(now)
    };
    let locks = match throttle::admit(&state, &keys, now).await {
        Ok(throttle::Gate::Check { account_locks, source_locks }) => (account_locks, source_locks),
        Ok(throttle::Gate::Refused { retry_at }) => {
            state.metrics.login_throttled();
            state.event(failed("throttled")).await;
            let response = show(&throttled_message(retry_at - now), StatusCode::TOO_MANY_REQUESTS).await;
            return web::with_cookie(with_retry_after(response, retry_at - now), set);
        }
        Err(_) => return unavailable(),
    };
    state.metrics.password_check();
    let current = Zeroizing::new(form.get("current_password").unwrap_or("").to_owned());
    if !state.passwords.verify(Some(&user.password_hash), current).await {
        state.metrics.login_failure();
        let event = failed("wrong_current_password");
        state.event(event.clone()).await;
        crate::authorize::record_locks(&state, event, locks, now).await;
        return web::with_cookie(show("The current password is not right.", StatusCode::OK).await, set);
    }
    throttle::passed(&state, &keys).await;
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
