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

/// Loads and locks the campaign, checks `If-Match`, applies `cambio`, commits change + event.
/// The row lock serialises concurrent commands on one campaign, so none is lost.
async fn modificar(
    pool: &PgPool,
    id: Uuid,
    if_match: Option<i64>,
    request_id: &str,
    cambio: impl FnOnce(
        &mut Campana,
    ) -> Result<crate::domain::EventoCampana, crate::domain::ReglaViolada>,
) -> Result<Campana, ErrorCampanas> {
    let mut tx = pool.begin().await?;
    let mut campana = repositorio::bloquear(&mut tx, id)
        .await?
        .ok_or(ErrorCampanas::NoEncontrada)?;
    comprobar_version(campana.version, if_match)?;
    let evento = cambio(&mut campana)?;
    repositorio::actualizar(&mut tx, &campana).await?;
    repositorio::registrar_evento(&mut tx, &evento, request_id).await?;
    tx.commit().await?;
    Ok(campana)
}

pub async fn ejecutar_accion(
    pool: &PgPool,
    id: Uuid,
    accion: Accion,
    if_match: Option<i64>,
    request_id: &str,
) -> Result<Campana, ErrorCampanas> {
    modificar(pool, id, if_match, request_id, |c| {
        c.ejecutar(accion, ahora())
    })
    .await
}

pub async fn cambiar_presupuesto(
    pool: &PgPool,
    id: Uuid,
    presupuesto: Presupuesto,
    if_match: Option<i64>,
    request_id: &str,
) -> Result<Campana, ErrorCampanas> {
    modificar(pool, id, if_match, request_id, |c| {
        c.cambiar_presupuesto(presupuesto, ahora())
    })
    .await
}
