use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{EstadoPago, Moneda, Pago};

/// Body of `POST /pagos/`. Fields keep their raw JSON types so that validation can name the
/// exact problem (a missing field and a wrong type are told apart by the extractor).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CrearPagoBody {
    /// The affiliate being paid (1..255 characters).
    #[schema(example = "afiliado-123")]
    pub id_afiliado: String,
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

/// Reads a JSON number exactly. Integers are exact; a fractional number is read back from its
/// shortest round-trip representation, which is the literal the client wrote for any amount
/// with up to 15 significant digits (so `0.1` stays `0.1` and `10.555` is seen as 3 decimals).
pub fn monto_exacto(numero: &serde_json::Number) -> Result<Decimal, String> {
    if let Some(entero) = numero.as_i64() {
        return Ok(Decimal::from(entero));
    }
    if let Some(entero) = numero.as_u64() {
        return Ok(Decimal::from(entero));
    }
    let flotante = numero
        .as_f64()
        .ok_or_else(|| "no es un número".to_owned())?;
    let texto = flotante.to_string();
    texto
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&texto))
        .map_err(|_| format!("el número {numero} está fuera de rango"))
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numero(json: &str) -> serde_json::Number {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn json_numbers_become_exact_decimals() {
        assert_eq!(monto_exacto(&numero("150")).unwrap(), Decimal::from(150));
        assert_eq!(
            monto_exacto(&numero("0.1")).unwrap(),
            "0.1".parse::<Decimal>().unwrap()
        );
        assert_eq!(monto_exacto(&numero("10.555")).unwrap().scale(), 3);
        assert_eq!(
            monto_exacto(&numero("99999999999.99")).unwrap(),
            "99999999999.99".parse::<Decimal>().unwrap()
        );
        assert_eq!(monto_exacto(&numero("-5")).unwrap(), Decimal::from(-5));
        assert_eq!(monto_exacto(&numero("1e3")).unwrap(), Decimal::from(1000));
        assert!(monto_exacto(&numero("1e300")).is_err());
    }
}
