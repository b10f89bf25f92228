//! Commissions: a valued conversion tracked by the collector earns its affiliate a payment of
//! a share of the conversion's value. The payment's `referencia_pago` is derived from the
//! conversion's dedup key, so however often the conversion is delivered (redelivery, a
//! partner's duplicate that slipped past nothing) there is one commission per conversion: the
//! reference is unique, as for any payment.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Dinero, Moneda, NuevoPago};

/// Why the platform created a payment by itself, recorded on it and on its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrigenComision {
    /// The collector's event id of the conversion.
    pub id_evento_conversion: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_campana: Option<Uuid>,
    #[serde(with = "rust_decimal::serde::float")]
    #[schema(value_type = f64)]
    pub valor_conversion: Decimal,
    /// The share of the value paid, e.g. 0.1.
    #[serde(with = "rust_decimal::serde::float")]
    #[schema(value_type = f64)]
    pub tasa: Decimal,
}

/// A conversion as the collector publishes it (the fields a commission needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionValorada {
    pub id_evento: Uuid,
    pub id_afiliado: String,
    pub id_campana: Option<Uuid>,
    pub clave_dedup: String,
    pub valor: Decimal,
    pub moneda: Moneda,
}

/// `COM-` and the first 32 hex digits of SHA-256 of the conversion's dedup key: fits the
/// reference column whatever the partner's ids, and is the same for every delivery.
pub fn referencia(clave_dedup: &str) -> String {
    let digest = hex::encode(Sha256::digest(clave_dedup.as_bytes()));
    format!("COM-{}", &digest[..32])
}

/// The commission payment for a conversion, or `None` when the share rounds to nothing
/// (a conversion of 0.04 at 10 % earns no cent).
pub fn comision(conversion: &ConversionValorada, tasa: Decimal) -> Option<NuevoPago> {
    let monto =
        (conversion.valor * tasa).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    let dinero = Dinero::new(monto, conversion.moneda).ok()?;
    Some(NuevoPago {
        id_afiliado: conversion.id_afiliado.clone(),
        dinero,
        referencia_pago: referencia(&conversion.clave_dedup),
        comision: Some(OrigenComision {
            id_evento_conversion: conversion.id_evento,
            id_campana: conversion.id_campana,
            valor_conversion: conversion.valor,
            tasa,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversion(valor: &str) -> ConversionValorada {
        ConversionValorada {
            id_evento: Uuid::nil(),
            id_afiliado: "AFILIADO_001".into(),
            id_campana: None,
            clave_dedup: r#"cliente:["AFILIADO_001","conv-1"]"#.into(),
            valor: valor.parse().unwrap(),
            moneda: Moneda::USD,
        }
    }

    #[test]
    fn a_share_of_the_value_to_the_cent() {
        let pago = comision(&conversion("149.95"), "0.10".parse().unwrap()).unwrap();
        assert_eq!(pago.dinero.monto(), "15".parse::<Decimal>().unwrap());
        assert_eq!(pago.id_afiliado, "AFILIADO_001");
        assert!(pago.comision.is_some());
        assert!(comision(&conversion("0.04"), "0.10".parse().unwrap()).is_none());
    }

    #[test]
    fn the_reference_is_the_same_for_every_delivery_and_differs_per_conversion() {
        let a = referencia(r#"cliente:["AFILIADO_001","conv-1"]"#);
        assert_eq!(a, referencia(r#"cliente:["AFILIADO_001","conv-1"]"#));
        assert_ne!(a, referencia(r#"cliente:["AFILIADO_001","conv-2"]"#));
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("COM-"));
    }
}
