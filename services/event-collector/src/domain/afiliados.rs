//! Affiliates are configuration, not code: who may send which events from which sources,
//! with which credentials, at which rate. Read from YAML (a file locally, a Secret in the
//! chart); an affiliate that is not configured gets the default tier and the public sources.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::{
    evento::{FuenteEvento, TipoEvento},
    limite::Politica,
};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigAfiliados {
    /// Rate tiers by name (`basic`, `premium`, `enterprise`, or any other).
    pub niveles: BTreeMap<String, Nivel>,
    /// The tier of an affiliate that is not configured.
    #[serde(default = "nivel_basico")]
    pub nivel_por_defecto: String,
    /// Whether an affiliate that is not configured may send events at all (public sources only).
    #[serde(default = "si")]
    pub aceptar_desconocidos: bool,
    #[serde(default)]
    pub afiliados: BTreeMap<String, Afiliado>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nivel {
    /// Events per window; also the largest burst.
    pub eventos_por_minuto: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Afiliado {
    #[serde(default = "nivel_basico")]
    pub nivel: String,
    /// Event types this affiliate's program includes; absent means all of them.
    #[serde(default)]
    pub tipos_evento: Option<Vec<TipoEvento>>,
    /// Sources it may send from; absent means the public ones, `API_DIRECT` (with a partner
    /// key, or one of `api_keys`) and `WEBHOOK` if it has a secret.
    #[serde(default)]
    pub fuentes: Option<Vec<FuenteEvento>>,
    /// Plain keys for `API_DIRECT`, as the original system had them: accepted in development
    /// mode only (a cluster takes partner keys from the key store, `ap_sk_…`/`ap_rk_…`).
    #[serde(default)]
    pub api_keys: Vec<Secreto>,
    /// Secrets for `WEBHOOK` signatures; several during a rotation.
    #[serde(default)]
    pub secretos_webhook: Vec<Secreto>,
}

fn nivel_basico() -> String {
    "basic".to_owned()
}

fn si() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigInvalida {
    #[error("the affiliates file is not valid YAML for this schema: {0}")]
    Yaml(String),
    #[error("tier `{nivel}` (used by {quien}) is not defined under `niveles`")]
    NivelDesconocido { nivel: String, quien: String },
    #[error("tier `{0}` allows 0 events per minute")]
    NivelVacio(String),
    #[error("affiliate `{0}` allows sources it has no credential for: {1}")]
    FuenteSinCredencial(String, FuenteEvento),
    #[error("affiliate `{0}` has an empty api key or webhook secret")]
    CredencialVacia(String),
}

/// Everything the collector needs to know about one affiliate for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perfil {
    pub id_afiliado: String,
    pub configurado: bool,
    pub nivel: String,
    pub politica: Politica,
    pub tipos_evento: Option<Vec<TipoEvento>>,
    pub fuentes: Vec<FuenteEvento>,
    pub api_keys: Vec<Secreto>,
    pub secretos_webhook: Vec<Secreto>,
}

impl Perfil {
    pub fn permite_tipo(&self, tipo: TipoEvento) -> bool {
        self.tipos_evento.as_ref().is_none_or(|t| t.contains(&tipo))
    }

    pub fn permite_fuente(&self, fuente: FuenteEvento) -> bool {
        self.fuentes.contains(&fuente)
    }
}

/// The loaded, checked configuration.
#[derive(Debug, Clone)]
pub struct Directorio {
    config: ConfigAfiliados,
}

const PUBLICAS: [FuenteEvento; 2] = [FuenteEvento::WebTag, FuenteEvento::MobileSdk];
const VENTANA: Duration = Duration::from_secs(60);

impl Directorio {
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigInvalida> {
        let config: ConfigAfiliados =
            serde_saphyr::from_str(yaml).map_err(|e| ConfigInvalida::Yaml(e.to_string()))?;
        Self::new(config)
    }

    pub fn new(config: ConfigAfiliados) -> Result<Self, ConfigInvalida> {
        for (nombre, nivel) in &config.niveles {
            if nivel.eventos_por_minuto == 0 {
                return Err(ConfigInvalida::NivelVacio(nombre.clone()));
            }
        }
        let existe = |nivel: &str, quien: &str| {
            if config.niveles.contains_key(nivel) {
                Ok(())
            } else {
                Err(ConfigInvalida::NivelDesconocido {
                    nivel: nivel.to_owned(),
                    quien: quien.to_owned(),
                })
            }
        };
        existe(&config.nivel_por_defecto, "nivel_por_defecto")?;
        for (id, afiliado) in &config.afiliados {
            existe(&afiliado.nivel, id)?;
            if afiliado
                .api_keys
                .iter()
                .chain(&afiliado.secretos_webhook)
                .any(|c| c.revelar().trim().is_empty())
            {
                return Err(ConfigInvalida::CredencialVacia(id.clone()));
            }
            for fuente in afiliado.fuentes.iter().flatten() {
                // API_DIRECT's credential is a partner key from the store, which a file cannot
                // know of; a webhook's secret must be here.
                let sin_credencial =
                    *fuente == FuenteEvento::Webhook && afiliado.secretos_webhook.is_empty();
                if sin_credencial {
                    return Err(ConfigInvalida::FuenteSinCredencial(id.clone(), *fuente));
                }
            }
        }
        Ok(Self { config })
    }

    /// No affiliates configured: everyone is an unknown affiliate on a 1 000-per-minute tier.
    pub fn vacio() -> Self {
        Self {
            config: ConfigAfiliados {
                niveles: BTreeMap::from([(
                    "basic".to_owned(),
                    Nivel {
                        eventos_por_minuto: 1000,
                    },
                )]),
                nivel_por_defecto: "basic".to_owned(),
                aceptar_desconocidos: true,
                afiliados: BTreeMap::new(),
            },
        }
    }

    pub fn configurados(&self) -> usize {
        self.config.afiliados.len()
    }

    /// `None` when the affiliate is unknown and unknown affiliates are refused.
    pub fn perfil(&self, id_afiliado: &str) -> Option<Perfil> {
        let politica = |nivel: &str| Politica {
            limite: self.config.niveles[nivel].eventos_por_minuto,
            ventana: VENTANA,
        };
        match self.config.afiliados.get(id_afiliado) {
            Some(afiliado) => {
                let fuentes = afiliado.fuentes.clone().unwrap_or_else(|| {
                    let mut fuentes = PUBLICAS.to_vec();
                    fuentes.push(FuenteEvento::ApiDirect);
                    if !afiliado.secretos_webhook.is_empty() {
                        fuentes.push(FuenteEvento::Webhook);
                    }
                    fuentes
                });
                Some(Perfil {
                    id_afiliado: id_afiliado.to_owned(),
                    configurado: true,
                    nivel: afiliado.nivel.clone(),
                    politica: politica(&afiliado.nivel),
                    tipos_evento: afiliado.tipos_evento.clone(),
                    fuentes,
                    api_keys: afiliado.api_keys.clone(),
                    secretos_webhook: afiliado.secretos_webhook.clone(),
                })
            }
            None if self.config.aceptar_desconocidos => Some(Perfil {
                id_afiliado: id_afiliado.to_owned(),
                configurado: false,
                nivel: self.config.nivel_por_defecto.clone(),
                politica: politica(&self.config.nivel_por_defecto),
                tipos_evento: None,
                fuentes: PUBLICAS.to_vec(),
                api_keys: Vec::new(),
                secretos_webhook: Vec::new(),
            }),
            None => None,
        }
    }

    /// The profile of an affiliate that presented a partner key: the platform knows it (it
    /// issued the key), so an affiliate missing from the file gets the default tier, the public
    /// sources and `API_DIRECT`, even where unknown affiliates are refused.
    pub fn perfil_con_clave(&self, id_afiliado: &str) -> Perfil {
        match self.perfil(id_afiliado) {
            Some(perfil) if perfil.configurado => perfil,
            _ => {
                let nivel = self.config.nivel_por_defecto.clone();
                Perfil {
                    id_afiliado: id_afiliado.to_owned(),
                    configurado: false,
                    politica: Politica {
                        limite: self.config.niveles[&nivel].eventos_por_minuto,
                        ventana: VENTANA,
                    },
                    nivel,
                    tipos_evento: None,
                    fuentes: [PUBLICAS.as_slice(), &[FuenteEvento::ApiDirect]].concat(),
                    api_keys: Vec::new(),
                    secretos_webhook: Vec::new(),
                }
            }
        }
    }
}

/// A credential read from the affiliates' file (an API key, a webhook secret): kept as
/// `secrecy` keeps it, so no `Debug` of a profile, a config or an error prints it by accident.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct Secreto(secrecy::SecretString);

impl Secreto {
    /// The secret itself, for the comparison or the HMAC that needs it.
    pub fn revelar(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl From<String> for Secreto {
    fn from(texto: String) -> Self {
        Self(texto.into())
    }
}

impl From<&str> for Secreto {
    fn from(texto: &str) -> Self {
        Self(texto.into())
    }
}

impl std::fmt::Debug for Secreto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secreto([REDACTED])")
    }
}

/// Equal when the secrets are (compared by digest, in constant time): the config's equality,
/// for tests and reloads.
impl PartialEq for Secreto {
    fn eq(&self, other: &Self) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        Sha256::digest(self.revelar().as_bytes())
            .ct_eq(&Sha256::digest(other.revelar().as_bytes()))
            .into()
    }
}

impl Eq for Secreto {}

impl AsRef<[u8]> for Secreto {
    fn as_ref(&self) -> &[u8] {
        self.revelar().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
niveles:
  basic: { eventos_por_minuto: 100 }
  premium: { eventos_por_minuto: 1000 }
afiliados:
  AFILIADO_API:
    nivel: premium
    api_keys: [sk_test_123456789]
    tipos_evento: [CLICK, CONVERSION]
  AFILIADO_WEBHOOK:
    secretos_webhook: [whsec_nuevo, whsec_viejo]
    fuentes: [WEBHOOK]
"#;

    #[test]
    fn configured_affiliates_get_their_tier_sources_and_types() {
        let directorio = Directorio::from_yaml(YAML).unwrap();
        let api = directorio.perfil("AFILIADO_API").unwrap();
        assert_eq!(api.politica.limite, 1000);
        assert!(api.permite_fuente(FuenteEvento::ApiDirect));
        assert!(api.permite_fuente(FuenteEvento::WebTag));
        assert!(!api.permite_fuente(FuenteEvento::Webhook));
        assert!(api.permite_tipo(TipoEvento::Click));
        assert!(!api.permite_tipo(TipoEvento::PageView));
        let webhook = directorio.perfil("AFILIADO_WEBHOOK").unwrap();
        assert_eq!(webhook.fuentes, vec![FuenteEvento::Webhook]);
        assert_eq!(webhook.politica.limite, 100, "the default tier is basic");
    }

    #[test]
    fn unknown_affiliates_get_the_default_tier_and_public_sources_only() {
        let directorio = Directorio::from_yaml(YAML).unwrap();
        let otro = directorio.perfil("AFILIADO_NUEVO").unwrap();
        assert!(!otro.configurado);
        assert_eq!(otro.politica.limite, 100);
        assert_eq!(otro.fuentes, PUBLICAS.to_vec());
        let cerrado =
            Directorio::from_yaml(&format!("{YAML}aceptar_desconocidos: false\n")).unwrap();
        assert_eq!(cerrado.perfil("AFILIADO_NUEVO"), None);
    }

    #[test]
    fn an_affiliate_with_a_partner_key_is_known_even_if_the_file_is_not() {
        let cerrado =
            Directorio::from_yaml(&format!("{YAML}aceptar_desconocidos: false\n")).unwrap();
        let con_clave = cerrado.perfil_con_clave("AFILIADO_NUEVO");
        assert!(!con_clave.configurado);
        assert_eq!(con_clave.politica.limite, 100);
        assert!(con_clave.permite_fuente(FuenteEvento::ApiDirect));
        assert!(!con_clave.permite_fuente(FuenteEvento::Webhook));
        // A configured affiliate keeps what its file says.
        let webhook = cerrado.perfil_con_clave("AFILIADO_WEBHOOK");
        assert_eq!(webhook.fuentes, vec![FuenteEvento::Webhook]);
    }

    #[test]
    fn broken_files_are_refused_with_a_reason() {
        for (yaml, esperado) in [
            ("niveles: {}\n", "nivel_por_defecto"),
            (
                "niveles: { basic: { eventos_por_minuto: 0 } }\n",
                "0 events",
            ),
            (
                "niveles: { basic: { eventos_por_minuto: 1 } }\nafiliados: { A: { nivel: gold } }\n",
                "gold",
            ),
            (
                "niveles: { basic: { eventos_por_minuto: 1 } }\nafiliados: { A: { fuentes: [WEBHOOK] } }\n",
                "no credential",
            ),
            (
                "niveles: { basic: { eventos_por_minuto: 1 } }\nafiliados: { A: { api_keys: [''] } }\n",
                "empty",
            ),
            (
                "niveles: { basic: { eventos_por_minuto: 1 } }\nsecretos: x\n",
                "YAML",
            ),
            ("afiliados: [", "YAML"),
        ] {
            let error = Directorio::from_yaml(yaml).unwrap_err().to_string();
            assert!(error.contains(esperado), "{yaml:?}: {error}");
        }
    }

    #[test]
    fn the_shipped_demo_file_loads() {
        let demo = include_str!("../../../../config/afiliados.demo.yaml");
        let directorio = Directorio::from_yaml(demo).unwrap();
        for id in [
            "AFILIADO_001",
            "AFILIADO_API",
            "AFILIADO_WEBHOOK",
            "AFILIADO_BASIC",
            "AFILIADO_PREMIUM",
            "AFILIADO_ENTERPRISE",
        ] {
            assert!(directorio.perfil(id).unwrap().configurado, "{id}");
        }
        let api = directorio.perfil("AFILIADO_API").unwrap();
        assert_eq!(api.api_keys, vec![Secreto::from("sk_test_123456789")]);
        assert!(
            !format!("{api:?}").contains("sk_test_123456789"),
            "a profile's Debug never prints its keys"
        );
        let basic = directorio.perfil("AFILIADO_BASIC").unwrap().politica.limite;
        let premium = directorio
            .perfil("AFILIADO_PREMIUM")
            .unwrap()
            .politica
            .limite;
        let enterprise = directorio
            .perfil("AFILIADO_ENTERPRISE")
            .unwrap()
            .politica
            .limite;
        assert!(basic < premium && premium < enterprise);
    }
}
