//! The log's committer publishes a stream's durable tail itself, right after
//! the batch's sync: readers wake without waiting for the appending task to
//! run again — and never see data whose sync failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use weir_core::StreamName;
use weir_core::offset::ReadFrom;
use weir_storage::log::backend::LogStorage;
use weir_storage::log::sim::{Faults, SimFs};
use weir_storage::{Storage, contract};

fn open(fs: &SimFs) -> LogStorage {
    common::open_sim(fs, 64 * 1024)
}

/// Polls `fut` exactly once (submitting the append) and gives it back
/// unfinished, or its output if it already completed.
async fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    tokio::time::timeout(Duration::ZERO, fut).await.ok()
}

/// Guards against a hang only (not a timing assertion).
const HANG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "current_thread")]
async fn readers_see_a_durable_append_before_its_task_runs_again() {
    let fs = SimFs::new();
    let s = open(&fs);
    s.create(contract::create_req("p", "text/plain", b""))
        .await
        .unwrap();
    let name = StreamName::new("p").unwrap();
    let mut watch = s.watch(&name).await.unwrap();
    watch.borrow_and_update();
    let req = contract::bytes_append(b"hello");
    let mut append = Box::pin(s.append(&name, req));
    if poll_once(&mut append).await.is_some() {
        // The commit finished within the first poll: nothing to observe.
        return;
    }
    // The append future is not polled again until the reader saw the data:
    // on a single-threaded runtime only the committer thread can publish.
    tokio::time::timeout(HANG, watch.changed())
        .await
        .expect("the committer published the durable tail")
        .unwrap();
    let tail = *watch.borrow();
    assert_eq!(tail.commits, 2, "{tail:?}");
    let chunk = s.read(&name, ReadFrom::Start, 1 << 20).await.unwrap();
    assert_eq!(chunk.pieces.concat(), b"hello");
    assert!(chunk.up_to_date);
    let out = append.await.unwrap();
    assert!(out.result.is_ok());
    assert_eq!(out.tail, chunk.next);
    // Publishing again from the task changed nothing.
    assert!(!watch.has_changed().unwrap());
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_sync_publishes_nothing() {
    let fs = SimFs::new();
    let s = open(&fs);
    s.create(contract::create_req("q", "text/plain", b"seed"))
        .await
        .unwrap();
    let name = StreamName::new("q").unwrap();
    let mut watch = s.watch(&name).await.unwrap();
    let before = *watch.borrow_and_update();
    fs.inject(Faults {
        fail_sync: Some(1),
        ..Faults::default()
    });
    let err = tokio::time::timeout(HANG, s.append(&name, contract::bytes_append(b"lost")))
        .await
        .unwrap();
    assert!(err.is_err(), "{err:?}");
    // The committer completes waiters after it would have published.
    assert!(!watch.has_changed().unwrap());
    assert_eq!(*watch.borrow(), before);
    let chunk = s.read(&name, ReadFrom::Start, 1 << 20).await.unwrap();
    assert_eq!(chunk.pieces.concat(), b"seed");
}
