//! Secrets: values that must never be printed, logged or compared with `==`.
//!
//! Configuration never holds a secret inline: a secret is given as
//! `{ env = "NAME" }` or `{ file = "/path" }` and read once at start.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use zeroize::Zeroizing;

/// Where a secret comes from, as written in the configuration file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// `{ env = "NAME" }`: the value of an environment variable.
    Env {
        /// Name of the environment variable.
        env: String,
    },
    /// `{ file = "/path" }`: the whole content of a file (one trailing newline is dropped).
    File {
        /// Path of the file; it must not be readable by group or others.
        file: PathBuf,
    },
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env { env } => write!(f, "{{ env = {env:?} }}"),
            Self::File { file } => write!(f, "{{ file = {file:?} }}"),
        }
    }
}

/// Why a secret could not be read. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or not UTF-8).
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error(
        "secret file {0} is readable by group or others (chmod 600 it, or set insecure.allow_readable_secret_files = true)"
    )]
    Readable(PathBuf),
    /// The secret is empty.
    #[error("the secret is empty")]
    Empty,
}

impl SecretSource {
    /// Reads the secret. `allow_readable` downgrades the file-permission check.
    pub fn read(&self, allow_readable: bool) -> Result<Secret, SecretError> {
        let bytes = match self {
            Self::Env { env } => {
                let value = std::env::var(env).map_err(|_| SecretError::MissingEnv(env.clone()))?;
                Zeroizing::new(value.into_bytes())
            }
            Self::File { file } => {
                let io = |source| SecretError::Io {
                    path: file.clone(),
                    source,
                };
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let meta = std::fs::metadata(file).map_err(io)?;
                    let mode = meta.permissions().mode();
                    if mode & 0o077 != 0 && !own_group_only(file, &meta) {
                        if !allow_readable {
                            return Err(SecretError::Readable(file.clone()));
                        }
                        warn(format!(
                            "secret file {} is readable by group or others (allowed by insecure.allow_readable_secret_files)",
                            file.display()
                        ));
                    }
                }
                let mut bytes = Zeroizing::new(std::fs::read(file).map_err(io)?);
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                bytes
            }
        };
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret(bytes))
    }
}

/// Whether a file readable beyond its owner is readable only by this
/// process's own group, and by nobody else. That is how Kubernetes mounts
/// Secrets for a non-root pod (`defaultMode: 0440`, `runAsGroup` =
/// `fsGroup`): the files belong to root and the pod's group. All of:
/// - group may read, not write; others nothing (mode at most 0640);
/// - the file's group is this process's effective group;
/// - the file's owner is root or this process's user (no third user);
/// - no POSIX ACL, whose mask would otherwise pass for the group bits while
///   granting named users access.
#[cfg(unix)]
fn own_group_only(file: &std::path::Path, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ids = Ids {
        gid: rustix::process::getegid().as_raw(),
        uid: rustix::process::geteuid().as_raw(),
    };
    group_rule(meta.permissions().mode(), meta.uid(), meta.gid(), ids) && !has_acl(file)
}

/// This process's effective ids.
#[derive(Debug, Clone, Copy)]
struct Ids {
    uid: u32,
    gid: u32,
}

fn group_rule(mode: u32, file_uid: u32, file_gid: u32, own: Ids) -> bool {
    mode & 0o037 == 0 && file_gid == own.gid && (file_uid == 0 || file_uid == own.uid)
}

/// Whether the file carries a POSIX access ACL.
#[cfg(unix)]
fn has_acl(file: &std::path::Path) -> bool {
    let mut none: [u8; 0] = [];
    rustix::fs::getxattr(file, "system.posix_acl_access", &mut none[..]).is_ok()
}

/// Warnings about acknowledged insecure secrets, gathered while the
/// configuration is read (before logging is set up) and taken by the
/// caller to log or print: the configuration is read once, at start.
static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn warn(message: String) {
    let mut w = WARNINGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !w.contains(&message) {
        w.push(message);
    }
}

/// Takes the warnings gathered so far (each once).
pub fn take_warnings() -> Vec<String> {
    std::mem::take(
        &mut *WARNINGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// A secret value in memory, zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes as a secret.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes. Callers must not log or display them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_processes_own_group_may_read_besides_the_owner() {
        let own = Ids {
            uid: 65532,
            gid: 65532,
        };
        // Kubernetes' Secret volume for a non-root pod: root's, 0440, group = ours.
        assert!(group_rule(0o440, 0, 65532, own));
        assert!(group_rule(0o640, 65532, 65532, own));
        // Another group, group-writable, readable by others, or a third
        // user's file: refused.
        assert!(!group_rule(0o440, 0, 100, own));
        assert!(!group_rule(0o460, 0, 65532, own));
        assert!(!group_rule(0o444, 0, 65532, own));
        assert!(!group_rule(0o440, 1000, 65532, own));
        // A file of our own group, read through the real check.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "secret").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        let source = SecretSource::File { file: file.clone() };
        assert_eq!(source.read(false).unwrap().expose(), b"secret");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(matches!(source.read(false), Err(SecretError::Readable(_))));
    }

    /// An ACL naming another user: the group bits show the ACL's mask
    /// (r--), which alone would pass for "our group may read". Refused.
    /// Needs `setfacl` (Debian package `acl`, installed by setup.sh).
    #[test]
    fn a_file_with_an_acl_is_refused_even_with_group_only_bits() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "secret").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        let source = SecretSource::File { file: file.clone() };
        assert!(source.read(false).is_ok(), "0440, our group, no ACL");
        let status = std::process::Command::new("setfacl")
            .args(["-m", "u:nobody:r"])
            .arg(&file)
            .status()
            .expect("setfacl is missing: run ./scripts/setup.sh (Debian package acl)");
        assert!(status.success(), "setfacl failed");
        assert!(has_acl(&file));
        assert!(matches!(source.read(false), Err(SecretError::Readable(_))));
    }

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
    }

    #[test]
    fn file_secret_checks_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "top-secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let src = SecretSource::File { file: path.clone() };
        assert!(matches!(src.read(false), Err(SecretError::Readable(_))));
        assert_eq!(src.read(true).unwrap().expose(), b"top-secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(src.read(false).unwrap().expose(), b"top-secret");
    }

    #[test]
    fn parses_both_forms_and_rejects_others() {
        #[derive(Deserialize)]
        struct T {
            s: SecretSource,
        }
        let t: T = toml::from_str(r#"s = { env = "X" }"#).unwrap();
        assert_eq!(t.s, SecretSource::Env { env: "X".into() });
        let t: T = toml::from_str(r#"s = { file = "/p" }"#).unwrap();
        assert_eq!(t.s, SecretSource::File { file: "/p".into() });
        assert!(toml::from_str::<T>(r#"s = "inline-secret""#).is_err());
        assert!(toml::from_str::<T>(r#"s = { value = "x" }"#).is_err());
    }
}
