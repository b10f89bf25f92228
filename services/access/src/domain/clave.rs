//! The partner API key's format, after GitHub's tokens and Stripe's keys:
//!
//! ```text
//! ap_sk_7fQx9LkPb2Jd0sWq…(40 base62 characters)…Zr4D1a
//! └─┬─┘ └──┬───┘                                 └─┬──┘
//!  kind   key id (public: the kind + 8 characters)   CRC-32 of everything before it, base62
//! ```
//!
//! - The `ap_sk_`/`ap_rk_` prefix makes a leaked key recognisable to a secret scanner, and in a
//!   log line a person can tell a secret (`sk`, every scope of its affiliate) from a restricted
//!   key (`rk`, the scopes listed when it was made).
//! - The checksum lets a typo, a truncated paste or a random string be refused without a
//!   database lookup, and lets a scanner confirm a match offline.
//! - The key id (`ap_sk_7fQx9LkP`) is what is stored in the clear, shown in lists, logs and
//!   the audit trail. The rest of the key is never stored: only its SHA-256, since 238 random
//!   bits need no slow hash (a slow hash guards guessable passwords, not random keys).

use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this.
pub const PREFIJO: &str = "ap_";
/// Random base62 characters in a key: 40 × log2(62) ≈ 238 bits.
const ALEATORIOS: usize = 40;
/// How many of the random characters the public key id shows.
const VISIBLES: usize = 8;
/// The CRC-32 in base62 is at most 6 characters (62^6 > 2^32).
const SUMA: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What a key may do on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TipoClave {
    /// Secret key: every scope of its affiliate.
    Sk,
    /// Restricted key: only the scopes it was given.
    Rk,
}

impl TipoClave {
    pub fn code(self) -> &'static str {
        match self {
            Self::Sk => "sk",
            Self::Rk => "rk",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "sk" => Some(Self::Sk),
            "rk" => Some(Self::Rk),
            _ => None,
        }
    }
}

impl TryFrom<String> for TipoClave {
    type Error = String;

    fn try_from(code: String) -> Result<Self, Self::Error> {
        Self::from_code(&code).ok_or_else(|| format!("no key type is called {code:?}"))
    }
}

/// Why a presented string is not a key of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatoInvalido {
    #[error("la clave no empieza por ap_sk_ ni por ap_rk_")]
    Prefijo,
    #[error("la clave no tiene la longitud de una clave de Aeropartners")]
    Longitud,
    #[error("la clave contiene caracteres que no son base62")]
    Caracteres,
    #[error("la suma de control de la clave no coincide (¿copiada incompleta o con una errata?)")]
    Suma,
}

/// A whole key as a partner presents it, checked for shape and checksum but not yet against
/// the store. Its `Debug` shows only the key id.
#[derive(Clone)]
pub struct ClaveApi {
    texto: String,
    tipo: TipoClave,
}

impl std::fmt::Debug for ClaveApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClaveApi({}…)", self.id())
    }
}

impl ClaveApi {
    /// A new random key of `tipo`.
    pub fn generar(tipo: TipoClave) -> Self {
        let aleatorios: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(ALEATORIOS)
            .map(char::from)
            .collect();
        let cuerpo = format!("{PREFIJO}{}_{aleatorios}", tipo.code());
        let texto = format!("{cuerpo}{}", suma_de_control(&cuerpo));
        Self { texto, tipo }
    }

    /// Checks the shape and checksum of a presented key.
    pub fn analizar(texto: &str) -> Result<Self, FormatoInvalido> {
        let resto = texto
            .strip_prefix(PREFIJO)
            .ok_or(FormatoInvalido::Prefijo)?;
        let (tipo, resto) = resto.split_once('_').ok_or(FormatoInvalido::Prefijo)?;
        let tipo = TipoClave::from_code(tipo).ok_or(FormatoInvalido::Prefijo)?;
        if resto.len() != ALEATORIOS + SUMA {
            return Err(FormatoInvalido::Longitud);
        }
        if !resto.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FormatoInvalido::Caracteres);
        }
        let (cuerpo, suma) = texto.split_at(texto.len() - SUMA);
        if suma_de_control(cuerpo)
            .as_bytes()
            .ct_eq(suma.as_bytes())
            .into()
        {
            Ok(Self {
                texto: texto.to_owned(),
                tipo,
            })
        } else {
            Err(FormatoInvalido::Suma)
        }
    }

    pub fn tipo(&self) -> TipoClave {
        self.tipo
    }

    /// The public key id: `ap_sk_` and the first 8 random characters.
    pub fn id(&self) -> &str {
        let prefijo = PREFIJO.len() + 3;
        &self.texto[..prefijo + VISIBLES]
    }

    /// The SHA-256 of the whole key: the only thing the store keeps besides the id.
    pub fn huella(&self) -> [u8; 32] {
        Sha256::digest(self.texto.as_bytes()).into()
    }

    /// Whether `huella` (from the store) is this key's, in constant time.
    pub fn coincide(&self, huella: &[u8]) -> bool {
        self.huella().as_slice().ct_eq(huella).into()
    }

    /// The key itself, to show once at creation and never again.
    pub fn revelar(&self) -> &str {
        &self.texto
    }
}

/// Whether `texto` has the shape of a key id (`ap_sk_XXXXXXXX`).
pub fn es_id_de_clave(texto: &str) -> bool {
    let Some(resto) = texto.strip_prefix(PREFIJO) else {
        return false;
    };
    let Some((tipo, visibles)) = resto.split_once('_') else {
        return false;
    };
    TipoClave::from_code(tipo).is_some()
        && visibles.len() == VISIBLES
        && visibles.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// CRC-32 of `cuerpo`, as 6 base62 digits (left-padded with `0`).
fn suma_de_control(cuerpo: &str) -> String {
    let mut valor = crc32fast::hash(cuerpo.as_bytes());
    let mut digitos = [b'0'; SUMA];
    for digito in digitos.iter_mut().rev() {
        *digito = BASE62[(valor % 62) as usize];
        valor /= 62;
    }
    String::from_utf8_lossy(&digitos).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_generated_key_is_accepted_and_shows_its_kind_and_id() {
        for tipo in [TipoClave::Sk, TipoClave::Rk] {
            let clave = ClaveApi::generar(tipo);
            let texto = clave.revelar();
            assert_eq!(texto.len(), 3 + 3 + ALEATORIOS + SUMA);
            assert!(texto.starts_with(&format!("ap_{}_", tipo.code())));
            let leida = ClaveApi::analizar(texto).expect("its own key");
            assert_eq!(leida.tipo(), tipo);
            assert_eq!(leida.id(), &texto[..14]);
            assert!(es_id_de_clave(leida.id()));
            assert!(leida.coincide(&clave.huella()));
        }
    }

    #[test]
    fn two_keys_differ() {
        let a = ClaveApi::generar(TipoClave::Sk);
        let b = ClaveApi::generar(TipoClave::Sk);
        assert_ne!(a.revelar(), b.revelar());
        assert!(!a.coincide(&b.huella()));
    }

    #[test]
    fn debug_never_prints_the_secret_part() {
        let clave = ClaveApi::generar(TipoClave::Sk);
        let impreso = format!("{clave:?}");
        assert!(impreso.contains(clave.id()));
        assert!(!impreso.contains(&clave.revelar()[14..]));
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        let buena = ClaveApi::generar(TipoClave::Rk).revelar().to_owned();
        let cases = [
            ("sk_test_123456789", FormatoInvalido::Prefijo),
            ("ap_pk_", FormatoInvalido::Prefijo),
            (&buena[..buena.len() - 1], FormatoInvalido::Longitud),
            (&format!("{buena}x"), FormatoInvalido::Longitud),
            (&buena.replacen('_', "-", 3), FormatoInvalido::Prefijo),
            (
                &format!("{}!{}", &buena[..20], &buena[21..]),
                FormatoInvalido::Caracteres,
            ),
        ];
        for (texto, esperado) in cases {
            assert_eq!(ClaveApi::analizar(texto).unwrap_err(), esperado, "{texto}");
        }
    }

    proptest! {
        /// Any single changed character of a valid key is caught by the checksum or the shape
        /// (CRC-32 detects every single-symbol error).
        #[test]
        fn one_changed_character_is_always_caught(posicion in 6usize..52, nuevo in 0usize..62) {
            let clave = ClaveApi::generar(TipoClave::Sk);
            let mut bytes = clave.revelar().as_bytes().to_vec();
            prop_assume!(bytes[posicion] != BASE62[nuevo]);
            bytes[posicion] = BASE62[nuevo];
            let alterada = String::from_utf8(bytes).unwrap();
            prop_assert!(ClaveApi::analizar(&alterada).is_err());
        }
    }
}
