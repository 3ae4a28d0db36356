//! The server commands: `serve`, `migrate`, `config check`, and the management of clients and resources.
//! They read the same configuration as the server and write to the same database, so a change takes effect
//! on a running server at its next request.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use tessera_core::flow::is_registrable_redirect_uri;
use tessera_core::mfa::MfaPolicy;
use tessera_core::{ClientKind, GrantType, SecretKind};
use tessera_core::{Event, EventKind};
use tessera_server::{Config, Overrides, crypto};
use tessera_store::{Client, Resource, Store, StoreError};

use crate::{Failure, emit};

/// Who is running this command, for the audit log: `TESSERA_ACTOR` if set (automation naming the person
/// behind it), else `cli:` and the login name (`SUDO_USER` first, so `sudo` does not hide who it was).
pub(crate) fn actor() -> String {
    let clean = |v: String| {
        let v: String = v.chars().filter(|c| !c.is_control()).take(64).collect();
        (!v.trim().is_empty()).then_some(v)
    };
    if let Some(actor) = std::env::var("TESSERA_ACTOR").ok().and_then(clean) {
        return actor;
    }
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|var| std::env::var(var).ok().and_then(clean))
        .unwrap_or_else(|| "unknown".to_owned());
    format!("cli:{user}")
}

/// An admin action named `action` (`client_add`, `user_disable`, …), now.
pub(crate) fn admin_event(action: &str) -> Event {
    Event { reason: Some(action.to_owned()), ..Event::new(EventKind::AdminAction, tessera_server::now()) }
}

/// Writes what an operator did, with who did it, to the audit log. The change itself is already committed;
/// if the log cannot be written the command still fails, so that the operator knows.
pub(crate) async fn record(store: &dyn Store, event: Event) -> Result<(), Failure> {
    let event = Event { actor: Some(actor()), outcome: Some("success".into()), ..event };
    store.append_event(&event).await.map_err(|e| {
        Failure::usage(format!("the change was made, but the audit log could not be written: {e}"))
    })
}

/// Where the configuration comes from; shared by every server command.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConfigArgs {
    /// TOML configuration file; every key can also be set as a TESSERA_* environment variable.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (SQLite database, master.key) [default: ./tessera-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL (postgres://…) instead of SQLite in the data directory.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

impl ConfigArgs {
    pub(crate) fn load(&self, listen: Option<String>, issuer: Option<String>) -> Result<Config, Failure> {
        let flags = Overrides {
            listen,
            issuer,
            database_url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
        };
        Config::load(self.config.as_deref(), std::env::vars(), &flags).map_err(|e| Failure::usage(e.0))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the effective configuration (file, environment and flags applied) with secrets redacted.
    Check {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Address to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Issuer URL.
        #[arg(long, value_name = "URL")]
        issuer: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Register a client. A confidential client's secret is generated and shown once.
    Add(Box<ClientAdd>),
    /// List clients.
    List {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Show one client.
    Show {
        /// The client id.
        id: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Generate a new secret for a confidential client (shown once); the old one stops working at once.
    /// This also switches client_secret_basic and client_secret_post back on for a client without one.
    RotateSecret {
        /// The client id.
        id: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Register or replace a confidential client's public keys (a JWKS file) for private_key_jwt.
    SetJwks {
        /// The client id.
        id: String,
        /// The JWKS file ({"keys":[...]}, public keys only, at most 8).
        file: PathBuf,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Replace the audiences a confidential client serves (the tokens its service receives); none clears it.
    SetServes {
        /// The client id.
        id: String,
        /// An audience (registered resource) it serves.
        #[arg(value_name = "AUDIENCE")]
        audiences: Vec<String>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Set when the client's users must show a second factor.
    SetMfa {
        /// The client id.
        id: String,
        /// required, risky or off.
        #[arg(value_enum, value_name = "POLICY")]
        policy: MfaArg,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Switch client_secret_basic and client_secret_post off for a client with registered keys: its secret
    /// is deleted, so only private_key_jwt authenticates it.
    RemoveSecret {
        /// The client id.
        id: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Disable a client and revoke every token issued to it.
    Disable {
        /// The client id.
        id: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

/// A grant type on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum GrantArg {
    #[value(name = "authorization_code")]
    AuthorizationCode,
    #[value(name = "refresh_token")]
    RefreshToken,
    #[value(name = "client_credentials")]
    ClientCredentials,
    #[value(name = "token_exchange", alias = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange,
}

impl From<GrantArg> for GrantType {
    fn from(g: GrantArg) -> Self {
        match g {
            GrantArg::AuthorizationCode => GrantType::AuthorizationCode,
            GrantArg::RefreshToken => GrantType::RefreshToken,
            GrantArg::ClientCredentials => GrantType::ClientCredentials,
            GrantArg::TokenExchange => GrantType::TokenExchange,
        }
    }
}

/// Whether a client's tokens must be DPoP-bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DpopArg {
    /// Every token request must carry a DPoP proof; tokens are bound to its key.
    Required,
    /// A request with a proof gets bound tokens; one without gets bearer tokens.
    Optional,
}

/// When a client's users must show a second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MfaArg {
    /// At every sign-in; a user without a factor enrols one first.
    Required,
    /// When the sign-in looks risky: a new device, among other signals (the default).
    Risky,
    /// Never asked for by this client's sign-ins (a request's acr_values still can).
    Off,
}

impl From<MfaArg> for MfaPolicy {
    fn from(arg: MfaArg) -> Self {
        match arg {
            MfaArg::Required => MfaPolicy::Required,
            MfaArg::Risky => MfaPolicy::Risky,
            MfaArg::Off => MfaPolicy::Off,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ClientAdd {
    /// The client id.
    id: String,
    /// A public client (browser or native app): no secret, PKCE only. Default: confidential.
    #[arg(long)]
    public: bool,
    /// Display name for the consent screen [default: the id].
    #[arg(long)]
    name: Option<String>,
    /// A redirect URI, matched exactly (repeatable).
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uris: Vec<String>,
    /// A grant the client may use (repeatable) [default: authorization_code and refresh_token; none with
    /// --serves].
    #[arg(long = "grant", value_enum, value_name = "GRANT")]
    grants: Vec<GrantArg>,
    /// An audience (registered resource) the client may get tokens for (repeatable).
    #[arg(long = "audience", value_name = "AUDIENCE")]
    audiences: Vec<String>,
    /// A scope the client may ask for (repeatable, or space-separated).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Access-token lifetime in seconds (at most 900) [default: access_token_ttl].
    #[arg(long, value_name = "SECONDS")]
    access_ttl: Option<i64>,
    /// Refresh-token idle lifetime in seconds [default: refresh_idle_ttl].
    #[arg(long, value_name = "SECONDS")]
    refresh_idle_ttl: Option<i64>,
    /// Refresh-session absolute lifetime in seconds [default: refresh_absolute_ttl].
    #[arg(long, value_name = "SECONDS")]
    refresh_ttl: Option<i64>,
    /// A first-party client: the consent screen is skipped.
    #[arg(long)]
    first_party: bool,
    /// Whether tokens must be DPoP-bound [default: required for public clients, optional otherwise].
    #[arg(long, value_enum, value_name = "POLICY")]
    dpop: Option<DpopArg>,
    /// When the client's users must show a second factor.
    #[arg(long, value_enum, value_name = "POLICY", default_value = "risky")]
    mfa: MfaArg,
    /// A JWKS file of the client's public keys: it authenticates with private_key_jwt, and no secret is
    /// generated (confidential clients only).
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// With --grant token_exchange: an audience (registered resource) the client may exchange a token for
    /// (repeatable). Without any, the client may exchange for none.
    #[arg(long = "exchange-audience", value_name = "AUDIENCE")]
    exchange_audiences: Vec<String>,
    /// An audience (registered resource) this client is the resource server for (repeatable): tokens for it
    /// are sent to this client's service, so its guard reports for it, and it may introspect and exchange
    /// them. A gateway's or guard's client serves its service's audience (confidential clients only).
    #[arg(long = "serves", value_name = "AUDIENCE")]
    serves: Vec<String>,
    #[command(flatten)]
    cfg: ConfigArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ResourceCommand {
    /// Register a resource server: an audience tokens can be issued for, and the scopes it defines.
    Add {
        /// The audience, usually the service's URL (https://orders.example).
        audience: String,
        /// A scope the resource defines (repeatable, or space-separated).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// List resources.
    List {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

/// A runtime for the async store and server.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the async runtime: {}", e.kind())))
}

/// Opens (and migrates) the configured store, creating the data directory for SQLite if needed.
pub(crate) async fn open_store(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    if config.database_url.is_empty() {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Failure::usage(format!("cannot create {}: {}", config.data_dir.display(), e.kind()))
        })?;
    }
    tessera_store::open(&config.effective_database_url()).await.map_err(store_failure)
}

pub(crate) fn store_failure(e: StoreError) -> Failure {
    Failure::usage(e.to_string())
}

/// Serves until SIGTERM or Ctrl-C.
pub(crate) fn serve(cfg: &ConfigArgs, listen: Option<String>, issuer: Option<String>) -> Result<(), Failure> {
    let config = cfg.load(listen, issuer)?;
    tessera_server::init_logging(&config);
    runtime()?.block_on(async move {
        let listen = config.listen.clone();
        let (state, startup) = tessera_server::prepare(config).await.map_err(|e| Failure::usage(e.0))?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| Failure::usage(format!("cannot listen on {listen}: {}", e.kind())))?;
        let addr =
            listener.local_addr().map_err(|e| Failure::usage(format!("no local address: {}", e.kind())))?;
        let shutdown = tessera_server::shutdown_signal()
            .map_err(|e| Failure::usage(format!("cannot install signal handlers: {}", e.kind())))?;
        first_start_message(&state.config, &startup, addr)?;
        emit(&format!("tessera: listening on {addr} as issuer {}", state.config.issuer))?;
        tracing::info!(%addr, issuer = %state.config.issuer, store = state.store.backend(), "serving");
        tessera_server::serve(state, listener, shutdown)
            .await
            .map_err(|e| Failure::usage(format!("server failed: {}", e.kind())))
    })
}

fn first_start_message(
    config: &Config,
    startup: &tessera_server::Startup,
    addr: std::net::SocketAddr,
) -> Result<(), Failure> {
    let Some(kid) = &startup.created_key else { return Ok(()) };
    let mut lines = vec!["tessera: first start".to_owned()];
    if startup.created_data_dir {
        lines.push(format!("  created data directory {}", config.data_dir.display()));
    }
    if startup.kek == Some(crypto::KekSource::Created) {
        lines.push(format!(
            "  created key-encryption key {} (0600; back it up, or set TESSERA_MASTER_KEY)",
            config.data_dir.join(crypto::MASTER_KEY_FILE).display()
        ));
    }
    lines.push(format!(
        "  created {} signing key {kid} (sealed with AES-256-GCM in the database)",
        config.signing_alg
    ));
    let base = if config.issuer.is_empty() { format!("http://{addr}") } else { config.issuer.clone() };
    if let Some((client, secret, audience)) = &startup.quickstart {
        lines.push(format!(
            "  created confidential client {client} for resource {audience}; its secret is shown only now"
        ));
        lines.push("try it:".to_owned());
        lines.push(format!(
            "  curl -s -u {client}:{secret} -d grant_type=client_credentials -d resource={audience} {base}/token"
        ));
    }
    lines.push("log in:".to_owned());
    lines.push("  tessera user add alice        (asks for a password)".to_owned());
    lines.push(format!("  open {base}/login"));
    emit(&lines.join("\n"))
}

/// Applies the migrations and exits.
pub(crate) fn migrate(cfg: &ConfigArgs) -> Result<(), Failure> {
    let config = cfg.load(None, None)?;
    runtime()?.block_on(async {
        let store = open_store(&config).await?;
        emit(&format!("migrations applied ({})", store.backend()))
    })
}

pub(crate) fn config(cmd: ConfigCommand) -> Result<(), Failure> {
    match cmd {
        ConfigCommand::Check { cfg, listen, issuer } => {
            let config = cfg.load(listen, issuer)?;
            emit(config.to_redacted_toml().trim_end())
        }
    }
}

fn split_words(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().flat_map(|s| s.split_whitespace()).map(str::to_owned).collect();
    out.sort();
    out.dedup();
    out
}

pub(crate) fn client(cmd: ClientCommand) -> Result<(), Failure> {
    match cmd {
        ClientCommand::Add(add) => client_add(*add),
        ClientCommand::List { cfg } => with_store(&cfg, |store, _| async move {
            let clients = store.list_clients().await.map_err(store_failure)?;
            let mut lines = vec![format!("{:<24} {:<13} {:<9} GRANTS", "CLIENT", "KIND", "STATE")];
            for c in clients {
                let grants: Vec<&str> = c.grant_types.iter().map(|g| g.as_str()).collect();
                let state = if c.disabled { "disabled" } else { "enabled" };
                lines.push(format!("{:<24} {:<13} {:<9} {}", c.id, c.kind.as_str(), state, grants.join(",")));
            }
            emit(&lines.join("\n"))
        }),
        ClientCommand::Show { id, cfg } => with_store(&cfg, |store, _| async move {
            let c = store.client(&id).await.map_err(store_failure)?.ok_or_else(|| no_such("client", &id))?;
            emit(&describe_client(&c))
        }),
        ClientCommand::RotateSecret { id, cfg } => with_store(&cfg, |store, _| async move {
            let c = store.client(&id).await.map_err(store_failure)?.ok_or_else(|| no_such("client", &id))?;
            if c.kind != ClientKind::Confidential {
                return Err(Failure::usage(format!("client {id} is public and has no secret")));
            }
            let secret = crypto::new_secret(SecretKind::ClientSecret).map_err(|e| Failure::usage(e.0))?;
            store.set_client_secret(&id, Some(&secret.hash())).await.map_err(store_failure)?;
            record(&*store, Event { client_id: Some(id.clone()), ..admin_event("client_rotate_secret") })
                .await?;
            emit(&format!(
                "client {id}: new secret (shown only now; the old one no longer works)\nclient_secret: {}",
                secret.expose()
            ))
        }),
        ClientCommand::SetJwks { id, file, cfg } => {
            let jwks = read_jwks(&file)?;
            with_store(&cfg, |store, _| async move {
                if !store.set_client_jwks(&id, Some(&jwks)).await.map_err(store_failure)? {
                    return Err(no_such_confidential(&id));
                }
                let c =
                    store.client(&id).await.map_err(store_failure)?.ok_or_else(|| no_such("client", &id))?;
                record(&*store, Event { client_id: Some(id.clone()), ..admin_event("client_set_jwks") })
                    .await?;
                emit(&format!("client {id}: keys registered\n{}", describe_client(&c)))
            })
        }
        ClientCommand::SetServes { id, audiences, cfg } => with_store(&cfg, |store, _| async move {
            require_resources(&store, audiences.iter()).await?;
            if !store.set_client_serves(&id, &audiences).await.map_err(store_failure)? {
                return Err(no_such_confidential(&id));
            }
            let c = store.client(&id).await.map_err(store_failure)?.ok_or_else(|| no_such("client", &id))?;
            let detail = serde_json::json!({ "serves": audiences }).to_string();
            let event = Event {
                client_id: Some(id.clone()),
                detail: Some(detail),
                ..admin_event("client_set_serves")
            };
            record(&*store, event).await?;
            emit(&format!("client {id}: serves updated\n{}", describe_client(&c)))
        }),
        ClientCommand::SetMfa { id, policy, cfg } => with_store(&cfg, |store, _| async move {
            let policy = MfaPolicy::from(policy);
            if !store.set_client_mfa(&id, policy).await.map_err(store_failure)? {
                return Err(no_such("client", &id));
            }
            let c = store.client(&id).await.map_err(store_failure)?.ok_or_else(|| no_such("client", &id))?;
            let detail = serde_json::json!({ "mfa": policy.as_str() }).to_string();
            let event =
                Event { client_id: Some(id.clone()), detail: Some(detail), ..admin_event("client_set_mfa") };
            record(&*store, event).await?;
            emit(&format!("client {id}: mfa {}\n{}", policy.as_str(), describe_client(&c)))
        }),
        ClientCommand::RemoveSecret { id, cfg } => with_store(&cfg, |store, _| async move {
            let c = store.client(&id).await.map_err(store_failure)?.ok_or_else(|| no_such("client", &id))?;
            if c.kind != ClientKind::Confidential {
                return Err(Failure::usage(format!("client {id} is public and has no secret")));
            }
            if c.jwks.is_none() {
                return Err(Failure::usage(format!(
                    "client {id} has no registered keys; run `tessera client set-jwks` first, or it could not authenticate"
                )));
            }
            store.set_client_secret(&id, None).await.map_err(store_failure)?;
            record(&*store, Event { client_id: Some(id.clone()), ..admin_event("client_remove_secret") })
                .await?;
            emit(&format!("client {id}: secret removed; only private_key_jwt authenticates it now"))
        }),
        ClientCommand::Disable { id, cfg } => with_store(&cfg, |store, _| async move {
            if !store.set_client_disabled(&id, true).await.map_err(store_failure)? {
                return Err(no_such("client", &id));
            }
            let seq = store
                .revoke_client(&id, "client_disabled", tessera_server::now())
                .await
                .map_err(store_failure)?;
            record(&*store, Event { client_id: Some(id.clone()), ..admin_event("client_disable") }).await?;
            emit(&format!("client {id} disabled; its tokens are revoked (revocation #{seq})"))
        }),
    }
}

fn client_add(add: ClientAdd) -> Result<(), Failure> {
    let kind = if add.public { ClientKind::Public } else { ClientKind::Confidential };
    // A guard's or gateway's client that only serves its audience needs no grant at all.
    let mut grants: Vec<GrantType> = if add.grants.is_empty() && !add.serves.is_empty() {
        Vec::new()
    } else if add.grants.is_empty() {
        vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
    } else {
        add.grants.iter().map(|g| (*g).into()).collect()
    };
    grants.sort();
    grants.dedup();
    if kind == ClientKind::Public && grants.contains(&GrantType::ClientCredentials) {
        return Err(Failure::usage("a public client cannot use client_credentials: it has no secret"));
    }
    if grants.contains(&GrantType::AuthorizationCode) && add.redirect_uris.is_empty() {
        return Err(Failure::usage("authorization_code needs at least one --redirect-uri"));
    }
    if let Some(bad) = add.redirect_uris.iter().position(|u| !is_registrable_redirect_uri(u)) {
        return Err(Failure::usage(format!(
            "--redirect-uri #{}: must be https://…, http://127.0.0.1 or localhost, or a private-use scheme, without a fragment",
            bad + 1
        )));
    }
    if add.access_ttl.is_some_and(|t| !(1..=tessera_server::config::MAX_ACCESS_TOKEN_TTL).contains(&t)) {
        return Err(Failure::usage("--access-ttl must be between 1 and 900 seconds"));
    }
    if add.jwks.is_some() && kind == ClientKind::Public {
        return Err(Failure::usage("a public client cannot register keys: it authenticates with PKCE only"));
    }
    let jwks = add.jwks.as_ref().map(read_jwks).transpose()?;
    match (grants.contains(&GrantType::TokenExchange), add.exchange_audiences.is_empty()) {
        (true, true) => return Err(Failure::usage("token_exchange needs at least one --exchange-audience")),
        (false, false) => return Err(Failure::usage("--exchange-audience needs --grant token_exchange")),
        _ => {}
    }
    if kind == ClientKind::Public && !add.serves.is_empty() {
        return Err(Failure::usage("a public client cannot serve an audience: it has no credential"));
    }
    if kind == ClientKind::Public && grants.contains(&GrantType::TokenExchange) {
        return Err(Failure::usage("a public client cannot use token_exchange: it has no credential"));
    }
    if add.id.is_empty() || add.id.len() > 128 || add.id.contains(|c: char| c.is_control() || c == ':') {
        return Err(Failure::usage("the client id must be 1-128 printable characters without ':'"));
    }
    with_store(&add.cfg, |store, config| async move {
        require_resources(&store, add.audiences.iter().chain(&add.exchange_audiences).chain(&add.serves))
            .await?;
        let secret = match kind {
            ClientKind::Confidential if jwks.is_none() => {
                Some(crypto::new_secret(SecretKind::ClientSecret).map_err(|e| Failure::usage(e.0))?)
            }
            ClientKind::Confidential | ClientKind::Public => None,
        };
        let client = Client {
            id: add.id.clone(),
            name: add.name.clone().unwrap_or_else(|| add.id.clone()),
            kind,
            secret_hash: secret.as_ref().map(|s| s.hash()),
            redirect_uris: add.redirect_uris.clone(),
            grant_types: grants,
            audiences: add.audiences.clone(),
            scopes: split_words(&add.scopes),
            access_ttl: add.access_ttl.unwrap_or(config.access_token_ttl),
            refresh_idle_ttl: add.refresh_idle_ttl.unwrap_or(config.refresh_idle_ttl),
            refresh_absolute_ttl: add.refresh_ttl.unwrap_or(config.refresh_absolute_ttl),
            first_party: add.first_party,
            disabled: false,
            created_at: tessera_server::now(),
            require_dpop: match add.dpop {
                Some(DpopArg::Required) => true,
                Some(DpopArg::Optional) => false,
                None => kind == ClientKind::Public,
            },
            jwks: jwks.clone(),
            exchange_audiences: add.exchange_audiences.clone(),
            serves: add.serves.clone(),
            mfa: add.mfa.into(),
        };
        store.create_client(&client).await.map_err(|e| match e {
            StoreError::Conflict(_) => Failure::usage(format!("client {} already exists", client.id)),
            other => store_failure(other),
        })?;
        record(&*store, Event { client_id: Some(client.id.clone()), ..admin_event("client_add") }).await?;
        let mut out = describe_client(&client);
        if let Some(secret) = secret {
            out.push_str(&format!(
                "\nclient_secret: {}\n(the secret is shown only now; it is stored hashed)",
                secret.expose()
            ));
        }
        emit(&out)
    })
}

/// Every audience must be a registered resource.
async fn require_resources<'a>(
    store: &Arc<dyn Store>,
    audiences: impl Iterator<Item = &'a String>,
) -> Result<(), Failure> {
    for audience in audiences {
        if store.resource(audience).await.map_err(store_failure)?.is_none() {
            return Err(Failure::usage(format!(
                "no resource {audience}; register it first with `tessera resource add`"
            )));
        }
    }
    Ok(())
}

/// Reads and checks a client's JWKS file: public signing keys we can verify with, at most 8.
fn read_jwks(path: &PathBuf) -> Result<String, Failure> {
    let text = crate::read_file(path, "JWKS file")?;
    tessera_token::ClientKeys::parse(&text)
        .map_err(|e| Failure::usage(format!("{}: not a usable JWKS: {e}", path.display())))?;
    Ok(text)
}

fn no_such_confidential(id: &str) -> Failure {
    Failure::usage(format!("no confidential client {id}"))
}

/// The client authentication methods a client can use, as discovery names them.
fn auth_methods(c: &Client) -> String {
    let mut methods = Vec::new();
    if c.kind == ClientKind::Public {
        methods.push("none");
    }
    if c.secret_hash.is_some() {
        methods.extend(["client_secret_basic", "client_secret_post"]);
    }
    if c.jwks.is_some() {
        methods.push("private_key_jwt");
    }
    methods.join(" ")
}

fn describe_client(c: &Client) -> String {
    let grants: Vec<&str> = c.grant_types.iter().map(|g| g.as_str()).collect();
    let keys = c
        .jwks
        .as_deref()
        .and_then(|j| tessera_token::ClientKeys::parse(j).ok())
        .map(|k| k.thumbprints().join(" "))
        .unwrap_or_default();
    [
        format!("client_id: {}", c.id),
        format!("name: {}", c.name),
        format!("kind: {}", c.kind.as_str()),
        format!("state: {}", if c.disabled { "disabled" } else { "enabled" }),
        format!("first_party: {}", c.first_party),
        format!("dpop: {}", if c.require_dpop { "required" } else { "optional" }),
        format!("mfa: {}", c.mfa.as_str()),
        format!("auth: {}", auth_methods(c)),
        format!("keys: {keys}"),
        format!("grants: {}", grants.join(" ")),
        format!("redirect_uris: {}", c.redirect_uris.join(" ")),
        format!("audiences: {}", c.audiences.join(" ")),
        format!("scopes: {}", c.scopes.join(" ")),
        format!("exchange_audiences: {}", c.exchange_audiences.join(" ")),
        format!("serves: {}", c.serves.join(" ")),
        format!("access_ttl: {}", c.access_ttl),
        format!("refresh_idle_ttl: {}", c.refresh_idle_ttl),
        format!("refresh_ttl: {}", c.refresh_absolute_ttl),
    ]
    .join("\n")
}

pub(crate) fn resource(cmd: ResourceCommand) -> Result<(), Failure> {
    match cmd {
        ResourceCommand::Add { audience, scopes, cfg } => with_store(&cfg, |store, _| async move {
            if audience.is_empty() || audience.contains(char::is_whitespace) {
                return Err(Failure::usage("the audience must be non-empty and without spaces"));
            }
            let r = Resource {
                audience: audience.clone(),
                scopes: split_words(&scopes),
                created_at: tessera_server::now(),
            };
            store.create_resource(&r).await.map_err(|e| match e {
                StoreError::Conflict(_) => Failure::usage(format!("resource {audience} already exists")),
                other => store_failure(other),
            })?;
            record(&*store, Event { audience: Some(audience.clone()), ..admin_event("resource_add") })
                .await?;
            emit(&format!("resource {audience} added with scopes: {}", r.scopes.join(" ")))
        }),
        ResourceCommand::List { cfg } => with_store(&cfg, |store, _| async move {
            let mut lines = vec![format!("{:<40} SCOPES", "AUDIENCE")];
            for r in store.list_resources().await.map_err(store_failure)? {
                lines.push(format!("{:<40} {}", r.audience, r.scopes.join(" ")));
            }
            emit(&lines.join("\n"))
        }),
    }
}

fn no_such(what: &str, id: &str) -> Failure {
    Failure::usage(format!("no {what} {id}"))
}

/// Loads the configuration, opens the store and runs `f` on it.
pub(crate) fn with_store<F, Fut>(cfg: &ConfigArgs, f: F) -> Result<(), Failure>
where
    F: FnOnce(Arc<dyn Store>, Config) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let config = cfg.load(None, None)?;
    runtime()?.block_on(async move {
        let store = open_store(&config).await?;
        f(store, config).await
    })
}
