//! `tessera gateway`: the reverse proxy, configured by flags and/or a TOML file.

use std::path::PathBuf;

use clap::Args;
use tessera_gateway::{FileConfig, Gateway};

use crate::admin::runtime;
use crate::{Failure, emit};

/// Flags of `tessera gateway`; each overrides the same key's `TESSERA_GATEWAY_*` variable, which overrides
/// the key in `--config`.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// A TOML file with any of the keys below (flag names with `_` for `-`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The issuer URL, exactly as tokens carry it.
    #[arg(long, value_name = "URL")]
    issuer: Option<String>,
    /// This service's audience.
    #[arg(long, value_name = "AUD")]
    audience: Option<String>,
    /// The service behind the gateway (http://host:port[/prefix]).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The route policy file.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Serve /healthz, /readyz and /metrics here instead of on --listen.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// The gateway's own client id at the server (its secret: TESSERA_GATEWAY_CLIENT_SECRET or
    /// --client-secret-file).
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// A file holding the client secret.
    #[arg(long, value_name = "FILE")]
    client_secret_file: Option<PathBuf>,
    /// A proxy (address or CIDR) whose X-Forwarded-For is believed; repeatable.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
    /// Seconds the upstream may take to answer before 504 [default: 30].
    #[arg(long, value_name = "SECS")]
    upstream_timeout_secs: Option<u64>,
    /// Speak HTTP/2 (h2c, prior knowledge) to the upstream.
    #[arg(long)]
    upstream_http2: bool,
    /// Pass the client's Authorization header to the upstream.
    #[arg(long)]
    forward_authorization: bool,
    /// Seconds without word from the revocation stream before answering 503 [default: 900].
    #[arg(long, value_name = "SECS")]
    staleness_secs: Option<u64>,
    /// The URL clients reach the gateway at, which DPoP proofs name [default: the audience, if a URL].
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Do not report admitted requests to the server (refusals still are); the network rules then cannot
    /// see this service.
    #[arg(long)]
    no_usage_report: bool,
    /// Require a nonce issued by the gateway in every DPoP proof (RFC 9449 §9).
    #[arg(long)]
    dpop_nonce: bool,
}

pub(crate) fn run(args: GatewayArgs) -> Result<(), Failure> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(Failure::usage)?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        issuer: args.issuer,
        audience: args.audience,
        upstream: args.upstream,
        listen: args.listen,
        policy: args.policy,
        admin_listen: args.admin_listen,
        client_id: args.client_id,
        client_secret_file: args.client_secret_file,
        trusted_proxies: (!args.trusted_proxies.is_empty()).then_some(args.trusted_proxies),
        upstream_timeout_secs: args.upstream_timeout_secs,
        connect_timeout_secs: None,
        upstream_http2: args.upstream_http2.then_some(true),
        forward_authorization: args.forward_authorization.then_some(true),
        staleness_secs: args.staleness_secs,
        public_url: args.public_url,
        report_usage: args.no_usage_report.then_some(false),
        dpop_nonce: args.dpop_nonce.then_some(true),
    };
    let env = FileConfig::from_env(|name| std::env::var(name).ok()).map_err(Failure::usage)?;
    let secret = std::env::var("TESSERA_GATEWAY_CLIENT_SECRET").ok();
    let config = flags.or(env).or(file).build(secret).map_err(Failure::usage)?;
    let level = std::env::var("TESSERA_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let format = std::env::var("TESSERA_LOG_FORMAT").unwrap_or_else(|_| "text".into());
    tessera_server::init_logging_as(&level, &format);
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| Failure::usage(format!("cannot listen on {}: {}", config.listen, e.kind())))?;
        let admin = match config.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| Failure::usage(format!("cannot listen on {addr}: {}", e.kind())))?,
            ),
            None => None,
        };
        let addr =
            listener.local_addr().map_err(|e| Failure::usage(format!("no local address: {}", e.kind())))?;
        let shutdown = tessera_server::shutdown_signal()
            .map_err(|e| Failure::usage(format!("cannot install signal handlers: {}", e.kind())))?;
        let (audience, upstream) = (config.audience.clone(), config.upstream.to_string());
        let gateway = Gateway::start(config).map_err(Failure::usage)?;
        emit(&format!("tessera gateway: listening on {addr} for {audience}, forwarding to {upstream}"))?;
        tracing::info!(%addr, %audience, %upstream, "gateway serving");
        tessera_gateway::serve(gateway, listener, admin, shutdown)
            .await
            .map_err(|e| Failure::usage(format!("gateway failed: {}", e.kind())))
    })
}
