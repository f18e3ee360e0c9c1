//! Self-provisioned certificates: one CA + serving certificate kept in a Secret so every replica
//! serves the same one, and the MutatingWebhookConfiguration's caBundle kept in sync with it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::certs::{self, CA_FILE, CERT_FILE, CertBundle, KEY_FILE};
use crate::cluster::Cluster;
use crate::error::{ApiError, Error, Result};

/// What to provision, and where.
#[derive(Debug, Clone)]
pub struct Provisioning {
    pub namespace: String,
    pub secret: String,
    pub webhook_configuration: String,
    pub sans: Vec<String>,
    pub validity: Duration,
    /// Regenerate when less than this is left.
    pub renew_before: Duration,
}

const ATTEMPTS: usize = 4;

fn bundle_from(secret: &Secret) -> Option<CertBundle> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(CertBundle {
        ca_pem: get(CA_FILE)?,
        cert_pem: get(CERT_FILE)?,
        key_pem: get(KEY_FILE)?,
    })
}

fn secret_for(p: &Provisioning, b: &CertBundle, resource_version: Option<String>) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (CA_FILE, &b.ca_pem),
        (CERT_FILE, &b.cert_pem),
        (KEY_FILE, &b.key_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(p.secret.clone()),
            namespace: Some(p.namespace.clone()),
            resource_version,
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    contract::deploy::WEBHOOK_NAME.to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// A bundle that is usable: valid for the SANs, not near expiry, key fits the certificate.
fn usable(p: &Provisioning, b: &CertBundle) -> std::result::Result<(), String> {
    certs::check(b, &p.sans, SystemTime::now(), p.renew_before)?;
    crate::tls::certified_key(b.cert_pem.as_bytes(), b.key_pem.as_bytes())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Returns the bundle every replica should serve: the Secret's if usable, else a new one
/// written with create (absent) or an rv-guarded replace; a lost race re-reads the winner's.
pub async fn reconcile_secret<C: Cluster>(cluster: &C, p: &Provisioning) -> Result<CertBundle> {
    let ctx = || format!("Secret {}/{}", p.namespace, p.secret);
    for _ in 0..ATTEMPTS {
        let existing = cluster
            .get_secret(&p.namespace, &p.secret)
            .await
            .map_err(|e| Error::api(format!("reading {}", ctx()), e))?;
        match existing {
            None => {
                let b = certs::generate(&p.sans, p.validity)?;
                match cluster
                    .create_secret(&p.namespace, secret_for(p, &b, None))
                    .await
                {
                    Ok(()) => {
                        tracing::info!(secret = %ctx(), "generated a CA and serving certificate");
                        return Ok(b);
                    }
                    Err(ApiError::AlreadyExists) => continue,
                    Err(e) => return Err(Error::api(format!("creating {}", ctx()), e)),
                }
            }
            Some(secret) => {
                let reason = match bundle_from(&secret) {
                    Some(b) => match usable(p, &b) {
                        Ok(()) => return Ok(b),
                        Err(reason) => reason,
                    },
                    None => format!("it lacks one of {CA_FILE}, {CERT_FILE}, {KEY_FILE}"),
                };
                tracing::info!(secret = %ctx(), %reason, "regenerating the certificate");
                let b = certs::generate(&p.sans, p.validity)?;
                let rv = secret.metadata.resource_version.clone();
                match cluster
                    .replace_secret(&p.namespace, secret_for(p, &b, rv))
                    .await
                {
                    Ok(()) => return Ok(b),
                    // Another replica replaced it first: use theirs.
                    Err(ApiError::Conflict) => continue,
                    Err(e) => return Err(Error::api(format!("replacing {}", ctx()), e)),
                }
            }
        }
    }
    Err(Error::api(
        ctx(),
        ApiError::Other(format!(
            "still changing concurrently after {ATTEMPTS} attempts"
        )),
    ))
}

/// Sets `ca` as the caBundle of every webhook entry that lacks it. Returns how many entries
/// were updated; a missing configuration is not an error (it may not be applied yet).
pub async fn sync_ca_bundle<C: Cluster>(
    cluster: &C,
    configuration: &str,
    ca: &[u8],
) -> Result<usize> {
    let ctx = || format!("MutatingWebhookConfiguration {configuration}");
    let Some(entries) = cluster
        .get_webhooks(configuration)
        .await
        .map_err(|e| Error::api(format!("reading {}", ctx()), e))?
    else {
        tracing::warn!(
            configuration,
            "MutatingWebhookConfiguration not found; its caBundle will be set once it exists"
        );
        return Ok(0);
    };
    let stale: Vec<(usize, String)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.ca_bundle.as_deref() != Some(ca))
        .map(|(i, e)| (i, e.name.clone()))
        .collect();
    if stale.is_empty() {
        return Ok(0);
    }
    cluster
        .set_ca_bundles(configuration, &stale, ca)
        .await
        .map_err(|e| Error::api(format!("patching the caBundle of {}", ctx()), e))?;
    tracing::info!(configuration, webhooks = stale.len(), "caBundle updated");
    Ok(stale.len())
}
