//! Serving: the accept loop over plain TCP or TLS (rustls with ring), one hyper HTTP/1.1
//! connection per client, each request carrying its peer address (axum's `ConnectInfo`), within
//! [`Limits`]: a time for each request head, for a keep-alive connection's silence and for each
//! request, and a cap on the connections served at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::error::AppError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one client may take of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a request head: from the connection's start (after the TLS handshake, which
    /// has as long), or on a keep-alive connection from the head's first byte.
    pub header_timeout: Duration,
    /// Time a keep-alive connection may wait, silent, for its next request.
    pub idle_timeout: Duration,
    /// Time to read a request (its body included) and answer it; then 408 and the connection
    /// is closed.
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// Open files kept beyond the connections: the listener, Redis, logs, the runtime.
const SPARE_FILES: libc::rlim_t = 64;

/// The connection cap this process can keep. Like Redis for maxclients: when the soft limit of
/// open files (`ulimit -n`) is below `wanted` + 64, it is raised, up to the hard limit; when it
/// still is, the cap is lowered to the soft limit - 64 (at least 1), with a warning.
pub fn fit_open_files(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = io::Error::last_os_error();
        tracing::warn!(%error, "cannot read the open files limit (ulimit -n)");
        return wanted;
    }
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    let mut usable = soft;
    if let Some(raised) = raised_soft_limit(wanted, soft, hard) {
        let new = libc::rlimit {
            rlim_cur: raised,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            tracing::info!(
                from = soft,
                to = raised,
                "raised the open files limit (ulimit -n)"
            );
            usable = raised;
        } else {
            let error = io::Error::last_os_error();
            tracing::warn!(%error, "cannot raise the open files limit (ulimit -n)");
        }
    }
    let cap = cap_within(wanted, usable);
    if cap < wanted {
        tracing::warn!(
            "--max-connections lowered from {wanted} to {cap}: the open files limit (ulimit -n) \
             is {usable} (hard limit {hard}) and {SPARE_FILES} files are kept for the rest"
        );
    }
    cap
}

/// The soft limit to ask for, if the current one is too low for `wanted` connections and the
/// hard limit lets it rise.
fn raised_soft_limit(
    wanted: usize,
    soft: libc::rlim_t,
    hard: libc::rlim_t,
) -> Option<libc::rlim_t> {
    let needed = (wanted as libc::rlim_t).saturating_add(SPARE_FILES);
    (soft < needed && soft < hard).then(|| needed.min(hard))
}

/// The connections a soft limit of open files leaves room for, at most `wanted`, at least 1.
fn cap_within(wanted: usize, soft: libc::rlim_t) -> usize {
    let room = usize::try_from(soft.saturating_sub(SPARE_FILES)).unwrap_or(usize::MAX);
    wanted.min(room).max(1)
}

/// A TLS server configuration from PEM files: the certificate chain and its private key.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, BoxError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` within `limits` until the task is dropped; HTTPS if `tls` is
/// given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<ServerConfig>>,
    limits: Limits,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    loop {
        // A slot before accepting: beyond the cap, clients wait in the kernel's listen backlog.
        // The semaphore is never closed: the error arm ends nothing but this loop's wait.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = accept(&listener).await;
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => connection(stream, peer, app, limits).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(limits.header_timeout, handshake).await {
                        Ok(Ok(tls)) => connection(tls, peer, app, limits).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection until the client or a limit ends it.
async fn connection<S>(stream: S, peer: SocketAddr, app: Router, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Tracked {
        io: stream,
        activity: Arc::clone(&activity),
    });
    let timer = HeadTimer {
        activity: Arc::clone(&activity),
        limits,
    };
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(peer));
        let answer = app.clone().oneshot(request.map(Body::new));
        async move {
            match tokio::time::timeout(limits.request_timeout, answer).await {
                Ok(answered) => answered,
                Err(_) => {
                    tracing::debug!(%peer, "request timed out");
                    Ok(request_timeout(limits.request_timeout))
                }
            }
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(timer)
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        // A head not read in time included (hyper closes without answering).
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// `408 Request Timeout` as a problem like the gateway's others, closing the connection (the
/// rest of the request may still be on its way).
fn request_timeout(limit: Duration) -> Response {
    AppError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request-timeout",
        format!("the request was not received and answered within {limit:?}"),
    )
    .header(header::CONNECTION, HeaderValue::from_static("close"))
    .into_response()
}

/// What a connection's stream and its head timer share.
#[derive(Default)]
struct Activity {
    /// Request heads read so far.
    requests: AtomicU64,
    next: Mutex<Next>,
}

/// The first byte of a keep-alive connection's next request.
#[derive(Clone, Copy, Default)]
enum Next {
    /// Not watched for.
    #[default]
    Off,
    /// Watched for, not read yet.
    Awaited,
    /// Read at this instant.
    Read(Instant),
}

impl Activity {
    fn next(&self) -> std::sync::MutexGuard<'_, Next> {
        self.next.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes were read.
    fn read(&self) {
        let mut next = self.next();
        if let Next::Awaited = *next {
            *next = Next::Read(Instant::now());
        }
    }
}

/// hyper's header read timer, with one change. hyper (1.x, `proto/h1/conn.rs`) starts it each
/// time it begins waiting for a request head: when the connection is first polled, and on a
/// keep-alive connection as soon as the previous response is written, not at the next
/// request's first byte; when it fires, hyper ends the connection without answering. On a new
/// connection it keeps hyper's deadline (the header timeout); on a keep-alive one, the next
/// request may take the idle timeout to start, and from its first byte its head has the header
/// timeout (otherwise any keep-alive connection would close after the header timeout).
struct HeadTimer {
    activity: Arc<Activity>,
    limits: Limits,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        let keep_alive = self.activity.requests.load(Ordering::Relaxed) > 0;
        let deadline = if keep_alive {
            *self.activity.next() = Next::Awaited;
            Instant::now() + self.limits.idle_timeout
        } else {
            Instant::from_std(deadline)
        };
        Box::pin(HeadSleep {
            activity: Arc::clone(&self.activity),
            header_timeout: self.limits.header_timeout,
            idle: keep_alive,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        })
    }
}

/// The wait for one request head (hyper polls it whenever the head is still incomplete).
struct HeadSleep {
    activity: Arc<Activity>,
    header_timeout: Duration,
    /// Waiting for a keep-alive connection's next request to start.
    idle: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.idle {
            let mut next = this.activity.next();
            if let Next::Read(at) = *next {
                *next = Next::Off;
                this.idle = false;
                this.sleep.as_mut().reset(at + this.header_timeout);
            }
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl Sleep for HeadSleep {}

/// A connection's stream, telling its activity of each read.
struct Tracked<S> {
    io: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_then_the_cap_lowered() {
        // Enough already, or infinite: untouched.
        assert_eq!(raised_soft_limit(1024, 1088, 1088), None);
        assert_eq!(
            raised_soft_limit(1024, libc::RLIM_INFINITY, libc::RLIM_INFINITY),
            None
        );
        // Too low: raised to what is needed, or to the hard limit.
        assert_eq!(raised_soft_limit(1024, 1024, 524_288), Some(1088));
        assert_eq!(raised_soft_limit(1024, 256, 512), Some(512));
        assert_eq!(raised_soft_limit(1024, 512, 512), None);
        // The cap: what the soft limit leaves beyond 64 files, at least 1.
        assert_eq!(cap_within(1024, 1088), 1024);
        assert_eq!(cap_within(1024, 512), 448);
        assert_eq!(cap_within(1024, 64), 1);
        assert_eq!(cap_within(1024, libc::RLIM_INFINITY), 1024);
    }
}
