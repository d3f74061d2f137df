//! Traces and logs of a real `weir serve`:
//! * OTLP/HTTP export to a collector run by the test (axum on 127.0.0.1:0),
//!   whose `/v1/traces` bodies are decoded as protobuf: the request's span
//!   continues the caller's `traceparent` (same trace id, parent span id =
//!   the caller's), the response's `traceparent` names it, and it carries
//!   the request's attributes;
//! * JSON logs: one object per line, the request's lines carry its request
//!   id, tenant and principal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Starts `weir serve` (memory storage, port 0) with extra args and env,
/// returning the child (stderr piped) and its base URL.
async fn serve(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["serve", "--port", "0", "--storage", "memory"])
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = common::printed(&mut lines, "listening on ").await;
    (child, base)
}

/// A minimal OTLP/HTTP collector: decodes every `/v1/traces` body and
/// forwards its spans (with the resource's `service.name`).
async fn collector() -> (String, mpsc::UnboundedReceiver<(String, Span)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .as_ref()
                            .and_then(|r| string_attr(&r.attributes, "service.name"))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                let _ = tx.send((service.clone(), span));
                            }
                        }
                    }
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), rx)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits for the span whose `request_id` attribute is `id`.
async fn span_of(rx: &mut mpsc::UnboundedReceiver<(String, Span)>, id: &str) -> (String, Span) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (service, span) = rx.recv().await.expect("collector channel");
            if string_attr(&span.attributes, "request_id").as_deref() == Some(id) {
                return (service, span);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no span for request {id} within 20 s"))
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_collector_as_children_of_the_callers_trace() {
    let (endpoint, mut spans) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(
        &cfg,
        format!(
            "[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"weir-under-test\"\n"
        ),
    )
    .unwrap();
    let (mut child, base) = serve(
        &["--config", cfg.to_str().unwrap(), "--log-level", "warn"],
        // Export every 100 ms instead of every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    let client = reqwest::Client::new();

    // A request continuing the caller's trace.
    let r = client
        .put(format!("{base}/v1/stream/traced"))
        .header("content-type", "text/plain")
        .header("x-request-id", "otel-req-1")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let tp = r.headers()["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE_ID, "the response names the caller's trace");
    assert_ne!(parts[2], PARENT_ID, "and the server's own span");
    assert_eq!(parts[3], "01");

    let (service, span) = span_of(&mut spans, "otel-req-1").await;
    assert_eq!(service, "weir-under-test");
    assert_eq!(hex(&span.trace_id), TRACE_ID);
    assert_eq!(hex(&span.parent_span_id), PARENT_ID);
    assert_eq!(hex(&span.span_id), parts[2]);
    assert_eq!(
        span.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
    );
    let a = &span.attributes;
    assert_eq!(
        string_attr(a, "http.route").as_deref(),
        Some("/v1/stream/{*path}")
    );
    assert_eq!(string_attr(a, "method").as_deref(), Some("PUT"));
    assert_eq!(string_attr(a, "path").as_deref(), Some("/v1/stream/traced"));
    assert_eq!(int_attr(a, "http.response.status_code"), Some(201), "{a:?}");
    assert_eq!(string_attr(a, "tenant").as_deref(), Some("default"));
    assert!(string_attr(a, "principal").is_some(), "{a:?}");

    // Without a traceparent: a new trace, with the span at its root.
    let r = client
        .post(format!("{base}/v1/stream/traced"))
        .header("content-type", "text/plain")
        .header("x-request-id", "otel-req-2")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let tp2 = r.headers()["traceparent"].to_str().unwrap().to_owned();
    let (_, span) = span_of(&mut spans, "otel-req-2").await;
    assert_ne!(hex(&span.trace_id), TRACE_ID);
    assert!(span.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        tp2,
        format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id))
    );
    assert_eq!(
        int_attr(&span.attributes, "http.response.status_code"),
        Some(204)
    );

    // An unsampled caller is followed: same trace, not sampled.
    let r = client
        .get(format!("{base}/healthz"))
        .header("x-request-id", "otel-req-3")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-00"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tp3 = r.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(
        tp3.starts_with(&format!("00-{TRACE_ID}-")) && tp3.ends_with("-00"),
        "{tp3}"
    );
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_tenant_and_principal() {
    let (mut child, base) = serve(
        &[
            "--log-format",
            "json",
            "--log-level",
            "info,weir_layer=debug",
        ],
        &[],
    )
    .await;
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{base}/v1/stream/logged"))
        .header("x-request-id", "json-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let _ = client
        .get(format!("{base}/v1/stream/missing"))
        .header("x-request-id", "json-req-2")
        .send()
        .await
        .unwrap();

    let mut seen = 0;
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
            assert!(v.is_object() && v.get("timestamp").is_some() && v.get("level").is_some());
            let Some(span) = v.get("span") else { continue };
            if span["name"] != "request" {
                continue;
            }
            if span["request_id"] == "json-req-2" {
                return (seen, v);
            }
            if span["request_id"] == "json-req-1" {
                assert_eq!(span["tenant"], "default", "{line}");
                assert!(span["principal"].is_string(), "{line}");
                seen += 1;
            }
        }
        panic!("weir serve ended")
    })
    .await
    .expect("request log lines within 20 s");
    let (seen, v) = found;
    assert!(seen >= 1, "the first request logged inside its span");
    assert_eq!(v["fields"]["status"], 404, "{v}");
    let _ = child.kill().await;
}
