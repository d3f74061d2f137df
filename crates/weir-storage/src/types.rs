//! Requests, results and errors of the [`Storage`](crate::Storage) trait.

use bytes::Bytes;
use weir_core::append::{AppendRejection, Body};
use weir_core::fork::ForkError;
use weir_core::json::JsonError;
use weir_core::{ContentType, Expiry, Offset, ProducerState, StreamName};

/// `PUT` of a stream.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    pub name: StreamName,
    /// `None`: the default type, or the source's type for a fork.
    pub content_type: Option<ContentType>,
    pub expiry: Expiry,
    /// `Stream-Closed: true`: create already closed.
    pub closed: bool,
    /// Initial data (JSON bodies already split, empty arrays allowed).
    pub body: Body,
    pub fork: Option<ForkRequest>,
}

/// The fork part of a `PUT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkRequest {
    pub source: StreamName,
    /// `None`: the source's tail.
    pub offset: Option<Offset>,
    /// 0 when absent.
    pub sub_offset: u64,
}

/// Result of a create.
#[derive(Clone, Debug)]
pub struct CreateOutcome {
    /// `false` when an identical stream already existed.
    pub created: bool,
    pub info: StreamInfo,
}

/// A stream's metadata as reads, heads and listings report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Incarnation id (ETags use it).
    pub id: u64,
    pub name: StreamName,
    pub content_type: ContentType,
    pub expiry: Expiry,
    /// Absolute expiry deadline now, if any (TTL streams: last access + TTL).
    pub expires_at_ms: Option<i64>,
    pub tail: Offset,
    pub closed: bool,
    pub created_at_ms: i64,
}

/// What an accepted append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendAck {
    /// Data (and/or closure) was written; `producer` is the producer's new
    /// state when the request carried producer headers.
    Appended { producer: Option<ProducerState> },
    /// A producer retry of data already present; nothing written.
    Duplicate { producer: ProducerState },
    /// Close-only request on an already closed stream; nothing written.
    AlreadyClosed,
}

/// Result of an append: the verdict plus the state needed for headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub result: Result<AppendAck, AppendRejection>,
    /// Tail after the operation (the current tail on rejection).
    pub tail: Offset,
    /// Whether the stream is closed after the operation.
    pub closed: bool,
    /// Bytes written by this operation.
    pub bytes: u64,
}

/// One piece of returned data: a byte range, or one JSON message.
pub type Piece = Bytes;

/// The result of a read.
#[derive(Clone, Debug)]
pub struct ReadChunk {
    pub info: StreamInfo,
    /// The offset the read started at (resolved for `-1` / `now`).
    pub start: Offset,
    /// The offset after the returned data.
    pub next: Offset,
    /// Byte ranges (binary/text streams) or whole messages (JSON streams).
    pub pieces: Vec<Piece>,
    /// `next` is the tail: nothing more is available now.
    pub up_to_date: bool,
}

impl ReadChunk {
    /// Whether this read reached the end of a closed stream (EOF).
    pub fn at_eof(&self) -> bool {
        self.up_to_date && self.info.closed
    }

    /// Total bytes in the pieces.
    pub fn byte_len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }
}

/// What a [`TailWatch`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    /// Durable tail position of the stream's own data.
    pub pos: u64,
    pub closed: bool,
    /// The stream was deleted or expired: readers must stop.
    pub gone: bool,
    /// Number of durable commits (including close-only ones), so a caller
    /// can wait until everything it decided against is durable.
    pub commits: u64,
}

/// Per-stream change notification.
pub type TailWatch = tokio::sync::watch::Receiver<Tail>;

/// A server-wide change notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEvent {
    pub name: StreamName,
    pub kind: StreamEventKind,
    /// The tail before the change (a new stream: where its own data starts).
    pub prev: Offset,
    /// The tail after the change.
    pub tail: Offset,
}

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEventKind {
    Created,
    Appended,
    Closed,
    Deleted,
}

/// Storage failures a caller can match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("stream not found")]
    NotFound,
    #[error("stream was deleted but is still referenced by forks")]
    Gone,
    #[error("a stream with a different configuration exists: {0}")]
    ConfigMismatch(String),
    #[error("the path belongs to a deleted stream that forks still reference")]
    PathBlocked,
    #[error("fork source not found")]
    SourceNotFound,
    #[error("fork source is deleted")]
    SourceGone,
    #[error("content type does not match the fork source's")]
    ForkContentType,
    #[error(transparent)]
    Fork(#[from] ForkError),
    #[error("offset does not belong to this stream or is beyond its tail")]
    OffsetInvalid,
    #[error("offset is before the earliest retained data")]
    OffsetGone,
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("version conflict")]
    VersionConflict,
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("storage is full: {0}")]
    Full(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage I/O error: {0}")]
    Io(String),
}
