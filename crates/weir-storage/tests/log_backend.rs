//! The embedded log backend: the storage contract, restarts, cold reads,
//! torn tails, corruption and the directory lock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use weir_core::StreamName;
use weir_core::offset::ReadFrom;
use weir_storage::log::backend::{self, LogOptions, LogStorage};
use weir_storage::log::engine::EngineOptions;
use weir_storage::{Storage, contract};

fn opts() -> LogOptions {
    LogOptions {
        engine: EngineOptions {
            segment_size: 1 << 20,
            ..EngineOptions::default()
        },
        min_free_bytes: 0,
        ..LogOptions::default()
    }
}

fn open(dir: &std::path::Path) -> LogStorage {
    backend::open(dir, opts()).unwrap().0
}

#[tokio::test]
async fn log_backend_meets_the_contract() {
    let dirs: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());
    contract::run_all(|| {
        let d = tempfile::tempdir().unwrap();
        let s: Arc<dyn Storage> = Arc::new(open(d.path()));
        dirs.lock().unwrap().push(d);
        s
    })
    .await;
}

async fn everything(s: &dyn Storage) -> Vec<(String, String, bool, Vec<u8>)> {
    let mut out = Vec::new();
    for info in s.list("", None, usize::MAX).await.unwrap() {
        let mut data = Vec::new();
        let mut from = ReadFrom::Start;
        loop {
            let c = s.read(&info.name, from, 1 << 20).await.unwrap();
            data.extend_from_slice(&c.pieces.concat());
            from = ReadFrom::At(c.next);
            if c.up_to_date {
                break;
            }
        }
        out.push((
            info.name.to_string(),
            info.tail.to_string(),
            info.closed,
            data,
        ));
    }
    out
}

#[tokio::test]
async fn everything_survives_a_restart_and_cold_reads_walk_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s: Arc<dyn Storage> = Arc::new(open(dir.path()));
        contract::forks(s.clone()).await;
        contract::producers_and_closure(s.clone()).await;
        contract::json_messages(s.clone()).await;
        contract::random_model(s.clone(), 5).await;
        // A long stream: far beyond the hot cache, many anchors, several segments.
        s.create(contract::create_req("long", "text/plain", b""))
            .await
            .unwrap();
        for i in 0..3000u32 {
            let data = format!("{i:08}|").repeat(1 + (i % 7) as usize);
            s.append(
                &StreamName::new("long").unwrap(),
                contract::bytes_append(data.as_bytes()),
            )
            .await
            .unwrap();
        }
        s.kv_put("k", bytes::Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        let all = everything(&*s).await;
        s.shutdown().await;
        all
    };
    let s = open(dir.path());
    let after = everything(&s).await;
    assert_eq!(after, before);
    // Reads from every offset of the long stream are byte-exact after restart.
    let long = StreamName::new("long").unwrap();
    let full = &before.iter().find(|(n, ..)| n == "long").unwrap().3;
    let mut from = ReadFrom::Start;
    let mut pos = 0usize;
    for _ in 0..50 {
        let c = s.read(&long, from, 997).await.unwrap();
        let got = c.pieces.concat();
        assert_eq!(&got[..], &full[pos..pos + got.len()]);
        pos += got.len();
        from = ReadFrom::At(c.next);
    }
    // Producer state survived: the retry of the closing append is a duplicate.
    assert_eq!(
        s.kv_get("k").await.unwrap().unwrap().0,
        bytes::Bytes::from_static(b"v")
    );
    // The restarted store accepts new streams with fresh incarnation ids.
    let out = s
        .create(contract::create_req(
            "new-after-restart",
            "text/plain",
            b"x",
        ))
        .await
        .unwrap();
    assert!(
        before
            .iter()
            .all(|(_, tail, ..)| out.info.tail.to_string() != *tail)
    );
}

#[tokio::test]
async fn a_second_process_cannot_open_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _s = open(dir.path());
    let second = backend::open(dir.path(), opts());
    assert!(
        matches!(second, Err(weir_storage::StorageError::Unavailable(_))),
        "{:?}",
        second.err()
    );
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Writes `n` appends of distinct data, returns them.
async fn fill(dir: &std::path::Path, n: usize) -> Vec<Vec<u8>> {
    let s = open(dir);
    s.create(contract::create_req("s", "text/plain", b""))
        .await
        .unwrap();
    let mut written = Vec::new();
    for i in 0..n {
        let d = format!("record-{i:05}-").repeat(3).into_bytes();
        s.append(&StreamName::new("s").unwrap(), contract::bytes_append(&d))
            .await
            .unwrap();
        written.push(d);
    }
    s.shutdown().await;
    written
}

async fn contents(
    dir: &std::path::Path,
) -> (
    Vec<u8>,
    backend::LogStorage,
    weir_storage::log::engine::RecoveryReport,
) {
    let (s, report) = backend::open(dir, opts()).unwrap();
    let data = match s
        .read(&StreamName::new("s").unwrap(), ReadFrom::Start, usize::MAX)
        .await
    {
        Ok(c) => c.pieces.concat(),
        Err(_) => Vec::new(),
    };
    (data, s, report)
}

/// Finds where the `i`-th append record starts in the segment (records are
/// 8-aligned frames; we locate them by their payload text).
fn locate(seg: &[u8], needle: &[u8]) -> usize {
    seg.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[tokio::test]
async fn recovery_keeps_every_complete_record_before_damage() {
    for damage in ["truncate", "flip-header", "flip-payload", "zero-payload"] {
        let dir = tempfile::tempdir().unwrap();
        let written = fill(dir.path(), 40).await;
        let seg_path = segments(dir.path())[0].clone();
        let mut seg = std::fs::read(&seg_path).unwrap();
        // Damage the record holding append #25.
        let at = locate(&seg, &written[25]);
        let header_at = at - 32 - (at - 32) % 8;
        match damage {
            "truncate" => seg.truncate(at + 5),
            "flip-header" => seg[header_at + 9] ^= 0x40,
            "flip-payload" => seg[at + 3] ^= 0x01,
            "zero-payload" => seg[at..at + written[25].len()].fill(0),
            _ => unreachable!(),
        }
        std::fs::write(&seg_path, &seg).unwrap();
        let (data, s, report) = contents(dir.path()).await;
        let expect: Vec<u8> = written[..25].concat();
        assert_eq!(
            data, expect,
            "{damage}: everything before the damage, nothing after"
        );
        assert!(
            report.torn.is_some(),
            "{damage}: recovery reports what it dropped"
        );
        // The store keeps working, and a second recovery is identical.
        s.append(
            &StreamName::new("s").unwrap(),
            contract::bytes_append(b"after"),
        )
        .await
        .unwrap();
        s.shutdown().await;
        drop(s);
        let (data2, _s2, _) = contents(dir.path()).await;
        assert_eq!(
            data2,
            [expect, b"after".to_vec()].concat(),
            "{damage}: recovery is stable"
        );
    }
}

#[tokio::test]
async fn low_disk_space_refuses_writes_but_not_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = backend::open(
        dir.path(),
        LogOptions {
            min_free_bytes: u64::MAX,
            ..opts()
        },
    )
    .unwrap();
    let err = s
        .create(contract::create_req("x", "text/plain", b""))
        .await
        .unwrap_err();
    assert!(
        matches!(err, weir_storage::StorageError::Full(_)),
        "{err:?}"
    );
    assert!(matches!(
        s.ready().await,
        Err(weir_storage::StorageError::Unavailable(_))
    ));
}

#[tokio::test]
async fn restarts_load_the_checkpoint_and_replay_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (before, ckpt) = {
        let s = Arc::new(open(dir.path()));
        contract::forks(s.clone()).await;
        contract::random_model(s.clone(), 11).await;
        s.kv_put("k", bytes::Bytes::from_static(b"v1"), None)
            .await
            .unwrap();
        let lsn = weir_storage::log::checkpoint::write(&s).await.unwrap();
        // More after the checkpoint: appends, a delete, a new stream, kv.
        contract::producers_and_closure(s.clone()).await;
        s.delete(&StreamName::new("m").unwrap()).await.unwrap();
        s.kv_put("k", bytes::Bytes::from_static(b"v2"), Some(1))
            .await
            .unwrap();
        let all = everything(&*s).await;
        s.shutdown().await;
        (all, lsn)
    };
    assert!(ckpt > 0);
    let (s, report) = backend::open(dir.path(), opts()).unwrap();
    assert_eq!(everything(&s).await, before);
    assert_eq!(
        s.kv_get("k").await.unwrap().unwrap().0,
        bytes::Bytes::from_static(b"v2")
    );
    let full = {
        drop(s);
        // Without checkpoints the same log replays every record.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "ckpt") {
                std::fs::remove_file(p).unwrap();
            }
        }
        let (s2, full) = backend::open(dir.path(), opts()).unwrap();
        assert_eq!(
            everything(&s2).await,
            before,
            "a full replay agrees with checkpoint + tail"
        );
        full
    };
    assert!(
        report.records < full.records,
        "the checkpoint spared {} of {} records",
        full.records - report.records,
        full.records
    );
}
