//! Passing a request on to another HTTP service (the gateway and the campaigns proxy): which
//! headers travel, and turning the upstream's answer into ours.

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderName, Method, header},
    response::{IntoResponse, Response},
};

use super::Problem;

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
