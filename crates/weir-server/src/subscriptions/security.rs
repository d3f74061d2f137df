//! Security pieces of subscriptions: webhook URL validation against SSRF
//! (PROTOCOL.md §12.8), HMAC-signed callback/claim tokens (§12.9), and the
//! Ed25519 webhook signing keys published as a JWKS (§6.5, §12.10).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Trace context and request id of one webhook delivery: `traceparent`
/// names `span` (the delivery's, a child of the current trace) when traces
/// are exported, else a fresh random one (`sampled` off: nothing recorded
/// it); `X-Request-Id` is a fresh id, also recorded on `span` for the logs.
pub fn delivery_headers(span: &tracing::Span) -> (http::HeaderValue, http::HeaderValue) {
    let request_id = weir_layer::RequestId::generate();
    span.record("request_id", request_id.as_str());
    let traceparent = weir_layer::telemetry::traceparent_of(span).unwrap_or_else(|| {
        let mut rng = rand::thread_rng();
        // Non-zero ids (W3C Trace Context §3.2.2.3/§3.2.2.4).
        let trace_id = rand::Rng::gen_range(&mut rng, 1..=u128::MAX);
        let parent_id = rand::Rng::gen_range(&mut rng, 1..=u64::MAX);
        http::HeaderValue::from_str(&format!("00-{trace_id:032x}-{parent_id:016x}-00"))
            .unwrap_or_else(|_| {
                http::HeaderValue::from_static(
                    "00-00000000000000000000000000000001-0000000000000001-00",
                )
            })
    });
    let request_id = http::HeaderValue::from_str(request_id.as_str())
        .unwrap_or_else(|_| http::HeaderValue::from_static("webhook"));
    (traceparent, request_id)
}

/// Why a webhook URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRejection {
    #[error("webhook URL is not a valid absolute URL")]
    Malformed,
    #[error("webhook URLs must use https")]
    NotHttps,
    #[error("webhook URL targets a private, loopback or link-local address")]
    PrivateAddress,
    #[error("webhook URL must not carry credentials")]
    Credentials,
}

/// Whether an address is reachable only inside a host or private network
/// (RFC 1918, loopback, link-local incl. cloud metadata, CGNAT, unique-local,
/// unspecified, multicast, documentation and benchmark ranges).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 well-known prefix
        }
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240
}

/// The development exception: `localhost` and `127.0.0.x`.
fn is_dev_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(v4) => v4.octets()[..3] == [127, 0, 0],
        url::Host::Ipv6(v6) => *v6 == Ipv6Addr::LOCALHOST,
    }
}

/// Validates a webhook URL at subscription time. Host names are checked
/// again, after resolution, at every delivery (DNS can change).
pub fn check_webhook_url(raw: &str, allow_loopback: bool) -> Result<url::Url, UrlRejection> {
    let u = url::Url::parse(raw).map_err(|_| UrlRejection::Malformed)?;
    let host = u.host().ok_or(UrlRejection::Malformed)?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(UrlRejection::Credentials);
    }
    let dev = allow_loopback && is_dev_loopback(&host);
    match u.scheme() {
        "https" => {}
        "http" if dev => {}
        "http" => return Err(UrlRejection::NotHttps),
        _ => return Err(UrlRejection::Malformed),
    }
    if dev {
        return Ok(u);
    }
    match host {
        url::Host::Ipv4(v4) if is_private_v4(v4) => Err(UrlRejection::PrivateAddress),
        url::Host::Ipv6(v6) if is_private(IpAddr::V6(v6)) => Err(UrlRejection::PrivateAddress),
        url::Host::Domain(d)
            if d.eq_ignore_ascii_case("localhost")
                || d.to_ascii_lowercase().ends_with(".localhost") =>
        {
            Err(UrlRejection::PrivateAddress)
        }
        _ => Ok(u),
    }
}

type HmacSha256 = Hmac<Sha256>;

/// What a callback or claim token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Subscription id.
    pub sub: String,
    pub generation: u64,
    pub wake_id: String,
    /// Expiry, Unix milliseconds.
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
}

/// Signs claims: `base64url(json).base64url(hmac-sha256)`.
pub fn sign_token(secret: &[u8], claims: &TokenClaims) -> Result<String, TokenError> {
    let payload = B64URL.encode(serde_json::to_vec(claims).map_err(|_| TokenError::Malformed)?);
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::Malformed)?;
    mac.update(payload.as_bytes());
    Ok(format!(
        "{payload}.{}",
        B64URL.encode(mac.finalize().into_bytes())
    ))
}

/// Whether `token` has the shape [`sign_token`] produces —
/// `base64url(JSON object).base64url(32-byte HMAC)`: one dot, a payload
/// opening with `{"` (`eyJ`), a 43-character signature. A JWT (two dots) or
/// an API key (`wk_…`, no dot) never has it. Only the shape: says nothing
/// about validity.
pub fn looks_like_token(token: &str) -> bool {
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match token.split_once('.') {
        Some((payload, sig)) => {
            payload.len() > 3
                && payload.starts_with("eyJ")
                && sig.len() == 43
                && b64url(payload)
                && b64url(sig)
        }
        None => false,
    }
}

/// Verifies a token's signature (constant time) and expiry.
pub fn verify_token(secret: &[u8], token: &str, now_ms: i64) -> Result<TokenClaims, TokenError> {
    let (payload, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let sig = B64URL.decode(sig).map_err(|_| TokenError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::Malformed)?;
    mac.update(payload.as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    let json = B64URL.decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: TokenClaims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now_ms {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// A webhook signing key pair.
#[derive(Clone)]
pub struct WebhookKey {
    pub kid: String,
    pub signing: SigningKey,
}

/// The persisted form of the signing keys and token secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyMaterial {
    /// Base64url Ed25519 secret keys, newest last. Old keys stay published
    /// so deliveries signed with them can still be verified.
    pub signing_keys: Vec<String>,
    /// Base64url HMAC secret for callback/claim tokens.
    pub token_secret: String,
}

impl KeyMaterial {
    /// Fresh random keys.
    pub fn generate() -> KeyMaterial {
        let mut rng = rand::rngs::OsRng;
        let key = SigningKey::generate(&mut rng);
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rng, &mut secret);
        KeyMaterial {
            signing_keys: vec![B64URL.encode(key.to_bytes())],
            token_secret: B64URL.encode(secret),
        }
    }

    /// Decoded keys, newest last; `None` if the material is corrupt.
    pub fn keys(&self) -> Option<Vec<WebhookKey>> {
        self.signing_keys
            .iter()
            .map(|k| {
                let bytes: [u8; 32] = B64URL.decode(k).ok()?.try_into().ok()?;
                let signing = SigningKey::from_bytes(&bytes);
                Some(WebhookKey {
                    kid: kid_of(&signing),
                    signing,
                })
            })
            .collect()
    }

    pub fn token_secret(&self) -> Option<Vec<u8>> {
        B64URL.decode(&self.token_secret).ok()
    }
}

/// `ds_` + the RFC 7638 JWK thumbprint of the public key: stable for the
/// key's lifetime and unique per key.
pub fn kid_of(key: &SigningKey) -> String {
    let x = B64URL.encode(key.verifying_key().to_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    format!("ds_{}", B64URL.encode(Sha256::digest(canonical.as_bytes())))
}

/// The public JWK of a key.
pub fn jwk(key: &WebhookKey) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "kid": key.kid,
        "use": "sig",
        "alg": "EdDSA",
        "x": B64URL.encode(key.signing.verifying_key().to_bytes()),
    })
}

/// `Webhook-Signature: t=<unix>,kid=<kid>,ed25519=<base64url sig>` over
/// `<t>.<body>`.
pub fn signature_header(key: &WebhookKey, unix_secs: i64, body: &[u8]) -> String {
    let mut msg = format!("{unix_secs}.").into_bytes();
    msg.extend_from_slice(body);
    let sig = key.signing.sign(&msg);
    format!(
        "t={unix_secs},kid={},ed25519={}",
        key.kid,
        B64URL.encode(sig.to_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn ssrf_rules() {
        for bad in [
            "http://10.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://192.168.1.1/",
            "https://172.16.5.4/",
            "https://127.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://localhost/",
            "https://api.localhost/",
            "http://example.com/",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "not a url",
        ] {
            assert!(
                check_webhook_url(bad, false).is_err(),
                "{bad} accepted in production"
            );
        }
        assert!(check_webhook_url("https://hooks.example.com/x", false).is_ok());
        assert!(check_webhook_url("https://93.184.216.34/x", false).is_ok());
        // The development exception covers localhost and 127.0.0.x only.
        assert!(check_webhook_url("http://localhost:8080/h", true).is_ok());
        assert!(check_webhook_url("http://127.0.0.1:9/h", true).is_ok());
        assert!(check_webhook_url("http://127.0.1.1:9/h", true).is_err());
        assert!(check_webhook_url("http://10.0.0.1/hook", true).is_err());
    }

    #[test]
    fn tokens() {
        let secret = b"k".repeat(32);
        let claims = TokenClaims {
            sub: "s".into(),
            generation: 3,
            wake_id: "w".into(),
            exp: 1000,
        };
        let t = sign_token(&secret, &claims).unwrap();
        assert_eq!(verify_token(&secret, &t, 999), Ok(claims.clone()));
        assert_eq!(verify_token(&secret, &t, 1000), Err(TokenError::Expired));
        assert_eq!(verify_token(b"other", &t, 0), Err(TokenError::BadSignature));
        let (p, s) = t.split_once('.').unwrap();
        let forged = format!(
            "{}.{s}",
            B64URL.encode(br#"{"sub":"s","generation":4,"wake_id":"w","exp":1000}"#)
        );
        assert_eq!(
            verify_token(&secret, &forged, 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verify_token(&secret, p, 0), Err(TokenError::Malformed));
        assert!(verify_token(&secret, "a.b.c", 0).is_err());
        // The shape, and only the shape: forged tokens have it too.
        assert!(looks_like_token(&t) && looks_like_token(&forged));
        for not in [
            "",
            p,
            "a.b.c",
            "wk_abc",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "eyJ.x",
            &format!("{p}.{s}="),
            &format!("{p} .{s}"),
        ] {
            assert!(!looks_like_token(not), "{not}");
        }
    }

    #[test]
    fn signatures_verify_with_the_published_key() {
        let m = KeyMaterial::generate();
        let key = m.keys().unwrap().pop().unwrap();
        assert!(key.kid.starts_with("ds_"));
        let h = signature_header(&key, 1_700_000_000, b"{\"a\":1}");
        let sig = h.split("ed25519=").nth(1).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&B64URL.decode(sig).unwrap()).unwrap();
        assert!(
            key.signing
                .verifying_key()
                .verify(b"1700000000.{\"a\":1}", &sig)
                .is_ok()
        );
        assert_eq!(jwk(&key)["kid"], key.kid);
    }
}
