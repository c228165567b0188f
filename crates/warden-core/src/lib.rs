//! Warden's shared vocabulary: stable error codes and their envelope, the
//! configuration (raw and validated), the authenticated principal, and secrets.
//!
//! This crate does no network or database I/O; every other Warden crate
//! depends on it.

pub mod config;
pub mod error;
pub mod metrics;
pub mod principal;
pub mod secret;

pub use error::{ApiError, ErrorCode, FieldProblem, GrpcCode};
pub use principal::{Grant, Grants, ModelScope, Permission, Permissions, Principal, Role, Roles};
pub use secret::{Secret, SecretSource};

/// Whether `name` is a valid model name: 1 to 64 ASCII letters, digits,
/// `-`, `_` or `.`, not starting with `.`. Model folders, key allowlists and
/// URLs all use this rule.
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
