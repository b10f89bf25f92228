use std::{fmt, str::FromStr};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Currencies the platform pays, budgets and tracks in. Spelled exactly as on the wire: upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Moneda {
    USD,
    EUR,
    COP,
}

impl Moneda {
    pub const ALL: [Moneda; 3] = [Moneda::USD, Moneda::EUR, Moneda::COP];

    pub fn code(self) -> &'static str {
        match self {
            Moneda::USD => "USD",
            Moneda::EUR => "EUR",
            Moneda::COP => "COP",
        }
    }
}

impl fmt::Display for Moneda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Moneda {
    type Err = MonedaNoSoportada;

    /// Exact match only: `usd` is refused, so a typo never silently becomes another currency.
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Moneda::ALL
            .into_iter()
            .find(|m| m.code() == code)
            .ok_or_else(|| MonedaNoSoportada(code.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("moneda no soportada '{0}'; use USD, EUR o COP")]
pub struct MonedaNoSoportada(pub String);

/// True when `monto` has at most two decimals: `10.50` and `10.500` qualify (trailing zeros
/// carry no value), `10.555` does not. Every amount the platform stores is exact cents.
pub fn a_lo_sumo_dos_decimales(monto: Decimal) -> bool {
    monto.normalize().scale() <= 2
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DineroError {
    #[error("debe ser mayor que 0")]
    NoPositivo,
    #[error("admite como máximo 2 decimales")]
    DemasiadosDecimales,
    #[error("excede el máximo permitido de {max}")]
    DemasiadoGrande { max: Decimal },
}

/// An exact, positive amount in a currency. Never a float: `Decimal` keeps cents exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dinero {
    monto: Decimal,
    moneda: Moneda,
}

impl Dinero {
    /// The largest amount the store keeps exactly (NUMERIC(14,2)).
    pub fn maximo() -> Decimal {
        Decimal::new(99_999_999_999_999, 2)
    }

    pub fn new(monto: Decimal, moneda: Moneda) -> Result<Self, DineroError> {
        if monto <= Decimal::ZERO {
            return Err(DineroError::NoPositivo);
        }
        if !a_lo_sumo_dos_decimales(monto) {
            return Err(DineroError::DemasiadosDecimales);
        }
        if monto > Self::maximo() {
            return Err(DineroError::DemasiadoGrande {
                max: Self::maximo(),
            });
        }
        Ok(Self {
            monto: monto.normalize(),
            moneda,
        })
    }

    pub fn monto(&self) -> Decimal {
        self.monto
    }

    pub fn moneda(&self) -> Moneda {
        self.moneda
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_positive_amounts_with_up_to_two_decimals() {
        for monto in ["0.01", "1", "10.5", "10.50", "10.500", "1500000"] {
            assert!(Dinero::new(d(monto), Moneda::USD).is_ok(), "{monto}");
        }
        assert_eq!(
            Dinero::new(d("10.50"), Moneda::EUR).unwrap().monto(),
            d("10.5")
        );
    }

    #[test]
    fn refuses_zero_negative_three_decimals_and_huge() {
        assert_eq!(
            Dinero::new(d("0"), Moneda::USD),
            Err(DineroError::NoPositivo)
        );
        assert_eq!(
            Dinero::new(d("-5"), Moneda::USD),
            Err(DineroError::NoPositivo)
        );
        assert_eq!(
            Dinero::new(d("10.555"), Moneda::USD),
            Err(DineroError::DemasiadosDecimales)
        );
        assert!(matches!(
            Dinero::new(d("1000000000000"), Moneda::COP),
            Err(DineroError::DemasiadoGrande { .. })
        ));
    }

    #[test]
    fn currency_codes_are_exact_and_upper_case() {
        assert_eq!("USD".parse::<Moneda>(), Ok(Moneda::USD));
        assert_eq!("COP".parse::<Moneda>(), Ok(Moneda::COP));
        for bad in ["usd", "Usd", "GBP", "", " USD"] {
            assert!(bad.parse::<Moneda>().is_err(), "{bad}");
        }
    }
}
