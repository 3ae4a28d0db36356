//! `tessera keys`: the server's signing keys (`list`, `rotate`, `import`, kept sealed in its database) and
//! standalone key files (`generate`, `convert`, `jwks`) for testing resource servers without a server.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use tessera_server::crypto::Kek;
use tessera_server::keyring::{self, RotationMode};
use tessera_token::{Algorithm, KeySet, RsaBits, SigningKey};

use tessera_core::{Event, EventKind};
use tessera_store::Store;

use crate::admin::{ConfigArgs, record, store_failure, with_store};
use crate::{Failure, emit, read_file};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Generate a private signing key as a JWK file (mode 0600) and print its kid.
    Generate {
        /// The signature algorithm the key is bound to.
        #[arg(long, value_enum, default_value_t = AlgArg::EdDSA)]
        alg: AlgArg,
        /// Where to write the private JWK. An existing file is never overwritten; a missing directory is
        /// created, readable by its owner only.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// RSA modulus size, for RS256 and PS256.
        #[arg(long, value_name = "BITS", default_value_t = 2048)]
        rsa_bits: u32,
    },
    /// Convert an unencrypted PKCS#8 PEM private key into a private JWK file (mode 0600).
    Convert {
        /// The signature algorithm the key is bound to (required: RSA keys fit RS256 and PS256 alike).
        #[arg(long, value_enum)]
        alg: AlgArg,
        /// The PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`).
        #[arg(long, value_name = "FILE")]
        pem: PathBuf,
        /// Where to write the private JWK. An existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public JWKS of one or more private JWK files.
    Jwks {
        /// Private JWK files, as written by `keys generate`.
        #[arg(required = true, value_name = "FILE")]
        keys: Vec<PathBuf>,
    },
    /// List the server's signing keys and their states (next, current, retired, revoked).
    List {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Rotate the server's signing key. By default the new key is published now and signs once it has been
    /// published for key_publish_delay; --now switches at once; --emergency also revokes the old key at
    /// every guard (for a compromised key).
    Rotate {
        /// Algorithm of the new key [default: signing_alg].
        #[arg(long, value_enum)]
        alg: Option<AlgArg>,
        /// Switch to the new key at once; the old key stays published until its tokens expire.
        #[arg(long, conflicts_with = "emergency")]
        now: bool,
        /// Switch at once and revoke the old key: every token it signed stops working.
        #[arg(long)]
        emergency: bool,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Import an existing private key (PKCS#8 PEM or private JWK) into the server; it becomes current.
    Import {
        /// The key file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The algorithm to bind the key to [default: from the JWK's alg; EdDSA or ES256 from the key type;
        /// RS256 for RSA].
        #[arg(long, value_enum)]
        alg: Option<AlgArg>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

/// A signature algorithm on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AlgArg {
    #[value(name = "EdDSA")]
    EdDSA,
    #[value(name = "ES256")]
    ES256,
    #[value(name = "RS256")]
    RS256,
    #[value(name = "PS256")]
    PS256,
}

impl From<AlgArg> for Algorithm {
    fn from(a: AlgArg) -> Self {
        match a {
            AlgArg::EdDSA => Self::EdDSA,
            AlgArg::ES256 => Self::ES256,
            AlgArg::RS256 => Self::RS256,
            AlgArg::PS256 => Self::PS256,
        }
    }
}

pub(crate) fn run(cmd: KeysCommand) -> Result<(), Failure> {
    match cmd {
        KeysCommand::Generate { alg, out, rsa_bits } => {
            let bits = match rsa_bits {
                2048 => RsaBits::B2048,
                3072 => RsaBits::B3072,
                4096 => RsaBits::B4096,
                other => {
                    return Err(Failure::usage(format!(
                        "--rsa-bits must be 2048, 3072 or 4096, not {other}"
                    )));
                }
            };
            let key = SigningKey::generate_rsa(alg.into(), bits)
                .map_err(|e| Failure::usage(format!("cannot generate key: {e}")))?;
            write_private(&key, &out)?;
            emit(key.kid())
        }
        KeysCommand::Convert { alg, pem, out } => {
            let text = zeroize::Zeroizing::new(read_file(&pem, "PEM file")?);
            let key = SigningKey::from_pkcs8_pem(&text, alg.into())
                .map_err(|e| Failure::usage(format!("cannot import {}: {e}", pem.display())))?;
            write_private(&key, &out)?;
            emit(key.kid())
        }
        KeysCommand::Jwks { keys } => {
            let mut set = KeySet::new();
            for path in &keys {
                set.try_insert(load_private(path)?.verifying_key().clone()).map_err(|_| {
                    Failure::usage(format!(
                        "{} has the same kid as an earlier key; a JWKS needs one key per kid",
                        path.display()
                    ))
                })?;
            }
            let text = serde_json::to_string_pretty(&set.to_jwks())
                .map_err(|_| Failure::usage("cannot serialize the JWKS"))?;
            emit(&text)
        }
        KeysCommand::List { cfg } => with_store(&cfg, |store, _| async move {
            let mut lines = vec![format!(
                "{:<44} {:<6} {:<8} {:<12} {:<12} RETIRED",
                "KID", "ALG", "STATE", "CREATED", "ACTIVATED"
            )];
            for k in store.list_keys().await.map_err(store_failure)? {
                let opt = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
                lines.push(format!(
                    "{:<44} {:<6} {:<8} {:<12} {:<12} {}",
                    k.kid,
                    k.alg,
                    k.state.as_str(),
                    k.created_at,
                    opt(k.activated_at),
                    opt(k.retired_at)
                ));
            }
            emit(&lines.join("\n"))
        }),
        KeysCommand::Rotate { alg, now, emergency, cfg } => with_store(&cfg, |store, config| async move {
            let kek = load_kek(&config)?;
            let alg = alg.map_or_else(|| config.signing_algorithm(), Algorithm::from);
            let mode = match (now, emergency) {
                (_, true) => RotationMode::Emergency,
                (true, false) => RotationMode::Immediate,
                (false, false) => RotationMode::Scheduled,
            };
            let record = keyring::rotate(&*store, &kek, alg, mode, tessera_server::now())
                .await
                .map_err(key_failure)?;
            let how = match mode {
                RotationMode::Scheduled => "scheduled",
                RotationMode::Immediate => "immediate",
                RotationMode::Emergency => "emergency",
            };
            key_event(&*store, how, &record.kid, alg).await?;
            emit(&match mode {
                RotationMode::Scheduled => format!(
                    "key {} ({alg}) published; it starts signing in {} s (key_publish_delay)",
                    record.kid, config.key_publish_delay
                ),
                RotationMode::Immediate => format!(
                    "key {} ({alg}) is now current; the old key stays published until its tokens expire",
                    record.kid
                ),
                RotationMode::Emergency => format!(
                    "key {} ({alg}) is now current; the old key is revoked at every guard",
                    record.kid
                ),
            })
        }),
        KeysCommand::Import { file, alg, cfg } => {
            let text = zeroize::Zeroizing::new(read_file(&file, "key file")?);
            let key = parse_any_private(&text, alg.map(Algorithm::from))
                .map_err(|e| Failure::usage(format!("cannot import {}: {e}", file.display())))?;
            with_store(&cfg, |store, config| async move {
                let kek = load_kek(&config)?;
                let record =
                    keyring::import(&*store, &kek, &key, tessera_server::now()).await.map_err(key_failure)?;
                key_event(&*store, "imported", &record.kid, key.alg()).await?;
                emit(&format!("key {} ({}) imported and current", record.kid, record.alg))
            })
        }
    }
}

/// Records a key change in the audit log: how, which key (by `kid`, never its material), which algorithm.
async fn key_event(store: &dyn Store, how: &str, kid: &str, alg: Algorithm) -> Result<(), Failure> {
    let detail = serde_json::json!({ "kid": kid, "alg": alg.as_str() }).to_string();
    let event = Event {
        reason: Some(how.to_owned()),
        detail: Some(detail),
        ..Event::new(EventKind::KeyRotated, tessera_server::now())
    };
    record(store, event).await
}

fn load_kek(config: &tessera_server::Config) -> Result<Kek, Failure> {
    Kek::load_or_create(&config.master_key, &config.data_dir)
        .map(|(kek, _)| kek)
        .map_err(|e| Failure::usage(e.0))
}

fn key_failure(e: keyring::KeyringError) -> Failure {
    match e {
        keyring::KeyringError::Store(e) => store_failure(e),
        keyring::KeyringError::Keys(why) => Failure::usage(why),
    }
}

/// A private key from a private JWK or PKCS#8 PEM; without `alg`, the JWK's own, or the one the key type
/// implies (RSA: RS256).
fn parse_any_private(text: &str, alg: Option<Algorithm>) -> Result<SigningKey, String> {
    if text.trim_start().starts_with('{') {
        return SigningKey::from_jwk(text, alg).map_err(|e| e.to_string());
    }
    if let Some(alg) = alg {
        return SigningKey::from_pkcs8_pem(text, alg).map_err(|e| e.to_string());
    }
    [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256]
        .into_iter()
        .find_map(|alg| SigningKey::from_pkcs8_pem(text, alg).ok())
        .ok_or_else(|| "not a PKCS#8 PEM private key of a supported type".to_owned())
}

/// Reads a private JWK file.
pub(crate) fn load_private(path: &PathBuf) -> Result<SigningKey, Failure> {
    let text = zeroize::Zeroizing::new(read_file(path, "key file")?);
    SigningKey::from_jwk(&text, None)
        .map_err(|e| Failure::usage(format!("cannot load key {}: {e}", path.display())))
}

/// Writes the private JWK to a new file readable by its owner only, creating a missing parent directory
/// (mode 0700).
fn write_private(key: &SigningKey, out: &PathBuf) -> Result<(), Failure> {
    let jwk = key.to_private_jwk().map_err(|e| Failure::usage(format!("cannot serialize key: {e}")))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent).map_err(|e| {
            Failure::usage(format!("cannot create directory {}: {}", parent.display(), e.kind()))
        })?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(out)
        .map_err(|e| Failure::usage(format!("cannot create {}: {}", out.display(), e.kind())))?;
    file.write_all(jwk.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| Failure::usage(format!("cannot write {}: {}", out.display(), e.kind())))
}
