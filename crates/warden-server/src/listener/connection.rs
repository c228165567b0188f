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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// What is going on on one connection: its open requests, the responses
/// being sent, and whether written data waits in Warden because the
/// client is not reading.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Requests from hyper's hand-over until their response body is done.
    open: AtomicUsize,
    /// Responses whose head is out and whose body is not done.
    responding: AtomicUsize,
    /// The socket refused a write and nothing has been flushed since.
    writing: AtomicBool,
    /// Bytes written to the socket.
    sent: AtomicU64,
    changed: Notify,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> RequestGuard {
        if self.open.fetch_add(1, Ordering::AcqRel) == 0 {
            self.changed.notify_one();
        }
        RequestGuard(Arc::clone(self))
    }

    fn responding(self: &Arc<Self>) -> ResponseGuard {
        // Read at the send-rate checks only: no wake-up needed.
        self.responding.fetch_add(1, Ordering::AcqRel);
        ResponseGuard(Arc::clone(self))
    }

    /// Bytes the socket took (pacing.rs).
    pub(super) fn sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Whether data waits in Warden for the client to read (pacing.rs).
    pub(super) fn set_writing(&self, writing: bool) {
        if self.writing.swap(writing, Ordering::AcqRel) != writing {
            self.changed.notify_one();
        }
    }

    /// Nothing in progress: no request, and nothing waiting to be written.
    fn idle(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0 && !self.writing.load(Ordering::Acquire)
    }

    /// Waiting on the client to take a response.
    fn sending(&self) -> bool {
        self.responding.load(Ordering::Acquire) > 0 || self.writing.load(Ordering::Acquire)
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

/// One response being sent; dropped when its body is done.
#[derive(Debug)]
struct ResponseGuard(Arc<Activity>);

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        self.0.responding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The deadlines of an established connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    /// From the end of the TLS handshake (or the accept) to the first
    /// request.
    pub(super) first_request: Duration,
    /// With nothing in progress, after the last request ended.
    pub(super) idle: Duration,
    /// While a response is being sent, the client must take at least this.
    pub(super) send_rate: MinRate,
}

/// Why a connection was closed by Warden rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// The connection's client went away or the connection failed.
    ByPeer,
    /// No request for the idle (or first-request) deadline.
    Idle,
    /// Responses were waiting and the client took less than the minimum
    /// send rate (an HTTP/2 client that keeps its flow-control window shut,
    /// a reader that stopped).
    TooSlow,
    /// The server is shutting down.
    Shutdown,
}

/// Serves `conn` until it ends. Closes it gracefully (GOAWAY on HTTP/2,
/// close after the current response on HTTP/1.1) when nothing has been in
/// progress for its deadline, or when `stop` turns true; then drops it
/// [`LINGER`] after its last request is done, whether or not the client
/// answers the GOAWAY. Drops it at once when a response was waiting for the
/// client at two checks a send-rate window apart and less than
/// `rate × window` was sent in between: the kernel still delivers what it
/// holds, but nothing more is waited for.
///
/// The two timers are made once and reset, not made per wake-up: this task
/// also drives the connection, so it is woken for every read and write.
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
    let mut closing = None;
    let idle_timer = tokio::time::sleep(deadlines.first_request);
    tokio::pin!(idle_timer);
    let rate = deadlines.send_rate;
    let window = if rate.enabled() {
        rate.window
    } else {
        Duration::from_secs(86_400)
    };
    let rate_check = tokio::time::sleep(window);
    tokio::pin!(rate_check);
    // At the last check: bytes sent so far, and whether a response waited.
    let mut last = (activity.sent.load(Ordering::Relaxed), false);
    loop {
        let changed = activity.changed.notified();
        let idle = activity.idle();
        tokio::select! {
            _ = conn.as_mut() => return closing.unwrap_or(Closed::ByPeer),
            () = changed => {
                if activity.idle() {
                    let wait = if closing.is_some() { LINGER } else { deadlines.idle };
                    idle_timer.as_mut().reset(Instant::now() + wait);
                } else if idle {
                    // Busy again: the send-rate windows start afresh.
                    last = (activity.sent.load(Ordering::Relaxed), false);
                    rate_check.as_mut().reset(Instant::now() + window);
                }
            }
            () = idle_timer.as_mut(), if idle => {
                if let Some(reason) = closing {
                    return reason;
                }
                closing = Some(Closed::Idle);
                conn.as_mut().graceful_shutdown();
                idle_timer.as_mut().reset(Instant::now() + LINGER);
            }
            () = rate_check.as_mut(), if rate.enabled() && !idle => {
                let sent = activity.sent.load(Ordering::Relaxed);
                let sending = activity.sending();
                if sending && last.1 && sent.saturating_sub(last.0) < rate.bytes_per_window() {
                    return Closed::TooSlow;
                }
                last = (sent, sending);
                rate_check.as_mut().reset(Instant::now() + window);
            }
            _ = stop.wait_for(|stopping| *stopping), if closing.is_none() => {
                closing = Some(Closed::Shutdown);
                conn.as_mut().graceful_shutdown();
                idle_timer.as_mut().reset(Instant::now() + LINGER);
            }
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
                let sending = guard.as_ref().map(|g| g.0.responding());
                Poll::Ready(Ok(response.map(|inner| TrackedBody {
                    inner,
                    _sending: sending,
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
    // Dropped before the request guard: the response is done first.
    _sending: Option<ResponseGuard>,
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
