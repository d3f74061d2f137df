//! OpenTelemetry traces over OTLP/HTTP (protobuf), and W3C trace context.
//!
//! Every HTTP request already has a `tracing` span (`request`, opened by
//! the request-id layer). With the `otel` feature and an OTLP endpoint
//! configured, [`init`] returns a `tracing-subscriber` layer that turns those
//! spans into OpenTelemetry spans and exports them in batches to
//! `{endpoint}/v1/traces`:
//!
//! * the span of a request carrying a valid `traceparent` is a child of the
//!   caller's span (same trace id, parent span id = the caller's);
//! * the response carries `traceparent` naming the request's own span, so a
//!   caller (or a proxy) can join the server's spans to its own;
//! * attributes: `http.request.method`, `http.route` (the route template),
//!   `url.path`, `http.response.status_code`, `request_id`, `tenant`,
//!   `principal`.
//!
//! The exporter sends with the `reqwest` client already in the tree (no
//! gRPC stack, no second HTTP client): the SDK's batch processor runs on
//! its own thread and each export is spawned onto the server's runtime.
//! Without the feature or an endpoint nothing here costs anything per
//! request: [`enabled`] is one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// `[telemetry]`: trace export. Every field has a default; with no endpoint
/// (here or in `OTEL_EXPORTER_OTLP_ENDPOINT` /
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) nothing is exported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector, e.g. `http://127.0.0.1:4318`;
    /// spans go to `{otlp_endpoint}/v1/traces`. Overrides the `OTEL_*`
    /// variables.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Fraction of new traces sampled (0.0–1.0). A request with a
    /// `traceparent` follows its caller's sampled flag.
    pub sample_ratio: f64,
    /// Seconds one export may take before it is abandoned.
    pub export_timeout_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "weir".into(),
            sample_ratio: 1.0,
            export_timeout_secs: 10,
        }
    }
}

/// The telemetry configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.sample_ratio must be between 0 and 1, not {0}")]
    SampleRatio(f64),
    #[error("telemetry.otlp_endpoint must be an absolute http(s) URL: {0}")]
    Endpoint(String),
    #[error("telemetry.service_name must not be empty")]
    ServiceName,
    #[error("traces were requested but this build has no `otel` feature")]
    NotBuilt,
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once by [`init`]).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

impl TelemetryConfig {
    /// Checks the values without building anything.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(TelemetryError::SampleRatio(self.sample_ratio));
        }
        if self.service_name.trim().is_empty() {
            return Err(TelemetryError::ServiceName);
        }
        if let Some(e) = &self.otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(TelemetryError::Endpoint(e.clone()));
        }
        Ok(())
    }

    /// Whether an endpoint is configured here or in the standard `OTEL_*`
    /// environment.
    pub fn wants_export(&self) -> bool {
        let env = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
        self.otlp_endpoint.is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            || env("OTEL_EXPORTER_OTLP_ENDPOINT")
    }
}

#[cfg(feature = "otel")]
pub use otel::{OtelLayer, Telemetry, init};

/// Without the `otel` feature: refuses a configuration that asks for export.
#[cfg(not(feature = "otel"))]
pub fn init(cfg: &TelemetryConfig) -> Result<(), TelemetryError> {
    cfg.validate()?;
    if cfg.wants_export() {
        return Err(TelemetryError::NotBuilt);
    }
    Ok(())
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// Makes `span` (a request's) a child of the caller's span named by its
/// `traceparent`, and records the route. No-op unless exporting.
pub(crate) fn begin(
    span: &tracing::Span,
    traceparent: Option<&crate::request_id::TraceParent>,
    route: &str,
) {
    if !enabled() {
        return;
    }
    span.record("otel.kind", "server");
    span.record("http.route", route);
    #[cfg(feature = "otel")]
    otel::set_parent(span, traceparent);
    #[cfg(not(feature = "otel"))]
    let _ = traceparent;
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// The `traceparent` naming `span` itself, for the response or an outgoing
/// request made in it (a webhook). `None` unless exporting.
pub fn traceparent_of(span: &tracing::Span) -> Option<http::HeaderValue> {
    if !enabled() {
        return None;
    }
    #[cfg(feature = "otel")]
    return otel::traceparent_of(span);
    #[cfg(not(feature = "otel"))]
    {
        let _ = span;
        None
    }
}

#[cfg(feature = "otel")]
mod otel {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use bytes::Bytes;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
    };
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{ENABLED, TelemetryConfig, TelemetryError};
    use crate::request_id::TraceParent;

    /// The tracing layer that exports spans.
    pub type OtelLayer<S> =
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>;

    /// The running exporter: call [`Telemetry::shutdown`] before the
    /// runtime stops, so the last batch is sent.
    #[derive(Debug)]
    pub struct Telemetry {
        provider: SdkTracerProvider,
    }

    impl Telemetry {
        /// Flushes buffered spans and stops the exporter. Blocks: call it
        /// outside async code, while the runtime given to [`init`] runs.
        pub fn shutdown(self) {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = self.provider.shutdown() {
                tracing::warn!(error = %e, "flushing traces at shutdown failed");
            }
        }
    }

    /// The tracing layer exporting spans, or `None` when no endpoint is
    /// configured. `rt` runs the exports.
    pub fn init<S>(
        cfg: &TelemetryConfig,
        rt: tokio::runtime::Handle,
    ) -> Result<Option<(OtelLayer<S>, Telemetry)>, TelemetryError>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        cfg.validate()?;
        if !cfg.wants_export() {
            return Ok(None);
        }
        let client = RuntimeClient {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(cfg.export_timeout_secs.max(1)))
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?,
            rt,
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(client)
            .with_timeout(Duration::from_secs(cfg.export_timeout_secs.max(1)));
        if let Some(base) = &cfg.otlp_endpoint {
            exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
        }
        let exporter = exporter
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("weir");
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some((
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_threads(false),
            Telemetry { provider },
        )))
    }

    pub(super) fn set_parent(span: &tracing::Span, tp: Option<&TraceParent>) {
        let Some(tp) = tp else { return };
        let (Ok(trace_id), Ok(span_id)) = (
            TraceId::from_hex(&tp.trace_id),
            SpanId::from_hex(&tp.parent_id),
        ) else {
            return;
        };
        let remote = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(tp.flags),
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        let _ = span.set_parent(cx);
    }

    pub(super) fn traceparent_of(span: &tracing::Span) -> Option<http::HeaderValue> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        http::HeaderValue::from_str(&format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ))
        .ok()
    }

    /// Largest collector response read.
    const MAX_RESPONSE: usize = 1024 * 1024;

    /// Why one export request failed.
    #[derive(Debug, thiserror::Error)]
    enum ExportError {
        #[error(transparent)]
        Http(#[from] reqwest::Error),
        #[error("the collector's response exceeds {MAX_RESPONSE} bytes")]
        TooLarge,
    }

    /// The OTLP exporter's HTTP client: reqwest (already in the tree, with
    /// rustls), each request spawned onto the server's runtime because the
    /// SDK's batch processor polls exports on a plain thread.
    #[derive(Debug)]
    struct RuntimeClient {
        client: reqwest::Client,
        rt: tokio::runtime::Handle,
    }

    #[async_trait::async_trait]
    impl opentelemetry_http::HttpClient for RuntimeClient {
        async fn send_bytes(
            &self,
            request: http::Request<Bytes>,
        ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
            let client = self.client.clone();
            let send = async move {
                let (parts, body) = request.into_parts();
                let resp = client
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let headers = resp.headers().clone();
                // A collector's answer is tiny; never buffer an unbounded one.
                let mut resp = resp;
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await? {
                    if body.len() + chunk.len() > MAX_RESPONSE {
                        return Err(ExportError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                let mut out = http::Response::new(Bytes::from(body));
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                Ok::<_, ExportError>(out)
            };
            match self.rt.spawn(send).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(Box::new(e)),
                Err(e) => Err(Box::new(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_export_nothing_and_validation_catches_mistakes() {
        let d = TelemetryConfig::default();
        assert!(d.validate().is_ok());
        assert!(d.otlp_endpoint.is_none());
        assert_eq!(d.service_name, "weir");
        let bad = |f: fn(&mut TelemetryConfig)| {
            let mut c = TelemetryConfig::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.sample_ratio = 1.5));
        assert!(bad(|c| c.sample_ratio = -0.1));
        assert!(bad(|c| c.sample_ratio = f64::NAN));
        assert!(bad(|c| c.service_name = " ".into()));
        assert!(bad(|c| c.otlp_endpoint = Some("collector:4318".into())));
        let mut ok = TelemetryConfig {
            otlp_endpoint: Some("https://otel.example:4318".into()),
            ..TelemetryConfig::default()
        };
        assert!(ok.validate().is_ok() && ok.wants_export());
        ok.sample_ratio = 0.0;
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn typos_are_errors() {
        let c: Result<TelemetryConfig, _> = toml::from_str("otlp_endpont = \"http://x\"\n");
        assert!(c.is_err());
        let c: TelemetryConfig = toml::from_str("sample_ratio = 0.5\n").unwrap();
        assert_eq!(c.sample_ratio, 0.5);
    }
}
