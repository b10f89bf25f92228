//! The payments domain: value objects, the `Pago` aggregate and its events. Pure: no I/O, no
//! clock (time is passed in), so every rule is tested without a database.

mod comision;
mod evento;
mod pago;

pub use comision::{
    ConversionValorada, OrigenComision, comision, referencia as referencia_comision,
};
pub use evento::{DatosEventoPago, EventoPago, TipoEventoPago};
pub use pago::{EstadoPago, NuevoPago, Pago, ReglaViolada, ResultadoCobro, SolicitudInvalida};
pub use shared_kernel::{Dinero, DineroError, Moneda};
