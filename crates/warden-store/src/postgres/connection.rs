//! The PostgreSQL store's connection: what the URL says (timeouts, TLS),
//! the one client the store's worker thread owns, and making it again when
//! it is lost.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::config::{Host, SslMode};
use postgres::{Client, Config, NoTls};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::describe;
use crate::StoreError;

/// Connecting to one host gives up after this, unless the URL says
/// `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A statement is cancelled by the server after this, unless the session
/// already has a `statement_timeout` (from the URL's `options`, the role or
/// the database).
const DEFAULT_STATEMENT_TIMEOUT: &str = "30s";
/// Unacknowledged data fails the connection after this (Linux), unless the
/// URL says `tcp_user_timeout`.
const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP keepalive probes on an idle connection, unless the URL sets them.
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_KEEPALIVES_RETRIES: u32 = 3;
/// A connection idle for longer is checked (one round trip) before use.
const PROBE_WHEN_IDLE: Duration = Duration::from_millis(250);

/// After a failed connection attempt, calls fail at once for this long
/// instead of each waiting out its own connect timeout in the queue: a
/// server that drops packets would otherwise hold every caller (key
/// lookups behind audit retries) for `connect_timeout` each.
const FAIL_FAST_AFTER_CONNECT_FAILURE: Duration = Duration::from_secs(1);

/// The worker's state: how to connect, and the connection if there is one.
pub(super) struct Session {
    settings: Settings,
    client: Option<Client>,
    /// When the connection last answered.
    last_used: Instant,
}

/// The last failed connection attempt (when, and why), shared by the
/// pool's connections: the server is unreachable for all of them.
pub(super) type FailedConnect = std::sync::Arc<std::sync::Mutex<Option<(Instant, String)>>>;

impl Session {
    pub(super) fn new(settings: Settings) -> Self {
        Self {
            settings,
            client: None,
            last_used: Instant::now(),
        }
    }

    /// Forgets the connection (its state is unknown after a panic).
    pub(super) fn reset(&mut self) {
        self.client = None;
    }

    /// Runs `op` on the connection, connecting first if there is none or
    /// it is no longer usable. Errors name the server and never hold the
    /// password.
    pub(super) fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = self.run_inner(op);
        result.map_err(|e| self.settings.finish(e))
    }

    fn run_inner<T>(
        &mut self,
        op: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let failed = |f: &FailedConnect| {
            f.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .filter(|(at, _)| at.elapsed() < FAIL_FAST_AFTER_CONNECT_FAILURE)
        };
        let recent_failure = failed(&self.settings.failed_connect);
        // Another connection of the pool just failed to connect: this one is
        // checked before use whatever its idle time.
        let idle = match recent_failure {
            Some(_) => Duration::MAX,
            None => self.last_used.elapsed(),
        };
        let timeout = self.settings.connect_timeout();
        if self
            .client
            .as_mut()
            .is_some_and(|c| !alive(c, idle, timeout))
        {
            self.client = None;
        }
        let client = match self.client.take() {
            Some(client) => client,
            None => {
                if let Some((_, why)) = recent_failure {
                    return Err(StoreError::Postgres(format!(
                        "not connected (the last attempt, under {} s ago, failed: {why})",
                        FAIL_FAST_AFTER_CONNECT_FAILURE.as_secs()
                    )));
                }
                let outcome = self.settings.connect();
                *self
                    .settings
                    .failed_connect
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = outcome
                    .as_ref()
                    .err()
                    .map(|e| (Instant::now(), e.to_string()));
                outcome?
            }
        };
        let client = self.client.insert(client);
        let result = op(client);
        if result.is_err() && client.is_closed() {
            self.client = None; // the next call connects again
        } else {
            self.last_used = Instant::now();
        }
        result
    }
}

/// Whether a connection is still usable. One used moments ago is taken to
/// be (a failure shows in the call itself, and the next call reconnects);
/// one idle for longer is asked, with one round trip, so that the first
/// call after a server restart or an idle timeout reconnects instead of
/// failing. (A connection learns that its server closed it only by reading,
/// and it reads only during a call.)
fn alive(client: &mut Client, idle: Duration, timeout: Duration) -> bool {
    !client.is_closed() && (idle < PROBE_WHEN_IDLE || client.is_valid(timeout).is_ok())
}

/// What [`PostgresStore::connect`] made of the URL.
#[derive(Clone)]
pub(super) struct Settings {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    /// `host:port/database`, for messages.
    pub(super) target: String,
    /// Every form of the password found in the URL.
    secrets: Vec<String>,
    /// See [`FailedConnect`].
    pub(super) failed_connect: FailedConnect,
}

impl Settings {
    pub(super) fn from_url(url: &str) -> Result<Self, StoreError> {
        let parts = UrlParts::parse(url)?;
        let mut secrets = parts.secrets();
        let scrub = |message: String, secrets: &[String]| {
            StoreError::Postgres(redact_text(message, secrets))
        };
        let mut config = Config::from_str(&parts.without_tls_options())
            .map_err(|e| scrub(format!("invalid URL: {e}"), &secrets))?;
        if let Some(password) = config.get_password() {
            secrets.push(String::from_utf8_lossy(password).into_owned());
        }
        let tls = match parts.param("sslmode").as_deref() {
            None | Some("disable" | "allow" | "prefer") => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            Some("require" | "verify-ca" | "verify-full") => {
                config.ssl_mode(SslMode::Require);
                let roots = parts.param("sslrootcert");
                Some(tls_connector(roots.as_deref()).map_err(|e| scrub(e, &secrets))?)
            }
            Some(_) => {
                return Err(StoreError::Postgres(
                    "invalid sslmode (disable, allow, prefer, require, verify-ca or verify-full)"
                        .into(),
                ));
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
        if parts.param("keepalives_idle").is_none() {
            config.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(DEFAULT_KEEPALIVES_RETRIES);
        }
        if config.get_application_name().is_none() {
            config.application_name("warden");
        }
        // Notices (e.g. "relation already exists, skipping") are not news.
        config.notice_callback(|_| {});
        let target = target(&config);
        secrets.retain(|s| !s.is_empty());
        // Longest first, so that no part of a longer form is left behind.
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Ok(Self {
            config,
            tls,
            target,
            secrets,
            failed_connect: FailedConnect::default(),
        })
    }

    pub(super) fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// How many hosts the URL names (each may take a connect timeout).
    pub(super) fn hosts(&self) -> u32 {
        u32::try_from(self.config.get_hosts().len().max(1)).unwrap_or(u32::MAX)
    }

    fn connect(&self) -> Result<Client, StoreError> {
        let connected = match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        };
        let mut client = connected
            .map_err(|e| StoreError::Postgres(format!("cannot connect: {}", describe(&e))))?;
        client
            .execute(
                "SELECT set_config('statement_timeout', $1, false)
                 WHERE current_setting('statement_timeout') = '0'",
                &[&DEFAULT_STATEMENT_TIMEOUT],
            )
            .map_err(|e| {
                StoreError::Postgres(format!("cannot set up the session: {}", describe(&e)))
            })?;
        Ok(client)
    }

    /// `error` naming the server, and without the password should a
    /// message ever hold it.
    fn finish(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::Postgres(message) => StoreError::Postgres(redact_text(
                format!("{}: {message}", self.target),
                &self.secrets,
            )),
            StoreError::Conflict(what) => StoreError::Conflict(redact_text(what, &self.secrets)),
            StoreError::Corrupt { table, what } => StoreError::Corrupt {
                table,
                what: redact_text(what, &self.secrets),
            },
            other => other,
        }
    }
}

fn redact_text(mut text: String, secrets: &[String]) -> String {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "[redacted]");
        }
    }
    text
}

/// `host:port/database` (the first host), for messages and `Debug`.
fn target(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    format!("{host}:{port}/{db}")
}

/// A connector that verifies the server's chain and host name against the
/// CA certificates in the PEM file `roots`, or the system's.
fn tls_connector(roots: Option<&str>) -> Result<MakeRustlsConnect, String> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Some(path) if path != "system" => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("no CA certificate in sslrootcert {path}"));
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "no system CA certificates for sslmode; set sslrootcert=PATH to a PEM file"
                        .into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    // What PostgreSQL 17 asks for with sslnegotiation=direct; ignored before.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

/// A `postgres://` URL cut where the `postgres` crate's parser cuts it, so
/// that the TLS options it does not know can be taken out and read here.
struct UrlParts<'a> {
    /// Scheme, credentials, hosts and database.
    base: &'a str,
    /// `user:password` (empty without an `@`).
    credentials: &'a str,
    /// The query's `key=value` pairs, undecoded.
    params: Vec<&'a str>,
}

impl<'a> UrlParts<'a> {
    fn parse(url: &'a str) -> Result<Self, StoreError> {
        let rest = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
            .ok_or_else(|| {
                StoreError::Postgres("expected a postgres:// or postgresql:// URL".into())
            })?;
        // Credentials run to the first `@` (as the crate reads them).
        let credentials = rest.find('@').map_or("", |at| &rest[..at]);
        let after = url.len() - rest.len() + rest.find('@').map_or(0, |at| at + 1);
        let (base, query) = match url[after..].find('?') {
            Some(q) => (&url[..after + q], &url[after + q + 1..]),
            None => (url, ""),
        };
        let params = query.split('&').filter(|p| !p.is_empty()).collect();
        Ok(Self {
            base,
            credentials,
            params,
        })
    }

    fn key(pair: &str) -> Cow<'_, str> {
        decode(pair.split_once('=').map_or(pair, |(k, _)| k))
    }

    /// The decoded value of the last `key=` parameter.
    fn param(&self, key: &str) -> Option<String> {
        self.params
            .iter()
            .rev()
            .find(|p| Self::key(p) == key)
            .map(|p| decode(p.split_once('=').map_or("", |(_, v)| v)).into_owned())
    }

    /// The password as written and as decoded, from the credentials and
    /// from any `password=` parameter.
    fn secrets(&self) -> Vec<String> {
        let mut raw: Vec<&str> = self
            .params
            .iter()
            .filter(|p| Self::key(p) == "password")
            .filter_map(|p| p.split_once('=').map(|(_, v)| v))
            .collect();
        if let Some((_, password)) = self.credentials.split_once(':') {
            raw.push(password);
        }
        raw.iter()
            .flat_map(|r| [(*r).to_owned(), decode(r).into_owned()])
            .collect()
    }

    /// The URL without `sslmode` and `sslrootcert`, which are handled here
    /// (the crate knows neither `verify-ca`/`verify-full` nor `sslrootcert`).
    fn without_tls_options(&self) -> String {
        let kept: Vec<&str> = self
            .params
            .iter()
            .copied()
            .filter(|p| !matches!(Self::key(p).as_ref(), "sslmode" | "sslrootcert"))
            .collect();
        if kept.is_empty() {
            self.base.to_owned()
        } else {
            format!("{}?{}", self.base, kept.join("&"))
        }
    }
}

fn decode(s: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_take_out_tls_options_and_find_the_password() {
        let url = "postgres://warden:p%40ss@db.internal:5433/w?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem";
        let parts = UrlParts::parse(url).unwrap();
        assert_eq!(parts.param("sslmode").as_deref(), Some("verify-full"));
        assert_eq!(parts.param("sslrootcert").as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            parts.without_tls_options(),
            "postgres://warden:p%40ss@db.internal:5433/w?application_name=x"
        );
        let secrets = parts.secrets();
        assert!(secrets.contains(&"p%40ss".to_owned()) && secrets.contains(&"p@ss".to_owned()));

        let parts =
            UrlParts::parse("postgresql://db/w?password=s3cret%21&sslmode=disable").unwrap();
        assert_eq!(
            parts.without_tls_options(),
            "postgresql://db/w?password=s3cret%21"
        );
        assert!(parts.secrets().contains(&"s3cret!".to_owned()));
        assert_eq!(
            UrlParts::parse("postgres://db")
                .unwrap()
                .without_tls_options(),
            "postgres://db"
        );
    }

    #[test]
    fn settings_keep_what_the_url_says_and_default_the_rest() {
        let s =
            Settings::from_url("postgres://u:pw@h/d?connect_timeout=9&keepalives_idle=7").unwrap();
        assert_eq!(
            s.config.get_connect_timeout(),
            Some(&Duration::from_secs(9))
        );
        assert_eq!(s.config.get_keepalives_idle(), Duration::from_secs(7));
        assert_eq!(
            s.config.get_tcp_user_timeout(),
            Some(&DEFAULT_TCP_USER_TIMEOUT)
        );
        assert_eq!(s.config.get_application_name(), Some("warden"));
        assert_eq!(s.config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(s.target, "h:5432/d");
        assert!(s.tls.is_none());
        let s = Settings::from_url("postgres://u:pw@h/d").unwrap();
        assert_eq!(
            s.config.get_connect_timeout(),
            Some(&DEFAULT_CONNECT_TIMEOUT)
        );
        assert_eq!(s.config.get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
    }

    #[test]
    fn bad_urls_fail_without_the_password() {
        for url in [
            "postgres://u:hunter2@h/d?sslmode=sometimes",
            "postgres://u:hunter2@h/d?nonsense=1",
            "postgres://u:hunter2@h:notaport/d",
            "postgres://u:hunter2@h/d?sslmode=verify-full&sslrootcert=/nonexistent/hunter2.pem",
        ] {
            let Err(e) = Settings::from_url(url) else {
                panic!("{url} was accepted");
            };
            let text = format!("{e} {e:?}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
