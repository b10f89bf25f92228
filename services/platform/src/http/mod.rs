//! HTTP plumbing shared by every service: the layers (request id, tracing span, metrics,
//! timeout, body limit, panic guard, problem+json for every error), the operational endpoints
//! (`/health`, `/ready`, `/metrics`, `/openapi.json`, `/docs`) and graceful serving.

mod idempotent;
mod json;
pub mod openapi;
mod problem;
mod readiness;
mod request_id;
mod serve;
pub mod upstream;

use std::{
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::{HistogramVec, IntCounterVec};
use serde::Serialize;
use tower::{
    Layer, ServiceBuilder,
    util::{MapRequest, MapRequestLayer},
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use idempotent::{JsonReply, idempotency_key, idempotent};
pub use json::{ApiJson, exact_decimal, parse as parse_json};
pub use problem::{FieldError, PROBLEM_CONTENT_TYPE, Problem, ProblemDetails};
pub use readiness::ContextReadiness;
pub use request_id::{REQUEST_ID_HEADER, RequestId};
pub use serve::serve;

use crate::{config::HttpConfig, telemetry};

/// The state of one dependency as `/ready` reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DependencyStatus {
    pub name: String,
    pub ok: bool,
    /// A required dependency that fails makes the service unready (503). An optional one is
    /// reported but does not: e.g. the payments API keeps accepting payments while the broker
    /// is down, because the outbox holds the events until it is back.
    pub required: bool,
    pub detail: String,
}

impl DependencyStatus {
    pub fn from_result<E: std::fmt::Display>(
        name: &str,
        required: bool,
        result: Result<String, E>,
    ) -> Self {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(error) => (false, error.to_string()),
        };
        Self {
            name: name.to_owned(),
            ok,
            required,
            detail,
        }
    }
}

/// What `/ready` asks: each service says which dependencies must work before it takes traffic.
#[async_trait::async_trait]
pub trait Readiness: Send + Sync + 'static {
    async fn check(&self) -> Vec<DependencyStatus>;
}

/// A service's router wrapped so `/pagos` and `/pagos/` are the same resource (no redirect).
pub type App = MapRequest<Router, fn(Request) -> Request>;

/// Builds the complete application of a service: its API router plus the operational endpoints
/// and the platform layers. `openapi` is the service's document (served at `/openapi.json`).
pub fn app(
    service: &'static str,
    api: Router,
    openapi: OpenApi,
    readiness: Arc<dyn Readiness>,
    config: &HttpConfig,
) -> App {
    let api = api.route("/health", get(move || health(service)));
    app_with_health(api, Docs::Static(Box::new(openapi)), readiness, config)
}

/// Where `/openapi.json` comes from.
pub enum Docs {
    /// The service's own document, served by the platform.
    Static(Box<OpenApi>),
    /// The service's router serves `/openapi.json` itself (the gateway merges its upstreams');
    /// Swagger UI at `/docs` points at it.
    Served,
}

/// Like [`app`], for a service whose `api` serves its own `/health`.
pub fn app_with_health(
    api: Router,
    docs: Docs,
    readiness: Arc<dyn Readiness>,
    config: &HttpConfig,
) -> App {
    let swagger = match docs {
        Docs::Static(openapi) => {
            SwaggerUi::new("/docs").url("/openapi.json", openapi::with_platform_responses(*openapi))
        }
        Docs::Served => {
            SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::new(["/openapi.json"]))
        }
    };
    let operational = Router::new()
        .route("/ready", get(ready).with_state(readiness))
        .route("/metrics", get(metrics));

    let router = api
        .merge(operational)
        .merge(swagger)
        .fallback(|| async { Problem::from_status(StatusCode::NOT_FOUND) })
        .layer(middleware::from_fn(record_metrics))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(
                    HeaderName::from_static(REQUEST_ID_HEADER),
                    MakeRequestUuid,
                ))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        // Failures are logged by `log_response`, which sees the answer.
                        .on_response(log_response)
                        .on_failure(()),
                )
                .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
                    REQUEST_ID_HEADER,
                )))
                .layer(middleware::from_fn(close_when_body_unread))
                .layer(middleware::from_fn(problem_for_bare_errors))
                .layer(middleware::from_fn(reject_nul_in_uri))
                .layer(CatchPanicLayer::custom(|_| {
                    Problem::internal(&"handler panicked").into_response()
                }))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    config.request_timeout,
                ))
                // A declared `Content-Length` over the limit is refused before any of the
                // body is read; without it a request announcing a gigabyte and sending nothing
                // held its handler until the request timeout. `DefaultBodyLimit` bounds the
                // extractors of a body sent without a length (chunked).
                .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
                .layer(DefaultBodyLimit::max(config.body_limit_bytes)),
        );
    MapRequestLayer::new(trim_trailing_slash as fn(Request) -> Request).layer(router)
}

/// An answer given before the request's body was read to its end (a 413 for a body over the
/// limit, a 415, a refusal before the body mattered) says `Connection: close`. hyper will not
/// read that connection's next request, as it cannot tell where the unread body ends, and
/// closes it; without the header the client puts the connection back in its pool and loses its
/// next request on it ("connection closed before message completed": 4 of 40 refused 2 MiB
/// bodies in the abuse cases of `make fuzz`).
async fn close_when_body_unread(request: Request, next: Next) -> Response {
    use http_body::Body as _;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = request.map(|inner| {
        Body::new(TrackedBody {
            inner,
            finished: finished.clone(),
        })
    });
    let mut response = next.run(request).await;
    if !finished.load(std::sync::atomic::Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records whether it was read to its end.
struct TrackedBody {
    inner: Body,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            std::task::Poll::Ready(None) => true,
            std::task::Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            self.finished
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A NUL character (`%00`) in the path or the query is refused before any handler sees it:
/// PostgreSQL can neither store nor compare one, so each such filter or id was a 500 (found by
/// fuzzing every API from its OpenAPI document). Bodies get the same rule in [`json::parse`].
async fn reject_nul_in_uri(request: Request, next: middleware::Next) -> Response {
    let has_nul = |text: &str| text.as_bytes().windows(3).any(|w| w == b"%00");
    let uri = request.uri();
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return Problem::bad_request(
            "La ruta o la consulta contiene el carácter NUL (%00), que no se admite",
        )
        .into_response();
    }
    next.run(request).await
}

/// `/pagos/` → `/pagos` before routing, so both spellings reach the same handler without a
/// redirect. Swagger UI's own paths are left alone: it redirects `/docs` to `/docs/`.
fn trim_trailing_slash(mut request: Request) -> Request {
    let path = request.uri().path();
    if path.len() <= 1 || !path.ends_with('/') || path.starts_with("/docs") {
        return request;
    }
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(value) = path_and_query.parse() {
        parts.path_and_query = Some(value);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// Marks a 5xx answer that states what is expected rather than a failure: a `/ready` saying
/// "not ready" while a dependency starts. It is not logged as an error (a probe every 100 ms
/// would fill the log during every start).
#[derive(Debug, Clone, Copy)]
pub struct ExpectedUnavailable;

/// The access-log line of an answer, at DEBUG with target `access`: at the default level a
/// request writes no log line at all (an INFO line per request cost about 0.35 KB and a write
/// per request, 2 GB an hour at 1 000 req/s, for what the `http_requests_total` and latency
/// metrics already count). `RUST_LOG=info,access=debug` turns the lines on. A server error is
/// an ERROR line whatever the setting, unless it is [`ExpectedUnavailable`].
fn log_response<B>(response: &axum::http::Response<B>, latency: Duration, _span: &tracing::Span) {
    let status = response.status().as_u16();
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if response.status().is_server_error()
        && response.extensions().get::<ExpectedUnavailable>().is_none()
    {
        tracing::error!(status, latency_us, "answered with a server error");
    } else {
        tracing::debug!(target: "access", status, latency_us, "answered");
    }
}

fn request_span(request: &Request<Body>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
    )
}

async fn health(service: &'static str) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "healthy", "service": service }))
}

/// The `/ready` handler, for a service that also serves it under its own prefix.
pub async fn ready(State(readiness): State<Arc<dyn Readiness>>) -> Response {
    let checks = readiness.check().await;
    let ok = checks.iter().all(|c| c.ok || !c.required);
    let degraded = checks.iter().any(|c| !c.ok);
    let body = serde_json::json!({
        "status": match (ok, degraded) { (false, _) => "not_ready", (true, true) => "degraded", (true, false) => "ready" },
        "checks": checks,
    });
    if ok {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        response.extensions_mut().insert(ExpectedUnavailable);
        response
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::render(),
    )
}

static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    telemetry::counter_vec(
        "http_requests_total",
        "HTTP requests by method, matched route and status",
        &["method", "route", "status"],
    )
});

static HTTP_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    telemetry::histogram_vec(
        "http_request_duration_seconds",
        "HTTP request latency by method and matched route",
        &["method", "route"],
    )
});

/// Labels by the *matched route* (`/pagos/{id_pago}`), never the raw path, so ids do not
/// explode the metric's cardinality.
async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    HTTP_LATENCY
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    HTTP_REQUESTS
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .inc();
    response
}

/// Errors produced by layers rather than handlers (timeout, body limit, unknown method) come
/// with an empty or plain-text body; give them the same problem+json shape as everything else.
async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    if is_json {
        return response;
    }
    let mut problem = Problem::from_status(status).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem
}

/// A UUID from a path segment; a malformed one is a 400 naming `field` (not a 404: the
/// client sent something that cannot be an id at all).
pub fn uuid_param(field: &str, raw: &str) -> Result<uuid::Uuid, Problem> {
    raw.parse().map_err(|_| {
        Problem::validation(vec![FieldError::new(
            field,
            format!("'{raw}' no es un UUID válido"),
        )])
    })
}

/// Header value helper for handlers.
pub fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
