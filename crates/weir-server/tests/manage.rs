//! `/_weir/streams` listing and `/_weir/batch` multi-stream appends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, problem_code};
use serde_json::{Value, json};

#[tokio::test]
async fn listing_paginates_by_prefix() {
    let srv = TestServer::start().await;
    for i in 0..25 {
        srv.create(&format!("tenant-a/s{i:02}"), "text/plain", b"")
            .await;
    }
    srv.create("tenant-b/x", "text/plain", b"").await;
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/_weir/streams?prefix=tenant-a/&limit=10", srv.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = serde_json::from_slice(
            &srv.client
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        for s in page["streams"].as_array().unwrap() {
            names.push(s["name"].as_str().unwrap().to_owned());
            assert!(s["next_offset"].is_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(names.len(), 25);
    assert!(names.iter().all(|n| n.starts_with("tenant-a/")));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let r = srv
        .client
        .get(format!("{}/_weir/streams?limit=0", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(problem_code(&r.bytes().await.unwrap()), "limit_invalid");
    srv.stop().await;
}

#[tokio::test]
async fn batch_appends_with_per_item_results() {
    let srv = TestServer::start().await;
    srv.create("b/text", "text/plain", b"").await;
    srv.create("b/json", "application/json", b"").await;
    srv.create("b/bin", "application/octet-stream", b"").await;
    let r = srv
        .client
        .put(srv.url("b/closed"))
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let batch = json!({"appends": [
        {"stream": "b/text", "content_type": "text/plain", "data": "hello"},
        {"stream": "b/json", "content_type": "application/json", "json": [{"a": 1}, {"b": 2}]},
        {"stream": "b/bin", "content_type": "application/octet-stream", "data_base64": "AAEC/w=="},
        {"stream": "b/closed", "content_type": "text/plain", "data": "late"},
        {"stream": "b/missing", "content_type": "text/plain", "data": "x"},
        {"stream": "b/json", "content_type": "application/json", "json": []},
        {"stream": "b/text", "content_type": "text/plain", "data": " world", "producer": {"id": "p", "epoch": 0, "seq": 0}},
        {"stream": "b/text", "content_type": "text/plain", "data": " world", "producer": {"id": "p", "epoch": 0, "seq": 0}},
        {"stream": "bad//name", "data": "x"}
    ]});
    let r = srv
        .client
        .post(format!("{}/_weir/batch", srv.base))
        .header("content-type", "application/json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let res = body["results"].as_array().unwrap();
    let statuses: Vec<u64> = res.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![204, 204, 204, 409, 404, 400, 200, 204, 400]);
    assert_eq!(res[3]["code"], "stream_closed");
    assert_eq!(res[4]["code"], "stream_not_found");
    assert_eq!(res[5]["code"], "json_invalid");
    assert_eq!(res[7]["producer_seq"], 0);
    assert_eq!(res[8]["code"], "stream_name_invalid");
    assert_eq!(srv.snapshot("b/text").await.1, b"hello world");
    assert_eq!(srv.snapshot("b/json").await.1, br#"[{"a":1},{"b":2}]"#);
    assert_eq!(srv.snapshot("b/bin").await.1, vec![0, 1, 2, 255]);

    for bad in [
        "{}",
        "not json",
        r#"{"appends": []}"#,
        r#"{"appends": [{"stream": "b/text", "data": "x", "data_base64": "eA=="}]}"#,
    ] {
        let r = srv
            .client
            .post(format!("{}/_weir/batch", srv.base))
            .body(bad)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.bytes().await.unwrap();
        if status == 200 {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["results"][0]["code"], "batch_invalid", "{bad}");
        } else {
            assert_eq!(status, 400, "{bad}");
            assert_eq!(problem_code(&body), "batch_invalid", "{bad}");
        }
    }
    srv.stop().await;
}
