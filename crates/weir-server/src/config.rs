//! Server settings. Defaults are production-safe; the `conformance` profile
//! (see `weir serve --profile conformance`) relaxes exactly the settings the
//! official test suite needs and nothing else.

use std::net::IpAddr;
use std::time::Duration;

/// How catch-up responses may be cached by shared caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheVisibility {
    /// `public`: streams are not user-specific (no auth in front).
    Public,
    /// `private`: responses depend on the caller's credentials.
    Private,
}

/// Subscription delivery settings (PROTOCOL.md §6–7, §12.8–12.9).
#[derive(Clone, Debug)]
pub struct SubscriptionConfig {
    /// Allow `http://localhost` / `http://127.0.0.x` webhook targets (the
    /// spec's development exception). Off in production: webhooks must be
    /// `https://` to public addresses.
    pub allow_loopback_webhooks: bool,
    /// Let workers claim pull-wake subscriptions without a bearer token.
    pub allow_anonymous_claim: bool,
    /// Webhook request timeout.
    pub webhook_timeout: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            allow_loopback_webhooks: false,
            allow_anonymous_claim: false,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything the HTTP layer needs to know.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// How long a long-poll waits for data before `204`.
    pub long_poll_timeout: Duration,
    /// SSE connections are closed after this long so CDNs can collapse.
    pub sse_max_duration: Duration,
    /// Most bytes one read response carries.
    pub max_read_bytes: usize,
    /// Largest request body accepted (`413` above).
    pub max_body_bytes: usize,
    /// Absolute base URL clients reach this server at (for `Location`,
    /// JWKS and callback URLs). `None`: derived from the request's `Host`.
    pub public_url: Option<String>,
    /// Peers whose `X-Forwarded-Proto` / `X-Forwarded-Host` are trusted.
    pub trusted_proxies: Vec<IpAddr>,
    /// URL path under which streams live.
    pub stream_root: String,
    pub cache_visibility: CacheVisibility,
    pub subscriptions: SubscriptionConfig,
    /// Whether the listener terminates TLS (for derived URLs).
    pub tls: bool,
    /// Compress text-like responses (gzip, br, zstd) for clients that ask.
    pub compression: bool,
    /// Load-shedding budgets and per-message/per-tenant limits.
    pub limits: crate::limits::Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            long_poll_timeout: Duration::from_secs(20),
            sse_max_duration: Duration::from_secs(60),
            max_read_bytes: 4 * 1024 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            public_url: None,
            trusted_proxies: Vec::new(),
            stream_root: "/v1/stream".to_owned(),
            cache_visibility: CacheVisibility::Public,
            subscriptions: SubscriptionConfig::default(),
            tls: false,
            compression: true,
            limits: crate::limits::Limits::default(),
        }
    }
}

impl ServerConfig {
    /// The settings the official conformance suite expects: a 500 ms
    /// long-poll, loopback webhooks, anonymous pull-wake claims.
    pub fn conformance() -> ServerConfig {
        ServerConfig {
            long_poll_timeout: Duration::from_millis(500),
            subscriptions: SubscriptionConfig {
                allow_loopback_webhooks: true,
                allow_anonymous_claim: true,
                webhook_timeout: Duration::from_secs(5),
            },
            ..ServerConfig::default()
        }
    }
}
