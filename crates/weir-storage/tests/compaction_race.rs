//! Compaction racing with appends and reads: writers append to kept
//! streams while short-lived streams churn, checkpoints and compaction run
//! back to back, and readers walk the streams the whole time. Every stream
//! must hold exactly its acknowledged appends, in order, during the run,
//! at the end, and after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use weir_core::StreamName;
use weir_core::offset::ReadFrom;
use weir_storage::log::backend::{self, LogOptions, LogStorage};
use weir_storage::log::compact::{self, CompactOptions};
use weir_storage::log::engine::{EngineOptions, SyncMode};
use weir_storage::{Storage, contract};

const WRITERS: usize = 3;
const UNIT: usize = 300;

fn opts() -> LogOptions {
    LogOptions {
        engine: EngineOptions {
            segment_size: 64 * 1024,
            sync: SyncMode::None,
            ..EngineOptions::default()
        },
        min_free_bytes: 0,
        ..LogOptions::default()
    }
}

fn name(n: &str) -> StreamName {
    StreamName::new(n).unwrap()
}

fn unit(w: usize, n: u64) -> Vec<u8> {
    let mut u = format!("[{w}:{n:08}:").into_bytes();
    u.resize(UNIT - 1, b'.');
    u.push(b']');
    u
}

/// Reads a stream in small steps.
async fn read_steps(s: &LogStorage, n: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let c = s.read(&name(n), from, 2_000).await.unwrap();
        out.extend(c.pieces.concat());
        if c.up_to_date {
            return out;
        }
        assert_ne!(c.next, c.start, "{n}: a read made no progress");
        from = ReadFrom::At(c.next);
    }
}

/// The stream holds units 0.. of writer `w`, in order, and at least `acked`.
fn check_prefix(w: usize, data: &[u8], acked: u64, what: &str) {
    assert_eq!(data.len() % UNIT, 0, "{what}: w{w} torn");
    let n = (data.len() / UNIT) as u64;
    assert!(n >= acked, "{what}: w{w} lost data ({n} < {acked})");
    for (i, chunk) in data.chunks(UNIT).enumerate() {
        assert_eq!(chunk, unit(w, i as u64), "{what}: w{w} unit {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_reads_racing_with_compaction_keep_chains_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Arc::new(backend::open(dir, opts()).unwrap().0);
    for w in 0..WRITERS {
        s.create(contract::create_req(&format!("w{w}"), "text/plain", b""))
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (s, stop) = (s.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut churn = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.append(&name(&format!("w{w}")), contract::bytes_append(&unit(w, n)))
                    .await
                    .unwrap();
                n += 1;
                // Short-lived streams: most of the log becomes dead.
                if n.is_multiple_of(4) {
                    let t = format!("t{w}-{churn}");
                    churn += 1;
                    s.create(contract::create_req(&t, "text/plain", b""))
                        .await
                        .unwrap();
                    for _ in 0..3 {
                        s.append(&name(&t), contract::bytes_append(&[b'x'; 1_000]))
                            .await
                            .unwrap();
                    }
                    s.delete(&name(&t)).await.unwrap();
                }
            }
            n
        }));
    }
    let mut readers = Vec::new();
    for w in 0..WRITERS {
        let (s, stop) = (s.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let d = read_steps(&s, &format!("w{w}")).await;
                check_prefix(w, &d, 0, "concurrent read");
                reads += 1;
                // Hot reads never wait: leave the workers to the writers.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            reads
        }));
    }
    let mut removed = 0;
    let mut relocated = 0;
    let compact_opts = CompactOptions {
        max_segments_per_run: 100,
        ..CompactOptions::default()
    };
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        weir_storage::log::checkpoint::write(&s).await.unwrap();
        let r = compact::run(&s, &compact_opts).await.unwrap();
        removed += r.segments_removed;
        relocated += r.runs_relocated;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.unwrap());
    }
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    assert!(
        removed > 0 && relocated > 0,
        "compaction ran ({removed} removed, {relocated} runs)"
    );
    for (w, &n) in acked.iter().enumerate() {
        let d = read_steps(&s, &format!("w{w}")).await;
        check_prefix(w, &d, n, "end");
        assert_eq!(d.len() as u64, n * UNIT as u64);
    }
    s.shutdown().await;
    drop(s);
    let s = backend::open(dir, opts()).unwrap().0;
    for (w, &n) in acked.iter().enumerate() {
        let d = read_steps(&s, &format!("w{w}")).await;
        check_prefix(w, &d, n, "restart");
        assert_eq!(d.len() as u64, n * UNIT as u64);
    }
    let v = backend::verify_dir(dir).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    eprintln!(
        "acked {acked:?}; {removed} segments removed, {relocated} runs relocated; log starts at segment {}",
        v.first_segment
    );
}
