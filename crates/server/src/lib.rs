//! Tessera's authorization server: OAuth 2.1 and OpenID Connect over axum, on the [`tessera_store`] traits.
//!
//! [`prepare`] does everything a start needs (data directory, key-encryption key, database and migrations,
//! a first signing key) and [`serve`] answers HTTP until the shutdown future completes. The binary's
//! `tessera serve` calls both; tests call them in-process on a free port.

pub mod admin_api;
pub mod alerts;
mod authorize;
pub mod config;
pub mod crypto;
pub mod detector;
pub mod directory;
pub mod dpop;
pub mod endpoints;
pub mod exchange;
pub mod geoip;
pub mod incident;
pub mod ingest;
pub mod issue;
pub mod keyring;
pub mod metrics;
pub mod mfa;
pub mod notify;
pub mod oauth;
pub mod passkeys;
mod password;
pub mod passwords;
pub mod response;
mod risk;
mod routes;
pub mod stream;
mod throttle;
mod token;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tessera_core::{ClientKind, GrantType, SecretKind};
use tessera_store::{Client, Event, Resource, Store, StoreError};
use tokio::net::TcpListener;

pub use config::{Config, ConfigError, Overrides};
use crypto::{Kek, KekSource};
use keyring::Keyring;
use metrics::Metrics;
use oauth::OAuthError;
use passwords::Passwords;

/// The current time, Unix seconds. The server's only clock: everything below takes `now` as an argument.
/// Whether `source` (an address or CIDR) overlaps one of the `trusted` proxies' networks.
pub fn covers_a_proxy(trusted: &[ipnet::IpNet], source: &str) -> bool {
    let net = source
        .parse::<ipnet::IpNet>()
        .or_else(|_| source.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
    net.is_ok_and(|net| trusted.iter().any(|p| net.contains(&p.network()) || p.contains(&net.network())))
}

/// A Unix time as RFC 3339 in UTC, to the second (what every report and listing prints).
pub fn rfc3339(at: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(at).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

pub fn now() -> i64 {
    #[allow(clippy::disallowed_methods, reason = "the server's one clock read, at the edge")]
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Everything a request handler can reach.
pub struct AppState {
    /// The effective configuration.
    pub config: Config,
    /// The database.
    pub store: Arc<dyn Store>,
    /// Clients, resources and users, cached with a bounded staleness.
    pub directory: directory::Directory,
    /// The key-encryption key.
    pub kek: Kek,
    keyring: RwLock<Arc<Keyring>>,
    /// Metrics.
    pub metrics: Metrics,
    /// The bounded password hasher.
    pub passwords: Passwords,
    /// Newly committed revocations, fanned out to the guards' streams.
    pub revocations: stream::RevocationFeed,
    /// Set when the server starts shutting down, so that endless responses (the guards' streams) end.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// Wakes the alert deliverer: a detection released alerts.
    pub alerts_due: tokio::sync::Notify,
    /// The operator's GeoIP databases, when configured.
    pub geo: Option<geoip::GeoIp>,
    /// What a new password must be.
    pub password_rules: passwords::Rules,
    /// Sends reset links and notices to users.
    pub notifier: notify::Notifier,
    /// The WebAuthn relying party; `None` when passkeys are off.
    pub webauthn: Option<webauthn_rs::Webauthn>,
    /// Takes this node's login-throttle updates one at a time (see [`throttle`]).
    throttle_turn: tokio::sync::Mutex<()>,
    /// The checked keys of DPoP proofs that verified, by header segment.
    pub(crate) proof_keys: tessera_core::proof_keys::ProofKeys,
    /// The proxies whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The clients that may read `/metrics`.
    metrics_allow: Vec<ipnet::IpNet>,
    discovery: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("issuer", &self.config.issuer)
            .field("store", &self.store.backend())
            .finish()
    }
}

impl AppState {
    /// Whether `source` (an address or CIDR) covers a trusted proxy: blocking it would block everyone
    /// behind that proxy, so a detection never does.
    pub fn never_blocks(&self, source: &str) -> bool {
        covers_a_proxy(&self.trusted_proxies, source)
    }

    /// The keys in use now.
    pub fn keyring(&self) -> Arc<Keyring> {
        match self.keyring.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set_keyring(&self, keyring: Keyring) {
        let keyring = Arc::new(keyring);
        match self.keyring.write() {
            Ok(mut guard) => *guard = keyring,
            Err(poisoned) => *poisoned.into_inner() = keyring,
        }
    }

    /// Records a security event; a failure to record is logged, never shown to the client.
    pub async fn event(&self, event: Event) {
        self.events(std::slice::from_ref(&event)).await;
    }

    /// Records events together, in order, in one append; a failure is logged, and the caller goes on.
    pub async fn events(&self, events: &[Event]) {
        if let Err(e) = self.store.append_events(events).await {
            let kind = events.first().map(|e| e.kind.as_str()).unwrap_or_default();
            tracing::error!(error = %e, kind, count = events.len(), "cannot record events");
        }
    }

    /// Records an event that must be on the audit log before the request may succeed (an issuance):
    /// if it cannot be written, the request fails with 503 and nothing is handed out.
    ///
    /// # Errors
    /// `temporarily_unavailable` when the log cannot be written: the client may retry.
    pub async fn record(&self, event: Event) -> Result<(), OAuthError> {
        self.store.append_event(&event).await.map_err(|e| {
            tracing::error!(error = %e, kind = %event.kind, "cannot write the audit log; nothing issued");
            self.metrics.audit_write_failed();
            OAuthError::temporarily_unavailable()
        })
    }

    /// The scopes a registered resource defines.
    ///
    /// # Errors
    /// `invalid_target` if no such resource is registered.
    pub async fn resource_scopes(&self, audience: &str) -> Result<Vec<String>, OAuthError> {
        match self.directory.resource(audience).await? {
            Some(r) => Ok(r.scopes),
            None => Err(OAuthError::invalid_target()),
        }
    }
}

/// Who sent a request: source address and user agent, for events and logs.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// Peer IP.
    pub ip: Option<String>,
    /// `User-Agent`, at most 256 bytes.
    pub user_agent: Option<String>,
    /// The hash prefix of the browser's device cookie, when it sent one (see [`web::device`]): a refresh
    /// from the browser that signed in carries it, a copied token replayed elsewhere does not.
    pub device: Option<String>,
}

impl RequestMeta {
    /// An event at `now` carrying this request's source.
    pub fn event(&self, now: i64) -> Event {
        Event { at: now, ip: self.ip.clone(), user_agent: self.user_agent.clone(), ..Event::default() }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ClientAddr>()
            .map(|c| c.0.to_string())
            .or_else(|| parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()));
        let user_agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|ua| {
            let mut end = ua.len().min(256);
            while !ua.is_char_boundary(end) {
                end -= 1;
            }
            ua[..end].to_owned()
        });
        let device = ["__Host-tessera_device", "tessera_device"]
            .into_iter()
            .find_map(|name| web::cookie(&parts.headers, name))
            .filter(|v| v.len() == 22)
            .map(|id| tessera_core::TokenHash::of(id).short());
        Ok(RequestMeta { ip, user_agent, device })
    }
}

/// A failure to start: one line for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn start_error(e: impl std::fmt::Display) -> StartError {
    StartError(e.to_string())
}

/// What a start created, for the first-start message. `Debug` leaves out the quickstart secret.
#[derive(Default)]
pub struct Startup {
    /// The data directory was created.
    pub created_data_dir: bool,
    /// Where the KEK came from.
    pub kek: Option<KekSource>,
    /// The kid of a signing key created now.
    pub created_key: Option<String>,
    /// A quickstart client created now: its id, secret (shown once) and audience.
    pub quickstart: Option<(String, String, String)>,
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("created_data_dir", &self.created_data_dir)
            .field("kek", &self.kek)
            .field("created_key", &self.created_key)
            .field("quickstart", &self.quickstart.as_ref().map(|(id, _, aud)| (id, "[REDACTED]", aud)))
            .finish()
    }
}

/// The quickstart client and resource created on first start, so that the printed `curl` line works.
pub const QUICKSTART_CLIENT: &str = "quickstart";
/// The quickstart resource's audience.
pub const QUICKSTART_AUDIENCE: &str = "urn:tessera:quickstart";

/// Registers the admin API's audience (`tessera-admin`, scope `admin`) if it is not registered yet, so that
/// a client may be given it (`tessera client add … --audience tessera-admin`).
async fn ensure_admin_resource(store: &dyn tessera_store::Store, now: i64) -> Result<(), StartError> {
    if store.resource(admin_api::ADMIN_AUDIENCE).await.map_err(start_error)?.is_some() {
        return Ok(());
    }
    let resource = tessera_store::Resource {
        audience: admin_api::ADMIN_AUDIENCE.to_owned(),
        scopes: vec!["admin".to_owned()],
        created_at: now,
    };
    match store.create_resource(&resource).await {
        Ok(()) | Err(tessera_store::StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(start_error(e)),
    }
}

/// Opens the data directory, the KEK and the database, applies migrations, and on first start creates the
/// signing key (and a quickstart client); then loads the keyring.
///
/// # Errors
/// A [`StartError`] that names what failed.
pub async fn prepare(config: Config) -> Result<(Arc<AppState>, Startup), StartError> {
    let mut startup = Startup { created_data_dir: ensure_data_dir(&config.data_dir)?, ..Startup::default() };
    let (kek, source) = Kek::load_or_create(&config.master_key, &config.data_dir).map_err(start_error)?;
    startup.kek = Some(source);
    let store = tessera_store::open(&config.effective_database_url()).await.map_err(start_error)?;
    let now = now();
    startup.created_key = keyring::ensure_signing_key(&*store, &kek, config.signing_algorithm(), now)
        .await
        .map_err(start_error)?;
    if startup.created_key.is_some() && store.list_clients().await.map_err(start_error)?.is_empty() {
        startup.quickstart = Some(create_quickstart(&*store, &config, now).await?);
    }
    ensure_admin_resource(&*store, now).await?;
    let keyring = Keyring::load(&*store, &kek).await.map_err(start_error)?;
    let passwords = Passwords::new(config.password_hash_concurrency).map_err(StartError)?;
    let password_rules = passwords::Rules::new(&config.passwords).map_err(StartError)?;
    let notifier = notify::Notifier::new(&config.notify).map_err(StartError)?;
    let webauthn = passkeys::relying_party(&config.issuer, &config.webauthn).map_err(StartError)?;
    let discovery = routes::discovery_document(&config.issuer, &keyring.signer().alg().to_string());
    let head = store.revocation_seq().await.map_err(start_error)?;
    let live = store.live_revocations(now).await.map_err(start_error)?;
    let revocations = stream::RevocationFeed::new(head, &live);
    let trusted_proxies = config.trusted_proxy_nets();
    let metrics_allow = config.metrics_allow_nets();
    let geo = geoip::GeoIp::open(&config.geoip).map_err(StartError)?;
    let directory = directory::Directory::new(Arc::clone(&store));
    directory.sync().await.map_err(start_error)?;
    let state = AppState {
        config,
        directory,
        store,
        kek,
        keyring: RwLock::new(Arc::new(keyring)),
        metrics: Metrics::new(),
        passwords,
        revocations,
        closing: tokio::sync::watch::channel(false).0,
        alerts_due: tokio::sync::Notify::new(),
        geo,
        password_rules,
        notifier,
        webauthn,
        throttle_turn: tokio::sync::Mutex::new(()),
        proof_keys: tessera_core::proof_keys::ProofKeys::default(),
        trusted_proxies,
        metrics_allow,
        discovery,
    };
    Ok((Arc::new(state), startup))
}

/// Creates the data directory (0700) if missing; `true` if it did.
fn ensure_data_dir(dir: &std::path::Path) -> Result<bool, StartError> {
    if dir.is_dir() {
        return Ok(false);
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| StartError(format!("cannot create {}: {}", dir.display(), e.kind())))?;
    Ok(true)
}

async fn create_quickstart(
    store: &dyn Store,
    config: &Config,
    now: i64,
) -> Result<(String, String, String), StartError> {
    let secret = crypto::new_secret(SecretKind::ClientSecret).map_err(start_error)?;
    let resource =
        Resource { audience: QUICKSTART_AUDIENCE.into(), scopes: vec!["demo".into()], created_at: now };
    match store.create_resource(&resource).await {
        Ok(()) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(start_error(e)),
    }
    let client = Client {
        id: QUICKSTART_CLIENT.into(),
        name: "Quickstart (created on first start; disable with `tessera client disable quickstart`)".into(),
        kind: ClientKind::Confidential,
        secret_hash: Some(secret.hash()),
        redirect_uris: Vec::new(),
        grant_types: vec![GrantType::ClientCredentials],
        audiences: vec![QUICKSTART_AUDIENCE.into()],
        scopes: vec!["demo".into()],
        access_ttl: config.access_token_ttl,
        refresh_idle_ttl: config.refresh_idle_ttl,
        refresh_absolute_ttl: config.refresh_absolute_ttl,
        first_party: true,
        disabled: false,
        created_at: now,
        require_dpop: false,
        jwks: None,
        exchange_audiences: Vec::new(),
        serves: Vec::new(),
        mfa: tessera_core::mfa::MfaPolicy::default(),
    };
    store.create_client(&client).await.map_err(start_error)?;
    Ok((client.id, secret.expose().to_owned(), QUICKSTART_AUDIENCE.into()))
}

/// The HTTP routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(routes::discovery))
        .route("/.well-known/oauth-authorization-server", get(routes::discovery))
        .route("/jwks.json", get(routes::jwks))
        .route("/token", post(token::token))
        .route("/authorize", get(authorize::authorize).post(authorize::consent))
        .route("/login", get(authorize::login_page).post(authorize::login))
        .route("/login/mfa", post(mfa::submit))
        .route("/login/password", post(password::forced_reset))
        .route("/account/password", post(password::change))
        .route("/password/forgot", get(password::forgot_page).post(password::forgot))
        .route("/password/reset", get(password::reset_page).post(password::reset))
        .route("/account", get(mfa::account))
        .route("/account/totp", post(mfa::begin_totp))
        .route("/account/totp/confirm", post(mfa::confirm_totp))
        .route("/account/recovery-codes", post(mfa::regenerate_recovery_codes))
        .route("/account/passkeys", post(passkeys::register))
        .route("/account/passkeys/start", post(passkeys::register_start))
        .route("/account/passkeys/remove", post(passkeys::remove))
        .route("/login/passkey", post(passkeys::sign_in))
        .route("/login/passkey/start", post(passkeys::sign_in_start))
        .route("/assets/webauthn.js", get(passkeys::script))
        .route("/logout", get(authorize::logout_page).post(authorize::logout))
        .route("/userinfo", get(endpoints::userinfo).post(endpoints::userinfo))
        .route("/revoke", post(endpoints::revoke))
        .route("/introspect", post(endpoints::introspect))
        .route("/revocations/stream", get(stream::stream))
        .route("/guard/events", post(ingest::events).layer(DefaultBodyLimit::max(1024 * 1024)))
        .route("/admin/incidents", get(admin_api::list).post(admin_api::open))
        .route("/admin/incidents/{id}", get(admin_api::show))
        .route("/admin/incidents/{id}/contain", post(admin_api::contain))
        .route("/admin/incidents/{id}/close", post(admin_api::close))
        .route("/admin/incidents/{id}/timeline", get(admin_api::incident_timeline))
        .route("/admin/incidents/{id}/lineage", get(admin_api::lineage))
        .route("/admin/incidents/{id}/report", get(admin_api::report))
        .route("/admin/timeline", get(admin_api::timeline))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), track))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// The client's address, behind the trusted proxies (a request extension `track` sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

/// The endpoints a blocked source may not use: those a user or client acts through. Guards' streams and
/// reports, keys, discovery and health stay open, so a mistaken block cannot cut off revocations.
const BLOCKABLE: [&str; 5] = ["/token", "/authorize", "/login", "/userinfo", "/introspect"];

/// Resolves the client's address, refuses blocked sources, and counts and times every request by matched
/// route and status.
async fn track(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    #[allow(clippy::disallowed_methods, reason = "request latency is measured at the edge")]
    let started = std::time::Instant::now();
    if let Some(peer) = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()) {
        let lines = request.headers().get_all("x-forwarded-for").iter().map(|v| v.to_str().ok());
        let ip = tessera_core::net::client_ip(peer, lines, &state.trusted_proxies);
        request.extensions_mut().insert(ClientAddr(ip));
        if BLOCKABLE.contains(&endpoint.as_str()) && state.revocations.blocks(ip) {
            let response = axum::response::IntoResponse::into_response(OAuthError::blocked());
            state.metrics.request(&endpoint, response.status().as_u16(), started.elapsed().as_secs_f64());
            return response;
        }
    }
    let response = next.run(request).await;
    state.metrics.request(&endpoint, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Serves HTTP on `listener` until `shutdown` completes, then finishes the requests in flight. Runs the
/// key and pruning housekeeping in the background meanwhile.
///
/// # Errors
/// An I/O error from the listener.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping(Arc::clone(&state), stop_rx.clone()));
    let directory = tokio::spawn(watch_directory(Arc::clone(&state), stop_rx.clone()));
    let detector = tokio::spawn(detector::run(Arc::clone(&state), stop_rx.clone()));
    let alerts = tokio::spawn(alerts::run(Arc::clone(&state), stop_rx.clone()));
    let changes = tokio::spawn(follow_changes(Arc::clone(&state), stop_rx.clone()));
    let feed = tokio::spawn(follow_revocations(Arc::clone(&state), stop_rx));
    let closing = Arc::clone(&state);
    let drain = Duration::from_secs(state.config.drain_secs);
    let shutdown = async move {
        shutdown.await;
        // Readiness fails and the guards' streams end first (they reconnect through the balancer to another
        // node; graceful shutdown would otherwise wait for these endless responses); requests are still
        // served while the balancer notices, then the listener closes and those in flight finish.
        closing.closing.send_replace(true);
        if !drain.is_zero() {
            tracing::info!(
                seconds = drain.as_secs(),
                "draining: /readyz answers 503, requests are still served"
            );
            tokio::time::sleep(drain).await;
        }
    };
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = stop_tx.send(true);
    let _ = housekeeping.await;
    let _ = directory.await;
    let _ = feed.await;
    let _ = changes.await;
    let _ = detector.await;
    let _ = alerts.await;
    result
}

/// Publishes newly committed revocations to the guards' streams.
async fn follow_revocations(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(state.revocations.poll_interval()) => {}
            () = state.revocations.woken() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = state.revocations.follow_once(&state).await {
            tracing::warn!(error = %e, "cannot read new revocations");
        }
    }
}

/// Acts at once on what other nodes and the CLI commit (PostgreSQL's announcements): new revocations wake
/// the follower, changed keys are reloaded, a changed directory empties the cache. On SQLite there are no
/// announcements and the polls alone do this.
async fn follow_changes(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tessera_store::Change;
    use tokio::sync::broadcast::error::RecvError;
    let Some(mut changes) = state.store.changes() else { return };
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            _ = stop.changed() => return,
        };
        let (revocations, keys, directory) = match change {
            Ok(Change::Revocations) => (true, false, false),
            Ok(Change::Keys) => (false, true, false),
            Ok(Change::Directory) => (false, false, true),
            Ok(Change::Lost) => {
                state.revocations.set_listening(false);
                continue;
            }
            // (Re)connected, or this task fell behind: whatever was missed is re-read.
            Ok(Change::Listening) | Err(RecvError::Lagged(_)) => {
                state.revocations.set_listening(true);
                (true, true, true)
            }
            Err(RecvError::Closed) => return,
        };
        if revocations {
            state.revocations.wake();
        }
        if keys && let Err(e) = reload_keys(&state).await {
            tracing::error!(error = %e, "cannot reload signing keys; still signing with the previous key");
        }
        if directory && let Err(e) = state.directory.sync().await {
            tracing::warn!(error = %e, "cannot read the change counter; cache emptied");
        }
    }
}

/// Keeps the directory cache within its staleness bound.
async fn watch_directory(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(directory::POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = state.directory.sync().await {
            tracing::warn!(error = %e, "cannot read the change counter; cache emptied");
        }
    }
}

/// Every 2 s: key promotion and reload; every 60 s: pruning.
async fn housekeeping(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        rounds += 1;
        let now = now();
        if let Err(e) = keyring::housekeeping(&*state.store, state.config.key_publish_delay, now).await {
            tracing::warn!(error = %e, "key housekeeping failed");
        }
        if rounds % KEY_ROTATION_ROUNDS == 1 {
            scheduled_rotation(&state, now).await;
        }
        if let Err(e) = reload_keys(&state).await {
            tracing::error!(error = %e, "cannot reload signing keys; still signing with the previous key");
        }
        if rounds.is_multiple_of(30) {
            match state.store.prune(now).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned expired records"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning failed"),
            }
        }
        // Audit retention: soon after start, then hourly.
        if rounds % AUDIT_PRUNE_ROUNDS == 1 && state.config.audit_retention_days > 0 {
            match prune_audit(&*state.store, state.config.audit_retention_days, now).await {
                Ok(n) if n > 0 => tracing::info!(events = n, "audit events past their retention removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "audit pruning failed"),
            }
        }
    }
}

/// Housekeeping rounds (2 s each) between checks whether the current key is due for rotation: a minute.
const KEY_ROTATION_ROUNDS: u64 = 30;

/// Publishes a `next` key when the current one has signed for `key_rotation_days`; of several nodes due at
/// once exactly one does (the store serialises it), and that one records it.
async fn scheduled_rotation(state: &AppState, now: i64) {
    let every = state.config.key_rotation_days * 86_400;
    if every <= 0 {
        return;
    }
    let alg = state.config.signing_algorithm();
    match keyring::rotate_if_due(&*state.store, &state.kek, alg, every, now).await {
        Ok(Some(record)) => {
            tracing::info!(kid = %record.kid, "key_rotation_days reached: a new key is published and signs after key_publish_delay");
            let detail = serde_json::json!({ "kid": record.kid, "alg": record.alg }).to_string();
            state
                .event(Event {
                    reason: Some("scheduled".into()),
                    actor: Some("tessera-server (key_rotation_days)".into()),
                    detail: Some(detail),
                    ..Event::new(tessera_core::EventKind::KeyRotated, now)
                })
                .await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "scheduled key rotation failed"),
    }
}

/// Housekeeping rounds (2 s each) between audit prunings: an hour.
const AUDIT_PRUNE_ROUNDS: u64 = 1800;
/// Audit events removed per transaction: bounds how long one pruning holds the chain's head.
const AUDIT_PRUNE_BATCH: i64 = 50_000;

/// Removes audit events older than `retention_days`, a batch per transaction, each behind a new checkpoint.
/// Returns how many were removed.
///
/// # Errors
/// The store's error; batches already committed stay removed.
pub async fn prune_audit(store: &dyn Store, retention_days: i64, now: i64) -> Result<u64, StoreError> {
    let before = now - retention_days * 86_400;
    let mut removed = 0;
    loop {
        let n = store.prune_audit(before, AUDIT_PRUNE_BATCH, now).await?;
        removed += n;
        if n < AUDIT_PRUNE_BATCH as u64 {
            return Ok(removed);
        }
    }
}

/// Reloads the keyring if the stored keys changed (a rotation or import by the CLI or another node).
pub(crate) async fn reload_keys(state: &AppState) -> Result<(), keyring::KeyringError> {
    let records = state.store.list_keys().await?;
    if state.keyring().is_current_for(&records) {
        return Ok(());
    }
    let fresh = Keyring::load(&*state.store, &state.kek).await?;
    tracing::info!(kid = %fresh.signer().kid(), published = fresh.published().len(), "signing keys reloaded");
    state.set_keyring(fresh);
    Ok(())
}

/// A future that completes on SIGTERM or Ctrl-C. The signal handlers are installed when this function is
/// called, not when the future is first polled: a SIGTERM that arrives right after the server announced
/// itself must stop it gracefully, not kill it.
///
/// # Errors
/// If the handlers cannot be installed.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let (mut term, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?)
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
    })
}

/// Sets up `tracing` output as configured (`text` or `json`, with `log_level` as the filter).
pub fn init_logging(config: &Config) {
    init_logging_as(&config.log_level, &config.log_format);
}

/// Sets up logging to stderr at `level` (an env-filter directive) in `format` (`json` or text); the gateway
/// uses it too.
pub fn init_logging_as(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}
