//! Record framing. Every record is a 32-byte header followed by its payload,
//! padded to 8 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `0x5752` ("WR") |
//! | 2 | 1 | format version (1) |
//! | 3 | 1 | kind (0xFF = segment end) |
//! | 4 | 4 | payload length |
//! | 8 | 8 | key (stream id; 0 for metadata records) |
//! | 16 | 8 | previous record of the same key (LSN, `u64::MAX` for none) |
//! | 24 | 4 | CRC-32 of the payload |
//! | 28 | 4 | CRC-32 of bytes 0..28 |
//!
//! Both CRCs are checked: a valid header over a zeroed or torn payload is
//! caught by the payload CRC, a torn header by the header CRC. An all-zero
//! header is the clean end of the written part of a preallocated segment.

/// Header length.
pub const HEADER: usize = 32;
/// Magic number of every record.
pub const MAGIC: u16 = 0x5752;
/// Current record format version.
pub const VERSION: u8 = 1;
/// Kind of the record that ends a segment: reading continues in the next.
pub const KIND_SEGMENT_END: u8 = 0xFF;
/// "No previous record" marker.
pub const NO_PREV: u64 = u64::MAX;

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub len: u32,
    pub key: u64,
    pub prev: u64,
    pub payload_crc: u32,
}

/// What a header slot holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// Never written: the end of the log.
    Zero,
    /// A valid header.
    Valid(Header),
    /// Garbage or a torn write.
    Corrupt(&'static str),
}

/// Bytes a record with `len` payload bytes occupies.
pub fn frame_len(len: usize) -> usize {
    (HEADER + len + 7) & !7
}

/// Encodes a record frame (header, payload, padding).
pub fn encode(kind: u8, key: u64, prev: u64, payload: &[u8]) -> Vec<u8> {
    encode_with(kind, key, prev, payload.len(), |out| {
        out.extend_from_slice(payload);
    })
}

/// Encodes a record frame whose payload `fill` appends to the buffer (so
/// the payload is written once, in place); `hint` is its expected length.
pub fn encode_with(
    kind: u8,
    key: u64,
    prev: u64,
    hint: usize,
    fill: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut out = unsealed(hint, fill);
    seal(&mut out, kind, key, prev);
    out
}

/// A frame buffer with room for the header and the payload `fill` appends,
/// to be finished by [`seal`].
pub fn unsealed(hint: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_len(hint));
    out.resize(HEADER, 0);
    fill(&mut out);
    out
}

/// Writes the header of a frame from [`unsealed`] (the payload is
/// everything after the header) and pads it.
pub fn seal(out: &mut Vec<u8>, kind: u8, key: u64, prev: u64) {
    let len = out.len().saturating_sub(HEADER);
    let mut h = [0u8; HEADER];
    h[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    h[2] = VERSION;
    h[3] = kind;
    h[4..8].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    h[8..16].copy_from_slice(&key.to_le_bytes());
    h[16..24].copy_from_slice(&prev.to_le_bytes());
    h[24..28].copy_from_slice(&crc32fast::hash(out.get(HEADER..).unwrap_or(&[])).to_le_bytes());
    let hcrc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&hcrc.to_le_bytes());
    if let Some(head) = out.get_mut(..HEADER) {
        head.copy_from_slice(&h);
    }
    out.resize(frame_len(len), 0);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes a header slot.
pub fn decode_header(b: &[u8; HEADER]) -> Slot {
    if b.iter().all(|&x| x == 0) {
        return Slot::Zero;
    }
    if u16::from_le_bytes([b[0], b[1]]) != MAGIC {
        return Slot::Corrupt("bad magic");
    }
    if crc32fast::hash(&b[..28]) != u32_at(b, 28) {
        return Slot::Corrupt("header checksum mismatch");
    }
    if b[2] != VERSION {
        return Slot::Corrupt("unknown record version");
    }
    Slot::Valid(Header {
        kind: b[3],
        len: u32_at(b, 4),
        key: u64_at(b, 8),
        prev: u64_at(b, 16),
        payload_crc: u32_at(b, 24),
    })
}

/// Whether a payload matches its header's checksum.
pub fn payload_ok(h: &Header, payload: &[u8]) -> bool {
    payload.len() == h.len as usize && crc32fast::hash(payload) == h.payload_crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(kind in 0u8..255, key in any::<u64>(), prev in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let f = encode(kind, key, prev, &payload);
            prop_assert_eq!(f.len() % 8, 0);
            let h: [u8; HEADER] = f[..HEADER].try_into().unwrap();
            let Slot::Valid(h) = decode_header(&h) else { panic!("not valid") };
            prop_assert_eq!((h.kind, h.key, h.prev, h.len as usize), (kind, key, prev, payload.len()));
            prop_assert!(payload_ok(&h, &f[HEADER..HEADER + payload.len()]));
        }

        #[test]
        fn any_flipped_header_byte_is_caught(pos in 0usize..HEADER, bit in 0u8..8) {
            let mut f = encode(1, 2, 3, b"payload");
            f[pos] ^= 1 << bit;
            let h: [u8; HEADER] = f[..HEADER].try_into().unwrap();
            prop_assert!(!matches!(decode_header(&h), Slot::Valid(_)));
        }
    }

    #[test]
    fn zeroed_payload_under_valid_header_is_caught() {
        let f = encode(1, 2, 3, b"important");
        let h: [u8; HEADER] = f[..HEADER].try_into().unwrap();
        let Slot::Valid(h) = decode_header(&h) else {
            panic!()
        };
        assert!(!payload_ok(&h, &[0u8; 9]));
        assert_eq!(decode_header(&[0u8; HEADER]), Slot::Zero);
    }
}
