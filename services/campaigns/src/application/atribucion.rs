//! Consumer of `payments.evt.completed`: each successful payment of an affiliate adds one
//! conversion and 10 % of its amount as spend to that affiliate's ACTIVE campaigns, exactly
//! once. A commission payment (for a conversion the collector tracked) adds spend but no
//! conversion (the tracked conversion counted already), to the campaign it names if any. The inbox row and the campaign changes commit together, so a redelivered event finds
//! its inbox row and changes nothing. Payments are independent of each other, so their order
//! does not matter: each one's effect is an increment (capped at the budget).

use std::str::FromStr;

use platform::{
    inbox::{self, TransactionalHandler},
    messaging::{Envelope, HandlerError},
};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};

use super::ahora;
use crate::{domain::Moneda, infrastructure::repositorio};

pub const CONSUMER_NAME: &str = "campaigns-payments";

/// The share of a payment that counts as campaign spend.
fn comision(monto: Decimal) -> Decimal {
    (monto * Decimal::new(10, 2)).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

#[derive(Debug, Deserialize)]
struct PagoExitoso {
    id_afiliado: String,
    monto: f64,
    moneda: String,
    /// Present on a commission payment for a tracked conversion.
    #[serde(default)]
    comision: Option<OrigenComision>,
}

#[derive(Debug, Deserialize)]
struct OrigenComision {
    #[serde(default)]
    id_campana: Option<uuid::Uuid>,
}

pub struct AtribucionDePagos {
    pool: PgPool,
}

impl AtribucionDePagos {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies one event in a transaction of its own; returns how many campaigns it changed
    /// (0 for a redelivery).
    pub async fn aplicar(&self, envelope: &Envelope) -> Result<usize, HandlerError> {
        self.apply_alone(envelope).await
    }
}

#[async_trait::async_trait]
impl TransactionalHandler for AtribucionDePagos {
    /// Campaigns changed.
    type Applied = usize;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Payment events are keyed by payment, so two lanes' (or replicas') batches may touch the
    /// same campaigns: [`Self::apply_batch`] locks them all up front, in id order.
    fn max_batch(&self) -> usize {
        64
    }

    /// Locks every active campaign of the batch's affiliates in one statement, in campaign id
    /// order, before changing any: two batches then take their common locks in the same order
    /// and cannot deadlock (one waits for the other). Then each event in turn.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        envelopes: &[Envelope],
    ) -> Result<Vec<usize>, HandlerError> {
        let afiliados: Vec<&str> = envelopes
            .iter()
            .filter(|e| e.event_type == "PagoExitoso")
            .filter_map(|e| e.data.get("id_afiliado")?.as_str())
            .collect();
        repositorio::bloquear_activas_de_afiliados(&mut *tx, &afiliados)
            .await
            .map_err(|e| HandlerError::Transient(e.into()))?;
        inbox::apply_each(self, tx, envelopes).await
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<usize, HandlerError> {
        if envelope.event_type != "PagoExitoso" {
            return Ok(0);
        }
        let pago: PagoExitoso = serde_json::from_value(envelope.data.clone())
            .map_err(|e| HandlerError::Permanent(format!("PagoExitoso data: {e}")))?;
        let monto = Decimal::from_str(&pago.monto.to_string())
            .map_err(|e| HandlerError::Permanent(format!("monto: {e}")))?;
        let moneda = Moneda::from_str(&pago.moneda)
            .map_err(|e| HandlerError::Permanent(format!("moneda: {e}")))?;
        let transient = |e: sqlx::Error| HandlerError::Transient(e.into());

        if !inbox::first_delivery(&mut *tx, CONSUMER_NAME, envelope)
            .await
            .map_err(transient)?
        {
            tracing::debug!("PagoExitoso already attributed; redelivery ignored");
            return Ok(0);
        }
        let mut campanas = repositorio::bloquear_activas_de_afiliado(&mut *tx, &pago.id_afiliado)
            .await
            .map_err(transient)?;
        // A commission for a conversion on a named campaign belongs to that campaign alone.
        if let Some(id_campana) = pago.comision.as_ref().and_then(|c| c.id_campana) {
            campanas.retain(|c| c.id == id_campana);
        }
        let mut cambiadas = 0;
        for mut campana in campanas {
            let gasto = comision(monto);
            let evento = if pago.comision.is_some() {
                campana.atribuir_comision(monto, moneda, gasto, ahora())
            } else {
                campana.atribuir_pago(monto, moneda, gasto, ahora())
            };
            if let Some(evento) = evento {
                repositorio::actualizar(&mut *tx, &campana)
                    .await
                    .map_err(transient)?;
                repositorio::registrar_evento(&mut *tx, &evento, &envelope.correlation_id)
                    .await
                    .map_err(transient)?;
                cambiadas += 1;
            }
        }
        Ok(cambiadas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commission_is_ten_percent_to_the_cent() {
        assert_eq!(comision(Decimal::from(100)), Decimal::from(10));
        assert_eq!(
            comision("150.25".parse().unwrap()),
            "15.03".parse::<Decimal>().unwrap()
        );
        assert_eq!(comision("0.01".parse().unwrap()), Decimal::ZERO);
    }
}
