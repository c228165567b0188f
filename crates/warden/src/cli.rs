//! The command line (docs/configuration.md). Parsing only; `main.rs` runs the verbs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Warden serves machine-learning models over an API that is secure by
/// default, and stands as a security gateway in front of other model servers.
///
/// With no configuration file, `warden serve` listens on
/// https://127.0.0.1:8443 with a certificate from a local development CA
/// (trust ./warden-data/tls/ca.pem), keeps its state in
/// ./warden-data, serves the models in ./models, and prints a new admin API
/// key on its first start.
///
/// Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad configuration.
#[derive(Debug, Parser)]
#[command(name = "warden", version, propagate_version = true)]
pub(crate) struct Cli {
    /// The verb.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve the models in the model repository over HTTPS.
    Serve(ServeArgs),
    /// Create, list, revoke and rotate API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// TLS certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Users of the OAuth2 password grant.
    #[command(subcommand)]
    Users(UsersCommand),
    /// OAuth2 clients (client_credentials grant).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Roles: the built-in ones and those in the configuration.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// The tamper-evident audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Model files: signing keys, signatures, integrity checks, encryption at rest.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Probe this configuration's data plane: GET /v2/health/live on the
    /// listen address (loopback if unspecified), trusting only the
    /// certificate it serves. Exit 0 if live, 1 if not, configuration
    /// errors included (container health checks; the image has no shell).
    Health {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// Address to probe (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
}

/// `warden model ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Write a model card (DIR/model.toml) from the highest version's graph
    /// (DIR/N/model.onnx): every input and output, a guessed task, secure
    /// defaults, and comments on what to fill in. Exit 2 if the card exists
    /// (without --force) or DIR holds no graph.
    Init {
        /// Configuration (where the ONNX Runtime library is).
        #[command(flatten)]
        location: Location,
        /// The model folder.
        dir: PathBuf,
        /// Inputs to fill statistics, ranges, categories and id ranges from:
        /// CSV (a header row), .npy / .npz (arrays named by input), or JSON
        /// lines of Open Inference Protocol requests.
        #[arg(long, value_name = "FILE")]
        sample: Option<PathBuf>,
        /// Overwrite an existing model.toml.
        #[arg(long)]
        force: bool,
        /// Gateway mode: read the tensors from this Open Inference Protocol
        /// server's model metadata (`GET URL/v2/models/{model}`) instead of
        /// a graph, and write the card's [upstream] table.
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
        /// The model's name on the upstream server. Default: DIR's name.
        #[arg(long, value_name = "NAME", requires = "upstream")]
        upstream_model: Option<String>,
        /// PEM file of the CA that signed the upstream's certificate.
        #[arg(long, value_name = "FILE", requires = "upstream")]
        ca: Option<PathBuf>,
    },
    /// Generate an Ed25519 model-signing key into FILE (mode 0600) and print
    /// its public key for `[[models.trusted_keys]]`.
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a plaintext model file: writes FILE.sig (sign before encrypting).
    Sign {
        /// The private key from `warden model keygen` (mode 0600).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The key's name, as in `[[models.trusted_keys]]`.
        #[arg(long, default_value = "release")]
        name: String,
        /// The model file (model.onnx).
        file: PathBuf,
    },
    /// Check a model version folder (e.g. models/iris/1) as `warden serve`
    /// would: decryption, the card's pinned SHA-256, the signature. Exit 1
    /// with the reason if it would be refused.
    Verify {
        /// Configuration (trusted keys, encryption key).
        #[command(flatten)]
        location: Location,
        /// The version folder.
        dir: PathBuf,
    },
    /// Encrypt a model file with the configured `[encryption] key`: writes
    /// FILE.enc (AES-256-GCM). Then remove the plaintext file.
    Encrypt {
        /// Configuration (the encryption key).
        #[command(flatten)]
        location: Location,
        /// The plaintext model file.
        file: PathBuf,
    },
    /// Decrypt a model.onnx.enc with the configured key, into OUT (mode 0600).
    Decrypt {
        /// Configuration (the encryption key).
        #[command(flatten)]
        location: Location,
        /// The encrypted model file.
        file: PathBuf,
        /// Where to write the plaintext (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `warden audit ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the audit chain's HMACs and links (and, with --checkpoint, that
    /// its tail is intact); name the first bad record and exit 1 if any.
    Verify {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// First sequence number to check (its predecessor is trusted).
        #[arg(long, default_value_t = 1)]
        from: i64,
        /// A checkpoint JSON file kept from the management API
        /// (GET /admin/audit/checkpoint) or the log; checks its chain only.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<std::path::PathBuf>,
        /// Check this chain only (default: every chain in the store,
        /// including each replica's `<replica>.cli` chain of CLI actions).
        #[arg(long, value_name = "ID")]
        replica: Option<String>,
    },
    /// Write the records since a time as JSON lines on stdout
    /// ({"replica", "seq", "record"}), chain by chain in sequence order.
    Export {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// RFC 3339 in UTC (2026-11-29T10:00:00Z), Unix seconds, or a duration back
        /// from now (24h, 7d).
        #[arg(long, value_name = "TIME")]
        since: String,
        /// Only records before this time (same forms as --since).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Export this chain only (default: every chain).
        #[arg(long, value_name = "ID")]
        replica: Option<String>,
        /// Decrypt raw-input snapshots (`inputs_sealed`, from models whose
        /// card opts in) with the configured [encryption] key into `inputs`.
        #[arg(long)]
        decrypt_inputs: bool,
    },
}

/// Where the configuration and state are: shared by every verb that opens them.
#[derive(Debug, Clone, Args)]
pub(crate) struct Location {
    /// Configuration file (TOML). Without it, the embedded defaults apply.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// State directory (overrides data_dir). Default ./warden-data.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

/// `warden serve`
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Configuration and state.
    #[command(flatten)]
    pub(crate) location: Location,
    /// Model repository (overrides models.dir). Default ./models.
    #[arg(long, value_name = "DIR")]
    pub(crate) models: Option<PathBuf>,
    /// Data-plane address (overrides server.listen). Default 127.0.0.1:8443.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// Management-plane address (overrides admin.listen). Default 127.0.0.1:9443.
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin_listen: Option<String>,
    /// gRPC address (overrides grpc.listen). Default 127.0.0.1:8444.
    #[arg(long, value_name = "ADDR", env = "WARDEN_GRPC_LISTEN")]
    pub(crate) grpc_listen: Option<String>,
    /// This replica's audit chain id (overrides audit.replica): unique per
    /// running replica when replicas share a PostgreSQL store, e.g. the pod
    /// name. Default local.
    #[arg(long, value_name = "ID", env = "WARDEN_REPLICA")]
    pub(crate) replica: Option<String>,
}

/// `warden keys ...`
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key and print it once (the key alone on standard output).
    Create {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// A label for the key (who or what uses it).
        #[arg(long)]
        name: String,
        /// Role: admin, predict, metrics, or one defined in the configuration.
        #[arg(long)]
        role: String,
        /// Models the key may use, comma-separated. Default: every model.
        #[arg(long, value_delimiter = ',', value_name = "M1,M2")]
        models: Option<Vec<String>>,
        /// Lifetime, e.g. 30d, 12h. Default: no expiry.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key. Running servers refuse it within a second.
    Revoke {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// The key id (the part between `wdn_` and the second `_`).
        id: String,
    },
    /// Replace a key with a new one of the same name, role, models and
    /// lifetime. The old key keeps working for the grace period, then
    /// stops. Prints the new key once.
    Rotate {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// The key id.
        id: String,
        /// How long the old key keeps working, e.g. 10m; 0s stops it at
        /// once. Default: auth.key_rotation_grace (1h).
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
}

/// `warden users ...`
#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Add a user. The password is read from standard input (one line) or,
    /// on a terminal, from a prompt; it is stored only as an Argon2id hash.
    Add {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// Login name.
        name: String,
        /// Role.
        #[arg(long)]
        role: String,
    },
    /// List users (never their password hashes).
    List {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
    },
    /// Disable a user: the password grant refuses them from now on.
    Disable {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// Login name.
        name: String,
    },
}

/// `warden clients ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ClientsCommand {
    /// Add an OAuth2 client; prints `client_id=...` and `client_secret=...`
    /// once (the secret is stored only as an Argon2id hash).
    Add {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// A label for the client.
        name: String,
        /// Role.
        #[arg(long)]
        role: String,
    },
    /// List clients (never their secrets).
    List {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
    },
    /// Revoke a client: the token endpoint refuses it from now on.
    Revoke {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// The client_id.
        id: String,
    },
}

/// `warden roles ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RolesCommand {
    /// List every role and its permissions.
    List {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
    },
}

/// `warden config ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate a configuration file without starting; exit 2 naming the
    /// offending key if it is not valid.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `warden cert ...`
#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Generate a self-signed development certificate (SANs localhost,
    /// 127.0.0.1, ::1 and any --name) as cert.pem and key.pem (mode 0600).
    Generate {
        /// Output directory. Default: <data_dir>/tls, where `warden serve` looks.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// State directory, for the default output directory.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Extra DNS name or IP address for the certificate (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite an existing certificate.
        #[arg(long)]
        force: bool,
    },
}
