//! Encryption at rest: model files (`model.onnx.enc`) and raw-input
//! snapshots in the audit trail, sealed with AES-256-GCM under a key from
//! the secrets mechanism (`[encryption] key`). Decrypted only in memory.
//!
//! File format (docs/tls.md, "Encryption at rest"):
//!
//! ```text
//! "WDNENC"  6 bytes  magic
//! 0x01      1 byte   format version
//! nonce    12 bytes  random, never reused with a key (96-bit random nonces:
//!                    fine for far fewer than 2^32 seals per key)
//! ciphertext ‖ tag   AES-256-GCM of the plaintext, 16-byte tag
//! ```
//!
//! The associated data is the 7-byte header followed by the file's context,
//! which is not stored: `model:<name>:<version>` for a model file,
//! `audit-inputs` for a raw-input snapshot. So the header cannot be changed,
//! and a sealed file moved to another model or version folder (or a
//! snapshot passed off as a model) does not open.
//!
//! Hand-written on top of aws-lc-rs's AEAD because no maintained crate
//! defines a small self-describing container for this; the cryptography is
//! the library's.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The header: magic and format version.
pub const HEADER: &[u8; 7] = b"WDNENC\x01";

/// An AES-256-GCM key for sealed files.
pub struct SealKey(LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey([redacted])")
    }
}

/// Why sealing or opening failed. Never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key is not 32 bytes (raw) or 64 hex digits.
    #[error("the encryption key must be 32 bytes, written as 64 hex digits")]
    BadKey,
    /// Not a sealed file, or a format version this build does not read.
    #[error("not a Warden encrypted file (format WDNENC version 1)")]
    NotSealed,
    /// Wrong key, or the file was changed.
    #[error(
        "cannot be decrypted with the configured encryption key (another key, a modified file, or a file sealed for another model or version)"
    )]
    Open,
    /// The system random generator failed.
    #[error("no randomness for a nonce")]
    Random,
}

impl SealKey {
    /// A key from secret bytes: 64 hex digits (surrounding whitespace
    /// ignored) or exactly 32 raw bytes.
    pub fn from_secret(secret: &[u8]) -> Result<Self, SealError> {
        let text = std::str::from_utf8(secret).ok().map(str::trim);
        let bytes = match text.filter(|t| t.len() == 64) {
            Some(hex_text) => Zeroizing::new(hex::decode(hex_text).map_err(|_| SealError::BadKey)?),
            None if secret.len() == 32 => Zeroizing::new(secret.to_vec()),
            None => return Err(SealError::BadKey),
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::BadKey)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Seals `plaintext` into the file format, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(HEADER.len() + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(HEADER);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(context)),
                &mut body,
            )
            .map_err(|_| SealError::Open)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a sealed file sealed for `context`; the plaintext is wiped when
    /// dropped.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let rest = sealed.strip_prefix(HEADER).ok_or(SealError::NotSealed)?;
        if rest.len() < NONCE_LEN + 16 {
            return Err(SealError::NotSealed);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::NotSealed)?;
        let mut body = Zeroizing::new(body.to_vec());
        let plain_len = self
            .0
            .open_in_place(nonce, Aad::from(aad(context)), &mut body)
            .map_err(|_| SealError::Open)?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

fn aad(context: &str) -> Vec<u8> {
    [HEADER.as_slice(), context.as_bytes()].concat()
}

/// The context of a model file.
pub fn model_context(model: &str, version: u64) -> String {
    format!("model:{model}:{version}")
}

/// The context of a raw-input snapshot.
pub const AUDIT_INPUTS: &str = "audit-inputs";

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

    #[test]
    fn sealed_files_open_only_with_their_key_and_intact() {
        let key = SealKey::from_secret(KEY).unwrap();
        let here = model_context("iris", 1);
        let sealed = key.seal(b"an onnx graph", &here).unwrap();
        assert!(sealed.starts_with(b"WDNENC\x01"));
        assert_eq!(&*key.open(&sealed, &here).unwrap(), b"an onnx graph");
        // Fresh nonce each time.
        assert_ne!(key.seal(b"an onnx graph", &here).unwrap(), sealed);
        // Another place, or another kind of file, does not open.
        for elsewhere in [
            model_context("iris", 2),
            model_context("digits", 1),
            AUDIT_INPUTS.into(),
        ] {
            assert_eq!(key.open(&sealed, &elsewhere).unwrap_err(), SealError::Open);
        }

        let other = SealKey::from_secret(&[7u8; 32]).unwrap();
        assert_eq!(other.open(&sealed, &here).unwrap_err(), SealError::Open);
        for i in [0, 6, 8, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(key.open(&bad, &here).is_err(), "byte {i}");
        }
        assert_eq!(
            key.open(b"plain onnx", &here).unwrap_err(),
            SealError::NotSealed
        );
        assert_eq!(
            key.open(&sealed[..20], &here).unwrap_err(),
            SealError::NotSealed
        );
    }

    #[test]
    fn keys_are_32_bytes() {
        assert!(SealKey::from_secret(b"short").is_err());
        assert!(SealKey::from_secret(&[1u8; 31]).is_err());
        assert!(SealKey::from_secret(&"zz".repeat(32).into_bytes()).is_err());
    }
}
