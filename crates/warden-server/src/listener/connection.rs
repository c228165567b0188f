//! One connection's life after TLS: which requests are open on it, and the
//! deadlines that close it when none is (docs/configuration.md, "Connection
//! deadlines").
//!
//! hyper times out HTTP/1.1 request headers, but nothing in it closes a
//! connection that never starts a request (hyper-util's protocol detection
//! waits for the first bytes forever) or an HTTP/2 connection whose client
//! keeps it open with PINGs and no stream. So the connection's requests are
//! counted here — from the moment hyper hands one over until its response
//! body is written or dropped — and a watchdog closes the connection
//! gracefully (GOAWAY on HTTP/2, close on HTTP/1.1) when it has had none for
//! the idle timeout, and at once on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::future::RouteFuture;
use http_body::{Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::pacing::{MinRate, PacedBody};
use crate::client_addr::{ClientCertificate, PeerAddr};

/// How long a connection being closed with no open request gets to send
/// its GOAWAY or close before it is dropped.
const LINGER: Duration = Duration::from_millis(250);

/// The requests open on one connection.
#[derive(Debug, Default)]
pub(super) struct Activity {
    open: AtomicUsize,
    changed: Notify,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> RequestGuard {
        if self.open.fetch_add(1, Ordering::AcqRel) == 0 {
            self.changed.notify_one();
        }
        RequestGuard(Arc::clone(self))
    }

    fn idle(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }
}

/// One open request; dropped when its response is done.
#[derive(Debug)]
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// The deadlines of an established connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    /// From the end of the TLS handshake (or the accept) to the first
    /// request.
    pub(super) first_request: Duration,
    /// With no request open, after the last one ended.
    pub(super) idle: Duration,
}

/// Why a connection was closed by Warden rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// The connection's client went away or the connection failed.
    ByPeer,
    /// No request for the idle (or first-request) deadline.
    Idle,
    /// The server is shutting down.
    Shutdown,
}

/// Serves `conn` until it ends, closing it when it has been idle past its
/// deadline or when `stop` turns true (then as soon as its open requests
/// are done).
pub(super) async fn drive<C>(
    conn: Pin<&mut C>,
    activity: &Activity,
    deadlines: Deadlines,
    mut stop: watch::Receiver<bool>,
) -> Closed
where
    C: GracefulConnection,
{
    let mut conn = conn;
    let mut deadline = Instant::now() + deadlines.first_request;
    let reason = loop {
        let changed = activity.changed.notified();
        let idle = activity.idle();
        tokio::select! {
            _ = conn.as_mut() => return Closed::ByPeer,
            () = changed => {
                if activity.idle() {
                    deadline = Instant::now() + deadlines.idle;
                }
            }
            () = tokio::time::sleep_until(deadline), if idle => break Closed::Idle,
            _ = stop.wait_for(|stopping| *stopping) => break Closed::Shutdown,
        }
    };
    // GOAWAY (HTTP/2) or close after the current response (HTTP/1.1); the
    // open requests finish, then the connection is dropped even if its
    // client does not answer the GOAWAY.
    conn.as_mut().graceful_shutdown();
    loop {
        let changed = activity.changed.notified();
        let idle = activity.idle();
        tokio::select! {
            _ = conn.as_mut() => return reason,
            () = changed => {}
            () = tokio::time::sleep(LINGER), if idle => return reason,
        }
    }
}

/// The service hyper calls for each request of one connection: the router,
/// with the socket peer and client certificate on every request, the body
/// paced, and the request counted in the connection's [`Activity`].
#[derive(Debug, Clone)]
pub(super) struct ConnectionService {
    /// The router.
    pub(super) app: Router,
    /// The socket peer.
    pub(super) peer: SocketAddr,
    /// The verified client certificate (mTLS).
    pub(super) certificate: Option<ClientCertificate>,
    /// The connection's requests.
    pub(super) activity: Arc<Activity>,
    /// Minimum rate of request bodies.
    pub(super) body_rate: MinRate,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnectionService {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        use tower::Service as _;
        let guard = self.activity.begin();
        let rate = self.body_rate;
        let mut req = req.map(|body| Body::new(PacedBody::new(body, rate)));
        req.extensions_mut().insert(PeerAddr(self.peer));
        if let Some(c) = &self.certificate {
            req.extensions_mut().insert(c.clone());
        }
        TrackedFuture {
            inner: self.app.clone().call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// The router's future, holding the request's place in the connection's
    /// [`Activity`] until the response body is done.
    pub(super) struct TrackedFuture {
        #[pin]
        inner: RouteFuture<Infallible>,
        guard: Option<RequestGuard>,
    }
}

impl std::fmt::Debug for TrackedFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedFuture").finish_non_exhaustive()
    }
}

impl Future for TrackedFuture {
    type Output = Result<hyper::Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => {
                let guard = this.guard.take();
                Poll::Ready(Ok(response.map(|inner| TrackedBody {
                    inner,
                    _guard: guard,
                })))
            }
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body that keeps its request open until it is written.
#[derive(Debug)]
pub(super) struct TrackedBody {
    inner: Body,
    _guard: Option<RequestGuard>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_until_their_guards_drop() {
        let activity = Arc::new(Activity::default());
        assert!(activity.idle());
        let a = activity.begin();
        let b = activity.begin();
        drop(a);
        assert!(!activity.idle());
        drop(b);
        assert!(activity.idle());
    }
}
