//! TLS without a proxy: rustls (ring provider) with the certificate chain and key read from
//! `server.tls_cert_file` / `server.tls_key_file` (PEM).
//!
//! The certified key sits behind an [`ArcSwap`] that a [`ResolvesServerCert`] reads on every
//! handshake, so a renewed certificate takes effect for new connections without a restart: a
//! task polls the files' modification times and swaps the key in when both parse and match.
//! A bad new file keeps the old key in force and logs an error; connections already open are
//! never touched.

use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Why a certificate/key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a malformed one.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    /// The key file holds no usable PEM private key.
    #[error("{path}: no usable PEM private key: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refused the pair.
    #[error("the key does not match the certificate, or is not supported: {0}")]
    Mismatch(String),
}

/// The certificate presented to clients, swappable while serving.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reads and checks a PEM certificate chain and its private key.
pub async fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        async move {
            tokio::fs::read(&path)
                .await
                .map_err(|source| TlsError::Read { path, source })
        }
    };
    let cert_pem = read(cert_file).await?;
    let key_pem = read(key_file).await?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate(cert_file.to_path_buf()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: key_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Mismatch(e.to_string()))
}

/// The TLS side of the listener: an acceptor whose certificate reloads itself.
#[derive(Clone)]
pub struct Tls {
    /// Performs handshakes with the current certificate.
    pub acceptor: TlsAcceptor,
}

impl Tls {
    /// Loads the pair and, when `poll` is non-zero, starts the task that reloads it when
    /// either file's modification time changes (until `shutdown`).
    pub async fn start(
        cert_file: PathBuf,
        key_file: PathBuf,
        poll: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(default_provider());
        let first = load_pair(&cert_file, &key_file, &provider).await?;
        let store = Arc::new(CertStore {
            current: ArcSwap::from_pointee(first),
        });
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Mismatch(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !poll.is_zero() {
            tokio::spawn(reload_loop(
                cert_file, key_file, poll, provider, store, shutdown,
            ));
        }
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

async fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let c = tokio::fs::metadata(cert).await.ok()?.modified().ok()?;
    let k = tokio::fs::metadata(key).await.ok()?.modified().ok()?;
    Some((c, k))
}

/// Polls the files; when they changed, loads the new pair and swaps it in if it is good.
async fn reload_loop(
    cert_file: PathBuf,
    key_file: PathBuf,
    poll: Duration,
    provider: Arc<CryptoProvider>,
    store: Arc<CertStore>,
    shutdown: CancellationToken,
) {
    let mut seen = mtimes(&cert_file, &key_file).await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        let now = mtimes(&cert_file, &key_file).await;
        if now.is_none() || now == seen {
            continue;
        }
        seen = now;
        match load_pair(&cert_file, &key_file, &provider).await {
            Ok(pair) => {
                store.current.store(Arc::new(pair));
                tracing::info!(cert = %cert_file.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(
                error = %e,
                "new TLS certificate or key rejected; the previous one stays in use"
            ),
        }
    }
}
