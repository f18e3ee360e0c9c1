//! Self-provisioned certificates, replica side: every replica serves the certificate the Secret
//! holds and reports which CA issued it. Writing the Secret and the caBundle is the active
//! controller's job alone ([`crate::controller::certs`]).

use std::sync::Arc;
use std::time::Duration;

use crate::certs::{self, CA_FILE, CERT_FILE, KEY_FILE};
use crate::cluster::Cluster;
use crate::controller::certs::report;
use crate::metrics::Metrics;
use crate::tls::{self, CertResolver};

/// Where a replica reads its certificate and reports.
#[derive(Debug, Clone)]
pub struct ReplicaCerts {
    pub namespace: String,
    pub secret: String,
    /// Name of this replica's report Lease.
    pub report: String,
    pub identity: String,
    pub every: Duration,
}

/// The serving certificate, key and issuing CA in the Secret, when there is one to serve.
pub fn serving(
    data: &std::collections::BTreeMap<String, k8s_openapi::ByteString>,
) -> Option<(String, String, String)> {
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|v| !v.trim().is_empty())
    };
    Some((get(CERT_FILE)?, get(KEY_FILE)?, get(CA_FILE)?))
}

/// One pass: load what the Secret holds if it changed; returns the CA serial now served.
pub async fn sync_once<C: Cluster>(
    cluster: &C,
    p: &ReplicaCerts,
    resolver: &CertResolver,
    metrics: &Metrics,
    current: &mut Option<(String, String)>,
) -> Option<String> {
    match cluster.get_secret(&p.namespace, &p.secret).await {
        Ok(Some(s)) => {
            if let Some((cert, key, ca)) = s.data.as_ref().and_then(serving) {
                let serial = certs::serial_and_expiry(&ca)
                    .map(|(s, _)| s)
                    .unwrap_or_default();
                let changed = current.as_ref().map(|(c, _)| c) != Some(&cert);
                if changed {
                    match tls::certified_key(cert.as_bytes(), key.as_bytes()) {
                        Ok(ck) => {
                            let first = current.is_none();
                            resolver.set(ck);
                            if first {
                                metrics.cert_loaded();
                            } else {
                                metrics.cert_reloaded();
                            }
                            tracing::info!(ca_serial = %serial, "serving the certificate from the Secret");
                            *current = Some((cert, serial));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the Secret's certificate cannot be loaded")
                        }
                    }
                }
            } else if current.is_none() {
                tracing::info!("waiting for the controller to write the serving certificate");
            }
        }
        Ok(None) => {
            if current.is_none() {
                tracing::info!(secret = %p.secret, "waiting for the controller to create the certificate Secret");
            }
        }
        Err(e) => tracing::warn!(error = %e, "certificate Secret not read"),
    }
    current.as_ref().map(|(_, serial)| serial.clone())
}

/// Serves from the Secret forever: polls quickly until a certificate is loaded, then every
/// `p.every`, reporting after each pass.
pub async fn serve_from_secret<C: Cluster>(
    cluster: Arc<C>,
    p: ReplicaCerts,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
) {
    let mut current = None;
    loop {
        let serial = sync_once(cluster.as_ref(), &p, &resolver, &metrics, &mut current).await;
        if let Some(serial) = &serial {
            let lease = report(&p.namespace, &p.report, &p.identity, serial, p.every);
            if let Err(e) = cluster.upsert_lease(&p.namespace, lease).await {
                tracing::warn!(error = %e, "cannot report the served certificate");
            }
        }
        let wait = if serial.is_some() {
            p.every
        } else {
            p.every.min(Duration::from_secs(1))
        };
        tokio::time::sleep(wait).await;
    }
}
