//! Query-string parsing for reads. Strict on the protocol's parameters
//! (an empty or repeated `offset`, an unknown `live` mode: `400`), lenient on
//! everything else (unknown parameters are ignored, as the spec requires).

use weir_core::offset::ReadFrom;

use crate::error::ApiError;

/// Live mode of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    No,
    LongPoll,
    Sse,
}

/// The parsed read parameters.
#[derive(Debug)]
pub struct ReadQuery {
    /// `None` when the `offset` parameter is absent.
    pub offset: Option<ReadFrom>,
    pub live: Live,
    pub cursor: Option<String>,
}

impl ReadQuery {
    pub fn parse(raw: Option<&str>) -> Result<ReadQuery, ApiError> {
        let mut offset = None;
        let mut live = None;
        let mut cursor = None;
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "offset" => {
                    if offset.is_some() {
                        return Err(ApiError::bad_request(
                            "offset_invalid",
                            "offset must be given at most once",
                        ));
                    }
                    offset = Some(
                        ReadFrom::parse(&v)
                            .map_err(|e| ApiError::bad_request("offset_invalid", e.to_string()))?,
                    );
                }
                "live" => {
                    if live.is_some() {
                        return Err(ApiError::bad_request(
                            "live_mode_invalid",
                            "live must be given at most once",
                        ));
                    }
                    live = Some(match v.as_ref() {
                        "long-poll" => Live::LongPoll,
                        "sse" => Live::Sse,
                        "false" | "" => Live::No,
                        other => {
                            return Err(ApiError::bad_request(
                                "live_mode_invalid",
                                format!(
                                    "unknown live mode `{}`; use `long-poll` or `sse`",
                                    other.escape_debug()
                                ),
                            ));
                        }
                    });
                }
                "cursor" => cursor = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(ReadQuery {
            offset,
            live: live.unwrap_or(Live::No),
            cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_on_protocol_params() {
        assert!(ReadQuery::parse(Some("offset=")).is_err());
        assert!(ReadQuery::parse(Some("offset=a&offset=b")).is_err());
        assert!(ReadQuery::parse(Some("live=poll")).is_err());
        assert!(ReadQuery::parse(Some("offset=0%2C1")).is_err());
        let q = ReadQuery::parse(Some("offset=-1&foo=bar&live=sse&cursor=12")).unwrap();
        assert_eq!(q.offset, Some(ReadFrom::Start));
        assert_eq!(q.live, Live::Sse);
        assert_eq!(q.cursor.as_deref(), Some("12"));
        assert_eq!(ReadQuery::parse(None).unwrap().offset, None);
    }
}
