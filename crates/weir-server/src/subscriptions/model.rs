//! Subscription configuration (what clients send), state (what the server
//! persists) and the JSON views of both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weir_core::StreamName;

/// Lease bounds (PROTOCOL.md §6.2): 1 second to 10 minutes, default 30 s.
pub const MIN_LEASE_MS: u64 = 1_000;
pub const MAX_LEASE_MS: u64 = 600_000;
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Most explicit streams one subscription may list.
pub const MAX_EXPLICIT: usize = 10_000;
/// Longest subscription id.
pub const MAX_ID_LEN: usize = 256;

/// Delivery mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "webhook")]
    Webhook,
    #[serde(rename = "pull-wake")]
    PullWake,
}

/// `PUT .../__ds/subscriptions/:id` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub pattern: Option<String>,
    pub streams: Option<Vec<String>>,
    pub webhook: Option<WebhookBody>,
    pub wake_stream: Option<String>,
    pub lease_ttl_ms: Option<u64>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    pub url: String,
}

/// A validated, normalized configuration. Its hash decides idempotent
/// re-confirmation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub kind: Kind,
    pub pattern: Option<String>,
    /// Sorted, deduplicated.
    pub streams: Vec<String>,
    pub webhook_url: Option<String>,
    pub wake_stream: Option<String>,
    pub lease_ttl_ms: u64,
    pub description: Option<String>,
}

impl Config {
    /// SHA-256 of the normalized configuration.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&canonical)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Config {
    /// The configuration in a tenant's namespace: its pattern, explicit
    /// streams and wake stream become storage names (`{tenant}/{path}`), so
    /// the pattern can only ever match that tenant's streams (tenant ids
    /// hold no glob characters). `None` (no tenancy): unchanged.
    pub fn in_tenant(mut self, tenant: Option<&str>) -> Result<Config, ConfigError> {
        let Some(t) = tenant else {
            return Ok(self);
        };
        self.pattern = self.pattern.map(|p| weir_layer::authz::scoped_name(t, &p));
        self.streams = scope_paths(&self.streams, Some(t))?;
        self.wake_stream = self
            .wake_stream
            .map(|w| scope_path(&w, Some(t)))
            .transpose()?;
        Ok(self)
    }
}

/// A validated client stream path as a storage name (in `tenant`).
pub fn scope_path(path: &str, tenant: Option<&str>) -> Result<String, ConfigError> {
    let Some(t) = tenant else {
        return Ok(path.to_owned());
    };
    let full = weir_layer::authz::scoped_name(t, path);
    StreamName::new(&full).map_err(|_| ConfigError::BadStream(path.to_owned()))?;
    Ok(full)
}

/// [`scope_path`] for each of `paths`.
pub fn scope_paths(paths: &[String], tenant: Option<&str>) -> Result<Vec<String>, ConfigError> {
    paths.iter().map(|p| scope_path(p, tenant)).collect()
}

/// Why a configuration was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("at least one of `pattern` or `streams` is required")]
    NoStreams,
    #[error("invalid pattern")]
    BadPattern,
    #[error("invalid stream path `{0}`")]
    BadStream(String),
    #[error("too many explicit streams (at most {MAX_EXPLICIT})")]
    TooManyStreams,
    #[error("webhook subscriptions need `webhook.url` and no `wake_stream`")]
    Webhook,
    #[error("pull-wake subscriptions need `wake_stream` and no `webhook`")]
    PullWake,
    #[error("lease_ttl_ms must be between {MIN_LEASE_MS} and {MAX_LEASE_MS}")]
    Lease,
    #[error("description is longer than 1024 bytes")]
    Description,
}

/// Validates stream paths of a request.
pub fn stream_paths(raw: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = raw
        .iter()
        .map(|p| {
            StreamName::new(p)
                .map(|n| n.to_string())
                .map_err(|_| ConfigError::BadStream(p.clone()))
        })
        .collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

impl CreateBody {
    /// Validates and normalizes (webhook URL safety is checked separately).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.pattern.is_none() && self.streams.as_ref().is_none_or(Vec::is_empty) {
            return Err(ConfigError::NoStreams);
        }
        if let Some(p) = &self.pattern
            && !weir_core::glob::valid_pattern(p)
        {
            return Err(ConfigError::BadPattern);
        }
        let streams = stream_paths(self.streams.as_deref().unwrap_or_default())?;
        if streams.len() > MAX_EXPLICIT {
            return Err(ConfigError::TooManyStreams);
        }
        let lease_ttl_ms = self.lease_ttl_ms.unwrap_or(DEFAULT_LEASE_MS);
        if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ttl_ms) {
            return Err(ConfigError::Lease);
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(ConfigError::Description);
        }
        let (webhook_url, wake_stream) = match self.kind {
            Kind::Webhook => match (self.webhook, self.wake_stream) {
                (Some(w), None) => (Some(w.url), None),
                _ => return Err(ConfigError::Webhook),
            },
            Kind::PullWake => match (self.webhook, self.wake_stream) {
                (None, Some(w)) => {
                    let w = StreamName::new(&w).map_err(|_| ConfigError::BadStream(w.clone()))?;
                    (None, Some(w.to_string()))
                }
                _ => return Err(ConfigError::PullWake),
            },
        };
        Ok(Config {
            kind: self.kind,
            pattern: self.pattern,
            streams,
            webhook_url,
            wake_stream,
            lease_ttl_ms,
            description: self.description,
        })
    }
}

/// One linked stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub explicit: bool,
    pub glob: bool,
    /// Last processed offset, inclusive.
    pub acked: String,
}

/// A wake in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wake {
    pub wake_id: String,
    /// Pull-wake: the worker holding the lease (`None` until claimed).
    pub holder: Option<String>,
    /// When the lease (or the unclaimed wake) lapses, Unix ms.
    pub lease_expires_ms: i64,
    /// The tails the wake was issued for (stream → tail offset).
    pub snapshot: BTreeMap<String, String>,
}

/// Everything persisted about one subscription.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub config: Config,
    pub config_hash: String,
    pub created_at_ms: i64,
    /// Absolute stream-root URL the subscription was created through (for
    /// callback and JWKS URLs when no public URL is configured).
    pub base_url: String,
    pub links: BTreeMap<String, Link>,
    pub generation: u64,
    pub wake: Option<Wake>,
    /// Webhook retry schedule after failed deliveries.
    pub failures: u32,
    pub next_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Tombstoned by DELETE (kept so a re-created id keeps fencing old tokens).
    pub deleted: bool,
    /// The owning tenant when streams are tenant-scoped: `id` is then
    /// `{tenant}/{client id}` and every stream name is a storage name in
    /// the tenant's namespace; clients see them without the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `/t/{tenant}` when the tenant comes from the URL (callback URLs
    /// are built under it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url_prefix: String,
}

impl State {
    /// The id the client chose (without the tenant).
    pub fn client_id(&self) -> &str {
        self.tenant
            .as_deref()
            .and_then(|t| weir_layer::authz::unscoped_name(t, &self.id))
            .unwrap_or(&self.id)
    }

    /// What a stream's storage name looks like to the subscription's
    /// tenant.
    pub fn unscoped<'a>(&self, name: &'a str) -> &'a str {
        self.tenant
            .as_deref()
            .and_then(|t| weir_layer::authz::unscoped_name(t, name))
            .unwrap_or(name)
    }

    /// The storage name of a client stream path.
    pub fn scoped(&self, path: &str) -> String {
        match &self.tenant {
            Some(t) => weir_layer::authz::scoped_name(t, path),
            None => path.to_owned(),
        }
    }

    /// `active`, or `failed` while a webhook retry is scheduled.
    pub fn status(&self) -> &'static str {
        if self.next_attempt_ms.is_some() {
            "failed"
        } else {
            "active"
        }
    }

    /// Links whose stream has data past the acked offset, given tails.
    pub fn pending(&self, tails: &BTreeMap<String, String>) -> bool {
        self.links
            .iter()
            .any(|(p, l)| tails.get(p).is_some_and(|t| t.as_str() > l.acked.as_str()))
    }
}

/// The `streams` entries of responses and wake payloads.
#[derive(Serialize)]
pub struct StreamView<'a> {
    pub path: &'a str,
    pub link_type: &'static str,
    pub acked_offset: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail_offset: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_pending: Option<bool>,
}

impl Link {
    pub fn link_type(&self) -> &'static str {
        if self.explicit { "explicit" } else { "glob" }
    }
}

/// Builds the `streams` array of `s`'s links (paths as its tenant sees
/// them); with `tails`, includes tail and pending.
pub fn stream_views<'a>(
    s: &'a State,
    tails: Option<&'a BTreeMap<String, String>>,
) -> Vec<StreamView<'a>> {
    s.links
        .iter()
        .map(|(p, l)| {
            let tail = tails.and_then(|t| t.get(p)).map(String::as_str);
            StreamView {
                path: s.unscoped(p),
                link_type: l.link_type(),
                acked_offset: &l.acked,
                tail_offset: tail,
                has_pending: tails.map(|_| tail.is_some_and(|t| t > l.acked.as_str())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<Config, ConfigError> {
        serde_json::from_str::<CreateBody>(json)
            .unwrap()
            .into_config()
    }

    #[test]
    fn validation_and_normalization() {
        let a = body(r#"{"type":"webhook","streams":["b","a","a"],"webhook":{"url":"https://x"}}"#)
            .unwrap();
        let b = body(r#"{"type":"webhook","streams":["a","b"],"webhook":{"url":"https://x"},"lease_ttl_ms":30000}"#).unwrap();
        assert_eq!(a.streams, vec!["a", "b"]);
        assert_eq!(a.hash(), b.hash(), "normalized configs hash alike");
        let c =
            body(r#"{"type":"webhook","streams":["a"],"webhook":{"url":"https://x"}}"#).unwrap();
        assert_ne!(a.hash(), c.hash());
        assert_eq!(
            body(r#"{"type":"webhook","webhook":{"url":"https://x"}}"#),
            Err(ConfigError::NoStreams)
        );
        assert_eq!(
            body(r#"{"type":"webhook","pattern":"a/*"}"#),
            Err(ConfigError::Webhook)
        );
        assert_eq!(
            body(r#"{"type":"pull-wake","pattern":"a/*"}"#),
            Err(ConfigError::PullWake)
        );
        assert_eq!(
            body(r#"{"type":"pull-wake","pattern":"a/*","wake_stream":"w","lease_ttl_ms":10}"#),
            Err(ConfigError::Lease)
        );
        assert!(
            body(r#"{"type":"webhook","streams":["../x"],"webhook":{"url":"https://x"}}"#).is_err()
        );
        assert!(
            serde_json::from_str::<CreateBody>(r#"{"type":"carrier-pigeon","pattern":"a"}"#)
                .is_err()
        );
    }

    #[test]
    fn tenant_scoping() {
        let c =
            body(r#"{"type":"pull-wake","pattern":"orders/*","streams":["b"],"wake_stream":"w"}"#)
                .unwrap();
        assert_eq!(c.clone().in_tenant(None).unwrap(), c);
        let t = c.in_tenant(Some("acme")).unwrap();
        assert_eq!(t.pattern.as_deref(), Some("acme/orders/*"));
        assert_eq!(t.streams, vec!["acme/b"]);
        assert_eq!(t.wake_stream.as_deref(), Some("acme/w"));
        assert!(weir_core::glob::matches(
            t.pattern.as_deref().unwrap(),
            "acme/orders/1"
        ));
        assert!(!weir_core::glob::matches(
            t.pattern.as_deref().unwrap(),
            "other/orders/1"
        ));
        let any = body(r#"{"type":"pull-wake","pattern":"**","wake_stream":"w"}"#)
            .unwrap()
            .in_tenant(Some("acme"))
            .unwrap();
        assert!(!weir_core::glob::matches(
            any.pattern.as_deref().unwrap(),
            "acmex/a"
        ));
        assert!(!weir_core::glob::matches(
            any.pattern.as_deref().unwrap(),
            "other/acme/a"
        ));
        assert!(weir_core::glob::matches(
            any.pattern.as_deref().unwrap(),
            "acme/a/b"
        ));
    }
}
