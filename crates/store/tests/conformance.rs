//! The conformance suite: every test runs against SQLite (a file in a temporary directory) and PostgreSQL
//! (its own schema in the database `TESSERA_TEST_DATABASE_URL` names; skipped, with a message, when unset).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly by design")]

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::audit::ChainBreak;
use tessera_core::throttle::Counter;
use tessera_core::{ClientKind, EventKind, GrantType, KeyState, RevocationKind, TokenHash};
use tessera_store::{
    AlertOutcome, AuditQuery, AuthCode, Client, CodeUse, Containment, Event, Family, KeyRecord, LoginSession,
    NewAlert, NewIncident, NewRevocation, OriginRef, PostgresStore, RefreshRecord, Resource, Rotation,
    SqliteStore, Store, StoreError, TokenRef, User, WebauthnCredential, verify_audit_chain,
};

const NOW: i64 = 1_800_000_000;

/// A store under test and what it takes to clean it up.
struct Harness {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    schema: Option<(String, String)>,
}

impl Harness {
    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("tessera.db")).await.unwrap();
        store.migrate().await.unwrap();
        Harness { store: Arc::new(store), _dir: Some(dir), schema: None }
    }

    async fn postgres() -> Option<Harness> {
        let Some(url) = std::env::var("TESSERA_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
            #[allow(clippy::print_stderr, reason = "a skipped test says so")]
            {
                eprintln!("skipped: TESSERA_TEST_DATABASE_URL is not set, PostgreSQL conformance not run");
            }
            return None;
        };
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let schema = format!("tessera_test_{}_{random:016x}", std::process::id());
        admin(&url, &format!("CREATE SCHEMA {schema}")).await;
        let store = PostgresStore::connect(&url, Some(&schema)).await.unwrap();
        store.migrate().await.unwrap();
        Some(Harness { store: Arc::new(store), _dir: None, schema: Some((url, schema)) })
    }

    async fn finish(self) {
        if let Some((url, schema)) = &self.schema {
            admin(url, &format!("DROP SCHEMA {schema} CASCADE")).await;
        }
    }
}

async fn admin(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

impl Harness {
    /// Runs SQL on the database directly, as an operator (or an intruder) with database access would.
    async fn raw(&self, sql: &str) -> Result<u64, sqlx::Error> {
        use sqlx::Connection;
        match (&self.schema, &self._dir) {
            (Some((url, schema)), _) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                sqlx::query(&format!("SET search_path TO {schema}")).execute(&mut conn).await?;
                Ok(sqlx::query(sql).execute(&mut conn).await?.rows_affected())
            }
            (None, Some(dir)) => {
                let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                Ok(sqlx::query(sql).execute(&mut conn).await?.rows_affected())
            }
            (None, None) => unreachable!("a harness has a file or a schema"),
        }
    }
}

/// Instantiates every suite function that needs the database itself (not just the store), once per backend.
macro_rules! conformance_raw {
    ($($name:ident),* $(,)?) => {
        mod sqlite_raw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::sqlite().await;
                    super::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
        mod postgres_raw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = super::Harness::postgres().await else { return };
                    super::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
    };
}

conformance_raw!(
    a_users_timeline_among_a_million_events_is_one_index_range_scan,
    audit_log_refuses_updates_and_deletes_in_the_database,
    edited_audit_event_is_named_by_verify,
    deleted_audit_events_are_named_by_verify,
    changes_committed_by_another_node_are_announced_and_other_schemas_are_not,
    of_two_nodes_scheduling_a_key_at_once_exactly_one_does,
    two_nodes_appending_at_once_keep_one_unbroken_audit_chain,
    two_nodes_posting_usage_at_once_keep_each_batch_whole_on_one_chain,
);

/// PostgreSQL only: SQLite has one writer and never pairs usage transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_usage_pair_whose_second_loses_the_head_is_written_again_after_the_winner() {
    let Some(h) = Harness::postgres().await else { return };
    a_usage_pair_whose_second_loses_the_head_is_written_again_after_the_winner(&h).await;
    h.finish().await;
}

/// Instantiates every suite function once per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::sqlite().await;
                    super::$name(&h.store).await;
                    h.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = super::Harness::postgres().await else { return };
                    super::$name(&h.store).await;
                    h.finish().await;
                }
            )*
        }
    };
}

conformance!(
    migrations_apply_twice_without_harm,
    users_are_unique_by_name_and_round_trip,
    clients_round_trip_rotate_secret_and_disable,
    resources_round_trip,
    activating_a_key_retires_the_current_one,
    code_redeems_once_then_reports_replay,
    refresh_rotation_has_exactly_one_winner_under_concurrency,
    rotation_is_refused_once_the_family_is_revoked,
    revocation_sequence_is_gapless_and_ordered_under_concurrency,
    revocation_matches_each_subject_kind_until_it_expires,
    exchanged_token_is_revoked_with_its_origin,
    password_change_revokes_every_session_of_the_user,
    ending_a_login_session_revokes_its_families,
    code_replay_revokes_families_from_that_code,
    prune_removes_only_what_can_no_longer_matter,
    events_append_and_read_back_newest_first,
    audit_chain_links_every_event_in_order_under_concurrency,
    usage_appends_join_the_chain_whole_beside_other_appends,
    audit_search_filters_and_pages,
    pruning_keeps_the_audit_chain_verifiable_from_its_checkpoint,
    every_change_to_users_clients_and_resources_moves_the_change_counter,
    single_use_ids_are_taken_once_under_concurrency,
    dpop_binding_round_trips,
    detection_is_raised_once_under_concurrency_with_its_alerts_queued,
    alert_outbox_leases_retries_and_finishes,
    revoke_user_can_force_a_password_reset_that_a_new_password_clears,
    source_blocks_and_lifts_are_streamed_in_order,
    throttle_counters_change_only_by_compare_and_swap,
    second_factors_confirm_once_steps_only_move_forward_and_recovery_codes_spend_once,
    webauthn_credentials_are_unique_and_ceremonies_are_taken_once,
    one_live_incident_per_subject_and_containment_runs_each_step_once,
);

async fn one_live_incident_per_subject_and_containment_runs_each_step_once(s: &Arc<dyn Store>) {
    let alice = user("alice");
    s.create_user(&alice).await.unwrap();
    let mut web = client("web");
    web.secret_hash = Some(TokenHash::of("old-secret"));
    s.create_client(&web).await.unwrap();
    s.create_family(&family("fam-1", &alice.id), Some(&refresh("r1", "fam-1", 0))).await.unwrap();
    s.create_family(&family("fam-2", &alice.id), None).await.unwrap();
    s.begin_totp(&alice.id, b"sealed", NOW).await.unwrap();
    assert!(s.confirm_totp(&alice.id, 1, &[TokenHash::of("rc")], NOW).await.unwrap());

    // Concurrent opens about one subject: one incident.
    let new = NewIncident {
        subject: format!("user:{}", alice.id),
        user_id: Some(alice.id.clone()),
        reason: "refresh token reuse".into(),
        opened_by: "detector".into(),
        ..NewIncident::default()
    };
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let (s, new) = (Arc::clone(s), new.clone());
            tokio::spawn(async move { s.open_incident(&new, NOW).await.unwrap() })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut created = 0;
    for open in opens {
        let (incident, fresh) = open.await.unwrap();
        ids.insert(incident.id);
        created += usize::from(fresh);
    }
    assert_eq!((ids.len(), created), (1, 1), "one live incident per subject, opened once");
    let id = *ids.iter().next().unwrap();
    assert!(
        s.record_incident_action(
            id,
            "detector",
            "detection",
            "refresh_token_reuse|sid:fam-1",
            "critical",
            NOW
        )
        .await
        .unwrap()
    );
    assert!(!s.record_incident_action(id + 100, "x", "detection", "y", "z", NOW).await.unwrap());

    let how = Containment {
        actor: "cli:responder".into(),
        reset_mfa: true,
        client: Some(("web".into(), Some(TokenHash::of("new-secret")))),
        block: vec![("203.0.113.0/24".into(), NOW + 3600, "in an hour".into())],
    };
    let head = s.audit_state().await.unwrap().head_seq;
    let first = s.contain_incident(id, &how, NOW + 10).await.unwrap().unwrap();
    let steps: Vec<_> = first.taken.iter().map(|a| (a.action.as_str(), a.target.as_str())).collect();
    assert_eq!(
        steps,
        [
            ("revoke_sessions", "user:u-alice"),
            ("revoke_user", "user:u-alice"),
            ("force_password_reset", "user:u-alice"),
            ("reset_mfa", "user:u-alice"),
            ("revoke_client", "client:web"),
            ("rotate_client_secret", "client:web"),
            ("block_source", "ip:203.0.113.0/24"),
        ]
    );
    assert_eq!(first.taken[0].outcome, "revoked 2 refresh families and 0 sign-in sessions");
    assert_eq!((first.incident.state.as_str(), first.incident.contained_at), ("contained", Some(NOW + 10)));
    assert!(first.already.is_empty());
    // Everything happened, on the same revocation stream the guards follow.
    assert!(s.family("fam-1").await.unwrap().unwrap().revoked_at.is_some());
    assert!(s.family("fam-2").await.unwrap().unwrap().revoked_at.is_some());
    assert!(s.user_by_id(&alice.id).await.unwrap().unwrap().must_reset_password);
    assert!(s.totp_factor(&alice.id).await.unwrap().is_none());
    assert_eq!(s.client("web").await.unwrap().unwrap().secret_hash, Some(TokenHash::of("new-secret")));
    let live = s.live_revocations(NOW + 10).await.unwrap();
    assert!(
        live.iter().any(|r| r.kind == RevocationKind::User
            && r.subject == alice.id
            && r.not_before == Some(NOW + 10))
    );
    assert!(live.iter().any(|r| r.kind == RevocationKind::Client && r.subject == "web"));
    assert!(live.iter().any(|r| r.kind == RevocationKind::Source
        && r.subject == "203.0.113.0/24"
        && r.expires_at == NOW + 3600));
    assert_eq!(first.revocation_seq, s.revocation_seq().await.unwrap());
    // Each step is on the audit chain, with who did it.
    let logged =
        s.audit_events(&AuditQuery { after_seq: head, limit: 100, ..AuditQuery::default() }).await.unwrap();
    assert_eq!(logged.len(), 7);
    assert!(logged.iter().all(|r| r.event.kind == "admin_action"
        && r.event.actor.as_deref() == Some("cli:responder")
        && r.event.sub.as_deref() == Some(alice.id.as_str())));
    assert_eq!(first.taken[6].outcome, "blocked until in an hour");
    assert!(verify_audit_chain(s.as_ref()).await.unwrap().is_ok());

    // Again, later, with one more block: only the new block runs; the rest is reported as done.
    let seq_before = s.revocation_seq().await.unwrap();
    let again = Containment {
        block: vec![
            ("203.0.113.0/24".into(), NOW + 3600, "in an hour".into()),
            ("198.51.100.7".into(), NOW + 3600, "in an hour".into()),
        ],
        ..how.clone()
    };
    s.set_client_secret("web", Some(&TokenHash::of("distributed-secret"))).await.unwrap();
    let second = s.contain_incident(id, &again, NOW + 500).await.unwrap().unwrap();
    assert_eq!(second.taken.iter().map(|a| a.target.as_str()).collect::<Vec<_>>(), ["ip:198.51.100.7"]);
    assert_eq!(second.already.len(), 7);
    assert_eq!(second.incident.contained_at, Some(NOW + 10), "contained when first contained");
    assert_eq!(
        s.revocation_seq().await.unwrap(),
        seq_before + 1,
        "no new user entry: later sign-ins stay valid"
    );
    assert_eq!(
        s.client("web").await.unwrap().unwrap().secret_hash,
        Some(TokenHash::of("distributed-secret")),
        "the secret is not rotated twice"
    );
    let record = s.incident_actions(id).await.unwrap();
    assert_eq!(record.iter().map(|a| a.seq).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());

    // Closed: no longer live, cannot be contained, and a new one about the same user may open.
    let closed = s.close_incident(id, "cli:responder", NOW + 600).await.unwrap().unwrap();
    assert_eq!((closed.state.as_str(), closed.closed_by.as_deref()), ("closed", Some("cli:responder")));
    assert!(s.close_incident(id, "cli:responder", NOW + 601).await.unwrap().is_none());
    assert!(s.contain_incident(id, &how, NOW + 602).await.unwrap().is_none());
    let (next, fresh) = s.open_incident(&new, NOW + 700).await.unwrap();
    assert!(fresh && next.id != id);
    let listed = s.list_incidents(None, 10).await.unwrap();
    assert_eq!(listed.iter().map(|i| i.id).collect::<Vec<_>>(), [next.id, id], "newest first");
    assert_eq!(s.list_incidents(Some("closed"), 10).await.unwrap().len(), 1);
    assert_eq!(s.incident(id).await.unwrap().unwrap().reason, "refresh token reuse");
}

async fn webauthn_credentials_are_unique_and_ceremonies_are_taken_once(s: &Arc<dyn Store>) {
    let (alice, bob) = (user("alice"), user("bob"));
    s.create_user(&alice).await.unwrap();
    s.create_user(&bob).await.unwrap();
    let key = |id: &str, user_id: &str| WebauthnCredential {
        id: id.into(),
        user_id: user_id.into(),
        name: "Laptop".into(),
        credential: "{\"counter\":0}".into(),
        created_at: NOW,
        last_used_at: None,
    };
    s.add_webauthn_credential(&key("cred-1", &alice.id)).await.unwrap();
    assert!(
        matches!(s.add_webauthn_credential(&key("cred-1", &bob.id)).await, Err(StoreError::Conflict(_))),
        "a credential id belongs to one user"
    );
    assert!(s.use_webauthn_credential(&alice.id, "cred-1", "{\"counter\":7}", NOW + 5).await.unwrap());
    assert!(!s.use_webauthn_credential(&bob.id, "cred-1", "{}", NOW).await.unwrap(), "bound to its user");
    let read = s.webauthn_credentials(&alice.id).await.unwrap();
    assert_eq!((read[0].credential.as_str(), read[0].last_used_at), ("{\"counter\":7}", Some(NOW + 5)));
    assert!(s.webauthn_credentials(&bob.id).await.unwrap().is_empty());
    assert!(!s.remove_webauthn_credential(&bob.id, "cred-1").await.unwrap(), "not bob's to remove");

    // A ceremony is taken once, even by twenty racing requests, and not after it expired.
    let handle = TokenHash::of("handle-1");
    s.put_webauthn_ceremony(&handle, &alice.id, "authenticate", "state", NOW + 300, NOW).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (s, handle) = (Arc::clone(s), handle);
        tasks.push(tokio::spawn(async move { s.take_webauthn_ceremony(&handle, NOW + 1).await.unwrap() }));
    }
    let mut taken = Vec::new();
    for t in tasks {
        taken.extend(t.await.unwrap());
    }
    assert_eq!(taken, [(alice.id.clone(), "authenticate".to_owned(), "state".to_owned())]);
    let late = TokenHash::of("handle-2");
    s.put_webauthn_ceremony(&late, &alice.id, "register", "state", NOW + 300, NOW).await.unwrap();
    assert_eq!(s.take_webauthn_ceremony(&late, NOW + 300).await.unwrap(), None, "expired");

    // The administrator's reset removes the keys with the other factors.
    assert!(s.reset_mfa(&alice.id).await.unwrap());
    assert!(s.webauthn_credentials(&alice.id).await.unwrap().is_empty());
}

async fn second_factors_confirm_once_steps_only_move_forward_and_recovery_codes_spend_once(
    s: &Arc<dyn Store>,
) {
    let alice = user("alice");
    s.create_user(&alice).await.unwrap();
    let id = alice.id.as_str();
    assert_eq!(s.totp_factor(id).await.unwrap(), None);
    assert!(!s.confirm_totp(id, 10, &[], NOW).await.unwrap(), "nothing to confirm");
    s.begin_totp(id, b"sealed-1", NOW).await.unwrap();
    let f = s.totp_factor(id).await.unwrap().unwrap();
    assert_eq!((f.secret_sealed, f.pending_sealed.as_deref()), (None, Some(&b"sealed-1"[..])));
    assert!(!s.use_totp_step(id, 5).await.unwrap(), "an unconfirmed secret accepts no code");
    let codes: Vec<TokenHash> = (0..10).map(|n| TokenHash::of(&format!("code-{n}"))).collect();
    assert!(s.confirm_totp(id, 100, &codes, NOW).await.unwrap());
    let f = s.totp_factor(id).await.unwrap().unwrap();
    assert_eq!(
        (f.secret_sealed.as_deref(), f.pending_sealed, f.last_step),
        (Some(&b"sealed-1"[..]), None, 100)
    );
    // Twenty requests race with the same code: one is accepted.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (s, id) = (Arc::clone(s), id.to_owned());
        tasks.push(tokio::spawn(async move { s.use_totp_step(&id, 101).await.unwrap() }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += usize::from(t.await.unwrap());
    }
    assert_eq!(accepted, 1, "a code is used once");
    assert!(!s.use_totp_step(id, 100).await.unwrap(), "never an earlier step");
    // Re-enrolling keeps the confirmed secret until the new one is confirmed.
    s.begin_totp(id, b"sealed-2", NOW).await.unwrap();
    assert_eq!(s.totp_factor(id).await.unwrap().unwrap().secret_sealed.as_deref(), Some(&b"sealed-1"[..]));
    // Recovery codes: each once, replaced as a set.
    assert_eq!(s.recovery_codes_left(id).await.unwrap(), 10);
    assert!(s.use_recovery_code(id, &codes[0], NOW).await.unwrap());
    assert!(!s.use_recovery_code(id, &codes[0], NOW).await.unwrap(), "spent");
    assert!(!s.use_recovery_code("someone-else", &codes[1], NOW).await.unwrap(), "bound to the user");
    assert_eq!(s.recovery_codes_left(id).await.unwrap(), 9);
    let fresh = [TokenHash::of("fresh")];
    s.replace_recovery_codes(id, &fresh, NOW).await.unwrap();
    assert!(!s.use_recovery_code(id, &codes[1], NOW).await.unwrap(), "old codes are gone");
    assert_eq!(s.recovery_codes_left(id).await.unwrap(), 1);
    assert!(s.reset_mfa(id).await.unwrap());
    assert_eq!((s.totp_factor(id).await.unwrap(), s.recovery_codes_left(id).await.unwrap()), (None, 0));
    assert!(!s.reset_mfa(id).await.unwrap(), "nothing left to reset");
}

async fn throttle_counters_change_only_by_compare_and_swap(s: &Arc<dyn Store>) {
    let counter = |failures| Counter { failures, next_at: NOW, locked_until: 0, last_at: NOW };
    assert_eq!(s.throttle("acct:x").await.unwrap(), None);
    // Twenty attempts race to create the counter: one wins, the others must read it and decide again.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            s.swap_throttle("acct:x", None, Some((&counter(1), NOW + 900))).await.unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one attempt creates the counter");
    let (read, v1) = s.throttle("acct:x").await.unwrap().unwrap();
    assert_eq!(read, counter(1));
    // Twenty race to update the same version: one wins.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            s.swap_throttle("acct:x", Some(v1), Some((&counter(2), NOW + 900))).await.unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one attempt moves a version on");
    let (read, v2) = s.throttle("acct:x").await.unwrap().unwrap();
    assert_eq!((read.failures, v2 > v1), (2, true));
    assert!(!s.swap_throttle("acct:x", Some(v1), None).await.unwrap(), "a stale version cannot clear it");
    assert!(s.swap_throttle("acct:x", Some(v2), None).await.unwrap());
    assert_eq!(s.throttle("acct:x").await.unwrap(), None);
    // Kept until its expiry, then pruned.
    assert!(s.swap_throttle("ip:192.0.2.1", None, Some((&counter(1), NOW + 60))).await.unwrap());
    s.prune(NOW + 59).await.unwrap();
    assert!(s.throttle("ip:192.0.2.1").await.unwrap().is_some());
    s.prune(NOW + 60).await.unwrap();
    assert_eq!(s.throttle("ip:192.0.2.1").await.unwrap(), None);
}

fn user(name: &str) -> User {
    User {
        id: format!("u-{name}"),
        username: name.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        roles: vec!["reader".into()],
        disabled: false,
        created_at: NOW,
        password_changed_at: NOW,
        must_reset_password: false,
        step_up_after: None,
        email: None,
    }
}

fn client(id: &str) -> Client {
    Client {
        id: id.into(),
        name: format!("{id} app"),
        kind: ClientKind::Confidential,
        secret_hash: Some(TokenHash::of("tss_first")),
        redirect_uris: vec!["https://app.example/cb".into()],
        grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
        audiences: vec!["https://api.example".into()],
        scopes: vec!["openid".into(), "orders:read".into()],
        access_ttl: 300,
        refresh_idle_ttl: 86_400,
        refresh_absolute_ttl: 2_592_000,
        first_party: true,
        disabled: false,
        created_at: NOW,
        require_dpop: false,
        jwks: None,
        exchange_audiences: Vec::new(),
        serves: Vec::new(),
        mfa: tessera_core::mfa::MfaPolicy::default(),
    }
}

fn family(id: &str, user_id: &str) -> Family {
    Family {
        id: id.into(),
        client_id: "web".into(),
        user_id: user_id.into(),
        scope: "openid orders:read".into(),
        audience: Some("https://api.example".into()),
        auth_time: NOW,
        amr: vec!["pwd".into()],
        login_session: None,
        code_hash: None,
        created_at: NOW,
        expires_at: NOW + 2_592_000,
        revoked_at: None,
        dpop_jkt: None,
    }
}

fn refresh(secret: &str, family_id: &str, generation: i64) -> RefreshRecord {
    RefreshRecord {
        hash: TokenHash::of(secret),
        family_id: family_id.into(),
        generation,
        scope: "openid orders:read".into(),
        created_at: NOW,
        expires_at: NOW + 86_400,
        rotated_at: None,
        successor: None,
    }
}

fn login_session(secret: &str, user_id: &str) -> LoginSession {
    LoginSession {
        hash: TokenHash::of(secret),
        user_id: user_id.into(),
        auth_time: NOW,
        amr: vec!["pwd".into()],
        created_at: NOW,
        expires_at: NOW + 3600,
        revoked_at: None,
    }
}

fn token_ref<'a>(jti: &'a str, sid: Option<&'a str>, sub: &'a str, iat: i64) -> TokenRef<'a> {
    TokenRef { jti, sid, sub, client_id: "web", kid: "k1", iat, origin: &[] }
}

async fn migrations_apply_twice_without_harm(s: &Arc<dyn Store>) {
    s.create_user(&user("alice")).await.unwrap();
    s.migrate().await.unwrap();
    assert!(s.user_by_name("alice").await.unwrap().is_some());
    s.ping().await.unwrap();
}

async fn users_are_unique_by_name_and_round_trip(s: &Arc<dyn Store>) {
    let alice = user("alice");
    s.create_user(&alice).await.unwrap();
    let mut twin = user("alice");
    twin.id = "other".into();
    assert_eq!(s.create_user(&twin).await, Err(StoreError::Conflict("user")));
    assert_eq!(s.user_by_id("u-alice").await.unwrap(), Some(alice.clone()));
    assert_eq!(s.user_by_name("alice").await.unwrap(), Some(alice));
    assert_eq!(s.user_by_name("nobody").await.unwrap(), None);
    s.create_user(&user("bob")).await.unwrap();
    let names: Vec<String> = s.list_users().await.unwrap().into_iter().map(|u| u.username).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(s.set_user_disabled("u-bob", true).await.unwrap());
    assert!(s.user_by_id("u-bob").await.unwrap().unwrap().disabled);
    assert!(s.set_user_roles("u-bob", &["admin".into(), "ops".into()]).await.unwrap());
    assert_eq!(s.user_by_id("u-bob").await.unwrap().unwrap().roles, ["admin", "ops"]);
    assert!(!s.set_user_disabled("u-nobody", true).await.unwrap());
}

async fn clients_round_trip_rotate_secret_and_disable(s: &Arc<dyn Store>) {
    let web = client("web");
    s.create_client(&web).await.unwrap();
    assert_eq!(s.create_client(&web).await, Err(StoreError::Conflict("client")));
    assert_eq!(s.client("web").await.unwrap(), Some(web.clone()));
    let mut spa = client("spa");
    spa.kind = ClientKind::Public;
    spa.secret_hash = None;
    spa.require_dpop = true;
    s.create_client(&spa).await.unwrap();
    assert_eq!(s.client("spa").await.unwrap(), Some(spa));
    assert!(s.set_client_secret("web", Some(&TokenHash::of("tss_second"))).await.unwrap());
    let stored = s.client("web").await.unwrap().unwrap();
    assert!(stored.secret_hash.unwrap().ct_eq(&TokenHash::of("tss_second")));
    assert!(
        !s.set_client_secret("spa", Some(&TokenHash::of("tss_x"))).await.unwrap(),
        "public clients have no secret"
    );
    let jwks =
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    assert!(s.set_client_jwks("web", Some(jwks)).await.unwrap());
    assert!(s.set_client_secret("web", None).await.unwrap(), "the secret can be switched off");
    let stored = s.client("web").await.unwrap().unwrap();
    assert_eq!((stored.jwks.as_deref(), stored.secret_hash), (Some(jwks), None));
    assert!(!s.set_client_jwks("spa", Some(jwks)).await.unwrap(), "public clients register no keys");
    let mut gateway = client("svc");
    gateway.exchange_audiences = vec!["https://billing.example".into()];
    s.create_client(&gateway).await.unwrap();
    assert_eq!(s.client("svc").await.unwrap().unwrap().exchange_audiences, gateway.exchange_audiences);
    let serves = vec!["https://orders.example".to_owned()];
    assert!(s.set_client_serves("svc", &serves).await.unwrap());
    assert_eq!(s.client("svc").await.unwrap().unwrap().serves, serves);
    assert!(!s.set_client_serves("spa", &serves).await.unwrap(), "a public client serves nothing");
    assert!(s.set_client_disabled("web", true).await.unwrap());
    assert!(s.client("web").await.unwrap().unwrap().disabled);
    let ids: Vec<String> = s.list_clients().await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["spa", "svc", "web"]);
}

async fn resources_round_trip(s: &Arc<dyn Store>) {
    let r = Resource {
        audience: "https://api.example".into(),
        scopes: vec!["orders:read".into()],
        created_at: NOW,
    };
    s.create_resource(&r).await.unwrap();
    assert_eq!(s.create_resource(&r).await, Err(StoreError::Conflict("resource")));
    assert_eq!(s.resource("https://api.example").await.unwrap(), Some(r.clone()));
    assert_eq!(s.list_resources().await.unwrap(), vec![r]);
    assert_eq!(s.resource("https://other.example").await.unwrap(), None);
}

async fn activating_a_key_retires_the_current_one(s: &Arc<dyn Store>) {
    let key = |kid: &str, state: KeyState, at: i64| KeyRecord {
        kid: kid.into(),
        alg: "EdDSA".into(),
        state,
        public_jwk: format!("{{\"kid\":\"{kid}\"}}"),
        private_sealed: vec![1, 2, 3],
        created_at: at,
        activated_at: None,
        retired_at: None,
    };
    s.insert_key(&key("k1", KeyState::Current, NOW)).await.unwrap();
    s.insert_key(&key("k2", KeyState::Next, NOW + 1)).await.unwrap();
    assert_eq!(s.insert_key(&key("k2", KeyState::Next, NOW + 1)).await, Err(StoreError::Conflict("key")));
    assert!(s.activate_key("k2", NOW + 10).await.unwrap());
    let keys = s.list_keys().await.unwrap();
    assert_eq!(
        keys.iter().map(|k| (k.kid.as_str(), k.state)).collect::<Vec<_>>(),
        [("k1", KeyState::Retired), ("k2", KeyState::Current)]
    );
    assert_eq!(keys[0].retired_at, Some(NOW + 10));
    assert_eq!(keys[1].activated_at, Some(NOW + 10));
    assert_eq!(keys[1].private_sealed, [1, 2, 3]);
    assert!(s.set_key_state("k1", KeyState::Revoked, NOW + 20).await.unwrap());
    assert!(!s.activate_key("k1", NOW + 30).await.unwrap(), "a revoked key never signs again");
    assert!(!s.activate_key("missing", NOW + 30).await.unwrap());
    assert!(s.delete_key("k1").await.unwrap());
    assert_eq!(s.list_keys().await.unwrap().len(), 1);
}

fn code(secret: &str) -> AuthCode {
    AuthCode {
        hash: TokenHash::of(secret),
        client_id: "web".into(),
        user_id: "u-alice".into(),
        redirect_uri: "https://app.example/cb".into(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        scope: "openid".into(),
        audience: Some("https://api.example".into()),
        nonce: Some("n-0S6_WzA2Mj".into()),
        login_session: Some(TokenHash::of("tsl_login")),
        auth_time: NOW,
        amr: vec!["pwd".into()],
        created_at: NOW,
        expires_at: NOW + 60,
        dpop_jkt: Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into()),
    }
}

async fn code_redeems_once_then_reports_replay(s: &Arc<dyn Store>) {
    let c = code("tsc_one");
    s.insert_code(&c).await.unwrap();
    assert_eq!(s.redeem_code(&c.hash, NOW + 1).await.unwrap(), CodeUse::Fresh(c.clone()));
    assert_eq!(s.redeem_code(&c.hash, NOW + 2).await.unwrap(), CodeUse::Replayed(c.clone()));
    assert_eq!(s.redeem_code(&TokenHash::of("tsc_other"), NOW).await.unwrap(), CodeUse::Unknown);
    // The first redeemer cannot start its family once the replay has been seen.
    let mut late = family("late", "u-alice");
    late.code_hash = Some(c.hash);
    assert_eq!(s.create_family(&late, None).await, Err(StoreError::Conflict("replayed code")));
    assert!(s.family("late").await.unwrap().is_none());

    // Racing redemptions of one code: exactly one is fresh.
    let racy = code("tsc_racy");
    s.insert_code(&racy).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = Arc::clone(s);
        let hash = racy.hash;
        tasks.push(tokio::spawn(async move { s.redeem_code(&hash, NOW + 1).await.unwrap() }));
    }
    let mut fresh = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), CodeUse::Fresh(_)) {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
}

async fn refresh_rotation_has_exactly_one_winner_under_concurrency(s: &Arc<dyn Store>) {
    s.create_family(&family("fam1", "u-alice"), Some(&refresh("tsr_root", "fam1", 0))).await.unwrap();
    let (first, fam) = s.refresh_token(&TokenHash::of("tsr_root")).await.unwrap().unwrap();
    assert_eq!(first.generation, 0);
    assert_eq!(fam, family("fam1", "u-alice"));

    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            let successor = refresh(&format!("tsr_succ{i}"), "fam1", 1);
            (
                i,
                s.rotate_refresh(&TokenHash::of("tsr_root"), &successor, Some(&rotated_event(i)), NOW + 5)
                    .await
                    .unwrap(),
            )
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, outcome) = t.await.unwrap();
        if outcome == Rotation::Rotated {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one successor: {winners:?}");
    let (root, _) = s.refresh_token(&TokenHash::of("tsr_root")).await.unwrap().unwrap();
    assert_eq!(root.rotated_at, Some(NOW + 5));
    let winner_hash = TokenHash::of(&format!("tsr_succ{}", winners[0]));
    assert_eq!(root.successor, Some(winner_hash));
    let (succ, _) = s.refresh_token(&winner_hash).await.unwrap().unwrap();
    assert_eq!((succ.generation, succ.rotated_at), (1, None));
    for i in (0..50).filter(|i| *i != winners[0]) {
        assert!(s.refresh_token(&TokenHash::of(&format!("tsr_succ{i}"))).await.unwrap().is_none());
    }
    // The winner's audit event, and only the winner's, was written with the rotation.
    let refreshed = s.recent_events(Some("token_refreshed"), 100).await.unwrap();
    assert_eq!(refreshed.len(), 1);
    assert_eq!(refreshed[0].jti, Some(format!("j-rot{}", winners[0])));
    assert_eq!(verify_audit_chain(&**s).await.unwrap().map(|(_, sum)| sum.checked), Ok(1));
}

fn rotated_event(i: usize) -> Event {
    Event {
        jti: Some(format!("j-rot{i}")),
        sid: Some("fam1".into()),
        ..Event::new(EventKind::TokenRefreshed, NOW + 5)
    }
}

async fn rotation_is_refused_once_the_family_is_revoked(s: &Arc<dyn Store>) {
    s.create_family(&family("fam2", "u-alice"), Some(&refresh("tsr_a", "fam2", 0))).await.unwrap();
    assert!(s.revoke_family("fam2", "refresh_token_reuse", NOW).await.unwrap());
    assert!(
        !s.revoke_family("fam2", "refresh_token_reuse", NOW).await.unwrap(),
        "revoking twice is harmless"
    );
    let outcome =
        s.rotate_refresh(&TokenHash::of("tsr_a"), &refresh("tsr_b", "fam2", 1), None, NOW + 1).await.unwrap();
    assert_eq!(outcome, Rotation::Lost);
    assert_eq!(s.family("fam2").await.unwrap().unwrap().revoked_at, Some(NOW));
    let live = s.live_revocations(NOW).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].kind, live[0].subject.as_str()), (RevocationKind::Session, "fam2"));
    assert_eq!(live[0].reason, "refresh_token_reuse");
    // A successor may not be smuggled into another family through the CAS either.
    s.create_family(&family("fam3", "u-alice"), Some(&refresh("tsr_c", "fam3", 0))).await.unwrap();
    let outcome =
        s.rotate_refresh(&TokenHash::of("tsr_c"), &refresh("tsr_d", "fam2", 1), None, NOW + 1).await.unwrap();
    assert_eq!(outcome, Rotation::Lost);
}

async fn revocation_sequence_is_gapless_and_ordered_under_concurrency(s: &Arc<dyn Store>) {
    assert_eq!(s.revocation_seq().await.unwrap(), 0);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            let r = NewRevocation {
                kind: RevocationKind::Token,
                subject: format!("jti-{i}"),
                not_before: None,
                expires_at: NOW + 960,
                reason: "admin".into(),
            };
            s.revoke(&r, NOW).await.unwrap()
        }));
    }
    let mut seqs = HashSet::new();
    for t in tasks {
        assert!(seqs.insert(t.await.unwrap()));
    }
    assert_eq!(seqs, (1..=40).collect::<HashSet<i64>>());
    assert_eq!(s.revocation_seq().await.unwrap(), 40);
    let page = s.revocations_after(10, 5).await.unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [11, 12, 13, 14, 15]);
    assert_eq!(s.revocations_after(40, 100).await.unwrap(), vec![]);
}

/// A revocation entry that lives 16 minutes from NOW.
fn revocation(kind: RevocationKind, subject: &str, not_before: Option<i64>) -> NewRevocation {
    NewRevocation { kind, subject: subject.into(), not_before, expires_at: NOW + 960, reason: "admin".into() }
}

async fn revocation_matches_each_subject_kind_until_it_expires(s: &Arc<dyn Store>) {
    let clean = token_ref("j0", Some("s0"), "u0", NOW);
    assert!(!s.is_revoked(clean, NOW).await.unwrap());

    s.revoke(&revocation(RevocationKind::Token, "j1", None), NOW).await.unwrap();
    assert!(s.is_revoked(token_ref("j1", None, "u0", NOW), NOW).await.unwrap());

    s.revoke(&revocation(RevocationKind::Session, "s2", None), NOW).await.unwrap();
    assert!(s.is_revoked(token_ref("jx", Some("s2"), "u0", NOW), NOW).await.unwrap());

    s.revoke(&revocation(RevocationKind::User, "u3", Some(NOW)), NOW).await.unwrap();
    assert!(s.is_revoked(token_ref("jx", None, "u3", NOW - 1), NOW).await.unwrap());
    assert!(!s.is_revoked(token_ref("jx", None, "u3", NOW + 1), NOW + 1).await.unwrap(), "issued after");
    assert!(
        s.is_revoked(token_ref("jx", None, "u3", NOW), NOW).await.unwrap(),
        "issued in the revocation's second: refused (one-second iat fails closed)"
    );

    s.revoke(&revocation(RevocationKind::Client, "web", Some(NOW)), NOW).await.unwrap();
    assert!(s.is_revoked(token_ref("jx", None, "u9", NOW - 1), NOW).await.unwrap());

    s.revoke(&revocation(RevocationKind::Key, "k1", None), NOW).await.unwrap();
    assert!(s.is_revoked(token_ref("jx", None, "u9", NOW + 5), NOW + 5).await.unwrap());

    assert!(
        !s.is_revoked(token_ref("j1", None, "u0", NOW), NOW + 960).await.unwrap(),
        "expired entries match nothing"
    );
    let other_key = TokenRef { kid: "k2", iat: NOW + 1, ..clean };
    assert!(!s.is_revoked(other_key, NOW).await.unwrap(), "nothing matches an unrelated token");
}

async fn exchanged_token_is_revoked_with_its_origin(s: &Arc<dyn Store>) {
    let chain = |jti, client_id, kid, iat| [OriginRef { jti, client_id, kid, iat }];
    let exchanged =
        |origin| TokenRef { client_id: "svc", kid: "k-new", origin, ..token_ref("jx", None, "u0", NOW) };
    let clean = chain("j-root", "webapp", "k-old", NOW - 60);
    assert!(!s.is_revoked(exchanged(&clean), NOW).await.unwrap());

    s.revoke(&revocation(RevocationKind::Token, "j-root", None), NOW).await.unwrap();
    assert!(s.is_revoked(exchanged(&clean), NOW).await.unwrap(), "the original token's revocation");

    s.revoke(&revocation(RevocationKind::Client, "webapp2", Some(NOW - 30)), NOW).await.unwrap();
    let by_client = chain("j-a", "webapp2", "k-old", NOW - 60);
    assert!(s.is_revoked(exchanged(&by_client), NOW).await.unwrap(), "the original client's revocation");
    let later = chain("j-a", "webapp2", "k-old", NOW - 10);
    assert!(!s.is_revoked(exchanged(&later), NOW).await.unwrap(), "an original issued after it is spared");

    s.revoke(&revocation(RevocationKind::Key, "k-old2", None), NOW).await.unwrap();
    let by_key = chain("j-b", "webapp3", "k-old2", NOW - 60);
    assert!(s.is_revoked(exchanged(&by_key), NOW).await.unwrap(), "the original signing key's revocation");
}

async fn password_change_revokes_every_session_of_the_user(s: &Arc<dyn Store>) {
    s.create_user(&user("alice")).await.unwrap();
    s.create_user(&user("bob")).await.unwrap();
    s.create_family(&family("fa1", "u-alice"), Some(&refresh("tsr_fa1", "fa1", 0))).await.unwrap();
    s.create_family(&family("fa2", "u-alice"), None).await.unwrap();
    s.create_family(&family("fb1", "u-bob"), Some(&refresh("tsr_fb1", "fb1", 0))).await.unwrap();
    let login = login_session("tsl_alice", "u-alice");
    s.create_login_session(&login).await.unwrap();

    let seq = s.set_password("u-alice", "$argon2id$new", NOW + 100).await.unwrap();
    assert!(seq.is_some());
    assert_eq!(s.set_password("u-nobody", "$argon2id$x", NOW).await.unwrap(), None);
    let alice = s.user_by_id("u-alice").await.unwrap().unwrap();
    assert_eq!((alice.password_hash.as_str(), alice.password_changed_at), ("$argon2id$new", NOW + 100));
    assert_eq!(s.family("fa1").await.unwrap().unwrap().revoked_at, Some(NOW + 100));
    assert_eq!(s.family("fa2").await.unwrap().unwrap().revoked_at, Some(NOW + 100));
    assert_eq!(s.family("fb1").await.unwrap().unwrap().revoked_at, None, "other users keep their sessions");
    assert_eq!(s.login_session(&login.hash).await.unwrap().unwrap().revoked_at, Some(NOW + 100));
    let kinds: Vec<(RevocationKind, String)> =
        s.live_revocations(NOW + 100).await.unwrap().into_iter().map(|r| (r.kind, r.subject)).collect();
    assert!(kinds.contains(&(RevocationKind::User, "u-alice".into())));
    assert!(kinds.contains(&(RevocationKind::Session, "fa1".into())));
    assert!(s.is_revoked(token_ref("j", Some("fa1"), "u-alice", NOW + 100), NOW + 100).await.unwrap());
    assert_eq!(seq, Some(s.revocation_seq().await.unwrap()));
}

async fn ending_a_login_session_revokes_its_families(s: &Arc<dyn Store>) {
    s.create_user(&user("alice")).await.unwrap();
    let login = login_session("tsl_x", "u-alice");
    s.create_login_session(&login).await.unwrap();
    let mut from_login = family("fl1", "u-alice");
    from_login.login_session = Some(login.hash);
    s.create_family(&from_login, None).await.unwrap();
    s.create_family(&family("other", "u-alice"), None).await.unwrap();
    assert_eq!(s.end_login_session(&login.hash, "logout", NOW + 1).await.unwrap(), 1);
    assert_eq!(s.login_session(&login.hash).await.unwrap().unwrap().revoked_at, Some(NOW + 1));
    assert!(s.family("fl1").await.unwrap().unwrap().revoked_at.is_some());
    assert!(s.family("other").await.unwrap().unwrap().revoked_at.is_none());
}

async fn code_replay_revokes_families_from_that_code(s: &Arc<dyn Store>) {
    let mut f = family("fc1", "u-alice");
    f.code_hash = Some(TokenHash::of("tsc_c"));
    s.create_family(&f, Some(&refresh("tsr_fc1", "fc1", 0))).await.unwrap();
    assert_eq!(s.revoke_code_families(&TokenHash::of("tsc_c"), "code_reuse", NOW).await.unwrap(), 1);
    assert_eq!(s.revoke_code_families(&TokenHash::of("tsc_c"), "code_reuse", NOW).await.unwrap(), 0);
    assert!(s.is_revoked(token_ref("j", Some("fc1"), "u-alice", NOW), NOW).await.unwrap());
}

async fn prune_removes_only_what_can_no_longer_matter(s: &Arc<dyn Store>) {
    let r = NewRevocation {
        kind: RevocationKind::Token,
        subject: "j".into(),
        not_before: None,
        expires_at: NOW + 960,
        reason: "admin".into(),
    };
    s.revoke(&r, NOW).await.unwrap();
    s.insert_code(&code("tsc_p")).await.unwrap();
    s.create_family(&family("fp", "u-alice"), Some(&refresh("tsr_p", "fp", 0))).await.unwrap();
    assert_eq!(s.prune(NOW + 100).await.unwrap(), 0);
    assert_eq!(s.live_revocations(NOW + 100).await.unwrap().len(), 1);
    let much_later = NOW + 2_592_000 + 86_400 + 1_000;
    assert!(s.prune(much_later).await.unwrap() >= 4);
    assert!(s.live_revocations(NOW).await.unwrap().is_empty());
    assert_eq!(s.redeem_code(&TokenHash::of("tsc_p"), much_later).await.unwrap(), CodeUse::Unknown);
    assert!(s.refresh_token(&TokenHash::of("tsr_p")).await.unwrap().is_none());
    assert_eq!(s.revocation_seq().await.unwrap(), 1, "the sequence never goes back");
}

async fn events_append_and_read_back_newest_first(s: &Arc<dyn Store>) {
    for (i, kind) in ["token_issued", "refresh_token_reuse", "token_issued"].iter().enumerate() {
        let e = Event {
            at: NOW + i as i64,
            kind: (*kind).into(),
            sub: Some("u-alice".into()),
            sid: Some("fam".into()),
            client_id: Some("web".into()),
            reason: Some("x".into()),
            ..Event::default()
        };
        s.append_event(&e).await.unwrap();
    }
    let issued = s.recent_events(Some("token_issued"), 10).await.unwrap();
    assert_eq!(issued.iter().map(|e| e.at).collect::<Vec<_>>(), [NOW + 2, NOW]);
    assert_eq!(s.recent_events(None, 10).await.unwrap().len(), 3);
    assert_eq!(s.recent_events(None, 1).await.unwrap()[0].at, NOW + 2);
}

fn audit_event(n: i64, kind: EventKind) -> Event {
    Event {
        sub: Some(format!("u-{}", n % 3)),
        sid: Some(format!("s-{}", n % 5)),
        jti: Some(format!("j-{n}")),
        client_id: Some("web".into()),
        ip: Some(format!("192.0.2.{}", n % 7)),
        ..Event::new(kind, NOW + n)
    }
}

/// Verifies the chain; panics with the store error, returns the verdict.
async fn verdict(s: &dyn Store) -> Result<u64, ChainBreak> {
    verify_audit_chain(s).await.unwrap().map(|(_, summary)| summary.checked)
}

async fn audit_chain_links_every_event_in_order_under_concurrency(s: &Arc<dyn Store>) {
    let start = s.audit_state().await.unwrap();
    assert_eq!(start.head_seq, start.checkpoint_seq, "a new chain is empty");
    assert_eq!(verdict(&**s).await, Ok(0));
    let mut tasks = Vec::new();
    for t in 0..16i64 {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            for b in 0..5i64 {
                let batch: Vec<Event> =
                    (0..4).map(|i| audit_event(t * 100 + b * 10 + i, EventKind::TokenUsed)).collect();
                s.append_events(&batch).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(verdict(&**s).await, Ok(320), "every event is on the chain, none twice");
    let state = s.audit_state().await.unwrap();
    assert_eq!(state.head_seq, start.head_seq + 320);
    let all = s.audit_events(&AuditQuery { limit: 1000, ..AuditQuery::default() }).await.unwrap();
    let seqs: Vec<i64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (start.head_seq + 1..=start.head_seq + 320).collect::<Vec<_>>(),
        "numbered without gaps"
    );
    // One caller's batch stays together and in its order.
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash, "each event names its predecessor's hash");
    }
    let first_batch: Vec<&str> = all
        .iter()
        .filter(|r| r.event.jti.as_deref().is_some_and(|j| ["j-0", "j-1", "j-2", "j-3"].contains(&j)))
        .map(|r| r.event.jti.as_deref().unwrap())
        .collect();
    assert_eq!(first_batch, ["j-0", "j-1", "j-2", "j-3"]);
    assert_eq!(state.head_hash, all.last().unwrap().hash.unwrap());
}

async fn usage_appends_join_the_chain_whole_beside_other_appends(s: &Arc<dyn Store>) {
    let start = s.audit_state().await.unwrap().head_seq;
    // Four guards post 1,500 usage events each, twice, while sixteen requests append their own events.
    let mut tasks = Vec::new();
    for g in 0..4i64 {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            for b in 0..2i64 {
                let batch: Vec<Event> = (0..1500)
                    .map(|i| audit_event(100_000 + g * 10_000 + b * 2000 + i, EventKind::TokenUsed))
                    .collect();
                s.append_usage(&batch).await.unwrap();
            }
        }));
    }
    for t in 0..16i64 {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            let batch: Vec<Event> = (0..2).map(|i| audit_event(t * 10 + i, EventKind::TokenIssued)).collect();
            s.append_events(&batch).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(verdict(&**s).await, Ok(12_032), "every event on the chain once");
    assert_eq!(s.audit_state().await.unwrap().head_seq, start + 12_032);
    let all = s.audit_events(&AuditQuery { limit: 20_000, ..AuditQuery::default() }).await.unwrap();
    // A guard's batch stays together and in its order.
    let first: Vec<i64> = all
        .iter()
        .filter(|r| {
            let n =
                r.event.jti.as_deref().and_then(|j| j.strip_prefix("j-")).and_then(|n| n.parse::<i64>().ok());
            n.is_some_and(|n| (100_000..101_500).contains(&n))
        })
        .map(|r| r.seq)
        .collect();
    assert_eq!(first.len(), 1500, "the first guard's first batch");
    assert!(first.windows(2).all(|w| w[1] == w[0] + 1), "contiguous: {first:?}");
}

async fn audit_search_filters_and_pages(s: &Arc<dyn Store>) {
    let events: Vec<Event> = (0..30)
        .map(|n| audit_event(n, if n % 2 == 0 { EventKind::TokenIssued } else { EventKind::TokenRejected }))
        .collect();
    s.append_events(&events).await.unwrap();
    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery { limit: 100, ..AuditQuery::default() };
        f(&mut q);
        q
    };
    let by = |q: AuditQuery| {
        let s = Arc::clone(s);
        async move {
            s.audit_events(&q).await.unwrap().into_iter().map(|r| r.event.jti.unwrap()).collect::<Vec<_>>()
        }
    };
    assert_eq!(by(q(|q| q.sub = Some("u-1".into()))).await.len(), 10);
    assert_eq!(by(q(|q| q.sid = Some("s-2".into()))).await, ["j-2", "j-7", "j-12", "j-17", "j-22", "j-27"]);
    assert_eq!(by(q(|q| q.jti = Some("j-13".into()))).await, ["j-13"]);
    assert_eq!(by(q(|q| q.ip = Some("192.0.2.0".into()))).await, ["j-0", "j-7", "j-14", "j-21", "j-28"]);
    assert_eq!(by(q(|q| q.kinds = vec!["token_rejected".into()])).await.len(), 15);
    assert_eq!(by(q(|q| q.client_id = Some("nobody".into()))).await.len(), 0);
    // Time range: [since, until).
    assert_eq!(
        by(q(|q| (q.since, q.until) = (Some(NOW + 10), Some(NOW + 13)))).await,
        ["j-10", "j-11", "j-12"]
    );
    // Filters combine.
    let both = q(|q| {
        q.sub = Some("u-0".into());
        q.kinds = vec!["token_issued".into()];
    });
    assert_eq!(by(both).await, ["j-0", "j-6", "j-12", "j-18", "j-24"]);
    // The newest few, still oldest first; paging by sequence number.
    assert_eq!(by(q(|q| (q.newest, q.limit) = (true, 3))).await, ["j-27", "j-28", "j-29"]);
    let first = s.audit_events(&q(|q| q.limit = 4)).await.unwrap();
    let next = by(AuditQuery { after_seq: first[3].seq, limit: 2, ..AuditQuery::default() }).await;
    assert_eq!(next, ["j-4", "j-5"]);
}

async fn pruning_keeps_the_audit_chain_verifiable_from_its_checkpoint(s: &Arc<dyn Store>) {
    // Events at NOW+0 .. NOW+49, then one at NOW+5 (a late guard report): retention stops at the first
    // young event, so only a prefix is ever removed.
    let mut events: Vec<Event> = (0..50).map(|n| audit_event(n, EventKind::TokenUsed)).collect();
    events.push(audit_event(5, EventKind::TokenUsed));
    s.append_events(&events).await.unwrap();
    let before = s.audit_state().await.unwrap();
    // At most 10 per round.
    assert_eq!(s.prune_audit(NOW + 20, 10, NOW + 100).await.unwrap(), 10);
    assert_eq!(verdict(&**s).await, Ok(41 + 1), "what is left, and the pruning's own event, verify");
    let state = s.audit_state().await.unwrap();
    assert_eq!(state.checkpoint_seq, before.checkpoint_seq + 10);
    assert_eq!(state.checkpoint_reason, "retention");
    assert_eq!(s.prune_audit(NOW + 20, 1000, NOW + 100).await.unwrap(), 10, "the rest older than NOW+20");
    assert_eq!(s.prune_audit(NOW + 20, 1000, NOW + 100).await.unwrap(), 0, "nothing more to do");
    assert_eq!(verdict(&**s).await, Ok(31 + 2));
    let left = s.audit_events(&AuditQuery { limit: 1000, ..AuditQuery::default() }).await.unwrap();
    assert_eq!(left[0].event.at, NOW + 20, "the oldest event kept is the first one at or after the cut");
    let pruned: Vec<_> = left.iter().filter(|r| r.event.kind == "audit_pruned").collect();
    assert_eq!(pruned.len(), 2, "each pruning is itself on the chain");
    let detail: serde_json::Value = serde_json::from_str(pruned[1].event.detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["through_seq"], before.checkpoint_seq + 20);
    assert_eq!(detail["through_hash"], s.audit_state().await.unwrap().checkpoint_hash.hex());
    // Pruning everything old, including the late event behind the young ones, never cuts into the chain.
    assert_eq!(s.prune_audit(NOW + 1000, 1000, NOW + 2000).await.unwrap(), 33);
    assert_eq!(verdict(&**s).await, Ok(1), "only the last pruning's own event is left");
}

/// The next announcement within `limit`, if any.
async fn announced(
    changes: &mut tokio::sync::broadcast::Receiver<tessera_store::Change>,
    limit: std::time::Duration,
) -> Option<tessera_store::Change> {
    tokio::time::timeout(limit, changes.recv()).await.ok().map(|c| c.unwrap())
}

async fn changes_committed_by_another_node_are_announced_and_other_schemas_are_not(h: &Harness) {
    use tessera_store::Change;
    let Some(mut changes) = h.store.changes() else {
        assert!(h.schema.is_none(), "only SQLite (one node, polling) announces nothing");
        return;
    };
    let (url, schema) = h.schema.clone().unwrap();
    assert_eq!(announced(&mut changes, Duration::from_secs(10)).await, Some(Change::Listening));
    // Another node on the same schema commits: each kind of change is announced once.
    let other = PostgresStore::connect(&url, Some(&schema)).await.unwrap();
    other.revoke(&revocation(RevocationKind::Token, "jti-1", None), NOW).await.unwrap();
    assert_eq!(announced(&mut changes, Duration::from_secs(5)).await, Some(Change::Revocations));
    let key = KeyRecord {
        kid: "k-next".into(),
        alg: "EdDSA".into(),
        state: KeyState::Next,
        public_jwk: "{}".into(),
        private_sealed: vec![1],
        created_at: NOW,
        activated_at: None,
        retired_at: None,
    };
    other.insert_key(&key).await.unwrap();
    assert_eq!(announced(&mut changes, Duration::from_secs(5)).await, Some(Change::Keys));
    other.create_user(&user("announced")).await.unwrap();
    assert_eq!(announced(&mut changes, Duration::from_secs(5)).await, Some(Change::Directory));
    assert_eq!(
        announced(&mut changes, Duration::from_millis(300)).await,
        None,
        "one announcement per commit"
    );
    // A deployment in another schema of the same database wakes nobody here.
    let elsewhere = format!("{schema}_other");
    admin(&url, &format!("CREATE SCHEMA {elsewhere}")).await;
    let neighbour = PostgresStore::connect(&url, Some(&elsewhere)).await.unwrap();
    neighbour.migrate().await.unwrap();
    neighbour.revoke(&revocation(RevocationKind::Token, "theirs", None), NOW).await.unwrap();
    assert_eq!(announced(&mut changes, Duration::from_millis(500)).await, None, "not ours");
    neighbour.close().await;
    admin(&url, &format!("DROP SCHEMA {elsewhere} CASCADE")).await;
    other.close().await;
}

/// Two server nodes on the harness's database: two PostgreSQL stores on one schema, or (SQLite has one
/// server process per file) the one store twice.
async fn two_nodes(h: &Harness) -> Vec<Arc<dyn Store>> {
    match &h.schema {
        Some((url, schema)) => vec![
            Arc::new(PostgresStore::connect(url, Some(schema)).await.unwrap()),
            Arc::new(PostgresStore::connect(url, Some(schema)).await.unwrap()),
        ],
        None => vec![Arc::clone(&h.store), Arc::clone(&h.store)],
    }
}

async fn two_nodes_appending_at_once_keep_one_unbroken_audit_chain(h: &Harness) {
    // Two nodes' writers, each batching its own appends, take turns at the chain's head.
    let nodes = two_nodes(h).await;
    let start = h.store.audit_state().await.unwrap().head_seq;
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for t in 0..8i64 {
            let node = Arc::clone(node);
            let base = (n as i64) * 10_000 + t * 100;
            tasks.push(tokio::spawn(async move {
                for b in 0..10i64 {
                    let batch: Vec<Event> =
                        (0..3).map(|i| audit_event(base + b * 10 + i, EventKind::TokenUsed)).collect();
                    node.append_events(&batch).await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(verdict(&*h.store).await, Ok(480), "every event of both nodes on one chain, none twice");
    assert_eq!(h.store.audit_state().await.unwrap().head_seq, start + 480);
    let all = h.store.audit_events(&AuditQuery { limit: 1000, ..AuditQuery::default() }).await.unwrap();
    let mut jtis: Vec<&str> = all.iter().filter_map(|r| r.event.jti.as_deref()).collect();
    jtis.sort_unstable();
    jtis.dedup();
    assert_eq!(jtis.len(), 480, "no event lost or written twice");
}

async fn two_nodes_posting_usage_at_once_keep_each_batch_whole_on_one_chain(h: &Harness) {
    // On PostgreSQL each node writes usage two transactions at a time; the second of a pair moves the head
    // only if no other writer took it meanwhile. Here the other node's writers and this node's rotations
    // take it often, so pairs are both kept and given up, and the chain must not show which.
    let nodes = two_nodes(h).await;
    let start = h.store.audit_state().await.unwrap().head_seq;
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for g in 0..3i64 {
            let node = Arc::clone(node);
            let base = 1_000_000 + (n as i64) * 100_000 + g * 10_000;
            tasks.push(tokio::spawn(async move {
                for b in 0..4i64 {
                    let batch: Vec<Event> =
                        (0..700).map(|i| audit_event(base + b * 1000 + i, EventKind::TokenUsed)).collect();
                    node.append_usage(&batch).await.unwrap();
                }
            }));
        }
        // Rotations on the same node, each with its event on the chain.
        let node = Arc::clone(node);
        tasks.push(tokio::spawn(async move {
            for r in 0..10i64 {
                let fam = format!("usage-fam-{n}-{r}");
                let first = refresh(&format!("usage-rt-{n}-{r}"), &fam, 0);
                node.create_family(&family(&fam, "u-1"), Some(&first)).await.unwrap();
                let next = refresh(&format!("usage-rt-{n}-{r}-next"), &fam, 1);
                let event = rotated_event(9_000 + n * 100 + usize::try_from(r).unwrap());
                let outcome = node.rotate_refresh(&first.hash, &next, Some(&event), NOW).await.unwrap();
                assert_eq!(outcome, Rotation::Rotated);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let usage = 2 * 3 * 4 * 700;
    assert_eq!(
        verdict(&*h.store).await,
        Ok(usage + 20),
        "every event of both nodes on one chain, none twice"
    );
    assert_eq!(h.store.audit_state().await.unwrap().head_seq, start + usage as i64 + 20);
    let all = h.store.audit_events(&AuditQuery { limit: 30_000, ..AuditQuery::default() }).await.unwrap();
    let mut batches: std::collections::HashMap<i64, Vec<i64>> = std::collections::HashMap::new();
    for r in &all {
        if let Some(n) =
            r.event.jti.as_deref().and_then(|j| j.strip_prefix("j-")).and_then(|n| n.parse::<i64>().ok())
            && n >= 1_000_000
        {
            batches.entry(n / 1000).or_default().push(r.seq);
        }
    }
    assert_eq!(batches.len(), 24, "every batch written");
    for (batch, seqs) in &batches {
        assert_eq!(seqs.len(), 700, "batch {batch} once, whole");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "batch {batch} contiguous");
    }
}

async fn a_usage_pair_whose_second_loses_the_head_is_written_again_after_the_winner(h: &Harness) {
    let (url, schema) = h.schema.as_ref().expect("a PostgreSQL harness");
    // A usage event whose jti starts with `slow` takes a second to insert.
    h.raw(
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$",
    )
    .await
    .unwrap();
    h.raw(
        "CREATE TRIGGER slow_insert AFTER INSERT ON events FOR EACH ROW \
         WHEN (NEW.jti LIKE 'slow%') EXECUTE FUNCTION slow_insert()",
    )
    .await
    .unwrap();
    let other: Arc<dyn Store> = Arc::new(PostgresStore::connect(url, Some(schema)).await.unwrap());
    // A transaction takes up to 1,000 events of usage: `first` fills one, so `second` needs another.
    let usage = |name: &str, n: i64, slow: bool| -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                jti: Some(if slow && i == 0 { format!("slow-{name}") } else { format!("{name}-{i}") }),
                ..audit_event(i, EventKind::TokenUsed)
            })
            .collect()
    };
    // The writer is busy with `busy` while `first` and `second` queue: it then takes them as a pair.
    let node = Arc::clone(&h.store);
    let busy = tokio::spawn(async move { node.append_usage(&usage("busy", 50, true)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (node, batch) = (Arc::clone(&h.store), usage("first", 1000, false));
    let first = tokio::spawn(async move { node.append_usage(&batch).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (node, batch) = (Arc::clone(&h.store), usage("second", 50, true));
    let second = tokio::spawn(async move { node.append_usage(&batch).await.unwrap() });
    busy.await.unwrap();
    // The pair's first transaction commits at once; its second is still inserting (its first row sleeps).
    // Another node appends meanwhile: it takes the head, and waits on the second's rows, which hold the
    // numbers it wants. The second must give way rather than wait for the head (a deadlock).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let winner = Event { jti: Some("other-node".into()), ..audit_event(0, EventKind::TokenIssued) };
    other.append_event(&winner).await.unwrap();
    first.await.unwrap();
    second.await.unwrap();

    assert_eq!(verdict(&*h.store).await, Ok(50 + 1000 + 1 + 50), "every event once, on one chain");
    let all = h.store.audit_events(&AuditQuery { limit: 5000, ..AuditQuery::default() }).await.unwrap();
    let seq_of = |jti: &str| all.iter().find(|r| r.event.jti.as_deref() == Some(jti)).map(|r| r.seq).unwrap();
    let first_end = seq_of("first-999");
    assert_eq!(seq_of("first-0"), first_end - 999, "the pair's first, whole");
    assert_eq!(seq_of("other-node"), first_end + 1, "the other node's append follows the pair's first");
    assert_eq!(seq_of("slow-second"), first_end + 2, "the second is written again after it, whole");
    assert_eq!(seq_of("second-49"), first_end + 51);
}

async fn of_two_nodes_scheduling_a_key_at_once_exactly_one_does(h: &Harness) {
    let key = |kid: &str, state: KeyState| KeyRecord {
        kid: kid.into(),
        alg: "EdDSA".into(),
        state,
        public_jwk: format!("{{\"kid\":\"{kid}\"}}"),
        private_sealed: vec![1, 2, 3],
        created_at: NOW,
        activated_at: None,
        retired_at: None,
    };
    h.store.insert_key(&key("k0", KeyState::Current)).await.unwrap();
    let nodes = two_nodes(h).await;
    for round in 0..10 {
        let tasks: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(n, node)| {
                let node = Arc::clone(node);
                let record = key(&format!("k{round}-{n}"), KeyState::Next);
                tokio::spawn(async move { node.schedule_key(&record).await.unwrap() })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            won += usize::from(task.await.unwrap());
        }
        assert_eq!(won, 1, "round {round}: one node scheduled");
        // Both nodes promote the waiting key at once: one current key, the old one retired.
        let next =
            h.store.list_keys().await.unwrap().into_iter().find(|k| k.state == KeyState::Next).unwrap();
        let promotions: Vec<_> = nodes
            .iter()
            .map(|node| {
                let node = Arc::clone(node);
                let kid = next.kid.clone();
                tokio::spawn(async move { node.activate_key(&kid, NOW + 100).await.unwrap() })
            })
            .collect();
        for p in promotions {
            assert!(p.await.unwrap());
        }
        let keys = h.store.list_keys().await.unwrap();
        let current: Vec<_> = keys.iter().filter(|k| k.state == KeyState::Current).collect();
        assert_eq!(current.len(), 1, "round {round}: one key signs");
        assert_eq!(current[0].kid, next.kid);
        assert!(!keys.iter().any(|k| k.state == KeyState::Next));
    }
    let second_current = h.raw("UPDATE signing_keys SET state = 'current' WHERE state = 'retired'").await;
    assert!(second_current.is_err(), "the database itself refuses a second signing key");
}

async fn audit_log_refuses_updates_and_deletes_in_the_database(h: &Harness) {
    let s = &h.store;
    s.append_events(&(0..3).map(|n| audit_event(n, EventKind::TokenIssued)).collect::<Vec<_>>())
        .await
        .unwrap();
    let head = s.audit_state().await.unwrap().head_seq;
    let update = h.raw(&format!("UPDATE events SET sub = 'mallory' WHERE id = {head}")).await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = h.raw(&format!("DELETE FROM events WHERE id = {head}")).await;
    assert!(delete.unwrap_err().to_string().contains("checkpoint"));
    let checkpoint = h.raw("DELETE FROM audit_checkpoints").await;
    assert!(checkpoint.unwrap_err().to_string().contains("append-only"));
    assert_eq!(verdict(&**s).await, Ok(3), "nothing changed");
}

/// Drops the triggers that keep the log append-only: what someone with full database access can do.
async fn drop_audit_triggers(h: &Harness) {
    let drops: &[&str] = if h.schema.is_some() {
        &["DROP TRIGGER events_append_only ON events", "DROP TRIGGER events_no_truncate ON events"]
    } else {
        &["DROP TRIGGER events_no_update", "DROP TRIGGER events_no_delete"]
    };
    for sql in drops {
        h.raw(sql).await.unwrap();
    }
}

async fn edited_audit_event_is_named_by_verify(h: &Harness) {
    let s = &h.store;
    s.append_events(&(0..10).map(|n| audit_event(n, EventKind::TokenIssued)).collect::<Vec<_>>())
        .await
        .unwrap();
    let state = s.audit_state().await.unwrap();
    let target = state.checkpoint_seq + 4;
    drop_audit_triggers(h).await;
    assert_eq!(h.raw(&format!("UPDATE events SET ip = '203.0.113.9' WHERE id = {target}")).await.unwrap(), 1);
    let broken = verdict(&**s).await.unwrap_err();
    assert_eq!(broken, ChainBreak::Altered { seq: target });
    assert!(broken.to_string().starts_with(&format!("event {target} does not match its hash")), "{broken}");
}

async fn deleted_audit_events_are_named_by_verify(h: &Harness) {
    let s = &h.store;
    s.append_events(&(0..10).map(|n| audit_event(n, EventKind::TokenIssued)).collect::<Vec<_>>())
        .await
        .unwrap();
    let state = s.audit_state().await.unwrap();
    let cp = state.checkpoint_seq;
    drop_audit_triggers(h).await;
    h.raw(&format!("DELETE FROM events WHERE id IN ({}, {})", cp + 3, cp + 4)).await.unwrap();
    assert_eq!(verdict(&**s).await, Err(ChainBreak::Missing { from: cp + 3, to: cp + 4 }));
    // Removing the newest events instead is caught by the head.
    h.raw(&format!("DELETE FROM events WHERE id > {}", cp + 2)).await.unwrap();
    assert_eq!(verdict(&**s).await, Err(ChainBreak::Truncated { last: cp + 2, head: cp + 10 }));
}

async fn every_change_to_users_clients_and_resources_moves_the_change_counter(s: &Arc<dyn Store>) {
    let mut last = s.change_seq().await.unwrap();
    let mut moved = |now: i64, what: &str| {
        assert!(now > last, "{what} must move the counter");
        last = now;
    };
    s.create_user(&user("alice")).await.unwrap();
    moved(s.change_seq().await.unwrap(), "create_user");
    s.set_user_disabled("u-alice", true).await.unwrap();
    moved(s.change_seq().await.unwrap(), "set_user_disabled");
    s.set_user_roles("u-alice", &["x".into()]).await.unwrap();
    moved(s.change_seq().await.unwrap(), "set_user_roles");
    s.set_password("u-alice", "$argon2id$x", NOW).await.unwrap();
    moved(s.change_seq().await.unwrap(), "set_password");
    s.create_client(&client("web")).await.unwrap();
    moved(s.change_seq().await.unwrap(), "create_client");
    s.set_client_secret("web", Some(&TokenHash::of("tss_2"))).await.unwrap();
    moved(s.change_seq().await.unwrap(), "set_client_secret");
    s.set_client_disabled("web", true).await.unwrap();
    moved(s.change_seq().await.unwrap(), "set_client_disabled");
    let r = Resource { audience: "https://api.example".into(), scopes: vec![], created_at: NOW };
    s.create_resource(&r).await.unwrap();
    moved(s.change_seq().await.unwrap(), "create_resource");
    // A failed change moves nothing.
    assert!(s.create_user(&user("alice")).await.is_err());
    assert_eq!(s.change_seq().await.unwrap(), last);
}

async fn single_use_ids_are_taken_once_under_concurrency(s: &Arc<dyn Store>) {
    let id = TokenHash::of("jkt|proof-1");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move { s.use_once("dpop", &id, NOW + 60, NOW).await.unwrap() }));
    }
    let mut fresh = 0;
    for t in tasks {
        fresh += usize::from(t.await.unwrap());
    }
    assert_eq!(fresh, 1, "exactly one request may use an id");
    assert!(s.use_once("client_assertion", &id, NOW + 60, NOW).await.unwrap(), "scopes are separate");
    assert!(!s.use_once("dpop", &id, NOW + 120, NOW + 59).await.unwrap(), "still inside its window");
    assert!(
        s.use_once("dpop", &id, NOW + 200, NOW + 60).await.unwrap(),
        "an expired entry may be taken again"
    );
    s.prune(NOW + 500).await.unwrap();
    assert!(s.use_once("dpop", &id, NOW + 600, NOW + 500).await.unwrap(), "pruned");

    // Many ids at once, each sent four times, land in shared batches: each is taken exactly once.
    let mut tasks = Vec::new();
    for round in 0..4 {
        for n in 0..50 {
            let s = Arc::clone(s);
            let id = TokenHash::of(&format!("jkt|batch-{n}"));
            let now = NOW + round;
            tasks.push(tokio::spawn(
                async move { (n, s.use_once("dpop", &id, NOW + 60, now).await.unwrap()) },
            ));
        }
    }
    let mut taken = [0u32; 50];
    for t in tasks {
        let (n, fresh) = t.await.unwrap();
        taken[n] += u32::from(fresh);
    }
    assert_eq!(taken, [1; 50], "every id once, however the batches fell");
}

fn new_alert(id: &str, next_at: i64) -> NewAlert {
    NewAlert {
        id: id.into(),
        sink: "webhook".into(),
        detection: "brute_force|sub:u-alice".into(),
        payload: format!("{{\"id\":\"{id}\"}}"),
        next_at,
    }
}

async fn detection_is_raised_once_under_concurrency_with_its_alerts_queued(s: &Arc<dyn Store>) {
    let key = TokenHash::of("brute_force|sub:u-alice");
    let mut tasks = Vec::new();
    for n in 0..10 {
        let s = Arc::clone(s);
        let alerts = vec![new_alert(&format!("a{n}"), NOW)];
        tasks.push(tokio::spawn(async move {
            s.raise_detection(&key, "brute_force", NOW + 900, &alerts, NOW).await.unwrap()
        }));
    }
    let mut raised = 0;
    for t in tasks {
        raised += usize::from(t.await.unwrap());
    }
    assert_eq!(raised, 1, "one node, one round raises it");
    assert_eq!(s.list_alerts(None, 100).await.unwrap().len(), 1, "only the winner's alerts are queued");
    assert_eq!(s.pending_alerts().await.unwrap(), 1);
    assert!(!s.raise_detection(&key, "brute_force", NOW + 1800, &[], NOW + 899).await.unwrap());
    assert!(
        s.raise_detection(&key, "brute_force", NOW + 1800, &[], NOW + 900).await.unwrap(),
        "raised again once its evidence left the window"
    );
}

async fn alert_outbox_leases_retries_and_finishes(s: &Arc<dyn Store>) {
    let key = TokenHash::of("k");
    let alerts = [new_alert("a1", NOW + 5), new_alert("a2", NOW + 5)];
    assert!(s.raise_detection(&key, "brute_force", NOW + 900, &alerts, NOW).await.unwrap());
    assert!(s.take_alerts(NOW, NOW + 15, 10).await.unwrap().is_empty(), "held until their responses ran");
    assert!(s.update_alert("a1", "{\"final\":true}", NOW + 1).await.unwrap());
    let taken = s.take_alerts(NOW + 1, NOW + 16, 10).await.unwrap();
    assert_eq!(taken.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["a1"]);
    assert_eq!((taken[0].payload.as_str(), taken[0].attempts), ("{\"final\":true}", 1));
    assert!(!s.update_alert("a1", "{}", NOW + 1).await.unwrap(), "an alert on its way is not rewritten");
    assert!(s.take_alerts(NOW + 2, NOW + 17, 10).await.unwrap().is_empty(), "leased: no other node takes it");
    // The hold of a2 ran out: it goes as it was.
    let taken = s.take_alerts(NOW + 5, NOW + 20, 10).await.unwrap();
    assert_eq!(taken.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["a2"]);
    let retry = AlertOutcome::Retry { error: "status 503".into(), next_at: NOW + 6 };
    s.finish_alert("a2", &retry, NOW + 5).await.unwrap();
    // a1's taker died: its lease ends and it is taken again, with the attempt counted.
    let again = s.take_alerts(NOW + 16, NOW + 31, 10).await.unwrap();
    assert_eq!(again.iter().map(|a| (a.id.as_str(), a.attempts)).collect::<Vec<_>>(), [("a1", 2), ("a2", 2)]);
    assert_eq!(again[1].last_error.as_deref(), Some("status 503"));
    s.finish_alert("a1", &AlertOutcome::Delivered, NOW + 16).await.unwrap();
    s.finish_alert("a2", &AlertOutcome::Failed { error: "gave up".into() }, NOW + 16).await.unwrap();
    assert_eq!(s.pending_alerts().await.unwrap(), 0);
    let a1 = &s.list_alerts(Some("delivered"), 10).await.unwrap()[0];
    assert_eq!((a1.id.as_str(), a1.delivered_at), ("a1", Some(NOW + 16)));
    assert_eq!(s.list_alerts(Some("failed"), 10).await.unwrap()[0].id, "a2");
    assert!(s.take_alerts(NOW + 1000, NOW + 1015, 10).await.unwrap().is_empty(), "finished alerts stay put");
    s.finish_alert("a1", &retry, NOW + 17).await.unwrap();
    assert_eq!(
        s.list_alerts(Some("delivered"), 10).await.unwrap().len(),
        1,
        "a late outcome changes nothing"
    );
}

async fn revoke_user_can_force_a_password_reset_that_a_new_password_clears(s: &Arc<dyn Store>) {
    s.create_user(&user("alice")).await.unwrap();
    s.create_family(&family("fa1", "u-alice"), Some(&refresh("tsr_fa1", "fa1", 0))).await.unwrap();
    let before = s.change_seq().await.unwrap();
    s.revoke_user("u-alice", "detection_brute_force", true, NOW).await.unwrap();
    let alice = s.user_by_id("u-alice").await.unwrap().unwrap();
    assert!(alice.must_reset_password);
    assert!(s.change_seq().await.unwrap() > before, "cached copies of the user are dropped");
    assert!(s.family("fa1").await.unwrap().unwrap().revoked_at.is_some());
    s.set_password("u-alice", "$argon2id$new", NOW + 10).await.unwrap();
    assert!(!s.user_by_id("u-alice").await.unwrap().unwrap().must_reset_password);
    assert!(s.set_must_reset_password("u-alice", true).await.unwrap());
    assert!(s.user_by_id("u-alice").await.unwrap().unwrap().must_reset_password);
    assert!(!s.set_must_reset_password("u-nobody", true).await.unwrap());
    assert!(s.require_step_up("u-alice", NOW + 20).await.unwrap());
    assert_eq!(s.user_by_id("u-alice").await.unwrap().unwrap().step_up_after, Some(NOW + 20));
    assert!(!s.require_step_up("u-nobody", NOW).await.unwrap());
}

async fn source_blocks_and_lifts_are_streamed_in_order(s: &Arc<dyn Store>) {
    let block = NewRevocation {
        kind: RevocationKind::Source,
        subject: "203.0.113.7".into(),
        not_before: None,
        expires_at: NOW + 3600,
        reason: "detection_forged_token_burst".into(),
    };
    let b = s.revoke(&block, NOW).await.unwrap();
    let lift = NewRevocation { not_before: Some(NOW + 60), reason: "operator".into(), ..block.clone() };
    let l = s.revoke(&lift, NOW + 60).await.unwrap();
    let live = s.live_revocations(NOW + 61).await.unwrap();
    let seen: Vec<(i64, Option<i64>)> =
        live.iter().filter(|r| r.kind == RevocationKind::Source).map(|r| (r.seq, r.not_before)).collect();
    assert_eq!(seen, [(b, None), (l, Some(NOW + 60))], "the lift follows the block, so it wins");
    assert!(
        !s.is_revoked(token_ref("j", Some("s"), "u", NOW), NOW).await.unwrap(),
        "a block revokes no token"
    );
}

async fn dpop_binding_round_trips(s: &Arc<dyn Store>) {
    let mut bound = family("fam-dpop", "u-alice");
    bound.dpop_jkt = Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into());
    s.create_family(&bound, Some(&refresh("tsr_dpop", "fam-dpop", 0))).await.unwrap();
    let (_, stored) = s.refresh_token(&TokenHash::of("tsr_dpop")).await.unwrap().unwrap();
    assert_eq!(stored.dpop_jkt, bound.dpop_jkt);
    assert_eq!(s.family("fam-dpop").await.unwrap(), Some(bound));
    // An unbound family takes the first key offered, and keeps it.
    s.create_family(&family("fam-late", "u-alice"), Some(&refresh("tsr_late", "fam-late", 0))).await.unwrap();
    assert_eq!(s.bind_family_key("fam-late", "key-a").await.unwrap().as_deref(), Some("key-a"));
    assert_eq!(s.bind_family_key("fam-late", "key-b").await.unwrap().as_deref(), Some("key-a"));
    assert_eq!(s.bind_family_key("no-such-family", "key-a").await.unwrap(), None);
}

/// On SQLite the server process keeps single-use ids in memory and writes them behind: a restart (a new
/// store on the same file) still refuses the ids taken before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_single_use_ids_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let first = SqliteStore::open(&path).await.unwrap();
    first.migrate().await.unwrap();
    let ids: Vec<TokenHash> = (0..300).map(|i| TokenHash::of(&format!("jkt|restart-{i}"))).collect();
    for id in &ids {
        assert!(first.use_once("dpop", id, NOW + 60, NOW).await.unwrap());
    }
    // An id may be taken again once its window has passed; the later window is the one remembered.
    assert!(first.use_once("dpop", &ids[1], NOW + 180, NOW + 60).await.unwrap());
    // The write-behind lands within moments.
    let mut written = 0;
    for _ in 0..200 {
        written = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM used_ids")
            .fetch_one(&sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap())
            .await
            .unwrap();
        if written == 301 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(written, 301, "every id was written behind");
    first.close().await;
    let second = SqliteStore::open(&path).await.unwrap();
    second.migrate().await.unwrap();
    for id in &ids {
        assert!(
            !second.use_once("dpop", id, NOW + 60, NOW + 1).await.unwrap(),
            "still refused after a restart"
        );
    }
    assert!(second.use_once("dpop", &ids[0], NOW + 120, NOW + 60).await.unwrap(), "until its window ends");
    assert!(!second.use_once("dpop", &ids[1], NOW + 240, NOW + 61).await.unwrap(), "the later window");
    assert!(second.use_once("dpop", &TokenHash::of("jkt|new"), NOW + 60, NOW).await.unwrap());
}

/// The plan the database chooses for `sql`, as text.
impl Harness {
    async fn plan(&self, sql: &str) -> String {
        use sqlx::{Connection, Row};
        match (&self.schema, &self._dir) {
            (Some((url, schema)), _) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(&format!("SET search_path TO {schema}")).execute(&mut conn).await.unwrap();
                let rows = sqlx::query(&format!("EXPLAIN {sql}")).fetch_all(&mut conn).await.unwrap();
                rows.iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>().join("\n")
            }
            (None, Some(dir)) => {
                let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                let rows =
                    sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}")).fetch_all(&mut conn).await.unwrap();
                rows.iter().map(|r| r.get::<String, _>(3)).collect::<Vec<_>>().join("\n")
            }
            (None, None) => unreachable!("a harness has a file or a schema"),
        }
    }
}

/// A million events from 10,000 users (and 500 of one more), written straight into the table as a bulk load
/// would (outside the chain: this is about reading).
async fn a_million_events(h: &Harness) {
    let rows = "SELECT x, 1795000000 + x, \
                CASE x % 4 WHEN 0 THEN 'token_used' WHEN 1 THEN 'token_issued' WHEN 2 THEN 'login_success' ELSE 'token_refreshed' END, \
                '10.' || (x % 200) || '.' || (x % 250) || '.7', \
                CASE WHEN x % 2000 = 0 THEN 'u_target' ELSE 'u_' || (x % 10000) END, \
                's_' || (x % 50000), 'j_' || x, 'webapp'";
    let sql = if h.schema.is_some() {
        format!(
            "INSERT INTO events (id, at, kind, ip, sub, sid, jti, client_id) {rows} FROM generate_series(1, 1000000) AS g(x)"
        )
    } else {
        format!(
            "INSERT INTO events (id, at, kind, ip, sub, sid, jti, client_id) \
             WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 1000000) {rows} FROM g"
        )
    };
    assert_eq!(h.raw(&sql).await.unwrap(), 1_000_000);
    // What autovacuum (PostgreSQL) and `PRAGMA optimize` (SQLite) keep current in a running system.
    h.raw("ANALYZE").await.unwrap();
}

async fn a_users_timeline_among_a_million_events_is_one_index_range_scan(h: &Harness) {
    a_million_events(h).await;
    // The query `tessera incident timeline --user` runs: the user's newest events, up to its limit + 1.
    let sql =
        "SELECT id, at, kind FROM events WHERE id > 0 AND sub = 'u_target' ORDER BY id DESC LIMIT 10001";
    let plan = h.plan(sql).await;
    if h.schema.is_some() {
        // An index scan, or a bitmap scan when the planner expects few rows: either way events_sub with
        // both conditions in the index.
        assert!(
            plan.contains("Index Scan Backward using events_sub")
                || plan.contains("Bitmap Index Scan on events_sub"),
            "{plan}"
        );
        assert!(plan.contains("Index Cond: ((sub = 'u_target'::text) AND (id > 0))"), "{plan}");
    } else {
        assert!(plan.contains("SEARCH events USING INDEX events_sub"), "{plan}");
    }
    assert!(!plan.contains("Seq Scan") && !plan.contains("SCAN events"), "no full scan: {plan}");
    let started = tokio::time::Instant::now();
    let query =
        AuditQuery { sub: Some("u_target".into()), newest: true, limit: 10_001, ..AuditQuery::default() };
    let found = h.store.audit_events(&query).await.unwrap();
    let took = started.elapsed();
    assert_eq!(found.len(), 500);
    assert!(found.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    // The acceptance bound of the issue; the measured figure is in docs/operations.md.
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    #[allow(clippy::print_stderr, reason = "the figure for docs/operations.md")]
    {
        eprintln!("timeline query among 1,000,000 events: {took:?}\n{plan}");
    }
}
