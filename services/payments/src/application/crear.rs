use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::ErrorPagos;
use crate::{
    domain::{NuevoPago, Pago},
    infrastructure::repositorio,
};

/// How a create request ended.
#[derive(Debug, Clone)]
pub enum Creacion {
    /// A new payment, accepted as `PENDIENTE`.
    Creado(Pago),
    /// The same request was made before: this is the original payment.
    Repetido(Pago),
}

/// Creates a payment exactly once per `referencia_pago`, whatever the number of concurrent
/// duplicates and replicas: the unique index arbitrates and the losers read the winner.
pub async fn crear_pago(
    pool: &PgPool,
    solicitud: NuevoPago,
    request_id: &str,
) -> Result<Creacion, ErrorPagos> {
    let mut tx = pool.begin().await?;
    let creacion = crear_pago_en(&mut tx, solicitud, request_id).await;
    // A refused duplicate still commits: its trace line records the attempt.
    if matches!(creacion, Ok(_) | Err(ErrorPagos::ReferenciaEnUso(_))) {
        tx.commit().await?;
    }
    creacion
}

/// Like [`crear_pago`], inside the caller's transaction (a consumer commits it together with
/// its inbox row).
pub async fn crear_pago_en(
    tx: &mut PgConnection,
    solicitud: NuevoPago,
    request_id: &str,
) -> Result<Creacion, ErrorPagos> {
    let (pago, evento) = Pago::crear(Uuid::new_v4(), solicitud.clone(), super::ahora());
    if repositorio::insertar_si_nuevo(&mut *tx, &pago).await? {
        let detalle = match &pago.comision {
            None => format!(
                "Pago de {} {} para el afiliado {} aceptado como PENDIENTE",
                pago.dinero.monto(),
                pago.dinero.moneda(),
                pago.id_afiliado
            ),
            Some(origen) => format!(
                "Comisión de {} {} para el afiliado {} por la conversión {} ({} × {}), aceptada como PENDIENTE",
                pago.dinero.monto(),
                pago.dinero.moneda(),
                pago.id_afiliado,
                origen.id_evento_conversion,
                origen.valor_conversion,
                origen.tasa
            ),
        };
        repositorio::trazar(
            &mut *tx,
            pago.id,
            "PAGO_RECIBIDO",
            &detalle,
            Some(request_id),
        )
        .await?;
        repositorio::registrar_evento(&mut *tx, &evento, request_id).await?;
        tracing::info!(id_pago = %pago.id, "payment accepted");
        return Ok(Creacion::Creado(pago));
    }

    let existente = repositorio::buscar_por_referencia(&mut *tx, &solicitud.referencia_pago)
        .await?
        .ok_or_else(|| {
            // The conflicting row is committed (ON CONFLICT waited for it), so it must exist.
            sqlx::Error::RowNotFound
        })?;
    let (evento_traza, resultado) = if existente.es_misma_solicitud(&solicitud) {
        (
            (
                "DUPLICADO_REPETIDO",
                "Solicitud repetida con los mismos datos: se devolvió el pago original",
            ),
            Ok(Creacion::Repetido(existente.clone())),
        )
    } else {
        (
            (
                "DUPLICADO_RECHAZADO",
                "Solicitud con la misma referencia_pago y datos distintos: rechazada (409)",
            ),
            Err(ErrorPagos::ReferenciaEnUso(
                solicitud.referencia_pago.clone(),
            )),
        )
    };
    repositorio::trazar(
        &mut *tx,
        existente.id,
        evento_traza.0,
        evento_traza.1,
        Some(request_id),
    )
    .await?;
    tracing::info!(id_pago = %existente.id, outcome = evento_traza.0, "duplicate payment request");
    resultado
}
