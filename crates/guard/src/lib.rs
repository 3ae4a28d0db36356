//! Tessera's guard: a `tower` layer that stands in front of a service and lets through only requests that
//! carry a valid access token for this service, with the scopes and roles its route needs.
//!
//! ```text
//! let policy = Policy::load(Path::new("policy.toml"))?;
//! let guard = Guard::start(GuardConfig::new(issuer, "https://orders.example", "orders-guard", secret), policy)?;
//! let app = Router::new().route("/orders/{id}", get(order)).layer(guard.layer());
//! ```
//!
//! - Tokens come from `Authorization: Bearer` only; everything else is a 401 with an RFC 6750 challenge.
//! - Keys come from the issuer's discovery document and JWKS, cached, refetched (rate-limited) for an
//!   unknown `kid`; a URL inside a token is never fetched.
//! - Only tokens for this service's audience pass; a genuine token for another is reported as a
//!   `lateral_movement_attempt`.
//! - The route policy ([`policy`]) matches the normalised path ([`path`]) and denies unlisted routes.
//! - Revocations stream in from the server ([`revocation`]); with no word from it within the staleness
//!   bound the guard answers 503 rather than trust stale state.
//! - A bounded cache of validated tokens skips the signature check for a repeated token; expiry and
//!   revocation are checked on every request.
//! - Usage is counted and sent to the server in batches.

mod denial;
mod follow;
mod guard;
mod keys;
mod layer;
mod net;
pub mod path;
pub mod policy;
mod report;
pub mod revocation;

pub use denial::{DPOP_NONCE, Denial};
pub use guard::{Admitted, Guard, GuardConfig, GuardError, Identity};
pub use layer::{Authenticated, GuardLayer, GuardService, PeerAddr};
pub use policy::{Policy, PolicyError, Route, Unlisted};

impl Guard {
    /// Sends the usage events counted so far, now (for a clean shutdown).
    pub async fn flush_usage(&self) {
        self.inner.flush_usage().await;
    }
}
