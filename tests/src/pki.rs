//! Key material for one control plane, generated with rcgen: a CA, the API server's serving
//! certificate (signed by the CA, for 127.0.0.1 and localhost) and the ServiceAccount key pair
//! (ECDSA P-256, which kube-apiserver 1.20 accepts for both verification and signing).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::error::Result;

pub struct Pki {
    /// CA certificate (PEM): trusted by clients, given to the controller-manager as root CA.
    pub ca_pem: String,
    /// Serving certificate (PEM) for 127.0.0.1 / localhost.
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// ServiceAccount signing key (PKCS#8 PEM) and its public key (SPKI PEM).
    pub sa_key_pem: String,
    pub sa_pub_pem: String,
}

impl Pki {
    pub fn generate() -> Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "testenv-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let serving = params.signed_by(&serving_key, &issuer)?;

        let sa_key = KeyPair::generate()?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            serving_cert_pem: serving.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            sa_pub_pem: sa_key.public_key_pem(),
            sa_key_pem: sa_key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pems_have_the_expected_kinds() -> Result<()> {
        let p = Pki::generate()?;
        assert!(p.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            p.serving_cert_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(p.serving_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(p.sa_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(p.sa_pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_ne!(p.sa_key_pem, p.serving_key_pem);
        Ok(())
    }
}
