use rust_decimal::Decimal;
pub use shared_kernel::Moneda;
use shared_kernel::a_lo_sumo_dos_decimales;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresupuestoError {
    #[error("no puede ser negativo")]
    Negativo,
    #[error("no puede superar {max}")]
    DemasiadoGrande { max: Decimal },
    #[error("admite como máximo 2 decimales")]
    DemasiadosDecimales,
}

/// A campaign's budget: `0 ≤ monto ≤ 1 000 000`, exact cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presupuesto {
    monto: Decimal,
    moneda: Moneda,
}

impl Presupuesto {
    pub fn maximo() -> Decimal {
        Decimal::from(1_000_000)
    }

    pub fn new(monto: Decimal, moneda: Moneda) -> Result<Self, PresupuestoError> {
        if monto < Decimal::ZERO {
            return Err(PresupuestoError::Negativo);
        }
        if monto > Self::maximo() {
            return Err(PresupuestoError::DemasiadoGrande {
                max: Self::maximo(),
            });
        }
        if !a_lo_sumo_dos_decimales(monto) {
            return Err(PresupuestoError::DemasiadosDecimales);
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
    fn budget_bounds() {
        assert!(Presupuesto::new(d("0"), Moneda::USD).is_ok());
        assert!(Presupuesto::new(d("1000000"), Moneda::USD).is_ok());
        assert!(Presupuesto::new(d("999.99"), Moneda::EUR).is_ok());
        assert_eq!(
            Presupuesto::new(d("-0.01"), Moneda::USD),
            Err(PresupuestoError::Negativo)
        );
        assert!(matches!(
            Presupuesto::new(d("1000000.01"), Moneda::USD),
            Err(PresupuestoError::DemasiadoGrande { .. })
        ));
        assert_eq!(
            Presupuesto::new(d("1.005"), Moneda::USD),
            Err(PresupuestoError::DemasiadosDecimales)
        );
    }

    #[test]
    fn currency_is_exact() {
        assert_eq!("EUR".parse::<Moneda>(), Ok(Moneda::EUR));
        assert!("eur".parse::<Moneda>().is_err());
    }
}
