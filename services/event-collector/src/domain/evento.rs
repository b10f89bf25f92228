//! A partner's tracking event: what it may contain, how it is normalised, and the two keys
//! that make it idempotent (its dedup key and the hash of its content).

use std::{collections::BTreeMap, fmt, str::FromStr};

use chrono::{DateTime, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared_kernel::{Dinero, Moneda};
use uuid::Uuid;

/// The kinds of event a partner reports. Each goes to its own topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TipoEvento {
    Click,
    Impression,
    Conversion,
    PageView,
}

impl TipoEvento {
    pub const ALL: [TipoEvento; 4] = [
        TipoEvento::Click,
        TipoEvento::Impression,
        TipoEvento::Conversion,
        TipoEvento::PageView,
    ];

    pub fn code(self) -> &'static str {
        match self {
            TipoEvento::Click => "CLICK",
            TipoEvento::Impression => "IMPRESSION",
            TipoEvento::Conversion => "CONVERSION",
            TipoEvento::PageView => "PAGE_VIEW",
        }
    }

    /// The Pulsar topic an accepted event of this kind is published to (API.md §6).
    pub fn topic(self) -> &'static str {
        match self {
            TipoEvento::Click => "tracking.evt.click",
            TipoEvento::Impression => "tracking.evt.impression",
            TipoEvento::Conversion => "tracking.evt.conversion",
            TipoEvento::PageView => "tracking.evt.page_view",
        }
    }

    /// The envelope's `event_type`.
    pub fn event_type(self) -> &'static str {
        match self {
            TipoEvento::Click => "ClickRegistrado",
            TipoEvento::Impression => "ImpresionRegistrada",
            TipoEvento::Conversion => "ConversionRegistrada",
            TipoEvento::PageView => "VisitaRegistrada",
        }
    }
}

impl fmt::Display for TipoEvento {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for TipoEvento {
    type Err = String;

    /// Case-insensitive, surrounding blanks ignored: `click`, ` Click ` and `CLICK` are one type.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let code = raw.trim().to_ascii_uppercase();
        TipoEvento::ALL
            .into_iter()
            .find(|t| t.code() == code)
            .ok_or_else(|| {
                format!("tipo de evento no soportado '{raw}'; use CLICK, IMPRESSION, CONVERSION o PAGE_VIEW")
            })
    }
}

/// Where an event comes from; decides how the partner proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FuenteEvento {
    /// A tag on a web page: public, nothing to prove.
    WebTag,
    /// A mobile SDK: public, nothing to prove.
    MobileSdk,
    /// A partner's server with its `api_key`.
    ApiDirect,
    /// A partner's server whose request body is signed with a shared secret.
    Webhook,
}

impl FuenteEvento {
    pub const ALL: [FuenteEvento; 4] = [
        FuenteEvento::WebTag,
        FuenteEvento::MobileSdk,
        FuenteEvento::ApiDirect,
        FuenteEvento::Webhook,
    ];

    pub fn code(self) -> &'static str {
        match self {
            FuenteEvento::WebTag => "WEB_TAG",
            FuenteEvento::MobileSdk => "MOBILE_SDK",
            FuenteEvento::ApiDirect => "API_DIRECT",
            FuenteEvento::Webhook => "WEBHOOK",
        }
    }
}

impl fmt::Display for FuenteEvento {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for FuenteEvento {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let code = raw.trim().to_ascii_uppercase();
        FuenteEvento::ALL
            .into_iter()
            .find(|f| f.code() == code)
            .ok_or_else(|| {
                format!(
                    "fuente de evento no soportada '{raw}'; use WEB_TAG, MOBILE_SDK, API_DIRECT o WEBHOOK"
                )
            })
    }
}

/// The fields a partner sends, as read from the request but not yet checked. Strings are raw
/// (untrimmed); the amount is already an exact decimal, or the reason it could not be one.
#[derive(Debug, Clone, Default)]
pub struct CamposEvento {
    pub tipo_evento: Option<String>,
    pub id_afiliado: Option<String>,
    pub id_evento_cliente: Option<String>,
    pub timestamp: Option<String>,
    pub id_campana: Option<String>,
    pub id_oferta: Option<String>,
    pub url: Option<String>,
    pub parametros_tracking: Option<serde_json::Map<String, serde_json::Value>>,
    pub datos_custom: Option<serde_json::Map<String, serde_json::Value>>,
    pub valor_conversion: Option<Result<Decimal, String>>,
    pub moneda: Option<String>,
    pub tipo_dispositivo: Option<String>,
    pub identificador_dispositivo: Option<String>,
    pub sistema_operativo: Option<String>,
    pub navegador: Option<String>,
    pub resolucion_pantalla: Option<String>,
    pub fuente_evento: Option<String>,
}

/// What the server knows about the request an event came in: never part of the event's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextoServidor {
    pub recibido_en: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub id_sesion: Option<String>,
    pub referer: Option<String>,
    pub request_id: String,
}

/// The device an event happened on, when the partner says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dispositivo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tipo_dispositivo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identificador_dispositivo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sistema_operativo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub navegador: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolucion_pantalla: Option<String>,
}

/// The partner's part of an event after normalisation: enums upper case, strings trimmed and
/// empty ones dropped, the campaign id canonical. Two requests that mean the same event
/// normalise to equal values, so their hashes are equal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContenidoEvento {
    pub tipo_evento: TipoEvento,
    pub id_afiliado: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_evento_cliente: Option<String>,
    /// When the partner says the event happened (`None`: the server's time is used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_campana: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_oferta: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parametros_tracking: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datos_custom: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "rust_decimal::serde::float_option")]
    pub valor_conversion: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moneda: Option<Moneda>,
    #[serde(skip_serializing_if = "dispositivo_vacio")]
    pub dispositivo: Dispositivo,
    pub fuente_evento: FuenteEvento,
}

fn dispositivo_vacio(dispositivo: &Dispositivo) -> bool {
    *dispositivo == Dispositivo::default()
}

/// One field that breaks a rule: the field's name and a sentence for the partner.
pub type ErrorCampo = (&'static str, String);

const MAX_TEXTO: usize = 255;
const MAX_URL: usize = 2048;

impl ContenidoEvento {
    /// Checks and normalises every field, collecting every error rather than the first.
    pub fn normalizar(campos: CamposEvento) -> Result<Self, Vec<ErrorCampo>> {
        let mut errores = Vec::new();
        let tipo_evento = match campos.tipo_evento.as_deref().map(str::trim) {
            None | Some("") => {
                errores.push(("tipo_evento", "es obligatorio".to_owned()));
                None
            }
            Some(raw) => raw
                .parse::<TipoEvento>()
                .map_err(|e| errores.push(("tipo_evento", e)))
                .ok(),
        };
        let id_afiliado = match texto(campos.id_afiliado, "id_afiliado", MAX_TEXTO, &mut errores) {
            Some(id) => Some(id),
            None => {
                if !errores.iter().any(|(campo, _)| *campo == "id_afiliado") {
                    errores.push(("id_afiliado", "es obligatorio".to_owned()));
                }
                None
            }
        };
        let id_evento_cliente = texto(
            campos.id_evento_cliente,
            "id_evento_cliente",
            MAX_TEXTO,
            &mut errores,
        );
        let timestamp = texto(campos.timestamp, "timestamp", 64, &mut errores).and_then(|raw| {
            instante(&raw)
                .map_err(|e| errores.push(("timestamp", e)))
                .ok()
        });
        let id_campana = texto(campos.id_campana, "id_campana", 64, &mut errores).and_then(|raw| {
            Uuid::parse_str(&raw)
                .map_err(|_| errores.push(("id_campana", format!("'{raw}' no es un UUID válido"))))
                .ok()
        });
        let fuente_evento = match texto(campos.fuente_evento, "fuente_evento", 32, &mut errores) {
            None => Some(FuenteEvento::WebTag),
            Some(raw) => raw
                .parse::<FuenteEvento>()
                .map_err(|e| errores.push(("fuente_evento", e)))
                .ok(),
        };
        let valor = match campos.valor_conversion {
            None => None,
            Some(Err(e)) => {
                errores.push(("valor_conversion", e));
                None
            }
            Some(Ok(valor)) => Some(valor),
        };
        let moneda = texto(campos.moneda, "moneda", 8, &mut errores);
        let dinero = match (valor, moneda, campos_valor_presentes(&errores)) {
            (None, None, _) => None,
            (Some(_), None, _) => {
                errores.push((
                    "moneda",
                    "es obligatoria cuando se envía valor_conversion".to_owned(),
                ));
                None
            }
            (None, Some(_), true) => {
                errores.push((
                    "valor_conversion",
                    "es obligatorio cuando se envía moneda".to_owned(),
                ));
                None
            }
            (None, Some(_), false) => None,
            (Some(valor), Some(moneda), _) => match moneda.parse::<Moneda>() {
                Err(e) => {
                    errores.push(("moneda", e.to_string()));
                    None
                }
                Ok(moneda) => Dinero::new(valor, moneda)
                    .map_err(|e| errores.push(("valor_conversion", e.to_string())))
                    .ok(),
            },
        };
        if dinero.is_some() && tipo_evento.is_some_and(|t| t != TipoEvento::Conversion) {
            errores.push((
                "valor_conversion",
                "solo los eventos CONVERSION llevan valor".to_owned(),
            ));
        }
        let dispositivo = Dispositivo {
            tipo_dispositivo: texto(
                campos.tipo_dispositivo,
                "tipo_dispositivo",
                32,
                &mut errores,
            )
            .map(|t| t.to_ascii_uppercase()),
            identificador_dispositivo: texto(
                campos.identificador_dispositivo,
                "identificador_dispositivo",
                MAX_TEXTO,
                &mut errores,
            ),
            sistema_operativo: texto(
                campos.sistema_operativo,
                "sistema_operativo",
                MAX_TEXTO,
                &mut errores,
            ),
            navegador: texto(campos.navegador, "navegador", MAX_TEXTO, &mut errores),
            resolucion_pantalla: texto(
                campos.resolucion_pantalla,
                "resolucion_pantalla",
                32,
                &mut errores,
            ),
        };
        let id_oferta = texto(campos.id_oferta, "id_oferta", MAX_TEXTO, &mut errores);
        let url = texto(campos.url, "url", MAX_URL, &mut errores);
        match (tipo_evento, id_afiliado, fuente_evento) {
            (Some(tipo_evento), Some(id_afiliado), Some(fuente_evento)) if errores.is_empty() => {
                Ok(Self {
                    tipo_evento,
                    id_afiliado,
                    id_evento_cliente,
                    timestamp,
                    id_campana,
                    id_oferta,
                    url,
                    parametros_tracking: campos.parametros_tracking.filter(|m| !m.is_empty()),
                    datos_custom: campos.datos_custom.filter(|m| !m.is_empty()),
                    valor_conversion: dinero.map(|d| d.monto()),
                    moneda: dinero.map(|d| d.moneda()),
                    dispositivo,
                    fuente_evento,
                })
            }
            _ => Err(errores),
        }
    }

    /// SHA-256 (hex) of the canonical JSON of the content: keys sorted at every level, no
    /// server-side field, no credential. Equal content, equal hash, whatever the key order or
    /// blanks the partner sent.
    pub fn hash(&self) -> String {
        let canonical = canonical(serde_json::to_value(self).expect("content serialises"));
        let bytes = serde_json::to_vec(&canonical).expect("canonical JSON serialises");
        hex::encode(Sha256::digest(bytes))
    }

    /// The key that makes the event idempotent for every replica: the partner's own event id
    /// when it sends one, otherwise the hash of the content.
    pub fn clave_dedup(&self, hash: &str) -> String {
        match &self.id_evento_cliente {
            // A JSON pair cannot be confused with another pair, whatever the ids contain.
            Some(cliente) => format!(
                "cliente:{}",
                serde_json::to_string(&[&self.id_afiliado, cliente]).expect("strings serialise")
            ),
            None => format!("hash:{hash}"),
        }
    }

    /// The Pulsar message key: the campaign when the event names one, else the affiliate.
    pub fn clave_mensaje(&self) -> String {
        self.id_campana
            .map_or_else(|| self.id_afiliado.clone(), |c| c.to_string())
    }
}

/// `serde_json::Value` sorts object keys only with its default map; make the order explicit so
/// the hash never depends on a feature flag.
fn canonical(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<String, serde_json::Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(canonical).collect())
        }
        other => other,
    }
}

fn campos_valor_presentes(errores: &[ErrorCampo]) -> bool {
    // A `valor_conversion` that failed to parse was reported already: do not also call it missing.
    !errores
        .iter()
        .any(|(campo, _)| *campo == "valor_conversion")
}

/// Trims a string field; blank means absent. Too long, or containing a NUL, is an error.
fn texto(
    valor: Option<String>,
    campo: &'static str,
    max: usize,
    errores: &mut Vec<ErrorCampo>,
) -> Option<String> {
    let valor = valor?;
    let recortado = valor.trim();
    if recortado.is_empty() {
        return None;
    }
    if recortado.chars().count() > max {
        errores.push((campo, format!("admite como máximo {max} caracteres")));
        return None;
    }
    if recortado.contains('\0') {
        errores.push((campo, "contiene un carácter nulo".to_owned()));
        return None;
    }
    Some(recortado.to_owned())
}

/// RFC 3339 with a zone, or `YYYY-MM-DDTHH:MM:SS[.f]` read as UTC.
fn instante(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(con_zona) = DateTime::parse_from_rfc3339(raw) {
        return Ok(con_zona.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|naive| naive.and_utc())
        .map_err(|_| format!("'{raw}' no es una fecha RFC 3339 (p. ej. 2026-11-28T06:22:56Z)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campos(tipo: &str) -> CamposEvento {
        CamposEvento {
            tipo_evento: Some(tipo.to_owned()),
            id_afiliado: Some("AFILIADO_001".to_owned()),
            ..CamposEvento::default()
        }
    }

    #[test]
    fn enums_are_case_insensitive_and_strings_trimmed() {
        let mut c = campos("  click ");
        c.fuente_evento = Some("mobile_sdk".to_owned());
        c.id_afiliado = Some("  AFILIADO_001 ".to_owned());
        c.navegador = Some("   ".to_owned());
        c.tipo_dispositivo = Some("mobile".to_owned());
        let evento = ContenidoEvento::normalizar(c).unwrap();
        assert_eq!(evento.tipo_evento, TipoEvento::Click);
        assert_eq!(evento.fuente_evento, FuenteEvento::MobileSdk);
        assert_eq!(evento.id_afiliado, "AFILIADO_001");
        assert_eq!(evento.dispositivo.navegador, None);
        assert_eq!(
            evento.dispositivo.tipo_dispositivo.as_deref(),
            Some("MOBILE")
        );
        assert_eq!(
            ContenidoEvento::normalizar(campos("Page_View"))
                .unwrap()
                .tipo_evento,
            TipoEvento::PageView
        );
    }

    #[test]
    fn source_defaults_to_web_tag() {
        let evento = ContenidoEvento::normalizar(campos("IMPRESSION")).unwrap();
        assert_eq!(evento.fuente_evento, FuenteEvento::WebTag);
    }

    #[test]
    fn every_broken_field_is_reported() {
        let c = CamposEvento {
            tipo_evento: Some("SWIPE".to_owned()),
            id_afiliado: None,
            id_campana: Some("not-a-uuid".to_owned()),
            timestamp: Some("yesterday".to_owned()),
            fuente_evento: Some("FAX".to_owned()),
            ..CamposEvento::default()
        };
        let errores = ContenidoEvento::normalizar(c).unwrap_err();
        let campos: Vec<&str> = errores.iter().map(|(c, _)| *c).collect();
        for campo in [
            "tipo_evento",
            "id_afiliado",
            "id_campana",
            "timestamp",
            "fuente_evento",
        ] {
            assert!(campos.contains(&campo), "{campo} missing from {errores:?}");
        }
    }

    #[test]
    fn value_and_currency_come_together_and_only_on_conversions() {
        let mut solo_valor = campos("CONVERSION");
        solo_valor.valor_conversion = Some(Ok(Decimal::from(10)));
        assert_eq!(
            ContenidoEvento::normalizar(solo_valor).unwrap_err()[0].0,
            "moneda"
        );
        let mut solo_moneda = campos("CONVERSION");
        solo_moneda.moneda = Some("USD".to_owned());
        assert_eq!(
            ContenidoEvento::normalizar(solo_moneda).unwrap_err()[0].0,
            "valor_conversion"
        );
        let mut negativo = campos("CONVERSION");
        negativo.valor_conversion = Some(Ok(Decimal::from(-1)));
        negativo.moneda = Some("USD".to_owned());
        assert_eq!(
            ContenidoEvento::normalizar(negativo).unwrap_err()[0].0,
            "valor_conversion"
        );
        let mut en_click = campos("CLICK");
        en_click.valor_conversion = Some(Ok(Decimal::from(5)));
        en_click.moneda = Some("EUR".to_owned());
        assert!(ContenidoEvento::normalizar(en_click).is_err());
        let mut bien = campos("CONVERSION");
        bien.valor_conversion = Some(Ok("49.90".parse().unwrap()));
        bien.moneda = Some("EUR".to_owned());
        let evento = ContenidoEvento::normalizar(bien).unwrap();
        assert_eq!(evento.valor_conversion, Some("49.9".parse().unwrap()));
        assert_eq!(evento.moneda, Some(Moneda::EUR));
    }

    #[test]
    fn nul_bytes_and_overlong_strings_are_refused() {
        let mut c = campos("CLICK");
        c.id_oferta = Some("a\0b".to_owned());
        c.url = Some("x".repeat(MAX_URL + 1));
        let errores = ContenidoEvento::normalizar(c).unwrap_err();
        assert_eq!(errores.len(), 2, "{errores:?}");
    }

    #[test]
    fn equal_content_has_equal_hash_whatever_the_spelling() {
        let mut a = campos("click");
        a.parametros_tracking =
            Some(serde_json::from_str(r#"{"utm_source":"x","utm_medium":{"b":1,"a":2}}"#).unwrap());
        a.timestamp = Some("2026-11-28T06:22:56+00:00".to_owned());
        let mut b = campos(" CLICK");
        b.parametros_tracking =
            Some(serde_json::from_str(r#"{"utm_medium":{"a":2,"b":1},"utm_source":"x"}"#).unwrap());
        b.timestamp = Some("2026-11-28T01:22:56-05:00".to_owned());
        let (a, b) = (
            ContenidoEvento::normalizar(a).unwrap(),
            ContenidoEvento::normalizar(b).unwrap(),
        );
        assert_eq!(a.hash(), b.hash());
        let mut c = b.clone();
        c.id_oferta = Some("OFERTA_1".to_owned());
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn dedup_key_prefers_the_partners_id() {
        let mut c = campos("CLICK");
        c.id_evento_cliente = Some("evt-1".to_owned());
        let evento = ContenidoEvento::normalizar(c).unwrap();
        let hash = evento.hash();
        assert_eq!(
            evento.clave_dedup(&hash),
            r#"cliente:["AFILIADO_001","evt-1"]"#
        );
        let sin_id = ContenidoEvento::normalizar(campos("CLICK")).unwrap();
        let hash = sin_id.hash();
        assert_eq!(sin_id.clave_dedup(&hash), format!("hash:{hash}"));
    }

    #[test]
    fn message_key_is_the_campaign_or_the_affiliate() {
        let mut c = campos("CLICK");
        let campana = Uuid::new_v4();
        c.id_campana = Some(campana.to_string().to_uppercase());
        assert_eq!(
            ContenidoEvento::normalizar(c).unwrap().clave_mensaje(),
            campana.to_string()
        );
        assert_eq!(
            ContenidoEvento::normalizar(campos("CLICK"))
                .unwrap()
                .clave_mensaje(),
            "AFILIADO_001"
        );
    }
}
