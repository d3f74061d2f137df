//! TLS to PostgreSQL over the tree's `tokio-rustls` (ring), chosen by the
//! database URL's `sslmode` the way libpq reads it:
//!
//! * `disable` — plain TCP;
//! * `prefer` (the default) — TLS if the server offers it, else plain;
//!   the certificate is not verified (libpq's `prefer` does not either);
//! * `require` — TLS or fail; the certificate is not verified (encryption
//!   against passive listeners, not an authenticated server);
//! * `verify-full` — TLS, the chain verified against the CA certificates in
//!   `sslrootcert` (PEM, required) and the host name (or IP) checked
//!   against the certificate.
//!
//! `verify-ca` (chain without host name) is refused rather than silently
//! treated as something else. `sslmode` and `sslrootcert` are taken out of
//! the URL here; tokio-postgres parses the rest.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The URL's TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("sslmode={0} is not supported (use disable, prefer, require or verify-full)")]
    UnsupportedMode(String),
    #[error("sslmode=verify-full needs sslrootcert=<CA certificates file (PEM)>")]
    NoRootCert,
    #[error("sslrootcert {path}: {message}")]
    RootCert { path: String, message: String },
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// What the URL asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyFull { root_cert: PathBuf },
}

impl TlsMode {
    /// tokio-postgres' own mode: whether to ask for TLS and whether to
    /// insist (verification is the connector's business).
    pub fn ssl_mode(&self) -> SslMode {
        match self {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyFull { .. } => SslMode::Require,
        }
    }
}

/// Splits `sslmode` and `sslrootcert` out of `url` (URL or `key=value`
/// form); returns the rest and the mode (default `prefer`).
pub fn split_url(url: &str) -> Result<(String, TlsMode), TlsConfigError> {
    let mut mode = None;
    let mut root = None;
    let mut take = |k: &str, v: &str| match k {
        "sslmode" => {
            mode = Some(v.to_owned());
            true
        }
        "sslrootcert" => {
            root = Some(v.to_owned());
            true
        }
        _ => false,
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        !take(k, &percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        url.split_whitespace()
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                !take(k.trim(), v.trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mode = match mode.as_deref().unwrap_or("prefer") {
        "disable" => TlsMode::Disable,
        "prefer" => TlsMode::Prefer,
        "require" => TlsMode::Require,
        "verify-full" => TlsMode::VerifyFull {
            root_cert: root.map(PathBuf::from).ok_or(TlsConfigError::NoRootCert)?,
        },
        other => return Err(TlsConfigError::UnsupportedMode(other.to_owned())),
    };
    Ok((rest, mode))
}

/// `%XX` escapes of a URL query value (a path in `sslrootcert`).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The connector for `mode` (also used, unused, for `disable`).
pub fn connector(mode: &TlsMode) -> Result<RustlsConnect, TlsConfigError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
    let config = match mode {
        TlsMode::VerifyFull { root_cert } => {
            let fail = |message: String| TlsConfigError::RootCert {
                path: root_cert.display().to_string(),
                message,
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(root_cert).map_err(|e| fail(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| fail(e.to_string()))?)
                    .map_err(|e| fail(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(fail("no certificates in the file".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    };
    Ok(RustlsConnect(Arc::new(config)))
}

/// Accepts any server certificate (`prefer`, `require`) but still checks
/// the handshake's signatures, so the session keys are the server's.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres' `MakeTlsConnect` over tokio-rustls.
#[derive(Clone)]
pub struct RustlsConnect(Arc<ClientConfig>);

impl std::fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustlsConnect").finish_non_exhaustive()
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, Self::Error> {
        Ok(RustlsConnector {
            config: self.0.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

/// One connection's handshake.
pub struct RustlsConnector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

/// A TLS session to the server.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No channel binding: SCRAM's `-PLUS` variant is not offered.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_both_url_forms() {
        let (rest, mode) = split_url(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=2",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@h/db?connect_timeout=2");
        assert_eq!(
            mode,
            TlsMode::VerifyFull {
                root_cert: "/tmp/ca.pem".into()
            }
        );
        let (rest, mode) = split_url("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), mode),
            ("postgres://u@h/db", TlsMode::Require)
        );
        let (rest, mode) = split_url("host=h sslmode=disable dbname=d").unwrap();
        assert_eq!((rest.as_str(), mode), ("host=h dbname=d", TlsMode::Disable));
        assert_eq!(split_url("postgres://h/db").unwrap().1, TlsMode::Prefer);
        assert!(matches!(
            split_url("postgres://h/db?sslmode=verify-full"),
            Err(TlsConfigError::NoRootCert)
        ));
        assert!(matches!(
            split_url("postgres://h/db?sslmode=verify-ca&sslrootcert=x"),
            Err(TlsConfigError::UnsupportedMode(m)) if m == "verify-ca"
        ));
        assert!(matches!(
            connector(&TlsMode::VerifyFull {
                root_cert: "/nonexistent/ca.pem".into()
            }),
            Err(TlsConfigError::RootCert { .. })
        ));
    }
}
