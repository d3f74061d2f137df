//! Overload: many clients upload large bodies at once to a `weir serve`
//! whose budgets are small. Past the budgets the server sheds with
//! `503 overloaded` + `Retry-After` (or `507` once the memory backend's
//! budget is spent) instead of buffering everything, and its peak resident
//! memory stays near its budgets, far below what the offered load would
//! take if it were queued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

/// Peak resident set (VmHWM) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn uploads_past_the_budgets_are_shed_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config_file(
        dir.path(),
        &format!(
            "[server]\nmax_body_bytes = {}\n[storage]\nmemory_max_bytes = {}\n\
             [limits]\nmax_in_flight_body_bytes = {}\nretry_after_secs = 2\n",
            4 * MIB,
            32 * MIB,
            16 * MIB
        ),
    );
    let served = common::serve_memory(&cfg).await;
    let pid = served.child.id().unwrap();
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{base}/v1/stream/big"))
        .header("content-type", "application/octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let baseline = peak_rss(pid);

    // 3 waves of 48 concurrent 4 MiB uploads: 576 MiB offered, 192 MiB of
    // it at once per wave.
    let body = vec![0x5au8; 4 * MIB];
    let (mut ok, mut shed, mut full) = (0, 0, 0);
    for _ in 0..3 {
        let tasks: Vec<_> = (0..48)
            .map(|_| {
                let c = client.clone();
                let url = format!("{base}/v1/stream/big");
                let body = body.clone();
                tokio::spawn(async move {
                    let r = c
                        .post(url)
                        .header("content-type", "application/octet-stream")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let retry = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let code = if status >= 400 {
                        let v: serde_json::Value = r.json().await.unwrap();
                        v["code"].as_str().unwrap_or_default().to_owned()
                    } else {
                        String::new()
                    };
                    (status, retry, code)
                })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                (204, _, _) => ok += 1,
                (503, retry, code) => {
                    assert_eq!(code, "overloaded");
                    assert_eq!(retry.as_deref(), Some("2"));
                    shed += 1;
                }
                (507, _, code) => {
                    assert_eq!(code, "storage_full");
                    full += 1;
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    assert!(ok > 0, "some uploads are admitted");
    assert!(shed > 0, "concurrent uploads past the body budget are shed");
    assert!(full > 0, "the memory backend's budget is enforced");

    // Stored data is whole uploads and within the storage budget.
    let r = client
        .head(format!("{base}/v1/stream/big"))
        .send()
        .await
        .unwrap();
    let tail = r.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned();
    let stored: usize = tail.split('_').nth(1).unwrap().parse().unwrap();
    assert_eq!(stored % (4 * MIB), 0, "only whole uploads are stored");
    assert!(stored <= 32 * MIB);

    // Peak memory: the budgets (16 MiB of bodies in flight + 32 MiB of
    // stored data), plus per-connection read buffers of the 48 connections
    // whose bodies are being drained, plus allocator slack — well under the
    // 192 MiB each wave offers at once (buffering it all, with the copies
    // a growing buffer makes, would take more than 250 MiB).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let peak = peak_rss(pid);
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < 144 * MIB as u64,
        "peak RSS grew by {} MiB (baseline {} MiB)",
        grown / MIB as u64,
        baseline / MIB as u64
    );
}
