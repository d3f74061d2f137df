//! Idempotent producers (PROTOCOL.md §5.2.1): Kafka-style `(id, epoch, seq)`
//! deduplication and zombie fencing.
//!
//! The state machine here is the whole of the protocol's validation logic.
//! Storage backends call [`ProducerState::check`] while they hold the
//! stream's write lock and persist the resulting state *in the same record*
//! as the data it admits, so a crash can never separate the two.

use serde::{Deserialize, Serialize};

/// Largest epoch/seq value: 2^53-1, so JavaScript clients can hold it exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Longest accepted `Producer-Id`, in bytes.
pub const MAX_PRODUCER_ID_LEN: usize = 256;

/// The three producer headers of one append, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerHeaders {
    pub id: String,
    pub epoch: u64,
    pub seq: u64,
}

/// Why producer headers were refused (all map to `400 Bad Request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerHeaderError {
    #[error("Producer-Id, Producer-Epoch and Producer-Seq must be sent together")]
    Partial,
    #[error("Producer-Id must be a non-empty string of at most {MAX_PRODUCER_ID_LEN} bytes")]
    BadId,
    #[error("Producer-Epoch must be a decimal integer between 0 and 2^53-1")]
    BadEpoch,
    #[error("Producer-Seq must be a decimal integer between 0 and 2^53-1")]
    BadSeq,
}

impl ProducerHeaders {
    /// Validates the raw header values (`None` = header absent).
    pub fn from_headers(
        id: Option<&str>,
        epoch: Option<&str>,
        seq: Option<&str>,
    ) -> Result<Option<ProducerHeaders>, ProducerHeaderError> {
        match (id, epoch, seq) {
            (None, None, None) => Ok(None),
            (Some(id), Some(epoch), Some(seq)) => {
                if id.is_empty()
                    || id.len() > MAX_PRODUCER_ID_LEN
                    || id.chars().any(char::is_control)
                {
                    return Err(ProducerHeaderError::BadId);
                }
                let epoch = parse_safe_int(epoch).ok_or(ProducerHeaderError::BadEpoch)?;
                let seq = parse_safe_int(seq).ok_or(ProducerHeaderError::BadSeq)?;
                Ok(Some(ProducerHeaders {
                    id: id.to_owned(),
                    epoch,
                    seq,
                }))
            }
            _ => Err(ProducerHeaderError::Partial),
        }
    }
}

/// Parses a non-negative decimal integer ≤ 2^53-1 (digits only).
pub fn parse_safe_int(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = s.parse().ok()?;
    (v <= MAX_SAFE_INTEGER).then_some(v)
}

/// What the server remembers about one producer of one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    pub epoch: u64,
    pub last_seq: u64,
}

/// The verdict on one append's producer headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerCheck {
    /// New data: append it, then store `next` as the producer's state.
    Accept { next: ProducerState },
    /// Already applied: answer `204` with the highest accepted seq.
    Duplicate { current: ProducerState },
    /// A newer epoch owns this producer id: `403` with the current epoch.
    StaleEpoch { current_epoch: u64 },
    /// A new epoch must start at seq 0: `400`.
    EpochSeqNotZero,
    /// Requests are missing in between: `409` with expected/received.
    Gap { expected: u64, received: u64 },
}

impl ProducerState {
    /// Applies PROTOCOL.md §5.2.1's validation logic. `state` is `None` for a
    /// producer id this stream has never seen.
    pub fn check(state: Option<ProducerState>, h: &ProducerHeaders) -> ProducerCheck {
        let Some(s) = state else {
            // A producer the stream does not know must bootstrap at seq 0
            // (in any epoch: that is how auto-claim works after state expiry).
            return if h.seq == 0 {
                ProducerCheck::Accept {
                    next: ProducerState {
                        epoch: h.epoch,
                        last_seq: 0,
                    },
                }
            } else {
                ProducerCheck::Gap {
                    expected: 0,
                    received: h.seq,
                }
            };
        };
        if h.epoch < s.epoch {
            return ProducerCheck::StaleEpoch {
                current_epoch: s.epoch,
            };
        }
        if h.epoch > s.epoch {
            return if h.seq == 0 {
                ProducerCheck::Accept {
                    next: ProducerState {
                        epoch: h.epoch,
                        last_seq: 0,
                    },
                }
            } else {
                ProducerCheck::EpochSeqNotZero
            };
        }
        if h.seq <= s.last_seq {
            ProducerCheck::Duplicate { current: s }
        } else if h.seq == s.last_seq + 1 {
            ProducerCheck::Accept {
                next: ProducerState {
                    epoch: s.epoch,
                    last_seq: h.seq,
                },
            }
        } else {
            ProducerCheck::Gap {
                expected: s.last_seq + 1,
                received: h.seq,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(epoch: u64, seq: u64) -> ProducerHeaders {
        ProducerHeaders {
            id: "p".into(),
            epoch,
            seq,
        }
    }

    #[test]
    fn header_parsing() {
        assert_eq!(ProducerHeaders::from_headers(None, None, None), Ok(None));
        assert_eq!(
            ProducerHeaders::from_headers(Some("p"), Some("0"), None),
            Err(ProducerHeaderError::Partial)
        );
        assert_eq!(
            ProducerHeaders::from_headers(Some(""), Some("0"), Some("0")),
            Err(ProducerHeaderError::BadId)
        );
        for bad in [
            "1abc",
            "0xyz",
            "1e3",
            "-1",
            "",
            " 1",
            "9007199254740992",
            "+1",
        ] {
            assert_eq!(
                ProducerHeaders::from_headers(Some("p"), Some(bad), Some("0")),
                Err(ProducerHeaderError::BadEpoch),
                "{bad}"
            );
        }
        assert_eq!(
            ProducerHeaders::from_headers(Some("p"), Some("9007199254740991"), Some("0"))
                .unwrap()
                .unwrap()
                .epoch,
            MAX_SAFE_INTEGER
        );
    }

    #[test]
    fn protocol_table() {
        let s = Some(ProducerState {
            epoch: 1,
            last_seq: 5,
        });
        assert_eq!(
            ProducerState::check(s, &h(0, 9)),
            ProducerCheck::StaleEpoch { current_epoch: 1 }
        );
        assert_eq!(
            ProducerState::check(s, &h(2, 1)),
            ProducerCheck::EpochSeqNotZero
        );
        assert!(
            matches!(ProducerState::check(s, &h(2, 0)), ProducerCheck::Accept { next } if next == ProducerState { epoch: 2, last_seq: 0 })
        );
        assert!(matches!(
            ProducerState::check(s, &h(1, 5)),
            ProducerCheck::Duplicate { .. }
        ));
        assert!(matches!(
            ProducerState::check(s, &h(1, 0)),
            ProducerCheck::Duplicate { .. }
        ));
        assert!(matches!(
            ProducerState::check(s, &h(1, 6)),
            ProducerCheck::Accept { .. }
        ));
        assert_eq!(
            ProducerState::check(s, &h(1, 8)),
            ProducerCheck::Gap {
                expected: 6,
                received: 8
            }
        );
        assert!(matches!(
            ProducerState::check(None, &h(7, 0)),
            ProducerCheck::Accept { .. }
        ));
        assert_eq!(
            ProducerState::check(None, &h(0, 3)),
            ProducerCheck::Gap {
                expected: 0,
                received: 3
            }
        );
    }

    proptest! {
        /// Replaying any prefix of an accepted sequence is always a duplicate
        /// and never changes state; the state only moves forward.
        #[test]
        fn retries_never_reapply(ops in proptest::collection::vec((0u64..3, 0u64..6), 1..40)) {
            let mut state: Option<ProducerState> = None;
            for (epoch, seq) in ops {
                let before = state;
                match ProducerState::check(state, &h(epoch, seq)) {
                    ProducerCheck::Accept { next } => {
                        if let Some(b) = before {
                            prop_assert!((next.epoch, next.last_seq) > (b.epoch, b.last_seq) || next.epoch > b.epoch);
                        }
                        state = Some(next);
                        // The same request again is a duplicate.
                        prop_assert!(
                            matches!(ProducerState::check(state, &h(epoch, seq)), ProducerCheck::Duplicate { .. }),
                            "retry of accepted request was not a duplicate"
                        );
                    }
                    _ => prop_assert_eq!(state, before),
                }
            }
        }
    }
}
