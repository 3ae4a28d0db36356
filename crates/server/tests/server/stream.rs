//! The guards' revocation stream: authentication, snapshot, live entries from every revoking path, resume.

use std::time::Duration;

use oauth2::TokenResponse as _;
use serde_json::Value;
use tessera_core::{ClientKind, GrantType};

use crate::browser_flow::{setup, tokens};
use crate::common::{Server, http};

crate::on_both_backends!(
    revocation_stream_is_for_resource_servers_only,
    revocation_stream_sends_a_snapshot_then_every_revocation_and_resumes,
    revocation_stream_beats_and_snapshots_a_guard_ahead_of_it,
);

/// An open event stream and what has been read of it.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(s: &Server, secret: &str, last_event_id: Option<i64>) -> Events {
        let mut request = http().get(s.url("/revocations/stream")).basic_auth("rs", Some(secret));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events { response, buffer: String::new() }
    }

    /// The next event that is not a heartbeat: (event, id, data).
    async fn next(&mut self) -> (String, i64, Value) {
        self.next_event(false).await
    }

    /// The next event, heartbeats included when `beats` (a heartbeat has id 0).
    async fn next_event(&mut self, beats: bool) -> (String, i64, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned()))
                };
                let Some(event) = field("event") else { continue };
                if event == "heartbeat" {
                    if beats {
                        return (event, 0, serde_json::from_str(&field("data").unwrap()).unwrap());
                    }
                    continue;
                }
                let id = field("id").unwrap().parse().unwrap();
                let data = serde_json::from_str(&field("data").unwrap()).unwrap();
                return (event, id, data);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(8), self.response.chunk())
                .await
                .expect("an event within 8 s")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

async fn revocation_stream_is_for_resource_servers_only(s: &Server) {
    setup(s).await;
    let secret = s.add_resource_server("rs").await;
    let r = http().get(s.url("/revocations/stream")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r =
        http().get(s.url("/revocations/stream")).basic_auth("rs", Some("tss_wrong")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let other = s
        .add_client("plain", ClientKind::Confidential, &[GrantType::ClientCredentials], &[], &[], true)
        .await
        .unwrap();
    let r = http().get(s.url("/revocations/stream")).basic_auth("plain", Some(&other)).send().await.unwrap();
    assert_eq!(r.status(), 403, "a client without an audience is no resource server");
    let caller = s.add_service_client("caller").await;
    let r =
        http().get(s.url("/revocations/stream")).basic_auth("caller", Some(&caller)).send().await.unwrap();
    assert_eq!(r.status(), 403, "a client that may call API does not serve it");
    let r = http()
        .get(s.url("/revocations/stream"))
        .basic_auth("rs", Some(&secret))
        .header("last-event-id", "minus one")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

async fn revocation_stream_sends_a_snapshot_then_every_revocation_and_resumes(s: &Server) {
    let client = setup(s).await;
    let secret = s.add_resource_server("rs").await;
    let t = tokens(s, &client).await;
    // One entry exists before the guard connects.
    s.state.store.revoke_client("nobody-yet", "admin", tessera_server::now()).await.unwrap();
    let mut events = Events::open(s, &secret, None).await;
    let (event, head, snapshot) = events.next().await;
    assert_eq!(event, "snapshot");
    assert_eq!(snapshot["seq"], head);
    let entries = snapshot["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["kind"] == "client" && e["subject"] == "nobody-yet"), "{snapshot}");

    // RFC 7009 revocation of the access token: a jti entry, live.
    let r = http()
        .post(s.url("/revoke"))
        .form(&[("token", t.access_token().secret().as_str()), ("client_id", "spa")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (event, id, entry) = events.next().await;
    assert_eq!(event, "revocation");
    assert_eq!(id, head + 1);
    assert_eq!(entry["kind"], "token");
    assert_eq!(entry["seq"], id);
    // A password change: session entries for each live family, then the user entry.
    let hash = tessera_server::passwords::hash_blocking("another password").unwrap();
    s.state.store.set_password("u_alice", &hash, tessera_server::now()).await.unwrap().unwrap();
    let mut kinds = Vec::new();
    let mut last = id;
    loop {
        let (_, id, entry) = events.next().await;
        assert_eq!(id, last + 1, "in order, none missed");
        last = id;
        kinds.push(entry["kind"].as_str().unwrap().to_owned());
        if entry["kind"] == "user" {
            assert_eq!(entry["subject"], "u_alice");
            break;
        }
    }
    assert!(kinds.contains(&"session".to_owned()), "{kinds:?}");

    // A reconnecting guard resumes after its last id: it gets exactly what came after.
    drop(events);
    s.state.store.revoke_client("spa", "admin", tessera_server::now()).await.unwrap();
    let mut resumed = Events::open(s, &secret, Some(last - 1)).await;
    let (event, _, snapshot) = resumed.next().await;
    assert_eq!(event, "snapshot");
    assert_eq!(snapshot["resumed_after"], last - 1);
    let seqs: Vec<i64> =
        snapshot["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [last, last + 1], "the last entry seen again, then the one missed while away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_revocation_streams() {
    let s = Server::start(crate::common::Backend::Sqlite).await.unwrap();
    setup(&s).await;
    let secret = s.add_resource_server("rs").await;
    let mut events = Events::open(&s, &secret, None).await;
    assert_eq!(events.next().await.0, "snapshot");
    tokio::time::timeout(Duration::from_secs(5), s.finish())
        .await
        .expect("a graceful stop does not wait on streams");
    let end = tokio::time::timeout(Duration::from_secs(5), events.response.chunk()).await.unwrap();
    assert!(matches!(end, Ok(None) | Err(_)), "the stream ended");
}

async fn revocation_stream_beats_and_snapshots_a_guard_ahead_of_it(s: &Server) {
    setup(s).await;
    let secret = s.add_resource_server("rs").await;
    // A guard that remembers a sequence number this database never reached (it was restored from a backup)
    // gets the whole live set, not a resume that would skip new entries up to its old number.
    let mut events = Events::open(s, &secret, Some(1_000_000)).await;
    let (event, _, data) = events.next().await;
    assert_eq!(event, "snapshot");
    assert_eq!(data["resumed_after"], Value::Null);
    // A healthy node sends heartbeats (every 5 s) on an idle stream.
    let (event, _, _) = events.next_event(true).await;
    assert_eq!(event, "heartbeat");
}
