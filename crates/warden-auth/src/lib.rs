//! Warden's identity layer: every credential resolves to one
//! [`Principal`](warden_core::Principal).
//!
//! - [`keys`]: API keys `wdn_<id>_<secret>` and their lifecycle;
//! - [`accounts`]: users (password grant) and OAuth2 clients;
//! - [`passwords`]: Argon2id hashing and bounded, equal-time checking;
//! - [`tokens`]: Warden's own EdDSA token issuer and its JWKS;
//! - [`jwt`]: verification of bearer JWTs from configured issuers and Warden;
//! - [`authenticator`]: the pipeline step that picks the right one.

pub mod accounts;
pub mod authenticator;
pub mod jwt;
pub mod keys;
pub mod passwords;
pub mod tokens;

pub use accounts::{AccountError, Accounts, IssuedClient};
pub use authenticator::{Authenticator, Credential};
pub use jwt::JwtVerifier;
pub use keys::{ApiKey, IssuedKey, KeyAdmin, KeyError, NewKey};
pub use tokens::{IssuedToken, TokenService};
