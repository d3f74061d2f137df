//! Two real `weir serve` nodes sharing one PostgreSQL database (the
//! machine's, `WEIR_PG_URL`; the test creates and drops its own database):
//! `weir migrate` on PostgreSQL, keys created by the CLI and the admin API,
//! a revocation on one node reaching the other within `cache_ttl_ms`, and
//! the audit log of all of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Child;
use weir_testkit::pg;

const CACHE_TTL_MS: u64 = 500;

struct Node {
    _child: Child,
    base: String,
    admin: String,
}

/// `weir serve` with an admin listener; reads both `listening` lines and
/// keeps draining stdout so later prints never hit a closed pipe.
async fn serve(cfg: &Path) -> Node {
    let (child, mut lines) = common::spawn_serve([
        OsStr::new("--storage"),
        OsStr::new("memory"),
        OsStr::new("--config"),
        cfg.as_os_str(),
    ]);
    let base = common::printed(&mut lines, "listening on ").await;
    let admin = common::printed(&mut lines, "admin listening on ").await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node {
        _child: child,
        base,
        admin,
    }
}

fn weir(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("USER", "ops-person")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "weir {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_keys_and_audit_log_in_postgres() {
    let db = pg::database("e2e").await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("pg-url");
    std::fs::write(&url_file, format!("{}\n", db.url())).unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nmode = \"required\"\n\
             [auth.api_keys]\nenabled = true\nstore = \"postgres\"\ndatabase_url_file = {:?}\ncache_ttl_ms = {CACHE_TTL_MS}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\noperator_tenant = \"ops\"\n",
            url_file.display().to_string()
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();

    // Migrations: from the configuration, and with --database-url.
    let status = weir(&["migrate", "status", "--config", cfg_s]);
    assert!(status.lines().all(|l| l.ends_with("pending")), "{status}");
    let up = weir(&["migrate", "up", "--config", cfg_s]);
    assert!(up.contains("layer: applied [1, 2, 3, 4]"), "{up}");
    // Down is per set: every set goes down to nothing and back up.
    for set in weir(&["migrate", "sets"]).lines() {
        let name = set.split_whitespace().next().unwrap_or_default();
        let down = weir(&[
            "migrate",
            "down",
            "--set",
            name,
            "--to",
            "0",
            "--database-url",
            db.url(),
        ]);
        assert!(
            down.starts_with(&format!("{name}: rolled back [")),
            "{down}"
        );
        assert!(
            down.lines().skip(1).all(|l| l.ends_with("pending")),
            "{down}"
        );
    }
    let up = weir(&["migrate", "up", "--database-url", db.url()]);
    assert!(up.contains("layer: applied [1, 2, 3, 4]"), "{up}");
    assert!(!up.contains("pending"), "{up}");

    // The operator's key comes from the CLI (audited as cli:<user>).
    let created = weir(&[
        "keys",
        "create",
        "--tenant",
        "ops",
        "--subject",
        "root",
        "--roles",
        "admin",
        "--config",
        cfg_s,
    ]);
    let operator = created
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_owned();

    let (a, b) = tokio::join!(serve(&cfg), serve(&cfg));
    let http = reqwest::Client::new();

    // Node A's admin API creates a key for tenant acme.
    let r = http
        .post(format!("{}/admin/v1/keys", a.admin))
        .bearer_auth(&operator)
        .header("x-request-id", "create-1")
        .json(&json!({"tenant": "acme", "subject": "ci", "roles": ["writer", "manager", "reader"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    let id = body["key"]["id"].as_str().unwrap().to_owned();

    // Node B accepts it (and caches it).
    let r = http
        .put(format!("{}/v1/stream/jobs", b.base))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Revoked through node A: refused by A at once, by B within the bound.
    let r = http
        .delete(format!("{}/admin/v1/keys/{id}", a.admin))
        .bearer_auth(&operator)
        .header("x-request-id", "revoke-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked = Instant::now();
    let status_on = |base: String| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            http.get(format!("{base}/v1/stream/jobs?offset=-1"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status_on(a.base.clone()).await, 401);
    loop {
        match status_on(b.base.clone()).await {
            401 => break,
            200 => {
                let waited = revoked.elapsed();
                assert!(
                    waited < Duration::from_millis(CACHE_TTL_MS + 1000),
                    "node B still accepts the revoked key after {waited:?}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            s => panic!("unexpected status {s}"),
        }
    }

    // Node B's admin API reads the shared audit log.
    let r = http
        .get(format!("{}/admin/v1/audit", b.admin))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let audit: Value = r.json().await.unwrap();
    let got: Vec<(String, String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (s("action"), s("actor"), s("tenant"), s("request_id"))
        })
        .collect();
    let want = [
        ("api_key.revoked", "root", "acme", "revoke-1"),
        ("api_key.created", "root", "acme", "create-1"),
        ("api_key.created", "cli:ops-person", "ops", ""),
    ]
    .map(|(a, b, c, d)| (a.into(), b.into(), c.into(), d.into()));
    assert_eq!(got, want);

    // The CLI reads it too, and revokes with an audit entry of its own.
    let lines = weir(&["keys", "audit", "--config", cfg_s]);
    assert_eq!(lines.lines().count(), 3, "{lines}");
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["target"], id.as_str());

    // /metrics on the admin listener.
    let m = http
        .get(format!("{}/metrics", a.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    assert!(m.text().await.unwrap().contains("weir_http_requests_total"));
}

#[test]
fn config_print_redacts_the_database_url() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(
        &cfg,
        "[auth.api_keys]\nstore = \"postgres\"\ndatabase_url = \"postgres://weir:hunter2@db:5432/weir\"\n[admin]\nlisten = \"127.0.0.1:4438\"\n",
    )
    .unwrap();
    let printed = weir(&["config", "print", "--config", cfg.to_str().unwrap()]);
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("database_url = \"<redacted>\""),
        "{printed}"
    );
    assert!(printed.contains("listen = \"127.0.0.1:4438\""), "{printed}");
    // A file and an inline URL together are refused.
    std::fs::write(
        &cfg,
        "[auth.api_keys]\ndatabase_url = \"postgres://h/db\"\ndatabase_url_file = \"/x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["config", "check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
