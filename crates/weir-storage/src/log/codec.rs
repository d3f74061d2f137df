//! Binary encoding of [`Op`]s as log record payloads.
//!
//! One operation is one record, so everything an append changes — data,
//! producer state, `Stream-Seq`, closure — is written, checksummed and
//! recovered as a unit. Layout (all integers little-endian; `str16` is a
//! `u16` length then UTF-8 bytes, `bytes32` a `u32` length then bytes):
//!
//! ```text
//! op      := u8 kind, body
//! kind 1  Create    := bytes32 meta_json, commit
//! kind 2  Append    := u64 id, u64 start, u8 json, commit
//! kind 3  Delete    := u64 id
//! kind 4  KvPut     := str16 key, u64 version, bytes32 value
//! kind 5  KvDelete  := str16 key
//! kind 6  Relocate  := u64 id, u64 start, u8 json, u64 old_last_lsn,
//!                      u64 first_prev_lsn, u32 n, n × bytes32 entry
//! kind 7  Compacted := u64 segment
//! commit  := u8 flags (1 close, 2 producer, 4 closed_by, 8 stream_seq),
//!            [str16 producer_id, u64 epoch, u64 last_seq],
//!            [str16 closer_id, u64 epoch, u64 seq],
//!            [str16 stream_seq],
//!            u32 n, n × bytes32 entry
//! ```
//!
//! `StreamMeta` is JSON because it is written once per stream and must stay
//! readable across format versions; hot-path records are fixed binary.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use weir_core::ProducerState;
use weir_core::append::Commit;
use weir_core::producer::ProducerHeaders;
use weir_core::state::StreamMeta;

use crate::backend::Op;

/// Record kinds (also the engine record's `kind` byte).
pub mod kind {
    pub const CREATE: u8 = 1;
    pub const APPEND: u8 = 2;
    pub const DELETE: u8 = 3;
    pub const KV_PUT: u8 = 4;
    pub const KV_DELETE: u8 = 5;
    /// Data moved out of a segment by compaction (not an [`Op`]).
    pub const RELOCATE: u8 = 6;
    /// Every live record of a segment has been relocated.
    pub const COMPACTED: u8 = 7;
}

/// A relocate record: a run of one stream's data, copied by compaction
/// from an older segment. `old_last` is the position of the run's last
/// original record, which the stream's next record points back at;
/// `first_prev` the back pointer of its first original record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relocate {
    pub id: u64,
    pub start: u64,
    pub json: bool,
    pub old_last: u64,
    pub first_prev: u64,
    pub entries: Vec<Bytes>,
}

/// Encodes a relocate record payload.
pub fn encode_relocate(r: &Relocate) -> Bytes {
    let data: usize = r.entries.iter().map(|e| e.len() + 4).sum();
    let mut b = BytesMut::with_capacity(40 + data);
    b.put_u8(kind::RELOCATE);
    b.put_u64_le(r.id);
    b.put_u64_le(r.start);
    b.put_u8(u8::from(r.json));
    b.put_u64_le(r.old_last);
    b.put_u64_le(r.first_prev);
    b.put_u32_le(u32::try_from(r.entries.len()).unwrap_or(u32::MAX));
    for e in &r.entries {
        put_bytes32(&mut b, e);
    }
    b.freeze()
}

/// Decodes a relocate record payload.
pub fn decode_relocate(payload: &Bytes) -> Result<Relocate, DecodeError> {
    let mut r = Reader {
        buf: payload.clone(),
    };
    if r.u8()? != kind::RELOCATE {
        return Err(DecodeError("not a relocate record"));
    }
    let id = r.u64()?;
    let start = r.u64()?;
    let json = r.u8()? != 0;
    let old_last = r.u64()?;
    let first_prev = r.u64()?;
    r.need(4)?;
    let n = r.buf.get_u32_le() as usize;
    if n > r.buf.remaining() / 4 + 1 {
        return Err(DecodeError("entry count exceeds record"));
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(r.bytes32()?);
    }
    if r.buf.has_remaining() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(Relocate {
        id,
        start,
        json,
        old_last,
        first_prev,
        entries,
    })
}

/// Encodes a compacted-segment marker payload.
pub fn encode_compacted(segment: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(9);
    b.put_u8(kind::COMPACTED);
    b.put_u64_le(segment);
    b.freeze()
}

/// Decodes a compacted-segment marker payload.
pub fn decode_compacted(payload: &Bytes) -> Result<u64, DecodeError> {
    let mut r = Reader {
        buf: payload.clone(),
    };
    if r.u8()? != kind::COMPACTED {
        return Err(DecodeError("not a compacted marker"));
    }
    let seg = r.u64()?;
    if r.buf.has_remaining() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(seg)
}

/// What a record payload (of any kind) means. Short-lived (one per record
/// read), so the size difference between variants does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Record {
    Op(Op),
    Relocate(Relocate),
    Compacted(u64),
}

/// Decodes any record payload.
pub fn decode_record(payload: &Bytes) -> Result<Record, DecodeError> {
    match payload.first() {
        Some(&kind::RELOCATE) => decode_relocate(payload).map(Record::Relocate),
        Some(&kind::COMPACTED) => decode_compacted(payload).map(Record::Compacted),
        _ => decode(payload).map(Record::Op),
    }
}

/// The data a record adds to its stream: (stream id, start, json, entries).
/// `None` for records without data.
pub fn record_data(rec: &Record) -> Option<(u64, u64, bool, &[Bytes])> {
    match rec {
        Record::Op(Op::Create { meta, commit }) if !commit.entries.is_empty() => Some((
            meta.id,
            meta.own_start(),
            meta.content_type.is_json(),
            &commit.entries,
        )),
        Record::Op(Op::Append {
            id,
            start,
            json,
            commit,
        }) if !commit.entries.is_empty() => Some((*id, *start, *json, &commit.entries)),
        Record::Relocate(r) if !r.entries.is_empty() => Some((r.id, r.start, r.json, &r.entries)),
        _ => None,
    }
}

/// A payload that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable operation record: {0}")]
pub struct DecodeError(pub &'static str);

const F_CLOSE: u8 = 1;
const F_PRODUCER: u8 = 2;
const F_CLOSED_BY: u8 = 4;
const F_SEQ: u8 = 8;

/// The record kind and stream id (0 for kv ops) an op is filed under.
pub fn kind_and_key(op: &Op) -> (u8, u64) {
    match op {
        Op::Create { meta, .. } => (kind::CREATE, meta.id),
        Op::Append { id, .. } => (kind::APPEND, *id),
        Op::Delete { id } => (kind::DELETE, *id),
        Op::KvPut { .. } => (kind::KV_PUT, 0),
        Op::KvDelete { .. } => (kind::KV_DELETE, 0),
    }
}

/// Encodes an op.
pub fn encode(op: &Op) -> Bytes {
    let mut b = BytesMut::with_capacity(encoded_len_hint(op));
    encode_into(op, &mut b);
    b.freeze()
}

/// About how many bytes [`encode`] writes for `op` (a capacity hint).
pub fn encoded_len_hint(op: &Op) -> usize {
    64 + op_data_len(op)
}

/// Encodes an op at the end of `b` (the log frames it in place).
pub fn encode_into(op: &Op, b: &mut impl BufMut) {
    let b = &mut *b;
    match op {
        Op::Create { meta, commit } => {
            b.put_u8(kind::CREATE);
            let json = serde_json::to_vec(meta).unwrap_or_default();
            put_bytes32(b, &json);
            put_commit(b, commit);
        }
        Op::Append {
            id,
            start,
            json,
            commit,
        } => {
            b.put_u8(kind::APPEND);
            b.put_u64_le(*id);
            b.put_u64_le(*start);
            b.put_u8(u8::from(*json));
            put_commit(b, commit);
        }
        Op::Delete { id } => {
            b.put_u8(kind::DELETE);
            b.put_u64_le(*id);
        }
        Op::KvPut {
            key,
            value,
            version,
        } => {
            b.put_u8(kind::KV_PUT);
            put_str16(b, key);
            b.put_u64_le(*version);
            put_bytes32(b, value);
        }
        Op::KvDelete { key } => {
            b.put_u8(kind::KV_DELETE);
            put_str16(b, key);
        }
    }
}

fn op_data_len(op: &Op) -> usize {
    match op {
        Op::Create { commit, .. } | Op::Append { commit, .. } => {
            commit.entries.iter().map(|e| e.len() + 4).sum()
        }
        Op::KvPut { value, .. } => value.len(),
        _ => 0,
    }
}

/// Decodes an op. Entries are zero-copy slices of `payload`.
pub fn decode(payload: &Bytes) -> Result<Op, DecodeError> {
    let mut r = Reader {
        buf: payload.clone(),
    };
    let op = match r.u8()? {
        kind::CREATE => {
            let json = r.bytes32()?;
            let meta: StreamMeta =
                serde_json::from_slice(&json).map_err(|_| DecodeError("stream meta"))?;
            let commit = r.commit()?;
            Op::Create { meta, commit }
        }
        kind::APPEND => {
            let id = r.u64()?;
            let start = r.u64()?;
            let json = r.u8()? != 0;
            let commit = r.commit()?;
            Op::Append {
                id,
                start,
                json,
                commit,
            }
        }
        kind::DELETE => Op::Delete { id: r.u64()? },
        kind::KV_PUT => {
            let key = r.str16()?;
            let version = r.u64()?;
            let value = r.bytes32()?;
            Op::KvPut {
                key,
                value,
                version,
            }
        }
        kind::KV_DELETE => Op::KvDelete { key: r.str16()? },
        _ => return Err(DecodeError("unknown kind")),
    };
    if r.buf.has_remaining() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(op)
}

fn put_str16(b: &mut impl BufMut, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    b.put_u16_le(len);
    b.put_slice(&s.as_bytes()[..usize::from(len)]);
}

fn put_bytes32(b: &mut impl BufMut, v: &[u8]) {
    let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
    b.put_u32_le(len);
    b.put_slice(&v[..len as usize]);
}

fn put_commit(b: &mut impl BufMut, c: &Commit) {
    let mut flags = 0;
    if c.close {
        flags |= F_CLOSE;
    }
    if c.producer.is_some() {
        flags |= F_PRODUCER;
    }
    if c.closed_by.is_some() {
        flags |= F_CLOSED_BY;
    }
    if c.stream_seq.is_some() {
        flags |= F_SEQ;
    }
    b.put_u8(flags);
    if let Some((id, p)) = &c.producer {
        put_str16(b, id);
        b.put_u64_le(p.epoch);
        b.put_u64_le(p.last_seq);
    }
    if let Some(h) = &c.closed_by {
        put_str16(b, &h.id);
        b.put_u64_le(h.epoch);
        b.put_u64_le(h.seq);
    }
    if let Some(s) = &c.stream_seq {
        put_str16(b, s);
    }
    b.put_u32_le(u32::try_from(c.entries.len()).unwrap_or(u32::MAX));
    for e in &c.entries {
        put_bytes32(b, e);
    }
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError("truncated"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64_le())
    }
    fn str16(&mut self) -> Result<String, DecodeError> {
        self.need(2)?;
        let n = usize::from(self.buf.get_u16_le());
        self.need(n)?;
        let raw = self.buf.split_to(n);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError("string is not UTF-8"))
    }
    fn bytes32(&mut self) -> Result<Bytes, DecodeError> {
        self.need(4)?;
        let n = self.buf.get_u32_le() as usize;
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn commit(&mut self) -> Result<Commit, DecodeError> {
        let flags = self.u8()?;
        let producer = if flags & F_PRODUCER != 0 {
            let id = self.str16()?;
            let epoch = self.u64()?;
            let last_seq = self.u64()?;
            Some((id, ProducerState { epoch, last_seq }))
        } else {
            None
        };
        let closed_by = if flags & F_CLOSED_BY != 0 {
            let id = self.str16()?;
            let epoch = self.u64()?;
            let seq = self.u64()?;
            Some(ProducerHeaders { id, epoch, seq })
        } else {
            None
        };
        let stream_seq = if flags & F_SEQ != 0 {
            Some(self.str16()?)
        } else {
            None
        };
        self.need(4)?;
        let n = self.buf.get_u32_le() as usize;
        // Each entry needs at least its 4-byte length: bound the allocation.
        if n > self.buf.remaining() / 4 + 1 {
            return Err(DecodeError("entry count exceeds record"));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(self.bytes32()?);
        }
        Ok(Commit {
            entries,
            close: flags & F_CLOSE != 0,
            producer,
            closed_by,
            stream_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use weir_core::{ContentType, Expiry, StreamName};

    fn arb_commit() -> impl Strategy<Value = Commit> {
        (
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..5),
            any::<bool>(),
            proptest::option::of(("[a-z]{1,8}", any::<u64>(), any::<u64>())),
            proptest::option::of(("[a-z]{1,8}", any::<u64>(), any::<u64>())),
            proptest::option::of("[0-9]{1,6}"),
        )
            .prop_map(|(entries, close, p, cb, seq)| Commit {
                entries: entries.into_iter().map(Bytes::from).collect(),
                close,
                producer: p.map(|(id, epoch, last_seq)| (id, ProducerState { epoch, last_seq })),
                closed_by: cb.map(|(id, epoch, seq)| ProducerHeaders { id, epoch, seq }),
                stream_seq: seq,
            })
    }

    fn meta(id: u64) -> StreamMeta {
        StreamMeta {
            id,
            name: StreamName::new("a/b").unwrap(),
            content_type: ContentType::parse("application/json").unwrap(),
            expiry: Expiry::Ttl { secs: 5 },
            fork: None,
            lineage: StreamMeta::root_lineage(id),
            created_at_ms: 7,
        }
    }

    fn same(a: &Op, b: &Op) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    proptest! {
        #[test]
        fn roundtrip(c in arb_commit(), id in any::<u64>(), start in any::<u64>(), json in any::<bool>(), key in "[a-z/]{1,12}", val in proptest::collection::vec(any::<u8>(), 0..16)) {
            for op in [
                Op::Create { meta: meta(id), commit: c.clone() },
                Op::Append { id, start, json, commit: c.clone() },
                Op::Delete { id },
                Op::KvPut { key: key.clone(), value: Bytes::from(val.clone()), version: start },
                Op::KvDelete { key: key.clone() },
            ] {
                let enc = encode(&op);
                let dec = decode(&enc).unwrap();
                prop_assert!(same(&op, &dec), "{op:?} != {dec:?}");
            }
        }

        #[test]
        fn relocate_roundtrip(id in any::<u64>(), start in any::<u64>(), json in any::<bool>(), old_last in any::<u64>(), first_prev in any::<u64>(), entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..5), seg in any::<u64>()) {
            let r = Relocate { id, start, json, old_last, first_prev, entries: entries.into_iter().map(Bytes::from).collect() };
            prop_assert_eq!(decode_relocate(&encode_relocate(&r)).unwrap(), r.clone());
            prop_assert!(matches!(decode_record(&encode_relocate(&r)).unwrap(), Record::Relocate(x) if x == r));
            prop_assert_eq!(decode_compacted(&encode_compacted(seg)).unwrap(), seg);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&Bytes::from(b.clone()));
            let _ = decode_record(&Bytes::from(b));
        }

        #[test]
        fn truncation_is_detected(c in arb_commit(), cut in 1usize..40) {
            let enc = encode(&Op::Append { id: 1, start: 2, json: false, commit: c });
            if cut < enc.len() {
                prop_assert!(decode(&enc.slice(..enc.len() - cut)).is_err());
            }
        }
    }
}
