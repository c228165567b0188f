//! Minimum transfer rates: a request body that trickles in and a response
//! that the client reads too slowly both end, instead of holding a
//! connection and an in-flight slot for as long as the client likes
//! (docs/configuration.md, `server.min_body_rate` and `server.min_send_rate`).
//!
//! Written here because neither hyper nor tower-http has a rate (only
//! whole-request timeouts), and a timeout alone lets a client send one byte
//! just before each deadline. The rule is nginx's and Apache
//! mod_reqtimeout's `minrate`: while a transfer is waiting on the peer, each
//! window must move at least `rate × window` bytes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::connection::Activity;

/// A minimum rate: `bytes_per_window` bytes in every `window` spent waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes per second.
    pub bytes_per_second: u64,
    /// The window the rate is measured over.
    pub window: Duration,
}

impl MinRate {
    pub(super) fn bytes_per_window(self) -> u64 {
        let millis = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        self.bytes_per_second.saturating_mul(millis) / 1000
    }

    /// Off when the rate is 0.
    pub(super) fn enabled(self) -> bool {
        self.bytes_per_second > 0 && !self.window.is_zero()
    }
}

/// The window being measured while a transfer waits on its peer.
#[derive(Debug)]
struct Window {
    rate: MinRate,
    /// Armed at the first wait; `None` while nothing waits.
    timer: Option<Pin<Box<Sleep>>>,
    moved: u64,
}

impl Window {
    fn new(rate: MinRate) -> Self {
        Self {
            rate,
            timer: None,
            moved: 0,
        }
    }

    /// `n` bytes moved; they count only while a window is being measured
    /// (what moved before the transfer first waited on its peer is not
    /// progress made while waiting).
    fn moved(&mut self, n: usize) {
        if self.timer.is_some() {
            self.moved = self.moved.saturating_add(n as u64);
        }
    }

    /// The transfer is waiting on the peer: arms the window if needed and
    /// polls it. `Ready(())` means the window ended below the rate.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.rate.enabled() {
            return Poll::Pending;
        }
        loop {
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.rate.window)));
            ready!(timer.as_mut().poll(cx));
            if self.moved < self.rate.bytes_per_window() {
                return Poll::Ready(());
            }
            // Fast enough: measure the next window from now.
            self.moved = 0;
            let next = Instant::now() + self.rate.window;
            timer.as_mut().reset(next);
        }
    }

    /// Nothing waits any more (everything written was flushed).
    fn settle(&mut self) {
        self.timer = None;
        self.moved = 0;
    }
}

/// A connection's socket with a minimum rate for writing: a client that
/// stops reading (or reads a byte now and then) fails the write, which ends
/// the connection.
#[derive(Debug)]
pub struct PacedIo<T> {
    inner: T,
    send: Window,
    /// Told what the socket took and whether data waits (connection.rs).
    activity: Option<Arc<Activity>>,
}

impl<T> PacedIo<T> {
    /// Wraps `inner` with a minimum send rate.
    pub fn new(inner: T, send: MinRate) -> Self {
        Self {
            inner,
            send: Window::new(send),
            activity: None,
        }
    }

    /// Reports writes to the connection's [`Activity`].
    pub(super) fn reporting_to(mut self, activity: Arc<Activity>) -> Self {
        self.activity = Some(activity);
        self
    }

    fn wrote(&mut self, result: &Poll<std::io::Result<usize>>) {
        if let Some(a) = &self.activity {
            match result {
                Poll::Ready(Ok(n)) => a.sent(*n),
                Poll::Pending => a.set_writing(true),
                Poll::Ready(Err(_)) => {}
            }
        }
        if let Poll::Ready(Ok(n)) = result {
            self.send.moved(*n);
        }
    }

    /// The wrapped socket.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn too_slow<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match result {
            Poll::Pending => match self.send.poll_waiting(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client reads the response below the minimum rate",
                ))),
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PacedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PacedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&result);
        this.too_slow(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&result);
        this.too_slow(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        match result {
            Poll::Ready(Ok(())) => {
                // Everything handed over has left: nothing waits on the client.
                this.send.settle();
                if let Some(a) = &this.activity {
                    a.set_writing(false);
                }
            }
            Poll::Pending => {
                if let Some(a) = &this.activity {
                    a.set_writing(true);
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        this.too_slow(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.too_slow(cx, result)
    }
}

/// The request body arrived below the minimum rate.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived below the minimum rate")]
pub struct BodyTooSlow;

/// A request body with a minimum receive rate.
#[derive(Debug)]
pub struct PacedBody<B> {
    inner: B,
    receive: Window,
}

impl<B> PacedBody<B> {
    /// Wraps `inner` with a minimum receive rate.
    pub fn new(inner: B, receive: MinRate) -> Self {
        Self {
            inner,
            receive: Window::new(receive),
        }
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.receive.moved(data.len());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.receive.settle();
                Poll::Ready(None)
            }
            Poll::Pending => match this.receive.poll_waiting(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyTooSlow.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
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
    use tokio::io::AsyncWriteExt;

    fn rate(bytes_per_second: u64) -> MinRate {
        MinRate {
            bytes_per_second,
            window: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_fails_the_write_after_one_window() {
        let (client, server) = tokio::io::duplex(1024);
        let mut io = PacedIo::new(server, rate(100));
        let started = Instant::now();
        // Fills the pipe, then waits on a client that never reads.
        let err = io.write_all(&[0u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_at_the_rate_is_served() {
        let (mut client, server) = tokio::io::duplex(256);
        let mut io = PacedIo::new(server, rate(100));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 200];
            let mut total = 0;
            // 200 bytes a second: twice the minimum.
            while total < 8192 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                total += client.read(&mut buf).await.unwrap();
            }
            total
        });
        io.write_all(&[0u8; 8192]).await.unwrap();
        io.flush().await.unwrap();
        assert!(reader.await.unwrap() >= 8192);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_fails_and_a_steady_one_arrives() {
        use http_body_util::{BodyExt, StreamBody};
        let trickle = |every: Duration, chunk: usize, chunks: usize| {
            let stream = futures_util::stream::unfold(0, move |n| async move {
                if n == chunks {
                    return None;
                }
                tokio::time::sleep(every).await;
                Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; chunk]))),
                    n + 1,
                ))
            });
            PacedBody::new(StreamBody::new(Box::pin(stream)), rate(100))
        };
        // One byte every 2 s: 5 bytes in the first window, below 1000.
        let slow = trickle(Duration::from_secs(2), 1, 100).collect().await;
        assert!(slow.unwrap_err().is::<BodyTooSlow>());
        // 200 bytes a second for 30 s.
        let steady = trickle(Duration::from_secs(1), 200, 30).collect().await;
        assert_eq!(steady.unwrap().to_bytes().len(), 6000);
    }
}
