//! The server's configuration: defaults, then a TOML file, then `TESSERA_*` environment variables, then
//! command-line flags, each overriding the one before.
//!
//! Every key of the file can be set from the environment as `TESSERA_` + the key in upper case
//! (`access_token_ttl` → `TESSERA_ACCESS_TOKEN_TTL`). Unknown keys in the file are refused, so a typo cannot
//! silently leave a default in place.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_token::Algorithm;

/// The longest access-token lifetime Tessera issues (DESIGN §3), seconds.
pub const MAX_ACCESS_TOKEN_TTL: i64 = 900;

/// Everything `tessera serve` and the management commands read.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// The issuer identifier (`iss`), an http(s) URL without query or fragment.
    pub issuer: String,
    /// Directory for the SQLite database and the key-encryption key file.
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL; empty for SQLite in `data_dir/tessera.db`.
    pub database_url: String,
    /// Algorithm of new signing keys: EdDSA, ES256, RS256 or PS256.
    pub signing_alg: String,
    /// Default access-token lifetime, seconds (at most 900).
    pub access_token_ttl: i64,
    /// ID-token lifetime, seconds.
    pub id_token_ttl: i64,
    /// Default refresh-token idle lifetime for new clients, seconds.
    pub refresh_idle_ttl: i64,
    /// Default refresh-family absolute lifetime for new clients, seconds.
    pub refresh_absolute_ttl: i64,
    /// How long after a rotation a retry of the old refresh token gets the same successor, seconds.
    pub refresh_retry_window: i64,
    /// Authorization-code lifetime, seconds.
    pub code_ttl: i64,
    /// Browser login-session lifetime, seconds.
    pub login_session_ttl: i64,
    /// How long a new key is published before it signs (`tessera keys rotate`), seconds.
    pub key_publish_delay: i64,
    /// Days a key signs before the server publishes its successor (which signs after `key_publish_delay`).
    /// 0: only `tessera keys rotate` rotates.
    pub key_rotation_days: i64,
    /// Password hashes computed at once; further logins wait their turn.
    pub password_hash_concurrency: usize,
    /// Seconds between SIGTERM and closing the listener, while `/readyz` already answers 503 and requests
    /// are still served: long enough for the load balancer to notice (health-check interval × failures).
    /// 0: close at once.
    pub drain_secs: u64,
    /// `text` or `json`.
    pub log_format: String,
    /// A `tracing` filter: `info`, `tessera_server=debug`, …
    pub log_level: String,
    /// Base64url of 32 bytes: the key-encryption key. Empty: a 0600 file in `data_dir` is used (and created).
    pub master_key: String,
    /// How long after its `iat` a DPoP proof is accepted, seconds (at most 300).
    pub dpop_proof_max_age: i64,
    /// Require a server-supplied nonce in DPoP proofs (RFC 9449 §8): a proof made in advance is refused.
    pub dpop_nonce: bool,
    /// Days the audit log keeps an event; older ones are removed behind a checkpoint. 0: keep forever.
    pub audit_retention_days: i64,
    /// Proxies (addresses or CIDRs) in front of the server whose `X-Forwarded-For` is believed; the client's
    /// address is the nearest one in that header that is not a trusted proxy. `TESSERA_TRUSTED_PROXIES` is
    /// comma-separated.
    pub trusted_proxies: Vec<String>,
    /// Clients (addresses or CIDRs, after `trusted_proxies`) that may read `/metrics`; others get 403.
    /// Default: loopback only. `TESSERA_METRICS_ALLOW` is comma-separated.
    pub metrics_allow: Vec<String>,
    /// The detection rules' thresholds (`[detection]` in the file; `TESSERA_DETECTION_<KEY>` in the
    /// environment).
    pub detection: tessera_core::detect::Thresholds,
    /// What each rule does when it fires (`[responses]`; `TESSERA_RESPONSES_<RULE>`, comma-separated).
    pub responses: crate::response::Responses,
    /// Where alerts go (`[alerts]`; `TESSERA_ALERTS_<KEY>`).
    pub alerts: crate::alerts::AlertConfig,
    /// The GeoIP databases (`[geoip]`; `TESSERA_GEOIP_CITY_DB`, `TESSERA_GEOIP_ASN_DB`).
    pub geoip: crate::geoip::GeoConfig,
    /// Sign-in throttling and lockout (`[login]`; `TESSERA_LOGIN_<KEY>`).
    pub login: tessera_core::throttle::Policy,
    /// What a new password must be (`[passwords]`; `TESSERA_PASSWORDS_<KEY>`).
    pub passwords: crate::passwords::PasswordConfig,
    /// Risk-based authentication's weights and thresholds (`[risk]`; `TESSERA_RISK_<KEY>`).
    pub risk: tessera_core::risk::RiskConfig,
    /// Where reset links and notices to users go (`[notify]`; `TESSERA_NOTIFY_<KEY>`).
    pub notify: crate::notify::NotifyConfig,
    /// Passkeys' relying party (`[webauthn]`; `TESSERA_WEBAUTHN_<KEY>`).
    pub webauthn: crate::passkeys::WebauthnConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            issuer: "http://127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./tessera-data"),
            database_url: String::new(),
            signing_alg: "EdDSA".into(),
            access_token_ttl: 300,
            id_token_ttl: 300,
            refresh_idle_ttl: 14 * 86_400,
            refresh_absolute_ttl: 30 * 86_400,
            refresh_retry_window: 10,
            code_ttl: 60,
            login_session_ttl: 12 * 3600,
            key_publish_delay: 300,
            key_rotation_days: 90,
            password_hash_concurrency: 2,
            drain_secs: 0,
            log_format: "text".into(),
            log_level: "info".into(),
            master_key: String::new(),
            dpop_proof_max_age: 60,
            dpop_nonce: false,
            audit_retention_days: 365,
            trusted_proxies: Vec::new(),
            metrics_allow: vec!["127.0.0.0/8".into(), "::1".into()],
            detection: tessera_core::detect::Thresholds::default(),
            responses: crate::response::Responses::default(),
            alerts: crate::alerts::AlertConfig::default(),
            geoip: crate::geoip::GeoConfig::default(),
            login: tessera_core::throttle::Policy::default(),
            passwords: crate::passwords::PasswordConfig::default(),
            risk: tessera_core::risk::RiskConfig::default(),
            notify: crate::notify::NotifyConfig::default(),
            webauthn: crate::passkeys::WebauthnConfig::default(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_redacted_toml())
    }
}

/// A configuration error: one line naming the key or file, never a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// An environment variable's text as the type of the value it overrides.
fn env_value(var: &str, raw: &str, default: &toml::Value) -> Result<toml::Value, ConfigError> {
    Ok(match default {
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim().parse().map_err(|_| ConfigError(format!("{var} must be an integer")))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.trim().parse().map_err(|_| ConfigError(format!("{var} must be true or false")))?,
        ),
        // A list: comma-separated.
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_owned()),
    })
}

/// Flags given on the command line; `None` leaves the value from file and environment. `Debug` redacts the
/// database URL's password.
#[derive(Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--issuer`.
    pub issuer: Option<String>,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("listen", &self.listen)
            .field("issuer", &self.issuer)
            .field("database_url", &self.database_url.as_deref().map(redact_url_password))
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl Config {
    /// Loads the configuration: defaults, the file (if given), the environment (`env` yields
    /// `(name, value)` pairs, normally `std::env::vars()`), then the flags; and checks it.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, key or variable at fault.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read {}: {}", path.display(), e.kind())))?;
                text.parse::<toml::Table>().map_err(|e| {
                    let line = e.span().map(|s| text[..s.start].lines().count().max(1)).unwrap_or(1);
                    ConfigError(format!("{}: line {line}: {}", path.display(), e.message()))
                })?
            }
            None => toml::Table::new(),
        };
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError(format!("cannot describe the defaults: {e}")))?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        for (key, default) in &defaults {
            if let toml::Value::Table(fields) = default {
                // A section: each of its keys is TESSERA_<SECTION>_<KEY>.
                for (field, field_default) in fields {
                    let var = format!("TESSERA_{}_{}", key.to_uppercase(), field.to_uppercase());
                    let Some((_, raw)) = env.iter().find(|(name, _)| *name == var) else { continue };
                    let value = env_value(&var, raw, field_default)?;
                    let section =
                        table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    match section {
                        toml::Value::Table(section) => {
                            section.insert(field.clone(), value);
                        }
                        _ => return Err(ConfigError(format!("{key} must be a table"))),
                    }
                }
                continue;
            }
            let var = format!("TESSERA_{}", key.to_uppercase());
            let Some((_, raw)) = env.iter().find(|(name, _)| *name == var) else { continue };
            table.insert(key.clone(), env_value(&var, raw, default)?);
        }
        let mut config: Config = table.try_into().map_err(|e: toml::de::Error| {
            let where_ = file.map(|p| format!("{}: ", p.display())).unwrap_or_default();
            ConfigError(format!("{where_}{}", e.message()))
        })?;
        if let Some(v) = &flags.listen {
            config.listen.clone_from(v);
        }
        if let Some(v) = &flags.issuer {
            config.issuer.clone_from(v);
        }
        if let Some(v) = &flags.database_url {
            config.database_url.clone_from(v);
        }
        if let Some(v) = &flags.data_dir {
            config.data_dir.clone_from(v);
        }
        config.issuer = config.issuer.trim_end_matches('/').to_owned();
        config.check()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        let d = &self.detection;
        if d.window_secs < MAX_ACCESS_TOKEN_TTL || d.window_secs > 86_400 {
            return bad(
                "detection.window_secs",
                "must be between 900 (the longest token lifetime) and 86400",
            );
        }
        for (key, value) in [
            ("detection.two_networks_secs", d.two_networks_secs),
            ("detection.forged_burst_secs", d.forged_burst_secs),
            ("detection.login_failure_secs", d.login_failure_secs),
        ] {
            if !(1..=d.window_secs).contains(&value) {
                return bad(key, "must be between 1 and detection.window_secs");
            }
        }
        if d.forged_burst_count == 0
            || d.revoked_use_count == 0
            || d.brute_force_failures == 0
            || d.stuffing_accounts == 0
            || d.lateral_probe_audiences == 0
        {
            return bad("detection", "counts must be at least 1");
        }
        if d.travel_kmh == 0 {
            return bad("detection.travel_kmh", "must be at least 1");
        }
        if !(1..=3650).contains(&d.login_history_days) {
            return bad("detection.login_history_days", "must be between 1 and 3650");
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad("listen", "must be an address and port, such as 127.0.0.1:8080");
        }
        let rest = self.issuer.strip_prefix("https://").or_else(|| self.issuer.strip_prefix("http://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains(['?', '#', ' ']) => {}
            _ => return bad("issuer", "must be an http:// or https:// URL without query or fragment"),
        }
        if self.signing_alg.parse::<Algorithm>().is_err() {
            return bad("signing_alg", "must be one of EdDSA, ES256, RS256, PS256");
        }
        if !(1..=MAX_ACCESS_TOKEN_TTL).contains(&self.access_token_ttl) {
            return bad("access_token_ttl", "must be between 1 and 900 seconds");
        }
        for (key, value) in [
            ("id_token_ttl", self.id_token_ttl),
            ("refresh_idle_ttl", self.refresh_idle_ttl),
            ("refresh_absolute_ttl", self.refresh_absolute_ttl),
            ("code_ttl", self.code_ttl),
            ("login_session_ttl", self.login_session_ttl),
        ] {
            if value < 1 {
                return bad(key, "must be at least 1 second");
            }
        }
        if self.drain_secs > 300 {
            return bad("drain_secs", "must be at most 300 seconds");
        }
        if self.key_rotation_days < 0 || self.key_rotation_days > 3650 {
            return bad("key_rotation_days", "must be between 0 (off) and 3650");
        }
        if self.refresh_retry_window < 0 || self.key_publish_delay < 0 {
            return bad("refresh_retry_window/key_publish_delay", "must not be negative");
        }
        if !(1..=300).contains(&self.dpop_proof_max_age) {
            return bad("dpop_proof_max_age", "must be between 1 and 300 seconds");
        }
        if !(0..=36_500).contains(&self.audit_retention_days) {
            return bad("audit_retention_days", "must be between 0 (keep forever) and 36500");
        }
        self.responses.check().map_err(ConfigError)?;
        self.login.check().map_err(ConfigError)?;
        self.risk.check().map_err(ConfigError)?;
        self.notify.check().map_err(ConfigError)?;
        if !(8..=256).contains(&self.passwords.min_length) {
            return bad("passwords.min_length", "must be between 8 and 256");
        }
        self.alerts.check().map_err(ConfigError)?;
        for (key, list) in
            [("trusted_proxies", &self.trusted_proxies), ("metrics_allow", &self.metrics_allow)]
        {
            if list.iter().any(|source| tessera_core::net::parse_source(source).is_none()) {
                return bad(key, "each must be an address or a CIDR, such as 10.0.0.0/8");
            }
        }
        if self.password_hash_concurrency == 0 {
            return bad("password_hash_concurrency", "must be at least 1");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format", "must be text or json");
        }
        let db = self.database_url.as_str();
        if !(db.is_empty()
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://")
            || db.starts_with("sqlite://"))
        {
            return bad("database_url", "must be empty (SQLite in data_dir), postgres://… or sqlite://…");
        }
        Ok(())
    }

    /// The database URL the store opens: `database_url`, or SQLite in the data directory.
    pub fn effective_database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("tessera.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// The trusted proxies as networks (checked at load).
    pub fn trusted_proxy_nets(&self) -> Vec<ipnet::IpNet> {
        networks(&self.trusted_proxies)
    }

    /// The clients that may read `/metrics`, as networks (checked at load).
    pub fn metrics_allow_nets(&self) -> Vec<ipnet::IpNet> {
        networks(&self.metrics_allow)
    }
}

/// Addresses and CIDRs (checked at load) as networks.
fn networks(list: &[String]) -> Vec<ipnet::IpNet> {
    list.iter()
        .filter_map(|p| tessera_core::net::parse_source(p))
        .filter_map(|p| {
            p.parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| p.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
        })
        .collect()
}

impl Config {
    /// The signing algorithm (checked at load).
    pub fn signing_algorithm(&self) -> Algorithm {
        self.signing_alg.parse().unwrap_or(Algorithm::EdDSA)
    }

    /// Whether the issuer is served over https (cookies are `Secure` and `__Host-` then).
    pub fn is_https(&self) -> bool {
        self.issuer.starts_with("https://")
    }

    /// The effective configuration as TOML, with the master key and any database password redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.master_key.is_empty() {
            shown.master_key = "<redacted>".into();
        }
        shown.database_url = redact_url_password(&shown.database_url);
        shown.notify.smtp_url = redact_url_password(&shown.notify.smtp_url);
        if !shown.notify.webhook_secret.is_empty() {
            shown.notify.webhook_secret = "<redacted>".into();
        }
        if !shown.alerts.webhook_secret.is_empty() {
            shown.alerts.webhook_secret = "<redacted>".into();
        }
        toml::to_string(&shown).unwrap_or_else(|_| "<unprintable configuration>".into())
    }
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:<redacted>@host/db?password=<redacted>`:
/// the password in the user-info part and in a `password` query parameter.
fn redact_url_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    match query {
        None => base,
        Some(query) => {
            let redacted: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<redacted>"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", redacted.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.issuer, "http://127.0.0.1:8080");
        assert_eq!(c.effective_database_url(), "sqlite://./tessera-data/tessera.db");
        assert_eq!(c.access_token_ttl, 300);
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.toml");
        std::fs::write(
            &path,
            "access_token_ttl = 120\nissuer = \"https://id.example/\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let vars = env(&[("TESSERA_ACCESS_TOKEN_TTL", "60"), ("TESSERA_LISTEN", "127.0.0.1:9000")]);
        let flags = Overrides { listen: Some("127.0.0.1:9100".into()), ..Overrides::default() };
        let c = Config::load(Some(&path), vars, &flags).unwrap();
        assert_eq!(c.access_token_ttl, 60, "environment beats file");
        assert_eq!(c.listen, "127.0.0.1:9100", "flag beats environment");
        assert_eq!(c.issuer, "https://id.example", "trailing slash dropped");
        assert_eq!(c.log_format, "json");
        assert!(c.is_https());
    }

    #[test]
    fn detection_thresholds_come_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.toml");
        std::fs::write(&path, "[detection]\nforged_burst_count = 5\nbrute_force_failures = 8\n").unwrap();
        let vars = env(&[("TESSERA_DETECTION_BRUTE_FORCE_FAILURES", "3")]);
        let c = Config::load(Some(&path), vars, &Overrides::default()).unwrap();
        assert_eq!(c.detection.forged_burst_count, 5);
        assert_eq!(c.detection.brute_force_failures, 3, "environment beats file");
        assert_eq!(c.detection.window_secs, 900, "the rest keep their defaults");
        std::fs::write(&path, "[detection]\nforged_burst = 5\n").unwrap();
        let e = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("forged_burst"), "{e}");
        let e = Config::load(None, env(&[("TESSERA_DETECTION_WINDOW_SECS", "60")]), &Overrides::default())
            .unwrap_err();
        assert!(e.0.starts_with("detection.window_secs"), "{e}");
        let e =
            Config::load(None, env(&[("TESSERA_DETECTION_STUFFING_ACCOUNTS", "0")]), &Overrides::default())
                .unwrap_err();
        assert!(e.0.starts_with("detection"), "{e}");
        let e = Config::load(
            None,
            env(&[("TESSERA_DETECTION_FORGED_BURST_SECS", "many")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.0, "TESSERA_DETECTION_FORGED_BURST_SECS must be an integer");
    }

    #[test]
    fn geoip_paths_and_travel_thresholds_come_from_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.toml");
        std::fs::write(
            &path,
            "[geoip]\ncity_db = \"/var/lib/geoip/City.mmdb\"\n[detection]\ntravel_kmh = 800\n",
        )
        .unwrap();
        let vars = env(&[
            ("TESSERA_GEOIP_ASN_DB", "/var/lib/geoip/ASN.mmdb"),
            ("TESSERA_DETECTION_LOGIN_HISTORY_DAYS", "30"),
            ("TESSERA_DETECTION_TRAVEL_MIN_KM", "300"),
        ]);
        let c = Config::load(Some(&path), vars, &Overrides::default()).unwrap();
        assert_eq!(c.geoip.city_db, "/var/lib/geoip/City.mmdb");
        assert_eq!(c.geoip.asn_db, "/var/lib/geoip/ASN.mmdb");
        assert_eq!(
            (c.detection.travel_kmh, c.detection.travel_min_km, c.detection.login_history_days),
            (800, 300, 30)
        );
        assert_eq!(Config::default().geoip, crate::geoip::GeoConfig::default(), "no database by default");
        std::fs::write(&path, "[geoip]\ncity = \"x\"\n").unwrap();
        let e = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("city"), "{e}");
        let e =
            Config::load(None, env(&[("TESSERA_DETECTION_LOGIN_HISTORY_DAYS", "0")]), &Overrides::default())
                .unwrap_err();
        assert!(e.0.starts_with("detection.login_history_days"), "{e}");
        let e = Config::load(None, env(&[("TESSERA_DETECTION_TRAVEL_KMH", "0")]), &Overrides::default())
            .unwrap_err();
        assert!(e.0.starts_with("detection.travel_kmh"), "{e}");
    }

    #[test]
    fn responses_alerts_and_proxies_come_from_the_file_and_the_environment() {
        use crate::response::Action;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.toml");
        std::fs::write(
            &path,
            "trusted_proxies = [\"10.0.0.0/8\"]\n[responses]\nbrute_force = [\"block_source\", \"alert\"]\n\
             [alerts]\nwebhook_url = \"https://hooks.example/t\"\nwebhook_secret = \"0123456789abcdef0123456789abcdef\"\n",
        )
        .unwrap();
        let vars = env(&[
            ("TESSERA_RESPONSES_REVOKED_TOKEN_USE", "revoke_session, alert"),
            ("TESSERA_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
        ]);
        let c = Config::load(Some(&path), vars, &Overrides::default()).unwrap();
        assert_eq!(c.responses.brute_force, [Action::BlockSource, Action::Alert]);
        assert_eq!(c.responses.revoked_token_use, [Action::RevokeSession, Action::Alert]);
        assert_eq!(c.responses.refresh_token_reuse, [Action::RevokeSession, Action::Alert], "default kept");
        assert_eq!(c.trusted_proxy_nets().len(), 2);
        assert_eq!(c.metrics_allow_nets().len(), 2, "loopback by default");
        assert_eq!(c.alerts.webhook_url, "https://hooks.example/t");
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let e = Config::load(None, env(&[("TESSERA_RESPONSES_BRUTE_FORCE", "nuke")]), &Overrides::default())
            .unwrap_err();
        assert!(e.0.contains("nuke"), "{e}");
        let e = Config::load(None, env(&[("TESSERA_TRUSTED_PROXIES", "proxy.local")]), &Overrides::default())
            .unwrap_err();
        assert!(e.0.starts_with("trusted_proxies"), "{e}");
        let e = Config::load(
            None,
            env(&[("TESSERA_ALERTS_WEBHOOK_URL", "https://h.example/")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.0.starts_with("alerts.webhook_secret"), "{e}");
    }

    #[test]
    fn unknown_keys_bad_values_and_bad_variables_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "acces_token_ttl = 5\n").unwrap();
        let e = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("acces_token_ttl"), "{e}");
        std::fs::write(&path, "listen = \n").unwrap();
        let e = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("line 1"), "{e}");
        let e = Config::load(None, env(&[("TESSERA_ACCESS_TOKEN_TTL", "soon")]), &Overrides::default())
            .unwrap_err();
        assert_eq!(e.0, "TESSERA_ACCESS_TOKEN_TTL must be an integer");
        let e = Config::load(None, env(&[("TESSERA_ACCESS_TOKEN_TTL", "3600")]), &Overrides::default())
            .unwrap_err();
        assert!(e.0.starts_with("access_token_ttl"), "{e}");
        let e = Config::load(None, env(&[("TESSERA_ISSUER", "ftp://x")]), &Overrides::default()).unwrap_err();
        assert!(e.0.starts_with("issuer"), "{e}");
    }

    #[test]
    fn redacted_output_hides_the_master_key_and_database_password() {
        let vars = env(&[
            ("TESSERA_MASTER_KEY", "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI"),
            ("TESSERA_DATABASE_URL", "postgres://tessera:hunter2@db:5432/tessera"),
        ]);
        let c = Config::load(None, vars, &Overrides::default()).unwrap();
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://tessera:<redacted>@db:5432/tessera"), "{shown}");
        assert_eq!(
            redact_url_password("postgres://db/x?user=u&password=hunter2&sslmode=require"),
            "postgres://db/x?user=u&password=<redacted>&sslmode=require"
        );
        assert_eq!(format!("{c:?}"), shown);
    }
}
