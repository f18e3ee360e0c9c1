//! Self-provisioned certificates (the controller's rotation steps and the replicas' side) and
//! the native-sidecar probe against the in-memory cluster.

use std::time::{Duration, SystemTime};

use webhook::certs::{self, CertBundle};
use webhook::cluster::{NativeSupport, WebhookEntry};
use webhook::controller::certs::{self as rotation, CertPolicy, Step};
use webhook::error::ApiError;
use webhook::fake::FakeCluster;
use webhook::metrics::Metrics;
use webhook::provision::{self, ReplicaCerts};
use webhook::tls::CertResolver;

const DAY: Duration = Duration::from_secs(86_400);

fn policy() -> CertPolicy {
    CertPolicy {
        namespace: "sys".into(),
        secret: "tls".into(),
        webhook_configuration: "cfg".into(),
        sans: certs::service_sans("svc", "sys", &["127.0.0.1".into()]),
        ca_validity: 1000 * DAY,
        ca_renew_before: 90 * DAY,
        validity: 365 * DAY,
        renew_before: 30 * DAY,
        settle: Duration::ZERO,
    }
}

fn cluster() -> FakeCluster {
    let c = FakeCluster::new();
    let entry = |name: &str| WebhookEntry {
        name: name.into(),
        ca_bundle: None,
    };
    c.with(|s| {
        s.webhooks
            .insert("cfg".into(), vec![entry("pods.x"), entry("workloads.x")]);
    });
    c
}

fn secret_value(c: &FakeCluster, key: &str) -> String {
    c.with(|s| {
        s.secrets
            .get(&("sys".to_string(), "tls".to_string()))
            .and_then(|x| x.data.as_ref())
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8(b.0.clone()).unwrap())
            .unwrap_or_default()
    })
}

/// The caBundle every entry carries (they are always set together).
fn bundle(c: &FakeCluster) -> String {
    c.with(|s| {
        let entries = &s.webhooks["cfg"];
        let first = entries[0].ca_bundle.clone().unwrap_or_default();
        for e in entries {
            assert_eq!(
                e.ca_bundle.clone().unwrap_or_default(),
                first,
                "entries differ"
            );
        }
        String::from_utf8(first).unwrap()
    })
}

/// Whether `cert_pem` (for our SANs) verifies against one of the CAs in `bundle`: what the API
/// server does when it calls a replica serving it.
fn trusted(bundle: &str, cert_pem: &str) -> bool {
    certs::split_pem(bundle).into_iter().any(|ca| {
        certs::check(
            &CertBundle {
                ca_pem: ca,
                cert_pem: cert_pem.to_string(),
                key_pem: String::new(),
            },
            &policy().sans,
            SystemTime::now(),
            Duration::ZERO,
        )
        .is_ok()
    })
}

fn serial(pem: &str) -> String {
    certs::serial_and_expiry(pem).unwrap().0
}

/// A replica reporting that it serves a certificate of the CA with `ca_serial`.
fn replica_reports(c: &FakeCluster, name: &str, ca_serial: &str) {
    let lease = rotation::report("sys", name, name, ca_serial, Duration::from_secs(30));
    c.with(|s| {
        s.leases.insert(("sys".into(), name.into()), lease);
    });
}

#[tokio::test]
async fn first_install_trusts_the_ca_before_any_certificate_is_served() {
    let c = cluster();
    let p = policy();
    let steps = rotation::reconcile(&c, &p).await.unwrap();
    assert_eq!(steps[0], Step::StartCa);
    assert!(matches!(steps[1], Step::TrustNext { .. }), "{steps:?}");
    assert_eq!(steps[2..], [Step::MarkTrusted, Step::Promote]);
    let ca = secret_value(&c, "ca.crt");
    assert_eq!(bundle(&c).trim(), ca.trim());
    assert!(trusted(&bundle(&c), &secret_value(&c, "tls.crt")));
    // Consistent: nothing more to do, and a second pass only reads.
    c.clear_calls();
    assert!(rotation::reconcile(&c, &p).await.unwrap().is_empty());
    assert!(
        c.calls()
            .iter()
            .all(|x| x.starts_with("get_") || x.starts_with("list_")),
        "{:?}",
        c.calls()
    );
    // A replica serves it and reports its CA.
    let r = ReplicaCerts {
        namespace: "sys".into(),
        secret: "tls".into(),
        report: "rep-a".into(),
        identity: "a".into(),
        every: Duration::from_secs(30),
    };
    let resolver = CertResolver::default();
    let mut current = None;
    let got = provision::sync_once(&c, &r, &resolver, &Metrics::new(), &mut current).await;
    assert_eq!(got, Some(serial(&ca)));
    assert!(resolver.is_loaded());
}

#[tokio::test]
async fn a_replica_waits_while_no_certificate_is_there() {
    let c = cluster();
    let r = ReplicaCerts {
        namespace: "sys".into(),
        secret: "tls".into(),
        report: "rep-a".into(),
        identity: "a".into(),
        every: Duration::from_secs(30),
    };
    let resolver = CertResolver::default();
    let mut current = None;
    assert_eq!(
        provision::sync_once(&c, &r, &resolver, &Metrics::new(), &mut current).await,
        None
    );
    assert!(!resolver.is_loaded());
    // No configuration yet: the next CA is stored, then waits to be trusted; nothing to serve.
    let p = policy();
    c.with(|s| {
        s.webhooks.clear();
    });
    assert_eq!(
        rotation::reconcile(&c, &p).await.unwrap(),
        vec![Step::StartCa, Step::NoConfiguration]
    );
    assert_eq!(
        provision::sync_once(&c, &r, &resolver, &Metrics::new(), &mut current).await,
        None
    );
    assert!(secret_value(&c, "tls.crt").is_empty());
    assert!(!secret_value(&c, "next-ca.crt").is_empty());
}

#[tokio::test]
async fn the_serving_certificate_is_renewed_under_the_same_ca() {
    let c = cluster();
    let mut p = policy();
    rotation::reconcile(&c, &p).await.unwrap();
    let (ca, bundle_before, cert) = (
        secret_value(&c, "ca.crt"),
        bundle(&c),
        secret_value(&c, "tls.crt"),
    );
    p.renew_before = 400 * DAY; // the certificate (365 d) is now within its renewal window
    let steps = rotation::reconcile(&c, &p).await.unwrap();
    assert!(matches!(steps[0], Step::RenewServing(_)), "{steps:?}");
    assert_eq!(secret_value(&c, "ca.crt"), ca, "same CA");
    assert_eq!(bundle(&c), bundle_before, "caBundle untouched");
    assert_ne!(secret_value(&c, "tls.crt"), cert);
    assert!(trusted(&bundle(&c), &secret_value(&c, "tls.crt")));
    // Other SANs (another replica's --extra-san) are not a reason for the controller to change
    // anything: only its own SANs count.
    let mut q = policy();
    q.renew_before = 30 * DAY;
    assert!(rotation::reconcile(&c, &q).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_ca_rotation_keeps_old_and_new_trusted_until_every_replica_serves_the_new() {
    let c = cluster();
    // Installed with a CA of 60 days; the policy below rotates a CA with less than 90 left.
    let short = CertPolicy {
        ca_validity: 60 * DAY,
        ca_renew_before: 30 * DAY,
        validity: 50 * DAY,
        renew_before: 20 * DAY,
        ..policy()
    };
    rotation::reconcile(&c, &short).await.unwrap();
    let p = policy();
    let old_ca = secret_value(&c, "ca.crt");
    let old_cert = secret_value(&c, "tls.crt");
    replica_reports(&c, "rep-a", &serial(&old_ca));
    replica_reports(&c, "rep-b", &serial(&old_ca));

    let steps = rotation::reconcile(&c, &p).await.unwrap();
    assert_eq!(steps[0], Step::StartCa, "{steps:?}");
    assert!(matches!(steps[1], Step::TrustNext { .. }), "{steps:?}");
    assert_eq!(steps[2..], [Step::MarkTrusted, Step::Promote], "{steps:?}");
    let new_ca = secret_value(&c, "ca.crt");
    let new_cert = secret_value(&c, "tls.crt");
    assert_ne!(new_ca, old_ca);
    // Both certificates verify: replicas still on the old one and those on the new one.
    assert!(
        trusted(&bundle(&c), &old_cert),
        "old certificate still trusted"
    );
    assert!(trusted(&bundle(&c), &new_cert), "new certificate trusted");
    // One replica moved: the old CA stays.
    replica_reports(&c, "rep-a", &serial(&new_ca));
    assert!(rotation::reconcile(&c, &p).await.unwrap().is_empty());
    assert!(trusted(&bundle(&c), &old_cert));
    // Both moved: the old CA goes.
    replica_reports(&c, "rep-b", &serial(&new_ca));
    let steps = rotation::reconcile(&c, &p).await.unwrap();
    assert_eq!(steps, vec![Step::DropOld]);
    assert!(!trusted(&bundle(&c), &old_cert), "old CA dropped");
    assert!(trusted(&bundle(&c), &new_cert));
    assert_eq!(certs::split_pem(&bundle(&c)).len(), 1);
}

#[tokio::test]
async fn no_replica_serves_from_a_new_ca_before_the_settle_time() {
    let c = cluster();
    let mut p = policy();
    p.settle = Duration::from_secs(3600);
    let steps = rotation::reconcile(&c, &p).await.unwrap();
    assert_eq!(steps.last(), Some(&Step::Settling), "{steps:?}");
    assert!(
        secret_value(&c, "tls.crt").is_empty(),
        "nothing to serve yet"
    );
    assert!(
        !bundle(&c).is_empty(),
        "but the caBundle already trusts the new CA"
    );
    assert_eq!(
        rotation::reconcile(&c, &p).await.unwrap(),
        vec![Step::Settling]
    );
}

#[tokio::test]
async fn a_deleted_secret_keeps_the_live_ca_trusted() {
    let c = cluster();
    let p = policy();
    rotation::reconcile(&c, &p).await.unwrap();
    let old_cert = secret_value(&c, "tls.crt");
    let old_ca = secret_value(&c, "ca.crt");
    replica_reports(&c, "rep-a", &serial(&old_ca));
    c.with(|s| {
        s.secrets.clear();
    });
    let steps = rotation::reconcile(&c, &p).await.unwrap();
    assert_eq!(steps[0], Step::StartCa, "{steps:?}");
    assert!(
        trusted(&bundle(&c), &old_cert),
        "replicas still serving the old certificate"
    );
    assert!(trusted(&bundle(&c), &secret_value(&c, "tls.crt")));
    assert_eq!(certs::split_pem(&bundle(&c)).len(), 2);
}

#[tokio::test]
async fn a_crash_between_steps_resumes_without_serving_an_untrusted_certificate() {
    let c = cluster();
    let p = policy();
    // Fail the caBundle patch once: the next CA is stored but not trusted, so not served.
    c.with(|s| {
        s.fail_once
            .insert("set_ca_bundles".into(), ApiError::Other("down".into()));
    });
    assert!(rotation::reconcile(&c, &p).await.is_err());
    assert!(secret_value(&c, "tls.crt").is_empty(), "nothing served yet");
    assert!(!secret_value(&c, "next-ca.crt").is_empty());
    let steps = rotation::reconcile(&c, &p).await.unwrap();
    assert!(
        matches!(steps[0], Step::TrustNext { .. }),
        "resumes: {steps:?}"
    );
    assert!(trusted(&bundle(&c), &secret_value(&c, "tls.crt")));
    // An operator re-applies the configuration without caBundle: restored from the Secret.
    c.with(|s| s.webhooks.get_mut("cfg").unwrap()[0].ca_bundle = None);
    let steps = rotation::reconcile(&c, &p).await.unwrap();
    assert!(matches!(steps[0], Step::SyncBundle { .. }), "{steps:?}");
    assert!(trusted(&bundle(&c), &secret_value(&c, "tls.crt")));
}

#[tokio::test]
async fn native_sidecar_support_is_probed_and_kept_on_errors() {
    let c = FakeCluster::new();
    let n = NativeSupport::default();
    c.with(|s| {
        s.server_version = "v1.30.2".into();
        s.kubelets = vec!["v1.30.2".into(), "v1.29.0".into()];
    });
    assert!(n.refresh(&c).await.unwrap());
    assert!(n.get());
    c.with(|s| {
        s.fail_once
            .insert("kubelet_versions".into(), ApiError::Other("timeout".into()));
    });
    assert!(n.refresh(&c).await.is_err());
    assert!(n.get(), "an error keeps the last answer");
    c.with(|s| s.kubelets.push("v1.20.2".into()));
    assert!(
        !n.refresh(&c).await.unwrap(),
        "one old kubelet is enough to say no"
    );
    c.with(|s| {
        s.server_version = "v1.20.2".into();
        s.kubelets = vec!["v1.30.0".into()];
    });
    assert!(
        !n.refresh(&c).await.unwrap(),
        "an old API server drops restartPolicy"
    );
}
