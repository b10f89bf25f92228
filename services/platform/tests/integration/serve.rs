//! The server every service runs (`platform::http::serve`), over raw TCP as a client sees it.
//!
//! Stopping without failing a client's next request: after the stop signal, a keep-alive
//! connection is still answered during the drain, with `Connection: close`, and only then does
//! the server close idle connections and stop accepting.
//!
//! What one client may cost: a connection that sends nothing or sends its headers too slowly is
//! closed after the header read timeout, oversized headers get 431, a client past its connection
//! limit gets a 503 problem while other clients are served, and a flood of connections past the
//! process limit waits its turn instead of failing.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo, routing::get};
use platform::{
    config::{ConnectionLimits, HttpConfig},
    http::{self, DependencyStatus, Docs, Readiness},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_util::sync::CancellationToken;

struct Ready;

#[async_trait::async_trait]
impl Readiness for Ready {
    async fn check(&self) -> Vec<DependencyStatus> {
        Vec::new()
    }
}

fn config(drain: Duration, connections: ConnectionLimits) -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        body_limit_bytes: 1024,
        request_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        shutdown_drain: drain,
        connections,
    }
}

async fn start(
    drain: Duration,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    start_with(drain, ConnectionLimits::default()).await
}

async fn start_with(
    drain: Duration,
    connections: ConnectionLimits,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let config = config(drain, connections);
    let router = Router::new()
        .route(
            "/hola",
            get(|| async { "hola" }).post(|body: String| async move { body }),
        )
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
    let app = http::app_with_health(router, Docs::Served, Arc::new(Ready), &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, app, stop.clone(), &config));
    (address, stop, server)
}

/// A connection to `server` from the loopback address `from` (127.0.0.1, 127.0.0.2, ...: each
/// is a different client to the server).
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

const GET_HOLA: &str = "GET /hola HTTP/1.1\r\nhost: test\r\n\r\n";

/// Sends one keep-alive GET on `stream` and reads one answer (its head, and its body by
/// `content-length`). `None` when the connection gives no answer at all.
async fn exchange(stream: &mut TcpStream) -> Option<String> {
    send(stream, GET_HOLA.as_bytes()).await
}

/// Writes `request` and reads one answer, lower-cased. `None` when the connection gives no
/// answer at all (closed, reset, or nothing within 5 s).
async fn send(stream: &mut TcpStream, request: &[u8]) -> Option<String> {
    if stream.write_all(request).await.is_err() {
        return None;
    }
    read_answer(stream, Duration::from_secs(5)).await
}

async fn read_answer(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let Ok(read) = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await else {
            break;
        };
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

/// Whether the server closes `stream` within `within` (EOF or reset), reading and discarding
/// anything it sends first.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn limits(adjust: impl FnOnce(&mut ConnectionLimits)) -> ConnectionLimits {
    let mut limits = ConnectionLimits::default();
    adjust(&mut limits);
    limits
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

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let timeout = Duration::from_millis(400);
    let (address, _stop, _server) =
        start_with(Duration::ZERO, limits(|l| l.header_read_timeout = timeout)).await;
    let mut silent = TcpStream::connect(address).await.unwrap();
    let started = std::time::Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a silent connection is closed"
    );
    let held = started.elapsed();
    assert!(held >= timeout, "not before the timeout: {held:?}");
}

#[tokio::test]
async fn headers_sent_a_line_at_a_time_slower_than_the_timeout_are_cut_off() {
    let (address, _stop, _server) = start_with(
        Duration::ZERO,
        limits(|l| l.header_read_timeout = Duration::from_millis(500)),
    )
    .await;
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /hola HTTP/1.1\r\nhost: test\r\n")
        .await
        .unwrap();
    // A slowloris: a header line every 100 ms, never the blank line that ends the head.
    let mut cut_off = false;
    for line in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow
            .write_all(format!("x-slow-{line}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            cut_off = true;
            break;
        }
    }
    let answer = read_answer(&mut slow, Duration::from_secs(2)).await;
    assert!(
        cut_off || !answer.as_deref().unwrap_or("").contains(" 200 "),
        "the request was never served: {answer:?}"
    );
    assert!(
        cut_off || closed_within(&mut slow, Duration::from_secs(2)).await,
        "and the connection is closed"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_stays_open_between_requests_until_the_idle_limit() {
    let (address, _stop, _server) = start_with(
        Duration::ZERO,
        limits(|l| l.header_read_timeout = Duration::from_millis(800)),
    )
    .await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    for _ in 0..3 {
        let answer = exchange(&mut stream).await.expect("answered");
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        // Well within the limit: the same connection serves the next request.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "an idle connection is closed after the limit"
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_headers_within_the_limit_are_served() {
    let (address, _stop, _server) =
        start_with(Duration::ZERO, limits(|l| l.max_header_bytes = 8 * 1024)).await;
    let request = |padding: usize| {
        format!(
            "GET /hola HTTP/1.1\r\nhost: test\r\nx-padding: {}\r\n\r\n",
            "a".repeat(padding)
        )
    };
    let mut within = TcpStream::connect(address).await.unwrap();
    let answer = send(&mut within, request(6 * 1024).as_bytes())
        .await
        .unwrap();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");

    let mut oversized = TcpStream::connect(address).await.unwrap();
    let answer = send(&mut oversized, request(64 * 1024).as_bytes()).await;
    let answer = answer.expect("an answer, not a silent close");
    assert!(answer.starts_with("http/1.1 431"), "{answer}");
    assert!(closed_within(&mut oversized, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_it_is_read() {
    let (address, _stop, _server) = start(Duration::ZERO).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    // Announces a gigabyte and sends none of it: the answer must not wait for the body.
    let answer = send(
        &mut stream,
        b"POST /hola HTTP/1.1\r\nhost: test\r\ncontent-type: text/plain\r\ncontent-length: 1000000000\r\n\r\n",
    )
    .await
    .expect("answered at once");
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    // The body was never read, so the connection cannot serve another request: say so.
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);

    // A body read to its end leaves the connection open for the next request.
    let mut kept = TcpStream::connect(address).await.unwrap();
    let answer = send(
        &mut kept,
        b"POST /hola HTTP/1.1\r\nhost: test\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(!answer.contains("connection: close"), "{answer}");
    assert!(
        exchange(&mut kept)
            .await
            .is_some_and(|a| a.starts_with("http/1.1 200"))
    );
}

#[tokio::test]
async fn a_client_past_its_connection_limit_gets_503_while_other_clients_are_served() {
    let (address, _stop, _server) =
        start_with(Duration::ZERO, limits(|l| l.max_connections_per_client = 3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from("127.0.0.1", address).await;
        let answer = exchange(&mut stream).await.unwrap();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        held.push(stream);
    }
    let mut fourth = connect_from("127.0.0.1", address).await;
    let answer = exchange(&mut fourth)
        .await
        .expect("a refusal that says why");
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await);

    // Another client is not affected, and handlers still see who is calling.
    let mut other = connect_from("127.0.0.2", address).await;
    let answer = send(&mut other, b"GET /peer HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.ends_with("127.0.0.2"), "{answer}");

    // Once the first client closes a connection, it may open another.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut stream = connect_from("127.0.0.1", address).await;
        let answer = exchange(&mut stream).await.unwrap();
        if answer.starts_with("http/1.1 200") {
            again = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a freed slot is given back");
}

#[tokio::test]
async fn past_the_process_limit_new_connections_wait_for_a_free_slot() {
    let (address, _stop, _server) =
        start_with(Duration::ZERO, limits(|l| l.max_connections = 2)).await;
    let mut first = TcpStream::connect(address).await.unwrap();
    let mut second = TcpStream::connect(address).await.unwrap();
    assert!(exchange(&mut first).await.is_some());
    assert!(exchange(&mut second).await.is_some());

    let mut third = TcpStream::connect(address).await.unwrap();
    third.write_all(GET_HOLA.as_bytes()).await.unwrap();
    assert_eq!(
        read_answer(&mut third, Duration::from_millis(500)).await,
        None,
        "not served while both slots are taken"
    );
    drop(first);
    let answer = read_answer(&mut third, Duration::from_secs(5))
        .await
        .expect("served once a slot is free");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    // The queued connection lost nothing: it is served again on the same connection.
    assert!(exchange(&mut second).await.is_some());
}

#[tokio::test]
async fn a_flood_of_connections_from_one_client_is_served_in_turn() {
    let (address, _stop, _server) =
        start_with(Duration::ZERO, limits(|l| l.max_connections = 16)).await;
    let clients = (0..400).map(|_| async move {
        let mut stream = TcpStream::connect(address).await.ok()?;
        send(
            &mut stream,
            b"GET /hola HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
        )
        .await
    });
    let answers = futures::future::join_all(clients).await;
    let served = answers
        .iter()
        .filter(|a| a.as_deref().is_some_and(|a| a.starts_with("http/1.1 200")))
        .count();
    assert_eq!(served, 400, "every connection is answered, 16 at a time");
}

#[tokio::test]
async fn a_client_that_sent_a_refused_body_loses_none_of_its_next_requests() {
    let (address, _stop, _server) = start(Duration::ZERO).await;
    let client = reqwest::Client::new();
    let body = vec![b'a'; 2 << 20];
    // Each 413 leaves a connection with an unread body, which the server closes; the client
    // must not reuse it for the request after.
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let refused = client
            .post(format!("http://{address}/hola"))
            .header("content-type", "text/plain")
            .body(body.clone())
            .send()
            .await;
        let next = client.get(format!("http://{address}/hola")).send().await;
        for answer in [refused, next] {
            outcomes.push(match answer {
                Ok(answer) => answer.status().as_u16().to_string(),
                Err(error) => format!("{error:?}"),
            });
        }
    }
    let expected: Vec<String> = ["413", "200"]
        .repeat(20)
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(outcomes, expected);
}
