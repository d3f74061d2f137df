//! JWT verification against the attack table, and JWKS caching/rotation
//! against a real HTTP JWKS endpoint on 127.0.0.1 that the test stops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::RwLock;
use serde_json::{Value, json};
use weir_layer::auth::jwt::{JwtConfig, JwtVerifier};
use weir_layer::authz::{Permission, PermissionTable};
use weir_layer::clock::{Clock, ManualClock};
use weir_layer::secret::Secret;
use weir_layer::{AuthError, AuthMethod};

const RSA1: &str = include_str!("fixtures/rsa1.pem");
const RSA1_PUB: &str = include_str!("fixtures/rsa1.pub.pem");
const RSA2: &str = include_str!("fixtures/rsa2.pem");
const EC: &str = include_str!("fixtures/ec.pem");
const ED: &str = include_str!("fixtures/ed.pem");
const HS_SECRET: &str = "an-hs256-secret-that-is-long-enough-0123456789";
const JWKS_OCT: &str = "a-symmetric-key-someone-published-in-the-jwks";
const ISS: &str = "https://idp.example";
const AUD: &str = "weir";

fn key(alg: Algorithm, pem: &str) -> EncodingKey {
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_secret(pem.as_bytes()),
    }
}

fn jwk(alg: Algorithm, pem: &str, kid: &str) -> Value {
    let mut j = Jwk::from_encoding_key(&key(alg, pem), alg).unwrap();
    j.common.key_id = Some(kid.to_owned());
    serde_json::to_value(j).unwrap()
}

fn sign(alg: Algorithm, pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &key(alg, pem)).unwrap()
}

fn claims(now: u64) -> Value {
    json!({
        "sub": "alice",
        "iss": ISS,
        "aud": AUD,
        "exp": now + 300,
        "iat": now,
        "tenant": "acme",
        "roles": ["writer"],
        "scope": "weir:manage other"
    })
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    if v.is_null() {
        c.as_object_mut().unwrap().remove(k);
    } else {
        c[k] = v;
    }
    c
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn config() -> JwtConfig {
    JwtConfig {
        issuer: Some(ISS.into()),
        audience: vec![AUD.into()],
        ..Default::default()
    }
}

fn verifier(cfg: JwtConfig, clock: Arc<ManualClock>) -> JwtVerifier {
    JwtVerifier::new(cfg, Arc::new(PermissionTable::default()), "default", clock).unwrap()
}

/// A verifier with a static JWKS file (rsa-1, ec-1, ed-1) and an HS256 secret.
fn static_verifier(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> JwtVerifier {
    let path = dir.path().join("jwks.json");
    let jwks = json!({"keys": [
        jwk(Algorithm::RS256, RSA1, "rsa-1"),
        jwk(Algorithm::ES256, EC, "ec-1"),
        jwk(Algorithm::EdDSA, ED, "ed-1"),
        // Symmetric and encryption keys in a JWKS are ignored.
        {"kty": "oct", "kid": "oct-1", "k": b64(JWKS_OCT.as_bytes())},
        {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "weird", "kid": "x"}
    ]});
    std::fs::write(&path, jwks.to_string()).unwrap();
    verifier(
        JwtConfig {
            jwks_file: Some(path),
            hs256_secret: Some(Secret::new(HS_SECRET)),
            ..config()
        },
        clock,
    )
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_map_to_a_principal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let v = static_verifier(&dir, clock.clone());
    let now = clock.unix_secs();
    for (alg, pem, kid) in [
        (Algorithm::RS256, RSA1, Some("rsa-1")),
        (Algorithm::ES256, EC, Some("ec-1")),
        (Algorithm::EdDSA, ED, Some("ed-1")),
        (Algorithm::HS256, HS_SECRET, None),
    ] {
        let t = sign(alg, pem, kid, &claims(now));
        let p = v
            .verify_token(&t)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(p.subject, "alice");
        assert_eq!(p.tenant, "acme");
        assert_eq!(p.roles, vec!["writer"]);
        assert_eq!(p.scopes, vec!["weir:manage", "other"]);
        assert_eq!(p.auth_method, AuthMethod::Jwt);
        assert_eq!(p.key_id.as_deref(), kid);
        assert_eq!(p.expires_at, Some(now + 300));
        assert!(p.can(Permission::Write) && p.can(Permission::Manage) && !p.can(Permission::Admin));
    }
}

#[tokio::test]
async fn attack_table() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let v = static_verifier(&dir, clock.clone());
    let now = clock.unix_secs();
    let c = claims(now);
    let good = sign(Algorithm::RS256, RSA1, Some("rsa-1"), &c);

    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64(json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"})
                .to_string()
                .as_bytes()),
            b64(c.to_string().as_bytes())
        )
    };
    let tampered_payload = {
        let parts: Vec<&str> = good.split('.').collect();
        let evil = with(c.clone(), "tenant", json!("victim"));
        format!(
            "{}.{}.{}",
            parts[0],
            b64(evil.to_string().as_bytes()),
            parts[2]
        )
    };
    let tampered_signature = {
        let (head, sig) = good.rsplit_once('.').unwrap();
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        raw[10] ^= 1;
        format!("{head}.{}", b64(&raw))
    };

    type Check = fn(&AuthError) -> bool;
    let cases: Vec<(&str, String, Check)> = vec![
        ("alg none", unsigned("none"), |e| {
            matches!(e, AuthError::AlgorithmRefused(_))
        }),
        ("alg NONE", unsigned("NONE"), |e| {
            matches!(e, AuthError::AlgorithmRefused(_))
        }),
        (
            "alg none with a signature",
            format!("{}sig", unsigned("none")),
            |e| matches!(e, AuthError::AlgorithmRefused(_)),
        ),
        (
            "HS/RS confusion: HS256 signed with the RSA public key, kid of the RSA key",
            sign(Algorithm::HS256, RSA1_PUB, Some("rsa-1"), &c),
            |e| matches!(e, AuthError::BadSignature),
        ),
        (
            "HS256 signed with an oct key published in the JWKS",
            sign(Algorithm::HS256, JWKS_OCT, Some("oct-1"), &c),
            |e| matches!(e, AuthError::BadSignature),
        ),
        (
            "expired beyond leeway",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "exp", json!(now - 61)),
            ),
            |e| matches!(e, AuthError::Expired),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "nbf", json!(now + 600)),
            ),
            |e| matches!(e, AuthError::NotYetValid),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "iss", json!("https://evil")),
            ),
            |e| matches!(e, AuthError::WrongIssuer),
        ),
        (
            "no issuer",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "iss", Value::Null),
            ),
            |e| matches!(e, AuthError::WrongIssuer),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "aud", json!("other")),
            ),
            |e| matches!(e, AuthError::WrongAudience),
        ),
        (
            "no audience",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "aud", Value::Null),
            ),
            |e| matches!(e, AuthError::WrongAudience),
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, RSA2, Some("rsa-9"), &c),
            |e| matches!(e, AuthError::UnknownKey(Some(k)) if k == "rsa-9"),
        ),
        (
            "no kid with several keys",
            sign(Algorithm::RS256, RSA1, None, &c),
            |e| matches!(e, AuthError::UnknownKey(None)),
        ),
        (
            "right kid, other key's signature",
            sign(Algorithm::RS256, RSA2, Some("rsa-1"), &c),
            |e| matches!(e, AuthError::BadSignature),
        ),
        ("tampered payload", tampered_payload, |e| {
            matches!(e, AuthError::BadSignature)
        }),
        ("tampered signature", tampered_signature, |e| {
            matches!(e, AuthError::BadSignature)
        }),
        (
            "RS256 token naming the EC key",
            sign(Algorithm::RS256, RSA1, Some("ec-1"), &c),
            |e| matches!(e, AuthError::AlgorithmRefused(_)),
        ),
        (
            "ES256 token naming the RSA key",
            sign(Algorithm::ES256, EC, Some("rsa-1"), &c),
            |e| matches!(e, AuthError::AlgorithmRefused(_)),
        ),
        (
            "RS384 is not in the allow-list",
            sign(Algorithm::RS384, RSA1, Some("rsa-1"), &c),
            |e| matches!(e, AuthError::AlgorithmRefused(_)),
        ),
        (
            "PS256 is not in the allow-list",
            sign(Algorithm::PS256, RSA1, Some("rsa-1"), &c),
            |e| matches!(e, AuthError::AlgorithmRefused(_)),
        ),
        ("HS512", sign(Algorithm::HS512, HS_SECRET, None, &c), |e| {
            matches!(e, AuthError::AlgorithmRefused(_))
        }),
        (
            "HS256 with a wrong secret",
            sign(Algorithm::HS256, "not-the-secret", None, &c),
            |e| matches!(e, AuthError::BadSignature),
        ),
        (
            "no exp",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "exp", Value::Null),
            ),
            |e| matches!(e, AuthError::Claim(n) if n == "exp"),
        ),
        (
            "exp not a number",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "exp", json!("soon")),
            ),
            |e| matches!(e, AuthError::Claim(n) if n == "exp"),
        ),
        (
            "no subject",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "sub", Value::Null),
            ),
            |e| matches!(e, AuthError::Claim(n) if n == "sub"),
        ),
        (
            "tenant that could escape its namespace",
            sign(
                Algorithm::RS256,
                RSA1,
                Some("rsa-1"),
                &with(c.clone(), "tenant", json!("../b")),
            ),
            |e| matches!(e, AuthError::Claim(n) if n == "tenant"),
        ),
        ("not a JWT", "garbage".into(), |e| {
            matches!(e, AuthError::Malformed(_))
        }),
        (
            "header not JSON",
            format!("{}.{}.x", b64(b"nope"), b64(b"{}")),
            |e| matches!(e, AuthError::Malformed(_)),
        ),
        ("four segments", format!("{good}.x"), |e| {
            matches!(e, AuthError::Malformed(_))
        }),
    ];
    for (name, token, expect) in cases {
        match v.verify_token(&token).await {
            Ok(p) => panic!("{name}: accepted as {p}"),
            Err(e) => assert!(expect(&e), "{name}: unexpected error {e:?}"),
        }
    }

    // Inside the leeway: accepted.
    let skewed = with(
        with(c.clone(), "exp", json!(now - 30)),
        "nbf",
        json!(now + 30),
    );
    assert!(
        v.verify_token(&sign(Algorithm::RS256, RSA1, Some("rsa-1"), &skewed))
            .await
            .is_ok()
    );
    // Audience as an array containing ours: accepted.
    let multi = with(c.clone(), "aud", json!(["x", AUD]));
    assert!(
        v.verify_token(&sign(Algorithm::RS256, RSA1, Some("rsa-1"), &multi))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn without_a_secret_hs256_is_refused_outright() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(
        &path,
        json!({"keys": [jwk(Algorithm::RS256, RSA1, "rsa-1")]}).to_string(),
    )
    .unwrap();
    let clock = ManualClock::new();
    let v = verifier(
        JwtConfig {
            jwks_file: Some(path),
            ..config()
        },
        clock.clone(),
    );
    let c = claims(clock.unix_secs());
    // The classic confusion attack: HMAC with the public key as the secret.
    let confused = sign(Algorithm::HS256, RSA1_PUB, Some("rsa-1"), &c);
    assert!(matches!(
        v.verify_token(&confused).await,
        Err(AuthError::AlgorithmRefused(_))
    ));
    // With a single key, a token without kid uses it.
    assert!(
        v.verify_token(&sign(Algorithm::RS256, RSA1, None, &c))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn verified_tokens_are_cached_until_exp() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let v = static_verifier(&dir, clock.clone());
    let now = clock.unix_secs();
    let t = sign(
        Algorithm::RS256,
        RSA1,
        Some("rsa-1"),
        &with(claims(now), "exp", json!(now + 100)),
    );
    assert!(v.verify_token(&t).await.is_ok());
    assert_eq!(v.cached_tokens(), 1);
    assert!(v.verify_token(&t).await.is_ok());
    assert_eq!(v.cached_tokens(), 1);
    // Past exp (+ leeway) the cache entry is gone and verification refuses.
    clock.advance(Duration::from_secs(161));
    assert_eq!(v.verify_token(&t).await, Err(AuthError::Expired));
    assert_eq!(v.cached_tokens(), 0);
}

/// A JWKS endpoint whose key set the test swaps, and which the test stops.
struct JwksServer {
    url: String,
    keys: Arc<RwLock<Value>>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Value) -> JwksServer {
        let keys = Arc::new(RwLock::new(keys));
        let hits = Arc::new(AtomicU64::new(0));
        let (k, h) = (keys.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (k, h) = (k.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    // `Connection: close`, so stopping the listener really
                    // makes the endpoint unreachable (no pooled connection).
                    (
                        [(http::header::CONNECTION, "close")],
                        axum::Json(k.read().clone()),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer {
            url,
            keys,
            hits,
            task,
        }
    }

    fn set(&self, keys: Value) {
        *self.keys.write() = keys;
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[tokio::test]
async fn jwks_rotation_and_outage() {
    let server = JwksServer::start(json!({"keys": [jwk(Algorithm::RS256, RSA1, "k1")]})).await;
    let clock = ManualClock::new();
    let v = verifier(
        JwtConfig {
            jwks_url: Some(server.url.clone()),
            jwks_min_refetch_secs: 10,
            jwks_refresh_secs: 300,
            jwks_cache_ttl_secs: 600,
            // Every call below really verifies (no verified-token cache).
            token_cache_capacity: 0,
            ..config()
        },
        clock.clone(),
    );
    let token = |pem: &str, kid: &str, sub: &str| {
        sign(
            Algorithm::RS256,
            pem,
            Some(kid),
            &with(claims(clock.unix_secs()), "sub", json!(sub)),
        )
    };

    // First use fetches the set.
    assert!(v.verify_token(&token(RSA1, "k1", "a")).await.is_ok());
    assert_eq!(server.hits(), 1);
    assert!(v.verify_token(&token(RSA1, "k1", "b")).await.is_ok());
    assert_eq!(server.hits(), 1, "known keys need no fetch");

    // Rotation: the provider adds k2 and withdraws k1.
    server.set(json!({"keys": [jwk(Algorithm::RS256, RSA2, "k2")]}));
    // Within the minimum refetch interval an unknown kid is refused without a fetch…
    assert_eq!(
        v.verify_token(&token(RSA2, "k2", "c")).await,
        Err(AuthError::UnknownKey(Some("k2".into())))
    );
    assert_eq!(server.hits(), 1);
    // …after it, the unknown kid triggers one refetch and verifies.
    clock.advance(Duration::from_secs(11));
    assert!(v.verify_token(&token(RSA2, "k2", "d")).await.is_ok());
    assert_eq!(server.hits(), 2);
    // The withdrawn key stopped working with that fetch.
    assert!(matches!(
        v.verify_token(&token(RSA1, "k1", "e")).await,
        Err(AuthError::UnknownKey(_))
    ));

    // Outage: the endpoint goes away.
    let health = v.health().unwrap();
    assert_eq!((health.keys, health.last_error.clone()), (1, None));
    server.stop().await;
    clock.advance(Duration::from_secs(11));
    // Cached k2 keeps working…
    assert!(v.verify_token(&token(RSA2, "k2", "f")).await.is_ok());
    // …an unknown kid is refused (the refetch fails)…
    assert_eq!(
        v.verify_token(&token(RSA1, "k3", "g")).await,
        Err(AuthError::UnknownKey(Some("k3".into())))
    );
    let health = v.health().unwrap();
    assert!(health.last_error.is_some(), "the failed fetch is reported");
    assert_eq!(health.fetches, 3);
    // …and a flood of unknown kids does not hammer the endpoint.
    for i in 0..20 {
        let _ = v.verify_token(&token(RSA1, &format!("x{i}"), "h")).await;
    }
    assert_eq!(v.health().unwrap().fetches, 3);
    // k2 still works up to the cache TTL (600 s after the last good fetch)…
    clock.advance(Duration::from_secs(500));
    assert!(v.verify_token(&token(RSA2, "k2", "i")).await.is_ok());
    // …and not after it: the cached key has expired and cannot be refreshed.
    clock.advance(Duration::from_secs(100));
    assert!(matches!(
        v.verify_token(&token(RSA2, "k2", "j")).await,
        Err(AuthError::Unavailable(_))
    ));
}

#[tokio::test]
async fn config_errors() {
    let clock = ManualClock::new();
    let t = Arc::new(PermissionTable::default());
    let err = |cfg: JwtConfig| {
        JwtVerifier::new(cfg, t.clone(), "default", clock.clone())
            .unwrap_err()
            .to_string()
    };
    assert!(err(JwtConfig::default()).contains("needs"));
    assert!(
        err(JwtConfig {
            algorithms: vec![Algorithm::HS256],
            hs256_secret: Some(Secret::new("x")),
            ..Default::default()
        })
        .contains("asymmetric")
    );
    assert!(
        err(JwtConfig {
            jwks_url: Some("http://127.0.0.1:1/".into()),
            jwks_file: Some("/nonexistent".into()),
            ..Default::default()
        })
        .contains("not both")
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, format!("{HS_SECRET}\n")).unwrap();
    let v = JwtVerifier::new(
        JwtConfig {
            hs256_secret_file: Some(f),
            ..config()
        },
        t.clone(),
        "default",
        clock.clone(),
    )
    .unwrap();
    let tok = sign(
        Algorithm::HS256,
        HS_SECRET,
        None,
        &claims(clock.unix_secs()),
    );
    assert!(
        v.verify_token(&tok).await.is_ok(),
        "secret read from a file, newline trimmed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_tokens_with_a_new_kid_shares_one_fetch() {
    let server = JwksServer::start(json!({"keys": [jwk(Algorithm::RS256, RSA1, "k1")]})).await;
    let clock = ManualClock::new();
    let v = Arc::new(verifier(
        JwtConfig {
            jwks_url: Some(server.url.clone()),
            token_cache_capacity: 0,
            ..config()
        },
        clock.clone(),
    ));
    v.prefetch().await.unwrap();
    assert_eq!(server.hits(), 1);
    server.set(
        json!({"keys": [jwk(Algorithm::RS256, RSA1, "k1"), jwk(Algorithm::RS256, RSA2, "k2")]}),
    );
    clock.advance(Duration::from_secs(31));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let v = v.clone();
        let t = sign(
            Algorithm::RS256,
            RSA2,
            Some("k2"),
            &with(claims(clock.unix_secs()), "sub", json!(format!("u{i}"))),
        );
        tasks.push(tokio::spawn(async move { v.verify_token(&t).await }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(server.hits(), 2, "one fetch for the whole burst");
    server.stop().await;
}
