//! The guard itself: configuration, the per-request decision, and the background tasks it owns.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderMap, Method, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tessera_token::dpop::{Ath, ProofPolicy, ProofRejection, ProofRequest, required_key};
use tessera_token::{AccessClaims, Rejection, UnixTime, UnverifiedJwt, Validation};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::denial::Denial;
use crate::keys::Keys;
use crate::net::{Http, basic_auth};
use crate::path::{self, BadPath};
use crate::policy::{Policy, Route, Unlisted};
use crate::report::Reporter;
use crate::revocation::{RevocationSet, TokenIds};
use tessera_core::proof_keys::ProofKeys;
use tessera_core::replay::{ReplayCache, Seen};

/// The request header that carries a DPoP proof.
const DPOP: http::HeaderName = http::HeaderName::from_static("dpop");

/// How long the server keeps a revocation entry past the tokens it can match (`tessera_store`'s horizon;
/// the guard does not depend on the store crate).
const REVOCATION_HORIZON_SECS: u64 = 960;

/// How the guard is set up. [`GuardConfig::new`] gives the defaults.
#[derive(Clone)]
pub struct GuardConfig {
    /// The issuer URL, exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// This service's audience: tokens must name it in `aud`.
    pub audience: String,
    /// The guard's own client, registered at the server with this audience: it follows revocations and
    /// reports usage with these credentials.
    pub client_id: String,
    /// That client's secret.
    pub client_secret: Zeroizing<String>,
    /// With no heartbeat from the revocation stream for this long, requests get 503. Default: 900 s, the
    /// longest access-token lifetime.
    pub staleness: Duration,
    /// Clock-skew leeway for `exp`, `nbf` and `iat`, in seconds. Default 30.
    pub leeway_secs: u64,
    /// The oldest `iat` accepted, in seconds. Default 900.
    pub max_age_secs: u64,
    /// Validated tokens remembered, so a repeated token skips signature verification. Default 10,000.
    pub cache_capacity: usize,
    /// How often the JWKS is refreshed. Default 60 s (the server's `max-age`).
    pub jwks_refresh: Duration,
    /// The least time between two fetches caused by unknown `kid`s. Default 5 s.
    pub jwks_min_refetch: Duration,
    /// How often usage events are sent. Default 2 s.
    pub report_interval: Duration,
    /// Report each admitted request's use (aggregated per token, route and source). Default: on. Off, the
    /// server's network rules (`token_used_from_two_networks`, `token_used_from_new_network`) cannot see
    /// this service; refusals and lateral-movement attempts are reported either way.
    pub report_usage: bool,
    /// The most revocation entries held; beyond it the guard refuses service (fail closed). Default 1,000,000.
    pub max_revocations: usize,
    /// Timeout of each control-plane HTTP call (discovery, JWKS, events). Default 5 s.
    pub http_timeout: Duration,
    /// The base URL clients reach this service at (`https://orders.example`): a DPoP proof must name it
    /// plus the request path. Behind a proxy, the external URL. Default: the audience, when it is an http(s)
    /// URL; otherwise DPoP-bound tokens are refused.
    pub public_url: Option<String>,
    /// How long after its `iat` a DPoP proof is accepted, in seconds. Default 60.
    pub dpop_max_age_secs: u64,
    /// The most DPoP proof ids remembered against replay; beyond it new proofs are refused. Default 1,000,000.
    pub dpop_replay_capacity: usize,
    /// The most of those one client key may hold: past it that key's proofs get 503 until some expire, and
    /// other clients are unaffected. Default 100,000 (about 1,600 requests a second per key, sustained over
    /// the 60 s window).
    pub dpop_replay_per_key: usize,
    /// Require in every DPoP proof a nonce this guard issued (RFC 9449 §9), so that a proof made in advance
    /// (by malware that can sign with the client's key but is gone later) is refused. A proof without the
    /// current nonce gets 401 `use_dpop_nonce` with a `DPoP-Nonce` header, and the client signs again.
    /// Nonces are an HMAC of the minute under a key derived from the client secret, so every replica of one
    /// guard issues and accepts the same ones; each is accepted in its own minute and the next. Default off.
    pub dpop_nonce: bool,
}

impl std::fmt::Debug for GuardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("staleness", &self.staleness)
            .field("cache_capacity", &self.cache_capacity)
            .finish_non_exhaustive()
    }
}

impl GuardConfig {
    /// The defaults for a service with `audience`, trusting `issuer`, following revocations as `client_id`.
    #[must_use]
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        GuardConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            client_id: client_id.into(),
            client_secret: Zeroizing::new(client_secret.into()),
            staleness: Duration::from_secs(900),
            leeway_secs: tessera_token::validate::DEFAULT_LEEWAY_SECS,
            max_age_secs: tessera_token::validate::DEFAULT_MAX_AGE_SECS,
            cache_capacity: 10_000,
            jwks_refresh: Duration::from_secs(60),
            jwks_min_refetch: Duration::from_secs(5),
            report_interval: Duration::from_secs(2),
            report_usage: true,
            max_revocations: 1_000_000,
            http_timeout: Duration::from_secs(5),
            public_url: None,
            dpop_max_age_secs: tessera_token::dpop::DEFAULT_PROOF_MAX_AGE_SECS,
            dpop_replay_capacity: 1_000_000,
            dpop_replay_per_key: 100_000,
            dpop_nonce: false,
        }
    }
}

/// Why a guard could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardError(pub String);

impl std::fmt::Display for GuardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GuardError {}

/// A validated caller: what the guard puts in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's validated claims.
    pub claims: AccessClaims,
    /// The `kid` of the key that signed it.
    pub kid: String,
    /// The token's SHA-256, for counting its uses; the token itself is not kept.
    pub(crate) token_hash: [u8; 32],
}

impl Identity {
    /// Whether the token grants `scope`.
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.claims.scope.as_deref().unwrap_or("").split(' ').any(|s| s == scope)
    }

    /// Whether the subject holds `role`.
    #[must_use]
    pub fn has_role(&self, role: &str) -> bool {
        self.claims.roles.iter().any(|r| r == role)
    }

    fn ids(&self) -> TokenIds<'_> {
        TokenIds {
            jti: &self.claims.jti,
            sid: self.claims.sid.as_deref(),
            sub: &self.claims.sub,
            client_id: &self.claims.client_id,
            kid: &self.kid,
            iat: i64::try_from(self.claims.iat).unwrap_or(i64::MAX),
            origin: &self.claims.origin,
        }
    }
}

/// A request the guard let through.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The caller; `None` on a public route.
    pub identity: Option<Arc<Identity>>,
    /// The normalised path, which the service must see instead of the raw one.
    pub path: String,
}

/// A cached validation: the identity and the key generation it was verified under.
#[derive(Clone)]
struct Cached {
    identity: Arc<Identity>,
    generation: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct DecisionLabels {
    pub(crate) outcome: &'static str,
    pub(crate) reason: &'static str,
}

/// The guard's metrics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) decisions: Family<DecisionLabels, Counter>,
    /// `decisions{outcome="granted",reason="valid"}`, held so the hot path skips the family lookup.
    pub(crate) granted: Counter,
    /// `decisions{outcome="granted",reason="public"}`, likewise.
    pub(crate) granted_public: Counter,
    pub(crate) cache_hits: Counter,
    pub(crate) cache_misses: Counter,
    pub(crate) revocations: Gauge,
    pub(crate) revocation_seq: Gauge,
    pub(crate) stream_connected: Gauge,
    pub(crate) stream_reconnects: Counter,
    pub(crate) jwks_fetch_failures: Counter,
    pub(crate) events_sent: Counter,
    pub(crate) events_dropped: Counter,
}

pub(crate) struct Inner {
    pub(crate) config: GuardConfig,
    pub(crate) policy: Policy,
    validation: Validation,
    pub(crate) http: Http,
    /// `Authorization: Basic` for the guard's client.
    pub(crate) auth: Zeroizing<String>,
    pub(crate) keys: Keys,
    pub(crate) revocations: RwLock<RevocationSet>,
    /// The set's size, kept beside it so the per-request cap check takes no lock.
    pub(crate) revocation_count: std::sync::atomic::AtomicUsize,
    /// Whether a snapshot of the revocation set has been received.
    pub(crate) synced: AtomicBool,
    /// Whether the set blocks any source: requests skip the lock while none is.
    blocking: AtomicBool,
    /// When the stream was last heard from, in milliseconds since `epoch`.
    pub(crate) last_heard_ms: AtomicU64,
    pub(crate) epoch: Instant,
    cache: quick_cache::sync::Cache<[u8; 32], Cached>,
    /// The base URL DPoP proofs are checked against; `None` refuses DPoP-bound tokens.
    dpop_base: Option<String>,
    dpop_policy: ProofPolicy,
    /// The checked keys of proofs that verified, by header segment.
    proof_keys: ProofKeys,
    replay: ReplayCache,
    /// The key the guard's DPoP nonces are made with, when it asks for them.
    nonce_key: Option<aws_lc_rs::hmac::Key>,
    pub(crate) reporter: Reporter,
    pub(crate) metrics: Metrics,
    /// Dropped with the guard: every background task watches it and stops.
    pub(crate) alive: tokio::sync::watch::Sender<()>,
}

/// The guard: cheap to clone, shared by every request. Dropping the last clone stops its background tasks.
#[derive(Clone)]
pub struct Guard {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("issuer", &self.inner.config.issuer)
            .field("audience", &self.inner.config.audience)
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// Unix seconds: the guard's one wall-clock read.
pub(crate) fn unix_now() -> u64 {
    #[allow(clippy::disallowed_methods, reason = "the guard's one clock read, at the edge")]
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map(|d| d.as_secs()).unwrap_or(0)
}

fn sha256(token: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The characters of an RFC 6750 `b64token` (before its trailing `=`s).
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// Whether `s` is an RFC 6750 `b64token`.
fn is_b64token(s: &[u8]) -> bool {
    let end = s.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    end > 0 && s[..end].iter().all(|&b| B64TOKEN[usize::from(b)])
}

/// How the token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    /// `Authorization: DPoP`, with a proof in the `DPoP` header (RFC 9449 §7.1).
    Dpop,
}

/// The access token of a request, from exactly one `Authorization: Bearer` or `Authorization: DPoP` header,
/// never from the query. Its characters are checked later (`is_b64token`), and only for a token not already
/// in the cache: a cached token passed that check when it was first seen.
fn credential<'a>(headers: &'a HeaderMap, query: Option<&str>) -> Result<(&'a [u8], Scheme), Denial> {
    let in_query = query.is_some_and(|q| {
        q.split(['&', ';']).any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            let decoded: Vec<u8> = form_urlencoded::parse(format!("{name}=").as_bytes())
                .next()
                .map(|(k, _)| k.into_owned().into_bytes())
                .unwrap_or_default();
            decoded.trim_ascii().eq_ignore_ascii_case(b"access_token")
        })
    });
    if in_query {
        return Err(Denial::InvalidToken { reason: "token_in_query" });
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Denial::MissingToken);
    };
    if values.next().is_some() {
        return Err(Denial::InvalidToken { reason: "multiple_authorization_headers" });
    }
    let malformed = Denial::InvalidToken { reason: "malformed_authorization" };
    let value = value.as_bytes();
    match (value.get(..7), value.get(..5)) {
        (Some(scheme), _) if scheme.eq_ignore_ascii_case(b"bearer ") => Ok((&value[7..], Scheme::Bearer)),
        (_, Some(scheme)) if scheme.eq_ignore_ascii_case(b"dpop ") => Ok((&value[5..], Scheme::Dpop)),
        _ => Err(malformed),
    }
}

/// How long one DPoP nonce is issued for, seconds; it is accepted for twice as long.
const NONCE_WINDOW: u64 = 60;

/// The key of a guard's DPoP nonces: an HMAC of a fixed label under the client secret, so that replicas
/// sharing the secret share the nonces and the secret itself never touches a nonce.
fn nonce_key(secret: &str) -> aws_lc_rs::hmac::Key {
    let derived = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes()),
        b"tessera guard dpop nonce v1",
    );
    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, derived.as_ref())
}

/// The nonce of the window holding `now`.
fn nonce_at(key: &aws_lc_rs::hmac::Key, now: u64) -> String {
    use base64::Engine as _;
    let tag = aws_lc_rs::hmac::sign(key, &(now / NONCE_WINDOW).to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..18])
}

/// The base URL DPoP proofs name: the configured public URL, else the audience when it is an http(s) URL.
fn dpop_base(config: &GuardConfig) -> Result<Option<String>, GuardError> {
    let (candidate, configured) = match &config.public_url {
        Some(url) => (url.as_str(), true),
        None => (config.audience.as_str(), false),
    };
    let usable = (candidate.starts_with("https://") || candidate.starts_with("http://"))
        && !candidate.contains(['?', '#', ' '])
        && candidate.parse::<http::Uri>().is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    match (usable, configured) {
        (true, _) => Ok(Some(candidate.trim_end_matches('/').to_owned())),
        (false, true) => Err(GuardError(format!(
            "public_url {candidate:?} must be an http(s) URL without query or fragment"
        ))),
        (false, false) => Ok(None),
    }
}

impl Guard {
    /// Builds a guard and starts its background tasks (key discovery, the revocation stream, housekeeping and
    /// usage reporting). Must be called inside a tokio runtime. Until the first key set and revocation
    /// snapshot arrive, protected routes answer 503; [`Guard::wait_ready`] waits for them.
    ///
    /// # Errors
    /// A [`GuardError`] when the configuration cannot work (blank issuer or audience, a non-http issuer).
    pub fn start(config: GuardConfig, policy: Policy) -> Result<Self, GuardError> {
        let issuer: http::Uri = config
            .issuer
            .parse()
            .map_err(|_| GuardError(format!("issuer {:?} is not a URL", config.issuer)))?;
        let host = issuer.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        match issuer.scheme_str() {
            Some("https") => {}
            // Keys over cleartext could be swapped by anyone on the path: plain http only on loopback.
            Some("http") if loopback => {}
            _ => {
                return Err(GuardError(format!(
                    "issuer {:?} must be https (http only on loopback)",
                    config.issuer
                )));
            }
        }
        if issuer.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(GuardError("the issuer URL must not carry credentials".into()));
        }
        // A revocation entry lives REVOCATION_HORIZON_SECS; a token accepted for longer could outlive it.
        if config.max_age_secs.saturating_add(config.leeway_secs) > REVOCATION_HORIZON_SECS {
            return Err(GuardError(format!(
                "max_age_secs + leeway_secs must be at most {REVOCATION_HORIZON_SECS} (how long revocations are kept)"
            )));
        }
        if config.audience.trim().is_empty() {
            return Err(GuardError("the audience must not be empty".into()));
        }
        if config.client_id.is_empty() || config.client_secret.is_empty() {
            return Err(GuardError("the guard needs its client id and secret to follow revocations".into()));
        }
        let dpop_base = dpop_base(&config)?;
        if dpop_base.is_none() {
            tracing::warn!(audience = %config.audience, "no public_url and the audience is not a URL: DPoP-bound tokens will be refused");
        }
        let http = Http::new(config.http_timeout).map_err(GuardError)?;
        let auth = basic_auth(&config.client_id, &config.client_secret);
        let validation = Validation {
            leeway_secs: config.leeway_secs,
            max_age_secs: config.max_age_secs,
            ..Validation::access_token(config.issuer.clone(), config.audience.clone())
        };
        let inner = Arc::new(Inner {
            keys: Keys::new(config.jwks_min_refetch),
            cache: quick_cache::sync::Cache::new(config.cache_capacity.max(1)),
            dpop_base,
            dpop_policy: ProofPolicy { max_age_secs: config.dpop_max_age_secs, ..ProofPolicy::default() },
            proof_keys: ProofKeys::default(),
            replay: ReplayCache::with_namespace_cap(config.dpop_replay_capacity, config.dpop_replay_per_key),
            nonce_key: config.dpop_nonce.then(|| nonce_key(&config.client_secret)),
            reporter: Reporter::new(),
            validation,
            http,
            auth,
            policy,
            revocations: RwLock::new(RevocationSet::new()),
            blocking: AtomicBool::new(false),
            revocation_count: std::sync::atomic::AtomicUsize::new(0),
            synced: AtomicBool::new(false),
            last_heard_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics: {
                let m = Metrics::default();
                let held = |reason| {
                    m.decisions.get_or_create(&DecisionLabels { outcome: "granted", reason }).clone()
                };
                let (granted, granted_public) = (held("valid"), held("public"));
                Metrics { granted, granted_public, ..m }
            },
            alive: tokio::sync::watch::channel(()).0,
            config,
        });
        crate::follow::spawn(&inner);
        crate::report::spawn(&inner);
        Ok(Guard { inner })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &GuardConfig {
        &self.inner.config
    }

    /// The DPoP nonce to hand clients now, if this guard asks for nonces.
    #[must_use]
    pub fn dpop_nonce(&self) -> Option<String> {
        self.inner.nonce_key.as_ref().map(|key| nonce_at(key, unix_now()))
    }

    /// The `DPoP-Nonce` value for the answer to a request with `headers`: the current nonce when this guard
    /// asks for nonces and the request carries a DPoP proof. The gateway and the layer send it on every such
    /// answer, so a client has the next nonce before it needs it.
    #[must_use]
    pub fn dpop_nonce_for(&self, headers: &HeaderMap) -> Option<http::HeaderValue> {
        if !headers.contains_key(DPOP) {
            return None;
        }
        self.dpop_nonce().and_then(|n| http::HeaderValue::from_str(&n).ok())
    }

    /// Whether keys are loaded and the revocation state is fresh.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.inner.keys.loaded() && self.inner.synced.load(Ordering::Acquire) && !self.inner.is_stale()
    }

    /// Waits until [`Guard::is_ready`], for at most `limit`; returns whether it became ready.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.is_ready() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The sequence number of the last revocation applied.
    #[must_use]
    pub fn revocation_seq(&self) -> i64 {
        self.inner.revocations.read().map(|r| r.seq()).unwrap_or(0)
    }

    /// Registers the guard's metrics under `tessera_guard_*`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.inner.metrics;
        let r = registry.sub_registry_with_prefix("tessera_guard");
        r.register("decisions", "Requests decided, by outcome and reason", m.decisions.clone());
        r.register("token_cache_hits", "Validated-token cache hits", m.cache_hits.clone());
        r.register("token_cache_misses", "Validated-token cache misses", m.cache_misses.clone());
        r.register("revocations", "Live revocation entries held", m.revocations.clone());
        r.register(
            "revocation_seq",
            "Sequence number of the last revocation applied",
            m.revocation_seq.clone(),
        );
        r.register(
            "stream_connected",
            "1 while the revocation stream is connected",
            m.stream_connected.clone(),
        );
        r.register("stream_reconnects", "Revocation stream reconnections", m.stream_reconnects.clone());
        r.register("jwks_fetch_failures", "Failed JWKS fetches", m.jwks_fetch_failures.clone());
        r.register("usage_events_sent", "Usage events delivered to the server", m.events_sent.clone());
        r.register(
            "usage_events_dropped",
            "Usage events dropped (server unreachable)",
            m.events_dropped.clone(),
        );
    }

    /// Decides a request: normalises its path, finds its route, and validates its bearer token.
    ///
    /// # Errors
    /// The [`Denial`] to answer with.
    pub async fn check(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Admitted, Denial> {
        self.check_at(method, uri, uri, headers, peer).await
    }

    /// [`Self::check`] for a request whose path the service sees differently from the client: `uri` is
    /// matched against the policy, `client_uri` (what the client addressed, such as axum's `OriginalUri`
    /// inside a nested router) is what a DPoP proof must name.
    ///
    /// # Errors
    /// The [`Denial`] to answer with.
    pub async fn check_at(
        &self,
        method: &Method,
        uri: &http::Uri,
        client_uri: &http::Uri,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Admitted, Denial> {
        let inner = &self.inner;
        let raw_path = uri.path();
        let path =
            if path::is_normal(raw_path) { Ok(raw_path.to_owned()) } else { path::normalize(raw_path) };
        let path = match path {
            Ok(p) => p,
            Err(e) => {
                let reason = match e {
                    BadPath::NotAbsolute => "path_not_absolute",
                    BadPath::BrokenEscape => "path_broken_escape",
                    BadPath::Ambiguous => "path_ambiguous",
                };
                return Err(inner.deny(Denial::Forbidden { reason }, None, None, peer));
            }
        };
        let route_index = inner.policy.routes.iter().position(|r| r.matches(method, &path));
        if let Some(peer) = peer
            && inner.blocks(peer)
        {
            return Err(inner.deny(Denial::Blocked, route_index, None, Some(peer)));
        }
        let route = route_index.and_then(|i| inner.policy.routes.get(i));
        if route.is_some_and(|r| r.public) {
            inner.metrics.granted_public.inc();
            return Ok(Admitted { identity: None, path });
        }
        if !inner.keys.loaded() || !inner.synced.load(Ordering::Acquire) {
            return Err(inner.deny(Denial::Unavailable { reason: "not_ready" }, route_index, None, peer));
        }
        if inner.is_stale() {
            return Err(inner.deny(
                Denial::Unavailable { reason: "stale_revocations" },
                route_index,
                None,
                peer,
            ));
        }
        let (token, scheme) =
            credential(headers, uri.query()).map_err(|d| inner.deny(d, route_index, None, peer))?;
        let now = unix_now();
        let identity = self.validate(token, now, route_index, peer).await?;
        inner
            .check_binding(&identity, scheme, method, client_uri, headers, now)
            .map_err(|d| inner.deny(d, route_index, Some(&identity), peer))?;
        let permitted = match route {
            Some(r) => r.permits(identity.claims.scope.as_deref(), &identity.claims.roles),
            None => inner.policy.unlisted == Unlisted::Authenticated,
        };
        if !permitted {
            let denial = match route {
                Some(r) => Denial::InsufficientScope { scope: r.scopes.join(" ") },
                None => Denial::Forbidden { reason: "route_not_allowed" },
            };
            return Err(inner.deny(denial, route_index, Some(&identity), peer));
        }
        inner.metrics.granted.inc();
        if inner.config.report_usage {
            inner.reporter.granted(&identity, route_index, peer, now);
        }
        Ok(Admitted { identity: Some(identity), path })
    }

    /// Validates a token: from the cache when seen before (time and revocation still checked), else in full.
    async fn validate(
        &self,
        token: &[u8],
        now: u64,
        route: Option<usize>,
        peer: Option<IpAddr>,
    ) -> Result<Arc<Identity>, Denial> {
        let inner = &self.inner;
        let hash = sha256(token);
        let generation = inner.keys.generation.load(Ordering::Acquire);
        let cached = inner.cache.get(&hash).filter(|c| c.generation == generation);
        let identity = if let Some(hit) = cached {
            inner.metrics.cache_hits.inc();
            let c = &hit.identity.claims;
            if now >= c.exp.saturating_add(inner.validation.leeway_secs) {
                inner.cache.remove(&hash);
                return Err(inner.deny(Denial::InvalidToken { reason: "expired" }, route, None, peer));
            }
            if now > c.iat.saturating_add(inner.validation.max_age_secs) {
                return Err(inner.deny(Denial::InvalidToken { reason: "too_old" }, route, None, peer));
            }
            hit.identity
        } else {
            inner.metrics.cache_misses.inc();
            // Two tokens, stray spaces or commas, or characters no token has.
            let token = match std::str::from_utf8(token) {
                Ok(t) if is_b64token(token) => t,
                _ => {
                    let denial = Denial::InvalidToken { reason: "malformed_authorization" };
                    return Err(inner.deny(denial, route, None, peer));
                }
            };
            let identity = self.verify(token, hash, now, peer, route).await?;
            inner.cache.insert(hash, Cached { identity: Arc::clone(&identity), generation });
            identity
        };
        let Ok(set) = inner.revocations.read() else {
            return Err(inner.deny(
                Denial::Unavailable { reason: "revocation_state_lost" },
                route,
                None,
                peer,
            ));
        };
        let revoked = set.check(identity.ids(), i64::try_from(now).unwrap_or(i64::MAX));
        drop(set);
        if let Some(kind) = revoked {
            return Err(inner.deny(
                Denial::InvalidToken { reason: kind.name() },
                route,
                Some(&identity),
                peer,
            ));
        }
        Ok(identity)
    }

    async fn verify(
        &self,
        token: &str,
        token_hash: [u8; 32],
        now: u64,
        peer: Option<IpAddr>,
        route: Option<usize>,
    ) -> Result<Arc<Identity>, Denial> {
        let inner = &self.inner;
        let invalid = |r: Rejection| Denial::InvalidToken { reason: r.name() };
        let parsed = UnverifiedJwt::parse(token).map_err(|r| inner.deny(invalid(r), route, None, peer))?;
        let kid = parsed.header().kid.clone().unwrap_or_default();
        let mut keys = inner.keys.get();
        if !kid.is_empty() && keys.get(&kid).is_none() {
            if inner.keys.refetch_for(&inner.http, &inner.config.issuer, &kid).await {
                keys = inner.keys.get();
            } else {
                inner.metrics.jwks_fetch_failures.inc();
            }
        }
        let verified = parsed.verify(&keys).map_err(|r| inner.deny(invalid(r), route, None, peer))?;
        match verified.validate(&inner.validation, UnixTime(now)) {
            Ok(claims) => Ok(Arc::new(Identity { claims, kid, token_hash })),
            Err(Rejection::WrongAudience) => {
                // A genuine token of ours, for another service: lateral movement.
                inner.reporter.lateral(verified.payload(), route, peer, now);
                Err(inner.deny(invalid(Rejection::WrongAudience), route, None, peer))
            }
            Err(r) => Err(inner.deny(invalid(r), route, None, peer)),
        }
    }
}

impl Inner {
    /// Checks how a token was presented against its binding (RFC 9449 §7): a DPoP-bound token only with the
    /// `DPoP` scheme and a fresh proof by its key for this method and URL; the `DPoP` scheme only for a
    /// bound token. Costs one signature verification per DPoP request, none for a bearer token.
    fn check_binding(
        &self,
        identity: &Identity,
        scheme: Scheme,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<(), Denial> {
        let jkt = match required_key(identity.claims.cnf.as_ref(), scheme == Scheme::Dpop) {
            Ok(None) => return Ok(()),
            Ok(Some(jkt)) => jkt,
            Err(reason) => return Err(Denial::InvalidToken { reason }),
        };
        let Some(base) = &self.dpop_base else {
            return Err(Denial::InvalidDpopProof { reason: "dpop_not_configured" });
        };
        let mut values = headers.get_all(DPOP).iter();
        let proof = match (values.next(), values.next()) {
            (Some(value), None) => {
                value.to_str().map_err(|_| Denial::InvalidDpopProof { reason: "dpop_invalid_jws" })?
            }
            (None, _) => return Err(Denial::InvalidDpopProof { reason: "dpop_missing_proof" }),
            (Some(_), Some(_)) => return Err(Denial::InvalidDpopProof { reason: "dpop_multiple_proofs" }),
        };
        let url = format!("{base}{}", uri.path());
        // The token's SHA-256 is already known (it keys the validation cache): `ath` is checked against it.
        let ath = Some(Ath::from_sha256(identity.token_hash));
        let nonces: Vec<String> = match &self.nonce_key {
            Some(key) => vec![nonce_at(key, now), nonce_at(key, now.saturating_sub(NONCE_WINDOW))],
            None => Vec::new(),
        };
        let accepted: Vec<&str> = nonces.iter().map(String::as_str).collect();
        let request =
            ProofRequest { method: method.as_str(), url: &url, access_token: ath, nonces: &accepted };
        let refused = |r: ProofRejection| match (r, nonces.first()) {
            (ProofRejection::NonceRequired, Some(current)) => Denial::UseDpopNonce { nonce: current.clone() },
            (r, _) => Denial::InvalidDpopProof { reason: r.name() },
        };
        let checked =
            self.proof_keys.verify(proof, &request, &self.dpop_policy, UnixTime(now)).map_err(refused)?;
        if checked.jkt != jkt {
            return Err(Denial::InvalidDpopProof { reason: ProofRejection::KeyMismatch.name() });
        }
        match self.replay.record(
            checked.jkt.as_bytes(),
            checked.jti.as_bytes(),
            checked.replay_until(&self.dpop_policy),
            now,
        ) {
            Seen::Fresh => Ok(()),
            Seen::Replayed => Err(Denial::InvalidDpopProof { reason: ProofRejection::Replayed.name() }),
            Seen::Full => Err(Denial::Unavailable { reason: "dpop_replay_cache_full" }),
            Seen::NamespaceFull => Err(Denial::Unavailable { reason: "dpop_replay_limit_for_key" }),
        }
    }

    pub(crate) fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records the revocation set's new size (gauge and the lock-free copy) and whether it blocks sources.
    pub(crate) fn counted(&self, set: &RevocationSet) {
        let len = set.len();
        self.blocking.store(set.has_blocks(), Ordering::Release);
        self.revocation_count.store(len, Ordering::Release);
        self.metrics.revocations.set(i64::try_from(len).unwrap_or(i64::MAX));
    }

    /// Whether a `block_source` response or an operator blocked `peer` (every route, public ones too).
    fn blocks(&self, peer: IpAddr) -> bool {
        if !self.blocking.load(Ordering::Acquire) {
            return false;
        }
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        // A poisoned lock means a writer panicked mid-update: refuse rather than guess.
        self.revocations.read().map_or(true, |set| set.blocks(peer, now))
    }

    pub(crate) fn heard(&self) {
        self.last_heard_ms.store(self.millis(), Ordering::Release);
    }

    fn is_stale(&self) -> bool {
        let last = self.last_heard_ms.load(Ordering::Acquire);
        let bound = u64::try_from(self.config.staleness.as_millis()).unwrap_or(u64::MAX);
        let over_cap = self.revocation_count.load(Ordering::Acquire) > self.config.max_revocations;
        over_cap || self.millis().saturating_sub(last) > bound
    }

    /// Counts a refusal and reports it; returns it for the answer.
    fn deny(
        &self,
        d: Denial,
        route: Option<usize>,
        identity: Option<&Arc<Identity>>,
        peer: Option<IpAddr>,
    ) -> Denial {
        let outcome = if matches!(d, Denial::Unavailable { .. }) { "unavailable" } else { "rejected" };
        self.metrics.decisions.get_or_create(&DecisionLabels { outcome, reason: d.reason() }).inc();
        self.reporter.rejected(d.reason(), identity, route, peer, unix_now());
        d
    }

    pub(crate) fn route(&self, index: Option<usize>) -> Option<&Route> {
        index.and_then(|i| self.policy.routes.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_issuers_are_refused_unless_loopback() {
        let start = |issuer: &str| {
            Guard::start(GuardConfig::new(issuer, "https://orders.example", "g", "s"), Policy::default())
                .map(|_| ())
        };
        for bad in [
            "http://id.example",
            "http://10.0.0.1:8080",
            "ftp://id.example",
            "http://u:p@127.0.0.1",
            "id.example",
        ] {
            assert!(start(bad).is_err(), "{bad}");
        }
        let mut config = GuardConfig::new("https://id.example", "https://orders.example", "g", "s");
        config.max_age_secs = 3600;
        let err = Guard::start(config, Policy::default()).unwrap_err();
        assert!(err.0.contains("at most 960"), "{err}");
    }

    #[test]
    fn token_comes_from_one_header_and_never_the_query() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "DPoP abc.def.ghi".parse().unwrap());
        assert_eq!(credential(&h, None), Ok((&b"abc.def.ghi"[..], Scheme::Dpop)));
        h.insert(header::AUTHORIZATION, "Basic YTpi".parse().unwrap());
        assert_eq!(credential(&h, None), Err(Denial::InvalidToken { reason: "malformed_authorization" }));
        h.insert(header::AUTHORIZATION, "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(credential(&h, None), Ok((&b"abc.def.ghi"[..], Scheme::Bearer)));
        assert_eq!(credential(&h, Some("page=2")), Ok((&b"abc.def.ghi"[..], Scheme::Bearer)));
        for query in [
            "access_token=x",
            "a=1&ACCESS_TOKEN=x",
            "%61ccess%5Ftoken=x",
            "a=1;access_token=x",
            "access_token",
        ] {
            assert_eq!(
                credential(&h, Some(query)),
                Err(Denial::InvalidToken { reason: "token_in_query" }),
                "{query}"
            );
        }
        h.append(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(
            credential(&h, None),
            Err(Denial::InvalidToken { reason: "multiple_authorization_headers" })
        );
        assert_eq!(credential(&HeaderMap::new(), None), Err(Denial::MissingToken));
        assert!(is_b64token(b"abc.DEF_-~+/=="));
        assert!(!is_b64token(b"abc def") && !is_b64token(b"==") && !is_b64token(b"") && !is_b64token(b"a,b"));
    }
}
