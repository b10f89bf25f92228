use rust_decimal::{Decimal, prelude::ToPrimitive};
use serde::Serialize;

/// Counters of a campaign. Ratios are derived, never stored, and never divide by zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricasCampana {
    pub impresiones: i64,
    pub clicks: i64,
    pub conversiones: i64,
    pub gasto_actual: Decimal,
    /// Value of the payments attributed to the campaign (for ROI).
    pub ingresos: Decimal,
}

/// `roi`, `cpc` and `cpa` of `GET /campaigns/{id}/metrics` (0 when undefined).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MetricasCalculadas {
    pub roi: f64,
    pub cpc: f64,
    pub cpa: f64,
}

/// `numerador / denominador * factor`, rounded to 2 decimals; 0 when the denominator is 0.
fn ratio(numerador: Decimal, denominador: Decimal, factor: Decimal) -> f64 {
    if denominador.is_zero() {
        return 0.0;
    }
    (numerador / denominador * factor)
        .round_dp(2)
        .to_f64()
        .unwrap_or(0.0)
}

impl MetricasCampana {
    /// `clicks / impresiones * 100`.
    pub fn ctr(&self) -> f64 {
        ratio(
            Decimal::from(self.clicks),
            Decimal::from(self.impresiones),
            Decimal::ONE_HUNDRED,
        )
    }

    /// `conversiones / clicks * 100`.
    pub fn tasa_conversion(&self) -> f64 {
        ratio(
            Decimal::from(self.conversiones),
            Decimal::from(self.clicks),
            Decimal::ONE_HUNDRED,
        )
    }

    pub fn calculadas(&self) -> MetricasCalculadas {
        MetricasCalculadas {
            roi: ratio(
                self.ingresos - self.gasto_actual,
                self.gasto_actual,
                Decimal::ONE_HUNDRED,
            ),
            cpc: ratio(self.gasto_actual, Decimal::from(self.clicks), Decimal::ONE),
            cpa: ratio(
                self.gasto_actual,
                Decimal::from(self.conversiones),
                Decimal::ONE,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_denominators_give_zero_not_an_error() {
        let vacias = MetricasCampana::default();
        assert_eq!(vacias.ctr(), 0.0);
        assert_eq!(vacias.tasa_conversion(), 0.0);
        assert_eq!(
            vacias.calculadas(),
            MetricasCalculadas {
                roi: 0.0,
                cpc: 0.0,
                cpa: 0.0
            }
        );
    }

    #[test]
    fn ratios_are_percentages_rounded_to_cents() {
        let m = MetricasCampana {
            impresiones: 3,
            clicks: 1,
            conversiones: 1,
            gasto_actual: Decimal::from(50),
            ingresos: Decimal::from(500),
        };
        assert_eq!(m.ctr(), 33.33);
        assert_eq!(m.tasa_conversion(), 100.0);
        assert_eq!(
            m.calculadas(),
            MetricasCalculadas {
                roi: 900.0,
                cpc: 50.0,
                cpa: 50.0
            }
        );
    }
}
