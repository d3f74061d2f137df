//! Graceful shutdown: SIGTERM to a `weir serve` on the embedded log while
//! writers append and readers follow the stream live.
//!
//! * the process exits on its own, with status 0, well within the drain
//!   timeout;
//! * every acknowledged append is there after a restart, at its
//!   acknowledged position, and the stream is whole payloads only;
//! * in-flight appends either succeed or fail cleanly (a closed connection
//!   or `503`), never with another 5xx;
//! * parked long-polls answer at once, and SSE readers see their body end
//!   cleanly after a complete event, with a prefix of the final data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Served;
use tokio::sync::Mutex;

async fn start(dir: &Path) -> Served {
    common::serve([
        OsStr::new("--storage"),
        OsStr::new("log"),
        OsStr::new("--data-dir"),
        dir.as_os_str(),
        OsStr::new("--long-poll-timeout-ms"),
        OsStr::new("30000"),
    ])
    .await
}

fn pos(offset: &str) -> usize {
    offset.split('_').nth(1).unwrap().parse().unwrap()
}

#[derive(Default)]
struct Outcome {
    /// (payload, acknowledged end position)
    acked: Vec<(String, usize)>,
    /// Statuses other than 204 seen by writers.
    odd_statuses: Vec<u16>,
}

async fn writer(base: String, w: usize, stop: Arc<AtomicBool>, out: Arc<Mutex<Outcome>>) {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/stream/s");
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let body = format!("<w{w:02}-{n:08}>");
        match client
            .post(&url)
            .header("content-type", "text/plain")
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) if r.status() == 204 => {
                let next = r.headers()["stream-next-offset"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                out.lock().await.acked.push((body, pos(&next)));
            }
            Ok(r) => {
                out.lock().await.odd_statuses.push(r.status().as_u16());
                return;
            }
            // The listener closed: the server is going away.
            Err(_) => return,
        }
    }
}

/// Follows the stream over SSE; returns the data it saw and whether the
/// body ended cleanly.
async fn sse_reader(base: String) -> (String, bool) {
    let client = reqwest::Client::new();
    let mut r = client
        .get(format!("{base}/v1/stream/s?offset=-1&live=sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut raw = Vec::new();
    let clean = loop {
        match r.chunk().await {
            Ok(Some(c)) => raw.extend_from_slice(&c),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    let text = String::from_utf8(raw).unwrap();
    // Data events of a text stream: `event: data` then `data:` lines.
    let mut data = String::new();
    for event in text.split("\n\n") {
        let mut lines = event.lines();
        if lines.next() == Some("event: data") {
            let body: Vec<&str> = lines
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            data.push_str(&body.join("\n"));
        }
    }
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "the SSE body ends after a complete event"
    );
    (data, clean)
}

#[tokio::test]
async fn sigterm_drains_appends_and_ends_live_reads_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let served = start(dir.path()).await;
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{base}/v1/stream/s"))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Outcome::default()));
    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(writer(base.clone(), w, stop.clone(), out.clone())))
        .collect();
    let sse: Vec<_> = (0..3)
        .map(|_| tokio::spawn(sse_reader(base.clone())))
        .collect();
    // Long-polls parked at the tail of a stream nobody writes to.
    let r = client
        .put(format!("{base}/v1/stream/quiet"))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let polls: Vec<_> = (0..3)
        .map(|_| {
            let c = client.clone();
            let url = format!("{base}/v1/stream/quiet?offset=now&live=long-poll");
            tokio::spawn(async move {
                let r = c.get(url).send().await.ok().map(|r| r.status().as_u16());
                (r, Instant::now())
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut child = served.child;
    let pid = child.id().unwrap();
    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the server exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit, got {status}");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    for p in polls {
        let (status, at) = p.await.unwrap();
        assert_eq!(
            status,
            Some(204),
            "a parked long-poll answers 204 at shutdown"
        );
        assert!(
            at.duration_since(signalled) < Duration::from_secs(5),
            "long-polls answer promptly, not at their 30 s timeout"
        );
    }
    let mut seen = Vec::new();
    for s in sse {
        let (data, clean) = s.await.unwrap();
        assert!(clean, "SSE bodies end cleanly");
        seen.push(data);
    }

    let out = out.lock().await;
    assert!(
        out.odd_statuses.iter().all(|s| *s == 503),
        "in-flight appends fail cleanly: {:?}",
        out.odd_statuses
    );
    assert!(out.acked.len() > 10, "the writers made progress");

    // Restart: everything acknowledged is there, at its position.
    let served = start(dir.path()).await;
    let data = client
        .get(format!("{}/v1/stream/s", served.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (payload, end) in &out.acked {
        assert!(*end <= data.len(), "acknowledged data is kept");
        assert_eq!(&data[end - payload.len()..*end], payload, "at its offset");
    }
    // Whole payloads only, each once.
    let mut rest = data.as_str();
    let mut count = 0;
    while !rest.is_empty() {
        assert!(
            rest.starts_with("<w") && rest.len() >= 14,
            "torn data: {rest:.40}"
        );
        assert_eq!(&rest[13..14], ">");
        rest = &rest[14..];
        count += 1;
    }
    assert!(count >= out.acked.len());
    for s in seen {
        assert!(
            data.starts_with(&s),
            "SSE readers saw a prefix of the stream"
        );
    }
}
