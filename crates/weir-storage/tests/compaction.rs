//! Compaction: most streams deleted or expired, checkpoints and compaction
//! runs remove the segments that held them, disk use respects the stated
//! bound, and every remaining stream (big ones read cold, JSON ones, a fork
//! of a deleted source) reads back byte-identical before and after
//! restarts, from a backup, and from the older checkpoint alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use weir_core::append::Body;
use weir_core::offset::ReadFrom;
use weir_core::{Expiry, StreamName};
use weir_storage::log::backend::{self, LogOptions, LogStorage};
use weir_storage::log::compact::{self, CompactOptions, CompactReport};
use weir_storage::log::engine::{EngineOptions, SyncMode};
use weir_storage::{CreateRequest, ForkRequest, Storage, contract};

const SEG: u64 = 256 * 1024;

fn opts() -> LogOptions {
    LogOptions {
        engine: EngineOptions {
            segment_size: SEG,
            // Durability is the power-loss tests' subject; keep this fast.
            sync: SyncMode::None,
            ..EngineOptions::default()
        },
        min_free_bytes: 0,
        ..LogOptions::default()
    }
}

fn open(dir: &Path) -> Arc<LogStorage> {
    Arc::new(backend::open(dir, opts()).unwrap().0)
}

fn name(n: &str) -> StreamName {
    StreamName::new(n).unwrap()
}

/// (bytes the segment files occupy on disk, their numbers).
fn segments(dir: &Path) -> (u64, Vec<u64>) {
    let mut bytes = 0;
    let mut segs = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().into_string().unwrap();
        if let Some(num) = n.strip_prefix("wal-").and_then(|x| x.strip_suffix(".log")) {
            bytes += e.metadata().unwrap().blocks() * 512;
            segs.push(num.parse().unwrap());
        }
    }
    segs.sort_unstable();
    (bytes, segs)
}

fn checkpoints(dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_prefix("checkpoint-")?
                .strip_suffix(".ckpt")?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Reads a stream in small steps (many cold lookups at varied positions).
async fn read_steps(s: &LogStorage, n: &str, step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let c = s.read(&name(n), from, step).await.unwrap();
        out.extend(c.pieces.concat());
        if c.up_to_date {
            return out;
        }
        assert_ne!(c.next, c.start, "{n}: no progress");
        from = ReadFrom::At(c.next);
    }
}

async fn read_all(s: &LogStorage, n: &str) -> Vec<u8> {
    let c = s.read(&name(n), ReadFrom::Start, usize::MAX).await.unwrap();
    assert!(c.up_to_date);
    c.pieces.concat()
}

const KEEP: [&str; 5] = ["k0", "k1", "j0", "f", "g"];

async fn check(s: &LogStorage, expected: &[(String, Vec<u8>)], what: &str) {
    for (n, want) in expected {
        let got = read_all(s, n).await;
        assert!(
            got == *want,
            "{what}: {n} differs ({} vs {} bytes)",
            got.len(),
            want.len()
        );
        let got = read_steps(s, n, 3000).await;
        assert!(got == *want, "{what}: {n} read in steps differs");
    }
}

async fn expected(s: &LogStorage) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for n in KEEP {
        out.push((n.to_owned(), read_all(s, n).await));
    }
    out
}

fn json_append(i: usize) -> weir_core::append::AppendRequest {
    let body = format!(
        "[{{\"n\":{i},\"pad\":\"{}\"}},{{\"m\":{i}}}]",
        "x".repeat(400)
    );
    weir_core::append::AppendRequest {
        content_type: weir_core::ContentType::parse("application/json"),
        body: Body::Json(weir_core::json::split_messages(
            &Bytes::from(body.into_bytes()),
            true,
        )),
        close: false,
        stream_seq: None,
        producer: None,
    }
}

fn fill(tag: &str, round: usize, len: usize) -> Vec<u8> {
    let unit = format!("<{tag}:{round:04}>");
    unit.as_bytes().iter().copied().cycle().take(len).collect()
}

/// Rounds of checkpoint + compaction, with a little new data in between so
/// each checkpoint lands at a new position.
async fn rounds(s: &Arc<LogStorage>, n: usize, tag: usize) -> CompactReport {
    let mut total = CompactReport::default();
    for r in 0..n {
        for k in ["k0", "k1"] {
            s.append(
                &name(k),
                contract::bytes_append(&fill(k, 10_000 + tag * 100 + r, 700)),
            )
            .await
            .unwrap();
        }
        weir_storage::log::checkpoint::write(s).await.unwrap();
        let opts = CompactOptions {
            max_segments_per_run: 100,
            ..CompactOptions::default()
        };
        let rep = compact::run(s, &opts).await.unwrap();
        total.expired += rep.expired;
        total.segments_compacted += rep.segments_compacted;
        total.runs_relocated += rep.runs_relocated;
        total.bytes_relocated += rep.bytes_relocated;
        total.segments_removed += rep.segments_removed;
        total.bytes_reclaimed += rep.bytes_reclaimed;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_reclaims_dead_segments_and_keeps_every_live_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = open(&dir);
    s.create(contract::create_req("k0", "text/plain", b"k0-initial"))
        .await
        .unwrap();
    s.create(contract::create_req("k1", "text/plain", b""))
        .await
        .unwrap();
    s.create(contract::create_req(
        "j0",
        "application/json",
        b"[{\"first\":true}]",
    ))
    .await
    .unwrap();
    s.create(contract::create_req("src", "text/plain", b"src-initial"))
        .await
        .unwrap();
    for t in 0..60 {
        s.create(contract::create_req(
            &format!("t{t}"),
            "text/plain",
            b"trash",
        ))
        .await
        .unwrap();
    }
    for e in 0..20 {
        s.create(CreateRequest {
            expiry: Expiry::Ttl { secs: 1 },
            ..contract::create_req(&format!("e{e}"), "text/plain", b"")
        })
        .await
        .unwrap();
    }
    for round in 0..30 {
        if round == 10 {
            // A fork of a source that is deleted later; and a fork of the fork.
            s.create(CreateRequest {
                fork: Some(ForkRequest {
                    source: name("src"),
                    offset: None,
                    sub_offset: 0,
                }),
                ..contract::create_req("f", "text/plain", b"")
            })
            .await
            .unwrap();
        }
        if round == 20 {
            s.create(CreateRequest {
                fork: Some(ForkRequest {
                    source: name("f"),
                    offset: None,
                    sub_offset: 0,
                }),
                ..contract::create_req("g", "text/plain", b"")
            })
            .await
            .unwrap();
        }
        s.append(
            &name("k0"),
            contract::bytes_append(&fill("k0", round, 12_000)),
        )
        .await
        .unwrap();
        s.append(
            &name("k1"),
            contract::bytes_append(&fill("k1", round, 3_000)),
        )
        .await
        .unwrap();
        s.append(&name("j0"), json_append(round)).await.unwrap();
        s.append(
            &name("src"),
            contract::bytes_append(&fill("src", round, 1_000)),
        )
        .await
        .unwrap();
        if round >= 10 {
            s.append(&name("f"), contract::bytes_append(&fill("f", round, 500)))
                .await
                .unwrap();
        }
        let mut batch = Vec::new();
        for t in 0..60 {
            batch.push((
                name(&format!("t{t}")),
                contract::bytes_append(&fill(&format!("t{t}"), round, 1_500)),
            ));
        }
        for e in 0..20 {
            batch.push((
                name(&format!("e{e}")),
                contract::bytes_append(&fill(&format!("e{e}"), round, 1_500)),
            ));
        }
        for r in s.append_batch(batch).await {
            r.unwrap();
        }
    }
    for t in 0..60 {
        s.delete(&name(&format!("t{t}"))).await.unwrap();
    }
    s.delete(&name("src")).await.unwrap();
    let want = expected(&s).await;
    // Live data: the kept streams' own bytes plus the deleted source's,
    // which the forks still read.
    let live: u64 = want
        .iter()
        .filter(|(n, _)| n.starts_with('k') || n == "j0")
        .map(|(_, d)| d.len() as u64)
        .sum::<u64>()
        + 30 * 1_000
        + 11
        + 20 * 500;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (before, segs_before) = segments(&dir);
    check(&s, &want, "before compaction").await;

    // Two checkpoints, then compaction relocates; a restart here replays
    // the relocate records from the log.
    let first = rounds(&s, 2, 0).await;
    assert_eq!(first.expired, 20, "expired streams are swept");
    assert!(first.segments_compacted >= 10, "{first:?}");
    assert_eq!(
        first.segments_removed, 0,
        "nothing removed before both checkpoints cover it"
    );
    let want = expected(&s).await;
    check(&s, &want, "after relocation").await;
    s.shutdown().await;
    drop(s);
    let s = open(&dir);
    check(&s, &want, "restart replaying relocations").await;

    // Two more checkpoints cover the relocations: the segments go.
    let later = rounds(&s, 3, 1).await;
    assert!(
        later.segments_removed >= first.segments_compacted,
        "{later:?}"
    );
    assert_eq!(s.backend().reclaimed_bytes(), later.bytes_reclaimed);
    // Redirects stay few: those inside a compacted segment are dropped
    // once its marker is written.
    for n in ["k0", "k1", "j0"] {
        let id = s.head(&name(n)).await.unwrap().id;
        let (anchors, redirects) = s.index_of(id).unwrap().index_sizes();
        eprintln!("{n}: {anchors} anchors, {redirects} redirects");
        assert!(
            redirects <= anchors,
            "{n}: {redirects} redirects for {anchors} anchors"
        );
    }
    let want = expected(&s).await;
    check(&s, &want, "after removal").await;
    let (after, segs_after) = segments(&dir);
    let ckpts = checkpoints(&dir);
    let older = ckpts[ckpts.len() - 2];
    let tail = segs_after
        .iter()
        .filter(|x| (**x + 1) * SEG > older)
        .count() as u64
        * SEG;
    let ckpt_bytes: u64 = ckpts
        .iter()
        .map(|c| {
            std::fs::metadata(dir.join(format!("checkpoint-{c:020}.ckpt")))
                .unwrap()
                .len()
        })
        .sum();
    let bound = 2 * live + tail + ckpt_bytes;
    eprintln!(
        "segments: {} files, {before} bytes before; {} files, {after} bytes after; \
         live data {live}; bound 2 × live + tail {tail} + checkpoints {ckpt_bytes} = {bound}",
        segs_before.len(),
        segs_after.len(),
    );
    assert!(
        after + ckpt_bytes <= bound,
        "disk use {after} above the bound {bound}"
    );
    assert!(
        after * 3 < before,
        "most space came back ({before} → {after})"
    );
    assert!(segs_after[0] > 0, "the first segments are gone");

    // Restart from the newest checkpoint (redirects saved in it).
    s.shutdown().await;
    drop(s);
    let s = open(&dir);
    check(&s, &want, "restart after removal").await;
    // Appends still chain correctly onto relocated records.
    s.append(&name("k1"), contract::bytes_append(b"after-restart"))
        .await
        .unwrap();
    s.append(&name("g"), contract::bytes_append(b"g-after"))
        .await
        .unwrap();
    let want = expected(&s).await;
    s.shutdown().await;
    drop(s);
    let s = open(&dir);
    check(&s, &want, "restart after appends").await;

    // verify and backup understand a log whose first segments are gone.
    let v = backend::verify_dir(&dir).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert!(v.first_segment > 0 && v.checkpoint.is_some(), "{v:?}");
    let copy = tmp.path().join("copy");
    backend::backup_dir(&dir, &copy).unwrap();
    let v = backend::verify_dir(&copy).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    {
        let b = open(&copy);
        check(&b, &want, "backup").await;
        b.shutdown().await;
    }
    s.shutdown().await;
    drop(s);

    // The older checkpoint alone also recovers everything.
    let ckpts = checkpoints(&copy);
    assert_eq!(ckpts.len(), 2);
    let newest = copy.join(format!("checkpoint-{:020}.ckpt", ckpts[1]));
    let mut raw = std::fs::read(&newest).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x55;
    std::fs::write(&newest, raw).unwrap();
    {
        let b = open(&copy);
        check(&b, &want, "older checkpoint").await;
        b.shutdown().await;
    }
    // Without any checkpoint a full replay would serve partial data: refused.
    for c in checkpoints(&copy) {
        std::fs::remove_file(copy.join(format!("checkpoint-{c:020}.ckpt"))).unwrap();
    }
    let err = backend::open(&copy, opts()).err().expect("refused");
    assert!(err.to_string().contains("removed by compaction"), "{err}");
}
