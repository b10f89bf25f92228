//! Consumer of `tracking.evt.conversion`: a conversion with a value, sent by a source that
//! proves who sent it, creates one commission payment for its affiliate, which then runs the
//! normal lifecycle (worker, gateway, events). A public tag or SDK (`WEB_TAG`, `MOBILE_SDK`)
//! needs no credential, so anyone could claim a conversion for any affiliate there: such
//! conversions are counted for the campaigns and the reports, and pay nothing.
//! Exactly once: the inbox row and the payment commit together, and the payment's reference
//! is derived from the conversion's dedup key, so even a conversion seen under another event id
//! could not pay twice.

use std::{str::FromStr, sync::LazyLock};

use platform::{
    inbox::{self, TransactionalHandler},
    messaging::{Envelope, HandlerError},
};
use prometheus::IntCounterVec;
use rust_decimal::Decimal;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Creacion, ErrorPagos, crear::crear_pago_en};
use crate::domain::{ConversionValorada, Moneda, comision};

pub const COMMISSIONS_CONSUMER: &str = "payments-commissions";
pub const CONVERSIONS_TOPIC: &str = "tracking.evt.conversion";

static COMISIONES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    platform::telemetry::counter_vec(
        "payments_commissions_total",
        "Tracked conversions seen by the commission consumer, by outcome",
        &["outcome"],
    )
});

/// The fields of the collector's `ConversionRegistrada` a commission needs.
#[derive(Debug, Deserialize)]
struct Conversion {
    id_evento: Uuid,
    id_afiliado: String,
    #[serde(default)]
    id_campana: Option<Uuid>,
    clave_dedup: String,
    #[serde(default)]
    valor_conversion: Option<f64>,
    #[serde(default)]
    moneda: Option<String>,
    /// Where the collector received it from (`WEB_TAG`, `MOBILE_SDK`, `API_DIRECT`, `WEBHOOK`).
    #[serde(default)]
    fuente_evento: Option<String>,
}

/// The sources whose events the collector accepts only with the affiliate's credential (its
/// API key, or its webhook signature): the only ones that may cost the platform money.
const FUENTES_AUTENTICADAS: [&str; 2] = ["API_DIRECT", "WEBHOOK"];

pub struct Comisiones {
    pool: PgPool,
    tasa: Decimal,
}

/// What one delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Efecto {
    /// A commission payment, new and `PENDIENTE`.
    Creada(Uuid),
    /// Seen before: nothing changed.
    Repetida,
    /// No value, or a share that rounds to nothing: no payment.
    SinComision,
    /// From a public source, which proves nothing of who sent it: no payment.
    SinCredencial,
}

impl Comisiones {
    pub fn new(pool: PgPool, tasa: Decimal) -> Self {
        Self { pool, tasa }
    }

    /// Applies one conversion in a transaction of its own.
    pub async fn aplicar(&self, envelope: &Envelope) -> Result<Efecto, HandlerError> {
        self.apply_alone(envelope).await.map(|(efecto, _)| efecto)
    }
}

/// Busy, the consumer applies the conversions queued in a lane in one transaction: their inbox
/// rows and commission payments commit together (a commission is a new payment, so batches in
/// two lanes never wait on each other's rows).
#[async_trait::async_trait]
impl TransactionalHandler for Comisiones {
    /// The effect, and the outcome its metric counts once committed.
    type Applied = (Efecto, &'static str);

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(Efecto, &'static str), HandlerError> {
        let conversion: Conversion = serde_json::from_value(envelope.data.clone())
            .map_err(|e| HandlerError::Permanent(format!("ConversionRegistrada data: {e}")))?;
        let (Some(valor), Some(moneda)) =
            (conversion.valor_conversion, conversion.moneda.as_deref())
        else {
            return Ok((Efecto::SinComision, "no_value"));
        };
        if !conversion
            .fuente_evento
            .as_deref()
            .is_some_and(|fuente| FUENTES_AUTENTICADAS.contains(&fuente))
        {
            tracing::debug!(conversion = %conversion.id_evento, fuente = ?conversion.fuente_evento,
                "valued conversion from a public source: no commission");
            return Ok((Efecto::SinCredencial, "unauthenticated_source"));
        }
        let valorada = ConversionValorada {
            id_evento: conversion.id_evento,
            id_afiliado: conversion.id_afiliado,
            id_campana: conversion.id_campana,
            clave_dedup: conversion.clave_dedup,
            valor: Decimal::from_str(&valor.to_string())
                .map_err(|e| HandlerError::Permanent(format!("valor_conversion: {e}")))?,
            moneda: Moneda::from_str(moneda)
                .map_err(|e| HandlerError::Permanent(format!("moneda: {e}")))?,
        };
        let Some(solicitud) = comision(&valorada, self.tasa) else {
            return Ok((Efecto::SinComision, "below_a_cent"));
        };
        let transient = |e: sqlx::Error| HandlerError::Transient(e.into());
        if !inbox::first_delivery(&mut *tx, COMMISSIONS_CONSUMER, envelope)
            .await
            .map_err(transient)?
        {
            return Ok((Efecto::Repetida, "redelivered"));
        }
        match crear_pago_en(&mut *tx, solicitud, &envelope.correlation_id).await {
            Ok(Creacion::Creado(pago)) => {
                tracing::debug!(id_pago = %pago.id, conversion = %valorada.id_evento, "commission payment accepted");
                Ok((Efecto::Creada(pago.id), "created"))
            }
            Ok(Creacion::Repetido(_)) => Ok((Efecto::Repetida, "redelivered")),
            Err(ErrorPagos::Db(e)) => Err(transient(e)),
            Err(other) => Err(HandlerError::Permanent(other.to_string())),
        }
    }

    fn committed(&self, _envelope: &Envelope, (efecto, outcome): &(Efecto, &'static str)) {
        COMISIONES.with_label_values(&[outcome]).inc();
        if matches!(efecto, Efecto::Creada(_)) {
            super::contar_transiciones(crate::domain::EstadoPago::Pendiente, 1);
        }
    }
}
