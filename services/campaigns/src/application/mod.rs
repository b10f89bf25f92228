//! Use cases of the campaigns context: create, lifecycle commands, budget changes, and the
//! attribution of successful payments. Each commits the change and its event together.

mod atribucion;
mod comandos;
mod tracking;

pub use atribucion::{AtribucionDePagos, CONSUMER_NAME};
pub use comandos::{Orden, cambiar_presupuesto, crear_campana, ejecutar_accion};
pub use tracking::{ContadorDeTracking, Conteo, TRACKING_CONSUMER, TRACKING_TOPICS};

use crate::domain::ReglaViolada;

#[derive(Debug, thiserror::Error)]
pub enum ErrorCampanas {
    #[error("Campaña no encontrada")]
    NoEncontrada,
    #[error(transparent)]
    Regla(#[from] ReglaViolada),
    #[error(
        "La campaña cambió: su versión actual es {actual} y la solicitud esperaba {esperada}; vuelva a leerla"
    )]
    VersionNoCoincide { actual: i64, esperada: i64 },
    #[error("solicitud no válida")]
    Solicitud(Vec<(&'static str, String)>),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Checks an `If-Match` precondition against the campaign's current version.
pub(crate) fn comprobar_version(actual: i64, esperada: Option<i64>) -> Result<(), ErrorCampanas> {
    match esperada {
        Some(esperada) if esperada != actual => {
            Err(ErrorCampanas::VersionNoCoincide { actual, esperada })
        }
        _ => Ok(()),
    }
}

/// Now, at the precision PostgreSQL stores (microseconds).
pub(crate) fn ahora() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
