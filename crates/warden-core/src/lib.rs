//! Warden's shared vocabulary: stable error codes and their envelope, the
//! configuration (raw and validated), the authenticated principal, and secrets.
//!
//! This crate does no network or database I/O; every other Warden crate
//! depends on it.

pub mod config;
pub mod error;
pub mod principal;
pub mod secret;

pub use error::{ApiError, ErrorCode, FieldProblem};
pub use principal::{ModelScope, Permission, Permissions, Principal, Role};
pub use secret::{Secret, SecretSource};
