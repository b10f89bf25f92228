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

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use futures::{StreamExt, stream::FuturesUnordered};
use platform::messaging::{Envelope, EventHandler, HandlerError};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::{EstadoPago, EventoPago, Pago, ReglaViolada, ResultadoCobro},
    infrastructure::{
        pasarela::{ErrorPasarela, PasarelaDePagos, SolicitudCobro},
        repositorio::{self, LineaTraza},
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
    /// The batch this payment was in failed on the database; nothing of the failed step stayed.
    #[error("the batch failed: {0}")]
    Lote(String),
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
        self.procesar_lote(&[(id_pago, request_id)])
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Processes many payments with two transactions in all (the claim of every payment, then
    /// every result) and their charges in parallel between them; answers each in order. A
    /// payment whose charge failed stays `PROCESANDO` and is answered with the error (its
    /// message is then retried alone: the same key finds the same charge). A payment named
    /// twice is processed once and both are answered alike.
    pub async fn procesar_lote(
        &self,
        pedidos: &[(Uuid, &str)],
    ) -> Vec<Result<(), ErrorProcesamiento>> {
        match self.procesar_lote_o_fallar(pedidos).await {
            Ok(resultados) => pedidos
                .iter()
                .map(|(id, _)| match resultados.get(id) {
                    Some(Err(error)) => Err(ErrorProcesamiento::Pasarela(error.clone())),
                    _ => Ok(()),
                })
                .collect(),
            // A database failure: nothing of the step that failed stayed.
            Err(error) => {
                let mensaje = error.to_string();
                pedidos
                    .iter()
                    .map(|_| Err(ErrorProcesamiento::Lote(mensaje.clone())))
                    .collect()
            }
        }
    }

    /// The payments whose charge failed, with the gateway's error; every other payment of
    /// `pedidos` is processed (or needed nothing).
    async fn procesar_lote_o_fallar(
        &self,
        pedidos: &[(Uuid, &str)],
    ) -> Result<HashMap<Uuid, Result<(), ErrorPasarela>>, ErrorProcesamiento> {
        let mut request_ids: HashMap<Uuid, &str> = HashMap::new();
        // Further deliveries of a payment already in the batch: processed once, traced each.
        let mut repetidos: Vec<(Uuid, &str)> = Vec::new();
        for (id, request_id) in pedidos {
            match request_ids.entry(*id) {
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(request_id);
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    repetidos.push((*id, request_id));
                }
            }
        }
        let ids: Vec<Uuid> = request_ids.keys().copied().collect();

        // Step 1: claim the payments.
        let mut tx = self.pool.begin().await?;
        let pagos = repositorio::bloquear_muchos(&mut tx, &ids).await?;
        let mut por_cobrar = Vec::new();
        let mut iniciados = Vec::new();
        let mut trazas = Vec::new();
        for mut pago in pagos {
            let request_id = request_ids[&pago.id];
            match pago.estado {
                EstadoPago::Pendiente => {
                    pago.iniciar_procesamiento(super::ahora())?;
                    trazas.push(LineaTraza {
                        id_pago: pago.id,
                        evento: "PROCESAMIENTO_INICIADO",
                        detalle: "El pago pasó a PROCESANDO; se envía a la pasarela".to_owned(),
                        request_id,
                    });
                    iniciados.push(pago.clone());
                    por_cobrar.push(pago);
                }
                EstadoPago::Procesando => {
                    // A previous attempt stopped after claiming: finish it with the same key.
                    trazas.push(LineaTraza {
                        id_pago: pago.id,
                        evento: "PROCESAMIENTO_REANUDADO",
                        detalle: "Un intento anterior no terminó; se consulta la pasarela con la misma clave de idempotencia".to_owned(),
                        request_id,
                    });
                    por_cobrar.push(pago);
                }
                ya_procesado => {
                    trazas.push(LineaTraza {
                        id_pago: pago.id,
                        evento: "MENSAJE_REPETIDO_IGNORADO",
                        detalle: format!(
                            "Entrega repetida de PagoPendiente ignorada: el pago ya está {ya_procesado}"
                        ),
                        request_id,
                    });
                    tracing::info!(id_pago = %pago.id, estado = %ya_procesado,
                        "redelivered payment already processed");
                }
            }
        }
        if ids.len() > trazas.len() {
            // Outbox rows commit with their payment, so an unknown id is not ours to process.
            tracing::warn!(
                unknown = ids.len() - trazas.len(),
                "PagoPendiente for an unknown payment; ignored"
            );
        }
        let conocidos: HashSet<Uuid> = trazas.iter().map(|t| t.id_pago).collect();
        for (id_pago, request_id) in repetidos {
            if conocidos.contains(&id_pago) {
                trazas.push(LineaTraza {
                    id_pago,
                    evento: "MENSAJE_REPETIDO_IGNORADO",
                    detalle: "Entrega repetida de PagoPendiente en el mismo lote: el pago se procesa una vez".to_owned(),
                    request_id,
                });
            }
        }
        let iniciados: Vec<&Pago> = iniciados.iter().collect();
        repositorio::actualizar_muchos(&mut tx, &iniciados).await?;
        repositorio::trazar_muchas(&mut tx, &trazas).await?;
        tx.commit().await?;
        super::contar_transiciones(EstadoPago::Procesando, iniciados.len());
        if por_cobrar.is_empty() {
            return Ok(HashMap::new());
        }

        // Step 2: charge, idempotently, all at once.
        let cobros = por_cobrar.iter().map(|pago| {
            self.pasarela.cobrar(SolicitudCobro {
                clave_idempotencia: pago.id,
                id_afiliado: pago.id_afiliado.clone(),
                dinero: pago.dinero,
            })
        });
        let respuestas: Vec<(Uuid, Result<ResultadoCobro, ErrorPasarela>)> = por_cobrar
            .iter()
            .map(|pago| pago.id)
            .zip(futures::future::join_all(cobros).await)
            .collect();
        let mut fallidos: HashMap<Uuid, Result<(), ErrorPasarela>> = HashMap::new();
        let mut cobrados = HashMap::new();
        for (id, respuesta) in respuestas {
            match respuesta {
                Ok(resultado) => {
                    cobrados.insert(id, resultado);
                }
                Err(error) => {
                    fallidos.insert(id, Err(error));
                }
            }
        }
        if cobrados.is_empty() {
            return Ok(fallidos);
        }

        // Step 3: record the answers and their events, once.
        let ids: Vec<Uuid> = cobrados.keys().copied().collect();
        let mut tx = self.pool.begin().await?;
        let mut terminados = Vec::new();
        let mut trazas = Vec::new();
        let mut eventos = Vec::new();
        for mut pago in repositorio::bloquear_muchos(&mut tx, &ids).await? {
            if pago.estado != EstadoPago::Procesando {
                // Another delivery finished it first; its answer came from the same idempotent
                // charge.
                continue;
            }
            let Some(resultado) = cobrados.remove(&pago.id) else {
                continue;
            };
            let detalle = match &resultado {
                ResultadoCobro::Aprobado {
                    referencia_transaccion,
                } => format!("La pasarela aprobó el cobro ({referencia_transaccion})"),
                ResultadoCobro::Rechazado { motivo } => {
                    format!("La pasarela rechazó el cobro: {motivo}")
                }
            };
            let evento = pago.registrar_resultado(resultado, super::ahora())?;
            let request_id = request_ids[&pago.id];
            trazas.push(LineaTraza {
                id_pago: pago.id,
                evento: "RESULTADO_PASARELA",
                detalle,
                request_id,
            });
            tracing::debug!(id_pago = %pago.id, estado = %pago.estado, "payment processed");
            eventos.push((evento, request_id));
            terminados.push(pago);
        }
        let terminados: Vec<&Pago> = terminados.iter().collect();
        repositorio::actualizar_muchos(&mut tx, &terminados).await?;
        repositorio::trazar_muchas(&mut tx, &trazas).await?;
        let eventos: Vec<(&EventoPago, &str)> = eventos.iter().map(|(e, r)| (e, *r)).collect();
        repositorio::registrar_eventos(&mut tx, &eventos).await?;
        tx.commit().await?;
        for estado in [EstadoPago::Exitoso, EstadoPago::Fallido] {
            let n = terminados.iter().filter(|p| p.estado == estado).count();
            super::contar_transiciones(estado, n);
        }
        Ok(fallidos)
    }
}

/// Payment ids of `PagoPendiente` envelopes (other event types need nothing).
fn pedido(envelope: &Envelope) -> Result<Option<(Uuid, &str)>, HandlerError> {
    if envelope.event_type != "PagoPendiente" {
        return Ok(None);
    }
    let id_pago: Uuid = envelope.aggregate_id.parse().map_err(|_| {
        HandlerError::Permanent(format!(
            "aggregate_id '{}' is not a UUID",
            envelope.aggregate_id
        ))
    })?;
    Ok(Some((id_pago, envelope.correlation_id.as_str())))
}

#[async_trait::async_trait]
impl EventHandler for ProcesadorDePagos {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        let Some((id_pago, request_id)) = pedido(&envelope)? else {
            return Ok(());
        };
        self.procesar(id_pago, request_id)
            .await
            .map_err(|error| HandlerError::Transient(error.into()))
    }

    /// The payments queued in a lane are claimed in one transaction, charged in parallel and
    /// recorded in one transaction.
    async fn handle_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), HandlerError>> {
        let pedidos: Vec<Result<Option<(Uuid, &str)>, HandlerError>> =
            envelopes.iter().map(pedido).collect();
        let validos: Vec<(Uuid, &str)> = pedidos
            .iter()
            .filter_map(|p| p.as_ref().ok().copied().flatten())
            .collect();
        let mut resultados = self.procesar_lote(&validos).await.into_iter();
        pedidos
            .into_iter()
            .map(|pedido| match pedido {
                Ok(Some(_)) => resultados
                    .next()
                    .unwrap_or(Ok(()))
                    .map_err(|error| HandlerError::Transient(error.into())),
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            })
            .collect()
    }

    fn max_batch(&self) -> usize {
        32
    }
}
