//! Key material for one control plane, generated with rcgen: a CA, the API server's serving
//! certificate (signed by the CA, for loopback, the `kubernetes` Service's names and ClusterIP,
//! and the node's address), the API server's client certificate towards the kubelet, and the
//! ServiceAccount key pair (ECDSA P-256, which kube-apiserver accepts for verification and
//! signing).

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
    /// The API server's client certificate and key for the kubelet (CN
    /// `kube-apiserver-kubelet-client`, bound to system:kubelet-api-admin).
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
}

impl Pki {
    /// `extra_ips`: addresses besides loopback and the `kubernetes` ClusterIP that clients
    /// reach the API server on (the node's address).
    pub fn generate(extra_ips: &[std::net::Ipv4Addr]) -> Result<Pki> {
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
        let mut names = vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            crate::layout::KUBERNETES_SERVICE_IP.to_string(),
        ];
        names.extend(extra_ips.iter().map(|ip| ip.to_string()));
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let serving = params.signed_by(&serving_key, &issuer)?;

        let client_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, crate::layout::KUBELET_CLIENT_CN);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = params.signed_by(&client_key, &issuer)?;

        let sa_key = KeyPair::generate()?;
        Ok(Pki {
            kubelet_client_cert_pem: client.pem(),
            kubelet_client_key_pem: client_key.serialize_pem(),
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
        let p = Pki::generate(&[std::net::Ipv4Addr::new(10, 1, 2, 3)])?;
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
