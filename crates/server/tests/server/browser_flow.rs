//! The authorization code flow as a browser and a relying party live it.

use std::sync::Arc;

use oauth2::{AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, Scope, TokenResponse as _};
use serde_json::Value;
use tessera_core::{ClientKind, GrantType};
use tessera_token::{UnixTime, UnverifiedJwt, Validation, validate_access_token};

use crate::common::{
    API, Browser, OAuthClient, PASSWORD, REDIRECT, Server, Tokens, http, location, query, sign_in,
};

crate::on_both_backends!(
    authorization_code_flow_with_pkce_issues_bound_tokens,
    authorize_refuses_bad_requests_with_a_page_or_a_redirect,
    wrong_password_and_unknown_user_get_one_generic_message,
    code_is_single_use_and_replay_revokes_its_tokens,
    code_is_bound_to_client_redirect_uri_and_verifier,
    prompt_login_forces_a_new_login_and_third_parties_see_consent,
    logout_ends_the_session_and_revokes_its_tokens,
);

const GRANTS: &[GrantType] = &[GrantType::AuthorizationCode, GrantType::RefreshToken];
const SCOPES: &[&str] = &["openid", "profile", "orders:read", "orders:write"];

/// A registered public first-party client "spa", resource API and user alice.
pub async fn setup(s: &Server) -> OAuthClient {
    s.add_resource(API, &["orders:read", "orders:write"]).await;
    s.add_client("spa", ClientKind::Public, GRANTS, &[API], SCOPES, true).await;
    s.add_user("alice", &["reader"]).await;
    s.oauth("spa", None)
}

/// Runs the browser part of the flow for `client` and returns the redirect's query and the PKCE verifier.
pub async fn authorize(
    s: &Server,
    browser: &Browser,
    client: &OAuthClient,
    scope: &str,
) -> (std::collections::HashMap<String, String>, PkceCodeVerifier, CsrfToken) {
    authorize_with(s, browser, client, scope, &[]).await
}

/// Like [`authorize`], with `extra` parameters on the authorization request.
pub async fn authorize_with(
    s: &Server,
    browser: &Browser,
    client: &OAuthClient,
    scope: &str,
    extra: &[(&str, &str)],
) -> (std::collections::HashMap<String, String>, PkceCodeVerifier, CsrfToken) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scope.split(' ').map(|s| Scope::new(s.into())))
        .set_pkce_challenge(challenge)
        .add_extra_param("resource", API)
        .add_extra_param("nonce", "n-0S6_WzA2Mj");
    for (name, value) in extra {
        request = request.add_extra_param(*name, *value);
    }
    let (url, state) = request.url();
    let page = browser.get(url.as_str()).await;
    let r = if page.status() == 200 { sign_in(s, browser, page, "alice", PASSWORD).await } else { page };
    assert_eq!(r.status(), 302);
    let to = location(&r);
    assert!(to.starts_with(REDIRECT), "{to}");
    (query(&to), verifier, state)
}

/// Exchanges a code with the oauth2 crate.
pub async fn exchange(client: &OAuthClient, code: &str, verifier: PkceCodeVerifier) -> Tokens {
    client
        .exchange_code(AuthorizationCode::new(code.into()))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .unwrap()
}

/// Logs alice in and returns her tokens.
pub async fn tokens(s: &Server, client: &OAuthClient) -> Tokens {
    let browser = Browser::default();
    let (q, verifier, _) = authorize(s, &browser, client, "openid profile orders:read").await;
    exchange(client, &q["code"], verifier).await
}

fn now(_: &Server) -> UnixTime {
    UnixTime(u64::try_from(tessera_server::now()).unwrap())
}

async fn authorization_code_flow_with_pkce_issues_bound_tokens(s: &Server) {
    let client = setup(s).await;
    let browser = Browser::default();
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(["openid", "profile", "orders:read"].map(|s| Scope::new(s.into())))
        .set_pkce_challenge(challenge)
        .add_extra_param("resource", API)
        .add_extra_param("nonce", "n-0S6_WzA2Mj")
        .url();
    let page = browser.get(url.as_str()).await;
    for (header, expected) in
        [("x-frame-options", "DENY"), ("referrer-policy", "same-origin"), ("cache-control", "no-store")]
    {
        assert_eq!(page.headers()[header], expected);
    }
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("name=\"username\" autocomplete=\"username\""));
    assert!(html.contains("type=\"password\" name=\"password\" autocomplete=\"current-password\""));
    assert!(!html.contains("<script"), "the login page needs no JavaScript");
    let csrf = crate::common::hidden(&html, "csrf");
    let ret = crate::common::hidden(&html, "return");
    let r = browser
        .post(
            &s.url("/login"),
            &[("csrf", &csrf), ("return", &ret), ("username", "alice"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(r.status(), 303);
    let cookies = browser.last_set_cookies.lock().unwrap().clone();
    let session = cookies.iter().find(|c| c.starts_with("tessera_session=tsl_")).unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains("Secure"), "the issuer is plain http here");
    let r = browser.get(&s.url(&location(&r))).await;
    assert_eq!(r.status(), 302);
    let q = query(&location(&r));
    assert_eq!(q["state"], *state.secret());
    assert_eq!(q["iss"], s.base, "RFC 9207");
    assert!(q["code"].starts_with("tsc_"));

    let tokens = exchange(&client, &q["code"], verifier).await;
    let refresh = tokens.refresh_token().unwrap().secret();
    assert!(refresh.starts_with("tsr_"));
    let keys = s.jwks().await;
    let claims = validate_access_token(
        tokens.access_token().secret(),
        &keys,
        &Validation::access_token(&s.base, API),
        now(s),
    )
    .unwrap();
    assert_eq!(claims.sub, "u_alice");
    assert_eq!(claims.client_id, "spa");
    assert_eq!(claims.roles, ["reader"]);
    assert_eq!(claims.amr, ["pwd"]);
    assert_eq!(claims.scope.as_deref(), Some("openid orders:read profile"));
    let sid = claims.sid.clone().unwrap();

    let id_token = tokens.extra_fields().id_token.clone().unwrap();
    let verified = UnverifiedJwt::parse(&id_token).unwrap().verify(&keys).unwrap();
    let id: Value = serde_json::from_slice(verified.payload()).unwrap();
    assert_eq!(id["iss"], s.base);
    assert_eq!(id["aud"], "spa");
    assert_eq!(id["sub"], "u_alice");
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id["sid"], sid);
    assert_eq!(id["preferred_username"], "alice");
    assert!(id["auth_time"].as_i64().unwrap() <= id["iat"].as_i64().unwrap());

    let info: Value = http()
        .get(s.url("/userinfo"))
        .bearer_auth(tokens.access_token().secret())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info, serde_json::json!({"sub": "u_alice", "preferred_username": "alice"}));
}

async fn authorize_refuses_bad_requests_with_a_page_or_a_redirect(s: &Server) {
    setup(s).await;
    let browser = Browser::default();
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let base = format!(
        "response_type=code&client_id=spa&state=xyz&code_challenge={challenge}&code_challenge_method=S256"
    );
    let redirect = form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>();
    // Errors before the redirect URI is trusted: a page, never a redirect.
    for q in [
        format!("{base}&redirect_uri=https%3A%2F%2Fevil.example%2Fcb"),
        format!("{base}&redirect_uri={redirect}%2Fextra"),
        format!("response_type=code&client_id=nobody&redirect_uri={redirect}"),
        base.clone(),
    ] {
        let r = browser.get(&s.url(&format!("/authorize?{q}"))).await;
        assert_eq!(r.status(), 400, "{q}");
        assert!(r.headers().get("location").is_none());
    }
    // A loopback redirect URI may use any port (RFC 8252 §7.3): the login page, not an error page.
    let other_port = form_urlencoded::byte_serialize(b"http://127.0.0.1:4321/callback").collect::<String>();
    let r = browser.get(&s.url(&format!("/authorize?{base}&redirect_uri={other_port}"))).await;
    assert_eq!(r.status(), 200);
    // Errors after: back to the client with the error, its state, and iss.
    let cases = [
        (format!("response_type=code&client_id=spa&state=xyz&redirect_uri={redirect}"), "invalid_request"),
        (
            format!(
                "response_type=code&client_id=spa&state=xyz&redirect_uri={redirect}&code_challenge={challenge}&code_challenge_method=plain"
            ),
            "invalid_request",
        ),
        (
            format!(
                "response_type=code&client_id=spa&state=xyz&redirect_uri={redirect}&code_challenge=tooshort&code_challenge_method=S256"
            ),
            "invalid_request",
        ),
        (
            format!("{base}&redirect_uri={redirect}").replace("response_type=code", "response_type=token"),
            "unsupported_response_type",
        ),
        (format!("{base}&redirect_uri={redirect}&resource=https%3A%2F%2Fbilling.example"), "invalid_target"),
        (format!("{base}&redirect_uri={redirect}&scope=admin"), "invalid_scope"),
        (format!("{base}&redirect_uri={redirect}&prompt=none"), "login_required"),
    ];
    for (q, error) in cases {
        let r = browser.get(&s.url(&format!("/authorize?{q}"))).await;
        assert_eq!(r.status(), 302, "{q}");
        let back = query(&location(&r));
        assert_eq!(back["error"], error, "{q}");
        assert_eq!(back["state"], "xyz");
        assert_eq!(back["iss"], s.base);
    }
}

async fn wrong_password_and_unknown_user_get_one_generic_message(s: &Server) {
    setup(s).await;
    let browser = Browser::default();
    let page = browser.get(&s.url("/login")).await.text().await.unwrap();
    let csrf = crate::common::hidden(&page, "csrf");
    let mut answers = Vec::new();
    for (user, password) in [("alice", "wrong password"), ("mallory", "whatever123")] {
        let r = browser
            .post(&s.url("/login"), &[("csrf", &csrf), ("username", user), ("password", password)])
            .await;
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        assert!(html.contains("Invalid username or password."));
        answers.push(html.replace(user, ""));
    }
    assert_eq!(answers[0], answers[1], "the two failures must look the same");
    // Without the CSRF cookie's token the form is refused.
    let r = browser
        .post(
            &s.url("/login"),
            &[("csrf", "forged-token-value-xxxx"), ("username", "alice"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(r.status(), 400);
    let metrics = reqwest::get(s.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_login_failures_total 2"), "{metrics}");
    let events = s.state.store.recent_events(Some("login_failure"), 10).await.unwrap();
    let reasons: Vec<_> = events.iter().map(|e| e.reason.clone().unwrap()).collect();
    assert_eq!(reasons, ["unknown_user", "wrong_password"]);
    // What was typed as the name is kept only as a keyed pseudonym, the same for the same name.
    let unknown = events[0].detail.as_deref().unwrap();
    let pseudonym: Value = serde_json::from_str(unknown).unwrap();
    let pseudonym = pseudonym["username_pseudonym"].as_str().unwrap();
    assert_eq!(pseudonym.len(), 12);
    assert_eq!(pseudonym, s.state.kek.pseudonym("mallory"));
    assert!(
        !unknown.contains("mallory") && !unknown.contains(&tessera_core::TokenHash::of("mallory").short())
    );
}

async fn code_is_single_use_and_replay_revokes_its_tokens(s: &Server) {
    let client = setup(s).await;
    let browser = Browser::default();
    let (q, verifier, _) = authorize(s, &browser, &client, "openid orders:read").await;
    let verifier_copy = PkceCodeVerifier::new(verifier.secret().clone());
    let tokens = exchange(&client, &q["code"], verifier).await;
    let again = client
        .exchange_code(AuthorizationCode::new(q["code"].clone()))
        .set_pkce_verifier(verifier_copy)
        .request_async(&http())
        .await;
    assert!(again.is_err(), "a code works once");
    // The replay revoked what the first use issued.
    let refreshed =
        client.exchange_refresh_token(tokens.refresh_token().unwrap()).request_async(&http()).await;
    assert!(refreshed.is_err());
    let r = http().get(s.url("/userinfo")).bearer_auth(tokens.access_token().secret()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(s.state.store.recent_events(Some("code_reuse"), 5).await.unwrap().len(), 1);
}

async fn code_is_bound_to_client_redirect_uri_and_verifier(s: &Server) {
    let client = setup(s).await;
    s.add_client("other", ClientKind::Public, GRANTS, &[API], SCOPES, true).await;
    let browser = Browser::default();
    let post = |form: Vec<(&'static str, String)>| async move {
        let r = http().post(s.url("/token")).form(&form).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (q, _, _) = authorize(s, &browser, &client, "openid").await;
    let wrong_verifier = PkceCodeVerifier::new("x".repeat(43));
    let (status, body) = post(vec![
        ("grant_type", "authorization_code".into()),
        ("client_id", "spa".into()),
        ("code", q["code"].clone()),
        ("redirect_uri", REDIRECT.into()),
        ("code_verifier", wrong_verifier.secret().clone()),
    ])
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));

    let (q, verifier, _) = authorize(s, &browser, &client, "openid").await;
    let (status, body) = post(vec![
        ("grant_type", "authorization_code".into()),
        ("client_id", "spa".into()),
        ("code", q["code"].clone()),
        ("redirect_uri", format!("{REDIRECT}/other")),
        ("code_verifier", verifier.secret().clone()),
    ])
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));

    let (q, verifier, _) = authorize(s, &browser, &client, "openid").await;
    let (status, body) = post(vec![
        ("grant_type", "authorization_code".into()),
        ("client_id", "other".into()),
        ("code", q["code"].clone()),
        ("redirect_uri", REDIRECT.into()),
        ("code_verifier", verifier.secret().clone()),
    ])
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}

async fn prompt_login_forces_a_new_login_and_third_parties_see_consent(s: &Server) {
    let client = setup(s).await;
    let browser = Browser::default();
    let _ = authorize(s, &browser, &client, "openid").await;
    // Signed in: the next request goes straight back with a code.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let (url, _) = client.authorize_url(CsrfToken::new_random).set_pkce_challenge(challenge.clone()).url();
    assert_eq!(browser.get(url.as_str()).await.status(), 302);
    // prompt=login shows the form again, and after it the code comes back.
    let (url, _) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge.clone())
        .add_extra_param("prompt", "login")
        .url();
    let page = browser.get(url.as_str()).await;
    assert_eq!(page.status(), 200);
    let r = sign_in(s, &browser, page, "alice", PASSWORD).await;
    assert_eq!(r.status(), 302);
    assert!(query(&location(&r)).contains_key("code"));

    // max_age: a session older than it needs a new login; max_age=0 always does, and then succeeds.
    let (url, _) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge.clone())
        .add_extra_param("max_age", "3600")
        .url();
    assert_eq!(browser.get(url.as_str()).await.status(), 302, "a fresh session meets max_age=3600");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (url, _) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge.clone())
        .add_extra_param("max_age", "0")
        .url();
    let page = browser.get(url.as_str()).await;
    assert_eq!(page.status(), 200, "max_age=0 asks for a login");
    let r = sign_in(s, &browser, page, "alice", PASSWORD).await;
    assert!(query(&location(&r)).contains_key("code"));
    let (url, _) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge.clone())
        .add_extra_param("max_age", "soon")
        .url();
    assert_eq!(query(&location(&browser.get(url.as_str()).await))["error"], "invalid_request");
    // prompt=consent shows the consent screen even to a first-party client.
    let (url, _) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge.clone())
        .add_extra_param("prompt", "consent")
        .url();
    let r = browser.get(url.as_str()).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Allow access?"));

    // A third-party client gets the consent screen; deny and allow both answer the client.
    s.add_client("thirdparty", ClientKind::Public, GRANTS, &[API], SCOPES, false).await;
    let third = s.oauth("thirdparty", None);
    // prompt=none cannot show it: consent_required.
    let (url, _) = third
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge.clone())
        .add_extra_param("prompt", "none")
        .url();
    assert_eq!(query(&location(&browser.get(url.as_str()).await))["error"], "consent_required");
    for (decision, expect_code) in [("deny", false), ("allow", true)] {
        let (url, state) = third
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge.clone())
            .add_scope(Scope::new("orders:read".into()))
            .url();
        let page = browser.get(url.as_str()).await;
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        assert!(html.contains("thirdparty app") && html.contains("orders:read"), "{html}");
        let csrf = crate::common::hidden(&html, "csrf");
        let request = crate::common::hidden(&html, "request");
        let r = browser
            .post(&s.url("/authorize"), &[("csrf", &csrf), ("request", &request), ("decision", decision)])
            .await;
        let back = query(&location(&r));
        assert_eq!(back["state"], *state.secret());
        assert_eq!(back.contains_key("code"), expect_code);
        if !expect_code {
            assert_eq!(back["error"], "access_denied");
        }
    }
}

async fn logout_ends_the_session_and_revokes_its_tokens(s: &Server) {
    let client = setup(s).await;
    let browser = Browser::default();
    let (q, verifier, _) = authorize(s, &browser, &client, "openid orders:read").await;
    let tokens = exchange(&client, &q["code"], verifier).await;
    let id_token = tokens.extra_fields().id_token.clone().unwrap();
    // Neither an access token as the hint, nor a valid hint in another browser, signs anyone out.
    let r = browser.get(&s.url(&format!("/logout?id_token_hint={}", tokens.access_token().secret()))).await;
    assert_eq!(r.status(), 200, "an access token is no ID token hint: confirmation asked");
    let stranger = Browser::default();
    let r = stranger.get(&s.url(&format!("/logout?id_token_hint={id_token}"))).await;
    assert_eq!(r.status(), 200, "a hint without its session: confirmation asked");
    let html = r.text().await.unwrap();
    let csrf = crate::common::hidden(&html, "csrf");
    let r = stranger.post(&s.url("/logout"), &[("csrf", &csrf), ("id_token_hint", &id_token)]).await;
    assert_eq!(r.status(), 200);
    let r = http().get(s.url("/userinfo")).bearer_auth(tokens.access_token().secret()).send().await.unwrap();
    assert_eq!(r.status(), 200, "alice's session survives a stranger's logout with her old ID token");
    let logout = format!(
        "/logout?id_token_hint={id_token}&post_logout_redirect_uri={}&state=bye",
        form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
    );
    let r = browser.get(&s.url(&logout)).await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), format!("{REDIRECT}?state=bye"));
    let r = http().get(s.url("/userinfo")).bearer_auth(tokens.access_token().secret()).send().await.unwrap();
    assert_eq!(r.status(), 401, "the session's access token is revoked");
    assert!(
        client.exchange_refresh_token(tokens.refresh_token().unwrap()).request_async(&http()).await.is_err()
    );
    // Signed out: the next authorization asks for a login again.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let (url, _) = client.authorize_url(CsrfToken::new_random).set_pkce_challenge(challenge).url();
    assert_eq!(browser.get(url.as_str()).await.status(), 200);
    // Without a hint, logout asks for confirmation (a CSRF-protected form).
    let r = browser.get(&s.url("/logout")).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("method=\"post\" action=\"/logout\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_issuer_gets_host_prefixed_secure_cookies() {
    let s = Server::start_with(crate::common::Backend::Sqlite, |c| c.issuer = "https://id.example".into())
        .await
        .unwrap();
    setup(&s).await;
    let browser = Browser::default();
    let page = browser.get(&s.url("/login")).await.text().await.unwrap();
    let csrf_cookie = browser.last_set_cookies.lock().unwrap().clone();
    assert!(
        csrf_cookie.iter().any(|c| c.starts_with("__Host-tessera_csrf=") && c.contains("; Secure")),
        "{csrf_cookie:?}"
    );
    let csrf = crate::common::hidden(&page, "csrf");
    let r = browser
        .post(&s.url("/login"), &[("csrf", &csrf), ("username", "alice"), ("password", PASSWORD)])
        .await;
    assert_eq!(r.status(), 303);
    let cookies = browser.last_set_cookies.lock().unwrap().clone();
    let session = cookies.iter().find(|c| c.starts_with("__Host-tessera_session=tsl_")).unwrap();
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains("Domain="), "__Host- cookies carry no Domain");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_logins_does_not_stall_refreshes() {
    let s = Server::start_with(crate::common::Backend::Sqlite, |c| {
        c.password_hash_concurrency = 1;
        // The flood must reach the hasher: the login throttle is out of its way.
        c.login.delay_base_secs = 0;
        c.login.account_lock_failures = 1000;
        c.login.source_lock_failures = 1000;
    })
    .await
    .unwrap();
    let client = setup(&s).await;
    let t = tokens(&s, &client).await;
    // 24 logins queue behind one Argon2id hash at a time (tens of milliseconds each).
    let browser = Arc::new(Browser::default());
    let page = browser.get(&s.url("/login")).await.text().await.unwrap();
    let csrf = crate::common::hidden(&page, "csrf");
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut logins = Vec::new();
    for _ in 0..24 {
        let (browser, csrf, url, done) =
            (Arc::clone(&browser), csrf.clone(), s.url("/login"), Arc::clone(&done));
        logins.push(tokio::spawn(async move {
            let r = browser
                .post(&url, &[("csrf", &csrf), ("username", "alice"), ("password", "wrong password")])
                .await;
            let status = r.status();
            assert_eq!(status, 200, "{}", r.text().await.unwrap());
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    // Wait until the flood is being hashed: one login has been answered, the others are queued.
    for _ in 0..500 {
        if done.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(done.load(std::sync::atomic::Ordering::SeqCst) > 0, "no login was answered");
    let refreshed = client.exchange_refresh_token(t.refresh_token().unwrap()).request_async(&http()).await;
    let finished_logins = done.load(std::sync::atomic::Ordering::SeqCst);
    assert!(refreshed.is_ok());
    assert!(finished_logins < 24, "the refresh was answered while logins were still waiting for the hasher");
    for login in logins {
        login.await.unwrap();
    }
}
