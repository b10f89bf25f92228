//! Who is calling: an affiliate by one of its keys, an operator the cluster vouches for, or, on
//! a developer's machine in development mode only, nobody in particular.

use std::collections::BTreeSet;

use super::{Alcance, TipoClave};

/// The caller of a request, once its credential has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Afiliado(ClaveDeAfiliado),
    Operador(Operador),
    /// No credential, in development mode (`AUTH_MODE=development`, loopback listeners only):
    /// what the original system allowed anyone, kept so its clients run unchanged.
    Desarrollo,
}

/// A partner, by the key it presented. Never holds the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaveDeAfiliado {
    pub id_afiliado: String,
    /// The public key id, e.g. `ap_sk_7fQx9LkP`.
    pub id_clave: String,
    pub tipo: TipoClave,
    pub alcances: BTreeSet<Alcance>,
}

impl ClaveDeAfiliado {
    pub fn permite(&self, alcance: Alcance) -> bool {
        self.tipo == TipoClave::Sk || self.alcances.contains(&alcance)
    }
}

/// A person or workload authenticated by Kubernetes (TokenReview).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operador {
    pub usuario: String,
    pub uid: String,
    pub grupos: Vec<String>,
}

/// Whose data a read may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ambito {
    /// Only this affiliate's (a partner's key).
    Afiliado(String),
    /// Every affiliate's (an operator allowed the read, or development mode).
    Todos,
}

impl Ambito {
    /// The affiliate a query must be restricted to, if any.
    pub fn afiliado(&self) -> Option<&str> {
        match self {
            Self::Afiliado(id) => Some(id),
            Self::Todos => None,
        }
    }

    /// Whether an object of `id_afiliado` is visible; another tenant's object is then answered
    /// as if it did not exist (404), so its existence does not leak.
    pub fn ve(&self, id_afiliado: &str) -> bool {
        self.afiliado().is_none_or(|propio| propio == id_afiliado)
    }
}

impl Principal {
    /// How the audit trail and logs name the caller: the key id, the Kubernetes user name, or
    /// `development`.
    pub fn actor(&self) -> String {
        match self {
            Self::Afiliado(clave) => clave.id_clave.clone(),
            Self::Operador(operador) => operador.usuario.clone(),
            Self::Desarrollo => "development".to_owned(),
        }
    }

    pub fn tipo_actor(&self) -> &'static str {
        match self {
            Self::Afiliado(_) => "afiliado",
            Self::Operador(_) => "operador",
            Self::Desarrollo => "desarrollo",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clave(tipo: TipoClave, alcances: &[Alcance]) -> ClaveDeAfiliado {
        ClaveDeAfiliado {
            id_afiliado: "A1".into(),
            id_clave: "ap_rk_12345678".into(),
            tipo,
            alcances: alcances.iter().copied().collect(),
        }
    }

    #[test]
    fn a_secret_key_holds_every_scope_and_a_restricted_key_only_its_own() {
        let secreta = clave(TipoClave::Sk, &[]);
        let restringida = clave(TipoClave::Rk, &[Alcance::PagosLectura]);
        for alcance in Alcance::TODOS {
            assert!(secreta.permite(alcance));
            assert_eq!(
                restringida.permite(alcance),
                alcance == Alcance::PagosLectura
            );
        }
    }

    #[test]
    fn a_partner_sees_only_its_own_objects() {
        let propio = Ambito::Afiliado("A1".into());
        assert!(propio.ve("A1"));
        assert!(!propio.ve("A2"));
        assert!(Ambito::Todos.ve("A2"));
    }
}
