//! TLS for the HTTP and gRPC doors (rustls): certificate and key from PEM
//! files, optional client certificates checked against a CA (mTLS), and
//! the files re-read when they change, so rotating a certificate needs no
//! restart. Each connection's handshake uses the configuration current at
//! its accept; connections already open keep theirs.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use metrics::counter;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::InvalidSetting;
use crate::metrics::TLS_RELOADS_TOTAL;

/// `[tls]`: one certificate for both doors. Off unless `cert_path` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain, leaf first. Setting it
    /// (and `key_path`) turns TLS on for HTTP and gRPC; plaintext
    /// connections are then refused at the handshake.
    pub cert_path: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
    /// PEM file with the CA certificates that client certificates must
    /// chain to. Set, every client must present one (mutual TLS).
    pub client_ca_path: Option<PathBuf>,
    /// How often the files are checked for changes, in ms; a change loads
    /// them for new connections (a bad new file is logged and the old
    /// certificate kept). 0 turns reloading off.
    pub reload_interval_ms: u64,
    /// Longest a client may take to finish the handshake, in ms.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_path: None,
            key_path: None,
            client_ca_path: None,
            reload_interval_ms: 2000,
            handshake_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub client_ca_path: Option<PathBuf>,
    /// `None`: no reloading.
    pub reload_interval: Option<Duration>,
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    /// `None` when TLS is off. The files are read at start (`Tls::load`),
    /// so a bad certificate stops the gateway there with its path.
    pub fn validate(self) -> Result<Option<TlsSettings>, InvalidSetting> {
        let (cert_path, key_path) = match (self.cert_path, self.key_path) {
            (None, None) => {
                if self.client_ca_path.is_some() {
                    return Err(InvalidSetting::new(
                        "tls.client_ca_path",
                        "needs tls.cert_path and tls.key_path: client certificates are checked only over TLS",
                    ));
                }
                return Ok(None);
            }
            (Some(c), Some(k)) => (c, k),
            (Some(_), None) => {
                return Err(InvalidSetting::new(
                    "tls.key_path",
                    "tls.cert_path is set but tls.key_path is not",
                ));
            }
            (None, Some(_)) => {
                return Err(InvalidSetting::new(
                    "tls.cert_path",
                    "tls.key_path is set but tls.cert_path is not",
                ));
            }
        };
        if self.handshake_timeout_ms == 0 {
            return Err(InvalidSetting::new(
                "tls.handshake_timeout_ms",
                "must be at least 1",
            ));
        }
        Ok(Some(TlsSettings {
            cert_path,
            key_path,
            client_ca_path: self.client_ca_path,
            reload_interval: (self.reload_interval_ms > 0)
                .then(|| Duration::from_millis(self.reload_interval_ms)),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("invalid TLS certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client CA: {0}")]
    ClientCa(String),
}

/// Which protocol a listener speaks over TLS (its ALPN names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Http,
    Grpc,
}

impl Door {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Door::Http => vec![b"http/1.1".to_vec()],
            Door::Grpc => vec![b"h2".to_vec()],
        }
    }
}

/// The current server configurations (one per door), swapped whole when
/// the files change.
pub struct Tls {
    settings: TlsSettings,
    http: ArcSwap<ServerConfig>,
    grpc: ArcSwap<ServerConfig>,
    /// What the files looked like at the last load.
    stamp: std::sync::Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl Tls {
    pub fn load(settings: TlsSettings) -> Result<Arc<Tls>, TlsError> {
        let stamp = stamp(&settings);
        let (http, grpc) = build(&settings)?;
        Ok(Arc::new(Tls {
            settings,
            http: ArcSwap::from_pointee(http),
            grpc: ArcSwap::from_pointee(grpc),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    pub fn acceptor(&self, door: Door) -> TlsAcceptor {
        let config = match door {
            Door::Http => self.http.load_full(),
            Door::Grpc => self.grpc.load_full(),
        };
        TlsAcceptor::from(config)
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// Reloads the files if they changed since the last load; `true` when a
    /// new certificate is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.settings);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return false;
        }
        match build(&self.settings) {
            Ok((http, grpc)) => {
                self.http.store(Arc::new(http));
                self.grpc.store(Arc::new(grpc));
                *last = now;
                counter!(TLS_RELOADS_TOTAL, "outcome" => "loaded").increment(1);
                tracing::info!(cert = %self.settings.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // A half-written file is the usual cause: keep serving the
                // old certificate and try again at the next change.
                *last = now;
                counter!(TLS_RELOADS_TOTAL, "outcome" => "failed").increment(1);
                tracing::error!(error = %e, "TLS files changed but cannot be loaded; keeping the previous certificate");
                false
            }
        }
    }

    /// Checks the files on the configured interval until `stop` resolves.
    pub async fn watch(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let Some(every) = self.settings.reload_interval else {
            return;
        };
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let me = Arc::clone(&self);
                    // Reads files: off the async workers.
                    let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
                }
                () = &mut stop => return,
            }
        }
    }
}

fn stamp(s: &TlsSettings) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&s.cert_path),
        Some(&s.key_path),
        s.client_ca_path.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.into(),
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn build(s: &TlsSettings) -> Result<(ServerConfig, ServerConfig), TlsError> {
    let chain = certs(&s.cert_path)?;
    let key_pem = read(&s.key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: s.key_path.clone(),
        message: format!("no private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match &s.client_ca_path {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::ClientCa(format!("{}: {e}", ca.display())))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key)?;
    let for_door = |door: Door| {
        let mut c = config.clone();
        c.alpn_protocols = door.alpn();
        c
    };
    Ok((for_door(Door::Http), for_door(Door::Grpc)))
}

/// An accepted connection, encrypted or not; both doors serve it alike.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Accepts `stream` with TLS when `tls` is set, within the handshake
    /// timeout. A client that speaks plaintext to a TLS port fails here at
    /// once (its bytes are not a TLS record) and the socket is closed.
    pub async fn accept(
        stream: TcpStream,
        tls: Option<&Tls>,
        door: Door,
    ) -> Result<Conn, io::Error> {
        let Some(tls) = tls else {
            return Ok(Conn::Plain(stream));
        };
        let acceptor = tls.acceptor(door);
        match tokio::time::timeout(tls.handshake_timeout(), acceptor.accept(stream)).await {
            Ok(Ok(s)) => Ok(Conn::Tls(Box::new(s))),
            Ok(Err(e)) => {
                counter!(crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                Err(e)
            }
            Err(_) => {
                counter!(crate::metrics::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            }
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Option<std::net::SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().peer_addr().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_off_without_files_and_needs_both() {
        assert!(TlsConfig::default().validate().unwrap().is_none());
        let only_cert = TlsConfig {
            cert_path: Some("c.pem".into()),
            ..TlsConfig::default()
        };
        assert_eq!(only_cert.validate().unwrap_err().key, "tls.key_path");
        let ca_alone = TlsConfig {
            client_ca_path: Some("ca.pem".into()),
            ..TlsConfig::default()
        };
        assert_eq!(ca_alone.validate().unwrap_err().key, "tls.client_ca_path");
    }

    #[test]
    fn a_missing_certificate_is_named() {
        let settings = TlsConfig {
            cert_path: Some("/nonexistent/quiver.pem".into()),
            key_path: Some("/nonexistent/quiver.key".into()),
            ..TlsConfig::default()
        }
        .validate()
        .unwrap()
        .unwrap();
        let err = Tls::load(settings).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/quiver.pem"), "{err}");
    }
}
