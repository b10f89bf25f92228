//! Forwarding one request to a backend, and deciding when a failure may be retried elsewhere.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use platform::http::{
    Problem,
    upstream::{self, RETRY_PAUSE, RETRY_ROUNDS, is_idempotent},
};

use crate::backends::Pool;

/// Response header naming the backend that answered.
pub const BACKEND_HEADER: &str = "x-backend";

fn retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// `/api/campaigns/{rest}?query` → `/campaigns/{rest}?query`.
fn upstream_path(request: &Request) -> String {
    let path = request.uri().path();
    let rest = path.strip_prefix("/api/campaigns").unwrap_or(path);
    match request.uri().query() {
        Some(query) => format!("/campaigns{rest}?{query}"),
        None => format!("/campaigns{rest}"),
    }
}

pub async fn forward(State(pool): State<Arc<Pool>>, request: Request) -> Response {
    if let Some(reason) = upstream::unsafe_path(request.uri().path()) {
        return Problem::bad_request(format!("Ruta no admitida: {reason}")).into_response();
    }
    let method = request.method().clone();
    let path = upstream_path(&request);
    let headers = upstream::forwardable(request.headers());
    let idempotent = is_idempotent(&method, &headers);
    let body = match axum::body::to_bytes(request.into_body(), usize::MAX).await {
        Ok(body) => body,
        // The platform's body limit already refused anything too large.
        Err(_) => {
            return Problem::bad_request("No se pudo leer el cuerpo de la solicitud")
                .into_response();
        }
    };

    let mut last_failure: Option<Response> = None;
    for round in 0..RETRY_ROUNDS {
        if round > 0 {
            tokio::time::sleep(RETRY_PAUSE * round).await;
        }
        match try_candidates(&pool, &method, &path, &headers, &body, idempotent).await {
            Attempt::Answered(response) => return response,
            Attempt::Failed(failure) => last_failure = Some(failure),
        }
    }
    last_failure.unwrap_or_else(unavailable)
}

// Rounds over the backends ([`RETRY_ROUNDS`]) while every attempt failed in a way that is safe
// to repeat: the scenario on the e2e node saw one request fail per run or so before idempotent
// failures were retried here too.

enum Attempt {
    /// An answer to pass on, or a failure that must not be repeated (a plain write that may
    /// have been applied).
    Answered(Response),
    /// Every backend failed and sending the request again cannot apply it twice: the
    /// connection was refused (nothing was sent), or the request is idempotent.
    Failed(Response),
}

async fn try_candidates(
    pool: &Pool,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &axum::body::Bytes,
    idempotent: bool,
) -> Attempt {
    let mut last_failure: Option<Response> = None;
    for (index, name, base) in pool.candidates() {
        let attempt = upstream::send(
            pool.client(),
            method,
            &format!("{base}{path}"),
            headers,
            body,
        )
        .await;
        match attempt {
            Ok(upstream) if retryable_status(upstream.status()) && idempotent => {
                tracing::warn!(backend = %base, status = %upstream.status(), "backend failed; retrying elsewhere");
                last_failure = Some(upstream::into_response(upstream).await);
            }
            Ok(upstream) => {
                let mut response = upstream::into_response(upstream).await;
                // Which backend answered: lets clients and the scenario runner see failovers.
                if let Ok(value) = axum::http::HeaderValue::from_str(&name) {
                    response.headers_mut().insert(BACKEND_HEADER, value);
                }
                return Attempt::Answered(response);
            }
            Err(error) if error.is_connect() => {
                // Refused before a byte was sent: nothing was applied, so any request may go to
                // the next backend, idempotent or not.
                tracing::warn!(backend = %base, %error, "backend refused the connection; retrying elsewhere");
                pool.record_refused(index);
                last_failure = Some(unavailable());
            }
            Err(error) if idempotent => {
                tracing::warn!(backend = %base, %error, "backend failed mid-request; retrying elsewhere");
                last_failure = Some(unavailable());
            }
            Err(error) => {
                // It may have been applied: a retry could apply it twice. Tell the client.
                tracing::warn!(backend = %base, %error, "non-idempotent request failed mid-flight; not retried");
                return Attempt::Answered(Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "bad-gateway",
                    "Error del servicio de campañas",
                    "El servicio de campañas no respondió; la operación pudo o no aplicarse. Reintente con una Idempotency-Key para hacerlo de forma segura",
                )
                .into_response());
            }
        }
    }
    Attempt::Failed(last_failure.unwrap_or_else(unavailable))
}

fn unavailable() -> Response {
    Problem::unavailable("Ningún backend de campañas está disponible; reintente en unos segundos")
        .with_header(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[test]
    fn paths_keep_their_rest_and_query() {
        let request = Request::builder()
            .uri("/api/campaigns/abc/metrics?x=1&y=2")
            .body(Body::empty())
            .unwrap();
        assert_eq!(upstream_path(&request), "/campaigns/abc/metrics?x=1&y=2");
        let root = Request::builder()
            .uri("/api/campaigns?limit=5")
            .body(Body::empty())
            .unwrap();
        assert_eq!(upstream_path(&root), "/campaigns?limit=5");
    }
}
