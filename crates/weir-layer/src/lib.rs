//! The production layer shared by the streams server, the service gateway
//! and the chat backend: one middleware stack and one set of types.
//!
//! * [`problem`] — stable error codes and RFC 9457 problem bodies;
//! * [`request_id`] — request/correlation ids (`X-Request-Id`, `traceparent`);
//! * [`principal`] and [`auth`] — one [`Principal`] from no auth, API keys or
//!   JWTs ([`principal::TokenVerifier`] for non-HTTP callers);
//! * [`authz`] — permissions from roles/scopes, tenant isolation helpers;
//! * [`ratelimit`] — GCRA limits, local or shared through Redis;
//! * [`metrics`] — the Prometheus recorder and the registry of metric names;
//! * [`http`] (feature `http`) — the tower layers and axum extractors;
//! * [`telemetry`] — OpenTelemetry traces over OTLP/HTTP (feature `otel`),
//!   W3C `traceparent` in and out;
//! * [`store`], [`migrate`] — the layer's own tables (API keys, audit log)
//!   in memory, SQLite or PostgreSQL, and their versioned migrations;
//! * `admin` (feature `http`) — the admin API and its listener;
//! * `swap` (feature `http`) — a router replaced while serving (config reload).
//!
//! This crate knows nothing about streams or storage: the server maps its
//! own errors to [`problem::ErrorCode`]s and records its own metrics under
//! the names in [`metrics::names`].

#[cfg(feature = "http")]
pub mod admin;
pub mod auth;
pub mod authz;
pub mod cache;
pub mod clock;
pub mod hex;
#[cfg(feature = "http")]
pub mod http;
pub mod metrics;
pub mod migrate;
pub mod principal;
pub mod problem;
pub mod ratelimit;
pub mod request_id;
pub mod secret;
#[cfg(feature = "http")]
pub mod stack;
pub mod store;
#[cfg(feature = "http")]
pub mod swap;
pub mod telemetry;
mod thread_memo;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use authz::{Permission, Permissions, require};
pub use principal::{AuthError, AuthMethod, Principal, TokenVerifier};
pub use problem::{ErrorCode, Problem};
pub use request_id::RequestId;

/// Everything the layer reads from the configuration file: `[auth]`,
/// `[authz]` and `[rate_limit]`. Every field has a default (auth off,
/// limits off), so an empty file keeps today's behaviour.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayerConfig {
    pub auth: auth::AuthConfig,
    pub authz: authz::AuthzConfig,
    pub rate_limit: ratelimit::RateLimitConfig,
}

/// The layer could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum LayerConfigError {
    #[error(transparent)]
    Auth(#[from] auth::AuthConfigError),
    #[error(transparent)]
    RateLimit(#[from] ratelimit::RateLimitConfigError),
}

/// The built layer: what the server keeps in its state and mounts.
#[derive(Debug, Clone)]
pub struct Production {
    pub authenticator: Arc<auth::Authenticator>,
    pub limiter: Arc<ratelimit::RateLimiter>,
    pub tenants: authz::TenantResolver,
    pub permissions: Arc<authz::PermissionTable>,
    /// The readiness check of the key store's database (PostgreSQL).
    pub database: Option<Arc<store::DependencyCheck>>,
}

impl Production {
    /// Builds the layer. `store` holds API keys when
    /// `auth.api_keys.enabled` (`None`: the store `auth.api_keys` configures).
    /// Must run inside a tokio runtime when the
    /// Redis backend is configured.
    pub fn build(
        cfg: &LayerConfig,
        store: Option<Arc<dyn auth::apikey::ApiKeyStore>>,
        clock: clock::SharedClock,
    ) -> Result<Production, LayerConfigError> {
        let database = store.as_ref().and_then(store::DependencyCheck::of);
        let permissions = Arc::new(cfg.authz.table());
        let authenticator = Arc::new(auth::Authenticator::new(
            cfg.auth.clone(),
            permissions.clone(),
            store,
            clock.clone(),
        )?);
        let limiter = Arc::new(ratelimit::RateLimiter::new(cfg.rate_limit.clone(), clock)?);
        Ok(Production {
            authenticator,
            limiter,
            tenants: cfg.authz.resolver(),
            permissions,
            database,
        })
    }

    /// What `/readyz` should say about the layer's dependencies, checking
    /// the store's database first (a cached answer if under a second old).
    pub async fn check_health(&self) -> LayerHealth {
        if let Some(d) = &self.database {
            d.check().await;
        }
        self.health()
    }

    /// What `/readyz` should say about the layer's dependencies, with the
    /// database as last checked by [`check_health`](Self::check_health).
    pub fn health(&self) -> LayerHealth {
        let rate_limit = self.limiter.health();
        let jwks = self.authenticator.jwt().and_then(|j| j.health());
        // Not ready when requests would fail for lack of a dependency: the
        // shared limiter is down and fails closed, or a JWKS endpoint has
        // never delivered a key. A limiter running on its fallback is
        // degraded, not unready: it still serves.
        let limiter_blocks =
            !rate_limit.healthy && rate_limit.fail_mode == ratelimit::FailMode::Closed;
        let no_keys = jwks
            .as_ref()
            .is_some_and(|j| j.keys == 0 && j.last_error.is_some());
        // Keys, usage and audit live in the database: without it API-key
        // requests fail.
        let database = self.database.as_ref().and_then(|d| d.last());
        let db_down = database.as_ref().is_some_and(|d| !d.up);
        LayerHealth {
            ready: !limiter_blocks && !no_keys && !db_down,
            degraded: !rate_limit.healthy || jwks.as_ref().is_some_and(|j| j.last_error.is_some()),
            rate_limit,
            jwks,
            database,
        }
    }

    /// Mounts request ids, metrics, auth and rate limits on `router`.
    #[cfg(feature = "http")]
    pub fn apply<S: Clone + Send + Sync + 'static>(
        &self,
        router: axum::Router<S>,
    ) -> axum::Router<S> {
        http::apply(
            router,
            self.authenticator.clone(),
            Some(self.limiter.clone()),
        )
    }
}

/// The layer's part of `/readyz` (serializable as its JSON body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerHealth {
    /// Whether the node can serve requests (answer 503 on `/readyz` if not).
    pub ready: bool,
    /// A dependency is down but a fallback is serving.
    pub degraded: bool,
    pub rate_limit: ratelimit::LimiterHealth,
    pub jwks: Option<auth::jwt::JwksHealth>,
    /// The key store's database (PostgreSQL), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<store::DependencyHealth>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in docs/configuration.md parses, with every key it shows.
    #[test]
    fn documented_example_parses() {
        let doc = include_str!("../../../docs/configuration.md");
        let section = doc
            .split("## Production layer")
            .nth(1)
            .expect("section in docs/configuration.md");
        let toml_text = section
            .split("```toml")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("toml example");
        let cfg: LayerConfig = toml::from_str(toml_text).expect("documented example parses");
        assert_eq!(cfg.auth.mode, auth::AuthMode::Required);
        assert_eq!(cfg.rate_limit.rules.len(), 2);
        assert_eq!(cfg.rate_limit.rules[1].limits["default"].requests, 50);
        assert_eq!(cfg.authz.tenant_source, authz::TenantSource::Token);
        let jwt = cfg.auth.jwt.expect("jwt");
        assert_eq!(jwt.algorithms.len(), 3);
        assert_eq!(jwt.claims.scopes, vec!["scope", "scp"]);
        // Every key shown in the tables is a real key: typos are errors.
        let typo = toml::from_str::<LayerConfig>("[auth]\nmdoe = \"none\"\n");
        assert!(typo.is_err());
        // Defaults: empty config = no auth, no limits.
        let empty: LayerConfig = toml::from_str("").unwrap();
        assert_eq!(empty, LayerConfig::default());
        assert!(!empty.rate_limit.enabled);
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let cfg: LayerConfig = toml::from_str(
            "[auth.jwt]\nhs256_secret = \"hunter2\"\n[rate_limit]\nredis_url = \"redis://:pw@h/\"\n",
        )
        .unwrap();
        let printed = toml::to_string(&cfg).unwrap();
        assert!(
            !printed.contains("hunter2") && !printed.contains("pw@"),
            "{printed}"
        );
        assert!(printed.contains("<redacted>"));
    }

    #[tokio::test]
    async fn health_reports_readiness() {
        let layer = Production::build(&LayerConfig::default(), None, clock::system()).unwrap();
        let h = layer.health();
        assert!(h.ready && !h.degraded);
        assert!(h.jwks.is_none());
    }
}
