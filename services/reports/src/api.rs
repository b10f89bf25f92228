//! `/api/reports` (API.md §5.1, §5.2).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use access::{Alcance, Llamante, Permiso, Principal, Resultado, filtro_de_afiliado};
use axum::{
    Json,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use platform::http::{ApiJson, FieldError, Problem, header_value};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::watch;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    domain::{EstadoVersion, Filtro, Fuente, ReporteV1, ReporteV2, Version},
    projection::Progreso,
    queries,
    version::{ErrorFuente, FuenteVersion, Solicitante, publicar},
};

/// The header that says which version answered (and, on a request, pins one).
pub const VERSION_HEADER: &str = "x-report-version";

/// Reports computed in the last `ttl` are served again: a burst of identical queries costs
/// one computation per replica and interval, and a new event is visible after at most `ttl`.
pub type Cache = moka::future::Cache<(Version, Filtro), Bytes>;

pub fn cache(ttl: Duration) -> Cache {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(ttl.max(Duration::from_millis(1)))
        .build()
}

#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub version: watch::Sender<EstadoVersion>,
    pub fuente: Arc<dyn FuenteVersion>,
    pub cache: Option<Cache>,
    pub progreso: Arc<Progreso>,
    /// When the consumer first had its broker (for "caught up" at start).
    pub conectado_desde: Arc<OnceLock<Instant>>,
    /// This replica's name (the pod name in Kubernetes).
    pub instancia: Arc<str>,
}

impl ApiState {
    /// The version this request is served in: the one pinned by the client, or the active one,
    /// read once.
    fn version_de(&self, headers: &HeaderMap) -> Result<Version, Problem> {
        match headers.get(VERSION_HEADER) {
            None => Ok(self.version.borrow().activa),
            Some(raw) => raw.to_str().ok().and_then(Version::parse).ok_or_else(|| {
                Problem::validation(vec![FieldError::new(
                    "X-Report-Version",
                    "debe ser v1 o v2 (u omitirse para la versión activa)",
                )])
            }),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Aeropartners — Reportes", version = "1.0.0",
         description = "Modelo de lectura CQRS de pagos y campañas, en las versiones v1 y v2, \
                        con cambio de versión sin interrupción; y el reporting heredado."),
    tags((name = "reports", description = "Reportes v1/v2"),
         (name = "reporting", description = "Reporting heredado"))
)]
struct ReportesDoc;

pub fn router(state: ApiState) -> OpenApiRouter {
    OpenApiRouter::with_openapi(ReportesDoc::openapi())
        .routes(routes!(pagos))
        .routes(routes!(version_actual, cambiar_version))
        .routes(routes!(salud))
        .with_state(state)
}

/// `GET /api/reports/payments` in either shape.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Reporte {
    V1(ReporteV1),
    V2(ReporteV2),
}

/// The payments report in the active version (or the one pinned by `X-Report-Version`): a
/// partner's key (`reports:read`) gets its own affiliate's figures, an operator (`get reports`)
/// anyone's.
#[utoipa::path(
    get, path = "/api/reports/payments", tag = "reports",
    params(
        ("estado" = Option<String>, Query, description = "PENDIENTE, PROCESANDO, EXITOSO, FALLIDO o REVERSADO"),
        ("moneda" = Option<String>, Query, description = "USD, EUR o COP"),
        ("id_afiliado" = Option<String>, Query),
        ("fecha_desde" = Option<String>, Query, description = "AAAA-MM-DD o RFC 3339, inclusive"),
        ("fecha_hasta" = Option<String>, Query, description = "AAAA-MM-DD (el día entero) o RFC 3339, inclusive"),
        ("X-Report-Version" = Option<String>, Header, description = "v1 o v2: fija la versión de esta solicitud"),
    ),
    responses(
        (status = 200, body = Reporte, headers(("x-report-version" = String, description = "La versión que respondió"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn pagos(
    State(state): State<ApiState>,
    llamante: Llamante,
    headers: HeaderMap,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let ambito = llamante
        .ambito(Alcance::ReportesLectura, Permiso::LEER_REPORTES)
        .await?;
    if let Some(afiliado) =
        filtro_de_afiliado(&ambito, params.get("id_afiliado").map(String::as_str))?
    {
        params.insert("id_afiliado".to_owned(), afiliado);
    }
    let version = state.version_de(&headers)?;
    let filtro = Filtro::from_query(&params).map_err(|errores| {
        Problem::validation(
            errores
                .into_iter()
                .map(|(c, m)| FieldError::new(c, m))
                .collect(),
        )
    })?;
    let calcular = {
        let (pool, filtro) = (state.pool.clone(), filtro.clone());
        async move { calcular(&pool, version, &filtro).await }
    };
    let cuerpo = match &state.cache {
        Some(cache) => cache
            .try_get_with((version, filtro), calcular)
            .await
            .map_err(|e| Problem::from(e.as_ref()))?,
        None => calcular.await.map_err(|e| Problem::from(&e))?,
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static(VERSION_HEADER),
                HeaderValue::from_static(version.as_str()),
            ),
        ],
        cuerpo,
    )
        .into_response())
}

async fn calcular(pool: &PgPool, version: Version, filtro: &Filtro) -> Result<Bytes, CalculoError> {
    let cuerpo = match version {
        Version::V1 => serde_json::to_vec(&queries::v1(pool, filtro).await?),
        Version::V2 => serde_json::to_vec(&queries::v2(pool, filtro).await?),
    }?;
    Ok(Bytes::from(cuerpo))
}

#[derive(Debug, thiserror::Error)]
enum CalculoError {
    #[error("report query failed: {0}")]
    Db(#[from] sqlx::Error),
    #[error("report serialisation failed: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<&CalculoError> for Problem {
    fn from(error: &CalculoError) -> Self {
        match error {
            CalculoError::Db(db) => Problem::database(db),
            CalculoError::Json(json) => Problem::internal(json),
        }
    }
}

/// `GET/PUT /api/reports/version`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDto {
    /// The version this replica serves.
    pub active: Version,
    /// The version asked for; differs from `active` while a switch waits for its target.
    pub desired: Version,
    pub source: Fuente,
    pub switched_at: Option<DateTime<Utc>>,
    /// True when the source cannot be reached and `active` is the last version known.
    pub stale: bool,
    /// The replica that answered.
    pub replica: String,
}

impl VersionDto {
    fn new(estado: &EstadoVersion, fuente: Fuente, instancia: &str) -> Self {
        Self {
            active: estado.activa,
            desired: estado.deseada,
            source: fuente,
            switched_at: estado.cambiada_en,
            stale: estado.desactualizada,
            replica: instancia.to_owned(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CambiarVersion {
    /// `v1` or `v2`.
    pub active: Version,
}

impl From<ErrorFuente> for Problem {
    fn from(error: ErrorFuente) -> Self {
        tracing::warn!(%error, "version source unavailable");
        match error {
            ErrorFuente::SinRecurso(nombre) => Problem::unavailable(format!(
                "No existe el ReportVersion '{nombre}'; créelo (kubectl apply) antes de cambiar de versión"
            )),
            ErrorFuente::Rechazado { codigo, detalle } => Problem::new(
                StatusCode::from_u16(codigo).unwrap_or(StatusCode::FORBIDDEN),
                if codigo == 401 {
                    "unauthenticated"
                } else {
                    "forbidden"
                },
                "Rechazado por Kubernetes",
                format!(
                    "El API de Kubernetes no deja a quien llama cambiar el ReportVersion (el derecho a cambiar de versión es el de `kubectl patch rv`): {detalle}"
                ),
            ),
            ErrorFuente::Db(_) | ErrorFuente::Kube(_) => Problem::unavailable(
                "La fuente de la versión activa no responde; se sigue sirviendo la versión actual. Reintente",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")),
        }
    }
}

/// The active version of this replica. Open to anyone, as a probe is: it names a version and a
/// replica, no affiliate's data (the console and the switch's watchers poll it).
#[utoipa::path(get, path = "/api/reports/version", tag = "reports", security(()),
    responses((status = 200, body = VersionDto)))]
async fn version_actual(State(state): State<ApiState>) -> Json<VersionDto> {
    let estado = state.version.borrow().clone();
    Json(VersionDto::new(
        &estado,
        state.fuente.fuente(),
        &state.instancia,
    ))
}

/// Switches the version, with no restart and no failed request. With the `database` source
/// the answer already says the new version; with `kubernetes` it says `desired` until the
/// operator has confirmed the target ready.
#[utoipa::path(put, path = "/api/reports/version", tag = "reports",
    request_body = CambiarVersion,
    responses(
        (status = 200, body = VersionDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Quien llama no puede `patch` el ReportVersion", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
async fn cambiar_version(
    State(state): State<ApiState>,
    llamante: Llamante,
    body: ApiJson<CambiarVersion>,
) -> Result<Json<VersionDto>, Problem> {
    let estado = pedir_como(&state, &llamante, body.value.active).await?;
    // This replica serves the change at once; the others learn of it from the source.
    publicar(&state.version, estado);
    let estado = state.version.borrow().clone();
    Ok(Json(VersionDto::new(
        &estado,
        state.fuente.fuente(),
        &state.instancia,
    )))
}

/// Asks the version source for `version` on behalf of the caller, and audits it:
/// - an operator's own token patches the ReportVersion, so the API server decides (the right
///   to switch is exactly the right to `kubectl patch rv`) and its audit log names the person;
///   the service's account may only read it. With the database source (no API server to ask)
///   the operator needs the same right by SubjectAccessReview;
/// - a partner's key may not switch (403);
/// - development mode switches with the service's own access.
pub(crate) async fn pedir_como(
    state: &ApiState,
    llamante: &Llamante,
    version: Version,
) -> Result<EstadoVersion, Problem> {
    let permiso = Permiso::CAMBIAR_VERSION;
    let solicitante = match (&llamante.principal, llamante.token_de_operador()) {
        (Principal::Operador(_), Some(token)) => {
            if state.fuente.fuente() == Fuente::Database {
                llamante.operador(permiso, version.as_str()).await?;
            }
            Solicitante::Operador(token)
        }
        (Principal::Desarrollo, _) => Solicitante::Servicio,
        _ => {
            // A partner's key: refused (and audited) as any operator action is.
            llamante.operador(permiso, version.as_str()).await?;
            Solicitante::Servicio
        }
    };
    let pedido = state.fuente.pedir(version, solicitante).await;
    let (resultado, detalle) = match &pedido {
        Ok(_) => (Resultado::Permitido, String::new()),
        Err(ErrorFuente::Rechazado { .. }) => (Resultado::Denegado, "Kubernetes RBAC".into()),
        Err(error) => (Resultado::Fallido, error.to_string()),
    };
    llamante
        .auditar(permiso, version.as_str(), resultado, &detalle)
        .await;
    Ok(pedido?)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SaludVersion {
    pub lag_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Salud {
    /// `healthy`, `catching_up` (the backlog found at start is not worked off yet) or
    /// `stale` (the version source cannot be reached).
    pub status: &'static str,
    pub version: Version,
    /// Lag of the last event this replica applied (occurred → applied).
    pub lag_ms: u64,
    /// Events this replica applied since it started (duplicates not counted).
    pub eventos_procesados: u64,
    /// Redelivered events this replica recognised and skipped.
    pub eventos_duplicados: u64,
    /// Both versions are applied by the same statement, so they share the lag; a rebuild
    /// makes its version's tables wait until it commits.
    pub versiones: BTreeMap<String, SaludVersion>,
    pub replica: String,
}

/// The projection's health on this replica (open to anyone, as a probe is).
#[utoipa::path(get, path = "/api/reports/health", tag = "reports", security(()),
    responses((status = 200, body = Salud)))]
async fn salud(State(state): State<ApiState>) -> Json<Salud> {
    let estado = state.version.borrow().clone();
    let lag_ms = u64::try_from(state.progreso.lag().as_millis()).unwrap_or(u64::MAX);
    let status = if estado.desactualizada {
        "stale"
    } else if state.progreso.al_dia(state.conectado_desde.get().copied()) {
        "healthy"
    } else {
        "catching_up"
    };
    Json(Salud {
        status,
        version: estado.activa,
        lag_ms,
        eventos_procesados: state.progreso.aplicados(),
        eventos_duplicados: state.progreso.duplicados(),
        versiones: Version::ALL
            .iter()
            .map(|v| (v.as_str().to_owned(), SaludVersion { lag_ms }))
            .collect(),
        replica: state.instancia.to_string(),
    })
}

/// A response header with the version (used by the legacy routes too).
pub fn version_header(version: Version) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(VERSION_HEADER),
        header_value(version.as_str()),
    )
}
