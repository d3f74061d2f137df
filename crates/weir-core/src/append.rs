//! The append rules (PROTOCOL.md §5.2, §5.2.1, §5.3): given a stream's state
//! and one request, decide what to write — or why not — without doing it.
//!
//! Storage backends call [`decide`] while holding the stream's write lock and
//! then persist the [`Commit`] (data *and* state change) as one atomic unit.
//! Keeping the decision pure means the memory, embedded-log and JetStream
//! backends cannot disagree on a single edge of the protocol.

use bytes::Bytes;

use crate::content_type::ContentType;
use crate::json::JsonError;
use crate::producer::{ProducerCheck, ProducerHeaders, ProducerState};
use crate::state::{StreamMeta, StreamState};

/// Longest accepted `Stream-Seq`, in bytes.
pub const MAX_STREAM_SEQ_LEN: usize = 256;

/// An append request's body, framed for the request's content type.
#[derive(Clone, Debug)]
pub enum Body {
    /// No body (close-only requests).
    Empty,
    /// A non-JSON body: one chunk of bytes.
    Bytes(Bytes),
    /// A JSON body split into messages, or the reason it could not be.
    Json(Result<Vec<Bytes>, JsonError>),
}

impl Body {
    /// Whether the request carried no data.
    pub fn is_empty(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Bytes(b) => b.is_empty(),
            Body::Json(_) => false,
        }
    }
}

/// One append as the protocol sees it.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// The request's `Content-Type`, if it sent a valid one.
    pub content_type: Option<ContentType>,
    pub body: Body,
    /// `Stream-Closed: true`.
    pub close: bool,
    /// `Stream-Seq`.
    pub stream_seq: Option<String>,
    pub producer: Option<ProducerHeaders>,
}

/// What to persist for an accepted append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The chunk's pieces: one for byte streams, one per message for JSON.
    pub entries: Vec<Bytes>,
    /// Close the stream after the data.
    pub close: bool,
    /// New state of the request's producer.
    pub producer: Option<(String, ProducerState)>,
    /// The producer tuple to remember as the closer.
    pub closed_by: Option<ProducerHeaders>,
    /// New `Stream-Seq` high-water mark.
    pub stream_seq: Option<String>,
}

impl Commit {
    /// Bytes this commit adds to the stream.
    pub fn len(&self) -> u64 {
        self.entries.iter().map(|e| e.len() as u64).sum()
    }

    /// Whether the commit adds no data (a close-only request).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies this commit to the in-memory state (after it is durable).
    pub fn apply(&self, state: &mut StreamState) {
        state.tail += self.len();
        if self.close {
            state.closed = true;
            state.closed_by.clone_from(&self.closed_by);
        }
        if let Some((id, p)) = &self.producer {
            state.producers.insert(id.clone(), *p);
        }
        if let Some(seq) = &self.stream_seq {
            state.last_seq = Some(seq.clone());
        }
    }
}

/// The verdict on an append that is not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendDecision {
    /// Write this.
    Commit(Commit),
    /// A producer retry of data already in the stream: `204`, nothing written.
    Duplicate {
        producer: ProducerState,
        closed: bool,
    },
    /// Close-only request on a stream that is already closed: `204`.
    AlreadyClosed,
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendRejection {
    #[error("the request body is empty; only `Stream-Closed: true` requests may have no body")]
    EmptyBody,
    #[error("the stream is closed")]
    Closed,
    #[error("the request has a body but no valid Content-Type")]
    MissingContentType,
    #[error("Content-Type `{got}` does not match the stream's `{want}`")]
    ContentTypeMismatch { got: String, want: String },
    #[error("Stream-Seq `{got}` is not greater than the last accepted `{last}`")]
    SeqRegression { got: String, last: String },
    #[error("producer epoch is stale; the current epoch is {current_epoch}")]
    StaleEpoch { current_epoch: u64 },
    #[error("a new producer epoch must start at Producer-Seq 0")]
    EpochSeqNotZero,
    #[error("producer sequence gap: expected {expected}, received {received}")]
    SeqGap { expected: u64, received: u64 },
    #[error(transparent)]
    Json(#[from] JsonError),
}

/// Validates `Stream-Seq` syntax: non-empty, printable, bounded.
pub fn valid_stream_seq(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_STREAM_SEQ_LEN && !s.chars().any(char::is_control)
}

/// Decides one append against the stream's current state.
pub fn decide(
    meta: &StreamMeta,
    state: &StreamState,
    req: &AppendRequest,
) -> Result<AppendDecision, AppendRejection> {
    let empty = req.body.is_empty();
    if empty && !req.close {
        return Err(AppendRejection::EmptyBody);
    }

    // 1. Closed streams first, so clients always see `Stream-Closed: true`.
    if state.closed {
        if let Some(p) = &req.producer {
            if state.closed_by.as_ref() == Some(p) {
                let producer = state
                    .producers
                    .get(&p.id)
                    .copied()
                    .unwrap_or(ProducerState {
                        epoch: p.epoch,
                        last_seq: p.seq,
                    });
                return Ok(AppendDecision::Duplicate {
                    producer,
                    closed: true,
                });
            }
            if let Some(cur) = state.producers.get(&p.id)
                && p.epoch < cur.epoch
            {
                return Err(AppendRejection::StaleEpoch {
                    current_epoch: cur.epoch,
                });
            }
        }
        if req.close && empty {
            return Ok(AppendDecision::AlreadyClosed);
        }
        return Err(AppendRejection::Closed);
    }

    // 2. Content type, only when there is data to type.
    if !empty {
        let Some(ct) = &req.content_type else {
            return Err(AppendRejection::MissingContentType);
        };
        if !ct.matches(&meta.content_type) {
            return Err(AppendRejection::ContentTypeMismatch {
                got: ct.as_str().to_owned(),
                want: meta.content_type.as_str().to_owned(),
            });
        }
    }

    // 3. Idempotent producer: duplicates succeed before any other check.
    let mut producer_next = None;
    if let Some(p) = &req.producer {
        match ProducerState::check(state.producers.get(&p.id).copied(), p) {
            ProducerCheck::Accept { next } => producer_next = Some((p.id.clone(), next)),
            ProducerCheck::Duplicate { current } => {
                return Ok(AppendDecision::Duplicate {
                    producer: current,
                    closed: false,
                });
            }
            ProducerCheck::StaleEpoch { current_epoch } => {
                return Err(AppendRejection::StaleEpoch { current_epoch });
            }
            ProducerCheck::EpochSeqNotZero => return Err(AppendRejection::EpochSeqNotZero),
            ProducerCheck::Gap { expected, received } => {
                return Err(AppendRejection::SeqGap { expected, received });
            }
        }
    }

    // 4. Writer sequence (byte-wise lexicographic, per stream).
    if let (Some(got), Some(last)) = (&req.stream_seq, &state.last_seq)
        && got.as_bytes() <= last.as_bytes()
    {
        return Err(AppendRejection::SeqRegression {
            got: got.clone(),
            last: last.clone(),
        });
    }

    // 5. Frame the data.
    let entries = match &req.body {
        Body::Empty => Vec::new(),
        Body::Bytes(b) if b.is_empty() => Vec::new(),
        Body::Bytes(b) => vec![b.clone()],
        Body::Json(Ok(msgs)) => msgs.clone(),
        Body::Json(Err(e)) => return Err(e.clone().into()),
    };

    Ok(AppendDecision::Commit(Commit {
        entries,
        close: req.close,
        closed_by: if req.close {
            req.producer.clone()
        } else {
            None
        },
        producer: producer_next,
        stream_seq: req.stream_seq.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expiry::Expiry;
    use crate::name::StreamName;

    fn meta(ct: &str) -> StreamMeta {
        StreamMeta {
            id: 1,
            name: StreamName::new("s").unwrap(),
            content_type: ContentType::parse(ct).unwrap(),
            expiry: Expiry::Never,
            fork: None,
            lineage: StreamMeta::root_lineage(1),
            created_at_ms: 0,
        }
    }

    fn req(body: &'static [u8]) -> AppendRequest {
        AppendRequest {
            content_type: ContentType::parse("text/plain"),
            body: Body::Bytes(Bytes::from_static(body)),
            close: false,
            stream_seq: None,
            producer: None,
        }
    }

    fn prod(epoch: u64, seq: u64) -> Option<ProducerHeaders> {
        Some(ProducerHeaders {
            id: "p".into(),
            epoch,
            seq,
        })
    }

    fn commit(d: Result<AppendDecision, AppendRejection>) -> Commit {
        match d {
            Ok(AppendDecision::Commit(c)) => c,
            other => panic!("expected commit, got {other:?}"),
        }
    }

    #[test]
    fn plain_append_and_close() {
        let m = meta("text/plain");
        let mut s = StreamState::default();
        let c = commit(decide(&m, &s, &req(b"hello")));
        c.apply(&mut s);
        assert_eq!(s.tail, 5);
        let mut close = req(b"");
        close.close = true;
        let c = commit(decide(&m, &s, &close));
        assert!(c.is_empty());
        c.apply(&mut s);
        assert!(s.closed);
        assert_eq!(decide(&m, &s, &close), Ok(AppendDecision::AlreadyClosed));
        assert_eq!(decide(&m, &s, &req(b"x")), Err(AppendRejection::Closed));
        let mut wrong_ct = req(b"x");
        wrong_ct.content_type = ContentType::parse("application/json");
        assert_eq!(
            decide(&m, &s, &wrong_ct),
            Err(AppendRejection::Closed),
            "closed wins over content type"
        );
    }

    #[test]
    fn body_and_type_errors() {
        let m = meta("text/plain");
        let s = StreamState::default();
        assert_eq!(decide(&m, &s, &req(b"")), Err(AppendRejection::EmptyBody));
        let mut r = req(b"x");
        r.content_type = None;
        assert_eq!(decide(&m, &s, &r), Err(AppendRejection::MissingContentType));
        r.content_type = ContentType::parse("TEXT/PLAIN; charset=utf-8");
        assert!(decide(&m, &s, &r).is_ok());
        let mut close_only = req(b"");
        close_only.close = true;
        close_only.content_type = ContentType::parse("application/json");
        assert!(
            decide(&m, &s, &close_only).is_ok(),
            "close-only ignores content type"
        );
    }

    #[test]
    fn stream_seq_is_bytewise() {
        let m = meta("text/plain");
        let mut s = StreamState::default();
        let mut r = req(b"a");
        r.stream_seq = Some("2".into());
        commit(decide(&m, &s, &r)).apply(&mut s);
        r.stream_seq = Some("10".into());
        assert!(matches!(
            decide(&m, &s, &r),
            Err(AppendRejection::SeqRegression { .. })
        ));
        r.stream_seq = Some("2".into());
        assert!(matches!(
            decide(&m, &s, &r),
            Err(AppendRejection::SeqRegression { .. })
        ));
        r.stream_seq = Some("3".into());
        assert!(decide(&m, &s, &r).is_ok());
    }

    #[test]
    fn producer_close_dedup() {
        let m = meta("text/plain");
        let mut s = StreamState::default();
        let mut r = req(b"final");
        r.close = true;
        r.producer = prod(0, 0);
        commit(decide(&m, &s, &r)).apply(&mut s);
        assert!(s.closed);
        // Same tuple, even with a different body: duplicate.
        let mut retry = req(b"other");
        retry.close = true;
        retry.producer = prod(0, 0);
        assert!(matches!(
            decide(&m, &s, &retry),
            Ok(AppendDecision::Duplicate { closed: true, .. })
        ));
        retry.producer = prod(0, 1);
        assert_eq!(decide(&m, &s, &retry), Err(AppendRejection::Closed));
        // A bumped epoch recorded before close makes older epochs stale.
        let mut s2 = StreamState::default();
        let mut r = req(b"a");
        r.producer = prod(3, 0);
        commit(decide(&m, &s2, &r)).apply(&mut s2);
        s2.closed = true;
        r.producer = prod(1, 0);
        assert_eq!(
            decide(&m, &s2, &r),
            Err(AppendRejection::StaleEpoch { current_epoch: 3 })
        );
    }

    #[test]
    fn producer_duplicate_beats_stream_seq() {
        let m = meta("text/plain");
        let mut s = StreamState::default();
        let mut r = req(b"a");
        r.producer = prod(0, 0);
        r.stream_seq = Some("5".into());
        commit(decide(&m, &s, &r)).apply(&mut s);
        assert!(matches!(
            decide(&m, &s, &r),
            Ok(AppendDecision::Duplicate { .. })
        ));
    }

    #[test]
    fn json_errors_surface() {
        let m = meta("application/json");
        let s = StreamState::default();
        let r = AppendRequest {
            content_type: ContentType::parse("application/json"),
            body: Body::Json(Err(JsonError::EmptyArray)),
            close: false,
            stream_seq: None,
            producer: None,
        };
        assert_eq!(
            decide(&m, &s, &r),
            Err(AppendRejection::Json(JsonError::EmptyArray))
        );
    }
}
