//! Configuration reload of a real `weir serve`: a changed rate limit is
//! enforced after `POST /admin/v1/reload` and after SIGHUP, every attempt
//! is audited and counted, an invalid file is refused while the old
//! configuration keeps serving, and restart-only keys are reported and
//! left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Node {
    child: Child,
    base: String,
    admin: String,
}

async fn start(cfg: &Path) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "serve",
            "--port",
            "0",
            "--storage",
            "memory",
            "--log-level",
            "warn",
        ])
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = common::printed(&mut lines, "listening on ").await;
    let admin = common::printed(&mut lines, "admin listening on ").await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node { child, base, admin }
}

/// A configuration allowing `reads` GETs per hour on streams, plus `extra`.
fn config(reads: u32, extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [rate_limit]\nenabled = true\n\
         [[rate_limit.rules]]\nname = \"reads\"\nmethods = [\"GET\"]\npath_prefix = \"/v1/stream/\"\nkey = \"ip\"\n\
         limits.default = {{ requests = {reads}, window_secs = 3600 }}\n\
         limits.anonymous = {{ requests = {reads}, window_secs = 3600 }}\n{extra}"
    )
}

/// GETs the stream until refused; the number allowed and the refusal's
/// `RateLimit-Policy`.
async fn reads_allowed(c: &reqwest::Client, url: &str) -> (u32, String) {
    for n in 0..100 {
        let r = c.get(url).send().await.unwrap();
        if r.status() == 429 {
            let policy = r.headers()["ratelimit-policy"].to_str().unwrap().to_owned();
            return (n, policy);
        }
        assert_eq!(r.status(), 200);
    }
    panic!("never rate limited");
}

async fn json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

async fn audit(c: &reqwest::Client, admin: &str) -> Vec<Value> {
    let (status, v) = json(
        c.get(format!("{admin}/admin/v1/audit"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

async fn reload(c: &reqwest::Client, admin: &str) -> (u16, Value) {
    json(
        c.post(format!("{admin}/admin/v1/reload"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rate_limit_applies_after_reload_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(&cfg, config(2, "")).unwrap();
    let node = start(&cfg).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/stream/s", node.base);
    let r = c
        .put(&url)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (allowed, policy) = reads_allowed(&c, &url).await;
    assert_eq!(allowed, 2);
    assert!(policy.contains("q=2"), "{policy}");

    // The admin API: synchronous, answers what changed.
    std::fs::write(&cfg, config(5, "")).unwrap();
    let (status, report) = reload(&c, &node.admin).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["result"], "applied");
    assert_eq!(report["changed"], serde_json::json!(["rate_limit"]));
    assert_eq!(report["requires_restart"], serde_json::json!([]));
    let (allowed, policy) = reads_allowed(&c, &url).await;
    assert_eq!(allowed, 5, "the new limit is enforced");
    assert!(policy.contains("q=5"), "{policy}");
    let entries = audit(&c, &node.admin).await;
    let e = &entries[0];
    assert_eq!(e["action"], "config.reloaded");
    assert_eq!(e["target"], "config");
    assert_eq!(e["actor"], "anonymous");
    assert_eq!(e["detail"]["trigger"], "admin_api");
    assert_eq!(e["detail"]["changed"], serde_json::json!(["rate_limit"]));

    // SIGHUP: the same reload; its audit entry says when it is done.
    std::fs::write(&cfg, config(1, "")).unwrap();
    let pid = node.child.id().unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut reloaded = 0;
    for _ in 0..600 {
        reloaded = audit(&c, &node.admin)
            .await
            .iter()
            .filter(|e| e["action"] == "config.reloaded")
            .count();
        if reloaded == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloaded, 2, "SIGHUP reloaded the configuration");
    let entries = audit(&c, &node.admin).await;
    assert_eq!(entries[0]["actor"], "signal:SIGHUP");
    assert_eq!(entries[0]["detail"]["trigger"], "sighup");
    let (allowed, policy) = reads_allowed(&c, &url).await;
    assert_eq!(allowed, 1);
    assert!(policy.contains("q=1"), "{policy}");

    let metrics = c
        .get(format!("{}/metrics", node.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "weir_config_reloads_total{result=\"applied\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_and_restart_only_keys_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(&cfg, config(2, "")).unwrap();
    let node = start(&cfg).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/stream/s", node.base);
    let r = c
        .put(&url)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Invalid: refused, audited, and the old configuration keeps serving.
    std::fs::write(
        &cfg,
        config(9, "[auth.jwt]\nhs256_secret = \"hunter2-hunter2\n"),
    )
    .unwrap();
    let (status, problem) = reload(&c, &node.admin).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "config_invalid");
    assert!(!problem.to_string().contains("hunter2"), "{problem}");
    let entries = audit(&c, &node.admin).await;
    assert_eq!(entries[0]["action"], "config.reload_failed");
    assert!(!entries[0].to_string().contains("hunter2"));
    let (allowed, _) = reads_allowed(&c, &url).await;
    assert_eq!(allowed, 2, "the old limit still applies");

    // Restart-only keys are reported and left alone; reloadable ones in
    // the same file apply.
    std::fs::write(
        &cfg,
        config(
            2,
            "[server]\nheader_read_timeout_secs = 7\n[log]\nformat = \"json\"\n[limits]\nmax_message_bytes = 10\n",
        ),
    )
    .unwrap();
    let (status, report) = reload(&c, &node.admin).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["requires_restart"],
        serde_json::json!(["server.header_read_timeout_secs", "log.format"])
    );
    assert_eq!(report["changed"], serde_json::json!(["limits"]));
    let r = c
        .post(&url)
        .header("content-type", "text/plain")
        .body("eleven bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "limits.max_message_bytes applies");
    let r = c
        .post(&url)
        .header("content-type", "text/plain")
        .body("ten bytes!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let entries = audit(&c, &node.admin).await;
    assert_eq!(entries[0]["action"], "config.reloaded");
    assert_eq!(
        entries[0]["detail"]["requires_restart"],
        serde_json::json!(["server.header_read_timeout_secs", "log.format"])
    );
    // The log format did not change: stderr lines are still text (the
    // server keeps serving, which is what a restart-only key promises).
    let r = c
        .get(format!("{}/healthz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
