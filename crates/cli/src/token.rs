//! `tessera token`: verify an access token read on stdin, or sign one for testing.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Subcommand, ValueEnum};
use tessera_token::{
    AccessClaims, Audience, KeySet, Rejection, TokenType, UnixTime, Validation, VerifyingKey,
    validate_access_token,
};
use zeroize::Zeroizing;

use crate::keys::load_private;
use crate::{Failure, emit, read_file};

/// The most bytes read from stdin; anything longer is refused by the token size limit anyway.
const STDIN_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Verify a token read on stdin. Prints the validated claims as JSON and exits 0, or prints the
    /// rejection's name and exits 1.
    Verify {
        /// The public keys: a JWKS file, or a single public JWK.
        #[arg(long, value_name = "FILE")]
        jwks: PathBuf,
        /// The exact issuer expected in `iss`.
        #[arg(long, value_name = "ISS")]
        issuer: String,
        /// This service's audience, which `aud` must contain.
        #[arg(long, value_name = "AUD")]
        audience: String,
        /// The header `typ` expected.
        #[arg(long, value_enum, default_value_t = TypArg::AtJwt)]
        typ: TypArg,
        /// Validate at this time (seconds since the epoch) instead of now.
        #[arg(long, value_name = "UNIX_SECONDS")]
        now: Option<u64>,
        /// Allowed clock skew in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = tessera_token::validate::DEFAULT_LEEWAY_SECS)]
        leeway: u64,
        /// The oldest `iat` accepted, in seconds before now.
        #[arg(long, value_name = "SECONDS", default_value_t = tessera_token::validate::DEFAULT_MAX_AGE_SECS)]
        max_age: u64,
    },
    /// Sign an access token (for testing a resource server) and print it.
    Sign {
        /// The private JWK file to sign with.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The issuer (`iss`).
        #[arg(long, value_name = "ISS")]
        issuer: String,
        /// The audience (`aud`).
        #[arg(long, value_name = "AUD")]
        audience: String,
        /// The subject (`sub`).
        #[arg(long, value_name = "SUB")]
        subject: String,
        /// The client (`client_id`).
        #[arg(long, value_name = "CLIENT_ID")]
        client_id: String,
        /// Space-separated scopes.
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime in seconds, at most 900.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        ttl: u64,
        /// Issue at this time (seconds since the epoch) instead of now.
        #[arg(long, value_name = "UNIX_SECONDS")]
        now: Option<u64>,
    },
}

/// A header `typ` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TypArg {
    #[value(name = "at+jwt")]
    AtJwt,
    #[value(name = "dpop+jwt")]
    DpopJwt,
    #[value(name = "JWT")]
    Jwt,
}

impl From<TypArg> for TokenType {
    fn from(t: TypArg) -> Self {
        match t {
            TypArg::AtJwt => Self::AccessToken,
            TypArg::DpopJwt => Self::DpopProof,
            TypArg::Jwt => Self::IdToken,
        }
    }
}

/// The system clock: the only place the CLI reads it.
#[allow(clippy::disallowed_methods, reason = "the command line's one clock read")]
fn system_now() -> Result<u64, Failure> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| Failure::usage("the system clock is before 1970"))
}

/// Reads a JWKS, or a single public JWK. The text is wiped after use: a mistaken `--jwks` may name a private
/// key, and it must not linger in memory.
fn load_keys(path: &PathBuf) -> Result<KeySet, Failure> {
    /// Tells a set from a single key without copying any member value.
    #[derive(serde::Deserialize)]
    struct Probe {
        keys: Option<serde::de::IgnoredAny>,
    }
    let text = Zeroizing::new(read_file(path, "JWKS")?);
    let is_set = serde_json::from_str::<Probe>(&text).map_or(true, |p| p.keys.is_some());
    let keys = if is_set {
        KeySet::from_jwks(&text)
    } else {
        VerifyingKey::from_jwk(&text, None).map(|k| [k].into_iter().collect())
    };
    keys.map_err(|e| Failure::usage(format!("cannot load keys from {}: {e}", path.display())))
}

/// A refused token: its stable name on stderr, exit 1.
fn rejected(rejection: Rejection) -> Failure {
    Failure { code: 1, message: rejection.name().to_owned() }
}

/// Reads the token from stdin. Bytes that are not UTF-8 are a malformed token, not a usage error.
fn read_token() -> Result<String, Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(STDIN_LIMIT)
        .read_to_end(&mut input)
        .map_err(|e| Failure::usage(format!("cannot read the token from stdin: {}", e.kind())))?;
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::usage("no token on stdin"));
    }
    if input.len() as u64 >= STDIN_LIMIT {
        return Err(rejected(Rejection::TooLarge));
    }
    String::from_utf8(input).map_err(|_| rejected(Rejection::Malformed))
}

pub(crate) fn run(cmd: TokenCommand) -> Result<(), Failure> {
    match cmd {
        TokenCommand::Verify { jwks, issuer, audience, typ, now, leeway, max_age } => {
            if issuer.is_empty() || audience.is_empty() {
                return Err(Failure::usage("--issuer and --audience must not be empty"));
            }
            let keys = load_keys(&jwks)?;
            let input = read_token()?;
            let token = input.trim();
            let mut policy = Validation::access_token(issuer, audience);
            policy.typ = typ.into();
            policy.leeway_secs = leeway;
            policy.max_age_secs = max_age;
            let now = match now {
                Some(now) => now,
                None => system_now()?,
            };
            match validate_access_token(token, &keys, &policy, UnixTime(now)) {
                Ok(claims) => {
                    let text = serde_json::to_string_pretty(&claims)
                        .map_err(|_| Failure::usage("cannot serialize the claims"))?;
                    emit(&text)
                }
                Err(rejection) => Err(rejected(rejection)),
            }
        }
        TokenCommand::Sign { key, issuer, audience, subject, client_id, scope, ttl, now } => {
            if ttl == 0 || ttl > 900 {
                return Err(Failure::usage("--ttl must be between 1 and 900 seconds"));
            }
            let key = load_private(&key)?;
            let now = match now {
                Some(now) => now,
                None => system_now()?,
            };
            let mut jti = [0u8; 16];
            aws_lc_rs::rand::fill(&mut jti).map_err(|_| Failure::usage("no randomness available"))?;
            let claims = AccessClaims {
                iss: issuer,
                sub: subject,
                aud: Audience::one(audience),
                exp: now.saturating_add(ttl),
                iat: now,
                nbf: Some(now),
                jti: tessera_token::b64::encode(&jti),
                client_id,
                scope,
                sid: None,
                roles: Vec::new(),
                auth_time: None,
                amr: Vec::new(),
                acr: None,
                cnf: None,
                act: None,
                origin: Vec::new(),
                extra: serde_json::Map::new(),
            };
            let token = key
                .sign_jwt(TokenType::AccessToken.as_str(), &claims)
                .map_err(|e| Failure::usage(format!("cannot sign: {e}")))?;
            emit(&token)
        }
    }
}
