//! The command line (SPEC §5). Parsing only; `main.rs` runs the verbs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Warden serves machine-learning models over an API that is secure by
/// default, and stands as a security gateway in front of other model servers.
///
/// With no configuration file, `warden serve` listens on
/// https://127.0.0.1:8443 with a self-signed certificate, keeps its state in
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
        /// Role: admin, predict or metrics.
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
    /// lifetime; the old key is revoked at once. Prints the new key once.
    Rotate {
        /// Configuration and state.
        #[command(flatten)]
        location: Location,
        /// The key id.
        id: String,
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
