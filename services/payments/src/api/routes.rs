use std::collections::HashMap;

use access::{Alcance, Llamante, Permiso, Resultado, filtro_de_afiliado};
use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
};
use chrono::DurationRound;
use platform::{
    group_commit::GroupCommitError,
    http::{
        ApiJson, FieldError, JsonReply, Problem, RequestId, exact_decimal, idempotency_key,
        idempotent,
    },
    idempotency::IdempotencyStore,
    outbox::{self, OutboxStats},
};
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::dto::{
    CrearPagoBody, ListaPagos, MinutoDePagos, PagoCreado, PagoDetalle, PagosPorMinuto, RevertirBody,
};
use crate::{
    application::{ColaCreacion, Creacion, ErrorPagos, SolicitudCreacion, revertir_pago},
    domain::{EstadoPago, NuevoPago, Pago},
    infrastructure::repositorio::{self, EntradaTraza},
};

#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub idempotency: IdempotencyStore,
    /// Create requests are committed in groups (see `application::crear`).
    pub creacion: ColaCreacion,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Aeropartners — Pagos", version = "1.0.0",
         description = "Pagos a afiliados: exactamente una vez, con trazabilidad completa."),
    tags((name = "pagos", description = "Ciclo de vida de los pagos"))
)]
struct PagosDoc;

/// The `/pagos` routes and their OpenAPI document.
pub fn router(state: ApiState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, openapi) = OpenApiRouter::with_openapi(PagosDoc::openapi())
        .routes(routes!(crear, listar))
        .routes(routes!(estadisticas_outbox))
        .routes(routes!(por_minuto))
        .routes(routes!(obtener))
        .routes(routes!(eventos))
        .routes(routes!(revertir))
        .with_state(state)
        .split_for_parts();
    (router, openapi)
}

impl From<ErrorPagos> for Problem {
    fn from(error: ErrorPagos) -> Self {
        match error {
            ErrorPagos::NoEncontrado => Problem::not_found("Pago no encontrado"),
            ErrorPagos::ReferenciaEnUso(_) => Problem::conflict(error.to_string()),
            ErrorPagos::Regla(regla) => Problem::conflict(capitalizar(&regla.to_string())),
            ErrorPagos::Solicitud(invalida) => Problem::validation(
                invalida
                    .0
                    .into_iter()
                    .map(|(campo, mensaje)| FieldError::new(campo, mensaje))
                    .collect(),
            ),
            ErrorPagos::Db(db) => Problem::database(&db),
            ErrorPagos::Cola(GroupCommitError::Full) => Problem::unavailable(
                "El servicio de pagos está saturado: la cola de escritura está llena; no se guardó nada, reintente en un momento",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")),
            ErrorPagos::Cola(GroupCommitError::Closed) => Problem::unavailable(
                "El servicio de pagos se está deteniendo; no se guardó nada, reintente en otra instancia",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")),
            ErrorPagos::Cola(GroupCommitError::Store(error)) => {
                tracing::warn!(%error, "payment not stored");
                Problem::unavailable("No se pudo guardar el pago; no se guardó nada, reintente")
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("2"))
            }
        }
    }
}

/// The references of the commissions the platform pays (`COM-…`, derived from the tracked
/// conversion): a partner may not take one, or a commission would find its reference in use.
const PREFIJO_COMISIONES: &str = "COM-";

fn capitalizar(texto: &str) -> String {
    let mut chars = texto.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn id_desde_ruta(raw: &str) -> Result<Uuid, Problem> {
    platform::http::uuid_param("id_pago", raw)
}

/// Accept a payment.
///
/// Exactly once per `referencia_pago`: the same request again returns the original payment
/// with `Idempotent-Replayed: true`; the same reference with other data is a 409. The optional
/// `Idempotency-Key` header replays the first response (422 if the body differs, 409 while the
/// first request is still running).
#[utoipa::path(
    post, path = "/pagos", tag = "pagos",
    request_body = CrearPagoBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Clave de idempotencia del cliente (se guarda 24 h)")),
    responses(
        (status = 200, description = "Pago aceptado (o el original, si es una repetición)", body = PagoCreado),
        (status = 400, description = "Solicitud no válida", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Sin credencial, o credencial no válida", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "La clave no tiene payments:write, o id_afiliado no es el de la clave", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "referencia_pago en uso con otros datos, o la primera solicitud con esa clave sigue en curso", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reutilizada con otro cuerpo", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Servicio saturado o deteniéndose; no se guardó nada (ver Retry-After)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn crear(
    State(state): State<ApiState>,
    llamante: Llamante,
    RequestId(request_id): RequestId,
    headers: HeaderMap,
    body: ApiJson<CrearPagoBody>,
) -> Result<JsonReply, Problem> {
    idempotency_key(&headers)?;
    let id_afiliado =
        llamante.afiliado_del_cuerpo(Alcance::PagosEscritura, body.value.id_afiliado.as_deref())?;
    if body
        .value
        .referencia_pago
        .trim()
        .starts_with(PREFIJO_COMISIONES)
    {
        return Err(Problem::validation(vec![FieldError::new(
            "referencia_pago",
            format!(
                "las referencias que empiezan por {PREFIJO_COMISIONES} son de las comisiones que crea la plataforma"
            ),
        )]));
    }
    let idempotency = state.idempotency.within(&id_afiliado);
    let solicitud = NuevoPago::validar(
        &id_afiliado,
        exact_decimal(&body.value.monto),
        &body.value.moneda,
        &body.value.referencia_pago,
    )
    .map_err(ErrorPagos::from)?;
    idempotent(
        &idempotency,
        &headers,
        "POST",
        "/pagos",
        &body.raw,
        || async {
            let solicitud = SolicitudCreacion {
                solicitud,
                request_id: request_id.clone(),
            };
            match state
                .creacion
                .submit(solicitud)
                .await
                .map_err(ErrorPagos::from)??
            {
                Creacion::Creado(pago) => JsonReply::new(
                    StatusCode::OK,
                    PagoCreado::from_pago(&pago, "Pago recibido y en cola para procesamiento"),
                ),
                Creacion::Repetido(pago) => Ok(JsonReply::new(
                    StatusCode::OK,
                    PagoCreado::from_pago(
                        &pago,
                        "Pago ya registrado con esta referencia_pago; se devuelve el original",
                    ),
                )?
                .replayed(true)),
            }
        },
    )
    .await
}

/// The latest payments, newest first, optionally of one state or affiliate (the operations
/// console's live list). Paged with the answer's `siguiente`.
#[utoipa::path(
    get, path = "/pagos", tag = "pagos",
    params(
        ("estado" = Option<String>, Query, description = "PENDIENTE, PROCESANDO, EXITOSO, FALLIDO o REVERSADO"),
        ("id_afiliado" = Option<String>, Query),
        ("limite" = Option<i64>, Query, description = "1..100, por defecto 20"),
        ("cursor" = Option<String>, Query, description = "El `siguiente` de la página anterior"),
    ),
    responses(
        (status = 200, body = ListaPagos),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sin payments:read ni permiso `get payments`, o id_afiliado de otro afiliado", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn listar(
    State(state): State<ApiState>,
    llamante: Llamante,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ListaPagos>, Problem> {
    let ambito = llamante
        .ambito(Alcance::PagosLectura, Permiso::LEER_PAGOS)
        .await?;
    let mut errores = Vec::new();
    for nombre in params.keys() {
        if !["estado", "id_afiliado", "limite", "cursor"].contains(&nombre.as_str()) {
            errores.push(FieldError::new(
                nombre.clone(),
                "parámetro desconocido; use estado, id_afiliado, limite y cursor",
            ));
        }
    }
    let estado = params.get("estado").and_then(|raw| {
        let estado = EstadoPago::from_code(raw);
        if estado.is_none() {
            errores.push(FieldError::new(
                "estado",
                format!(
                    "'{raw}' no es un estado; use PENDIENTE, PROCESANDO, EXITOSO, FALLIDO o REVERSADO"
                ),
            ));
        }
        estado
    });
    let limite = match params.get("limite").map(|raw| raw.parse::<i64>()) {
        None => 20,
        Some(Ok(limite)) if (1..=100).contains(&limite) => limite,
        Some(_) => {
            errores.push(FieldError::new("limite", "debe ser un entero de 1 a 100"));
            20
        }
    };
    let antes_de = params.get("cursor").and_then(|raw| {
        let cursor = leer_cursor(raw);
        if cursor.is_none() {
            errores.push(FieldError::new(
                "cursor",
                "no es un cursor de esta API; use el `siguiente` de la página anterior",
            ));
        }
        cursor
    });
    if !errores.is_empty() {
        return Err(Problem::validation(errores));
    }
    let id_afiliado = filtro_de_afiliado(&ambito, params.get("id_afiliado").map(String::as_str))?;
    let filtro = repositorio::FiltroRecientes {
        estado,
        id_afiliado,
        antes_de,
    };
    let pagos = repositorio::recientes(&state.pool, &filtro, limite)
        .await
        .map_err(ErrorPagos::from)?;
    let siguiente = (pagos.len() as i64 == limite)
        .then(|| pagos.last())
        .flatten()
        .map(|ultimo| {
            format!(
                "{}_{}",
                ultimo
                    .fecha_creacion
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                ultimo.id
            )
        });
    Ok(Json(ListaPagos {
        pagos: pagos.iter().map(PagoDetalle::from).collect(),
        siguiente,
    }))
}

/// `<fecha_creacion RFC 3339>_<id>`, as `siguiente` writes it.
fn leer_cursor(raw: &str) -> Option<(chrono::DateTime<chrono::Utc>, Uuid)> {
    let (fecha, id) = raw.rsplit_once('_')?;
    let fecha = chrono::DateTime::parse_from_rfc3339(fecha).ok()?;
    Some((fecha.with_timezone(&chrono::Utc), Uuid::parse_str(id).ok()?))
}

/// A payment's current state.
#[utoipa::path(
    get, path = "/pagos/{id_pago}", tag = "pagos",
    params(("id_pago" = Uuid, Path, description = "Id del pago")),
    responses(
        (status = 200, body = PagoDetalle),
        (status = 400, description = "Id mal formado", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Pago no encontrado (o de otro afiliado)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn obtener(
    State(state): State<ApiState>,
    llamante: Llamante,
    Path(id_pago): Path<String>,
) -> Result<Json<PagoDetalle>, Problem> {
    let id = id_desde_ruta(&id_pago)?;
    let pago = visible(&state, &llamante, id).await?;
    Ok(Json(PagoDetalle::from(&pago)))
}

/// The payment `id` if the caller may see it: another affiliate's is answered as if it did not
/// exist, so ids cannot be probed.
async fn visible(state: &ApiState, llamante: &Llamante, id: Uuid) -> Result<Pago, Problem> {
    let ambito = llamante
        .ambito(Alcance::PagosLectura, Permiso::LEER_PAGOS)
        .await?;
    let pago = repositorio::buscar(&state.pool, id)
        .await
        .map_err(ErrorPagos::from)?
        .filter(|pago| ambito.ve(&pago.id_afiliado))
        .ok_or(ErrorPagos::NoEncontrado)?;
    Ok(pago)
}

/// Everything that happened to a payment, oldest first: reception, processing, gateway answer,
/// events published, duplicates rejected.
#[utoipa::path(
    get, path = "/pagos/{id_pago}/eventos", tag = "pagos",
    params(("id_pago" = Uuid, Path, description = "Id del pago")),
    responses(
        (status = 200, body = [EntradaTraza]),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn eventos(
    State(state): State<ApiState>,
    llamante: Llamante,
    Path(id_pago): Path<String>,
) -> Result<Json<Vec<EntradaTraza>>, Problem> {
    let id = id_desde_ruta(&id_pago)?;
    visible(&state, &llamante, id).await?;
    let traza = repositorio::traza(&state.pool, id)
        .await
        .map_err(ErrorPagos::from)?;
    Ok(Json(traza))
}

/// Outbox health: how many events were published, wait, or failed and are being retried.
#[utoipa::path(
    get, path = "/pagos/outbox/estadisticas", tag = "pagos",
    responses(
        (status = 200, body = OutboxStats),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Solo operadores con `get payments`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn estadisticas_outbox(
    State(state): State<ApiState>,
    llamante: Llamante,
) -> Result<Json<OutboxStats>, Problem> {
    llamante.operador(Permiso::LEER_PAGOS, "outbox").await?;
    Ok(Json(
        outbox::stats(&state.pool).await.map_err(ErrorPagos::from)?,
    ))
}

/// Payments created per minute over the last `minutos` minutes (the current one included), by
/// their current state: the operations console's chart.
#[utoipa::path(
    get, path = "/pagos/estadisticas/por-minuto", tag = "pagos",
    params(("minutos" = Option<i64>, Query, description = "1..1440, por defecto 30")),
    responses(
        (status = 200, body = PagosPorMinuto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn por_minuto(
    State(state): State<ApiState>,
    llamante: Llamante,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<PagosPorMinuto>, Problem> {
    let ambito = llamante
        .ambito(Alcance::PagosLectura, Permiso::LEER_PAGOS)
        .await?;
    let mut errores: Vec<FieldError> = params
        .keys()
        .filter(|nombre| nombre.as_str() != "minutos")
        .map(|nombre| FieldError::new(nombre.clone(), "parámetro desconocido; use minutos"))
        .collect();
    let minutos = match params.get("minutos").map(|raw| raw.parse::<i64>()) {
        None => 30,
        Some(Ok(minutos)) if (1..=1440).contains(&minutos) => minutos,
        Some(_) => {
            errores.push(FieldError::new("minutos", "debe ser un entero de 1 a 1440"));
            30
        }
    };
    if !errores.is_empty() {
        return Err(Problem::validation(errores));
    }
    let ahora = chrono::Utc::now();
    let este_minuto = ahora
        .duration_trunc(chrono::TimeDelta::minutes(1))
        .unwrap_or(ahora);
    let desde = este_minuto - chrono::TimeDelta::minutes(minutos - 1);
    let filas = repositorio::por_minuto(&state.pool, desde, ambito.afiliado())
        .await
        .map_err(ErrorPagos::from)?;
    let mut minutos: Vec<MinutoDePagos> = (0..minutos)
        .map(|i| MinutoDePagos {
            minuto: desde + chrono::TimeDelta::minutes(i),
            por_estado: EstadoPago::ALL
                .iter()
                .map(|estado| (estado.code().to_owned(), 0))
                .collect(),
            total: 0,
        })
        .collect();
    for (minuto, estado, cuantos) in filas {
        let indice = (minuto - desde).num_minutes();
        // A payment created after `ahora` (a clock step between the two reads) falls outside.
        if let Some(slot) = usize::try_from(indice)
            .ok()
            .and_then(|i| minutos.get_mut(i))
        {
            *slot.por_estado.entry(estado).or_default() += cuantos;
            slot.total += cuantos;
        }
    }
    Ok(Json(PagosPorMinuto { minutos }))
}

/// Revert a successful payment. Repeating the call returns the same reverted payment.
#[utoipa::path(
    patch, path = "/pagos/{id_pago}/revertir", tag = "pagos",
    request_body = RevertirBody,
    params(("id_pago" = Uuid, Path, description = "Id del pago")),
    responses(
        (status = 200, body = PagoDetalle),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Solo operadores con `create payments/revert`", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "El pago no está EXITOSO", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revertir(
    State(state): State<ApiState>,
    llamante: Llamante,
    RequestId(request_id): RequestId,
    Path(id_pago): Path<String>,
    body: ApiJson<RevertirBody>,
) -> Result<Json<PagoDetalle>, Problem> {
    let id = id_desde_ruta(&id_pago)?;
    llamante.operador(Permiso::REVERTIR_PAGO, &id_pago).await?;
    let motivo = body.value.motivo.trim();
    if motivo.is_empty() || motivo.chars().count() > 500 {
        return Err(Problem::validation(vec![FieldError::new(
            "motivo",
            "debe tener entre 1 y 500 caracteres",
        )]));
    }
    let revertido = revertir_pago(
        &state.pool,
        id,
        motivo.to_owned(),
        &llamante.principal.actor(),
        &request_id,
    )
    .await;
    let (resultado, detalle) = match &revertido {
        Ok(_) => (Resultado::Permitido, motivo.to_owned()),
        Err(error) => (Resultado::Fallido, error.to_string()),
    };
    llamante
        .auditar(Permiso::REVERTIR_PAGO, &id.to_string(), resultado, &detalle)
        .await;
    Ok(Json(PagoDetalle::from(&revertido?)))
}
