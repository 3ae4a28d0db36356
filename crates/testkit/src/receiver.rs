//! An HTTP receiver for alerts on a free loopback port: it records every request, and answers as the test
//! says (accept, fail with a status, or hang without answering). Stops when dropped.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The status it was answered with (0: left hanging).
    pub answered: u16,
}

impl Received {
    /// A header as text ("" if absent).
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    }

    /// Whether `Tessera-Signature` (`t=<unix>,v1=<hex>`) is HMAC-SHA256 under `secret` over `"{t}.{body}"`,
    /// checked the way a receiver would (constant-time comparison).
    pub fn signed_with(&self, secret: &str) -> bool {
        use aws_lc_rs::hmac;
        let header = self.header("tessera-signature");
        let Some((t, v1)) = header.split_once(',') else { return false };
        let (Some(t), Some(v1)) = (t.strip_prefix("t="), v1.strip_prefix("v1=")) else { return false };
        if v1.len() % 2 != 0 || !v1.is_ascii() {
            return false;
        }
        let Ok(tag) = (0..v1.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&v1[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
        else {
            return false;
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        hmac::verify(&key, &[t.as_bytes(), b".", &self.body].concat(), &tag).is_ok()
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug, Default)]
struct Shared {
    got: Mutex<Vec<Received>>,
    /// The status to answer with; 0 hangs.
    answer: AtomicU16,
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Receiver {
    /// Starts a receiver that answers `status` (0: hangs).
    ///
    /// # Panics
    /// If no loopback port can be bound (a test environment fault).
    pub async fn start(status: u16) -> Receiver {
        let shared = Arc::new(Shared { got: Mutex::new(Vec::new()), answer: AtomicU16::new(status) });
        let handler_state = Arc::clone(&shared);
        let handler = move |headers: HeaderMap, body: Bytes| {
            let shared = Arc::clone(&handler_state);
            async move {
                let answer = shared.answer.load(Ordering::SeqCst);
                if let Ok(mut got) = shared.got.lock() {
                    got.push(Received { headers, body, answered: answer });
                }
                if answer == 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                StatusCode::from_u16(answer).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        #[allow(clippy::expect_used, reason = "a test helper fails loudly")]
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        #[allow(clippy::expect_used, reason = "a test helper fails loudly")]
        let addr = listener.local_addr().expect("its address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver { url: format!("http://{addr}/hook"), shared, _stop: stop }
    }

    /// From now on, answer `status` (0: hang).
    pub fn answer(&self, status: u16) {
        self.shared.answer.store(status, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn got(&self) -> Vec<Received> {
        self.shared.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Waits (at most `timeout`) until `done` holds for the requests so far; returns them either way.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.got();
            if done(&got) || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
