use sqlx::PgPool;
use uuid::Uuid;

use super::ErrorPagos;
use crate::{
    domain::{EstadoPago, Pago},
    infrastructure::repositorio,
};

/// `EXITOSO → REVERSADO`. A repeated reversal returns the same reverted payment and emits no
/// second event.
pub async fn revertir_pago(
    pool: &PgPool,
    id_pago: Uuid,
    motivo: String,
    por: &str,
    request_id: &str,
) -> Result<Pago, ErrorPagos> {
    let mut tx = pool.begin().await?;
    let mut pago = repositorio::bloquear(&mut tx, id_pago)
        .await?
        .ok_or(ErrorPagos::NoEncontrado)?;
    match pago.revertir(motivo.clone(), super::ahora())? {
        Some(evento) => {
            repositorio::actualizar(&mut tx, &pago).await?;
            repositorio::trazar(
                &mut tx,
                pago.id,
                "PAGO_REVERTIDO",
                &format!("Pago revertido por {por}: {motivo}"),
                Some(request_id),
            )
            .await?;
            repositorio::registrar_evento(&mut tx, &evento, request_id).await?;
            tx.commit().await?;
            super::contar_transiciones(EstadoPago::Reversado, 1);
        }
        None => tx.rollback().await?,
    }
    Ok(pago)
}
