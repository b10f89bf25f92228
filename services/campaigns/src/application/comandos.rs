use sqlx::PgPool;
use uuid::Uuid;

use super::{ErrorCampanas, ahora, comprobar_version};
use crate::{
    domain::{Accion, Campana, NuevaCampana, Presupuesto},
    infrastructure::repositorio,
};

pub async fn crear_campana(
    pool: &PgPool,
    nueva: NuevaCampana,
    request_id: &str,
) -> Result<Campana, ErrorCampanas> {
    let (campana, evento) = Campana::crear(Uuid::new_v4(), nueva, ahora());
    let mut tx = pool.begin().await?;
    repositorio::insertar(&mut tx, &campana).await?;
    repositorio::registrar_evento(&mut tx, &evento, request_id).await?;
    tx.commit().await?;
    tracing::info!(id_campana = %campana.id, "campaign created");
    Ok(campana)
}

/// A command on one campaign: which, the version the caller saw (`If-Match`), the request, and
/// the affiliate the caller is restricted to (a partner's key: another's campaign is not
/// found; `None` for an operator).
#[derive(Debug, Clone, Copy)]
pub struct Orden<'a> {
    pub id: Uuid,
    pub if_match: Option<i64>,
    pub request_id: &'a str,
    pub solo_de: Option<&'a str>,
}

/// Loads and locks the campaign, checks `If-Match`, applies `cambio`, commits change + event.
/// The row lock serialises concurrent commands on one campaign, so none is lost.
async fn modificar(
    pool: &PgPool,
    orden: Orden<'_>,
    cambio: impl FnOnce(
        &mut Campana,
    ) -> Result<crate::domain::EventoCampana, crate::domain::ReglaViolada>,
) -> Result<Campana, ErrorCampanas> {
    let mut tx = pool.begin().await?;
    let mut campana = repositorio::bloquear(&mut tx, orden.id)
        .await?
        .filter(|c| orden.solo_de.is_none_or(|propio| c.id_afiliado == propio))
        .ok_or(ErrorCampanas::NoEncontrada)?;
    comprobar_version(campana.version, orden.if_match)?;
    let evento = cambio(&mut campana)?;
    repositorio::actualizar(&mut tx, &campana).await?;
    repositorio::registrar_evento(&mut tx, &evento, orden.request_id).await?;
    tx.commit().await?;
    Ok(campana)
}

pub async fn ejecutar_accion(
    pool: &PgPool,
    orden: Orden<'_>,
    accion: Accion,
) -> Result<Campana, ErrorCampanas> {
    modificar(pool, orden, |c| c.ejecutar(accion, ahora())).await
}

pub async fn cambiar_presupuesto(
    pool: &PgPool,
    orden: Orden<'_>,
    presupuesto: Presupuesto,
) -> Result<Campana, ErrorCampanas> {
    modificar(pool, orden, |c| c.cambiar_presupuesto(presupuesto, ahora())).await
}
