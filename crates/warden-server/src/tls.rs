//! TLS for the listeners: the rustls policy and certificate loading (the
//! embedded default's development certificate and its CA are in `devca`).
//!
//! Policy (Mozilla "intermediate"): TLS 1.3 and 1.2 only; on 1.2 only ECDHE
//! key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305); ALPN `h2`
//! and `http/1.1`. The crypto provider is aws-lc-rs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, ServerConfig, SupportedCipherSuite};
use warden_core::config::{CertSource, ClientAuth, TlsSettings, TlsVersion};

use crate::certs::{CertFiles, ServedCert};

/// Why TLS could not be set up. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls or rcgen refused.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// The TLS 1.2 suites Warden offers: ECDHE + AEAD only.
const TLS12_SUITES: &[CipherSuite] = &[
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

fn allowed(suite: &SupportedCipherSuite, min: TlsVersion) -> bool {
    match suite {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(_) => {
            min == TlsVersion::V1_2 && TLS12_SUITES.contains(&suite.suite())
        }
    }
}

/// A listener's TLS configuration and its (reloadable) certificate.
#[derive(Debug)]
pub struct ServerTls {
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// The served certificate, reloaded on file change and SIGHUP.
    pub served: Arc<ServedCert>,
}

/// Builds the rustls server configuration for `settings`, generating the
/// self-signed certificate on first use.
pub fn server_config(
    settings: &TlsSettings,
    listener: &'static str,
) -> Result<ServerTls, TlsError> {
    let files = match &settings.cert {
        CertSource::SelfSigned {
            dir,
            allow_readable,
        } => {
            crate::devca::ensure(dir)?;
            CertFiles {
                cert: dir.join("cert.pem"),
                key: warden_core::SecretSource::File {
                    file: dir.join("key.pem"),
                },
                allow_readable: *allow_readable,
                dev_ca: Some(dir.clone()),
            }
        }
        CertSource::Pem {
            cert,
            key_source,
            allow_readable,
            ..
        } => CertFiles {
            cert: cert.clone(),
            key: key_source.clone(),
            allow_readable: *allow_readable,
            dev_ca: None,
        },
    };
    let mut provider = aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .retain(|s| allowed(s, settings.min_version));
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(provider);
    let served = Arc::new(ServedCert::load(listener, files, provider.clone())?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => builder.with_client_cert_verifier(client_verifier(auth, provider)?),
    };
    let mut config = builder.with_cert_resolver(served.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        served,
    })
}

/// A certificate's `notAfter` in Unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Client certificates (mTLS): chains to the configured CA, checked by
/// rustls (webpki); optional or required per listener.
fn client_verifier(
    auth: &ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(&auth.ca)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: auth.ca.clone(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if auth.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| TlsError::Setup(format!("client CA {}: {e}", auth.ca.display())))
}

/// The names of a verified client certificate: its DNS subject alternative
/// names, or, only when it has none, its subject common name (a CA that
/// checks SANs may let the requester choose the CN). The authenticator maps them to a
/// principal through `[[auth.mtls]]`.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(text) = cn.as_str() {
                names.push(text.to_owned());
            }
        }
    }
    names
}

/// Reads a PEM certificate chain (at least one certificate).
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| err("not a PEM certificate chain".into()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// A generated certificate and key, as PEM.
#[derive(Debug)]
pub struct GeneratedCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (write it with mode 0600).
    pub key_pem: String,
}

/// Generates a self-signed certificate for localhost, 127.0.0.1, ::1 and
/// `extra_names`, valid for `days` (`warden tls generate`; the embedded
/// default uses the development CA of `devca` instead).
pub fn generate(extra_names: &[String], days: u32) -> Result<GeneratedCert, TlsError> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(extra_names.iter().cloned());
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Setup(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Warden development certificate");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Setup(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(GeneratedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `cert.pem` (0644) and `key.pem` (0600) into `dir` (created 0700),
/// each atomically.
pub fn write_pair(dir: &Path, generated: &GeneratedCert) -> Result<(), TlsError> {
    let io = |path: &Path, e: std::io::Error| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e))?;
    }
    write_atomic(&dir.join("key.pem"), generated.key_pem.as_bytes(), 0o600)
        .map_err(|e| io(&dir.join("key.pem"), e))?;
    write_atomic(&dir.join("cert.pem"), generated.cert_pem.as_bytes(), 0o644)
        .map_err(|e| io(&dir.join("cert.pem"), e))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let settings = TlsSettings {
            cert: CertSource::SelfSigned {
                dir: tls.clone(),
                allow_readable: false,
            },
            min_version: TlsVersion::V1_2,
            client_auth: None,
            reload_interval: std::time::Duration::from_secs(10),
        };
        let config = server_config(&settings, "data").unwrap().config;
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let first = std::fs::read(tls.join("cert.pem")).unwrap();
        let again = server_config(&settings, "data").unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expiry = again.served.not_after();
        assert!(
            (now + 89 * 86_400..=now + 90 * 86_400).contains(&expiry),
            "the development certificate lasts 90 days"
        );
        assert_eq!(
            first,
            std::fs::read(tls.join("cert.pem")).unwrap(),
            "reused, not regenerated"
        );
        let mode = std::fs::metadata(tls.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn only_aead_ecdhe_suites_on_tls12() {
        let mut p = aws_lc_rs::default_provider();
        p.cipher_suites.retain(|s| allowed(s, TlsVersion::V1_2));
        for s in &p.cipher_suites {
            if let SupportedCipherSuite::Tls12(_) = s {
                assert!(TLS12_SUITES.contains(&s.suite()));
            }
        }
        let mut p13 = aws_lc_rs::default_provider();
        p13.cipher_suites.retain(|s| allowed(s, TlsVersion::V1_3));
        assert!(
            p13.cipher_suites
                .iter()
                .all(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
        );
    }
}
