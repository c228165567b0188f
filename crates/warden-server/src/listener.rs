//! Accepting connections: the connection cap, the TLS handshake with a
//! deadline, HTTP/1.1 and HTTP/2 (ALPN) with a header-read deadline, and the
//! graceful drain on shutdown.
//!
//! Written on hyper-util directly (rather than `axum::serve`) because the
//! pipeline needs the socket peer for every request, TLS, and a bounded
//! number of connections, none of which `axum::serve` offers together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::client_addr::{ClientCertificate, PeerAddr};

/// Largest HTTP/2 header list read.
const MAX_HEADER_LIST: u32 = 128 * 1024;

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Most open connections.
    pub max_connections: usize,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// HTTP/1 header deadline.
    pub header_timeout: Duration,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish for up to the grace period.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    settings: ConnectionSettings,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // Like HTTP/1.1 (whose default read buffer is larger), read header
        // lists up to 128 KiB so that an oversized credential (say a 100 KiB
        // "token") gets the pipeline's 401, not a connection-level GOAWAY.
        .max_header_list_size(MAX_HEADER_LIST);
    let builder = Arc::new(builder);
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
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            // Every request of the connection carries the socket peer and,
            // with mTLS, the names of the verified client certificate.
            let service = |certificate: Option<ClientCertificate>| {
                TowerToHyperService::new(app.map_request(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(PeerAddr(peer));
                        if let Some(c) = &certificate {
                            req.extensions_mut().insert(c.clone());
                        }
                        req
                    },
                ))
            };
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service(None));
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                Some(acceptor) => {
                    let Some(stream) =
                        handshake(&acceptor, stream, peer, settings.handshake_timeout).await
                    else {
                        return;
                    };
                    let certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| ClientCertificate(crate::tls::certificate_names(leaf).into()));
                    let conn = builder.serve_connection(TokioIo::new(stream), service(certificate));
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace period over; closing remaining connections");
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}
