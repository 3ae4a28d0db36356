//! Tessera's pure core: the vocabulary of the OAuth flows (grants, client kinds, key states, revocation
//! subjects), opaque secrets and their hashes, and the flow decisions that need no I/O.
//!
//! Nothing here reads a clock, a socket, a file or a random source: time and random bytes come in as
//! arguments, so every decision can be tested at a fixed time.

pub mod audit;
pub mod detect;
pub mod flow;
pub mod geo;
pub mod mfa;
pub mod model;
pub mod net;
pub mod proof_keys;
pub mod replay;
pub mod risk;
pub mod secret;
pub mod throttle;

pub use audit::{ChainHash, Event, EventKind};
pub use model::{ClientKind, GrantType, KeyState, RevocationKind};
pub use secret::{OpaqueSecret, SecretKind, SuccessorKey, TokenHash};
