//! An append whose response is lost (a proxy forwards the request to Weir,
//! lets Weir answer, then drops the connection) is retried with the same
//! producer sequence and not duplicated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy that, while `armed`, swallows the response to the next
/// request carrying a `POST` and closes the client's connection.
struct DroppingProxy {
    addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
}

impl DroppingProxy {
    async fn start(upstream: std::net::SocketAddr) -> DroppingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (a, d) = (armed.clone(), dropped.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (a, d) = (a.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let saw_post = Arc::new(AtomicBool::new(false));
                    let sp = saw_post.clone();
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if buf[..n].windows(5).any(|w| w == b"POST ") {
                                sp.store(true, Ordering::SeqCst);
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if saw_post.swap(false, Ordering::SeqCst) && a.swap(false, Ordering::SeqCst)
                        {
                            // Weir has answered (the append happened); the
                            // bridge never hears it.
                            d.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        DroppingProxy {
            addr,
            armed,
            dropped,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_response_is_not_duplicated() {
    let nats = NatsServer::start();
    let weir = Weir::start().await;
    let upstream: std::net::SocketAddr = weir.base.trim_start_matches("http://").parse().unwrap();
    let proxy = DroppingProxy::start(upstream).await;
    let direct = weir.stream_url("orders");
    let via_proxy = format!("http://{}/v1/stream/orders", proxy.addr);
    let bridge = spawn(config(&nats, &via_proxy));
    let js = jetstream_ready(&nats, "WEIR_BRIDGE_ORDERS").await;

    publish(&js, 0, 20).await;
    wait_for(&direct, 20).await;

    for round in 1..=3u64 {
        proxy.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        publish(&js, 20 * round, 20 * round + 20).await;
        wait_for(&direct, (20 * round + 20) as usize).await;
    }
    assert_eq!(
        proxy.dropped.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "the proxy dropped three answers"
    );

    publish(&js, 80, 81).await;
    let recs = wait_for(&direct, 81).await;
    assert_exactly(&recs, 81);
    bridge.stop.send(true).unwrap();
    bridge.task.await.unwrap().unwrap();
}
