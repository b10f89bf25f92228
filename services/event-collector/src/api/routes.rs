use std::{net::SocketAddr, time::Duration};

use access::{
    Alcance, ClavePresentada, Llamante, Permiso, Resultado as Auditado, filtro_de_afiliado,
};
use axum::{
    Extension, Json,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use platform::{
    group_commit::GroupCommitError,
    http::{ApiJson, FieldError, Problem, RequestId, header_value},
};
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::dto::{
    ErrorCampoDto, EstadisticasQuery, EventoBody, EventoRespuesta, FallidosQuery,
    FallidosRespuesta, LimiteQuery, LimiteRespuesta, LoteBody, LoteRespuesta, ResultadoEventoLote,
};
use crate::{
    application::{
        Desenlace, ErrorSolicitud, EventoRecibido, Excluido, Peticion, Recolector, Resultado,
        ResultadoLote, ahora,
    },
    domain::{ContextoServidor, Cuota, Rechazo, TipoEvento},
    infrastructure::consultas::{
        self, Estadisticas, EstadoDeEvento, FiltroEstadisticas, Reintento,
    },
};

static RESULTADOS: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(
    || {
        let counter = platform::telemetry::counter_vec(
            "collector_events_total",
            "Events received by the collector, by outcome (aceptado, descartado, duplicado, conflicto, limitado, rechazado)",
            &["resultado"],
        );
        // Every outcome from 0, so a share (limitado / all) exists before the first 429.
        for resultado in [
            "aceptado",
            "descartado",
            "duplicado",
            "conflicto",
            "limitado",
            "rechazado",
        ] {
            counter.with_label_values(&[resultado]).inc_by(0);
        }
        counter
    },
);

fn contar(resultado: &str) {
    RESULTADOS.with_label_values(&[resultado]).inc();
}

/// Limits of the ingest endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Limites {
    pub max_bytes_evento: usize,
    pub max_eventos_lote: usize,
    /// How long `POST …/retry` waits to see the event published before answering.
    pub espera_reintento: Duration,
}

#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub recolector: Recolector,
    pub limites: Limites,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Aeropartners — Event Collector", version = "1.0.0",
         description = "Eventos de tracking de los afiliados: autenticados, deduplicados, limitados por afiliado, almacenados antes de confirmarse y publicados mediante el outbox."),
    tags((name = "eventos", description = "Recepción y seguimiento de eventos"))
)]
struct CollectorDoc;

pub fn router(state: ApiState) -> (axum::Router, utoipa::openapi::OpenApi) {
    std::sync::LazyLock::force(&RESULTADOS);
    OpenApiRouter::with_openapi(CollectorDoc::openapi())
        .routes(routes!(recibir))
        .routes(routes!(recibir_lote))
        .routes(routes!(estado))
        .routes(routes!(reintentar))
        .routes(routes!(estadisticas))
        .routes(routes!(fallidos))
        .routes(routes!(limite))
        .with_state(state)
        .split_for_parts()
}

const WEBHOOK_SIGNATURE: &str = "x-webhook-signature";

fn cabecera<'a>(headers: &'a HeaderMap, nombre: &str) -> Option<&'a str> {
    headers
        .get(nombre)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The client's address: the last hop our gateway (or an ingress) added to `X-Forwarded-For`,
/// else the peer of the connection.
fn ip_cliente(headers: &HeaderMap, peer: Option<&ConnectInfo<SocketAddr>>) -> Option<String> {
    cabecera(headers, "x-forwarded-for")
        .and_then(|xff| xff.rsplit(',').next())
        .map(|ip| ip.trim().to_owned())
        .filter(|ip| !ip.is_empty())
        .or_else(|| peer.map(|ConnectInfo(addr)| addr.ip().to_string()))
}

fn contexto(
    headers: &HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
    request_id: String,
) -> ContextoServidor {
    let corto = |v: Option<&str>, max: usize| v.map(|s| s.chars().take(max).collect::<String>());
    ContextoServidor {
        recibido_en: ahora(),
        ip: ip_cliente(headers, peer),
        user_agent: corto(cabecera(headers, header::USER_AGENT.as_str()), 512),
        id_sesion: corto(cabecera(headers, "x-session-id"), 255),
        referer: corto(cabecera(headers, header::REFERER.as_str()), 2048),
        request_id,
    }
}

impl From<ErrorSolicitud> for Problem {
    fn from(error: ErrorSolicitud) -> Self {
        match error {
            ErrorSolicitud::Validacion(errores) => Problem::validation(
                errores
                    .into_iter()
                    .map(|(campo, mensaje)| FieldError::new(campo, mensaje))
                    .collect(),
            ),
            ErrorSolicitud::FirmaMalformada(e) => Problem::bad_request(capitalizar(&e.to_string())),
            ErrorSolicitud::Rechazo(rechazo) => rechazo_problem(&rechazo),
            ErrorSolicitud::Cola(GroupCommitError::Full) => Problem::unavailable(
                "El recolector está saturado: la cola de escritura está llena; reintente en un momento",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")),
            ErrorSolicitud::Cola(GroupCommitError::Closed) => {
                Problem::unavailable("El recolector se está deteniendo; reintente en otra instancia")
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
            ErrorSolicitud::Cola(GroupCommitError::Store(e)) if !e.is_unavailable() => {
                // Refused alone, in a transaction of its own: a retry would fail the same way.
                Problem::internal(&e)
            }
            ErrorSolicitud::Cola(GroupCommitError::Store(e)) => {
                tracing::warn!(error = %e, "events not stored");
                Problem::unavailable("No se pudo almacenar el evento; no se guardó nada, reintente")
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("2"))
            }
        }
    }
}

fn rechazo_problem(rechazo: &Rechazo) -> Problem {
    let detalle = capitalizar(&rechazo.to_string());
    match rechazo {
        Rechazo::AfiliadoDesconocido(_)
        | Rechazo::FuenteNoPermitida { .. }
        | Rechazo::ClaveDeOtroAfiliado { .. }
        | Rechazo::SinAlcance { .. } => {
            Problem::new(StatusCode::FORBIDDEN, "forbidden", "Prohibido", detalle)
        }
        Rechazo::ApiKey(_) | Rechazo::ClaveRequerida { .. } | Rechazo::Firma(_) => Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "No autenticado",
            detalle,
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"aeropartners\""),
        ),
    }
}

fn capitalizar(texto: &str) -> String {
    let mut chars = texto.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `X-RateLimit-*` (seconds) and the IETF `RateLimit` / `RateLimit-Policy` fields.
fn cabeceras_limite(cuota: &Cuota) -> [(HeaderName, HeaderValue); 5] {
    let ventana = cuota.ventana.as_secs();
    [
        (
            HeaderName::from_static("x-ratelimit-limit"),
            header_value(&cuota.limite.to_string()),
        ),
        (
            HeaderName::from_static("x-ratelimit-remaining"),
            header_value(&cuota.restantes.to_string()),
        ),
        (
            HeaderName::from_static("x-ratelimit-reset"),
            header_value(&cuota.reinicio.as_secs().to_string()),
        ),
        (
            HeaderName::from_static("ratelimit-policy"),
            header_value(&format!("\"afiliado\";q={};w={ventana}", cuota.limite)),
        ),
        (
            HeaderName::from_static("ratelimit"),
            header_value(&format!(
                "\"afiliado\";r={};t={}",
                cuota.restantes,
                cuota.reinicio.as_secs()
            )),
        ),
    ]
}

fn con_limite(mut response: Response, cuota: &Cuota) -> Response {
    for (name, value) in cabeceras_limite(cuota) {
        response.headers_mut().insert(name, value);
    }
    response
}

fn limitado(reintentar_en: Duration, cuota: &Cuota) -> Problem {
    let segundos = reintentar_en.as_secs().max(1);
    let mut problem = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Demasiadas solicitudes",
        format!(
            "Límite de {} eventos por minuto del afiliado alcanzado; reintente en {segundos} s. El evento no se almacenó",
            cuota.limite
        ),
    )
    .with_header(header::RETRY_AFTER, header_value(&segundos.to_string()));
    for (name, value) in cabeceras_limite(cuota) {
        problem = problem.with_header(name, value);
    }
    problem
}

fn conflicto(id_evento: Uuid) -> Problem {
    Problem::conflict(format!(
        "id_evento_cliente ya usado por el evento {id_evento} con otro contenido; use un id nuevo para un evento distinto"
    ))
}

fn demasiado_grande(bytes: usize, max: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "Cuerpo demasiado grande",
        format!("El evento ocupa {bytes} bytes; el máximo es {max}"),
    )
}

fn etiqueta(desenlace: &Desenlace) -> &'static str {
    match desenlace {
        Desenlace::Nuevo(r) if r.aceptado => "aceptado",
        Desenlace::Nuevo(_) => "descartado",
        Desenlace::Duplicado(_) => "duplicado",
        Desenlace::Conflicto { .. } => "conflicto",
        Desenlace::Limitado { .. } => "limitado",
    }
}

fn respuesta_evento(resultado: Resultado) -> Response {
    let Resultado { desenlace, cuota } = resultado;
    contar(etiqueta(&desenlace));
    let response = match desenlace {
        Desenlace::Nuevo(registro) => {
            let location = format!("/event-collector/events/{}/status", registro.id_evento);
            (
                StatusCode::CREATED,
                [(header::LOCATION, header_value(&location))],
                Json(EventoRespuesta::nuevo(&registro)),
            )
                .into_response()
        }
        Desenlace::Duplicado(registro) => {
            (StatusCode::OK, Json(EventoRespuesta::duplicado(&registro))).into_response()
        }
        Desenlace::Conflicto { id_evento } => conflicto(id_evento).into_response(),
        Desenlace::Limitado { reintentar_en } => limitado(reintentar_en, &cuota).into_response(),
    };
    con_limite(response, &cuota)
}

/// Receive one tracking event.
///
/// Stored in PostgreSQL before the answer (201), published to `tracking.evt.<tipo>` through
/// the outbox. The same event again → 200 with the first answer and `estado:"DUPLICADO"`; the
/// same `id_evento_cliente` with other content → 409. `WEBHOOK` events need
/// `X-Webhook-Signature` (`sha256=<hex>` or `t=<unix>,v1=<hex>`), `API_DIRECT` the affiliate's
/// `api_key`.
#[utoipa::path(
    post, path = "/event-collector/events", tag = "eventos",
    request_body = EventoBody,
    params(
        ("X-Webhook-Signature" = Option<String>, Header, description = "sha256=<hex HMAC del cuerpo> o t=<unix>,v1=<hex HMAC de \"t.cuerpo\">"),
        ("X-API-Key" = Option<String>, Header, description = "Alternativa a api_key en el cuerpo"),
        ("X-Session-ID" = Option<String>, Header, description = "Sesión del usuario final"),
    ),
    responses(
        (status = 201, description = "Evento almacenado (o descartado por una regla de negocio: exito=false)", body = EventoRespuesta),
        (status = 200, description = "Duplicado: la respuesta original con estado DUPLICADO", body = EventoRespuesta),
        (status = 400, description = "Evento no válido o cabecera de firma mal formada", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "api_key o firma ausente, incorrecta, caducada o repetida", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "El afiliado no puede enviar desde esa fuente", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "id_evento_cliente reutilizado con otro contenido", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Evento de más de 32 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Límite del afiliado alcanzado; no se almacenó", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Cola de escritura llena o base de datos no disponible; no se almacenó", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn recibir(
    State(state): State<ApiState>,
    RequestId(request_id): RequestId,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    presentada: ClavePresentada,
    headers: HeaderMap,
    body: ApiJson<EventoBody>,
) -> Result<Response, Problem> {
    if body.raw.len() > state.limites.max_bytes_evento {
        return Err(demasiado_grande(
            body.raw.len(),
            state.limites.max_bytes_evento,
        ));
    }
    let peticion = Peticion {
        cuerpo: &body.raw,
        firma: cabecera(&headers, WEBHOOK_SIGNATURE),
        api_key_cabecera: cabecera(&headers, "x-api-key"),
        clave: presentada.clave,
        exigida: presentada.exigida,
        contexto: std::sync::Arc::new(contexto(
            &headers,
            peer.as_ref().map(|Extension(c)| c),
            request_id,
        )),
    };
    let resultado = state
        .recolector
        .recibir(EventoRecibido::from(body.value), peticion)
        .await?;
    Ok(respuesta_evento(resultado))
}

/// Receive up to 500 events (1 MiB) at once.
///
/// Each event is checked on its own and gets its own result, in input order; one bad event
/// never rejects the others. Events that pass are stored together before the answer. A
/// signature header covers the whole body.
#[utoipa::path(
    post, path = "/event-collector/events/batch", tag = "eventos",
    request_body = LoteBody,
    responses(
        (status = 200, description = "Resultado por evento", body = LoteRespuesta),
        (status = 400, description = "Cuerpo no válido, lote vacío o cabecera de firma mal formada", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Firma repetida", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Más de 500 eventos o más de 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Ningún evento cabía en el límite de su afiliado", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No se almacenó nada; reintente", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn recibir_lote(
    State(state): State<ApiState>,
    RequestId(request_id): RequestId,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    presentada: ClavePresentada,
    headers: HeaderMap,
    body: ApiJson<LoteBody>,
) -> Result<Response, Problem> {
    let limites = state.limites;
    let eventos = &body.value.eventos;
    if eventos.is_empty() {
        return Err(Problem::validation(vec![FieldError::new(
            "eventos",
            "debe contener al menos un evento",
        )]));
    }
    if eventos.len() > limites.max_eventos_lote {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Lote demasiado grande",
            format!(
                "El lote trae {} eventos; el máximo es {}",
                eventos.len(),
                limites.max_eventos_lote
            ),
        ));
    }
    let recibidos = eventos
        .iter()
        .map(|raw| {
            let bytes = raw.get().len();
            if bytes > limites.max_bytes_evento {
                return Err(Excluido::DemasiadoGrande {
                    bytes,
                    max: limites.max_bytes_evento,
                });
            }
            platform::http::parse_json::<EventoBody>(raw.get().as_bytes())
                .map(EventoRecibido::from)
                .map_err(|problem| {
                    let errores = if problem.errors.is_empty() {
                        vec![("evento".to_owned(), problem.detail.clone())]
                    } else {
                        problem
                            .errors
                            .iter()
                            .map(|e| (e.field.clone(), e.message.clone()))
                            .collect()
                    };
                    Excluido::Validacion(errores)
                })
        })
        .collect();
    let peticion = Peticion {
        cuerpo: &body.raw,
        firma: cabecera(&headers, WEBHOOK_SIGNATURE),
        api_key_cabecera: cabecera(&headers, "x-api-key"),
        clave: presentada.clave,
        exigida: presentada.exigida,
        contexto: std::sync::Arc::new(contexto(
            &headers,
            peer.as_ref().map(|Extension(c)| c),
            request_id,
        )),
    };
    let resultados = state.recolector.recibir_lote(recibidos, peticion).await?;

    let mut respuesta = LoteRespuesta {
        total: resultados.len(),
        aceptados: 0,
        duplicados: 0,
        descartados: 0,
        rechazados: 0,
        resultados: Vec::with_capacity(resultados.len()),
    };
    let mut ultima_cuota = None;
    let mut limitados = Vec::new();
    let mut sin_acceso = Vec::new();
    for (indice, resultado) in resultados.into_iter().enumerate() {
        let item = match resultado {
            ResultadoLote::Excluido(excluido) => {
                contar("rechazado");
                respuesta.rechazados += 1;
                let (status, mensaje, errores) = match excluido {
                    Excluido::Validacion(errores) => (
                        StatusCode::BAD_REQUEST,
                        "Evento no válido".to_owned(),
                        errores
                            .into_iter()
                            .map(|(field, message)| ErrorCampoDto { field, message })
                            .collect(),
                    ),
                    Excluido::DemasiadoGrande { bytes, max } => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("El evento ocupa {bytes} bytes; el máximo es {max}"),
                        Vec::new(),
                    ),
                    Excluido::Rechazo(rechazo) => {
                        let problem = rechazo_problem(&rechazo);
                        let item = (problem.status, problem.detail.clone(), Vec::new());
                        sin_acceso.push(problem);
                        item
                    }
                };
                rechazado(indice, status, mensaje, errores)
            }
            ResultadoLote::Procesado(Resultado { desenlace, cuota }) => {
                contar(etiqueta(&desenlace));
                ultima_cuota = Some(cuota);
                match desenlace {
                    Desenlace::Nuevo(registro) => {
                        let r = EventoRespuesta::nuevo(&registro);
                        if registro.aceptado {
                            respuesta.aceptados += 1;
                        } else {
                            respuesta.descartados += 1;
                        }
                        procesado(indice, StatusCode::CREATED, r)
                    }
                    Desenlace::Duplicado(registro) => {
                        respuesta.duplicados += 1;
                        procesado(
                            indice,
                            StatusCode::OK,
                            EventoRespuesta::duplicado(&registro),
                        )
                    }
                    Desenlace::Conflicto { id_evento } => {
                        respuesta.rechazados += 1;
                        let mut item = rechazado(
                            indice,
                            StatusCode::CONFLICT,
                            conflicto(id_evento).detail.clone(),
                            Vec::new(),
                        );
                        item.id_evento = Some(id_evento);
                        item
                    }
                    Desenlace::Limitado { reintentar_en } => {
                        respuesta.rechazados += 1;
                        limitados.push((reintentar_en, cuota));
                        rechazado(
                            indice,
                            StatusCode::TOO_MANY_REQUESTS,
                            limitado(reintentar_en, &cuota).detail.clone(),
                            Vec::new(),
                        )
                    }
                }
            }
        };
        respuesta.resultados.push(item);
    }
    // Nothing the caller may send (no credential, another affiliate's events, a key without
    // the scope): the request as a whole is refused as its first event was, 401 or 403.
    if sin_acceso.len() == respuesta.total
        && let Some(primero) = sin_acceso.into_iter().next()
    {
        return Err(primero);
    }
    // Nothing but rate-limited events: the request as a whole is a 429, with when to retry.
    if limitados.len() == respuesta.total {
        let (reintentar_en, cuota) = limitados
            .into_iter()
            .max_by_key(|(r, _)| *r)
            .expect("non-empty batch");
        return Err(limitado(reintentar_en, &cuota));
    }
    let response = (StatusCode::OK, Json(respuesta)).into_response();
    Ok(match ultima_cuota {
        Some(cuota) => con_limite(response, &cuota),
        None => response,
    })
}

fn procesado(indice: usize, status: StatusCode, r: EventoRespuesta) -> ResultadoEventoLote {
    ResultadoEventoLote {
        indice,
        estado: r.estado,
        status: status.as_u16(),
        id_evento: Some(r.id_evento),
        hash_evento: Some(r.hash_evento),
        topic_destino: Some(r.topic_destino),
        mensaje: r.mensaje,
        errores: Vec::new(),
    }
}

fn rechazado(
    indice: usize,
    status: StatusCode,
    mensaje: String,
    errores: Vec<ErrorCampoDto>,
) -> ResultadoEventoLote {
    ResultadoEventoLote {
        indice,
        estado: "RECHAZADO".to_owned(),
        status: status.as_u16(),
        id_evento: None,
        hash_evento: None,
        topic_destino: None,
        mensaje,
        errores,
    }
}

/// A partner reads its own events' status, statistics and allowance (`events:read`), an
/// operator everyone's.
async fn lectura(llamante: &Llamante) -> Result<access::Ambito, Problem> {
    llamante
        .ambito(Alcance::EventosLectura, Permiso::LEER_EVENTOS)
        .await
}

fn id_desde_ruta(raw: &str) -> Result<Uuid, Problem> {
    platform::http::uuid_param("id_evento", raw)
}

/// Where an event is: stored, published, failed (with attempts and the reason) or discarded.
#[utoipa::path(
    get, path = "/event-collector/events/{id_evento}/status", tag = "eventos",
    params(("id_evento" = String, Path, description = "UUID del evento")),
    responses(
        (status = 200, body = EstadoDeEvento),
        (status = 400, description = "id_evento no es un UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn estado(
    State(state): State<ApiState>,
    llamante: Llamante,
    Path(id): Path<String>,
) -> Result<Json<EstadoDeEvento>, Problem> {
    let ambito = lectura(&llamante).await?;
    let id = id_desde_ruta(&id)?;
    consultas::estado_de(&state.pool, id)
        .await
        .map_err(|e| Problem::database(&e))?
        .filter(|estado| ambito.ve(&estado.id_afiliado))
        .map(Json)
        .ok_or_else(|| Problem::not_found("Evento no encontrado"))
}

/// Publish a failed (or still pending) event now.
///
/// The relay retries failed events on its own with backoff; this makes one due at once and
/// waits up to a few seconds to see it published.
#[utoipa::path(
    post, path = "/event-collector/events/{id_evento}/retry", tag = "eventos",
    params(("id_evento" = String, Path, description = "UUID del evento")),
    responses(
        (status = 200, description = "Publicado", body = EstadoDeEvento),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Solo operadores con `create events/retry`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Ya publicado, o descartado (nunca se publica)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "El broker sigue sin aceptarlo; el reintento automático continúa", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn reintentar(
    State(state): State<ApiState>,
    llamante: Llamante,
    Path(id): Path<String>,
) -> Result<Json<EstadoDeEvento>, Problem> {
    llamante.operador(Permiso::REINTENTAR_EVENTO, &id).await?;
    let resultado = reintentar_evento(&state, &id).await;
    if llamante.es_operador() {
        let (auditado, detalle) = match &resultado {
            Ok(_) => (Auditado::Permitido, String::new()),
            Err(problem) => (Auditado::Fallido, problem.status.to_string()),
        };
        llamante
            .auditar(Permiso::REINTENTAR_EVENTO, &id, auditado, &detalle)
            .await;
    }
    resultado
}

async fn reintentar_evento(state: &ApiState, id: &str) -> Result<Json<EstadoDeEvento>, Problem> {
    let id = id_desde_ruta(id)?;
    let interno = |e: sqlx::Error| Problem::database(&e);
    match consultas::reintentar(&state.pool, id)
        .await
        .map_err(interno)?
    {
        Reintento::NoEncontrado => return Err(Problem::not_found("Evento no encontrado")),
        Reintento::YaPublicado => {
            return Err(Problem::conflict(
                "El evento ya está PUBLICADO; no se vuelve a publicar",
            ));
        }
        Reintento::Descartado => {
            return Err(Problem::conflict(
                "El evento fue DESCARTADO por una regla de negocio; nunca se publica",
            ));
        }
        Reintento::Programado => {}
    }
    let limite = tokio::time::Instant::now() + state.limites.espera_reintento;
    loop {
        let actual = consultas::estado_de(&state.pool, id)
            .await
            .map_err(interno)?
            .ok_or_else(|| Problem::not_found("Evento no encontrado"))?;
        if actual.publicado_en.is_some() {
            return Ok(Json(actual));
        }
        if tokio::time::Instant::now() >= limite {
            return Err(Problem::unavailable(format!(
                "El evento sigue sin publicarse tras {} intentos ({}); el reintento automático continúa",
                actual.intentos,
                actual.razon_fallo.as_deref().unwrap_or("sin respuesta del broker")
            ))
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn instante(
    campo: &str,
    raw: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, FieldError> {
    raw.map(|r| {
        chrono::DateTime::parse_from_rfc3339(r)
            .map(|d| d.with_timezone(&chrono::Utc))
            .map_err(|_| FieldError::new(campo, format!("'{r}' no es una fecha RFC 3339")))
    })
    .transpose()
}

/// Counts by type, state and affiliate, and accepted conversion value by currency.
#[utoipa::path(
    get, path = "/event-collector/statistics", tag = "eventos",
    params(EstadisticasQuery),
    responses(
        (status = 200, body = Estadisticas),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn estadisticas(
    State(state): State<ApiState>,
    llamante: Llamante,
    Query(q): Query<EstadisticasQuery>,
) -> Result<Json<Estadisticas>, Problem> {
    let ambito = lectura(&llamante).await?;
    let mut errores = Vec::new();
    let tipo_evento = match q.tipo_evento.as_deref().filter(|t| !t.trim().is_empty()) {
        None => None,
        Some(raw) => match raw.parse::<TipoEvento>() {
            Ok(t) => Some(t.code().to_owned()),
            Err(e) => {
                errores.push(FieldError::new("tipo_evento", e));
                None
            }
        },
    };
    let desde = instante("desde", q.desde.as_deref())
        .map_err(|e| errores.push(e))
        .ok()
        .flatten();
    let hasta = instante("hasta", q.hasta.as_deref())
        .map_err(|e| errores.push(e))
        .ok()
        .flatten();
    if !errores.is_empty() {
        return Err(Problem::validation(errores));
    }
    let pedido = q
        .id_afiliado
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let filtro = FiltroEstadisticas {
        id_afiliado: filtro_de_afiliado(&ambito, pedido)?,
        tipo_evento,
        desde,
        hasta,
    };
    consultas::estadisticas(&state.pool, &filtro)
        .await
        .map(Json)
        .map_err(|e| Problem::database(&e))
}

fn entero(
    campo: &str,
    raw: Option<&str>,
    rango: std::ops::RangeInclusive<u32>,
    defecto: u32,
) -> Result<u32, Problem> {
    let Some(raw) = raw else { return Ok(defecto) };
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| rango.contains(n))
        .ok_or_else(|| {
            Problem::validation(vec![FieldError::new(
                campo,
                format!(
                    "debe ser un entero entre {} y {}",
                    rango.start(),
                    rango.end()
                ),
            )])
        })
}

/// Events whose publication failed and is being retried, oldest first.
#[utoipa::path(
    get, path = "/event-collector/failed-events", tag = "eventos",
    params(FallidosQuery),
    responses(
        (status = 200, body = FallidosRespuesta),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
async fn fallidos(
    State(state): State<ApiState>,
    llamante: Llamante,
    Query(q): Query<FallidosQuery>,
) -> Result<Json<FallidosRespuesta>, Problem> {
    let ambito = lectura(&llamante).await?;
    let limite = entero("limite", q.limite.as_deref(), 1..=1000, 100)?;
    let pedido = q
        .id_afiliado
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let afiliado = filtro_de_afiliado(&ambito, pedido)?;
    let (eventos_fallidos, total) =
        consultas::fallidos(&state.pool, afiliado.as_deref(), i64::from(limite))
            .await
            .map_err(|e| Problem::database(&e))?;
    Ok(Json(FallidosRespuesta {
        eventos_fallidos,
        total,
    }))
}

/// An affiliate's rate-limit allowance, as the limiter sees it (shared by every replica).
#[utoipa::path(
    get, path = "/event-collector/rate-limit/{id_afiliado}", tag = "eventos",
    params(("id_afiliado" = String, Path), LimiteQuery),
    responses(
        (status = 200, body = LimiteRespuesta),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Afiliado desconocido y no se aceptan desconocidos", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn limite(
    State(state): State<ApiState>,
    llamante: Llamante,
    Path(id_afiliado): Path<String>,
    Query(q): Query<LimiteQuery>,
) -> Result<Response, Problem> {
    let ambito = lectura(&llamante).await?;
    let id_afiliado = id_afiliado.trim();
    // Another affiliate's allowance is as absent as an unknown one's: nothing to enumerate.
    if !ambito.ve(id_afiliado) {
        return Err(Problem::not_found(format!(
            "No hay límite de tasa del afiliado '{id_afiliado}' para esta clave"
        )));
    }
    let ventana = entero("ventana_minutos", q.ventana_minutos.as_deref(), 1..=1440, 1)?;
    let directorio = &state.recolector.directorio;
    let perfil = match ambito.afiliado() {
        Some(propio) => Some(directorio.perfil_con_clave(propio)),
        None => directorio.perfil(id_afiliado),
    }
    .ok_or_else(|| rechazo_problem(&Rechazo::AfiliadoDesconocido(id_afiliado.to_owned())))?;
    let cuota = consultas::cuota(&state.pool, &perfil.id_afiliado, perfil.politica)
        .await
        .map_err(|e| Problem::database(&e))?;
    let por_ventana = u64::from(cuota.limite) * u64::from(ventana);
    let body = LimiteRespuesta {
        id_afiliado: perfil.id_afiliado.clone(),
        nivel: perfil.nivel.clone(),
        eventos_actuales: cuota.usados,
        ventana_minutos: ventana,
        limite_maximo: por_ventana,
        // After the burst the allowance refills at `limite` per minute, so within the next
        // W minutes exactly `limite × W − usados` more events fit.
        restantes: por_ventana - u64::from(cuota.usados),
        reinicio_en: cuota.reinicio.as_secs(),
    };
    Ok(con_limite(Json(body).into_response(), &cuota))
}
