//! The record the bridge appends for each event, one JSON message each on
//! a JSON-mode Weir stream, so `curl …/v1/stream/orders?offset=-1` shows
//! readable events:
//!
//! ```json
//! {"subject":"orders.placed","seq":42,"time":"2026-11-25T09:00:00.123Z",
//!  "headers":{"Nats-Msg-Id":["o-1"]},"data":{"order_id":"o-1"}}
//! ```
//!
//! `seq` is the JetStream stream sequence of the event. It is what makes
//! restarts exactly-once: the bridge resumes after the `seq` of the last
//! record on the Weir stream (see the crate docs). `data` is the payload
//! when it is JSON; any other payload goes to `data_base64` instead, so a
//! record is always valid JSON and never loses bytes.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One bridged event.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub subject: &'a str,
    pub seq: u64,
    /// When JetStream stored the event (RFC 3339, UTC).
    pub time: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<&'a str, Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl<'a> Record<'a> {
    /// Builds the record for a payload, choosing `data` or `data_base64`.
    pub fn new(
        subject: &'a str,
        seq: u64,
        time: time::OffsetDateTime,
        headers: BTreeMap<&'a str, Vec<&'a str>>,
        payload: &'a [u8],
    ) -> Record<'a> {
        let json = std::str::from_utf8(payload)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok());
        let data_base64 = match (json, payload.is_empty()) {
            (None, false) => Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            _ => None,
        };
        Record {
            subject,
            seq,
            time: time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            headers,
            data: json,
            data_base64,
        }
    }
}

/// The part of a stored record the bridge reads back on start.
#[derive(Debug, Deserialize)]
pub struct StoredSeq {
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_payload_is_embedded_and_others_are_base64() {
        let t = time::OffsetDateTime::UNIX_EPOCH;
        let r = Record::new("a.b", 7, t, BTreeMap::new(), br#"{"x":1}"#);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["data"]["x"], 1);
        assert!(v.get("data_base64").is_none());
        assert_eq!(v["seq"], 7);
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");

        let r = Record::new("a.b", 8, t, BTreeMap::new(), b"\xffnot json");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert!(v.get("data").is_none());
        assert_eq!(v["data_base64"], "/25vdCBqc29u");

        let r = Record::new("a.b", 9, t, BTreeMap::new(), b"");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert!(v.get("data").is_none() && v.get("data_base64").is_none());
    }
}
