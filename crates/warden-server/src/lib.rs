//! Warden's HTTP side: the listener and TLS, the request pipeline of SPEC §2
//! ([`pipeline`]), and the handlers.
//!
//! [`Server::bind`] checks everything that can fail before a port is bound
//! (TLS material, the state) and binds; [`Server::run`] serves until the
//! shutdown future resolves, then drains in-flight requests.

pub mod access_log;
pub mod client_addr;
pub mod extract;
pub mod listener;
pub mod openapi;
pub mod pipeline;
pub mod routes;
pub mod state;
pub mod steps;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use warden_auth::Authenticator;
use warden_core::config::Config;
use warden_models::Repository;

use crate::listener::ConnectionSettings;
use crate::state::{AppState, RequestLimits, Shared};

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

/// A bound, not yet serving, data plane.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: AppState,
    settings: ConnectionSettings,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds the state and binds the data-plane address from `config`.
    /// Access-log lines go to `access_log` (unless `log.access = false`).
    pub async fn bind(
        config: &Config,
        repository: Arc<Repository>,
        authenticator: Arc<Authenticator>,
        access_log: Option<Arc<dyn access_log::LineSink>>,
    ) -> Result<Self, ServeError> {
        let tls = match &config.tls {
            Some(settings) => Some(TlsAcceptor::from(tls::server_config(settings)?)),
            None => None,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let state = AppState(Arc::new(Shared {
            repository,
            authenticator,
            limits: RequestLimits {
                body_limit: config.body_limit,
                json_max_depth: config.json_max_depth,
                request_timeout: config.request_timeout,
            },
            trusted_proxies: config.trusted_proxies.clone(),
            tls: tls.is_some(),
            access_log: access_log.filter(|_| config.access_log),
            openapi: openapi::document().into(),
        }));
        let settings = ConnectionSettings {
            max_connections: config.max_connections,
            handshake_timeout: config.handshake_timeout,
            header_timeout: config.header_timeout,
            shutdown_grace: config.shutdown_grace,
        };
        Ok(Self {
            listener,
            tls,
            state,
            settings,
        })
    }

    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let app = pipeline::data_plane(self.state);
        listener::serve(self.listener, self.tls, app, self.settings, shutdown).await;
    }
}
