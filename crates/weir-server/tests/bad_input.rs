//! Every malformed or refused request answers a 4xx problem+json with a
//! stable code, and none of them changes stored data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, problem_code};
use reqwest::Method;

struct Case {
    what: &'static str,
    method: Method,
    /// Path below the stream root, with query.
    target: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

fn case(
    what: &'static str,
    method: Method,
    target: &str,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        what,
        method,
        target: target.to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
        status,
        code,
    }
}

impl Case {
    fn h(mut self, name: &'static str, value: impl AsRef<[u8]>) -> Case {
        self.headers.push((name, value.as_ref().to_vec()));
        self
    }
    fn body(mut self, b: impl AsRef<[u8]>) -> Case {
        self.body = b.as_ref().to_vec();
        self
    }
}

fn cases() -> Vec<Case> {
    use Method as M;
    let deep = "[".repeat(5000) + &"]".repeat(5000);
    let long_name = "n".repeat(2000);
    let mut v = vec![
        // Offsets and read parameters.
        case(
            "empty offset",
            M::GET,
            "text?offset=",
            400,
            Some("offset_invalid"),
        ),
        case(
            "repeated offset",
            M::GET,
            "text?offset=-1&offset=-1",
            400,
            Some("offset_invalid"),
        ),
        case(
            "offset with comma",
            M::GET,
            "text?offset=0,1",
            400,
            Some("offset_invalid"),
        ),
        case(
            "offset with space",
            M::GET,
            "text?offset=0%201",
            400,
            Some("offset_invalid"),
        ),
        case(
            "offset traversal",
            M::GET,
            "text?offset=..%2F..%2Fetc",
            400,
            Some("offset_invalid"),
        ),
        case(
            "offset with NUL",
            M::GET,
            "text?offset=%00",
            400,
            Some("offset_invalid"),
        ),
        case(
            "offset too short",
            M::GET,
            "text?offset=0000000000000001_000000000000004",
            400,
            Some("offset_invalid"),
        ),
        case(
            "offset non-digit",
            M::GET,
            "text?offset=000000000000000x_0000000000000001",
            400,
            Some("offset_invalid"),
        ),
        case(
            "offset unicode",
            M::GET,
            "text?offset=%E2%82%AC",
            400,
            Some("offset_invalid"),
        ),
        case(
            "offset beyond tail",
            M::GET,
            "text?offset=9999999999999999_9999999999999999",
            400,
            Some("offset_invalid"),
        ),
        case(
            "offset of another incarnation",
            M::GET,
            "text?offset=0000000000009999_0000000000000001",
            400,
            Some("offset_invalid"),
        ),
        case(
            "unknown live mode",
            M::GET,
            "text?offset=-1&live=websocket",
            400,
            Some("live_mode_invalid"),
        ),
        case(
            "long-poll without offset",
            M::GET,
            "text?live=long-poll",
            400,
            Some("offset_required"),
        ),
        case(
            "sse without offset",
            M::GET,
            "text?live=sse",
            400,
            Some("offset_required"),
        ),
        case(
            "read missing stream",
            M::GET,
            "missing",
            404,
            Some("stream_not_found"),
        ),
        case("head missing stream", M::HEAD, "missing", 404, None),
        case(
            "delete missing stream",
            M::DELETE,
            "missing",
            404,
            Some("stream_not_found"),
        ),
        case(
            "unsupported method",
            M::PATCH,
            "text",
            405,
            Some("method_not_allowed"),
        ),
        // Names.
        case(
            "name too long",
            M::PUT,
            &long_name,
            400,
            Some("stream_name_invalid"),
        ),
        case(
            "dot-dot segment",
            M::PUT,
            "a/%2E%2E%2Fb",
            400,
            Some("stream_name_invalid"),
        ),
        case(
            "empty segment",
            M::PUT,
            "a//b",
            400,
            Some("stream_name_invalid"),
        ),
        case(
            "control char in name",
            M::PUT,
            "a%0Ab",
            400,
            Some("stream_name_invalid"),
        ),
        case(
            "name not UTF-8 once decoded",
            M::PUT,
            "a%FFb",
            400,
            Some("stream_name_invalid"),
        ),
        // Create headers.
        case(
            "TTL not a number",
            M::PUT,
            "new",
            400,
            Some("expiry_invalid"),
        )
        .h("stream-ttl", "abc"),
        case("TTL negative", M::PUT, "new", 400, Some("expiry_invalid")).h("stream-ttl", "-1"),
        case(
            "TTL leading zero",
            M::PUT,
            "new",
            400,
            Some("expiry_invalid"),
        )
        .h("stream-ttl", "010"),
        case("TTL plus sign", M::PUT, "new", 400, Some("expiry_invalid")).h("stream-ttl", "+10"),
        case("TTL float", M::PUT, "new", 400, Some("expiry_invalid")).h("stream-ttl", "1.5"),
        case("TTL exponent", M::PUT, "new", 400, Some("expiry_invalid")).h("stream-ttl", "1e3"),
        case("TTL overflow", M::PUT, "new", 400, Some("expiry_invalid"))
            .h("stream-ttl", "99999999999999999999999"),
        case(
            "Expires-At garbage",
            M::PUT,
            "new",
            400,
            Some("expiry_invalid"),
        )
        .h("stream-expires-at", "tomorrow"),
        case(
            "TTL and Expires-At",
            M::PUT,
            "new",
            400,
            Some("expiry_invalid"),
        )
        .h("stream-ttl", "10")
        .h("stream-expires-at", "2099-01-01T00:00:00Z"),
        case(
            "content type not a media type",
            M::PUT,
            "new",
            400,
            Some("content_type_invalid"),
        )
        .h("content-type", "json"),
        case(
            "config mismatch",
            M::PUT,
            "text",
            409,
            Some("stream_config_mismatch"),
        )
        .h("content-type", "application/json"),
        case(
            "closure mismatch",
            M::PUT,
            "text",
            409,
            Some("stream_config_mismatch"),
        )
        .h("content-type", "text/plain")
        .h("stream-closed", "true"),
        case(
            "invalid JSON initial body",
            M::PUT,
            "new",
            400,
            Some("json_invalid"),
        )
        .h("content-type", "application/json")
        .body("{nope"),
        case(
            "deep JSON initial body",
            M::PUT,
            "new",
            400,
            Some("json_invalid"),
        )
        .h("content-type", "application/json")
        .body(&deep),
        // Forks.
        case(
            "fork of missing source",
            M::PUT,
            "new",
            404,
            Some("fork_source_not_found"),
        )
        .h("stream-forked-from", "/v1/stream/missing"),
        case(
            "fork source outside root",
            M::PUT,
            "new",
            400,
            Some("fork_headers_invalid"),
        )
        .h("stream-forked-from", "/etc/passwd"),
        case(
            "fork offset malformed",
            M::PUT,
            "new",
            400,
            Some("fork_offset_invalid"),
        )
        .h("stream-forked-from", "/v1/stream/text")
        .h("stream-fork-offset", "zero"),
        case(
            "fork offset beyond tail",
            M::PUT,
            "new",
            400,
            Some("fork_offset_invalid"),
        )
        .h("stream-forked-from", "/v1/stream/text")
        .h("stream-fork-offset", "9999999999999999_9999999999999999"),
        case(
            "fork sub-offset negative",
            M::PUT,
            "new",
            400,
            Some("fork_sub_offset_invalid"),
        )
        .h("stream-forked-from", "/v1/stream/text")
        .h("stream-fork-offset", "0000000000000000_0000000000000000")
        .h("stream-fork-sub-offset", "-1"),
        case(
            "fork sub-offset overshoot",
            M::PUT,
            "new",
            400,
            Some("fork_sub_offset_invalid"),
        )
        .h("stream-forked-from", "/v1/stream/text")
        .h("stream-fork-offset", "0000000000000000_0000000000000000")
        .h("stream-fork-sub-offset", "6"),
        case(
            "fork sub-offset without offset",
            M::PUT,
            "new",
            400,
            Some("fork_sub_offset_invalid"),
        )
        .h("stream-forked-from", "/v1/stream/text")
        .h("stream-fork-sub-offset", "1"),
        case(
            "fork header without source",
            M::PUT,
            "new",
            400,
            Some("fork_headers_invalid"),
        )
        .h("stream-fork-sub-offset", "0"),
        case(
            "fork content type mismatch",
            M::PUT,
            "new",
            409,
            Some("content_type_mismatch"),
        )
        .h("stream-forked-from", "/v1/stream/text")
        .h("content-type", "application/json"),
        // Appends.
        case(
            "append to missing stream",
            M::POST,
            "missing",
            404,
            Some("stream_not_found"),
        )
        .h("content-type", "text/plain")
        .body("x"),
        case("empty append", M::POST, "text", 400, Some("body_empty"))
            .h("content-type", "text/plain"),
        case(
            "append without content type",
            M::POST,
            "text",
            400,
            Some("content_type_missing"),
        )
        .body("x"),
        case(
            "append with garbage content type",
            M::POST,
            "text",
            400,
            Some("content_type_invalid"),
        )
        .h("content-type", "///")
        .body("x"),
        case(
            "append with other content type",
            M::POST,
            "text",
            409,
            Some("content_type_mismatch"),
        )
        .h("content-type", "application/octet-stream")
        .body("x"),
        case(
            "JSON syntax error",
            M::POST,
            "json",
            400,
            Some("json_invalid"),
        )
        .h("content-type", "application/json")
        .body("{\"a\":"),
        case(
            "JSON trailing garbage",
            M::POST,
            "json",
            400,
            Some("json_invalid"),
        )
        .h("content-type", "application/json")
        .body("{} {}"),
        case(
            "JSON invalid UTF-8",
            M::POST,
            "json",
            400,
            Some("json_invalid"),
        )
        .h("content-type", "application/json")
        .body(b"[\"\xff\xfe\"]"),
        case(
            "JSON deep nesting",
            M::POST,
            "json",
            400,
            Some("json_invalid"),
        )
        .h("content-type", "application/json")
        .body(&deep),
        case(
            "JSON empty array",
            M::POST,
            "json",
            400,
            Some("json_invalid"),
        )
        .h("content-type", "application/json")
        .body("[]"),
        case(
            "JSON lone surrogate escape ok, raw NUL not",
            M::POST,
            "json",
            400,
            Some("json_invalid"),
        )
        .h("content-type", "application/json")
        .body(b"\"a\x00b\""),
        case(
            "append to closed stream",
            M::POST,
            "closed",
            409,
            Some("stream_closed"),
        )
        .h("content-type", "text/plain")
        .body("x"),
        case(
            "Stream-Seq regression",
            M::POST,
            "prod",
            409,
            Some("stream_seq_regression"),
        )
        .h("content-type", "text/plain")
        .h("stream-seq", "0001")
        .body("x"),
        case(
            "Stream-Seq not ASCII",
            M::POST,
            "text",
            400,
            Some("header_invalid"),
        )
        .h("content-type", "text/plain")
        .h("stream-seq", b"\xe2\x82\xac")
        .body("x"),
        // Producers.
        case(
            "producer id alone",
            M::POST,
            "text",
            400,
            Some("producer_headers_invalid"),
        )
        .h("content-type", "text/plain")
        .h("producer-id", "p")
        .body("x"),
        case(
            "producer epoch junk",
            M::POST,
            "text",
            400,
            Some("producer_headers_invalid"),
        )
        .h("content-type", "text/plain")
        .h("producer-id", "p")
        .h("producer-epoch", "1abc")
        .h("producer-seq", "0")
        .body("x"),
        case(
            "producer seq exponent",
            M::POST,
            "text",
            400,
            Some("producer_headers_invalid"),
        )
        .h("content-type", "text/plain")
        .h("producer-id", "p")
        .h("producer-epoch", "0")
        .h("producer-seq", "1e3")
        .body("x"),
        case(
            "producer epoch beyond 2^53-1",
            M::POST,
            "text",
            400,
            Some("producer_headers_invalid"),
        )
        .h("content-type", "text/plain")
        .h("producer-id", "p")
        .h("producer-epoch", "9007199254740992")
        .h("producer-seq", "0")
        .body("x"),
        case(
            "producer id empty",
            M::POST,
            "text",
            400,
            Some("producer_headers_invalid"),
        )
        .h("content-type", "text/plain")
        .h("producer-id", "")
        .h("producer-epoch", "0")
        .h("producer-seq", "0")
        .body("x"),
        case(
            "producer stale epoch",
            M::POST,
            "prod",
            403,
            Some("producer_epoch_stale"),
        )
        .h("content-type", "text/plain")
        .h("producer-id", "w")
        .h("producer-epoch", "1")
        .h("producer-seq", "9")
        .body("x"),
        case(
            "producer seq gap",
            M::POST,
            "prod",
            409,
            Some("producer_seq_gap"),
        )
        .h("content-type", "text/plain")
        .h("producer-id", "w")
        .h("producer-epoch", "2")
        .h("producer-seq", "7")
        .body("x"),
        case(
            "producer new epoch not at zero",
            M::POST,
            "prod",
            400,
            Some("producer_epoch_seq_not_zero"),
        )
        .h("content-type", "text/plain")
        .h("producer-id", "w")
        .h("producer-epoch", "3")
        .h("producer-seq", "1")
        .body("x"),
        case(
            "header injection in content type",
            M::POST,
            "text",
            400,
            Some("content_type_invalid"),
        )
        .h("content-type", "text/plain\tx/y")
        .body("x"),
    ];
    v.push(
        case(
            "oversized body",
            M::POST,
            "text",
            413,
            Some("payload_too_large"),
        )
        .h("content-type", "text/plain")
        .body(vec![b'x'; 2 * 1024 * 1024]),
    );
    v
}

#[tokio::test]
async fn every_bad_request_is_a_coded_4xx_and_changes_nothing() {
    let cfg = weir_server::ServerConfig {
        max_body_bytes: 1024 * 1024,
        ..weir_server::ServerConfig::conformance()
    };
    let srv = TestServer::with(cfg, Default::default()).await;
    srv.create("text", "text/plain", b"hello").await;
    srv.create("json", "application/json", b"[{\"a\":1}]").await;
    let r = srv
        .client
        .put(srv.url("closed"))
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .body("done")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    srv.create("prod", "text/plain", b"").await;
    for (epoch, seq, seqhdr) in [
        (2, 0, "0005"),
        (2, 1, "0006"),
        (2, 2, "0007"),
        (2, 3, "0008"),
    ] {
        let r = srv
            .client
            .post(srv.url("prod"))
            .header("content-type", "text/plain")
            .header("producer-id", "w")
            .header("producer-epoch", epoch.to_string())
            .header("producer-seq", seq.to_string())
            .header("stream-seq", seqhdr)
            .body("p")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let fixtures = ["text", "json", "closed", "prod"];
    let mut before = Vec::new();
    for f in fixtures {
        before.push(srv.snapshot(f).await);
    }

    let all = cases();
    assert!(all.len() >= 50, "the table must keep at least 50 cases");
    for c in all {
        let mut req = srv.client.request(c.method.clone(), srv.url(&c.target));
        for (k, v) in &c.headers {
            req = req.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
        }
        let resp = req.body(c.body.clone()).send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert_eq!(
            resp.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{}: nosniff",
            c.what
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            status,
            c.status,
            "{}: status (body {})",
            c.what,
            String::from_utf8_lossy(&body)
        );
        if let Some(code) = c.code {
            assert_eq!(ct, "application/problem+json", "{}: content type", c.what);
            assert_eq!(problem_code(&body), code, "{}: code", c.what);
        }
        for (f, b) in fixtures.iter().zip(&before) {
            assert_eq!(&srv.snapshot(f).await, b, "{}: stream {f} changed", c.what);
        }
        assert_eq!(
            srv.snapshot("new").await.0,
            404,
            "{}: created a stream",
            c.what
        );
    }
    srv.stop().await;
}
