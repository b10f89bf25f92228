//! PostgreSQL persistence of payments. Every state change and the event it emits are written
//! in one transaction (the outbox row rides along), so neither can exist without the other.

use chrono::{DateTime, Utc};
use std::{collections::HashSet, sync::LazyLock};

use platform::{
    messaging::Envelope,
    outbox::{self, Pending},
};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres};
use uuid::Uuid;

use crate::domain::{Dinero, EstadoPago, EventoPago, Moneda, OrigenComision, Pago};

pub const AGGREGATE_TYPE: &str = "Pago";

#[derive(sqlx::FromRow)]
struct FilaPago {
    id: Uuid,
    id_afiliado: String,
    monto: Decimal,
    moneda: String,
    referencia_pago: String,
    estado: String,
    fecha_creacion: DateTime<Utc>,
    fecha_actualizacion: DateTime<Utc>,
    fecha_procesamiento: Option<DateTime<Utc>>,
    mensaje_error: Option<String>,
    referencia_transaccion: Option<String>,
    motivo_reversion: Option<String>,
    eventos_emitidos: i64,
    comision: Option<sqlx::types::Json<OrigenComision>>,
}

/// `SELECT <every column> FROM pagos WHERE <filter>`, built at compile time.
macro_rules! select_pago {
    ($filtro:literal) => {
        concat!(
            "SELECT id, id_afiliado, monto, moneda, referencia_pago, estado, fecha_creacion, ",
            "fecha_actualizacion, fecha_procesamiento, mensaje_error, referencia_transaccion, ",
            "motivo_reversion, eventos_emitidos, comision FROM pagos WHERE ",
            $filtro
        )
    };
}

impl TryFrom<FilaPago> for Pago {
    type Error = sqlx::Error;

    fn try_from(fila: FilaPago) -> Result<Self, Self::Error> {
        let corrupt = |what: String| sqlx::Error::Decode(what.into());
        let moneda: Moneda = fila
            .moneda
            .parse()
            .map_err(|_| corrupt(format!("unknown currency {}", fila.moneda)))?;
        let estado = EstadoPago::from_code(&fila.estado)
            .ok_or_else(|| corrupt(format!("unknown state {}", fila.estado)))?;
        let dinero = Dinero::new(fila.monto, moneda)
            .map_err(|e| corrupt(format!("stored amount breaks a rule: {e}")))?;
        Ok(Pago {
            id: fila.id,
            id_afiliado: fila.id_afiliado,
            dinero,
            referencia_pago: fila.referencia_pago,
            estado,
            fecha_creacion: fila.fecha_creacion,
            fecha_actualizacion: fila.fecha_actualizacion,
            fecha_procesamiento: fila.fecha_procesamiento,
            mensaje_error: fila.mensaje_error,
            referencia_transaccion: fila.referencia_transaccion,
            motivo_reversion: fila.motivo_reversion,
            eventos_emitidos: fila.eventos_emitidos,
            comision: fila.comision.map(|c| c.0),
        })
    }
}

/// A payment to insert if its `referencia_pago` is new, with what is written along with it.
pub struct PagoNuevo<'a> {
    pub pago: &'a Pago,
    /// The trace line of its acceptance.
    pub traza: LineaTraza<'a>,
    /// The event it emits, and the request it came from.
    pub evento: &'a EventoPago,
}

/// Inserts, in one statement, the payments whose `referencia_pago` does not exist yet, each
/// with its trace line and its outbox row (one round trip: on a connection outside a
/// transaction it commits on its own, and all or nothing), and returns the ids of those
/// inserted. A reference held by another transaction makes the insert wait for it, so exactly
/// one of any number of simultaneous duplicates wins; of two payments with one reference in
/// `nuevos`, the first is inserted. A payment not inserted leaves no row at all.
pub async fn insertar_si_nuevos(
    conn: &mut PgConnection,
    nuevos: &[PagoNuevo<'_>],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH nuevos AS ( \
                INSERT INTO pagos (id, id_afiliado, monto, moneda, referencia_pago, estado, \
                                   fecha_creacion, fecha_actualizacion, eventos_emitidos, comision) \
                SELECT id, id_afiliado, monto, moneda, referencia_pago, estado, fecha_creacion, \
                       fecha_actualizacion, eventos_emitidos, comision \
                FROM unnest($1::uuid[], $2::text[], $3::numeric[], $4::text[], $5::text[], \
                            $6::text[], $7::timestamptz[], $8::timestamptz[], $9::int8[], \
                            $10::jsonb[]) \
                     WITH ORDINALITY AS t(id, id_afiliado, monto, moneda, referencia_pago, estado, \
                                          fecha_creacion, fecha_actualizacion, eventos_emitidos, \
                                          comision, n) \
                ORDER BY n \
                ON CONFLICT (id_afiliado, referencia_pago) DO NOTHING RETURNING id), \
             trazas AS ( \
                INSERT INTO pago_traza (id_pago, evento, detalle, request_id) \
                SELECT l.id_pago, l.evento, l.detalle, l.request_id \
                FROM unnest($1::uuid[], $11::text[], $12::text[], $13::text[]) \
                     WITH ORDINALITY AS l(id_pago, evento, detalle, request_id, n) \
                WHERE l.id_pago IN (SELECT id FROM nuevos) \
                ORDER BY l.n), \
             eventos AS ({} {} WHERE u.aggregate_id IN (SELECT id::text FROM nuevos)) \
             SELECT id FROM nuevos",
            outbox::Columns::INSERT_COLUMNS,
            outbox::Columns::select_sql(14, "u"),
        )
    });
    let pagos: Vec<&Pago> = nuevos.iter().map(|n| n.pago).collect();
    let columna = |f: fn(&Pago) -> String| pagos.iter().map(|p| f(p)).collect::<Vec<_>>();
    let comisiones = pagos
        .iter()
        .map(|p| {
            p.comision
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))
        })
        .collect::<Result<Vec<Option<serde_json::Value>>, _>>()?;
    let eventos: Vec<(&EventoPago, &str)> = nuevos
        .iter()
        .map(|n| (n.evento, n.traza.request_id))
        .collect();
    let envelopes = envelopes(&eventos)?;
    let columnas_outbox = outbox::Columns::new(&pendientes(&eventos, &envelopes))?;
    let consulta = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(pagos.iter().map(|p| p.id).collect::<Vec<_>>())
        .bind(columna(|p| p.id_afiliado.clone()))
        .bind(
            pagos
                .iter()
                .map(|p| p.dinero.monto())
                .collect::<Vec<Decimal>>(),
        )
        .bind(columna(|p| p.dinero.moneda().code().to_owned()))
        .bind(columna(|p| p.referencia_pago.clone()))
        .bind(columna(|p| p.estado.code().to_owned()))
        .bind(pagos.iter().map(|p| p.fecha_creacion).collect::<Vec<_>>())
        .bind(
            pagos
                .iter()
                .map(|p| p.fecha_actualizacion)
                .collect::<Vec<_>>(),
        )
        .bind(pagos.iter().map(|p| p.eventos_emitidos).collect::<Vec<_>>())
        .bind(comisiones)
        .bind(nuevos.iter().map(|n| n.traza.evento).collect::<Vec<_>>())
        .bind(
            nuevos
                .iter()
                .map(|n| n.traza.detalle.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            nuevos
                .iter()
                .map(|n| n.traza.request_id)
                .collect::<Vec<_>>(),
        );
    let insertados: Vec<Uuid> = columnas_outbox
        .bind_scalar(consulta)
        .fetch_all(conn)
        .await?;
    Ok(insertados.into_iter().collect())
}

/// Writes every mutable field of the aggregate.
pub async fn actualizar(tx: &mut PgConnection, pago: &Pago) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE pagos SET estado = $2, fecha_actualizacion = $3, fecha_procesamiento = $4, \
         mensaje_error = $5, referencia_transaccion = $6, motivo_reversion = $7, \
         eventos_emitidos = $8 WHERE id = $1",
    )
    .bind(pago.id)
    .bind(pago.estado.code())
    .bind(pago.fecha_actualizacion)
    .bind(pago.fecha_procesamiento)
    .bind(&pago.mensaje_error)
    .bind(&pago.referencia_transaccion)
    .bind(&pago.motivo_reversion)
    .bind(pago.eventos_emitidos)
    .execute(tx)
    .await?;
    Ok(())
}

/// Writes every mutable field of many aggregates in one statement.
pub async fn actualizar_muchos(tx: &mut PgConnection, pagos: &[&Pago]) -> Result<(), sqlx::Error> {
    if pagos.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE pagos p SET estado = t.estado, fecha_actualizacion = t.fecha_actualizacion, \
            fecha_procesamiento = t.fecha_procesamiento, mensaje_error = t.mensaje_error, \
            referencia_transaccion = t.referencia_transaccion, \
            motivo_reversion = t.motivo_reversion, eventos_emitidos = t.eventos_emitidos \
         FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], \
                     $6::text[], $7::text[], $8::int8[]) \
              AS t(id, estado, fecha_actualizacion, fecha_procesamiento, mensaje_error, \
                   referencia_transaccion, motivo_reversion, eventos_emitidos) \
         WHERE p.id = t.id",
    )
    .bind(pagos.iter().map(|p| p.id).collect::<Vec<_>>())
    .bind(pagos.iter().map(|p| p.estado.code()).collect::<Vec<_>>())
    .bind(
        pagos
            .iter()
            .map(|p| p.fecha_actualizacion)
            .collect::<Vec<_>>(),
    )
    .bind(
        pagos
            .iter()
            .map(|p| p.fecha_procesamiento)
            .collect::<Vec<_>>(),
    )
    .bind(
        pagos
            .iter()
            .map(|p| p.mensaje_error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        pagos
            .iter()
            .map(|p| p.referencia_transaccion.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        pagos
            .iter()
            .map(|p| p.motivo_reversion.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(pagos.iter().map(|p| p.eventos_emitidos).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn buscar(pool: &PgPool, id: Uuid) -> Result<Option<Pago>, sqlx::Error> {
    cargar(pool, select_pago!("id = $1"), id).await
}

/// Which payments [`recientes`] lists.
#[derive(Debug, Clone, Default)]
pub struct FiltroRecientes {
    pub estado: Option<EstadoPago>,
    pub id_afiliado: Option<String>,
    /// Only payments older than this `(fecha_creacion, id)`: the previous page's last one.
    pub antes_de: Option<(DateTime<Utc>, Uuid)>,
}

/// The latest payments matching `filtro`, newest first (ties on `fecha_creacion`, which a
/// group-committed batch shares, broken by id), at most `limite`.
pub async fn recientes(
    pool: &PgPool,
    filtro: &FiltroRecientes,
    limite: i64,
) -> Result<Vec<Pago>, sqlx::Error> {
    let (antes_fecha, antes_id) = filtro.antes_de.unzip();
    sqlx::query_as::<_, FilaPago>(select_pago!(
        "($1::text IS NULL OR estado = $1) AND ($2::text IS NULL OR id_afiliado = $2) \
         AND ($3::timestamptz IS NULL OR (fecha_creacion, id) < ($3, $4)) \
         ORDER BY fecha_creacion DESC, id DESC LIMIT $5"
    ))
    .bind(filtro.estado.map(EstadoPago::code))
    .bind(filtro.id_afiliado.as_deref())
    .bind(antes_fecha)
    .bind(antes_id)
    .bind(limite)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Pago::try_from)
    .collect()
}

/// How many payments were created in each minute since `desde`, by their current state:
/// `(minute, state code, count)`, oldest minute first; minutes with none are absent.
pub async fn por_minuto(
    pool: &PgPool,
    desde: DateTime<Utc>,
    id_afiliado: Option<&str>,
) -> Result<Vec<(DateTime<Utc>, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT date_trunc('minute', fecha_creacion) AS minuto, estado, count(*) \
         FROM pagos WHERE fecha_creacion >= $1 AND ($2::text IS NULL OR id_afiliado = $2) \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(desde)
    .bind(id_afiliado)
    .fetch_all(pool)
    .await
}

/// Loads and row-locks the payments `ids` (those that exist) within `tx`. Locks are taken in
/// id order, so two transactions locking overlapping sets cannot deadlock.
pub async fn bloquear_muchos(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Pago>, sqlx::Error> {
    cargar_muchos(tx, select_pago!("id = ANY($1) ORDER BY id FOR UPDATE"), ids).await
}

/// Loads and row-locks a payment for a state change within `tx`.
pub async fn bloquear(tx: &mut PgConnection, id: Uuid) -> Result<Option<Pago>, sqlx::Error> {
    cargar(tx, select_pago!("id = $1 FOR UPDATE"), id).await
}

/// The payments holding any of `referencias`, each an `(id_afiliado, referencia_pago)` pair.
pub async fn buscar_por_referencias(
    tx: &mut PgConnection,
    referencias: &[(&str, &str)],
) -> Result<Vec<Pago>, sqlx::Error> {
    let (afiliados, referencias): (Vec<&str>, Vec<&str>) = referencias.iter().copied().unzip();
    sqlx::query_as::<_, FilaPago>(select_pago!(
        "(id_afiliado, referencia_pago) IN \
         (SELECT * FROM unnest($1::text[], $2::text[]))"
    ))
    .bind(afiliados)
    .bind(referencias)
    .fetch_all(tx)
    .await?
    .into_iter()
    .map(Pago::try_from)
    .collect()
}

async fn cargar_muchos<'e, B>(
    executor: impl PgExecutor<'e>,
    sql: &'static str,
    valores: B,
) -> Result<Vec<Pago>, sqlx::Error>
where
    B: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + 'e,
{
    sqlx::query_as::<_, FilaPago>(sql)
        .bind(valores)
        .fetch_all(executor)
        .await?
        .into_iter()
        .map(Pago::try_from)
        .collect()
}

async fn cargar<'e, B>(
    executor: impl PgExecutor<'e>,
    sql: &'static str,
    valor: B,
) -> Result<Option<Pago>, sqlx::Error>
where
    B: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + 'e,
{
    // One row at most: the filters are on unique columns.
    Ok(cargar_muchos(executor, sql, valor).await?.pop())
}

/// Puts the event in the outbox (same transaction as the state change) and traces it.
pub async fn registrar_evento(
    tx: &mut PgConnection,
    evento: &EventoPago,
    correlation_id: &str,
) -> Result<(), sqlx::Error> {
    let event = outbox::NewEvent {
        event_type: evento.tipo.nombre(),
        aggregate_type: AGGREGATE_TYPE,
        aggregate_id: evento.datos.id_pago.to_string(),
        aggregate_version: evento.secuencia,
        occurred_at: evento.ocurrido_en,
        correlation_id,
        data: &evento.datos,
    };
    outbox::record(tx, evento.tipo.topic(), event).await
}

/// Puts many events in the outbox in one statement, each with its correlation id.
pub async fn registrar_eventos(
    tx: &mut PgConnection,
    eventos: &[(&EventoPago, &str)],
) -> Result<(), sqlx::Error> {
    let envelopes = envelopes(eventos)?;
    outbox::enqueue_many(tx, &pendientes(eventos, &envelopes)).await
}

/// The envelope of each event, with its correlation id.
fn envelopes(eventos: &[(&EventoPago, &str)]) -> Result<Vec<Envelope>, sqlx::Error> {
    eventos
        .iter()
        .map(|(evento, correlation_id)| {
            outbox::NewEvent {
                event_type: evento.tipo.nombre(),
                aggregate_type: AGGREGATE_TYPE,
                aggregate_id: evento.datos.id_pago.to_string(),
                aggregate_version: evento.secuencia,
                occurred_at: evento.ocurrido_en,
                correlation_id,
                data: &evento.datos,
            }
            .into_envelope()
        })
        .collect()
}

/// The outbox rows of `envelopes`, on each event's topic, keyed by the payment.
fn pendientes<'a>(
    eventos: &[(&'a EventoPago, &str)],
    envelopes: &'a [Envelope],
) -> Vec<Pending<'a>> {
    eventos
        .iter()
        .zip(envelopes)
        .map(|((evento, _), envelope)| Pending {
            topic: evento.tipo.topic(),
            message_key: None,
            envelope,
        })
        .collect()
}

/// Claims up to `lote` payments stuck before a result for longer than `antiguedad`, touching
/// them so another replica's sweep skips them for the same period. Returns each id with the
/// request id that created it (the correlation id of the work done on its behalf).
pub async fn reclamar_estancados(
    pool: &PgPool,
    antiguedad: std::time::Duration,
    lote: i64,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "WITH estancados AS ( \
            SELECT id FROM pagos \
            WHERE estado IN ('PENDIENTE', 'PROCESANDO') \
              AND fecha_actualizacion < now() - make_interval(secs => $1) \
            ORDER BY fecha_actualizacion LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE pagos p SET fecha_actualizacion = now() FROM estancados e WHERE p.id = e.id \
         RETURNING p.id, coalesce((SELECT request_id FROM pago_traza t WHERE t.id_pago = p.id \
                                   ORDER BY t.id LIMIT 1), p.id::text)",
    )
    .bind(antiguedad.as_secs_f64())
    .bind(lote)
    .fetch_all(pool)
    .await
}

/// Appends a line to the payment's trace.
pub async fn trazar(
    tx: &mut PgConnection,
    id_pago: Uuid,
    evento: &str,
    detalle: &str,
    request_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pago_traza (id_pago, evento, detalle, request_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(id_pago)
    .bind(evento)
    .bind(detalle)
    .bind(request_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// A trace line to write.
#[derive(Debug, Clone)]
pub struct LineaTraza<'a> {
    pub id_pago: Uuid,
    pub evento: &'a str,
    pub detalle: String,
    pub request_id: &'a str,
}

/// Appends many trace lines in one statement, in order.
pub async fn trazar_muchas(
    tx: &mut PgConnection,
    lineas: &[LineaTraza<'_>],
) -> Result<(), sqlx::Error> {
    if lineas.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO pago_traza (id_pago, evento, detalle, request_id) \
         SELECT id_pago, evento, detalle, request_id \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) \
              WITH ORDINALITY AS t(id_pago, evento, detalle, request_id, n) \
         ORDER BY n",
    )
    .bind(lineas.iter().map(|l| l.id_pago).collect::<Vec<_>>())
    .bind(lineas.iter().map(|l| l.evento).collect::<Vec<_>>())
    .bind(
        lineas
            .iter()
            .map(|l| l.detalle.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(lineas.iter().map(|l| l.request_id).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

/// One line of `GET /pagos/{id}/eventos`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct EntradaTraza {
    pub evento: String,
    pub fecha: DateTime<Utc>,
    pub detalle: String,
    pub request_id: Option<String>,
}

/// The payment's trace merged with its published events, oldest first.
pub async fn traza(pool: &PgPool, id_pago: Uuid) -> Result<Vec<EntradaTraza>, sqlx::Error> {
    sqlx::query_as(
        "SELECT evento, fecha, detalle, request_id FROM ( \
            SELECT evento, fecha, detalle, request_id, 0 AS origen, id AS orden \
              FROM pago_traza WHERE id_pago = $1 \
            UNION ALL \
            SELECT 'EVENTO_PUBLICADO', published_at, \
                   event_type || ' (v' || aggregate_version || ') publicado en ' || topic, \
                   envelope->>'correlation_id', 1, id \
              FROM outbox WHERE aggregate_id = $2 AND published_at IS NOT NULL \
         ) t ORDER BY fecha, origen, orden",
    )
    .bind(id_pago)
    .bind(id_pago.to_string())
    .fetch_all(pool)
    .await
}
