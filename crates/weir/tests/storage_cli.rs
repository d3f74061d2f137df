//! `weir storage backup` while the server writes, then `weir storage verify`
//! and a server started on the copy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

async fn serve(data: &std::path::Path) -> (tokio::process::Child, String) {
    let s = common::serve([std::ffi::OsStr::new("--data-dir"), data.as_os_str()]).await;
    (s.child, s.base)
}

fn weir(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_then_verify_and_serve_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let copy = dir.path().join("copy");
    let (mut child, base) = serve(&data).await;
    let client = reqwest::Client::new();
    client
        .put(format!("{base}/v1/stream/b"))
        .header("content-type", "text/plain")
        .body("first;")
        .send()
        .await
        .unwrap();
    // Keep appending while the backup runs.
    let writer = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                client
                    .post(format!("{base}/v1/stream/b"))
                    .header("content-type", "text/plain")
                    .body(format!("{i:05};"))
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (ok, out) = weir(&[
        "storage",
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        copy.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    writer.await.unwrap();
    let (ok, out) = weir(&["storage", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(ok && out.contains("ok"), "{out}");
    let _ = child.kill().await;

    // The copy is a consistent prefix: it starts, and holds whole appends.
    let (ok, out) = weir(&["storage", "verify", "--data-dir", copy.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (mut child2, base2) = serve(&copy).await;
    let body = client
        .get(format!("{base2}/v1/stream/b"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with("first;"));
    let parts: Vec<&str> = body.trim_end_matches(';').split(';').skip(1).collect();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(*p, format!("{i:05}"), "the copy holds a gap-free prefix");
    }
    let _ = child2.kill().await;
}
