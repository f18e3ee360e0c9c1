//! Generating, checking and writing the webhook's CA and serving certificate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

use crate::error::{Error, Result};

/// File and Secret key names (the layout of a `kubernetes.io/tls` Secret plus `ca.crt`).
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// A CA and a serving certificate signed by it, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The names the API server uses to reach the webhook's Service, plus `extra` (DNS names or IPs).
pub fn service_sans(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    for e in extra {
        if !sans.contains(e) {
            sans.push(e.clone());
        }
    }
    sans
}

fn cert_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Certificate(format!("{what}: {e}"))
}

/// A CA that can issue serving certificates, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity_window(validity: Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // Tolerate a little clock skew between this host and the API server.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::seconds(validity.as_secs().min(i64::MAX as u64) as i64);
    (not_before, not_after)
}

fn ca_params() -> CertificateParams {
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "leader-election webhook CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca
}

/// A fresh CA valid for `validity`.
pub fn generate_ca(validity: Duration) -> Result<Ca> {
    let ca_key = KeyPair::generate().map_err(|e| cert_err("generating the CA key", e))?;
    let mut ca = ca_params();
    (ca.not_before, ca.not_after) = validity_window(validity);
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| cert_err("signing the CA", e))?;
    Ok(Ca {
        cert_pem: ca_cert.pem(),
        key_pem: ca_key.serialize_pem(),
    })
}

/// A serving certificate for `sans` issued by `ca`, valid for `validity` but never past the CA.
pub fn issue(ca: &Ca, sans: &[String], validity: Duration) -> Result<CertBundle> {
    let Some(first) = sans.first() else {
        return Err(Error::Certificate(
            "no subject alternative names given".into(),
        ));
    };
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| cert_err("reading the CA key", e))?;
    // The issuer is named by the CA's distinguished name and key, both as generate_ca made them.
    let ca_params = ca_params();
    let (_, ca_expiry) =
        serial_and_expiry(&ca.cert_pem).map_err(|e| cert_err("reading the CA certificate", e))?;
    let ca_end = time::OffsetDateTime::from_unix_timestamp(ca_expiry)
        .map_err(|e| cert_err("the CA's expiry", e))?;
    let (not_before, mut not_after) = validity_window(validity);
    if not_after > ca_end {
        not_after = ca_end;
    }
    let key = KeyPair::generate().map_err(|e| cert_err("generating the serving key", e))?;
    let mut leaf = CertificateParams::new(sans.to_vec())
        .map_err(|e| cert_err("invalid subject alternative name", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, first.as_str());
    leaf.distinguished_name = dn;
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let issuer = Issuer::new(ca_params, &ca_key);
    let cert = leaf
        .signed_by(&key, &issuer)
        .map_err(|e| cert_err("signing the serving certificate", e))?;
    Ok(CertBundle {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Generates a fresh CA and a serving certificate for `sans`, both valid for `validity`.
pub fn generate(sans: &[String], validity: Duration) -> Result<CertBundle> {
    let ca = generate_ca(validity)?;
    issue(&ca, sans, validity)
}

/// The PEM blocks of a bundle (several certificates concatenated), each as its own string.
pub fn split_pem(bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in bundle.lines() {
        if line.starts_with("-----BEGIN ") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END ") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Serial number (hex) and expiry (unix seconds) of a PEM certificate.
pub fn serial_and_expiry(pem: &str) -> std::result::Result<(String, i64), String> {
    let (_, p) = parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let c = p.parse_x509().map_err(|e| e.to_string())?;
    Ok((c.raw_serial_as_string(), c.validity().not_after.timestamp()))
}

fn unix_now(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why `bundle` cannot be (re)used for `sans` at `now`, or `Ok` if it can until at least
/// `now + renew_before`. Checks the SANs, the expiry and that the CA issued the certificate; the
/// key is checked when it is loaded into rustls.
pub fn check(
    bundle: &CertBundle,
    sans: &[String],
    now: SystemTime,
    renew_before: Duration,
) -> std::result::Result<(), String> {
    let (_, leaf_pem) =
        parse_x509_pem(bundle.cert_pem.as_bytes()).map_err(|e| format!("tls.crt: {e}"))?;
    let leaf = leaf_pem.parse_x509().map_err(|e| format!("tls.crt: {e}"))?;
    let (_, ca_pem) =
        parse_x509_pem(bundle.ca_pem.as_bytes()).map_err(|e| format!("ca.crt: {e}"))?;
    let ca = ca_pem.parse_x509().map_err(|e| format!("ca.crt: {e}"))?;

    let deadline = unix_now(now).saturating_add(renew_before.as_secs() as i64);
    for (what, c) in [("serving certificate", &leaf), ("CA", &ca)] {
        let not_after = c.validity().not_after.timestamp();
        if not_after <= deadline {
            return Err(format!(
                "the {what} expires at unix time {not_after}, within the renewal window"
            ));
        }
        if c.validity().not_before.timestamp() > unix_now(now) + 3600 {
            return Err(format!("the {what} is not valid yet"));
        }
    }
    if leaf.issuer().as_raw() != ca.subject().as_raw()
        || leaf.verify_signature(Some(ca.public_key())).is_err()
    {
        return Err("tls.crt was not issued by ca.crt".into());
    }
    let names: Vec<GeneralName<'_>> = leaf
        .subject_alternative_name()
        .map_err(|e| format!("tls.crt SANs: {e}"))?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    for san in sans {
        let covered = match san.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => names
                .iter()
                .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == ip.octets())),
            Ok(IpAddr::V6(ip)) => names
                .iter()
                .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == ip.octets())),
            Err(_) => names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName(d) if d.eq_ignore_ascii_case(san))),
        };
        if !covered {
            return Err(format!("tls.crt does not cover {san}"));
        }
    }
    Ok(())
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` into `dir` (created if needed); refuses to replace
/// existing files unless `force`.
pub fn write_files(dir: &Path, bundle: &CertBundle, force: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let files = [
        (CA_FILE, &bundle.ca_pem),
        (CERT_FILE, &bundle.cert_pem),
        (KEY_FILE, &bundle.key_pem),
    ];
    if !force {
        let existing: Vec<String> = files
            .iter()
            .map(|(name, _)| dir.join(name))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(Error::Config(format!(
                "refusing to overwrite {}; pass --force to replace them",
                existing.join(", ")
            )));
        }
    }
    let mut written = Vec::new();
    for (name, content) in files {
        let path = dir.join(name);
        write_private(&path, content.as_bytes(), name == KEY_FILE)?;
        written.push(path);
    }
    Ok(written)
}

fn write_private(path: &Path, content: &[u8], secret: bool) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|e| Error::io(path, e))?;
    // `mode` only applies to new files; a replaced key must not stay world-readable.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(path, e))?;
    }
    f.write_all(content).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn generated_bundle_passes_its_own_check() {
        let sans = service_sans("svc", "ns", &["127.0.0.1".into(), "extra.example".into()]);
        assert_eq!(sans.len(), 6);
        let b = generate(&sans, 30 * DAY).unwrap();
        assert!(b.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(b.key_pem.contains("PRIVATE KEY"));
        check(&b, &sans, SystemTime::now(), 7 * DAY).unwrap();
    }

    #[test]
    fn check_refuses_what_cannot_be_reused() {
        let sans = service_sans("svc", "ns", &[]);
        let b = generate(&sans, 30 * DAY).unwrap();
        // Near expiry.
        let e = check(&b, &sans, SystemTime::now() + 25 * DAY, 7 * DAY).unwrap_err();
        assert!(e.contains("expires"), "{e}");
        // A SAN it was not made for.
        let mut more = sans.clone();
        more.push("10.0.0.1".into());
        assert!(
            check(&b, &more, SystemTime::now(), DAY)
                .unwrap_err()
                .contains("10.0.0.1")
        );
        // A certificate from another CA.
        let other = generate(&sans, 30 * DAY).unwrap();
        let mixed = CertBundle {
            ca_pem: other.ca_pem,
            ..b.clone()
        };
        assert!(check(&mixed, &sans, SystemTime::now(), DAY).is_err());
        // Garbage.
        let junk = CertBundle {
            cert_pem: "nope".into(),
            ..b
        };
        assert!(check(&junk, &sans, SystemTime::now(), DAY).is_err());
    }

    #[test]
    fn write_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let b = generate(&["x".into()], DAY).unwrap();
        let files = write_files(dir.path(), &b, false).unwrap();
        assert_eq!(files.len(), 3);
        let e = write_files(dir.path(), &b, false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // A key made world-readable meanwhile is tightened when replaced.
            let key = dir.path().join(KEY_FILE);
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            write_files(dir.path(), &b, true).unwrap();
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
