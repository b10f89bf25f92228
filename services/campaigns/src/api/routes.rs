use std::collections::{BTreeMap, HashMap};

use access::{Alcance, Ambito, Llamante, Permiso, Resultado, filtro_de_afiliado};
use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderName, StatusCode, header},
};
use platform::{
    http::{
        ApiJson, FieldError, JsonReply, Problem, RequestId, header_value, idempotency_key,
        idempotent,
    },
    idempotency::IdempotencyStore,
};
use rust_decimal::{Decimal, prelude::ToPrimitive};
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::dto::{
    CampanaDto, CrearCampanaBody, Estadisticas, ListaCampanas, MetricasAgregadas, MetricasDetalle,
    PresupuestoBody,
};
use crate::{
    application::{ErrorCampanas, Orden, cambiar_presupuesto, crear_campana, ejecutar_accion},
    domain::{Accion, Campana},
    infrastructure::repositorio::{self, Filtro},
};

#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub idempotency: IdempotencyStore,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Aeropartners — Campañas", version = "1.0.0",
         description = "Campañas de afiliados: ciclo de vida, presupuesto y métricas."),
    tags((name = "campaigns", description = "Gestión de campañas"))
)]
struct CampanasDoc;

pub fn router(state: ApiState) -> (axum::Router, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(CampanasDoc::openapi())
        .routes(routes!(crear, listar))
        .routes(routes!(estadisticas))
        .routes(routes!(obtener))
        .routes(routes!(activar))
        .routes(routes!(pausar))
        .routes(routes!(finalizar))
        .routes(routes!(cancelar))
        .routes(routes!(presupuesto))
        .routes(routes!(metricas))
        .with_state(state)
        .split_for_parts()
}

impl From<ErrorCampanas> for Problem {
    fn from(error: ErrorCampanas) -> Self {
        match error {
            ErrorCampanas::NoEncontrada => Problem::not_found("Campaña no encontrada"),
            ErrorCampanas::Regla(regla) => Problem::conflict(regla.to_string()),
            ErrorCampanas::VersionNoCoincide { .. } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondición fallida",
                error.to_string(),
            ),
            ErrorCampanas::Solicitud(errores) => Problem::validation(
                errores
                    .into_iter()
                    .map(|(c, m)| FieldError::new(c, m))
                    .collect(),
            ),
            ErrorCampanas::Db(db) => Problem::database(&db),
        }
    }
}

fn id_desde_ruta(raw: &str) -> Result<Uuid, Problem> {
    platform::http::uuid_param("id", raw)
}

/// `If-Match: 3`, `"3"` or `W/"3"` → `Some(3)`; `*` or absent → `None`.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = value.to_str().unwrap_or_default().trim();
    if raw == "*" {
        return Ok(None);
    }
    raw.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .map(Some)
        .map_err(|_| {
            Problem::validation(vec![FieldError::new(
                "If-Match",
                format!("'{raw}' no es una versión; use el campo version de la campaña"),
            )])
        })
}

fn etag(campana: &Campana) -> (HeaderName, axum::http::HeaderValue) {
    (
        header::ETAG,
        header_value(&format!("\"{}\"", campana.version)),
    )
}

fn respuesta(status: StatusCode, campana: &Campana) -> Result<JsonReply, Problem> {
    Ok(JsonReply::new(status, CampanaDto::from(campana))?
        .with_header(etag(campana).0, etag(campana).1))
}

/// Create a campaign (`CREATED`).
#[utoipa::path(
    post, path = "/campaigns", tag = "campaigns",
    request_body = CrearCampanaBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Clave de idempotencia (se guarda 24 h)")),
    responses(
        (status = 201, description = "Creada; `Location` la nombra", body = CampanaDto),
        (status = 403, description = "La clave no tiene campaigns:write, o id_afiliado no es el de la clave", body = Problem, content_type = "application/problem+json"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Primera solicitud con la misma clave aún en curso", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reutilizada con otro cuerpo", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn crear(
    State(state): State<ApiState>,
    llamante: Llamante,
    RequestId(request_id): RequestId,
    headers: HeaderMap,
    body: ApiJson<CrearCampanaBody>,
) -> Result<JsonReply, Problem> {
    idempotency_key(&headers)?;
    let id_afiliado = llamante.afiliado_del_cuerpo(
        Alcance::CampanasEscritura,
        body.value.id_afiliado.as_deref(),
    )?;
    let nueva = body
        .value
        .validar(&id_afiliado)
        .map_err(ErrorCampanas::Solicitud)?;
    idempotent(
        &state
            .idempotency
            .within(&llamante.espacio_de_idempotencia()),
        &headers,
        "POST",
        "/campaigns",
        &body.raw,
        || async {
            let campana = crear_campana(&state.pool, nueva, &request_id).await?;
            Ok(respuesta(StatusCode::CREATED, &campana)?.with_header(
                header::LOCATION,
                header_value(&format!("/campaigns/{}", campana.id)),
            ))
        },
    )
    .await
}

fn parametro_entero(
    params: &HashMap<String, String>,
    nombre: &'static str,
    defecto: i64,
    rango: std::ops::RangeInclusive<i64>,
) -> Result<i64, Problem> {
    match params.get(nombre) {
        None => Ok(defecto),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| rango.contains(n))
            .ok_or_else(|| {
                Problem::validation(vec![FieldError::new(
                    nombre,
                    format!(
                        "debe ser un entero entre {} y {}",
                        rango.start(),
                        rango.end()
                    ),
                )])
            }),
    }
}

/// A partner reads its own campaigns (`campaigns:read`), an operator everyone's.
async fn lectura(llamante: &Llamante) -> Result<Ambito, Problem> {
    llamante
        .ambito(Alcance::CampanasLectura, Permiso::LEER_CAMPANAS)
        .await
}

/// The campaign `raw` names, if the caller may see it: another affiliate's is not found.
async fn visible(state: &ApiState, llamante: &Llamante, raw: &str) -> Result<Campana, Problem> {
    let ambito = lectura(llamante).await?;
    Ok(repositorio::buscar(&state.pool, id_desde_ruta(raw)?)
        .await
        .map_err(ErrorCampanas::from)?
        .filter(|campana| ambito.ve(&campana.id_afiliado))
        .ok_or(ErrorCampanas::NoEncontrada)?)
}

/// A partner changes its own campaigns (`campaigns:write`, another's is not found); an
/// operator any campaign, with `update campaigns` (audited).
async fn administracion(llamante: &Llamante) -> Result<Ambito, Problem> {
    llamante
        .ambito(Alcance::CampanasEscritura, Permiso::ADMINISTRAR_CAMPANAS)
        .await
}

/// Leaves an operator's change of a partner's campaign in the audit trail.
async fn auditar(llamante: &Llamante, path: &str, resultado: &Result<JsonReply, Problem>) {
    if llamante.es_operador() {
        let (resultado, detalle) = match resultado {
            Ok(_) => (Resultado::Permitido, String::new()),
            Err(problem) => (Resultado::Fallido, problem.status.to_string()),
        };
        llamante
            .auditar(Permiso::ADMINISTRAR_CAMPANAS, path, resultado, &detalle)
            .await;
    }
}

/// List campaigns, newest first. `total` counts every match, not just this page.
#[utoipa::path(
    get, path = "/campaigns", tag = "campaigns",
    params(
        ("limit" = Option<i64>, Query, description = "1..100, por defecto 50"),
        ("offset" = Option<i64>, Query, description = "≥ 0, por defecto 0"),
        ("id_afiliado" = Option<String>, Query),
        ("estado" = Option<String>, Query, description = "CREATED, ACTIVE, PAUSED, COMPLETED o CANCELLED"),
    ),
    responses((status = 200, body = ListaCampanas), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
async fn listar(
    State(state): State<ApiState>,
    llamante: Llamante,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ListaCampanas>, Problem> {
    let ambito = lectura(&llamante).await?;
    let limit = parametro_entero(&params, "limit", 50, 1..=100)?;
    let offset = parametro_entero(&params, "offset", 0, 0..=i64::from(i32::MAX))?;
    let estado = match params.get("estado") {
        None => None,
        Some(raw) => Some(crate::domain::EstadoCampana::from_code(raw).ok_or_else(|| {
            Problem::validation(vec![FieldError::new(
                "estado",
                format!("'{raw}' no es un estado válido"),
            )])
        })?),
    };
    let filtro = Filtro {
        id_afiliado: filtro_de_afiliado(&ambito, params.get("id_afiliado").map(String::as_str))?,
        estado,
    };
    let (campanas, total) = repositorio::listar(&state.pool, &filtro, limit, offset)
        .await
        .map_err(ErrorCampanas::from)?;
    Ok(Json(ListaCampanas {
        campanas: campanas.iter().map(CampanaDto::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// One campaign.
#[utoipa::path(
    get, path = "/campaigns/{id}", tag = "campaigns",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = CampanaDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn obtener(
    State(state): State<ApiState>,
    llamante: Llamante,
    Path(id): Path<String>,
) -> Result<JsonReply, Problem> {
    let campana = visible(&state, &llamante, &id).await?;
    respuesta(StatusCode::OK, &campana)
}

async fn accion(
    state: ApiState,
    llamante: Llamante,
    request_id: String,
    headers: HeaderMap,
    id: String,
    accion: Accion,
    nombre: &str,
) -> Result<JsonReply, Problem> {
    let ambito = administracion(&llamante).await?;
    let id = id_desde_ruta(&id)?;
    let orden = Orden {
        id,
        if_match: if_match(&headers)?,
        request_id: &request_id,
        solo_de: ambito.afiliado(),
    };
    let path = format!("/campaigns/{id}/{nombre}");
    let resultado = idempotent(
        &state
            .idempotency
            .within(&llamante.espacio_de_idempotencia()),
        &headers,
        "PATCH",
        &path,
        b"",
        || async {
            let campana = ejecutar_accion(&state.pool, orden, accion).await?;
            respuesta(StatusCode::OK, &campana)
        },
    )
    .await;
    auditar(&llamante, &path, &resultado).await;
    resultado
}

macro_rules! lifecycle_endpoint {
    ($fn:ident, $segment:literal, $accion:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(
            patch, path = concat!("/campaigns/{id}/", $segment), tag = "campaigns",
            params(
                ("id" = Uuid, Path),
                ("If-Match" = Option<String>, Header, description = "Versión esperada (412 si no coincide)"),
                ("Idempotency-Key" = Option<String>, Header),
            ),
            responses(
                (status = 200, body = CampanaDto),
                (status = 404, body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "La transición no está permitida", body = Problem, content_type = "application/problem+json"),
                (status = 412, description = "If-Match no coincide", body = Problem, content_type = "application/problem+json"),
            )
        )]
        async fn $fn(
            State(state): State<ApiState>,
            llamante: Llamante,
            RequestId(request_id): RequestId,
            headers: HeaderMap,
            Path(id): Path<String>,
        ) -> Result<JsonReply, Problem> {
            accion(state, llamante, request_id, headers, id, $accion, $segment).await
        }
    };
}

lifecycle_endpoint!(
    activar,
    "activate",
    Accion::Activar,
    "Activate (from CREATED or PAUSED; needs budget > 0 and a future end)."
);
lifecycle_endpoint!(pausar, "pause", Accion::Pausar, "Pause an ACTIVE campaign.");
lifecycle_endpoint!(
    finalizar,
    "finish",
    Accion::Finalizar,
    "Complete a CREATED, ACTIVE or PAUSED campaign."
);
lifecycle_endpoint!(
    cancelar,
    "cancel",
    Accion::Cancelar,
    "Cancel a CREATED, ACTIVE or PAUSED campaign."
);

/// Change the budget (not in COMPLETED/CANCELLED, never below the current spend).
#[utoipa::path(
    patch, path = "/campaigns/{id}/budget", tag = "campaigns",
    request_body = PresupuestoBody,
    params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, description = "Versión esperada (412 si no coincide)"),
        ("Idempotency-Key" = Option<String>, Header),
    ),
    responses(
        (status = 200, body = CampanaDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 412, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn presupuesto(
    State(state): State<ApiState>,
    llamante: Llamante,
    RequestId(request_id): RequestId,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: ApiJson<PresupuestoBody>,
) -> Result<JsonReply, Problem> {
    let ambito = administracion(&llamante).await?;
    let id = id_desde_ruta(&id)?;
    let orden = Orden {
        id,
        if_match: if_match(&headers)?,
        request_id: &request_id,
        solo_de: ambito.afiliado(),
    };
    idempotency_key(&headers)?;
    let mut errores = Vec::new();
    let nuevo = body.value.validar(&mut errores);
    let nuevo = match nuevo {
        Some(nuevo) if errores.is_empty() => nuevo,
        _ => return Err(ErrorCampanas::Solicitud(errores).into()),
    };
    let path = format!("/campaigns/{id}/budget");
    let resultado = idempotent(
        &state
            .idempotency
            .within(&llamante.espacio_de_idempotencia()),
        &headers,
        "PATCH",
        &path,
        &body.raw,
        || async {
            let campana = cambiar_presupuesto(&state.pool, orden, nuevo).await?;
            respuesta(StatusCode::OK, &campana)
        },
    )
    .await;
    auditar(&llamante, &path, &resultado).await;
    resultado
}

/// Metrics with derived ratios and suggestions.
#[utoipa::path(
    get, path = "/campaigns/{id}/metrics", tag = "campaigns",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = MetricasDetalle),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn metricas(
    State(state): State<ApiState>,
    llamante: Llamante,
    Path(id): Path<String>,
) -> Result<Json<MetricasDetalle>, Problem> {
    let campana = visible(&state, &llamante, &id).await?;
    Ok(Json(MetricasDetalle::de(&campana)))
}

fn porcentaje(numerador: i64, denominador: i64) -> f64 {
    if denominador == 0 {
        return 0.0;
    }
    (Decimal::from(numerador) / Decimal::from(denominador) * Decimal::ONE_HUNDRED)
        .round_dp(2)
        .to_f64()
        .unwrap_or(0.0)
}

/// Totals over every campaign (or one affiliate's); a partner's key sees its own.
#[utoipa::path(
    get, path = "/campaigns/stats/general", tag = "campaigns",
    params(("id_afiliado" = Option<String>, Query)),
    responses((status = 200, body = Estadisticas))
)]
async fn estadisticas(
    State(state): State<ApiState>,
    llamante: Llamante,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Estadisticas>, Problem> {
    let ambito = lectura(&llamante).await?;
    let id_afiliado = filtro_de_afiliado(&ambito, params.get("id_afiliado").map(String::as_str))?;
    let (agregados, por_estado) = repositorio::estadisticas(&state.pool, id_afiliado.as_deref())
        .await
        .map_err(ErrorCampanas::from)?;
    let mut distribucion: BTreeMap<String, i64> = crate::domain::EstadoCampana::ALL
        .iter()
        .map(|e| (e.code().to_owned(), 0))
        .collect();
    distribucion.extend(por_estado);
    Ok(Json(Estadisticas {
        total_campanas: agregados.total,
        metricas_agregadas: MetricasAgregadas {
            impresiones: agregados.impresiones,
            clicks: agregados.clicks,
            conversiones: agregados.conversiones,
            gasto_total: agregados.gasto,
            presupuesto_total: agregados.presupuesto,
            ctr: porcentaje(agregados.clicks, agregados.impresiones),
            tasa_conversion: porcentaje(agregados.conversiones, agregados.clicks),
        },
        distribucion_por_estado: distribucion,
    }))
}
