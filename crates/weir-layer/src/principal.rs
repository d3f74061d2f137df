//! Who is calling: the one principal type every authentication method
//! produces, and the [`TokenVerifier`] trait the HTTP layer and the NATS
//! service framework both authenticate through.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::authz::{Permission, Permissions};

/// How the principal was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// No credentials (auth mode `none`, or `optional` without credentials).
    #[default]
    Anonymous,
    /// A Weir API key (`wk_<id>_<secret>`).
    ApiKey,
    /// A JWT bearer token.
    Jwt,
}

impl AuthMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
        }
    }
}

/// An authenticated (or anonymous) caller.
///
/// `permissions` is derived once, at authentication, from `roles` and
/// `scopes` through the configured [`crate::authz::PermissionTable`], so
/// authorization checks on the hot path are a bit test and need no config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Stable id of the caller (`sub` claim, the API key's subject, or
    /// `anonymous`).
    pub subject: String,
    /// The tenant whose resources this principal may touch.
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// The API key id, or the JWT's `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default)]
    pub permissions: Permissions,
    /// Unix seconds after which the credential stops being valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Principal {
    /// A principal with no roles, scopes or permissions.
    pub fn new(subject: impl Into<String>, tenant: impl Into<String>) -> Principal {
        Principal {
            subject: subject.into(),
            tenant: tenant.into(),
            roles: Vec::new(),
            scopes: Vec::new(),
            auth_method: AuthMethod::Anonymous,
            key_id: None,
            permissions: Permissions::NONE,
            expires_at: None,
        }
    }

    /// The anonymous principal of `tenant` with the given permissions.
    pub fn anonymous(tenant: impl Into<String>, permissions: Permissions) -> Principal {
        Principal {
            permissions,
            ..Principal::new("anonymous", tenant)
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.auth_method == AuthMethod::Anonymous
    }

    /// Whether the principal holds `p` (`admin` implies every permission).
    pub fn can(&self, p: Permission) -> bool {
        self.permissions.allows(p)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} ({})",
            self.subject,
            self.tenant,
            self.auth_method.as_str()
        )
    }
}

/// Why a credential was refused. Each kind is matchable and has a metric
/// label ([`AuthError::label`]); the client only ever sees a generic
/// `unauthorized` (or `auth_unavailable`) so refusals leak nothing about
/// which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(String),
    #[error("this authentication method is not enabled")]
    MethodDisabled,
    #[error("token algorithm refused: {0}")]
    AlgorithmRefused(String),
    #[error("unknown signing key {0:?}")]
    UnknownKey(Option<String>),
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("claim `{0}` missing or invalid")]
    Claim(String),
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("API key revoked")]
    Revoked,
    #[error("API key expired")]
    KeyExpired,
    /// A dependency (JWKS endpoint, key store) failed and nothing cached can
    /// answer; this is a server problem, answered with 503.
    #[error("authentication backend unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A short, bounded label for metrics (`weir_auth_failures_total{reason}`).
    pub const fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::MethodDisabled => "method_disabled",
            AuthError::AlgorithmRefused(_) => "algorithm_refused",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::Claim(_) => "claim",
            AuthError::UnknownApiKey => "unknown_api_key",
            AuthError::Revoked => "revoked",
            AuthError::KeyExpired => "key_expired",
            AuthError::Unavailable(_) => "unavailable",
        }
    }

    /// The problem sent to the client.
    pub fn to_problem(&self) -> crate::problem::Problem {
        use crate::problem::{ErrorCode, Problem};
        match self {
            AuthError::Unavailable(_) => Problem::new(
                ErrorCode::AuthUnavailable,
                "credentials cannot be verified right now",
            )
            .header(http::header::RETRY_AFTER, "5"),
            AuthError::Missing => Problem::unauthorized("credentials are required"),
            AuthError::Expired => Problem::unauthorized("the token has expired"),
            AuthError::UnknownApiKey | AuthError::Revoked | AuthError::KeyExpired => {
                Problem::unauthorized("the API key is not valid")
            }
            _ => Problem::unauthorized("the credentials are not valid"),
        }
    }
}

impl From<AuthError> for crate::problem::Problem {
    fn from(e: AuthError) -> Self {
        e.to_problem()
    }
}

/// Turns a presented credential (a bearer token or an API key) into a
/// [`Principal`]. Implemented by [`crate::auth::Authenticator`] (all enabled
/// methods), [`crate::auth::jwt::JwtVerifier`] and
/// [`crate::auth::apikey::ApiKeys`]; the service framework takes a
/// `dyn TokenVerifier` so it never depends on how tokens are checked.
#[async_trait::async_trait]
pub trait TokenVerifier: Send + Sync {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError>;
}
