//! The projection: every payment and campaign event, stored once and applied to both versions
//! of the read model in one statement.
//!
//! Each event carries its aggregate's full state, so a row keeps the state of the newest
//! `aggregate_version` seen; the only field that is not "newest wins", a payment's creation
//! time, is the earliest event's time. Both rules are commutative, so duplicated and shuffled
//! delivery ends with exactly the rows of an in-order single delivery. The same column
//! expressions serve the incremental path and [`rebuild`], which replays the stored events.

use std::{
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use platform::{
    inbox::TransactionalHandler,
    messaging::{Envelope, HandlerError},
};
use serde::Deserialize;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::domain::{ESTADOS_PAGO, MONEDAS, Version};

pub const TOPICS: [&str; 7] = [
    "payments.evt.pending",
    "payments.evt.completed",
    "payments.evt.failed",
    "payments.evt.reverted",
    "campaigns.evt.created",
    "campaigns.evt.activated",
    "campaigns.evt.updated",
];

/// How each table's columns come from a stored event (`e`: a row of `eventos`).
struct Tabla {
    nombre: &'static str,
    aggregate_type: &'static str,
    clave: &'static str,
    /// `(column, expression over e)`.
    columnas: &'static [(&'static str, &'static str)],
    /// Columns that keep the earliest value instead of the newest one.
    minimas: &'static [&'static str],
}

const V1_PAGOS: Tabla = Tabla {
    nombre: "v1_pagos",
    aggregate_type: "Pago",
    clave: "id_pago",
    columnas: &[
        ("id_pago", "e.aggregate_id"),
        ("id_afiliado", "e.data->>'id_afiliado'"),
        ("monto", "(e.data->>'monto')::numeric"),
        ("moneda", "e.data->>'moneda'"),
        ("estado", "e.data->>'estado'"),
        ("fecha_creacion", "e.occurred_at"),
        ("version", "e.aggregate_version"),
    ],
    minimas: &["fecha_creacion"],
};

const V2_PAGOS: Tabla = Tabla {
    nombre: "v2_pagos",
    aggregate_type: "Pago",
    clave: "id_pago",
    columnas: &[
        ("id_pago", "e.aggregate_id"),
        ("id_afiliado", "e.data->>'id_afiliado'"),
        ("monto", "(e.data->>'monto')::numeric"),
        ("moneda", "e.data->>'moneda'"),
        ("estado", "e.data->>'estado'"),
        ("referencia_pago", "e.data->>'referencia_pago'"),
        ("mensaje_error", "e.data->>'mensaje_error'"),
        (
            "referencia_transaccion",
            "e.data->>'referencia_transaccion'",
        ),
        ("fecha_creacion", "e.occurred_at"),
        ("fecha_actualizacion", "e.occurred_at"),
        ("version", "e.aggregate_version"),
    ],
    minimas: &["fecha_creacion"],
};

const V2_CAMPANAS: Tabla = Tabla {
    nombre: "v2_campanas",
    aggregate_type: "Campana",
    clave: "id_campana",
    columnas: &[
        ("id_campana", "e.aggregate_id"),
        ("id_afiliado", "e.data->>'id_afiliado'"),
        ("nombre", "e.data->>'nombre'"),
        ("estado", "e.data->>'estado'"),
        ("presupuesto", "(e.data->>'presupuesto')::numeric"),
        ("moneda", "e.data->>'moneda'"),
        ("gasto", "(e.data->>'gasto_actual')::numeric"),
        ("conversiones", "(e.data->>'conversiones')::bigint"),
        ("version", "e.aggregate_version"),
    ],
    minimas: &[],
};

/// The tables of each version.
fn tablas(version: Version) -> &'static [Tabla] {
    match version {
        Version::V1 => &[V1_PAGOS],
        Version::V2 => &[V2_PAGOS, V2_CAMPANAS],
    }
}

impl Tabla {
    fn lista(&self) -> String {
        self.columnas
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `INSERT … SELECT … FROM <from> ON CONFLICT …`: the newest version wins every column but
    /// the earliest-value ones, which take the least of both.
    fn upsert(&self, from: &str) -> String {
        let expresiones = self
            .columnas
            .iter()
            .map(|(_, e)| *e)
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {} ({}) SELECT {expresiones} FROM {from} ON CONFLICT ({}) DO UPDATE SET {}",
            self.nombre,
            self.lista(),
            self.clave,
            self.sets()
        )
    }

    /// The same for a batch: one row per aggregate of the events in CTE `e` (the newest
    /// event's state, the least of the earliest-value columns), upserted by the same rules.
    /// Both rules commute, so this leaves what applying the events one at a time leaves.
    fn upsert_lote(&self) -> String {
        format!(
            "INSERT INTO {} ({}) {} ON CONFLICT ({}) DO UPDATE SET {}",
            self.nombre,
            self.lista(),
            self.por_agregado("e"),
            self.clave,
            self.sets()
        )
    }

    /// The `DO UPDATE SET` of an upsert: newest version wins, earliest-value columns keep the
    /// least.
    fn sets(&self) -> String {
        let t = self.nombre;
        self.columnas
            .iter()
            .filter(|(c, _)| *c != self.clave)
            .map(|(c, _)| {
                if self.minimas.contains(c) {
                    format!("{c} = LEAST({t}.{c}, EXCLUDED.{c})")
                } else {
                    format!(
                        "{c} = CASE WHEN EXCLUDED.version > {t}.version THEN EXCLUDED.{c} ELSE {t}.{c} END"
                    )
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Rebuild from every stored event: one row per aggregate, the newest event's state and
    /// the earliest event's value for the earliest-value columns.
    fn reconstruir(&self) -> String {
        format!(
            "INSERT INTO {} ({}) {}",
            self.nombre,
            self.lista(),
            self.por_agregado("eventos e")
        )
    }

    /// One row per aggregate of this table's type among the events of `fuente` (aliased `e`):
    /// the newest event's columns, and the least over its events of the earliest-value ones.
    fn por_agregado(&self, fuente: &str) -> String {
        let expresiones = self
            .columnas
            .iter()
            .map(|(c, e)| {
                if self.minimas.contains(c) {
                    format!("min({e}) OVER (PARTITION BY e.aggregate_id)")
                } else {
                    (*e).to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT DISTINCT ON (e.aggregate_id) {expresiones} \
             FROM {fuente} WHERE e.aggregate_type = '{a}' \
             ORDER BY e.aggregate_id, e.aggregate_version DESC",
            a = self.aggregate_type,
        )
    }
}

/// One statement per aggregate type: store the event (its id is the inbox) and, only when it
/// was new, apply it to every table of both versions. One round trip, atomic.
fn aplicar_sql(aggregate_type: &str) -> String {
    let tablas: Vec<&Tabla> = Version::ALL
        .iter()
        .flat_map(|v| tablas(*v))
        .filter(|t| t.aggregate_type == aggregate_type)
        .collect();
    let mut sql = String::from(
        "WITH e AS (INSERT INTO eventos (event_id, event_type, aggregate_type, aggregate_id, \
            aggregate_version, occurred_at, correlation_id, data) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING \
         RETURNING aggregate_id, aggregate_version, occurred_at, data)",
    );
    for (i, tabla) in tablas.iter().enumerate() {
        sql.push_str(&format!(", t{i} AS ({})", tabla.upsert("e")));
    }
    sql.push_str(" SELECT count(*) FROM e");
    sql
}

/// One statement per batch, whatever its events: store the new ones (in event id order, so
/// concurrent batches take their locks in one order), then upsert every table of both versions
/// from them; it returns the ids of the events that were new.
fn aplicar_lote_sql() -> String {
    let mut sql = String::from(
        "WITH e AS (INSERT INTO eventos (event_id, event_type, aggregate_type, aggregate_id, \
            aggregate_version, occurred_at, correlation_id, data) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], \
                              $6::timestamptz[], $7::text[], $8::jsonb[]) ORDER BY 1 \
         ON CONFLICT (event_id) DO NOTHING \
         RETURNING event_id, aggregate_type, aggregate_id, aggregate_version, occurred_at, data)",
    );
    for (i, tabla) in Version::ALL.iter().flat_map(|v| tablas(*v)).enumerate() {
        sql.push_str(&format!(", t{i} AS ({})", tabla.upsert_lote()));
    }
    sql.push_str(" SELECT event_id FROM e");
    sql
}

static APLICAR_LOTE: LazyLock<String> = LazyLock::new(aplicar_lote_sql);
static APLICAR_PAGO: LazyLock<String> = LazyLock::new(|| aplicar_sql("Pago"));
static APLICAR_CAMPANA: LazyLock<String> = LazyLock::new(|| aplicar_sql("Campana"));

/// The payment fields the projection reads, checked before anything is written: a malformed
/// event is refused whole (and dead-lettered), never half applied. The fields are read only
/// to check their types: the SQL takes the values from the stored JSON itself.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct DatosPago {
    id_afiliado: String,
    monto: f64,
    moneda: String,
    estado: String,
    referencia_pago: String,
    #[serde(default)]
    mensaje_error: Option<String>,
    #[serde(default)]
    referencia_transaccion: Option<String>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct DatosCampana {
    id_afiliado: String,
    nombre: String,
    estado: String,
    presupuesto: f64,
    moneda: String,
    gasto_actual: f64,
    conversiones: i64,
}

fn validar(envelope: &Envelope) -> Result<&'static str, String> {
    let monto_valido = |monto: f64| (0.0..1e12).contains(&monto);
    match envelope.aggregate_type.as_str() {
        "Pago" => {
            let pago: DatosPago =
                serde_json::from_value(envelope.data.clone()).map_err(|e| e.to_string())?;
            if pago.id_afiliado.is_empty() || !monto_valido(pago.monto) {
                return Err("id_afiliado vacío o monto fuera de rango".into());
            }
            if !MONEDAS.contains(&pago.moneda.as_str()) {
                return Err(format!("moneda desconocida '{}'", pago.moneda));
            }
            if !ESTADOS_PAGO.contains(&pago.estado.as_str()) {
                return Err(format!("estado desconocido '{}'", pago.estado));
            }
            Ok(APLICAR_PAGO.as_str())
        }
        "Campana" => {
            let c: DatosCampana =
                serde_json::from_value(envelope.data.clone()).map_err(|e| e.to_string())?;
            if !monto_valido(c.presupuesto) || !monto_valido(c.gasto_actual) {
                return Err("presupuesto o gasto fuera de rango".into());
            }
            if !MONEDAS.contains(&c.moneda.as_str()) {
                return Err(format!("moneda desconocida '{}'", c.moneda));
            }
            Ok(APLICAR_CAMPANA.as_str())
        }
        other => Err(format!("tipo de agregado desconocido '{other}'")),
    }
}

/// The statement that applies `envelope`, or why it can never be applied.
fn comprobar(envelope: &Envelope) -> Result<&'static str, HandlerError> {
    if envelope.aggregate_version < 1 {
        return Err(HandlerError::Permanent(format!(
            "{}: aggregate_version {} < 1",
            envelope.event_type, envelope.aggregate_version
        )));
    }
    validar(envelope).map_err(|e| HandlerError::Permanent(format!("{}: {e}", envelope.event_type)))
}

/// Applies one event to both versions. Returns whether it was new (false: a duplicate, which
/// changes nothing).
pub async fn aplicar(pool: &PgPool, envelope: &Envelope) -> Result<bool, HandlerError> {
    aplicar_con(pool, envelope).await
}

/// [`aplicar`] on any connection: a pool, or a transaction that other events share.
async fn aplicar_con<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    envelope: &Envelope,
) -> Result<bool, HandlerError> {
    let sql = comprobar(envelope)?;
    let nuevos: i64 = sqlx::query_scalar(sql)
        .bind(envelope.event_id)
        .bind(&envelope.event_type)
        .bind(&envelope.aggregate_type)
        .bind(&envelope.aggregate_id)
        .bind(envelope.aggregate_version)
        .bind(envelope.occurred_at)
        .bind(&envelope.correlation_id)
        .bind(&envelope.data)
        .fetch_one(executor)
        .await
        .map_err(|e| HandlerError::Transient(e.into()))?;
    Ok(nuevos == 1)
}

/// Applies a batch of events to both versions in one statement. Says, per event in order,
/// whether it was new (a duplicate, or a second copy in the batch, changes nothing). A
/// malformed event refuses the whole batch before anything is written.
pub async fn aplicar_lote<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    envelopes: &[Envelope],
) -> Result<Vec<bool>, HandlerError> {
    for envelope in envelopes {
        comprobar(envelope)?;
    }
    let nuevos: std::collections::HashSet<uuid::Uuid> =
        sqlx::query_scalar(AssertSqlSafe(APLICAR_LOTE.as_str()))
            .bind(envelopes.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(
                envelopes
                    .iter()
                    .map(|e| e.event_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                envelopes
                    .iter()
                    .map(|e| e.aggregate_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                envelopes
                    .iter()
                    .map(|e| e.aggregate_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                envelopes
                    .iter()
                    .map(|e| e.aggregate_version)
                    .collect::<Vec<_>>(),
            )
            .bind(envelopes.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
            .bind(
                envelopes
                    .iter()
                    .map(|e| e.correlation_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(envelopes.iter().map(|e| &e.data).collect::<Vec<_>>())
            .fetch_all(executor)
            .await
            .map_err(|e| HandlerError::Transient(e.into()))?
            .into_iter()
            .collect();
    let mut vistos = std::collections::HashSet::new();
    Ok(envelopes
        .iter()
        .map(|e| nuevos.contains(&e.event_id) && vistos.insert(e.event_id))
        .collect())
}

/// Rebuilds `version` from the stored events in one transaction. Writers of that version's
/// tables wait (EXCLUSIVE lock) while readers keep reading the old rows until the commit, so
/// reports never fail or see a half-built projection; an event that arrives meanwhile is
/// applied right after, on top of the rebuilt rows. Returns the rows written per table.
pub async fn rebuild(pool: &PgPool, version: Version) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let nombres: Vec<&str> = tablas(version).iter().map(|t| t.nombre).collect();
    // Table names are constants of this module, never input.
    sqlx::query(AssertSqlSafe(format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        nombres.join(", ")
    )))
    .execute(&mut *tx)
    .await?;
    let mut filas = Vec::new();
    for tabla in tablas(version) {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", tabla.nombre)))
            .execute(&mut *tx)
            .await?;
        let escritas = sqlx::query(AssertSqlSafe(tabla.reconstruir()))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        filas.push((tabla.nombre.to_owned(), escritas));
    }
    tx.commit().await?;
    Ok(filas)
}

/// How far behind the projection is, as this replica sees it.
#[derive(Debug, Default)]
pub struct Progreso {
    /// Events this replica applied (duplicates not counted) since it started.
    aplicados: AtomicU64,
    duplicados: AtomicU64,
    /// `(when, lag)` of the last event this replica handled.
    ultimo: Mutex<Option<(Instant, Duration)>>,
    /// Set once the backlog found at start has been worked off; never unset.
    al_dia: AtomicBool,
}

/// The projection is caught up when the last event it handled was at most this old...
const LAG_AL_DIA: Duration = Duration::from_secs(2);
/// ...or when nothing has arrived for this long since the broker connected (no backlog).
const SILENCIO_AL_DIA: Duration = Duration::from_secs(1);

impl Progreso {
    pub fn registrar(&self, nuevo: bool, ocurrido_en: DateTime<Utc>) {
        if nuevo {
            self.aplicados.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicados.fetch_add(1, Ordering::Relaxed);
        }
        let lag = (Utc::now() - ocurrido_en).to_std().unwrap_or_default();
        if lag <= LAG_AL_DIA {
            self.al_dia.store(true, Ordering::Relaxed);
        }
        *self.ultimo.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), lag));
    }

    pub fn aplicados(&self) -> u64 {
        self.aplicados.load(Ordering::Relaxed)
    }

    pub fn duplicados(&self) -> u64 {
        self.duplicados.load(Ordering::Relaxed)
    }

    /// Lag of the last event handled (0 before any).
    pub fn lag(&self) -> Duration {
        self.ultimo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |(_, lag)| lag)
    }

    /// Whether the backlog found at start is worked off. `conectado_desde`: when the consumer's
    /// broker connection was first seen.
    pub fn al_dia(&self, conectado_desde: Option<Instant>) -> bool {
        if self.al_dia.load(Ordering::Relaxed) {
            return true;
        }
        let Some(desde) = conectado_desde else {
            return false;
        };
        let ultimo = self
            .ultimo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(at, _)| at);
        let silencio = Instant::now() - ultimo.map_or(desde, |at| at.max(desde));
        if silencio >= SILENCIO_AL_DIA {
            self.al_dia.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// The consumer of [`TOPICS`].
pub struct Proyeccion {
    pool: PgPool,
    progreso: Arc<Progreso>,
}

impl Proyeccion {
    pub fn new(pool: PgPool, progreso: Arc<Progreso>) -> Self {
        Self { pool, progreso }
    }
}

/// Busy, the projection applies the events queued in a lane in one transaction: one commit for
/// many events. Its statement stores the event and upserts both versions, so the inbox and the
/// effects commit together whatever the batch.
#[async_trait::async_trait]
impl TransactionalHandler for Proyeccion {
    /// Whether the event was new.
    type Applied = bool;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<bool, HandlerError> {
        aplicar_con(tx, envelope).await
    }

    /// The whole batch in one statement (see [`aplicar_lote`]).
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        envelopes: &[Envelope],
    ) -> Result<Vec<bool>, HandlerError> {
        aplicar_lote(tx, envelopes).await
    }

    fn committed(&self, envelope: &Envelope, nuevo: &bool) {
        self.progreso.registrar(*nuevo, envelope.occurred_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_stores_the_event_once_and_updates_both_versions() {
        let sql = aplicar_sql("Pago");
        assert!(sql.contains("ON CONFLICT (event_id) DO NOTHING"));
        assert!(sql.contains("INSERT INTO v1_pagos"));
        assert!(sql.contains("INSERT INTO v2_pagos"));
        assert!(!sql.contains("v2_campanas"));
        assert!(sql.contains("fecha_creacion = LEAST(v1_pagos.fecha_creacion"));
        assert!(aplicar_sql("Campana").contains("INSERT INTO v2_campanas"));
    }
}
