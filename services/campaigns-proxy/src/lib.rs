//! campaigns-proxy (API.md §4.4): forwards `/api/campaigns/*` to `/campaigns/*` on a healthy
//! campaigns backend, health-checks every backend continuously, retries a failed request on
//! another backend when that is safe, and fails back to the primary when it recovers.

mod backends;
mod forward;

use std::{sync::Arc, time::Duration};

use axum::{Json, Router, extract::State, routing::any};
use platform::{
    config::HttpConfig,
    http::{self, DependencyStatus, Readiness},
};
use tokio_util::sync::CancellationToken;

pub use backends::{Backend, Pool};

/// `aeropartners campaigns-proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub http: HttpConfig,
    /// Backends in priority order, `name=url` (the first is the primary).
    #[arg(long = "backend", env = "PROXY_BACKENDS", value_delimiter = ',',
          default_values_t = ["primary=http://127.0.0.1:8001".to_owned(), "replica=http://127.0.0.1:8002".to_owned()])]
    pub backends: Vec<String>,
    /// How often each backend's `/ready` is checked.
    #[arg(long, env = "PROXY_HEALTH_INTERVAL", default_value = "500ms", value_parser = platform::config::parse_duration)]
    pub health_interval: Duration,
    /// Timeout of one health check.
    #[arg(long, env = "PROXY_HEALTH_TIMEOUT", default_value = "400ms", value_parser = platform::config::parse_duration)]
    pub health_timeout: Duration,
    /// Consecutive failed checks (or refused connections) before a backend is taken out.
    #[arg(long, env = "PROXY_MAX_FAILURES", default_value_t = 2)]
    pub max_failures: u32,
    /// Timeout of one forwarded request on one backend.
    #[arg(long, env = "PROXY_UPSTREAM_TIMEOUT", default_value = "10s", value_parser = platform::config::parse_duration)]
    pub upstream_timeout: Duration,
}

impl Config {
    pub fn parse_backends(&self) -> anyhow::Result<Vec<Backend>> {
        self.backends
            .iter()
            .map(|spec| {
                let (name, url) = spec
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("backend `{spec}` must be written name=url"))?;
                Ok(Backend::new(name.trim(), url.trim().trim_end_matches('/')))
            })
            .collect()
    }
}

struct ProxyReadiness(Arc<Pool>);

#[async_trait::async_trait]
impl Readiness for ProxyReadiness {
    async fn check(&self) -> Vec<DependencyStatus> {
        let snapshot = self.0.snapshot();
        let healthy = snapshot.backends.iter().filter(|b| b.ok).count();
        vec![DependencyStatus::from_result(
            "backends",
            true,
            if healthy > 0 {
                Ok(format!("{healthy} of {} healthy", snapshot.backends.len()))
            } else {
                Err("no healthy campaigns backend")
            },
        )]
    }
}

/// The proxy application.
pub fn app(pool: Arc<Pool>, http_config: &HttpConfig) -> http::App {
    // `/health` of API.md §4.4 replaces the platform's plain liveness answer.
    let (own, mut openapi) = utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(health))
        .routes(utoipa_axum::routes!(status))
        .with_state(pool.clone())
        .split_for_parts();
    openapi.info = utoipa::openapi::InfoBuilder::new()
        .title("Aeropartners — campaigns-proxy")
        .version("1.0.0")
        .description(Some(
            "Failover proxy in front of the campaigns instances. `/api/campaigns` and everything \
             under it is passed, with its query string, method, body and headers, to the active \
             instance: that API is the campaigns service's own document.",
        ))
        .build();
    let router = Router::new()
        .route("/api/campaigns", any(forward::forward))
        .route("/api/campaigns/{*rest}", any(forward::forward))
        .with_state(pool.clone())
        .merge(own);
    let readiness = Arc::new(ProxyReadiness(pool));
    http::app_with_health(
        router,
        http::Docs::Static(Box::new(openapi)),
        readiness,
        http_config,
    )
}

/// The proxy's health: healthy while some campaigns instance is active.
#[utoipa::path(get, path = "/health", tag = "proxy",
    responses((status = 200, description = "Status, the active backend and every backend's health", body = Object)))]
async fn health(State(pool): State<Arc<Pool>>) -> Json<serde_json::Value> {
    let snapshot = pool.snapshot();
    Json(serde_json::json!({
        "status": if snapshot.active.is_some() { "healthy" } else { "unhealthy" },
        "service": "campaigns-proxy",
        "backends": snapshot.backends_json(),
        "active": snapshot.active,
    }))
}

/// The proxy's configuration, its backends and the failovers so far.
#[utoipa::path(get, path = "/status", tag = "proxy",
    responses((status = 200, description = "Proxy, backends and failover counters", body = Object)))]
async fn status(State(pool): State<Arc<Pool>>) -> Json<serde_json::Value> {
    let snapshot = pool.snapshot();
    Json(serde_json::json!({
        "proxy": {
            "status": if snapshot.active.is_some() { "healthy" } else { "unhealthy" },
            "active_backend": snapshot.active,
            "health_check_interval": pool.health_interval().as_secs_f64(),
            "max_failures": pool.max_failures(),
        },
        "backends": snapshot.backends_json(),
        "failover": {
            "enabled": snapshot.backends.len() > 1,
            "automatic": true,
            "total_failovers": snapshot.total_failovers,
        },
    }))
}

/// Runs the proxy until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = Arc::new(Pool::new(
        config.parse_backends()?,
        config.health_interval,
        config.health_timeout,
        config.max_failures,
        config.upstream_timeout,
    )?);
    let checker = tokio::spawn(pool.clone().run_health_checks(shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(config.http.listen).await?;
    http::serve(
        listener,
        app(pool, &config.http),
        shutdown.clone(),
        &config.http,
    )
    .await?;
    shutdown.cancel();
    let _ = checker.await;
    Ok(())
}
