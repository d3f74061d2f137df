//! JWT bearer tokens: HS256 with a shared secret, RS*/PS*/ES256/ES384/EdDSA
//! with keys from a JWKS URL (or a static JWKS file).
//!
//! Security decisions, each with its reason:
//! * **Algorithms are pinned per key.** The algorithm a token may use is
//!   decided by the key it names (RSA key ⇒ RS*/PS*, P-256 ⇒ ES256, Ed25519 ⇒
//!   EdDSA, the configured secret ⇒ HS256), intersected with the configured
//!   allow-list and the JWK's own `alg`. So `alg: none` and the HS/RS
//!   confusion attack (HMAC-signing with the RSA public key as the secret)
//!   can never select a verifier. Symmetric (`oct`) keys in a JWKS are
//!   ignored: a shared secret has no business in a public document.
//! * **Claims are checked against the injectable clock** (`exp` required by
//!   default, `nbf`, both with `leeway_secs` of skew), not by jsonwebtoken's
//!   own wall clock, so expiry is tested without sleeping.
//! * **JWKS caching:** a fetched key stays usable for `jwks_cache_ttl_secs`
//!   after the last successful fetch, even while the endpoint is down; the
//!   set is re-fetched in the background after `jwks_refresh_secs`, and at
//!   once when a token names an unknown `kid` — but at most once per
//!   `jwks_min_refetch_secs`, so a flood of made-up `kid`s cannot turn Weir
//!   into a load generator against the identity provider. A successful fetch
//!   replaces the set: a key the provider withdrew stops working at once.
//! * **Verified-token cache:** keyed by the token's exact bytes (a keyed
//!   hash finds the entry, a constant-time comparison confirms it: no
//!   SHA-256 per request), bounded, each
//!   entry expiring at the token's `exp` (and at most
//!   `token_cache_max_ttl_secs` after it was verified, so a withdrawn key's
//!   tokens drop out of the cache soon), so signature checks do not dominate
//!   the hot path.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::authz::{PermissionTable, validate_tenant};
use crate::cache::BytesMemo;
use crate::clock::SharedClock;
use crate::principal::{AuthError, AuthMethod, Principal, TokenVerifier};
use crate::secret::{self, Secret};

/// Which claims carry what (config `[auth.jwt.claims]`). A claim name is
/// looked up as-is first (so namespaced claims such as
/// `https://example.com/roles` work), then as a dotted path
/// (`realm_access.roles`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimsMapping {
    pub subject: String,
    pub tenant: String,
    /// Refuse tokens without a tenant claim (otherwise they get the default tenant).
    pub tenant_required: bool,
    pub roles: String,
    /// Scope claims, each a space-separated string or an array.
    pub scopes: Vec<String>,
}

impl Default for ClaimsMapping {
    fn default() -> Self {
        ClaimsMapping {
            subject: "sub".into(),
            tenant: "tenant".into(),
            tenant_required: false,
            roles: "roles".into(),
            scopes: vec!["scope".into(), "scp".into()],
        }
    }
}

/// JWT settings (config `[auth.jwt]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss` (unset: not checked — set it in production).
    pub issuer: Option<String>,
    /// Accepted `aud` values; the token must name at least one (empty: not checked).
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// HS256 shared secret (enables HS256).
    pub hs256_secret: Option<Secret>,
    pub hs256_secret_file: Option<PathBuf>,
    /// JWKS endpoint of the identity provider.
    pub jwks_url: Option<String>,
    /// A JWKS document on disk (keys never expire, never refetched).
    pub jwks_file: Option<PathBuf>,
    /// Asymmetric algorithms accepted from JWKS keys.
    pub algorithms: Vec<Algorithm>,
    /// Refresh the JWKS in the background once it is this old.
    pub jwks_refresh_secs: u64,
    /// Keys stay usable this long after the last successful fetch.
    pub jwks_cache_ttl_secs: u64,
    /// At most one fetch per this interval (unknown-`kid` refetches included).
    pub jwks_min_refetch_secs: u64,
    /// Timeout of one JWKS fetch.
    pub jwks_timeout_ms: u64,
    pub claims: ClaimsMapping,
    /// Verified tokens kept (0 disables the cache).
    pub token_cache_capacity: usize,
    /// Upper bound on how long a verified token is cached.
    pub token_cache_max_ttl_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: None,
            audience: Vec::new(),
            leeway_secs: 60,
            require_exp: true,
            hs256_secret: None,
            hs256_secret_file: None,
            jwks_url: None,
            jwks_file: None,
            algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
            jwks_refresh_secs: 300,
            jwks_cache_ttl_secs: 3600,
            jwks_min_refetch_secs: 30,
            jwks_timeout_ms: 5000,
            claims: ClaimsMapping::default(),
            token_cache_capacity: 10_000,
            token_cache_max_ttl_secs: 300,
        }
    }
}

/// A JWT configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error(transparent)]
    Secret(#[from] secret::SecretError),
    #[error("auth.jwt needs hs256_secret(_file), jwks_url or jwks_file")]
    NoKeys,
    #[error("auth.jwt: set jwks_url or jwks_file, not both")]
    TwoJwksSources,
    #[error(
        "auth.jwt.algorithms may only list asymmetric algorithms (HS256 is enabled by hs256_secret)"
    )]
    SymmetricInList,
    #[error("cannot read auth.jwt.jwks_file {0}: {1}")]
    JwksFile(PathBuf, String),
    #[error("cannot build the JWKS HTTP client: {0}")]
    Client(String),
}

struct KeyEntry {
    key: DecodingKey,
    algs: Vec<Algorithm>,
    expires_at: Duration,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<KeyEntry>>,
    fetched_at: Option<Duration>,
    last_attempt: Option<Duration>,
    last_error: Option<String>,
}

/// The JWKS side: keys, their ages, and the fetcher.
struct Jwks {
    url: Option<String>,
    client: Option<reqwest::Client>,
    state: RwLock<KeySet>,
    refresh: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    allowed: Vec<Algorithm>,
    cache_ttl: Duration,
    refresh_after: Duration,
    min_refetch: Duration,
    clock: SharedClock,
}

/// JWKS health for `/readyz` and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JwksHealth {
    pub keys: usize,
    /// Unix seconds of the last successful fetch.
    pub fetched_at: Option<u64>,
    pub last_error: Option<String>,
    pub fetches: u64,
}

impl Jwks {
    fn lookup(&self, kid: Option<&str>, now: Duration) -> Lookup {
        let st = self.state.read();
        let entry = match kid {
            Some(k) => st.keys.get(k),
            // No kid: acceptable only when the set has exactly one key.
            None if st.keys.len() == 1 => st.keys.values().next(),
            None => None,
        };
        match entry {
            Some(e) if now < e.expires_at => Lookup::Fresh(e.clone()),
            Some(_) => Lookup::Expired,
            None => Lookup::Missing,
        }
    }

    fn may_fetch(&self, now: Duration) -> bool {
        self.url.is_some()
            && self
                .state
                .read()
                .last_attempt
                .is_none_or(|t| now >= t + self.min_refetch)
    }

    fn wants_background_refresh(&self, now: Duration) -> bool {
        let st = self.state.read();
        st.fetched_at.is_some_and(|t| now >= t + self.refresh_after)
            && st.last_attempt.is_none_or(|t| now >= t + self.min_refetch)
    }

    /// Fetches the set once (single flight: concurrent callers wait for the
    /// one fetch instead of each issuing their own).
    async fn refresh(&self) -> Result<(), String> {
        let (Some(url), Some(client)) = (&self.url, &self.client) else {
            return Err("no jwks_url configured".into());
        };
        let _guard = self.refresh.lock().await;
        let now = self.clock.now();
        if !self.may_fetch(now) {
            // Someone fetched while we waited (or we fetched too recently).
            return Ok(());
        }
        self.state.write().last_attempt = Some(now);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("JWKS endpoint answered {}", resp.status()));
            }
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            parse_jwks(&body, &self.allowed, now + self.cache_ttl)
        }
        .await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics::names::JWKS_FETCHES, "result" => outcome).increment(1);
        let mut st = self.state.write();
        match result {
            Ok(keys) => {
                st.keys = keys;
                st.fetched_at = Some(now);
                st.last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS fetch failed; keeping cached keys until they expire");
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }
}

enum Lookup {
    Fresh(Arc<KeyEntry>),
    Expired,
    Missing,
}

/// Parses a JWKS document, keeping the keys this verifier can use.
fn parse_jwks(
    body: &[u8],
    allowed: &[Algorithm],
    expires_at: Duration,
) -> Result<HashMap<String, Arc<KeyEntry>>, String> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("bad JWKS JSON: {e}"))?;
    let mut out = HashMap::new();
    for raw in doc.keys {
        // One odd key (an unsupported kty, an encryption key) must not take
        // the whole set down.
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                &[Algorithm::EdDSA]
            }
            _ => continue, // oct keys and unknown types are never used
        };
        let declared = match jwk.common.key_algorithm {
            Some(ka) => match Algorithm::from_str(&ka.to_string()) {
                Ok(a) => Some(a),
                Err(_) => continue,
            },
            None => None,
        };
        let algs: Vec<Algorithm> = family
            .iter()
            .copied()
            .filter(|a| allowed.contains(a) && declared.is_none_or(|d| d == *a))
            .collect();
        if algs.is_empty() {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        out.insert(
            kid,
            Arc::new(KeyEntry {
                key,
                algs,
                expires_at,
            }),
        );
    }
    Ok(out)
}

/// Verifies JWTs and maps their claims to a [`Principal`].
pub struct JwtVerifier {
    cfg: JwtConfig,
    hs256: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    table: Arc<PermissionTable>,
    default_tenant: String,
    clock: SharedClock,
    /// Shared principals: a hit hands out a reference count.
    cache: BytesMemo<Arc<Principal>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.cfg.issuer)
            .field("jwks_url", &self.cfg.jwks_url)
            .field("hs256", &self.hs256.is_some())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    pub fn new(
        cfg: JwtConfig,
        table: Arc<PermissionTable>,
        default_tenant: impl Into<String>,
        clock: SharedClock,
    ) -> Result<JwtVerifier, JwtConfigError> {
        let hs = secret::resolve(
            "auth.jwt.hs256_secret",
            cfg.hs256_secret.as_ref(),
            cfg.hs256_secret_file.as_deref(),
        )?;
        let hs256 = hs.map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        if cfg
            .algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(JwtConfigError::SymmetricInList);
        }
        let jwks = match (&cfg.jwks_url, &cfg.jwks_file) {
            (Some(_), Some(_)) => return Err(JwtConfigError::TwoJwksSources),
            (None, None) => None,
            (url, file) => {
                let mut set = KeySet::default();
                if let Some(path) = file {
                    let body = std::fs::read(path)
                        .map_err(|e| JwtConfigError::JwksFile(path.clone(), e.to_string()))?;
                    set.keys = parse_jwks(&body, &cfg.algorithms, Duration::MAX)
                        .map_err(|e| JwtConfigError::JwksFile(path.clone(), e))?;
                    set.fetched_at = Some(clock.now());
                }
                let client = match url {
                    Some(_) => Some(
                        reqwest::Client::builder()
                            .timeout(Duration::from_millis(cfg.jwks_timeout_ms))
                            .build()
                            .map_err(|e| JwtConfigError::Client(e.to_string()))?,
                    ),
                    None => None,
                };
                Some(Arc::new(Jwks {
                    url: url.clone(),
                    client,
                    state: RwLock::new(set),
                    refresh: tokio::sync::Mutex::new(()),
                    fetches: AtomicU64::new(0),
                    allowed: cfg.algorithms.clone(),
                    cache_ttl: Duration::from_secs(cfg.jwks_cache_ttl_secs),
                    refresh_after: Duration::from_secs(cfg.jwks_refresh_secs),
                    min_refetch: Duration::from_secs(cfg.jwks_min_refetch_secs),
                    clock: clock.clone(),
                }))
            }
        };
        if hs256.is_none() && jwks.is_none() {
            return Err(JwtConfigError::NoKeys);
        }
        Ok(JwtVerifier {
            cache: BytesMemo::new(cfg.token_cache_capacity),
            cfg,
            hs256,
            jwks,
            table,
            default_tenant: default_tenant.into(),
            clock,
        })
    }

    /// Fetches the JWKS now (at startup, so the first requests do not wait).
    pub async fn prefetch(&self) -> Result<(), String> {
        match &self.jwks {
            Some(j) if j.url.is_some() => j.refresh().await,
            _ => Ok(()),
        }
    }

    /// JWKS state, or `None` without a JWKS.
    pub fn health(&self) -> Option<JwksHealth> {
        let j = self.jwks.as_ref()?;
        let st = j.state.read();
        Some(JwksHealth {
            keys: st.keys.len(),
            fetched_at: st.fetched_at.map(|t| t.as_secs()),
            last_error: st.last_error.clone(),
            fetches: j.fetches.load(Ordering::Relaxed),
        })
    }

    /// Verified tokens currently cached.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// The principal of a token verified recently (still in the cache);
    /// `None` otherwise.
    pub fn verify_memoized(&self, token: &[u8]) -> Option<Arc<Principal>> {
        self.cache.get(token, self.clock.now())
    }

    /// Verifies a compact JWS and returns its principal.
    pub async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        let now = self.clock.now();
        if let Some(p) = self.cache.get(token.as_bytes(), now) {
            return Ok(Arc::unwrap_or_clone(p));
        }
        let alg_name = header_alg(token)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::AlgorithmRefused(alg_name.clone()))?;
        let alg = header.alg;
        let key = self.select_key(alg, header.kid.as_deref(), now).await?;

        let mut v = Validation::new(alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims = HashSet::new();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::BadSignature,
                K::InvalidAlgorithm | K::UnsupportedAlgorithm | K::InvalidAlgorithmName => {
                    AuthError::AlgorithmRefused(alg_name.clone())
                }
                _ => AuthError::Malformed(e.to_string()),
            }
        })?;
        let claims = data.claims;
        let exp = self.check_times(&claims, now)?;
        self.check_issuer_audience(&claims)?;
        let mut principal = self.principal(&claims, header.kid, exp)?;
        self.table.apply(&mut principal);

        let max = now + Duration::from_secs(self.cfg.token_cache_max_ttl_secs);
        let until = exp.map_or(max, |e| Duration::from_secs(e).min(max));
        self.cache
            .insert(token.as_bytes(), Arc::new(principal.clone()), until, now);
        Ok(principal)
    }

    async fn select_key(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        now: Duration,
    ) -> Result<DecodingKey, AuthError> {
        if matches!(alg, Algorithm::HS384 | Algorithm::HS512) {
            return Err(AuthError::AlgorithmRefused(format!("{alg:?}")));
        }
        if alg == Algorithm::HS256 {
            // Only the configured secret verifies HS256 — never a JWKS key,
            // whatever `kid` says (the HS/RS confusion attack).
            return self
                .hs256
                .clone()
                .ok_or_else(|| AuthError::AlgorithmRefused("HS256".into()));
        }
        if !self.cfg.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmRefused(format!("{alg:?}")));
        }
        let jwks = self
            .jwks
            .as_ref()
            .ok_or_else(|| AuthError::AlgorithmRefused(format!("{alg:?}")))?;
        if jwks.wants_background_refresh(now)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let j = jwks.clone();
            rt.spawn(async move {
                let _ = j.refresh().await;
            });
        }
        let entry = match jwks.lookup(kid, now) {
            Lookup::Fresh(e) => e,
            _ => {
                // Unknown or expired: one refetch (rate-limited), or wait for
                // the one already in flight — during a rotation, every request
                // carrying the new kid waits for the same single fetch.
                if jwks.may_fetch(now) {
                    let _ = jwks.refresh().await;
                } else if jwks.refresh.try_lock().is_err() {
                    drop(jwks.refresh.lock().await);
                }
                match jwks.lookup(kid, self.clock.now()) {
                    Lookup::Fresh(e) => e,
                    Lookup::Expired => {
                        let why = jwks.state.read().last_error.clone();
                        return Err(AuthError::Unavailable(
                            why.unwrap_or_else(|| "cached JWKS keys expired".into()),
                        ));
                    }
                    Lookup::Missing => return Err(AuthError::UnknownKey(kid.map(str::to_owned))),
                }
            }
        };
        if !entry.algs.contains(&alg) {
            return Err(AuthError::AlgorithmRefused(format!(
                "{alg:?} with this key"
            )));
        }
        Ok(entry.key.clone())
    }

    /// Checks `exp`/`nbf`; returns `exp`.
    fn check_times(&self, c: &Map<String, Value>, now: Duration) -> Result<Option<u64>, AuthError> {
        let now = now.as_secs();
        let leeway = self.cfg.leeway_secs;
        let num = |name: &str| -> Result<Option<u64>, AuthError> {
            match c.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or_else(|| AuthError::Claim(name.into())),
            }
        };
        let exp = num("exp")?;
        match exp {
            None if self.cfg.require_exp => return Err(AuthError::Claim("exp".into())),
            Some(e) if now >= e.saturating_add(leeway) => return Err(AuthError::Expired),
            _ => {}
        }
        if let Some(nbf) = num("nbf")?
            && now.saturating_add(leeway) < nbf
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(exp)
    }

    fn check_issuer_audience(&self, c: &Map<String, Value>) -> Result<(), AuthError> {
        if let Some(iss) = &self.cfg.issuer
            && c.get("iss").and_then(Value::as_str) != Some(iss.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }
        if !self.cfg.audience.is_empty() {
            let ok = match c.get("aud") {
                Some(Value::String(a)) => self.cfg.audience.contains(a),
                Some(Value::Array(xs)) => xs
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.cfg.audience.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::WrongAudience);
            }
        }
        Ok(())
    }

    fn principal(
        &self,
        c: &Map<String, Value>,
        kid: Option<String>,
        exp: Option<u64>,
    ) -> Result<Principal, AuthError> {
        let m = &self.cfg.claims;
        let subject = claim(c, &m.subject)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Claim(m.subject.clone()))?
            .to_owned();
        let tenant = match claim(c, &m.tenant) {
            Some(Value::String(t)) => t.clone(),
            None if !m.tenant_required => self.default_tenant.clone(),
            _ => return Err(AuthError::Claim(m.tenant.clone())),
        };
        validate_tenant(&tenant).map_err(|_| AuthError::Claim(m.tenant.clone()))?;
        let roles = claim(c, &m.roles).map(string_list).unwrap_or_default();
        let mut scopes = Vec::new();
        for name in &m.scopes {
            if let Some(v) = claim(c, name) {
                scopes.extend(string_list(v));
            }
        }
        Ok(Principal {
            subject,
            tenant,
            roles,
            scopes,
            auth_method: AuthMethod::Jwt,
            key_id: kid,
            permissions: Default::default(),
            expires_at: exp,
        })
    }
}

#[async_trait::async_trait]
impl TokenVerifier for JwtVerifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_token(token).await
    }
}

/// The header's `alg` as written, refusing `none` in any spelling before
/// anything else looks at the token.
fn header_alg(token: &str) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not a compact JWS".into()));
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AuthError::Malformed("header is not base64url".into()))?;
    let v: Value = serde_json::from_slice(&raw)
        .map_err(|_| AuthError::Malformed("header is not JSON".into()))?;
    let alg = v
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| AuthError::Malformed("header has no alg".into()))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::AlgorithmRefused("none".into()));
    }
    Ok(alg.to_owned())
}

/// A claim by exact name, else by dotted path.
fn claim<'a>(c: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = c.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut cur = c.get(parts.next()?)?;
    for p in parts {
        cur = cur.get(p)?;
    }
    Some(cur)
}

/// A space-separated string or an array of strings.
fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(xs) => xs
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_by_name_then_path() {
        let c: Map<String, Value> = serde_json::from_str(
            r#"{"https://x.io/roles":["a"],"realm_access":{"roles":["b"]},"scope":"r w"}"#,
        )
        .unwrap();
        assert_eq!(
            string_list(claim(&c, "https://x.io/roles").unwrap()),
            vec!["a"]
        );
        assert_eq!(
            string_list(claim(&c, "realm_access.roles").unwrap()),
            vec!["b"]
        );
        assert_eq!(string_list(claim(&c, "scope").unwrap()), vec!["r", "w"]);
        assert!(claim(&c, "nope.x").is_none());
    }

    #[test]
    fn alg_none_refused_in_any_case() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for alg in ["none", "None", "NONE"] {
            let t = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}"}}"#)), b64("{}"));
            assert!(matches!(
                header_alg(&t),
                Err(AuthError::AlgorithmRefused(_))
            ));
        }
        assert!(matches!(header_alg("a.b"), Err(AuthError::Malformed(_))));
    }
}
