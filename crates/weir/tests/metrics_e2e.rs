//! `/metrics` of a real `weir serve` (production layer on, embedded log),
//! parsed as Prometheus text: append counters move by exactly what the test
//! did, the live-reader gauge goes up and back down, the streams gauge
//! follows creates and deletes, and the storage sync histograms grow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One sample: metric name and its labels, sorted.
type Key = (String, BTreeMap<String, String>);

/// A minimal parser for the Prometheus text exposition format (0.0.4):
/// `# HELP`/`# TYPE` comments are skipped, every other line is
/// `name{label="value",…} value [timestamp]`.
fn parse(text: &str) -> BTreeMap<Key, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let (labels, rest) = parse_labels(&line[open + 1..])
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                (&line[..open], labels, rest)
            }
            None => {
                let sp = line
                    .find(' ')
                    .unwrap_or_else(|| panic!("no value: {line:?}"));
                (&line[..sp], BTreeMap::new(), &line[sp..])
            }
        };
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line:?}")),
        };
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name {name:?}"
        );
        out.insert((name.to_owned(), labels), value);
    }
    out
}

/// Parses `a="x",b="y\"z"}` and returns the labels and what follows `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_owned();
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name, value);
        rest = &rest[end?..];
    }
}

struct Scrape(BTreeMap<Key, f64>);

impl Scrape {
    /// The sample's value; absent samples read as 0 (a counter that was
    /// never incremented is not rendered yet).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }
}

async fn scrape(client: &reqwest::Client, base: &str) -> Scrape {
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    Scrape(parse(&r.text().await.unwrap()))
}

/// Scrapes until `check` holds (gauges fed by background tasks settle a
/// moment later), or fails after 10 s with the last value.
async fn eventually(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    check: impl Fn(&Scrape) -> Option<f64>,
) {
    let start = Instant::now();
    loop {
        let s = scrape(client, base).await;
        match check(&s) {
            None => return,
            Some(v) if start.elapsed() > Duration::from_secs(10) => {
                panic!("{what}: still {v} after 10 s")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

const APPENDS: &str = "weir_appends_total";
const BYTES: &str = "weir_append_bytes_total";
const LIVE: &str = "weir_live_readers";
const OPEN: &str = "weir_streams_open";
const SYNC_SECONDS_COUNT: &str = "weir_storage_sync_duration_seconds_count";
const SYNC_BATCH_COUNT: &str = "weir_storage_sync_batch_size_count";
const SYNC_BATCH_SUM: &str = "weir_storage_sync_batch_size_sum";

#[test]
fn the_parser_reads_the_format() {
    let s = parse(
        "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"uote\"} 3\ny 2.5\nh_bucket{le=\"+Inf\"} 7 1700000000\n",
    );
    let s = Scrape(s);
    assert_eq!(s.get("x_total", &[("a", "1"), ("b", "q\"uote")]), 3.0);
    assert_eq!(s.get("y", &[]), 2.5);
    assert_eq!(s.get("h_bucket", &[("le", "+Inf")]), 7.0);
    assert_eq!(s.get("missing", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_what_the_server_did() {
    let dir = tempfile::tempdir().unwrap();
    let served = common::serve([
        std::ffi::OsStr::new("--storage"),
        std::ffi::OsStr::new("log"),
        std::ffi::OsStr::new("--data-dir"),
        dir.path().as_os_str(),
    ])
    .await;
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/stream/metered");

    // The streams gauge is set once storage has been counted at start.
    eventually(&client, &base, "streams gauge present", |s| {
        (!s.0.keys().any(|(n, _)| n == OPEN)).then_some(-1.0)
    })
    .await;
    let before = scrape(&client, &base).await;
    let r = client
        .put(&url)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let open_before = before.get(OPEN, &[]);
    eventually(&client, &base, "streams open after create", |s| {
        let v = s.get(OPEN, &[]);
        (v != open_before + 1.0).then_some(v)
    })
    .await;

    // 5 plain appends of 7 bytes each.
    for i in 0..5 {
        let r = client
            .post(&url)
            .header("content-type", "text/plain")
            .body(format!("hello-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    // A producer append and its retry: one ok (3 bytes), one duplicate.
    for expect in [200, 204] {
        let r = client
            .post(&url)
            .header("content-type", "text/plain")
            .header("producer-id", "p1")
            .header("producer-epoch", "0")
            .header("producer-seq", "0")
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expect);
    }
    // A content-type mismatch: rejected by the append rules.
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // A batch: one item appended (4 bytes), one to a missing stream.
    let r = client
        .post(format!("{base}/_weir/batch"))
        .json(&serde_json::json!({"appends": [
            {"stream": "metered", "content_type": "text/plain", "data": "wxyz"},
            {"stream": "nowhere", "content_type": "text/plain", "data": "x"},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let results: serde_json::Value = r.json().await.unwrap();
    assert_eq!(results["results"][0]["status"], 204, "{results}");
    assert_eq!(results["results"][1]["status"], 404, "{results}");

    let after = scrape(&client, &base).await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(delta(APPENDS, &[("result", "ok")]), 7.0);
    assert_eq!(delta(APPENDS, &[("result", "duplicate")]), 1.0);
    assert_eq!(delta(APPENDS, &[("result", "rejected")]), 2.0);
    assert_eq!(delta(BYTES, &[]), 5.0 * 7.0 + 3.0 + 4.0);
    // Every acknowledged write was made durable by a sync: one create and
    // seven appends are at least eight records in at least one sync.
    assert!(delta(SYNC_SECONDS_COUNT, &[]) >= 1.0);
    // One batch-size sample per sync (±1: a background sync may land
    // between the two histograms of one scrape).
    assert!(
        (delta(SYNC_SECONDS_COUNT, &[]) - delta(SYNC_BATCH_COUNT, &[])).abs() <= 1.0,
        "one batch-size sample per sync"
    );
    assert!(delta(SYNC_BATCH_SUM, &[]) >= 8.0);
    assert!(
        after.get(
            "weir_storage_sync_duration_seconds_bucket",
            &[("le", "+Inf")]
        ) >= 1.0
    );

    // A parked long-poll counts while it waits and leaves when answered.
    let tail = client.head(&url).send().await.unwrap().headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned();
    let poll = tokio::spawn({
        let client = client.clone();
        let url = format!("{url}?offset={tail}&live=long-poll");
        async move { client.get(url).send().await.unwrap().status() }
    });
    eventually(&client, &base, "long-poll reader parked", |s| {
        let v = s.get(LIVE, &[("mode", "long_poll")]);
        (v != 1.0).then_some(v)
    })
    .await;
    let r = client
        .post(&url)
        .header("content-type", "text/plain")
        .body("wake")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(poll.await.unwrap(), 200);
    eventually(&client, &base, "long-poll reader gone", |s| {
        let v = s.get(LIVE, &[("mode", "long_poll")]);
        (v != 0.0).then_some(v)
    })
    .await;

    // An SSE reader counts while its body is open, and leaves when the
    // client disconnects.
    let mut sse = client
        .get(format!("{url}?offset={tail}&live=sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), sse.chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_some());
    eventually(&client, &base, "SSE reader open", |s| {
        let v = s.get(LIVE, &[("mode", "sse")]);
        (v != 1.0).then_some(v)
    })
    .await;
    drop(sse);
    // The server notices the closed connection at its next write.
    let r = client
        .post(&url)
        .header("content-type", "text/plain")
        .body("bye")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually(&client, &base, "SSE reader gone", |s| {
        let v = s.get(LIVE, &[("mode", "sse")]);
        (v != 0.0).then_some(v)
    })
    .await;

    let r = client.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    eventually(&client, &base, "streams open after delete", |s| {
        let v = s.get(OPEN, &[]);
        (v != open_before).then_some(v)
    })
    .await;
}
