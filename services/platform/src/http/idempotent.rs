//! `Idempotency-Key` for any JSON write endpoint: claims the key, runs the handler once, saves
//! its answer (status, body and headers) and replays it to retries.

use std::future::Future;

use axum::{
    Json,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{FieldError, PROBLEM_CONTENT_TYPE, Problem};
use crate::idempotency::{Claim, IDEMPOTENCY_KEY_HEADER, IdempotencyStore, REPLAYED_HEADER};

/// A JSON answer a handler wants sent (and, under a key, remembered).
#[derive(Debug, Clone)]
pub struct JsonReply {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The handler itself recognised a repeat (e.g. the same `referencia_pago`).
    pub replayed: bool,
}

impl JsonReply {
    pub fn new(status: StatusCode, body: impl serde::Serialize) -> Result<Self, Problem> {
        Ok(Self {
            status,
            body: serde_json::to_value(body).map_err(|e| Problem::internal(&e))?,
            headers: Vec::new(),
            replayed: false,
        })
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn replayed(mut self, replayed: bool) -> Self {
        self.replayed = replayed;
        self
    }
}

impl IntoResponse for JsonReply {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status.is_client_error() {
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
            );
        }
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        if self.replayed {
            response.headers_mut().insert(
                HeaderName::from_static(REPLAYED_HEADER),
                HeaderValue::from_static("true"),
            );
        }
        response
    }
}

/// Reads and checks the optional `Idempotency-Key` header.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default().trim();
    if key.is_empty() || key.len() > 255 {
        return Err(Problem::validation(vec![FieldError::new(
            "Idempotency-Key",
            "debe tener entre 1 y 255 caracteres visibles",
        )]));
    }
    Ok(Some(key.to_owned()))
}

/// Runs `handler` at most once per `Idempotency-Key` (when the request has one).
///
/// Same key and same request (method, path and canonical JSON body: key order and spacing do
/// not matter) → the saved answer, with `Idempotent-Replayed: true`; another request → 422;
/// the first still running → 409. Client errors are saved like successes; a server error
/// releases the key so the client can retry.
pub async fn idempotent<F, Fut>(
    store: &IdempotencyStore,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    raw_body: &[u8],
    handler: F,
) -> Result<JsonReply, Problem>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<JsonReply, Problem>>,
{
    let Some(key) = idempotency_key(headers)? else {
        return handler().await;
    };
    let canonical = serde_json::from_slice::<serde_json::Value>(raw_body)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let fingerprint = IdempotencyStore::fingerprint(method, path, canonical.as_bytes());
    match store
        .claim(&key, &fingerprint)
        .await
        .map_err(|e| Problem::database(&e))?
    {
        Claim::Acquired => {}
        Claim::Replay {
            status,
            body,
            headers,
        } => {
            let mut reply = JsonReply {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                body,
                headers: Vec::new(),
                replayed: true,
            };
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (name.parse(), value.parse()) {
                    reply.headers.push((name, value));
                }
            }
            return Ok(reply);
        }
        Claim::InFlight => {
            return Err(Problem::conflict(
                "La primera solicitud con esta Idempotency-Key aún se está procesando; reintente en unos segundos",
            ));
        }
        Claim::Mismatch => {
            return Err(Problem::unprocessable(
                "Esta Idempotency-Key ya se usó con una solicitud distinta",
            ));
        }
    }
    // The claim lives as long as the handler runs, renewed in the background; a handler that
    // ends (or a process that dies) lets it lapse.
    let outcome = tokio::select! {
        biased;
        outcome = handler() => outcome,
        never = store.keep_claimed(&key) => match never {},
    };
    let reply = match outcome {
        Ok(reply) => reply,
        Err(problem) if problem.status.is_client_error() => {
            JsonReply::new(problem.status, &problem)?
        }
        Err(problem) => {
            // Our failure, not the client's: let the client retry with the same key.
            if let Err(error) = store.release(&key).await {
                tracing::error!(%error, "cannot release an idempotency key");
            }
            return Err(problem);
        }
    };
    let saved_headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter_map(|(n, v)| {
            v.to_str()
                .ok()
                .map(|v| (n.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    store
        .complete(&key, reply.status.as_u16(), &reply.body, &saved_headers)
        .await
        .map_err(|e| Problem::database(&e))?;
    Ok(reply)
}
