//! `sslmode` of the PostgreSQL store's URL, on the machine's PostgreSQL
//! (`WEIR_PG_URL`) and behind a proxy in this test that plays a server
//! without TLS (it answers `N` to the SSL request, then relays to the real
//! one).
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir_layer::store::postgres::PgStore;
use weir_layer::store::postgres::testing::{TestDatabase, server_url};

/// `url` with `params` appended to its query.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// A server without TLS in front of the real one: refuses every SSL
/// request with `N` (as a server with `ssl = off` does), then relays bytes.
async fn plain_only_proxy() -> String {
    let target = {
        let cfg: tokio_postgres::Config = server_url().parse().unwrap();
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let mut upstream = tokio::net::TcpStream::connect(&target).await?;
                loop {
                    // Startup-phase packets: length (4 bytes) + body.
                    let mut len = [0u8; 4];
                    client.read_exact(&mut len).await?;
                    let n = u32::from_be_bytes(len) as usize;
                    let mut body = vec![0u8; n.saturating_sub(4)];
                    client.read_exact(&mut body).await?;
                    // SSLRequest: code 80877103.
                    if n == 8 && body == [0x04, 0xd2, 0x16, 0x2f] {
                        client.write_all(b"N").await?;
                        continue;
                    }
                    upstream.write_all(&len).await?;
                    upstream.write_all(&body).await?;
                    break;
                }
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    // The real server's user and database, through the proxy.
    let cfg: tokio_postgres::Config = server_url().parse().unwrap();
    let user = cfg.get_user().unwrap_or("postgres");
    let db = cfg.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}@127.0.0.1:{}/{db}", addr.port())
}

#[tokio::test]
async fn sslmode_against_a_server_without_tls() {
    let url = plain_only_proxy().await;

    // require: a clear, matchable refusal.
    let s = PgStore::new(&with_params(&url, "sslmode=require")).unwrap();
    let err = s.ping().await.unwrap_err().to_string();
    assert!(err.contains("server does not support TLS"), "{err}");

    // prefer falls back to plain TCP and works; so does disable.
    for mode in ["prefer", "disable"] {
        let s = PgStore::new(&with_params(&url, &format!("sslmode={mode}"))).unwrap();
        s.ping()
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        assert!(!s.encrypted().await.unwrap(), "sslmode={mode}");
    }
    // No sslmode is prefer.
    let s = PgStore::new(&url).unwrap();
    assert!(!s.encrypted().await.unwrap());
}

#[tokio::test]
async fn sslmode_on_the_machines_server() {
    let db = TestDatabase::create("tls")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let plain = PgStore::new(&with_params(db.url(), "sslmode=disable")).unwrap();
    plain.migrate_up(None).await.unwrap();
    assert!(!plain.encrypted().await.unwrap());
    let server_tls = db
        .connect()
        .await
        .unwrap()
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        == "on";

    let require = PgStore::new(&with_params(db.url(), "sslmode=require")).unwrap();
    let prefer = PgStore::new(&with_params(db.url(), "sslmode=prefer")).unwrap();
    if server_tls {
        // Encrypted, and the store works over it.
        assert!(require.encrypted().await.unwrap());
        assert!(prefer.encrypted().await.unwrap());
        assert!(
            require
                .migrate_status()
                .await
                .unwrap()
                .iter()
                .all(|m| m.applied_at.is_some())
        );
    } else {
        let err = require.ping().await.unwrap_err().to_string();
        assert!(err.contains("server does not support TLS"), "{err}");
        assert!(!prefer.encrypted().await.unwrap());
    }

    // verify-full without CA certificates is a configuration error; with
    // a CA that did not sign the server's certificate (any other PEM
    // certificate), the handshake fails and says why.
    let err = PgStore::new(&with_params(db.url(), "sslmode=verify-full")).unwrap_err();
    assert!(err.to_string().contains("sslrootcert"), "{err}");
    let dir = std::env::temp_dir().join(format!("weir-pg-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("other-ca.pem");
    std::fs::write(&ca, include_str!("fixtures/other-ca.pem")).unwrap();
    let verify = PgStore::new(&with_params(
        db.url(),
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ))
    .unwrap();
    let err = verify.ping().await.unwrap_err().to_string();
    if server_tls {
        assert!(err.contains("certificate"), "{err}");
    } else {
        assert!(err.contains("server does not support TLS"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
