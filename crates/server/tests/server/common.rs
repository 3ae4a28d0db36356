//! The harness: an in-process server on a free loopback port over SQLite (a temporary directory) or
//! PostgreSQL (its own schema), a cookie-keeping browser, and an `oauth2`-crate client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthUrl, ClientId, ClientSecret, EndpointNotSet, EndpointSet, ExtraTokenFields, IntrospectionUrl,
    RedirectUrl, RevocationUrl, StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use tessera_core::{ClientKind, GrantType, SecretKind};
use tessera_server::{AppState, Config};
use tessera_store::{Client, Resource, User};
use tessera_token::KeySet;

pub const REDIRECT: &str = "http://127.0.0.1:9999/callback";
pub const API: &str = "https://orders.example";
pub const PASSWORD: &str = "correct horse battery";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running server.
pub struct Server {
    pub base: String,
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
    schema: Option<(String, String)>,
}

/// Runs `sql` on the test database.
pub async fn admin_sql(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

/// A new schema in the test database and a URL whose connections use it; `None` without PostgreSQL.
pub async fn postgres_schema() -> Option<(String, String, String)> {
    let Some(url) = std::env::var("TESSERA_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        #[allow(clippy::print_stderr, reason = "a skipped test says so")]
        {
            eprintln!("skipped: TESSERA_TEST_DATABASE_URL is not set, PostgreSQL server tests not run");
        }
        return None;
    };
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let schema = format!("tessera_srv_{}_{random:016x}", std::process::id());
    admin_sql(&url, &format!("CREATE SCHEMA {schema}")).await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options[search_path]={schema}");
    Some((url, schema, scoped))
}

impl Server {
    pub async fn start(backend: Backend) -> Option<Server> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<Server> {
        let dir = tempfile::tempdir().unwrap();
        let (database_url, schema) = match backend {
            Backend::Sqlite => (String::new(), None),
            Backend::Postgres => {
                let (url, schema, scoped) = postgres_schema().await?;
                (scoped, Some((url, schema)))
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
        let (state, _) = tessera_server::prepare(config).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tessera_server::serve(Arc::clone(&state), listener, async move {
            let _ = stopped.await;
        }));
        Some(Server {
            base: format!("http://{addr}"),
            state,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
            schema,
        })
    }

    /// Asks the server to stop (as SIGTERM does) without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        if let Some((url, schema)) = &self.schema {
            admin_sql(url, &format!("DROP SCHEMA {schema} CASCADE")).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers a client directly in the store; returns its secret if confidential.
    pub async fn add_client(
        &self,
        id: &str,
        kind: ClientKind,
        grants: &[GrantType],
        audiences: &[&str],
        scopes: &[&str],
        first_party: bool,
    ) -> Option<String> {
        let secret = (kind == ClientKind::Confidential)
            .then(|| tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap());
        let client = Client {
            name: format!("{id} app"),
            kind,
            secret_hash: secret.as_ref().map(|s| s.hash()),
            redirect_uris: vec![REDIRECT.into()],
            grant_types: grants.to_vec(),
            audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            first_party,
            ..service_client(id)
        };
        self.state.store.create_client(&client).await.unwrap();
        secret.map(|s| s.expose().to_owned())
    }

    /// A confidential service client `id` (client_credentials for API, scope orders:read); returns its secret.
    pub async fn add_service_client(&self, id: &str) -> String {
        let grants = [GrantType::ClientCredentials];
        self.add_client(id, ClientKind::Confidential, &grants, &[API], &["orders:read"], true).await.unwrap()
    }

    /// A resource server's own client (its guard's): a service client that serves API; returns its secret.
    pub async fn add_resource_server(&self, id: &str) -> String {
        let secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap();
        let client =
            Client { secret_hash: Some(secret.hash()), serves: vec![API.into()], ..service_client(id) };
        self.state.store.create_client(&client).await.unwrap();
        secret.expose().to_owned()
    }

    /// A confidential service client like [`Self::add_service_client`] that must use DPoP.
    pub async fn add_dpop_service_client(&self, id: &str) -> String {
        let secret = tessera_server::crypto::new_secret(SecretKind::ClientSecret).unwrap();
        let client = Client { secret_hash: Some(secret.hash()), require_dpop: true, ..service_client(id) };
        self.state.store.create_client(&client).await.unwrap();
        secret.expose().to_owned()
    }

    pub async fn add_resource(&self, audience: &str, scopes: &[&str]) {
        let r = Resource {
            audience: audience.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            created_at: tessera_server::now(),
        };
        self.state.store.create_resource(&r).await.unwrap();
    }

    pub async fn add_user(&self, username: &str, roles: &[&str]) -> User {
        let user = User {
            id: format!("u_{username}"),
            username: username.into(),
            password_hash: tessera_server::passwords::hash_blocking(PASSWORD).unwrap(),
            roles: roles.iter().map(|s| (*s).to_owned()).collect(),
            disabled: false,
            created_at: tessera_server::now(),
            password_changed_at: tessera_server::now(),
            must_reset_password: false,
            step_up_after: None,
            email: None,
        };
        self.state.store.create_user(&user).await.unwrap();
        user
    }

    /// The published keys, fetched over HTTP as a relying party would.
    pub async fn jwks(&self) -> KeySet {
        let text = reqwest::get(self.url("/jwks.json")).await.unwrap().text().await.unwrap();
        KeySet::from_jwks(&text).unwrap()
    }

    /// An `oauth2`-crate client with every endpoint set.
    pub fn oauth(&self, id: &str, secret: Option<&str>) -> OAuthClient {
        let client = oauth2::Client::<
            BasicErrorResponse,
            Tokens,
            BasicTokenIntrospectionResponse,
            StandardRevocableToken,
            BasicRevocationErrorResponse,
        >::new(ClientId::new(id.into()))
        .set_auth_uri(AuthUrl::new(self.url("/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(self.url("/token")).unwrap())
        .set_revocation_url(RevocationUrl::new(self.url("/revoke")).unwrap())
        .set_introspection_url(IntrospectionUrl::new(self.url("/introspect")).unwrap())
        .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap());
        match secret {
            Some(s) => client.set_client_secret(ClientSecret::new(s.into())),
            None => client,
        }
    }
}

/// A confidential first-party service client record `id` without a credential: client_credentials for API,
/// scope orders:read, bearer tokens. Tests set the credential and whatever else they need.
pub fn service_client(id: &str) -> Client {
    Client {
        id: id.into(),
        name: format!("{id} service"),
        kind: ClientKind::Confidential,
        secret_hash: None,
        redirect_uris: Vec::new(),
        grant_types: vec![GrantType::ClientCredentials],
        audiences: vec![API.into()],
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
        serves: Vec::new(),
        mfa: tessera_core::mfa::MfaPolicy::default(),
    }
}

/// The token response's OIDC extra: the ID token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IdTokenField {
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

/// What the relying party gets from the token endpoint.
pub type Tokens = StandardTokenResponse<IdTokenField, BasicTokenType>;

/// An `oauth2`-crate client that also reads the ID token.
pub type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    Tokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointSet,
    EndpointSet,
    EndpointSet,
>;

/// An HTTP client that follows no redirects.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A browser: keeps cookies, follows no redirects by itself.
pub struct Browser {
    http: reqwest::Client,
    jar: Mutex<HashMap<String, String>>,
    pub last_set_cookies: Mutex<Vec<String>>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser { http: http(), jar: Mutex::default(), last_set_cookies: Mutex::default() }
    }
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.jar.lock().unwrap().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn keep(&self, response: &reqwest::Response) {
        let mut seen = Vec::new();
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap().to_owned();
            let (pair, _) = text.split_once(';').unwrap_or((&text, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if text.contains("Max-Age=0") {
                self.jar.lock().unwrap().remove(k);
            } else {
                self.jar.lock().unwrap().insert(k.to_owned(), v.to_owned());
            }
            seen.push(text);
        }
        *self.last_set_cookies.lock().unwrap() = seen;
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        let r = self.http.get(url).header("cookie", self.cookie_header()).send().await.unwrap();
        self.keep(&r);
        r
    }

    pub async fn post(&self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let r = self.http.post(url).header("cookie", self.cookie_header()).form(form).send().await.unwrap();
        self.keep(&r);
        r
    }
}

/// The value of a hidden input in a page.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].replace("&amp;", "&").replace("&quot;", "\"").replace("&#39;", "'")
}

/// The `Location` of a redirect.
pub fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no location; status {}", r.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Query parameters of a URL.
pub fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// Signs in on the login form that `page` (the answer to an authorization request) shows, and follows the
/// redirect back to `/authorize`; returns that answer.
pub async fn sign_in(
    server: &Server,
    browser: &Browser,
    page: reqwest::Response,
    username: &str,
    password: &str,
) -> reqwest::Response {
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = hidden(&html, "csrf");
    let ret = hidden(&html, "return");
    let r = browser
        .post(
            &server.url("/login"),
            &[("csrf", &csrf), ("return", &ret), ("username", username), ("password", password)],
        )
        .await;
    assert_eq!(r.status(), 303, "login should redirect");
    browser.get(&server.url(&location(&r))).await
}
