//! Accepting connections, the same way on every listener (data plane,
//! management plane, redirect): the connection caps (in all and per client
//! address), the TLS handshake with a deadline, HTTP/1.1 and HTTP/2 (ALPN),
//! a deadline for every state of a connection, minimum transfer rates, and
//! the drain on shutdown (docs/configuration.md, "Connection deadlines").
//!
//! Written on hyper-util directly (rather than `axum::serve`) because the
//! pipeline needs the socket peer for every request, TLS, bounded
//! connections and deadlines for idle connections, none of which
//! `axum::serve` offers together.

mod connection;
pub mod pacing;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use self::connection::{Activity, Closed, ConnectionService, Deadlines};
use self::pacing::{MinRate, PacedIo};
use crate::client_addr::ClientCertificate;
use crate::fair::AddressSlots;

/// Largest HTTP/2 header list read.
const MAX_HEADER_LIST: u32 = 128 * 1024;

/// Most concurrent HTTP/2 streams per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// HTTP/2 streams a client may reset before they are served, per connection.
const MAX_PENDING_RESETS: usize = 20;
/// HTTP/2 streams Warden may reset for client errors, per connection.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// HTTP/2 keep-alive: ping period on a silent connection, and the wait for
/// the answer.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Connection-level settings, the same for every listener.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections per client address (IPv6: per /64).
    pub max_connections_per_address: usize,
    /// Peers not capped per address (the trusted proxies).
    pub uncapped: Arc<[IpNet]>,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Deadline for request headers (HTTP/1.1), and for the first request
    /// of a connection after its handshake.
    pub header_timeout: Duration,
    /// A connection with no open request is closed after this.
    pub idle_timeout: Duration,
    /// Minimum rate of a request body.
    pub body_rate: MinRate,
    /// Minimum rate at which a client reads its response.
    pub send_rate: MinRate,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting, closes idle connections at once, and lets in-flight requests
/// finish for up to the grace period.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    settings: ConnectionSettings,
    label: &'static str,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let per_address = AddressSlots::new(
        settings.max_connections_per_address,
        Arc::clone(&settings.uncapped),
    );
    let (stop, stopping) = watch::channel(false);
    let builder = Arc::new(http_builder(&settings));
    tokio::pin!(shutdown);

    loop {
        // Wait for a connection slot before accepting: excess connections
        // wait in the kernel's backlog instead of consuming memory here.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot { Ok(s) => s, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Fair share: an address over its cap is closed at once, before
        // the TLS handshake costs anything.
        let Some(address_slot) = per_address.try_acquire(peer.ip()) else {
            crate::metrics::connection_refused(label, "per_address");
            tracing::info!(client = %peer.ip(), "connection refused: this address has its share of connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            tls: tls.clone(),
            builder: Arc::clone(&builder),
            settings: settings.clone(),
            stopping: stopping.clone(),
            peer,
            label,
        };
        tokio::spawn(async move {
            let _slots = (slot, address_slot);
            connection.run(stream).await;
        });
    }

    drop(listener);
    let _ = stop.send(true);
    let open = settings.max_connections - slots.available_permits();
    tracing::info!(
        connections = open,
        "shutting down: idle connections closed, in-flight requests draining"
    );
    // Every connection holds a slot until it is closed.
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(settings.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace period over; closing remaining connections");
    }
}

fn http_builder(settings: &ConnectionSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Like HTTP/1.1 (whose default read buffer is larger), read header
        // lists up to 128 KiB so that an oversized credential (say a 100 KiB
        // "token") gets the pipeline's 401, not a connection-level GOAWAY.
        .max_header_list_size(MAX_HEADER_LIST)
        // Rapid reset (CVE-2023-44487): streams a client opens and resets
        // before they are served, and streams the server resets because of
        // client errors ("MadeYouReset"), each capped per connection; past
        // either the connection is closed with GOAWAY. hyper's values, set
        // here so that no dependency update can loosen them (docs/grpc.md).
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        // A peer that stops answering PINGs is dropped: 20 s between
        // pings on an otherwise silent connection, 20 s to answer.
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE);
    builder
}

/// One accepted connection.
struct Connection {
    app: Router,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    settings: ConnectionSettings,
    stopping: watch::Receiver<bool>,
    peer: SocketAddr,
    label: &'static str,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let activity = Arc::new(Activity::default());
        let stream =
            PacedIo::new(stream, self.settings.send_rate).reporting_to(Arc::clone(&activity));
        let Some(tls) = self.tls.clone() else {
            return self.http(stream, None, activity).await;
        };
        let Some(stream) = self.handshake(&tls, stream).await else {
            return;
        };
        // Every request of the connection carries the names of the
        // verified client certificate (mTLS).
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| ClientCertificate(crate::tls::certificate_names(leaf).into()));
        self.http(stream, certificate, activity).await;
    }

    async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        stream: PacedIo<TcpStream>,
    ) -> Option<tokio_rustls::server::TlsStream<PacedIo<TcpStream>>> {
        let peer = self.peer;
        let mut stopping = self.stopping.clone();
        tokio::select! {
            done = tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(stream)) => match done {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    crate::metrics::connection_closed(self.label, "handshake_timeout");
                    None
                }
            },
            _ = stopping.wait_for(|s| *s) => None,
        }
    }

    async fn http<I>(self, io: I, certificate: Option<ClientCertificate>, activity: Arc<Activity>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = ConnectionService {
            app: self.app.clone(),
            peer: self.peer,
            certificate,
            activity: Arc::clone(&activity),
            body_rate: self.settings.body_rate,
        };
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let deadlines = Deadlines {
            first_request: self.settings.header_timeout,
            idle: self.settings.idle_timeout,
            send_rate: self.settings.send_rate,
        };
        match connection::drive(conn, &activity, deadlines, self.stopping.clone()).await {
            Closed::Idle => crate::metrics::connection_closed(self.label, "idle"),
            Closed::Shutdown => crate::metrics::connection_closed(self.label, "shutdown"),
            Closed::TooSlow => crate::metrics::connection_closed(self.label, "too_slow"),
            Closed::ByPeer => {}
        }
    }
}
