//! API keys: `wk_<id>_<secret>`.
//!
//! * `id` is 16 hex digits, public, the primary key in the store (so lookup
//!   is one indexed read, and logs/metrics can name the key safely).
//! * `secret` is 256 random bits in 64 hex digits, shown once at creation;
//!   only its SHA-256 is stored. A slow password hash (argon2, bcrypt)
//!   protects *low-entropy* secrets against offline guessing; against a
//!   uniformly random 256-bit secret, guessing is hopeless at any hash speed,
//!   so a slow hash would only add tens of milliseconds to every request (or
//!   force caching something secret-derived in memory) for no security gain.
//!   The comparison is constant-time.
//! * Keys may expire (`expires_at`), are revoked by stamping `revoked_at`
//!   (kept for audit, never deleted by revocation), and record `last_used_at`
//!   lazily: at most one store write per key per `last_used_interval_secs`.
//!
//! **Revocation bound.** Verified keys are cached per node for
//! `cache_ttl_ms` (default 5 s). Revoking through [`ApiKeys::revoke`] drops
//! the key from that node's cache at once; every other node sees the
//! revocation when its cached entry expires, so a revocation takes effect
//! everywhere within `cache_ttl_ms`. Lookups of unknown ids are cached
//! (negatively) for the same time, so random keys cannot hammer the store.

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::authz::{PermissionTable, validate_tenant};
use crate::cache::{BytesMemo, TtlCache, constant_time_eq};
use crate::clock::SharedClock;
use crate::principal::{AuthError, AuthMethod, Principal, TokenVerifier};
use crate::secret::Secret;

/// The key prefix; also how the authenticator tells keys from JWTs.
pub const PREFIX: &str = "wk_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// API key settings (config `[auth.api_keys]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Accept API keys.
    pub enabled: bool,
    /// How long a node caches a key lookup: the revocation-propagation bound.
    pub cache_ttl_ms: u64,
    /// Most cached lookups (positive and negative).
    pub cache_capacity: usize,
    /// `last_used_at` is written at most this often per key.
    pub last_used_interval_secs: u64,
    /// Where keys (and the audit log) live: `memory`, `sqlite` or
    /// `postgres`. Unset: chosen by which of `sqlite_path` /
    /// `database_url(_file)` is set, else memory
    /// ([`ApiKeyConfig::store_spec`]).
    pub store: Option<crate::store::StoreKind>,
    /// SQLite database holding the keys (created and migrated at start).
    /// Unset: keys live in memory and are lost on restart (development only).
    pub sqlite_path: Option<std::path::PathBuf>,
    /// PostgreSQL URL (`postgres://user@host:5432/db`) for `store = "postgres"`.
    pub database_url: Option<Secret>,
    /// A file holding the PostgreSQL URL instead (not with `database_url`).
    pub database_url_file: Option<std::path::PathBuf>,
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        ApiKeyConfig {
            enabled: false,
            cache_ttl_ms: 5000,
            cache_capacity: 10_000,
            last_used_interval_secs: 60,
            store: None,
            sqlite_path: None,
            database_url: None,
            database_url_file: None,
        }
    }
}

/// One stored key. `secret_hash` is the hex SHA-256 of the secret part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant: String,
    pub subject: String,
    /// Free text for humans ("CI deploy key").
    pub name: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub secret_hash: String,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub last_used_at: Option<u64>,
    pub revoked_at: Option<u64>,
}

/// What to create.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewApiKey {
    pub tenant: String,
    pub subject: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl ApiKeyConfig {
    /// Opens the configured store without blocking on the network:
    /// SQLite at `sqlite_path` (migrated to the latest version), PostgreSQL
    /// (connected and checked lazily, on first use; [`crate::store::open`]
    /// connects and migrates at once), else an in-memory store.
    pub fn open_store(&self) -> Result<Arc<dyn ApiKeyStore>, StoreError> {
        match self.store_spec()? {
            #[cfg(feature = "sqlite")]
            crate::store::StoreSpec::Sqlite(path) => Ok(Arc::new(
                crate::store::sqlite::SqliteStore::open_migrated(path)
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            )),
            #[cfg(feature = "postgres")]
            crate::store::StoreSpec::Postgres(url) => Ok(Arc::new(
                crate::store::postgres::PgStore::new(url.expose())
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            )),
            crate::store::StoreSpec::Memory => {
                tracing::warn!("API keys are kept in memory and are lost on restart");
                Ok(Arc::new(MemoryApiKeyStore::default()))
            }
            #[allow(unreachable_patterns)]
            other => Err(StoreError::Backend(format!(
                "this build has no support for the {other:?} store (crate features)"
            ))),
        }
    }
}

/// A created key: the full token is available only here, once.
#[derive(Clone, Debug)]
pub struct CreatedApiKey {
    pub token: Secret,
    pub record: ApiKeyRecord,
}

/// A key store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a key with this id already exists")]
    Duplicate,
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("key store failure: {0}")]
    Backend(String),
}

/// Where API keys live. Implementations: [`MemoryApiKeyStore`],
/// [`crate::store::sqlite::SqliteStore`], [`crate::store::postgres::PgStore`]
/// (the same migrations, [`crate::migrate::MIGRATIONS`]).
#[async_trait::async_trait]
pub trait ApiKeyStore: Send + Sync {
    async fn insert(&self, rec: &ApiKeyRecord) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Keys of one tenant (or all), newest first.
    async fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Stamps `revoked_at`; `false` if there is no such key.
    async fn revoke(&self, id: &str, at: u64) -> Result<bool, StoreError>;
    async fn touch(&self, id: &str, at: u64) -> Result<(), StoreError>;
    /// The external service this store lives in, checked by `/readyz`
    /// (`None`: nothing to check, as for memory and SQLite).
    fn dependency(&self) -> Option<&'static str> {
        None
    }
    /// A cheap check that [`dependency`](Self::dependency) answers, with a
    /// short timeout of its own.
    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// An in-memory store (tests, single-node development).
#[derive(Debug, Default)]
pub struct MemoryApiKeyStore {
    keys: parking_lot::RwLock<std::collections::HashMap<String, ApiKeyRecord>>,
}

#[async_trait::async_trait]
impl ApiKeyStore for MemoryApiKeyStore {
    async fn insert(&self, rec: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut keys = self.keys.write();
        if keys.contains_key(&rec.id) {
            return Err(StoreError::Duplicate);
        }
        keys.insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.keys.read().get(id).cloned())
    }

    async fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut v: Vec<_> = self
            .keys
            .read()
            .values()
            .filter(|r| tenant.is_none_or(|t| r.tenant == t))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    async fn revoke(&self, id: &str, at: u64) -> Result<bool, StoreError> {
        Ok(match self.keys.write().get_mut(id) {
            Some(r) => {
                r.revoked_at.get_or_insert(at);
                true
            }
            None => false,
        })
    }

    async fn touch(&self, id: &str, at: u64) -> Result<(), StoreError> {
        if let Some(r) = self.keys.write().get_mut(id) {
            r.last_used_at = Some(at);
        }
        Ok(())
    }
}

/// Splits `wk_<id>_<secret>`; `None` unless the shape is exact.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (hex(id, ID_HEX) && hex(secret, SECRET_HEX)).then_some((id, secret))
}

fn hex(bytes: &[u8]) -> String {
    crate::hex::encode(bytes)
}

fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// API-key authentication and management over an [`ApiKeyStore`].
pub struct ApiKeys {
    store: Arc<dyn ApiKeyStore>,
    cfg: ApiKeyConfig,
    table: Arc<PermissionTable>,
    clock: SharedClock,
    /// id → record (`None`: no such key) and when that lookup expires
    /// (`cache_ttl_ms` after it was read from the store).
    cache: TtlCache<String, (Option<Arc<ApiKeyRecord>>, Duration)>,
    /// ids whose `last_used_at` was written recently → when it may be
    /// written again.
    touched: TtlCache<String, Duration>,
    /// The exact token bytes that verified → the principal they gave,
    /// until the record they were checked against expires from `cache`:
    /// a repeated key costs one keyed hash of the header's bytes and a
    /// constant-time comparison, not a parse, two owned ids, two lookups and
    /// a SHA-256. The entry never outlives the record it was verified
    /// against, so the revocation bound stays `cache_ttl_ms`; revocation
    /// through this node drops it at once.
    verified: BytesMemo<Arc<Verified>>,
    /// Bumped by every revocation through this node, so a verification
    /// that read a record before a revocation does not memoize it after.
    generation: std::sync::atomic::AtomicU64,
}

struct Verified {
    record: Arc<ApiKeyRecord>,
    /// Shared: a memo hit hands the request a reference count, not a
    /// copy of the principal's strings.
    principal: Arc<Principal>,
    /// Clock time (µs) until which this key's use is already noted: a
    /// memo hit before it skips [`ApiKeys::note_use`] (an owned key, two
    /// hashes and a lock per request) for the answer it would give.
    noted_until_us: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl ApiKeys {
    pub fn new(
        store: Arc<dyn ApiKeyStore>,
        cfg: ApiKeyConfig,
        table: Arc<PermissionTable>,
        clock: SharedClock,
    ) -> ApiKeys {
        ApiKeys {
            store,
            cache: TtlCache::new(cfg.cache_capacity),
            touched: TtlCache::new(cfg.cache_capacity),
            verified: BytesMemo::new(cfg.cache_capacity),
            generation: 0.into(),
            cfg,
            table,
            clock,
        }
    }

    pub fn store(&self) -> &Arc<dyn ApiKeyStore> {
        &self.store
    }

    /// Creates a key; the returned token is the only copy of the secret.
    pub async fn create(&self, new: NewApiKey) -> Result<CreatedApiKey, StoreError> {
        validate_tenant(&new.tenant).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if new.subject.is_empty() {
            return Err(StoreError::Invalid("subject is empty".into()));
        }
        let mut id = [0u8; ID_HEX / 2];
        let mut secret = [0u8; SECRET_HEX / 2];
        {
            // `ThreadRng` is not `Send`: keep it out of the future's state.
            let mut rng = rand::thread_rng();
            rng.fill_bytes(&mut id);
            rng.fill_bytes(&mut secret);
        }
        let (id, secret) = (hex(&id), hex(&secret));
        let record = ApiKeyRecord {
            id: id.clone(),
            tenant: new.tenant,
            subject: new.subject,
            name: new.name,
            roles: new.roles,
            scopes: new.scopes,
            secret_hash: hash_secret(&secret),
            created_at: self.clock.unix_secs(),
            expires_at: new.expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert(&record).await?;
        self.cache.remove(&id);
        self.verified.retain(|v| v.record.id != id);
        Ok(CreatedApiKey {
            token: Secret::new(format!("{PREFIX}{id}_{secret}")),
            record,
        })
    }

    /// Revokes a key; effective on this node at once, on others within
    /// `cache_ttl_ms`.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let found = self.store.revoke(id, self.clock.unix_secs()).await?;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.remove(&id.to_owned());
        self.verified.retain(|v| v.record.id != id);
        Ok(found)
    }

    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.store.list(tenant).await
    }

    /// The record of `id` (`None`: no such key) and when this answer
    /// expires from the cache.
    async fn lookup(&self, id: &str) -> Result<(Option<Arc<ApiKeyRecord>>, Duration), AuthError> {
        let now = self.clock.now();
        let key = id.to_owned();
        if let Some(hit) = self.cache.get(&key, now) {
            return Ok(hit);
        }
        let rec = self
            .store
            .get(id)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
            .map(Arc::new);
        let expires = now + Duration::from_millis(self.cfg.cache_ttl_ms);
        self.cache.insert(key, (rec.clone(), expires), expires, now);
        Ok((rec, expires))
    }

    /// Verifies `wk_<id>_<secret>`.
    pub async fn verify_key(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(answer) = self.verify_memoized(token.as_bytes()) {
            return answer.map(Arc::unwrap_or_clone);
        }
        self.verify_slow(token, self.clock.now()).await
    }

    /// [`ApiKeys::verify_key`] for a token that verified recently (its
    /// exact bytes are in the memo); `None` otherwise.
    pub fn verify_memoized(&self, token: &[u8]) -> Option<Result<Arc<Principal>, AuthError>> {
        let now_t = self.clock.now();
        let v = self.verified.get(token, now_t)?;
        // Exactly the bytes that verified against this record, which is
        // still the one a lookup would return: only the key's own expiry
        // can have passed since.
        if v.record.expires_at.is_some_and(|e| now_t.as_secs() >= e) {
            return Some(Err(AuthError::KeyExpired));
        }
        use std::sync::atomic::Ordering::Relaxed;
        if micros(now_t) >= v.noted_until_us.load(Relaxed) {
            let until = self.note_use(&v.record.id);
            v.noted_until_us.store(micros(until), Relaxed);
        }
        Some(Ok(v.principal.clone()))
    }

    async fn verify_slow(&self, token: &str, now_t: Duration) -> Result<Principal, AuthError> {
        let (id, secret) =
            parse_token(token).ok_or_else(|| AuthError::Malformed("not a Weir API key".into()))?;
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let (rec, rec_expires) = self.lookup(id).await?;
        let rec = rec.ok_or(AuthError::UnknownApiKey)?;
        if !constant_time_eq(hash_secret(secret).as_bytes(), rec.secret_hash.as_bytes()) {
            return Err(AuthError::UnknownApiKey);
        }
        let now = self.clock.unix_secs();
        if rec.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if rec.expires_at.is_some_and(|e| now >= e) {
            return Err(AuthError::KeyExpired);
        }
        let noted_until = self.note_use(&rec.id);
        let mut p = Principal {
            subject: rec.subject.clone(),
            tenant: rec.tenant.clone(),
            roles: rec.roles.clone(),
            scopes: rec.scopes.clone(),
            auth_method: AuthMethod::ApiKey,
            key_id: Some(rec.id.clone()),
            permissions: Default::default(),
            expires_at: rec.expires_at,
        };
        self.table.apply(&mut p);
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            // A revocation ran meanwhile: answer, but remember nothing.
            return Ok(p);
        }
        self.verified.insert(
            token.as_bytes(),
            Arc::new(Verified {
                record: rec.clone(),
                principal: Arc::new(p.clone()),
                noted_until_us: micros(noted_until).into(),
            }),
            rec_expires,
            now_t,
        );
        Ok(p)
    }

    /// Writes `last_used_at` at most once per interval per key, off the
    /// request path (a failed write only loses a timestamp). Returns when
    /// the key's next use should be noted again.
    fn note_use(&self, id: &str) -> Duration {
        let now = self.clock.now();
        let key = id.to_owned();
        if let Some(until) = self.touched.get(&key, now) {
            return until;
        }
        let until = now + Duration::from_secs(self.cfg.last_used_interval_secs);
        self.touched.insert(key.clone(), until, until, now);
        let store = self.store.clone();
        let at = now.as_secs();
        let write = async move {
            if let Err(e) = store.touch(&key, at).await {
                tracing::warn!(key_id = %key, error = %e, "could not record API key use");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(write);
            }
            Err(_) => tracing::debug!("no runtime: last_used_at not recorded"),
        }
        until
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[async_trait::async_trait]
impl TokenVerifier for ApiKeys {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_key(token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Permission;
    use crate::clock::{Clock, ManualClock};

    fn keys(clock: Arc<ManualClock>) -> (ApiKeys, Arc<MemoryApiKeyStore>) {
        let store = Arc::new(MemoryApiKeyStore::default());
        let k = ApiKeys::new(
            store.clone(),
            ApiKeyConfig {
                enabled: true,
                ..Default::default()
            },
            Arc::new(PermissionTable::default()),
            clock,
        );
        (k, store)
    }

    fn new_key(expires_at: Option<u64>) -> NewApiKey {
        NewApiKey {
            tenant: "acme".into(),
            subject: "ci".into(),
            name: "deploy".into(),
            roles: vec!["writer".into()],
            scopes: vec![],
            expires_at,
        }
    }

    #[test]
    fn token_shape() {
        let id = "0123456789abcdef";
        let secret = "a".repeat(64);
        let t = format!("wk_{id}_{secret}");
        assert_eq!(parse_token(&t), Some((id, secret.as_str())));
        for bad in [
            "wk_",
            "wk_0123456789abcdef",
            &format!("wk_0123456789ABCDEF_{secret}"),
            &format!("wk_0123456789abcdef_{secret}x"),
            &format!("xx_0123456789abcdef_{secret}"),
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn create_verify_revoke() {
        let clock = ManualClock::new();
        let (keys, store) = keys(clock.clone());
        let created = keys.create(new_key(None)).await.unwrap();
        let token = created.token.expose().to_owned();
        assert!(parse_token(&token).is_some());
        // Only the hash is stored.
        let stored = store.get(&created.record.id).await.unwrap().unwrap();
        assert!(!stored.secret_hash.contains(&token[20..]));
        assert_eq!(stored.secret_hash.len(), 64);

        let p = keys.verify_key(&token).await.unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(p.subject, "ci");
        assert_eq!(p.auth_method, AuthMethod::ApiKey);
        assert_eq!(p.key_id.as_deref(), Some(created.record.id.as_str()));
        assert!(p.can(Permission::Write) && !p.can(Permission::Manage));

        // A wrong secret for a real id.
        let forged = format!(
            "{}{}",
            &token[..token.len() - 1],
            if token.ends_with('0') { '1' } else { '0' }
        );
        assert_eq!(
            keys.verify_key(&forged).await,
            Err(AuthError::UnknownApiKey)
        );

        // Revocation through this node takes effect at once.
        assert!(keys.revoke(&created.record.id).await.unwrap());
        assert_eq!(keys.verify_key(&token).await, Err(AuthError::Revoked));
        assert!(!keys.revoke("0000000000000000").await.unwrap());
    }

    #[tokio::test]
    async fn revocation_reaches_other_nodes_within_the_cache_ttl() {
        let clock = ManualClock::new();
        let store = Arc::new(MemoryApiKeyStore::default());
        let node = |s: Arc<MemoryApiKeyStore>| {
            ApiKeys::new(
                s,
                ApiKeyConfig {
                    enabled: true,
                    ..Default::default()
                },
                Arc::new(PermissionTable::default()),
                clock.clone(),
            )
        };
        let (a, b) = (node(store.clone()), node(store.clone()));
        let created = a.create(new_key(None)).await.unwrap();
        let token = created.token.expose();
        assert!(b.verify_key(token).await.is_ok()); // b caches the record
        a.revoke(&created.record.id).await.unwrap();
        assert_eq!(a.verify_key(token).await, Err(AuthError::Revoked));
        // b may still accept it inside the bound…
        assert!(b.verify_key(token).await.is_ok());
        // …and refuses it once the bound has passed.
        clock.advance(Duration::from_millis(5000));
        assert_eq!(b.verify_key(token).await, Err(AuthError::Revoked));
    }

    #[tokio::test]
    async fn expiry_and_last_used() {
        let clock = ManualClock::new();
        let (keys, store) = keys(clock.clone());
        let now = clock.unix_secs();
        let created = keys.create(new_key(Some(now + 100))).await.unwrap();
        let token = created.token.expose().to_owned();
        keys.verify_key(&token).await.unwrap();
        tokio::task::yield_now().await;
        let rec = store.get(&created.record.id).await.unwrap().unwrap();
        assert_eq!(rec.last_used_at, Some(now));
        // A second use within the interval writes nothing.
        clock.advance(Duration::from_secs(30));
        keys.verify_key(&token).await.unwrap();
        tokio::task::yield_now().await;
        let rec = store.get(&created.record.id).await.unwrap().unwrap();
        assert_eq!(rec.last_used_at, Some(now));
        clock.advance(Duration::from_secs(31));
        keys.verify_key(&token).await.unwrap();
        tokio::task::yield_now().await;
        let rec = store.get(&created.record.id).await.unwrap().unwrap();
        assert_eq!(rec.last_used_at, Some(now + 61));
        clock.advance(Duration::from_secs(40));
        assert_eq!(keys.verify_key(&token).await, Err(AuthError::KeyExpired));
    }

    #[tokio::test]
    async fn create_validates() {
        let (keys, _) = keys(ManualClock::new());
        let mut bad = new_key(None);
        bad.tenant = "../x".into();
        assert!(matches!(
            keys.create(bad).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(
            keys.verify_key("wk_nope").await,
            Err(AuthError::Malformed("not a Weir API key".into()))
        );
    }
}
