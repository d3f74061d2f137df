//! Serving the router: HTTP/1.1 and HTTP/2 on one port (h2c by prior
//! knowledge, or h2 over TLS via ALPN), header-read and keep-alive timeouts,
//! and graceful shutdown.
//!
//! HTTP/2 matters for this protocol: browsers open at most six HTTP/1.1
//! connections per host, which caps how many SSE readers a page can hold.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower::ServiceExt;

/// Certificate and key files for TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Connection-level settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Time a client has to send a request's headers (also bounds idle
    /// HTTP/1.1 keep-alive connections waiting for their next request).
    pub header_read_timeout: Duration,
    /// HTTP/2 keep-alive ping interval; a peer that does not answer within
    /// the same interval is dropped.
    pub h2_keepalive: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    pub tls: Option<TlsFiles>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            header_read_timeout: Duration::from_secs(30),
            h2_keepalive: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Errors starting the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("reading TLS file {path}: {reason}")]
    TlsFile { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Builds a TLS acceptor that offers h2 and http/1.1 via ALPN.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TransportError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect)
        .map_err(|e| TransportError::TlsFile {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TransportError::TlsFile {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish (up to the grace period) and
/// returns.
///
/// `app` is an [`axum::Router`] or anything that serves like one, e.g. a
/// `weir_layer::swap::SwapRouter` that a configuration reload replaces
/// (each request runs on the router current when it arrived).
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    cfg: TransportConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError>
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let acceptor = cfg.tls.as_ref().map(tls_acceptor).transpose()?;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(cfg.h2_keepalive))
        .keep_alive_timeout(cfg.h2_keepalive)
        .max_concurrent_streams(10_000);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Resource exhaustion (EMFILE) must not kill the server.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let svc = app
            .clone()
            .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
        let svc = TowerToHyperService::new(svc);
        let builder = builder.clone();
        match &acceptor {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, %peer, "connection ended with error");
                    }
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(cfg.shutdown_grace) => {
            tracing::warn!("shutdown grace period elapsed with connections still open");
        }
    }
    Ok(())
}
