//! Passkeys (WebAuthn) through the real forms, answered by a software authenticator
//! (`webauthn-authenticator-rs`'s `SoftPasskey`, which signs like a platform authenticator): registration
//! on the account page, the passkey as the sign-in's second step, `amr`/`acr` in the tokens, answers that
//! work once and only for their own ceremony, removal, and the admin reset.

use oauth2::TokenResponse as _;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tessera_core::mfa::MfaPolicy;
use tessera_server::config::Config;
use url::Url;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse};

use crate::browser_flow::setup;
use crate::common::{Backend, Browser, PASSWORD, Server, hidden};
use crate::mfa::{browser_has_session, claims, finish, password_session, post_form, request};

crate::on_backends_with!(
    super::passkeys_on,
    passkey_registration_then_sign_in_with_the_key_and_tokens_say_mfa,
    a_passkey_answer_works_once_and_only_for_its_own_ceremony,
    a_removed_or_reset_passkey_no_longer_signs_in,
    a_password_alone_cannot_add_or_remove_a_second_factor,
);

/// Passkeys on a test server: browsers would see it at `localhost` (an IP address cannot be a relying
/// party), the port the server's own.
pub(crate) fn passkeys_on(c: &mut Config) {
    c.webauthn.rp_id = "localhost".into();
    c.webauthn.origin = c.issuer.replace("127.0.0.1", "localhost");
}

/// The origin the authenticator is told the page came from.
fn origin(s: &Server) -> Url {
    Url::parse(&s.base.replace("127.0.0.1", "localhost")).unwrap()
}

/// Starts a ceremony as the page's script does: its handle and options.
async fn ceremony<T: DeserializeOwned>(s: &Server, browser: &Browser, path: &str, page: &str) -> (String, T) {
    let r = browser.post(&s.url(path), &[("csrf", hidden(page, "csrf").as_str())]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let answer: Value = r.json().await.unwrap();
    let handle = answer["handle"].as_str().unwrap().to_owned();
    (handle, serde_json::from_value(answer["options"].clone()).unwrap())
}

/// Registers `key` as `name` from the account page of the browser's signed-in user; the answer.
async fn register(s: &Server, browser: &Browser, key: &mut SoftPasskey, name: &str) -> reqwest::Response {
    let account = browser.get(&s.url("/account")).await.text().await.unwrap();
    assert!(account.contains("data-webauthn=\"create\""), "{account}");
    let (handle, options): (_, CreationChallengeResponse) =
        ceremony(s, browser, "/account/passkeys/start", &account).await;
    let answer = key.do_registration(origin(s), options).unwrap();
    let credential = serde_json::to_string(&answer).unwrap();
    let fields = [("handle", handle.as_str()), ("name", name), ("credential", credential.as_str())];
    post_form(s, browser, &account, "/account/passkeys", &fields).await
}

/// From an authorization request `url`, the password: the second-step page with the passkey prompt.
async fn password_then_prompt(s: &Server, browser: &Browser, url: &str) -> String {
    let form = browser.get(url).await.text().await.unwrap();
    let r = post_form(s, browser, &form, "/login", &[("username", "alice"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 200, "the password is not enough");
    let page = r.text().await.unwrap();
    assert!(page.contains("data-webauthn=\"get\"") && page.contains("/assets/webauthn.js"), "{page}");
    assert!(!browser_has_session(browser), "no session before the second factor");
    page
}

/// The key's answer to a new sign-in ceremony started from `page`: the handle and the answer as JSON.
async fn assertion(s: &Server, browser: &Browser, page: &str, key: &mut SoftPasskey) -> (String, String) {
    let (handle, options): (_, RequestChallengeResponse) =
        ceremony(s, browser, "/login/passkey/start", page).await;
    let answer = key.do_authentication(origin(s), options).unwrap();
    (handle, serde_json::to_string(&answer).unwrap())
}

async fn submit(
    s: &Server,
    browser: &Browser,
    page: &str,
    (handle, answer): (&str, &str),
) -> reqwest::Response {
    post_form(s, browser, page, "/login/passkey", &[("handle", handle), ("credential", answer)]).await
}

async fn passkey_registration_then_sign_in_with_the_key_and_tokens_say_mfa(s: &Server) {
    let client = setup(s).await;
    let first = password_session(s, &client).await;
    let mut key = SoftPasskey::new(true);
    let r = register(s, &first, &mut key, "Laptop").await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("Passkey added. Two-step verification is on."), "{page}");
    assert_eq!(page.matches("<li><code>").count(), 10, "a first factor comes with ten recovery codes");
    let account = first.get(&s.url("/account")).await.text().await.unwrap();
    assert!(account.contains("<b>Laptop</b>") && account.contains("Two-step verification is <b>on</b>"));

    // A new browser: the password, then the passkey; the tokens say a key and two factors.
    let browser = Browser::default();
    let (url, verifier) = request(&client, &[]);
    let prompt = password_then_prompt(s, &browser, &url).await;
    let (handle, answer) = assertion(s, &browser, &prompt, &mut key).await;
    let ok = submit(s, &browser, &prompt, (&handle, &answer)).await;
    let tokens = finish(s, &browser, ok, &client, verifier).await;
    let access = claims(tokens.access_token().secret());
    let amr: Vec<&str> = access["amr"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(amr == ["pwd", "hwk", "mfa"] || amr == ["pwd", "swk", "mfa"], "{amr:?}");
    assert_eq!(access["acr"], "urn:tessera:acr:mfa");

    let events = s.state.store.recent_events(Some("mfa_success"), 10).await.unwrap();
    let reasons: Vec<&str> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert_eq!(reasons, ["passkey", "passkey_registered"]);
    let alice = s.state.store.user_by_name("alice").await.unwrap().unwrap();
    let keys = s.state.store.webauthn_credentials(&alice.id).await.unwrap();
    assert!(keys[0].last_used_at.is_some(), "the sign-in is recorded on the key");

    // With passkeys only, a fresh sign-in with the key replaces the recovery codes (no app code to type).
    let account = browser.get(&s.url("/account")).await.text().await.unwrap();
    let renewed = post_form(s, &browser, &account, "/account/recovery-codes", &[]).await;
    assert_eq!(renewed.status(), 200);
    assert_eq!(renewed.text().await.unwrap().matches("<li><code>").count(), 10);

    // The page's script is ours, and the only one the pages may run.
    let script = browser.get(&s.url("/assets/webauthn.js")).await;
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(script.text().await.unwrap().contains("navigator.credentials.get"));
    let csp =
        browser.get(&s.url("/login")).await.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
}

async fn a_passkey_answer_works_once_and_only_for_its_own_ceremony(s: &Server) {
    let client = setup(s).await;
    let first = password_session(s, &client).await;
    let mut key = SoftPasskey::new(true);
    assert_eq!(register(s, &first, &mut key, "Laptop").await.status(), 200);

    // An answer signed for one ceremony, posted twice, then to another ceremony: refused each time.
    let browser = Browser::default();
    let (url, _) = request(&client, &[]);
    let prompt = password_then_prompt(s, &browser, &url).await;
    let (handle, answer) = assertion(s, &browser, &prompt, &mut key).await;
    let (other_handle, _) = assertion(s, &browser, &prompt, &mut key).await;
    let crossed = submit(s, &browser, &prompt, (&other_handle, &answer)).await;
    assert_eq!(crossed.status(), 200);
    assert!(crossed.text().await.unwrap().contains("The passkey did not sign you in"));
    assert!(!browser_has_session(&browser));
    // Its own ceremony was never answered: it still works, once.
    let ok = submit(s, &browser, &prompt, (&handle, &answer)).await;
    assert_eq!(ok.status(), 303);
    let again = Browser::default();
    let prompt = password_then_prompt(s, &again, &url).await;
    let replay = submit(s, &again, &prompt, (&handle, &answer)).await;
    assert!(
        replay.text().await.unwrap().contains("The passkey did not sign you in"),
        "a ceremony is answered once"
    );
    assert!(!browser_has_session(&again));

    // Nonsense in place of an answer is a refusal, not an error.
    let junk = submit(s, &again, &prompt, ("no-such-handle", "{\"id\":1}")).await;
    assert_eq!(junk.status(), 200);
    let failures = s.state.store.recent_events(Some("mfa_failure"), 10).await.unwrap();
    assert_eq!(failures.len(), 3);
    assert!(failures.iter().all(|e| e.reason.as_deref() == Some("wrong_passkey")));
}

async fn a_removed_or_reset_passkey_no_longer_signs_in(s: &Server) {
    let client = setup(s).await;
    let first = password_session(s, &client).await;
    let mut laptop = SoftPasskey::new(true);
    let mut phone = SoftPasskey::new(true);
    assert_eq!(register(s, &first, &mut laptop, "Laptop").await.status(), 200);
    // The session is a two-factor one now; a second key, without new recovery codes.
    let second = register(s, &first, &mut phone, "Phone").await.text().await.unwrap();
    assert!(second.contains("Passkey added.") && !second.contains("<li><code>"), "{second}");
    let alice = s.state.store.user_by_name("alice").await.unwrap().unwrap();
    let keys = s.state.store.webauthn_credentials(&alice.id).await.unwrap();
    let mut names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["Laptop", "Phone"]);
    let laptop_id = keys.iter().find(|k| k.name == "Laptop").unwrap().id.clone();

    // Remove the laptop's key from the account page: it is no longer offered or accepted.
    let account = first.get(&s.url("/account")).await.text().await.unwrap();
    let removed = post_form(s, &first, &account, "/account/passkeys/remove", &[("id", &laptop_id)]).await;
    assert!(removed.text().await.unwrap().contains("Passkey removed."));
    let browser = Browser::default();
    let (url, _) = request(&client, &[]);
    let prompt = password_then_prompt(s, &browser, &url).await;
    let (handle, options): (_, RequestChallengeResponse) =
        ceremony(s, &browser, "/login/passkey/start", &prompt).await;
    let offered = serde_json::to_value(&options).unwrap()["publicKey"]["allowCredentials"].clone();
    assert_eq!(offered.as_array().unwrap().len(), 1, "only the phone's key is offered");
    assert!(laptop.do_authentication(origin(s), options).is_err(), "the laptop has no key for this request");
    let phone_answer = {
        let (h, a) = assertion(s, &browser, &prompt, &mut phone).await;
        assert_ne!(h, handle);
        (h, a)
    };

    // The administrator's reset (`tessera user mfa reset`) removes every key.
    assert!(s.state.store.reset_mfa(&alice.id).await.unwrap());
    assert!(s.state.store.webauthn_credentials(&alice.id).await.unwrap().is_empty());
    let refused = submit(s, &browser, &prompt, (&phone_answer.0, &phone_answer.1)).await;
    assert!(refused.text().await.unwrap().contains("The passkey did not sign you in"));
    assert!(!browser_has_session(&browser));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_are_off_on_an_ip_address_issuer_and_the_page_offers_none() {
    let s = Server::start(Backend::Sqlite).await.unwrap();
    let client = setup(&s).await;
    let browser = password_session(&s, &client).await;
    let account = browser.get(&s.url("/account")).await.text().await.unwrap();
    assert!(!account.contains("data-webauthn"), "{account}");
    let r =
        browser.post(&s.url("/account/passkeys/start"), &[("csrf", hidden(&account, "csrf").as_str())]).await;
    assert_eq!(r.status(), 404);
    s.finish().await;
}

async fn a_password_alone_cannot_add_or_remove_a_second_factor(s: &Server) {
    let client = setup(s).await;
    let first = password_session(s, &client).await;
    let mut key = SoftPasskey::new(true);
    assert_eq!(register(s, &first, &mut key, "Laptop").await.status(), 200);
    // A client that never asks for a second factor: its sign-ins open password-only sessions.
    assert!(s.state.store.set_client_mfa("spa", MfaPolicy::Off).await.unwrap());
    s.state.directory.invalidate();
    let thief = password_session(s, &client).await;
    let account = thief.get(&s.url("/account")).await.text().await.unwrap();
    let csrf = hidden(&account, "csrf");
    let start = thief.post(&s.url("/account/passkeys/start"), &[("csrf", csrf.as_str())]).await;
    assert_eq!(start.status(), 403);
    assert_eq!(start.json::<Value>().await.unwrap()["error"], "second_factor_first");
    let alice = s.state.store.user_by_name("alice").await.unwrap().unwrap();
    let id = s.state.store.webauthn_credentials(&alice.id).await.unwrap()[0].id.clone();
    let remove = post_form(s, &thief, &account, "/account/passkeys/remove", &[("id", &id)]).await;
    assert_eq!(remove.status(), 403);
    assert!(remove.text().await.unwrap().contains("opened with the password alone"));
    assert_eq!(post_form(s, &thief, &account, "/account/totp", &[]).await.status(), 403);
    let codes = post_form(s, &thief, &account, "/account/recovery-codes", &[]).await;
    assert_eq!(codes.status(), 403, "nor mint recovery codes");
    assert_eq!(s.state.store.webauthn_credentials(&alice.id).await.unwrap().len(), 1, "the key stays");
}
