//! The proxy's retry rules against backends whose answers the test controls: a failing
//! backend (503, or a closed port) and a healthy one that counts what reaches it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::any};
use campaigns_proxy::{Backend, Pool};
use testkit::{call, http_config};

/// A backend that answers every request with `status` and counts the hits (its `/ready` is
/// fine, so only the requests themselves fail).
async fn backend(status: StatusCode) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/ready", any(|| async { "ok" }))
        .fallback(any(
            |State((hits, status)): State<(Arc<AtomicUsize>, StatusCode)>,
             request: axum::extract::Request| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                (status, format!("{} {}", request.method(), request.uri()))
            },
        ))
        .with_state((hits.clone(), status));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

fn proxy(backends: &[&str]) -> (platform::http::App, Arc<Pool>) {
    let list = backends
        .iter()
        .enumerate()
        .map(|(i, url)| Backend::new(if i == 0 { "primary" } else { "replica" }, url))
        .collect();
    let pool = Arc::new(
        Pool::new(
            list,
            Duration::from_secs(60),
            Duration::from_millis(200),
            2,
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    (campaigns_proxy::app(pool.clone(), &http_config()), pool)
}

#[tokio::test]
async fn a_503_is_retried_elsewhere_only_for_idempotent_requests() {
    let (failing, failing_hits) = backend(StatusCode::SERVICE_UNAVAILABLE).await;
    let (healthy, healthy_hits) = backend(StatusCode::OK).await;
    let (app, _) = proxy(&[&failing, &healthy]);

    let get = call(
        &app,
        "GET",
        "/api/campaigns/x?limit=5&estado=ACTIVE",
        None,
        &[],
    )
    .await;
    assert_eq!(get.status, 200);
    assert_eq!(
        get.body, "GET /campaigns/x?limit=5&estado=ACTIVE",
        "path and query forwarded"
    );
    assert_eq!(
        (
            failing_hits.load(Ordering::SeqCst),
            healthy_hits.load(Ordering::SeqCst)
        ),
        (1, 1)
    );

    let post = call(&app, "POST", "/api/campaigns", Some("{}"), &[]).await;
    assert_eq!(
        post.status, 503,
        "a plain POST may have been applied: not retried"
    );
    assert_eq!(healthy_hits.load(Ordering::SeqCst), 1);

    for headers in [[("idempotency-key", "k-1")], [("if-match", "3")]] {
        let guarded = call(
            &app,
            "PATCH",
            "/api/campaigns/x/budget",
            Some("{}"),
            &headers,
        )
        .await;
        assert_eq!(guarded.status, 200, "{headers:?}");
    }
    assert_eq!(healthy_hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_refused_connection_is_retried_for_any_request_and_takes_the_backend_out() {
    // A port nothing listens on: bind, note it, close it.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (healthy, healthy_hits) = backend(StatusCode::CREATED).await;
    let (app, pool) = proxy(&[&closed, &healthy]);

    let post = call(&app, "POST", "/api/campaigns", Some("{}"), &[]).await;
    assert_eq!(
        post.status, 201,
        "nothing reached the dead backend, so the POST is safe to resend"
    );
    assert_eq!(healthy_hits.load(Ordering::SeqCst), 1);
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.active.as_deref(), Some("replica"));
    assert_eq!(snapshot.total_failovers, 1);

    let status = call(&app, "GET", "/status", None, &[]).await.body;
    assert_eq!(status["proxy"]["active_backend"], "replica");
    assert_eq!(status["failover"]["total_failovers"], 1);
    assert_eq!(status["backends"]["primary"]["ok"], false);
    let health = call(&app, "GET", "/health", None, &[]).await.body;
    assert_eq!(health["service"], "campaigns-proxy");
    assert_eq!(health["active"], "replica");
    assert_eq!(health["backends"]["replica"]["url"], healthy.as_str());
}

#[tokio::test]
async fn with_every_backend_down_the_answer_is_a_503_problem_with_retry_after() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (app, _) = proxy(&[&closed]);
    let answer = call(&app, "GET", "/api/campaigns", None, &[]).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    assert_eq!(answer.headers["retry-after"], "1");
    let ready = call(&app, "GET", "/ready", None, &[]).await;
    assert_eq!(
        ready.status, 503,
        "no healthy backend: the proxy is not ready"
    );
}

#[tokio::test]
async fn a_backend_that_refuses_for_a_moment_is_tried_again_as_a_service_of_many_pods_would_be() {
    // One backend, as in the chart (the campaigns Service): its address refuses connections
    // for a moment (a pod just died behind it), then answers.
    let port = testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let hits = Arc::new(AtomicUsize::new(0));
    let late = {
        let hits = hits.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let app = Router::new().fallback(any(move || {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::CREATED, "created")
                }
            }));
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            axum::serve(listener, app).await.unwrap();
        })
    };
    let (app, _) = proxy(&[&url]);
    let post = call(&app, "POST", "/api/campaigns", Some("{}"), &[]).await;
    assert_eq!(
        post.status, 201,
        "refused connections are retried after a pause, even for a plain POST"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "applied exactly once");
    late.abort();
}

#[tokio::test]
async fn an_idempotent_request_cut_mid_flight_is_sent_again_to_the_same_service() {
    // One backend (a Service): its first connection is cut after the request was read, as
    // when the pod behind it is SIGKILLed; the next connection reaches a live pod.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let server = {
        let connections = connections.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let n = connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = socket.read(&mut buffer).await;
                    if n > 0 {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        })
    };
    let (app, _) = proxy(&[&url]);
    let keyed = call(
        &app,
        "PATCH",
        "/api/campaigns/x/budget",
        Some("{}"),
        &[("idempotency-key", "k-cut")],
    )
    .await;
    assert_eq!(keyed.status, 200, "an idempotent request is sent again");
    assert!(connections.load(Ordering::SeqCst) >= 2);

    let before = connections.load(Ordering::SeqCst);
    connections.store(0, Ordering::SeqCst);
    let plain = call(&app, "POST", "/api/campaigns", Some("{}"), &[]).await;
    assert_eq!(
        plain.status, 502,
        "a plain POST cut mid-flight may have been applied: not sent again"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "sent once (after {before})"
    );
    server.abort();
}
