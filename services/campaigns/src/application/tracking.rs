//! Consumer of `tracking.evt.click|impression|conversion`: one more click, impression or
//! conversion on the campaign the event names (if it is the event's affiliate's), exactly once (the inbox row and the increment
//! commit together). Increments commute, so the order of delivery does not matter.

use std::sync::LazyLock;

use platform::{
    inbox::{self, TransactionalHandler},
    messaging::{Envelope, HandlerError},
};
use prometheus::IntCounterVec;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{domain::Contador, infrastructure::repositorio};

pub const TRACKING_CONSUMER: &str = "campaigns-tracking";
pub const TRACKING_TOPICS: [&str; 3] = [
    "tracking.evt.click",
    "tracking.evt.impression",
    "tracking.evt.conversion",
];

static CONTADOS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    platform::telemetry::counter_vec(
        "campaigns_tracking_events_total",
        "Tracking events seen by the campaigns consumer, by type and outcome",
        &["tipo", "outcome"],
    )
});

#[derive(Debug, Deserialize)]
struct Tracking {
    tipo_evento: String,
    id_afiliado: String,
    #[serde(default)]
    id_campana: Option<Uuid>,
}

/// What one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conteo {
    Contado(Contador),
    Repetido,
    /// Names no campaign, a campaign that does not exist or is another affiliate's, or a type
    /// nothing counts.
    SinCampana,
}

pub struct ContadorDeTracking {
    pool: PgPool,
}

impl ContadorDeTracking {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies one event in a transaction of its own.
    pub async fn aplicar(&self, envelope: &Envelope) -> Result<Conteo, HandlerError> {
        self.apply_alone(envelope)
            .await
            .map(|aplicado| aplicado.conteo)
    }
}

/// What one delivery did, with the event type and outcome its metric counts once committed.
pub struct Aplicado {
    conteo: Conteo,
    tipo: String,
    outcome: &'static str,
}

impl Aplicado {
    fn new(conteo: Conteo, tipo: String, outcome: &'static str) -> Self {
        Self {
            conteo,
            tipo,
            outcome,
        }
    }
}

/// Busy, the counter applies the events queued in a lane in one transaction.
#[async_trait::async_trait]
impl TransactionalHandler for ContadorDeTracking {
    type Applied = Aplicado;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Locks the batch's campaigns in one statement, in id order, before counting: the
    /// payments consumer locks campaigns in the same order, so their batches cannot deadlock.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        envelopes: &[Envelope],
    ) -> Result<Vec<Aplicado>, HandlerError> {
        let campanas: Vec<Uuid> = envelopes
            .iter()
            .filter_map(|e| e.data.get("id_campana")?.as_str()?.parse().ok())
            .collect();
        repositorio::bloquear_campanas(&mut *tx, &campanas)
            .await
            .map_err(|e| HandlerError::Transient(e.into()))?;
        inbox::apply_each(self, tx, envelopes).await
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<Aplicado, HandlerError> {
        let tracking: Tracking = serde_json::from_value(envelope.data.clone())
            .map_err(|e| HandlerError::Permanent(format!("tracking event data: {e}")))?;
        let tipo = tracking.tipo_evento;
        let (Some(contador), Some(id_campana)) = (Contador::de_tipo(&tipo), tracking.id_campana)
        else {
            return Ok(Aplicado::new(Conteo::SinCampana, tipo, "no_campaign"));
        };
        let transient = |e: sqlx::Error| HandlerError::Transient(e.into());
        if !inbox::first_delivery(&mut *tx, TRACKING_CONSUMER, envelope)
            .await
            .map_err(transient)?
        {
            return Ok(Aplicado::new(Conteo::Repetido, tipo, "redelivered"));
        }
        let contado =
            repositorio::contar_tracking(&mut *tx, id_campana, &tracking.id_afiliado, contador)
                .await
                .map_err(transient)?;
        if contado {
            Ok(Aplicado::new(Conteo::Contado(contador), tipo, "counted"))
        } else {
            tracing::warn!(%id_campana, tipo, "tracking event names an unknown campaign; not counted");
            Ok(Aplicado::new(Conteo::SinCampana, tipo, "unknown_campaign"))
        }
    }

    fn committed(&self, _envelope: &Envelope, aplicado: &Aplicado) {
        CONTADOS
            .with_label_values(&[aplicado.tipo.as_str(), aplicado.outcome])
            .inc();
    }
}
