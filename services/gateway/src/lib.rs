//! The gateway ("API principal", API.md §1): one entry point that routes each path prefix to
//! the service behind it, keeps the path below the prefix and the query string, and serves one
//! OpenAPI document merged from every service's.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use platform::{
    config::HttpConfig,
    http::{self, DependencyStatus, Docs, Problem, Readiness, upstream},
};
use tokio_util::sync::CancellationToken;

pub mod console;
pub mod sesion;

/// `aeropartners gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub http: HttpConfig,
    /// Routes, `PREFIX=UPSTREAM_URL[|UPSTREAM_URL…]`: a request under PREFIX goes to an
    /// upstream plus the rest of its path and its query. Several upstreams (replicas run
    /// without a Kubernetes Service in front) take turns. A request whose connection is
    /// refused, or a read or keyed write cut mid-flight, goes to the next, in up to four
    /// rounds (0.6 s of pauses in all).
    #[arg(long = "route", env = "GATEWAY_ROUTES", value_delimiter = ',', default_values_t = [
        "/pagos=http://127.0.0.1:8010/pagos".to_owned(),
        "/campaigns=http://127.0.0.1:8080/api/campaigns".to_owned(),
        "/api/campaigns=http://127.0.0.1:8080/api/campaigns".to_owned(),
        "/api/reports=http://127.0.0.1:8020/api/reports|http://127.0.0.1:8021/api/reports".to_owned(),
        "/reporting=http://127.0.0.1:8020/reporting|http://127.0.0.1:8021/reporting".to_owned(),
        "/event-collector=http://127.0.0.1:8090/event-collector|http://127.0.0.1:8091/event-collector".to_owned(),
    ])]
    pub routes: Vec<String>,
    /// OpenAPI documents to merge into `/openapi.json`, `name=url`.
    #[arg(long = "docs", env = "GATEWAY_DOCS", value_delimiter = ',', default_values_t = [
        "payments=http://127.0.0.1:8010/openapi.json".to_owned(),
        "campaigns=http://127.0.0.1:8001/openapi.json".to_owned(),
        "reports=http://127.0.0.1:8020/openapi.json".to_owned(),
        "event-collector=http://127.0.0.1:8090/openapi.json".to_owned(),
    ])]
    pub docs: Vec<String>,
    /// The reports replicas whose version the console shows: base URLs of `/api/reports`. A
    /// host name resolving to several addresses (a headless Service) stands for each pod.
    #[arg(long = "console-replica", env = "GATEWAY_CONSOLE_REPLICAS", value_delimiter = ',', default_values_t = [
        "http://127.0.0.1:8020/api/reports".to_owned(),
        "http://127.0.0.1:8021/api/reports".to_owned(),
    ])]
    pub console_replicas: Vec<String>,
    /// The readiness endpoints the console shows, `name=URL`.
    #[arg(long = "console-health", env = "GATEWAY_CONSOLE_HEALTH", value_delimiter = ',', default_values_t = [
        "payments=http://127.0.0.1:8010/ready".to_owned(),
        "payments-worker=http://127.0.0.1:8011/ready".to_owned(),
        "campaigns-primary=http://127.0.0.1:8001/ready".to_owned(),
        "campaigns-replica=http://127.0.0.1:8002/ready".to_owned(),
        "campaigns-proxy=http://127.0.0.1:8080/ready".to_owned(),
        "reports-a=http://127.0.0.1:8020/ready".to_owned(),
        "reports-b=http://127.0.0.1:8021/ready".to_owned(),
        "event-collector-a=http://127.0.0.1:8090/ready".to_owned(),
        "event-collector-b=http://127.0.0.1:8091/ready".to_owned(),
        "data-service-v1=http://127.0.0.1:9001/ready".to_owned(),
        "data-service-v2=http://127.0.0.1:9002/ready".to_owned(),
        "pulsar=http://127.0.0.1:8081/admin/v2/brokers/health".to_owned(),
    ])]
    pub console_health: Vec<String>,
    /// Timeout of one forwarded request.
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = platform::config::parse_duration)]
    pub upstream_timeout: Duration,
    /// Who may sign in to the console: the cluster's tokens (`AUTH_KUBERNETES`), or nobody
    /// needs to (`AUTH_MODE=development`, loopback only).
    #[command(flatten)]
    pub auth: access::AuthConfig,
    #[command(flatten)]
    pub session: sesion::SessionConfig,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    /// One or more equivalent upstreams (replicas of one service).
    pub upstreams: Vec<String>,
}

pub fn parse_pairs(specs: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    specs
        .iter()
        .map(|spec| {
            let (left, right) = spec
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{what} `{spec}` must be written KEY=URL"))?;
            Ok((
                left.trim().trim_end_matches('/').to_owned(),
                right.trim().trim_end_matches('/').to_owned(),
            ))
        })
        .collect()
}

/// The routing table: the longest prefix that matches a whole path segment wins.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
    /// Turns of the routes with several upstreams.
    next: std::sync::atomic::AtomicUsize,
}

impl Routes {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self {
            routes,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// `/campaigns/abc?x=1` → `[http://proxy/api/campaigns/abc?x=1]`: the URL at each of the
    /// route's upstreams, starting with the one whose turn it is.
    pub fn resolve(&self, path: &str, query: Option<&str>) -> Option<Vec<String>> {
        let route = self.routes.iter().find(|r| {
            path == r.prefix
                || path
                    .strip_prefix(&r.prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        })?;
        let rest = &path[route.prefix.len()..];
        let first = match route.upstreams.len() {
            0 | 1 => 0,
            n => self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n,
        };
        let n = route.upstreams.len();
        Some(
            (0..n)
                .map(|i| &route.upstreams[(first + i) % n])
                .map(|upstream| match query {
                    Some(query) => format!("{upstream}{rest}?{query}"),
                    None => format!("{upstream}{rest}"),
                })
                .collect(),
        )
    }
}

struct Gateway {
    routes: Routes,
    /// The console's sessions: a request signed in through the console carries its
    /// operator's token upstream.
    sesiones: Arc<sesion::Sesiones>,
    console: console::ConsoleTargets,
    client: reqwest::Client,
    docs: Vec<(String, String)>,
    /// The last document fetched from each entry of `docs` (same order); `None` until the
    /// first successful fetch. A service that is briefly down keeps its paths in `/docs`.
    fetched: RwLock<Vec<Option<serde_json::Value>>>,
    merged: RwLock<serde_json::Value>,
}

async fn forward(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    if let Some(reason) = upstream::unsafe_path(request.uri().path()) {
        return Problem::bad_request(format!("Ruta no admitida: {reason}")).into_response();
    }
    let Some(urls) = gateway
        .routes
        .resolve(request.uri().path(), request.uri().query())
    else {
        return Problem::not_found("Ningún servicio atiende esta ruta").into_response();
    };
    let method = request.method().clone();
    let mut headers = upstream::forwardable(request.headers());
    if let Err(problem) = gateway.sesiones.acreditar(&method, &mut headers) {
        return problem.into_response();
    }
    // The services behind see the client's address, as RFC 7239's de-facto predecessor says:
    // ours appended to whatever hops came before.
    if let Some(axum::extract::ConnectInfo(peer)) = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(before) => format!("{before}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        headers.insert("x-forwarded-for", http::header_value(&chain));
    }
    let body: Bytes = match axum::body::to_bytes(request.into_body(), usize::MAX).await {
        Ok(body) => body,
        Err(_) => {
            return Problem::bad_request("No se pudo leer el cuerpo de la solicitud")
                .into_response();
        }
    };
    let mut last_error = None;
    for round in 0..upstream::RETRY_ROUNDS {
        if round > 0 {
            tokio::time::sleep(upstream::RETRY_PAUSE * round).await;
        }
        for url in &urls {
            match upstream::send(&gateway.client, &method, url, &headers, &body).await {
                Ok(answer) => return upstream::into_response(answer).await,
                Err(error) if error.is_timeout() && !error.is_connect() => {
                    tracing::warn!(%url, %error, "upstream did not answer in time");
                    return Problem::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "gateway-timeout",
                        "Tiempo de espera agotado",
                        "El servicio interno no respondió a tiempo; la operación pudo o no aplicarse",
                    )
                    .into_response();
                }
                // Refused (nothing was delivered), or cut on a request that cannot be applied
                // twice: the next replica, or the same Service a moment later, may take it.
                Err(error) if upstream::may_retry(&error, &method, &headers) => {
                    tracing::debug!(%url, %error, round, "upstream attempt failed; retrying");
                    last_error = Some((url, error));
                }
                Err(error) => {
                    tracing::warn!(%url, %error, "non-idempotent request failed mid-flight; not retried");
                    return Problem::new(
                        StatusCode::BAD_GATEWAY,
                        "bad-gateway",
                        "Error del servicio interno",
                        "El servicio interno no respondió; la operación pudo o no aplicarse. Reintente con una Idempotency-Key para hacerlo de forma segura",
                    )
                    .into_response();
                }
            }
        }
    }
    match last_error {
        None => Problem::not_found("Ningún servicio atiende esta ruta").into_response(),
        Some((url, error)) => {
            tracing::warn!(%url, %error, "upstream unreachable");
            Problem::unavailable(
                "El servicio que atiende esta ruta no está disponible; reintente en unos segundos",
            )
            .with_header(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            )
            .into_response()
        }
    }
}

/// Merges the `paths` and `components.schemas` of every fetched document.
pub fn merge_documents(documents: &[serde_json::Value]) -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let mut security_schemes = serde_json::Map::new();
    for document in documents {
        if let Some(p) = document.get("paths").and_then(|p| p.as_object()) {
            paths.extend(p.clone());
        }
        if let Some(s) = document
            .pointer("/components/securitySchemes")
            .and_then(|s| s.as_object())
        {
            for (name, scheme) in s {
                security_schemes
                    .entry(name.clone())
                    .or_insert_with(|| scheme.clone());
            }
        }
        if let Some(s) = document
            .pointer("/components/schemas")
            .and_then(|s| s.as_object())
        {
            for (name, schema) in s {
                match schemas.get(name) {
                    // One name, two meanings: the later would silently redefine the earlier
                    // service's schema (fuzzing found `Moneda` and `Estadisticas` so).
                    Some(existing) if existing != schema => {
                        tracing::warn!(schema = %name, "two services define different schemas under one name; the merged document keeps the first");
                    }
                    Some(_) => {}
                    None => {
                        schemas.insert(name.clone(), schema.clone());
                    }
                }
            }
        }
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Aeropartners API",
            "version": "1.0.0",
            "description": "Todas las APIs de la plataforma detrás del gateway.",
        },
        "paths": paths,
        "components": { "schemas": schemas, "securitySchemes": security_schemes },
    })
}

impl Gateway {
    /// Fetches every service's document and rebuilds the merged one from the newest copy of
    /// each. Returns true when every service has answered at least once.
    async fn refresh_docs(&self) -> bool {
        let fetches = self.docs.iter().map(|(name, url)| async move {
            match self
                .client
                .get(url)
                .timeout(Duration::from_secs(3))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
                _ => {
                    tracing::debug!(service = %name, %url, "OpenAPI document not available yet");
                    None
                }
            }
        });
        let answers = futures::future::join_all(fetches).await;
        let Ok(mut fetched) = self.fetched.write() else {
            return false;
        };
        for (slot, answer) in fetched.iter_mut().zip(answers) {
            if answer.is_some() {
                *slot = answer;
            }
        }
        let documents: Vec<serde_json::Value> = fetched.iter().flatten().cloned().collect();
        let complete = documents.len() == self.docs.len();
        drop(fetched);
        if let Ok(mut slot) = self.merged.write() {
            *slot = merge_documents(&documents);
        }
        complete
    }

    /// The services whose document has never been fetched.
    fn missing_docs(&self) -> Vec<&str> {
        let fetched = self.fetched.read().map(|f| f.clone()).unwrap_or_default();
        self.docs
            .iter()
            .zip(
                fetched
                    .iter()
                    .map(Option::is_some)
                    .chain(std::iter::repeat(false)),
            )
            .filter(|(_, present)| !present)
            .map(|((name, _), _)| name.as_str())
            .collect()
    }
}

async fn openapi(State(gateway): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    Json(gateway.merged.read().map(|d| d.clone()).unwrap_or_default())
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "healthy", "service": "gateway" }))
}

/// Ready once the merged documentation is complete: until every service's document has been
/// fetched, `/docs` would show part of the API. After that the gateway stays ready whatever its
/// upstreams do: each route answers (or says its service is unavailable) on its own, and a
/// gateway taken out of its Service would fail every route at once.
struct DocsComplete(Arc<Gateway>);

#[async_trait::async_trait]
impl Readiness for DocsComplete {
    async fn check(&self) -> Vec<DependencyStatus> {
        let missing = self.0.missing_docs();
        let result = if missing.is_empty() {
            Ok(format!("{} documents merged", self.0.docs.len()))
        } else {
            Err(format!(
                "waiting for the OpenAPI document of {}",
                missing.join(", ")
            ))
        };
        vec![DependencyStatus::from_result("openapi", true, result)]
    }
}

async fn build(config: &Config) -> anyhow::Result<Arc<Gateway>> {
    let sesiones =
        sesion::Sesiones::start(&config.auth, &config.session, config.http.listen).await?;
    let routes = parse_pairs(&config.routes, "route")?
        .into_iter()
        .map(|(prefix, upstreams)| Route {
            prefix,
            upstreams: upstreams
                .split('|')
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
        })
        .collect();
    let console = console::ConsoleTargets {
        replicas: config
            .console_replicas
            .iter()
            .map(|url| {
                reqwest::Url::parse(url)
                    .map_err(|e| anyhow::anyhow!("console replica `{url}` is not a URL: {e}"))
            })
            .collect::<anyhow::Result<_>>()?,
        health: parse_pairs(&config.console_health, "console health target")?,
    };
    Ok(Arc::new(Gateway {
        routes: Routes::new(routes),
        sesiones: Arc::new(sesiones),
        console,
        client: reqwest::Client::builder()
            .timeout(config.upstream_timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(http::upstream::POOL_IDLE_TIMEOUT)
            .build()?,
        fetched: RwLock::new(vec![None; config.docs.len()]),
        docs: parse_pairs(&config.docs, "docs")?,
        merged: RwLock::new(merge_documents(&[])),
    }))
}

fn app_for(gateway: Arc<Gateway>, http_config: &HttpConfig) -> http::App {
    let router = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        // Every other path is a candidate for a route (static routes above win over this one).
        .route("/{*path}", axum::routing::any(forward))
        .with_state(gateway.clone())
        .merge(console::router(
            gateway.console.clone(),
            gateway.client.clone(),
            gateway.sesiones.clone(),
        ));
    http::app_with_health(
        router,
        Docs::Served,
        Arc::new(DocsComplete(gateway)),
        http_config,
    )
}

/// The gateway application, with its documents fetched once (used by tests).
pub async fn app(config: &Config) -> anyhow::Result<http::App> {
    let gateway = build(config).await?;
    gateway.refresh_docs().await;
    Ok(app_for(gateway, &config.http))
}

/// Runs the gateway until `shutdown`, refreshing the merged documentation every 30 s (every
/// 2 s while a service's document is still missing, e.g. at start-up).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let gateway = build(&config).await?;
    let refresher = {
        let (gateway, shutdown) = (gateway.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let complete = gateway.refresh_docs().await;
                let next = Duration::from_secs(if complete { 30 } else { 2 });
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(next) => {}
                }
            }
        })
    };
    let listener = tokio::net::TcpListener::bind(config.http.listen).await?;
    http::serve(
        listener,
        app_for(gateway, &config.http),
        shutdown.clone(),
        &config.http,
    )
    .await?;
    shutdown.cancel();
    let _ = refresher.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::new(vec![
            Route {
                prefix: "/pagos".into(),
                upstreams: vec!["http://p/pagos".into()],
            },
            Route {
                prefix: "/campaigns".into(),
                upstreams: vec!["http://x/api/campaigns".into()],
            },
            Route {
                prefix: "/api/campaigns".into(),
                upstreams: vec!["http://x/api/campaigns".into()],
            },
            Route {
                prefix: "/api/reports".into(),
                upstreams: vec!["http://a/api/reports".into(), "http://b/api/reports".into()],
            },
        ])
    }

    #[test]
    fn resolves_by_whole_segments_keeping_rest_and_query() {
        let r = routes();
        let one =
            |path: &str, query: Option<&str>| r.resolve(path, query).map(|urls| urls.join(" "));
        assert_eq!(one("/pagos", None).as_deref(), Some("http://p/pagos"));
        assert_eq!(
            one("/pagos/abc/eventos", Some("a=1")).as_deref(),
            Some("http://p/pagos/abc/eventos?a=1")
        );
        assert_eq!(
            one("/campaigns/x", Some("limit=2")).as_deref(),
            Some("http://x/api/campaigns/x?limit=2")
        );
        assert_eq!(
            one("/api/campaigns/y", None).as_deref(),
            Some("http://x/api/campaigns/y")
        );
        assert_eq!(
            one("/pagosx", None),
            None,
            "a prefix matches whole segments only"
        );
        assert_eq!(one("/reporting/reports", None), None);
    }

    #[test]
    fn replicas_of_a_route_take_turns_and_each_list_has_every_replica() {
        let r = routes();
        let firsts: Vec<String> = (0..4)
            .map(|_| {
                let urls = r
                    .resolve("/api/reports/payments", Some("moneda=USD"))
                    .unwrap();
                assert_eq!(urls.len(), 2);
                assert_ne!(urls[0], urls[1]);
                urls[0].clone()
            })
            .collect();
        assert_eq!(firsts[0], firsts[2]);
        assert_ne!(firsts[0], firsts[1]);
        assert!(
            firsts
                .iter()
                .all(|u| u.ends_with("/api/reports/payments?moneda=USD"))
        );
    }

    #[test]
    fn merged_documentation_has_every_services_paths() {
        let a =
            serde_json::json!({"paths": {"/pagos": {}}, "components": {"schemas": {"Pago": {}}}});
        let b = serde_json::json!({"paths": {"/campaigns": {}}});
        let merged = merge_documents(&[a, b]);
        assert!(merged["paths"]["/pagos"].is_object());
        assert!(merged["paths"]["/campaigns"].is_object());
        assert!(merged["components"]["schemas"]["Pago"].is_object());
        assert_eq!(merged["openapi"], "3.1.0");
    }
}
