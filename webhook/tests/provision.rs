//! Self-provisioned certificates, caBundle sync and the native-sidecar probe against the
//! in-memory cluster.

use std::time::Duration;

use webhook::certs::{self, CertBundle};
use webhook::cluster::{NativeSupport, WebhookEntry};
use webhook::error::ApiError;
use webhook::fake::FakeCluster;
use webhook::provision::{self, Provisioning};

const DAY: Duration = Duration::from_secs(86_400);

fn provisioning(extra: &[&str]) -> Provisioning {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Provisioning {
        namespace: "sys".into(),
        secret: "tls".into(),
        webhook_configuration: "cfg".into(),
        sans: certs::service_sans("svc", "sys", &extra),
        validity: 365 * DAY,
        renew_before: 30 * DAY,
    }
}

fn calls(c: &FakeCluster) -> Vec<String> {
    let v = c.calls();
    c.clear_calls();
    v
}

#[tokio::test]
async fn secret_is_created_once_then_reused_by_every_replica() {
    let c = FakeCluster::new();
    let p = provisioning(&["127.0.0.1"]);
    let first = provision::reconcile_secret(&c, &p).await.unwrap();
    assert_eq!(calls(&c), ["get_secret sys/tls", "create_secret sys/tls"]);
    certs::check(
        &first,
        &p.sans,
        std::time::SystemTime::now(),
        p.renew_before,
    )
    .unwrap();
    c.with(|s| {
        let secret = &s.secrets[&("sys".to_string(), "tls".to_string())];
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data["ca.crt"].0, first.ca_pem.as_bytes());
    });
    // Another replica (or a restart) reads and reuses it.
    let second = provision::reconcile_secret(&c, &p).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(calls(&c), ["get_secret sys/tls"]);
}

#[tokio::test]
async fn unusable_secret_is_replaced_and_races_are_retried() {
    let c = FakeCluster::new();
    let old = provision::reconcile_secret(&c, &provisioning(&[]))
        .await
        .unwrap();
    calls(&c);
    // Now a SAN is needed that the stored certificate lacks; the first replace loses a race.
    let p = provisioning(&["127.0.0.1"]);
    c.with(|s| {
        s.fail_once
            .insert("replace_secret".into(), ApiError::Conflict);
    });
    let new = provision::reconcile_secret(&c, &p).await.unwrap();
    assert_ne!(new, old);
    certs::check(&new, &p.sans, std::time::SystemTime::now(), p.renew_before).unwrap();
    assert_eq!(
        calls(&c),
        [
            "get_secret sys/tls",
            "replace_secret sys/tls",
            "get_secret sys/tls",
            "replace_secret sys/tls"
        ]
    );
    // Create losing to another replica: re-read instead of failing.
    let c = FakeCluster::new();
    c.with(|s| {
        s.fail_once
            .insert("create_secret".into(), ApiError::AlreadyExists);
    });
    provision::reconcile_secret(&c, &p).await.unwrap();
    assert_eq!(
        calls(&c),
        [
            "get_secret sys/tls",
            "create_secret sys/tls",
            "get_secret sys/tls",
            "create_secret sys/tls"
        ]
    );
    // A permission problem is reported, naming the Secret.
    let c = FakeCluster::new();
    c.with(|s| {
        s.fail_once
            .insert("get_secret".into(), ApiError::Forbidden("denied".into()));
    });
    let e = provision::reconcile_secret(&c, &p)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("sys/tls") && e.contains("forbidden"), "{e}");
}

#[tokio::test]
async fn expiring_or_broken_secret_is_regenerated() {
    let c = FakeCluster::new();
    let mut p = provisioning(&[]);
    p.validity = 10 * DAY; // less than renew_before: never reusable
    let a = provision::reconcile_secret(&c, &p).await.unwrap();
    let b = provision::reconcile_secret(&c, &p).await.unwrap();
    assert_ne!(a, b);
    // Mismatched key and certificate.
    let p = provisioning(&[]);
    let good: CertBundle = provision::reconcile_secret(&c, &p).await.unwrap();
    let other = certs::generate(&p.sans, 365 * DAY).unwrap();
    c.with(|s| {
        let secret = s
            .secrets
            .get_mut(&("sys".to_string(), "tls".to_string()))
            .unwrap();
        secret.data.as_mut().unwrap().insert(
            "tls.key".into(),
            k8s_openapi::ByteString(other.key_pem.into_bytes()),
        );
    });
    let fixed = provision::reconcile_secret(&c, &p).await.unwrap();
    assert_ne!(fixed, good);
    webhook::tls::certified_key(fixed.cert_pem.as_bytes(), fixed.key_pem.as_bytes()).unwrap();
}

#[tokio::test]
async fn ca_bundle_is_kept_in_sync() {
    let c = FakeCluster::new();
    // Not applied yet: not an error.
    assert_eq!(
        provision::sync_ca_bundle(&c, "cfg", b"CA").await.unwrap(),
        0
    );
    let entry = |name: &str, ca: Option<&[u8]>| WebhookEntry {
        name: name.into(),
        ca_bundle: ca.map(<[u8]>::to_vec),
    };
    c.with(|s| {
        s.webhooks.insert(
            "cfg".into(),
            vec![entry("pods.x", None), entry("workloads.x", Some(b"OLD"))],
        );
    });
    assert_eq!(
        provision::sync_ca_bundle(&c, "cfg", b"CA").await.unwrap(),
        2
    );
    calls(&c);
    assert_eq!(
        provision::sync_ca_bundle(&c, "cfg", b"CA").await.unwrap(),
        0
    );
    assert_eq!(calls(&c), ["get_webhooks cfg"], "in sync: read only");
    // An operator re-applies the manifest, which carries no caBundle.
    c.with(|s| s.webhooks.get_mut("cfg").unwrap()[0].ca_bundle = None);
    assert_eq!(
        provision::sync_ca_bundle(&c, "cfg", b"CA").await.unwrap(),
        1
    );
    c.with(|s| {
        assert!(
            s.webhooks["cfg"]
                .iter()
                .all(|e| e.ca_bundle.as_deref() == Some(b"CA".as_slice()))
        )
    });
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
