//! The verbs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use warden_auth::keys::unix_now;
use warden_auth::{Accounts, Authenticator, JwtVerifier, KeyAdmin, NewKey, TokenService};
use warden_core::config::{CertSource, Config, LogFormat, Overrides, StoreLocation};
use warden_models::Repository;
use warden_models::card::CardDefaults;
use warden_models::engine::PoolSettings;
use warden_models::repository::LoadSettings;
use warden_models::runtime::Runtime;
use warden_server::oauth::OAuth;
use warden_server::state::Identity;
use warden_server::{Server, Services};
use warden_store::{ApiKeyRecord, PostgresStore, SqliteStore, Store};

use crate::Failure;
use crate::cli::{
    AuditCommand, CertCommand, ClientsCommand, Command, ConfigCommand, KeysCommand, Location,
    RolesCommand, ServeArgs, UsersCommand,
};
use crate::logging::{AccessFormat, BufferedStderr, FlushGuard};

pub(crate) fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(args) => serve(args),
        Command::Health { location, listen } => crate::health::health(&location, listen),
        Command::Keys(cmd) => keys(cmd),
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(&file, &Overrides::default()).map_err(Failure::usage)?;
            for w in warden_core::secret::take_warnings() {
                eprintln!("warning: {w}");
            }
            print!("{}", config.summary());
            println!("{}: configuration OK", file.display());
            Ok(())
        }
        Command::Cert(cmd) => cert(cmd),
        Command::Model(cmd) => crate::model::run(cmd),
        Command::Users(cmd) => users(cmd),
        Command::Clients(cmd) => clients(cmd),
        Command::Roles(RolesCommand::List { location }) => roles(&location),
        Command::Audit(AuditCommand::Verify {
            location,
            from,
            checkpoint,
            replica,
        }) => audit_verify(&location, from, checkpoint.as_deref(), replica),
        Command::Audit(AuditCommand::Export {
            location,
            since,
            until,
            replica,
            decrypt_inputs,
        }) => audit_export(&location, &since, until.as_deref(), replica, decrypt_inputs),
    }
}

pub(crate) fn load_config(location: &Location, overrides: Overrides) -> Result<Config, Failure> {
    let overrides = Overrides {
        data_dir: location.data_dir.clone(),
        ..overrides
    };
    match &location.config {
        Some(path) => Config::load(path, &overrides),
        None => Config::default_with(&overrides),
    }
    .map_err(Failure::usage)
}

/// Opens (and migrates) the store the configuration names. With
/// `audit.durability = "sync"`, a SQLite commit also waits for the disk
/// (PostgreSQL commits are durable with its default `synchronous_commit`).
fn open_store(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    match &config.store {
        StoreLocation::Sqlite(path) => {
            let store = SqliteStore::open(path).map_err(Failure::runtime)?;
            if config.audit.as_ref().is_some_and(|a| a.sync) {
                store.sync_to_disk().map_err(Failure::runtime)?;
            }
            Ok(Arc::new(store))
        }
        StoreLocation::Postgres(url) => {
            let url = std::str::from_utf8(url.expose())
                .map_err(|_| Failure::usage("store.url: not UTF-8"))?;
            Ok(Arc::new(
                PostgresStore::connect(url).map_err(Failure::runtime)?,
            ))
        }
    }
}

/// Logs go to stderr, buffered (see `logging`); the guard flushes on drop.
/// `log.format = "auto"` (the default) writes compact, coloured text when
/// stderr is a terminal and JSON lines otherwise; `NO_COLOR` turns the
/// colours off. The access log follows the same choice, with the same
/// fields either way.
fn init_logging(config: &Config) -> Result<(BufferedStderr, FlushGuard), Failure> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .map_err(|e| Failure::usage(format!("log.level: {e}")))?;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let terminal = std::io::stderr().is_terminal();
    let text = match config.log_format {
        LogFormat::Auto => terminal,
        LogFormat::Json => false,
        LogFormat::Text => true,
    };
    let color = text && terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let access = if text {
        AccessFormat::Text(color)
    } else {
        AccessFormat::Json
    };
    let (writer, guard) = BufferedStderr::start(access);
    // Filter by level first, then the per-callsite budget (logging.rs), so
    // that only lines that would be written count against it.
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(crate::logging::LogBudget::start());
    let lines = tracing_subscriber::fmt::layer().with_writer(writer.clone());
    let result = if text {
        subscriber.with(lines.compact().with_ansi(color)).try_init()
    } else {
        subscriber
            .with(lines.json().flatten_event(true).with_current_span(false))
            .try_init()
    };
    result.map_err(|e| Failure::runtime(format!("cannot start logging: {e}")))?;
    Ok((writer, guard))
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    let config = load_config(
        &args.location,
        Overrides {
            models_dir: args.models,
            listen: args.listen,
            admin_listen: args.admin_listen,
            grpc_listen: args.grpc_listen,
            data_dir: None,
            replica: args.replica,
        },
    )?;
    let (log, _log_guard) = init_logging(&config)?;
    let log_flush = log.clone();
    for w in warden_core::secret::take_warnings() {
        tracing::warn!(warning = %w, "insecure setting acknowledged");
    }

    let store = open_store(&config)?;
    let runtime = Runtime::init(config.onnxruntime.as_deref()).map_err(Failure::runtime)?;
    tracing::info!(library = %runtime.path().display(), "ONNX Runtime loaded");
    let security = model_security(&config)?;
    // Metrics before the models: loading counts integrity alerts.
    let _ = warden_server::metrics::install();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warden")
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    // Loaded inside the runtime: gateway-mode models start their upstream
    // health checks as tasks.
    let entered = tokio.enter();
    let repository = Repository::load(
        &config.models_dir,
        LoadSettings {
            runtime,
            pool: PoolSettings {
                sessions: config.sessions_per_model,
                queue: config.queue_per_model,
                queue_timeout: config.queue_timeout,
            },
            card: CardDefaults {
                max_batch: config.default_max_batch,
                range_tolerance: config.range_tolerance,
            },
            security: &security,
        },
    )
    .map_err(Failure::usage)?;
    drop(entered);
    // A raw-input snapshot is only ever stored encrypted.
    if config.encryption_key.is_none()
        && let Some(m) = repository
            .models()
            .into_iter()
            .find(|m| m.card.record_inputs)
    {
        return Err(Failure::usage(format!(
            "model {}: [audit] record_inputs = true needs an [encryption] key (snapshots are stored encrypted)",
            m.name
        )));
    }
    if repository.is_empty() {
        tracing::warn!(dir = %config.models_dir.display(), "the model repository holds no models");
    }

    tokio.block_on(async {
        let server = Server::bind(&config).await.map_err(Failure::runtime)?;
        let addr = server.local_addr().map_err(Failure::runtime)?;
        let admin_addr = server.admin_addr().transpose().map_err(Failure::runtime)?;
        let roles = Arc::new(config.roles.clone());
        let store_dyn: Arc<dyn Store> = store.clone();

        // Warden's own token issuer, its endpoint, and every issuer whose
        // tokens are accepted.
        let oauth = match &config.auth.tokens {
            None => None,
            Some(settings) => {
                let issuer = match &settings.issuer {
                    Some(i) => i.clone(),
                    None => server.default_issuer().map_err(Failure::runtime)?,
                };
                let tokens = Arc::new(
                    TokenService::new(settings, issuer, store_dyn.clone())
                        .map_err(Failure::usage)?,
                );
                tokens.spawn_reloader();
                Some(Arc::new(OAuth::new(tokens).map_err(Failure::runtime)?))
            }
        };
        let verifier = JwtVerifier::new(
            &config.auth.issuers,
            roles.clone(),
            oauth.as_ref().map(|o| o.tokens.clone()),
        )
        .await
        .map_err(Failure::usage)?;
        let authenticator = Arc::new(
            Authenticator::new(store_dyn.clone(), roles.clone())
                .with_cache_ttl(config.auth.key_cache_ttl)
                .with_jwt(verifier)
                .with_mtls(&config.auth.mtls),
        );
        authenticator.spawn_flusher();

        let limiter = Arc::new(
            warden_limits::Limiter::new(config.limits.clone())
                .await
                .map_err(Failure::usage)?,
        );
        // Revocations and rotations made through another replica reach
        // this one's key cache at once (Redis pub/sub), not only after
        // auth.key_cache_ttl.
        let cache = Arc::downgrade(&authenticator);
        limiter.on_key_change(move |id| match (cache.upgrade(), id) {
            (Some(a), Some(id)) => a.forget_key(id),
            (Some(a), None) => a.forget_all(),
            (None, _) => {}
        });
        let audit = match &config.audit {
            None => None,
            Some(a) => Some(
                warden_audit::AuditLog::start(
                    store_dyn.clone(),
                    audit_key(a)?,
                    warden_audit::WriterSettings {
                        replica: a.replica.clone(),
                        sync: a.sync,
                        window: a.batch_window,
                        queue: a.queue,
                        checkpoint_every: a.checkpoint_interval,
                        retention: warden_audit::Retention {
                            max_age: a.max_age,
                            max_records: a.max_records,
                        },
                    },
                )
                .map_err(Failure::runtime)?,
            ),
        };
        let bootstrap = bootstrap_admin_key(store.as_ref(), &config, addr)?;
        if let Some(log) = &audit {
            record_start(log, &repository, bootstrap.as_deref()).await?;
        }
        let audit_log = audit.clone();
        let services = Services {
            audit,
            seal_key: security.seal_key.clone(),
            limiter,
            repository: Arc::new(repository),
            authenticator: authenticator.clone(),
            identity: Arc::new(Identity {
                store: store_dyn,
                roles,
                key_rotation_grace: config.auth.key_rotation_grace,
                oauth,
            }),
            access_log: Some(Arc::new(log)),
        };
        let admin = admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
        let redirect = match server
            .redirect_addr()
            .transpose()
            .map_err(Failure::runtime)?
        {
            Some(a) => a.to_string(),
            None => "off".to_string(),
        };
        let grpc = match server.grpc_addr().transpose().map_err(Failure::runtime)? {
            Some(a) => a.to_string(),
            None => "off".to_string(),
        };
        tracing::info!(%addr, %admin, %grpc, %redirect, tls = server.is_tls(), "listening");
        log_flush.flush_now();
        print_banner(
            &config,
            &server,
            &services,
            addr,
            admin_addr,
            bootstrap.is_some(),
        );
        server.run(services, shutdown_signal()).await;
        // Every record of an answered request is committed before exit; a
        // store that stays down cannot hold the exit forever.
        if let Some(log) = &audit_log {
            match tokio::time::timeout(std::time::Duration::from_secs(30), log.flush()).await {
                Ok(Ok(())) => {}
                _ => tracing::error!(
                    alert = "audit_write_failed",
                    queued = log.queued(),
                    "audit records could not be committed at shutdown: they are lost"
                ),
            }
        }
        let flush = authenticator.clone();
        let _ = tokio::task::spawn_blocking(move || flush.flush_last_used()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The start-up banner (banner.rs), on stdout when it is a terminal.
fn print_banner(
    config: &Config,
    server: &Server,
    services: &Services,
    addr: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    key_printed: bool,
) {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        return;
    }
    let ca = match config.tls.as_ref().map(|t| &t.cert) {
        Some(CertSource::SelfSigned { dir, .. }) => Some(dir.join("ca.pem")),
        _ => None,
    };
    let banner = crate::banner::Banner {
        data: (addr, server.is_tls()),
        admin: admin.map(|a| (a, config.admin.as_ref().is_some_and(|s| s.tls.is_some()))),
        grpc: server.grpc_addr().and_then(Result::ok),
        repository: &services.repository,
        data_dir: &config.data_dir,
        ca: ca.as_deref(),
        key_printed,
    };
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    print!("{}", banner.render(color));
}

/// On first start (README.md, docs/identity.md), when no admin credential exists, create one
/// admin key and print it once with a ready-to-paste curl example.
/// Creates and prints the first admin key if no active one exists; returns
/// its id.
fn bootstrap_admin_key(
    store: &dyn Store,
    config: &Config,
    addr: std::net::SocketAddr,
) -> Result<Option<String>, Failure> {
    if store
        .has_active_key_with_role("admin", unix_now())
        .map_err(Failure::runtime)?
    {
        return Ok(None);
    }
    // Checked again inside the store's transaction: of replicas starting
    // together on an empty shared store, one creates the key.
    let Some(issued) = KeyAdmin::new(store, &config.roles)
        .create_first(&NewKey {
            name: "bootstrap-admin".into(),
            role: "admin".into(),
            models: None,
            expires_in: None,
        })
        .map_err(Failure::runtime)?
    else {
        return Ok(None);
    };
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let (scheme, cacert) = match &config.tls {
        None => ("http", String::new()),
        Some(tls) => match &tls.cert {
            CertSource::SelfSigned { dir, .. } => (
                "https",
                format!("--cacert {} ", dir.join("ca.pem").display()),
            ),
            CertSource::Pem { .. } => ("https", String::new()),
        },
    };
    println!(
        "\nWarden created an admin API key. It is shown only this once and stored only as a hash;\nkeep it somewhere safe:\n\n    {key}\n\nTry it:\n\n    curl {cacert}-H 'X-API-Key: {key}' \\\n      -H 'Content-Type: application/json' -d '{{\"instances\": [[5.1, 3.5, 1.4, 0.2]]}}' \\\n      {scheme}://{host}:{port}/v1/models/iris:predict\n",
        key = issued.key.as_str(),
        port = addr.port(),
    );
    tracing::info!(key_id = %issued.record.id, "created the first admin key");
    Ok(Some(issued.record.id))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

fn keys(cmd: KeysCommand) -> Result<(), Failure> {
    match cmd {
        KeysCommand::Create {
            location,
            name,
            role,
            models,
            expires,
        } => {
            let config = load_config(&location, Overrides::default())?;
            let audit = CliAudit::prepare(&config)?;
            let expires_in = expires
                .map(|e| {
                    humantime::parse_duration(&e)
                        .map_err(|err| Failure::usage(format!("--expires {e:?}: {err}")))
                })
                .transpose()?;
            let store = open_store(&config)?;
            let issued = KeyAdmin::new(&*store, &config.roles)
                .create(&NewKey {
                    name,
                    role,
                    models,
                    expires_in,
                })
                .map_err(key_failure)?;
            cli_audit(audit.as_ref(), &*store, "key.create", &issued.record.id)?;
            println!("{}", issued.key.as_str());
            eprintln!(
                "created key {} ({}); it is shown only this once",
                issued.record.id,
                describe(&issued.record)
            );
            Ok(())
        }
        KeysCommand::List { location, json } => {
            let config = load_config(&location, Overrides::default())?;
            let keys = open_store(&config)?.list_keys().map_err(Failure::runtime)?;
            let now = unix_now();
            if json {
                for k in &keys {
                    println!("{}", key_json(k, now));
                }
            } else {
                println!(
                    "{:<12}  {:<20}  {:<10}  {:<20}  {:<20}  {:<20}  {:<20}  STATUS",
                    "ID", "NAME", "ROLE", "MODELS", "CREATED", "EXPIRES", "LAST USED"
                );
                for k in &keys {
                    println!(
                        "{:<12}  {:<20}  {:<10}  {:<20}  {:<20}  {:<20}  {:<20}  {}",
                        k.id,
                        truncate(&k.name, 20),
                        truncate(&k.role, 10),
                        truncate(&k.models.as_ref().map_or("*".into(), |m| m.join(",")), 20),
                        time(Some(k.created_at)),
                        time(k.expires_at),
                        time(k.last_used_at),
                        status(k, now)
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Revoke { location, id } => {
            let config = load_config(&location, Overrides::default())?;
            let audit = CliAudit::prepare(&config)?;
            let store = open_store(&config)?;
            KeyAdmin::new(&*store, &config.roles)
                .revoke(&id)
                .map_err(key_failure)?;
            cli_audit(audit.as_ref(), &*store, "key.revoke", &id)?;
            eprintln!("revoked key {id}");
            Ok(())
        }
        KeysCommand::Rotate {
            location,
            id,
            grace,
        } => {
            let config = load_config(&location, Overrides::default())?;
            let audit = CliAudit::prepare(&config)?;
            let grace = match grace {
                None => config.auth.key_rotation_grace,
                Some(g) => humantime::parse_duration(&g)
                    .map_err(|e| Failure::usage(format!("--grace {g:?}: {e}")))?,
            };
            let store = open_store(&config)?;
            let issued = KeyAdmin::new(&*store, &config.roles)
                .rotate(&id, grace)
                .map_err(key_failure)?;
            cli_audit(audit.as_ref(), &*store, "key.rotate", &id)?;
            println!("{}", issued.key.as_str());
            eprintln!(
                "new key {} ({}); it is shown only this once. The old key {id} works for {} more",
                issued.record.id,
                describe(&issued.record),
                humantime::format_duration(grace)
            );
            Ok(())
        }
    }
}

fn key_failure(e: warden_auth::KeyError) -> Failure {
    match e {
        warden_auth::KeyError::Store(s) => Failure::runtime(s),
        other => Failure::usage(other),
    }
}

fn describe(k: &ApiKeyRecord) -> String {
    format!(
        "name {:?}, role {}, models {}, expires {}",
        k.name,
        k.role,
        k.models.as_ref().map_or("*".into(), |m| m.join(",")),
        time(k.expires_at)
    )
}

fn status(k: &ApiKeyRecord, now: i64) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|e| now >= e) {
        "expired"
    } else {
        "active"
    }
}

fn key_json(k: &ApiKeyRecord, now: i64) -> serde_json::Value {
    serde_json::json!({
        "id": k.id, "name": k.name, "role": k.role, "models": k.models,
        "created_at": time(Some(k.created_at)), "expires_at": k.expires_at.map(|e| time(Some(e))),
        "revoked_at": k.revoked_at.map(|r| time(Some(r))), "rotated_from": k.rotated_from,
        "last_used_at": k.last_used_at.map(|t| time(Some(t))),
        "status": status(k, now),
    })
}

fn time(unix: Option<i64>) -> String {
    match unix {
        None => "never".into(),
        Some(t) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64),
        )
        .to_string(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

fn cert(cmd: CertCommand) -> Result<(), Failure> {
    let CertCommand::Generate {
        out,
        data_dir,
        names,
        days,
        force,
    } = cmd;
    if days == 0 {
        return Err(Failure::usage("--days must be at least 1"));
    }
    let dir: PathBuf = out.unwrap_or_else(|| {
        data_dir
            .unwrap_or_else(|| PathBuf::from(warden_core::config::DEFAULT_DATA_DIR))
            .join("tls")
    });
    if !force && (dir.join("cert.pem").exists() || dir.join("key.pem").exists()) {
        return Err(Failure::usage(format!(
            "{} already holds a certificate; pass --force to replace it",
            dir.display()
        )));
    }
    let generated = warden_server::tls::generate(&names, days).map_err(Failure::usage)?;
    warden_server::tls::write_pair(Path::new(&dir), &generated).map_err(Failure::runtime)?;
    println!("{}", dir.join("cert.pem").display());
    eprintln!(
        "wrote {} and {} (mode 0600), valid {days} days for localhost, 127.0.0.1, ::1{}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        names.iter().map(|n| format!(", {n}")).collect::<String>()
    );
    Ok(())
}

/// Reads a password: from standard input when it is not a terminal (one
/// line), else twice from a prompt without echo.
fn read_password() -> Result<zeroize::Zeroizing<String>, Failure> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = zeroize::Zeroizing::new(String::new());
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("cannot read the password: {e}")))?;
        let trimmed = line.trim_end_matches(['\r', '\n']).to_owned();
        return Ok(zeroize::Zeroizing::new(trimmed));
    }
    let first = zeroize::Zeroizing::new(
        rpassword::prompt_password("Password: ")
            .map_err(|e| Failure::usage(format!("cannot read the password: {e}")))?,
    );
    let again = zeroize::Zeroizing::new(
        rpassword::prompt_password("Again: ")
            .map_err(|e| Failure::usage(format!("cannot read the password: {e}")))?,
    );
    if *first != *again {
        return Err(Failure::usage("the passwords differ"));
    }
    Ok(first)
}

fn account_failure(e: warden_auth::AccountError) -> Failure {
    match e {
        warden_auth::AccountError::Store(s) => Failure::runtime(s),
        other => Failure::usage(other),
    }
}

fn users(cmd: UsersCommand) -> Result<(), Failure> {
    match cmd {
        UsersCommand::Add {
            location,
            name,
            role,
        } => {
            let config = load_config(&location, Overrides::default())?;
            let audit = CliAudit::prepare(&config)?;
            let password = read_password()?;
            let store = open_store(&config)?;
            let user = Accounts::new(&*store, &config.roles)
                .add_user(&name, &role, &password)
                .map_err(account_failure)?;
            cli_audit(audit.as_ref(), &*store, "user.create", &user.name)?;
            eprintln!("added user {} with role {}", user.name, user.role);
            Ok(())
        }
        UsersCommand::List { location } => {
            let config = load_config(&location, Overrides::default())?;
            let users = open_store(&config)?
                .list_users()
                .map_err(Failure::runtime)?;
            println!("{:<24}  {:<12}  {:<20}  STATUS", "NAME", "ROLE", "CREATED");
            for u in &users {
                println!(
                    "{:<24}  {:<12}  {:<20}  {}",
                    u.name,
                    truncate(&u.role, 12),
                    time(Some(u.created_at)),
                    if u.disabled_at.is_some() {
                        "disabled"
                    } else {
                        "active"
                    }
                );
            }
            Ok(())
        }
        UsersCommand::Disable { location, name } => {
            let config = load_config(&location, Overrides::default())?;
            let audit = CliAudit::prepare(&config)?;
            let store = open_store(&config)?;
            Accounts::new(&*store, &config.roles)
                .disable_user(&name)
                .map_err(account_failure)?;
            cli_audit(audit.as_ref(), &*store, "user.disable", &name)?;
            eprintln!("disabled user {name}");
            Ok(())
        }
    }
}

fn clients(cmd: ClientsCommand) -> Result<(), Failure> {
    match cmd {
        ClientsCommand::Add {
            location,
            name,
            role,
        } => {
            let config = load_config(&location, Overrides::default())?;
            let audit = CliAudit::prepare(&config)?;
            let store = open_store(&config)?;
            let issued = Accounts::new(&*store, &config.roles)
                .add_client(&name, &role)
                .map_err(account_failure)?;
            cli_audit(audit.as_ref(), &*store, "client.create", &issued.record.id)?;
            println!("client_id={}", issued.record.id);
            println!("client_secret={}", issued.secret.as_str());
            eprintln!(
                "added OAuth2 client {} ({name}, role {role}); the secret is shown only this once",
                issued.record.id
            );
            Ok(())
        }
        ClientsCommand::List { location } => {
            let config = load_config(&location, Overrides::default())?;
            let clients = open_store(&config)?
                .list_clients()
                .map_err(Failure::runtime)?;
            println!(
                "{:<16}  {:<20}  {:<12}  {:<20}  STATUS",
                "CLIENT_ID", "NAME", "ROLE", "CREATED"
            );
            for c in &clients {
                println!(
                    "{:<16}  {:<20}  {:<12}  {:<20}  {}",
                    c.id,
                    truncate(&c.name, 20),
                    truncate(&c.role, 12),
                    time(Some(c.created_at)),
                    if c.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
            Ok(())
        }
        ClientsCommand::Revoke { location, id } => {
            let config = load_config(&location, Overrides::default())?;
            let audit = CliAudit::prepare(&config)?;
            let store = open_store(&config)?;
            Accounts::new(&*store, &config.roles)
                .revoke_client(&id)
                .map_err(account_failure)?;
            cli_audit(audit.as_ref(), &*store, "client.revoke", &id)?;
            eprintln!("revoked client {id}");
            Ok(())
        }
    }
}

fn roles(location: &Location) -> Result<(), Failure> {
    let config = load_config(location, Overrides::default())?;
    println!(
        "{:<16}  {:<8}  {:<50}  DESCRIPTION",
        "ROLE", "KIND", "PERMISSIONS"
    );
    for r in config.roles.iter() {
        let permissions: Vec<String> = r.permissions.iter().map(ToString::to_string).collect();
        println!(
            "{:<16}  {:<8}  {:<50}  {}",
            r.name,
            if r.builtin { "built-in" } else { "config" },
            permissions.join(" "),
            r.description
        );
    }
    Ok(())
}

fn audit_key(
    settings: &warden_core::config::AuditSettings,
) -> Result<warden_audit::AuditKey, Failure> {
    match &settings.key {
        warden_core::config::AuditKeySource::Secret(s) => {
            Ok(warden_audit::AuditKey::new(s.expose()))
        }
        warden_core::config::AuditKeySource::File(path) => {
            warden_audit::key_file(path).map_err(Failure::runtime)
        }
    }
}

/// Signature trust and the encryption key, from the configuration.
pub(crate) fn model_security(
    config: &Config,
) -> Result<warden_models::repository::ModelSecurity, Failure> {
    Ok(warden_models::repository::ModelSecurity {
        trust: warden_models::integrity::Trust {
            keys: config.model_trusted_keys.clone(),
            require_signature: config.require_model_signature,
        },
        seal_key: seal_key(config)?.map(Arc::new),
    })
}

/// The encryption-at-rest key, if configured.
pub(crate) fn seal_key(config: &Config) -> Result<Option<warden_models::sealed::SealKey>, Failure> {
    config
        .encryption_key
        .as_ref()
        .map(|k| {
            warden_models::sealed::SealKey::from_secret(k.expose())
                .map_err(|e| Failure::usage(format!("encryption.key: {e}")))
        })
        .transpose()
}

/// Records the start and each model version loaded in the audit trail.
async fn record_start(
    log: &warden_audit::AuditLog,
    repository: &warden_models::Repository,
    bootstrap_key: Option<&str>,
) -> Result<(), Failure> {
    let now = warden_server::steps::unix_micros();
    let mut events = vec![serde_json::json!({
        "time_us": now,
        "event": "server.start",
        "version": env!("CARGO_PKG_VERSION"),
    })];
    for model in repository.models() {
        for version in model.versions.values() {
            events.push(serde_json::json!({
                "time_us": now,
                "event": "model.load",
                "model": model.name,
                "version": version.version,
            }));
        }
    }
    if let Some(id) = bootstrap_key {
        events.push(serde_json::json!({
            "time_us": now,
            "event": "key.create",
            "principal": "bootstrap",
            "target": id,
            "role": "admin",
        }));
    }
    for event in events {
        log.record(event.to_string())
            .await
            .map_err(|_| Failure::runtime("cannot write the audit trail"))?;
    }
    Ok(())
}

/// The audit chain of management actions taken through the CLI: a chain of
/// its own (`<replica>.cli`), so that the CLI never races a running
/// server's writer for the next sequence number.
fn cli_chain(replica: &str) -> String {
    format!("{replica}.cli")
}

/// The CLI's audit chain and key, resolved before an action is taken, so
/// that an unreadable key stops the command before it changes anything.
struct CliAudit {
    key: warden_audit::AuditKey,
    chain: String,
}

impl CliAudit {
    fn prepare(config: &Config) -> Result<Option<Self>, Failure> {
        let Some(settings) = &config.audit else {
            return Ok(None);
        };
        Ok(Some(Self {
            key: audit_key(settings)?,
            chain: cli_chain(&settings.replica),
        }))
    }
}

/// Records a management action taken through the CLI. The action has
/// happened; if its record cannot be written the command fails loudly.
fn cli_audit(
    audit: Option<&CliAudit>,
    store: &dyn Store,
    action: &str,
    target: &str,
) -> Result<(), Failure> {
    let Some(audit) = audit else {
        return Ok(());
    };
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let record = serde_json::json!({
        "time_us": warden_server::steps::unix_micros(),
        "plane": "cli",
        "principal": format!("cli:{user}"),
        "action": action,
        "target": target,
        "outcome": "ok",
    });
    warden_audit::append_one(store, &audit.key, &audit.chain, record.to_string())
        .map(drop)
        .map_err(|e| {
            Failure::runtime(format!(
                "{action} {target} was done, but its audit record failed: {e}"
            ))
        })
}

/// The audit settings and key of a configuration whose data dir has served.
fn audit_setup(
    config: &Config,
) -> Result<(&warden_core::config::AuditSettings, warden_audit::AuditKey), Failure> {
    let Some(settings) = &config.audit else {
        return Err(Failure::usage("audit is disabled in this configuration"));
    };
    if let warden_core::config::AuditKeySource::File(path) = &settings.key
        && !path.exists()
    {
        return Err(Failure::runtime(format!(
            "no audit key at {}: has this data dir served yet?",
            path.display()
        )));
    }
    Ok((settings, audit_key(settings)?))
}

/// `warden audit verify`: checks every chain (or one; with a checkpoint,
/// the checkpoint's), names the first bad record, exits 1 on tampering.
fn audit_verify(
    location: &Location,
    from: i64,
    checkpoint: Option<&Path>,
    replica: Option<String>,
) -> Result<(), Failure> {
    let config = load_config(location, Overrides::default())?;
    let (_, key) = audit_setup(&config)?;
    let checkpoint: Option<warden_audit::Checkpoint> = checkpoint
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Failure::usage(format!("{}: {e}", p.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| Failure::usage(format!("{}: not a checkpoint: {e}", p.display())))
        })
        .transpose()?;
    let store = open_store(&config)?;
    let chains = match (replica, &checkpoint) {
        (Some(r), Some(c)) if r != c.replica => {
            return Err(Failure::usage(format!(
                "the checkpoint is for chain {:?}, not {r:?}",
                c.replica
            )));
        }
        (Some(r), _) => vec![r],
        (None, Some(c)) => vec![c.replica.clone()],
        (None, None) => store.audit_replicas().map_err(Failure::runtime)?,
    };
    if chains.is_empty() {
        println!("no audit records yet");
    }
    let mut bad = Vec::new();
    for chain in &chains {
        // A pruned chain starts after its signed anchor (docs/audit.md,
        // "Retention"): verification starts there unless asked to start later.
        let kept = checkpoint.as_ref().filter(|c| &c.replica == chain);
        let report = warden_audit::verify_stored(store.as_ref(), &key, chain, from, kept)
            .map_err(Failure::runtime)?;
        let pruned = report.pruned_through.map_or(String::new(), |seq| {
            format!(
                "; records 1 to {seq} were removed by the retention policy behind a verified anchor"
            )
        });
        match report.result {
            Ok(v) => println!(
                "audit chain {chain}: {} records verified (sequence {} to {}){pruned}",
                v.rows, report.from, v.last_seq
            ),
            Err(f) => bad.push(format!(
                "audit chain {chain}: first bad record at sequence {}: {:?}",
                f.seq, f.problem
            )),
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(bad.join("\n")))
    }
}

/// Replaces a record's `inputs_sealed` by the decrypted `inputs`.
fn unseal_inputs(
    key: &warden_models::sealed::SealKey,
    record: &mut serde_json::Value,
) -> Result<(), String> {
    use base64::Engine as _;
    let Some(map) = record.as_object_mut() else {
        return Ok(());
    };
    let Some(sealed) = map.get("inputs_sealed").and_then(|v| v.as_str()) else {
        return Ok(());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|_| "inputs_sealed is not base64".to_owned())?;
    let plain = key
        .open(&bytes, warden_models::sealed::AUDIT_INPUTS)
        .map_err(|e| e.to_string())?;
    let inputs: serde_json::Value = serde_json::from_slice(&plain)
        .map_err(|_| "inputs_sealed does not hold inputs".to_owned())?;
    map.remove("inputs_sealed");
    map.insert("inputs".into(), inputs);
    Ok(())
}

/// `warden audit export`: records since a time as JSON lines on stdout,
/// every chain (or one), in sequence order per chain.
fn audit_export(
    location: &Location,
    since: &str,
    until: Option<&str>,
    replica: Option<String>,
    decrypt_inputs: bool,
) -> Result<(), Failure> {
    use std::io::Write;
    let config = load_config(location, Overrides::default())?;
    let unseal = if decrypt_inputs {
        Some(seal_key(&config)?.ok_or_else(|| {
            Failure::usage("--decrypt-inputs: no [encryption] key in this configuration")
        })?)
    } else {
        None
    };
    let now = warden_server::steps::unix_micros() as i64;
    let since_us = warden_audit::parse_time(since, now)
        .map_err(|e| Failure::usage(format!("--since: {e}")))?;
    let until_us = until
        .map(|u| {
            warden_audit::parse_time(u, now).map_err(|e| Failure::usage(format!("--until: {e}")))
        })
        .transpose()?;
    let store = open_store(&config)?;
    let chains = match replica {
        Some(r) => vec![r],
        None => store.audit_replicas().map_err(Failure::runtime)?,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut written = 0u64;
    for chain in chains {
        let mut query = warden_store::AuditQuery {
            replica: chain,
            since_us: Some(since_us),
            until_us,
            limit: 10_000,
            ..Default::default()
        };
        loop {
            let page = store.audit_query(&query).map_err(Failure::runtime)?;
            for r in &page.rows {
                let mut record: serde_json::Value =
                    serde_json::from_str(&r.record).unwrap_or_default();
                if let Some(key) = &unseal {
                    unseal_inputs(key, &mut record).map_err(|e| {
                        Failure::runtime(format!("record {}:{}: {e}", r.replica, r.seq))
                    })?;
                }
                let line =
                    serde_json::json!({"replica": r.replica, "seq": r.seq, "record": record});
                writeln!(out, "{line}")
                    .map_err(|e| Failure::runtime(format!("cannot write: {e}")))?;
                written += 1;
            }
            match page.next {
                Some(next) => query.after_seq = next,
                None => break,
            }
        }
    }
    out.flush()
        .map_err(|e| Failure::runtime(format!("cannot write: {e}")))?;
    eprintln!("exported {written} audit records");
    Ok(())
}
