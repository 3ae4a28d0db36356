//! Tessera's gateway: a reverse proxy that puts the guard in front of a service written in any language.
//!
//! Every request is decided by the [`tessera_guard::Guard`] first; a refused request gets its RFC 6750
//! answer here and never reaches the upstream. An admitted one goes upstream with its path in normal form,
//! hop-by-hop headers removed (RFC 9110 §7.6.1), `X-Forwarded-*` set, any client-sent `X-Tessera-*` header
//! stripped and the validated identity added as `X-Tessera-*` headers. Bodies stream in both directions and
//! are never buffered whole, and trailers in either direction lose the fields only the gateway may set. An
//! upstream that fails gets 502; one that does not answer in time gets 504; a client whose own request body
//! breaks off or is malformed gets 400.

pub mod config;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::IpNet;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tessera_guard::{Guard, GuardConfig, Identity, Policy};
use tokio::net::TcpListener;

pub use config::{FileConfig, GatewayConfig};

/// A response body: the upstream's, streamed, or one the gateway wrote.
pub type Body = Either<Filtered<Incoming>, Full<Bytes>>;

/// A body passing through the gateway, frame by frame: trailers lose every field the gateway strips or sets
/// in the head ([`strip_trailers`]), and a failure to read it is noted in `broken` (so a client that breaks
/// its own request body is told 400, not blamed on the upstream as 502).
#[derive(Debug)]
pub struct Filtered<B> {
    inner: B,
    broken: Option<Arc<AtomicBool>>,
}

impl<B> Filtered<B> {
    /// Wraps `inner`; a read error sets `broken`, if given.
    pub fn new(inner: B, broken: Option<Arc<AtomicBool>>) -> Self {
        Filtered { inner, broken }
    }
}

impl<B> hyper::body::Body for Filtered<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    strip_trailers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(broken) = &this.broken {
                    broken.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The prefix of the identity headers the gateway adds (and strips from clients).
pub const IDENTITY_PREFIX: &str = "x-tessera-";

/// Headers some frameworks read to change a request's method or path after the policy decided on it.
const REWRITING: [&str; 5] =
    ["x-http-method-override", "x-method-override", "x-http-method", "x-original-url", "x-rewrite-url"];

/// Headers about the original request that only a trusted proxy may set.
const FORWARDING: [&str; 4] = ["x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server", "x-real-ip"];

/// Connections served at once; beyond it new connections wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16_384;
/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the de-facto ones.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

struct Metrics {
    responses: Family<StatusLabels, Counter>,
    upstream_errors: Family<ErrorLabels, Counter>,
    upstream_seconds: Histogram,
}

/// A running gateway's shared state.
pub struct Gateway {
    config: GatewayConfig,
    guard: Guard,
    client: Client<HttpConnector, Filtered<Incoming>>,
    metrics: Metrics,
    registry: Registry,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Loads the policy and starts the guard (inside a tokio runtime).
    ///
    /// # Errors
    /// A one-line message: a bad policy file names its line.
    pub fn start(config: GatewayConfig) -> Result<Arc<Self>, String> {
        let policy = Policy::load(&config.policy).map_err(|e| e.to_string())?;
        let mut guard_config = GuardConfig::new(
            config.issuer.clone(),
            config.audience.clone(),
            config.client_id.clone(),
            config.client_secret.to_string(),
        );
        guard_config.staleness = config.staleness;
        guard_config.public_url.clone_from(&config.public_url);
        guard_config.report_usage = config.report_usage;
        guard_config.dpop_nonce = config.dpop_nonce;
        let guard = Guard::start(guard_config, policy).map_err(|e| e.to_string())?;
        Ok(Self::with_guard(config, guard))
    }

    /// A gateway around an existing guard.
    #[must_use]
    pub fn with_guard(config: GatewayConfig, guard: Guard) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(config.upstream_http2)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let metrics = Metrics {
            responses: Family::default(),
            upstream_errors: Family::default(),
            upstream_seconds: Histogram::new([
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        };
        let mut registry = Registry::default();
        guard.register_metrics(&mut registry);
        {
            let r = registry.sub_registry_with_prefix("tessera_gateway");
            r.register("responses", "Responses sent, by status code", metrics.responses.clone());
            r.register("upstream_errors", "Upstream failures, by kind", metrics.upstream_errors.clone());
            r.register(
                "upstream_seconds",
                "Time to the upstream's response head",
                metrics.upstream_seconds.clone(),
            );
        }
        Arc::new(Gateway { config, guard, client, metrics, registry })
    }

    /// The guard deciding this gateway's requests.
    #[must_use]
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The client's address: the peer, unless the peer is a trusted proxy, in which case the nearest address
    /// in `X-Forwarded-For` that is not itself a trusted proxy.
    fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.config.trusted_proxies)
    }

    /// Answers the gateway's own paths. On the main listener (`public`), `/metrics` is answered only to a
    /// loopback client: elsewhere it is served on `admin_listen`.
    fn admin(&self, path: &str, public: Option<IpAddr>) -> Option<Response<Body>> {
        let (status, body, kind) = match path {
            "/metrics" if public.is_some_and(|client| !client.is_loopback()) => {
                return Some(plain(
                    StatusCode::FORBIDDEN,
                    "metrics are served on admin_listen, or here to loopback clients only\n",
                ));
            }
            "/healthz" => (StatusCode::OK, Bytes::from_static(b"ok\n"), "text/plain"),
            "/readyz" if self.guard.is_ready() => {
                (StatusCode::OK, Bytes::from_static(b"ready\n"), "text/plain")
            }
            "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"not ready\n"), "text/plain"),
            "/metrics" => {
                let mut text = String::new();
                if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
                    return Some(plain(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n"));
                }
                (
                    StatusCode::OK,
                    Bytes::from(text),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            }
            _ => return None,
        };
        let mut resp = Response::new(Either::Right(Full::new(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(resp)
    }

    /// Handles one request from `peer`.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        admin_here: bool,
    ) -> Response<Body> {
        let resp = self.decide_and_forward(req, peer, admin_here).await;
        self.metrics.responses.get_or_create(&StatusLabels { code: resp.status().as_u16() }).inc();
        resp
    }

    async fn decide_and_forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        admin_here: bool,
    ) -> Response<Body> {
        let client = self.client_ip(peer.ip(), req.headers());
        if admin_here && let Some(resp) = self.admin(req.uri().path(), Some(client)) {
            return resp;
        }
        let nonce = self.guard.dpop_nonce_for(req.headers());
        let admitted = match self.guard.check(req.method(), req.uri(), req.headers(), Some(client)).await {
            Ok(admitted) => admitted,
            Err(denial) => {
                return denial.into_response::<Full<Bytes>>(&self.config.audience).map(Either::Right);
            }
        };
        let (mut parts, body) = req.into_parts();
        let Some(uri) = self.upstream_uri(&admitted.path, parts.uri.query()) else {
            return plain(StatusCode::BAD_REQUEST, "bad request target\n");
        };
        let original_host = parts
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        strip_hop_by_hop(&mut parts.headers);
        strip_identity(&mut parts.headers);
        for name in REWRITING {
            parts.headers.remove(name);
        }
        if !self.config.forward_authorization {
            parts.headers.remove(header::AUTHORIZATION);
            parts.headers.remove("dpop");
        }
        self.forwarded_headers(&mut parts.headers, peer.ip(), client, original_host);
        if let Some(identity) = &admitted.identity
            && !identity_headers(&mut parts.headers, identity)
        {
            let denial = tessera_guard::Denial::InvalidToken { reason: "unrepresentable_claims" };
            return denial.into_response::<Full<Bytes>>(&self.config.audience).map(Either::Right);
        }
        if let Some(authority) = self.config.upstream.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        parts.uri = uri;
        parts.version = if self.config.upstream_http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        let broken = Arc::new(AtomicBool::new(false));
        let upstream_req = Request::from_parts(parts, Filtered::new(body, Some(Arc::clone(&broken))));
        let started = tokio::time::Instant::now();
        let sent =
            tokio::time::timeout(self.config.upstream_timeout, self.client.request(upstream_req)).await;
        self.metrics.upstream_seconds.observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                if let Some(value) = nonce {
                    resp.headers_mut().insert(tessera_guard::DPOP_NONCE, value);
                }
                resp.map(|body| Either::Left(Filtered::new(body, None)))
            }
            Ok(Err(_)) if broken.load(Ordering::Relaxed) => {
                tracing::debug!("the client's request body failed");
                plain(StatusCode::BAD_REQUEST, "the request body could not be read\n")
            }
            Ok(Err(e)) => {
                let kind = if e.is_connect() { "connect" } else { "upstream" };
                self.metrics.upstream_errors.get_or_create(&ErrorLabels { kind }).inc();
                tracing::warn!(kind, error = %e, "upstream request failed");
                plain(StatusCode::BAD_GATEWAY, "the upstream service failed\n")
            }
            Err(_) => {
                self.metrics.upstream_errors.get_or_create(&ErrorLabels { kind: "timeout" }).inc();
                tracing::warn!(timeout = ?self.config.upstream_timeout, "upstream timed out");
                plain(StatusCode::GATEWAY_TIMEOUT, "the upstream service did not answer in time\n")
            }
        }
    }

    fn upstream_uri(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let base = &self.config.upstream;
        let prefix = base.path().trim_end_matches('/');
        let pq = match query {
            Some(q) => format!("{prefix}{path}?{q}"),
            None => format!("{prefix}{path}"),
        };
        Uri::builder()
            .scheme(base.scheme()?.clone())
            .authority(base.authority()?.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }

    fn forwarded_headers(
        &self,
        headers: &mut HeaderMap,
        peer: IpAddr,
        client: IpAddr,
        original_host: Option<HeaderValue>,
    ) {
        let trusted = self.config.trusted_proxies.iter().any(|n| n.contains(&peer));
        if !trusted {
            for name in FORWARDING {
                headers.remove(name);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
            headers.insert(HeaderName::from_static("x-real-ip"), v);
        }
        let xff = HeaderName::from_static("x-forwarded-for");
        let chain = if trusted {
            let earlier: Vec<&str> = headers.get_all(&xff).iter().filter_map(|v| v.to_str().ok()).collect();
            if earlier.is_empty() { peer.to_string() } else { format!("{}, {peer}", earlier.join(", ")) }
        } else {
            peer.to_string()
        };
        headers.remove(&xff);
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert(xff, v);
        }
        let proto = HeaderName::from_static("x-forwarded-proto");
        if !trusted || !headers.contains_key(&proto) {
            headers.insert(proto, HeaderValue::from_static("http"));
        }
        let fwd_host = HeaderName::from_static("x-forwarded-host");
        if !trusted || !headers.contains_key(&fwd_host) {
            headers.remove(&fwd_host);
            if let Some(host) = original_host {
                headers.insert(fwd_host, host);
            }
        }
        headers.remove(header::FORWARDED);
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(text.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The client's address given the peer, the request's `X-Forwarded-For` and the trusted proxies.
#[must_use]
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let lines = headers.get_all("x-forwarded-for").iter().map(|v| v.to_str().ok());
    tessera_core::net::client_ip(peer, lines, trusted)
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Removes from trailers every field the gateway removes from or sets in a request's head: hop-by-hop and
/// identity headers, the method and URL overrides, the forwarding headers and the credentials. A trailer
/// must not carry them (RFC 9110 §6.5.1), and an upstream that merged them into the head would trust them.
pub fn strip_trailers(trailers: &mut HeaderMap) {
    strip_hop_by_hop(trailers);
    strip_identity(trailers);
    for name in REWRITING.iter().chain(&FORWARDING).chain(&[
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "authorization",
        "dpop",
        "host",
        "content-length",
        "cookie",
    ]) {
        trailers.remove(*name);
    }
}

/// Removes every `X-Tessera-*` header, also spelt with `_` (which CGI-style servers fold into `-`): only the
/// gateway may set them.
pub fn strip_identity(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let name = k.as_str().as_bytes();
            name.len() >= IDENTITY_PREFIX.len()
                && name.iter().zip(IDENTITY_PREFIX.bytes()).all(|(&a, b)| a == b || (a == b'_' && b == b'-'))
        })
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Adds all six identity headers (empty when the token has no such claim, so the upstream never mistakes an
/// absent header for one set elsewhere); `false` if a claim cannot be a header value.
fn identity_headers(headers: &mut HeaderMap, identity: &Identity) -> bool {
    let c = &identity.claims;
    let roles = c.roles.join(" ");
    let fields: [(&'static str, Option<&str>); 6] = [
        ("x-tessera-sub", Some(&c.sub)),
        ("x-tessera-client-id", Some(&c.client_id)),
        ("x-tessera-scope", c.scope.as_deref()),
        ("x-tessera-roles", (!roles.is_empty()).then_some(roles.as_str())),
        ("x-tessera-sid", c.sid.as_deref()),
        ("x-tessera-jti", Some(&c.jti)),
    ];
    for (name, value) in fields {
        let Ok(v) = HeaderValue::from_str(value.unwrap_or("")) else { return false };
        headers.insert(HeaderName::from_static(name), v);
    }
    true
}

/// Accepts connections on `listener` until `shutdown` resolves, then drains them (for at most 10 s) and
/// sends the last usage events. Admin paths are answered here when `admin` is `None`, and on `admin`
/// otherwise.
///
/// # Errors
/// An accept failure that is not transient.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = connection_builder();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let admin_here = admin.is_none();
    let admin_task = admin.map(|admin| {
        let gw = Arc::clone(&gateway);
        tokio::spawn(async move {
            let builder = connection_builder();
            while let Ok((stream, _)) = admin.accept().await {
                let gw = Arc::clone(&gw);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let gw = Arc::clone(&gw);
                    async move {
                        Ok::<_, Infallible>(
                            gw.admin(req.uri().path(), None)
                                .unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "not found\n")),
                        )
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(conn);
            }
        })
    });
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = Arc::clone(&gateway);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let gw = Arc::clone(&gw);
            async move { Ok::<_, Infallible>(gw.handle(req, peer, admin_here).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = watched.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after 10 s; closing them");
    }
    if let Some(task) = admin_task {
        task.abort();
    }
    gateway.guard.flush_usage().await;
    Ok(())
}

/// The HTTP/1.1 and HTTP/2 connection settings of both listeners.
fn connection_builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper drops its header-read timeout, and a client trickling a request head holds a
    // connection for ever.
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted, WouldBlock};
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || e.raw_os_error() == Some(24)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 10.1.1.1")]);
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(client_ip(proxy, &h, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
        // A spoofed leftmost entry does not win over the nearest untrusted hop.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9")]);
        assert_eq!(client_ip(proxy, &h, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
        let h = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn hop_by_hop_and_identity_headers_are_stripped() {
        let mut h = headers(&[
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-tessera-sub", "admin"),
            ("X-Tessera-Roles", "admin"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        strip_identity(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[tokio::test]
    async fn trailers_lose_the_fields_only_the_gateway_may_set() {
        use http_body_util::BodyExt;
        let trailers = headers(&[
            ("x-tessera-sub", "root"),
            ("x_tessera_roles", "admin"),
            ("authorization", "Bearer stolen"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-for", "6.6.6.6"),
            ("host", "internal"),
            ("x-checksum", "sha256:abc"),
        ]);
        let body = Full::new(Bytes::from_static(b"payload")).with_trailers(std::future::ready(Some(Ok::<
            _,
            Infallible,
        >(
            trailers,
        ))));
        let collected = Filtered::new(body, None).collect().await.unwrap();
        let left: Vec<String> = collected.trailers().unwrap().keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(left, vec!["x-checksum"], "only the application's own trailer survives");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
    }

    #[tokio::test]
    async fn a_body_read_error_is_noted() {
        use http_body_util::BodyExt;
        let failing = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err(std::io::Error::other("connection reset")),
        ]));
        let broken = Arc::new(AtomicBool::new(false));
        assert!(Filtered::new(failing, Some(Arc::clone(&broken))).collect().await.is_err());
        assert!(broken.load(Ordering::Relaxed));
    }
}
