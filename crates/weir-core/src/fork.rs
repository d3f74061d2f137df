//! Fork arithmetic: resolving `Stream-Fork-Offset` + `Stream-Fork-Sub-Offset`
//! to a divergence position.
//!
//! The sub-offset counts, past the anchor offset, decoded bytes (binary and
//! text streams) or flattened messages (JSON streams), and may not go past
//! the next data boundary — the end of the append ("chunk") that starts at
//! the anchor, as the source stream sees it.

use crate::producer::parse_safe_int;

/// Why a fork point was refused (all `400 Bad Request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForkError {
    #[error("Stream-Fork-Sub-Offset must be a non-negative decimal integer")]
    BadSubOffset,
    #[error("Stream-Fork-Sub-Offset goes past the next data boundary")]
    SubOffsetOvershoot,
    #[error("Stream-Fork-Offset is beyond the source stream's tail")]
    BeyondTail,
    #[error("Stream-Fork-Offset is not an offset of the source stream")]
    ForeignOffset,
    #[error("fork headers require Stream-Forked-From")]
    NotAFork,
    #[error("a non-zero Stream-Fork-Sub-Offset requires Stream-Fork-Offset")]
    SubOffsetWithoutOffset,
    #[error("Stream-Forked-From must name a stream path on this server")]
    BadSource,
}

/// What follows the anchor, up to the next data boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remaining {
    /// Nothing: the anchor is the source's tail.
    Nothing,
    /// A byte chunk with this many bytes left.
    Bytes(u64),
    /// A JSON batch with these message lengths left.
    Messages(Vec<u64>),
}

/// Parses `Stream-Fork-Sub-Offset`.
pub fn parse_sub_offset(s: &str) -> Result<u64, ForkError> {
    parse_safe_int(s).ok_or(ForkError::BadSubOffset)
}

/// The divergence position for `sub` units past `anchor`.
pub fn resolve(anchor: u64, sub: u64, remaining: &Remaining) -> Result<u64, ForkError> {
    if sub == 0 {
        return Ok(anchor);
    }
    match remaining {
        Remaining::Nothing => Err(ForkError::SubOffsetOvershoot),
        Remaining::Bytes(n) if sub <= *n => Ok(anchor + sub),
        Remaining::Bytes(_) => Err(ForkError::SubOffsetOvershoot),
        Remaining::Messages(lens) => {
            let k = usize::try_from(sub).map_err(|_| ForkError::SubOffsetOvershoot)?;
            if k > lens.len() {
                return Err(ForkError::SubOffsetOvershoot);
            }
            Ok(anchor + lens[..k].iter().sum::<u64>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resolves() {
        assert_eq!(resolve(10, 0, &Remaining::Nothing), Ok(10));
        assert_eq!(
            resolve(10, 1, &Remaining::Nothing),
            Err(ForkError::SubOffsetOvershoot)
        );
        assert_eq!(resolve(10, 4, &Remaining::Bytes(4)), Ok(14));
        assert_eq!(
            resolve(10, 5, &Remaining::Bytes(4)),
            Err(ForkError::SubOffsetOvershoot)
        );
        assert_eq!(resolve(10, 2, &Remaining::Messages(vec![3, 4, 5])), Ok(17));
        assert_eq!(resolve(10, 3, &Remaining::Messages(vec![3, 4, 5])), Ok(22));
        assert_eq!(
            resolve(10, 4, &Remaining::Messages(vec![3, 4, 5])),
            Err(ForkError::SubOffsetOvershoot)
        );
        assert_eq!(parse_sub_offset("-1"), Err(ForkError::BadSubOffset));
        assert_eq!(parse_sub_offset("abc"), Err(ForkError::BadSubOffset));
        assert_eq!(parse_sub_offset("1.5"), Err(ForkError::BadSubOffset));
    }

    proptest! {
        #[test]
        fn never_past_boundary(anchor in 0u64..1000, sub in 0u64..20, lens in proptest::collection::vec(1u64..10, 0..10)) {
            let total: u64 = lens.iter().sum();
            if let Ok(p) = resolve(anchor, sub, &Remaining::Messages(lens.clone())) {
                prop_assert!(p >= anchor && p <= anchor + total);
            }
            if let Ok(p) = resolve(anchor, sub, &Remaining::Bytes(total)) {
                prop_assert!(p >= anchor && p <= anchor + total);
            }
        }
    }
}
