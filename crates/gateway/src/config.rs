//! The gateway's configuration: a TOML file, each key overridable by a command-line flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Everything the gateway needs. Built with [`GatewayConfig::from_file`] or field by field.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The issuer URL.
    pub issuer: String,
    /// This service's audience.
    pub audience: String,
    /// The upstream base URL (`http://host:port`, optionally with a path prefix).
    pub upstream: http::Uri,
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// The route policy file.
    pub policy: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; `None` answers them on `listen` itself.
    pub admin_listen: Option<SocketAddr>,
    /// The gateway's own client at the server.
    pub client_id: String,
    /// Its secret.
    pub client_secret: Zeroizing<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// How long the upstream may take to start answering: 504 after it. Default 30 s.
    pub upstream_timeout: Duration,
    /// How long connecting to the upstream may take: 502 after it. Default 5 s.
    pub connect_timeout: Duration,
    /// Speak HTTP/2 (prior knowledge, h2c) to the upstream instead of HTTP/1.1.
    pub upstream_http2: bool,
    /// Pass the client's `Authorization` header on to the upstream. Default: no; the upstream gets the
    /// validated identity headers instead, so a token never sits in its logs.
    pub forward_authorization: bool,
    /// The revocation staleness bound. Default 900 s.
    pub staleness: Duration,
    /// The URL clients reach the gateway at, which DPoP proofs name. Default: the audience, if it is a URL.
    pub public_url: Option<String>,
    /// Report each admitted request's use to the server. Default: on (see `GuardConfig::report_usage`).
    pub report_usage: bool,
    /// Require a nonce issued by this gateway in every DPoP proof (see `GuardConfig::dpop_nonce`). Default off.
    pub dpop_nonce: bool,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("upstream", &self.upstream)
            .field("listen", &self.listen)
            .field("policy", &self.policy)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The file form: every key optional, so flags can fill in the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `issuer`.
    pub issuer: Option<String>,
    /// `audience`.
    pub audience: Option<String>,
    /// `upstream`.
    pub upstream: Option<String>,
    /// `listen`.
    pub listen: Option<String>,
    /// `policy`.
    pub policy: Option<PathBuf>,
    /// `admin_listen`.
    pub admin_listen: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `client_secret_file`: a file holding the secret (the secret itself is never in this file).
    pub client_secret_file: Option<PathBuf>,
    /// `trusted_proxies`: CIDRs.
    pub trusted_proxies: Option<Vec<String>>,
    /// `upstream_timeout_secs`.
    pub upstream_timeout_secs: Option<u64>,
    /// `connect_timeout_secs`.
    pub connect_timeout_secs: Option<u64>,
    /// `upstream_http2`.
    pub upstream_http2: Option<bool>,
    /// `forward_authorization`.
    pub forward_authorization: Option<bool>,
    /// `staleness_secs`.
    pub staleness_secs: Option<u64>,
    /// `public_url`.
    pub public_url: Option<String>,
    /// `report_usage`.
    pub report_usage: Option<bool>,
    /// `dpop_nonce`.
    pub dpop_nonce: Option<bool>,
}

impl FileConfig {
    /// Reads a gateway configuration file.
    ///
    /// # Errors
    /// A one-line message naming the file and, for a syntax error, the line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(line) => format!("{} line {line}: {}", path.display(), e.message()),
                None => format!("{}: {}", path.display(), e.message()),
            }
        })
    }

    /// The keys set by `TESSERA_GATEWAY_*` variables (the key in upper case: `upstream` →
    /// `TESSERA_GATEWAY_UPSTREAM`; `trusted_proxies` is comma-separated), read through `var`.
    ///
    /// # Errors
    /// A one-line message naming the variable whose value cannot be read.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |key: &str| {
            var(&format!("TESSERA_GATEWAY_{}", key.to_ascii_uppercase())).filter(|v| !v.is_empty())
        };
        let number = |key: &str| -> Result<Option<u64>, String> {
            get(key)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| format!("TESSERA_GATEWAY_{} must be a number", key.to_ascii_uppercase()))
                })
                .transpose()
        };
        let flag = |key: &str| -> Result<Option<bool>, String> {
            get(key)
                .map(|v| match v.trim() {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => Err(format!("TESSERA_GATEWAY_{} must be true or false", key.to_ascii_uppercase())),
                })
                .transpose()
        };
        Ok(FileConfig {
            issuer: get("issuer"),
            audience: get("audience"),
            upstream: get("upstream"),
            listen: get("listen"),
            policy: get("policy").map(PathBuf::from),
            admin_listen: get("admin_listen"),
            client_id: get("client_id"),
            client_secret_file: get("client_secret_file").map(PathBuf::from),
            trusted_proxies: get("trusted_proxies")
                .map(|v| v.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()),
            upstream_timeout_secs: number("upstream_timeout_secs")?,
            connect_timeout_secs: number("connect_timeout_secs")?,
            upstream_http2: flag("upstream_http2")?,
            forward_authorization: flag("forward_authorization")?,
            staleness_secs: number("staleness_secs")?,
            public_url: get("public_url"),
            report_usage: flag("report_usage")?,
            dpop_nonce: flag("dpop_nonce")?,
        })
    }

    /// Fills `self`'s unset keys from `other` (flags first, then the environment, then the file).
    #[must_use]
    pub fn or(self, other: FileConfig) -> FileConfig {
        FileConfig {
            issuer: self.issuer.or(other.issuer),
            audience: self.audience.or(other.audience),
            upstream: self.upstream.or(other.upstream),
            listen: self.listen.or(other.listen),
            policy: self.policy.or(other.policy),
            admin_listen: self.admin_listen.or(other.admin_listen),
            client_id: self.client_id.or(other.client_id),
            client_secret_file: self.client_secret_file.or(other.client_secret_file),
            trusted_proxies: self.trusted_proxies.or(other.trusted_proxies),
            upstream_timeout_secs: self.upstream_timeout_secs.or(other.upstream_timeout_secs),
            connect_timeout_secs: self.connect_timeout_secs.or(other.connect_timeout_secs),
            upstream_http2: self.upstream_http2.or(other.upstream_http2),
            forward_authorization: self.forward_authorization.or(other.forward_authorization),
            staleness_secs: self.staleness_secs.or(other.staleness_secs),
            public_url: self.public_url.or(other.public_url),
            report_usage: self.report_usage.or(other.report_usage),
            dpop_nonce: self.dpop_nonce.or(other.dpop_nonce),
        }
    }

    /// Checks every key and builds the configuration. `secret` is the client secret when it came from the
    /// environment; otherwise `client_secret_file` is read.
    ///
    /// # Errors
    /// A one-line message naming the key at fault.
    pub fn build(self, secret: Option<String>) -> Result<GatewayConfig, String> {
        let need = |v: Option<String>, key: &str| {
            v.filter(|s| !s.trim().is_empty()).ok_or(format!("{key} is required"))
        };
        let upstream: http::Uri = need(self.upstream, "upstream")?
            .parse()
            .map_err(|_| "upstream must be a URL such as http://127.0.0.1:3000".to_owned())?;
        if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
            return Err("upstream must be an http:// URL with a host (put TLS in front of the gateway, not behind it)".into());
        }
        if upstream.query().is_some() {
            return Err("upstream must not have a query".into());
        }
        if upstream.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("upstream must not carry credentials in its URL".into());
        }
        let addr = |v: &str, key: &str| {
            v.parse::<SocketAddr>().map_err(|_| format!("{key} must be an address such as 127.0.0.1:8081"))
        };
        let listen = addr(&need(self.listen, "listen")?, "listen")?;
        let admin_listen = self.admin_listen.as_deref().map(|a| addr(a, "admin_listen")).transpose()?;
        let policy = self.policy.ok_or("policy is required")?;
        let client_id = need(self.client_id, "client_id")?;
        let client_secret = match (secret, self.client_secret_file) {
            (Some(s), _) if !s.is_empty() => s,
            (_, Some(file)) => std::fs::read_to_string(&file)
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("client_secret_file {}: {e}", file.display()))?,
            _ => {
                return Err(
                    "the client secret is required (TESSERA_GATEWAY_CLIENT_SECRET or client_secret_file)"
                        .into(),
                );
            }
        };
        let trusted_proxies = self
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("trusted_proxies: {c:?} is not an address or CIDR"))
            })
            .collect::<Result<_, _>>()?;
        let secs = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default));
        Ok(GatewayConfig {
            issuer: need(self.issuer, "issuer")?,
            audience: need(self.audience, "audience")?,
            upstream,
            listen,
            policy,
            admin_listen,
            client_id,
            client_secret: Zeroizing::new(client_secret),
            trusted_proxies,
            upstream_timeout: secs(self.upstream_timeout_secs, 30),
            connect_timeout: secs(self.connect_timeout_secs, 5),
            upstream_http2: self.upstream_http2.unwrap_or(false),
            forward_authorization: self.forward_authorization.unwrap_or(false),
            staleness: secs(self.staleness_secs, 900),
            public_url: self.public_url.filter(|u| !u.trim().is_empty()),
            report_usage: self.report_usage.unwrap_or(true),
            dpop_nonce: self.dpop_nonce.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_environment_which_overrides_the_file() {
        let env = |name: &str| match name {
            "TESSERA_GATEWAY_UPSTREAM" => Some("http://127.0.0.1:3001".to_owned()),
            "TESSERA_GATEWAY_LISTEN" => Some("127.0.0.1:9001".to_owned()),
            "TESSERA_GATEWAY_TRUSTED_PROXIES" => Some("10.0.0.0/8, 192.168.1.1".to_owned()),
            "TESSERA_GATEWAY_UPSTREAM_HTTP2" => Some("true".to_owned()),
            "TESSERA_GATEWAY_REPORT_USAGE" => Some("false".to_owned()),
            _ => None,
        };
        let file: FileConfig = toml::from_str(
            "issuer = \"https://id.example\"\naudience = \"https://orders.example\"\nupstream = \"http://127.0.0.1:3000\"\n\
             listen = \"127.0.0.1:9000\"\npolicy = \"policy.toml\"\nclient_id = \"gw\"\n",
        )
        .unwrap();
        let flags = FileConfig { listen: Some("127.0.0.1:9002".into()), ..FileConfig::default() };
        let config =
            flags.or(FileConfig::from_env(env).unwrap()).or(file).build(Some("secret".into())).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9002", "the flag wins");
        assert_eq!(config.upstream.to_string(), "http://127.0.0.1:3001/", "the environment beats the file");
        assert_eq!(config.issuer, "https://id.example", "the file fills the rest");
        assert_eq!(config.trusted_proxies.len(), 2);
        assert!(config.upstream_http2);
        assert!(!config.report_usage, "usage reporting turned off by the environment");
        let plain = FileConfig { report_usage: None, ..FileConfig::from_env(env).unwrap() };
        let file_again: FileConfig = toml::from_str(
            "issuer = \"https://id.example\"\naudience = \"a\"\npolicy = \"p\"\nclient_id = \"gw\"\n",
        )
        .unwrap();
        assert!(plain.or(file_again).build(Some("secret".into())).unwrap().report_usage, "on by default");
        let bad = |name: &str| (name == "TESSERA_GATEWAY_STALENESS_SECS").then(|| "soon".to_owned());
        assert_eq!(FileConfig::from_env(bad).unwrap_err(), "TESSERA_GATEWAY_STALENESS_SECS must be a number");
    }
}
