//! Passwords and OAuth2 client secrets: Argon2id with 7 MiB and 5 passes,
//! about 100 ms per hash. OWASP's Password Storage Cheat Sheet lists it
//! among the configurations of equal strength to the `argon2` crate's
//! default (19 MiB, 2 passes); Warden takes the one with the least memory,
//! since every check in flight holds its memory cost (docs/identity.md).
//! Hashes made with other parameters (earlier versions) still verify: a
//! PHC string carries its own.
//!
//! Checking costs the same whether or not the account exists: an unknown
//! name is checked against a dummy hash made at start, so response time does
//! not tell an attacker which names are real. Checks run on the blocking
//! pool, at most one per CPU at a time, and at most [`MAX_WAITING`] wait: a
//! flood of login attempts cannot take all memory or every blocking thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Checks that may wait for a free CPU before callers are told to retry.
pub const MAX_WAITING: usize = 64;

/// Memory cost in KiB, passes, lanes: OWASP's 7 MiB configuration.
const PARAMS: (u32, u32, u32) = (7 * 1024, 5, 1);

fn argon2() -> Result<Argon2<'static>, String> {
    let (m, t, p) = PARAMS;
    let params =
        argon2::Params::new(m, t, p, None).map_err(|e| format!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// Hashes a password or secret to an Argon2id PHC string. Blocking (~100 ms).
pub fn hash(secret: &str) -> Result<String, String> {
    argon2()?
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash: {e}"))
}

/// Verifies `secret` against a PHC string. Blocking. A malformed hash is a
/// mismatch (and logged).
pub fn verify(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        // The parameters come from the PHC string.
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored password hash is malformed");
            false
        }
    }
}

/// Too many checks are already waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks in progress")]
pub struct Busy;

/// Bounded, equal-time secret checking for the token endpoint.
#[derive(Debug)]
pub struct SecretChecker {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    dummy: Arc<str>,
}

/// Counts one waiting check; the count drops when the wait ends, however it
/// ends (a client that disconnects cancels the future mid-wait).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SecretChecker {
    /// A checker running at most `parallel` checks at once. Computes the
    /// dummy hash (one Argon2 run).
    pub fn new(parallel: usize) -> Result<Self, String> {
        let random: String = (0..32).map(|_| rand::random::<char>()).collect();
        Ok(Self {
            permits: Arc::new(Semaphore::new(parallel.max(1))),
            waiting: AtomicUsize::new(0),
            dummy: hash(&random)?.into(),
        })
    }

    /// Checks `secret` against `stored`, or against the dummy hash when the
    /// account does not exist (`None`: always false, same cost).
    pub async fn check(
        &self,
        secret: Zeroizing<String>,
        stored: Option<String>,
    ) -> Result<bool, Busy> {
        let permit = {
            let waiting = Waiting(&self.waiting);
            if waiting.0.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
                return Err(Busy);
            }
            Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|_| Busy)?
        };
        let exists = stored.is_some();
        let phc: Arc<str> = stored.map_or_else(|| self.dummy.clone(), Arc::from);
        // The permit moves into the blocking task: if the request is
        // cancelled, the hash still holds its CPU slot until it finishes.
        let matched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify(&secret, &phc)
        })
        .await
        .unwrap_or(false);
        Ok(exists && matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_match() {
        let phc = hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify("correct horse", &phc));
        assert!(!verify("wrong", &phc));
        assert!(!verify("x", "not a phc string"));

        let checker = SecretChecker::new(1).unwrap();
        let secret = || Zeroizing::new("correct horse".to_string());
        assert_eq!(checker.check(secret(), Some(phc.clone())).await, Ok(true));
        assert_eq!(checker.check(secret(), None).await, Ok(false));
    }

    #[test]
    fn new_hashes_use_the_low_memory_parameters_and_old_ones_still_verify() {
        let phc = hash("s3cret").unwrap();
        assert!(phc.contains("$m=7168,t=5,p=1$"), "{phc}");
        // A hash made by earlier versions (the crate's default, 19 MiB).
        let old = Argon2::default()
            .hash_password(b"s3cret")
            .unwrap()
            .to_string();
        assert!(old.contains("$m=19456,t=2,p=1$"), "{old}");
        assert!(verify("s3cret", &old));
        assert!(!verify("s3cre7", &old));
    }
}
