//! Errors of the durable-events API.

/// What went wrong talking to JetStream (or PostgreSQL) on behalf of a
/// durable publisher, listener, ledger or the DLQ tools.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The transport has no JetStream context.
    #[error("the transport has no JetStream")]
    NoJetStream,
    /// A family, subject, consumer or id was not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Creating or reading a stream, consumer or bucket failed.
    #[error("JetStream setup: {0}")]
    Setup(String),
    /// A publish was not acknowledged by the stream.
    #[error("publish to `{subject}` not acknowledged: {reason}")]
    Publish { subject: String, reason: String },
    /// Reading or fetching messages failed.
    #[error("JetStream read: {0}")]
    Read(String),
    /// A dead-letter message with this sequence does not exist.
    #[error("no dead letter with sequence {0}")]
    NotFound(u64),
    /// A stored record could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
    /// PostgreSQL failed (inbox, outbox).
    #[error("database: {0}")]
    Database(String),
}

pub(crate) fn setup(e: impl std::fmt::Display) -> DurableError {
    DurableError::Setup(e.to_string())
}

pub(crate) fn read(e: impl std::fmt::Display) -> DurableError {
    DurableError::Read(e.to_string())
}
