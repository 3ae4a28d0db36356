//! `tessera serve` and the management commands as separate processes: first start, the commands an
//! operator types, two server processes on one PostgreSQL database, and a `kill -9` in the middle of a
//! refresh load; `cluster` runs two nodes, a load balancer and two gateways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly by design")]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tessera_core::{OpaqueSecret, SecretKind};
use tessera_store::{Family, RefreshRecord, Store};

#[path = "server_process/cluster.rs"]
mod cluster;

const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// A `tessera` command run to completion.
fn run(dir: &Path, env: &[(&str, &str)], args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(dir)
        .env_remove("TESSERA_DATABASE_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A running `tessera serve` child; killed (by its PID) when dropped.
struct ServerProcess {
    child: Child,
    addr: String,
    first_start: Vec<String>,
}

impl ServerProcess {
    fn start(dir: &Path, env: &[(&str, &str)], extra: &[&str]) -> ServerProcess {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(&args)
            .current_dir(dir)
            .env_remove("TESSERA_DATABASE_URL")
            .envs(env.iter().copied())
            .env("TESSERA_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // From here on, dropping `server` kills and reaps the child, whatever happens.
        let mut server = ServerProcess { child, addr: String::new(), first_start: Vec::new() };
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines.next().expect("the server printed where it listens").unwrap();
            if let Some(rest) = line.strip_prefix("tessera: listening on ") {
                server.addr = rest.split(' ').next().unwrap().to_owned();
                // Keep draining stdout so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return server;
            }
            server.first_start.push(line);
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, signal: &str) {
        assert!(Command::new("kill").args([signal, &self.pid()]).status().unwrap().success());
    }

    fn wait(mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn refresh(url: &str, token: &str) -> Result<(u16, Value), reqwest::Error> {
    let r = client()
        .post(url)
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token), ("client_id", "app")])
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_creates_everything_and_its_curl_line_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let text = server.first_start.join("\n");
    assert!(text.contains("created data directory ./tessera-data"), "{text}");
    assert!(text.contains("created key-encryption key ./tessera-data/master.key"), "{text}");
    assert!(text.contains("created EdDSA signing key"), "{text}");
    let curl = server.first_start.iter().find(|l| l.trim_start().starts_with("curl ")).unwrap();
    let secret = curl.split("quickstart:").nth(1).unwrap().split(' ').next().unwrap();
    let body = quickstart_token(&server, secret).await;
    assert_eq!(body["token_type"], "Bearer");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("tessera-data"), 0o700);
        assert_eq!(mode("tessera-data/master.key"), 0o600);
    }
    assert!(dir.path().join("tessera-data/tessera.db").exists());
    // SIGTERM: a graceful stop with exit 0; the second start creates nothing.
    server.signal("-TERM");
    assert!(server.wait().success());
    let again = ServerProcess::start(dir.path(), &[], &[]);
    assert!(again.first_start.is_empty(), "{:?}", again.first_start);
}

#[test]
fn management_commands_do_what_an_operator_types() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, out, _) = run(
        d,
        &[],
        &["resource", "add", "https://orders.example", "--scope", "orders:read orders:write"],
        "",
    );
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(
        d,
        &[],
        &[
            "client",
            "add",
            "web",
            "--redirect-uri",
            "https://web.example/cb",
            "--audience",
            "https://orders.example",
            "--scope",
            "openid orders:read",
        ],
        "",
    );
    assert_eq!(code, 0);
    let secret = out.lines().find_map(|l| l.strip_prefix("client_secret: ")).unwrap().to_owned();
    assert!(secret.starts_with("tss_"));
    let (_, shown, _) = run(d, &[], &["client", "show", "web"], "");
    assert!(
        shown.contains("kind: confidential") && !shown.contains(&secret),
        "the secret is shown once only"
    );
    assert!(shown.contains("dpop: optional"), "confidential clients may use bearer tokens: {shown}");
    let (code, out, err) =
        run(d, &[], &["client", "add", "spa", "--public", "--redirect-uri", "https://spa.example/cb"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dpop: required"), "public clients need DPoP by default: {out}");
    let db = std::fs::read(d.join("tessera-data/tessera.db")).unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()), "only the hash is stored");
    let (code, _, err) =
        run(d, &[], &["client", "add", "bad", "--redirect-uri", "http://evil.example/cb"], "");
    assert_eq!(code, 2);
    assert!(err.starts_with("error: --redirect-uri #1"), "{err}");
    let (code, _, err) = run(
        d,
        &[],
        &["client", "add", "x", "--audience", "https://nowhere.example", "--grant", "client_credentials"],
        "",
    );
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");

    // Users: the password comes from stdin, never an argument.
    let (code, out, err) = run(d, &[], &["user", "add", "alice", "--role", "admin"], "a long password\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("username: alice") && out.contains("roles: admin"));
    let (code, _, err) = run(d, &[], &["user", "add", "bob"], "short\n");
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "error: the password must be at least 15 characters");
    // The shipped sample of breached passwords refuses a long but well-known one.
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/breached-passwords-sample.txt");
    let with_list = [("TESSERA_PASSWORDS_BREACHED_LIST", sample)];
    let (code, _, err) = run(d, &with_list, &["user", "add", "carol"], "correct horse battery staple\n");
    assert_eq!(code, 2);
    assert!(err.contains("appears in a list of breached passwords"), "{err}");
    let missing = [("TESSERA_PASSWORDS_BREACHED_LIST", "/nonexistent")];
    let (code, _, err) = run(d, &missing, &["user", "add", "dave"], "a long enough password\n");
    assert_eq!(code, 2, "a configured list that is missing is an error");
    assert!(err.contains("passwords.breached_list"), "{err}");
    let (code, _, err) = run(d, &[], &["user", "add", "alice"], "another long password\n");
    assert_eq!((code, err.trim()), (2, "error: user alice already exists"));
    let (_, list, _) = run(d, &[], &["user", "list"], "");
    assert!(list.contains("alice") && list.contains("enabled"));
    let (code, out, _) = run(d, &[], &["user", "roles", "alice", "ops", "admin", "ops"], "");
    assert_eq!(code, 0);
    assert!(out.contains("roles of alice: admin ops"), "{out}");
    let (_, roles, _) = run(d, &[], &["user", "roles", "alice"], "");
    assert_eq!(roles, "admin\nops\n");
    let (_, shown, _) = run(d, &[], &["user", "show", "alice"], "");
    assert!(shown.contains("roles: admin ops") && !shown.contains("argon2"), "{shown}");
    assert!(shown.contains("mfa: none"), "{shown}");
    let (code, out, _) = run(d, &[], &["user", "set-email", "alice", "alice@example.com"], "");
    assert_eq!((code, out.trim()), (0, "email of alice: alice@example.com"));
    let (code, _, err) = run(d, &[], &["user", "set-email", "alice", "not an address"], "");
    assert_eq!(code, 2, "{err}");
    let (_, shown, _) = run(d, &[], &["user", "show", "alice"], "");
    assert!(shown.contains("email: alice@example.com"), "{shown}");
    // A user who lost their second factor: the reset is audited with who did it.
    let (code, out, _) = run(d, &[], &["user", "mfa", "reset", "alice"], "");
    assert_eq!((code, out.trim()), (0, "alice had no second factor"));
    let (code, _, err) = run(d, &[], &["user", "mfa", "reset", "nobody"], "");
    assert_eq!((code, err.trim()), (2, "error: no user nobody"));
    let (_, audit, _) = run(d, &[], &["audit", "search", "--kind", "admin_action", "--format", "json"], "");
    assert!(audit.contains("user_mfa_reset"), "{audit}");
    // A client's MFA policy.
    let (code, out, _) = run(d, &[], &["client", "set-mfa", "web", "required"], "");
    assert_eq!(code, 0);
    assert!(out.contains("mfa: required"), "{out}");
    let (code, _, err) = run(d, &[], &["client", "set-mfa", "web", "sometimes"], "");
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = run(d, &[], &["user", "set-password", "alice"], "a different password\n");
    assert_eq!(code, 0);
    assert!(out.contains("every session revoked"));
    let (code, out, _) = run(d, &[], &["user", "disable", "alice"], "");
    assert_eq!(code, 0);
    assert!(out.contains("disabled"));
    let (code, _, err) = run(d, &[], &["revoke", "--user", "nobody"], "");
    assert_eq!((code, err.trim()), (2, "error: no user nobody"));
    let (code, out, _) = run(d, &[], &["revoke", "--client", "web"], "");
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(d, &[], &["revoke", "--token", "some-jti"], "");
    assert_eq!(code, 0);
    assert!(out.starts_with("token some-jti revoked"), "{out}");
    let (code, _, err) = run(d, &[], &["revoke", "--token", "a", "--user", "b"], "");
    assert_eq!(code, 2, "exactly one subject: {err}");

    // Client and resource listings, and secret rotation.
    let (_, clients, _) = run(d, &[], &["client", "list"], "");
    assert!(clients.lines().any(|l| l.starts_with("web ") && l.contains("confidential")), "{clients}");
    let (_, resources, _) = run(d, &[], &["resource", "list"], "");
    assert!(resources.contains("https://orders.example") && resources.contains("orders:read orders:write"));
    let (code, out, _) = run(d, &[], &["client", "rotate-secret", "web"], "");
    assert_eq!(code, 0);
    let rotated = out.lines().find_map(|l| l.strip_prefix("client_secret: ")).unwrap();
    assert!(rotated.starts_with("tss_") && rotated != secret);
    let (code, out, _) = run(d, &[], &["client", "disable", "web"], "");
    assert_eq!(code, 0);
    assert!(out.contains("disabled"));

    // Keys: list, rotate, import.
    let (code, out, _) = run(d, &[], &["migrate"], "");
    assert_eq!((code, out.trim()), (0, "migrations applied (sqlite)"));
    let (code, out, err) = run(d, &[], &["keys", "rotate", "--now"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is now current"));
    let (_, keys, _) = run(d, &[], &["keys", "list"], "");
    assert_eq!(keys.lines().filter(|l| l.contains(" current ")).count(), 1, "{keys}");
    let (code, _, _) = run(d, &[], &["keys", "generate", "--alg", "ES256", "--out", "es.jwk"], "");
    assert_eq!(code, 0);
    let (code, out, err) = run(d, &[], &["keys", "import", "--file", "es.jwk"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(ES256) imported and current"));

    // config check shows the effective configuration without secrets.
    let env = [("TESSERA_MASTER_KEY", MASTER_KEY), ("TESSERA_ACCESS_TOKEN_TTL", "120")];
    let (code, out, _) =
        run(d, &env, &["config", "check", "--database-url", "postgres://u:hunter2@db/x"], "");
    assert_eq!(code, 0);
    assert!(out.contains("access_token_ttl = 120") && out.contains("<redacted>"), "{out}");
    assert!(!out.contains(MASTER_KEY) && !out.contains("hunter2"), "{out}");
    let (code, _, err) = run(d, &[("TESSERA_ACCESS_TOKEN_TTL", "3600")], &["config", "check"], "");
    assert_eq!((code, err.trim()), (2, "error: access_token_ttl: must be between 1 and 900 seconds"));
}

#[test]
fn client_keys_and_exchange_policy_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (audience, scope) in
        [("https://orders.example", "orders:read"), ("https://billing.example", "billing:read")]
    {
        let (code, _, err) = run(d, &[], &["resource", "add", audience, "--scope", scope], "");
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = run(d, &[], &["keys", "generate", "--alg", "ES256", "--out", "worker.jwk"], "");
    assert_eq!(code, 0, "{err}");
    let (code, jwks, err) = run(d, &[], &["keys", "jwks", "worker.jwk"], "");
    assert_eq!(code, 0, "{err}");
    std::fs::write(d.join("worker.jwks"), &jwks).unwrap();
    let kid = serde_json::from_str::<Value>(&jwks).unwrap()["keys"][0]["kid"].as_str().unwrap().to_owned();

    // A key-authenticated client gets no secret at all.
    let args =
        ["client", "add", "worker", "--grant", "client_credentials", "--audience", "https://orders.example"];
    let (code, out, err) = run(d, &[], &[&args[..], &["--jwks", "worker.jwks"]].concat(), "");
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("client_secret:"), "{out}");
    assert!(out.contains("auth: private_key_jwt") && out.contains(&format!("keys: {kid}")), "{out}");
    // A private key file is refused without being echoed; so is a public client with keys.
    let private = std::fs::read_to_string(d.join("worker.jwk")).unwrap();
    let (code, _, err) = run(d, &[], &["client", "add", "leaky", "--jwks", "worker.jwk"], "");
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    let d_member = serde_json::from_str::<Value>(&private).unwrap()["d"].as_str().unwrap().to_owned();
    assert!(!err.contains(&d_member), "{err}");
    let public = ["client", "add", "app", "--public", "--redirect-uri", "https://app.example/cb"];
    let (code, _, err) = run(d, &[], &[&public[..], &["--jwks", "worker.jwks"]].concat(), "");
    assert_eq!(code, 2, "{err}");

    // Token exchange needs an explicit policy, of registered resources; the service serves its own audience.
    let exchange =
        ["client", "add", "orders-svc", "--grant", "token_exchange", "--serves", "https://orders.example"];
    let (code, _, err) = run(d, &[], &exchange, "");
    assert_eq!((code, err.trim()), (2, "error: token_exchange needs at least one --exchange-audience"));
    let (code, _, err) =
        run(d, &[], &[&exchange[..], &["--exchange-audience", "https://nowhere.example"]].concat(), "");
    assert_eq!(code, 2, "{err}");
    let (code, out, err) =
        run(d, &[], &[&exchange[..], &["--exchange-audience", "https://billing.example"]].concat(), "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("exchange_audiences: https://billing.example"), "{out}");
    assert!(out.contains("grants: urn:ietf:params:oauth:grant-type:token-exchange"), "{out}");
    assert!(out.lines().any(|l| l == "serves: https://orders.example"), "{out}");
    assert!(out.lines().any(|l| l == "audiences: "), "serving a service is not calling it: {out}");

    // What a client serves can be changed, only to registered resources, and only for confidential clients.
    let (code, out, err) =
        run(d, &[], &["client", "set-serves", "orders-svc", "https://billing.example"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "serves: https://billing.example"), "{out}");
    let (code, _, err) = run(d, &[], &["client", "set-serves", "orders-svc", "https://nowhere.example"], "");
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    let spa = ["client", "add", "spa", "--public", "--redirect-uri", "https://app.example/cb"];
    let (code, _, err) = run(d, &[], &[&spa[..], &["--serves", "https://orders.example"]].concat(), "");
    assert_eq!(code, 2, "a public client serves nothing: {err}");
    assert_eq!(run(d, &[], &spa, "").0, 0);
    let (code, _, err) = run(d, &[], &["client", "set-serves", "spa", "https://orders.example"], "");
    assert_eq!(code, 2, "a public client serves nothing: {err}");
    let (code, out, _) = run(d, &[], &["client", "set-serves", "orders-svc"], "");
    assert!(code == 0 && out.lines().any(|l| l == "serves: "), "none clears it: {out}");
    // A gateway's client only serves: it gets a secret and no grant.
    let (code, out, err) =
        run(d, &[], &["client", "add", "orders-gateway", "--serves", "https://orders.example"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "grants: ") && out.contains("client_secret: tss_"), "{out}");

    // Moving a secret client to keys: register them, then switch the secret off.
    let (code, _, _) = run(d, &[], &["client", "add", "svc", "--grant", "client_credentials"], "");
    assert_eq!(code, 0);
    let (code, _, err) = run(d, &[], &["client", "remove-secret", "svc"], "");
    assert_eq!(code, 2, "no keys yet, so removing the secret would lock the client out: {err}");
    let (code, out, err) = run(d, &[], &["client", "set-jwks", "svc", "worker.jwks"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("auth: client_secret_basic client_secret_post private_key_jwt"), "{out}");
    let (code, _, err) = run(d, &[], &["client", "remove-secret", "svc"], "");
    assert_eq!(code, 0, "{err}");
    let (_, shown, _) = run(d, &[], &["client", "show", "svc"], "");
    assert!(shown.lines().any(|l| l == "auth: private_key_jwt"), "{shown}");
}

/// Registers a public client `app` (refresh allowed, bearer tokens allowed) and user `u1` with the CLI, then
/// starts `families` refresh families directly in the store, returning each family's first refresh token.
async fn seed(dir: &Path, env: &[(&str, &str)], store: &dyn Store, families: usize) -> Vec<String> {
    let add = [
        "client",
        "add",
        "app",
        "--public",
        "--dpop",
        "optional",
        "--redirect-uri",
        "https://app.example/cb",
    ];
    let (code, out, err) = run(dir, env, &add, "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dpop: optional"), "{out}");
    let (code, _, err) = run(dir, env, &["user", "add", "u1"], "a long password\n");
    assert_eq!(code, 0, "{err}");
    let user = store.user_by_name("u1").await.unwrap().unwrap();
    let now = tessera_server::now();
    let mut tokens = Vec::new();
    for i in 0..families {
        let mut random = [0u8; 32];
        random[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        random[8..16].copy_from_slice(&u64::try_from(now).unwrap().to_le_bytes());
        let secret = OpaqueSecret::from_random(SecretKind::RefreshToken, &random);
        let family = Family {
            id: format!("fam{i}"),
            client_id: "app".into(),
            user_id: user.id.clone(),
            scope: String::new(),
            audience: None,
            auth_time: now,
            amr: vec!["pwd".into()],
            login_session: None,
            code_hash: None,
            created_at: now,
            expires_at: now + 86_400,
            revoked_at: None,
            dpop_jkt: None,
        };
        let first = RefreshRecord {
            hash: secret.hash(),
            family_id: family.id.clone(),
            generation: 0,
            scope: String::new(),
            created_at: now,
            expires_at: now + 3600,
            rotated_at: None,
            successor: None,
        };
        store.create_family(&family, Some(&first)).await.unwrap();
        tokens.push(secret.expose().to_owned());
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_on_one_postgres_give_fifty_racing_refreshes_one_successor() {
    let Some(url) = std::env::var("TESSERA_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        #[allow(clippy::print_stderr, reason = "a skipped test says so")]
        {
            eprintln!("skipped: TESSERA_TEST_DATABASE_URL is not set");
        }
        return;
    };
    let schema = format!("tessera_proc_{}", std::process::id());
    admin(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await;
    let scoped = format!("{url}{}options[search_path]={schema}", if url.contains('?') { '&' } else { '?' });
    let dir = tempfile::tempdir().unwrap();
    let env = [("TESSERA_MASTER_KEY", MASTER_KEY), ("TESSERA_DATABASE_URL", scoped.as_str())];
    let a = ServerProcess::start(dir.path(), &env, &["--issuer", "http://127.0.0.1:1"]);
    let b = ServerProcess::start(dir.path(), &env, &["--issuer", "http://127.0.0.1:1"]);
    let store = tessera_store::open(&scoped).await.unwrap();
    let token = seed(dir.path(), &env, &*store, 1).await.remove(0);

    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = if i % 2 == 0 { a.url("/token") } else { b.url("/token") };
        let token = token.clone();
        tasks.push(tokio::spawn(async move { refresh(&url, &token).await.unwrap() }));
    }
    let mut successors = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        successors.insert(body["refresh_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(successors.len(), 1, "both nodes hand out the one successor");
    assert_eq!(pg_invariants(&scoped).await, (0, 0), "one successor, one head");
    let successor = successors.into_iter().next().unwrap();
    assert_eq!(refresh(&b.url("/token"), &successor).await.unwrap().0, 200);
    assert_eq!(
        refresh(&a.url("/token"), &token).await.unwrap().0,
        400,
        "r0 again after its successor was used"
    );
    assert!(
        store.family("fam0").await.unwrap().unwrap().revoked_at.is_some(),
        "reuse on node A killed the family"
    );
    drop((a, b));
    admin(&url, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// The refresh-chain invariants, read straight from the tables: no rotated token points at a successor
/// that does not exist, and every family has exactly one unrotated token. Returns (orphans, families
/// without exactly one head).
const ORPHANS: &str = "SELECT count(*) FROM refresh_tokens t WHERE t.successor IS NOT NULL \
                       AND NOT EXISTS (SELECT 1 FROM refresh_tokens s WHERE s.hash = t.successor)";
const BAD_HEADS: &str = "SELECT count(*) FROM (SELECT family_id FROM refresh_tokens GROUP BY family_id \
                         HAVING sum(CASE WHEN rotated_at IS NULL THEN 1 ELSE 0 END) <> 1) AS x";

async fn pg_invariants(scoped_url: &str) -> (i64, i64) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(scoped_url).await.unwrap();
    let orphans: i64 = sqlx::query_scalar(ORPHANS).fetch_one(&mut conn).await.unwrap();
    let bad: i64 = sqlx::query_scalar(BAD_HEADS).fetch_one(&mut conn).await.unwrap();
    (orphans, bad)
}

async fn sqlite_invariants(path: &Path) -> (i64, i64) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let orphans: i64 = sqlx::query_scalar(ORPHANS).fetch_one(&mut conn).await.unwrap();
    let bad: i64 = sqlx::query_scalar(BAD_HEADS).fetch_one(&mut conn).await.unwrap();
    (orphans, bad)
}

async fn admin(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_refresh_load_loses_no_successor_and_revives_no_revoked_token() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TESSERA_MASTER_KEY", MASTER_KEY)];
    let server = ServerProcess::start(dir.path(), &env, &[]);
    let db = dir.path().join("tessera-data/tessera.db");
    let store = tessera_store::open(&format!("sqlite://{}", db.display())).await.unwrap();
    let mut tokens = seed(dir.path(), &env, &*store, 16).await;
    drop(store);
    // Four families are revoked before the load.
    for i in 0..4 {
        let (code, _, err) = run(dir.path(), &env, &["revoke", "--session", &format!("fam{i}")], "");
        assert_eq!(code, 0, "{err}");
    }
    let url = server.url("/token");
    let mut load = Vec::new();
    for (i, token) in tokens.drain(..).enumerate() {
        let url = url.clone();
        load.push(tokio::spawn(async move {
            let mut current = token;
            let mut rotations = 0u32;
            loop {
                match refresh(&url, &current).await {
                    Ok((200, body)) => {
                        current = body["refresh_token"].as_str().unwrap().to_owned();
                        rotations += 1;
                    }
                    Ok((status, _)) => {
                        assert!(i < 4 && status == 400, "family {i}: {status}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => return (current, rotations),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("-KILL");
    let _ = server.wait();
    let mut held = Vec::new();
    let mut total = 0;
    for task in load {
        let (token, rotations) = task.await.unwrap();
        total += rotations;
        held.push(token);
    }
    assert!(total > 20, "the load rotated tokens before the kill ({total})");

    let server = ServerProcess::start(dir.path(), &env, &[]);
    assert_eq!(sqlite_invariants(&db).await, (0, 0), "no orphaned successor, one head per family");
    for (i, token) in held.iter().enumerate() {
        let (status, body) = refresh(&server.url("/token"), token).await.unwrap();
        if i < 4 {
            assert_eq!(status, 400, "revoked family {i} stays revoked");
        } else {
            // Either the rotation in flight never committed (so it happens now), or it committed and the
            // answer was lost (so the retry window hands back the same successor).
            assert_eq!(status, 200, "family {i}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_in_flight_when_the_server_is_killed_is_delivered_after_restart() {
    const SECRET: &str = "whsec-0123456789abcdef0123456789abcdef";
    // The receiver takes the first delivery and never answers it.
    let receiver = tessera_testkit::Receiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("TESSERA_MASTER_KEY", MASTER_KEY),
        ("TESSERA_REFRESH_RETRY_WINDOW", "0"),
        ("TESSERA_ALERTS_WEBHOOK_URL", receiver.url.as_str()),
        ("TESSERA_ALERTS_WEBHOOK_SECRET", SECRET),
    ];
    let server = ServerProcess::start(dir.path(), &env, &[]);
    let db = dir.path().join("tessera-data/tessera.db");
    let store = tessera_store::open(&format!("sqlite://{}", db.display())).await.unwrap();
    let token = seed(dir.path(), &env, &*store, 1).await.remove(0);
    assert_eq!(refresh(&server.url("/token"), &token).await.unwrap().0, 200);
    assert_eq!(refresh(&server.url("/token"), &token).await.unwrap().0, 400, "reuse");
    let hanging = receiver.wait_for(Duration::from_secs(10), |g| !g.is_empty()).await;
    assert_eq!(hanging.len(), 1, "the alert is on its way");
    server.signal("-KILL");
    let _ = server.wait();

    receiver.answer(200);
    let _server = ServerProcess::start(dir.path(), &env, &[]);
    // The dead node's lease on the alert runs out (15 s), then the new process sends it again.
    let got = receiver.wait_for(Duration::from_secs(40), |g| g.iter().any(|r| r.answered == 200)).await;
    let delivered: Vec<_> = got.iter().filter(|r| r.answered == 200).collect();
    assert_eq!(delivered.len(), 1, "delivered after the restart");
    assert_eq!(
        delivered[0].header("tessera-alert-id"),
        hanging[0].header("tessera-alert-id"),
        "the same alert"
    );
    assert!(delivered[0].signed_with(SECRET), "signed with the configured secret");
    assert_eq!(delivered[0].json()["detection"]["rule"], "refresh_token_reuse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_commands_block_list_and_lift_a_source_that_the_server_then_refuses_and_admits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let env = [("TESSERA_TRUSTED_PROXIES", "127.0.0.1")];
    let server = ServerProcess::start(d, &env, &[]);
    let from = |source: &'static str| {
        client()
            .post(server.url("/token"))
            .header("x-forwarded-for", source)
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    assert_eq!(from("203.0.113.9").await.unwrap().status(), 401, "not blocked yet");
    let (code, out, err) =
        run(d, &env, &["block", "add", "203.0.113.0/24", "--for", "2h", "--reason", "incident_42"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("203.0.113.0/24 blocked until "), "{out}");
    let (_, out, _) = run(d, &env, &["block", "list"], "");
    assert!(out.contains("203.0.113.0/24") && out.contains("incident_42"), "{out}");
    // The server follows the revocation feed: the block applies within its poll.
    let mut status = 0;
    for _ in 0..50 {
        status = from("203.0.113.9").await.unwrap().status().as_u16();
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 403, "the blocked network is refused");
    assert_eq!(from("198.51.100.1").await.unwrap().status(), 401, "others are not");
    let (code, out, err) = run(d, &env, &["block", "lift", "203.0.113.0/24"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("203.0.113.0/24 unblocked"), "{out}");
    assert_eq!(run(d, &env, &["block", "list"], "").1.trim(), "no source is blocked");
    let mut status = 0;
    for _ in 0..50 {
        status = from("203.0.113.9").await.unwrap().status().as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 401, "admitted again once lifted");
    let (code, _, err) = run(d, &env, &["block", "lift", "203.0.113.0/24"], "");
    assert_eq!((code, err.trim()), (2, "error: 203.0.113.0/24 is not blocked"));
    let (code, _, err) = run(d, &env, &["block", "add", "example.com"], "");
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1);
    let (code, out, _) = run(d, &env, &["alerts", "list"], "");
    assert_eq!((code, out.trim()), (0, "no alerts"));
    let (_, out, _) = run(d, &env, &["audit", "search", "--kind", "admin_action"], "");
    assert!(out.contains("block_source") && out.contains("lift_block"), "{out}");
}

#[test]
fn json_logs_are_one_object_per_line_and_never_show_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("TESSERA_DATABASE_URL")
        .env("TESSERA_LOG_FORMAT", "json")
        .env("TESSERA_LOG_LEVEL", "info")
        .env("TESSERA_MASTER_KEY", MASTER_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = ServerProcess { child, addr: String::new(), first_start: Vec::new() };
    let mut lines = BufReader::new(server.child.stdout.take().unwrap()).lines();
    let secret = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(at) = line.find("quickstart:") {
            break line[at + 11..].split(' ').next().unwrap().to_owned();
        }
    };
    while !lines.next().unwrap().unwrap().starts_with("tessera: listening on ") {}
    server.signal("-TERM");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(server.wait().success());
    let logs: Vec<Value> = stderr.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(logs.iter().any(|l| l["fields"]["message"] == "serving"), "{stderr}");
    assert!(logs.iter().any(|l| l["fields"]["message"].as_str().unwrap_or("").starts_with("shutting down")));
    assert!(logs.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    assert!(!stderr.contains(&secret) && !stderr.contains(MASTER_KEY), "no secret in the log");
}

/// Asks for a client_credentials token as the quickstart client (which first start creates); the token
/// response.
async fn quickstart_token(server: &ServerProcess, secret: &str) -> Value {
    let r = client()
        .post(server.url("/token"))
        .basic_auth("quickstart", Some(secret))
        .form(&[("grant_type", "client_credentials"), ("resource", "urn:tessera:quickstart")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_commands_show_search_export_and_verify_the_chain_and_name_an_edited_event() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = ServerProcess::start(d, &[], &[]);
    let curl = server.first_start.iter().find(|l| l.trim_start().starts_with("curl ")).unwrap();
    let secret = curl.split("quickstart:").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let alice = [("TESSERA_ACTOR", "alice@example")];
    assert_eq!(run(d, &alice, &["user", "add", "bob"], "a long password\n").0, 0);
    let first = quickstart_token(&server, &secret).await;
    assert!(first["access_token"].as_str().is_some_and(|t| !t.is_empty()));

    // `tail --follow` prints what is there, then new events as they are written.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["audit", "tail", "-n", "1", "--follow", "--format", "json"])
        .current_dir(d)
        .env_remove("TESSERA_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let shown = lines_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(shown.contains("\"token_issued\""), "{shown}");
    quickstart_token(&server, &secret).await;
    let next: Value = serde_json::from_str(&lines_rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(next["kind"], "token_issued");
    assert_eq!(next["client_id"], "quickstart");
    assert_eq!(next["audience"], "urn:tessera:quickstart");
    assert_eq!(next["ip"], "127.0.0.1");
    assert_eq!(next["hash"].as_str().unwrap().len(), 64);
    let jti = next["jti"].as_str().unwrap().to_owned();
    let raw = serde_json::to_string(&next).unwrap();
    assert!(!raw.contains(&secret) && !raw.contains("eyJ"), "no secret and no token in the log: {raw}");

    // Search: by token, by kind (admin actions name their actor), by time; text lines for a terminal.
    let (code, out, err) = run(d, &[], &["audit", "search", "--token", &jti], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(" token_issued ") && out.contains("client=quickstart"), "{out}");
    let (_, out, _) = run(d, &[], &["audit", "search", "--kind", "admin_action", "--since", "1h"], "");
    assert!(out.contains("reason=user_add") && out.contains("actor=alice@example"), "{out}");
    let (_, out, _) = run(d, &[], &["audit", "search", "--user", "bob", "--format", "json"], "");
    assert_eq!(out.lines().count(), 1, "bob is found by login name: {out}");
    let (_, out, _) =
        run(d, &[], &["audit", "search", "--kind", "token_issued", "--until", "2001-01-01"], "");
    assert!(out.is_empty(), "nothing that old: {out}");
    for bad in [
        &["audit", "search", "--kind", "token_issue"][..],
        &["audit", "search", "--since", "last tuesday"],
        &["audit", "search", "--ip", "not-an-ip"],
        &["audit", "tail", "-n", "0"],
    ] {
        let (code, out, err) = run(d, &[], bad, "");
        assert_eq!(code, 2, "{bad:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "), "{err}");
    }

    // Export: JSON lines, every event, to a file only its owner can read.
    let (code, out, err) =
        run(d, &[], &["audit", "export", "--format", "jsonl", "--output", "audit.jsonl"], "");
    assert_eq!(code, 0, "{err}");
    let exported = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    let events: Vec<Value> = exported.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(out.contains(&format!("exported {} events", events.len())), "{out}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "token_issued").count(), 2, "{kinds:?}");
    for pair in events.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "the export carries the chain");
        assert_eq!(pair[1]["seq"].as_i64().unwrap(), pair[0]["seq"].as_i64().unwrap() + 1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(d.join("audit.jsonl")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let (code, _, err) = run(d, &[], &["audit", "export", "--output", "audit.jsonl"], "");
    assert_eq!(code, 2, "an existing file is not overwritten");
    assert!(err.contains("audit.jsonl"), "{err}");

    // Verify, then edit one event in the database (dropping the trigger that forbids it, as someone with
    // full database access could) and verify again: the edited event is named.
    let (code, out, err) = run(d, &[], &["audit", "verify"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("audit chain intact: "), "{out}");
    let (code, out, _) = run(d, &[], &["audit", "prune"], "");
    assert_eq!(code, 0);
    assert!(out.starts_with("removed 0 events older than 365 days"), "{out}");
    server.signal("-TERM");
    assert!(server.wait().success());
    let edited = events.iter().find(|e| e["jti"] == jti.as_str()).unwrap()["seq"].as_i64().unwrap();
    let db = format!("sqlite://{}", d.join("tessera-data/tessera.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let refused = sqlx::query("UPDATE events SET client_id = 'someone-else' WHERE id = $1")
        .bind(edited)
        .execute(&pool)
        .await;
    assert!(refused.unwrap_err().to_string().contains("append-only"));
    sqlx::query("DROP TRIGGER events_no_update").execute(&pool).await.unwrap();
    sqlx::query("UPDATE events SET client_id = 'someone-else' WHERE id = $1")
        .bind(edited)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, out, err) = run(d, &[], &["audit", "verify"], "");
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err.trim(),
        format!(
            "audit chain broken at event {edited}: event {edited} does not match its hash: it was changed after it was written"
        )
    );
}

#[test]
fn incident_commands_open_contain_report_and_close_what_a_responder_types() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |args: &[&str]| {
        let (code, out, err) = run(d, &[("TESSERA_ACTOR", "cli:responder")], args, "");
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    let usage = |args: &[&str], mentions: &str| {
        let (code, out, err) = run(d, &[], args, "");
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}");
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(mentions), "{err:?} should mention {mentions:?}");
    };
    let (code, _, _) = run(d, &[], &["user", "add", "alice"], "correct horse battery staple\n");
    assert_eq!(code, 0);
    ok(&["resource", "add", "https://a.example", "--scope", "a:read"]);
    ok(&["client", "add", "batch", "--grant", "client_credentials", "--audience", "https://a.example"]);

    assert!(
        ok(&["incident", "open", "--user", "alice", "--reason", "phished"])
            .starts_with("incident 1 opened about user:")
    );
    assert!(
        ok(&["incident", "open", "--user", "alice"]).contains("incident 1 is already open"),
        "one per user"
    );
    usage(&["incident", "open", "--user", "nobody"], "no user nobody");
    usage(&["incident", "open"], "--user");
    usage(&["incident", "contain", "1", "--block-ip", "10.0.0.0/33"], "--block-ip");
    usage(&["incident", "contain", "7"], "no incident 7");

    let first =
        ok(&["incident", "contain", "1", "--reset-mfa", "--client", "batch", "--block-ip", "203.0.113.9"]);
    for step in [
        "revoke_sessions",
        "revoke_user",
        "force_password_reset",
        "reset_mfa",
        "revoke_client",
        "block_source",
    ] {
        assert!(first.contains(&format!("done     {step} ")), "{step}: {first}");
    }
    let secret = first
        .lines()
        .find_map(|l| l.split("(shown once; give it to the client's operator): ").nth(1))
        .unwrap();
    assert!(secret.starts_with("tss_"), "a new client secret, shown once");
    let second = ok(&["incident", "contain", "1", "--client", "batch"]);
    assert!(second.contains("nothing new to do") && !second.contains("tss_"), "{second}");
    assert!(ok(&["user", "show", "alice"]).contains("must reset password: yes"));

    let shown = ok(&["incident", "show", "1"]);
    assert!(
        shown.contains("contained") && shown.contains("cli:responder  rotate_client_secret client:batch"),
        "{shown}"
    );
    let json: Value = serde_json::from_str(&ok(&["incident", "show", "1", "--format", "json"])).unwrap();
    assert_eq!((json["state"].as_str(), json["reason"].as_str()), (Some("contained"), Some("phished")));
    let timeline = ok(&["incident", "timeline", "--user", "alice"]);
    assert!(
        timeline.contains("reason=revoke_user") && timeline.contains("actor=cli:responder"),
        "{timeline}"
    );
    let t: Value = serde_json::from_str(&ok(&["incident", "timeline", "1", "--format", "json"])).unwrap();
    assert!(t["entries"].as_array().unwrap().iter().any(|e| e["reason"] == "block_source"));
    usage(&["incident", "timeline", "1", "--user", "alice"], "not both");
    ok(&["incident", "timeline", "1", "--format", "html", "--output", "timeline.html"]);
    let html = std::fs::read_to_string(d.join("timeline.html")).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.contains("<svg") && !html.contains("<script"));
    let report = ok(&["incident", "report", "1"]);
    for section in ["## Summary", "## Scope", "## Root cause", "## Actions taken", "## What remains"] {
        assert!(report.contains(section), "{section}");
    }
    assert!(!report.contains(secret), "the new secret is never in a report");
    ok(&["incident", "report", "1", "--format", "html", "-o", "report.html"]);
    assert!(std::fs::read_to_string(d.join("report.html")).unwrap().contains("Incident 1"));
    assert!(ok(&["incident", "lineage", "1"]).contains("no refresh family"));

    assert!(ok(&["incident", "list"]).starts_with("1\tcontained\tuser:"));
    assert_eq!(ok(&["incident", "close", "1"]).trim(), "incident 1 closed");
    usage(&["incident", "close", "1"], "incident 1 is closed");
    usage(&["incident", "contain", "1"], "incident 1 is closed");
    assert_eq!(ok(&["incident", "list", "--state", "open"]).trim(), "no incidents");
    let reopened = ok(&["incident", "open", "--user", "alice"]);
    assert!(reopened.starts_with("incident 2 opened"), "a new one after closing: {reopened}");
}

#[test]
fn demo_plays_the_stolen_token_story_and_exits_zero_only_when_all_of_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(dir.path(), &[], &["demo"], "");
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "ok:   the token is refused at a service it was not issued for",
        "ok:   the theft is detected and alice is contained automatically",
        "ok:   the attacker is refused within a second of containment",
        "ok:   the report names the orders service as reached by the copy, and only it",
        "the demo held: 10 checks passed",
        "# Incident 1: user:u_alice",
        "<- copy",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    assert!(!out.contains("tsr_") && !out.contains("eyJ"), "no token is printed");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "the demo leaves nothing in the directory"
    );
}
