//! Warden's HTTP side: the listener and TLS, the request pipeline of docs/pipeline.md
//! ([`pipeline`]), and the handlers.
//!
//! [`Server::bind`] checks the TLS material and binds the data plane and the
//! management plane; [`Server::run`] serves both until the shutdown future
//! resolves, then drains in-flight requests.

pub mod access_log;
pub mod admin;
pub mod anomaly;
pub mod certs;
pub mod client_addr;
pub mod console;
pub mod defend;
pub mod devca;
pub mod docs;
pub mod extract;
pub mod fair;
pub mod grpc;
pub mod listener;
pub mod metrics;
pub mod oauth;
pub mod observe;
pub mod openapi;
pub mod pipeline;
pub mod redirect;
pub mod refusals;
pub mod routes;
pub mod service;
pub mod state;
pub mod steps;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use warden_auth::Authenticator;
use warden_core::config::{Config, TlsSettings};
use warden_models::Repository;

use crate::listener::ConnectionSettings;
use crate::listener::pacing::MinRate;
use crate::state::{AppState, Identity, RequestLimits, Shared};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Requests in flight at once on the management plane.
pub const ADMIN_IN_FLIGHT: usize = 256;

/// What the handlers work with, built by the caller once the addresses are
/// known (the token issuer's URL may derive from the bound address).
#[derive(Debug)]
pub struct Services {
    /// Models served.
    pub repository: Arc<Repository>,
    /// Credential → principal.
    pub authenticator: Arc<Authenticator>,
    /// Accounts, roles, the token endpoint.
    pub identity: Arc<Identity>,
    /// Where access-log lines go (unless `log.access = false`).
    pub access_log: Option<Arc<dyn access_log::LineSink>>,
    /// Rate limits, quotas, bans.
    pub limiter: Arc<warden_limits::Limiter>,
    /// The audit trail, unless disabled.
    pub audit: Option<Arc<warden_audit::AuditLog>>,
    /// The encryption-at-rest key (raw-input snapshots), if configured.
    pub seal_key: Option<Arc<warden_models::sealed::SealKey>>,
}

struct Bound {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    /// The served certificate (reloadable).
    served: Option<Arc<certs::ServedCert>>,
    reload_interval: std::time::Duration,
}

/// The bound, not yet serving, listeners: the data plane and, unless
/// disabled, the management plane.
pub struct Server {
    data: Bound,
    admin: Option<Bound>,
    /// The gRPC listener and its settings.
    grpc: Option<(Bound, warden_core::config::GrpcSettings)>,
    /// The plaintext redirect-to-HTTPS listener.
    redirect: Option<TcpListener>,
    limits: RequestLimits,
    trusted_proxies: Vec<ipnet::IpNet>,
    access_log: bool,
    max_in_flight: usize,
    max_in_flight_per_principal: usize,
    docs: bool,
    settings: ConnectionSettings,
    alerts: warden_core::config::AlertSettings,
    refusal_window: std::time::Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("data", &self.data.listener)
            .field("admin", &self.admin.as_ref().map(|a| &a.listener))
            .field("tls", &self.data.tls.is_some())
            .finish_non_exhaustive()
    }
}

async fn bind(
    addr: SocketAddr,
    tls: Option<&TlsSettings>,
    listener: &'static str,
) -> Result<Bound, ServeError> {
    let (acceptor, served) = match tls {
        Some(settings) => {
            let t = tls::server_config(settings, listener)?;
            (Some(TlsAcceptor::from(t.config)), Some(t.served))
        }
        None => (None, None),
    };
    let tcp = listen(addr).map_err(|source| ServeError::Bind { addr, source })?;
    Ok(Bound {
        listener: tcp,
        tls: acceptor,
        served,
        reload_interval: tls.map_or(std::time::Duration::from_secs(10), |t| t.reload_interval),
    })
}

/// Connections the kernel queues before Warden accepts them. Larger than
/// tokio's 1024: a burst of connections from one address (which are then
/// refused at once, listener/mod.rs) must not fill the queue so that a
/// legitimate client's SYN is dropped and retried a second later. The kernel
/// caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's and tokio's `bind` do: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

impl Server {
    /// Checks the TLS material and binds the addresses from `config`.
    pub async fn bind(config: &Config) -> Result<Self, ServeError> {
        let data = bind(config.listen, config.tls.as_ref(), "data").await?;
        let admin = match &config.admin {
            Some(a) => Some(bind(a.listen, a.tls.as_ref(), "management").await?),
            None => None,
        };
        let grpc = match &config.grpc {
            Some(g) => Some((bind(g.listen, g.tls.as_ref(), "grpc").await?, g.clone())),
            None => None,
        };
        let redirect = match config.redirect_listen {
            Some(addr) => Some(listen(addr).map_err(|source| ServeError::Bind { addr, source })?),
            None => None,
        };
        Ok(Self {
            data,
            admin,
            grpc,
            redirect,
            limits: RequestLimits {
                body_limit: config.body_limit,
                json_max_depth: config.json_max_depth,
                request_timeout: config.request_timeout,
            },
            trusted_proxies: config.trusted_proxies.clone(),
            access_log: config.access_log,
            max_in_flight: config.max_in_flight,
            docs: config.docs,
            alerts: config.alerts,
            refusal_window: config
                .audit
                .as_ref()
                .map_or(std::time::Duration::from_secs(60), |a| a.refusal_window),
            max_in_flight_per_principal: config.max_in_flight_per_principal,
            settings: ConnectionSettings {
                max_connections: config.max_connections,
                max_connections_per_address: config.max_connections_per_address,
                uncapped: config.trusted_proxies.clone().into(),
                handshake_timeout: config.handshake_timeout,
                header_timeout: config.header_timeout,
                idle_timeout: config.idle_timeout,
                body_rate: MinRate {
                    bytes_per_second: config.min_body_rate,
                    window: config.transfer_window,
                },
                send_rate: MinRate {
                    bytes_per_second: config.min_send_rate,
                    window: config.transfer_window,
                },
                shutdown_grace: config.shutdown_grace,
            },
        })
    }

    /// The data plane's bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.data.listener.local_addr()
    }

    /// The management plane's bound address, if it is enabled.
    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(|a| a.listener.local_addr())
    }

    /// The gRPC listener's bound address, if it is enabled.
    pub fn grpc_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.grpc.as_ref().map(|(g, _)| g.listener.local_addr())
    }

    /// The redirect listener's bound address, if it is enabled.
    pub fn redirect_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.redirect.as_ref().map(TcpListener::local_addr)
    }

    /// Whether the data plane speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.data.tls.is_some()
    }

    /// The URL of the data plane, as a default token issuer (`iss`): the
    /// bound address, with an unspecified IP replaced by loopback.
    pub fn default_issuer(&self) -> std::io::Result<String> {
        let mut addr = self.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if self.is_tls() { "https" } else { "http" };
        Ok(format!("{scheme}://{addr}"))
    }

    /// Serves both planes until `shutdown` resolves, then drains both.
    pub async fn run(self, services: Services, shutdown: impl Future<Output = ()>) {
        let certificates: Vec<Arc<certs::ServedCert>> = [
            self.data.served.clone(),
            self.admin.as_ref().and_then(|a| a.served.clone()),
            self.grpc.as_ref().and_then(|(g, _)| g.served.clone()),
        ]
        .into_iter()
        .flatten()
        .collect();
        certs::watch(certificates.clone(), self.data.reload_interval);
        let https_port = self.data.listener.local_addr().map_or(443, |a| a.port());
        let state = AppState(Arc::new(Shared {
            repository: services.repository,
            authenticator: services.authenticator,
            limits: self.limits,
            trusted_proxies: self.trusted_proxies,
            tls: self.data.tls.is_some(),
            access_log: services.access_log.filter(|_| self.access_log),
            openapi: openapi::document().into(),
            docs: self.docs,
            identity: services.identity,
            limiter: services.limiter,
            in_flight: tokio::sync::Semaphore::new(self.max_in_flight),
            principal_in_flight: fair::PrincipalSlots::new(self.max_in_flight_per_principal),
            admin_in_flight: tokio::sync::Semaphore::new(ADMIN_IN_FLIGHT),
            audit: services.audit,
            refusals: Arc::default(),
            refusal_lines: Arc::default(),
            seal_key: services.seal_key,
            max_in_flight: self.max_in_flight,
            metrics: metrics::install(),
            certificates,
            throttled: Default::default(),
            timeline: Default::default(),
            rate_watch: Some(anomaly::RateWatch::start(self.alerts)),
        }));
        metrics::register_series(&state);
        // The model cards' budgets, read from the model served now (a
        // reload's new card applies at once).
        let models = Arc::downgrade(&state.repository);
        state
            .limiter
            .set_budgets(move |name| models.upgrade()?.get(name)?.card.budget);
        if let Some(log) = &state.audit {
            refusals::spawn_flusher(
                Arc::clone(&state.refusals),
                Arc::clone(log),
                self.refusal_window,
            );
        }
        if state.access_log.is_some() {
            Arc::clone(&state.refusal_lines).spawn_reporter();
        }
        if let Some(handle) = &state.metrics {
            metrics::spawn_upkeep(handle.clone());
        }
        anomaly::watch_certificates(&state.certificates, self.alerts.certificate_warning);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let data = listener::serve(
            self.data.listener,
            self.data.tls,
            pipeline::data_plane(state.clone()),
            self.settings.clone(),
            "data",
            until_stopped(stopped.clone()),
        );
        let admin = async {
            if let Some(admin) = self.admin {
                listener::serve(
                    admin.listener,
                    admin.tls,
                    pipeline::management_plane(state.clone()),
                    self.settings.clone(),
                    "management",
                    until_stopped(stopped.clone()),
                )
                .await;
            }
        };
        let grpc = async {
            if let Some((grpc, settings)) = self.grpc {
                let max_message = settings
                    .max_message_bytes
                    .unwrap_or_else(|| grpc::max_message_bytes(&state.repository));
                listener::serve(
                    grpc.listener,
                    grpc.tls,
                    pipeline::grpc_plane(state.clone(), max_message, settings.reflection),
                    self.settings.clone(),
                    "grpc",
                    until_stopped(stopped.clone()),
                )
                .await;
            }
        };
        let redirect = async {
            if let Some(listener) = self.redirect {
                listener::serve(
                    listener,
                    None,
                    redirect::router(https_port),
                    self.settings.clone(),
                    "redirect",
                    until_stopped(stopped.clone()),
                )
                .await;
            }
        };
        let signal = async {
            shutdown.await;
            let _ = stop.send(true);
        };
        tokio::join!(data, admin, grpc, redirect, signal);
        // The last window's refusal tallies, before the caller flushes the
        // audit trail.
        if let Some(log) = &state.audit {
            refusals::flush(&state.refusals, log, self.refusal_window).await;
        }
    }
}
