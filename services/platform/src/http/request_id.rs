//! The request id: taken from `x-request-id` when the caller sends one, generated otherwise,
//! echoed on the response, recorded on the request's span (so on every log line) and carried
//! into events as their correlation id.

use axum::{extract::FromRequestParts, http::request::Parts};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The current request's id, for handlers that persist or forward it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // SetRequestIdLayer runs before any handler, so the header is always there; the
        // fallback only matters for handlers exercised without the platform's layers.
        let id = parts
            .headers
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        Ok(Self(id))
    }
}
