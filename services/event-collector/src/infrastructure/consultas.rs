//! The read side of the collector: an event's status, statistics, failed events, on-demand
//! retry, the rate-limit view and the publication backlog. An accepted event's publication
//! state is read from its outbox row (one source of truth, kept by the relay).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Cuota, Politica};

/// Where an event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EstadoEvento {
    /// Stored; the relay has not published it yet.
    Pendiente,
    Publicado,
    /// Publishing failed at least once; the relay keeps retrying with backoff.
    Fallido,
    /// Stored but never published: a business rule discarded it.
    Descartado,
}

/// SQL for an event's state, from the event row `e` and its outbox row `o`.
const ESTADO_SQL: &str = "CASE WHEN e.estado = 'DESCARTADO' THEN 'DESCARTADO' \
     WHEN o.published_at IS NOT NULL THEN 'PUBLICADO' \
     WHEN o.attempts > 0 THEN 'FALLIDO' ELSE 'PENDIENTE' END";

fn estado(code: &str) -> EstadoEvento {
    match code {
        "PUBLICADO" => EstadoEvento::Publicado,
        "FALLIDO" => EstadoEvento::Fallido,
        "DESCARTADO" => EstadoEvento::Descartado,
        _ => EstadoEvento::Pendiente,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EstadoDeEvento {
    pub id_evento: Uuid,
    pub estado: EstadoEvento,
    /// Publication attempts so far.
    pub intentos: i32,
    pub topic_destino: String,
    pub recibido_en: DateTime<Utc>,
    pub publicado_en: Option<DateTime<Utc>>,
    /// Why the last publication failed, or why the event was discarded.
    pub razon_fallo: Option<String>,
    pub tipo_evento: String,
    pub id_afiliado: String,
    pub id_campana: Option<Uuid>,
    pub id_evento_cliente: Option<String>,
    pub hash_evento: String,
    /// The request that brought the event (its `x-request-id`), to follow it in the logs.
    pub request_id: Option<String>,
}

#[derive(sqlx::FromRow)]
struct FilaEstado {
    id_evento: Uuid,
    estado: String,
    intentos: i32,
    topic_destino: String,
    recibido_en: DateTime<Utc>,
    publicado_en: Option<DateTime<Utc>>,
    razon_fallo: Option<String>,
    tipo_evento: String,
    id_afiliado: String,
    id_campana: Option<Uuid>,
    id_evento_cliente: Option<String>,
    hash_evento: String,
    request_id: Option<String>,
}

impl From<FilaEstado> for EstadoDeEvento {
    fn from(f: FilaEstado) -> Self {
        Self {
            id_evento: f.id_evento,
            estado: estado(&f.estado),
            intentos: f.intentos,
            topic_destino: f.topic_destino,
            recibido_en: f.recibido_en,
            publicado_en: f.publicado_en,
            razon_fallo: f.razon_fallo,
            tipo_evento: f.tipo_evento,
            id_afiliado: f.id_afiliado,
            id_campana: f.id_campana,
            id_evento_cliente: f.id_evento_cliente,
            hash_evento: f.hash_evento,
            request_id: f.request_id,
        }
    }
}

macro_rules! select_estado {
    ($filtro:expr) => {
        format!(
            "SELECT e.id_evento, {ESTADO_SQL} AS estado, coalesce(o.attempts, 0) AS intentos, \
                    e.topic_destino, e.recibido_en, o.published_at AS publicado_en, \
                    coalesce(e.motivo_descarte, o.last_error) AS razon_fallo, e.tipo_evento, \
                    e.id_afiliado, e.id_campana, e.id_evento_cliente, e.hash_evento, e.request_id \
             FROM eventos e LEFT JOIN outbox o ON o.event_id = e.id_evento WHERE {}",
            $filtro
        )
    };
}

pub async fn estado_de(pool: &PgPool, id: Uuid) -> Result<Option<EstadoDeEvento>, sqlx::Error> {
    let fila: Option<FilaEstado> =
        sqlx::query_as(sqlx::AssertSqlSafe(select_estado!("e.id_evento = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(fila.map(Into::into))
}

#[derive(Debug, Clone, Default)]
pub struct FiltroEstadisticas {
    pub id_afiliado: Option<String>,
    pub tipo_evento: Option<String>,
    pub desde: Option<DateTime<Utc>>,
    pub hasta: Option<DateTime<Utc>>,
}

/// Named apart from the campaigns' statistics in the gateway's merged document.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = EstadisticasEventos)]
pub struct Estadisticas {
    pub total_eventos: i64,
    pub por_tipo: BTreeMap<String, i64>,
    pub por_estado: BTreeMap<String, i64>,
    pub por_afiliado: BTreeMap<String, i64>,
    /// Accepted conversions' value by currency.
    pub valor_conversiones: BTreeMap<String, f64>,
}

/// (tipo_evento, estado, id_afiliado, count, moneda, accepted value).
type FilaEstadistica = (String, String, String, i64, Option<String>, Option<f64>);

pub async fn estadisticas(
    pool: &PgPool,
    filtro: &FiltroEstadisticas,
) -> Result<Estadisticas, sqlx::Error> {
    let filas: Vec<FilaEstadistica> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT e.tipo_evento, {ESTADO_SQL} AS estado, e.id_afiliado, count(*), \
                    e.moneda, sum(e.valor_conversion) FILTER (WHERE e.estado = 'ACEPTADO')::float8 \
             FROM eventos e LEFT JOIN outbox o ON o.event_id = e.id_evento \
             WHERE ($1::text IS NULL OR e.id_afiliado = $1) \
               AND ($2::text IS NULL OR e.tipo_evento = $2) \
               AND ($3::timestamptz IS NULL OR e.recibido_en >= $3) \
               AND ($4::timestamptz IS NULL OR e.recibido_en < $4) \
             GROUP BY 1, 2, 3, 5"
    )))
    .bind(&filtro.id_afiliado)
    .bind(&filtro.tipo_evento)
    .bind(filtro.desde)
    .bind(filtro.hasta)
    .fetch_all(pool)
    .await?;
    let mut stats = Estadisticas {
        total_eventos: 0,
        por_tipo: BTreeMap::new(),
        por_estado: BTreeMap::new(),
        por_afiliado: BTreeMap::new(),
        valor_conversiones: BTreeMap::new(),
    };
    for (tipo, estado, afiliado, n, moneda, valor) in filas {
        stats.total_eventos += n;
        *stats.por_tipo.entry(tipo).or_default() += n;
        *stats.por_estado.entry(estado).or_default() += n;
        *stats.por_afiliado.entry(afiliado).or_default() += n;
        if let (Some(moneda), Some(valor)) = (moneda, valor) {
            *stats.valor_conversiones.entry(moneda).or_default() += valor;
        }
    }
    Ok(stats)
}

/// Events whose publication failed and is still being retried, oldest first.
pub async fn fallidos(
    pool: &PgPool,
    id_afiliado: Option<&str>,
    limite: i64,
) -> Result<(Vec<EstadoDeEvento>, i64), sqlx::Error> {
    let filtro = "o.published_at IS NULL AND o.attempts > 0 AND e.estado = 'ACEPTADO' \
                  AND ($1::text IS NULL OR e.id_afiliado = $1)";
    let filas: Vec<FilaEstado> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} ORDER BY e.recibido_en LIMIT $2",
        select_estado!(filtro)
    )))
    .bind(id_afiliado)
    .bind(limite)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM eventos e JOIN outbox o ON o.event_id = e.id_evento WHERE {filtro}"
    )))
    .bind(id_afiliado)
    .fetch_one(pool)
    .await?;
    Ok((filas.into_iter().map(Into::into).collect(), total))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reintento {
    /// Due now; the relay was woken.
    Programado,
    NoEncontrado,
    YaPublicado,
    Descartado,
}

/// Makes an unpublished event due at once and wakes the relay.
pub async fn reintentar(pool: &PgPool, id: Uuid) -> Result<Reintento, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let fila: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT e.estado, o.published_at FROM eventos e LEFT JOIN outbox o ON o.event_id = e.id_evento \
         WHERE e.id_evento = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let resultado = match fila {
        None => Reintento::NoEncontrado,
        Some((estado, _)) if estado == "DESCARTADO" => Reintento::Descartado,
        Some((_, Some(_))) => Reintento::YaPublicado,
        Some((_, None)) => {
            sqlx::query(
                "UPDATE outbox SET next_attempt_at = clock_timestamp() \
                 WHERE event_id = $1 AND published_at IS NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("SELECT pg_notify(current_schema() || '_outbox', '')")
                .execute(&mut *tx)
                .await?;
            Reintento::Programado
        }
    };
    tx.commit().await?;
    Ok(resultado)
}

/// The affiliate's allowance right now (the database's clock, like the limiter's).
pub async fn cuota(
    pool: &PgPool,
    id_afiliado: &str,
    politica: Politica,
) -> Result<Cuota, sqlx::Error> {
    let (tat, ahora): (Option<DateTime<Utc>>, DateTime<Utc>) = sqlx::query_as(
        "SELECT (SELECT tat FROM limites_afiliado WHERE id_afiliado = $1), clock_timestamp()",
    )
    .bind(id_afiliado)
    .fetch_one(pool)
    .await?;
    Ok(politica.cuota(tat, ahora))
}

/// Accepted events not yet published, and how long the oldest has waited.
pub async fn pendientes_de_publicar(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at))::float8, 0) \
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}
