//! A certificate authority made for one local run with `[security] tls`:
//! its certificate, and a server certificate it signed for loopback
//! (`localhost`, `127.0.0.1`), written as PEM files that the local brokers
//! and brokerbench's clients read. Nothing in it is a user's secret; the
//! directory is its owner's alone all the same.

use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::broker::security::LocalCerts;

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

/// Creates `dir` (and its parents), mode 0700.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `text` to `path`, readable by its owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
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
