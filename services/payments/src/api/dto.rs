use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{EstadoPago, Moneda, OrigenComision, Pago};

/// Body of `POST /pagos/`. Fields keep their raw JSON types so that validation can name the
/// exact problem (a missing field and a wrong type are told apart by the extractor).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CrearPagoBody {
    /// The affiliate being paid (1..255 characters). With an API key it may be left out: the
    /// key's affiliate is paid, and naming another is refused (403).
    #[schema(example = "afiliado-123")]
    #[serde(default)]
    pub id_afiliado: Option<String>,
    /// Amount > 0 with at most 2 decimals, as a JSON number.
    #[schema(value_type = f64, example = 150.25)]
    pub monto: serde_json::Number,
    /// `USD`, `EUR` or `COP` (exact, upper case).
    #[schema(example = "USD")]
    pub moneda: String,
    /// The partner's unique reference: the payment's idempotency key (1..255 characters).
    #[schema(example = "REF-2026-0001")]
    pub referencia_pago: String,
}

/// Body of `PATCH /pagos/{id_pago}/revertir`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RevertirBody {
    /// Why the payment is reverted (1..500 characters).
    pub motivo: String,
}

/// Answer of `POST /pagos/`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PagoCreado {
    pub id_pago: Uuid,
    pub id_afiliado: String,
    #[serde(with = "rust_decimal::serde::float")]
    #[schema(value_type = f64)]
    pub monto: Decimal,
    pub moneda: Moneda,
    pub estado: EstadoPago,
    pub referencia_pago: String,
    pub fecha_creacion: DateTime<Utc>,
    pub mensaje: String,
}

impl PagoCreado {
    pub fn from_pago(pago: &Pago, mensaje: &str) -> Self {
        Self {
            id_pago: pago.id,
            id_afiliado: pago.id_afiliado.clone(),
            monto: pago.dinero.monto(),
            moneda: pago.dinero.moneda(),
            estado: pago.estado,
            referencia_pago: pago.referencia_pago.clone(),
            fecha_creacion: pago.fecha_creacion,
            mensaje: mensaje.to_owned(),
        }
    }
}

/// Answer of `GET /pagos`: the latest payments, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListaPagos {
    pub pagos: Vec<PagoDetalle>,
    /// Pass it as `cursor` for the next (older) page; `null` on the last page.
    pub siguiente: Option<String>,
}

/// Answer of `GET /pagos/estadisticas/por-minuto`: every minute of the window, oldest first,
/// with zero-filled counts, so a chart needs no gap handling.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PagosPorMinuto {
    pub minutos: Vec<MinutoDePagos>,
}

/// The payments created in one minute, by their current state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MinutoDePagos {
    /// The minute's start (UTC).
    pub minuto: chrono::DateTime<chrono::Utc>,
    /// PENDIENTE, PROCESANDO, EXITOSO, FALLIDO and REVERSADO, each present (0 when none).
    pub por_estado: std::collections::BTreeMap<String, i64>,
    pub total: i64,
}

/// Answer of `GET /pagos/{id_pago}` and `PATCH …/revertir`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PagoDetalle {
    pub id: Uuid,
    pub id_pago: Uuid,
    pub id_afiliado: String,
    #[serde(with = "rust_decimal::serde::float")]
    #[schema(value_type = f64)]
    pub monto: Decimal,
    pub moneda: Moneda,
    pub estado: EstadoPago,
    pub referencia_pago: String,
    pub fecha_creacion: DateTime<Utc>,
    pub fecha_actualizacion: DateTime<Utc>,
    pub fecha_procesamiento: Option<DateTime<Utc>>,
    pub mensaje_error: Option<String>,
    pub referencia_transaccion: Option<String>,
    pub motivo_reversion: Option<String>,
    /// Present on a commission payment: the tracked conversion it pays for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comision: Option<OrigenComision>,
}

impl From<&Pago> for PagoDetalle {
    fn from(pago: &Pago) -> Self {
        Self {
            id: pago.id,
            id_pago: pago.id,
            id_afiliado: pago.id_afiliado.clone(),
            monto: pago.dinero.monto(),
            moneda: pago.dinero.moneda(),
            estado: pago.estado,
            referencia_pago: pago.referencia_pago.clone(),
            fecha_creacion: pago.fecha_creacion,
            fecha_actualizacion: pago.fecha_actualizacion,
            fecha_procesamiento: pago.fecha_procesamiento,
            mensaje_error: pago.mensaje_error.clone(),
            referencia_transaccion: pago.referencia_transaccion.clone(),
            motivo_reversion: pago.motivo_reversion.clone(),
            comision: pago.comision.clone(),
        }
    }
}
