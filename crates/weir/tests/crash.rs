//! Crash tests: a child `weir serve` on the embedded log is SIGKILLed in
//! the middle of concurrent appends (plain and idempotent-producer), then
//! restarted on the same data directory. After every kill:
//!
//! * every acknowledged append is readable at the offset it was
//!   acknowledged with, byte for byte;
//! * nothing appears twice and no torn record is served (the stream is
//!   exactly a sequence of whole payloads);
//! * a producer's retry of its last request is deduplicated if it had been
//!   stored, and accepted once if it had not.
//!
//! 20 kill points by default; `WEIR_CRASH_ITERS=500` runs more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Served;
use tokio::sync::Mutex;

const WRITERS: usize = 8;

async fn start(dir: &Path) -> Served {
    let cfg = dir.join("weir.toml");
    std::fs::write(&cfg, "[storage]\nsegment_mib = 4\nmin_free_mib = 0\n").unwrap();
    common::serve([
        OsStr::new("--storage"),
        OsStr::new("log"),
        OsStr::new("--config"),
        cfg.as_os_str(),
        OsStr::new("--data-dir"),
        dir.join("data").as_os_str(),
    ])
    .await
}

/// The byte position inside an offset token `IIII…_PPPP…` (the test knows
/// Weir's format; clients must not).
fn pos(offset: &str) -> usize {
    offset.split('_').nth(1).unwrap().parse().unwrap()
}

fn payload(writer: usize, n: u64) -> String {
    format!("<w{writer:02}-{n:08}>")
}

/// What writers know: acknowledged appends (payload → end position) and the
/// last request each producer sent.
#[derive(Default)]
struct Ledger {
    acked: HashMap<String, (String, usize)>,
    last_sent: HashMap<usize, (u64, u64, String)>,
}

async fn writer(base: String, w: usize, epoch: u64, start_seq: u64, ledger: Arc<Mutex<Ledger>>) {
    let client = reqwest::Client::new();
    let producer = w.is_multiple_of(2);
    let stream = if producer {
        format!("p{w}")
    } else {
        "shared".to_owned()
    };
    let url = format!("{base}/v1/stream/{stream}");
    for seq in start_seq.. {
        let body = payload(w, epoch * 1_000_000 + seq);
        let mut req = client
            .post(&url)
            .header("content-type", "text/plain")
            .body(body.clone());
        if producer {
            req = req
                .header("producer-id", format!("writer-{w}"))
                .header("producer-epoch", epoch.to_string())
                .header("producer-seq", seq.to_string());
            ledger
                .lock()
                .await
                .last_sent
                .insert(w, (epoch, seq, body.clone()));
        }
        let Ok(resp) = req.send().await else { return };
        if !resp.status().is_success() {
            return;
        }
        let next = resp
            .headers()
            .get("stream-next-offset")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        ledger
            .lock()
            .await
            .acked
            .insert(body, (stream.clone(), pos(&next)));
    }
}

async fn read_all(client: &reqwest::Client, base: &str, stream: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = "-1".to_owned();
    loop {
        let r = client
            .get(format!("{base}/v1/stream/{stream}?offset={offset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "reading {stream}");
        let done = r.headers().contains_key("stream-up-to-date");
        offset = r
            .headers()
            .get("stream-next-offset")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        out.extend_from_slice(&r.bytes().await.unwrap());
        if done {
            return out;
        }
    }
}

/// Splits a stream into payloads; panics on anything that is not a whole
/// payload (a torn or foreign record).
fn payloads(data: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(data).expect("stream is valid text");
    let len = payload(0, 0).len();
    assert_eq!(text.len() % len, 0, "stream holds a partial payload");
    (0..text.len() / len)
        .map(|i| {
            let p = &text[i * len..(i + 1) * len];
            assert!(
                p.starts_with("<w") && p.ends_with('>'),
                "torn payload {p:?}"
            );
            p.to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() {
    let iters: usize = std::env::var("WEIR_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut server = start(dir.path()).await;
    for w in 0..WRITERS {
        let stream = if w.is_multiple_of(2) {
            format!("p{w}")
        } else {
            "shared".to_owned()
        };
        client
            .put(format!("{}/v1/stream/{stream}", server.base))
            .header("content-type", "text/plain")
            .send()
            .await
            .unwrap();
    }
    let mut next_seq: HashMap<usize, u64> = HashMap::new();
    for iter in 0..iters {
        // Writers resume each producer where its state says, epoch = iteration.
        let epoch = iter as u64;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let start_seq = if w.is_multiple_of(2) {
                0
            } else {
                *next_seq.get(&w).unwrap_or(&0)
            };
            tasks.push(tokio::spawn(writer(
                server.base.clone(),
                w,
                epoch,
                start_seq,
                ledger.clone(),
            )));
        }
        // Kill at a pseudo-random point 20–220 ms after the writers have
        // made some progress (a loaded CI machine can take a while to get
        // the first appends through a freshly restarted server).
        let before = ledger.lock().await.acked.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ledger.lock().await.acked.len() < before + 10 && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delay = 20 + (iter as u64 * 7919 % 200);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill9();
        let _ = server.child.wait().await;
        for t in tasks {
            let _ = t.await;
        }
        server = start(dir.path()).await;

        // Every acknowledged append is where it was acknowledged, intact.
        let l = ledger.lock().await;
        let mut contents: HashMap<String, Vec<u8>> = HashMap::new();
        for w in 0..WRITERS {
            let stream = if w.is_multiple_of(2) {
                format!("p{w}")
            } else {
                "shared".to_owned()
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = contents.entry(stream.clone())
            {
                let data = read_all(&client, &server.base, &stream).await;
                let mut seen = std::collections::HashSet::new();
                for p in payloads(&data) {
                    assert!(
                        seen.insert(p.clone()),
                        "iteration {iter}: {p} appears twice in {stream}"
                    );
                }
                slot.insert(data);
            }
        }
        for (body, (stream, end)) in &l.acked {
            let data = &contents[stream];
            assert!(
                *end <= data.len(),
                "iteration {iter}: acknowledged {body} lost from {stream}"
            );
            assert_eq!(
                &data[end - body.len()..*end],
                body.as_bytes(),
                "iteration {iter}: {body} moved"
            );
        }
        // A producer's retry of its last request is deduplicated exactly.
        for (&w, (epoch, seq, body)) in &l.last_sent {
            if *epoch != iter as u64 {
                continue;
            }
            let stream = format!("p{w}");
            let before = contents[&stream]
                .windows(body.len())
                .filter(|x| *x == body.as_bytes())
                .count();
            let r = client
                .post(format!("{}/v1/stream/{stream}", server.base))
                .header("content-type", "text/plain")
                .header("producer-id", format!("writer-{w}"))
                .header("producer-epoch", epoch.to_string())
                .header("producer-seq", seq.to_string())
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            match before {
                1 => assert_eq!(
                    status, 204,
                    "iteration {iter}: stored request {body} was not deduplicated"
                ),
                0 => assert!(
                    status == 200 || status == 409,
                    "iteration {iter}: lost request {body} answered {status}"
                ),
                n => panic!("iteration {iter}: {body} stored {n} times"),
            }
        }
        drop(l);
        for w in (1..WRITERS).step_by(2) {
            next_seq.insert(w, 0);
        }
    }
    let acked = ledger.lock().await.acked.len();
    eprintln!("{iters} kill points, {acked} acknowledged appends verified");
    assert!(
        acked >= iters * 10,
        "the workload must make progress between kills ({acked} acks)"
    );
    server.kill9();
}
