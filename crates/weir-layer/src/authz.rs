//! Authorization and tenant isolation.
//!
//! Permissions are coarse on purpose — read, write, manage (create/delete),
//! admin — and come from roles (API keys, JWT `roles`) or scopes (JWT
//! `scope`/`scp`) through one configurable [`PermissionTable`]. They are
//! computed once per authentication and stored in the [`Principal`].
//!
//! Tenants: a principal belongs to exactly one tenant and sees only that
//! tenant's resources. Anything of another tenant must look exactly like a
//! resource that does not exist (`404`, never `403`): a `403` would confirm
//! that the name exists. [`TenantResolver`] decides where the tenant of a
//! request comes from, [`scoped_name`]/[`unscoped_name`] namespace storage
//! keys, and [`visible`] turns "found, but foreign" into the same `404` as
//! "not found".

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::principal::Principal;
use crate::problem::{ErrorCode, Problem};

/// One permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read data and metadata (GET, HEAD, live reads, listing).
    Read,
    /// Append to existing resources (POST).
    Write,
    /// Create and delete resources (PUT, DELETE, fork).
    Manage,
    /// Administer the tenant (API keys, admin endpoints). Implies the others.
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 4] = [
        Permission::Read,
        Permission::Write,
        Permission::Manage,
        Permission::Admin,
    ];

    const fn bit(self) -> u8 {
        match self {
            Permission::Read => 1,
            Permission::Write => 2,
            Permission::Manage => 4,
            Permission::Admin => 8,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Manage => "manage",
            Permission::Admin => "admin",
        }
    }

    /// The permission an HTTP method needs on a stream URL: reads are
    /// `read`, appends `write`, creating (PUT) and deleting `manage`.
    pub fn for_method(m: &http::Method) -> Permission {
        match *m {
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS => Permission::Read,
            http::Method::POST => Permission::Write,
            _ => Permission::Manage,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions (serialized as a list of names).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);
    pub const ALL: Permissions = Permissions(15);

    pub fn of(ps: &[Permission]) -> Permissions {
        ps.iter().fold(Permissions::NONE, |acc, p| acc.with(*p))
    }

    #[must_use]
    pub const fn with(self, p: Permission) -> Permissions {
        Permissions(self.0 | p.bit())
    }

    #[must_use]
    pub const fn union(self, o: Permissions) -> Permissions {
        Permissions(self.0 | o.0)
    }

    /// Holds `p` itself, or `admin`.
    pub const fn allows(self, p: Permission) -> bool {
        self.0 & p.bit() != 0 || self.0 & Permission::Admin.bit() != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.0 & p.bit() != 0)
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for Permissions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Permissions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Permissions, D::Error> {
        let v = Vec::<Permission>::deserialize(d)?;
        Ok(Permissions::of(&v))
    }
}

/// Which roles and scopes grant which permissions (config `[authz]`).
///
/// A configured `roles` or `scopes` table replaces the default one whole, so
/// what the file says is exactly what holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionTable {
    pub roles: BTreeMap<String, Vec<Permission>>,
    pub scopes: BTreeMap<String, Vec<Permission>>,
}

impl Default for PermissionTable {
    fn default() -> Self {
        use Permission::*;
        let roles = [
            ("reader", vec![Read]),
            ("writer", vec![Read, Write]),
            ("manager", vec![Read, Write, Manage]),
            ("admin", vec![Admin]),
        ];
        let scopes = [
            ("weir:read", vec![Read]),
            ("weir:write", vec![Write]),
            ("weir:manage", vec![Manage]),
            ("weir:admin", vec![Admin]),
        ];
        PermissionTable {
            roles: roles.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            scopes: scopes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }
}

impl PermissionTable {
    /// The union of what the roles and scopes grant; unknown names grant nothing.
    pub fn resolve(&self, roles: &[String], scopes: &[String]) -> Permissions {
        let from = |table: &BTreeMap<String, Vec<Permission>>, names: &[String]| {
            names
                .iter()
                .filter_map(|n| table.get(n))
                .fold(Permissions::NONE, |acc, ps| acc.union(Permissions::of(ps)))
        };
        from(&self.roles, roles).union(from(&self.scopes, scopes))
    }

    /// Fills `principal.permissions` from its roles and scopes.
    pub fn apply(&self, principal: &mut Principal) {
        principal.permissions = self.resolve(&principal.roles, &principal.scopes);
    }
}

/// Authorization settings (config `[authz]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzConfig {
    pub tenant_source: TenantSource,
    /// role → permissions (replaces the default table when set).
    pub roles: BTreeMap<String, Vec<Permission>>,
    /// scope → permissions (replaces the default table when set).
    pub scopes: BTreeMap<String, Vec<Permission>>,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        let t = PermissionTable::default();
        AuthzConfig {
            tenant_source: TenantSource::default(),
            roles: t.roles,
            scopes: t.scopes,
        }
    }
}

impl AuthzConfig {
    pub fn table(&self) -> PermissionTable {
        PermissionTable {
            roles: self.roles.clone(),
            scopes: self.scopes.clone(),
        }
    }

    pub fn resolver(&self) -> TenantResolver {
        TenantResolver::new(self.tenant_source)
    }
}

/// `Ok` if the principal holds `p`, else `403 forbidden`.
///
/// Use this only once the resource is known to belong to the principal's
/// tenant (see [`visible`]); otherwise the `403` would reveal the resource.
pub fn require(principal: &Principal, p: Permission) -> Result<(), Problem> {
    if principal.can(p) {
        Ok(())
    } else {
        Err(Problem::forbidden(format!(
            "this operation needs the `{p}` permission"
        )))
    }
}

/// Where the tenant of a request comes from (config `authz.tenant_source`).
///
/// * `token` (default): the tenant is the principal's; URLs stay
///   tenant-free (`/v1/stream/chat/1`) and storage keys are namespaced
///   internally. Clients need no change and cannot even name another
///   tenant; one URL means different streams for different tenants, so
///   shared caches must vary on `Authorization` (the server marks reads
///   `private` when auth is on).
/// * `path`: URLs carry the tenant (`/t/{tenant}/v1/stream/chat/1`). URLs are
///   globally unique (good for caches, logs and links), and an operator can
///   see the tenant in access logs; the principal must still belong to that
///   tenant, and a mismatch answers 404 like a missing stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantSource {
    #[default]
    Token,
    Path,
}

/// A tenant id that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a valid tenant id (1-63 of a-z, 0-9, `-`, `_`, starting with a letter or digit)"
)]
pub struct InvalidTenant(pub String);

/// Validates a tenant id: 1–63 bytes of lowercase ASCII letters, digits,
/// `-` and `_`, starting with a letter or digit. Strict on purpose: tenant
/// ids become storage-key prefixes and label values, so `/`, `.`, case
/// variants and unicode look-alikes must never reach them.
pub fn validate_tenant(t: &str) -> Result<(), InvalidTenant> {
    let b = t.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidTenant(t.to_owned()))
    }
}

/// The tenant a request acts in, after [`TenantResolver::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantScope {
    pub tenant: String,
    /// The request path with the `/t/{tenant}` prefix removed (path mode), or
    /// the path unchanged (token mode).
    pub path: String,
}

/// Decides the tenant of a request from the path or the token.
#[derive(Clone, Debug, Default)]
pub struct TenantResolver {
    pub source: TenantSource,
}

impl TenantResolver {
    pub fn new(source: TenantSource) -> TenantResolver {
        TenantResolver { source }
    }

    /// The tenant `principal` acts in for `path`.
    ///
    /// Path mode: `path` must start with `/t/{tenant}/`; a malformed tenant
    /// answers `400 tenant_invalid`, a tenant other than the principal's
    /// answers `404 not_found` — exactly what a missing resource answers.
    pub fn resolve(&self, principal: &Principal, path: &str) -> Result<TenantScope, Problem> {
        match self.source {
            TenantSource::Token => Ok(TenantScope {
                tenant: principal.tenant.clone(),
                path: path.to_owned(),
            }),
            TenantSource::Path => {
                let rest = path.strip_prefix("/t/").ok_or_else(|| {
                    Problem::new(
                        ErrorCode::RouteNotFound,
                        "no such route (expected /t/{tenant}/…)",
                    )
                })?;
                let (tenant, tail) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/"),
                };
                validate_tenant(tenant)
                    .map_err(|e| Problem::new(ErrorCode::TenantInvalid, e.to_string()))?;
                if tenant != principal.tenant {
                    return Err(Problem::not_found("no such resource"));
                }
                Ok(TenantScope {
                    tenant: tenant.to_owned(),
                    path: tail.to_owned(),
                })
            }
        }
    }
}

/// The storage key of `name` in `tenant`'s namespace: `{tenant}/{name}`.
/// Tenant ids cannot contain `/` ([`validate_tenant`]), so the first segment
/// always is the tenant and no name can climb into another namespace.
pub fn scoped_name(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// The tenant-relative name of a storage key, or `None` if the key belongs
/// to another tenant — the filter for listings.
pub fn unscoped_name<'a>(tenant: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(tenant)?.strip_prefix('/')
}

/// `Ok(resource)` if it exists and belongs to the principal's tenant;
/// otherwise `not_found()` — the same answer for "missing" and "foreign", so
/// a caller cannot learn what other tenants have.
pub fn visible<T>(
    principal: &Principal,
    found: Option<(T, &str)>,
    not_found: impl FnOnce() -> Problem,
) -> Result<T, Problem> {
    match found {
        Some((r, owner)) if owner == principal.tenant => Ok(r),
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str, perms: &[Permission]) -> Principal {
        Principal {
            permissions: Permissions::of(perms),
            ..Principal::new("u", tenant)
        }
    }

    #[test]
    fn table_resolves_roles_and_scopes() {
        let t = PermissionTable::default();
        let p = t.resolve(&["writer".into()], &["weir:manage".into(), "other".into()]);
        assert!(p.allows(Permission::Read));
        assert!(p.allows(Permission::Write));
        assert!(p.allows(Permission::Manage));
        assert!(!p.allows(Permission::Admin));
        let admin = t.resolve(&["admin".into()], &[]);
        for perm in Permission::ALL {
            assert!(admin.allows(perm), "admin implies {perm}");
        }
        assert!(t.resolve(&["nobody".into()], &[]).is_empty());
    }

    #[test]
    fn configured_table_replaces_defaults() {
        let t: PermissionTable = serde_json::from_str(r#"{"roles":{"ops":["manage"]}}"#).unwrap();
        assert!(t.resolve(&["writer".into()], &[]).is_empty());
        assert!(t.resolve(&["ops".into()], &[]).allows(Permission::Manage));
        // scopes keep their default when only roles are configured
        assert!(
            t.resolve(&[], &["weir:read".into()])
                .allows(Permission::Read)
        );
    }

    #[test]
    fn require_answers_403() {
        let p = principal("a", &[Permission::Read]);
        assert!(require(&p, Permission::Read).is_ok());
        let e = require(&p, Permission::Write).unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(e.code, ErrorCode::Forbidden);
    }

    #[test]
    fn permissions_serialize_as_names() {
        let p = Permissions::of(&[Permission::Write, Permission::Read]);
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"["read","write"]"#);
        let back: Permissions = serde_json::from_str(r#"["read","write"]"#).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn tenant_ids_are_strict() {
        for ok in ["a", "acme", "acme-1", "a_b", "0x"] {
            assert!(validate_tenant(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "A", "-a", "a/b", "..", "a.b", "é", "a b", long.as_str()] {
            assert!(validate_tenant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_mode_hides_foreign_tenants_as_404() {
        let r = TenantResolver::new(TenantSource::Path);
        let a = principal("a", &[Permission::Admin]);
        let s = r.resolve(&a, "/t/a/v1/stream/x").unwrap();
        assert_eq!(s.tenant, "a");
        assert_eq!(s.path, "/v1/stream/x");
        let e = r.resolve(&a, "/t/b/v1/stream/x").unwrap_err();
        assert_eq!((e.status, e.code), (404, ErrorCode::NotFound));
        let e = r.resolve(&a, "/t/B/v1/stream/x").unwrap_err();
        assert_eq!(e.code, ErrorCode::TenantInvalid);
        assert_eq!(r.resolve(&a, "/v1/stream/x").unwrap_err().status, 404);
    }

    #[test]
    fn token_mode_uses_the_principal_tenant() {
        let r = TenantResolver::default();
        let s = r.resolve(&principal("b", &[]), "/v1/stream/x").unwrap();
        assert_eq!(s.tenant, "b");
        assert_eq!(s.path, "/v1/stream/x");
    }

    #[test]
    fn scoped_names_and_visibility() {
        assert_eq!(scoped_name("a", "chat/1"), "a/chat/1");
        assert_eq!(unscoped_name("a", "a/chat/1"), Some("chat/1"));
        assert_eq!(unscoped_name("a", "ab/chat/1"), None);
        assert_eq!(unscoped_name("a", "b/chat/1"), None);
        let a = principal("a", &[Permission::Admin]);
        assert_eq!(
            visible(&a, Some((1, "a")), || Problem::not_found("x")).unwrap(),
            1
        );
        let foreign = visible(&a, Some((1, "b")), || Problem::not_found("x")).unwrap_err();
        let missing = visible::<i32>(&a, None, || Problem::not_found("x")).unwrap_err();
        assert_eq!(foreign, missing);
    }
}
