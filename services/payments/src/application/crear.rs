//! Creating payments, exactly once per `referencia_pago`, many per transaction: the API puts
//! each request on a group-commit queue and the payments that queued together are inserted,
//! traced and put in the outbox by one statement (one round trip, one commit, one outbox
//! NOTIFY), each request answered after that commit.

use std::collections::{HashMap, HashSet};

use platform::group_commit::{BatchStore, GroupCommit, StoreError, Work};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::ErrorPagos;
use crate::{
    domain::{EstadoPago, EventoPago, NuevoPago, Pago},
    infrastructure::repositorio::{self, LineaTraza, PagoNuevo},
};

/// How a create request ended.
#[derive(Debug, Clone)]
pub enum Creacion {
    /// A new payment, accepted as `PENDIENTE`.
    Creado(Pago),
    /// The same request was made before: this is the original payment.
    Repetido(Pago),
}

/// One create request: what to create, and the request it came from (for the trace).
#[derive(Debug, Clone)]
pub struct SolicitudCreacion {
    pub solicitud: NuevoPago,
    pub request_id: String,
}

impl Work for SolicitudCreacion {}

/// The queue the API's create requests share.
pub type ColaCreacion = GroupCommit<SolicitudCreacion, Result<Creacion, ErrorPagos>>;

/// Stores the create requests of one batch in one transaction.
pub struct CreadorDePagos {
    pool: PgPool,
}

impl CreadorDePagos {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl BatchStore<SolicitudCreacion, Result<Creacion, ErrorPagos>> for CreadorDePagos {
    async fn store(
        &self,
        lote: &[SolicitudCreacion],
    ) -> Result<Vec<Result<Creacion, ErrorPagos>>, StoreError> {
        match crear_lote(&self.pool, lote).await {
            Ok(creaciones) => {
                contar_creados(&creaciones);
                Ok(creaciones)
            }
            // The database is out of reach: every request of the batch gets a 503 and retries;
            // storing them one by one would only wait for the pool once per request.
            Err(ErrorPagos::Db(error)) if platform::db::is_unreachable(&error) => {
                Err(StoreError::from_database(&error))
            }
            // Nothing of the batch was stored. One bad request must not fail the others, so
            // each gets a transaction of its own (the rare path). Payments do this here rather
            // than leave it to the queue because each answer carries its own domain error.
            Err(error) if lote.len() > 1 => {
                tracing::warn!(%error, requests = lote.len(),
                    "creating a batch of payments failed; retrying them one by one");
                let mut creaciones = Vec::with_capacity(lote.len());
                for solicitud in lote {
                    creaciones.push(
                        match crear_lote(&self.pool, std::slice::from_ref(solicitud)).await {
                            Ok(mut una) => {
                                contar_creados(&una);
                                una.pop().unwrap_or(Err(ErrorPagos::NoEncontrado))
                            }
                            Err(error) => Err(error),
                        },
                    );
                }
                Ok(creaciones)
            }
            Err(error) => Ok(vec![Err(error)]),
        }
    }
}

/// Counts the new payments of a committed batch (replays and refusals created none).
fn contar_creados(creaciones: &[Result<Creacion, ErrorPagos>]) {
    let creados = creaciones
        .iter()
        .filter(|c| matches!(c, Ok(Creacion::Creado(_))))
        .count();
    super::contar_transiciones(EstadoPago::Pendiente, creados);
}

/// Creates every payment of `lote` and answers each request in order. The new payments, their
/// trace lines and their events are one statement, which commits on its own: one round trip
/// for the whole batch.
async fn crear_lote(
    pool: &PgPool,
    lote: &[SolicitudCreacion],
) -> Result<Vec<Result<Creacion, ErrorPagos>>, ErrorPagos> {
    let mut conn = pool.acquire().await?;
    crear_lote_en(&mut conn, lote).await
}

/// Creates one payment inside the caller's transaction (a consumer commits it together with
/// its inbox row).
pub async fn crear_pago_en(
    tx: &mut PgConnection,
    solicitud: NuevoPago,
    request_id: &str,
) -> Result<Creacion, ErrorPagos> {
    let lote = [SolicitudCreacion {
        solicitud,
        request_id: request_id.to_owned(),
    }];
    crear_lote_en(tx, &lote)
        .await?
        .pop()
        .unwrap_or(Err(ErrorPagos::NoEncontrado))
}

/// Creates each payment exactly once per `referencia_pago`, whatever the number of concurrent
/// duplicates, batches and replicas: the unique index arbitrates, a conflicting insert waits
/// for the transaction that holds the reference, and the losers read the winner. Within a
/// batch, the first request with a reference wins and later ones are its duplicates.
///
/// On a connection outside a transaction, the new payments commit before the duplicates are
/// looked up and traced (a crash in between loses only the trace line of an attempt that was
/// never answered); inside the caller's transaction, everything commits together.
async fn crear_lote_en(
    conn: &mut PgConnection,
    lote: &[SolicitudCreacion],
) -> Result<Vec<Result<Creacion, ErrorPagos>>, ErrorPagos> {
    let ahora = super::ahora();
    let candidatos: Vec<(Pago, EventoPago)> = lote
        .iter()
        .map(|s| Pago::crear(Uuid::new_v4(), s.solicitud.clone(), ahora))
        .collect();
    let nuevos: Vec<PagoNuevo<'_>> = lote
        .iter()
        .zip(&candidatos)
        .map(|(solicitud, (pago, evento))| PagoNuevo {
            pago,
            traza: LineaTraza {
                id_pago: pago.id,
                evento: "PAGO_RECIBIDO",
                detalle: detalle_recibido(pago),
                request_id: solicitud.request_id.as_str(),
            },
            evento,
        })
        .collect();
    let insertados: HashSet<Uuid> = repositorio::insertar_si_nuevos(&mut *conn, &nuevos).await?;

    let repetidas: Vec<(&str, &str)> = lote
        .iter()
        .zip(&candidatos)
        .filter(|(_, (pago, _))| !insertados.contains(&pago.id))
        .map(|(s, _)| {
            (
                s.solicitud.id_afiliado.as_str(),
                s.solicitud.referencia_pago.as_str(),
            )
        })
        .collect();
    let existentes: HashMap<(String, String), Pago> = if repetidas.is_empty() {
        HashMap::new()
    } else {
        repositorio::buscar_por_referencias(&mut *conn, &repetidas)
            .await?
            .into_iter()
            .map(|pago| {
                (
                    (pago.id_afiliado.clone(), pago.referencia_pago.clone()),
                    pago,
                )
            })
            .collect()
    };

    let mut trazas_repetidas = Vec::new();
    let mut creaciones = Vec::with_capacity(lote.len());
    for (solicitud, (pago, _)) in lote.iter().zip(&candidatos) {
        let request_id = solicitud.request_id.as_str();
        if insertados.contains(&pago.id) {
            tracing::debug!(id_pago = %pago.id, %request_id, "payment accepted");
            creaciones.push(Ok(Creacion::Creado(pago.clone())));
            continue;
        }
        // The conflicting row is committed (the insert waited for it) or in this transaction.
        let existente = existentes
            .get(&(
                solicitud.solicitud.id_afiliado.clone(),
                solicitud.solicitud.referencia_pago.clone(),
            ))
            .ok_or(sqlx::Error::RowNotFound)?;
        let (evento_traza, detalle, resultado) =
            if existente.es_misma_solicitud(&solicitud.solicitud) {
                (
                    "DUPLICADO_REPETIDO",
                    "Solicitud repetida con los mismos datos: se devolvió el pago original",
                    Ok(Creacion::Repetido(existente.clone())),
                )
            } else {
                (
                    "DUPLICADO_RECHAZADO",
                    "Solicitud con la misma referencia_pago y datos distintos: rechazada (409)",
                    Err(ErrorPagos::ReferenciaEnUso(
                        solicitud.solicitud.referencia_pago.clone(),
                    )),
                )
            };
        trazas_repetidas.push(LineaTraza {
            id_pago: existente.id,
            evento: evento_traza,
            detalle: detalle.to_owned(),
            request_id,
        });
        tracing::info!(id_pago = %existente.id, %request_id, outcome = evento_traza,
            "duplicate payment request");
        creaciones.push(resultado);
    }
    repositorio::trazar_muchas(&mut *conn, &trazas_repetidas).await?;
    Ok(creaciones)
}

fn detalle_recibido(pago: &Pago) -> String {
    match &pago.comision {
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
    }
}
