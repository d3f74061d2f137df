//! A stream's configuration ([`StreamMeta`], fixed at creation) and its
//! mutable writer state ([`StreamState`], changed by appends).
//!
//! Both are plain serialisable data: the embedded log writes the state delta
//! of an append into the same record as the appended bytes, and recovery
//! rebuilds these structs from checkpoint + log.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::content_type::ContentType;
use crate::expiry::Expiry;
use crate::name::StreamName;
use crate::offset::Offset;
use crate::producer::{ProducerHeaders, ProducerState};

/// One stretch of a stream's offset space and the incarnation that minted
/// its offsets. A stream's lineage is ordered by position; the last entry is
/// the stream itself with `upto = u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageSpan {
    pub id: u64,
    /// Last position (inclusive) whose offset this incarnation minted.
    pub upto: u64,
}

/// Where a fork branched off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOrigin {
    /// The source stream's name and incarnation.
    pub source: StreamName,
    pub source_id: u64,
    /// `Stream-Fork-Offset` as resolved (the source's tail when omitted).
    pub offset: Offset,
    /// `Stream-Fork-Sub-Offset` (0 when absent).
    pub sub_offset: u64,
    /// The divergence position: inherited data is `[0, position)`.
    pub position: u64,
}

/// Configuration fixed when a stream is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Server-wide unique incarnation id (also the ETag's stream id).
    pub id: u64,
    pub name: StreamName,
    #[serde(with = "ct_serde")]
    pub content_type: ContentType,
    pub expiry: Expiry,
    pub fork: Option<ForkOrigin>,
    pub lineage: Vec<LineageSpan>,
    pub created_at_ms: i64,
}

/// Writer-visible state that appends change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// Position after the last byte (the tail).
    pub tail: u64,
    pub closed: bool,
    /// The producer request that closed the stream, for idempotent retries.
    pub closed_by: Option<ProducerHeaders>,
    /// Last accepted `Stream-Seq` (scope: per stream).
    pub last_seq: Option<String>,
    pub producers: HashMap<String, ProducerState>,
    /// Last read or write, for sliding TTLs.
    pub last_access_ms: i64,
}

impl StreamMeta {
    /// Lineage of a new, non-forked stream.
    pub fn root_lineage(id: u64) -> Vec<LineageSpan> {
        vec![LineageSpan { id, upto: u64::MAX }]
    }

    /// Lineage of a fork `id` of a stream with `source` lineage, diverging
    /// at `position`: the source's spans up to `position`, then the fork.
    pub fn fork_lineage(source: &[LineageSpan], position: u64, id: u64) -> Vec<LineageSpan> {
        let mut out = Vec::with_capacity(source.len() + 1);
        for span in source {
            if span.upto < position {
                out.push(*span);
            } else {
                out.push(LineageSpan {
                    id: span.id,
                    upto: position,
                });
                break;
            }
        }
        out.push(LineageSpan { id, upto: u64::MAX });
        out
    }

    /// The offset this stream reports for `pos`. Position 0 is the same
    /// token, all zeros, on every stream: the beginning of a stream is the
    /// beginning in every incarnation, and clients (the conformance suite
    /// included) construct it to mean "fork/read from the start".
    pub fn offset_at(&self, pos: u64) -> Offset {
        if pos == 0 {
            return Offset::new(0, 0);
        }
        let id = self
            .lineage
            .iter()
            .find(|s| pos <= s.upto)
            .map_or(self.id, |s| s.id);
        Offset::new(id, pos)
    }

    /// Whether `o` is an offset this stream could have minted, given its tail.
    pub fn owns(&self, o: Offset, tail: u64) -> bool {
        o.pos <= tail && self.offset_at(o.pos) == o
    }

    /// First position that holds this stream's own (not inherited) data.
    pub fn own_start(&self) -> u64 {
        self.fork.as_ref().map_or(0, |f| f.position)
    }
}

impl StreamState {
    /// State of a freshly created stream.
    pub fn new(tail: u64, now_ms: i64) -> StreamState {
        StreamState {
            tail,
            last_access_ms: now_ms,
            ..StreamState::default()
        }
    }
}

mod ct_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::content_type::ContentType;

    pub fn serialize<S: Serializer>(ct: &ContentType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(ct.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ContentType, D::Error> {
        let s = String::deserialize(d)?;
        ContentType::parse(&s).ok_or_else(|| serde::de::Error::custom("invalid content type"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(id: u64, lineage: Vec<LineageSpan>) -> StreamMeta {
        StreamMeta {
            id,
            name: StreamName::new("s").unwrap(),
            content_type: ContentType::default_type(),
            expiry: Expiry::Never,
            fork: None,
            lineage,
            created_at_ms: 0,
        }
    }

    #[test]
    fn fork_offsets_stitch() {
        let root = meta(3, StreamMeta::root_lineage(3));
        let f1 = meta(7, StreamMeta::fork_lineage(&root.lineage, 10, 7));
        assert_eq!(f1.offset_at(0), Offset::new(0, 0));
        assert_eq!(f1.offset_at(1), Offset::new(3, 1));
        assert_eq!(f1.offset_at(10), Offset::new(3, 10));
        assert_eq!(f1.offset_at(11), Offset::new(7, 11));
        let f2 = meta(9, StreamMeta::fork_lineage(&f1.lineage, 5, 9));
        assert_eq!(f2.lineage.len(), 2);
        assert_eq!(f2.offset_at(5), Offset::new(3, 5));
        assert_eq!(f2.offset_at(6), Offset::new(9, 6));
        let f3 = meta(12, StreamMeta::fork_lineage(&f1.lineage, 15, 12));
        assert_eq!(f3.offset_at(10), Offset::new(3, 10));
        assert_eq!(f3.offset_at(15), Offset::new(7, 15));
        assert_eq!(f3.offset_at(16), Offset::new(12, 16));
        assert!(f3.owns(Offset::new(7, 12), 20));
        assert!(!f3.owns(Offset::new(3, 12), 20));
        assert!(!f3.owns(Offset::new(12, 21), 20));
    }

    proptest! {
        /// Along any fork chain, offsets are strictly increasing in position.
        #[test]
        fn offsets_monotonic_along_chains(points in proptest::collection::vec(0u64..50, 0..5), probe in proptest::collection::vec(0u64..300, 2..30)) {
            let mut m = meta(1, StreamMeta::root_lineage(1));
            let mut id = 1;
            let mut base = 0;
            for p in points {
                id += 1;
                base += p;
                m = meta(id, StreamMeta::fork_lineage(&m.lineage, base, id));
            }
            let mut probe = probe;
            probe.sort_unstable();
            probe.dedup();
            for w in probe.windows(2) {
                prop_assert!(m.offset_at(w[0]).to_string() < m.offset_at(w[1]).to_string());
            }
        }
    }
}
