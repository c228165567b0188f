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
use tokio::sync::watch;
use tokio::time::Instant;

use super::pacing::{MinRate, PacedBody};
use crate::client_addr::{ClientCertificate, PeerAddr};

/// How long a connection being closed with no open request gets to send
/// its GOAWAY or close before it is dropped.
const LINGER: Duration = Duration::from_millis(250);

/// What is going on on one connection: its open requests, the responses
/// being sent, and whether written data waits in Warden because the
/// client is not reading.
///
/// Only counters and a time stamp: a request's start and end wake nothing.
/// The watchdog ([`drive`]) reads them when its timers fire (waking the
/// connection's task twice per request to reset a timer cost about as much
/// as the rest of the connection's bookkeeping).
#[derive(Debug)]
pub(super) struct Activity {
    /// Requests from hyper's hand-over until their response body is done.
    open: AtomicUsize,
    /// Responses whose head is out and whose body is not done.
    responding: AtomicUsize,
    /// The socket refused a write and nothing has been flushed since.
    writing: AtomicBool,
    /// Bytes written to the socket.
    sent: AtomicU64,
    /// Times the connection went from idle to busy: a send-rate window
    /// that saw it start again measures afresh, and none yet means the
    /// first-request deadline applies.
    turns: AtomicU64,
    /// When the connection last went idle, in µs after `epoch`.
    idle_since_us: AtomicU64,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            open: AtomicUsize::new(0),
            responding: AtomicUsize::new(0),
            writing: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            idle_since_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> RequestGuard {
        // Idle before (no request, nothing waiting to be written): a turn.
        if self.open.fetch_add(1, Ordering::AcqRel) == 0 && !self.writing.load(Ordering::Acquire) {
            self.turns.fetch_add(1, Ordering::AcqRel);
        }
        RequestGuard(Arc::clone(self))
    }

    fn responding(self: &Arc<Self>) -> ResponseGuard {
        // Read at the send-rate checks only.
        self.responding.fetch_add(1, Ordering::AcqRel);
        ResponseGuard(Arc::clone(self))
    }

    /// Bytes the socket took (pacing.rs).
    pub(super) fn sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Whether data waits in Warden for the client to read (pacing.rs).
    pub(super) fn set_writing(&self, writing: bool) {
        if self.writing.swap(writing, Ordering::AcqRel) != writing
            && self.open.load(Ordering::Acquire) == 0
        {
            if writing {
                self.turns.fetch_add(1, Ordering::AcqRel);
            } else {
                self.went_idle();
            }
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

    /// Stamps the time: the connection may be about to go idle (a later
    /// stamp than the true one only makes its deadline later). Stamps only
    /// move forward, whichever of two threads stamps last.
    fn went_idle(&self) {
        let us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.idle_since_us.fetch_max(us, Ordering::AcqRel);
    }

    /// When the connection last went idle.
    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_micros(self.idle_since_us.load(Ordering::Acquire))
    }
}

/// One open request; dropped when its response is done.
#[derive(Debug)]
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Stamped before the count drops: whoever then sees no request
        // open also sees when the last one ended (an HTTP/2 stream ends on
        // its own task, while the watchdog may be looking).
        self.0.went_idle();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
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
/// client at two checks a send-rate window apart, the connection did not go
/// idle in between, and less than `rate × window` was sent in between: the
/// kernel still delivers what it holds, but nothing more is waited for.
///
/// The timers are lazy: requests do not reset them (this task also drives
/// the connection, so a reset would be an extra wake-up per request). When
/// the idle timer fires it reads how long the connection has actually been
/// idle and, if that is short of the deadline, sleeps for the rest; the
/// send-rate timer fires every window and compares with the last check.
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
    // The first-request deadline runs from here (after the handshake).
    activity.went_idle();
    let mut closing: Option<(Closed, Instant)> = None;
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
    // At the last check: bytes sent so far, whether a response waited, and
    // the busy turns so far.
    let mut last = (activity.sent.load(Ordering::Relaxed), false, 0);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return closing.map_or(Closed::ByPeer, |(reason, _)| reason),
            () = idle_timer.as_mut() => {
                let now = Instant::now();
                if let Some(due) = idle_due(activity, &deadlines, closing.map(|(_, at)| at), now) {
                    idle_timer.as_mut().reset(due);
                    continue;
                }
                if let Some((reason, _)) = closing {
                    return reason;
                }
                closing = Some((Closed::Idle, now));
                conn.as_mut().graceful_shutdown();
                idle_timer.as_mut().reset(now + LINGER);
            }
            () = rate_check.as_mut(), if rate.enabled() => {
                let sent = activity.sent.load(Ordering::Relaxed);
                let sending = activity.sending();
                let turns = activity.turns.load(Ordering::Acquire);
                if sending
                    && last.1
                    && turns == last.2
                    && sent.saturating_sub(last.0) < rate.bytes_per_window()
                {
                    return Closed::TooSlow;
                }
                last = (sent, sending, turns);
                rate_check.as_mut().reset(Instant::now() + window);
            }
            _ = stop.wait_for(|stopping| *stopping), if closing.is_none() => {
                let now = Instant::now();
                closing = Some((Closed::Shutdown, now));
                conn.as_mut().graceful_shutdown();
                idle_timer.as_mut().reset(now + LINGER);
            }
        }
    }
}

/// When the idle timer must look again, or `None` when the connection has
/// been idle for its deadline: `LINGER` once it is `closing` (since that
/// moment), the first-request deadline before any request, the idle one
/// after. A busy connection is looked at again a deadline later (by then
/// it has been idle for a part of it at most).
fn idle_due(
    activity: &Activity,
    deadlines: &Deadlines,
    closing: Option<Instant>,
    now: Instant,
) -> Option<Instant> {
    let (wait, from) = match closing {
        Some(at) => (LINGER, activity.idle_since().max(at)),
        None if activity.turns.load(Ordering::Acquire) == 0 => {
            (deadlines.first_request, activity.idle_since())
        }
        None => (deadlines.idle, activity.idle_since()),
    };
    let due = if activity.idle() {
        from + wait
    } else {
        now + wait
    };
    (due > now).then_some(due)
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

    fn deadlines() -> Deadlines {
        Deadlines {
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            send_rate: MinRate {
                bytes_per_second: 0,
                window: Duration::ZERO,
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_runs_from_the_last_request_s_end_without_resets() {
        let activity = Arc::new(Activity::default());
        let d = deadlines();
        activity.went_idle();
        let start = Instant::now();
        // No request yet: the first-request deadline.
        assert_eq!(
            idle_due(&activity, &d, None, start),
            Some(start + d.first_request)
        );
        tokio::time::advance(d.first_request).await;
        assert_eq!(idle_due(&activity, &d, None, Instant::now()), None);

        // A request open past every deadline keeps the connection.
        let request = activity.begin();
        tokio::time::advance(Duration::from_secs(120)).await;
        let now = Instant::now();
        assert_eq!(idle_due(&activity, &d, None, now), Some(now + d.idle));
        // Ended 5 s before the timer looks again: the rest of the idle
        // deadline from its end, not from the look.
        drop(request);
        let ended = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            idle_due(&activity, &d, None, Instant::now()),
            Some(ended + d.idle)
        );
        tokio::time::advance(d.idle).await;
        assert_eq!(idle_due(&activity, &d, None, Instant::now()), None);

        // Closing: LINGER from the later of the close and the last request's end.
        let closing = Instant::now();
        let late = activity.begin();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(idle_due(&activity, &d, Some(closing), Instant::now()).is_some());
        drop(late);
        let ended = Instant::now();
        assert_eq!(
            idle_due(&activity, &d, Some(closing), ended),
            Some(ended + LINGER)
        );
        tokio::time::advance(LINGER).await;
        assert_eq!(idle_due(&activity, &d, Some(closing), Instant::now()), None);
    }

    #[test]
    fn busy_turns_count_idle_to_busy_only() {
        let activity = Arc::new(Activity::default());
        let a = activity.begin();
        let b = activity.begin();
        activity.set_writing(true);
        activity.set_writing(false);
        drop((a, b));
        assert_eq!(activity.turns.load(Ordering::Acquire), 1);
        // Written data left waiting after the last request makes it busy.
        activity.set_writing(true);
        assert!(!activity.idle());
        assert_eq!(activity.turns.load(Ordering::Acquire), 2);
        activity.set_writing(false);
        assert!(activity.idle());
        drop(activity.begin());
        assert_eq!(activity.turns.load(Ordering::Acquire), 3);
        // A request that starts while written data still waits for the
        // client: the connection never went idle, so no turn (a client that
        // stops reading cannot restart the send-rate window with requests).
        activity.set_writing(true);
        assert_eq!(activity.turns.load(Ordering::Acquire), 4);
        let c = activity.begin();
        assert_eq!(activity.turns.load(Ordering::Acquire), 4);
        drop(c);
    }

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
