//! Whether an event gets in: who may speak for an affiliate (authentication of the source),
//! and the business rules that discard an event that is authentic but not countable.

use std::time::Duration;

use access::domain::{Alcance, ClaveDeAfiliado};
use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    afiliados::Perfil,
    evento::{ContenidoEvento, FuenteEvento},
    firma::{Firma, FirmaRechazada, UsoDeFirma},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reglas {
    /// How far a timestamped webhook signature may be from the server's clock.
    pub tolerancia_firma: Duration,
    /// Events older than this are discarded: outside any attribution window.
    pub ventana_atribucion: Duration,
    /// Events this far in the future are discarded: a partner's clock is wrong.
    pub desfase_futuro: Duration,
}

impl Default for Reglas {
    fn default() -> Self {
        Self {
            tolerancia_firma: Duration::from_secs(300),
            ventana_atribucion: Duration::from_secs(30 * 24 * 3600),
            desfase_futuro: Duration::from_secs(300),
        }
    }
}

/// Why a request may not speak for the affiliate it names. Nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rechazo {
    /// 403.
    #[error("el afiliado '{0}' no está registrado")]
    AfiliadoDesconocido(String),
    /// 403.
    #[error("el afiliado '{afiliado}' no puede enviar eventos desde {fuente}")]
    FuenteNoPermitida {
        afiliado: String,
        fuente: FuenteEvento,
    },
    /// 401.
    #[error("la api_key falta o no es una de las del afiliado '{0}'")]
    ApiKey(String),
    /// 401: where access is enforced, every event needs a partner key (or, from a webhook,
    /// its signature).
    #[error(
        "los eventos de {fuente} necesitan una clave de afiliado en `Authorization: Bearer` \
         (events:write{publica})"
    )]
    ClaveRequerida {
        fuente: FuenteEvento,
        publica: &'static str,
    },
    /// 403.
    #[error(
        "la clave {id_clave} es del afiliado {propio}; no puede enviar eventos de '{afiliado}'"
    )]
    ClaveDeOtroAfiliado {
        id_clave: String,
        propio: String,
        afiliado: String,
    },
    /// 403.
    #[error("la clave {id_clave} no tiene el alcance {alcance} que piden los eventos de {fuente}")]
    SinAlcance {
        id_clave: String,
        alcance: Alcance,
        fuente: FuenteEvento,
    },
    /// 401.
    #[error(transparent)]
    Firma(#[from] FirmaRechazada),
}

/// The credentials a request carries, whatever its source.
#[derive(Debug, Clone, Copy)]
pub struct Credenciales<'a> {
    /// The partner key of the request (`Authorization: Bearer ap_…`), already checked against
    /// the key store.
    pub clave: Option<&'a ClaveDeAfiliado>,
    /// Whether access is enforced: then plain `api_keys` are not accepted and an event without
    /// a partner key (or a webhook signature) is refused. Off only in development mode.
    pub exigida: bool,
    /// `api_key` from the body, or the `X-API-Key` header.
    pub api_key: Option<&'a str>,
    /// `X-Webhook-Signature`, already parsed (a malformed one never gets here).
    pub firma: Option<&'a Firma>,
    /// The raw request body, exactly as received: what the signature covers.
    pub cuerpo: &'a [u8],
}

/// Checks that the request may speak for `perfil` from the event's source. For a timestamped
/// webhook signature, returns its use, to be recorded with the event.
pub fn autenticar(
    perfil: &Perfil,
    fuente: FuenteEvento,
    credenciales: Credenciales<'_>,
    reglas: &Reglas,
    ahora: DateTime<Utc>,
) -> Result<Option<UsoDeFirma>, Rechazo> {
    if !perfil.permite_fuente(fuente) {
        return Err(Rechazo::FuenteNoPermitida {
            afiliado: perfil.id_afiliado.clone(),
            fuente,
        });
    }
    if let Some(clave) = credenciales.clave {
        return autenticar_con_clave(perfil, fuente, clave, credenciales, reglas, ahora);
    }
    exigir_credencial(fuente, credenciales)?;
    match fuente {
        FuenteEvento::WebTag | FuenteEvento::MobileSdk => Ok(None),
        FuenteEvento::ApiDirect => {
            let valida = credenciales
                .api_key
                .is_some_and(|dada| perfil.api_keys.iter().any(|k| iguales(k.revelar(), dada)));
            if valida {
                Ok(None)
            } else {
                Err(Rechazo::ApiKey(perfil.id_afiliado.clone()))
            }
        }
        FuenteEvento::Webhook => verificar_firma(perfil, credenciales, reglas, ahora),
    }
}

/// Where access is enforced, a request with neither a partner key nor a webhook signature is
/// refused before anything else is asked of it (401 comes before 403: who it claims to be is
/// not looked up for a caller who has not said who it is).
pub fn exigir_credencial(
    fuente: FuenteEvento,
    credenciales: Credenciales<'_>,
) -> Result<(), Rechazo> {
    if !credenciales.exigida || credenciales.clave.is_some() {
        return Ok(());
    }
    match fuente {
        FuenteEvento::Webhook if credenciales.firma.is_none() => {
            Err(FirmaRechazada::Ausente.into())
        }
        FuenteEvento::Webhook => Ok(()),
        FuenteEvento::WebTag | FuenteEvento::MobileSdk => Err(Rechazo::ClaveRequerida {
            fuente,
            publica: " o events:public",
        }),
        FuenteEvento::ApiDirect => Err(Rechazo::ClaveRequerida {
            fuente,
            publica: "",
        }),
    }
}

/// A request with a partner key speaks for the key's affiliate only, from the sources its
/// scopes allow: `events:write` any, `events:public` the public ones, which never pay a
/// commission. A webhook is still held to its signature, whatever key comes with it.
fn autenticar_con_clave(
    perfil: &Perfil,
    fuente: FuenteEvento,
    clave: &ClaveDeAfiliado,
    credenciales: Credenciales<'_>,
    reglas: &Reglas,
    ahora: DateTime<Utc>,
) -> Result<Option<UsoDeFirma>, Rechazo> {
    if clave.id_afiliado != perfil.id_afiliado {
        return Err(Rechazo::ClaveDeOtroAfiliado {
            id_clave: clave.id_clave.clone(),
            propio: clave.id_afiliado.clone(),
            afiliado: perfil.id_afiliado.clone(),
        });
    }
    let publica = matches!(fuente, FuenteEvento::WebTag | FuenteEvento::MobileSdk);
    if !(clave.permite(Alcance::EventosEscritura)
        || publica && clave.permite(Alcance::EventosPublicos))
    {
        return Err(Rechazo::SinAlcance {
            id_clave: clave.id_clave.clone(),
            alcance: Alcance::EventosEscritura,
            fuente,
        });
    }
    match fuente {
        FuenteEvento::Webhook => verificar_firma(perfil, credenciales, reglas, ahora),
        _ => Ok(None),
    }
}

fn verificar_firma(
    perfil: &Perfil,
    credenciales: Credenciales<'_>,
    reglas: &Reglas,
    ahora: DateTime<Utc>,
) -> Result<Option<UsoDeFirma>, Rechazo> {
    let firma = credenciales.firma.ok_or(FirmaRechazada::Ausente)?;
    Ok(firma.verificar(
        credenciales.cuerpo,
        &perfil.secretos_webhook,
        ahora,
        reglas.tolerancia_firma,
    )?)
}

/// Compares digests, so the time taken depends neither on where the keys differ nor on
/// their lengths.
fn iguales(esperada: &str, dada: &str) -> bool {
    Sha256::digest(esperada.as_bytes())
        .ct_eq(&Sha256::digest(dada.as_bytes()))
        .into()
}

/// A business rule that discards an authentic event: it is recorded (201, `exito:false`,
/// `DESCARTADO`) but never published or counted.
pub fn motivo_descarte(
    perfil: &Perfil,
    evento: &ContenidoEvento,
    reglas: &Reglas,
    ahora: DateTime<Utc>,
) -> Option<String> {
    if !perfil.permite_tipo(evento.tipo_evento) {
        return Some(format!(
            "El programa del afiliado '{}' no incluye eventos {}",
            perfil.id_afiliado, evento.tipo_evento
        ));
    }
    let cuando = evento.timestamp?;
    let delta = |d: Duration| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
    if cuando > ahora + delta(reglas.desfase_futuro) {
        return Some(format!(
            "El timestamp {cuando} está en el futuro (más de {} s después de la hora del servidor)",
            reglas.desfase_futuro.as_secs()
        ));
    }
    if cuando < ahora - delta(reglas.ventana_atribucion) {
        return Some(format!(
            "El evento de {cuando} está fuera de la ventana de atribución de {} días",
            reglas.ventana_atribucion.as_secs() / 86_400
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        afiliados::Directorio,
        evento::{CamposEvento, TipoEvento},
        firma::{firmar_con_tiempo, firmar_simple},
    };

    const YAML: &str = r#"
niveles: { basic: { eventos_por_minuto: 10 } }
afiliados:
  API: { api_keys: [clave-1, clave-2], tipos_evento: [CLICK] }
  HOOK: { secretos_webhook: [s-nuevo, s-viejo], fuentes: [WEBHOOK] }
"#;

    fn perfil(id: &str) -> Perfil {
        Directorio::from_yaml(YAML).unwrap().perfil(id).unwrap()
    }

    fn ahora() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn sin_credenciales(cuerpo: &[u8]) -> Credenciales<'_> {
        Credenciales {
            clave: None,
            exigida: false,
            api_key: None,
            firma: None,
            cuerpo,
        }
    }

    #[test]
    fn api_direct_needs_one_of_the_affiliates_keys() {
        let reglas = Reglas::default();
        let api = perfil("API");
        let con = |k| Credenciales {
            api_key: Some(k),
            ..sin_credenciales(b"{}")
        };
        assert!(
            autenticar(
                &api,
                FuenteEvento::ApiDirect,
                con("clave-2"),
                &reglas,
                ahora()
            )
            .is_ok()
        );
        for mala in ["clave-3", "", "clave-1 "] {
            assert_eq!(
                autenticar(&api, FuenteEvento::ApiDirect, con(mala), &reglas, ahora()),
                Err(Rechazo::ApiKey("API".into()))
            );
        }
        assert!(
            autenticar(
                &api,
                FuenteEvento::ApiDirect,
                sin_credenciales(b"{}"),
                &reglas,
                ahora()
            )
            .is_err()
        );
        let desconocido = Directorio::from_yaml(YAML).unwrap().perfil("OTRO").unwrap();
        assert!(matches!(
            autenticar(
                &desconocido,
                FuenteEvento::ApiDirect,
                con("clave-1"),
                &reglas,
                ahora()
            ),
            Err(Rechazo::FuenteNoPermitida { .. })
        ));
    }

    #[test]
    fn webhooks_need_a_valid_signature_and_only_webhooks_are_allowed() {
        let reglas = Reglas::default();
        let hook = perfil("HOOK");
        let cuerpo = br#"{"a":1}"#;
        let simple = Firma::parse(&firmar_simple(b"s-viejo", cuerpo)).unwrap();
        let con = |firma| Credenciales {
            firma: Some(firma),
            ..sin_credenciales(cuerpo)
        };
        assert_eq!(
            autenticar(&hook, FuenteEvento::Webhook, con(&simple), &reglas, ahora()),
            Ok(None)
        );
        let t = ahora().timestamp();
        let con_tiempo = Firma::parse(&firmar_con_tiempo(b"s-nuevo", t, cuerpo)).unwrap();
        assert!(matches!(
            autenticar(
                &hook,
                FuenteEvento::Webhook,
                con(&con_tiempo),
                &reglas,
                ahora()
            ),
            Ok(Some(_))
        ));
        let ajena = Firma::parse(&firmar_simple(b"otro", cuerpo)).unwrap();
        assert_eq!(
            autenticar(&hook, FuenteEvento::Webhook, con(&ajena), &reglas, ahora()),
            Err(Rechazo::Firma(FirmaRechazada::NoCoincide))
        );
        assert_eq!(
            autenticar(
                &hook,
                FuenteEvento::Webhook,
                sin_credenciales(cuerpo),
                &reglas,
                ahora()
            ),
            Err(Rechazo::Firma(FirmaRechazada::Ausente))
        );
        assert!(matches!(
            autenticar(
                &hook,
                FuenteEvento::WebTag,
                sin_credenciales(cuerpo),
                &reglas,
                ahora()
            ),
            Err(Rechazo::FuenteNoPermitida { .. })
        ));
    }

    #[test]
    fn events_outside_the_program_or_the_time_window_are_discarded() {
        let reglas = Reglas::default();
        let evento = |tipo: &str, ts: Option<&str>| {
            ContenidoEvento::normalizar(CamposEvento {
                tipo_evento: Some(tipo.into()),
                id_afiliado: Some("API".into()),
                timestamp: ts.map(Into::into),
                ..CamposEvento::default()
            })
            .unwrap()
        };
        let api = perfil("API");
        assert_eq!(
            motivo_descarte(&api, &evento("CLICK", None), &reglas, ahora()),
            None
        );
        assert!(
            motivo_descarte(&api, &evento("CONVERSION", None), &reglas, ahora())
                .unwrap()
                .contains("CONVERSION")
        );
        let futuro = (ahora() + TimeDelta::minutes(6)).to_rfc3339();
        assert!(motivo_descarte(&api, &evento("CLICK", Some(&futuro)), &reglas, ahora()).is_some());
        let casi = (ahora() + TimeDelta::minutes(4)).to_rfc3339();
        assert!(motivo_descarte(&api, &evento("CLICK", Some(&casi)), &reglas, ahora()).is_none());
        let viejo = (ahora() - TimeDelta::days(31)).to_rfc3339();
        assert!(motivo_descarte(&api, &evento("CLICK", Some(&viejo)), &reglas, ahora()).is_some());
        assert_eq!(TipoEvento::Click.code(), "CLICK");
    }
}
