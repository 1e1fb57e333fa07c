//! Idle timeouts (a route's `idle_timeout_ms`): a streamed body, either way, or an upgraded
//! tunnel that carries no byte for that long is cut, so a stalled upstream or client does not
//! hold a connection, the route's bulkhead and the plan's permits for ever. The timer is armed
//! only when a body actually waits: a body that is ready at once costs nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error an idle body ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no data within the route's idle timeout")
    }
}

impl std::error::Error for IdleTimeout {}

/// Whether an error (or one it was caused by) is an [`IdleTimeout`].
pub fn is_idle_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<IdleTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A body that fails with [`IdleTimeout`] when no frame arrives for `timeout`.
pub struct IdleBody<B> {
    inner: B,
    timeout: Duration,
    /// Armed at the first wait; moved on only when it fires (not per frame).
    sleep: Option<Pin<Box<Sleep>>>,
    last_frame: Instant,
    /// Counted once when the timeout cuts the body.
    cut: metrics::Counter,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, timeout: Duration, cut: metrics::Counter) -> Self {
        IdleBody { inner, timeout, sleep: None, last_frame: Instant::now(), cut }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.last_frame = Instant::now();
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let deadline = this.last_frame + this.timeout;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if Instant::now() >= this.last_frame + this.timeout => {
                        this.cut.increment(1);
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
                    }
                    Poll::Ready(()) => continue,
                }
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

/// One side of a tunnel, stamping the time of every byte read (ms since `epoch`).
pub struct Watched<T> {
    io: T,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    pub fn new(io: T, epoch: Instant, last: Arc<AtomicU64>) -> Self {
        Watched { io, epoch, last }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Resolves once nothing was read from either side (stamped in `last`) for `timeout`.
pub async fn idle_for(epoch: Instant, last: Arc<AtomicU64>, timeout: Duration) {
    loop {
        let stamped = epoch + Duration::from_millis(last.load(Ordering::Relaxed));
        if Instant::now() >= stamped + timeout {
            return;
        }
        tokio::time::sleep_until(stamped + timeout).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_with_the_idle_timeout_and_a_flowing_one_does_not() {
        let (tx, rx) = futures_channel_body();
        let mut body = IdleBody::new(rx, Duration::from_secs(5), metrics::Counter::noop());
        // Frames 3 s apart keep it open: the timeout counts from the last frame.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(3)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
            assert!(body.frame().await.unwrap().is_ok());
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(is_idle_timeout(&*err));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_idle_once_neither_side_reads_for_the_timeout() {
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let watch = tokio::spawn(idle_for(epoch, last.clone(), Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(8)).await;
        last.store(8_000, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(8)).await;
        tokio::task::yield_now().await;
        assert!(!watch.is_finished(), "a byte at 8 s moves the deadline to 18 s");
        tokio::time::advance(Duration::from_secs(3)).await;
        watch.await.unwrap();
    }

    type Chan = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

    /// A body fed by a channel, for the tests.
    fn futures_channel_body() -> (Chan, impl Body<Data = Bytes, Error = BoxError> + Unpin) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        (tx, http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))))
    }
}
