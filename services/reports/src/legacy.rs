//! Legacy reporting (`/reporting`, API.md §5.3), kept for existing clients. `datos` comes from
//! the data service of the version being served (v1 ↔ data-service-v1, v2 ↔ data-service-v2),
//! so switching the report version switches the data service with it; the old admin call that
//! switched the data service goes through the same version source.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use platform::http::{ApiJson, FieldError, Problem, RequestId, uuid_param};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    api::{ApiState, version_header},
    domain::Version,
    version::publicar,
};

/// The legacy report types and the data-service path of each, per version.
const TIPOS: [(&str, &str, &str); 3] = [
    (
        "pagos_por_periodo",
        "/api/v1/pagos/report",
        "/api/v2/payments/report",
    ),
    (
        "campanas_activas",
        "/api/v1/campanas/report",
        "/api/v2/campaigns/report",
    ),
    (
        "metricas_generales",
        "/api/v1/metricas/report",
        "/api/v2/metrics/report",
    ),
];

fn ruta(tipo: &str, version: Version) -> Option<&'static str> {
    TIPOS
        .iter()
        .find(|(t, _, _)| *t == tipo)
        .map(|(_, v1, v2)| match version {
            Version::V1 => *v1,
            Version::V2 => *v2,
        })
}

fn tipos() -> String {
    TIPOS.map(|(t, _, _)| t).join(", ")
}

/// The data services, one per version.
#[derive(Debug, Clone)]
pub struct ServiciosDatos {
    pub v1: String,
    pub v2: String,
    pub client: reqwest::Client,
}

impl ServiciosDatos {
    pub fn new(v1: &str, v2: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            v1: v1.trim_end_matches('/').to_owned(),
            v2: v2.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(2))
                .pool_idle_timeout(platform::http::upstream::POOL_IDLE_TIMEOUT)
                .build()?,
        })
    }

    pub fn url(&self, version: Version) -> &str {
        match version {
            Version::V1 => &self.v1,
            Version::V2 => &self.v2,
        }
    }

    /// The version whose data service is at `url`. Only the configured data services are
    /// ever called: a URL from a request would let any client make this service fetch
    /// anything its network reaches.
    fn version_de(&self, url: &str) -> Option<Version> {
        let url = url.trim().trim_end_matches('/');
        Version::ALL.into_iter().find(|v| self.url(*v) == url)
    }

    fn desconocida(&self, url: &str) -> Problem {
        Problem::validation(vec![FieldError::new(
            "url",
            format!(
                "'{url}' no es un servicio de datos configurado; los configurados son {} (v1) y {} (v2)",
                self.v1, self.v2
            ),
        )])
    }
}

#[derive(Clone)]
pub struct LegacyState {
    pub api: ApiState,
    pub datos: Arc<ServiciosDatos>,
}

pub fn router(state: LegacyState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(generar))
        .routes(routes!(obtener))
        .routes(routes!(listar))
        .routes(routes!(cambiar_servicio))
        .routes(routes!(configuracion))
        .routes(routes!(verificar))
        .routes(routes!(salud))
        .with_state(state)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SolicitudReporte {
    /// `pagos_por_periodo`, `campanas_activas` or `metricas_generales`.
    pub tipo_reporte: String,
    /// Kept with the report (the data services compute over everything).
    #[serde(default)]
    pub filtros: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReporteLegacy {
    pub id: Uuid,
    pub tipo: String,
    pub fecha_generacion: DateTime<Utc>,
    /// The data service's answer, as it gave it.
    pub datos: Value,
    pub metadatos: Value,
    /// `v1` or `v2`: the data service that produced `datos`.
    pub version_servicio_datos: Version,
}

/// The problem for a data service that failed: 503 when it cannot be reached (try again), 502
/// when it answered something unusable.
/// Legacy reporting is the operators': its reports are platform-wide figures of every
/// affiliate, and its admin routes reach the data services (`get reports`).
async fn operador(llamante: &access::Llamante, objeto: &str) -> Result<(), Problem> {
    llamante
        .operador(access::Permiso::LEER_REPORTES, objeto)
        .await
}

fn fallo_servicio(url: &str, error: &reqwest::Error) -> Problem {
    tracing::warn!(%url, %error, "data service failed");
    if error.is_connect() || error.is_timeout() {
        Problem::unavailable(format!(
            "El servicio de datos {url} no responde; reintente en unos segundos"
        ))
        .with_header(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("2"),
        )
    } else {
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "bad-gateway",
            "Respuesta no válida del servicio de datos",
            format!("El servicio de datos {url} respondió con un error"),
        )
    }
}

/// Generates a report from the data service of the version being served, and keeps it.
#[utoipa::path(post, path = "/reporting/report", tag = "reporting",
    request_body = SolicitudReporte,
    responses(
        (status = 200, body = ReporteLegacy),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 502, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
async fn generar(
    State(state): State<LegacyState>,
    llamante: access::Llamante,
    request_id: Option<axum::Extension<RequestId>>,
    body: ApiJson<SolicitudReporte>,
) -> Result<Response, Problem> {
    operador(&llamante, "/reporting/report").await?;
    // Read once: the whole report is produced by this version's data service.
    let version = state.api.version.borrow().activa;
    let solicitud = body.value;
    let Some(ruta) = ruta(&solicitud.tipo_reporte, version) else {
        return Err(Problem::validation(vec![FieldError::new(
            "tipo_reporte",
            format!(
                "'{}' no es un tipo de reporte; use {}",
                solicitud.tipo_reporte,
                tipos()
            ),
        )]));
    };
    let base = state.datos.url(version);
    let url = format!("{base}{ruta}");
    let inicio = std::time::Instant::now();
    let mut peticion = state.datos.client.get(&url);
    if let Some(axum::Extension(RequestId(id))) = &request_id {
        peticion = peticion.header(platform::http::REQUEST_ID_HEADER, id);
    }
    let respuesta = peticion
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fallo_servicio(base, &e))?;
    let datos: Value = respuesta
        .json()
        .await
        .map_err(|e| fallo_servicio(base, &e))?;
    let reporte = ReporteLegacy {
        id: Uuid::now_v7(),
        tipo: solicitud.tipo_reporte,
        fecha_generacion: Utc::now(),
        datos,
        metadatos: json!({
            "filtros": solicitud.filtros.unwrap_or_default(),
            "servicio_datos": base,
            "replica": state.api.instancia.as_ref(),
            "duracion_ms": inicio.elapsed().as_millis() as u64,
        }),
        version_servicio_datos: version,
    };
    sqlx::query(
        "INSERT INTO reportes_legacy (id, tipo, fecha_generacion, cuerpo) VALUES ($1, $2, $3, $4)",
    )
    .bind(reporte.id)
    .bind(&reporte.tipo)
    .bind(reporte.fecha_generacion)
    .bind(serde_json::to_value(&reporte).map_err(|e| Problem::internal(&e))?)
    .execute(&state.api.pool)
    .await
    .map_err(|e| Problem::database(&e))?;
    Ok(([version_header(version)], Json(reporte)).into_response())
}

/// A report generated before, by any replica.
#[utoipa::path(get, path = "/reporting/report/{id}", tag = "reporting",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = ReporteLegacy),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
async fn obtener(
    State(state): State<LegacyState>,
    llamante: access::Llamante,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    operador(&llamante, &id).await?;
    let id = uuid_param("id", &id)?;
    let cuerpo: Option<Value> =
        sqlx::query_scalar("SELECT cuerpo FROM reportes_legacy WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.api.pool)
            .await
            .map_err(|e| Problem::database(&e))?;
    cuerpo
        .map(Json)
        .ok_or_else(|| Problem::not_found("Reporte no encontrado"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListaReportes {
    pub reportes: Vec<ReporteLegacy>,
    pub total: usize,
}

/// The latest reports, newest first.
#[utoipa::path(get, path = "/reporting/reports", tag = "reporting",
    params(
        ("tipo" = Option<String>, Query, description = "pagos_por_periodo, campanas_activas o metricas_generales"),
        ("limite" = Option<i64>, Query, description = "1..100, por defecto 10"),
    ),
    responses(
        (status = 200, body = ListaReportes),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    ))]
async fn listar(
    State(state): State<LegacyState>,
    llamante: access::Llamante,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, Problem> {
    operador(&llamante, "/reporting/reports").await?;
    let mut errores = Vec::new();
    for nombre in params
        .keys()
        .filter(|k| !["tipo", "limite"].contains(&k.as_str()))
    {
        errores.push(FieldError::new(
            nombre,
            "parámetro desconocido; use tipo y limite",
        ));
    }
    let tipo = params.get("tipo");
    if let Some(tipo) = tipo
        && ruta(tipo, Version::V1).is_none()
    {
        errores.push(FieldError::new(
            "tipo",
            format!("'{tipo}' no es un tipo de reporte; use {}", tipos()),
        ));
    }
    let limite = match params.get("limite").map(|l| l.parse::<i64>()) {
        None => 10,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            errores.push(FieldError::new(
                "limite",
                "debe ser un entero entre 1 y 100",
            ));
            10
        }
    };
    if !errores.is_empty() {
        return Err(Problem::validation(errores));
    }
    let reportes: Vec<Value> = sqlx::query_scalar(
        "SELECT cuerpo FROM reportes_legacy WHERE ($1::text IS NULL OR tipo = $1) \
         ORDER BY fecha_generacion DESC, id DESC LIMIT $2",
    )
    .bind(tipo)
    .bind(limite)
    .fetch_all(&state.api.pool)
    .await
    .map_err(|e| Problem::database(&e))?;
    Ok(Json(
        json!({ "total": reportes.len(), "reportes": reportes }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CambiarServicio {
    /// The data service to use; must be the configured one of `version` when given.
    #[serde(default)]
    pub url: Option<String>,
    /// `v1` or `v2`.
    pub version: Version,
}

/// The old way to switch: selects the data service of `version`, which switches the report
/// version with it (through the same source as `PUT /api/reports/version`).
#[utoipa::path(post, path = "/reporting/admin/servicio-datos", tag = "reporting",
    request_body = CambiarServicio,
    responses(
        (status = 200, description = "La configuración tras el cambio"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Quien llama no puede `patch` el ReportVersion", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
async fn cambiar_servicio(
    State(state): State<LegacyState>,
    llamante: access::Llamante,
    body: ApiJson<CambiarServicio>,
) -> Result<Json<Value>, Problem> {
    let CambiarServicio { url, version } = body.value;
    if let Some(url) = url
        && state.datos.version_de(&url) != Some(version)
    {
        return Err(state.datos.desconocida(&url));
    }
    let estado = crate::api::pedir_como(&state.api, &llamante, version).await?;
    publicar(&state.api.version, estado);
    Ok(Json(configuracion_actual(&state)))
}

fn configuracion_actual(state: &LegacyState) -> Value {
    let estado = state.api.version.borrow().clone();
    json!({
        "version_activa": estado.activa,
        "version_deseada": estado.deseada,
        "servicio_datos_activo": state.datos.url(estado.activa),
        "servicios_datos": { "v1": state.datos.v1, "v2": state.datos.v2 },
        "fuente": state.api.fuente.fuente(),
        "cambiada_en": estado.cambiada_en,
        "replica": state.api.instancia.as_ref(),
    })
}

/// Which data service is active, and the configured ones.
#[utoipa::path(get, path = "/reporting/admin/configuracion", tag = "reporting",
    responses((status = 200, description = "Versión activa y servicios de datos")))]
async fn configuracion(
    State(state): State<LegacyState>,
    llamante: access::Llamante,
) -> Result<Json<Value>, Problem> {
    operador(&llamante, "/reporting/admin/configuracion").await?;
    Ok(Json(configuracion_actual(&state)))
}

async fn sondear(datos: &ServiciosDatos, url: &str) -> Value {
    let inicio = std::time::Instant::now();
    let respuesta = datos
        .client
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    let latencia_ms = inicio.elapsed().as_millis() as u64;
    match respuesta {
        Ok(r) => {
            let cuerpo: Value = r.json().await.unwrap_or(Value::Null);
            json!({"url": url, "disponible": true, "latencia_ms": latencia_ms,
                   "version": cuerpo.get("version"), "respuesta": cuerpo})
        }
        Err(error) => json!({"url": url, "disponible": false, "latencia_ms": latencia_ms,
                             "error": if error.is_connect() { "no responde".to_owned() }
                                      else { format!("respondió {}", error.status().map_or_else(|| "con un error".to_owned(), |s| s.to_string())) }}),
    }
}

/// Probes a configured data service's `/health`.
#[utoipa::path(get, path = "/reporting/admin/verificar-servicio", tag = "reporting",
    params(("url" = String, Query, description = "La URL de un servicio de datos configurado")),
    responses(
        (status = 200, description = "Resultado de la verificación (disponible o no)"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    ))]
async fn verificar(
    State(state): State<LegacyState>,
    llamante: access::Llamante,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, Problem> {
    operador(&llamante, "/reporting/admin/verificar-servicio").await?;
    let Some(url) = params.get("url") else {
        return Err(Problem::validation(vec![FieldError::new(
            "url",
            "es obligatorio",
        )]));
    };
    let Some(version) = state.datos.version_de(url) else {
        return Err(state.datos.desconocida(url));
    };
    let mut resultado = sondear(&state.datos, state.datos.url(version)).await;
    resultado["version_configurada"] = json!(version);
    Ok(Json(resultado))
}

/// Legacy reporting's health: the version served and whether its data service answers.
#[utoipa::path(get, path = "/reporting/health", tag = "reporting", security(()),
    responses((status = 200, description = "Estado del reporting heredado")))]
async fn salud(State(state): State<LegacyState>, _headers: HeaderMap) -> Json<Value> {
    let activa = state.api.version.borrow().activa;
    let servicio = sondear(&state.datos, state.datos.url(activa)).await;
    let disponible = servicio["disponible"].as_bool().unwrap_or(false);
    Json(json!({
        "status": if disponible { "healthy" } else { "degraded" },
        "service": "reporting",
        "version_activa": activa,
        "servicio_datos": servicio,
    }))
}
