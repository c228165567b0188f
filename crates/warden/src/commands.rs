//! The verbs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use warden_auth::keys::unix_now;
use warden_auth::{Authenticator, KeyAdmin, NewKey};
use warden_core::Role;
use warden_core::config::{CertSource, Config, LogFormat, Overrides};
use warden_models::Repository;
use warden_models::card::CardDefaults;
use warden_models::engine::PoolSettings;
use warden_models::repository::LoadSettings;
use warden_models::runtime::Runtime;
use warden_server::Server;
use warden_store::{ApiKeyRecord, SqliteStore, Store};

use crate::Failure;
use crate::cli::{CertCommand, Command, ConfigCommand, KeysCommand, Location, ServeArgs};
use crate::logging::{BufferedStderr, FlushGuard};

pub(crate) fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(args) => serve(args),
        Command::Keys(cmd) => keys(cmd),
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(&file, &Overrides::default()).map_err(Failure::usage)?;
            print!("{}", config.summary());
            println!("{}: configuration OK", file.display());
            Ok(())
        }
        Command::Cert(cmd) => cert(cmd),
    }
}

fn load_config(location: &Location, overrides: Overrides) -> Result<Config, Failure> {
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

fn open_store(config: &Config) -> Result<SqliteStore, Failure> {
    SqliteStore::open(&config.sqlite_path).map_err(Failure::runtime)
}

/// Logs go to stderr, buffered (see `logging`); the guard flushes on drop.
fn init_logging(config: &Config) -> Result<(BufferedStderr, FlushGuard), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .map_err(|e| Failure::usage(format!("log.level: {e}")))?;
    let (writer, guard) = BufferedStderr::start();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
    let result = match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
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
            data_dir: None,
        },
    )?;
    let (log, _log_guard) = init_logging(&config)?;

    let store: Arc<SqliteStore> = Arc::new(open_store(&config)?);
    let runtime = Runtime::init(config.onnxruntime.as_deref()).map_err(Failure::runtime)?;
    tracing::info!(library = %runtime.path().display(), "ONNX Runtime loaded");
    let repository = Repository::load(
        &config.models_dir,
        LoadSettings {
            runtime,
            pool: PoolSettings {
                sessions: config.sessions_per_model,
                queue: config.queue_per_model,
            },
            card: CardDefaults {
                max_batch: config.default_max_batch,
                range_tolerance: config.range_tolerance,
            },
        },
    )
    .map_err(Failure::usage)?;
    if repository.is_empty() {
        tracing::warn!(dir = %config.models_dir.display(), "the model repository holds no models");
    }

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warden")
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))?;
    tokio.block_on(async {
        let authenticator = Arc::new(Authenticator::new(store.clone()));
        let server = Server::bind(
            &config,
            Arc::new(repository),
            authenticator,
            Some(Arc::new(log)),
        )
        .await
        .map_err(Failure::runtime)?;
        let addr = server.local_addr().map_err(Failure::runtime)?;
        bootstrap_admin_key(store.as_ref(), &config, addr)?;
        tracing::info!(%addr, tls = server.is_tls(), "listening");
        server.run(shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// SPEC §1: on first start, when no admin credential exists, create one
/// admin key and print it once with a ready-to-paste curl example.
fn bootstrap_admin_key(
    store: &SqliteStore,
    config: &Config,
    addr: std::net::SocketAddr,
) -> Result<(), Failure> {
    if store
        .has_active_key_with_role(Role::Admin.as_str(), unix_now())
        .map_err(Failure::runtime)?
    {
        return Ok(());
    }
    let issued = KeyAdmin::new(store)
        .create(&NewKey {
            name: "bootstrap-admin".into(),
            role: Role::Admin,
            models: None,
            expires_in: None,
        })
        .map_err(Failure::runtime)?;
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
            CertSource::SelfSigned { dir } => (
                "https",
                format!("--cacert {} ", dir.join("cert.pem").display()),
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
    Ok(())
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
            let role = Role::parse(&role).ok_or_else(|| {
                Failure::usage(format!(
                    "--role {role:?}: expected admin, predict or metrics"
                ))
            })?;
            let expires_in = expires
                .map(|e| {
                    humantime::parse_duration(&e)
                        .map_err(|err| Failure::usage(format!("--expires {e:?}: {err}")))
                })
                .transpose()?;
            let store = open_store(&config)?;
            let issued = KeyAdmin::new(&store)
                .create(&NewKey {
                    name,
                    role,
                    models,
                    expires_in,
                })
                .map_err(key_failure)?;
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
                    "{:<12}  {:<20}  {:<8}  {:<20}  {:<20}  {:<20}  STATUS",
                    "ID", "NAME", "ROLE", "MODELS", "CREATED", "EXPIRES"
                );
                for k in &keys {
                    println!(
                        "{:<12}  {:<20}  {:<8}  {:<20}  {:<20}  {:<20}  {}",
                        k.id,
                        truncate(&k.name, 20),
                        k.role,
                        truncate(&k.models.as_ref().map_or("*".into(), |m| m.join(",")), 20),
                        time(Some(k.created_at)),
                        time(k.expires_at),
                        status(k, now)
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Revoke { location, id } => {
            let config = load_config(&location, Overrides::default())?;
            KeyAdmin::new(&open_store(&config)?)
                .revoke(&id)
                .map_err(key_failure)?;
            eprintln!("revoked key {id}");
            Ok(())
        }
        KeysCommand::Rotate { location, id } => {
            let config = load_config(&location, Overrides::default())?;
            let issued = KeyAdmin::new(&open_store(&config)?)
                .rotate(&id)
                .map_err(key_failure)?;
            println!("{}", issued.key.as_str());
            eprintln!(
                "key {id} revoked; new key {} ({}); it is shown only this once",
                issued.record.id,
                describe(&issued.record)
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
