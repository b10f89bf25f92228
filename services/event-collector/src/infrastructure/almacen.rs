//! The group-commit transaction: one batch of envíos (many requests' events) stored at once.
//!
//! In one transaction, in this order (the order locks are taken in, always sorted, so two
//! replicas' writers never deadlock):
//! 1. claim the timestamped webhook signatures (a signature already claimed is a replay);
//! 2. find events already stored under the batch's dedup keys;
//! 3. lock every affiliate's rate-limit row and read its state;
//! 4. decide each event in input order: duplicate, conflict, over the limit, or new;
//! 5. insert the new events (the unique dedup key arbitrates between replicas: an insert that
//!    loses to a concurrent one waits for it, then reads it as a duplicate and is refunded);
//! 6. write back the rate-limit states, add the accepted events to the outbox, and give back
//!    the signatures of requests that stored nothing (so their sender may try again).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use platform::{
    group_commit::{BatchStore, StoreError},
    messaging::Envelope,
    outbox::{self, Pending},
};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    application::{Desenlace, Envio, Preparado, Registro, RespuestaEnvio, Resultado},
    domain::Decision,
};

pub const AGGREGATE_TYPE: &str = "EventoTracking";

pub struct PgAlmacen {
    pool: PgPool,
}

impl PgAlmacen {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl BatchStore<Envio, RespuestaEnvio> for PgAlmacen {
    async fn store(&self, envios: &[Envio]) -> Result<Vec<RespuestaEnvio>, StoreError> {
        let mut intento = 0;
        loop {
            intento += 1;
            match guardar_lote(&self.pool, envios).await {
                Ok(respuestas) => return Ok(respuestas),
                // Lock order makes these unlikely, not impossible (e.g. a page split race).
                Err(error) if intento < 3 && reintentable(&error) => {
                    tracing::info!(%error, intento, "batch transaction conflicted; trying again");
                }
                Err(error) => return Err(StoreError::from_database(&error)),
            }
        }
    }
}

fn reintentable(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

fn registro(p: &Preparado) -> Registro {
    Registro {
        id_evento: p.id_evento,
        aceptado: p.descarte.is_none(),
        hash_evento: p.hash_evento.clone(),
        topic_destino: p.contenido.tipo_evento.topic().to_owned(),
        recibido_en: p.contexto.recibido_en,
        motivo_descarte: p.descarte.clone(),
    }
}

#[derive(sqlx::FromRow)]
struct FilaRegistro {
    clave_dedup: String,
    id_evento: Uuid,
    hash_evento: String,
    estado: String,
    topic_destino: String,
    recibido_en: DateTime<Utc>,
    motivo_descarte: Option<String>,
}

impl From<FilaRegistro> for Registro {
    fn from(f: FilaRegistro) -> Self {
        Registro {
            id_evento: f.id_evento,
            aceptado: f.estado == "ACEPTADO",
            hash_evento: f.hash_evento,
            topic_destino: f.topic_destino,
            recibido_en: f.recibido_en,
            motivo_descarte: f.motivo_descarte,
        }
    }
}

async fn registros(
    tx: &mut PgConnection,
    claves: &[&str],
) -> Result<HashMap<String, Registro>, sqlx::Error> {
    if claves.is_empty() {
        return Ok(HashMap::new());
    }
    let filas: Vec<FilaRegistro> = sqlx::query_as(
        "SELECT clave_dedup, id_evento, hash_evento, estado, topic_destino, recibido_en, \
                motivo_descarte \
         FROM eventos WHERE clave_dedup = ANY($1)",
    )
    .bind(claves)
    .fetch_all(tx)
    .await?;
    Ok(filas
        .into_iter()
        .map(|f| (f.clave_dedup.clone(), f.into()))
        .collect())
}

/// The answer to an event whose key is already taken by `previo`.
fn frente_a(previo: &Registro, hash: &str) -> Desenlace {
    if previo.hash_evento == hash {
        Desenlace::Duplicado(previo.clone())
    } else {
        Desenlace::Conflicto {
            id_evento: previo.id_evento,
        }
    }
}

/// Where an event of the batch stands while the transaction runs.
enum Estado {
    Decidido(Desenlace),
    /// Allowed and about to be inserted.
    Nuevo,
    /// Same key as an earlier new event of this batch (envío, event).
    IgualA(usize, usize),
}

async fn guardar_lote(pool: &PgPool, envios: &[Envio]) -> Result<Vec<RespuestaEnvio>, sqlx::Error> {
    let mut tx = pool.begin().await?;

    // 1. Signatures: the first claim wins, in this batch or across replicas.
    let mut repetida = vec![false; envios.len()];
    let mut firmas: Vec<(&str, DateTime<Utc>)> = envios
        .iter()
        .filter_map(|e| e.uso_firma.as_ref().map(|u| (u.firma.as_str(), u.caduca)))
        .collect();
    firmas.sort_unstable();
    firmas.dedup_by_key(|(f, _)| *f);
    if !firmas.is_empty() {
        let (nombres, caducidades): (Vec<&str>, Vec<DateTime<Utc>>) = firmas.into_iter().unzip();
        let reclamadas: HashSet<String> = sqlx::query_scalar(
            "INSERT INTO firmas_usadas (firma, caduca_en) \
             SELECT * FROM unnest($1::text[], $2::timestamptz[]) ORDER BY 1 \
             ON CONFLICT (firma) DO NOTHING RETURNING firma",
        )
        .bind(&nombres)
        .bind(&caducidades)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut usadas = HashSet::new();
        for (i, envio) in envios.iter().enumerate() {
            if let Some(uso) = &envio.uso_firma {
                repetida[i] =
                    !reclamadas.contains(&uso.firma) || !usadas.insert(uso.firma.as_str());
            }
        }
    }

    // 2. Events already stored under these keys.
    let vivos = || {
        envios
            .iter()
            .enumerate()
            .filter(|(i, _)| !repetida[*i])
            .flat_map(|(i, e)| e.eventos.iter().enumerate().map(move |(j, p)| (i, j, p)))
    };
    let claves: Vec<&str> = vivos()
        .map(|(_, _, p)| p.clave_dedup.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let existentes = registros(&mut tx, &claves).await?;

    // 3. Lock and read each affiliate's allowance (created on first use).
    let mut afiliados: Vec<&str> = vivos()
        .map(|(_, _, p)| p.contenido.id_afiliado.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    afiliados.sort_unstable();
    let mut tats: HashMap<String, Option<DateTime<Utc>>> = HashMap::new();
    let mut ahora = crate::application::ahora();
    if !afiliados.is_empty() {
        let filas: Vec<(String, Option<DateTime<Utc>>, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO limites_afiliado (id_afiliado) \
             SELECT a FROM unnest($1::text[]) a ORDER BY a \
             ON CONFLICT (id_afiliado) DO UPDATE SET tat = limites_afiliado.tat \
             RETURNING id_afiliado, tat, clock_timestamp()",
        )
        .bind(&afiliados)
        .fetch_all(&mut *tx)
        .await?;
        // The database's clock, so every replica's limit runs on one clock.
        if let Some((_, _, reloj)) = filas.first() {
            ahora = *reloj;
        }
        tats = filas.into_iter().map(|(a, tat, _)| (a, tat)).collect();
    }
    let tats_iniciales = tats.clone();

    // 4. Decide every event in input order.
    let mut estados: Vec<Vec<Estado>> = envios.iter().map(|_| Vec::new()).collect();
    let mut primeros: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, j, p) in vivos() {
        let clave = p.clave_dedup.as_str();
        let estado = if let Some(previo) = existentes.get(clave) {
            Estado::Decidido(frente_a(previo, &p.hash_evento))
        } else if let Some(&(i2, j2)) = primeros.get(clave) {
            Estado::IgualA(i2, j2)
        } else {
            let tat = tats.get(&p.contenido.id_afiliado).copied().flatten();
            match p.politica.consumir(tat, ahora, 1) {
                Decision::Permitido { tat, .. } => {
                    tats.insert(p.contenido.id_afiliado.clone(), Some(tat));
                    primeros.insert(clave, (i, j));
                    Estado::Nuevo
                }
                Decision::Limitado { reintentar_en, .. } => {
                    Estado::Decidido(Desenlace::Limitado { reintentar_en })
                }
            }
        };
        debug_assert_eq!(estados[i].len(), j);
        estados[i].push(estado);
    }

    // 5. Insert the new ones; a key taken meanwhile by another replica is a duplicate after all.
    let nuevos: Vec<&Preparado> = vivos()
        .filter(|(i, j, _)| matches!(estados[*i][*j], Estado::Nuevo))
        .map(|(_, _, p)| p)
        .collect();
    // The envelope's data is the stored row's `datos` too: built once per event.
    let datos: HashMap<uuid::Uuid, serde_json::Value> =
        nuevos.iter().map(|p| (p.id_evento, p.datos())).collect();
    let insertados = insertar(&mut tx, &nuevos, &datos).await?;
    let perdidos: Vec<&str> = nuevos
        .iter()
        .filter(|p| !insertados.contains(&p.clave_dedup))
        .map(|p| p.clave_dedup.as_str())
        .collect();
    let ganadores = registros(&mut tx, &perdidos).await?;
    for (i, j, p) in vivos() {
        if matches!(estados[i][j], Estado::Nuevo) && !insertados.contains(&p.clave_dedup) {
            let tat = tats
                .get(&p.contenido.id_afiliado)
                .copied()
                .flatten()
                .map(|tat| p.politica.devolver(tat, ahora, 1));
            tats.insert(p.contenido.id_afiliado.clone(), tat);
            estados[i][j] = Estado::Decidido(match ganadores.get(&p.clave_dedup) {
                Some(ganador) => frente_a(ganador, &p.hash_evento),
                // Inserted and deleted by someone else meanwhile: never happens while rows are
                // kept for the dedup horizon; tell the client to try again rather than guess.
                None => Desenlace::Limitado {
                    reintentar_en: std::time::Duration::from_secs(1),
                },
            });
        }
    }

    // 6. Allowances, outbox, unused signatures.
    let cambiados: Vec<(&str, DateTime<Utc>)> = tats
        .iter()
        .filter(|(a, tat)| tats_iniciales.get(*a) != Some(*tat))
        .filter_map(|(a, tat)| tat.map(|t| (a.as_str(), t)))
        .collect();
    if !cambiados.is_empty() {
        let (ids, valores): (Vec<&str>, Vec<DateTime<Utc>>) = cambiados.into_iter().unzip();
        sqlx::query(
            "UPDATE limites_afiliado l SET tat = u.tat \
             FROM unnest($1::text[], $2::timestamptz[]) AS u(id_afiliado, tat) \
             WHERE l.id_afiliado = u.id_afiliado",
        )
        .bind(&ids)
        .bind(&valores)
        .execute(&mut *tx)
        .await?;
    }
    let publicables: Vec<&Preparado> = nuevos
        .iter()
        .copied()
        .filter(|p| p.descarte.is_none() && insertados.contains(&p.clave_dedup))
        .collect();
    let sobres: Vec<Envelope> = publicables
        .iter()
        .map(|p| sobre(p, datos.get(&p.id_evento).cloned().unwrap_or_default()))
        .collect();
    let claves_mensaje: Vec<String> = publicables
        .iter()
        .map(|p| p.contenido.clave_mensaje())
        .collect();
    let pendientes: Vec<Pending<'_>> = publicables
        .iter()
        .zip(&sobres)
        .zip(&claves_mensaje)
        .map(|((p, envelope), clave)| Pending {
            topic: p.contenido.tipo_evento.topic(),
            message_key: Some(clave),
            envelope,
        })
        .collect();
    outbox::enqueue_many(&mut tx, &pendientes).await?;

    let sin_efecto: Vec<&str> = envios
        .iter()
        .enumerate()
        .filter(|(i, _)| !repetida[*i])
        .filter(|(i, e)| {
            e.uso_firma.is_some() && !estados[*i].iter().any(|s| matches!(s, Estado::Nuevo))
        })
        .filter_map(|(_, e)| e.uso_firma.as_ref().map(|u| u.firma.as_str()))
        .collect();
    if !sin_efecto.is_empty() {
        sqlx::query("DELETE FROM firmas_usadas WHERE firma = ANY($1)")
            .bind(&sin_efecto)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;

    // Answers, with each affiliate's allowance as it stands after the whole batch.
    Ok(envios
        .iter()
        .enumerate()
        .map(|(i, envio)| {
            if repetida[i] {
                return RespuestaEnvio::FirmaRepetida;
            }
            RespuestaEnvio::Resultados(
                envio
                    .eventos
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let desenlace = match &estados[i][j] {
                            Estado::Decidido(d) => d.clone(),
                            Estado::Nuevo => Desenlace::Nuevo(registro(p)),
                            Estado::IgualA(i2, j2) => {
                                let primero = &envios[*i2].eventos[*j2];
                                match &estados[*i2][*j2] {
                                    Estado::Nuevo => frente_a(&registro(primero), &p.hash_evento),
                                    Estado::Decidido(Desenlace::Duplicado(r)) => {
                                        frente_a(r, &p.hash_evento)
                                    }
                                    Estado::Decidido(d) => d.clone(),
                                    Estado::IgualA(..) => unreachable!("firsts are never copies"),
                                }
                            }
                        };
                        let tat = tats.get(&p.contenido.id_afiliado).copied().flatten();
                        Resultado {
                            desenlace,
                            cuota: p.politica.cuota(tat, ahora),
                        }
                    })
                    .collect(),
            )
        })
        .collect())
}

fn sobre(p: &Preparado, data: serde_json::Value) -> Envelope {
    Envelope {
        // The event's own id: a republished event is still the same event to every inbox.
        event_id: p.id_evento,
        event_type: p.contenido.tipo_evento.event_type().to_owned(),
        aggregate_type: AGGREGATE_TYPE.to_owned(),
        aggregate_id: p.id_evento.to_string(),
        aggregate_version: 1,
        occurred_at: p.contenido.timestamp.unwrap_or(p.contexto.recibido_en),
        correlation_id: p.contexto.request_id.clone(),
        data,
    }
}

async fn insertar(
    tx: &mut PgConnection,
    nuevos: &[&Preparado],
    todos_los_datos: &HashMap<Uuid, serde_json::Value>,
) -> Result<HashSet<String>, sqlx::Error> {
    if nuevos.is_empty() {
        return Ok(HashSet::new());
    }
    let n = nuevos.len();
    let mut id_evento = Vec::with_capacity(n);
    let mut clave = Vec::with_capacity(n);
    let mut hash = Vec::with_capacity(n);
    let mut tipo = Vec::with_capacity(n);
    let mut afiliado = Vec::with_capacity(n);
    let mut campana: Vec<Option<Uuid>> = Vec::with_capacity(n);
    let mut cliente: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut fuente = Vec::with_capacity(n);
    let mut estado = Vec::with_capacity(n);
    let mut motivo: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut topic = Vec::with_capacity(n);
    let mut valor: Vec<Option<Decimal>> = Vec::with_capacity(n);
    let mut moneda: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut cuando: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut recibido = Vec::with_capacity(n);
    let mut request_id = Vec::with_capacity(n);
    let mut datos = Vec::with_capacity(n);
    for p in nuevos {
        let c = &p.contenido;
        id_evento.push(p.id_evento);
        clave.push(p.clave_dedup.as_str());
        hash.push(p.hash_evento.as_str());
        tipo.push(c.tipo_evento.code());
        afiliado.push(c.id_afiliado.as_str());
        campana.push(c.id_campana);
        cliente.push(c.id_evento_cliente.as_deref());
        fuente.push(c.fuente_evento.code());
        estado.push(if p.descarte.is_none() {
            "ACEPTADO"
        } else {
            "DESCARTADO"
        });
        motivo.push(p.descarte.as_deref());
        topic.push(c.tipo_evento.topic());
        valor.push(c.valor_conversion);
        moneda.push(c.moneda.map(|m| m.code()));
        cuando.push(c.timestamp);
        recibido.push(p.contexto.recibido_en);
        request_id.push(p.contexto.request_id.as_str());
        datos.push(&todos_los_datos[&p.id_evento]);
    }
    let insertados: Vec<String> = sqlx::query_scalar(
        "INSERT INTO eventos (id_evento, clave_dedup, hash_evento, tipo_evento, id_afiliado, \
             id_campana, id_evento_cliente, fuente_evento, estado, motivo_descarte, topic_destino, \
             valor_conversion, moneda, timestamp_evento, recibido_en, request_id, datos) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
             $12::numeric[], $13::text[], $14::timestamptz[], $15::timestamptz[], $16::text[], \
             $17::jsonb[]) AS u \
         ORDER BY 2 \
         ON CONFLICT (clave_dedup) DO NOTHING RETURNING clave_dedup",
    )
    .bind(&id_evento)
    .bind(&clave)
    .bind(&hash)
    .bind(&tipo)
    .bind(&afiliado)
    .bind(&campana)
    .bind(&cliente)
    .bind(&fuente)
    .bind(&estado)
    .bind(&motivo)
    .bind(&topic)
    .bind(&valor)
    .bind(&moneda)
    .bind(&cuando)
    .bind(&recibido)
    .bind(&request_id)
    .bind(&datos)
    .fetch_all(tx)
    .await?;
    Ok(insertados.into_iter().collect())
}
