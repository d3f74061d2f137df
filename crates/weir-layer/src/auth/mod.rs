//! Authentication: every method ends in one [`Principal`].
//!
//! Credentials are read from `Authorization: Bearer <credential>` (API keys
//! are recognised by their `wk_` prefix, everything else is a JWT) or from
//! `X-Api-Key: wk_…`. Modes:
//! * `none` (the local default): credentials are ignored and every request
//!   is the anonymous principal of `default_tenant`, with `anonymous_roles`
//!   (default `admin`: nothing is protected, as before the layer existed);
//! * `optional`: credentials are verified when present (bad ones are refused,
//!   never silently downgraded to anonymous); requests without credentials
//!   are anonymous with `anonymous_roles` (default: none);
//! * `required`: requests without valid credentials get `401`.

pub mod apikey;
pub mod jwt;

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::authz::{PermissionTable, validate_tenant};
use crate::clock::SharedClock;
use crate::principal::{AuthError, Principal, TokenVerifier};

use apikey::{ApiKeyConfig, ApiKeyStore, ApiKeys};
use jwt::{JwtConfig, JwtConfigError, JwtVerifier};

/// How strictly requests must authenticate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    None,
    Optional,
    Required,
}

/// Authentication settings (config `[auth]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The tenant of anonymous principals and of tokens without a tenant claim.
    pub default_tenant: String,
    /// Roles of the anonymous principal. Unset: `["admin"]` in mode `none`,
    /// `[]` otherwise.
    pub anonymous_roles: Option<Vec<String>>,
    /// Paths (exact) served without authentication, e.g. probes.
    pub public_paths: Vec<String>,
    pub api_keys: ApiKeyConfig,
    /// JWT verification; absent: JWTs are not accepted.
    pub jwt: Option<JwtConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            default_tenant: "default".into(),
            anonymous_roles: None,
            public_paths: vec!["/healthz".into(), "/readyz".into()],
            api_keys: ApiKeyConfig::default(),
            jwt: None,
        }
    }
}

/// An authentication configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(transparent)]
    Jwt(#[from] JwtConfigError),
    #[error("auth.api_keys: {0}")]
    KeyStore(#[from] apikey::StoreError),
    #[error("auth.mode = {0:?} needs auth.jwt or auth.api_keys.enabled")]
    NoMethod(AuthMode),
    #[error("auth.default_tenant: {0}")]
    Tenant(#[from] crate::authz::InvalidTenant),
}

/// Recognises a *self-authenticating* request: one whose credential is
/// not a caller's (API key, JWT) but a proof the route's own handler
/// verifies — e.g. a subscription callback token (PROTOCOL.md §12.9) on a
/// subscription's `callback`/`ack`/`release` route. Given the method, the
/// path and the headers; it must match only the exact routes whose handler
/// verifies that proof, and only credentials shaped like it.
pub type SelfAuthenticating =
    Arc<dyn Fn(&http::Method, &str, &http::HeaderMap) -> bool + Send + Sync>;

/// Put in the request's extensions (with the anonymous principal) when a
/// [`SelfAuthenticating`] hook passed the request through unverified: the
/// handler must verify the request's own credential and must not rely on
/// the principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelfAuthenticated;

/// All enabled methods behind one call.
pub struct Authenticator {
    mode: AuthMode,
    jwt: Option<Arc<JwtVerifier>>,
    api_keys: Option<Arc<ApiKeys>>,
    /// Shared: every anonymous request gets a reference count of it.
    anonymous: Arc<Principal>,
    public_paths: Vec<String>,
    self_authenticating: OnceLock<SelfAuthenticating>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("jwt", &self.jwt)
            .field("api_keys", &self.api_keys.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the authenticator. API keys, when enabled, live in `store`, or
    /// (if `None`) in the store `auth.api_keys` configures.
    pub fn new(
        cfg: AuthConfig,
        table: Arc<PermissionTable>,
        store: Option<Arc<dyn ApiKeyStore>>,
        clock: SharedClock,
    ) -> Result<Authenticator, AuthConfigError> {
        validate_tenant(&cfg.default_tenant)?;
        let jwt = match cfg.jwt {
            Some(j) => Some(Arc::new(JwtVerifier::new(
                j,
                table.clone(),
                cfg.default_tenant.clone(),
                clock.clone(),
            )?)),
            None => None,
        };
        let api_keys = if cfg.api_keys.enabled {
            let store = match store {
                Some(s) => s,
                None => cfg.api_keys.open_store()?,
            };
            Some(Arc::new(ApiKeys::new(
                store,
                cfg.api_keys.clone(),
                table.clone(),
                clock,
            )))
        } else {
            None
        };
        if cfg.mode != AuthMode::None && jwt.is_none() && api_keys.is_none() {
            return Err(AuthConfigError::NoMethod(cfg.mode));
        }
        let roles = cfg.anonymous_roles.unwrap_or_else(|| match cfg.mode {
            AuthMode::None => vec!["admin".into()],
            _ => Vec::new(),
        });
        let mut anonymous = Principal::new("anonymous", cfg.default_tenant);
        anonymous.roles = roles;
        table.apply(&mut anonymous);
        Ok(Authenticator {
            mode: cfg.mode,
            jwt,
            api_keys,
            anonymous: Arc::new(anonymous),
            public_paths: cfg.public_paths,
            self_authenticating: OnceLock::new(),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn jwt(&self) -> Option<&Arc<JwtVerifier>> {
        self.jwt.as_ref()
    }

    pub fn api_keys(&self) -> Option<&Arc<ApiKeys>> {
        self.api_keys.as_ref()
    }

    /// The anonymous principal.
    pub fn anonymous(&self) -> &Arc<Principal> {
        &self.anonymous
    }

    /// Whether `path` skips authentication.
    pub fn is_public(&self, path: &str) -> bool {
        self.public_paths.iter().any(|p| p == path)
    }

    /// Installs the [`SelfAuthenticating`] hook (once; `false` if one was
    /// already installed, which stays).
    pub fn set_self_authenticating(&self, hook: SelfAuthenticating) -> bool {
        self.self_authenticating.set(hook).is_ok()
    }

    /// Whether the hook claims this request (never in mode `none`, where
    /// nothing is verified anyway).
    pub fn is_self_authenticating(
        &self,
        method: &http::Method,
        path: &str,
        h: &http::HeaderMap,
    ) -> bool {
        self.mode != AuthMode::None
            && self
                .self_authenticating
                .get()
                .is_some_and(|f| f(method, path, h))
    }

    /// Authenticates a request by its headers.
    pub async fn authenticate(&self, h: &http::HeaderMap) -> Result<Principal, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(Principal::clone(&self.anonymous));
        }
        match credential(h)? {
            Some(c) => self.verify(c).await,
            None if self.mode == AuthMode::Optional => Ok(Principal::clone(&self.anonymous)),
            None => Err(AuthError::Missing),
        }
    }

    /// [`Authenticator::authenticate`] when it needs no waiting: mode
    /// `none`, no or malformed credentials, or a credential that verified
    /// recently (the API-key and JWT memos). `None`: the credential needs
    /// a store or JWKS lookup — call `authenticate`. The principal is
    /// shared with the memo it came from (no copy per request).
    pub fn authenticate_now(
        &self,
        h: &http::HeaderMap,
    ) -> Option<Result<Arc<Principal>, AuthError>> {
        self.authenticate_credential_now(credential_bytes_of(
            h.get(http::header::AUTHORIZATION),
            h.get(&X_API_KEY),
        ))
    }

    /// [`Authenticator::authenticate_now`] given the request's
    /// [`credential`] (found by a caller that read the headers already).
    pub(crate) fn authenticate_credential_now(
        &self,
        credential: Result<Option<&[u8]>, AuthError>,
    ) -> Option<Result<Arc<Principal>, AuthError>> {
        if self.mode == AuthMode::None {
            return Some(Ok(self.anonymous.clone()));
        }
        let token = match credential {
            Err(e) => return Some(Err(e)),
            Ok(None) if self.mode == AuthMode::Optional => return Some(Ok(self.anonymous.clone())),
            Ok(None) => return Some(Err(AuthError::Missing)),
            Ok(Some(token)) => token,
        };
        let memoized = if token.starts_with(apikey::PREFIX.as_bytes()) {
            match &self.api_keys {
                Some(k) => k.verify_memoized(token),
                None => return Some(disabled(token)),
            }
        } else {
            match &self.jwt {
                Some(j) => j.verify_memoized(token).map(Ok),
                None => return Some(disabled(token)),
            }
        };
        match memoized {
            Some(answer) => Some(answer),
            // Not verified recently: a credential that is not text is
            // refused here, as the full path would; any other goes there.
            None => credential_text(token).err().map(Err),
        }
    }
}

#[async_trait::async_trait]
impl TokenVerifier for Authenticator {
    /// Verifies one credential (an API key or a JWT), whatever the mode.
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.starts_with(apikey::PREFIX) {
            match &self.api_keys {
                Some(k) => k.verify_key(token).await,
                None => Err(AuthError::MethodDisabled),
            }
        } else {
            match &self.jwt {
                Some(j) => j.verify_token(token).await,
                None => Err(AuthError::MethodDisabled),
            }
        }
    }
}

/// The credential of a request: `Authorization: Bearer …` or `X-Api-Key`.
/// Another scheme, or both headers, is malformed (ambiguous credentials are
/// refused rather than guessed at).
pub fn credential(h: &http::HeaderMap) -> Result<Option<&str>, AuthError> {
    credential_of(h.get(http::header::AUTHORIZATION), h.get(&X_API_KEY))
}

/// `X-Api-Key`, prebuilt: looked up by `&str`, the header name would be
/// parsed and validated on every request.
pub(crate) static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// [`credential`] given the (first) `Authorization` and `X-Api-Key`
/// values.
pub(crate) fn credential_of<'a>(
    auth: Option<&'a http::HeaderValue>,
    key: Option<&'a http::HeaderValue>,
) -> Result<Option<&'a str>, AuthError> {
    match credential_bytes_of(auth, key)? {
        Some(token) => credential_text(token).map(Some),
        None => Ok(None),
    }
}

/// [`credential_of`] without the check that the credential is text:
/// its bytes, with the same refusals of its shape (both headers, another
/// scheme, empty). The fast path looks these bytes up in the memos of
/// verified credentials first, and a hit needs no check: only credentials
/// that verified are memoized, and every one that can verify (an API key,
/// a compact JWS) is visible ASCII. A miss is checked with
/// [`credential_text`] before it goes further.
pub(crate) fn credential_bytes_of<'a>(
    auth: Option<&'a http::HeaderValue>,
    key: Option<&'a http::HeaderValue>,
) -> Result<Option<&'a [u8]>, AuthError> {
    match (auth, key) {
        (Some(_), Some(_)) => Err(AuthError::Malformed(
            "both Authorization and X-Api-Key are set".into(),
        )),
        (Some(a), None) => {
            let a = a.as_bytes();
            let (scheme, rest) = match a.iter().position(|&b| b == b' ') {
                Some(i) => (&a[..i], &a[i + 1..]),
                None => (a, &[][..]),
            };
            // Spaces and tabs trimmed, as `str::trim` would on the text
            // `credential_text` admits (visible ASCII and tabs).
            let token = rest.trim_ascii();
            if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
                return Err(AuthError::Malformed(
                    "expected `Authorization: Bearer <token>`".into(),
                ));
            }
            Ok(Some(token))
        }
        (None, Some(k)) => {
            let k = k.as_bytes().trim_ascii();
            if k.is_empty() {
                return Err(AuthError::Malformed("empty X-Api-Key".into()));
            }
            Ok(Some(k))
        }
        (None, None) => Ok(None),
    }
}

/// The refusal of a credential whose method is off: malformed first if
/// it is not text (the order [`credential`] then a lookup would give).
fn disabled(token: &[u8]) -> Result<Arc<Principal>, AuthError> {
    credential_text(token)?;
    Err(AuthError::MethodDisabled)
}

/// A credential's bytes as text: visible ASCII and tabs only (what
/// `HeaderValue::to_str` admits), or malformed.
pub(crate) fn credential_text(token: &[u8]) -> Result<&str, AuthError> {
    let text = token
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
    match std::str::from_utf8(token) {
        Ok(t) if text => Ok(t),
        _ => Err(AuthError::Malformed("credential is not ASCII".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Permission;

    fn h(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut m = http::HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn credentials_are_read_strictly() {
        assert_eq!(credential(&h(&[])).unwrap(), None);
        assert_eq!(
            credential(&h(&[("authorization", "Bearer abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            credential(&h(&[("authorization", "bearer  abc ")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            credential(&h(&[("x-api-key", "wk_x")])).unwrap(),
            Some("wk_x")
        );
        for bad in [
            vec![("authorization", "Basic dTpw")],
            vec![("authorization", "Bearer")],
            vec![("authorization", "Bearer a"), ("x-api-key", "wk_x")],
        ] {
            assert!(credential(&h(&bad)).is_err(), "{bad:?}");
        }
    }

    /// The fast path reads the credential's bytes; the full path its text.
    /// Both refuse what is not visible ASCII, and agree on the rest.
    #[tokio::test]
    async fn credential_bytes_agree_with_credential_text() {
        let raw = |k: &str, v: &[u8]| {
            let mut m = http::HeaderMap::new();
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
            m
        };
        let cases: [(&str, &[u8]); 6] = [
            ("authorization", b"Bearer wk_\xe9t\xe9"),
            ("authorization", b"Bearer \x80abc"),
            ("x-api-key", b"wk_\xffkey"),
            ("x-api-key", b"wk_\tkey"),
            ("authorization", b"BEARER\t abc"),
            ("x-api-key", b" \t "),
        ];
        for (k, v) in cases {
            let m = raw(k, v);
            let text = credential(&m);
            let bytes = credential_bytes_of(m.get(http::header::AUTHORIZATION), m.get(&X_API_KEY))
                .and_then(|b| b.map(credential_text).transpose());
            assert_eq!(text.is_ok(), bytes.is_ok(), "{v:?}");
            if let (Ok(a), Ok(b)) = (text, bytes) {
                assert_eq!(a, b, "{v:?}");
            }
        }
        let store: Arc<dyn ApiKeyStore> = Arc::new(apikey::MemoryApiKeyStore::default());
        let mut cfg = AuthConfig {
            mode: AuthMode::Required,
            ..Default::default()
        };
        cfg.api_keys.enabled = true;
        let auth = Authenticator::new(
            cfg,
            Arc::new(PermissionTable::default()),
            Some(store),
            crate::clock::system(),
        )
        .unwrap();
        for v in [&b"Bearer wk_\xe9"[..], b"Bearer eyJ\xff.x.y"] {
            let m = raw("authorization", v);
            assert!(
                matches!(
                    auth.authenticate_now(&m),
                    Some(Err(AuthError::Malformed(_)))
                ),
                "{v:?}"
            );
            assert!(matches!(
                auth.authenticate(&m).await,
                Err(AuthError::Malformed(_))
            ));
        }
    }

    #[tokio::test]
    async fn modes() {
        let table = Arc::new(PermissionTable::default());
        let none = Authenticator::new(
            AuthConfig::default(),
            table.clone(),
            None,
            crate::clock::system(),
        )
        .unwrap();
        let p = none
            .authenticate(&h(&[("authorization", "Bearer garbage")]))
            .await
            .unwrap();
        assert!(p.is_anonymous() && p.can(Permission::Admin));
        assert_eq!(p.tenant, "default");

        let store: Arc<dyn ApiKeyStore> = Arc::new(apikey::MemoryApiKeyStore::default());
        let mut cfg = AuthConfig {
            mode: AuthMode::Optional,
            default_tenant: "pub".into(),
            ..Default::default()
        };
        cfg.api_keys.enabled = true;
        let optional = Authenticator::new(
            cfg.clone(),
            table.clone(),
            Some(store.clone()),
            crate::clock::system(),
        )
        .unwrap();
        let anon = optional.authenticate(&h(&[])).await.unwrap();
        assert!(anon.is_anonymous() && anon.permissions.is_empty());
        assert_eq!(anon.tenant, "pub");
        // Bad credentials are refused even though anonymous access is allowed.
        assert!(
            optional
                .authenticate(&h(&[("authorization", "Bearer wk_bad")]))
                .await
                .is_err()
        );
        // JWTs are not enabled here.
        assert_eq!(
            optional.verify("eyJ.a.b").await,
            Err(AuthError::MethodDisabled)
        );

        cfg.mode = AuthMode::Required;
        let required = Authenticator::new(
            cfg.clone(),
            table.clone(),
            Some(store),
            crate::clock::system(),
        )
        .unwrap();
        assert_eq!(
            required.authenticate(&h(&[])).await,
            Err(AuthError::Missing)
        );

        cfg.api_keys.enabled = false;
        assert!(matches!(
            Authenticator::new(cfg, table, None, crate::clock::system()),
            Err(AuthConfigError::NoMethod(AuthMode::Required))
        ));
    }
}
