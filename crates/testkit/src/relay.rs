//! A TCP relay on a free loopback port, for the cluster tests: in front of server nodes it plays the load
//! balancer (a new connection goes to the first backend that accepts, starting with the preferred one, so a
//! guard whose node died reconnects to another); in front of PostgreSQL it plays the network path that a test
//! cuts (every open connection dropped, new ones refused) and restores. Stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    preferred: AtomicUsize,
    /// Open connections per backend.
    open: Mutex<Vec<usize>>,
    cut: watch::Sender<bool>,
}

impl Relay {
    /// Starts a relay to `backends` (the first preferred).
    ///
    /// # Panics
    /// If no loopback port is free.
    #[allow(clippy::expect_used, reason = "a test helper that cannot listen fails the test")]
    pub async fn start(backends: Vec<SocketAddr>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free loopback port");
        let addr = listener.local_addr().expect("the relay's address");
        let shared = Arc::new(Shared {
            open: Mutex::new(vec![0; backends.len()]),
            backends: Mutex::new(backends),
            preferred: AtomicUsize::new(0),
            cut: watch::channel(false).0,
        });
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *accepting.cut.borrow() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(relay(Arc::clone(&accepting), inbound));
            }
        });
        Relay { addr, shared, task }
    }

    /// `http://` and the relay's address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New connections try backend `index` first.
    pub fn prefer(&self, index: usize) {
        self.shared.preferred.store(index, Ordering::Release);
    }

    /// Replaces backend `index`'s address (a node restarted on another port).
    pub fn set_backend(&self, index: usize, addr: SocketAddr) {
        if let Ok(mut backends) = self.shared.backends.lock()
            && let Some(slot) = backends.get_mut(index)
        {
            *slot = addr;
        }
    }

    /// Drops every open connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.shared.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.cut.send_replace(false);
    }

    /// How many relayed connections to backend `index` are open now.
    pub fn open_to(&self, index: usize) -> usize {
        self.shared.open.lock().map(|open| open.get(index).copied().unwrap_or(0)).unwrap_or(0)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.cut.send_replace(true);
    }
}

/// Connects `inbound` to the first backend that accepts (preferred first) and copies both ways until either
/// side closes or the relay is cut.
async fn relay(shared: Arc<Shared>, mut inbound: TcpStream) {
    let backends = shared.backends.lock().map(|b| b.clone()).unwrap_or_default();
    let first = shared.preferred.load(Ordering::Acquire);
    let mut cut = shared.cut.subscribe();
    for offset in 0..backends.len() {
        let index = (first + offset) % backends.len();
        let connect = TcpStream::connect(backends[index]);
        let Ok(Ok(mut outbound)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
            continue;
        };
        let count = |delta: isize| {
            if let Ok(mut open) = shared.open.lock()
                && let Some(n) = open.get_mut(index)
            {
                *n = n.saturating_add_signed(delta);
            }
        };
        count(1);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            _ = cut.wait_for(|c| *c) => {}
        }
        count(-1);
        return;
    }
}
