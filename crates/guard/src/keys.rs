//! The issuer's signing keys: found through its discovery document, cached, refreshed on a schedule and,
//! rate-limited, when a token names a `kid` we do not know. Only the issuer's configured `jwks_uri` is ever
//! fetched: a URL inside a token (`jku`, `x5u`) is refused by the token crate before any lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tessera_token::KeySet;
use tokio::time::Instant;

use crate::net::Http;

/// Why keys could not be fetched. Carries no response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError(pub String);

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FetchError {}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Reads the issuer's RFC 8414 metadata (falling back to OpenID discovery) and returns its `jwks_uri`.
///
/// The metadata must name exactly the configured issuer (RFC 8414 §3.3), and the JWKS must be served over
/// https unless the issuer itself is plain http (a loopback development set-up).
pub(crate) async fn discover(http: &Http, issuer: &str) -> Result<String, FetchError> {
    let base = issuer.trim_end_matches('/');
    let mut last = FetchError("no discovery document".into());
    for doc in ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"] {
        let url = format!("{base}{doc}");
        let found: Result<Discovery, FetchError> = http.get_json(&url).await.map_err(FetchError);
        match found {
            Ok(d) if d.issuer != issuer => {
                return Err(FetchError(format!("{url} names issuer {:?}, not {issuer:?}", d.issuer)));
            }
            Ok(d) => {
                let secure = d.jwks_uri.starts_with("https://");
                let dev = issuer.starts_with("http://") && d.jwks_uri.starts_with("http://");
                if !secure && !dev {
                    return Err(FetchError(format!("{url}: jwks_uri must be https")));
                }
                return Ok(d.jwks_uri);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The cached key set.
#[derive(Debug)]
pub(crate) struct Keys {
    current: RwLock<Arc<KeySet>>,
    /// Bumped whenever the set changes; cached validations from an older generation are dropped.
    pub(crate) generation: AtomicU64,
    jwks_uri: tokio::sync::Mutex<Option<String>>,
    /// When the last fetch was attempted, for rate-limiting refetches.
    last_fetch: std::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
}

impl Keys {
    pub(crate) fn new(min_refetch: Duration) -> Self {
        Keys {
            current: RwLock::new(Arc::new(KeySet::new())),
            generation: AtomicU64::new(0),
            jwks_uri: tokio::sync::Mutex::new(None),
            last_fetch: std::sync::Mutex::new(None),
            min_refetch,
        }
    }

    /// The current set (cheap: one `Arc` clone).
    pub(crate) fn get(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(keys) => Arc::clone(&keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Whether a first key set has been loaded.
    pub(crate) fn loaded(&self) -> bool {
        self.generation.load(Ordering::Acquire) > 0
    }

    /// Fetches the JWKS now (discovering it first if needed). Returns whether the set changed.
    pub(crate) async fn refresh(&self, http: &Http, issuer: &str) -> Result<bool, FetchError> {
        self.fetch(http, issuer, None).await
    }

    /// Fetches unless another fetch started within `unless_within` (checked after waiting for the fetch lock,
    /// so a burst of unknown `kid`s costs one fetch).
    async fn fetch(
        &self,
        http: &Http,
        issuer: &str,
        unless_within: Option<Duration>,
    ) -> Result<bool, FetchError> {
        let mut uri = self.jwks_uri.lock().await;
        if let Ok(mut last) = self.last_fetch.lock() {
            if let (Some(limit), Some(at)) = (unless_within, *last)
                && at.elapsed() < limit
            {
                return Ok(false);
            }
            *last = Some(Instant::now());
        }
        let jwks_uri = match uri.as_ref() {
            Some(u) => u.clone(),
            None => {
                let found = discover(http, issuer).await?;
                *uri = Some(found.clone());
                found
            }
        };
        let body = http.get_text(&jwks_uri).await.map_err(FetchError)?;
        let set = KeySet::from_jwks(&body).map_err(|e| FetchError(format!("{jwks_uri}: {e}")))?;
        let changed = {
            let old = self.get();
            let same = old.len() == set.len()
                && set.iter().all(|k| old.get(k.kid()).is_some_and(|o| o.alg() == k.alg()));
            if !same {
                match self.current.write() {
                    Ok(mut cur) => *cur = Arc::new(set),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
                }
            }
            !same || !self.loaded()
        };
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(changed)
    }

    /// Refetches for an unknown `kid`, unless a fetch happened within the rate limit. Returns whether the
    /// key is known afterwards.
    pub(crate) async fn refetch_for(&self, http: &Http, issuer: &str, kid: &str) -> bool {
        if let Err(e) = self.fetch(http, issuer, Some(self.min_refetch)).await {
            tracing::warn!(error = %e, "JWKS refetch failed");
        }
        self.get().get(kid).is_some()
    }
}
