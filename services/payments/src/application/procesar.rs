//! The worker's use case: charge a pending payment exactly once.
//!
//! 1. `PENDIENTE → PROCESANDO` is committed before the gateway is called, so a crash leaves a
//!    visible mark instead of an invisible charge.
//! 2. The gateway is called with the payment id as idempotency key.
//! 3. The result, its trace line and its event are committed together, only if the payment is
//!    still `PROCESANDO`.
//!
//! The message is acknowledged only after step 3. A crash between 2 and 3 leaves the message
//! unacknowledged; its redelivery finds the payment `PROCESANDO`, calls the gateway again with
//! the same key (which returns the first answer without charging again) and completes step 3.
//! A redelivery after step 3 finds the payment past `PROCESANDO` and does nothing.

use std::sync::Arc;

use futures::{StreamExt, stream::FuturesUnordered};
use platform::messaging::{Envelope, EventHandler, HandlerError};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::{EstadoPago, ReglaViolada, ResultadoCobro},
    infrastructure::{
        pasarela::{ErrorPasarela, PasarelaDePagos, SolicitudCobro},
        repositorio,
    },
};

pub const CONSUMER_NAME: &str = "payments-worker";

pub struct ProcesadorDePagos {
    pool: PgPool,
    pasarela: Arc<dyn PasarelaDePagos>,
}

/// Why processing stopped. Every cause is worth a retry: the database or the gateway may be
/// back, and a broken rule means another delivery got there first (the retry then sees it).
#[derive(Debug, thiserror::Error)]
pub enum ErrorProcesamiento {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Pasarela(#[from] ErrorPasarela),
    #[error(transparent)]
    Regla(#[from] ReglaViolada),
}

impl ProcesadorDePagos {
    pub fn new(pool: PgPool, pasarela: Arc<dyn PasarelaDePagos>) -> Self {
        Self { pool, pasarela }
    }

    /// Safety net for payments whose message can no longer arrive (dead-lettered after the
    /// gateway stayed down through every redelivery, or lost with a broker's storage): finishes
    /// every payment that has sat in `PENDIENTE` or `PROCESANDO` for longer than `antiguedad`.
    /// Safe beside the consumer and in every replica: claims are taken with `SKIP LOCKED`, and
    /// processing is idempotent anyway. Returns how many payments it picked up.
    ///
    /// Up to `EN_PARALELO` charges run at once (one at a time, a batch of slow charges would
    /// take minutes). Once `parar` is cancelled no further payment is started: the ones claimed
    /// but not started stay as they are and are resumed by their message or by a later pass,
    /// so a stopping worker is not held up by a batch (issue 7: a pass kept a worker that had
    /// been told to stop charging for minutes).
    pub async fn recuperar_estancados(
        &self,
        antiguedad: std::time::Duration,
        lote: i64,
        parar: &CancellationToken,
    ) -> Result<usize, ErrorProcesamiento> {
        const EN_PARALELO: usize = 8;
        let estancados = repositorio::reclamar_estancados(&self.pool, antiguedad, lote).await?;
        let mut pendientes = estancados.iter();
        let mut en_curso = FuturesUnordered::new();
        let mut primer_error = None;
        loop {
            while en_curso.len() < EN_PARALELO && !parar.is_cancelled() {
                let Some((id_pago, request_id)) = pendientes.next() else {
                    break;
                };
                tracing::warn!(%id_pago, "resuming a stalled payment");
                en_curso.push(self.procesar(*id_pago, request_id));
            }
            match en_curso.next().await {
                Some(Err(error)) => {
                    primer_error.get_or_insert(error);
                }
                Some(Ok(())) => {}
                None => break,
            }
        }
        if let Some(error) = primer_error {
            return Err(error);
        }
        Ok(estancados.len())
    }

    /// Processes the payment `id_pago` on behalf of an event with correlation id `request_id`.
    pub async fn procesar(
        &self,
        id_pago: Uuid,
        request_id: &str,
    ) -> Result<(), ErrorProcesamiento> {
        // Step 1: claim the payment.
        let mut tx = self.pool.begin().await?;
        let Some(mut pago) = repositorio::bloquear(&mut tx, id_pago).await? else {
            // Outbox rows commit with their payment, so an unknown id is not ours to process.
            tracing::warn!(%id_pago, "PagoPendiente for an unknown payment; ignored");
            return Ok(());
        };
        match pago.estado {
            EstadoPago::Pendiente => {
                pago.iniciar_procesamiento(super::ahora())?;
                repositorio::actualizar(&mut tx, &pago).await?;
                repositorio::trazar(
                    &mut tx,
                    id_pago,
                    "PROCESAMIENTO_INICIADO",
                    "El pago pasó a PROCESANDO; se envía a la pasarela",
                    Some(request_id),
                )
                .await?;
            }
            EstadoPago::Procesando => {
                // A previous attempt stopped after claiming: finish it with the same key.
                repositorio::trazar(&mut tx, id_pago, "PROCESAMIENTO_REANUDADO",
                    "Un intento anterior no terminó; se consulta la pasarela con la misma clave de idempotencia",
                    Some(request_id))
                    .await?;
            }
            ya_procesado => {
                repositorio::trazar(
                    &mut tx,
                    id_pago,
                    "MENSAJE_REPETIDO_IGNORADO",
                    &format!(
                        "Entrega repetida de PagoPendiente ignorada: el pago ya está {ya_procesado}"
                    ),
                    Some(request_id),
                )
                .await?;
                tx.commit().await?;
                tracing::info!(%id_pago, estado = %ya_procesado, "redelivered payment already processed");
                return Ok(());
            }
        }
        tx.commit().await?;

        // Step 2: charge, idempotently.
        let resultado = self
            .pasarela
            .cobrar(SolicitudCobro {
                clave_idempotencia: pago.id,
                id_afiliado: pago.id_afiliado.clone(),
                dinero: pago.dinero,
            })
            .await?;

        // Step 3: record the answer and its event, once.
        let mut tx = self.pool.begin().await?;
        let Some(mut pago) = repositorio::bloquear(&mut tx, id_pago).await? else {
            return Ok(());
        };
        if pago.estado != EstadoPago::Procesando {
            // Another delivery finished it first; its answer came from the same idempotent charge.
            return Ok(());
        }
        let detalle = match &resultado {
            ResultadoCobro::Aprobado {
                referencia_transaccion,
            } => {
                format!("La pasarela aprobó el cobro ({referencia_transaccion})")
            }
            ResultadoCobro::Rechazado { motivo } => {
                format!("La pasarela rechazó el cobro: {motivo}")
            }
        };
        let evento = pago.registrar_resultado(resultado, super::ahora())?;
        repositorio::actualizar(&mut tx, &pago).await?;
        repositorio::trazar(
            &mut tx,
            id_pago,
            "RESULTADO_PASARELA",
            &detalle,
            Some(request_id),
        )
        .await?;
        repositorio::registrar_evento(&mut tx, &evento, request_id).await?;
        tx.commit().await?;
        tracing::info!(%id_pago, estado = %pago.estado, "payment processed");
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventHandler for ProcesadorDePagos {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        if envelope.event_type != "PagoPendiente" {
            return Ok(());
        }
        let id_pago: Uuid = envelope.aggregate_id.parse().map_err(|_| {
            HandlerError::Permanent(format!(
                "aggregate_id '{}' is not a UUID",
                envelope.aggregate_id
            ))
        })?;
        self.procesar(id_pago, &envelope.correlation_id)
            .await
            .map_err(|error| HandlerError::Transient(error.into()))
    }
}
