//! The storage contract on the memory backend.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use weir_storage::Storage;
use weir_storage::contract;
use weir_storage::memory::MemoryStorage;

fn fresh() -> Arc<dyn Storage> {
    Arc::new(MemoryStorage::default())
}

#[tokio::test]
async fn memory_backend_meets_the_contract() {
    contract::run_all(fresh).await;
}
