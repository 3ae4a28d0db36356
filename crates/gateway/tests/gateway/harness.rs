//! The world a test runs in: a server, a recording upstream, and a gateway between client and upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tessera_core::{ClientKind, GrantType, SecretKind};
use tessera_gateway::{Gateway, GatewayConfig};
use tessera_guard::{Guard, GuardConfig, Policy};
use tessera_server::issue::AccessGrant;
use tessera_server::{AppState, Config};
use tessera_store::{Client, Resource, User};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const API: &str = "https://orders.example";
pub const OTHER_API: &str = "https://billing.example";
pub const GATEWAY_CLIENT: &str = "orders-gateway";

pub const POLICY: &str = r#"
default = "deny"

[[route]]
method = "GET"
path = "/orders/{id}"
scopes = ["orders:read"]

[[route]]
method = "POST"
path = "/orders"
scopes = ["orders:write"]

[[route]]
method = ["GET", "POST"]
path = "/admin/**"
scopes = ["orders:read"]
roles = ["admin"]

[[route]]
method = "POST"
path = "/echo"
scopes = ["orders:read"]

[[route]]
method = "POST"
path = "/collect"
scopes = ["orders:read"]

[[route]]
method = "GET"
path = "/slow"
scopes = ["orders:read"]

[[route]]
method = "GET"
path = "/public/**"
public = true
"#;

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running authorization server that can be stopped and started again on the same address and data.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    config: Config,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Arc<tempfile::TempDir>,
    schema: Option<(String, String)>,
}

async fn admin_sql(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

impl Server {
    /// Starts a server whose configuration `adjust` changes first.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<Server> {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let (database_url, schema) = match backend {
            Backend::Sqlite => (String::new(), None),
            Backend::Postgres => {
                let Some(url) = std::env::var("TESSERA_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())
                else {
                    #[allow(clippy::print_stderr, reason = "a skipped test says so")]
                    {
                        eprintln!(
                            "skipped: TESSERA_TEST_DATABASE_URL is not set, PostgreSQL gateway test not run"
                        );
                    }
                    return None;
                };
                use std::hash::{BuildHasher, Hasher};
                let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
                let schema = format!("tessera_gw_{}_{random:016x}", std::process::id());
                admin_sql(&url, &format!("CREATE SCHEMA {schema}")).await;
                let sep = if url.contains('?') { '&' } else { '?' };
                (format!("{url}{sep}options[search_path]={schema}"), Some((url, schema)))
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config {
            listen: addr.to_string(),
            issuer: format!("http://{addr}"),
            data_dir: dir.path().join("data"),
            database_url,
            ..Config::default()
        };
        adjust(&mut config);
        let (state, _) = tessera_server::prepare(config.clone()).await.unwrap();
        let mut server = Server { addr, state, config, stop: None, task: None, _dir: dir, schema };
        server.run(listener);
        Some(server)
    }

    fn run(&mut self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task =
            Some(tokio::spawn(tessera_server::serve(Arc::clone(&self.state), listener, async move {
                let _ = stopped.await;
            })));
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (the store stays open, so a test can revoke while the server is down).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Starts again on the same address, data directory and database.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (state, _) = tessera_server::prepare(self.config.clone()).await.unwrap();
        self.state = state;
        self.run(listener);
    }

    pub async fn finish(mut self) {
        self.stop().await;
        if let Some((url, schema)) = &self.schema {
            admin_sql(url, &format!("DROP SCHEMA {schema} CASCADE")).await;
        }
    }

    pub async fn add_resource(&self, audience: &str, scopes: &[&str]) {
        let r = Resource {
            audience: audience.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            created_at: tessera_server::now(),
        };
        self.state.store.create_resource(&r).await.unwrap();
    }

    /// A confidential client with `audiences`; returns its secret.
    /// Registers a user `id` named `username` with `password`.
    pub async fn add_user(&self, id: &str, username: &str, password: &str) {
        let user = User {
            id: id.into(),
            username: username.into(),
            password_hash: tessera_server::passwords::hash_blocking(password).unwrap(),
            roles: vec![],
            disabled: false,
            created_at: tessera_server::now(),
            password_changed_at: tessera_server::now(),
            must_reset_password: false,
            step_up_after: None,
            email: None,
        };
        self.state.store.create_user(&user).await.unwrap();
    }

    pub async fn add_client(&self, id: &str, audiences: &[&str]) -> String {
        let secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap();
        let client = Client { secret_hash: Some(secret.hash()), ..service_client(id, audiences) };
        self.state.store.create_client(&client).await.unwrap();
        secret.expose().to_owned()
    }
}

/// A confidential client record `id` that serves `audiences` (a gateway's, or a service's that receives
/// tokens for them) and may get tokens for them, without a credential: client_credentials, scope
/// orders:read. Tests set the credential and whatever else they need.
pub fn service_client(id: &str, audiences: &[&str]) -> Client {
    Client {
        id: id.into(),
        name: id.into(),
        kind: ClientKind::Confidential,
        secret_hash: None,
        redirect_uris: vec![],
        grant_types: vec![GrantType::ClientCredentials],
        audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
        scopes: vec!["orders:read".into()],
        access_ttl: 300,
        refresh_idle_ttl: 3600,
        refresh_absolute_ttl: 86_400,
        first_party: true,
        disabled: false,
        created_at: tessera_server::now(),
        require_dpop: false,
        jwks: None,
        exchange_audiences: Vec::new(),
        serves: audiences.iter().map(|s| (*s).to_owned()).collect(),
        mfa: tessera_core::mfa::MfaPolicy::default(),
    }
}

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An upstream that records every request and answers 200 (`/echo` streams the body back, `/collect` reads
/// the whole body first and answers with its length, `/slow` waits 3 s).
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |req: Request| {
            let record = Arc::clone(&record);
            async move {
                let entry = Seen {
                    method: req.method().to_string(),
                    path_and_query: req.uri().path_and_query().map(ToString::to_string).unwrap_or_default(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                };
                record.lock().unwrap().push(entry);
                match req.uri().path() {
                    "/echo" => Body::new(req.into_body()).into_response(),
                    "/collect" => match http_body_util::BodyExt::collect(req.into_body()).await {
                        Ok(all) => format!("{} bytes", all.to_bytes().len()).into_response(),
                        Err(_) => (axum::http::StatusCode::UNPROCESSABLE_ENTITY, "broken").into_response(),
                    },
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        "slow".into_response()
                    }
                    path => format!("upstream saw {path}").into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, seen, task }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a test wants its gateway.
#[derive(Debug, Clone)]
pub struct Options {
    pub staleness: Duration,
    pub upstream_timeout: Duration,
    pub policy: &'static str,
    /// The gateway and the server believe `X-Forwarded-For` from loopback (tests play many sources).
    pub trusted_proxies: bool,
    /// Where the server sends alerts (its webhook secret is [`WEBHOOK_SECRET`]).
    pub webhook_url: Option<String>,
    /// The server's `[responses]`, if not the defaults.
    pub responses: Option<tessera_server::response::Responses>,
    /// The server reads the GeoIP fixture databases (`tessera_testkit::geoip_dir`).
    pub geoip: bool,
    /// How often the guard refetches the JWKS, if not its default (60 s).
    pub jwks_refresh: Option<Duration>,
    /// The guard asks DPoP clients for its own nonces.
    pub dpop_nonce: bool,
}

/// The test webhook's HMAC key.
pub const WEBHOOK_SECRET: &str = "whsec-0123456789abcdef0123456789abcdef";

impl Default for Options {
    fn default() -> Self {
        Options {
            staleness: Duration::from_secs(900),
            upstream_timeout: Duration::from_secs(30),
            policy: POLICY,
            trusted_proxies: false,
            webhook_url: None,
            responses: None,
            geoip: false,
            jwks_refresh: None,
            dpop_nonce: false,
        }
    }
}

/// A server, an upstream and a gateway.
pub struct World {
    pub server: Server,
    pub upstream: Upstream,
    pub gateway: Arc<Gateway>,
    pub addr: SocketAddr,
    front: Front,
}

/// A gateway serving on its own loopback port, for one audience, until [`Front::stop`].
pub struct Front {
    pub gateway: Arc<Gateway>,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Front {
    /// Starts a gateway for `audience` in front of `upstream`, with `policy`, authenticating to the server as
    /// the resource server's client `client_id`; waits until its guard is ready.
    pub async fn start(
        server: &Server,
        upstream: &Upstream,
        audience: &str,
        client_id: &str,
        secret: &str,
        options: &Options,
    ) -> Front {
        let dir = tempfile::tempdir().unwrap();
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, options.policy).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = tessera_gateway::FileConfig {
            issuer: Some(server.issuer()),
            audience: Some(audience.into()),
            upstream: Some(format!("http://{}", upstream.addr)),
            listen: Some(addr.to_string()),
            policy: Some(policy_path.clone()),
            client_id: Some(client_id.into()),
            trusted_proxies: options.trusted_proxies.then(|| vec!["127.0.0.1".to_owned()]),
            ..Default::default()
        };
        let mut config: GatewayConfig = config.build(Some(secret.to_owned())).unwrap();
        config.upstream_timeout = options.upstream_timeout;
        let mut guard_config = GuardConfig::new(server.issuer(), audience, client_id, secret.to_owned());
        guard_config.staleness = options.staleness;
        guard_config.report_interval = Duration::from_millis(100);
        guard_config.jwks_min_refetch = Duration::from_millis(100);
        guard_config.dpop_nonce = options.dpop_nonce;
        if let Some(every) = options.jwks_refresh {
            guard_config.jwks_refresh = every;
        }
        guard_config.public_url = Some(format!("http://{addr}"));
        let guard = Guard::start(guard_config, Policy::load(&policy_path).unwrap()).unwrap();
        assert!(guard.wait_ready(Duration::from_secs(10)).await, "the guard became ready");
        let gateway = Gateway::with_guard(config, guard);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tessera_gateway::serve(Arc::clone(&gateway), listener, None, async move {
            let _ = stopped.await;
        }));
        Front { gateway, addr, stop: Some(stop), task: Some(task), _dir: dir }
    }

    /// Stops serving and waits for the gateway to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Sends raw HTTP/1.1 bytes to this gateway; returns the status.
    pub async fn raw(&self, request: &str) -> u16 {
        raw_status(self.addr, request).await
    }
}

impl World {
    pub async fn start(backend: Backend) -> Option<World> {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Option<World> {
        let trusted = options.trusted_proxies;
        let webhook = options.webhook_url.clone();
        let responses = options.responses.clone();
        let geoip = options.geoip;
        let server = Server::start_with(backend, move |c| {
            if geoip {
                let dir = tessera_testkit::geoip_dir();
                c.geoip.city_db = dir.join("test-city.mmdb").display().to_string();
                c.geoip.asn_db = dir.join("test-asn.mmdb").display().to_string();
            }
            if let Some(responses) = responses {
                c.responses = responses;
            }
            if trusted {
                c.trusted_proxies = vec!["127.0.0.1".into()];
            }
            if let Some(url) = webhook {
                c.alerts.webhook_url = url;
                c.alerts.webhook_secret = WEBHOOK_SECRET.into();
            }
        })
        .await?;
        server.add_resource(API, &["orders:read", "orders:write"]).await;
        server.add_resource(OTHER_API, &["billing:read"]).await;
        let secret = server.add_client(GATEWAY_CLIENT, &[API]).await;
        let upstream = Upstream::start().await;
        let front = Front::start(&server, &upstream, API, GATEWAY_CLIENT, &secret, &options).await;
        Some(World { gateway: Arc::clone(&front.gateway), addr: front.addr, server, upstream, front })
    }

    pub async fn finish(self) {
        self.front.stop().await;
        self.server.finish().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A genuine access token from the server's current key.
    pub fn token(&self, grant: Grant) -> (String, String) {
        let now = tessera_server::now() - grant.age;
        let minted = tessera_server::issue::access_token(
            &self.server.state,
            AccessGrant {
                sub: grant.sub.into(),
                client_id: grant.client_id.into(),
                audience: grant.audience.into(),
                scope: grant.scope.into(),
                sid: grant.sid.map(Into::into),
                roles: grant.roles.iter().map(|r| (*r).to_owned()).collect(),
                auth_time: Some(now),
                amr: vec!["pwd".into()],
                ttl: 300,
                jkt: grant.jkt.clone(),
                act: None,
                origin: Vec::new(),
            },
            now,
        )
        .unwrap();
        (minted.token, minted.jti)
    }

    /// Signs arbitrary header and claims with the server's current key.
    pub fn sign_raw(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let keyring = self.server.state.keyring();
        let signing_input =
            format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = keyring.signer().sign(signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", b64(&sig))
    }

    pub fn kid(&self) -> String {
        self.server.state.keyring().signer().kid().to_owned()
    }

    /// Standard claims for `sign_raw`, valid now.
    pub fn claims(&self) -> serde_json::Value {
        let now = tessera_server::now();
        serde_json::json!({
            "iss": self.server.issuer(), "sub": "u_alice", "aud": API, "exp": now + 300, "iat": now - 1,
            "jti": format!("raw-{}", now), "client_id": "web", "scope": "orders:read",
        })
    }

    /// Sends raw HTTP/1.1 bytes (so paths and headers go exactly as written); returns the status.
    pub async fn raw(&self, request: &str) -> u16 {
        raw_status(self.addr, request).await
    }
}

pub async fn raw_status(addr: SocketAddr, request: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).unwrap_or("0");
    status.parse().unwrap_or(0)
}

/// A GET with optional bearer token, `Connection: close`.
pub fn get(path: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        ),
        None => format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
    }
}

/// A GET from `source` (as the trusted proxy in front of the gateway reports it).
pub fn get_from(path: &str, token: Option<&str>, source: &str) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: {source}\r\n{auth}Connection: close\r\n\r\n")
}

/// Whether a webhook request carries a valid `Tessera-Signature` under [`WEBHOOK_SECRET`].
pub fn signed(r: &tessera_testkit::Received) -> bool {
    r.signed_with(WEBHOOK_SECRET)
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct Grant {
    pub sub: &'static str,
    pub client_id: &'static str,
    pub audience: &'static str,
    pub scope: &'static str,
    pub sid: Option<&'static str>,
    pub roles: &'static [&'static str],
    /// Seconds before now that the token was issued.
    pub age: i64,
    /// The DPoP key thumbprint the token is bound to.
    pub jkt: Option<String>,
}

impl Default for Grant {
    fn default() -> Self {
        Grant {
            sub: "u_alice",
            client_id: "web",
            audience: API,
            scope: "orders:read",
            sid: Some("fam_alice_1"),
            roles: &[],
            age: 2,
            jkt: None,
        }
    }
}

/// Waits until `f` holds, for at most `limit`; returns how long it took.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}
