//! The admin API: API keys and the audit log over HTTP, on a listener of
//! its own (`admin.listen`, which also serves `/metrics`).
//!
//! | method | path | what |
//! |---|---|---|
//! | `GET` | `/admin/v1/keys?tenant=` | list keys (never secrets or hashes) |
//! | `POST` | `/admin/v1/keys` | create a key; the token is in this answer only |
//! | `GET` | `/admin/v1/keys/{id}` | one key |
//! | `DELETE` | `/admin/v1/keys/{id}` | revoke a key |
//! | `GET` | `/admin/v1/audit?tenant=&before=&limit=` | audit log, newest first |
//! | `POST` | `/admin/v1/reload` | re-read the configuration and apply what can change (operators only) |
//!
//! Requests go through the production stack (request id, authentication,
//! metrics, rate limits) and need the `admin` permission. A principal
//! administers its own tenant only; principals of `admin.operator_tenant`
//! (and the anonymous principal when `auth.mode = "none"`) administer every
//! tenant. Keys of other tenants are indistinguishable from missing ones
//! (`404 api_key_not_found`).
//!
//! Every change is written to the audit log (actor, action, target, time,
//! request id) before the answer; a key whose creation cannot be audited
//! is revoked again and the request fails with `503`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Authenticator;
use crate::auth::apikey::{ApiKeyRecord, ApiKeys, NewApiKey, StoreError};
use crate::authz::{Permission, validate_tenant};
use crate::clock::SharedClock;
use crate::principal::Principal;
use crate::problem::{ErrorCode, Problem};
use crate::request_id::RequestId;
use crate::store::{AuditEntry, AuditLog, AuditQuery, actions};

/// `[admin]` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener (admin API and `/metrics`); unset: no
    /// admin listener.
    pub listen: Option<SocketAddr>,
    /// Principals of this tenant with the `admin` permission administer
    /// every tenant; others only their own.
    pub operator_tenant: Option<String>,
}

/// Most audit entries one page returns (and the default page size).
pub const MAX_AUDIT_PAGE: usize = 1000;
const DEFAULT_AUDIT_PAGE: usize = 100;

/// Audit actions of configuration reloads (next to
/// [`actions`](crate::store::actions)).
pub mod reload_actions {
    /// A reload applied the configuration (possibly with nothing changed).
    pub const CONFIG_RELOADED: &str = "config.reloaded";
    /// A reload was refused: the old configuration keeps serving.
    pub const CONFIG_RELOAD_FAILED: &str = "config.reload_failed";
}

/// Who asked for a configuration reload (for the audit log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadActor {
    /// The principal's subject, or e.g. `signal:SIGHUP`.
    pub subject: String,
    pub tenant: String,
    pub request_id: String,
    /// `admin_api` or `sighup`.
    pub trigger: &'static str,
}

/// What a configuration reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// `applied` or `refused`.
    pub result: String,
    /// Sections whose reloadable keys changed and now apply (`rate_limit`,
    /// `auth`, …); empty when the configuration did not change.
    pub changed: Vec<String>,
    /// Keys that changed but only take effect after a restart; they keep
    /// their running values.
    pub requires_restart: Vec<String>,
    /// Why the configuration was refused (never a secret's value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReloadReport {
    pub fn applied(&self) -> bool {
        self.result == "applied"
    }

    /// Counts the attempt in `weir_config_reloads_total{result}`.
    pub fn record_metric(&self) {
        let result = if self.applied() { "applied" } else { "refused" };
        metrics::counter!(crate::metrics::names::CONFIG_RELOADS, "result" => result).increment(1);
    }
}

/// Re-reads and applies the configuration (implemented by `weir serve`,
/// which also audits every attempt).
#[async_trait::async_trait]
pub trait Reload: Send + Sync {
    async fn reload(&self, by: ReloadActor) -> ReloadReport;
}

/// What the admin handlers share.
#[derive(Clone)]
pub struct Admin {
    auth: Arc<Authenticator>,
    audit: Arc<dyn AuditLog>,
    operator_tenant: Option<String>,
    clock: SharedClock,
    reloader: Option<Arc<dyn Reload>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("operator_tenant", &self.operator_tenant)
            .finish_non_exhaustive()
    }
}

/// Which tenants a principal administers.
enum Scope {
    All,
    Tenant(String),
}

impl Scope {
    fn covers(&self, tenant: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == tenant,
        }
    }
}

/// A key as the admin API shows it: never the secret or its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    pub tenant: String,
    pub subject: String,
    pub name: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub last_used_at: Option<u64>,
    pub revoked_at: Option<u64>,
}

impl From<&ApiKeyRecord> for KeyView {
    fn from(r: &ApiKeyRecord) -> KeyView {
        KeyView {
            id: r.id.clone(),
            tenant: r.tenant.clone(),
            subject: r.subject.clone(),
            name: r.name.clone(),
            roles: r.roles.clone(),
            scopes: r.scopes.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// `POST /admin/v1/keys`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Default: the caller's tenant.
    tenant: Option<String>,
    subject: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    expires_at: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    tenant: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    tenant: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ErrorCode::AdminRequestInvalid, detail)
}

fn store_failed(e: &StoreError) -> Problem {
    tracing::error!(error = %e, "admin store failure");
    Problem::new(
        ErrorCode::AdminStoreUnavailable,
        "the layer's store failed; retry later",
    )
    .header(http::header::RETRY_AFTER, "1")
}

fn key_not_found(id: &str) -> Problem {
    Problem::new(ErrorCode::ApiKeyNotFound, format!("no API key `{id}`"))
}

impl Admin {
    /// `audit` records admin actions; API keys are managed through
    /// `auth`'s key service (so a revocation also clears this node's cache).
    pub fn new(
        auth: Arc<Authenticator>,
        audit: Arc<dyn AuditLog>,
        cfg: &AdminConfig,
        clock: SharedClock,
    ) -> Admin {
        Admin {
            auth,
            audit,
            operator_tenant: cfg.operator_tenant.clone(),
            clock,
            reloader: None,
        }
    }

    /// Serves `POST /admin/v1/reload` through `r`.
    pub fn with_reloader(mut self, r: Arc<dyn Reload>) -> Admin {
        self.reloader = Some(r);
        self
    }

    /// The same admin (audit log, clock, reloader) with a reloaded
    /// authenticator and `[admin]` settings.
    pub fn reconfigured(&self, auth: Arc<Authenticator>, cfg: &AdminConfig) -> Admin {
        Admin {
            auth,
            operator_tenant: cfg.operator_tenant.clone(),
            ..self.clone()
        }
    }

    /// `POST /admin/v1/reload`: process-wide, so operators only.
    async fn reload(&self, p: &Principal, rid: Option<&RequestId>) -> Result<Response, Problem> {
        let Scope::All = self.scope(p)? else {
            return Err(Problem::forbidden(
                "reloading the configuration needs an operator principal (admin.operator_tenant)",
            ));
        };
        let Some(r) = &self.reloader else {
            return Err(Problem::new(
                ErrorCode::RouteNotFound,
                "this process does not reload its configuration",
            ));
        };
        let report = r
            .reload(ReloadActor {
                subject: p.subject.clone(),
                tenant: p.tenant.clone(),
                request_id: rid.map(|r| r.as_str().to_owned()).unwrap_or_default(),
                trigger: "admin_api",
            })
            .await;
        if report.applied() {
            return Ok(axum::Json(report).into_response());
        }
        let detail = report
            .error
            .clone()
            .unwrap_or_else(|| "the configuration was refused".into());
        Err(Problem::new(ErrorCode::ConfigInvalid, detail).extension(
            "requires_restart",
            serde_json::to_value(&report.requires_restart).unwrap_or_default(),
        ))
    }

    fn scope(&self, p: &Principal) -> Result<Scope, Problem> {
        if !p.can(Permission::Admin) {
            return Err(Problem::forbidden(
                "the admin API needs the admin permission",
            ));
        }
        let operator = self.operator_tenant.as_deref() == Some(p.tenant.as_str())
            || (p.is_anonymous() && self.auth.mode() == crate::auth::AuthMode::None);
        Ok(if operator {
            Scope::All
        } else {
            Scope::Tenant(p.tenant.clone())
        })
    }

    fn keys(&self) -> Result<&Arc<ApiKeys>, Problem> {
        self.auth.api_keys().ok_or_else(|| {
            Problem::new(
                ErrorCode::ApiKeysDisabled,
                "API keys are disabled (auth.api_keys.enabled = false)",
            )
        })
    }

    fn entry(
        &self,
        p: &Principal,
        rid: Option<&RequestId>,
        action: &str,
        key: &ApiKeyRecord,
    ) -> AuditEntry {
        let at_ms = u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX);
        let mut e = AuditEntry::new(at_ms, p.subject.clone(), action, key.id.clone());
        e.actor_tenant.clone_from(&p.tenant);
        e.tenant.clone_from(&key.tenant);
        e.request_id = rid.map(|r| r.as_str().to_owned()).unwrap_or_default();
        e.detail = json!({
            "auth_method": p.auth_method,
            "actor_key_id": p.key_id,
            "subject": key.subject,
            "name": key.name,
            "roles": key.roles,
            "scopes": key.scopes,
            "expires_at": key.expires_at,
        });
        e
    }

    async fn create(
        &self,
        p: &Principal,
        rid: Option<&RequestId>,
        body: &[u8],
    ) -> Result<Response, Problem> {
        let scope = self.scope(p)?;
        let keys = self.keys()?;
        let b: CreateBody = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("invalid key request: {e}")))?;
        let tenant = b.tenant.unwrap_or_else(|| p.tenant.clone());
        validate_tenant(&tenant).map_err(|e| invalid(e.to_string()))?;
        if !scope.covers(&tenant) {
            return Err(Problem::forbidden(
                "keys of another tenant need an operator principal",
            ));
        }
        if b.subject.is_empty() {
            return Err(invalid("subject is empty"));
        }
        let created = keys
            .create(NewApiKey {
                tenant,
                subject: b.subject,
                name: b.name,
                roles: b.roles,
                scopes: b.scopes,
                expires_at: b.expires_at,
            })
            .await
            .map_err(|e| match e {
                StoreError::Invalid(m) => invalid(m),
                e => store_failed(&e),
            })?;
        let entry = self.entry(p, rid, actions::API_KEY_CREATED, &created.record);
        if let Err(e) = self.audit.record(&entry).await {
            // An unaudited key must not stay usable.
            if let Err(r) = keys.revoke(&created.record.id).await {
                tracing::error!(key_id = %created.record.id, error = %r, "could not revoke an unaudited key");
            }
            return Err(store_failed(&e));
        }
        tracing::info!(key_id = %created.record.id, tenant = %created.record.tenant, actor = %p.subject, "API key created");
        let body = json!({
            "token": created.token.expose(),
            "key": KeyView::from(&created.record),
        });
        Ok((StatusCode::CREATED, axum::Json(body)).into_response())
    }

    async fn find(&self, p: &Principal, id: &str) -> Result<(Scope, ApiKeyRecord), Problem> {
        let scope = self.scope(p)?;
        let rec = self
            .keys()?
            .store()
            .get(id)
            .await
            .map_err(|e| store_failed(&e))?
            .filter(|r| scope.covers(&r.tenant))
            .ok_or_else(|| key_not_found(id))?;
        Ok((scope, rec))
    }

    async fn revoke(
        &self,
        p: &Principal,
        rid: Option<&RequestId>,
        id: &str,
    ) -> Result<Response, Problem> {
        let (_, rec) = self.find(p, id).await?;
        let keys = self.keys()?;
        if !keys.revoke(id).await.map_err(|e| store_failed(&e))? {
            return Err(key_not_found(id));
        }
        let entry = self.entry(p, rid, actions::API_KEY_REVOKED, &rec);
        self.audit
            .record(&entry)
            .await
            .map_err(|e| store_failed(&e))?;
        tracing::info!(key_id = %id, tenant = %rec.tenant, actor = %p.subject, "API key revoked");
        let rec = keys
            .store()
            .get(id)
            .await
            .map_err(|e| store_failed(&e))?
            .unwrap_or(rec);
        Ok(axum::Json(json!({ "key": KeyView::from(&rec) })).into_response())
    }

    async fn list(&self, p: &Principal, q: ListQuery) -> Result<Response, Problem> {
        let scope = self.scope(p)?;
        let tenant = match (&scope, q.tenant) {
            (Scope::All, t) => t,
            (Scope::Tenant(own), None) => Some(own.clone()),
            (Scope::Tenant(own), Some(t)) if &t == own => Some(t),
            // Another tenant's keys: as if there were none.
            (Scope::Tenant(_), Some(_)) => {
                return Ok(axum::Json(json!({ "keys": [] })).into_response());
            }
        };
        let keys = self
            .keys()?
            .list(tenant.as_deref())
            .await
            .map_err(|e| store_failed(&e))?;
        let keys: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
        Ok(axum::Json(json!({ "keys": keys })).into_response())
    }

    async fn audit(&self, p: &Principal, q: AuditParams) -> Result<Response, Problem> {
        let scope = self.scope(p)?;
        let limit = q.limit.unwrap_or(DEFAULT_AUDIT_PAGE);
        if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
            return Err(invalid(format!("limit must be 1..={MAX_AUDIT_PAGE}")));
        }
        if let Some(b) = &q.before
            && (b.is_empty() || b.len() > 64 || !b.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(invalid("before must be an audit entry id"));
        }
        let tenant = match (&scope, q.tenant) {
            (Scope::All, t) => t,
            (Scope::Tenant(own), None) => Some(own.clone()),
            (Scope::Tenant(own), Some(t)) if &t == own => Some(t),
            (Scope::Tenant(_), Some(_)) => {
                return Ok(axum::Json(json!({ "entries": [], "next": null })).into_response());
            }
        };
        let entries = self
            .audit
            .entries(&AuditQuery {
                tenant,
                before: q.before,
                limit,
            })
            .await
            .map_err(|e| store_failed(&e))?;
        let next = (entries.len() == limit)
            .then(|| entries.last().map(|e| e.id.clone()))
            .flatten();
        Ok(axum::Json(json!({ "entries": entries, "next": next })).into_response())
    }
}

/// The authenticated principal, put there by the production stack. Its
/// absence is a wiring bug: refuse rather than guess.
fn principal(p: Caller) -> Result<Arc<Principal>, Problem> {
    p.0.ok_or_else(|| {
        tracing::error!("admin route mounted without the production layer");
        Problem::internal()
    })
}

fn answer(r: Result<Response, Problem>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Parses a query string strictly (unknown parameters are errors).
fn query<T: serde::de::DeserializeOwned + Default>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Problem> {
    q.map(|Query(t)| t)
        .map_err(|e| invalid(format!("invalid query: {}", e.body_text())))
}

/// The principal the production stack put into the request, if any (see
/// [`crate::http::principal_arc_of`]).
struct Caller(Option<Arc<Principal>>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            crate::http::principal_arc_of(&parts.extensions).cloned(),
        ))
    }
}

/// The request id the production stack put into the request, if any (see
/// [`crate::http::request_id_of`]).
struct Rid(Option<RequestId>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Rid {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Rid(crate::http::request_id_of(&parts.extensions).cloned()))
    }
}

async fn list_keys(
    State(a): State<Arc<Admin>>,
    p: Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    answer(async { a.list(&*principal(p)?, query(q)?).await }.await)
}

async fn create_key(State(a): State<Arc<Admin>>, p: Caller, rid: Rid, body: Bytes) -> Response {
    let rid = rid.0;
    answer(async { a.create(&*principal(p)?, rid.as_ref(), &body).await }.await)
}

async fn get_key(State(a): State<Arc<Admin>>, p: Caller, Path(id): Path<String>) -> Response {
    answer(
        async {
            let (_, rec) = a.find(&*principal(p)?, &id).await?;
            Ok(axum::Json(json!({ "key": KeyView::from(&rec) })).into_response())
        }
        .await,
    )
}

async fn revoke_key(
    State(a): State<Arc<Admin>>,
    p: Caller,
    rid: Rid,
    Path(id): Path<String>,
) -> Response {
    let rid = rid.0;
    answer(async { a.revoke(&*principal(p)?, rid.as_ref(), &id).await }.await)
}

async fn read_audit(
    State(a): State<Arc<Admin>>,
    p: Caller,
    q: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    answer(async { a.audit(&*principal(p)?, query(q)?).await }.await)
}

async fn reload_config(State(a): State<Arc<Admin>>, p: Caller, rid: Rid) -> Response {
    let rid = rid.0;
    answer(async { a.reload(&*principal(p)?, rid.as_ref()).await }.await)
}

async fn no_route() -> Response {
    Problem::new(ErrorCode::RouteNotFound, "no such admin route").into_response()
}

async fn wrong_method() -> Response {
    Problem::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this admin route",
    )
    .into_response()
}

/// The admin API's routes (without the production stack: mount it with
/// [`crate::Production::apply`], as [`spawn`] does).
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route(
            "/admin/v1/keys",
            get(list_keys).post(create_key).fallback(wrong_method),
        )
        .route(
            "/admin/v1/keys/{id}",
            get(get_key).delete(revoke_key).fallback(wrong_method),
        )
        .route("/admin/v1/audit", get(read_audit).fallback(wrong_method))
        .route(
            "/admin/v1/reload",
            axum::routing::post(reload_config).fallback(wrong_method),
        )
        .fallback(no_route)
        .with_state(admin)
}

/// The whole admin listener's app: the admin API behind the production
/// stack, plus `/metrics` and `/healthz` served without credentials (bind
/// the listener to a private address).
pub fn app(admin: Arc<Admin>, layer: &crate::Production) -> Router {
    layer
        .apply(router(admin))
        .route("/metrics", get(crate::http::metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
}

/// Binds `addr` and serves [`app`] on it until the returned task is aborted.
pub async fn spawn(
    addr: SocketAddr,
    admin: Arc<Admin>,
    layer: &crate::Production,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    spawn_router(addr, app(admin, layer)).await
}

/// Binds `addr` and serves `app` (e.g. [`app`] behind a
/// [`SwapRouter`](crate::swap::SwapRouter), so a reload can replace it)
/// until the returned task is aborted.
pub async fn spawn_router(
    addr: SocketAddr,
    app: Router,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let svc = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, svc).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok((local, task))
}
