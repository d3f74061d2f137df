//! Chunks: the unit of stored data. One append (or initial body) is one
//! chunk: a run of bytes for binary/text streams, a list of messages for
//! JSON streams. Chunks never span appends, so a chunk's end is the "next
//! data boundary" that fork sub-offsets may not pass.

use bytes::Bytes;
use weir_core::fork::Remaining;

/// A chunk's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkBody {
    Bytes(Bytes),
    Messages(Vec<Bytes>),
}

/// One append's data at its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub start: u64,
    pub body: ChunkBody,
}

impl ChunkBody {
    /// Builds the body for a stream's framing from a commit's entries.
    pub fn from_entries(json: bool, entries: &[Bytes]) -> Option<ChunkBody> {
        if entries.is_empty() {
            None
        } else if json {
            Some(ChunkBody::Messages(entries.to_vec()))
        } else if entries.len() == 1 {
            Some(ChunkBody::Bytes(entries[0].clone()))
        } else {
            Some(ChunkBody::Bytes(Bytes::from(entries.concat())))
        }
    }

    /// The same data in one right-sized allocation. Request bodies arrive as
    /// slices of the connection's read buffer; keeping such a slice would pin
    /// the whole buffer (kilobytes) for every 100-byte append.
    pub fn compact(&self) -> ChunkBody {
        match self {
            ChunkBody::Bytes(b) => ChunkBody::Bytes(Bytes::copy_from_slice(b)),
            ChunkBody::Messages(ms) => {
                let all = Bytes::from(ms.concat());
                let mut at = 0;
                ChunkBody::Messages(
                    ms.iter()
                        .map(|m| {
                            let s = all.slice(at..at + m.len());
                            at += m.len();
                            s
                        })
                        .collect(),
                )
            }
        }
    }

    /// Bytes in the body.
    pub fn len(&self) -> u64 {
        match self {
            ChunkBody::Bytes(b) => b.len() as u64,
            ChunkBody::Messages(m) => m.iter().map(|b| b.len() as u64).sum(),
        }
    }

    /// Whether the body holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Chunk {
    pub fn len(&self) -> u64 {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    pub fn end(&self) -> u64 {
        self.start + self.len()
    }

    /// Appends to `out` the data of this chunk from `pos` up to `end`
    /// (exclusive), spending `budget`; at least one piece is taken when
    /// `out` is empty. Returns the position reached.
    pub fn collect(&self, mut pos: u64, end: u64, budget: &mut usize, out: &mut Vec<Bytes>) -> u64 {
        let end = end.min(self.end());
        if pos < self.start || pos >= end {
            return pos;
        }
        match &self.body {
            ChunkBody::Bytes(b) => {
                if *budget == 0 && !out.is_empty() {
                    return pos;
                }
                let from = usize::try_from(pos - self.start).unwrap_or(usize::MAX);
                let to = usize::try_from(end - self.start).unwrap_or(usize::MAX);
                let take = (to - from).min((*budget).max(1));
                out.push(b.slice(from..from + take));
                *budget = budget.saturating_sub(take);
                pos + take as u64
            }
            ChunkBody::Messages(ms) => {
                let mut at = self.start;
                for m in ms {
                    let l = m.len() as u64;
                    if at >= pos && at + l <= end {
                        if m.len() > *budget && !out.is_empty() {
                            return pos;
                        }
                        out.push(m.clone());
                        *budget = budget.saturating_sub(m.len());
                        pos = at + l;
                    }
                    at += l;
                }
                pos
            }
        }
    }

    /// What follows `pos` in this chunk, up to `end`.
    pub fn remaining_after(&self, pos: u64, end: u64) -> Remaining {
        let end = end.min(self.end());
        if pos < self.start || pos >= end {
            return Remaining::Nothing;
        }
        match &self.body {
            ChunkBody::Bytes(_) => Remaining::Bytes(end - pos),
            ChunkBody::Messages(ms) => {
                let mut at = self.start;
                let mut lens = Vec::new();
                for m in ms {
                    let l = m.len() as u64;
                    if at >= pos && at + l <= end {
                        lens.push(l);
                    }
                    at += l;
                }
                Remaining::Messages(lens)
            }
        }
    }

    /// Whether `pos` is a message boundary (always true for byte chunks).
    pub fn is_boundary(&self, pos: u64) -> bool {
        match &self.body {
            ChunkBody::Bytes(_) => true,
            ChunkBody::Messages(ms) => {
                let mut at = self.start;
                for m in ms {
                    if at == pos {
                        return true;
                    }
                    at += m.len() as u64;
                }
                at == pos
            }
        }
    }
}

/// The chunks of a position-ordered run that overlap `[pos, end)`, in
/// order, enough to cover `budget` bytes (at least one when any overlaps).
/// `chunks` must start with the first chunk ending after `pos`.
pub fn covering<'a>(
    chunks: impl IntoIterator<Item = &'a Chunk>,
    pos: u64,
    end: u64,
    budget: usize,
) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut covered = 0u64;
    for c in chunks {
        if c.start >= end || (covered >= budget as u64 && !out.is_empty()) {
            break;
        }
        covered += c.end().min(end) - c.start.max(pos);
        out.push(c.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chunk_slices() {
        let c = Chunk {
            start: 10,
            body: ChunkBody::Bytes(Bytes::from_static(b"abcdef")),
        };
        let mut out = Vec::new();
        let mut budget = 3;
        assert_eq!(c.collect(11, 100, &mut budget, &mut out), 14);
        assert_eq!(out, vec![Bytes::from_static(b"bcd")]);
        assert_eq!(c.remaining_after(12, 15), Remaining::Bytes(3));
        assert_eq!(c.remaining_after(16, 100), Remaining::Nothing);
    }

    #[test]
    fn message_chunk_keeps_boundaries() {
        let c = Chunk {
            start: 0,
            body: ChunkBody::Messages(vec![
                Bytes::from_static(b"1"),
                Bytes::from_static(b"22"),
                Bytes::from_static(b"333"),
            ]),
        };
        let mut out = Vec::new();
        let mut budget = 1;
        assert_eq!(c.collect(0, 100, &mut budget, &mut out), 1);
        let mut budget = 1;
        assert_eq!(
            c.collect(1, 100, &mut budget, &mut out),
            1,
            "budget spent, nothing more taken"
        );
        assert!(c.is_boundary(3) && !c.is_boundary(2) && c.is_boundary(6));
        assert_eq!(c.remaining_after(1, 6), Remaining::Messages(vec![2, 3]));
        assert_eq!(c.remaining_after(1, 3), Remaining::Messages(vec![2]));
    }
}
