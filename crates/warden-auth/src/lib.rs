//! Warden's identity layer: every credential resolves to one
//! [`Principal`](warden_core::Principal).
//!
//! Today: API keys of the form `wdn_<id>_<secret>` ([`keys`]) and the
//! [`Authenticator`] that reads them from `X-API-Key` or
//! `Authorization: Bearer`.

pub mod authenticator;
pub mod keys;

pub use authenticator::{Authenticator, Credential};
pub use keys::{ApiKey, IssuedKey, KeyAdmin, KeyError, NewKey};
