//! The token crate's integration tests: one binary, one module per concern.
//!
//! All pure: keys are generated or fixed, and time is a fixed `UnixTime`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly by design")]

mod common;

mod assertion;
mod attacks;
mod dpop;
mod keys;
mod properties;
mod rfc_vectors;
mod wycheproof;
