//! `tessera keys`: generate a signing key, import one from PKCS#8 PEM, publish the public JWKS.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use tessera_token::{Algorithm, KeySet, RsaBits, SigningKey};

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
    /// Import an unencrypted PKCS#8 PEM private key into a private JWK file (mode 0600).
    Import {
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
        KeysCommand::Import { alg, pem, out } => {
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
    }
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
