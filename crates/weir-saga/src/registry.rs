//! Every saga definition an orchestrator can run, by name and version.
//!
//! New instances start under a saga's highest registered version; an
//! existing instance always continues under the version it started with,
//! because its persisted step index only means something against that
//! version's list of steps.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::definition::Saga;
use crate::error::SagaError;

#[derive(Clone, Debug, Default)]
pub struct Registry {
    sagas: BTreeMap<String, BTreeMap<u32, Arc<Saga>>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a definition; refuses an invalid one or a repeated `(name, version)`.
    pub fn register(&mut self, saga: Saga) -> Result<(), SagaError> {
        saga.validate()?;
        let versions = self.sagas.entry(saga.name.clone()).or_default();
        if versions.contains_key(&saga.version) {
            return Err(SagaError::DuplicateVersion {
                name: saga.name,
                version: saga.version,
            });
        }
        versions.insert(saga.version, Arc::new(saga));
        Ok(())
    }

    /// Builder form of [`Registry::register`].
    pub fn with(mut self, saga: Saga) -> Result<Registry, SagaError> {
        self.register(saga)?;
        Ok(self)
    }

    /// The version new instances of `name` start under.
    pub fn latest(&self, name: &str) -> Result<&Arc<Saga>, SagaError> {
        self.sagas
            .get(name)
            .and_then(|v| v.values().next_back())
            .ok_or_else(|| SagaError::UnknownSaga(name.to_owned()))
    }

    pub fn get(&self, name: &str, version: u32) -> Result<&Arc<Saga>, SagaError> {
        let versions = self
            .sagas
            .get(name)
            .ok_or_else(|| SagaError::UnknownSaga(name.to_owned()))?;
        versions
            .get(&version)
            .ok_or_else(|| SagaError::UnknownVersion {
                name: name.to_owned(),
                version,
            })
    }

    /// Registered saga names.
    pub fn names(&self) -> Vec<String> {
        self.sagas.keys().cloned().collect()
    }

    /// `name@version` of every registered definition (the form the claim
    /// query matches instances against).
    pub fn keys(&self) -> Vec<String> {
        self.sagas
            .iter()
            .flat_map(|(n, vs)| vs.keys().map(move |v| format!("{n}@{v}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Step, StepCtx};
    use serde_json::json;

    fn saga(v: u32) -> Saga {
        Saga::new("s", v).step(Step::new("a", |_c: StepCtx| async { Ok(json!(null)) }))
    }

    #[test]
    fn latest_and_exact_versions() {
        let r = Registry::new()
            .with(saga(2))
            .and_then(|r| r.with(saga(10)))
            .and_then(|r| r.with(saga(1)));
        let Ok(r) = r else {
            panic!("valid definitions")
        };
        assert_eq!(r.latest("s").map(|s| s.version()).ok(), Some(10));
        assert_eq!(r.get("s", 2).map(|s| s.version()).ok(), Some(2));
        assert!(matches!(
            r.get("s", 3),
            Err(SagaError::UnknownVersion { .. })
        ));
        assert!(matches!(r.latest("t"), Err(SagaError::UnknownSaga(_))));
        assert_eq!(r.keys(), vec!["s@1", "s@2", "s@10"]);
        assert!(matches!(
            r.with(saga(2)),
            Err(SagaError::DuplicateVersion { .. })
        ));
    }
}
