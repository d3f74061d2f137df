//! Rate limiting: GCRA limits keyed per principal, API key, tenant or (for
//! anonymous callers) IP, with plans (tiers) and per-route/per-method rules.
//!
//! Every rule whose methods and path prefix match a request is checked; the
//! request is refused if any rule refuses it (`429 rate_limited` with
//! `Retry-After`, `RateLimit` and `RateLimit-Policy` per
//! draft-ietf-httpapi-ratelimit-headers-10/11). The plan of a request is
//! `anonymous_plan` for anonymous callers, else `tenant_plans[tenant]`, else
//! `default_plan`; a rule with no limit for that plan does not apply to it.
//!
//! Backends: `local` (per node, [`local::LocalBackend`]) or `redis` (shared
//! by all nodes, [`redis::RedisBackend`]). If Redis is unreachable,
//! `fail_mode` decides: `local` (default) enforces the same limits per node,
//! `open` lets requests through, `closed` answers `503
//! rate_limiter_unavailable`. Either way [`RateLimiter::health`] reports it
//! (for `/readyz`) and `weir_ratelimit_backend_up` drops to 0.

pub mod gcra;
pub mod local;
#[cfg(feature = "redis")]
pub mod redis;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::SharedClock;
use crate::metrics::names;
use crate::principal::{AuthMethod, Principal};
use crate::problem::{ErrorCode, Problem};
use crate::secret::{self, Secret};
use crate::thread_memo;

pub use gcra::{Decision, Limit};

/// Where limit state lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    #[default]
    Local,
    Redis,
}

/// What to do while Redis is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Enforce the same limits per node (a cluster of N nodes then allows up
    /// to N× the limit).
    #[default]
    Local,
    /// No limits until Redis is back.
    Open,
    /// Refuse limited requests with `503 rate_limiter_unavailable`.
    Closed,
}

/// What a rule's key is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBy {
    /// The API key for API-key callers, the subject for JWT callers, the IP
    /// for anonymous callers.
    #[default]
    Auto,
    /// The subject (tenant-qualified), whatever the method; IP for anonymous.
    Principal,
    /// The whole tenant shares one limit.
    Tenant,
    /// The client IP, even for authenticated callers.
    Ip,
}

/// One rule (config `[[rate_limit.rules]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Policy name, reported in `RateLimit-Policy` (`"{name}.{plan}"`).
    pub name: String,
    /// HTTP methods (upper case) this rule covers; empty: all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefix this rule covers.
    #[serde(default = "root")]
    pub path_prefix: String,
    #[serde(default)]
    pub key: KeyBy,
    /// Quota units one request costs.
    #[serde(default = "one")]
    pub cost: u64,
    /// Limit per plan.
    pub limits: BTreeMap<String, Limit>,
}

fn root() -> String {
    "/".into()
}
fn one() -> u64 {
    1
}

/// Rate-limit settings (config `[rate_limit]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub backend: BackendKind,
    pub redis_url: Option<Secret>,
    pub redis_url_file: Option<PathBuf>,
    pub redis_key_prefix: String,
    /// A Redis call slower than this counts as a failure.
    pub redis_timeout_ms: u64,
    /// After a failure, Redis is skipped this long before it is tried again.
    pub redis_retry_ms: u64,
    pub fail_mode: FailMode,
    /// Most keys the local backend holds (memory bound: ~17 bytes each).
    pub local_max_keys: usize,
    /// Send `RateLimit`/`RateLimit-Policy` on allowed responses too.
    pub headers_on_success: bool,
    pub default_plan: String,
    pub anonymous_plan: String,
    /// tenant → plan.
    pub tenant_plans: BTreeMap<String, String>,
    pub rules: Vec<Rule>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let limits = [
            (
                "default".to_owned(),
                Limit {
                    requests: 100,
                    window_secs: 1,
                    burst: Some(200),
                },
            ),
            (
                "anonymous".to_owned(),
                Limit {
                    requests: 20,
                    window_secs: 1,
                    burst: Some(40),
                },
            ),
        ];
        RateLimitConfig {
            enabled: false,
            backend: BackendKind::Local,
            redis_url: None,
            redis_url_file: None,
            redis_key_prefix: "weir:rl:".into(),
            redis_timeout_ms: 50,
            redis_retry_ms: 1000,
            fail_mode: FailMode::Local,
            local_max_keys: 100_000,
            headers_on_success: true,
            default_plan: "default".into(),
            anonymous_plan: "anonymous".into(),
            tenant_plans: BTreeMap::new(),
            rules: vec![Rule {
                name: "global".into(),
                methods: Vec::new(),
                path_prefix: "/".into(),
                key: KeyBy::Auto,
                cost: 1,
                limits: limits.into_iter().collect(),
            }],
        }
    }
}

/// A rate-limit configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitConfigError {
    #[error(transparent)]
    Secret(#[from] secret::SecretError),
    #[error("rate_limit.backend = \"redis\" needs redis_url or redis_url_file")]
    NoRedisUrl,
    #[error("rate_limit: this build has no Redis support (feature `redis`)")]
    NoRedisSupport,
    #[error("rate_limit: {0}")]
    Redis(String),
    #[error(
        "rate_limit.rules.{rule}.limits.{plan}: requests, window_secs and burst must be positive"
    )]
    BadLimit { rule: String, plan: String },
}

/// What the limiter knows about a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    /// Shared (as the credential memos hand it out): the local limiter
    /// remembers a principal's key hashes by its address.
    pub principal: Option<&'a Arc<Principal>>,
    pub ip: Option<IpAddr>,
}

/// One applied policy and its decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDecision {
    /// `"{rule}.{plan}"` (shared with the limiter's preformatted policy:
    /// a decision costs no allocation for its name).
    pub policy: Arc<str>,
    pub limit: Limit,
    pub decision: Decision,
}

/// The decisions of the policies applied to one request. A request is
/// checked against the few rules that match it (one, in the default
/// configuration), so the first two live inline: a `Vec` here was a heap
/// allocation and its free on every request, for a list read once.
pub type Decisions = smallvec::SmallVec<[PolicyDecision; 2]>;

/// The verdict on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the decisions of every applied policy (maybe none).
    Allowed(Decisions),
    /// Refused by at least one policy.
    Limited(Decisions),
    /// The shared backend is down and `fail_mode = "closed"`.
    Unavailable,
}

/// Backend health for `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LimiterHealth {
    pub backend: BackendKind,
    /// False while Redis is unreachable (fallback in force).
    pub healthy: bool,
    pub fail_mode: FailMode,
    pub last_error: Option<String>,
    pub local_keys: usize,
}

/// What one (rule, plan) pair reports, formatted once when the limiter is
/// built: the names and header values are the same on every request, and
/// formatting them per request was most of the limiter's cost.
#[derive(Debug)]
struct Policy {
    /// `"{rule}.{plan}"`.
    name: Arc<str>,
    /// Its `RateLimit-Policy` item.
    item: String,
    /// `RateLimit-Policy` when it is the only applied policy.
    header: Option<http::HeaderValue>,
    limit: Limit,
}

impl Policy {
    fn new(rule: &str, plan: &str, limit: &Limit) -> Policy {
        let name = format!("{rule}.{plan}");
        let item = policy_item(&name, limit);
        Policy {
            header: http::HeaderValue::from_str(&item).ok(),
            name: name.into(),
            item,
            limit: *limit,
        }
    }
}

/// The limiter.
pub struct RateLimiter {
    cfg: RateLimitConfig,
    /// Per rule (same order as `cfg.rules`): plan → its policy.
    policies: Vec<BTreeMap<String, Arc<Policy>>>,
    /// Every policy by name, for the response headers (foldhash: short
    /// keys from the operator's config, no need for SipHash).
    by_name: foldhash::HashMap<Arc<str>, Arc<Policy>>,
    /// The same policies in a list: a decision's name is the policy's own
    /// `Arc`, so a pointer compare over the first few finds it without
    /// hashing the name (`by_name` answers past them, or for a decision
    /// built by hand).
    all: Vec<Arc<Policy>>,
    local: Arc<local::LocalBackend>,
    #[cfg(feature = "redis")]
    redis: Option<redis::RedisBackend>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("backend", &self.cfg.backend)
            .field("rules", &self.cfg.rules.len())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Builds the limiter. With the Redis backend this must run inside a
    /// tokio runtime; it does not wait for Redis (which may be down).
    pub fn new(
        cfg: RateLimitConfig,
        clock: SharedClock,
    ) -> Result<RateLimiter, RateLimitConfigError> {
        for r in &cfg.rules {
            for (plan, l) in &r.limits {
                if !l.is_valid() {
                    return Err(RateLimitConfigError::BadLimit {
                        rule: r.name.clone(),
                        plan: plan.clone(),
                    });
                }
            }
        }
        let policies: Vec<BTreeMap<String, Arc<Policy>>> = cfg
            .rules
            .iter()
            .map(|r| {
                r.limits
                    .iter()
                    .map(|(plan, l)| (plan.clone(), Arc::new(Policy::new(&r.name, plan, l))))
                    .collect()
            })
            .collect();
        let all: Vec<Arc<Policy>> = policies
            .iter()
            .flat_map(BTreeMap::values)
            .cloned()
            .collect();
        let by_name = all.iter().map(|p| (p.name.clone(), p.clone())).collect();
        let local = Arc::new(local::LocalBackend::new(cfg.local_max_keys, clock.clone()));
        #[cfg(feature = "redis")]
        let redis = match cfg.backend {
            BackendKind::Local => None,
            BackendKind::Redis => {
                let url = secret::resolve(
                    "rate_limit.redis_url",
                    cfg.redis_url.as_ref(),
                    cfg.redis_url_file.as_deref(),
                )?
                .ok_or(RateLimitConfigError::NoRedisUrl)?;
                Some(
                    redis::RedisBackend::new(
                        url.expose(),
                        cfg.redis_key_prefix.clone(),
                        Duration::from_millis(cfg.redis_timeout_ms),
                        Duration::from_millis(cfg.redis_retry_ms),
                        clock,
                    )
                    .map_err(|e| RateLimitConfigError::Redis(e.to_string()))?,
                )
            }
        };
        #[cfg(not(feature = "redis"))]
        if cfg.backend == BackendKind::Redis {
            return Err(RateLimitConfigError::NoRedisSupport);
        }
        metrics::gauge!(names::RATELIMIT_BACKEND_UP, "backend" => backend_label(cfg.backend))
            .set(1.0);
        Ok(RateLimiter {
            cfg,
            policies,
            by_name,
            all,
            local,
            #[cfg(feature = "redis")]
            redis,
        })
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.cfg
    }

    /// Whether a request of this principal can be keyed by its address
    /// (see `key_of`): an anonymous one always, an authenticated one only
    /// under a rule keyed `ip`. Otherwise the caller need not look the
    /// address up.
    pub fn keys_by_ip(&self, p: Option<&Principal>) -> bool {
        match p {
            Some(p) if !p.is_anonymous() => self.cfg.rules.iter().any(|r| r.key == KeyBy::Ip),
            _ => true,
        }
    }

    /// The local store (memory accounting, tests).
    pub fn local(&self) -> &local::LocalBackend {
        &self.local
    }

    /// Drops replenished local keys every `every` (call once at startup).
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match me.upgrade() {
                    Some(l) => {
                        l.local.sweep();
                    }
                    None => return,
                }
            }
        })
    }

    pub fn health(&self) -> LimiterHealth {
        #[cfg(feature = "redis")]
        let (healthy, last_error) = match &self.redis {
            Some(r) => (r.is_up(), r.last_error()),
            None => (true, None),
        };
        #[cfg(not(feature = "redis"))]
        let (healthy, last_error) = (true, None);
        LimiterHealth {
            backend: self.cfg.backend,
            healthy,
            fail_mode: self.cfg.fail_mode,
            last_error,
            local_keys: self.local.len(),
        }
    }

    /// The plan of a request.
    pub fn plan_of<'a>(&'a self, p: Option<&'a Principal>) -> &'a str {
        match p {
            None => &self.cfg.anonymous_plan,
            Some(p) if p.is_anonymous() => &self.cfg.anonymous_plan,
            Some(p) => self
                .cfg
                .tenant_plans
                .get(&p.tenant)
                .unwrap_or(&self.cfg.default_plan),
        }
    }

    /// Checks every matching rule.
    pub async fn check(&self, req: RequestInfo<'_>) -> Verdict {
        if let Some(v) = self.check_now(req) {
            return v;
        }
        let mut out = Decisions::new();
        let mut limited = false;
        for (_, rule, limit, pol) in self.applicable(&req) {
            let key = RuleKey {
                rule: &rule.name,
                key: key_of(rule.key, &req),
            };
            let decision = match self.check_one(&key, limit, rule.cost).await {
                Some(d) => d,
                None => return Verdict::Unavailable,
            };
            limited |= record(&mut out, pol, limit, decision);
        }
        if limited {
            Verdict::Limited(out)
        } else {
            Verdict::Allowed(out)
        }
    }

    /// [`RateLimiter::check`] when it needs no waiting: the limiter is
    /// off, or its state is local (no Redis backend). `None`: call `check`.
    pub fn check_now(&self, req: RequestInfo<'_>) -> Option<Verdict> {
        if !self.cfg.enabled {
            return Some(Verdict::Allowed(Decisions::new()));
        }
        #[cfg(feature = "redis")]
        if self.redis.is_some() {
            return None;
        }
        let mut out = Decisions::new();
        let mut limited = false;
        for (i, rule, limit, pol) in self.applicable(&req) {
            let key = RuleKey {
                rule: &rule.name,
                key: key_of(rule.key, &req),
            };
            let hash = match (&key.key, req.principal) {
                // The key is the principal's (see `key_of`).
                (KeyOf::Tenant(_) | KeyOf::Sub(..) | KeyOf::Key(_), Some(p)) => {
                    self.local.hash_for_principal(p, i, |h| key.feed(h))
                }
                _ => self.local.hash_fed(|h| key.feed(h)),
            };
            let decision = self.local.check_hashed(hash, limit, rule.cost);
            limited |= record(&mut out, pol, limit, decision);
        }
        Some(if limited {
            Verdict::Limited(out)
        } else {
            Verdict::Allowed(out)
        })
    }

    /// The rules that apply to a request, with the limit and policy of its
    /// plan.
    fn applicable<'a>(
        &'a self,
        req: &RequestInfo<'a>,
    ) -> impl Iterator<Item = (usize, &'a Rule, &'a Limit, &'a Arc<Policy>)> + 'a {
        let plan = self.plan_of(req.principal.map(|p| &**p));
        let (method, path) = (req.method, req.path);
        self.cfg
            .rules
            .iter()
            .zip(&self.policies)
            .enumerate()
            .filter_map(move |(i, (rule, policies))| {
                if !rule.methods.is_empty()
                    && !rule
                        .methods
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(method.as_str()))
                {
                    return None;
                }
                if !path.starts_with(&rule.path_prefix) {
                    return None;
                }
                let pol = policies.get(plan)?;
                Some((i, rule, &pol.limit, pol))
            })
    }

    /// One key against one limit; `None` means "refuse: backend down, fail closed".
    async fn check_one(&self, key: &RuleKey<'_>, limit: &Limit, cost: u64) -> Option<Decision> {
        #[cfg(feature = "redis")]
        if let Some(r) = &self.redis {
            let hashed = hash_key(&key.to_string());
            match r.check(&hashed, limit, cost).await {
                Ok(d) => {
                    metrics::gauge!(names::RATELIMIT_BACKEND_UP, "backend" => "redis").set(1.0);
                    return Some(d);
                }
                Err(_) => {
                    metrics::gauge!(names::RATELIMIT_BACKEND_UP, "backend" => "redis").set(0.0);
                    let mode = match self.cfg.fail_mode {
                        FailMode::Local => "local",
                        FailMode::Open => "open",
                        FailMode::Closed => "closed",
                    };
                    metrics::counter!(names::RATELIMIT_FALLBACKS, "mode" => mode).increment(1);
                    match self.cfg.fail_mode {
                        FailMode::Local => {}
                        FailMode::Open => {
                            return Some(Decision {
                                allowed: true,
                                remaining: limit.burst(),
                                reset_after: Duration::from_secs(1),
                                retry_after: None,
                            });
                        }
                        FailMode::Closed => return None,
                    }
                }
            }
        }
        Some(self.local.check_with(|h| key.feed(h), limit, cost))
    }

    /// `RateLimit` and `RateLimit-Policy` for an allowed request's
    /// response (the same values as [`ratelimit_header`] and
    /// [`policy_header`]), from the policies' preformatted parts.
    pub fn success_headers(
        &self,
        ds: &[PolicyDecision],
    ) -> (Option<http::HeaderValue>, Option<http::HeaderValue>) {
        let policy = |d: &PolicyDecision| {
            self.all
                .iter()
                .take(8)
                .find(|p| Arc::ptr_eq(&p.name, &d.policy))
                .or_else(|| self.by_name.get(&d.policy))
        };
        let ratelimit = ds
            .iter()
            .min_by_key(|d| (d.decision.allowed, d.decision.remaining))
            .and_then(ratelimit_value);
        let policy_value = match ds {
            [] => None,
            [d] => match policy(d) {
                Some(p) if p.limit_matches(&d.limit) => p.header.clone(),
                _ => policy_header(ds).and_then(|v| http::HeaderValue::try_from(v).ok()),
            },
            _ => {
                let mut v = String::new();
                for (n, d) in ds.iter().enumerate() {
                    if n > 0 {
                        v.push_str(", ");
                    }
                    match policy(d) {
                        Some(p) if p.limit_matches(&d.limit) => v.push_str(&p.item),
                        _ => v.push_str(&policy_item(&d.policy, &d.limit)),
                    }
                }
                http::HeaderValue::try_from(v).ok()
            }
        };
        (ratelimit, policy_value)
    }
}

/// The last `RateLimit` value built on this thread: its policy (kept
/// alive here, so a pointer compare identifies it), `r`, `t` and the value.
type LastValue = (Arc<str>, u64, u64, http::HeaderValue);

thread_local! {
    static LAST_RATELIMIT: std::cell::RefCell<Option<LastValue>> =
        const { std::cell::RefCell::new(None) };
}

/// One decision's `RateLimit` value (`"{policy}";r={remaining};t={secs}`,
/// as [`ratelimit_header`] writes it).
///
/// A client well within its limit gets the same value on every request
/// (full quota left, `t` the emission interval), so each thread keeps the
/// last value it built and hands out a clone (a reference count) when the
/// next one would be the same bytes: formatting, validating and copying it
/// into a fresh allocation was most of what the header cost.
fn ratelimit_value(d: &PolicyDecision) -> Option<http::HeaderValue> {
    let secs = ceil_secs(d.decision.reset_after);
    let remaining = d.decision.remaining;
    let same = thread_memo::read(&LAST_RATELIMIT, |(p, r, t, v)| {
        (Arc::ptr_eq(p, &d.policy) && *r == remaining && *t == secs).then(|| v.clone())
    });
    if same.is_some() {
        return same;
    }
    let v = build_ratelimit_value(d, remaining, secs)?;
    thread_memo::update(&LAST_RATELIMIT, |l| {
        *l = Some((d.policy.clone(), remaining, secs, v.clone()));
    });
    Some(v)
}

/// [`ratelimit_value`] built: assembled on the stack and copied once into
/// the header value, with no `String` and no policy lookup. A name too
/// long for the buffer takes the formatted path.
fn build_ratelimit_value(
    d: &PolicyDecision,
    remaining: u64,
    secs: u64,
) -> Option<http::HeaderValue> {
    const CAP: usize = 160;
    let mut remaining_buf = itoa::Buffer::new();
    let remaining = remaining_buf.format(remaining).as_bytes();
    let mut secs_buf = itoa::Buffer::new();
    let secs = secs_buf.format(secs).as_bytes();
    let parts: [&[u8]; 6] = [
        b"\"",
        d.policy.as_bytes(),
        b"\";r=",
        remaining,
        b";t=",
        secs,
    ];
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > CAP {
        let v = ratelimit_header(std::slice::from_ref(d))?;
        return http::HeaderValue::try_from(v).ok();
    }
    let mut buf = [0u8; CAP];
    let mut at = 0;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    http::HeaderValue::from_bytes(&buf[..at]).ok()
}

/// Adds one policy's decision; whether it refused (counted).
fn record(out: &mut Decisions, pol: &Policy, limit: &Limit, d: Decision) -> bool {
    let refused = !d.allowed;
    if refused {
        metrics::counter!(names::RATELIMIT_REJECTIONS, "policy" => pol.name.to_string())
            .increment(1);
    }
    out.push(PolicyDecision {
        policy: pol.name.clone(),
        limit: *limit,
        decision: d,
    });
    refused
}

/// A rule's limiter key: `{rule}:{key}` — formatted only for Redis; the
/// local store hashes the same bytes without building the string.
struct RuleKey<'a> {
    rule: &'a str,
    key: KeyOf<'a>,
}

impl RuleKey<'_> {
    /// Feeds the hasher exactly what hashing `self.to_string()` as a `str`
    /// would (its bytes, then `0xff`), so both spellings name one key. The
    /// parts are gathered into a stack buffer and handed over in one
    /// `write`: SipHash's result does not depend on how its input is split,
    /// but each call pays for the split (five calls cost ~4× one).
    fn feed(&self, h: &mut impl std::hash::Hasher) {
        let mut b = Gather::new(h);
        b.push(self.rule.as_bytes());
        b.push(b":");
        match &self.key {
            KeyOf::Ip(_) => {
                use std::fmt::Write;
                let _ = write!(b, "{}", self.key);
            }
            KeyOf::Tenant(t) => {
                b.push(b"tenant:");
                b.push(t.as_bytes());
            }
            KeyOf::Sub(t, s) => {
                b.push(b"sub:");
                b.push(t.as_bytes());
                b.push(b"/");
                b.push(s.as_bytes());
            }
            KeyOf::Key(k) => {
                b.push(b"key:");
                b.push(k.as_bytes());
            }
        }
        b.push(&[0xff]);
        b.flush();
    }
}

/// Collects small writes for a hasher on the stack and passes them on in
/// as few `write` calls as fit (one, for any key up to its capacity).
struct Gather<'h, H: std::hash::Hasher> {
    h: &'h mut H,
    buf: [u8; 160],
    len: usize,
}

impl<'h, H: std::hash::Hasher> Gather<'h, H> {
    fn new(h: &'h mut H) -> Self {
        Gather {
            h,
            buf: [0; 160],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.flush();
            if bytes.len() > self.buf.len() {
                self.h.write(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn flush(&mut self) {
        if self.len > 0 {
            self.h.write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl<H: std::hash::Hasher> std::fmt::Write for Gather<'_, H> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

impl std::fmt::Display for RuleKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.rule, self.key)
    }
}

/// What a rule keys a request by.
enum KeyOf<'a> {
    Ip(Option<IpAddr>),
    Tenant(&'a str),
    Sub(&'a str, &'a str),
    Key(&'a str),
}

impl std::fmt::Display for KeyOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOf::Ip(Some(ip)) => write!(f, "ip:{ip}"),
            KeyOf::Ip(None) => f.write_str("ip:unknown"),
            KeyOf::Tenant(t) => write!(f, "tenant:{t}"),
            KeyOf::Sub(t, s) => write!(f, "sub:{t}/{s}"),
            KeyOf::Key(k) => write!(f, "key:{k}"),
        }
    }
}

impl Policy {
    /// Whether a decision's limit is the one this policy was formatted
    /// for (always, unless the decision was built by hand).
    fn limit_matches(&self, l: &Limit) -> bool {
        self.limit == *l
    }
}

fn backend_label(b: BackendKind) -> &'static str {
    match b {
        BackendKind::Local => "local",
        BackendKind::Redis => "redis",
    }
}

/// Fixed-length Redis key material (subjects can be long and arbitrary).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
fn hash_key(key: &str) -> String {
    let (rule, rest) = key.split_once(':').unwrap_or(("", key));
    let d = Sha256::digest(rest.as_bytes());
    let hex = crate::hex::encode(&d[..16]);
    format!("{rule}:{hex}")
}

fn key_of<'a>(by: KeyBy, req: &RequestInfo<'a>) -> KeyOf<'a> {
    let p = match req.principal {
        Some(p) if !p.is_anonymous() => p,
        _ => return KeyOf::Ip(req.ip),
    };
    match by {
        KeyBy::Ip => KeyOf::Ip(req.ip),
        KeyBy::Tenant => KeyOf::Tenant(&p.tenant),
        KeyBy::Principal => KeyOf::Sub(&p.tenant, &p.subject),
        KeyBy::Auto => match (&p.auth_method, &p.key_id) {
            (AuthMethod::ApiKey, Some(k)) => KeyOf::Key(k),
            _ => KeyOf::Sub(&p.tenant, &p.subject),
        },
    }
}

/// One policy's `RateLimit-Policy` item.
fn policy_item(name: &str, l: &Limit) -> String {
    let mut s = format!("\"{name}\";q={};w={}", l.requests, l.window_secs);
    if l.burst() != l.requests {
        s.push_str(&format!(";weir-burst={}", l.burst()));
    }
    s
}

/// The `RateLimit-Policy` value: every applied policy.
pub fn policy_header(ds: &[PolicyDecision]) -> Option<String> {
    if ds.is_empty() {
        return None;
    }
    Some(
        ds.iter()
            .map(|d| policy_item(&d.policy, &d.limit))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `RateLimit` value: the most constrained policy (a refusing one if
/// any, else the one with the least remaining).
pub fn ratelimit_header(ds: &[PolicyDecision]) -> Option<String> {
    let d = ds
        .iter()
        .min_by_key(|d| (d.decision.allowed, d.decision.remaining))?;
    Some(format!(
        "\"{}\";r={};t={}",
        d.policy,
        d.decision.remaining,
        ceil_secs(d.decision.reset_after)
    ))
}

/// The `429` for a refused request.
pub fn limited_problem(ds: &[PolicyDecision]) -> Problem {
    let violated: Vec<&str> = ds
        .iter()
        .filter(|d| !d.decision.allowed)
        .map(|d| &*d.policy)
        .collect();
    let wait = ds
        .iter()
        .filter_map(|d| d.decision.retry_after)
        .max()
        .unwrap_or(Duration::from_secs(1));
    let mut p = Problem::new(
        ErrorCode::RateLimited,
        format!("rate limit exceeded; retry in {} s", ceil_secs(wait).max(1)),
    )
    .extension("violated-policies", violated)
    .header(
        http::header::RETRY_AFTER,
        ceil_secs(wait).max(1).to_string(),
    );
    if let Some(v) = ratelimit_header(ds) {
        p = p.header(http::HeaderName::from_static("ratelimit"), v);
    }
    if let Some(v) = policy_header(ds) {
        p = p.header(http::HeaderName::from_static("ratelimit-policy"), v);
    }
    p
}

/// The `503` when the shared backend is down and the limiter fails closed.
pub fn unavailable_problem() -> Problem {
    Problem::new(
        ErrorCode::RateLimiterUnavailable,
        "the rate limiter is unavailable; try again shortly",
    )
    .header(http::header::RETRY_AFTER, "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn cfg(rules: Vec<Rule>) -> RateLimitConfig {
        RateLimitConfig {
            enabled: true,
            rules,
            ..Default::default()
        }
    }

    fn rule(name: &str, methods: &[&str], prefix: &str, key: KeyBy, plans: &[(&str, u64)]) -> Rule {
        Rule {
            name: name.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path_prefix: prefix.into(),
            key,
            cost: 1,
            limits: plans
                .iter()
                .map(|(p, n)| {
                    (
                        p.to_string(),
                        Limit {
                            requests: *n,
                            window_secs: 60,
                            burst: None,
                        },
                    )
                })
                .collect(),
        }
    }

    fn user(tenant: &str, sub: &str) -> Principal {
        Principal {
            auth_method: AuthMethod::Jwt,
            ..Principal::new(sub, tenant)
        }
    }

    async fn hit(
        l: &RateLimiter,
        m: &http::Method,
        path: &str,
        p: Option<&Principal>,
        ip: &str,
    ) -> Verdict {
        let p = p.map(|p| Arc::new(p.clone()));
        l.check(RequestInfo {
            method: m,
            path,
            principal: p.as_ref(),
            ip: ip.parse().ok(),
        })
        .await
    }

    #[tokio::test]
    async fn plans_keys_and_rules() {
        let mut c = cfg(vec![
            rule(
                "global",
                &[],
                "/",
                KeyBy::Auto,
                &[("default", 3), ("pro", 5), ("anonymous", 1)],
            ),
            rule(
                "append",
                &["POST"],
                "/v1/stream/",
                KeyBy::Tenant,
                &[("default", 2)],
            ),
        ]);
        c.tenant_plans.insert("big".into(), "pro".into());
        let l = RateLimiter::new(c, ManualClock::new()).unwrap();
        let get = http::Method::GET;
        let post = http::Method::POST;
        let (a1, a2, b) = (user("a", "1"), user("a", "2"), user("big", "1"));

        // Anonymous callers are limited per IP.
        assert!(matches!(
            hit(&l, &get, "/x", None, "10.0.0.1").await,
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            hit(&l, &get, "/x", None, "10.0.0.1").await,
            Verdict::Limited(_)
        ));
        assert!(matches!(
            hit(&l, &get, "/x", None, "10.0.0.2").await,
            Verdict::Allowed(_)
        ));

        // The append rule is per tenant: two users of tenant a share 2 POSTs.
        assert!(matches!(
            hit(&l, &post, "/v1/stream/s", Some(&a1), "").await,
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            hit(&l, &post, "/v1/stream/s", Some(&a2), "").await,
            Verdict::Allowed(_)
        ));
        let Verdict::Limited(ds) = hit(&l, &post, "/v1/stream/s", Some(&a2), "").await else {
            panic!("third append of tenant a must be limited");
        };
        assert_eq!(ds.len(), 2);
        // GETs are not covered by the append rule; a2 has used 2 of 3 global.
        let Verdict::Allowed(ds) = hit(&l, &get, "/v1/stream/s", Some(&a2), "").await else {
            panic!()
        };
        assert_eq!(ds.len(), 1);
        assert_eq!(&*ds[0].policy, "global.default");
        assert_eq!(ds[0].decision.remaining, 0);

        // The pro plan of tenant big has its own, larger limit.
        for _ in 0..5 {
            assert!(matches!(
                hit(&l, &get, "/", Some(&b), "").await,
                Verdict::Allowed(_)
            ));
        }
        assert!(matches!(
            hit(&l, &get, "/", Some(&b), "").await,
            Verdict::Limited(_)
        ));
    }

    #[tokio::test]
    async fn headers_follow_the_draft() {
        let l = RateLimiter::new(
            cfg(vec![rule(
                "global",
                &[],
                "/",
                KeyBy::Auto,
                &[("default", 2)],
            )]),
            ManualClock::new(),
        )
        .unwrap();
        let p = user("a", "1");
        let get = http::Method::GET;
        let Verdict::Allowed(ds) = hit(&l, &get, "/", Some(&p), "").await else {
            panic!()
        };
        assert_eq!(policy_header(&ds).unwrap(), "\"global.default\";q=2;w=60");
        assert_eq!(
            ratelimit_header(&ds).unwrap(),
            "\"global.default\";r=1;t=30"
        );
        hit(&l, &get, "/", Some(&p), "").await;
        let Verdict::Limited(ds) = hit(&l, &get, "/", Some(&p), "").await else {
            panic!()
        };
        let prob = limited_problem(&ds);
        assert_eq!(prob.status, 429);
        assert_eq!(prob.code, ErrorCode::RateLimited);
        assert_eq!(prob.header_value("retry-after").unwrap(), "30");
        assert_eq!(
            prob.header_value("ratelimit").unwrap(),
            "\"global.default\";r=0;t=30"
        );
        assert_eq!(
            prob.header_value("ratelimit-policy").unwrap(),
            "\"global.default\";q=2;w=60"
        );
        assert_eq!(prob.extensions["violated-policies"][0], "global.default");
    }

    /// The preformatted success headers say exactly what the formatting
    /// functions say, for one policy and for several.
    #[tokio::test]
    async fn success_headers_match_the_formatted_ones() {
        let mut burst = rule("burst", &["POST"], "/", KeyBy::Tenant, &[("default", 5)]);
        if let Some(l) = burst.limits.get_mut("default") {
            l.burst = Some(9);
        }
        let l = RateLimiter::new(
            cfg(vec![
                rule("global", &[], "/", KeyBy::Auto, &[("default", 10)]),
                burst,
            ]),
            ManualClock::new(),
        )
        .unwrap();
        let p = user("a", "1");
        for m in [http::Method::GET, http::Method::POST] {
            for _ in 0..2 {
                let Verdict::Allowed(ds) = hit(&l, &m, "/s", Some(&p), "").await else {
                    panic!("allowed")
                };
                let (r, pol) = l.success_headers(&ds);
                assert_eq!(r.unwrap().to_str().unwrap(), ratelimit_header(&ds).unwrap());
                assert_eq!(pol.unwrap().to_str().unwrap(), policy_header(&ds).unwrap());
            }
        }
        assert_eq!(l.success_headers(&[]), (None, None));
    }

    /// A key given in parts hashes like the same key as one string, so both
    /// spellings share one limit.
    #[test]
    fn key_parts_hash_like_the_joined_key() {
        let l = RateLimiter::new(cfg(vec![]), ManualClock::new()).unwrap();
        let limit = Limit::per_second(2);
        // Longer than the gather buffer: written in several pieces.
        let long = "s".repeat(300);
        let keys = [
            KeyOf::Sub("t", &long),
            KeyOf::Key(&long[..150]),
            KeyOf::Key("k1"),
            KeyOf::Sub("t", "s"),
            KeyOf::Tenant("t"),
            KeyOf::Ip("10.0.0.1".parse().ok()),
            KeyOf::Ip(None),
        ];
        for k in keys {
            let rk = RuleKey { rule: "r", key: k };
            let joined = rk.to_string();
            assert!(l.local().check(&joined, &limit, 1).allowed);
            assert!(l.local().check_with(|h| rk.feed(h), &limit, 1).allowed);
            assert!(!l.local().check(&joined, &limit, 1).allowed, "{joined}");
        }
    }

    #[tokio::test]
    async fn disabled_or_bad_config() {
        let l = RateLimiter::new(RateLimitConfig::default(), ManualClock::new()).unwrap();
        assert_eq!(
            hit(&l, &http::Method::GET, "/", None, "").await,
            Verdict::Allowed(Decisions::new())
        );
        let bad = cfg(vec![rule("r", &[], "/", KeyBy::Auto, &[("default", 0)])]);
        assert!(matches!(
            RateLimiter::new(bad, ManualClock::new()),
            Err(RateLimitConfigError::BadLimit { .. })
        ));
        let mut redis_without_url = cfg(vec![]);
        redis_without_url.backend = BackendKind::Redis;
        assert!(RateLimiter::new(redis_without_url, ManualClock::new()).is_err());
    }
}
