//! Why a bridge stopped. Every variant is a condition an operator (or a
//! supervisor) acts on differently, so callers can match on it.

/// A mapping's bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("JetStream stream for `{subject}`: {detail}")]
    CaptureStream { subject: String, detail: String },
    /// Another bridge instance with the same mapping name took over: it
    /// claimed a newer producer epoch on the Weir stream (`403`), or it
    /// replaced the JetStream consumer. The newer instance keeps running.
    #[error("fenced by a newer bridge instance for `{mapping}`: {detail}")]
    Fenced { mapping: String, detail: String },
    /// The Weir stream was closed; nothing more can be appended.
    #[error("Weir stream {url} is closed")]
    StreamClosed { url: String },
    /// The Weir stream is gone (`404`/`410`) after the bridge started.
    /// Recreating it would silently restart history, so the bridge stops.
    #[error("Weir stream {url} no longer exists (status {status})")]
    StreamGone { url: String, status: u16 },
    /// `401`/`403` without producer headers: the credential is wrong or
    /// lacks the right to append.
    #[error("Weir refused the bridge's credential at {url} (status {status}): {detail}")]
    Unauthorized {
        url: String,
        status: u16,
        detail: String,
    },
    /// A response the bridge cannot recover from by retrying (`400`, `413`,
    /// a content type mismatch, a stream that is not JSON, …).
    #[error("Weir rejected the request to {url} (status {status}): {detail}")]
    Rejected {
        url: String,
        status: u16,
        detail: String,
    },
    /// The stream holds something that is not a bridge record.
    #[error("Weir stream {url} holds records the bridge did not write: {detail}")]
    ForeignRecords { url: String, detail: String },
}
