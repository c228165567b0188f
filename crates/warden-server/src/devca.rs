//! The development certificate of the embedded default (docs/tls.md,
//! "Development certificate"), issued the way Caddy and mkcert do it: a
//! local certificate authority generated once into the data dir, and a
//! short-lived leaf it signs.
//!
//! - `tls/ca.pem` (0644) and `tls/ca-key.pem` (0600): the development CA,
//!   ECDSA P-256, valid 10 years, `basicConstraints` CA with path length 0,
//!   key usage `keyCertSign` and `cRLSign`. This is the file to trust
//!   (`curl --cacert warden-data/tls/ca.pem`).
//! - `tls/cert.pem` and `tls/key.pem` (0600): the served leaf, ECDSA P-256,
//!   SANs localhost, 127.0.0.1 and ::1, `basicConstraints` CA:false,
//!   `digitalSignature`, `serverAuth`, authority and subject key
//!   identifiers, a random serial, valid [`LEAF_DAYS`] days. It is issued
//!   again at start when it has fewer than [`RENEW_WITHIN_DAYS`] days left,
//!   is missing or unreadable, or was not signed by this CA (a data dir
//!   from before the CA existed holds a self-signed certificate). The
//!   listener's certificate reload then serves the new one.
//!
//! A leaf of at most 90 days with both key identifiers is what strict
//! validators (sslyze's Mozilla check, browsers' CA/B Forum rules) accept;
//! a long-lived self-signed certificate is not.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

use crate::tls::{TlsError, write_atomic};

/// Lifetime of a leaf, in days.
pub const LEAF_DAYS: i64 = 90;
/// A leaf with fewer days left than this is issued again at start.
pub const RENEW_WITHIN_DAYS: i64 = 30;
/// Lifetime of the development CA, in days.
const CA_DAYS: i64 = 3650;
/// The names the leaf is for.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// A new CA was generated.
    pub new_ca: bool,
    /// A new leaf was issued.
    pub new_leaf: bool,
}

/// Makes sure `dir` holds the development CA and a current leaf signed by
/// it, generating or renewing what is missing or due. Called at start and,
/// when the served leaf nears expiry, from the certificate reload tick of
/// each listener: one at a time.
pub fn ensure(dir: &Path) -> Result<Outcome, TlsError> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ensure_at(dir, time::OffsetDateTime::now_utc())
}

fn ensure_at(dir: &Path, now: time::OffsetDateTime) -> Result<Outcome, TlsError> {
    create_private_dir(dir)?;
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let mut outcome = Outcome {
        new_ca: false,
        new_leaf: false,
    };
    let (ca_file, ca_key_file) = (read(&ca_path)?, read(&ca_key_path)?);
    let had_ca = ca_file.is_some();
    // A CA whose key is missing, unreadable or not its own cannot sign.
    let existing = match (ca_file, ca_key_file) {
        (Some(cert), Some(key)) if key_matches(&key, &cert) => Some((cert, key)),
        _ => None,
    };
    let (ca_pem, ca_key_pem) = match existing {
        Some(pair) => pair,
        None => {
            if had_ca {
                tracing::warn!(
                    ca = %ca_path.display(),
                    "the development CA's key is missing or does not match it: a new CA is generated, and clients must trust the new ca.pem"
                );
            }
            let (cert, key) = new_ca(now)?;
            write_atomic(&ca_key_path, key.as_bytes(), 0o600).map_err(|e| io(&ca_key_path, e))?;
            write_atomic(&ca_path, cert.as_bytes(), 0o644).map_err(|e| io(&ca_path, e))?;
            outcome.new_ca = true;
            tracing::info!(ca = %ca_path.display(), "generated a local development CA (trust this file, not the leaf)");
            (cert, key)
        }
    };
    let ca_der = pem_der(&ca_pem).ok_or_else(|| TlsError::File {
        path: ca_path.clone(),
        message: "not a PEM certificate".into(),
    })?;
    let leaf_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let leaf_pem = read(&leaf_path)?;
    let due = outcome.new_ca
        || match (leaf_pem.as_deref().and_then(pem_der), read(&key_path)?) {
            (Some(leaf), Some(key)) => {
                leaf_is_due(&leaf, &ca_der, now)
                    || !leaf_pem.as_deref().is_some_and(|l| key_matches(&key, l))
            }
            _ => true,
        };
    if due {
        let key = KeyPair::from_pem(&ca_key_pem).map_err(|_| TlsError::File {
            path: ca_key_path.clone(),
            message: "not a usable private key".into(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| TlsError::File {
            path: ca_path.clone(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
        let (cert, key) = new_leaf(&issuer, now)?;
        write_atomic(&key_path, key.as_bytes(), 0o600).map_err(|e| io(&key_path, e))?;
        write_atomic(&leaf_path, cert.as_bytes(), 0o644).map_err(|e| io(&leaf_path, e))?;
        outcome.new_leaf = true;
        tracing::info!(
            cert = %leaf_path.display(),
            ca = %ca_path.display(),
            days = LEAF_DAYS,
            "issued the development certificate from the local development CA"
        );
    }
    Ok(outcome)
}

fn new_ca(now: time::OffsetDateTime) -> Result<(String, String), TlsError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Warden development");
    params
        .distinguished_name
        .push(DnType::CommonName, "Warden development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_DAYS);
    let key = KeyPair::generate().map_err(setup)?;
    let cert = params.self_signed(&key).map_err(setup)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_leaf(
    issuer: &Issuer<'_, KeyPair>,
    now: time::OffsetDateTime,
) -> Result<(String, String), TlsError> {
    let mut params = CertificateParams::new(NAMES.map(String::from).to_vec()).map_err(setup)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Warden development certificate");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(LEAF_DAYS);
    let key = KeyPair::generate().map_err(setup)?;
    let cert = params.signed_by(&key, issuer).map_err(setup)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A leaf is due when it expires within [`RENEW_WITHIN_DAYS`], or its
/// issuer or authority key identifier is not this CA's.
fn leaf_is_due(leaf: &[u8], ca: &[u8], now: time::OffsetDateTime) -> bool {
    let (Ok((_, leaf)), Ok((_, ca))) = (
        X509Certificate::from_der(leaf),
        X509Certificate::from_der(ca),
    ) else {
        return true;
    };
    let left = leaf.validity().not_after.timestamp() - now.unix_timestamp();
    if left < RENEW_WITHIN_DAYS * 86_400 {
        return true;
    }
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    leaf.issuer().as_raw() != ca.subject().as_raw() || ski.is_none() || aki != ski
}

/// 16 random bytes, the top bit clear (a positive INTEGER): certificates
/// from one issuer must never share a serial.
fn random_serial() -> Result<SerialNumber, TlsError> {
    // The thread's CSPRNG (rand's ThreadRng, seeded from the OS).
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Whether the PEM private key `key` is the one certified by the PEM
/// certificate `cert` (same SubjectPublicKeyInfo): a crash between writing
/// the two files, or a hand-edited folder, must not go unnoticed.
fn key_matches(key: &str, cert: &str) -> bool {
    use rcgen::PublicKeyData as _;
    let Ok(key) = KeyPair::from_pem(key) else {
        return false;
    };
    let Some(der) = pem_der(cert) else {
        return false;
    };
    X509Certificate::from_der(&der)
        .is_ok_and(|(_, c)| c.public_key().raw == key.subject_public_key_info().as_slice())
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.as_ref().to_vec())
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io(dir, e))
}

fn io(path: &Path, e: std::io::Error) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn setup(e: rcgen::Error) -> TlsError {
    TlsError::Setup(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pem: &[u8]) -> Vec<u8> {
        pem_der(std::str::from_utf8(pem).unwrap()).unwrap()
    }

    #[test]
    fn the_leaf_is_issued_by_the_ca_and_renewed_only_when_due() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let now = time::OffsetDateTime::now_utc();
        let first = ensure_at(&tls, now).unwrap();
        assert_eq!((first.new_ca, first.new_leaf), (true, true));
        for private in ["ca-key.pem", "key.pem"] {
            let mode = std::fs::metadata(tls.join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{private}");
        }
        let ca_der = parse(&std::fs::read(tls.join("ca.pem")).unwrap());
        let leaf_der = parse(&std::fs::read(tls.join("cert.pem")).unwrap());
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        assert!(ca.is_ca());
        assert!(!leaf.is_ca());
        let days = (leaf.validity().not_after.timestamp() - now.unix_timestamp()) / 86_400;
        assert!((89..=90).contains(&days), "{days}");
        assert!(!leaf_is_due(&leaf_der, &ca_der, now));

        // Started again: nothing changes.
        let again = ensure_at(&tls, now + time::Duration::days(59)).unwrap();
        assert_eq!((again.new_ca, again.new_leaf), (false, false));
        assert_eq!(
            parse(&std::fs::read(tls.join("cert.pem")).unwrap()),
            leaf_der
        );
        // With fewer than 30 days left, a new leaf from the same CA.
        let later = ensure_at(&tls, now + time::Duration::days(61)).unwrap();
        assert_eq!((later.new_ca, later.new_leaf), (false, true));
        assert_eq!(parse(&std::fs::read(tls.join("ca.pem")).unwrap()), ca_der);
        let renewed = parse(&std::fs::read(tls.join("cert.pem")).unwrap());
        let (_, parsed) = X509Certificate::from_der(&renewed).unwrap();
        assert_ne!(parsed.serial, leaf.serial);
        assert!(!leaf_is_due(
            renewed.as_ref(),
            &ca_der,
            now + time::Duration::days(61)
        ));
    }

    #[test]
    fn a_self_signed_certificate_from_before_the_ca_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let old = crate::tls::generate(&[], 365).unwrap();
        crate::tls::write_pair(&tls, &old).unwrap();
        let outcome = ensure(&tls).unwrap();
        assert_eq!((outcome.new_ca, outcome.new_leaf), (true, true));
        // And one signed by another CA, too.
        let other = tempfile::tempdir().unwrap();
        ensure(other.path()).unwrap();
        std::fs::copy(other.path().join("cert.pem"), tls.join("cert.pem")).unwrap();
        let outcome = ensure(&tls).unwrap();
        assert_eq!((outcome.new_ca, outcome.new_leaf), (false, true));
        // A leaf without its key (a crash between the two writes), or with
        // another key: issued again.
        std::fs::remove_file(tls.join("key.pem")).unwrap();
        assert!(ensure(&tls).unwrap().new_leaf);
        std::fs::copy(other.path().join("key.pem"), tls.join("key.pem")).unwrap();
        assert!(ensure(&tls).unwrap().new_leaf);
        assert!(!ensure(&tls).unwrap().new_leaf, "and then kept");
        // A CA without its own key: a new CA.
        std::fs::copy(other.path().join("ca-key.pem"), tls.join("ca-key.pem")).unwrap();
        let outcome = ensure(&tls).unwrap();
        assert_eq!((outcome.new_ca, outcome.new_leaf), (true, true));
    }
}
