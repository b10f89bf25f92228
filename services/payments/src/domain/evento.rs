use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use super::{EstadoPago, Moneda, OrigenComision};

/// The four facts a payment announces (API.md §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TipoEventoPago {
    PagoPendiente,
    PagoExitoso,
    PagoFallido,
    PagoRevertido,
}

impl TipoEventoPago {
    pub fn nombre(self) -> &'static str {
        match self {
            Self::PagoPendiente => "PagoPendiente",
            Self::PagoExitoso => "PagoExitoso",
            Self::PagoFallido => "PagoFallido",
            Self::PagoRevertido => "PagoRevertido",
        }
    }

    /// The logical topic (without namespace or prefix).
    pub fn topic(self) -> &'static str {
        match self {
            Self::PagoPendiente => "payments.evt.pending",
            Self::PagoExitoso => "payments.evt.completed",
            Self::PagoFallido => "payments.evt.failed",
            Self::PagoRevertido => "payments.evt.reverted",
        }
    }
}

/// The event's `data`: the payment as it is right after the change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatosEventoPago {
    pub id_pago: Uuid,
    pub id_afiliado: String,
    #[serde(with = "rust_decimal::serde::float")]
    pub monto: Decimal,
    pub moneda: Moneda,
    pub referencia_pago: String,
    pub estado: EstadoPago,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mensaje_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referencia_transaccion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub motivo: Option<String>,
    /// Present on a commission payment: the conversion it pays for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comision: Option<OrigenComision>,
}

/// A domain event with its position in the payment's history (1, 2, 3...).
#[derive(Debug, Clone, PartialEq)]
pub struct EventoPago {
    pub tipo: TipoEventoPago,
    pub secuencia: i64,
    pub ocurrido_en: DateTime<Utc>,
    pub datos: DatosEventoPago,
}
