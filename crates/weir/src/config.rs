//! Configuration: defaults, then a TOML file, then `WEIR_*` variables and
//! command-line flags (the last one set wins), merged with figment.
//!
//! Every key is documented in docs/configuration.md; `weir config check`
//! validates a configuration and `weir config print` shows the effective one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageKind {
    /// The embedded crash-safe log under `data_dir` (default).
    Log,
    /// Everything in RAM; lost on exit.
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncKind {
    /// `fdatasync` each group commit before acknowledging (durable).
    Data,
    /// No syncs: survives a process crash, not power loss.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Production-safe defaults.
    Default,
    /// What the official conformance suite needs: 500 ms long-poll, loopback
    /// webhooks, anonymous pull-wake claims. Never use in production.
    Conformance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub profile: Profile,
    pub server: ServerSection,
    pub storage: StorageSection,
    pub log: LogSection,
    pub limits: LimitsSection,
    /// Production layer (docs/configuration.md, "Production layer").
    pub auth: weir_layer::auth::AuthConfig,
    pub authz: weir_layer::authz::AuthzConfig,
    pub rate_limit: weir_layer::ratelimit::RateLimitConfig,
    /// `[telemetry]`: OpenTelemetry trace export over OTLP/HTTP.
    pub telemetry: weir_layer::telemetry::TelemetryConfig,
    /// `[admin]`: the admin listener (admin API, `/metrics`).
    pub admin: weir_layer::admin::AdminConfig,
}

/// `[server]`: the HTTP listener and protocol settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    pub host: String,
    pub port: u16,
    pub public_url: Option<String>,
    pub trusted_proxies: Vec<IpAddr>,
    pub header_read_timeout_secs: u64,
    pub long_poll_timeout_ms: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub compression: bool,
    /// Run the production layer (request ids, metrics, auth, rate limits).
    /// Off only to measure its overhead.
    pub production_layer: bool,
}

/// `[storage]`: where streams are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    pub backend: StorageKind,
    pub data_dir: PathBuf,
    pub sync: SyncKind,
    pub segment_mib: u64,
    pub min_free_mib: u64,
    /// Write zeros ahead of the log's write position so commits overwrite
    /// written blocks (cheaper syncs on ext4/XFS); off on copy-on-write
    /// file systems, where it only costs writes.
    pub zero_ahead: bool,
    pub memory_max_bytes: Option<u64>,
}

/// `[limits]`: load shedding and resource limits (docs/configuration.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    pub max_in_flight_requests: usize,
    pub max_in_flight_body_bytes: usize,
    pub max_live_readers: usize,
    pub max_message_bytes: usize,
    pub max_streams_per_tenant: Option<usize>,
    pub retry_after_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = weir_server::limits::Limits::default();
        LimitsSection {
            max_in_flight_requests: d.max_in_flight_requests,
            max_in_flight_body_bytes: d.max_in_flight_body_bytes,
            max_live_readers: d.max_live_readers,
            max_message_bytes: d.max_message_bytes,
            max_streams_per_tenant: d.max_streams_per_tenant,
            retry_after_secs: d.retry_after_secs,
        }
    }
}

impl LimitsSection {
    pub fn to_limits(&self) -> weir_server::limits::Limits {
        weir_server::limits::Limits {
            max_in_flight_requests: self.max_in_flight_requests,
            max_in_flight_body_bytes: self.max_in_flight_body_bytes,
            max_live_readers: self.max_live_readers,
            max_message_bytes: self.max_message_bytes,
            max_streams_per_tenant: self.max_streams_per_tenant,
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// `[log]`: stderr logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    pub level: String,
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            profile: Profile::Default,
            server: ServerSection::default(),
            storage: StorageSection::default(),
            log: LogSection::default(),
            limits: LimitsSection::default(),
            auth: Default::default(),
            authz: Default::default(),
            rate_limit: Default::default(),
            telemetry: Default::default(),
            admin: Default::default(),
        }
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            host: "127.0.0.1".into(),
            port: 4437,
            public_url: None,
            trusted_proxies: Vec::new(),
            header_read_timeout_secs: 30,
            long_poll_timeout_ms: None,
            max_body_bytes: None,
            tls_cert: None,
            tls_key: None,
            compression: true,
            production_layer: true,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            backend: StorageKind::Log,
            data_dir: PathBuf::from("./data"),
            sync: SyncKind::Data,
            segment_mib: 128,
            min_free_mib: 256,
            zero_ahead: true,
            memory_max_bytes: None,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Flags (and their `WEIR_*` variables) that override the file. Unset
/// flags leave the file's (or the default) value alone.
#[derive(Args, Debug, Default, Clone)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to bind [default: 127.0.0.1].
    #[arg(long, env = "WEIR_HOST")]
    pub host: Option<String>,
    /// Port to bind (0 picks a free one) [default: 4437].
    #[arg(long, env = "WEIR_PORT")]
    pub port: Option<u16>,
    /// Storage backend [default: log].
    #[arg(long, env = "WEIR_STORAGE", value_enum)]
    pub storage: Option<StorageKind>,
    /// Durability of the log backend [default: data].
    #[arg(long, env = "WEIR_SYNC", value_enum)]
    pub sync: Option<SyncKind>,
    /// Data directory of the embedded log backend [default: ./data].
    #[arg(long, env = "WEIR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Settings profile [default: default].
    #[arg(long, env = "WEIR_PROFILE", value_enum)]
    pub profile: Option<Profile>,
    /// Long-poll timeout in milliseconds [default: 20000; 500 in the conformance profile].
    #[arg(long, env = "WEIR_LONG_POLL_TIMEOUT_MS")]
    pub long_poll_timeout_ms: Option<u64>,
    /// Largest request body in bytes [default: 67108864].
    #[arg(long, env = "WEIR_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Memory budget of the memory backend, in bytes [default: unlimited].
    #[arg(long, env = "WEIR_MEMORY_MAX_BYTES")]
    pub memory_max_bytes: Option<u64>,
    /// Absolute URL clients use to reach this server (for Location, JWKS and callback URLs).
    #[arg(long, env = "WEIR_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Proxy addresses whose X-Forwarded-Proto/-Host headers are trusted (comma-separated).
    #[arg(long, env = "WEIR_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxy: Option<Vec<IpAddr>>,
    /// Seconds a client has to send request headers [default: 30].
    #[arg(long, env = "WEIR_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// PEM certificate chain; enables TLS (h2 and http/1.1 via ALPN).
    #[arg(long, env = "WEIR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "WEIR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `weir_server=debug` [default: info].
    #[arg(long, env = "WEIR_LOG")]
    pub log_level: Option<String>,
    /// Log line format; logs go to stderr [default: text].
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// OTLP/HTTP collector base URL for traces, e.g. http://127.0.0.1:4318 [default: none; OTEL_EXPORTER_OTLP_ENDPOINT also works].
    #[arg(long, env = "WEIR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Config {
    /// Defaults ← file ← flags/variables.
    pub fn load(o: &Overrides) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &o.config {
            if !path.exists() {
                anyhow::bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        let mut cfg: Config = fig.extract().context("invalid configuration")?;
        o.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what can be checked without starting the server.
    pub fn validate(&self) -> anyhow::Result<()> {
        let s = &self.server;
        match (&s.tls_cert, &s.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                anyhow::bail!("server.tls_cert and server.tls_key go together")
            }
            (Some(c), Some(k)) => {
                for f in [c, k] {
                    if !Path::new(f).is_file() {
                        anyhow::bail!("TLS file {} does not exist", f.display());
                    }
                }
            }
            (None, None) => {}
        }
        if let Some(u) = &s.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            anyhow::bail!("server.public_url must be an absolute http(s) URL");
        }
        format!("{}:{}", s.host, s.port)
            .parse::<std::net::SocketAddr>()
            .with_context(|| format!("server.host `{}` is not an IP address", s.host))?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .context("log.level is not a valid filter")?;
        let l = &self.limits;
        if l.max_in_flight_requests == 0 || l.max_in_flight_body_bytes == 0 {
            anyhow::bail!(
                "limits.max_in_flight_requests and max_in_flight_body_bytes must be positive"
            );
        }
        if l.max_message_bytes == 0 {
            anyhow::bail!("limits.max_message_bytes must be positive");
        }
        if !(1..=3600).contains(&l.retry_after_secs) {
            anyhow::bail!("limits.retry_after_secs must be between 1 and 3600");
        }
        if !(1..=4096).contains(&self.storage.segment_mib) {
            anyhow::bail!("storage.segment_mib must be between 1 and 4096");
        }
        self.telemetry
            .validate()
            .context("invalid [telemetry] configuration")?;
        if let Some(t) = &self.admin.operator_tenant {
            weir_layer::authz::validate_tenant(t).context("admin.operator_tenant")?;
        }
        self.auth
            .api_keys
            .store_spec()
            .context("invalid [auth.api_keys] store")?;
        weir_layer::Production::build(&self.layer(), None, weir_layer::clock::system())
            .context("invalid [auth], [authz] or [rate_limit] configuration")?;
        Ok(())
    }

    /// The production layer's part.
    pub fn layer(&self) -> weir_layer::LayerConfig {
        weir_layer::LayerConfig {
            auth: self.auth.clone(),
            authz: self.authz.clone(),
            rate_limit: self.rate_limit.clone(),
        }
    }

    /// Keys a running server cannot change (listeners, TLS, storage,
    /// tenancy, the key store, trace export, the log format): each one
    /// that differs in `next` is reset there to its running value and
    /// named in the answer, so a reload leaves it as it is until a restart
    /// (docs/configuration.md, "Reloading").
    pub fn pin_restart_only(&self, next: &mut Config) -> Vec<&'static str> {
        let mut pinned = Vec::new();
        macro_rules! pin {
            ($($name:literal => $($field:ident).+;)+) => {$(
                if self.$($field).+ != next.$($field).+ {
                    pinned.push($name);
                    next.$($field).+ = self.$($field).+.clone();
                }
            )+};
        }
        pin! {
            "profile" => profile;
            "server.host" => server.host;
            "server.port" => server.port;
            "server.public_url" => server.public_url;
            "server.header_read_timeout_secs" => server.header_read_timeout_secs;
            "server.tls_cert" => server.tls_cert;
            "server.tls_key" => server.tls_key;
            "server.production_layer" => server.production_layer;
            "storage.backend" => storage.backend;
            "storage.data_dir" => storage.data_dir;
            "storage.sync" => storage.sync;
            "storage.segment_mib" => storage.segment_mib;
            "storage.min_free_mib" => storage.min_free_mib;
            "storage.zero_ahead" => storage.zero_ahead;
            "storage.memory_max_bytes" => storage.memory_max_bytes;
            "log.format" => log.format;
            "telemetry" => telemetry;
            "admin.listen" => admin.listen;
            "auth.mode" => auth.mode;
            "auth.default_tenant" => auth.default_tenant;
            "auth.api_keys.enabled" => auth.api_keys.enabled;
            "auth.api_keys.store" => auth.api_keys.store;
            "auth.api_keys.sqlite_path" => auth.api_keys.sqlite_path;
            "auth.api_keys.database_url" => auth.api_keys.database_url;
            "auth.api_keys.database_url_file" => auth.api_keys.database_url_file;
            "authz.tenant_source" => authz.tenant_source;
        }
        pinned
    }

    /// The sections whose settings differ between `self` and `next` (after
    /// [`pin_restart_only`](Self::pin_restart_only): reloadable ones).
    pub fn changed_sections(&self, next: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! section {
            ($($field:ident),+) => {$(
                if self.$field != next.$field {
                    changed.push(stringify!($field));
                }
            )+};
        }
        section!(server, limits, log, auth, authz, rate_limit, admin);
        changed
    }

    /// The configuration as TOML, with secrets redacted.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

impl Overrides {
    fn apply(&self, c: &mut Config) {
        if let Some(v) = self.profile {
            c.profile = v;
        }
        let s = &mut c.server;
        if let Some(v) = &self.host {
            s.host.clone_from(v);
        }
        if let Some(v) = self.port {
            s.port = v;
        }
        if let Some(v) = &self.public_url {
            s.public_url = Some(v.clone());
        }
        if let Some(v) = &self.trusted_proxy {
            s.trusted_proxies.clone_from(v);
        }
        if let Some(v) = self.header_read_timeout_secs {
            s.header_read_timeout_secs = v;
        }
        if let Some(v) = self.long_poll_timeout_ms {
            s.long_poll_timeout_ms = Some(v);
        }
        if let Some(v) = self.max_body_bytes {
            s.max_body_bytes = Some(v);
        }
        if let Some(v) = &self.tls_cert {
            s.tls_cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            s.tls_key = Some(v.clone());
        }
        let st = &mut c.storage;
        if let Some(v) = self.storage {
            st.backend = v;
        }
        if let Some(v) = &self.data_dir {
            st.data_dir.clone_from(v);
        }
        if let Some(v) = self.sync {
            st.sync = v;
        }
        if let Some(v) = self.memory_max_bytes {
            st.memory_max_bytes = Some(v);
        }
        if let Some(v) = &self.log_level {
            c.log.level.clone_from(v);
        }
        if let Some(v) = self.log_format {
            c.log.format = v;
        }
        if let Some(v) = &self.otlp_endpoint {
            c.telemetry.otlp_endpoint = Some(v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "profile = \"conformance\"\n[server]\nport = 9000\nhost = \"0.0.0.0\"\n[log]\nformat = \"json\"\n").unwrap();
        let o = Overrides {
            config: Some(path.clone()),
            port: Some(9001),
            ..Overrides::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(c.server.port, 9001, "flag beats file");
        assert_eq!(c.server.host, "0.0.0.0", "file beats default");
        assert_eq!(c.profile, Profile::Conformance);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.storage.data_dir, PathBuf::from("./data"));
        let printed = c.to_toml().unwrap();
        assert!(printed.contains("port = 9001"));
    }

    #[test]
    fn telemetry_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(&Overrides {
                config: Some(path.clone()),
                ..Overrides::default()
            })
        };
        let c = load("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nservice_name = \"edge\"\nsample_ratio = 0.25\n").unwrap();
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(c.telemetry.service_name, "edge");
        assert_eq!(c.telemetry.sample_ratio, 0.25);
        assert!(load("[telemetry]\nsample_ratio = 1.5\n").is_err());
        assert!(load("[telemetry]\notlp_endpoint = \"collector:4318\"\n").is_err());
        assert!(load("[telemetry]\nendpoint = \"http://x\"\n").is_err());
        let c = load("").unwrap();
        assert!(c.telemetry.otlp_endpoint.is_none());
    }

    #[test]
    fn rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "[server]\nprot = 1\n").unwrap();
        let o = Overrides {
            config: Some(path.clone()),
            ..Overrides::default()
        };
        assert!(
            Config::load(&o).is_err(),
            "unknown keys are errors, not silently ignored"
        );
        std::fs::write(&path, "[server]\ntls_cert = \"/nope.pem\"\n").unwrap();
        assert!(Config::load(&o).is_err());
        std::fs::write(
            &path,
            "[auth.jwt]\nalgorithms = [\"HS256\"]\nhs256_secret = \"x\"\n",
        )
        .unwrap();
        assert!(
            Config::load(&o).is_err(),
            "the production layer's rules are checked too"
        );
        let missing = Overrides {
            config: Some(dir.path().join("missing.toml")),
            ..Overrides::default()
        };
        assert!(Config::load(&missing).is_err());
    }
}
