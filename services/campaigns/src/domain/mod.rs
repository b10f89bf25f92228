//! The campaigns domain: the `Campana` aggregate, its budget, metrics and lifecycle. Pure: no
//! I/O and no clock (time is passed in), so every rule is tested without a database.

mod campana;
mod metricas;
mod presupuesto;
mod tracking;

pub use campana::{
    Accion, Cambio, Campana, DatosCampana, EstadoCampana, EventoCampana, NuevaCampana,
    ReglaViolada, TipoCampana, TipoEventoCampana,
};
pub use metricas::{MetricasCalculadas, MetricasCampana};
pub use presupuesto::{Moneda, Presupuesto, PresupuestoError};
pub use tracking::Contador;
