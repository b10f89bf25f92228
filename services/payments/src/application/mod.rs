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

use crate::domain::{EstadoPago, ReglaViolada, SolicitudInvalida};

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

/// Payments that entered each state, counted once the change committed: the dashboards'
/// payments per minute by state. Every state starts at 0, so a rate exists before the first
/// payment of each kind.
static TRANSICIONES: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        let counter = platform::telemetry::counter_vec(
            "payments_transitions_total",
            "Payments that entered each state (committed), by state",
            &["estado"],
        );
        for estado in EstadoPago::ALL {
            counter.with_label_values(&[estado.code()]).inc_by(0);
        }
        counter
    });

/// Counts `n` payments that entered `estado` in a committed change.
pub(crate) fn contar_transiciones(estado: EstadoPago, n: usize) {
    TRANSICIONES
        .with_label_values(&[estado.code()])
        .inc_by(n as u64);
}

/// Registers this context's metrics, so that `/metrics` shows them from the start.
pub fn registrar_metricas() {
    std::sync::LazyLock::force(&TRANSICIONES);
}

/// Now, at the precision PostgreSQL stores (microseconds), so what a command returns equals
/// what a later read returns.
pub(crate) fn ahora() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
