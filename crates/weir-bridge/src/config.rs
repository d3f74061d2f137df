//! What the bridge is told: where NATS is, which subjects go to which Weir
//! stream, how to authenticate to Weir, and how to batch.

use std::time::Duration;

/// The whole bridge: one NATS connection, any number of mappings.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// `nats://host:port`.
    pub nats_url: String,
    pub mappings: Vec<Mapping>,
    /// Credential sent to every Weir server the mappings point at.
    pub auth: WeirAuth,
    pub batch: BatchConfig,
}

/// One subject pattern appended to one Weir stream.
#[derive(Clone, Debug)]
pub struct Mapping {
    /// Names the JetStream durable consumer and the Weir `Producer-Id`, so
    /// it must stay the same across restarts: a new name is a new producer
    /// that starts again from the Weir stream's tail. Letters, digits, `-`
    /// and `_` only (JetStream consumer name rules).
    pub name: String,
    /// NATS subject pattern, e.g. `orders.>`.
    pub subject: String,
    /// Full URL of the Weir stream, e.g. `http://127.0.0.1:4437/v1/stream/orders`.
    pub stream_url: String,
    /// JetStream stream used when no existing stream captures `subject`.
    pub capture_stream: String,
    /// Create `capture_stream` when no stream captures `subject`; when
    /// false, a missing capture stream is an error.
    pub create_capture_stream: bool,
    /// Create the Weir stream (`PUT`, `application/json`) when absent.
    pub create_weir_stream: bool,
}

impl Mapping {
    /// A mapping with names derived from `name`: capture stream
    /// `WEIR_BRIDGE_<NAME>`, both streams created when missing.
    pub fn new(name: &str, subject: &str, stream_url: &str) -> Mapping {
        Mapping {
            name: name.to_owned(),
            subject: subject.to_owned(),
            stream_url: stream_url.to_owned(),
            capture_stream: format!("WEIR_BRIDGE_{}", name.to_uppercase().replace('-', "_")),
            create_capture_stream: true,
            create_weir_stream: true,
        }
    }

    /// A JetStream-safe name derived from a subject pattern
    /// (`orders.>` → `orders_all`), for command lines that only give the
    /// pattern.
    pub fn name_for_subject(subject: &str) -> String {
        let mut out = String::new();
        for part in subject.split('.') {
            if !out.is_empty() {
                out.push('_');
            }
            match part {
                ">" => out.push_str("all"),
                "*" => out.push_str("any"),
                p => out.extend(p.chars().map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })),
            }
        }
        out
    }

    /// Whether `name` can be a JetStream consumer name and a `Producer-Id`.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }
}

/// How the bridge authenticates to Weir.
#[derive(Clone, Default)]
pub enum WeirAuth {
    #[default]
    None,
    /// `X-Api-Key: …`.
    ApiKey(String),
    /// `Authorization: Bearer …` (a JWT or an API key).
    Bearer(String),
}

impl std::fmt::Debug for WeirAuth {
    /// Never prints the secret: configurations end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeirAuth::None => f.write_str("None"),
            WeirAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            WeirAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Batching and flow control.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Most events per append request.
    pub max_events: usize,
    /// Most payload bytes per append request (records are never split, so
    /// one oversized event still goes alone).
    pub max_bytes: usize,
    /// How long to wait for more events once one is in hand. Zero appends
    /// whatever the consumer has buffered at once.
    pub linger: Duration,
    /// Longest pause between retries of a failed append.
    pub max_backoff: Duration,
    /// Per-request timeout; a timed-out append is ambiguous and is retried
    /// with the same producer sequence.
    pub request_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_events: 256,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(20),
            max_backoff: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}
