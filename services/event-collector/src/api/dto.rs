//! Wire shapes of the collector's API (API.md §6).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    application::{EventoRecibido, Registro},
    domain::CamposEvento,
};

/// A tracking event as a partner sends it. Unknown fields are ignored (and not hashed).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct EventoBody {
    /// `CLICK`, `IMPRESSION`, `CONVERSION` or `PAGE_VIEW` (any case).
    #[schema(example = "CLICK")]
    pub tipo_evento: Option<String>,
    #[schema(example = "AFILIADO_001")]
    pub id_afiliado: Option<String>,
    /// The partner's own id for the event: the dedup key when present.
    pub id_evento_cliente: Option<String>,
    /// When the event happened (RFC 3339); the server's time when absent.
    pub timestamp: Option<String>,
    /// UUID of the campaign the event belongs to.
    pub id_campana: Option<String>,
    pub id_oferta: Option<String>,
    pub url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub parametros_tracking: Option<serde_json::Map<String, serde_json::Value>>,
    #[schema(value_type = Option<Object>)]
    pub datos_custom: Option<serde_json::Map<String, serde_json::Value>>,
    /// Value of a conversion (> 0, at most 2 decimals), with `moneda`.
    #[schema(value_type = Option<f64>)]
    pub valor_conversion: Option<serde_json::Number>,
    pub moneda: Option<String>,
    pub tipo_dispositivo: Option<String>,
    pub identificador_dispositivo: Option<String>,
    pub sistema_operativo: Option<String>,
    pub navegador: Option<String>,
    pub resolucion_pantalla: Option<String>,
    /// `WEB_TAG` (default), `MOBILE_SDK`, `API_DIRECT` (needs `api_key`) or `WEBHOOK` (needs
    /// `X-Webhook-Signature`).
    pub fuente_evento: Option<String>,
    /// The affiliate's key for `API_DIRECT` (or the `X-API-Key` header). Never stored.
    pub api_key: Option<String>,
    /// Accepted for compatibility; the server computes its own `hash_evento`.
    pub hash_validacion: Option<String>,
}

impl From<EventoBody> for EventoRecibido {
    fn from(b: EventoBody) -> Self {
        EventoRecibido {
            campos: CamposEvento {
                tipo_evento: b.tipo_evento,
                id_afiliado: b.id_afiliado,
                id_evento_cliente: b.id_evento_cliente,
                timestamp: b.timestamp,
                id_campana: b.id_campana,
                id_oferta: b.id_oferta,
                url: b.url,
                parametros_tracking: b.parametros_tracking,
                datos_custom: b.datos_custom,
                valor_conversion: b
                    .valor_conversion
                    .as_ref()
                    .map(platform::http::exact_decimal),
                moneda: b.moneda,
                tipo_dispositivo: b.tipo_dispositivo,
                identificador_dispositivo: b.identificador_dispositivo,
                sistema_operativo: b.sistema_operativo,
                navegador: b.navegador,
                resolucion_pantalla: b.resolucion_pantalla,
                fuente_evento: b.fuente_evento,
            },
            api_key: b.api_key.map(Into::into),
        }
    }
}

/// `POST /event-collector/events/batch`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoteBody {
    /// 1 to 500 events, each as for `POST /events`.
    #[schema(value_type = Vec<EventoBody>)]
    pub eventos: Vec<Box<RawValue>>,
}

/// The answer to one event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventoRespuesta {
    /// `false` when a business rule discarded the event.
    pub exito: bool,
    pub id_evento: Uuid,
    /// `ACEPTADO` (stored; published through the outbox), `DUPLICADO` (stored before: the first
    /// answer) or `DESCARTADO` (stored, never published).
    #[schema(example = "ACEPTADO")]
    pub estado: String,
    pub mensaje: String,
    pub hash_evento: String,
    #[schema(example = "tracking.evt.click")]
    pub topic_destino: String,
    pub timestamp_procesamiento: DateTime<Utc>,
}

impl EventoRespuesta {
    pub fn nuevo(registro: &Registro) -> Self {
        let (estado, mensaje) = match &registro.motivo_descarte {
            None => (
                "ACEPTADO",
                format!(
                    "Evento almacenado; se publicará en {}",
                    registro.topic_destino
                ),
            ),
            Some(motivo) => ("DESCARTADO", motivo.clone()),
        };
        Self::con(registro, estado, mensaje)
    }

    pub fn duplicado(registro: &Registro) -> Self {
        Self::con(
            registro,
            "DUPLICADO",
            format!(
                "Evento duplicado: ya se recibió como {} el {}",
                registro.id_evento,
                registro.recibido_en.to_rfc3339()
            ),
        )
    }

    fn con(registro: &Registro, estado: &str, mensaje: String) -> Self {
        Self {
            exito: registro.aceptado,
            id_evento: registro.id_evento,
            estado: estado.to_owned(),
            mensaje,
            hash_evento: registro.hash_evento.clone(),
            topic_destino: registro.topic_destino.clone(),
            timestamp_procesamiento: registro.recibido_en,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorCampoDto {
    pub field: String,
    pub message: String,
}

/// One event's outcome in a batch, in input order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultadoEventoLote {
    pub indice: usize,
    /// `ACEPTADO`, `DUPLICADO`, `DESCARTADO` or `RECHAZADO`.
    pub estado: String,
    /// The status code this event would have had on its own.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_evento: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_evento: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_destino: Option<String>,
    pub mensaje: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errores: Vec<ErrorCampoDto>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoteRespuesta {
    pub total: usize,
    pub aceptados: usize,
    pub duplicados: usize,
    pub descartados: usize,
    pub rechazados: usize,
    pub resultados: Vec<ResultadoEventoLote>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FallidosRespuesta {
    pub eventos_fallidos: Vec<crate::infrastructure::consultas::EstadoDeEvento>,
    pub total: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimiteRespuesta {
    pub id_afiliado: String,
    pub nivel: String,
    /// Events counted against the allowance right now.
    pub eventos_actuales: u32,
    pub ventana_minutos: u32,
    /// Events the tier allows in `ventana_minutos` (its burst is one minute's worth).
    pub limite_maximo: u64,
    /// Events that can still be sent within the next `ventana_minutos`.
    pub restantes: u64,
    /// Seconds until the allowance is whole again.
    pub reinicio_en: u64,
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
pub struct EstadisticasQuery {
    pub id_afiliado: Option<String>,
    pub tipo_evento: Option<String>,
    /// RFC 3339; events received at or after.
    pub desde: Option<String>,
    /// RFC 3339; events received before.
    pub hasta: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
pub struct FallidosQuery {
    pub id_afiliado: Option<String>,
    /// 1 to 1000 (default 100).
    pub limite: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
pub struct LimiteQuery {
    /// 1 to 1440 (default 1).
    pub ventana_minutos: Option<String>,
}
