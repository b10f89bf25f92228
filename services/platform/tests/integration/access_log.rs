//! The access log costs nothing at the default level: a served request writes no line under
//! `info` (the metrics count it), one line under `access=debug`, and a server error is logged
//! whatever the access setting.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use platform::{
    config::HttpConfig,
    http::{self, DependencyStatus, Docs, Readiness},
};
use tower::ServiceExt;
use tracing::instrument::WithSubscriber;

/// Ready or not, as the test says.
struct Ready(bool);

#[async_trait::async_trait]
impl Readiness for Ready {
    async fn check(&self) -> Vec<DependencyStatus> {
        let state = if self.0 {
            Ok("up".to_owned())
        } else {
            Err("starting".to_owned())
        };
        vec![DependencyStatus::from_result("database", true, state)]
    }
}

/// Every formatted line, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// Serves `GET path` once under a subscriber with `filter` and returns the lines written.
async fn serve_once(filter: &str, path: &str) -> Vec<serde_json::Value> {
    serve_once_with(filter, path, true).await
}

async fn serve_once_with(filter: &str, path: &str, ready: bool) -> Vec<serde_json::Value> {
    let config = HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        body_limit_bytes: 1024,
        request_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        shutdown_drain: Duration::ZERO,
        connections: platform::config::ConnectionLimits::default(),
    };
    let router = Router::new()
        .route("/hola", get(|| async { "hola" }))
        .route(
            "/roto",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "roto") }),
        );
    let app = http::app_with_health(router, Docs::Served, Arc::new(Ready(ready)), &config);
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .finish();
    let request = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .unwrap();
    app.oneshot(request)
        .with_subscriber(subscriber)
        .await
        .unwrap();
    captured.lines()
}

#[tokio::test]
async fn a_request_writes_no_line_at_info_and_one_with_access_debug() {
    assert_eq!(
        serve_once("info", "/hola").await,
        Vec::<serde_json::Value>::new()
    );

    let lines = serve_once("info,access=debug", "/hola").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["target"], "access");
    assert_eq!(lines[0]["fields"]["status"], 200);
    assert!(lines[0]["fields"]["latency_us"].as_u64().is_some());
    assert_eq!(
        lines[0]["span"]["path"], "/hola",
        "inside the request's span"
    );
}

#[tokio::test]
async fn a_server_error_is_logged_at_the_default_level_but_not_ready_is_not_an_error() {
    let lines = serve_once("info", "/roto").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "ERROR");
    assert_eq!(lines[0]["fields"]["status"], 500);

    // A probe of a starting service answers 503 every 100 ms: that is its state, not a failure.
    assert_eq!(
        serve_once_with("info", "/ready", false).await,
        Vec::<serde_json::Value>::new()
    );
    let lines = serve_once_with("info,access=debug", "/ready", false).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["fields"]["status"], 503);
    assert_eq!(lines[0]["level"], "DEBUG");
}
