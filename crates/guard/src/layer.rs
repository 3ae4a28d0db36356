//! The tower layer and the axum extractor.
//!
//! ```text
//! let app = Router::new().route("/orders/{id}", get(order)).layer(guard.layer());
//! async fn order(Authenticated(who): Authenticated) -> String { who.claims.sub.clone() }
//! ```
//!
//! The layer decides every request before the service sees it. A refused request gets the RFC 6750 answer
//! and never reaches the service. An admitted one reaches it with the caller's [`Identity`] in its
//! extensions. A path not already in normal form is refused (403), not rewritten: axum's `Router::layer`
//! runs after the router has chosen a handler by the raw path, so a rewrite would let the policy decide on one
//! path while another path's handler runs. (The gateway, which is the router for its upstream, rewrites.)

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, FromRequestParts, OptionalFromRequestParts, OriginalUri};
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};

use crate::denial::Denial;
use crate::guard::{Guard, Identity};

/// The client's address, for usage events. The gateway inserts it; under axum, `ConnectInfo` is used too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub IpAddr);

/// Applies a [`Guard`] to a service.
#[derive(Debug, Clone)]
pub struct GuardLayer {
    guard: Guard,
}

impl Guard {
    /// The tower layer for this guard.
    #[must_use]
    pub fn layer(&self) -> GuardLayer {
        GuardLayer { guard: self.clone() }
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardService { guard: self.guard.clone(), inner }
    }
}

/// A service behind a guard.
#[derive(Debug, Clone)]
pub struct GuardService<S> {
    guard: Guard,
    inner: S,
}

fn peer_of(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<PeerAddr>()
        .map(|p| p.0)
        .or_else(|| parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
}

impl<S, B, RB> tower_service::Service<Request<B>> for GuardService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: From<Bytes> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness is the one to call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let peer = peer_of(&parts);
            let nonce = guard.dpop_nonce_for(&parts.headers);
            // Inside a nested router the path here lacks the prefix the client sent; a DPoP proof names the
            // URL the client used, which axum keeps as `OriginalUri`.
            let client_uri = parts.extensions.get::<OriginalUri>().map(|o| &o.0).unwrap_or(&parts.uri);
            match guard.check_at(&parts.method, &parts.uri, client_uri, &parts.headers, peer).await {
                Ok(admitted) => {
                    if admitted.path != parts.uri.path() {
                        let denial = Denial::Forbidden { reason: "path_not_normal" };
                        return Ok(denial.into_response(&guard.config().audience));
                    }
                    if let Some(identity) = admitted.identity {
                        parts.extensions.insert(identity);
                    }
                    let mut resp = inner.call(Request::from_parts(parts, body)).await?;
                    if let Some(value) = nonce {
                        resp.headers_mut().insert(crate::DPOP_NONCE, value);
                    }
                    Ok(resp)
                }
                Err(denial) => Ok(denial.into_response(&guard.config().audience)),
            }
        })
    }
}

/// The axum extractor for the caller the guard admitted. On a route the guard did not cover (or a public
/// one) it refuses with 401, so a handler that asks for an identity never runs without one.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Arc<Identity>);

impl std::ops::Deref for Authenticated {
    type Target = Identity;

    fn deref(&self) -> &Identity {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Arc<Identity>>()
            .cloned()
            .map(Authenticated)
            .ok_or_else(|| Denial::MissingToken.into_response(""))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Authenticated {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Arc<Identity>>().cloned().map(Authenticated))
    }
}
