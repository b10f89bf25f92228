//! The collector's use cases: take one event or a batch, check it, authenticate its source,
//! and hand it to the group-commit queue; then the read side (status, statistics, failed
//! events, retry, rate-limit view) in `infrastructure::consultas`.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use uuid::Uuid;

use platform::group_commit::{GroupCommit, GroupCommitError, Work};

/// The group-commit queue the collector's requests go through (see `platform::group_commit`).
pub type Cola = GroupCommit<Envio, RespuestaEnvio>;

use crate::domain::{
    CamposEvento, ContenidoEvento, ContextoServidor, Credenciales, Cuota, Directorio, ErrorCampo,
    Firma, FirmaMalformada, Perfil, Politica, Rechazo, Reglas, Secreto, UsoDeFirma, autenticar,
    exigir_credencial, motivo_descarte,
};

/// An event ready to be stored: checked, authenticated, with its keys.
#[derive(Debug, Clone)]
pub struct Preparado {
    pub id_evento: Uuid,
    pub contenido: ContenidoEvento,
    pub hash_evento: String,
    pub clave_dedup: String,
    /// Recorded as `DESCARTADO` (never published) when a business rule says so.
    pub descarte: Option<String>,
    pub politica: Politica,
    pub contexto: Arc<ContextoServidor>,
}

impl Preparado {
    /// The envelope's `data`: the content plus what the server knows, so consumers never
    /// need to ask the collector.
    pub fn datos(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Datos<'a> {
            id_evento: Uuid,
            #[serde(flatten)]
            contenido: &'a ContenidoEvento,
            hash_evento: &'a str,
            clave_dedup: &'a str,
            recibido_en: DateTime<Utc>,
            #[serde(skip_serializing_if = "Option::is_none")]
            ip: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            user_agent: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            id_sesion: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            referer: Option<&'a str>,
        }
        serde_json::to_value(Datos {
            id_evento: self.id_evento,
            contenido: &self.contenido,
            hash_evento: &self.hash_evento,
            clave_dedup: &self.clave_dedup,
            recibido_en: self.contexto.recibido_en,
            ip: self.contexto.ip.as_deref(),
            user_agent: self.contexto.user_agent.as_deref(),
            id_sesion: self.contexto.id_sesion.as_deref(),
            referer: self.contexto.referer.as_deref(),
        })
        .expect("event data serialises")
    }
}

/// One request's events, queued together.
#[derive(Debug, Clone)]
pub struct Envio {
    pub eventos: Vec<Preparado>,
    /// A timestamped webhook signature, recorded with the events so it is accepted once.
    pub uso_firma: Option<UsoDeFirma>,
}

/// The queue and a transaction are bounded in events, whatever mix of single events and
/// batches arrives.
impl Work for Envio {
    fn weight(&self) -> usize {
        self.eventos.len().max(1)
    }
}

/// How an envío ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RespuestaEnvio {
    /// Its webhook signature was used before: nothing stored (401).
    FirmaRepetida,
    /// One result per event, in order.
    Resultados(Vec<Resultado>),
}

/// A stored event as its first answer described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registro {
    pub id_evento: Uuid,
    /// `false` when the event was discarded by a business rule.
    pub aceptado: bool,
    pub hash_evento: String,
    pub topic_destino: String,
    pub recibido_en: DateTime<Utc>,
    pub motivo_descarte: Option<String>,
}

/// How one event ended, with the affiliate's allowance after it (for the rate-limit headers).
#[derive(Debug, Clone, PartialEq)]
pub struct Resultado {
    pub desenlace: Desenlace,
    pub cuota: Cuota,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Desenlace {
    /// Newly stored: accepted, or discarded by a business rule.
    Nuevo(Registro),
    /// The same event was stored before: its first answer.
    Duplicado(Registro),
    /// The same partner event id was stored before with different content.
    Conflicto { id_evento: Uuid },
    /// Over the affiliate's rate: not stored.
    Limitado { reintentar_en: std::time::Duration },
}

/// Why a whole request is refused before anything is queued.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ErrorSolicitud {
    #[error("solicitud no válida")]
    Validacion(Vec<ErrorCampo>),
    #[error(transparent)]
    FirmaMalformada(#[from] FirmaMalformada),
    #[error(transparent)]
    Rechazo(#[from] Rechazo),
    #[error(transparent)]
    Cola(#[from] GroupCommitError),
}

/// A field and what is wrong with it, for an event of a batch.
pub type ErrorDeCampo = (String, String);

/// One event of a batch that did not get past the checks: the rest of the batch goes on.
#[derive(Debug, Clone)]
pub enum Excluido {
    Validacion(Vec<ErrorDeCampo>),
    /// Larger than the per-event limit.
    DemasiadoGrande {
        bytes: usize,
        max: usize,
    },
    Rechazo(Rechazo),
}

/// Per-event outcome of a batch, in input order.
#[derive(Debug, Clone)]
pub enum ResultadoLote {
    Excluido(Excluido),
    Procesado(Resultado),
}

/// The collector: affiliates' configuration, the rules, and the queue to the store.
#[derive(Clone)]
pub struct Recolector {
    pub directorio: Arc<Directorio>,
    pub reglas: Reglas,
    pub cola: Cola,
}

/// What one request brings besides its events.
#[derive(Debug, Clone)]
pub struct Peticion<'a> {
    pub cuerpo: &'a [u8],
    pub firma: Option<&'a str>,
    pub api_key_cabecera: Option<&'a str>,
    /// The request's partner key, checked against the key store.
    pub clave: Option<access::domain::ClaveDeAfiliado>,
    /// Whether access is enforced (see [`Credenciales::exigida`]).
    pub exigida: bool,
    pub contexto: Arc<ContextoServidor>,
}

/// An event as read from the body: its fields, and the `api_key` it carried (never stored).
#[derive(Debug, Clone, Default)]
pub struct EventoRecibido {
    pub campos: CamposEvento,
    /// Never printed (its `Debug` is redacted) and never stored.
    pub api_key: Option<Secreto>,
}

impl Peticion<'_> {
    /// What an event of this request authenticates with: the request's key and signature, and
    /// the `api_key` of its body, else of its header.
    fn credenciales<'a>(
        &'a self,
        api_key: Option<&'a Secreto>,
        firma: Option<&'a Firma>,
    ) -> Credenciales<'a> {
        Credenciales {
            clave: self.clave.as_ref(),
            exigida: self.exigida,
            api_key: api_key.map(Secreto::revelar).or(self.api_key_cabecera),
            firma,
            cuerpo: self.cuerpo,
        }
    }
}

impl Recolector {
    /// `POST /events`: one event.
    pub async fn recibir(
        &self,
        evento: EventoRecibido,
        peticion: Peticion<'_>,
    ) -> Result<Resultado, ErrorSolicitud> {
        let firma = peticion.firma.map(Firma::parse).transpose()?;
        let contexto = peticion.contexto.clone();
        let ahora = contexto.recibido_en;
        let credenciales = peticion.credenciales(evento.api_key.as_ref(), firma.as_ref());
        let contenido =
            ContenidoEvento::normalizar(evento.campos).map_err(ErrorSolicitud::Validacion)?;
        exigir_credencial(contenido.fuente_evento, credenciales)?;
        let perfil = self.perfil(&contenido.id_afiliado, peticion.clave.as_ref())?;
        let uso_firma = autenticar(
            &perfil,
            contenido.fuente_evento,
            credenciales,
            &self.reglas,
            ahora,
        )?;
        let preparado = self.preparar(contenido, &perfil, &contexto);
        let envio = Envio {
            eventos: vec![preparado],
            uso_firma,
        };
        match self.cola.submit(envio).await? {
            RespuestaEnvio::FirmaRepetida => {
                Err(Rechazo::Firma(crate::domain::FirmaRechazada::Repetida).into())
            }
            RespuestaEnvio::Resultados(mut resultados) => {
                Ok(resultados.pop().expect("one result per event"))
            }
        }
    }

    /// `POST /events/batch`: every event checked on its own; the ones that pass are stored in
    /// one envío. A malformed signature header or a replayed signature refuses the request.
    pub async fn recibir_lote(
        &self,
        eventos: Vec<Result<EventoRecibido, Excluido>>,
        peticion: Peticion<'_>,
    ) -> Result<Vec<ResultadoLote>, ErrorSolicitud> {
        let firma = peticion.firma.map(Firma::parse).transpose()?;
        let contexto = peticion.contexto.clone();
        let ahora = contexto.recibido_en;
        let mut resultados = Vec::with_capacity(eventos.len());
        let mut preparados = Vec::new();
        let mut uso_firma = None;
        // A body signature verifies once per affiliate, however many of its events the batch has.
        let mut verificadas: HashMap<String, Result<Option<UsoDeFirma>, Rechazo>> = HashMap::new();
        for evento in eventos {
            let evento = match evento {
                Ok(evento) => evento,
                Err(excluido) => {
                    resultados.push(Some(ResultadoLote::Excluido(excluido)));
                    continue;
                }
            };
            let credenciales = peticion.credenciales(evento.api_key.as_ref(), firma.as_ref());
            let contenido = match ContenidoEvento::normalizar(evento.campos) {
                Ok(c) => c,
                Err(errores) => {
                    let errores = errores
                        .into_iter()
                        .map(|(campo, mensaje)| (campo.to_owned(), mensaje))
                        .collect();
                    resultados.push(Some(ResultadoLote::Excluido(Excluido::Validacion(errores))));
                    continue;
                }
            };
            let autenticado = exigir_credencial(contenido.fuente_evento, credenciales)
                .and_then(|()| self.perfil(&contenido.id_afiliado, peticion.clave.as_ref()))
                .and_then(|perfil| {
                    let fuente = contenido.fuente_evento;
                    let uso = if fuente == crate::domain::FuenteEvento::Webhook {
                        verificadas
                            .entry(perfil.id_afiliado.clone())
                            .or_insert_with(|| {
                                autenticar(&perfil, fuente, credenciales, &self.reglas, ahora)
                            })
                            .clone()?
                    } else {
                        autenticar(&perfil, fuente, credenciales, &self.reglas, ahora)?
                    };
                    Ok((perfil, uso))
                });
            match autenticado {
                Ok((perfil, uso)) => {
                    uso_firma = uso_firma.or(uso);
                    preparados.push(self.preparar(contenido, &perfil, &contexto));
                    resultados.push(None);
                }
                Err(rechazo) => {
                    resultados.push(Some(ResultadoLote::Excluido(Excluido::Rechazo(rechazo))))
                }
            }
        }
        let mut almacenados = if preparados.is_empty() {
            Vec::new()
        } else {
            let envio = Envio {
                eventos: preparados,
                uso_firma,
            };
            match self.cola.submit(envio).await? {
                RespuestaEnvio::FirmaRepetida => {
                    return Err(Rechazo::Firma(crate::domain::FirmaRechazada::Repetida).into());
                }
                RespuestaEnvio::Resultados(r) => r,
            }
        }
        .into_iter();
        Ok(resultados
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    ResultadoLote::Procesado(almacenados.next().expect("one result per event"))
                })
            })
            .collect())
    }

    /// The profile of the affiliate an event names; one that presented its own partner key is
    /// known to the platform whatever the file says.
    fn perfil(
        &self,
        id_afiliado: &str,
        clave: Option<&access::domain::ClaveDeAfiliado>,
    ) -> Result<Perfil, Rechazo> {
        if clave.is_some_and(|clave| clave.id_afiliado == id_afiliado) {
            return Ok(self.directorio.perfil_con_clave(id_afiliado));
        }
        self.directorio
            .perfil(id_afiliado)
            .ok_or_else(|| Rechazo::AfiliadoDesconocido(id_afiliado.to_owned()))
    }

    fn preparar(
        &self,
        contenido: ContenidoEvento,
        perfil: &Perfil,
        contexto: &Arc<ContextoServidor>,
    ) -> Preparado {
        let hash_evento = contenido.hash();
        let clave_dedup = contenido.clave_dedup(&hash_evento);
        Preparado {
            // Time-ordered ids keep the events table's index appends local.
            id_evento: Uuid::now_v7(),
            descarte: motivo_descarte(perfil, &contenido, &self.reglas, contexto.recibido_en),
            contenido,
            hash_evento,
            clave_dedup,
            politica: perfil.politica,
            contexto: contexto.clone(),
        }
    }
}

/// Now, at the precision PostgreSQL stores (microseconds).
pub fn ahora() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
