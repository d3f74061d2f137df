//! Shared by the saga tests: a migrated throwaway database and a journal
//! of what the actions did.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_saga::SagaStore;
use weir_testkit::pg::{self, TestDatabase};

/// Long enough never to fire on a loaded CI machine; only there so that a
/// broken orchestrator fails the test instead of hanging it.
pub const GIVE_UP: Duration = Duration::from_secs(120);

/// A fresh database with the saga tables, dropped with the returned value.
pub async fn database(tag: &str) -> (TestDatabase, SagaStore) {
    let db = pg::database(tag).await;
    let store = SagaStore::new(db.url()).unwrap_or_else(|e| panic!("{e}"));
    store.migrate().await.unwrap_or_else(|e| panic!("{e}"));
    (db, store)
}

/// What the actions did, in order (`"reserve"`, `"undo:reserve"`, …).
#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    pub fn push(&self, s: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.into());
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
