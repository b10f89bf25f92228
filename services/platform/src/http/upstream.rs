//! Passing a request on to another HTTP service (the gateway and the campaigns proxy): which
//! headers travel, when a failed attempt may be sent again, and turning the upstream's answer
//! into ours.

use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderName, Method, header},
    response::{IntoResponse, Response},
};

use super::Problem;
use crate::idempotency::IDEMPOTENCY_KEY_HEADER;

/// A request may be sent twice only if doing so cannot apply it twice: reads, and writes the
/// service deduplicates (`Idempotency-Key`) or guards (`If-Match`).
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || headers.contains_key(IDEMPOTENCY_KEY_HEADER)
        || headers.contains_key(header::IF_MATCH)
}

/// How many rounds over an upstream's replicas a request gets while every attempt failed in a
/// way that is safe to repeat. Behind a Kubernetes Service an upstream is many pods, and for a
/// moment after a pod goes some connections still reach it: refused, or closed by the pod as
/// it stops; the next connection reaches a live pod.
pub const RETRY_ROUNDS: u32 = 4;
/// The pause before round n is n times this (0.1 + 0.2 + 0.3 s at most in all).
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long our HTTP clients keep an idle pooled connection. Shorter than any server's idle
/// limit (`HTTP_HEADER_READ_TIMEOUT`, 15 s by default): a client that reuses a connection the
/// server is closing at that moment loses the request with an error that says nothing about
/// whether it was applied, so a write without an `Idempotency-Key` could not be retried.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether an attempt that failed with a transport error may be sent again: nothing reached
/// the upstream (the connection was refused or could not be made), or the request is
/// idempotent. Otherwise it may have been applied, and repeating it could apply it twice.
pub fn may_retry(error: &reqwest::Error, method: &Method, headers: &HeaderMap) -> bool {
    error.is_connect() || is_idempotent(method, headers)
}

/// Why a path may not be forwarded: the upstream URL is built by appending the rest of the path
/// to the route's target, and the HTTP client resolves it by WHATWG URL rules, under which `..`,
/// `.%2e`, `%2e.` and `%2e%2e` are all "go up one segment" and `\` is `/`. Forwarded as it is,
/// `/pagos/%2e%2e/metrics` reaches the upstream's `/metrics`, a path no route leads to; and
/// `%2F` hides a separator from the routing that a server behind may decode. Such paths are
/// refused (400) before routing, never normalised: a client that sends one is probing, and a
/// normalised path would still differ from what the client asked for.
pub fn unsafe_path(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || path.contains('\\') {
        return Some("la ruta contiene una barra codificada (%2F, %5C) o una barra invertida");
    }
    let dot_segment = lower.split('/').any(|segment| {
        let decoded = segment.replace("%2e", ".");
        decoded == "." || decoded == ".."
    });
    dot_segment.then_some("la ruta contiene un segmento `.` o `..` (también codificado como %2e)")
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and are never forwarded;
/// `Host` is the upstream's own.
const NOT_FORWARDED: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
];

/// The request headers an upstream should see.
pub fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    headers
}

/// Sends one request to `url` with the (already filtered) headers and body.
pub async fn send(
    client: &reqwest::Client,
    method: &Method,
    url: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<reqwest::Response, reqwest::Error> {
    client
        .request(method.clone(), url)
        .headers(headers.clone())
        .body(body.clone())
        .send()
        .await
}

/// The upstream's answer as ours: same status, headers (less hop-by-hop) and body.
pub async fn into_response(upstream: reqwest::Response) -> Response {
    let status = upstream.status();
    let mut headers = forwardable(upstream.headers());
    headers.remove(header::CONTENT_LENGTH);
    let body: Bytes = match upstream.bytes().await {
        Ok(body) => body,
        Err(_) => {
            return Problem::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "bad-gateway",
                "Respuesta incompleta",
                "El servicio interno cortó su respuesta; reintente",
            )
            .into_response();
        }
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_encoded_separators_are_refused_in_every_spelling() {
        for path in [
            "/pagos/../metrics",
            "/pagos/%2e%2e/metrics",
            "/pagos/%2E%2E/metrics",
            "/pagos/.%2e/metrics",
            "/pagos/%2e./metrics",
            "/pagos/./x",
            "/pagos/%2e",
            "/api/reports/payments/%2e%2e/version",
            "/pagos%2f..%2fmetrics",
            "/pagos/x%2Fy",
            "/pagos/a%5cb",
            "/pagos/a\\..\\metrics",
            "/..",
        ] {
            assert!(unsafe_path(path).is_some(), "{path}");
        }
        for path in [
            "/pagos",
            "/pagos/",
            "/pagos/0190c0de-0000-7000-8000-000000000000/eventos",
            "/pagos/a.b",
            "/pagos/...",
            "/pagos/%2e%2e%2e",
            "/event-collector/events/x.y.z",
        ] {
            assert!(unsafe_path(path).is_none(), "{path}");
        }
    }

    #[test]
    fn only_reads_and_guarded_writes_are_idempotent() {
        let empty = HeaderMap::new();
        assert!(is_idempotent(&Method::GET, &empty));
        assert!(!is_idempotent(&Method::POST, &empty));
        assert!(!is_idempotent(&Method::PATCH, &empty));
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY_HEADER, "k".parse().unwrap());
        assert!(is_idempotent(&Method::POST, &keyed));
        let mut guarded = HeaderMap::new();
        guarded.insert(header::IF_MATCH, "3".parse().unwrap());
        assert!(is_idempotent(&Method::PATCH, &guarded));
    }
}
