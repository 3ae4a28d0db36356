//! The authorization server over HTTP, driven by the `oauth2` crate as a relying party and by a small
//! cookie-keeping browser. Every test runs on SQLite and on PostgreSQL (skipped, with a message, without
//! `TESSERA_TEST_DATABASE_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly by design")]

mod common;

mod admin_api;
mod alerts;
mod basics;
mod browser_flow;
mod chromium;
mod client_auth;
mod dpop;
mod exchange;
mod login_security;
mod mfa;
mod passkeys;
mod refresh;
mod reset;
mod responses;
mod stream;
mod token_admin;

/// Instantiates each test function (taking `&Server`) once per backend, on a server whose configuration
/// `$adjust` (a `fn(&mut Config)`) changed.
#[macro_export]
macro_rules! on_backends_with {
    ($adjust:path, $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let s = $crate::common::Server::start_with($crate::common::Backend::Sqlite, $adjust)
                        .await
                        .unwrap();
                    super::$name(&s).await;
                    s.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(s) =
                        $crate::common::Server::start_with($crate::common::Backend::Postgres, $adjust).await
                    else {
                        return;
                    };
                    super::$name(&s).await;
                    s.finish().await;
                }
            )*
        }
    };
}

/// Instantiates each test function (taking `&Server`) once per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let s = $crate::common::Server::start($crate::common::Backend::Sqlite).await.unwrap();
                    super::$name(&s).await;
                    s.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(s) = $crate::common::Server::start($crate::common::Backend::Postgres).await else { return };
                    super::$name(&s).await;
                    s.finish().await;
                }
            )*
        }
    };
}
