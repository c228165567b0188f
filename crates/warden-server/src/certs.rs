//! The served certificate of a listener, reloaded without restart.
//!
//! rustls asks [`ServedCert`] for the certificate at each handshake, so a
//! swap affects new connections only: established ones keep the session
//! they negotiated. The files are checked every `tls.reload_interval` (their
//! modification time and size) and on SIGHUP; a new pair that does not load
//! (unreadable, not PEM, key and certificate not matching) leaves the old one
//! in service and raises a `certificate_reload_failed` alert.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use warden_core::SecretSource;
use warden_core::metrics::Alert;

use crate::tls::{TlsError, not_after, read_certs};

/// Where a listener's certificate and key are read from.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// The PEM private key, as a secret.
    pub key: SecretSource,
    /// Accept a key file readable by group or others.
    pub allow_readable: bool,
    /// The development CA's folder when this is the development
    /// certificate (devca.rs): renewed there when it nears expiry.
    pub dev_ca: Option<PathBuf>,
}

/// What a file looked like when last loaded: modification time, inode
/// change time (a `chmod` moves it), size and mode.
type Stamp = Vec<Option<(SystemTime, i64, u64, u32)>>;

/// A listener's certificate: what rustls serves, and how to reload it.
pub struct ServedCert {
    /// `data` or `management`, for logs and metrics.
    pub listener: &'static str,
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    not_after: AtomicI64,
    seen: Mutex<Stamp>,
}

impl ServedCert {
    /// Loads the pair; an error names the file.
    pub fn load(
        listener: &'static str,
        files: CertFiles,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let seen = stamp(&files);
        let key = load(&files, &provider)?;
        let expiry = key.cert.first().and_then(|c| not_after(c)).unwrap_or(0);
        Ok(Self {
            listener,
            files,
            provider,
            current: RwLock::new(Arc::new(key)),
            not_after: AtomicI64::new(expiry),
            seen: Mutex::new(seen),
        })
    }

    /// The served certificate's `notAfter` (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// Reloads if the files changed since the last load (or attempt). The
    /// development certificate is first issued again if it nears expiry, so
    /// that a server running for months keeps a valid one.
    pub fn reload_if_changed(&self) {
        if let Some(dir) = &self.files.dev_ca {
            let left = self.not_after() - crate::steps::unix_micros() as i64 / 1_000_000;
            if left < crate::devca::RENEW_WITHIN_DAYS * 86_400
                && let Err(e) = crate::devca::ensure(dir)
            {
                tracing::warn!(listener = self.listener, error = %e, "cannot renew the development certificate");
            }
        }
        let now = stamp(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return;
            }
            *seen = now;
        }
        self.reload();
    }

    /// Loads the files again and serves the new pair to new connections;
    /// a pair that does not load leaves the old one in service, with an alert.
    pub fn reload(&self) {
        match load(&self.files, &self.provider) {
            Ok(key) => {
                let same = {
                    let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
                    current.cert == key.cert
                };
                if same {
                    return;
                }
                let expiry = key.cert.first().and_then(|c| not_after(c)).unwrap_or(0);
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                self.not_after.store(expiry, Ordering::Relaxed);
                tracing::warn!(
                    listener = self.listener,
                    cert = %self.files.cert.display(),
                    not_after = expiry,
                    "TLS certificate reloaded"
                );
            }
            Err(e) => {
                Alert::CertificateReloadFailed.count();
                tracing::error!(
                    alert = Alert::CertificateReloadFailed.as_str(),
                    listener = self.listener,
                    error = %e,
                    "the new TLS certificate does not load: the previous one stays in service"
                );
            }
        }
    }
}

impl std::fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServedCert")
            .field("listener", &self.listener)
            .field("cert", &self.files.cert)
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

fn load(files: &CertFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(&files.cert)?;
    let secret = files
        .key
        .read(files.allow_readable)
        .map_err(|e| TlsError::File {
            path: key_path(files).unwrap_or_default(),
            message: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(secret.expose())
        .map_err(|_| TlsError::Setup("tls.key does not hold a PEM private key".into()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Setup(format!("the private key is not usable: {e}")))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|_| TlsError::Setup("the certificate and the private key do not match".into()))?;
    Ok(certified)
}

fn key_path(files: &CertFiles) -> Option<PathBuf> {
    match &files.key {
        SecretSource::File { file } => Some(file.clone()),
        SecretSource::Env { .. } => None,
    }
}

fn stamp(files: &CertFiles) -> Stamp {
    [Some(files.cert.clone()), key_path(files)]
        .into_iter()
        .flatten()
        .map(|p| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).ok().and_then(|m| {
                Some((
                    m.modified().ok()?,
                    m.ctime_nsec() + m.ctime() * 1_000_000_000,
                    m.len(),
                    m.mode(),
                ))
            })
        })
        .collect()
}

/// Checks every listener's files every `interval` and reloads all on SIGHUP.
/// The SIGHUP handler is installed even without TLS, so that a SIGHUP (from
/// logrotate, say) never terminates the server.
pub fn watch(served: Vec<Arc<ServedCert>>, interval: Duration) {
    tokio::spawn(async move {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: certificates reload on file changes only");
                None
            }
        };
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = every.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if forced && served.is_empty() {
                tracing::info!("SIGHUP: no TLS certificate to reload");
            }
            for s in &served {
                let s = Arc::clone(s);
                // File reads and key parsing block: off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    if forced {
                        tracing::info!(
                            listener = s.listener,
                            "SIGHUP: reloading the TLS certificate"
                        );
                        s.reload();
                    } else {
                        s.reload_if_changed();
                    }
                })
                .await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{generate, write_pair};

    fn served(dir: &std::path::Path) -> ServedCert {
        let files = CertFiles {
            cert: dir.join("cert.pem"),
            key: SecretSource::File {
                file: dir.join("key.pem"),
            },
            allow_readable: false,
            dev_ca: None,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        ServedCert::load("data", files, provider).unwrap()
    }

    fn serving(s: &ServedCert) -> Vec<u8> {
        s.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_changed_pair_is_served_and_a_bad_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), &generate(&[], 30).unwrap()).unwrap();
        let s = served(dir.path());
        let first = serving(&s);
        let first_expiry = s.not_after();

        // Unchanged files: nothing happens.
        s.reload_if_changed();
        assert_eq!(serving(&s), first);

        // A new pair on disk is picked up, with its expiry.
        std::thread::sleep(Duration::from_millis(20));
        write_pair(dir.path(), &generate(&[], 90).unwrap()).unwrap();
        s.reload_if_changed();
        let second = serving(&s);
        assert_ne!(second, first);
        assert!(s.not_after() > first_expiry + 50 * 86_400);

        // A certificate whose key does not match, then garbage: the pair in
        // service stays.
        let other = generate(&[], 10).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &other.cert_pem).unwrap();
        s.reload_if_changed();
        assert_eq!(serving(&s), second);
        std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
        s.reload();
        assert_eq!(serving(&s), second);
    }
}
