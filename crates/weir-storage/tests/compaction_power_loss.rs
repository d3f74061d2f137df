//! Power loss during compaction: the log runs on the simulated disk
//! (`log::sim::SimFs`) while writers append, short-lived streams churn, and
//! checkpoints and compaction run back to back; at a seeded instant the
//! disk loses or tears every unsynced write. After each crash every
//! acknowledged append must be readable at its place, in order, with
//! nothing torn — whichever relocations, markers, checkpoints and segment
//! removals made it to disk.
//!
//! `WEIR_SIM_ITERS` raises the number of seeds (default 8, three crashes each).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use weir_core::StreamName;
use weir_core::offset::ReadFrom;
use weir_storage::log::backend::LogStorage;
use weir_storage::log::compact::{self, CompactOptions};
use weir_storage::log::sim::SimFs;
use weir_storage::{Storage, contract};

const KEEPERS: usize = 2;
const UNIT: usize = 200;

fn open(fs: &SimFs) -> Arc<LogStorage> {
    Arc::new(common::open_sim(fs, 32 * 1024))
}

fn name(n: &str) -> StreamName {
    StreamName::new(n).unwrap()
}

fn unit(w: usize, n: u64) -> Vec<u8> {
    let mut u = format!("[{w}:{n:08}:").into_bytes();
    u.resize(UNIT - 1, b'-');
    u.push(b']');
    u
}

/// Reads a keeper in small steps (cold after a restart) and checks it holds
/// units 0.. in order; returns how many.
async fn units(s: &LogStorage, w: usize, what: &str) -> u64 {
    let mut data = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let c = s.read(&name(&format!("k{w}")), from, 1_500).await.unwrap();
        data.extend(c.pieces.concat());
        if c.up_to_date {
            break;
        }
        assert_ne!(c.next, c.start, "{what}: k{w} read made no progress");
        from = ReadFrom::At(c.next);
    }
    assert_eq!(data.len() % UNIT, 0, "{what}: k{w} torn");
    for (i, u) in data.chunks(UNIT).enumerate() {
        assert_eq!(u, unit(w, i as u64), "{what}: k{w} unit {i}");
    }
    (data.len() / UNIT) as u64
}

/// Appends units to keeper `w` from `next` on, recording each
/// acknowledgement; churns short-lived streams in between.
async fn write(s: Arc<LogStorage>, w: usize, mut next: u64, acked: Arc<AtomicU64>, tag: u64) {
    let mut churn = 0;
    loop {
        let k = name(&format!("k{w}"));
        match s.append(&k, contract::bytes_append(&unit(w, next))).await {
            Ok(o) if o.result.is_ok() => {
                next += 1;
                acked.store(next, Ordering::SeqCst);
            }
            _ => return,
        }
        if next.is_multiple_of(3) {
            let t = format!("t{tag}-{w}-{churn}");
            churn += 1;
            if s.create(contract::create_req(&t, "text/plain", b""))
                .await
                .is_err()
            {
                return;
            }
            for _ in 0..2 {
                if s.append(&name(&t), contract::bytes_append(&[b'x'; 900]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if s.delete(&name(&t)).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_survives_power_loss_during_compaction() {
    let seeds: u64 = std::env::var("WEIR_SIM_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let removed = Arc::new(AtomicU64::new(0));
    let relocated = Arc::new(AtomicU64::new(0));
    let compact_opts = CompactOptions {
        max_segments_per_run: 4,
        ..CompactOptions::default()
    };
    for seed in 0..seeds {
        let mut fs = SimFs::new();
        {
            let s = open(&fs);
            for w in 0..KEEPERS {
                s.create(contract::create_req(&format!("k{w}"), "text/plain", b""))
                    .await
                    .unwrap();
            }
            s.shutdown().await;
        }
        let mut acked = [0u64; KEEPERS];
        for cycle in 0..3u64 {
            let s = open(&fs);
            let what = format!("seed {seed} cycle {cycle}");
            let mut tasks = Vec::new();
            let mut counters = Vec::new();
            for (w, a) in acked.iter_mut().enumerate() {
                let have = units(&s, w, &what).await;
                assert!(have >= *a, "{what}: k{w} lost acknowledged data");
                *a = have;
                let c = Arc::new(AtomicU64::new(have));
                counters.push(c.clone());
                tasks.push(tokio::spawn(write(
                    s.clone(),
                    w,
                    have,
                    c,
                    seed * 10 + cycle,
                )));
            }
            let steps = Arc::new(AtomicU64::new(0));
            {
                let (s, steps, removed, relocated, opts) = (
                    s.clone(),
                    steps.clone(),
                    removed.clone(),
                    relocated.clone(),
                    compact_opts.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                        if weir_storage::log::checkpoint::write(&s).await.is_err() {
                            return;
                        }
                        match compact::run(&s, &opts).await {
                            Ok(r) => {
                                removed.fetch_add(r.segments_removed, Ordering::Relaxed);
                                relocated.fetch_add(r.runs_relocated, Ordering::Relaxed);
                            }
                            Err(_) => return,
                        }
                        steps.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
            // Crash after a seed-dependent amount of compaction, at a
            // seed-dependent moment inside the next step.
            let target = 3 + (seed * 7 + cycle * 5) % 10;
            while steps.load(Ordering::SeqCst) < target {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            for _ in 0..(seed * 13 + cycle) % 40 {
                tokio::task::yield_now().await;
            }
            // Acknowledgements counted before the crash instant must survive.
            let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
            let crashed = fs.crash(seed * 1_000 + cycle);
            for t in &tasks {
                t.abort();
            }
            drop(s);
            for (w, b) in before.into_iter().enumerate() {
                acked[w] = acked[w].max(b);
            }
            fs = crashed;
        }
        let s = open(&fs);
        for (w, a) in acked.iter().enumerate() {
            let have = units(&s, w, &format!("seed {seed} end")).await;
            assert!(have >= *a, "seed {seed}: k{w} lost acknowledged data");
        }
        s.shutdown().await;
    }
    let (removed, relocated) = (
        removed.load(Ordering::Relaxed),
        relocated.load(Ordering::Relaxed),
    );
    eprintln!("{removed} segments removed, {relocated} runs relocated before the crashes");
    assert!(
        removed > 0 && relocated > 0,
        "the crashes hit a compacting log"
    );
}
