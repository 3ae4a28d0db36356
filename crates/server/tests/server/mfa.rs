//! Second factors through the real HTML forms: TOTP enrolment on the account page, the code step of a
//! sign-in, single-use codes and recovery codes, per-client MFA policy, `acr_values`, step-up of an
//! existing session, and `amr`/`acr` in the tokens.

use oauth2::{CsrfToken, PkceCodeChallenge, PkceCodeVerifier, Scope, TokenResponse as _};
use serde_json::Value;
use tessera_core::mfa::{MfaPolicy, totp_at, totp_step};

use crate::browser_flow::{exchange, setup};
use crate::common::{API, Browser, OAuthClient, PASSWORD, REDIRECT, Server, hidden, location, query};

crate::on_both_backends!(
    totp_enrolment_then_every_sign_in_needs_a_fresh_code_and_tokens_say_mfa,
    recovery_codes_sign_in_once_each_and_can_be_replaced,
    mfa_required_client_sends_a_user_without_a_factor_to_enrol_first,
    acr_values_and_a_new_factor_step_up_an_existing_password_session,
    forced_reset_asks_the_second_factor_before_the_new_password,
    changing_the_password_signs_out_every_other_session_and_revokes_their_tokens,
    a_known_device_signs_in_with_the_password_a_new_one_or_a_step_up_request_needs_the_code,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_over_the_deny_threshold_refuses_the_sign_in_and_records_why_sqlite() {
    risk_over_the_deny_threshold_refuses_the_sign_in_and_records_why(crate::common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_over_the_deny_threshold_refuses_the_sign_in_and_records_why_postgres() {
    risk_over_the_deny_threshold_refuses_the_sign_in_and_records_why(crate::common::Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_are_throttled_like_wrong_passwords_sqlite() {
    wrong_codes_are_throttled_like_wrong_passwords(crate::common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_are_throttled_like_wrong_passwords_postgres() {
    wrong_codes_are_throttled_like_wrong_passwords(crate::common::Backend::Postgres).await;
}

/// The authorization request's URL for `client`, with `extra` parameters, and its PKCE verifier.
pub(crate) fn request(client: &OAuthClient, extra: &[(&str, &str)]) -> (String, PkceCodeVerifier) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(["openid", "orders:read"].map(|s| Scope::new(s.into())))
        .set_pkce_challenge(challenge)
        .add_extra_param("resource", API);
    for (name, value) in extra {
        request = request.add_extra_param(*name, *value);
    }
    (request.url().0.to_string(), verifier)
}

/// Posts a form found on `html` (its CSRF token and `return` carried along) to `path`.
pub(crate) async fn post_form(
    s: &Server,
    browser: &Browser,
    html: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let csrf = hidden(html, "csrf");
    let ret = if html.contains("name=\"return\"") { hidden(html, "return") } else { String::new() };
    let mut form = vec![("csrf", csrf.as_str()), ("return", ret.as_str())];
    form.extend_from_slice(fields);
    browser.post(&s.url(path), &form).await
}

/// Decodes RFC 4648 base32 (no padding), as an authenticator app reads the key.
fn base32_decode(text: &str) -> Vec<u8> {
    let (mut out, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {c}"),
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

/// The code an authenticator app shows `steps` steps from now.
pub(crate) fn code(secret: &[u8], steps: i64) -> String {
    format!("{:06}", totp_at(secret, totp_step(tessera_server::now()) + steps))
}

/// Enrols an authenticator app for the browser's signed-in user from the account page; the secret and the
/// recovery codes.
pub(crate) async fn enrol(s: &Server, browser: &Browser, account: &str) -> (Vec<u8>, Vec<String>, String) {
    let account = browser.get(&s.url(account)).await;
    assert_eq!(account.status(), 200);
    let html = account.text().await.unwrap();
    assert!(html.contains("Two-step verification is <b>off</b>"), "{html}");
    let setup_page = post_form(s, browser, &html, "/account/totp", &[]).await.text().await.unwrap();
    assert!(setup_page.contains("<svg") && setup_page.contains("</svg>"), "a QR code drawn on the server");
    assert!(setup_page.contains("otpauth://totp/Tessera%20"), "{setup_page}");
    assert!(!setup_page.contains("<script"));
    let key_start = setup_page.find("<code>").unwrap() + 6;
    let key = &setup_page[key_start..key_start + setup_page[key_start..].find('<').unwrap()];
    let secret = base32_decode(key);
    assert_eq!(secret.len(), 20);
    // A wrong first code does not turn it on.
    let wrong = post_form(s, browser, &setup_page, "/account/totp/confirm", &[("code", "000000")]).await;
    let wrong = wrong.text().await.unwrap();
    assert!(wrong.contains("did not match") && wrong.contains("is <b>off</b>"), "{wrong}");
    let page =
        post_form(s, browser, &setup_page, "/account/totp/confirm", &[("code", &code(&secret, 0))]).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("Two-step verification is on."), "{page}");
    let codes: Vec<String> =
        page.split("<li><code>").skip(1).map(|part| part[..part.find('<').unwrap()].to_owned()).collect();
    assert_eq!(codes.len(), 10, "ten recovery codes, shown once");
    (secret, codes, page)
}

/// A browser signed in with the password only (client `spa`, no factor yet).
pub(crate) async fn password_session(s: &Server, client: &OAuthClient) -> Browser {
    let browser = Browser::default();
    let (url, _) = request(client, &[]);
    let form = browser.get(&url).await.text().await.unwrap();
    let r = post_form(s, &browser, &form, "/login", &[("username", "alice"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 303, "no factor yet: the password alone signs in");
    browser
}

/// From an authorization request, the password: the code form.
async fn password_then_code_form(s: &Server, browser: &Browser, url: &str) -> String {
    let form = browser.get(url).await.text().await.unwrap();
    let r = post_form(s, browser, &form, "/login", &[("username", "alice"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 200, "the password is not enough");
    let html = r.text().await.unwrap();
    assert!(html.contains("name=\"code\" autocomplete=\"one-time-code\""), "{html}");
    assert!(!browser_has_session(browser), "no session before the second factor");
    html
}

pub(crate) fn browser_has_session(browser: &Browser) -> bool {
    browser.last_set_cookies.lock().unwrap().iter().any(|c| c.starts_with("tessera_session=tsl_"))
}

/// The code form submitted with `code`; the answer.
async fn submit_code(s: &Server, browser: &Browser, form: &str, code: &str) -> reqwest::Response {
    post_form(s, browser, form, "/login/mfa", &[("code", code)]).await
}

/// Follows a successful code step back through `/authorize` to the client; the tokens.
pub(crate) async fn finish(
    s: &Server,
    browser: &Browser,
    r: reqwest::Response,
    client: &OAuthClient,
    verifier: PkceCodeVerifier,
) -> crate::common::Tokens {
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let back = browser.get(&s.url(&location(&r))).await;
    assert_eq!(back.status(), 302);
    let to = location(&back);
    assert!(to.starts_with(REDIRECT), "{to}");
    exchange(client, &query(&to)["code"], verifier).await
}

/// The claims of a JWT, unverified (the tokens' signatures are checked by other tests).
pub(crate) fn claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
        .unwrap()
}

async fn totp_enrolment_then_every_sign_in_needs_a_fresh_code_and_tokens_say_mfa(s: &Server) {
    let client = setup(s).await;
    let first = password_session(s, &client).await;
    let (secret, _, _) = enrol(s, &first, "/account").await;

    // A new browser: password, then the code form; the code used to enrol cannot be used again.
    let browser = Browser::default();
    let (url, verifier) = request(&client, &[]);
    let form = password_then_code_form(s, &browser, &url).await;
    let reused = submit_code(s, &browser, &form, &code(&secret, 0)).await;
    assert_eq!(reused.status(), 200);
    assert!(reused.text().await.unwrap().contains("That code is not right"));
    let ok = submit_code(s, &browser, &form, &code(&secret, 1)).await;
    let tokens = finish(s, &browser, ok, &client, verifier).await;
    let access = claims(tokens.access_token().secret());
    assert_eq!(access["amr"], serde_json::json!(["pwd", "otp", "mfa"]));
    assert_eq!(access["acr"], "urn:tessera:acr:mfa");
    let id = claims(tokens.extra_fields().id_token.as_deref().unwrap());
    assert_eq!((id["acr"].as_str(), id["amr"][2].as_str()), (Some("urn:tessera:acr:mfa"), Some("mfa")));

    // The same code in another browser: refused, it was used.
    let other = Browser::default();
    let (url, _) = request(&client, &[]);
    let form = password_then_code_form(s, &other, &url).await;
    let replay = submit_code(s, &other, &form, &code(&secret, 1)).await;
    assert!(replay.text().await.unwrap().contains("That code is not right"), "a code works once");
    let events = s.state.store.recent_events(Some("mfa_success"), 10).await.unwrap();
    let reasons: Vec<&str> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert_eq!(reasons, ["totp", "totp_enrolled"]);
    assert_eq!(s.state.store.recent_events(Some("mfa_failure"), 10).await.unwrap().len(), 3);
    // The discovery document says which contexts there are.
    let discovery: Value =
        reqwest::get(s.url("/.well-known/openid-configuration")).await.unwrap().json().await.unwrap();
    assert!(discovery["acr_values_supported"].as_array().unwrap().contains(&"urn:tessera:acr:mfa".into()));
}

async fn recovery_codes_sign_in_once_each_and_can_be_replaced(s: &Server) {
    let client = setup(s).await;
    let first = password_session(s, &client).await;
    let (secret, codes, _) = enrol(s, &first, "/account").await;
    let browser = Browser::default();
    let (url, verifier) = request(&client, &[]);
    let form = password_then_code_form(s, &browser, &url).await;
    // Typed in capitals with spaces, as people copy codes off paper.
    let typed = codes[0].to_uppercase().replace('-', " ");
    let tokens = finish(s, &browser, submit_code(s, &browser, &form, &typed).await, &client, verifier).await;
    assert_eq!(claims(tokens.access_token().secret())["acr"], "urn:tessera:acr:mfa");
    let again = Browser::default();
    let (url, _) = request(&client, &[]);
    let form = password_then_code_form(s, &again, &url).await;
    assert!(submit_code(s, &again, &form, &codes[0]).await.text().await.unwrap().contains("not right"));

    // New codes need a current app code; the old ones stop working.
    let account = first.get(&s.url("/account")).await.text().await.unwrap();
    assert!(account.contains("Recovery codes left: 9"), "{account}");
    let replaced =
        post_form(s, &first, &account, "/account/recovery-codes", &[("code", &code(&secret, 1))]).await;
    let replaced = replaced.text().await.unwrap();
    assert!(replaced.contains("the old ones no longer work"), "{replaced}");
    assert_eq!(replaced.matches("<li><code>").count(), 10);
    let form = password_then_code_form(s, &again, &url).await;
    assert!(submit_code(s, &again, &form, &codes[1]).await.text().await.unwrap().contains("not right"));
}

async fn mfa_required_client_sends_a_user_without_a_factor_to_enrol_first(s: &Server) {
    let client = setup(s).await;
    assert!(s.state.store.set_client_mfa("spa", MfaPolicy::Required).await.unwrap());
    s.state.directory.invalidate();
    let browser = Browser::default();
    let (url, verifier) = request(&client, &[]);
    let form = browser.get(&url).await.text().await.unwrap();
    let r = post_form(s, &browser, &form, "/login", &[("username", "alice"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 303);
    let r = browser.get(&s.url(&location(&r))).await;
    assert_eq!(r.status(), 303, "no code for the client before a factor is enrolled");
    let to = location(&r);
    assert!(to.starts_with("/account?return="), "{to}");
    let account = browser.get(&s.url(&to)).await.text().await.unwrap();
    assert!(account.contains("requires two-step verification"), "{account}");
    let (_, _, done) = enrol(s, &browser, &to).await;
    // "Continue" goes back to the authorization request, now with a two-factor session.
    let start = done.find("<a href=\"").unwrap() + 9;
    let next = done[start..start + done[start..].find('"').unwrap()].replace("&amp;", "&");
    assert!(next.starts_with("/authorize?"), "{next}");
    let back = browser.get(&s.url(&next)).await;
    assert_eq!(back.status(), 302);
    let tokens = exchange(&client, &query(&location(&back))["code"], verifier).await;
    assert_eq!(claims(tokens.access_token().secret())["acr"], "urn:tessera:acr:mfa");
}

async fn acr_values_and_a_new_factor_step_up_an_existing_password_session(s: &Server) {
    let client = setup(s).await;
    let browser = password_session(s, &client).await;
    // prompt=none cannot step up: the client hears interaction_required.
    let (url, _) = request(&client, &[("acr_values", "urn:tessera:acr:mfa"), ("prompt", "none")]);
    let r = browser.get(&url).await;
    assert_eq!(query(&location(&r))["error"], "interaction_required");
    // acr_values asking for MFA, and no factor: enrol first.
    let (url, _) = request(&client, &[("acr_values", "urn:tessera:acr:mfa")]);
    let r = browser.get(&url).await;
    assert!(location(&r).starts_with("/account?return="), "{}", location(&r));
    // With a factor enrolled (from another browser), the same request steps the password session up.
    let other = password_session(s, &client).await;
    let (secret, _, _) = enrol(s, &other, "/account").await;
    let (url, verifier) = request(&client, &[("acr_values", "urn:tessera:acr:mfa")]);
    let page = browser.get(&url).await;
    assert_eq!(page.status(), 200, "the code form, not a code");
    let form = page.text().await.unwrap();
    assert!(form.contains("autocomplete=\"one-time-code\""));
    let tokens =
        finish(s, &browser, submit_code(s, &browser, &form, &code(&secret, 1)).await, &client, verifier)
            .await;
    assert_eq!(claims(tokens.access_token().secret())["amr"], serde_json::json!(["pwd", "otp", "mfa"]));
    let ended = s.state.store.recent_events(Some("mfa_success"), 10).await.unwrap();
    assert_eq!(ended[0].reason.as_deref(), Some("totp"), "the step-up is recorded");
}

async fn wrong_codes_are_throttled_like_wrong_passwords(backend: crate::common::Backend) {
    // A first delay no attempt of this test outlives, however slow the machine.
    let Some(server) = Server::start_with(backend, |c| c.login.delay_base_secs = 300).await else { return };
    let s = &server;
    let client = setup(s).await;
    let first = password_session(s, &client).await;
    let (secret, _, _) = enrol(s, &first, "/account").await;
    let browser = Browser::default();
    let (url, _) = request(&client, &[]);
    let form = password_then_code_form(s, &browser, &url).await;
    let free = s.state.config.login.account_free_failures;
    for n in 0..free {
        let r = submit_code(s, &browser, &form, &format!("{:06}", 111_111 + n)).await;
        assert_eq!(r.status(), 200);
    }
    // Past the free failures the next attempt must wait, even with the right code.
    let r = submit_code(s, &browser, &form, &code(&secret, 1)).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.text().await.unwrap().contains("Too many failed sign-ins"));
    let failures = s.state.store.recent_events(Some("mfa_failure"), 10).await.unwrap();
    assert_eq!(failures[0].reason.as_deref(), Some("throttled"));
    server.finish().await;
}

async fn forced_reset_asks_the_second_factor_before_the_new_password(s: &Server) {
    let client = setup(s).await;
    let first = password_session(s, &client).await;
    let (secret, _, _) = enrol(s, &first, "/account").await;
    let alice = s.state.store.user_by_name("alice").await.unwrap().unwrap();
    s.state.store.revoke_user(&alice.id, "detection_brute_force", true, tessera_server::now()).await.unwrap();
    s.state.directory.invalidate();
    let browser = Browser::default();
    let (url, verifier) = request(&client, &[]);
    // Knowing the old password is not enough to choose the new one: the code comes first.
    let form = password_then_code_form(s, &browser, &url).await;
    let page = submit_code(s, &browser, &form, &code(&secret, 1)).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("action=\"/login/password\""), "{page}");
    let fields =
        [("new_password", "a brand new passphrase"), ("new_password_again", "a brand new passphrase")];
    let done = post_form(s, &browser, &page, "/login/password", &fields).await;
    let tokens = finish(s, &browser, done, &client, verifier).await;
    assert_eq!(claims(tokens.access_token().secret())["acr"], "urn:tessera:acr:mfa");
}

async fn changing_the_password_signs_out_every_other_session_and_revokes_their_tokens(s: &Server) {
    let client = setup(s).await;
    let other = password_session(s, &client).await;
    let old_tokens = crate::browser_flow::tokens(s, &client).await;
    let browser = password_session(s, &client).await;
    let account = browser.get(&s.url("/account")).await.text().await.unwrap();
    assert!(
        account.contains("autocomplete=\"current-password\"")
            && account.contains("autocomplete=\"new-password\"")
    );
    let change = |current: &'static str, new: &'static str| {
        let account = account.clone();
        let browser = &browser;
        async move {
            let fields = [("current_password", current), ("new_password", new), ("new_password_again", new)];
            post_form(s, browser, &account, "/account/password", &fields).await.text().await.unwrap()
        }
    };
    assert!(
        change("not my password", "a brand new passphrase").await.contains("current password is not right")
    );
    assert!(change(PASSWORD, "alice").await.contains("at least 15 characters"));
    let done = change(PASSWORD, "a brand new passphrase").await;
    assert!(done.contains("Your password is changed"), "{done}");
    // This browser goes on; the other is signed out and its refresh token is dead.
    assert_eq!(browser.get(&s.url("/account")).await.status(), 200);
    assert_eq!(other.get(&s.url("/account")).await.status(), 303, "the other session is signed out");
    let refreshed = client
        .exchange_refresh_token(old_tokens.refresh_token().unwrap())
        .request_async(&crate::common::http())
        .await;
    assert!(refreshed.is_err(), "the other session's refresh token is revoked");
    let changed = s.state.store.recent_events(Some("password_changed"), 5).await.unwrap();
    assert_eq!(changed[0].reason.as_deref(), Some("self_service"));
    assert!(changed[0].detail.as_deref().unwrap().contains("revocation_seq"));
    let failures = s.state.store.recent_events(Some("login_failure"), 5).await.unwrap();
    assert_eq!(failures[0].reason.as_deref(), Some("wrong_current_password"));
}

async fn a_known_device_signs_in_with_the_password_a_new_one_or_a_step_up_request_needs_the_code(s: &Server) {
    let client = setup(s).await;
    let known = password_session(s, &client).await;
    let (secret, _, _) = enrol(s, &known, "/account").await;
    // The enrolling browser signs in again (prompt=login): a known device and network, so the password is
    // enough under the default `risky` policy.
    let (url, verifier) = request(&client, &[("prompt", "login")]);
    let form = known.get(&url).await.text().await.unwrap();
    let r = post_form(s, &known, &form, "/login", &[("username", "alice"), ("password", PASSWORD)]).await;
    let tokens = finish(s, &known, r, &client, verifier).await;
    assert_eq!(claims(tokens.access_token().secret())["acr"], "urn:tessera:acr:pwd");
    let risk = s.state.store.recent_events(Some("login_risk"), 1).await.unwrap();
    assert_eq!(risk[0].reason.as_deref(), Some("allow"));
    // A new browser is a new device: the code is asked, and the decision says why.
    let (url, _) = request(&client, &[]);
    password_then_code_form(s, &Browser::default(), &url).await;
    let risk = s.state.store.recent_events(Some("login_risk"), 1).await.unwrap();
    assert_eq!(risk[0].reason.as_deref(), Some("require_mfa"));
    assert!(risk[0].detail.as_deref().unwrap().contains("\"new_device\""), "{:?}", risk[0].detail);
    // A detection asking this user to step up: even the known device must show the code.
    let alice = s.state.store.user_by_name("alice").await.unwrap().unwrap();
    s.state.store.require_step_up(&alice.id, tessera_server::now()).await.unwrap();
    s.state.directory.invalidate();
    let (url, verifier) = request(&client, &[("prompt", "login")]);
    let form = password_then_code_form(s, &known, &url).await;
    let done = submit_code(s, &known, &form, &code(&secret, 1)).await;
    assert_eq!(
        claims(finish(s, &known, done, &client, verifier).await.access_token().secret())["acr"],
        "urn:tessera:acr:mfa"
    );
    let risk = s.state.store.recent_events(Some("login_risk"), 1).await.unwrap();
    assert!(risk[0].detail.as_deref().unwrap().contains("step_up_required"));
}

/// Three wrong passwords for alice on the login form `form`.
async fn guess_wrong_three_times(s: &Server, browser: &Browser, form: &str) {
    for _ in 0..3 {
        let fields = [("username", "alice"), ("password", "a wrong guess")];
        assert_eq!(post_form(s, browser, form, "/login", &fields).await.status(), 200);
    }
}

async fn risk_over_the_deny_threshold_refuses_the_sign_in_and_records_why(backend: crate::common::Backend) {
    // Recent failures (30 here) from a new device (40) reach 70: denied at this threshold, while a first
    // sign-in (a new device and network, 60) is not. The same holds for a sign-in that must reset.
    let Some(server) = Server::start_with(backend, |c| {
        c.risk.deny_at = 65;
        c.risk.failures = 30;
        c.login.delay_base_secs = 0;
    })
    .await
    else {
        return;
    };
    let s = &server;
    let client = setup(s).await;
    password_session(s, &client).await;
    let browser = Browser::default();
    let (url, _) = request(&client, &[]);
    let form = browser.get(&url).await.text().await.unwrap();
    guess_wrong_three_times(s, &browser, &form).await;
    let r = post_form(s, &browser, &form, "/login", &[("username", "alice"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 403);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("This sign-in was refused") && !page.contains("new_device"),
        "the user sees only what they need"
    );
    let risk = s.state.store.recent_events(Some("login_risk"), 1).await.unwrap();
    assert_eq!(risk[0].reason.as_deref(), Some("deny"));
    let detail = risk[0].detail.as_deref().unwrap();
    assert!(
        detail.contains("\"score\":70")
            && detail.contains("recent_failures")
            && detail.contains("new_device"),
        "{detail}"
    );
    let failures = s.state.store.recent_events(Some("login_failure"), 1).await.unwrap();
    assert_eq!(failures[0].reason.as_deref(), Some("risk_denied"));

    // A forced reset is scored too: the risky sign-in is refused before it learns of the reset.
    let alice = s.state.store.user_by_name("alice").await.unwrap().unwrap();
    assert!(s.state.store.set_must_reset_password(&alice.id, true).await.unwrap());
    s.state.directory.invalidate();
    guess_wrong_three_times(s, &browser, &form).await;
    let r = post_form(s, &browser, &form, "/login", &[("username", "alice"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 403);
    let page = r.text().await.unwrap();
    assert!(page.contains("This sign-in was refused") && !page.contains("new_password"), "{page}");
    server.finish().await;
}
