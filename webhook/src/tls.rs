//! The serving certificate: a swappable rustls resolver, loading from PEM, and reloading from
//! files (including a mounted Secret's atomic `..data` symlink swap).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::{Error, Result};

/// Hands the current certificate to every new handshake; [`CertResolver::set`] swaps it without
/// touching open connections.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertResolver {
    pub fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
    }

    /// Whether a certificate is loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain and private key, checking that they belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("reading the certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("no certificate found in the PEM".into()));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| Error::Tls(format!("reading the private key PEM: {e}")))?
        .ok_or_else(|| Error::Tls("no private key found in the PEM".into()))?;
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| Error::Tls(format!("certificate and key do not fit together: {e}")))
}

/// TLS 1.2 and 1.3 only, HTTP/1.1, certificate from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Loads a certificate/key pair from files and reloads it when their content changes.
pub struct FileSource {
    cert: PathBuf,
    key: PathBuf,
    last: Option<(Vec<u8>, Vec<u8>)>,
}

impl FileSource {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            last: None,
        }
    }

    fn read(path: &Path) -> Result<Vec<u8>> {
        // Reading through the path (not a kept file handle) follows a swapped `..data` link.
        std::fs::read(path).map_err(|e| Error::io(path, e))
    }

    /// Reads both files; installs them into `resolver` if they changed and are valid. Returns
    /// whether a new certificate was installed. An invalid pair (e.g. caught mid-update) keeps the
    /// previous certificate and is reported as an error.
    pub fn reload(&mut self, resolver: &CertResolver) -> Result<bool> {
        let cert = Self::read(&self.cert)?;
        let key = Self::read(&self.key)?;
        if self
            .last
            .as_ref()
            .is_some_and(|(c, k)| *c == cert && *k == key)
        {
            return Ok(false);
        }
        let ck = certified_key(&cert, &key).map_err(|e| {
            Error::Tls(format!(
                "{} / {}: {e}",
                self.cert.display(),
                self.key.display()
            ))
        })?;
        resolver.set(ck);
        self.last = Some((cert, key));
        Ok(true)
    }

    /// Polls every `interval`, forever (the caller aborts the task on shutdown).
    pub async fn watch(
        mut self,
        resolver: Arc<CertResolver>,
        interval: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload(&resolver) {
                Ok(true) => {
                    metrics.cert_reloaded();
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "serving certificate not reloaded; keeping the current one")
                }
            }
        }
    }
}
