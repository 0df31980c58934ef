//! The socket side of `causeflow serve`: an HTTP/1.1 server that is safe to leave open to the
//! internet (docs/security.md). `axum::serve` runs hyper without timers, so a client that
//! trickles a header line now and then holds its socket for ever; here every connection is
//! bounded in time (header read, whole request, idle keep-alive) and in number (a cap with
//! back-off, never an accept error loop).
//!
//! The Lambda host does not use this: API Gateway owns the sockets there.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::ApiError;

/// Time and count bounds of the listener; every one configurable (`causeflow serve --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// From a request's first byte (or from accept, for a connection's first request) to its
    /// last header line.
    pub header_timeout: Duration,
    /// From the end of the headers to the end of the body (408 beyond, nothing recorded). The
    /// whole answer is bounded at twice this (503 beyond, which senders retry).
    pub request_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once; beyond it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            // What senders need is a few hundred milliseconds; these leave room for slow
            // networks and still free a stuck socket quickly.
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// File descriptors kept free for everything but client sockets (the database, its readers,
/// outbound HTTPS, logs).
pub const RESERVED_FDS: usize = 64;

impl ServerLimits {
    /// Refuses settings that cannot work (checked once at start, before binding).
    pub fn validate(&self) -> Result<(), String> {
        for (name, d) in [
            ("--header-timeout", self.header_timeout),
            ("--request-timeout", self.request_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(format!(
                    "{name} {d:?}: use a duration from 1ms to 1h, e.g. 10s"
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(format!(
                "--max-connections {}: use 1 to 1000000",
                self.max_connections
            ));
        }
        Ok(())
    }
}

/// Raises the soft open-files limit to the hard limit and returns the soft limit in force, so
/// that the connection cap, not the default 1024 descriptors, is what bounds the server. Where
/// the raise is refused (some systems cap it below an unlimited hard limit), the current limit
/// stands.
#[cfg(unix)]
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            warn!(error = %io::Error::last_os_error(), soft = %lim.rlim_cur,
                  "could not raise the open-files limit; keeping it");
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
    Ok(lim.rlim_cur as u64)
}

/// Non-unix hosts keep their limit.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> io::Result<u64> {
    Ok(u64::MAX)
}

/// Where one connection stands, for its watchdog.
const IDLE: u8 = 0;
const READING_HEAD: u8 = 1;
const IN_REQUEST: u8 = 2;

/// The watchdog's shortest sleep while it cannot see a deadline (`Phase::next_check`).
const MIN_LOOK: Duration = Duration::from_millis(10);

/// A connection's phase and when it began; shared by the socket wrapper (which sees bytes), the
/// service (which sees requests start and end) and the watchdog (which enforces the bounds).
///
/// A phase change does not wake the watchdog: that was three wake-ups and three timer re-arms
/// per request. The watchdog instead never sleeps past "now + the shortest bound" while it
/// cannot see a deadline (`Phase::next_check`), and any phase that begins after a check ends
/// no sooner than that, so no bound is enforced late.
struct Phase {
    state: AtomicU8,
    /// When the phase began, in nanoseconds after `origin`.
    since: AtomicU64,
    origin: Instant,
}

impl Phase {
    fn new(state: u8) -> Self {
        Phase {
            state: AtomicU8::new(state),
            since: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn set(&self, state: u8) {
        let nanos = self.origin.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        // `since` before `state`: a reader that sees the new state sees its start, or a later one.
        self.since.store(nanos, Ordering::Release);
        self.state.store(state, Ordering::Release);
    }

    /// When the current phase runs out, if it can.
    fn deadline(&self, limits: &ServerLimits) -> Option<Instant> {
        let state = self.state.load(Ordering::Acquire);
        let since = self.origin + Duration::from_nanos(self.since.load(Ordering::Acquire));
        match state {
            IDLE => Some(since + limits.idle_timeout),
            READING_HEAD => Some(since + limits.header_timeout),
            // The service bounds a request itself, answering 408.
            _ => None,
        }
    }

    /// When the watchdog looks again: the current phase's deadline, but no later than the
    /// shortest bound from now, since a phase beginning now would end then at the soonest.
    /// Never sooner than [`MIN_LOOK`] from now, so bounds of a few milliseconds cannot make
    /// every connection wake that often; such bounds are then enforced up to that much late.
    fn next_check(&self, limits: &ServerLimits, now: Instant) -> Instant {
        let soonest = now + limits.header_timeout.min(limits.idle_timeout).max(MIN_LOOK);
        self.deadline(limits).map_or(soonest, |d| d.min(soonest))
    }
}

/// Marks the connection idle when dropped (with the body of a streamed response).
struct IdleOnDrop(Arc<Phase>);

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        self.0.set(IDLE);
    }
}

/// The TCP stream, noting the first byte of each request.
struct Watched {
    inner: TcpStream,
    phase: Arc<Phase>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.phase.state.load(Ordering::SeqCst) == IDLE {
            self.phase.set(READING_HEAD);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then stops
/// accepting, lets in-flight requests finish (each is bounded by the request timeout) and
/// returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut stop = stop_rx.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        // At the cap, stop accepting: new connections wait in the backlog, not in an error loop.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                let (router, stop) = (router.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    connection(stream, router, limits, stop).await;
                    drop(permit);
                });
            }
            // A connection that died in the backlog: nothing to do.
            Err(e) if is_per_connection(&e) => debug!(error = %e, "accept"),
            Err(e) => {
                // Out of descriptors or memory: back off, and let closing connections free some.
                warn!(error = %e, backoff_ms = backoff.as_millis() as u64,
                      "accepting a connection failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listener);
    // Every connection holds a permit until it closes.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection: hyper's HTTP/1.1 with the watchdog beside it.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
) {
    // A new connection owes its first request's head at once: the header timeout runs from
    // accept, so a socket that sends nothing is freed as fast as one that trickles.
    let phase = Arc::new(Phase::new(READING_HEAD));
    let io = TokioIo::new(Watched {
        inner: stream,
        phase: phase.clone(),
    });
    let service_phase = phase.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (router, phase) = (router.clone(), service_phase.clone());
        async move {
            phase.set(IN_REQUEST);
            // The body read answers 408 itself (http::webhook). This outer bound catches an
            // answer that hangs after it; the alert may have been recorded by then, so the
            // answer is a 503, which senders retry and which then meets the record as a 409.
            let answered = tokio::time::timeout(
                limits.request_timeout * 2,
                router.oneshot(req.map(Body::new)),
            )
            .await;
            let resp = match answered {
                Ok(Ok(resp)) => resp,
                Ok(Err(never)) => match never {},
                Err(_) => too_slow(),
            };
            // An event stream (the console's live Incidents page) is a response that is still
            // being written: the connection is not idle until it ends. The stream bounds its own
            // life and ends when the server shuts down.
            let streaming = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            if !streaming {
                phase.set(IDLE);
                return Ok::<_, Infallible>(resp);
            }
            let idle_at_end = IdleOnDrop(phase);
            Ok(resp.map(move |body| {
                use http_body_util::BodyExt;
                Body::new(body.map_frame(move |f| {
                    let _ = &idle_at_end;
                    f
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog below bounds the header read from the request's first byte; hyper's own
    // timer would start at connection idle instead and cut keep-alive at the header timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    let mut check = phase.next_check(&limits, Instant::now());
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(check) => {
                let now = Instant::now();
                if phase.deadline(&limits).is_some_and(|d| d <= now) {
                    debug!(phase = phase.state.load(Ordering::SeqCst), "connection timed out");
                    return;
                }
                check = phase.next_check(&limits, now);
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The answer of a request that outlasted its bound; the connection is closed after it.
fn too_slow() -> axum::response::Response {
    let mut resp = ApiError::Unavailable(
        "The request took too long to answer; retry it (if it was recorded meanwhile, the retry \
         is answered as a duplicate)."
            .into(),
    )
    .into_response();
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchdog is not woken by phase changes, so it must never sleep past a deadline that
    /// a phase beginning after its look could have.
    #[test]
    fn the_watchdog_never_sleeps_past_a_deadline_it_cannot_see() {
        let limits = ServerLimits::default(); // header 10 s, idle 60 s
        let shortest = limits.header_timeout;
        let p = Phase::new(READING_HEAD);
        let start = p.origin;
        // Reading a head: its own deadline.
        assert_eq!(p.next_check(&limits, start), start + limits.header_timeout);
        // Idle: a head may begin any moment, so it looks again after the shortest bound, not
        // at the idle deadline; the idle deadline itself is enforced when it comes.
        p.set(IDLE);
        let idle_since = p.origin + Duration::from_nanos(p.since.load(Ordering::Acquire));
        let now = idle_since + Duration::from_secs(1);
        assert_eq!(p.next_check(&limits, now), now + shortest);
        let late = idle_since + limits.idle_timeout - Duration::from_secs(1);
        assert_eq!(
            p.next_check(&limits, late),
            idle_since + limits.idle_timeout
        );
        assert!(p
            .deadline(&limits)
            .is_some_and(|d| d <= idle_since + limits.idle_timeout));
        // In a request: no deadline of its own (the service bounds it), but it may end any
        // moment.
        p.set(IN_REQUEST);
        assert_eq!(p.deadline(&limits), None);
        assert_eq!(p.next_check(&limits, now), now + shortest);
        // With the idle bound the shorter one, the same holds with it.
        let tight = ServerLimits {
            idle_timeout: Duration::from_secs(2),
            ..ServerLimits::default()
        };
        assert_eq!(p.next_check(&tight, now), now + tight.idle_timeout);
        // Bounds of a millisecond: it looks every MIN_LOOK, not every millisecond.
        let tiny = ServerLimits {
            header_timeout: Duration::from_millis(1),
            idle_timeout: Duration::from_millis(1),
            ..ServerLimits::default()
        };
        assert_eq!(p.next_check(&tiny, now), now + MIN_LOOK);
    }
}
