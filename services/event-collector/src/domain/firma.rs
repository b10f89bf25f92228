//! Webhook signatures: `X-Webhook-Signature` proves a request body came from the partner that
//! holds the shared secret. Two forms are accepted:
//!
//! - `sha256=<hex>`: HMAC-SHA256 of the raw body (API.md §6). No timestamp, so a replay is only
//!   caught as a duplicate event (same body, same dedup key).
//! - `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`: HMAC-SHA256 of `"<t>.<body>"`, valid within a
//!   tolerance around the server's clock; each signature is accepted once (the replay cache).
//!   A sender retrying a request signs it again with a fresh `t`.
//!
//! Comparisons are constant-time (`Mac::verify_slice`). Several secrets may be active per
//! affiliate, so a secret is rotated by adding the new one, moving senders over, and then
//! removing the old one, without a request refused in between.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A header that parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firma {
    Simple { mac: Vec<u8> },
    ConTiempo { t: i64, macs: Vec<Vec<u8>> },
}

/// A header that does not: 400, the sender has a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cabecera X-Webhook-Signature mal formada: {0}")]
pub struct FirmaMalformada(pub &'static str);

/// A well-formed signature that is refused: 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FirmaRechazada {
    #[error("la firma del webhook no corresponde al cuerpo con ningún secreto del afiliado")]
    NoCoincide,
    #[error("la firma del webhook está fuera de la tolerancia de tiempo")]
    Expirada,
    #[error("falta la cabecera X-Webhook-Signature")]
    Ausente,
    #[error("esta firma de webhook ya se usó (repetición)")]
    Repetida,
}

/// Proof that a timestamped signature was used: kept until it could no longer verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsoDeFirma {
    /// The signature that verified, lower-case hex: unique per (secret, time, body).
    pub firma: String,
    pub caduca: DateTime<Utc>,
}

const LONGITUD_MAC: usize = 32;

impl Firma {
    pub fn parse(header: &str) -> Result<Self, FirmaMalformada> {
        let header = header.trim();
        if let Some(hex) = header.strip_prefix("sha256=") {
            return Ok(Firma::Simple { mac: mac_hex(hex)? });
        }
        let mut t = None;
        let mut macs = Vec::new();
        for parte in header.split(',') {
            let (clave, valor) = parte.trim().split_once('=').ok_or(FirmaMalformada(
                "se esperaba sha256=<hex> o t=<unix>,v1=<hex>",
            ))?;
            match clave {
                "t" => {
                    if t.is_some() {
                        return Err(FirmaMalformada("t aparece más de una vez"));
                    }
                    t = Some(
                        valor
                            .parse::<i64>()
                            .map_err(|_| FirmaMalformada("t no es un entero"))?,
                    );
                }
                "v1" => macs.push(mac_hex(valor)?),
                // Later schemes (v2, …) are ignored, so senders can add them before we do.
                _ => {}
            }
        }
        match (t, macs.is_empty()) {
            (Some(t), false) => Ok(Firma::ConTiempo { t, macs }),
            (None, _) => Err(FirmaMalformada("falta t=<unix>")),
            (Some(_), true) => Err(FirmaMalformada("falta v1=<hex>")),
        }
    }

    /// Checks the signature of `body` against every active secret of the affiliate. Returns
    /// the use to record for a timestamped signature (so it is never accepted again).
    pub fn verificar<S: AsRef<[u8]>>(
        &self,
        body: &[u8],
        secretos: &[S],
        ahora: DateTime<Utc>,
        tolerancia: Duration,
    ) -> Result<Option<UsoDeFirma>, FirmaRechazada> {
        match self {
            Firma::Simple { mac } => {
                if secretos.iter().any(|s| verifica(s.as_ref(), &[body], mac)) {
                    Ok(None)
                } else {
                    Err(FirmaRechazada::NoCoincide)
                }
            }
            Firma::ConTiempo { t, macs } => {
                let tolerancia_s = i64::try_from(tolerancia.as_secs()).unwrap_or(i64::MAX);
                if (ahora.timestamp() - t).abs() > tolerancia_s {
                    return Err(FirmaRechazada::Expirada);
                }
                let prefijo = format!("{t}.");
                let valida = macs.iter().find(|mac| {
                    secretos
                        .iter()
                        .any(|s| verifica(s.as_ref(), &[prefijo.as_bytes(), body], mac))
                });
                let mac = valida.ok_or(FirmaRechazada::NoCoincide)?;
                let caduca =
                    DateTime::from_timestamp(t.saturating_add(tolerancia_s), 0).unwrap_or(ahora);
                Ok(Some(UsoDeFirma {
                    firma: hex::encode(mac),
                    caduca,
                }))
            }
        }
    }
}

/// What a sender computes: `sha256=<hex>` of the body.
pub fn firmar_simple(secreto: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(calcular(secreto, &[body])))
}

/// What a sender computes: `t=<t>,v1=<hex of HMAC("t.body")>`.
pub fn firmar_con_tiempo(secreto: &[u8], t: i64, body: &[u8]) -> String {
    let prefijo = format!("{t}.");
    format!(
        "t={t},v1={}",
        hex::encode(calcular(secreto, &[prefijo.as_bytes(), body]))
    )
}

fn mac_hex(hex: &str) -> Result<Vec<u8>, FirmaMalformada> {
    let bytes =
        hex::decode(hex.trim()).map_err(|_| FirmaMalformada("la firma no es hexadecimal"))?;
    if bytes.len() != LONGITUD_MAC {
        return Err(FirmaMalformada(
            "la firma debe tener 64 dígitos hexadecimales",
        ));
    }
    Ok(bytes)
}

fn mac(secreto: &[u8], partes: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secreto).expect("HMAC accepts keys of any length");
    for parte in partes {
        mac.update(parte);
    }
    mac
}

fn calcular(secreto: &[u8], partes: &[&[u8]]) -> Vec<u8> {
    mac(secreto, partes).finalize().into_bytes().to_vec()
}

fn verifica(secreto: &[u8], partes: &[&[u8]], esperado: &[u8]) -> bool {
    mac(secreto, partes).verify_slice(esperado).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"tipo_evento":"CLICK","id_afiliado":"AFILIADO_WEBHOOK"}"#;
    const TOLERANCIA: Duration = Duration::from_secs(300);

    fn ahora() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn simple_form_verifies_with_any_active_secret() {
        let header = firmar_simple(b"nuevo", BODY);
        let firma = Firma::parse(&header).unwrap();
        assert_eq!(
            firma.verificar(BODY, &["viejo", "nuevo"], ahora(), TOLERANCIA),
            Ok(None)
        );
        assert_eq!(
            firma.verificar(BODY, &["viejo"], ahora(), TOLERANCIA),
            Err(FirmaRechazada::NoCoincide)
        );
        assert_eq!(
            firma.verificar(b"{}", &["nuevo"], ahora(), TOLERANCIA),
            Err(FirmaRechazada::NoCoincide)
        );
    }

    #[test]
    fn timestamped_form_has_a_tolerance_and_a_use_to_record() {
        let t = ahora().timestamp() - 299;
        let firma = Firma::parse(&firmar_con_tiempo(b"s", t, BODY)).unwrap();
        let uso = firma
            .verificar(BODY, &["s"], ahora(), TOLERANCIA)
            .unwrap()
            .unwrap();
        assert_eq!(uso.firma.len(), 64);
        assert_eq!(uso.caduca.timestamp(), t + 300);

        let vieja =
            Firma::parse(&firmar_con_tiempo(b"s", ahora().timestamp() - 301, BODY)).unwrap();
        assert_eq!(
            vieja.verificar(BODY, &["s"], ahora(), TOLERANCIA),
            Err(FirmaRechazada::Expirada)
        );
        let futura =
            Firma::parse(&firmar_con_tiempo(b"s", ahora().timestamp() + 301, BODY)).unwrap();
        assert_eq!(
            futura.verificar(BODY, &["s"], ahora(), TOLERANCIA),
            Err(FirmaRechazada::Expirada)
        );
    }

    #[test]
    fn the_timestamp_is_signed_too() {
        let t = ahora().timestamp();
        let header = firmar_con_tiempo(b"s", t, BODY);
        let cambiada = header.replace(&format!("t={t}"), &format!("t={}", t - 1));
        assert_eq!(
            Firma::parse(&cambiada)
                .unwrap()
                .verificar(BODY, &["s"], ahora(), TOLERANCIA),
            Err(FirmaRechazada::NoCoincide)
        );
    }

    #[test]
    fn several_v1_values_any_may_match() {
        let t = ahora().timestamp();
        let buena = firmar_con_tiempo(b"s", t, BODY);
        let v1 = buena.split("v1=").nth(1).unwrap();
        let header = format!("t={t},v1={},v1={v1}", "00".repeat(32));
        assert!(
            Firma::parse(&header)
                .unwrap()
                .verificar(BODY, &["s"], ahora(), TOLERANCIA)
                .is_ok()
        );
    }

    #[test]
    fn malformed_headers_are_told_apart_from_wrong_ones() {
        for header in [
            "",
            "sha256=",
            "sha256=zz",
            "sha256=abcd",
            "md5=0123",
            "t=abc,v1=00",
            "t=1",
            "v1=",
            "t=1,t=2,v1=0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(
                Firma::parse(header).is_err(),
                "{header:?} should be malformed"
            );
        }
        assert!(Firma::parse(&format!("sha256={}", "ab".repeat(32))).is_ok());
        assert!(Firma::parse(&format!("t=1,v1={},v0=legacy", "ab".repeat(32))).is_ok());
    }
}
