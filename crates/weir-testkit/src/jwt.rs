//! HS256 tokens for tests of JWT authentication (feature `jwt`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long a token [`hs256`] mints is valid when its claims set no `exp`.
pub const LIFETIME_SECS: u64 = 600;

/// A JWT of `claims` signed with `secret` (HS256). Claims without an
/// `exp` get one [`LIFETIME_SECS`] from now.
pub fn hs256(secret: &[u8], mut claims: Value) -> String {
    if let Value::Object(map) = &mut claims
        && !map.contains_key("exp")
    {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        map.insert("exp".into(), (now + LIFETIME_SECS).into());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap_or_else(|e| panic!("signing a test token: {e}"))
}
