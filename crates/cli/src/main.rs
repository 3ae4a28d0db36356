//! `tessera`: the command line. It runs the authorization server (`serve`), manages its database (`migrate`,
//! `client`, `resource`), manages signing keys, and signs and verifies tokens.
//!
//! Exit codes: 0 success; 1 a token was rejected (`token verify`); 2 a usage or input error. Every error is
//! one line on stderr and never contains key material or a token.

mod admin;
mod audit;
mod block;
mod demo;
mod gateway;
mod incident;
mod keys;
mod token;
mod users;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tessera: OAuth 2.1 / OpenID Connect tokens that are close to worthless when stolen.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate, import and publish signing keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Sign and verify JWT access tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run the authorization server.
    Serve {
        #[command(flatten)]
        cfg: admin::ConfigArgs,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Issuer URL [default: http://127.0.0.1:8080].
        #[arg(long, value_name = "URL")]
        issuer: Option<String>,
    },
    /// Run the gateway: a reverse proxy that validates every request before the service sees it.
    Gateway(Box<gateway::GatewayArgs>),
    /// Apply the database migrations and exit.
    Migrate {
        #[command(flatten)]
        cfg: admin::ConfigArgs,
    },
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(admin::ConfigCommand),
    /// Manage OAuth clients.
    #[command(subcommand)]
    Client(admin::ClientCommand),
    /// Manage resource servers (audiences and their scopes).
    #[command(subcommand)]
    Resource(admin::ResourceCommand),
    /// Manage users.
    #[command(subcommand)]
    User(users::UserCommand),
    /// Revoke a token, a session, every token of a user, or every token of a client.
    Revoke(users::RevokeArgs),
    /// Read, search, export and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Block a source address or network everywhere for a time, lift a block, or list them.
    #[command(subcommand)]
    Block(block::BlockCommand),
    /// See the alert outbox: queued, delivered and given-up alerts.
    #[command(subcommand)]
    Alerts(block::AlertsCommand),
    /// Respond to a stolen token: open an incident, contain it, read its timeline, lineage and report.
    #[command(subcommand)]
    Incident(incident::IncidentCommand),
    /// Play a stolen-token story on the embedded default: detection, containment, the attacker refused, the
    /// report. Exits 0 only if all of it happened.
    Demo(demo::DemoArgs),
}

/// A failure to report: one line, and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    /// A usage or input error (exit 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }
}

/// Writes `text` and a newline to stdout. A closed pipe (`tessera ... | head`) is an error, not a panic.
pub(crate) fn emit(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::usage(format!("cannot write to stdout: {}", e.kind())))
}

/// Writes a note for the user (not the command's output) to stderr.
pub(crate) fn note(text: &str) {
    report(text);
}

/// Writes one line to stderr, ignoring failure: there is nowhere left to report it.
fn report(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Reads a file for the command, naming the file (not its contents) on error.
pub(crate) fn read_file(path: &PathBuf, what: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {what} {}: {}", path.display(), e.kind())))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            report("error: a subcommand is required; see `tessera --help`");
            return ExitCode::from(2);
        }
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = write!(std::io::stdout().lock(), "{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            report(&usage_message(&e));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Keys(cmd) => keys::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Serve { cfg, listen, issuer } => admin::serve(&cfg, listen, issuer),
        Command::Gateway(args) => gateway::run(*args),
        Command::Migrate { cfg } => admin::migrate(&cfg),
        Command::Config(cmd) => admin::config(cmd),
        Command::Client(cmd) => admin::client(cmd),
        Command::Resource(cmd) => admin::resource(cmd),
        Command::User(cmd) => users::user(cmd),
        Command::Revoke(args) => users::revoke(args),
        Command::Block(command) => block::block(command),
        Command::Alerts(command) => block::alerts(command),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Incident(cmd) => incident::run(cmd),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            if code == 2 {
                report(&format!("error: {message}"));
            } else {
                report(&message);
            }
            ExitCode::from(code)
        }
    }
}

/// One line for a command-line error that never repeats a value the user typed: a value may be a token or a
/// password typed in the wrong place. Flag names and short lower-case words (a mistyped subcommand) are shown.
fn usage_message(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    let flag_like = |s: &str| s.starts_with('-') && s.len() <= 40 && !s.contains('=');
    let word_like = |s: &str| s.len() <= 32 && s.chars().all(|c| c.is_ascii_lowercase() || c == '-');
    let see_help = "see `tessera --help`";
    match e.kind() {
        // Messages made only of argument names.
        ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict | ErrorKind::MissingSubcommand => {
            one_line(&e.to_string())
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let arg = context(ContextKind::InvalidArg).unwrap_or_else(|| "an argument".to_owned());
            match context(ContextKind::ValidValue) {
                Some(valid) => format!("error: invalid value for {arg} [possible values: {valid}]"),
                None => format!("error: invalid value for {arg}"),
            }
        }
        ErrorKind::UnknownArgument => match context(ContextKind::InvalidArg) {
            Some(arg) if flag_like(&arg) => format!("error: unexpected argument {arg}; {see_help}"),
            _ => format!("error: unexpected argument (not shown: it may be a secret); {see_help}"),
        },
        ErrorKind::InvalidSubcommand => match context(ContextKind::InvalidSubcommand) {
            Some(sub) if word_like(&sub) => format!("error: unrecognized subcommand {sub}; {see_help}"),
            _ => format!("error: unrecognized subcommand (not shown: it may be a secret); {see_help}"),
        },
        _ => format!("error: the command line could not be read; {see_help}"),
    }
}

/// Folds clap's multi-line error into one line: the message without the usage block.
fn one_line(text: &str) -> String {
    let body = text.split("\n\nUsage:").next().unwrap_or(text);
    let body = body.split("\n\nFor more information").next().unwrap_or(body);
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}
