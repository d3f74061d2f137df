//! Shared by the simulated-disk tests: opening the log store on a [`SimFs`].
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;

use weir_storage::log::backend::{self, LogOptions, LogStorage};
use weir_storage::log::engine::EngineOptions;
use weir_storage::log::sim::SimFs;

/// Opens (or recovers) the log store on `fs` with small segments, so a
/// short test rolls over several of them, and no free-space floor (the
/// simulated disk reports none). The data-directory lock is a throwaway
/// real file: the simulated disk has no locks.
pub fn open_sim(fs: &SimFs, segment_size: u64) -> LogStorage {
    let opts = LogOptions {
        engine: EngineOptions {
            segment_size,
            ..EngineOptions::default()
        },
        min_free_bytes: 0,
        ..LogOptions::default()
    };
    let lock = tempfile::tempfile().unwrap();
    backend::open_with(Arc::new(fs.clone()), lock, opts)
        .unwrap()
        .0
}
