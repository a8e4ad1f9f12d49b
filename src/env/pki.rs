//! A certificate authority made for one local run with `[security] tls`:
//! its certificate, and a server certificate it signed for loopback
//! (`localhost`, `127.0.0.1`), written as PEM files that the local brokers
//! and brokerbench's clients read. Nothing in it is a user's secret; the
//! directory is its owner's alone all the same.

use std::path::Path;

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::broker::security::{private_dir, write_private, LocalCerts};

/// A new CA and a server certificate it signed, in `dir` (created, mode
/// 0700).
pub fn generate(dir: &Path) -> Result<LocalCerts> {
    private_dir(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "brokerbench local CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    let certs = LocalCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    write_private(&certs.ca, &ca.pem())?;
    write_private(&certs.cert, &cert.pem())?;
    write_private(&certs.key, &key.serialize_pem())?;
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_signs_a_loopback_server_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(&dir.path().join("tls")).unwrap();
        for path in [&pki.ca, &pki.cert, &pki.key] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}", path.display());
        }
        let ca = std::fs::read_to_string(&pki.ca).unwrap();
        assert_ne!(ca, std::fs::read_to_string(&pki.cert).unwrap());
    }
}
