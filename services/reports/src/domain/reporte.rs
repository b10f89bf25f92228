//! The two report shapes of API.md §5.1 and how each is computed from grouped rows. v2 is
//! built on the same totals as v1, so every v1 field has the same value in v2 by construction
//! (and a test checks it end to end).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy, prelude::ToPrimitive};
use serde::{Serialize, Serializer};

use super::Version;

pub const ESTADOS_PAGO: [&str; 5] = ["PENDIENTE", "PROCESANDO", "EXITOSO", "FALLIDO", "REVERSADO"];
pub const MONEDAS: [&str; 3] = ["USD", "EUR", "COP"];

/// An amount or a percentage: exact while computed, a JSON number with at most 2 decimals on
/// the wire (API.md §2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cifra(pub Decimal);

impl Serialize for Cifra {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(redondear(self.0).to_f64().unwrap_or_default())
    }
}

impl utoipa::PartialSchema for Cifra {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Number)
            .description(Some("Número con a lo sumo 2 decimales"))
            .into()
    }
}

impl utoipa::ToSchema for Cifra {}

/// Two decimals, half away from zero (as a report reader rounds, not banker's rounding).
fn redondear(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// `part` of `whole` as a percentage; 0 when `whole` is 0.
fn porcentaje(part: i64, whole: i64) -> Cifra {
    if whole == 0 {
        Cifra::default()
    } else {
        Cifra(redondear(
            Decimal::from(part) * Decimal::ONE_HUNDRED / Decimal::from(whole),
        ))
    }
}

fn promedio(total: Decimal, cantidad: i64) -> Cifra {
    if cantidad == 0 {
        Cifra::default()
    } else {
        Cifra(redondear(total / Decimal::from(cantidad)))
    }
}

/// Payments grouped by state and currency: the one query both versions start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrupoPagos {
    pub estado: String,
    pub moneda: String,
    pub cantidad: i64,
    pub monto: Decimal,
}

/// The fields v1 and v2 share, computed once from the groups.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Totales {
    pub total_pagos: i64,
    /// Sum of `monto` per currency, every state included; each currency always present.
    pub monto_total: BTreeMap<String, Cifra>,
    /// Payments per state; each state always present.
    pub por_estado: BTreeMap<String, i64>,
}

impl Totales {
    pub fn from_grupos(grupos: &[GrupoPagos]) -> Self {
        let mut totales = Totales {
            total_pagos: 0,
            monto_total: MONEDAS
                .iter()
                .map(|m| ((*m).to_owned(), Cifra::default()))
                .collect(),
            por_estado: ESTADOS_PAGO.iter().map(|e| ((*e).to_owned(), 0)).collect(),
        };
        for grupo in grupos {
            totales.total_pagos += grupo.cantidad;
            *totales.por_estado.entry(grupo.estado.clone()).or_default() += grupo.cantidad;
            totales
                .monto_total
                .entry(grupo.moneda.clone())
                .or_default()
                .0 += grupo.monto;
        }
        totales
    }

    /// Payments that reached the gateway and were accepted (a reversed one was charged).
    fn exitosos(&self) -> i64 {
        self.por_estado["EXITOSO"] + self.por_estado["REVERSADO"]
    }

    /// Payments with a final gateway answer.
    fn terminados(&self) -> i64 {
        self.exitosos() + self.por_estado["FALLIDO"]
    }
}

/// v1: the simple report.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReporteV1 {
    /// Always `v1`: what tells the two shapes apart (a v2 report has every v1 field, so
    /// without it a v2 body would match both branches of the `oneOf`).
    #[schema(value_type = String, pattern = "^v1$")]
    pub version: Version,
    #[serde(flatten)]
    pub totales: Totales,
    pub generado_en: DateTime<Utc>,
}

impl ReporteV1 {
    pub fn new(grupos: &[GrupoPagos], generado_en: DateTime<Utc>) -> Self {
        Self {
            version: Version::V1,
            totales: Totales::from_grupos(grupos),
            generado_en,
        }
    }
}

/// One currency in v2. Named apart from the payments' `Moneda` (the currency code): the
/// gateway merges every document into one, where a name means one schema.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = TotalPorMoneda)]
pub struct Moneda {
    pub total: Cifra,
    pub cantidad: i64,
    pub promedio: Cifra,
}

/// One affiliate in v2 (the 100 with most payments).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FilaAfiliado {
    pub id_afiliado: String,
    pub cantidad: i64,
    pub monto_total: Cifra,
    /// Accepted share of the payments with a final answer, in percent.
    pub tasa_exito: Cifra,
}

impl FilaAfiliado {
    /// From `(id_afiliado, cantidad, monto_total, exitosos, terminados)`.
    pub fn new(fila: (String, i64, Decimal, i64, i64)) -> Self {
        let (id_afiliado, cantidad, monto_total, exitosos, terminados) = fila;
        Self {
            id_afiliado,
            cantidad,
            monto_total: Cifra(monto_total),
            tasa_exito: porcentaje(exitosos, terminados),
        }
    }
}

/// One day (UTC) in v2.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FilaDia {
    pub fecha: NaiveDate,
    pub cantidad: i64,
    pub monto_total: Cifra,
}

/// The campaigns in v2 (filtered by `id_afiliado` when the report is).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Campanas {
    pub activas: i64,
    pub total: i64,
    pub presupuesto_total: Cifra,
    pub gasto_total: Cifra,
}

impl From<Decimal> for Cifra {
    fn from(value: Decimal) -> Self {
        Self(value)
    }
}

/// v2: the detailed report.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReporteV2 {
    /// Always `v2`: what tells the two shapes apart (a v2 report has every v1 field, so
    /// without it a v2 body would match both branches of the `oneOf`).
    #[schema(value_type = String, pattern = "^v2$")]
    pub version: Version,
    #[serde(flatten)]
    pub totales: Totales,
    pub generado_en: DateTime<Utc>,
    pub por_moneda: BTreeMap<String, Moneda>,
    pub por_afiliado: Vec<FilaAfiliado>,
    pub por_dia: Vec<FilaDia>,
    /// Accepted share of the payments with a final answer, in percent.
    pub tasa_exito: Cifra,
    /// Mean `monto` of a payment, amounts of every currency added as they are (`por_moneda`
    /// has the mean of each currency).
    pub ticket_promedio: Cifra,
    pub campanas: Campanas,
}

impl ReporteV2 {
    pub fn new(
        grupos: &[GrupoPagos],
        por_afiliado: Vec<FilaAfiliado>,
        por_dia: Vec<FilaDia>,
        campanas: Campanas,
        generado_en: DateTime<Utc>,
    ) -> Self {
        let totales = Totales::from_grupos(grupos);
        let mut por_moneda: BTreeMap<String, (Decimal, i64)> = MONEDAS
            .iter()
            .map(|m| ((*m).to_owned(), (Decimal::ZERO, 0)))
            .collect();
        for grupo in grupos {
            let entry = por_moneda.entry(grupo.moneda.clone()).or_default();
            entry.0 += grupo.monto;
            entry.1 += grupo.cantidad;
        }
        let suma: Decimal = grupos.iter().map(|g| g.monto).sum();
        Self {
            version: Version::V2,
            tasa_exito: porcentaje(totales.exitosos(), totales.terminados()),
            ticket_promedio: promedio(suma, totales.total_pagos),
            por_moneda: por_moneda
                .into_iter()
                .map(|(moneda, (total, cantidad))| {
                    (
                        moneda,
                        Moneda {
                            total: Cifra(total),
                            cantidad,
                            promedio: promedio(total, cantidad),
                        },
                    )
                })
                .collect(),
            totales,
            por_afiliado,
            por_dia,
            campanas,
            generado_en,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(raw: &str) -> Decimal {
        raw.parse().unwrap()
    }

    fn grupo(estado: &str, moneda: &str, cantidad: i64, monto: Decimal) -> GrupoPagos {
        GrupoPagos {
            estado: estado.into(),
            moneda: moneda.into(),
            cantidad,
            monto,
        }
    }

    fn grupos() -> Vec<GrupoPagos> {
        vec![
            grupo("EXITOSO", "USD", 3, d("300.30")),
            grupo("FALLIDO", "USD", 1, d("10")),
            grupo("REVERSADO", "EUR", 1, d("20.50")),
            grupo("PENDIENTE", "COP", 2, d("50000")),
        ]
    }

    #[test]
    fn v1_counts_every_state_and_currency_even_when_absent() {
        let v1 = serde_json::to_value(ReporteV1::new(&grupos(), Utc::now())).unwrap();
        assert_eq!(v1["version"], "v1");
        assert_eq!(v1["total_pagos"], 7);
        assert_eq!(
            v1["monto_total"],
            serde_json::json!({"USD": 310.3, "EUR": 20.5, "COP": 50000.0})
        );
        assert_eq!(
            v1["por_estado"],
            serde_json::json!({"PENDIENTE": 2, "PROCESANDO": 0, "EXITOSO": 3, "FALLIDO": 1, "REVERSADO": 1})
        );
        let empty = serde_json::to_value(ReporteV1::new(&[], Utc::now())).unwrap();
        assert_eq!(empty["total_pagos"], 0);
        assert_eq!(empty["monto_total"]["COP"], 0.0);
    }

    #[test]
    fn v2_has_every_v1_field_with_the_same_value() {
        let at = Utc::now();
        let v1 = serde_json::to_value(ReporteV1::new(&grupos(), at)).unwrap();
        let campanas = Campanas {
            activas: 1,
            total: 2,
            presupuesto_total: Cifra(d("1000")),
            gasto_total: Cifra(d("10")),
        };
        let v2 =
            serde_json::to_value(ReporteV2::new(&grupos(), vec![], vec![], campanas, at)).unwrap();
        for (field, value) in v1.as_object().unwrap() {
            if field != "version" {
                assert_eq!(&v2[field], value, "{field}");
            }
        }
        assert_eq!(v2["version"], "v2");
    }

    #[test]
    fn v2_rates_and_means() {
        let v2 = ReporteV2::new(
            &grupos(),
            vec![FilaAfiliado::new(("a".into(), 3, d("30"), 2, 3))],
            vec![],
            Campanas {
                activas: 0,
                total: 0,
                presupuesto_total: Cifra::default(),
                gasto_total: Cifra::default(),
            },
            Utc::now(),
        );
        // 3 EXITOSO + 1 REVERSADO accepted, 1 FALLIDO: 4 of 5 with a final answer.
        assert_eq!(v2.tasa_exito, Cifra(d("80")));
        assert_eq!(v2.por_moneda["USD"].cantidad, 4);
        assert_eq!(v2.por_moneda["USD"].promedio, Cifra(d("77.58")));
        assert_eq!(v2.por_moneda["EUR"].promedio, Cifra(d("20.50")));
        assert_eq!(v2.ticket_promedio, Cifra(d("7190.11")));
        assert_eq!(v2.por_afiliado[0].tasa_exito, Cifra(d("66.67")));
        let empty = ReporteV2::new(&[], vec![], vec![], v2.campanas.clone(), Utc::now());
        assert_eq!(
            (empty.tasa_exito, empty.ticket_promedio),
            (Cifra::default(), Cifra::default()),
            "no division by zero"
        );
    }
}
