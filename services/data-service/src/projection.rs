//! The projection: payment and campaign events, each a snapshot of its aggregate, kept as the
//! newest version per aggregate. Duplicates are absorbed by the inbox, reordering by the
//! version guard, so the rows equal an in-order single delivery.

use platform::{
    inbox::{self, TransactionalHandler},
    messaging::{Envelope, HandlerError},
};
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
