//! RFC 9457 problem details: the one error shape every Aeropartners API answers with.

use axum::{
    Json,
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A problem+json response. `detail` is a sentence for a person (Spanish, as the domain);
/// nothing internal (SQL, debug output, stack traces) ever goes into it. Boxed so that
/// `Result<T, Problem>` stays small on the happy path.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
#[serde(transparent)]
pub struct Problem(#[schema(inline)] Box<ProblemDetails>);

/// The RFC 9457 fields of a [`Problem`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProblemDetails {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    #[schema(value_type = u16)]
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    #[schema(ignore)]
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    /// A problem whose `type` is derived from a short slug, e.g. `validation-error`.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(ProblemDetails {
            kind: format!("https://aeropartners.io/problems/{slug}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            errors: Vec::new(),
            headers: Vec::new(),
        }))
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [only] => format!("El campo '{}' no es válido: {}", only.field, only.message),
            _ => "La solicitud contiene campos no válidos".to_owned(),
        };
        let mut problem = Self::new(
            StatusCode::BAD_REQUEST,
            "validation-error",
            "Solicitud no válida",
            detail,
        );
        problem.0.errors = errors;
        problem
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Solicitud no válida",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Recurso no encontrado",
            detail,
        )
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflicto", detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            "Solicitud no procesable",
            detail,
        )
    }

    /// An internal failure: the cause is logged, the client only learns that it happened.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            "Error interno",
            "Ocurrió un error interno; inténtelo de nuevo más tarde",
        )
    }

    /// A database failure: 503 with `Retry-After` when the database is out of reach for now
    /// (restarting, paused, out of connections: a retry soon succeeds, and a keyed write may be
    /// sent again), 500 for anything else. Found by the fault matrix: a paused PostgreSQL made
    /// every request wait for a pooled connection and end in a 500.
    pub fn database(error: &sqlx::Error) -> Self {
        if crate::db::is_unreachable(error) {
            tracing::warn!(%error, "database unavailable");
            Self::unavailable(
                "La base de datos no está disponible en este momento; reintente en unos segundos",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        } else {
            Self::internal(error)
        }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service-unavailable",
            "Servicio no disponible",
            detail,
        )
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }

    /// The generic problem for a bare status code (unknown route, wrong method, timeout...).
    pub fn from_status(status: StatusCode) -> Self {
        let (slug, detail) = match status {
            StatusCode::NOT_FOUND => ("not-found", "La ruta solicitada no existe"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method-not-allowed",
                "El método HTTP no está permitido en esta ruta",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload-too-large",
                "El cuerpo de la solicitud excede el tamaño máximo permitido",
            ),
            StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => (
                "timeout",
                "La solicitud tardó demasiado y fue cancelada; inténtelo de nuevo",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported-media-type",
                "El cuerpo debe enviarse como application/json",
            ),
            s if s.is_server_error() => ("internal-error", "Ocurrió un error interno"),
            _ => ("http-error", "La solicitud no pudo atenderse"),
        };
        Self::new(
            status,
            slug,
            status.canonical_reason().unwrap_or("Error"),
            detail,
        )
    }
}

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;

    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let headers = self.headers.clone();
        let mut response = (status, Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        for (name, value) in headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_rfc9457_fields_and_field_errors() {
        let problem = Problem::validation(vec![FieldError::new("monto", "debe ser mayor que 0")]);
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["status"], 400);
        assert_eq!(
            json["type"],
            "https://aeropartners.io/problems/validation-error"
        );
        assert_eq!(json["errors"][0]["field"], "monto");
        assert!(json["detail"].as_str().unwrap().contains("monto"));
    }

    #[test]
    fn an_unreachable_database_is_a_503_to_retry_and_any_other_failure_a_500() {
        let busy = Problem::database(&sqlx::Error::PoolTimedOut);
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        let response = busy.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let cut = Problem::database(&sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
        assert_eq!(cut.status, StatusCode::SERVICE_UNAVAILABLE);
        let bug = Problem::database(&sqlx::Error::ColumnNotFound("monto".into()));
        assert_eq!(bug.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let problem = Problem::internal(&"duplicate key value violates unique constraint");
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["status"], 500);
        assert!(!json.to_string().contains("duplicate key"));
    }
}
