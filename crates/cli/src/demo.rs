//! `tessera demo`: a stolen-token story, played for real on the embedded default in under a minute. It
//! starts an authorization server (SQLite in a temporary directory), an echo service behind two gateways
//! (orders and billing), a legitimate client that signs in with a password and an authenticator code, and
//! an attacker on another loopback address with a copy of the client's refresh and access tokens. It prints
//! what happens as it happens: the detections, the automatic containment, the attacker refused, and the
//! incident report. It exits 0 only if every one of those happened.
//!
//! Linux only: the attacker's address is 127.66.0.1, which Linux routes to loopback like 127.0.0.1.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tessera_core::mfa::MfaPolicy;
use tessera_core::{ClientKind, GrantType, SecretKind};
use tessera_gateway::{FileConfig, Gateway};
use tessera_guard::{Guard, GuardConfig, Policy};
use tessera_server::response::{Action, Responses};
use tessera_server::{AppState, Config, crypto, incident};
use tessera_store::{Client, Resource, User};
use tokio::time::Instant;

use crate::{Failure, emit};

/// The attacker's address: another network than the legitimate client's 127.0.0.1.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 66, 0, 1);
const ORDERS: &str = "https://orders.demo";
const BILLING: &str = "https://billing.demo";
const REDIRECT: &str = "https://app.demo/callback";
const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the demo's data directory (its database holds the whole story) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// What the demo needs to go on; any failure ends it with one line.
type Step<T> = Result<T, String>;

/// The story's clock and printer.
struct Story {
    start: Instant,
    checks: Vec<(String, bool)>,
}

impl Story {
    fn say(&self, text: &str) -> Result<(), Failure> {
        let at = self.start.elapsed().as_secs_f64();
        for (n, line) in text.lines().enumerate() {
            if n == 0 {
                emit(&format!("[{at:6.2}s] {line}"))?;
            } else {
                emit(&format!("          {line}"))?;
            }
        }
        Ok(())
    }

    fn check(&mut self, what: &str, held: bool) -> Result<(), Failure> {
        self.checks.push((what.to_owned(), held));
        self.say(&format!("{} {what}", if held { "ok:  " } else { "FAIL:" }))
    }
}

pub(crate) fn run(args: DemoArgs) -> Result<(), Failure> {
    let dir = std::env::temp_dir().join(format!("tessera-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::usage(format!("cannot create {}: {}", dir.display(), e.kind())))?;
    let outcome = crate::admin::runtime()?.block_on(demo(&dir));
    if args.keep {
        crate::note(&format!("the demo's data is kept in {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

/// A browser-like client: its own cookies, user agent and source address.
struct Agent {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Agent {
    fn new(user_agent: &str, source: Option<IpAddr>) -> Step<Agent> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(user_agent.to_owned())
            .timeout(Duration::from_secs(10));
        if let Some(ip) = source {
            builder = builder.local_address(ip);
        }
        Ok(Agent {
            http: builder.build().map_err(|e| format!("cannot build an HTTP client: {e}"))?,
            cookies: BTreeMap::new(),
        })
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            if let Some((name, value)) =
                v.to_str().ok().and_then(|v| v.split(';').next()).and_then(|p| p.split_once('='))
            {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn get(&mut self, url: &str, bearer: Option<&str>) -> Step<reqwest::Response> {
        let mut r = self.http.get(url).header("cookie", self.cookie_header());
        if let Some(token) = bearer {
            r = r.bearer_auth(token);
        }
        let answer = r.send().await.map_err(|e| format!("GET {url}: {e}"))?;
        self.keep(&answer);
        Ok(answer)
    }

    async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Step<reqwest::Response> {
        let answer = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        self.keep(&answer);
        Ok(answer)
    }

    /// A token request as the web app.
    async fn token(
        &self,
        issuer: &str,
        secret: &str,
        form: &[(&str, &str)],
    ) -> Step<(u16, serde_json::Value)> {
        let r = self
            .http
            .post(format!("{issuer}/token"))
            .basic_auth("webapp", Some(secret))
            .form(form)
            .send()
            .await
            .map_err(|e| format!("POST /token: {e}"))?;
        let status = r.status().as_u16();
        let body = r.bytes().await.map_err(|e| format!("POST /token: {e}"))?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)))
    }
}

/// A hidden field's value in a page.
fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("").replace("&amp;", "&")
}

fn location(r: &reqwest::Response) -> Step<String> {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a redirect, got {}", r.status()))
}

/// Signs in as alice (password, then the authenticator code) through /authorize with PKCE, and redeems
/// the code: her access and refresh token.
async fn sign_in(agent: &mut Agent, issuer: &str, secret: &str, totp: &[u8]) -> Step<(String, String)> {
    let verifier =
        crypto::new_secret(SecretKind::RefreshToken).map_err(|e| e.to_string())?.expose().to_owned();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let challenge = tessera_token::b64::encode(digest.as_ref());
    let query = form_query(&[
        ("response_type", "code"),
        ("client_id", "webapp"),
        ("redirect_uri", REDIRECT),
        ("scope", "orders:read"),
        ("resource", ORDERS),
        ("state", "demo"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let page = agent.get(&format!("{issuer}/authorize?{query}"), None).await?;
    let html = page.text().await.map_err(|e| e.to_string())?;
    let (csrf, back) = (field(&html, "csrf"), field(&html, "return"));
    let second = agent
        .post_form(
            &format!("{issuer}/login"),
            &[("csrf", &csrf), ("return", &back), ("username", "alice"), ("password", PASSWORD)],
        )
        .await?;
    let html = second.text().await.map_err(|e| e.to_string())?;
    if !html.contains("name=\"code\"") {
        return Err("the sign-in did not ask for the authenticator code".into());
    }
    let code = format!(
        "{:06}",
        tessera_core::mfa::totp_at(totp, tessera_core::mfa::totp_step(tessera_server::now()))
    );
    let done = agent
        .post_form(&format!("{issuer}/login/mfa"), &[("csrf", &field(&html, "csrf")), ("code", &code)])
        .await?;
    let to = location(&done)?;
    let to = if to.starts_with('/') { format!("{issuer}{to}") } else { to };
    let back = agent.get(&to, None).await?;
    let callback = location(&back)?;
    let code = reqwest::Url::parse(&callback)
        .map_err(|e| e.to_string())?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or("no code in the callback")?;
    let (status, body) = agent
        .token(
            issuer,
            secret,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
            ],
        )
        .await?;
    match (status, body["access_token"].as_str(), body["refresh_token"].as_str()) {
        (200, Some(a), Some(r)) => Ok((a.to_owned(), r.to_owned())),
        _ => Err(format!("the code exchange answered {status}")),
    }
}

fn form_query(pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

/// Registers the demo's resources, clients and user; the web app's secret, each gateway's, and alice's
/// authenticator key.
async fn directory(state: &AppState) -> Step<(String, String, String, Vec<u8>)> {
    let store = &state.store;
    let now = tessera_server::now();
    for (audience, scope) in [(ORDERS, "orders:read"), (BILLING, "billing:read")] {
        let r = Resource { audience: audience.into(), scopes: vec![scope.into()], created_at: now };
        store.create_resource(&r).await.map_err(|e| e.to_string())?;
    }
    let client = |id: &str, secret: &tessera_core::OpaqueSecret| Client {
        id: id.into(),
        name: id.into(),
        kind: ClientKind::Confidential,
        secret_hash: Some(secret.hash()),
        redirect_uris: vec![],
        grant_types: vec![],
        audiences: vec![],
        scopes: vec![],
        access_ttl: 300,
        refresh_idle_ttl: 86_400,
        refresh_absolute_ttl: 30 * 86_400,
        first_party: true,
        disabled: false,
        created_at: now,
        require_dpop: false,
        jwks: None,
        exchange_audiences: vec![],
        serves: vec![],
        mfa: MfaPolicy::Required,
    };
    let secret = |_: ()| crypto::new_secret(SecretKind::ClientSecret).map_err(|e| e.to_string());
    let web = secret(())?;
    let app = Client {
        redirect_uris: vec![REDIRECT.into()],
        grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
        audiences: vec![ORDERS.into()],
        scopes: vec!["orders:read".into()],
        ..client("webapp", &web)
    };
    store.create_client(&app).await.map_err(|e| e.to_string())?;
    let mut gateways = Vec::new();
    for (id, audience) in [("orders-gateway", ORDERS), ("billing-gateway", BILLING)] {
        let s = secret(())?;
        let gw = Client { serves: vec![audience.into()], audiences: vec![audience.into()], ..client(id, &s) };
        store.create_client(&gw).await.map_err(|e| e.to_string())?;
        gateways.push(s.expose().to_owned());
    }
    let user = User {
        id: "u_alice".into(),
        username: "alice".into(),
        password_hash: tessera_server::passwords::hash_blocking(PASSWORD)?,
        roles: vec![],
        disabled: false,
        created_at: now,
        password_changed_at: now,
        must_reset_password: false,
        step_up_after: None,
        email: None,
    };
    store.create_user(&user).await.map_err(|e| e.to_string())?;
    let key = crypto::random_bytes().map_err(|e| e.to_string())?[..20].to_vec();
    tessera_server::mfa::provision_totp(state, &user.id, &key, now).await?;
    let billing = gateways.pop().unwrap_or_default();
    let orders = gateways.pop().unwrap_or_default();
    Ok((web.expose().to_owned(), orders, billing, key))
}

/// A small echo service: answers every request with what it saw.
async fn echo() -> Step<SocketAddr> {
    let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        format!("{{\"echo\":\"{} {}\"}}\n", req.method(), req.uri().path().escape_default())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// A gateway for `audience` in front of the echo service; its address.
async fn gateway(
    dir: &Path,
    issuer: &str,
    upstream: SocketAddr,
    (id, audience, secret): (&str, &str, &str),
    policy: &str,
) -> Step<SocketAddr> {
    let policy_path: PathBuf = dir.join(format!("{id}.toml"));
    std::fs::write(&policy_path, policy).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let file = FileConfig {
        issuer: Some(issuer.into()),
        audience: Some(audience.into()),
        upstream: Some(format!("http://{upstream}")),
        listen: Some(addr.to_string()),
        policy: Some(policy_path.clone()),
        client_id: Some(id.into()),
        ..FileConfig::default()
    };
    let config = file.build(Some(secret.to_owned()))?;
    let mut guard_config = GuardConfig::new(issuer.to_owned(), audience, id, secret.to_owned());
    // Usage is reported four times a second, so that the story's detections come quickly.
    guard_config.report_interval = Duration::from_millis(250);
    let policy = Policy::load(&policy_path).map_err(|e| e.to_string())?;
    let guard = Guard::start(guard_config, policy).map_err(|e| e.to_string())?;
    if !guard.wait_ready(Duration::from_secs(10)).await {
        return Err(format!("the {id} guard did not become ready"));
    }
    let gw = Gateway::with_guard(config, guard);
    tokio::spawn(tessera_gateway::serve(gw, listener, None, std::future::pending::<()>()));
    Ok(addr)
}

async fn demo(dir: &Path) -> Result<(), Failure> {
    let fail = |e: String| Failure { code: 1, message: format!("demo: {e}") };
    if std::net::TcpListener::bind((ATTACKER, 0)).is_err() {
        return Err(Failure::usage(
            "demo: the attacker needs the loopback address 127.66.0.1 (Linux routes all of 127.0.0.0/8 to loopback)",
        ));
    }
    let mut story = Story { start: Instant::now(), checks: Vec::new() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| fail(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let issuer = format!("http://{addr}");
    let config = Config {
        listen: addr.to_string(),
        issuer: issuer.clone(),
        data_dir: dir.join("data"),
        database_url: String::new(),
        // A refresh-token reuse is certain theft: contain the user at once.
        responses: Responses {
            refresh_token_reuse: vec![Action::Contain, Action::Alert],
            ..Responses::default()
        },
        ..Config::default()
    };
    let (state, _) = tessera_server::prepare(config).await.map_err(|e| fail(e.0))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tessera_server::serve(Arc::clone(&state), listener, async move {
        let _ = stopped.await;
    }));
    let result = play(&mut story, &state, dir, &issuer).await;
    let _ = stop.send(());
    let _ = server.await;
    result.map_err(fail)?;
    let failed: Vec<&str> =
        story.checks.iter().filter(|(_, held)| !held).map(|(what, _)| what.as_str()).collect();
    if failed.is_empty() {
        story.say(&format!("the demo held: {} checks passed", story.checks.len()))
    } else {
        Err(Failure {
            code: 1,
            message: format!(
                "demo: {} of {} checks failed: {}",
                failed.len(),
                story.checks.len(),
                failed.join("; ")
            ),
        })
    }
}

const ORDERS_POLICY: &str =
    "default = \"deny\"\n\n[[route]]\nmethod = \"GET\"\npath = \"/orders/**\"\nscopes = [\"orders:read\"]\n";
const BILLING_POLICY: &str = "default = \"deny\"\n\n[[route]]\nmethod = \"GET\"\npath = \"/invoices/**\"\nscopes = [\"billing:read\"]\n";

/// Waits for `f` to hold, for at most `limit`.
async fn until<F, Fut>(limit: Duration, mut f: F) -> Step<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Step<bool>>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(false)
}

async fn play(story: &mut Story, state: &Arc<AppState>, dir: &Path, issuer: &str) -> Step<()> {
    let say = |s: &Story, text: &str| s.say(text).map_err(|e| e.message);
    let store = state.store.as_ref();
    say(story, &format!("authorization server on {issuer} (SQLite in {})", dir.display()))?;
    let (web_secret, orders_secret, billing_secret, totp) = directory(state).await?;
    let upstream = echo().await?;
    let orders =
        gateway(dir, issuer, upstream, ("orders-gateway", ORDERS, &orders_secret), ORDERS_POLICY).await?;
    let billing =
        gateway(dir, issuer, upstream, ("billing-gateway", BILLING, &billing_secret), BILLING_POLICY).await?;
    say(
        story,
        &format!(
            "echo service on {upstream}, behind the orders gateway on {orders} and the billing gateway on {billing}"
        ),
    )?;

    let mut alice = Agent::new("demo-webapp/1.0 (alice's laptop)", None)?;
    let (access, refresh) = sign_in(&mut alice, issuer, &web_secret, &totp).await?;
    say(story, "alice signs in to the web app from 127.0.0.1 with her password and her authenticator code")?;
    let status = alice.get(&format!("http://{orders}/orders/42"), Some(&access)).await?.status().as_u16();
    say(story, &format!("alice's app reads GET /orders/42 through the orders gateway: {status}"))?;
    story.check("the legitimate client is served", status == 200).map_err(|e| e.message)?;

    let mut thief = Agent::new("curl/8.5.0", Some(IpAddr::V4(ATTACKER)))?;
    say(
        story,
        "an attacker copies alice's refresh token and access token (a debug log, say) and works from 127.66.0.1",
    )?;
    let status = thief.get(&format!("http://{orders}/orders/7"), Some(&access)).await?.status().as_u16();
    say(
        story,
        &format!(
            "attacker: GET /orders/7 with the copied access token: {status} (a bearer token works for whoever holds it, until noticed)"
        ),
    )?;
    let (status, theirs) = thief
        .token(issuer, &web_secret, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .await?;
    let next = theirs["refresh_token"].as_str().unwrap_or_default().to_owned();
    let (status2, theirs) = thief
        .token(issuer, &web_secret, &[("grant_type", "refresh_token"), ("refresh_token", &next)])
        .await?;
    let stolen = theirs["access_token"].as_str().unwrap_or_default().to_owned();
    say(story, &format!("attacker: rotates the stolen refresh token twice: {status}, {status2}"))?;
    let status = thief.get(&format!("http://{orders}/orders/8"), Some(&stolen)).await?.status().as_u16();
    say(story, &format!("attacker: GET /orders/8 with the fresh access token: {status}"))?;
    let status = thief.get(&format!("http://{billing}/invoices/1"), Some(&stolen)).await?.status().as_u16();
    say(
        story,
        &format!("attacker: tries the orders token at the billing service, GET /invoices/1: {status}"),
    )?;
    story
        .check("the token is refused at a service it was not issued for", status == 401)
        .map_err(|e| e.message)?;

    let reused = Instant::now();
    let (status, answer) = alice
        .token(issuer, &web_secret, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .await?;
    say(
        story,
        &format!(
            "alice's app refreshes with the token it holds, which the attacker already rotated: {status} {}",
            answer["error"].as_str().unwrap_or("")
        ),
    )?;
    story.check("the reuse of a rotated refresh token is refused", status == 400).map_err(|e| e.message)?;

    // The detector reads the log four times a second; the gateways report four times a second.
    let contained = until(Duration::from_secs(10), || async {
        Ok(store.list_incidents(Some("contained"), 10).await.map_err(|e| e.to_string())?.len() == 1)
    })
    .await?;
    let contained_after = reused.elapsed();
    for e in store.recent_events(Some("detection_raised"), 20).await.map_err(|e| e.to_string())?.iter().rev()
    {
        let explanation = e
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .and_then(|d| d["explanation"].as_str().map(str::to_owned))
            .unwrap_or_default();
        say(
            story,
            &format!(
                "detection {} ({}): {explanation}",
                e.reason.as_deref().unwrap_or("?"),
                e.outcome.as_deref().unwrap_or("?")
            ),
        )?;
    }
    story
        .check("the theft is detected and alice is contained automatically", contained)
        .map_err(|e| e.message)?;
    let incident = store
        .list_incidents(None, 1)
        .await
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or("no incident was opened")?;
    say(
        story,
        &format!(
            "incident {} opened by {} and contained {:.0} ms after the reuse: every session and token of alice revoked, a password reset forced",
            incident.id,
            incident.opened_by,
            contained_after.as_secs_f64() * 1000.0
        ),
    )?;

    let since = Instant::now();
    let url = format!("http://{orders}/orders/9");
    let mut refused = false;
    while since.elapsed() < Duration::from_secs(1) {
        if thief.get(&url, Some(&stolen)).await?.status().as_u16() == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    say(
        story,
        &format!(
            "attacker: GET /orders/9 with the stolen token: refused after {:.0} ms",
            since.elapsed().as_secs_f64() * 1000.0
        ),
    )?;
    story.check("the attacker is refused within a second of containment", refused).map_err(|e| e.message)?;
    let (status, _) = thief
        .token(
            issuer,
            &web_secret,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", theirs["refresh_token"].as_str().unwrap_or_default()),
            ],
        )
        .await?;
    say(story, &format!("attacker: refreshes the newest stolen refresh token: {status}"))?;
    story.check("the stolen refresh tokens are dead", status == 400).map_err(|e| e.message)?;
    let alices = alice.get(&format!("http://{orders}/orders/42"), Some(&access)).await?.status().as_u16();
    say(
        story,
        &format!(
            "alice's old access token is refused too ({alices}); her next sign-in must set a new password"
        ),
    )?;
    let must =
        store.user_by_id("u_alice").await.map_err(|e| e.to_string())?.is_some_and(|u| u.must_reset_password);
    story.check("alice must reset her password", must).map_err(|e| e.message)?;

    // Let the gateways' last reports in, then the report.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = incident::report(store, incident.id).await.map_err(|e| e.to_string())?;
    let services: Vec<&str> = report.reached_by_copy.iter().map(|r| r.service.as_str()).collect();
    let after: u64 =
        report.reached_by_copy.iter().chain(&report.reached_by_owner).map(|r| r.after_containment).sum();
    let rules: Vec<&str> = report.detections.iter().filter_map(|d| d.reason.as_deref()).collect();
    story
        .check(
            "the report names the orders service as reached by the copy, and only it",
            services == ["orders-gateway"],
        )
        .map_err(|e| e.message)?;
    story.check("the report shows nothing reached after containment", after == 0).map_err(|e| e.message)?;
    story
        .check(
            "refresh-token reuse and the lateral-movement probe were both detected",
            rules.contains(&"refresh_token_reuse") && rules.contains(&"lateral_movement_probe"),
        )
        .map_err(|e| e.message)?;
    say(story, &format!("the incident report (tessera incident report {}):", incident.id))?;
    emit("").map_err(|e| e.message)?;
    emit(report.markdown().trim_end()).map_err(|e| e.message)?;
    emit("").map_err(|e| e.message)?;
    Ok(())
}
