//! The guard's HTTP client for its control plane (discovery, JWKS, the revocation stream, usage events):
//! hyper with rustls over aws-lc-rs and the Mozilla roots, no redirects followed, bounded response sizes.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// The largest discovery document or JWKS read.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// A control-plane client.
#[derive(Clone, Debug)]
pub(crate) struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    user_agent: HeaderValue,
}

/// `Authorization: Basic` for a client id and secret, each form-urlencoded first (RFC 6749 §2.3.1).
pub(crate) fn basic_auth(id: &str, secret: &str) -> Zeroizing<String> {
    use base64::Engine as _;
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = Zeroizing::new(format!("{}:{}", encode(id), encode(secret)));
    Zeroizing::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())))
}

impl Http {
    pub(crate) fn new(timeout: Duration) -> Result<Self, String> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        let user_agent = HeaderValue::from_static(concat!("tessera-guard/", env!("CARGO_PKG_VERSION")));
        Ok(Http { client, timeout, user_agent })
    }

    /// Sends a request and waits (at most the timeout) for the response head.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        auth: Option<&str>,
        extra: &[(&'static str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, String> {
        let mut req =
            Request::builder().method(method).uri(url).header(header::USER_AGENT, self.user_agent.clone());
        if let Some(auth) = auth {
            let mut value = HeaderValue::from_str(auth).map_err(|_| "bad credentials".to_owned())?;
            value.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, value);
        }
        for (name, value) in extra {
            req = req.header(*name, value.as_str());
        }
        let req = match body {
            Some(body) => {
                req.header(header::CONTENT_TYPE, "application/json").body(Full::new(Bytes::from(body)))
            }
            None => req.body(Full::new(Bytes::new())),
        }
        .map_err(|_| format!("{url}: not a valid request URL"))?;
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(format!("{url}: timed out")),
            Ok(Err(e)) => Err(format!("{url}: {e}")),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// GETs a document (at most 1 MiB) and returns its text; non-2xx is an error.
    pub(crate) async fn get_text(&self, url: &str) -> Result<String, String> {
        let resp = self.send(Method::GET, url, None, &[], None).await?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status().as_u16()));
        }
        let body = tokio::time::timeout(self.timeout, Limited::new(resp.into_body(), MAX_DOCUMENT).collect())
            .await
            .map_err(|_| format!("{url}: timed out"))?
            .map_err(|_| format!("{url}: unreadable or larger than 1 MiB"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8"))
    }

    /// GETs a JSON document.
    pub(crate) async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let text = self.get_text(url).await?;
        serde_json::from_str(&text).map_err(|_| format!("{url}: not the expected JSON document"))
    }

    /// POSTs JSON; returns the status.
    pub(crate) async fn post_json(&self, url: &str, auth: &str, body: Vec<u8>) -> Result<StatusCode, String> {
        let resp = self.send(Method::POST, url, Some(auth), &[], Some(body)).await?;
        let status = resp.status();
        // Drain the (small) body so the connection can be reused.
        let _ = tokio::time::timeout(self.timeout, Limited::new(resp.into_body(), 64 * 1024).collect()).await;
        Ok(status)
    }
}
