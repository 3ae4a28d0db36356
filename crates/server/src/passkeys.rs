//! Passkeys and security keys (WebAuthn, through `webauthn-rs`) as a second factor: registration on the
//! account page, and the second step of a sign-in beside the code.
//!
//! Each ceremony's state stays on the server, in the store, under the hash of a random handle, for five
//! minutes, and is taken once: a signed challenge answers one ceremony only, on any node. User verification
//! is required. The signature counter is kept, and an assertion whose counter goes back (a cloned key) is
//! refused by `webauthn-rs`. A failed assertion is charged to the sign-in throttle like a wrong code.
//!
//! The browser side is one small script of our own (`/assets/webauthn.js`), the only script the pages
//! load: it fetches the options, calls `navigator.credentials`, and posts the answer with the form.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tessera_core::TokenHash;
use tessera_store::{Event, StoreError, User, WebauthnCredential};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    Url, Uuid, Webauthn, WebauthnBuilder,
};

use crate::mfa::{self, account_page, factor_event, factor_form};
use crate::oauth::Params;
use crate::web::{self, escape};
use crate::{AppState, RequestMeta, now, throttle};

/// How long a ceremony may take, from the options to the answer.
const CEREMONY_TTL: i64 = 300;
const REGISTER: &str = "register";
const AUTHENTICATE: &str = "authenticate";
/// Longest name a user may give a passkey, in characters.
const MAX_NAME: usize = 64;

/// The relying party (`[webauthn]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebauthnConfig {
    /// The relying party id: the domain passkeys are bound to. Empty: the origin's host. Passkeys are off
    /// when the origin's host is an IP address and no id is set (browsers refuse IP addresses).
    pub rp_id: String,
    /// The origin browsers show the pages from, such as `https://id.example.com`. Empty: the issuer's.
    pub origin: String,
    /// The name authenticators show.
    pub rp_name: String,
}

impl Default for WebauthnConfig {
    fn default() -> Self {
        WebauthnConfig { rp_id: String::new(), origin: String::new(), rp_name: "Tessera".into() }
    }
}

/// The relying party for `config`, with `issuer` as the default origin; `None` when passkeys are off
/// (an IP-address origin and no `rp_id`).
///
/// # Errors
/// A message naming the key at fault: an origin that is no URL, or an id that is not the origin's host or
/// a parent domain of it.
pub fn relying_party(issuer: &str, config: &WebauthnConfig) -> Result<Option<Webauthn>, String> {
    let origin = if config.origin.is_empty() { issuer } else { config.origin.as_str() };
    let origin = Url::parse(origin).map_err(|e| format!("webauthn.origin: {e}"))?;
    let rp_id = if config.rp_id.is_empty() {
        match origin.domain() {
            Some(domain) => domain.to_owned(),
            None => return Ok(None),
        }
    } else {
        config.rp_id.clone()
    };
    let name = if config.rp_name.is_empty() { "Tessera" } else { config.rp_name.as_str() };
    WebauthnBuilder::new(&rp_id, &origin)
        .map_err(|_| {
            format!("webauthn.rp_id: {rp_id} is neither the origin's host nor a parent domain of it")
        })?
        .rp_name(name)
        .build()
        .map(Some)
        .map_err(|e| format!("webauthn: {e}"))
}

/// The WebAuthn user handle of `user_id`: the id itself when it is a UUID, else a UUID drawn from its hash.
/// Stable, and says nothing about the username.
fn user_handle(user_id: &str) -> Uuid {
    Uuid::parse_str(user_id).unwrap_or_else(|_| {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&TokenHash::of(user_id).as_bytes()[..16]);
        Uuid::from_bytes(bytes)
    })
}

/// The id under which a credential is stored: its WebAuthn credential id, base64url.
fn credential_id(passkey: &Passkey) -> String {
    tessera_token::b64::encode(passkey.cred_id().as_ref())
}

/// The user's passkeys with their records. A record that no longer parses is left out (and logged).
async fn passkeys(state: &AppState, user_id: &str) -> Result<Vec<(WebauthnCredential, Passkey)>, StoreError> {
    let records = state.store.webauthn_credentials(user_id).await?;
    Ok(records
        .into_iter()
        .filter_map(|record| match serde_json::from_str::<Passkey>(&record.credential) {
            Ok(passkey) => Some((record, passkey)),
            Err(e) => {
                tracing::warn!(error = %e, "a stored passkey does not parse; it is not offered");
                None
            }
        })
        .collect())
}

/// A JSON answer for the script: `{"handle", "options"}`, or `{"error"}` with `status`.
fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_error(status: StatusCode, error: &str) -> Response {
    json(status, &serde_json::json!({ "error": error }))
}

/// Keeps `ceremony` for `user_id` and answers the script with its handle and `options`.
async fn begin(
    state: &AppState,
    user_id: &str,
    purpose: &str,
    ceremony: &impl Serialize,
    options: &impl Serialize,
    now: i64,
) -> Response {
    let (Ok(handle), Ok(kept)) = (crate::crypto::random_id(), serde_json::to_string(ceremony)) else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    };
    let hash = TokenHash::of(&handle);
    if let Err(e) =
        state.store.put_webauthn_ceremony(&hash, user_id, purpose, &kept, now + CEREMONY_TTL, now).await
    {
        tracing::warn!(error = %e, "passkeys: cannot keep a ceremony");
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    }
    json(StatusCode::OK, &serde_json::json!({ "handle": handle, "options": options }))
}

/// Takes the live ceremony `handle` of `user_id` for `purpose`: its state, or `None` (unknown, expired,
/// answered already, another user's, or for something else).
async fn take<T: for<'de> Deserialize<'de>>(
    state: &AppState,
    handle: &str,
    user_id: &str,
    purpose: &str,
    now: i64,
) -> Result<Option<T>, StoreError> {
    if handle.is_empty() {
        return Ok(None);
    }
    let taken = state.store.take_webauthn_ceremony(&TokenHash::of(handle), now).await?;
    Ok(taken
        .filter(|(owner, kind, _)| owner == user_id && kind == purpose)
        .and_then(|(_, _, kept)| serde_json::from_str(&kept).ok()))
}

/// The passkey prompt of the sign-in's second step: a button the script turns into the WebAuthn request,
/// and the form that carries the answer to `POST /login/passkey`.
pub(crate) fn sign_in_prompt(csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/login/passkey\" data-webauthn=\"get\" \
         data-start=\"/login/passkey/start\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"handle\"><input type=\"hidden\" name=\"credential\">\
         <button type=\"button\" autofocus>Use your passkey or security key</button>\
         <p role=\"status\"></p></form><p>Or:</p><script src=\"/assets/webauthn.js\" defer></script>",
        escape(csrf)
    )
}

/// The passkeys part of the account page: the user's passkeys, each with a remove button, and the form
/// that adds one (when passkeys are on).
pub(crate) fn account_section(state: &AppState, keys: &[WebauthnCredential], hidden: &str) -> String {
    let mut html = String::from("<h3>Passkeys and security keys</h3>");
    if keys.is_empty() {
        html.push_str("<p>None yet.</p>");
    } else {
        html.push_str("<ul class=\"passkeys\">");
        for key in keys {
            let used =
                key.last_used_at.map_or_else(|| "never used".to_owned(), |t| format!("last used {}", day(t)));
            html.push_str(&format!(
                "<li><b>{}</b>, added {}, {used}<form method=\"post\" action=\"/account/passkeys/remove\">\
                 {hidden}<input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\">Remove</button>\
                 </form></li>",
                escape(&key.name),
                day(key.created_at),
                escape(&key.id),
            ));
        }
        html.push_str("</ul>");
    }
    if state.webauthn.is_some() {
        html.push_str(&format!(
            "<form method=\"post\" action=\"/account/passkeys\" data-webauthn=\"create\" \
             data-start=\"/account/passkeys/start\">{hidden}<input type=\"hidden\" name=\"handle\">\
             <input type=\"hidden\" name=\"credential\"><label>Name <input name=\"name\" maxlength=\"{MAX_NAME}\" \
             placeholder=\"Laptop\"></label><button type=\"button\">Add a passkey or security key</button>\
             <p role=\"status\"></p></form><script src=\"/assets/webauthn.js\" defer></script>"
        ));
    }
    html
}

/// `t` (Unix seconds) as a UTC day, `YYYY-MM-DD` (the civil-from-days algorithm of H. Hinnant's
/// `chrono`-compatible date library; a page needs nothing more).
fn day(t: i64) -> String {
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `POST /account/passkeys/start` (the script, with the form's `csrf`): the options of a registration for
/// the signed-in user, excluding the credentials they have.
pub async fn register_start(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(rp) = &state.webauthn else { return json_error(StatusCode::NOT_FOUND, "passkeys_off") };
    let (_, user, _) = match factor_form(&state, &headers, &body).await {
        Ok(found) => found,
        Err(refused) => {
            return match refused.status() {
                StatusCode::FORBIDDEN => json_error(StatusCode::FORBIDDEN, "second_factor_first"),
                StatusCode::SERVICE_UNAVAILABLE => {
                    json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
                }
                _ => json_error(StatusCode::BAD_REQUEST, "sign_in_again"),
            };
        }
    };
    let Ok(existing) = passkeys(&state, &user.id).await else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    };
    let exclude = existing.iter().map(|(_, p)| p.cred_id().clone()).collect();
    match rp.start_passkey_registration(user_handle(&user.id), &user.username, &user.username, Some(exclude))
    {
        Ok((options, ceremony)) => begin(&state, &user.id, REGISTER, &ceremony, &options, now()).await,
        Err(e) => {
            tracing::warn!(error = %e, "passkeys: cannot start a registration");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
    }
}

/// `POST /account/passkeys`: the authenticator's answer to a registration (`handle`, `credential`) and the
/// passkey's `name`. A first factor comes with ten recovery codes, shown once; the session becomes a
/// two-factor one (the registration was signed with user verification).
pub async fn register(
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
    let again =
        |message: &'static str| account_again(&state, &user, (&csrf, set.clone()), &return_to, message);
    let Some(rp) = &state.webauthn else { return again("Passkeys are not enabled on this server.").await };
    let answer: Option<RegisterPublicKeyCredential> =
        form.get("credential").and_then(|c| serde_json::from_str(c).ok());
    let ceremony: Option<PasskeyRegistration> =
        match take(&state, form.get("handle").unwrap_or(""), &user.id, REGISTER, now).await {
            Ok(found) => found,
            Err(_) => return web::unavailable(),
        };
    let passkey = answer.zip(ceremony).and_then(|(answer, ceremony)| {
        rp.finish_passkey_registration(&answer, &ceremony)
            .map_err(|e| tracing::info!(error = %e, "passkeys: a registration was refused"))
            .ok()
    });
    let Some(passkey) = passkey else {
        state.event(factor_event(&meta, &user.id, (false, "passkey_registration"), now)).await;
        return again("The passkey could not be added. Try again.").await;
    };
    let name: String = form.get("name").unwrap_or("").trim().chars().take(MAX_NAME).collect();
    let Ok(credential) = serde_json::to_string(&passkey) else { return web::unavailable() };
    let record = WebauthnCredential {
        id: credential_id(&passkey),
        user_id: user.id.clone(),
        name: if name.is_empty() { "Passkey".into() } else { name },
        credential,
        created_at: now,
        last_used_at: None,
    };
    match state.store.add_webauthn_credential(&record).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return again("This passkey is registered already.").await,
        Err(_) => return web::unavailable(),
    }
    state
        .event(Event {
            detail: Some(serde_json::json!({ "credential": TokenHash::of(&record.id).short() }).to_string()),
            ..factor_event(&meta, &user.id, (true, "passkey_registered"), now)
        })
        .await;
    // The registration was signed with user verification: the session becomes a two-factor one.
    let cookie = mfa::upgrade_session(&state, &user, &session, amr(&passkey), now).await;
    let first = match state.store.recovery_codes_left(&user.id).await {
        Ok(left) => left == 0,
        Err(_) => return web::unavailable(),
    };
    let response = if first {
        let Some((codes, hashes)) = mfa::new_recovery_codes() else { return web::unavailable() };
        if state.store.replace_recovery_codes(&user.id, &hashes, now).await.is_err() {
            return web::unavailable();
        }
        mfa::recovery_page(&codes, &return_to, "Passkey added. Two-step verification is on.")
    } else {
        let next =
            if return_to.is_empty() { "/account".to_owned() } else { format!("/authorize?{return_to}") };
        crate::web::page(
            StatusCode::OK,
            "Your account",
            &format!(
                "<p role=\"status\">Passkey added.</p><p><a href=\"{}\">Continue</a></p>",
                escape(&next)
            ),
        )
    };
    web::with_cookie(web::with_cookie(response, cookie), set)
}

/// The account page again, with `message`.
async fn account_again(
    state: &AppState,
    user: &User,
    (csrf, set): (&str, Option<HeaderValue>),
    return_to: &str,
    message: &str,
) -> Response {
    match account_page(state, user, csrf, return_to, Some(message)).await {
        Ok(response) => web::with_cookie(response, set),
        Err(_) => web::unavailable(),
    }
}

/// What a session proven by the password and `passkey` records (RFC 8176): `hwk` for a key bound to its
/// device, `swk` for one that may be synced (backup-eligible), and `mfa`.
/// (`webauthn-rs` shows the flag only in the serialized credential.)
fn amr(passkey: &Passkey) -> Vec<String> {
    let synced = serde_json::to_value(passkey)
        .ok()
        .and_then(|v| v.pointer("/cred/backup_eligible").and_then(serde_json::Value::as_bool))
        .unwrap_or(true);
    key_amr(synced)
}

fn key_amr(synced: bool) -> Vec<String> {
    vec!["pwd".into(), if synced { "swk" } else { "hwk" }.into(), "mfa".into()]
}

/// `POST /account/passkeys/remove`: removes one of the signed-in user's passkeys (`id`).
pub async fn remove(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, user, form) = match factor_form(&state, &headers, &body).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let now = now();
    let id = form.get("id").unwrap_or("");
    let (csrf, set) = web::csrf_token(&state, &headers);
    let removed = match state.store.remove_webauthn_credential(&user.id, id).await {
        Ok(removed) => removed,
        Err(_) => return web::unavailable(),
    };
    if removed {
        state
            .event(Event {
                detail: Some(serde_json::json!({ "credential": TokenHash::of(id).short() }).to_string()),
                ..factor_event(&meta, &user.id, (true, "passkey_removed"), now)
            })
            .await;
    }
    let notice = if removed { "Passkey removed." } else { "There is no such passkey." };
    account_again(&state, &user, (&csrf, set), form.get("return").unwrap_or(""), notice).await
}

/// `POST /login/passkey/start` (the script, with the form's `csrf`): the options of an assertion by one
/// of the passkeys of the user whose password was just shown.
pub async fn sign_in_start(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(rp) = &state.webauthn else { return json_error(StatusCode::NOT_FOUND, "passkeys_off") };
    let form = Params::parse(&body).unwrap_or_default();
    let now = now();
    if !web::csrf_ok(&state, &headers, form.get("csrf")) {
        return json_error(StatusCode::BAD_REQUEST, "sign_in_again");
    }
    let Some(challenge) = mfa::read_challenge(&state, &headers, now).filter(|c| c.a.is_empty()) else {
        return json_error(StatusCode::BAD_REQUEST, "sign_in_again");
    };
    let keys = match passkeys(&state, &challenge.u).await {
        Ok(keys) if !keys.is_empty() => keys,
        Ok(_) => return json_error(StatusCode::BAD_REQUEST, "no_passkey"),
        Err(_) => return json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
    };
    let keys: Vec<Passkey> = keys.into_iter().map(|(_, p)| p).collect();
    match rp.start_passkey_authentication(&keys) {
        Ok((options, ceremony)) => begin(&state, &challenge.u, AUTHENTICATE, &ceremony, &options, now).await,
        Err(e) => {
            tracing::warn!(error = %e, "passkeys: cannot start an assertion");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
    }
}

/// `POST /login/passkey`: the authenticator's answer (`handle`, `credential`) as the second step of a
/// sign-in. Like a code, it is throttled, audited, and followed by the new password of a forced reset or
/// by the session.
pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Params::parse(&body).unwrap_or_default();
    let now = now();
    let step = match mfa::second_step(&state, &headers, &form, now).await {
        Ok(step) => step,
        Err(response) => return response,
    };
    let check = verify(&state, &step.user, form.get("handle").unwrap_or(""), form.get("credential"), now);
    let checked =
        throttle::checked(&state, &meta, &step.user, ("mfa_failure", "wrong_passkey"), now, check).await;
    let wrong = "The passkey did not sign you in. Try again, or type a code.";
    let amr = match mfa::settle(checked, |m, s| step.refuse(m, s), wrong) {
        Ok(amr) => amr,
        Err(response) => return response,
    };
    state.event(factor_event(&meta, &step.user.id, (true, "passkey"), now)).await;
    mfa::second_factor_shown(&state, &meta, &headers, step, amr, now).await
}

/// Checks an assertion `answer` to the ceremony `handle` of `user`, and records the key's new counter:
/// the session's `amr`, or `None` for anything wrong (no such ceremony, a bad signature, another user's
/// or a removed key, a counter that went back).
async fn verify(
    state: &AppState,
    user: &User,
    handle: &str,
    answer: Option<&str>,
    now: i64,
) -> Result<Option<Vec<String>>, StoreError> {
    let Some(rp) = &state.webauthn else { return Ok(None) };
    let answer: Option<PublicKeyCredential> = answer.and_then(|a| serde_json::from_str(a).ok());
    let ceremony: Option<PasskeyAuthentication> = take(state, handle, &user.id, AUTHENTICATE, now).await?;
    let Some((answer, ceremony)) = answer.zip(ceremony) else { return Ok(None) };
    let result = match rp.finish_passkey_authentication(&answer, &ceremony) {
        Ok(result) => result,
        Err(e) => {
            tracing::info!(error = %e, "passkeys: an assertion was refused");
            return Ok(None);
        }
    };
    let id = tessera_token::b64::encode(result.cred_id().as_ref());
    let Some((_, mut passkey)) = passkeys(state, &user.id).await?.into_iter().find(|(r, _)| r.id == id)
    else {
        return Ok(None);
    };
    passkey.update_credential(&result);
    let Ok(kept) = serde_json::to_string(&passkey) else { return Ok(None) };
    if !state.store.use_webauthn_credential(&user.id, &id, &kept, now).await? {
        return Ok(None);
    }
    Ok(Some(key_amr(result.backup_eligible())))
}

/// `GET /assets/webauthn.js`: the pages' one script.
pub async fn script() -> Response {
    let mut response = include_str!("../assets/webauthn.js").into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passkeys_are_off_for_an_ip_address_issuer_without_an_rp_id() {
        let config = WebauthnConfig::default();
        assert!(relying_party("http://127.0.0.1:8080", &config).unwrap().is_none());
        assert!(relying_party("https://id.example.com", &config).unwrap().is_some());
    }

    #[test]
    fn an_rp_id_must_be_the_origin_host_or_a_parent() {
        let parent = WebauthnConfig { rp_id: "example.com".into(), ..WebauthnConfig::default() };
        assert!(relying_party("https://id.example.com", &parent).unwrap().is_some());
        let other = WebauthnConfig { rp_id: "example.org".into(), ..WebauthnConfig::default() };
        let error = relying_party("https://id.example.com", &other).unwrap_err();
        assert!(error.starts_with("webauthn.rp_id"), "{error}");
        let bad = WebauthnConfig { origin: "not a url".into(), ..WebauthnConfig::default() };
        assert!(relying_party("https://id.example.com", &bad).unwrap_err().starts_with("webauthn.origin"));
    }

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(day(951_782_400), "2000-02-29");
        assert_eq!(day(1_795_392_000 + 86_399), "2026-11-23");
    }

    #[test]
    fn a_user_handle_is_stable_and_a_uuid_id_is_kept() {
        assert_eq!(user_handle("alice-id"), user_handle("alice-id"));
        assert_ne!(user_handle("alice-id"), user_handle("bob-id"));
        let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(user_handle(id).to_string(), id);
    }
}
