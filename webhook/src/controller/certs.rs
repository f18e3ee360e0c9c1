//! The self-provisioned certificate, owned by the one active controller (replicas only read the
//! Secret and report what they serve).
//!
//! Secret layout (type `kubernetes.io/tls`): `ca.crt`/`ca.key` the CA that issued `tls.crt`/
//! `tls.key`; `ca-bundle.crt` every CA the MutatingWebhookConfiguration must trust; during a CA
//! rotation `next-ca.crt`/`next-ca.key`. The CA lives for its full validity; serving
//! certificates are renewed under it. A new CA (first install, CA near expiry, Secret deleted)
//! goes through these steps, one write each, so a crash anywhere resumes safely:
//! 1. [`Step::StartCa`]: the new CA is stored as `next-ca.*`; nothing serves from it yet.
//! 2. [`Step::TrustNext`]: the caBundle becomes every CA still trusted (including those in the
//!    live caBundle: after a deleted Secret, replicas still serve the old certificate) plus the
//!    new one — before any replica can serve a certificate from it.
//! 3. [`Step::MarkTrusted`], then after [`CertPolicy::settle`] (API servers load a changed
//!    configuration asynchronously) [`Step::Promote`]: the new CA issues the serving
//!    certificate; replicas pick it up.
//! 4. [`Step::DropOld`]: once every live replica reports serving a certificate of the new CA,
//!    the old CAs leave the bundle.
//!
//! SANs are the active controller's alone, so replicas with different flags never replace each
//! other's certificate.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use crate::certs::{self, CA_FILE, CERT_FILE, Ca, KEY_FILE};
use crate::cluster::Cluster;
use crate::error::{Error, Result};

pub const CA_KEY_FILE: &str = "ca.key";
pub const BUNDLE_FILE: &str = "ca-bundle.crt";
pub const NEXT_CA_FILE: &str = "next-ca.crt";
pub const NEXT_CA_KEY_FILE: &str = "next-ca.key";
/// When the caBundle was seen trusting `next-ca.crt` (unix seconds).
pub const NEXT_TRUSTED_AT: &str = "next-ca-trusted-at";
/// Default of [`CertPolicy::settle`].
pub const TRUST_SETTLE: Duration = Duration::from_secs(5);
/// Label of the replicas' report Leases.
pub const REPLICA_LABEL: &str = "leader-election.dev/webhook-replica";
/// Annotation of a report Lease: serial number of the CA that issued the certificate served.
pub const SERVING_CA: &str = "leader-election.dev/serving-ca-serial";

/// What to provision.
#[derive(Debug, Clone)]
pub struct CertPolicy {
    pub namespace: String,
    pub secret: String,
    pub webhook_configuration: String,
    pub sans: Vec<String>,
    pub ca_validity: Duration,
    pub ca_renew_before: Duration,
    pub validity: Duration,
    pub renew_before: Duration,
    /// How long the caBundle trusts a new CA before any replica serves from it: API servers
    /// load a changed webhook configuration asynchronously.
    pub settle: Duration,
}

/// The Secret's data as strings.
pub type Data = BTreeMap<String, String>;

/// Everything a decision needs, read from the API server.
#[derive(Debug, Clone, Default)]
pub struct CertState {
    pub secret: Option<Data>,
    /// Each webhook entry's caBundle (empty when unset); `None`: no configuration yet.
    pub bundles: Option<Vec<String>>,
    /// The CA serial each live replica serves from.
    pub replicas: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    StartCa,
    TrustNext {
        bundle: String,
    },
    MarkTrusted,
    /// Trusted, waiting for [`CertPolicy::settle`] to pass.
    Settling,
    /// The MutatingWebhookConfiguration does not exist (yet): a new CA waits for it.
    NoConfiguration,
    Promote,
    RenewServing(String),
    DropOld,
    SyncBundle {
        bundle: String,
    },
    Done,
}

fn unix(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn get<'a>(d: &'a Data, k: &str) -> Option<&'a str> {
    d.get(k)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

/// Certificates of `pem` that are not expired at `now`, deduplicated, in order.
fn live_certs(pems: &[&str], now: i64) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pem in pems {
        for c in certs::split_pem(pem) {
            let fresh = certs::serial_and_expiry(&c).is_ok_and(|(_, exp)| exp > now);
            if fresh && !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// The one next step towards a consistent certificate, from the state alone.
pub fn plan(state: &CertState, policy: &CertPolicy, now: SystemTime) -> Step {
    let t = unix(now);
    let empty = Data::new();
    let d = state.secret.as_ref().unwrap_or(&empty);
    let ca_ok = match (get(d, CA_FILE), get(d, CA_KEY_FILE)) {
        (Some(ca), Some(_)) => certs::serial_and_expiry(ca)
            .is_ok_and(|(_, exp)| exp > t + policy.ca_renew_before.as_secs() as i64),
        _ => false,
    };
    if let (Some(next), Some(_)) = (get(d, NEXT_CA_FILE), get(d, NEXT_CA_KEY_FILE)) {
        if state.bundles.is_none() {
            // Nothing can be made to trust it yet.
            return Step::NoConfiguration;
        }
        let trusted = state
            .bundles
            .as_ref()
            .is_some_and(|b| !b.is_empty() && b.iter().all(|x| x.contains(next.trim())));
        if !trusted {
            let live: Vec<&str> = state.bundles.iter().flatten().map(String::as_str).collect();
            let mut all: Vec<&str> = live;
            all.extend(get(d, BUNDLE_FILE));
            all.extend(get(d, CA_FILE));
            all.push(next);
            return Step::TrustNext {
                bundle: live_certs(&all, t).concat(),
            };
        }
        return match get(d, NEXT_TRUSTED_AT).and_then(|v| v.trim().parse::<i64>().ok()) {
            None => Step::MarkTrusted,
            Some(at) if t < at + policy.settle.as_secs() as i64 => Step::Settling,
            Some(_) => Step::Promote,
        };
    }
    if !ca_ok {
        return Step::StartCa;
    }
    // The CA is good: the serving certificate must be one of its, for our SANs, not expiring.
    let bundle = certs::CertBundle {
        ca_pem: get(d, CA_FILE).unwrap_or_default().to_string(),
        cert_pem: get(d, CERT_FILE).unwrap_or_default().to_string(),
        key_pem: get(d, KEY_FILE).unwrap_or_default().to_string(),
    };
    if let Err(reason) = certs::check(&bundle, &policy.sans, now, policy.renew_before) {
        return Step::RenewServing(reason);
    }
    let ca = get(d, CA_FILE).unwrap_or_default();
    let secret_bundle = get(d, BUNDLE_FILE).unwrap_or(ca).to_string();
    let others = certs::split_pem(&secret_bundle)
        .into_iter()
        .any(|c| c.trim() != ca.trim());
    if others {
        let serial = certs::serial_and_expiry(ca)
            .map(|(s, _)| s)
            .unwrap_or_default();
        if !state.replicas.is_empty() && state.replicas.iter().all(|r| *r == serial) {
            return Step::DropOld;
        }
    }
    match &state.bundles {
        Some(b) if b.iter().any(|x| x.trim() != secret_bundle.trim()) => Step::SyncBundle {
            bundle: secret_bundle,
        },
        _ => Step::Done,
    }
}

fn secret(policy: &CertPolicy, data: Data, rv: Option<String>) -> Secret {
    let mut data = data;
    // A kubernetes.io/tls Secret must carry both keys, empty until a certificate is served.
    data.entry(CERT_FILE.into()).or_default();
    data.entry(KEY_FILE.into()).or_default();
    Secret {
        metadata: ObjectMeta {
            name: Some(policy.secret.clone()),
            namespace: Some(policy.namespace.clone()),
            resource_version: rv,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                contract::deploy::WEBHOOK_NAME.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn data_of(s: &Secret) -> Data {
    s.data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

/// Whether a report Lease is live (renewed within its duration) at `now`.
fn live(l: &Lease, now: i64) -> bool {
    let spec = l.spec.clone().unwrap_or_default();
    let renewed = spec.renew_time.map(|t| t.0.as_second()).unwrap_or(0);
    renewed + i64::from(spec.lease_duration_seconds.unwrap_or(0)) > now
}

/// Reads the state from the API server.
pub async fn read<C: Cluster>(c: &C, policy: &CertPolicy) -> Result<(CertState, Option<Secret>)> {
    let s = c
        .get_secret(&policy.namespace, &policy.secret)
        .await
        .map_err(|e| Error::api(format!("reading Secret {}", policy.secret), e))?;
    let bundles = c
        .get_webhooks(&policy.webhook_configuration)
        .await
        .map_err(|e| Error::api("reading the MutatingWebhookConfiguration", e))?
        .map(|entries| {
            entries
                .into_iter()
                .map(|e| String::from_utf8(e.ca_bundle.unwrap_or_default()).unwrap_or_default())
                .collect()
        });
    let now = unix(SystemTime::now());
    let replicas = c
        .list_leases(&policy.namespace, &format!("{REPLICA_LABEL}=true"))
        .await
        .map_err(|e| Error::api("listing the replicas' reports", e))?
        .into_iter()
        .filter(|l| live(l, now))
        .map(|l| {
            l.metadata
                .annotations
                .and_then(|a| a.get(SERVING_CA).cloned())
                .unwrap_or_default()
        })
        .collect();
    Ok((
        CertState {
            secret: s.as_ref().map(data_of),
            bundles,
            replicas,
        },
        s,
    ))
}

/// Sets every webhook entry's caBundle to `bundle`.
async fn set_bundle<C: Cluster>(c: &C, policy: &CertPolicy, bundle: &str) -> Result<()> {
    let Some(entries) = c
        .get_webhooks(&policy.webhook_configuration)
        .await
        .map_err(|e| Error::api("reading the MutatingWebhookConfiguration", e))?
    else {
        return Ok(());
    };
    let all: Vec<(usize, String)> = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i, e.name))
        .collect();
    c.set_ca_bundles(&policy.webhook_configuration, &all, bundle.as_bytes())
        .await
        .map_err(|e| Error::api("patching the caBundle", e))
}

/// Runs steps until the certificate is consistent (at most a few writes); returns the steps.
pub async fn reconcile<C: Cluster>(c: &C, policy: &CertPolicy) -> Result<Vec<Step>> {
    let mut done = Vec::new();
    for _ in 0..6 {
        let (state, stored) = read(c, policy).await?;
        let step = plan(&state, policy, SystemTime::now());
        if step == Step::Done {
            break;
        }
        if matches!(step, Step::Settling | Step::NoConfiguration) {
            // Looked at again on the next pass.
            if step == Step::NoConfiguration {
                tracing::info!(
                    configuration = %policy.webhook_configuration,
                    "waiting for the MutatingWebhookConfiguration to trust the new CA"
                );
            }
            done.push(step);
            break;
        }
        let rv = stored
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone());
        let mut data = state.secret.clone().unwrap_or_default();
        let ns = &policy.namespace;
        let write = |data: Data| async {
            let s = secret(policy, data, rv.clone());
            let r = if stored.is_some() {
                c.replace_secret(ns, s).await
            } else {
                c.create_secret(ns, s).await
            };
            r.map_err(|e| Error::api(format!("writing Secret {}", policy.secret), e))
        };
        match &step {
            Step::StartCa => {
                let ca = certs::generate_ca(policy.ca_validity)?;
                data.insert(NEXT_CA_FILE.into(), ca.cert_pem);
                data.insert(NEXT_CA_KEY_FILE.into(), ca.key_pem);
                write(data).await?;
                tracing::info!("new CA generated; trusting it before serving from it");
            }
            Step::TrustNext { bundle } => {
                set_bundle(c, policy, bundle).await?;
                tracing::info!(
                    cas = certs::split_pem(bundle).len(),
                    "caBundle trusts the new CA"
                );
            }
            Step::MarkTrusted => {
                data.insert(NEXT_TRUSTED_AT.into(), unix(SystemTime::now()).to_string());
                write(data).await?;
            }
            Step::Promote => {
                data.remove(NEXT_TRUSTED_AT);
                let next = Ca {
                    cert_pem: data.remove(NEXT_CA_FILE).unwrap_or_default(),
                    key_pem: data.remove(NEXT_CA_KEY_FILE).unwrap_or_default(),
                };
                let b = certs::issue(&next, &policy.sans, policy.validity)?;
                let trusted = state
                    .bundles
                    .as_ref()
                    .and_then(|b| b.first().cloned())
                    .unwrap_or_else(|| next.cert_pem.clone());
                data.insert(CA_FILE.into(), next.cert_pem);
                data.insert(CA_KEY_FILE.into(), next.key_pem);
                data.insert(CERT_FILE.into(), b.cert_pem);
                data.insert(KEY_FILE.into(), b.key_pem);
                data.insert(BUNDLE_FILE.into(), trusted);
                write(data).await?;
                tracing::info!("serving certificate issued by the new CA");
            }
            Step::RenewServing(reason) => {
                let ca = Ca {
                    cert_pem: data.get(CA_FILE).cloned().unwrap_or_default(),
                    key_pem: data.get(CA_KEY_FILE).cloned().unwrap_or_default(),
                };
                let b = certs::issue(&ca, &policy.sans, policy.validity)?;
                data.insert(CERT_FILE.into(), b.cert_pem);
                data.insert(KEY_FILE.into(), b.key_pem);
                write(data).await?;
                tracing::info!(%reason, "serving certificate renewed under the same CA");
            }
            Step::DropOld => {
                let ca = data.get(CA_FILE).cloned().unwrap_or_default();
                // The Secret first: if we stop here, SyncBundle finishes the job.
                data.insert(BUNDLE_FILE.into(), ca.clone());
                write(data).await?;
                set_bundle(c, policy, &ca).await?;
                tracing::info!("every replica serves the new CA's certificate; old CAs dropped");
            }
            Step::SyncBundle { bundle } => {
                set_bundle(c, policy, bundle).await?;
                tracing::info!("caBundle restored from the Secret");
            }
            Step::Done | Step::Settling | Step::NoConfiguration => {}
        }
        done.push(step);
    }
    Ok(done)
}

/// A replica's report: which CA issued the certificate it serves (a Lease renewed every resync,
/// so a replica that is gone stops counting).
pub fn report(
    namespace: &str,
    name: &str,
    identity: &str,
    ca_serial: &str,
    every: Duration,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                REPLICA_LABEL.to_string(),
                "true".to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                SERVING_CA.to_string(),
                ca_serial.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(
                i32::try_from(every.as_secs().saturating_mul(3).max(3)).unwrap_or(i32::MAX),
            ),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    }
}
