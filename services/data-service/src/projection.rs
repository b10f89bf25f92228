//! The projection: payment and campaign events, each a snapshot of its aggregate, kept as the
//! newest version per aggregate. Duplicates are absorbed by the inbox, reordering by the
//! version guard, so the rows equal an in-order single delivery.

use platform::{
    inbox::{self, TransactionalHandler},
    messaging::{Envelope, HandlerError},
};
use std::collections::HashSet;

use rust_decimal::Decimal;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};

use crate::Version;

pub const TOPICS: [&str; 7] = [
    "payments.evt.pending",
    "payments.evt.completed",
    "payments.evt.failed",
    "payments.evt.reverted",
    "campaigns.evt.created",
    "campaigns.evt.activated",
    "campaigns.evt.updated",
];

#[derive(Debug, Deserialize)]
struct Pago {
    id_afiliado: String,
    monto: f64,
    moneda: String,
    estado: String,
}

#[derive(Debug, Deserialize)]
struct Campana {
    id_afiliado: String,
    estado: String,
    presupuesto: f64,
    moneda: String,
    gasto_actual: f64,
    conversiones: i64,
}

/// The payment events of a batch, column by column, in batch order.
#[derive(Default)]
struct FilasPago {
    ids: Vec<String>,
    afiliados: Vec<String>,
    montos: Vec<Decimal>,
    monedas: Vec<String>,
    estados: Vec<String>,
    fechas: Vec<chrono::DateTime<chrono::Utc>>,
    versiones: Vec<i64>,
}

impl FilasPago {
    fn push(&mut self, envelope: &Envelope, pago: Pago) -> Result<(), HandlerError> {
        self.montos.push(decimal(pago.monto, "monto")?);
        self.ids.push(envelope.aggregate_id.clone());
        self.afiliados.push(pago.id_afiliado);
        self.monedas.push(pago.moneda);
        self.estados.push(pago.estado);
        self.fechas.push(envelope.occurred_at);
        self.versiones.push(envelope.aggregate_version);
        Ok(())
    }
}

/// The campaign events of a batch, column by column, in batch order.
#[derive(Default)]
struct FilasCampana {
    ids: Vec<String>,
    afiliados: Vec<String>,
    estados: Vec<String>,
    presupuestos: Vec<Decimal>,
    monedas: Vec<String>,
    gastos: Vec<Decimal>,
    conversiones: Vec<i64>,
    versiones: Vec<i64>,
}

impl FilasCampana {
    fn push(&mut self, envelope: &Envelope, c: Campana) -> Result<(), HandlerError> {
        self.presupuestos
            .push(decimal(c.presupuesto, "presupuesto")?);
        self.gastos.push(decimal(c.gasto_actual, "gasto_actual")?);
        self.ids.push(envelope.aggregate_id.clone());
        self.afiliados.push(c.id_afiliado);
        self.estados.push(c.estado);
        self.monedas.push(c.moneda);
        self.conversiones.push(c.conversiones);
        self.versiones.push(envelope.aggregate_version);
        Ok(())
    }
}

/// Each payment's first event of the batch (in batch order) inserts its row; an existing row
/// takes its state if newer, as one event alone would.
const INSERTAR_PAGOS: &str = "INSERT INTO pagos (id_pago, id_afiliado, monto, moneda, estado, fecha, version) \
     SELECT DISTINCT ON (id) id, afiliado, monto, moneda, estado, fecha, version \
     FROM unnest($1::text[], $2::text[], $3::numeric[], $4::text[], $5::text[], \
                 $6::timestamptz[], $7::int8[]) WITH ORDINALITY \
          AS t(id, afiliado, monto, moneda, estado, fecha, version, n) \
     ORDER BY id, n \
     ON CONFLICT (id_pago) DO UPDATE SET estado = EXCLUDED.estado, version = EXCLUDED.version \
        WHERE pagos.version < EXCLUDED.version";

/// Then each payment's newest event of the batch, if newer than the row.
const ACTUALIZAR_PAGOS: &str = "UPDATE pagos p SET estado = t.estado, version = t.version \
     FROM (SELECT DISTINCT ON (id) id, estado, version \
           FROM unnest($1::text[], $2::text[], $3::numeric[], $4::text[], $5::text[], \
                       $6::timestamptz[], $7::int8[]) \
                AS u(id, afiliado, monto, moneda, estado, fecha, version) \
           ORDER BY id, version DESC) t \
     WHERE p.id_pago = t.id AND p.version < t.version";

/// Each campaign's first event of the batch inserts its row; an existing row takes its state
/// if newer.
const INSERTAR_CAMPANAS: &str = "INSERT INTO campanas (id_campana, id_afiliado, estado, presupuesto, moneda, gasto, \
        conversiones, version) \
     SELECT DISTINCT ON (id) id, afiliado, estado, presupuesto, moneda, gasto, conversiones, version \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[], $6::numeric[], \
                 $7::int8[], $8::int8[]) WITH ORDINALITY \
          AS t(id, afiliado, estado, presupuesto, moneda, gasto, conversiones, version, n) \
     ORDER BY id, n \
     ON CONFLICT (id_campana) DO UPDATE SET estado = EXCLUDED.estado, \
        presupuesto = EXCLUDED.presupuesto, moneda = EXCLUDED.moneda, gasto = EXCLUDED.gasto, \
        conversiones = EXCLUDED.conversiones, version = EXCLUDED.version \
        WHERE campanas.version < EXCLUDED.version";

/// Then each campaign's newest event of the batch, if newer than the row.
const ACTUALIZAR_CAMPANAS: &str = "UPDATE campanas c SET estado = t.estado, presupuesto = t.presupuesto, \
        moneda = t.moneda, gasto = t.gasto, conversiones = t.conversiones, version = t.version \
     FROM (SELECT DISTINCT ON (id) id, estado, presupuesto, moneda, gasto, conversiones, version \
           FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[], \
                       $6::numeric[], $7::int8[], $8::int8[]) \
                AS u(id, afiliado, estado, presupuesto, moneda, gasto, conversiones, version) \
           ORDER BY id, version DESC) t \
     WHERE c.id_campana = t.id AND c.version < t.version";

pub struct Proyeccion {
    pool: PgPool,
    consumer: String,
}

fn decimal(value: f64, field: &str) -> Result<Decimal, HandlerError> {
    value
        .to_string()
        .parse()
        .map_err(|_| HandlerError::Permanent(format!("{field} is not a decimal")))
}

impl Proyeccion {
    pub fn new(pool: PgPool, version: Version) -> Self {
        Self {
            pool,
            consumer: format!("data-service-{}", version.as_str()),
        }
    }

    /// Applies one event in a transaction of its own.
    pub async fn aplicar(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        self.apply_alone(envelope).await
    }
}

#[async_trait::async_trait]
impl TransactionalHandler for Proyeccion {
    type Applied = ();

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A batch in five statements whatever its size: the inbox rows of every event (returning
    /// the new ones), then per table an insert of each aggregate's first new event and an
    /// update to its newest, which leaves exactly the rows applying the events one by one in
    /// order leaves (the first event inserts the row; later ones change the state only when
    /// newer).
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        envelopes: &[Envelope],
    ) -> Result<Vec<()>, HandlerError> {
        let transient = |e: sqlx::Error| HandlerError::Transient(e.into());
        let nuevos: HashSet<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO inbox (event_id, consumer, event_type) \
             SELECT e, $2, t FROM unnest($1::uuid[], $3::text[]) AS u(e, t) \
             ON CONFLICT (event_id, consumer) DO NOTHING RETURNING event_id",
        )
        .bind(envelopes.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(&self.consumer)
        .bind(
            envelopes
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(transient)?
        .into_iter()
        .collect();
        // The first delivery in the batch of each event whose inbox row is new. A malformed
        // one fails the batch (its inbox rows roll back with it), and alone it is dead-lettered.
        let mut pagos = FilasPago::default();
        let mut campanas = FilasCampana::default();
        let mut vistos = HashSet::new();
        for envelope in envelopes {
            if !nuevos.contains(&envelope.event_id) || !vistos.insert(envelope.event_id) {
                continue;
            }
            let permanent = |e: serde_json::Error| {
                HandlerError::Permanent(format!("{}: {e}", envelope.event_type))
            };
            match envelope.aggregate_type.as_str() {
                "Pago" => pagos.push(
                    envelope,
                    serde_json::from_value(envelope.data.clone()).map_err(permanent)?,
                )?,
                "Campana" => campanas.push(
                    envelope,
                    serde_json::from_value(envelope.data.clone()).map_err(permanent)?,
                )?,
                _ => {}
            }
        }
        if !pagos.ids.is_empty() {
            for sql in [INSERTAR_PAGOS, ACTUALIZAR_PAGOS] {
                sqlx::query(sql)
                    .bind(&pagos.ids)
                    .bind(&pagos.afiliados)
                    .bind(&pagos.montos)
                    .bind(&pagos.monedas)
                    .bind(&pagos.estados)
                    .bind(&pagos.fechas)
                    .bind(&pagos.versiones)
                    .execute(&mut *tx)
                    .await
                    .map_err(transient)?;
            }
        }
        if !campanas.ids.is_empty() {
            for sql in [INSERTAR_CAMPANAS, ACTUALIZAR_CAMPANAS] {
                sqlx::query(sql)
                    .bind(&campanas.ids)
                    .bind(&campanas.afiliados)
                    .bind(&campanas.estados)
                    .bind(&campanas.presupuestos)
                    .bind(&campanas.monedas)
                    .bind(&campanas.gastos)
                    .bind(&campanas.conversiones)
                    .bind(&campanas.versiones)
                    .execute(&mut *tx)
                    .await
                    .map_err(transient)?;
            }
        }
        Ok(vec![(); envelopes.len()])
    }

    async fn apply(&self, tx: &mut PgConnection, envelope: &Envelope) -> Result<(), HandlerError> {
        let transient = |e: sqlx::Error| HandlerError::Transient(e.into());
        let permanent =
            |e: serde_json::Error| HandlerError::Permanent(format!("{}: {e}", envelope.event_type));
        if !inbox::first_delivery(&mut *tx, &self.consumer, envelope)
            .await
            .map_err(transient)?
        {
            return Ok(());
        }
        match envelope.aggregate_type.as_str() {
            "Pago" => {
                let pago: Pago =
                    serde_json::from_value(envelope.data.clone()).map_err(permanent)?;
                sqlx::query(
                    "INSERT INTO pagos (id_pago, id_afiliado, monto, moneda, estado, fecha, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (id_pago) DO UPDATE SET estado = EXCLUDED.estado, \
                        version = EXCLUDED.version WHERE pagos.version < EXCLUDED.version",
                )
                .bind(&envelope.aggregate_id)
                .bind(&pago.id_afiliado)
                .bind(decimal(pago.monto, "monto")?)
                .bind(&pago.moneda)
                .bind(&pago.estado)
                .bind(envelope.occurred_at)
                .bind(envelope.aggregate_version)
                .execute(&mut *tx)
                .await
                .map_err(transient)?;
            }
            "Campana" => {
                let c: Campana =
                    serde_json::from_value(envelope.data.clone()).map_err(permanent)?;
                sqlx::query(
                    "INSERT INTO campanas (id_campana, id_afiliado, estado, presupuesto, moneda, gasto, \
                        conversiones, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (id_campana) DO UPDATE SET estado = EXCLUDED.estado, \
                        presupuesto = EXCLUDED.presupuesto, moneda = EXCLUDED.moneda, \
                        gasto = EXCLUDED.gasto, conversiones = EXCLUDED.conversiones, \
                        version = EXCLUDED.version WHERE campanas.version < EXCLUDED.version",
                )
                .bind(&envelope.aggregate_id)
                .bind(&c.id_afiliado)
                .bind(&c.estado)
                .bind(decimal(c.presupuesto, "presupuesto")?)
                .bind(&c.moneda)
                .bind(decimal(c.gasto_actual, "gasto_actual")?)
                .bind(c.conversiones)
                .bind(envelope.aggregate_version)
                .execute(&mut *tx)
                .await
                .map_err(transient)?;
            }
            other => tracing::debug!(aggregate_type = other, "event ignored by the data service"),
        }
        Ok(())
    }
}
