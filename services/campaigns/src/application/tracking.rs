//! Consumer of `tracking.evt.click|impression|conversion`: one more click, impression or
//! conversion on the campaign the event names (if it is the event's affiliate's), exactly once (the inbox row and the increment
//! commit together). Increments commute, so the order of delivery does not matter.

use std::sync::LazyLock;

use platform::{
    inbox,
    messaging::{Envelope, EventHandler, HandlerError},
};
use prometheus::IntCounterVec;
use serde::Deserialize;
use sqlx::PgPool;
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

    pub async fn aplicar(&self, envelope: &Envelope) -> Result<Conteo, HandlerError> {
        let tracking: Tracking = serde_json::from_value(envelope.data.clone())
            .map_err(|e| HandlerError::Permanent(format!("tracking event data: {e}")))?;
        let tipo = tracking.tipo_evento.as_str();
        let (Some(contador), Some(id_campana)) = (Contador::de_tipo(tipo), tracking.id_campana)
        else {
            CONTADOS.with_label_values(&[tipo, "no_campaign"]).inc();
            return Ok(Conteo::SinCampana);
        };
        let transient = |e: sqlx::Error| HandlerError::Transient(e.into());
        let mut tx = self.pool.begin().await.map_err(transient)?;
        if !inbox::first_delivery(&mut tx, TRACKING_CONSUMER, envelope)
            .await
            .map_err(transient)?
        {
            CONTADOS.with_label_values(&[tipo, "redelivered"]).inc();
            return Ok(Conteo::Repetido);
        }
        let contado =
            repositorio::contar_tracking(&mut tx, id_campana, &tracking.id_afiliado, contador)
                .await
                .map_err(transient)?;
        tx.commit().await.map_err(transient)?;
        if contado {
            CONTADOS.with_label_values(&[tipo, "counted"]).inc();
            Ok(Conteo::Contado(contador))
        } else {
            tracing::warn!(%id_campana, tipo, "tracking event names an unknown campaign; not counted");
            CONTADOS
                .with_label_values(&[tipo, "unknown_campaign"])
                .inc();
            Ok(Conteo::SinCampana)
        }
    }
}

#[async_trait::async_trait]
impl EventHandler for ContadorDeTracking {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        self.aplicar(&envelope).await.map(|_| ())
    }
}
