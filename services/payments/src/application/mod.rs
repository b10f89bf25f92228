//! Use cases: create, revert and process a payment. Each one loads the aggregate, asks the
//! domain to change it, and commits the change, its trace line and its event together.

mod comisiones;
mod crear;
mod procesar;
mod revertir;

pub use comisiones::{COMMISSIONS_CONSUMER, CONVERSIONS_TOPIC, Comisiones, Efecto};
pub use crear::{ColaCreacion, Creacion, CreadorDePagos, SolicitudCreacion, crear_pago_en};
pub use procesar::{CONSUMER_NAME, ProcesadorDePagos};
pub use revertir::revertir_pago;

use crate::domain::{ReglaViolada, SolicitudInvalida};

#[derive(Debug, thiserror::Error)]
pub enum ErrorPagos {
    #[error("Pago no encontrado")]
    NoEncontrado,
    #[error(
        "La referencia_pago '{0}' ya fue usada para un pago con otros datos; use una referencia nueva"
    )]
    ReferenciaEnUso(String),
    #[error(transparent)]
    Regla(#[from] ReglaViolada),
    #[error(transparent)]
    Solicitud(#[from] SolicitudInvalida),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Cola(#[from] platform::group_commit::GroupCommitError),
}

/// Now, at the precision PostgreSQL stores (microseconds), so what a command returns equals
/// what a later read returns.
pub(crate) fn ahora() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
