//! The `tessera` binary as a user runs it: exit codes, one-line errors, files it writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly by design")]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use tessera_token::{Algorithm, SigningKey};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tessera` with `stdin` and the given stdout.
fn spawn(dir: &Path, args: &[&str], stdin: &[u8], stdout: Stdio) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit without reading all of stdin (a usage error, the 64 KiB cap): that is its right.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn tessera(dir: &Path, args: &[&str], stdin: &str) -> Run {
    let out = spawn(dir, args, stdin.as_bytes(), Stdio::piped());
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Asserts a usage error: exit 2 and exactly one line on stderr.
fn assert_usage_error(run: &Run, mentions: &str) {
    assert_eq!(run.code, 2, "stderr: {}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {:?}", run.stderr);
    assert!(run.stderr.contains(mentions), "{:?} should mention {mentions:?}", run.stderr);
    assert!(run.stdout.is_empty());
}

const NOW: &str = "1700000000";
const LATER: &str = "1700000100";

/// A directory with a key, its public JWKS, and a token signed at NOW for audience "orders".
fn setup(alg: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let generated = tessera(dir.path(), &["keys", "generate", "--alg", alg, "--out", "key.jwk"], "");
    assert_eq!(generated.code, 0, "{}", generated.stderr);
    let jwks = tessera(dir.path(), &["keys", "jwks", "key.jwk"], "");
    assert_eq!(jwks.code, 0, "{}", jwks.stderr);
    std::fs::write(dir.path().join("jwks.json"), jwks.stdout).unwrap();
    let signed = tessera(
        dir.path(),
        &[
            "token",
            "sign",
            "--key",
            "key.jwk",
            "--issuer",
            "https://id.test",
            "--audience",
            "orders",
            "--subject",
            "alice",
            "--client-id",
            "web",
            "--scope",
            "orders:read",
            "--now",
            NOW,
        ],
        "",
    );
    assert_eq!(signed.code, 0, "{}", signed.stderr);
    (dir, signed.stdout)
}

/// `token verify` against the set-up's JWKS and issuer, with `extra` flags.
fn verify_args<'a>(audience: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args =
        vec!["token", "verify", "--jwks", "jwks.json", "--issuer", "https://id.test", "--audience", audience];
    args.extend_from_slice(extra);
    args
}

fn verify(dir: &Path, token: &str, audience: &str) -> Run {
    tessera(dir, &verify_args(audience, &["--now", LATER]), token)
}

#[test]
fn keys_generate_writes_an_owner_only_private_jwk_and_prints_its_kid() {
    for alg in ["EdDSA", "ES256", "RS256", "PS256"] {
        let dir = tempfile::tempdir().unwrap();
        let run = tessera(dir.path(), &["keys", "generate", "--alg", alg, "--out", "k.jwk"], "");
        assert_eq!(run.code, 0, "{}", run.stderr);
        let path = dir.path().join("k.jwk");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{alg}");
        }
        let jwk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(jwk["alg"], alg);
        assert!(jwk.get("d").is_some(), "a private JWK");
        assert_eq!(run.stdout.trim(), jwk["kid"].as_str().unwrap());
        // The kid printed is the one the key reads back with.
        let key = SigningKey::from_jwk(&std::fs::read_to_string(&path).unwrap(), None).unwrap();
        assert_eq!(key.kid(), run.stdout.trim());
    }
}

#[test]
fn keys_generate_creates_a_missing_data_directory_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let run = tessera(dir.path(), &["keys", "generate", "--out", "tessera-data/signing-key.jwk"], "");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let data = dir.path().join("tessera-data");
    assert!(data.join("signing-key.jwk").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    }
}

#[test]
fn keys_generate_never_overwrites_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.jwk"), "precious").unwrap();
    let run = tessera(dir.path(), &["keys", "generate", "--out", "k.jwk"], "");
    assert_usage_error(&run, "k.jwk");
    assert_eq!(std::fs::read_to_string(dir.path().join("k.jwk")).unwrap(), "precious");
}

#[test]
fn token_verify_prints_the_validated_claims_and_exits_0() {
    for alg in ["EdDSA", "ES256", "RS256", "PS256"] {
        let (dir, token) = setup(alg);
        let run = verify(dir.path(), &token, "orders");
        assert_eq!(run.code, 0, "{alg}: {}", run.stderr);
        let claims: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], "orders");
        assert_eq!(claims["scope"], "orders:read");
        assert_eq!(claims["iat"], 1_700_000_000);
    }
}

#[test]
fn token_verify_prints_the_rejection_name_and_exits_1() {
    let (dir, token) = setup("EdDSA");
    let run = verify(dir.path(), &token, "billing");
    assert_eq!((run.code, run.stderr.trim(), run.stdout.as_str()), (1, "wrong_audience", ""));

    let expired = tessera(dir.path(), &verify_args("orders", &["--now", "1800000000"]), &token);
    assert_eq!((expired.code, expired.stderr.trim()), (1, "expired"));

    let mut parts: Vec<&str> = token.trim().split('.').collect();
    let other = "eyJzdWIiOiJhZG1pbiJ9";
    parts[1] = other;
    let tampered = verify(dir.path(), &parts.join("."), "orders");
    assert_eq!((tampered.code, tampered.stderr.trim()), (1, "bad_signature"));

    let none = verify(dir.path(), "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.", "orders");
    assert_eq!((none.code, none.stderr.trim()), (1, "unsupported_algorithm"));

    let typ = tessera(dir.path(), &verify_args("orders", &["--now", LATER, "--typ", "JWT"]), &token);
    assert_eq!((typ.code, typ.stderr.trim()), (1, "wrong_typ"));
}

#[test]
fn token_verify_usage_errors_are_one_line_and_exit_2() {
    let (dir, token) = setup("EdDSA");
    let missing = tessera(
        dir.path(),
        &["token", "verify", "--jwks", "nope.json", "--issuer", "i", "--audience", "a"],
        &token,
    );
    assert_usage_error(&missing, "nope.json");

    let no_flag = tessera(dir.path(), &["token", "verify", "--jwks", "jwks.json"], &token);
    assert_usage_error(&no_flag, "--issuer");

    let bad_now = tessera(
        dir.path(),
        &["token", "verify", "--jwks", "jwks.json", "--issuer", "i", "--audience", "a", "--now", "yesterday"],
        &token,
    );
    assert_usage_error(&bad_now, "--now");

    let empty = tessera(
        dir.path(),
        &["token", "verify", "--jwks", "jwks.json", "--issuer", "i", "--audience", "a"],
        "",
    );
    assert_usage_error(&empty, "no token");

    // A private key file offered as the JWKS is refused, not used.
    let private = tessera(
        dir.path(),
        &["token", "verify", "--jwks", "key.jwk", "--issuer", "i", "--audience", "a"],
        &token,
    );
    assert_usage_error(&private, "private key material");

    let bad_alg = tessera(dir.path(), &["keys", "generate", "--alg", "HS256", "--out", "h.jwk"], "");
    assert_usage_error(&bad_alg, "--alg");
    assert!(bad_alg.stderr.contains("EdDSA, ES256, RS256, PS256"), "{}", bad_alg.stderr);

    let unknown = tessera(dir.path(), &["frobnicate"], "");
    assert_usage_error(&unknown, "frobnicate");
}

#[test]
fn keys_convert_reads_a_pkcs8_pem_with_its_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    std::fs::write(dir.path().join("k.pem"), key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    let run =
        tessera(dir.path(), &["keys", "convert", "--alg", "ES256", "--pem", "k.pem", "--out", "k.jwk"], "");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), key.kid());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("k.jwk")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let wrong =
        tessera(dir.path(), &["keys", "convert", "--alg", "EdDSA", "--pem", "k.pem", "--out", "e.jwk"], "");
    assert_usage_error(&wrong, "k.pem");
    assert!(!dir.path().join("e.jwk").exists());
}

#[test]
fn help_and_version_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    for args in
        [&["--help"][..], &["token", "verify", "--help"], &["keys", "generate", "--help"], &["--version"]]
    {
        let run = tessera(dir.path(), args, "");
        assert_eq!(run.code, 0, "{args:?}");
        assert!(!run.stdout.is_empty());
    }
}

#[test]
fn key_loading_errors_never_echo_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let jwk: serde_json::Value = serde_json::from_str(&key.to_private_jwk().unwrap()).unwrap();
    let d = jwk["d"].as_str().unwrap().to_owned();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = jwk.clone();
        f(&mut v);
        v
    };
    let variants = [
        (
            "no-alg-rsa.jwk",
            edit(&|v| {
                v["kty"] = "RSA".into();
                v.as_object_mut().unwrap().remove("alg");
            }),
        ),
        ("bad-use.jwk", edit(&|v| v["use"] = "enc\nmore".into())),
        ("bad-alg.jwk", edit(&|v| v["alg"] = "HS256".into())),
        ("bad-kty.jwk", edit(&|v| v["kty"] = "XX".into())),
        ("bad-d.jwk", edit(&|v| v["d"] = format!("{}!", v["d"].as_str().unwrap()).into())),
    ];
    for (name, value) in variants {
        std::fs::write(dir.path().join(name), value.to_string()).unwrap();
        let run = tessera(
            dir.path(),
            &[
                "token",
                "sign",
                "--key",
                name,
                "--issuer",
                "i",
                "--audience",
                "a",
                "--subject",
                "s",
                "--client-id",
                "c",
            ],
            "",
        );
        assert_usage_error(&run, name);
        assert!(!run.stderr.contains(&d[..12]), "{name}: {}", run.stderr);
    }
    let pem = key.to_pkcs8_pem().unwrap();
    let broken: Vec<String> =
        pem.lines().map(|l| if l.starts_with("-----") { l.to_owned() } else { format!("{l}!") }).collect();
    std::fs::write(dir.path().join("broken.pem"), broken.join("\n")).unwrap();
    let run = tessera(
        dir.path(),
        &["keys", "convert", "--alg", "EdDSA", "--pem", "broken.pem", "--out", "x.jwk"],
        "",
    );
    assert_usage_error(&run, "broken.pem");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!run.stderr.contains(&body[..16]));
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let (dir, token) = setup("EdDSA");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let args = verify_args("orders", &["--now", LATER]);
    let out = spawn(dir.path(), &args, token.as_bytes(), writer.into());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn bytes_that_are_not_a_token_are_a_rejection_not_a_usage_error() {
    let (dir, _) = setup("EdDSA");
    let args = ["token", "verify", "--jwks", "jwks.json", "--issuer", "i", "--audience", "a"];
    let out = spawn(dir.path(), &args, b"eyJ\xff\xfe.abc.def", Stdio::piped());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8(out.stderr).unwrap().trim(), "malformed_token");
    let huge = "a".repeat(100 * 1024);
    let run = tessera(
        dir.path(),
        &["token", "verify", "--jwks", "jwks.json", "--issuer", "i", "--audience", "a"],
        &huge,
    );
    assert_eq!((run.code, run.stderr.trim()), (1, "token_too_large"));
}

#[test]
fn a_missing_subcommand_is_a_one_line_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&[][..], &["keys"], &["token"]] {
        let run = tessera(dir.path(), args, "");
        assert_usage_error(&run, "subcommand");
    }
}

#[test]
fn blank_issuer_or_audience_is_a_usage_error() {
    let (dir, token) = setup("EdDSA");
    let run = tessera(
        dir.path(),
        &["token", "verify", "--jwks", "jwks.json", "--issuer", "", "--audience", "orders"],
        &token,
    );
    assert_usage_error(&run, "must not be empty");
}

#[test]
fn command_line_errors_never_repeat_a_value_that_may_be_a_secret() {
    let (dir, token) = setup("EdDSA");
    let token = token.trim();
    for args in [
        vec!["token", "verify", "--jwks", "jwks.json", "--issuer", "i", "--audience", "a", token],
        vec!["token", "verify", "--jwks", "jwks.json", "--issuer", "i", "--audience", "a", "--now", token],
        vec![token],
        vec!["keys", "generate", "--alg", "S3cret-Passw0rd", "--out", "x.jwk"],
    ] {
        let run = tessera(dir.path(), &args, "");
        assert_eq!(run.code, 2);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(!run.stderr.contains(&token[..20]) && !run.stderr.contains("S3cret"), "{}", run.stderr);
    }
    // Flag names are still shown, so that typos are easy to fix.
    let typo = tessera(dir.path(), &["token", "verify", "--jwks", "jwks.json", "--isuer", "i"], "");
    assert_usage_error(&typo, "--isuer");
}

#[test]
fn keys_jwks_refuses_two_keys_with_one_kid() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = SigningKey::generate(Algorithm::RS256).unwrap();
    std::fs::write(dir.path().join("rsa.pem"), rsa.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    for (alg, out) in [("RS256", "rs.jwk"), ("PS256", "ps.jwk")] {
        let run =
            tessera(dir.path(), &["keys", "convert", "--alg", alg, "--pem", "rsa.pem", "--out", out], "");
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let run = tessera(dir.path(), &["keys", "jwks", "rs.jwk", "ps.jwk"], "");
    assert_usage_error(&run, "same kid");
}

#[test]
fn gateway_refuses_bad_configuration_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nscope = [\"x\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("secret"), "tsc_secret\n").unwrap();
    let base = [
        "gateway",
        "--issuer",
        "http://127.0.0.1:1",
        "--audience",
        "https://orders.example",
        "--listen",
        "127.0.0.1:0",
        "--client-id",
        "orders-gateway",
        "--client-secret-file",
        "secret",
    ];
    let cases: [(&[&str], &str); 4] = [
        (&["--upstream", "http://127.0.0.1:2"], "error: policy is required"),
        (&["--upstream", "ftp://x", "--policy", "policy.toml"], "error: upstream must be an http:// URL"),
        (
            &["--upstream", "http://127.0.0.1:2", "--policy", "missing.toml"],
            "error: missing.toml: cannot read",
        ),
        (
            &["--upstream", "http://127.0.0.1:2", "--policy", "policy.toml"],
            "error: policy.toml line 4: unknown field `scope`",
        ),
    ];
    for (extra, want) in cases {
        let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
        let run = tessera(dir.path(), &args, "");
        assert_eq!(run.code, 2, "{extra:?}: {}", run.stderr);
        assert!(run.stderr.starts_with(want), "{extra:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(!run.stderr.contains("tsc_secret"));
    }
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "issuer = \"http://127.0.0.1:1\"\nlisten = 8080\n").unwrap();
    let run = tessera(dir.path(), &["gateway", "--config", "gateway.toml"], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.starts_with("error: gateway.toml line 2:"), "{}", run.stderr);
}
