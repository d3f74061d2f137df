//! The consumer-side ledger in JetStream KV: event ids already handled
//! (so a duplicate that slipped past the broker's window is skipped) and
//! each in-flight event's delivery history (so the dead letter can carry
//! every attempt, even across restarts of the consumer).

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::dlq::Attempt;
use super::error::{DurableError, read, setup};

/// One consumer's bucket, `WEIR_LEDGER_<consumer>`. Entries expire after
/// the bucket's TTL: an event redelivered or republished later than that is
/// handled again, so pick a TTL longer than any replay you would run
/// without wanting a second effect (or use the PostgreSQL inbox).
#[derive(Clone)]
pub struct Ledger {
    kv: kv::Store,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

/// A KV key for an arbitrary id: itself when it is a valid key token,
/// otherwise its SHA-256 (ids come from publishers and may hold anything).
fn key_token(id: &str) -> String {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='));
    if ok {
        id.to_owned()
    } else {
        Sha256::digest(id.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Ledger {
    /// Opens (creating if needed) the bucket of `consumer`.
    pub async fn open(
        js: &jetstream::Context,
        consumer: &str,
        ttl: Duration,
    ) -> Result<Ledger, DurableError> {
        let bucket = format!("WEIR_LEDGER_{consumer}");
        // The bucket's stream is declared directly rather than through
        // `create_key_value`, which first queries account limits in a form
        // older servers (2.9) answer differently.
        js.create_or_update_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(format!(
                "handled event ids and delivery history of {consumer}"
            )),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(setup)?;
        let kv = js.get_key_value(&bucket).await.map_err(setup)?;
        Ok(Ledger { kv })
    }

    /// Whether `event_id` was recorded as handled.
    pub async fn seen(&self, event_id: &str) -> Result<bool, DurableError> {
        let v = self
            .kv
            .get(format!("done.{}", key_token(event_id)))
            .await
            .map_err(read)?;
        Ok(v.is_some())
    }

    /// Records `event_id` as handled.
    pub async fn record(&self, event_id: &str) -> Result<(), DurableError> {
        self.kv
            .put(format!("done.{}", key_token(event_id)), Bytes::new())
            .await
            .map_err(setup)?;
        Ok(())
    }

    /// The failed attempts recorded so far for the message at stream
    /// sequence `seq`.
    pub async fn attempts(&self, seq: u64) -> Result<Vec<Attempt>, DurableError> {
        match self.kv.get(format!("attempts.{seq}")).await.map_err(read)? {
            Some(b) if !b.is_empty() => {
                serde_json::from_slice(&b).map_err(|e| DurableError::Decode(e.to_string()))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Appends a failed attempt; returns the whole history.
    pub async fn push_attempt(&self, seq: u64, a: Attempt) -> Result<Vec<Attempt>, DurableError> {
        let mut all = self.attempts(seq).await?;
        all.push(a);
        let body = serde_json::to_vec(&all).map_err(|e| DurableError::Decode(e.to_string()))?;
        self.kv
            .put(format!("attempts.{seq}"), Bytes::from(body))
            .await
            .map_err(setup)?;
        Ok(all)
    }

    /// Forgets the history of `seq` (handled or dead-lettered).
    pub async fn clear_attempts(&self, seq: u64) -> Result<(), DurableError> {
        self.kv
            .purge(format!("attempts.{seq}"))
            .await
            .map_err(setup)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::key_token;

    #[test]
    fn ids_become_valid_keys() {
        assert_eq!(key_token("abc-DEF_1="), "abc-DEF_1=");
        let hashed = key_token("orders.42/x y");
        assert_eq!(hashed.len(), 64);
        assert!(hashed.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(key_token(""), "");
    }
}
