//! A real browser: Debian's headless Chromium, driven through chromedriver (WebDriver), signs in with a
//! password and an authenticator code on the HTML forms, and the relying party gets tokens that say so.
//! Skipped, with a printed reason, when Chromium or chromedriver is absent (`.ci/run` installs them).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use oauth2::{AuthorizationCode, PkceCodeVerifier, RedirectUrl, TokenResponse as _};
use tessera_core::{ClientKind, GrantType};

use crate::browser_flow::setup;
use crate::common::{API, Backend, OAuthClient, PASSWORD, Server, http, query};
use crate::mfa::{claims, code, enrol, password_session, request};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver, started by this test and killed (by its PID) when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A relying party's callback: answers every request with a small page, so the browser lands somewhere.
async fn callback() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/callback", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let body = "<!doctype html><title>callback</title><p>signed in</p>";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    });
    url
}

/// chromedriver (started here, on a free port) and a headless Chromium session through it; `None`, with a
/// printed reason, when either is absent.
async fn chromium() -> Option<(Driver, fantoccini::Client)> {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        #[allow(clippy::print_stderr, reason = "a skipped test says so")]
        {
            eprintln!(
                "skipped: {CHROMIUM} or {CHROMEDRIVER} is absent (apt-get install chromium chromium-driver)"
            );
        }
        return None;
    }
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        }),
    );
    let driver_url = format!("http://127.0.0.1:{port}");
    let mut browser = None;
    for _ in 0..100 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&driver_url)
            .await
        {
            Ok(c) => {
                browser = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Some((driver, browser.expect("chromedriver did not start")))
}

/// A public client whose redirect URI is a local callback page; the client and that URI.
async fn relying_party(s: &Server) -> (OAuthClient, String) {
    let redirect = callback().await;
    let grants = [GrantType::AuthorizationCode, GrantType::RefreshToken];
    s.add_client("chromium", ClientKind::Public, &grants, &[API], &["openid", "orders:read"], true).await;
    let mut app = s.state.store.client("chromium").await.unwrap().unwrap();
    app.id = "chromium-app".into();
    app.redirect_uris = vec![redirect.clone()];
    s.state.store.create_client(&app).await.unwrap();
    s.state.directory.invalidate();
    let client = s.oauth("chromium-app", None).set_redirect_uri(RedirectUrl::new(redirect.clone()).unwrap());
    (client, redirect)
}

/// Waits (up to 5 s) until the browser is at a URL starting with `prefix`; where it is.
async fn landed(b: &fantoccini::Client, prefix: &str) -> Result<String, String> {
    let mut url = String::new();
    for _ in 0..100 {
        url = b.current_url().await.map_err(|e| format!("current URL: {e}"))?.to_string();
        if url.starts_with(prefix) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(url)
}

/// Types alice's username and password into the login form on the page and submits it.
async fn sign_in_with_password(b: &fantoccini::Client) -> Result<(), fantoccini::error::CmdError> {
    b.find(Locator::Css("input[name=username]")).await?.send_keys("alice").await?;
    b.find(Locator::Css("input[name=password]")).await?.send_keys(PASSWORD).await?;
    b.find(Locator::Css("button[type=submit]")).await?.click().await
}

/// The access token's claims, from the code in the callback URL `landed`.
async fn access_claims(client: &OAuthClient, landed: &str, verifier: PkceCodeVerifier) -> serde_json::Value {
    let tokens = client
        .exchange_code(AuthorizationCode::new(query(landed)["code"].clone()))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .unwrap();
    claims(tokens.access_token().secret())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_signs_in_with_a_password_and_an_authenticator_code() {
    let Some((_driver, b)) = chromium().await else { return };
    let s = Server::start(Backend::Sqlite).await.unwrap();
    // alice, with an authenticator app enrolled through the account page.
    let spa = setup(&s).await;
    let (secret, _, _) = enrol(&s, &password_session(&s, &spa).await, "/account").await;
    let (client, redirect) = relying_party(&s).await;
    let (url, verifier) = request(&client, &[]);

    // Every step reports instead of panicking, so that the browser is closed whatever happens.
    let steps = async {
        let fail = |what: &str, e: fantoccini::error::CmdError| format!("{what}: {e}");
        b.goto(&url).await.map_err(|e| fail("open the authorization URL", e))?;
        sign_in_with_password(&b).await.map_err(|e| fail("sign in with the password", e))?;
        // The second step: one field, with the one-time-code hint a browser or password manager fills in.
        let wait = b.wait().at_most(Duration::from_secs(10));
        let Ok(field) = wait.for_element(Locator::Css("input[name=code]")).await else {
            return Err(format!("no code field on: {}", b.source().await.unwrap_or_default()));
        };
        let hint = field.attr("autocomplete").await.map_err(|e| fail("autocomplete", e))?;
        if hint.as_deref() != Some("one-time-code") {
            return Err(format!("the code field's autocomplete is {hint:?}"));
        }
        field.send_keys(&code(&secret, 1)).await.map_err(|e| fail("type the code", e))?;
        b.find(Locator::Css("button[type=submit]"))
            .await
            .map_err(|e| fail("verify button", e))?
            .click()
            .await
            .map_err(|e| fail("submit the code", e))?;
        landed(&b, &redirect).await
    }
    .await;
    let _ = b.close().await;
    let landed = steps.unwrap_or_else(|why| panic!("{why}"));
    assert!(landed.starts_with(&redirect), "the browser ended at {landed}");
    let access = access_claims(&client, &landed, verifier).await;
    assert_eq!(access["acr"], "urn:tessera:acr:mfa");
    assert_eq!(access["amr"], serde_json::json!(["pwd", "otp", "mfa"]));
    s.finish().await;
}

/// WebDriver's "Add Virtual Authenticator" (WebAuthn Level 2, §11.3): a platform authenticator with user
/// verification, which answers the page's `navigator.credentials` calls by itself.
#[derive(Debug)]
struct AddVirtualAuthenticator;

impl fantoccini::wd::WebDriverCompatibleCommand for AddVirtualAuthenticator {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/webauthn/authenticator", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http_types::Method, Option<String>) {
        let body = serde_json::json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserConsenting": true,
            "isUserVerified": true,
        });
        (http_types::Method::POST, Some(body.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_registers_a_passkey_and_signs_in_with_it() {
    let Some((_driver, b)) = chromium().await else { return };
    let s = Server::start_with(Backend::Sqlite, crate::passkeys::passkeys_on).await.unwrap();
    setup(&s).await;
    let (client, redirect) = relying_party(&s).await;
    // The browser sees the server at localhost: WebAuthn needs a domain, and localhost is a secure context.
    let base = s.base.replace("127.0.0.1", "localhost");
    let (url, verifier) = request(&client, &[("acr_values", "urn:tessera:acr:mfa")]);
    let url = url.replace(&s.base, &base);

    let steps = async {
        let fail = |what: &str, e: fantoccini::error::CmdError| format!("{what}: {e}");
        b.issue_cmd(AddVirtualAuthenticator).await.map_err(|e| fail("add a virtual authenticator", e))?;
        // Sign in with the password alone (no factor yet), then register a passkey on the account page.
        b.goto(&format!("{base}/login")).await.map_err(|e| fail("open the login page", e))?;
        sign_in_with_password(&b).await.map_err(|e| fail("sign in with the password", e))?;
        let wait = b.wait().at_most(Duration::from_secs(10));
        if wait.for_element(Locator::Css("form[action='/logout']")).await.is_err() {
            return Err(format!("not signed in: {}", b.source().await.unwrap_or_default()));
        }
        b.goto(&format!("{base}/account")).await.map_err(|e| fail("open the account page", e))?;
        b.find(Locator::Css("input[name=name]"))
            .await
            .map_err(|e| fail("passkey name", e))?
            .send_keys("Chromium")
            .await
            .map_err(|e| fail("type the name", e))?;
        b.find(Locator::Css("form[data-webauthn=create] button"))
            .await
            .map_err(|e| fail("add-passkey button", e))?
            .click()
            .await
            .map_err(|e| fail("add a passkey", e))?;
        let wait = b.wait().at_most(Duration::from_secs(10));
        if wait.for_element(Locator::Css("ol.recovery-codes")).await.is_err() {
            return Err(format!(
                "no recovery codes after registering: {}",
                b.source().await.unwrap_or_default()
            ));
        }
        // A fresh browser session asks for two factors: the password, then the passkey's button.
        b.delete_all_cookies().await.map_err(|e| fail("forget the session", e))?;
        b.goto(&url).await.map_err(|e| fail("open the authorization URL", e))?;
        sign_in_with_password(&b).await.map_err(|e| fail("sign in again", e))?;
        let wait = b.wait().at_most(Duration::from_secs(10));
        let Ok(button) = wait.for_element(Locator::Css("form[data-webauthn=get] button")).await else {
            return Err(format!("no passkey prompt on: {}", b.source().await.unwrap_or_default()));
        };
        button.click().await.map_err(|e| fail("use the passkey", e))?;
        landed(&b, &redirect).await
    }
    .await;
    let _ = b.close().await;
    let landed = steps.unwrap_or_else(|why| panic!("{why}"));
    assert!(landed.starts_with(&redirect), "the browser ended at {landed}");
    let access = access_claims(&client, &landed, verifier).await;
    assert_eq!(access["acr"], "urn:tessera:acr:mfa");
    assert_eq!(access["amr"][2], "mfa");
    let alice = s.state.store.user_by_name("alice").await.unwrap().unwrap();
    let keys = s.state.store.webauthn_credentials(&alice.id).await.unwrap();
    assert_eq!((keys.len(), keys[0].name.as_str()), (1, "Chromium"));
    s.finish().await;
}
