//! Model integrity: a model card may pin the SHA-256 of each version's ONNX
//! file, and the configuration (or the card) may require a detached Ed25519
//! signature by a trusted key. Both are over the plaintext graph, so a
//! model can be signed, then encrypted (`crate::sealed`).
//!
//! The signature file sits next to the model as `model.onnx.sig`, JSON:
//!
//! ```json
//! {"algorithm": "ed25519", "key": "release", "model": "iris", "version": 1,
//!  "sha256": "<hex>", "signature": "<base64>"}
//! ```
//!
//! The signature covers `"warden-model-signature-v2\0"`, the model name
//! (length-prefixed), the version (8 bytes, big-endian) and the SHA-256 of
//! the plaintext: domain-separated, so no other Ed25519 signature by the
//! same key passes as a model signature, and bound to its place, so a signed
//! file copied to another version or model folder does not verify there.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

const DOMAIN: &[u8] = b"warden-model-signature-v2\0";

/// Keys trusted to sign models, and whether every model must be signed.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// (name, raw 32-byte Ed25519 public key).
    pub keys: Vec<(String, Vec<u8>)>,
    /// Every model version must carry a valid signature.
    pub require_signature: bool,
}

/// A detached model signature (`model.onnx.sig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signing key's name in `[[models.trusted_keys]]`.
    pub key: String,
    /// The model the file was signed for.
    pub model: String,
    /// The version the file was signed for.
    pub version: u64,
    /// SHA-256 of the plaintext model, hex.
    pub sha256: String,
    /// The Ed25519 signature, base64.
    pub signature: String,
}

/// Why a model's integrity check failed: a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IntegrityError(pub String);

/// SHA-256 of a model file's plaintext.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Where a model file sits: its model's name and its version.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// Model name (its folder).
    pub model: &'a str,
    /// Version (its folder).
    pub version: u64,
}

fn message(at: Placement<'_>, digest: &[u8; 32]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(&(at.model.len() as u64).to_be_bytes());
    m.extend_from_slice(at.model.as_bytes());
    m.extend_from_slice(&at.version.to_be_bytes());
    m.extend_from_slice(digest);
    m
}

/// A new Ed25519 signing key: (PKCS#8 document, raw public key).
pub fn generate_key() -> Result<(Vec<u8>, Vec<u8>), IntegrityError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| IntegrityError("cannot generate a key".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| IntegrityError("cannot read the generated key".into()))?;
    Ok((pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
}

/// Signs a model's plaintext, for its place, with a PKCS#8 Ed25519 key
/// named `key_name`.
pub fn sign(
    pkcs8: &[u8],
    key_name: &str,
    at: Placement<'_>,
    model: &[u8],
) -> Result<SignatureFile, IntegrityError> {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
        .map_err(|_| IntegrityError("not an Ed25519 private key (PKCS#8)".into()))?;
    let d = sha256(model);
    Ok(SignatureFile {
        algorithm: "ed25519".into(),
        key: key_name.to_owned(),
        model: at.model.to_owned(),
        version: at.version,
        sha256: hex::encode(d),
        signature: STANDARD.encode(pair.sign(&message(at, &d)).as_ref()),
    })
}

/// Checks a model's plaintext digest against a pinned hash (if any) and a
/// signature (if present, or required). Returns a description of what was
/// checked, for the log.
pub fn check(
    at: Placement<'_>,
    digest: &[u8; 32],
    pinned: Option<&str>,
    signature: Option<&SignatureFile>,
    required: bool,
    trust: &Trust,
) -> Result<String, IntegrityError> {
    let mut checked = Vec::new();
    if let Some(pin) = pinned {
        if !pin.eq_ignore_ascii_case(&hex::encode(digest)) {
            return Err(IntegrityError(format!(
                "SHA-256 {} does not match the pinned {pin} (the file was changed)",
                hex::encode(digest)
            )));
        }
        checked.push("sha256 pin".to_owned());
    }
    match signature {
        None if required || trust.require_signature => {
            return Err(IntegrityError(
                "no signature (model.onnx.sig), and this model must be signed".into(),
            ));
        }
        None => {}
        Some(sig) => {
            if sig.algorithm != "ed25519" {
                return Err(IntegrityError(format!(
                    "signature algorithm {:?} is not ed25519",
                    sig.algorithm
                )));
            }
            let Some((_, public)) = trust.keys.iter().find(|(n, _)| *n == sig.key) else {
                return Err(IntegrityError(format!(
                    "signed by {:?}, which is not a trusted key ([[models.trusted_keys]])",
                    sig.key
                )));
            };
            if sig.model != at.model || sig.version != at.version {
                return Err(IntegrityError(format!(
                    "the signature is for {} version {}, not {} version {}",
                    sig.model, sig.version, at.model, at.version
                )));
            }
            if !sig.sha256.eq_ignore_ascii_case(&hex::encode(digest)) {
                return Err(IntegrityError(
                    "the signature is for another file (its sha256 differs): the file was changed"
                        .into(),
                ));
            }
            let raw = STANDARD
                .decode(&sig.signature)
                .map_err(|_| IntegrityError("the signature is not base64".into()))?;
            UnparsedPublicKey::new(&ED25519, public)
                .verify(&message(at, digest), &raw)
                .map_err(|_| {
                    IntegrityError(format!("the signature by {:?} does not verify", sig.key))
                })?;
            checked.push(format!("signature by {}", sig.key));
        }
    }
    Ok(if checked.is_empty() {
        "none".into()
    } else {
        checked.join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(keys: &[(&str, &[u8])]) -> Trust {
        Trust {
            keys: keys
                .iter()
                .map(|(n, k)| ((*n).into(), k.to_vec()))
                .collect(),
            require_signature: false,
        }
    }

    #[test]
    fn signatures_verify_only_for_the_same_file_place_and_a_trusted_key() {
        let (private, public) = generate_key().unwrap();
        let model = b"onnx bytes";
        let at = Placement {
            model: "iris",
            version: 1,
        };
        let sig = sign(&private, "release", at, model).unwrap();
        let d = sha256(model);
        let t = trust(&[("release", &public)]);
        assert_eq!(
            check(at, &d, Some(&hex::encode(d)), Some(&sig), true, &t).unwrap(),
            "sha256 pin, signature by release"
        );
        // Tampered file.
        let other = sha256(b"onnx bytez");
        assert!(check(at, &other, None, Some(&sig), false, &t).is_err());
        assert!(check(at, &other, Some(&hex::encode(d)), None, false, &t).is_err());
        // The same signed file in another version or model folder.
        for elsewhere in [
            Placement {
                model: "iris",
                version: 2,
            },
            Placement {
                model: "digits",
                version: 1,
            },
        ] {
            let e = check(elsewhere, &d, None, Some(&sig), false, &t).unwrap_err();
            assert!(e.0.contains("the signature is for iris version 1"), "{e}");
            // ... and a signature file edited to claim the new place fails.
            let mut moved = sig.clone();
            moved.model = elsewhere.model.into();
            moved.version = elsewhere.version;
            assert!(check(elsewhere, &d, None, Some(&moved), false, &t).is_err());
        }
        // Unknown key, and a known name with another key.
        let (_, stranger) = generate_key().unwrap();
        let e = check(at, &d, None, Some(&sig), false, &trust(&[("ops", &public)])).unwrap_err();
        assert!(e.0.contains("not a trusted key"), "{e}");
        let e = check(
            at,
            &d,
            None,
            Some(&sig),
            false,
            &trust(&[("release", &stranger)]),
        )
        .unwrap_err();
        assert!(e.0.contains("does not verify"), "{e}");
        // A forged signature field.
        let mut forged = sig.clone();
        forged.signature = STANDARD.encode([0u8; 64]);
        assert!(check(at, &d, None, Some(&forged), false, &t).is_err());
        // Required but missing.
        assert!(check(at, &d, None, None, true, &t).is_err());
        assert_eq!(check(at, &d, None, None, false, &t).unwrap(), "none");
    }
}
