//! Configuration: the raw TOML structs (`deny_unknown_fields`, one doc
//! comment per field) and the validated [`Config`] they become before any
//! port is bound. Parse, don't validate: the server only ever sees `Config`.
//!
//! docs/configuration.md and warden.example.toml document the same fields;
//! keep the three in step.

mod auth;
mod limits;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::principal::Roles;
use crate::secret::{Secret, SecretSource};

pub use auth::{
    AuthSettings, IssuerKeys, IssuerSettings, JWT_ALGORITHMS, MIN_HS256_SECRET, MtlsIdentity,
    RawAuth, RawIssuer, RawMtlsIdentity, RawRole, RawTokens, ScopeTarget, TokenSettings,
    model_list,
};
pub use limits::{
    Bans, Budget, LimitBackend, LimitSettings, POLICIES, Quota, Rate, RawBans, RawLimits, RawQuota,
    RawRate,
};

/// The default data-plane address (README.md).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// The default management-plane address (docs/api.md).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9443";
/// Default gRPC listener (docs/grpc.md).
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:8444";
/// The default data directory (README.md).
pub const DEFAULT_DATA_DIR: &str = "./warden-data";
/// The default model repository (README.md).
pub const DEFAULT_MODELS_DIR: &str = "models";
/// The default body limit (docs/limits.md): 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The folder the repo's setup script puts the ONNX Runtime library in.
pub const DEFAULT_RUNTIME_DIR: &str = ".runtime/lib";

/// The configuration file as written. Every table and field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Directory for Warden's state: the SQLite store and the generated TLS
    /// certificate. Default `./warden-data`.
    pub data_dir: Option<PathBuf>,
    /// The data-plane listener.
    pub server: RawServer,
    /// TLS for the data plane.
    pub tls: RawTls,
    /// The model repository.
    pub models: RawModels,
    /// ONNX Runtime.
    pub runtime: RawRuntime,
    /// Input validation.
    pub validation: RawValidation,
    /// Keys, users and audit storage.
    pub store: RawStore,
    /// Logging.
    pub log: RawLog,
    /// The management listener.
    pub admin: RawAdmin,
    /// The gRPC listener.
    pub grpc: RawGrpc,
    /// Roles beyond the built-in `admin`, `predict` and `metrics`.
    pub roles: BTreeMap<String, RawRole>,
    /// API keys, tokens, external JWT issuers, client certificates.
    pub auth: RawAuth,
    /// Rate limits, quotas, bans.
    pub limits: RawLimits,
    /// The tamper-evident audit trail.
    pub audit: RawAudit,
    /// Anomaly alerts.
    pub alerts: RawAlerts,
    /// Encryption at rest.
    pub encryption: RawEncryption,
    /// Acknowledgements of settings Warden otherwise refuses as insecure.
    pub insecure: RawInsecure,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Address and port of the data plane. Default `127.0.0.1:8443`.
    pub listen: Option<String>,
    /// Whole-request deadline, reading the body included. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Option<Duration>,
    /// Deadline for a client to send its request headers. Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Option<Duration>,
    /// Deadline for the TLS handshake. Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Option<Duration>,
    /// Largest request body in bytes. Default 1048576 (1 MiB).
    pub body_limit_bytes: Option<usize>,
    /// Deepest JSON nesting accepted in a body. Default 32.
    pub json_max_depth: Option<usize>,
    /// How long SIGTERM waits for in-flight requests. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Option<Duration>,
    /// Most connections open at once; further ones wait in the kernel backlog. Default 10000.
    pub max_connections: Option<usize>,
    /// Peers (CIDRs) whose `X-Forwarded-For` / `Forwarded` headers are believed. Default none.
    pub trusted_proxies: Option<Vec<IpNet>>,
    /// Most requests in flight at once; beyond: 503 overloaded. Default 4096.
    pub max_in_flight: Option<usize>,
    /// Most connections open at once from one client address (IPv6: one
    /// /64); more are closed at once. The trusted proxies are not capped.
    /// Default 5% of `max_connections` (500).
    pub max_connections_per_address: Option<usize>,
    /// Most requests in flight at once for one principal; beyond: 429
    /// rate_limited. Default 1/8 of `max_in_flight` (512).
    pub max_in_flight_per_principal: Option<usize>,
    /// A connection with no request in progress is closed after this
    /// (HTTP/2: GOAWAY, then close). Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    /// Least rate, in bytes per second, at which a request body must arrive
    /// while Warden waits for it, measured over `transfer_window`; 0 turns
    /// it off. Default 1024.
    pub min_body_rate: Option<u64>,
    /// Least rate, in bytes per second, at which a client must read its
    /// response while Warden waits to write, measured over
    /// `transfer_window`; 0 turns it off. Default 1024.
    pub min_send_rate: Option<u64>,
    /// The window the minimum rates are measured over. Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub transfer_window: Option<Duration>,
    /// A plaintext HTTP listener that only redirects (308) to the HTTPS data
    /// plane, e.g. `"0.0.0.0:80"`. Default: none. Needs TLS; off loopback it
    /// needs `insecure.plaintext_http_on_public_address = true`.
    pub redirect_listen: Option<String>,
    /// Serve the API docs page (Swagger UI, offline) at `/docs`. Default true.
    pub docs: Option<bool>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// Serve HTTPS. Default true. Plaintext off loopback needs
    /// `insecure.plaintext_http_on_public_address = true`.
    pub enabled: Option<bool>,
    /// PEM certificate chain. Without `cert` and `key`, a self-signed
    /// certificate is generated once into `<data_dir>/tls/`.
    pub cert: Option<PathBuf>,
    /// The PEM private key, as a secret: `{ file = "..." }` or `{ env = "..." }`.
    pub key: Option<SecretSource>,
    /// Lowest TLS version: "1.2" (default) or "1.3". Anything lower is refused.
    pub min_version: Option<String>,
    /// A PEM CA bundle: data-plane clients may (or must) present a
    /// certificate it signed. Default: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: "required" (default) or "optional".
    pub client_auth: Option<String>,
    /// How often the certificate and key files are checked for changes
    /// (a change is loaded without restart; so is SIGHUP). Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Option<Duration>,
}

/// `[admin]`: the management listener (docs/api.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Serve the management API. Default true.
    pub enabled: Option<bool>,
    /// Address and port. Default `127.0.0.1:9443`. It speaks TLS when the
    /// data plane does, with the same certificate.
    pub listen: Option<String>,
    /// A PEM CA bundle for client certificates on this listener.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: "required" (default) or "optional".
    pub client_auth: Option<String>,
}

/// `[grpc]`: the Open Inference Protocol over gRPC (docs/grpc.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGrpc {
    /// Serve gRPC. Default true.
    pub enabled: Option<bool>,
    /// Address and port. Default `127.0.0.1:8444`. It speaks TLS (and
    /// mTLS) as the data plane does, with the same certificate.
    pub listen: Option<String>,
    /// Largest message accepted or sent, in bytes. Default: room for the
    /// largest request any model accepts (its inputs' element caps), at
    /// least 4 MiB; never unlimited.
    pub max_message_bytes: Option<usize>,
    /// Serve gRPC server reflection (for grpcurl and similar), to callers
    /// with a valid credential. Default false.
    pub reflection: Option<bool>,
}

/// `[models]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawModels {
    /// The model repository folder. Default `models`.
    pub dir: Option<PathBuf>,
    /// Rows per request when a model card sets no `max_batch`. Default 64.
    pub default_max_batch: Option<usize>,
    /// Ed25519 public keys trusted to sign model files.
    pub trusted_keys: Vec<RawTrustedKey>,
    /// Every model version must carry a valid signature by a trusted key.
    /// Default false (a signature present is always checked).
    pub require_signature: Option<bool>,
}

/// `[[models.trusted_keys]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedKey {
    /// The name a signature file gives (`warden model sign --name`).
    pub name: String,
    /// The raw 32-byte Ed25519 public key, base64 (`warden model keygen` prints it).
    pub public_key: String,
}

/// `[encryption]`: encryption at rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEncryption {
    /// AES-256 key (64 hex digits) as a secret, for encrypted model files
    /// (`model.onnx.enc`) and raw-input snapshots in the audit trail.
    pub key: Option<SecretSource>,
}

/// `[runtime]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRuntime {
    /// Path of `libonnxruntime.so`. Default: `$ORT_DYLIB_PATH`, else the
    /// newest `libonnxruntime.so*` in `.runtime/lib` (put there by
    /// `scripts/setup.sh`).
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime sessions per model version (each runs one request at a
    /// time on one thread). Default: the number of CPUs.
    pub sessions_per_model: Option<usize>,
    /// Requests that may wait for a free session per model before the
    /// server answers `overloaded`. Default 256.
    pub queue_per_model: Option<usize>,
    /// Longest a request waits in that queue before it is shed with
    /// `overloaded` instead of being run. Default `2s`.
    #[serde(deserialize_with = "duration")]
    pub queue_timeout: Option<Duration>,
}

/// `[validation]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawValidation {
    /// How far outside a feature's training range a value may go, as a
    /// fraction of that range (0.25 = a quarter of max - min on each side).
    /// Model cards may override it. Default 0.25.
    pub range_tolerance: Option<f64>,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// SQLite database file. Default `<data_dir>/warden.db`.
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL URL (`postgres://user@host:5432/db`) instead of SQLite:
    /// replicas share keys, users, clients, signing keys and their audit
    /// chains through it. With a password it is a secret (`{ env = "…" }`
    /// or `{ file = "…" }`); written inline it is refused.
    pub url: Option<RawUrl>,
}

/// A URL that is a secret when it carries a password (`limits.redis_url`,
/// `store.url`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawUrl {
    /// Written in the file: no password allowed.
    Inline(String),
    /// `{ env = … }` or `{ file = … }`.
    Secret(SecretSource),
}

impl RawUrl {
    /// The URL, trimmed, as a secret; `key` names the option in errors
    /// (which never repeat the URL).
    fn read(self, key: &'static str, allow_readable: bool) -> Result<Secret, ConfigError> {
        let secret = match self {
            Self::Inline(url) => {
                if has_password(&url) {
                    return Err(invalid(
                        key,
                        "a URL with a password is a secret: give it as { env = \"…\" } or { file = \"…\" }",
                    ));
                }
                Secret::new(url.into_bytes())
            }
            Self::Secret(source) => source
                .read(allow_readable)
                .map_err(|e| invalid(key, e.to_string()))?,
        };
        let Ok(text) = std::str::from_utf8(secret.expose()) else {
            return Err(invalid(key, "not UTF-8"));
        };
        Ok(Secret::new(text.trim().as_bytes().to_vec()))
    }
}

/// Whether a URL may carry a password (`scheme://user:password@host`,
/// `scheme://:password@host`). Cautious on purpose: everything before the
/// last `@` counts, so a password holding an unencoded `/`, `?` or `#` is
/// caught too (at the price of refusing inline the rare URL with both a `:`
/// and an `@` in its path or query).
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let in_userinfo = rest
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    // libpq's `?password=` and redis-rs's `?pass=` (either case; a key
    // with a '%' escape counts too, whatever it encodes).
    let in_query = rest.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let key = key.to_ascii_lowercase();
            key == "password" || key == "pass" || key.contains('%')
        })
    });
    in_userinfo || in_query
}

/// Where Warden's persistent state lives.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// A SQLite file (the embedded single-node default).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by replicas; the URL is a secret.
    Postgres(Secret),
}

fn store_location(
    raw: RawStore,
    data_dir: &Path,
    allow_readable: bool,
) -> Result<StoreLocation, ConfigError> {
    match (raw.sqlite, raw.url) {
        (Some(_), Some(_)) => Err(invalid(
            "store.url",
            "set store.sqlite or store.url, not both",
        )),
        (sqlite, None) => Ok(StoreLocation::Sqlite(
            sqlite.unwrap_or_else(|| data_dir.join("warden.db")),
        )),
        (None, Some(url)) => {
            let url = url.read("store.url", allow_readable)?;
            let scheme_ok = std::str::from_utf8(url.expose())
                .is_ok_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
            if !scheme_ok {
                return Err(invalid(
                    "store.url",
                    "expected postgres://user@host:5432/database (SQLite is store.sqlite)",
                ));
            }
            Ok(StoreLocation::Postgres(url))
        }
    }
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// Filter in `tracing` syntax, e.g. `info` or `warn,warden=debug`. Default `info`.
    pub level: Option<String>,
    /// `json` (default: one JSON object per line) or `text`.
    pub format: Option<String>,
    /// Write one access-log line per request. Default true.
    pub access: Option<bool>,
}

/// `[audit]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    /// Keep the audit trail. Default true.
    pub enabled: Option<bool>,
    /// The HMAC key (at least 32 bytes), as a secret. Default: 32 random
    /// bytes generated once into `<data_dir>/audit.key` (mode 0600).
    pub key: Option<SecretSource>,
    /// This replica's chain id. Default `local`.
    pub replica: Option<String>,
    /// `"batched"` (default: committed within `batch_window`) or `"sync"`
    /// (a response is sent only after its record is committed).
    pub durability: Option<String>,
    /// Most time a record waits to be committed in batched mode. Default `50ms`.
    #[serde(deserialize_with = "duration")]
    pub batch_window: Option<Duration>,
    /// Records waiting to be written; when full, requests wait (backpressure). Default 10000.
    pub queue: Option<usize>,
    /// How often a signed checkpoint is written to the log when the chain
    /// moved, and the retention policy applied. Default `1m`.
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: Option<Duration>,
    /// Records older than this are removed behind a signed anchor (export
    /// them first). Default: kept forever.
    #[serde(deserialize_with = "duration")]
    pub max_age: Option<Duration>,
    /// At most this many records are kept per chain; older ones are removed
    /// behind a signed anchor. Default: no limit.
    pub max_records: Option<u64>,
    /// Refusals made before any work (unauthenticated, banned,
    /// rate_limited) are written as one record per client, outcome and
    /// window, with a count. Default `1m`.
    #[serde(deserialize_with = "duration")]
    pub refusal_window: Option<Duration>,
}

/// `[alerts]`: anomaly alerts (structured log events with an `alert` field,
/// counted in `warden_alerts_total`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAlerts {
    /// Window over which each principal's predicted rows are counted. Default `1m`.
    #[serde(deserialize_with = "duration")]
    pub rate_window: Option<Duration>,
    /// Windows a principal needs before its baseline is trusted. Default 10.
    pub rate_warmup: Option<u32>,
    /// Alert when a window's rows exceed the baseline times this. Default 10.
    pub rate_factor: Option<f64>,
    /// ... and at least this many rows. Default 600.
    pub rate_min: Option<u64>,
    /// Warn when a served certificate expires within this. Default `14d`.
    #[serde(deserialize_with = "duration")]
    pub certificate_warning: Option<Duration>,
}

/// Validated `[alerts]`.
#[derive(Debug, Clone, Copy)]
pub struct AlertSettings {
    /// Rate-baseline window.
    pub rate_window: Duration,
    /// Windows before the baseline counts.
    pub rate_warmup: u32,
    /// Factor over the baseline.
    pub rate_factor: f64,
    /// Floor in rows per window.
    pub rate_min: u64,
    /// Certificate expiry warning horizon.
    pub certificate_warning: Duration,
}

/// Where the audit key comes from.
#[derive(Debug, Clone)]
pub enum AuditKeySource {
    /// Configured secret.
    Secret(Secret),
    /// Generated into this file on first start.
    File(PathBuf),
}

/// Validated `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The HMAC key.
    pub key: AuditKeySource,
    /// Chain id.
    pub replica: String,
    /// Whether responses wait for their record's commit.
    pub sync: bool,
    /// Batched-mode commit window.
    pub batch_window: Duration,
    /// Queue bound.
    pub queue: usize,
    /// Checkpoint log interval.
    pub checkpoint_interval: Duration,
    /// Records older than this are removed.
    pub max_age: Option<Duration>,
    /// Most records kept per chain.
    pub max_records: Option<u64>,
    /// Window of the refusal tallies.
    pub refusal_window: Duration,
}

/// `[insecure]`: each flag acknowledges one setting Warden refuses otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawInsecure {
    /// Allow `tls.enabled = false` on an address other than loopback.
    pub plaintext_http_on_public_address: bool,
    /// Accept secret files readable by group or others (warns instead).
    pub allow_readable_secret_files: bool,
    /// Accept an HS256 issuer secret shorter than 32 bytes.
    pub short_hs256_secret: bool,
    /// Allow the management listener without TLS on a non-loopback address.
    pub admin_plaintext_on_public_address: bool,
}

/// Reads an optional duration written for humans (`"50ms"`, `"5s"`, `"1h"`);
/// for `#[serde(deserialize_with)]`, also in model cards.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| {
        humantime::parse_duration(&t)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?}: {e}")))
    })
    .transpose()
}

/// A configuration error, naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's description, which names the key and line.
        message: String,
    },
    /// A value that parsed but is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key, e.g. `server.listen`.
        key: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Command-line settings that override the file (docs/configuration.md).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--models`
    pub models_dir: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--admin-listen`
    pub admin_listen: Option<String>,
    /// `--grpc-listen`
    pub grpc_listen: Option<String>,
    /// `--replica` (or `WARDEN_REPLICA`): this replica's audit chain id.
    pub replica: Option<String>,
}

/// Where the data-plane certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// Generated once into `<data_dir>/tls/` and reused.
    SelfSigned {
        /// `<data_dir>/tls`
        dir: PathBuf,
        /// `insecure.allow_readable_secret_files`, for reading `key.pem`.
        allow_readable: bool,
    },
    /// Operator-supplied PEM files.
    Pem {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key (already read).
        key: Secret,
        /// Where the key comes from, to read it again on reload.
        key_source: SecretSource,
        /// `insecure.allow_readable_secret_files`, for those reads.
        allow_readable: bool,
    },
}

/// TLS protocol floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// Validated TLS settings.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Certificate source.
    pub cert: CertSource,
    /// Lowest version offered.
    pub min_version: TlsVersion,
    /// Client certificates, if asked for.
    pub client_auth: Option<ClientAuth>,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
}

/// Client-certificate (mTLS) settings of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM CA bundle.
    pub ca: PathBuf,
    /// Whether a connection without a certificate is refused.
    pub required: bool,
}

/// The validated management listener.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Address.
    pub listen: SocketAddr,
    /// TLS (the data plane's certificate), or `None` for plaintext.
    pub tls: Option<TlsSettings>,
}

/// The validated gRPC listener.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// Address.
    pub listen: SocketAddr,
    /// TLS (the data plane's, client certificates included), or `None`
    /// for plaintext.
    pub tls: Option<TlsSettings>,
    /// `grpc.max_message_bytes`, if set (else sized from the models).
    pub max_message_bytes: Option<usize>,
    /// `grpc.reflection`.
    pub reflection: bool,
}

/// Log output format (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text when stderr is a terminal, JSON lines otherwise (the default).
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable: compact lines, coloured on a terminal.
    Text,
}

/// The validated configuration. Built only by [`Config::from_raw`].
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory.
    pub data_dir: PathBuf,
    /// Data-plane address.
    pub listen: SocketAddr,
    /// The plaintext redirect-to-HTTPS listener, if any.
    pub redirect_listen: Option<SocketAddr>,
    /// Whether `/docs` is served.
    pub docs: bool,
    /// TLS, or `None` for plaintext (loopback, or acknowledged).
    pub tls: Option<TlsSettings>,
    /// Whole-request deadline.
    pub request_timeout: Duration,
    /// Header read deadline.
    pub header_timeout: Duration,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Largest body in bytes.
    pub body_limit: usize,
    /// Deepest JSON nesting.
    pub json_max_depth: usize,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// Connection cap per client address (IPv6: /64).
    pub max_connections_per_address: usize,
    /// In-flight cap per principal.
    pub max_in_flight_per_principal: usize,
    /// Idle connection deadline.
    pub idle_timeout: Duration,
    /// Minimum request-body rate in bytes per second (0: off).
    pub min_body_rate: u64,
    /// Minimum response-reading rate in bytes per second (0: off).
    pub min_send_rate: u64,
    /// Window of the minimum rates.
    pub transfer_window: Duration,
    /// Trusted proxy networks.
    pub trusted_proxies: Vec<IpNet>,
    /// Model repository.
    pub models_dir: PathBuf,
    /// Default rows per request.
    pub default_max_batch: usize,
    /// Ed25519 keys trusted to sign models: (name, raw 32-byte public key).
    pub model_trusted_keys: Vec<(String, Vec<u8>)>,
    /// Every model version must be signed by a trusted key.
    pub require_model_signature: bool,
    /// The AES-256 key for encryption at rest (32 raw bytes or 64 hex digits).
    pub encryption_key: Option<Secret>,
    /// Explicit ONNX Runtime library, if configured.
    pub onnxruntime: Option<PathBuf>,
    /// Sessions per model version.
    pub sessions_per_model: usize,
    /// Waiting requests per model.
    pub queue_per_model: usize,
    /// Longest wait in a model's queue.
    pub queue_timeout: Duration,
    /// Range tolerance (fraction of the training range).
    pub range_tolerance: f64,
    /// Where keys, users, clients, signing keys and the audit trail live.
    pub store: StoreLocation,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Access log on/off.
    pub access_log: bool,
    /// The management listener, unless disabled.
    pub admin: Option<AdminSettings>,
    /// The gRPC listener, unless disabled.
    pub grpc: Option<GrpcSettings>,
    /// Every role.
    pub roles: Roles,
    /// Identity settings.
    pub auth: AuthSettings,
    /// Abuse control.
    pub limits: LimitSettings,
    /// Most requests in flight at once on the data plane.
    pub max_in_flight: usize,
    /// The audit trail, unless disabled.
    pub audit: Option<AuditSettings>,
    /// Anomaly alerts.
    pub alerts: AlertSettings,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_raw(raw, overrides)
    }

    /// The embedded default (README.md) with command-line overrides.
    pub fn default_with(overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig::default(), overrides)
    }

    /// Validates a raw configuration. Insecure settings are refused unless
    /// acknowledged under `[insecure]`.
    pub fn from_raw(raw: RawConfig, overrides: &Overrides) -> Result<Self, ConfigError> {
        let RawConfig {
            data_dir,
            server,
            tls,
            models,
            runtime,
            validation,
            store,
            log,
            admin,
            grpc,
            roles,
            auth,
            limits,
            audit,
            alerts,
            encryption,
            insecure,
        } = raw;

        let data_dir = overrides
            .data_dir
            .clone()
            .or(data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

        let listen_text = overrides
            .listen
            .clone()
            .or(server.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("{listen_text:?} is not an address:port such as 127.0.0.1:8443"),
            )
        })?;

        let redirect_listen = server
            .redirect_listen
            .as_deref()
            .map(|text| {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    invalid(
                        "server.redirect_listen",
                        format!("{text:?} is not an address:port such as 0.0.0.0:80"),
                    )
                })?;
                if !tls.enabled.unwrap_or(true) {
                    return Err(invalid(
                        "server.redirect_listen",
                        "redirects to HTTPS, so it needs tls.enabled = true",
                    ));
                }
                if !is_loopback(addr.ip()) && !insecure.plaintext_http_on_public_address {
                    return Err(invalid(
                        "server.redirect_listen",
                        format!(
                            "a plaintext listener on the non-loopback address {addr} is refused (it only redirects, but its first request travels in clear); set insecure.plaintext_http_on_public_address = true to acknowledge"
                        ),
                    ));
                }
                Ok(addr)
            })
            .transpose()?;
        let tls = if tls.enabled.unwrap_or(true) {
            let min_version = match tls.min_version.as_deref().unwrap_or("1.2") {
                "1.2" => TlsVersion::V1_2,
                "1.3" => TlsVersion::V1_3,
                "1.0" | "1.1" => {
                    return Err(invalid(
                        "tls.min_version",
                        "TLS below 1.2 is refused: it has no AEAD-only cipher suites, and Warden's TLS library does not implement it",
                    ));
                }
                other => {
                    return Err(invalid(
                        "tls.min_version",
                        format!("{other:?}: expected \"1.2\" or \"1.3\""),
                    ));
                }
            };
            let client_auth = client_auth("tls", tls.client_ca, tls.client_auth)?;
            let cert = match (tls.cert, tls.key) {
                (None, None) => CertSource::SelfSigned {
                    dir: data_dir.join("tls"),
                    allow_readable: insecure.allow_readable_secret_files,
                },
                (Some(cert), Some(key)) => CertSource::Pem {
                    cert,
                    key: key
                        .read(insecure.allow_readable_secret_files)
                        .map_err(|e| invalid("tls.key", e.to_string()))?,
                    key_source: key,
                    allow_readable: insecure.allow_readable_secret_files,
                },
                (Some(_), None) => {
                    return Err(invalid("tls.key", "tls.cert is set but tls.key is not"));
                }
                (None, Some(_)) => {
                    return Err(invalid("tls.cert", "tls.key is set but tls.cert is not"));
                }
            };
            Some(TlsSettings {
                cert,
                min_version,
                client_auth,
                reload_interval: match tls.reload_interval {
                    Some(d) if d.is_zero() => {
                        return Err(invalid("tls.reload_interval", "must be longer than 0s"));
                    }
                    Some(d) => d,
                    None => Duration::from_secs(10),
                },
            })
        } else {
            if !is_loopback(listen.ip()) && !insecure.plaintext_http_on_public_address {
                return Err(invalid(
                    "tls.enabled",
                    format!(
                        "plaintext HTTP on the non-loopback address {listen} is refused; serve TLS, or set insecure.plaintext_http_on_public_address = true to acknowledge"
                    ),
                ));
            }
            if tls.cert.is_some()
                || tls.key.is_some()
                || tls.min_version.is_some()
                || tls.client_ca.is_some()
            {
                return Err(invalid(
                    "tls.enabled",
                    "tls.cert, tls.key, tls.min_version and tls.client_ca need tls.enabled = true",
                ));
            }
            None
        };

        let positive = |key: &'static str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(invalid(key, "must be greater than 0")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let nonzero = |key: &'static str, value: Option<Duration>, default: u64| match value {
            Some(d) if d.is_zero() => Err(invalid(key, "must be longer than 0s")),
            Some(d) => Ok(d),
            None => Ok(Duration::from_secs(default)),
        };

        let body_limit = positive(
            "server.body_limit_bytes",
            server.body_limit_bytes,
            DEFAULT_BODY_LIMIT,
        )?;
        if body_limit > 64 * 1024 * 1024 {
            return Err(invalid(
                "server.body_limit_bytes",
                "at most 67108864 (64 MiB)",
            ));
        }
        let json_max_depth = positive("server.json_max_depth", server.json_max_depth, 32)?;
        let max_in_flight = positive("server.max_in_flight", server.max_in_flight, 4096)?;
        let max_connections = positive("server.max_connections", server.max_connections, 10_000)?;
        if json_max_depth > 128 {
            return Err(invalid("server.json_max_depth", "at most 128"));
        }

        let range_tolerance = validation.range_tolerance.unwrap_or(0.25);
        if !(range_tolerance.is_finite() && range_tolerance >= 0.0) {
            return Err(invalid(
                "validation.range_tolerance",
                "must be a finite number >= 0",
            ));
        }

        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

        let log_format = match log.format.as_deref().unwrap_or("auto") {
            "auto" => LogFormat::Auto,
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?}: expected \"auto\", \"json\" or \"text\""),
                ));
            }
        };

        let admin = if admin.enabled.unwrap_or(true) {
            let text = overrides
                .admin_listen
                .clone()
                .or(admin.listen)
                .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
            let listen: SocketAddr = text.parse().map_err(|_| {
                invalid(
                    "admin.listen",
                    format!("{text:?} is not an address:port such as 127.0.0.1:9443"),
                )
            })?;
            let client = match &tls {
                Some(_) => client_auth("admin", admin.client_ca, admin.client_auth)?,
                None if admin.client_ca.is_some() => {
                    return Err(invalid("admin.client_ca", "needs tls.enabled = true"));
                }
                None => None,
            };
            if tls.is_none()
                && !is_loopback(listen.ip())
                && !insecure.admin_plaintext_on_public_address
            {
                return Err(invalid(
                    "admin.listen",
                    format!(
                        "a management listener without TLS on the non-loopback address {listen} is refused; enable TLS, or set insecure.admin_plaintext_on_public_address = true to acknowledge"
                    ),
                ));
            }
            Some(AdminSettings {
                listen,
                tls: tls.clone().map(|t| TlsSettings {
                    client_auth: client,
                    ..t
                }),
            })
        } else {
            None
        };
        let grpc = if grpc.enabled.unwrap_or(true) {
            let text = overrides
                .grpc_listen
                .clone()
                .or(grpc.listen)
                .unwrap_or_else(|| DEFAULT_GRPC_LISTEN.into());
            let listen: SocketAddr = text.parse().map_err(|_| {
                invalid(
                    "grpc.listen",
                    format!("{text:?} is not an address:port such as 127.0.0.1:8444"),
                )
            })?;
            // As for REST: plaintext off loopback only when acknowledged.
            if tls.is_none()
                && !is_loopback(listen.ip())
                && !insecure.plaintext_http_on_public_address
            {
                return Err(invalid(
                    "grpc.listen",
                    format!(
                        "plaintext gRPC on the non-loopback address {listen} is refused; serve TLS, or set insecure.plaintext_http_on_public_address = true to acknowledge"
                    ),
                ));
            }
            if let Some(n) = grpc.max_message_bytes
                && !(1024..=1 << 30).contains(&n)
            {
                return Err(invalid(
                    "grpc.max_message_bytes",
                    "between 1024 and 1073741824 (1 GiB)",
                ));
            }
            Some(GrpcSettings {
                listen,
                tls: tls.clone(),
                max_message_bytes: grpc.max_message_bytes,
                reflection: grpc.reflection.unwrap_or(false),
            })
        } else {
            None
        };
        let roles = auth::roles(roles)?;
        let auth = auth::auth(
            auth,
            &roles,
            insecure.allow_readable_secret_files,
            insecure.short_hs256_secret,
        )?;

        let limits = limits::limits(limits, &roles, insecure.allow_readable_secret_files)?;
        let audit = if audit.enabled.unwrap_or(true) {
            let key = match audit.key {
                Some(source) => {
                    let secret = source
                        .read(insecure.allow_readable_secret_files)
                        .map_err(|e| invalid("audit.key", e.to_string()))?;
                    if secret.expose().len() < 32 {
                        return Err(invalid("audit.key", "needs at least 32 bytes"));
                    }
                    AuditKeySource::Secret(secret)
                }
                None => AuditKeySource::File(data_dir.join("audit.key")),
            };
            let replica = overrides
                .replica
                .clone()
                .or(audit.replica)
                .unwrap_or_else(|| "local".into());
            if !crate::is_model_name(&replica) {
                return Err(invalid(
                    "audit.replica",
                    "1 to 64 letters, digits, '-', '_', '.'",
                ));
            }
            let sync = match audit.durability.as_deref().unwrap_or("batched") {
                "batched" => false,
                "sync" => true,
                other => {
                    return Err(invalid(
                        "audit.durability",
                        format!("{other:?}: expected \"batched\" or \"sync\""),
                    ));
                }
            };
            Some(AuditSettings {
                key,
                replica,
                sync,
                batch_window: audit.batch_window.unwrap_or(Duration::from_millis(50)),
                queue: positive("audit.queue", audit.queue, 10_000)?,
                checkpoint_interval: nonzero(
                    "audit.checkpoint_interval",
                    audit.checkpoint_interval,
                    60,
                )?,
                max_age: match audit.max_age {
                    Some(d) if d.is_zero() => {
                        return Err(invalid("audit.max_age", "must be longer than 0s"));
                    }
                    other => other,
                },
                max_records: match audit.max_records {
                    Some(0) => return Err(invalid("audit.max_records", "must be greater than 0")),
                    other => other,
                },
                refusal_window: nonzero("audit.refusal_window", audit.refusal_window, 60)?,
            })
        } else {
            None
        };
        let rate_factor = alerts.rate_factor.unwrap_or(10.0);
        if !(rate_factor.is_finite() && rate_factor > 1.0) {
            return Err(invalid("alerts.rate_factor", "must be a number above 1"));
        }
        let alerts = AlertSettings {
            rate_window: nonzero("alerts.rate_window", alerts.rate_window, 60)?,
            rate_warmup: alerts.rate_warmup.unwrap_or(10).max(1),
            rate_factor,
            rate_min: alerts.rate_min.unwrap_or(600),
            certificate_warning: alerts
                .certificate_warning
                .unwrap_or(Duration::from_secs(14 * 86_400)),
        };
        let mut model_trusted_keys: Vec<(String, Vec<u8>)> = Vec::new();
        for k in models.trusted_keys {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(k.public_key.trim())
                .ok()
                .filter(|r| r.len() == 32)
                .ok_or_else(|| {
                    invalid(
                        "models.trusted_keys",
                        format!(
                            "{:?}: public_key is not a base64 Ed25519 public key (32 bytes)",
                            k.name
                        ),
                    )
                })?;
            if k.name.is_empty() || model_trusted_keys.iter().any(|(n, _)| *n == k.name) {
                return Err(invalid(
                    "models.trusted_keys",
                    format!("{:?}: names must be non-empty and unique", k.name),
                ));
            }
            model_trusted_keys.push((k.name, raw));
        }
        let encryption_key = encryption
            .key
            .map(|source| {
                let secret = source
                    .read(insecure.allow_readable_secret_files)
                    .map_err(|e| invalid("encryption.key", e.to_string()))?;
                let bytes = secret.expose();
                let hex64 = std::str::from_utf8(bytes)
                    .ok()
                    .map(str::trim)
                    .is_some_and(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()));
                if hex64 || bytes.len() == 32 {
                    Ok(secret)
                } else {
                    Err(invalid(
                        "encryption.key",
                        "must be 32 bytes, written as 64 hex digits",
                    ))
                }
            })
            .transpose()?;
        Ok(Self {
            model_trusted_keys,
            require_model_signature: models.require_signature.unwrap_or(false),
            encryption_key,
            redirect_listen,
            docs: server.docs.unwrap_or(true),
            audit,
            alerts,
            max_in_flight,
            max_in_flight_per_principal: positive(
                "server.max_in_flight_per_principal",
                server.max_in_flight_per_principal,
                (max_in_flight / 8).max(1),
            )?,
            max_connections_per_address: positive(
                "server.max_connections_per_address",
                server.max_connections_per_address,
                (max_connections / 20).max(1),
            )?,
            idle_timeout: nonzero("server.idle_timeout", server.idle_timeout, 30)?,
            min_body_rate: server.min_body_rate.unwrap_or(1024),
            min_send_rate: server.min_send_rate.unwrap_or(1024),
            transfer_window: nonzero("server.transfer_window", server.transfer_window, 10)?,
            limits,
            admin,
            grpc,
            roles,
            auth,
            store: store_location(store, &data_dir, insecure.allow_readable_secret_files)?,
            data_dir,
            listen,
            tls,
            request_timeout: nonzero("server.request_timeout", server.request_timeout, 30)?,
            header_timeout: nonzero("server.header_timeout", server.header_timeout, 10)?,
            handshake_timeout: nonzero("server.handshake_timeout", server.handshake_timeout, 10)?,
            body_limit,
            json_max_depth,
            shutdown_grace: nonzero("server.shutdown_grace", server.shutdown_grace, 30)?,
            max_connections,
            trusted_proxies: server.trusted_proxies.unwrap_or_default(),
            models_dir: overrides
                .models_dir
                .clone()
                .or(models.dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_MODELS_DIR)),
            default_max_batch: positive("models.default_max_batch", models.default_max_batch, 64)?,
            onnxruntime: runtime.onnxruntime,
            sessions_per_model: positive(
                "runtime.sessions_per_model",
                runtime.sessions_per_model,
                cpus,
            )?,
            queue_per_model: positive("runtime.queue_per_model", runtime.queue_per_model, 256)?,
            queue_timeout: nonzero("runtime.queue_timeout", runtime.queue_timeout, 2)?,
            range_tolerance,
            log_level: log.level.unwrap_or_else(|| "info".into()),
            log_format,
            access_log: log.access.unwrap_or(true),
        })
    }

    /// A summary safe to print: no secret values, only where they come from.
    pub fn summary(&self) -> String {
        let tls = match &self.tls {
            None => "off (plaintext HTTP)".to_string(),
            Some(t) => {
                let cert = match &t.cert {
                    CertSource::SelfSigned { dir, .. } => {
                        format!("self-signed certificate in {}", dir.display())
                    }
                    CertSource::Pem { cert, .. } => {
                        format!("certificate {}, key [redacted]", cert.display())
                    }
                };
                let clients = match &t.client_auth {
                    None => String::new(),
                    Some(c) => format!(
                        ", client certificates {} by {}",
                        if c.required { "required" } else { "optional" },
                        c.ca.display()
                    ),
                };
                format!("{cert}, minimum {:?}{clients}", t.min_version)
            }
        };
        let admin = match &self.admin {
            None => "off".to_string(),
            Some(a) => format!(
                "{} ({})",
                a.listen,
                if a.tls.is_some() { "TLS" } else { "plaintext" }
            ),
        };
        let grpc = match &self.grpc {
            None => "off".to_string(),
            Some(g) => format!(
                "{} ({}{})",
                g.listen,
                if g.tls.is_some() { "TLS" } else { "plaintext" },
                if g.reflection { ", reflection" } else { "" }
            ),
        };
        let tokens = match &self.auth.tokens {
            None => "off".to_string(),
            Some(t) => format!(
                "on, lifetime {}, password grant {}, signing key {}",
                humantime::format_duration(t.lifetime),
                if t.password_grant { "on" } else { "off" },
                if t.signing_key.is_some() {
                    "[redacted, from config]"
                } else {
                    "in the store"
                }
            ),
        };
        let issuers: Vec<String> = self
            .auth
            .issuers
            .iter()
            .map(|i| format!("{} ({})", i.name, i.issuer))
            .collect();
        format!(
            "listen: {}\ntls: {tls}\nadmin: {admin}\ngrpc: {grpc}\ndata_dir: {}\nmodels: {}\nstore: {}\nbody limit: {} bytes, JSON depth {}\nroles: {}\ntoken endpoint: {tokens}\njwt issuers: {}\n",
            self.listen,
            self.data_dir.display(),
            self.models_dir.display(),
            match &self.store {
                StoreLocation::Sqlite(path) => format!("sqlite {}", path.display()),
                StoreLocation::Postgres(_) => "postgresql (URL not shown)".to_owned(),
            },
            self.body_limit,
            self.json_max_depth,
            self.roles.names(),
            if issuers.is_empty() {
                "none".to_string()
            } else {
                issuers.join(", ")
            },
        )
    }
}

fn client_auth(
    section: &'static str,
    ca: Option<PathBuf>,
    mode: Option<String>,
) -> Result<Option<ClientAuth>, ConfigError> {
    let key = if section == "tls" {
        "tls.client_auth"
    } else {
        "admin.client_auth"
    };
    match (ca, mode.as_deref()) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(invalid(key, "needs client_ca")),
        (Some(ca), None | Some("required")) => Ok(Some(ClientAuth { ca, required: true })),
        (Some(ca), Some("optional")) => Ok(Some(ClientAuth {
            ca,
            required: false,
        })),
        (Some(_), Some(other)) => Err(invalid(
            key,
            format!("{other:?}: expected \"required\" or \"optional\""),
        )),
    }
}

/// Whether `ip` is a loopback address (IPv4-mapped included).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t.toml".into(),
            message: e.to_string(),
        })?;
        Config::from_raw(raw, &Overrides::default())
    }

    #[test]
    fn grpc_is_on_loopback_by_default_without_reflection() {
        let c = parse("").unwrap();
        let g = c.grpc.unwrap();
        assert_eq!(g.listen.to_string(), DEFAULT_GRPC_LISTEN);
        assert!(g.tls.is_some() && !g.reflection && g.max_message_bytes.is_none());
        assert!(parse("[grpc]\nenabled = false\n").unwrap().grpc.is_none());
        // Plaintext off loopback only when acknowledged, as for REST.
        let open = "[grpc]\nlisten = \"0.0.0.0:8444\"\n[tls]\nenabled = false\n[server]\nlisten = \"127.0.0.1:8080\"\n";
        let e = parse(open).unwrap_err().to_string();
        assert!(e.contains("grpc.listen"), "{e}");
        parse(&format!(
            "{open}[insecure]\nplaintext_http_on_public_address = true\n"
        ))
        .unwrap();
        let e = parse("[grpc]\nmax_message_bytes = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("grpc.max_message_bytes"), "{e}");
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(matches!(
            c.tls,
            Some(TlsSettings {
                cert: CertSource::SelfSigned { .. },
                ..
            })
        ));
        assert_eq!(c.body_limit, 1024 * 1024);
        assert!(
            matches!(&c.store, StoreLocation::Sqlite(p) if p == &Path::new(DEFAULT_DATA_DIR).join("warden.db"))
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        assert!(e.to_string().contains("listen_port"), "{e}");
        let e = parse("bogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn plaintext_off_loopback_needs_acknowledgement() {
        let e = parse("[server]\nlisten = \"0.0.0.0:8080\"\n[tls]\nenabled = false\n").unwrap_err();
        assert!(e.to_string().starts_with("tls.enabled:"), "{e}");
        assert!(
            e.to_string()
                .contains("insecure.plaintext_http_on_public_address")
        );
        parse("[server]\nlisten = \"0.0.0.0:8080\"\n[tls]\nenabled = false\n[insecure]\nplaintext_http_on_public_address = true\n").unwrap();
        parse("[server]\nlisten = \"127.0.0.1:8080\"\n[tls]\nenabled = false\n").unwrap();
        parse("[server]\nlisten = \"[::1]:8080\"\n[tls]\nenabled = false\n").unwrap();
    }

    #[test]
    fn the_redirect_listener_needs_tls_and_acknowledgement_off_loopback() {
        let e = parse("[server]\nredirect_listen = \"0.0.0.0:80\"\n").unwrap_err();
        assert!(e.to_string().starts_with("server.redirect_listen:"), "{e}");
        assert!(
            e.to_string()
                .contains("insecure.plaintext_http_on_public_address"),
            "{e}"
        );
        let c = parse("[server]\nredirect_listen = \"0.0.0.0:80\"\n[insecure]\nplaintext_http_on_public_address = true\n").unwrap();
        assert_eq!(c.redirect_listen, Some("0.0.0.0:80".parse().unwrap()));
        parse("[server]\nredirect_listen = \"127.0.0.1:8080\"\n").unwrap();
        let e = parse("[server]\nlisten = \"127.0.0.1:8080\"\nredirect_listen = \"127.0.0.1:8081\"\n[tls]\nenabled = false\n").unwrap_err();
        assert!(e.to_string().contains("needs tls.enabled = true"), "{e}");
    }

    #[test]
    fn old_tls_is_refused() {
        let e = parse("[tls]\nmin_version = \"1.1\"\n").unwrap_err();
        assert!(e.to_string().starts_with("tls.min_version:"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[server]\nlisten = \"nope\"\n", "server.listen"),
            (
                "[server]\nbody_limit_bytes = 0\n",
                "server.body_limit_bytes",
            ),
            (
                "[validation]\nrange_tolerance = -1.0\n",
                "validation.range_tolerance",
            ),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            ("[tls]\ncert = \"c.pem\"\n", "tls.key"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.to_string().starts_with(key), "{text}: {e}");
        }
        let e = parse("[server]\nrequest_timeout = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("request_timeout"), "{e}");
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            listen: Some("127.0.0.1:0".into()),
            models_dir: Some("m".into()),
            data_dir: Some("d".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            grpc_listen: Some("127.0.0.1:0".into()),
            replica: Some("pod-7f9c".into()),
        };
        let c = Config::default_with(&o).unwrap();
        assert_eq!(c.audit.as_ref().unwrap().replica, "pod-7f9c");
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.models_dir, Path::new("m"));
        assert!(
            matches!(&c.store, StoreLocation::Sqlite(p) if p == &Path::new("d").join("warden.db"))
        );
    }

    #[test]
    fn roles_and_issuers_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let secret = |name: &str, value: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, value).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let short = secret("short", "only-20-bytes-secret");
        let long = secret("long", "a-secret-that-is-at-least-32-bytes-long");
        let issuer = |extra: &str| {
            format!(
                "[[auth.jwt]]\nname = \"corp\"\nissuer = \"https://idp\"\naudience = [\"warden\"]\n{extra}\n"
            )
        };
        let c = parse(&format!(
            "[roles.analyst]\npermissions = [\"predict:iris\", \"models:read\"]\n{}",
            issuer(&format!(
                "algorithms = [\"HS256\"]\nhs256_secret = {{ file = {long:?} }}\nscope_map = {{ \"ml\" = [\"role:analyst\", \"metrics:read\"] }}"
            ))
        ))
        .unwrap();
        assert!(c.roles.get("analyst").is_some());
        assert_eq!(c.auth.issuers[0].scope_map["ml"].len(), 2);
        assert!(c.summary().contains("corp (https://idp)"));
        assert!(!format!("{c:?}").contains("at-least-32"), "secret redacted");

        for (text, key) in [
            (
                issuer(&format!(
                    "algorithms = [\"HS256\"]\nhs256_secret = {{ file = {short:?} }}"
                )),
                "auth.jwt.hs256_secret",
            ),
            (
                issuer("algorithms = [\"HS256\"]\njwks_file = \"k.json\""),
                "auth.jwt.algorithms",
            ),
            (
                issuer(&format!(
                    "algorithms = [\"RS256\"]\nhs256_secret = {{ file = {long:?} }}"
                )),
                "auth.jwt.algorithms",
            ),
            (
                issuer("algorithms = [\"none\"]\njwks_file = \"k.json\""),
                "auth.jwt.algorithms",
            ),
            (issuer("algorithms = [\"RS256\"]"), "auth.jwt"),
            (
                issuer("algorithms = [\"RS256\"]\njwks_url = \"http://idp/jwks\""),
                "auth.jwt.jwks_url",
            ),
            (
                issuer(
                    "algorithms = [\"RS256\"]\njwks_file = \"k.json\"\nscope_map = { x = [\"role:nope\"] }",
                ),
                "auth.jwt.scope_map",
            ),
            ("[roles.admin]\npermissions = []\n".into(), "roles"),
            ("[roles.x]\npermissions = [\"root\"]\n".into(), "roles"),
            (
                "[[auth.mtls]]\nname = \"svc\"\nrole = \"nope\"\n".into(),
                "auth.mtls.role",
            ),
            (
                "[auth.tokens]\nlifetime = \"2d\"\n".into(),
                "auth.tokens.lifetime",
            ),
            (
                "[admin]\nlisten = \"0.0.0.0:9443\"\n[tls]\nenabled = false\n".into(),
                "admin.listen",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        let ok = parse(&format!(
            "[insecure]\nshort_hs256_secret = true\n{}",
            issuer(&format!(
                "algorithms = [\"HS256\"]\nhs256_secret = {{ file = {short:?} }}"
            ))
        ));
        assert!(ok.is_ok(), "acknowledged short secret");
    }

    #[test]
    fn limits_are_validated() {
        let c = parse("[limits.rates]\npredict = { rate = \"600/minute\", burst = 60 }\n[[limits.quotas]]\nrole = \"predict\"\nper_day = 10\n").unwrap();
        let p = c.limits.rates["predict"];
        assert_eq!((p.quota, p.window.as_secs(), p.burst), (600, 60, 60));
        assert_eq!(c.limits.rates["token"].quota, 5, "docs/limits.md default");
        assert!(c.limits.bans.is_some());
        for (text, key) in [
            (
                "[limits.rates]\npredict = { rate = \"fast\" }\n",
                "limits.rates",
            ),
            (
                "[limits.rates]\nsearch = { rate = \"1/second\" }\n",
                "limits.rates",
            ),
            (
                "[limits.rates]\npredict = { rate = \"1/second\", burst = 0 }\n",
                "limits.rates",
            ),
            (
                "[limits.roles.nobody]\npredict = { rate = \"1/second\" }\n",
                "limits.roles",
            ),
            ("[[limits.quotas]]\nrole = \"predict\"\n", "limits.quotas"),
            (
                "[[limits.quotas]]\nrole = \"predict\"\nmodel = \"../x\"\nper_day = 1\n",
                "limits.quotas.model",
            ),
            ("[limits]\nbackend = \"redis\"\n", "limits.redis_url"),
            ("[limits]\nbackend = \"etcd\"\n", "limits.backend"),
            (
                "[limits.bans]\nbase = \"1h\"\nmax = \"1m\"\n",
                "limits.bans",
            ),
            (
                "[limits.rates]\npredict = { rate = \"1/day\", burst = 900000000 }\n",
                "limits.rates",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn summary_never_shows_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "PRIVATE-KEY-MATERIAL").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&format!(
            "[tls]\ncert = \"c.pem\"\nkey = {{ file = {:?} }}\n",
            key
        ))
        .unwrap();
        assert!(!c.summary().contains("PRIVATE"));
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }

    /// Configuration text built from the sections, keys and values a
    /// config is made of (and some that are wrong): parsing and validation
    /// never panic, and a refusal always says something. The same entry
    /// point is fuzzed by `scripts/fuzz.sh` (target `config`).
    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn config_text() -> impl Strategy<Value = String> {
            let section = prop::sample::select(vec![
                "[server]",
                "[tls]",
                "[admin]",
                "[limits]",
                "[limits.rates]",
                "[limits.bans]",
                "[[limits.quotas]]",
                "[audit]",
                "[auth]",
                "[auth.tokens]",
                "[roles.r]",
                "[insecure]",
                "[models]",
                "[alerts]",
                "[log]",
                "[store]",
            ]);
            let key = prop::sample::select(vec![
                "listen",
                "enabled",
                "min_version",
                "body_limit_bytes",
                "json_max_depth",
                "request_timeout",
                "max_in_flight",
                "backend",
                "redis_url",
                "default",
                "predict",
                "rate",
                "burst",
                "failures",
                "window",
                "role",
                "model",
                "per_day",
                "durability",
                "replica",
                "batch_window",
                "permissions",
                "trusted_proxies",
                "docs",
                "redirect_listen",
                "plaintext_http_on_public_address",
                "default_max_batch",
            ]);
            let value = prop::sample::select(vec![
                "true",
                "0",
                "-1",
                "18446744073709551615",
                "1e308",
                "\"\"",
                "\"1.3\"",
                "\"0.0.0.0:80\"",
                "\"127.0.0.1:0\"",
                "\"redis://:pw@h\"",
                "\"30s\"",
                "\"0s\"",
                "\"sync\"",
                "\"600/minute\"",
                "\"1/0\"",
                "[]",
                "[\"predict:*\"]",
                "[\"10.0.0.0/8\"]",
                "{ rate = \"5/minute\", burst = 0 }",
                "{ env = \"WARDEN_NOPE\" }",
                "nan",
                "inf",
            ]);
            let line = prop_oneof![
                section.prop_map(str::to_owned),
                (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
            ];
            prop::collection::vec(line, 0..12).prop_map(|l| l.join("\n"))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn any_config_text_is_accepted_or_refused_with_a_reason(text in config_text()) {
                if let Ok(raw) = toml::from_str::<RawConfig>(&text)
                    && let Err(e) = Config::from_raw(raw, &Overrides::default())
                {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn a_redis_password_is_a_secret() {
        // Inline with a password: refused, and the error does not repeat it.
        for url in [
            "redis://:hunter2secret@127.0.0.1:6379",
            "rediss://warden:hunter2secret@redis.internal/0",
            // A password with an unencoded '/' still counts.
            "redis://warden:hunter2/secret@redis.internal",
        ] {
            let e = parse(&format!(
                "[limits]\nbackend = \"redis\"\nredis_url = {url:?}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("limits.redis_url:"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        // Inline without one is fine; a '@' in the path is not a password.
        parse("[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n").unwrap();
        // From a file: accepted, and neither Debug nor the summary shows it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis-url");
        std::fs::write(&file, "redis://:hunter2secret@127.0.0.1:6379\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&format!(
            "[limits]\nbackend = \"redis\"\nredis_url = {{ file = {file:?} }}\n"
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.summary().contains("hunter2"));
        match &c.limits.backend {
            crate::config::limits::LimitBackend::Redis { url, .. } => {
                assert_eq!(url.expose(), b"redis://:hunter2secret@127.0.0.1:6379");
            }
            other => panic!("{other:?}"),
        }
        // A file others can read is refused like any secret file.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&format!(
            "[limits]\nbackend = \"redis\"\nredis_url = {{ file = {file:?} }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("limits.redis_url:"), "{e}");
    }

    #[test]
    fn the_store_url_picks_postgresql_and_a_password_is_a_secret() {
        let c = parse("[store]\nurl = \"postgres://warden@db:5432/warden\"\n").unwrap();
        assert!(
            matches!(&c.store, StoreLocation::Postgres(u) if u.expose() == b"postgres://warden@db:5432/warden")
        );
        assert!(c.summary().contains("store: postgresql (URL not shown)"));
        for (text, why) in [
            (
                "[store]\nurl = \"postgres://warden:hunter2@db/w\"\n",
                "a secret",
            ),
            (
                "[store]\nurl = \"postgres://warden@db/w?sslmode=require&password=hunter2\"\n",
                "a secret",
            ),
            (
                "[store]\nurl = \"postgres://warden@db/w?PassWord=hunter2\"\n",
                "a secret",
            ),
            ("[store]\nurl = \"mysql://db/w\"\n", "expected postgres://"),
            (
                "[store]\nurl = \"postgres://db/w\"\nsqlite = \"x.db\"\n",
                "not both",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with("store.url:") && e.contains(why),
                "{text}: {e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg-url");
        std::fs::write(&file, "postgresql://warden:hunter2@db/w\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&format!("[store]\nurl = {{ file = {file:?} }}\n")).unwrap();
        assert!(!format!("{c:?}").contains("hunter2") && !c.summary().contains("hunter2"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&format!("[store]\nurl = {{ file = {file:?} }}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("store.url:"), "{e}");
    }
}
