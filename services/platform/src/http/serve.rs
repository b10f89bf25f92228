//! The accept loop every service runs: one task per connection, hyper's HTTP/1 with a header
//! read timeout and a header size limit, a cap on open connections (per process and per client
//! address), and a stop that drains before it closes.
//!
//! `axum::serve` installs no timer in hyper, so a connection that sends nothing, or its headers
//! a byte a minute, was held open forever, and it has no connection limit: a few thousand such
//! connections would have used up the process's file descriptors.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::{Layer, ServiceExt};
use tracing::Instrument;

use super::{App, Problem};
use crate::{
    config::{ConnectionLimits, HttpConfig},
    telemetry,
};

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains and stops.
///
/// Stopping has two steps. For `config.shutdown_drain`, every connection is still served, each
/// answer with `Connection: close`, so a client that is using its keep-alive connection gets
/// one last answer and a clean close. Then new connections are refused, idle ones are closed
/// and in-flight requests may finish, within `config.shutdown_grace` counted from the start.
/// Without the drain, an idle keep-alive connection closed at the moment its client writes a
/// request fails that request with nothing the client can tell apart from a crash mid-request,
/// which is what a rolling update under load showed (a payment sent without an
/// `Idempotency-Key` cannot be retried safely).
///
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>` (the collector records the
/// client's IP; the gateway passes it on in `X-Forwarded-For`).
pub fn serve(
    listener: TcpListener,
    app: App,
    shutdown: CancellationToken,
    config: &HttpConfig,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let server = Server {
        limits: config.connections,
        drain: config.shutdown_drain,
        grace: config.shutdown_grace,
    };
    server.run(listener, app, shutdown)
}

struct Server {
    limits: ConnectionLimits,
    drain: Duration,
    grace: Duration,
}

impl Server {
    async fn run(
        self,
        listener: TcpListener,
        app: App,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let address = listener.local_addr()?;
        tracing::info!(%address, limits = ?self.limits, "listening");
        let draining = Arc::new(AtomicBool::new(false));
        let app = connection_close_while(draining.clone(), app);
        let stop_accepting = {
            let (shutdown, drain) = (shutdown.clone(), self.drain);
            async move {
                shutdown.cancelled().await;
                draining.store(true, Ordering::Relaxed);
                tracing::info!(
                    ?drain,
                    "stopping: answers carry Connection: close while draining"
                );
                tokio::time::sleep(drain).await;
            }
        };
        let connections = TaskTracker::new();
        let close_idle = CancellationToken::new();
        let accepting =
            self.accept_until(listener, &app, &connections, &close_idle, stop_accepting);
        accepting.await;
        // Idle connections close now; a connection busy with a request closes after its answer.
        close_idle.cancel();
        connections.close();
        tokio::select! {
            () = connections.wait() => {}
            () = async { shutdown.cancelled().await; tokio::time::sleep(self.grace.max(self.drain)).await } => {
                tracing::warn!(grace = ?self.grace, "in-flight requests did not finish within the grace period");
            }
        }
        Ok(())
    }

    async fn accept_until(
        &self,
        listener: TcpListener,
        app: &Served,
        connections: &TaskTracker,
        close_idle: &CancellationToken,
        stop: impl Future<Output = ()>,
    ) {
        let max_connections = self.limits.max_connections.max(1);
        let capacity = Arc::new(tokio::sync::Semaphore::new(max_connections));
        let per_client = PerClient::new(self.limits.max_connections_per_client);
        let mut stop = std::pin::pin!(stop);
        loop {
            let permit = tokio::select! {
                () = &mut stop => return,
                permit = waiting_for_capacity(&capacity, max_connections) => permit,
            };
            let (stream, peer) = tokio::select! {
                () = &mut stop => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => { pause_after_accept_error(&error).await; continue; }
                },
            };
            // Answers are small and written whole: no reason to let Nagle hold them back.
            let _ = stream.set_nodelay(true);
            let slot = per_client.take(peer.ip());
            let connection = Connection {
                stream,
                peer,
                limits: self.limits,
                close_idle: close_idle.clone(),
            };
            let app = app.clone();
            let span = tracing::debug_span!("connection", %peer);
            connections.spawn(
                async move {
                    OPEN_CONNECTIONS.inc();
                    match slot {
                        Some(_slot) => connection.serve(app).await,
                        None => connection.refuse().await,
                    }
                    OPEN_CONNECTIONS.dec();
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}

/// A permit for one more open connection; while there is none the loop stops accepting, and
/// new connections wait in the kernel's queue (the platform's answer to a flood is to slow
/// down, not to fall over).
async fn waiting_for_capacity(
    capacity: &Arc<tokio::sync::Semaphore>,
    max: usize,
) -> tokio::sync::OwnedSemaphorePermit {
    if let Ok(permit) = capacity.clone().try_acquire_owned() {
        return permit;
    }
    tracing::warn!(
        max,
        "every connection slot is taken: new connections wait until one closes"
    );
    CONNECTIONS_REFUSED
        .with_label_values(&["process_limit"])
        .inc();
    capacity
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed")
}

/// A failed `accept` is either one connection's problem (reset before we took it: go on) or the
/// process's (out of file descriptors: pause, or the loop would spin logging the same error).
async fn pause_after_accept_error(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; pausing 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    limits: ConnectionLimits,
    close_idle: CancellationToken,
}

impl Connection {
    fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_header_size(self.limits.max_header_bytes);
        builder
    }

    async fn serve(self, app: Served) {
        let peer = self.peer;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            // Boxed so the connection can be polled without shutting its socket (below).
            Box::pin(app.clone().oneshot(request))
        });
        let mut connection = self
            .http1()
            .serve_connection(TokioIo::new(self.stream), service);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => break result,
                () = self.close_idle.cancelled(), if !closing => {
                    closing = true;
                    std::pin::Pin::new(&mut connection).graceful_shutdown();
                }
            }
        };
        match result {
            Ok(()) => linger(connection.into_parts().io.into_inner()).await,
            Err(error) => record_connection_error(&error),
        }
    }

    /// A client past its connection limit gets one answer, a 503 problem with `Retry-After`,
    /// to whatever it sends first, and the connection is closed: it learns why, and a
    /// well-behaved client waits and reuses the connections it already has.
    async fn refuse(self) {
        CONNECTIONS_REFUSED
            .with_label_values(&["client_limit"])
            .inc();
        tracing::debug!(peer = %self.peer, "connection refused: the client holds too many");
        let max = self.limits.max_connections_per_client;
        let service = hyper::service::service_fn(move |_request: Request<Incoming>| async move {
            let mut response = Problem::unavailable(format!(
                "Demasiadas conexiones abiertas desde esta dirección (máximo {max}); \
                 reutilice las que tiene o reintente más tarde"
            ))
            .into_response();
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok::<_, Infallible>(response)
        });
        let mut builder = self.http1();
        builder.keep_alive(false);
        let connection = builder.serve_connection(TokioIo::new(self.stream), service);
        if let Err(error) = connection.await {
            record_connection_error(&error);
        }
    }
}

/// Closes a connection the way nginx's lingering close does: our side's FIN first, then what
/// the client still sends is read and dropped until it closes too, for at most [`LINGER`] and
/// [`LINGER_BYTES`]. Closing a socket with unread bytes makes the kernel send a reset, and a
/// reset that reaches the client before it has read our last answer destroys that answer: a
/// client still sending a body we refused (413) would see "connection reset" instead. Rare on
/// loopback, common over real networks. A client that closes first costs nothing here.
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discarded = 0;
    let mut buffer = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while discarded < LINGER_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => discarded += read,
            }
        }
    })
    .await;
}

const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// How many connections each client address holds, when that is limited.
#[derive(Clone)]
struct PerClient {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection of a client, counted until dropped.
struct ClientSlot {
    ip: IpAddr,
    open: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
}

impl PerClient {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it holds the most it may.
    fn take(&self, ip: IpAddr) -> Option<ClientSlot> {
        if self.max == 0 {
            return Some(ClientSlot { ip, open: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            ip,
            open: Some(self.open.clone()),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some(open) = &self.open else { return };
        let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The application as each connection runs it.
type Served = tower::util::BoxCloneSyncService<Request, Response, Infallible>;

/// While `draining`, every answer says `Connection: close`.
fn connection_close_while(draining: Arc<AtomicBool>, app: App) -> Served {
    let layer = tower::util::MapResponseLayer::new(move |mut response: Response| {
        if draining.load(Ordering::Relaxed) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    });
    Served::new(layer.layer(app))
}

/// A connection that ended in an error is the client's doing (it went away, sent garbage, or
/// was too slow): counted, logged at DEBUG only, so a scan or an attack cannot fill the log.
fn record_connection_error(error: &hyper::Error) {
    let kind = if error.is_timeout() {
        "header_timeout"
    } else if error.is_parse_too_large() {
        "header_too_large"
    } else if error.is_parse() {
        "malformed"
    } else {
        "io"
    };
    CONNECTION_ERRORS.with_label_values(&[kind]).inc();
    tracing::debug!(kind, %error, "connection ended with an error");
}

static OPEN_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    telemetry::register(
        IntGauge::new("http_open_connections", "HTTP connections open now")
            .expect("a valid metric"),
    )
});

static CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    telemetry::counter_vec(
        "http_connections_limited_total",
        "Connections held back (process_limit: accepting paused) or refused with 503 (client_limit)",
        &["limit"],
    )
});

static CONNECTION_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    telemetry::counter_vec(
        "http_connection_errors_total",
        "Connections closed on a client error: header_timeout, header_too_large, malformed, io",
        &["kind"],
    )
});
