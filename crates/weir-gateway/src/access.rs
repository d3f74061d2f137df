//! Who may subscribe to which subjects, and under which tenant.
//!
//! One check for SSE and WebSocket, so both transports refuse the same
//! subscriptions with the same problem.

use weir_layer::problem::{ErrorCode, Problem};
use weir_layer::{Permission, Principal};

use crate::config::EventsConfig;
use crate::subject;

/// A subscription the principal may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// What the client asked for (and sees in delivered events).
    pub requested: String,
    /// What the gateway subscribes to on NATS (tenant-prefixed with tenancy).
    pub nats_subject: String,
    /// Removed from delivered subjects (`{tenant}.` with tenancy).
    pub strip_prefix: Option<String>,
}

impl Grant {
    /// The subject a client sees for an event published on `nats_subject`.
    pub fn visible_subject<'a>(&self, nats_subject: &'a str) -> &'a str {
        match &self.strip_prefix {
            Some(p) => nats_subject
                .strip_prefix(p.as_str())
                .unwrap_or(nats_subject),
            None => nats_subject,
        }
    }
}

/// Checks a subscription request against `[gateway.events]`.
pub fn authorize(cfg: &EventsConfig, who: &Principal, requested: &str) -> Result<Grant, Problem> {
    subject::validate(requested).map_err(|e| {
        Problem::new(
            ErrorCode::HeaderInvalid,
            format!("invalid subject `{requested}`: {e}"),
        )
        .extension("field", "subject")
    })?;
    let allowed = who.can(Permission::Admin)
        || cfg.rules.iter().any(|r| {
            subject::covers(&r.subjects, requested)
                && ((r.roles.is_empty() && r.scopes.is_empty())
                    || r.roles.iter().any(|x| who.has_role(x))
                    || r.scopes.iter().any(|x| who.has_scope(x)))
        });
    if !allowed {
        return Err(Problem::forbidden(format!(
            "not allowed to subscribe to `{requested}`"
        )));
    }
    if cfg.tenancy {
        let prefix = format!("{}.", who.tenant);
        Ok(Grant {
            requested: requested.to_owned(),
            nats_subject: format!("{prefix}{requested}"),
            strip_prefix: Some(prefix),
        })
    } else {
        Ok(Grant {
            requested: requested.to_owned(),
            nats_subject: requested.to_owned(),
            strip_prefix: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SubscribeRule;
    use weir_layer::Permissions;

    fn cfg(tenancy: bool) -> EventsConfig {
        EventsConfig {
            tenancy,
            rules: vec![
                SubscribeRule {
                    subjects: "orders.>".into(),
                    roles: vec!["clerk".into()],
                    scopes: vec![],
                },
                SubscribeRule {
                    subjects: "public.*".into(),
                    roles: vec![],
                    scopes: vec![],
                },
            ],
        }
    }

    #[test]
    fn rules_and_tenancy() {
        let mut clerk = Principal::new("u1", "acme");
        clerk.roles = vec!["clerk".into()];
        let nobody = Principal::new("u2", "acme");
        let g = authorize(&cfg(false), &clerk, "orders.*").unwrap();
        assert_eq!(g.nats_subject, "orders.*");
        assert_eq!(
            authorize(&cfg(false), &nobody, "orders.*")
                .unwrap_err()
                .code,
            ErrorCode::Forbidden
        );
        assert!(authorize(&cfg(false), &nobody, "public.news").is_ok());
        assert!(authorize(&cfg(false), &nobody, "public.>").is_err());
        let g = authorize(&cfg(true), &clerk, "orders.created").unwrap();
        assert_eq!(g.nats_subject, "acme.orders.created");
        assert_eq!(g.visible_subject("acme.orders.created"), "orders.created");
        let admin = Principal::anonymous("t", Permissions::of(&[Permission::Admin]));
        assert!(authorize(&cfg(false), &admin, ">").is_ok());
        assert_eq!(
            authorize(&cfg(false), &admin, "a..b").unwrap_err().status,
            400
        );
    }
}
