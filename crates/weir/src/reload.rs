//! Configuration reload for `weir serve`: on SIGHUP and on
//! `POST /admin/v1/reload`, the same sources (file, `WEIR_*` variables and
//! flags as given at start) are read again, validated, and what can change
//! while serving is applied by swapping the routers the listeners serve
//! (`weir_layer::swap::SwapRouter`): requests in flight finish on the
//! router they started on, connections stay open, and storage, the
//! subscription engine and the layer's store are shared, not rebuilt.
//!
//! Keys that need a restart (listeners, TLS, storage, tenancy, the key
//! store, trace export) keep their running values and are reported. An
//! invalid configuration is refused and the running one keeps serving.
//! Every attempt is audited (`config.reloaded` / `config.reload_failed`,
//! section names only, never values) and counted in
//! `weir_config_reloads_total{result}`.

use std::sync::{Arc, Weak};

use anyhow::Context;
use weir_layer::Production;
use weir_layer::admin::{Admin, Reload, ReloadActor, ReloadReport, reload_actions};
use weir_layer::auth::apikey::ApiKeyStore;
use weir_layer::clock::SharedClock;
use weir_layer::store::{AuditEntry, AuditLog};
use weir_layer::swap::SwapRouter;
use weir_server::AppState;

use crate::config::{Config, Overrides};

/// Replaces the log filter (`log.level`) of the running subscriber.
pub type LogFilter = Arc<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// What is serving now.
pub struct Live {
    pub cfg: Config,
    /// The streams server's state (with its production layer, if on).
    pub state: AppState,
    pub layer: Production,
    pub admin: Option<Arc<Admin>>,
}

/// Everything a reload needs; one reload runs at a time.
pub struct Reloader {
    overrides: Overrides,
    clock: SharedClock,
    key_store: Option<Arc<dyn ApiKeyStore>>,
    audit: Option<Arc<dyn AuditLog>>,
    main: SwapRouter,
    admin: Option<SwapRouter>,
    log_filter: Option<LogFilter>,
    live: tokio::sync::Mutex<Live>,
}

/// The admin API's handle on the reloader (weak: the reloader owns the
/// admin, not the other way round).
struct Handle(Weak<Reloader>);

#[async_trait::async_trait]
impl Reload for Handle {
    async fn reload(&self, by: ReloadActor) -> ReloadReport {
        match self.0.upgrade() {
            Some(r) => r.reload(by).await,
            None => ReloadReport {
                result: "refused".into(),
                error: Some("the server is shutting down".into()),
                ..ReloadReport::default()
            },
        }
    }
}

/// What [`Reloader::start`] takes.
pub struct Parts {
    pub overrides: Overrides,
    pub cfg: Config,
    pub state: AppState,
    pub layer: Production,
    pub clock: SharedClock,
    pub key_store: Option<Arc<dyn ApiKeyStore>>,
    pub audit: Option<Arc<dyn AuditLog>>,
    /// The admin API (when `admin.listen` is set), without its reloader.
    pub admin: Option<Admin>,
    pub log_filter: Option<LogFilter>,
}

impl Reloader {
    /// Builds the routers the listeners serve: the streams router (serve
    /// it through [`Reloader::main`]) and, with an admin API, the admin
    /// app ([`Reloader::admin_router`]), whose reload route calls back here.
    pub fn start(p: Parts) -> Arc<Reloader> {
        Arc::new_cyclic(|weak: &Weak<Reloader>| {
            let main = SwapRouter::new(weir_server::router(p.state.clone()));
            let admin = p.admin.map(|a| {
                Arc::new(a.with_reloader(Arc::new(Handle(weak.clone())) as Arc<dyn Reload>))
            });
            let admin_swap = admin
                .as_ref()
                .map(|a| SwapRouter::new(weir_layer::admin::app(a.clone(), &p.layer)));
            Reloader {
                overrides: p.overrides,
                clock: p.clock,
                key_store: p.key_store,
                audit: p.audit,
                main,
                admin: admin_swap,
                log_filter: p.log_filter,
                live: tokio::sync::Mutex::new(Live {
                    cfg: p.cfg,
                    state: p.state,
                    layer: p.layer,
                    admin,
                }),
            }
        })
    }

    /// The streams listener's service.
    pub fn main(&self) -> SwapRouter {
        self.main.clone()
    }

    /// The admin listener's app, if there is an admin API.
    pub fn admin_router(&self) -> Option<axum::Router> {
        self.admin.clone().map(SwapRouter::into_router)
    }

    /// Reloads, audits and counts one attempt.
    pub async fn reload(&self, by: ReloadActor) -> ReloadReport {
        let mut live = self.live.lock().await;
        let report = match self.apply(&mut live) {
            Ok(r) => r,
            Err((e, requires_restart)) => ReloadReport {
                result: "refused".into(),
                changed: Vec::new(),
                requires_restart,
                error: Some(describe(&e)),
            },
        };
        drop(live);
        report.record_metric();
        if report.applied() {
            tracing::info!(
                trigger = by.trigger,
                actor = %by.subject,
                changed = ?report.changed,
                requires_restart = ?report.requires_restart,
                "configuration reloaded"
            );
        } else {
            tracing::warn!(
                trigger = by.trigger,
                actor = %by.subject,
                error = report.error.as_deref().unwrap_or_default(),
                "configuration reload refused; the running configuration keeps serving"
            );
        }
        self.audit(&by, &report).await;
        report
    }

    async fn audit(&self, by: &ReloadActor, report: &ReloadReport) {
        let Some(audit) = &self.audit else {
            return;
        };
        let action = if report.applied() {
            reload_actions::CONFIG_RELOADED
        } else {
            reload_actions::CONFIG_RELOAD_FAILED
        };
        let at_ms = u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX);
        let mut e = AuditEntry::new(at_ms, by.subject.clone(), action, "config");
        e.actor_tenant.clone_from(&by.tenant);
        e.request_id.clone_from(&by.request_id);
        e.detail = serde_json::json!({
            "trigger": by.trigger,
            "changed": report.changed,
            "requires_restart": report.requires_restart,
            "error": report.error,
        });
        if let Err(err) = audit.record(&e).await {
            tracing::error!(error = %err, action, "could not audit a configuration reload");
        }
    }

    /// Reads, validates and applies the configuration. Nothing is applied
    /// unless everything is built. The error carries the restart-only keys
    /// seen so far.
    fn apply(&self, live: &mut Live) -> Result<ReloadReport, (anyhow::Error, Vec<String>)> {
        let mut next = Config::load(&self.overrides).map_err(|e| (e, Vec::new()))?;
        let requires_restart: Vec<String> = live
            .cfg
            .pin_restart_only(&mut next)
            .into_iter()
            .map(String::from)
            .collect();
        let changed: Vec<String> = live
            .cfg
            .changed_sections(&next)
            .into_iter()
            .map(String::from)
            .collect();
        let fail = |e: anyhow::Error| (e, requires_restart.clone());
        if !changed.is_empty() {
            let layer = self.layer_for(live, &next).map_err(fail)?;
            if live.cfg.log.level != next.log.level
                && let Some(set) = &self.log_filter
            {
                set(&next.log.level).map_err(fail)?;
            }
            let server_cfg = crate::serve::http_config(&next);
            let state = live.state.reconfigured(
                server_cfg,
                next.server.production_layer.then(|| layer.clone()),
            );
            self.main.replace(weir_server::router(state.clone()));
            if let (Some(swap), Some(admin)) = (&self.admin, &live.admin) {
                let admin = Arc::new(admin.reconfigured(layer.authenticator.clone(), &next.admin));
                swap.replace(weir_layer::admin::app(admin.clone(), &layer));
                live.admin = Some(admin);
            }
            live.state = state;
            live.layer = layer;
            live.cfg = next;
        }
        Ok(ReloadReport {
            result: "applied".into(),
            changed,
            requires_restart,
            error: None,
        })
    }

    /// The production layer for `next`: the running authenticator while
    /// `[auth]`/`[authz]` are unchanged (its token and JWKS caches stay
    /// warm) and the running limiter while `[rate_limit]` is (its buckets
    /// keep counting); rebuilt parts share the layer's key store.
    fn layer_for(&self, live: &Live, next: &Config) -> anyhow::Result<Production> {
        let (old, cur) = (&live.layer, &live.cfg);
        let keep_auth = cur.auth == next.auth && cur.authz == next.authz;
        let keep_limits = cur.rate_limit == next.rate_limit;
        if keep_auth && keep_limits {
            return Ok(old.clone());
        }
        let built = Production::build(&next.layer(), self.key_store.clone(), self.clock.clone())
            .context("invalid [auth], [authz] or [rate_limit] configuration")?;
        let (authenticator, permissions, tenants) = if keep_auth {
            (
                old.authenticator.clone(),
                old.permissions.clone(),
                old.tenants.clone(),
            )
        } else {
            (
                built.authenticator.clone(),
                built.permissions.clone(),
                built.tenants.clone(),
            )
        };
        let limiter = if keep_limits {
            old.limiter.clone()
        } else {
            built.limiter.clone()
        };
        Ok(Production {
            authenticator,
            limiter,
            tenants,
            permissions,
            ..built
        })
    }
}

/// Listens for SIGHUP for as long as the reloader lives (installed before
/// the server announces itself: an early SIGHUP must not kill it).
#[cfg(unix)]
pub fn on_sighup(r: &Arc<Reloader>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let weak = Arc::downgrade(r);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(r) = weak.upgrade() else { return };
            r.reload(ReloadActor {
                subject: "signal:SIGHUP".into(),
                trigger: "sighup",
                ..ReloadActor::default()
            })
            .await;
        }
    });
    Ok(())
}

/// Why a configuration was refused, without any value from it: figment's
/// messages quote the offending value (which may be a secret) and TOML
/// syntax errors quote the line, so those are reduced to the key path or
/// the position.
fn describe(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<figment::Error>() {
            parts.push(describe_figment(f));
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
}

fn describe_figment(f: &figment::Error) -> String {
    use figment::error::Kind;
    let at = if f.path.is_empty() {
        String::new()
    } else {
        format!(" at `{}`", f.path.join("."))
    };
    match &f.kind {
        Kind::UnknownField(k, _) => format!("unknown key `{k}`{at}"),
        Kind::MissingField(k) => format!("missing key `{k}`{at}"),
        Kind::InvalidType(_, exp) | Kind::InvalidValue(_, exp) => {
            format!("invalid value{at} (expected {exp})")
        }
        Kind::UnknownVariant(_, expected) => {
            format!(
                "unknown value{at} (expected one of {})",
                expected.join(", ")
            )
        }
        Kind::Message(m) => match m.lines().next() {
            Some(first) if first.starts_with("TOML parse error") => first.to_owned(),
            _ => format!("invalid configuration{at}"),
        },
        _ => format!("invalid configuration{at}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_never_quote_values() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("weir.toml");
        let o = Overrides {
            config: Some(path.clone()),
            ..Overrides::default()
        };
        let check = |text: &str, expect: &str| {
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            let Err(e) = Config::load(&o) else {
                panic!("{text} loaded")
            };
            let d = describe(&e);
            assert!(d.contains(expect), "{d}");
            assert!(!d.contains("hunter2") || text.contains("\nhunter2"), "{d}");
        };
        check("[server]\nport = \"hunter2\"\n", "server.port");
        check("[server]\nhunter2 = 1\n", "unknown key");
        check("[auth.jwt]\nhs256_secret = \"hunter2\n", "TOML parse error");
        check(
            "[rate_limit]\nbackend = \"hunter2\"\n",
            "rate_limit.backend",
        );
    }

    #[test]
    fn restart_only_keys_are_pinned() {
        let running = Config::default();
        let mut next = Config::default();
        next.server.port = 1;
        next.storage.backend = crate::config::StorageKind::Memory;
        next.rate_limit.enabled = true;
        next.limits.max_live_readers = 7;
        let pinned = running.pin_restart_only(&mut next);
        assert_eq!(pinned, vec!["server.port", "storage.backend"]);
        assert_eq!(next.server.port, running.server.port);
        assert_eq!(next.storage.backend, running.storage.backend);
        assert_eq!(
            running.changed_sections(&next),
            vec!["limits", "rate_limit"]
        );
    }
}
