//! The gateway in front of a recording upstream, with a real authorization server (SQLite, or PostgreSQL when
//! `TESSERA_TEST_DATABASE_URL` is set) behind its guard.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed unwrap is a failed test"
)]

mod attacks;
mod detection;
mod dpop;
mod exchange;
mod harness;
mod incident;
mod lifecycle;
mod proxy;
