//! Stopping a server without failing a client's next request: after the stop signal, a
//! keep-alive connection is still answered during the drain, with `Connection: close`, and only
//! then does the server close idle connections and stop accepting.

use std::{sync::Arc, time::Duration};

use axum::{Router, routing::get};
use platform::{
    config::HttpConfig,
    http::{self, DependencyStatus, Docs, Readiness},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

struct Ready;

#[async_trait::async_trait]
impl Readiness for Ready {
    async fn check(&self) -> Vec<DependencyStatus> {
        Vec::new()
    }
}

fn config(drain: Duration) -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        body_limit_bytes: 1024,
        request_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        shutdown_drain: drain,
    }
}

async fn start(
    drain: Duration,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let config = config(drain);
    let router = Router::new().route("/hola", get(|| async { "hola" }));
    let app = http::app_with_health(router, Docs::Served, Arc::new(Ready), &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, app, stop.clone(), &config));
    (address, stop, server)
}

/// Sends one keep-alive GET on `stream` and reads one answer (its head, and its body by
/// `content-length`). `None` when the connection gives no answer at all.
async fn exchange(stream: &mut TcpStream) -> Option<String> {
    let request = "GET /hola HTTP/1.1\r\nhost: test\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("the server answers or closes within 5 s");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
        let text = String::from_utf8_lossy(&received).to_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if received.len() >= end + 4 + length {
                break;
            }
        }
    }
    (!received.is_empty()).then(|| String::from_utf8_lossy(&received).to_lowercase())
}

#[tokio::test]
async fn a_keep_alive_connection_is_answered_while_draining_then_closed() {
    let (address, stop, server) = start(Duration::from_millis(800)).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let first = exchange(&mut stream)
        .await
        .expect("an answer before stopping");
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert!(!first.contains("connection: close"), "{first}");

    stop.cancel();
    // The connection is idle when the stop comes; its client writes a moment later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = exchange(&mut stream)
        .await
        .expect("an idle keep-alive connection is still answered while draining");
    assert!(during.starts_with("http/1.1 200"), "{during}");
    assert!(
        during.contains("connection: close"),
        "the answer tells the client to close: {during}"
    );
    // ... and the server closes it after that answer.
    let mut rest = [0u8; 16];
    let after = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut rest))
        .await
        .expect("the server closes the connection after its last answer");
    assert!(matches!(after, Ok(0) | Err(_)), "{after:?}");

    // A connection opened during the drain is served too, and told to close.
    let mut late = TcpStream::connect(address).await.unwrap();
    let answer = exchange(&mut late).await.expect("served while draining");
    assert!(answer.contains("connection: close"), "{answer}");

    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("the server stops once drained")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(address).await.is_err(),
        "no new connection once stopped"
    );
}

#[tokio::test]
async fn without_a_drain_an_idle_connection_is_closed_at_once() {
    // The behaviour the drain exists to avoid, shown on the same server with a zero drain:
    // the idle connection is gone by the time its client writes.
    let (address, stop, server) = start(Duration::ZERO).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    assert!(exchange(&mut stream).await.is_some());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("stops at once")
        .unwrap()
        .unwrap();
    assert_eq!(exchange(&mut stream).await, None);
}
