//! What a partner key may do: its scopes, named on the wire as Stripe's restricted keys and
//! GitHub's fine-grained tokens name theirs (`resource:access`).

use std::{collections::BTreeSet, fmt};

/// One scope of a partner key. A secret key (`ap_sk_`) holds every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alcance {
    /// Read the affiliate's own payments and their traces.
    PagosLectura,
    /// Create payments for the affiliate.
    PagosEscritura,
    /// Read the affiliate's own campaigns and their metrics.
    CampanasLectura,
    /// Create and manage the affiliate's own campaigns.
    CampanasEscritura,
    /// Read the status, statistics and failures of the affiliate's own tracking events.
    EventosLectura,
    /// Send tracking events from any source (and conversions, which pay commissions) as the
    /// affiliate.
    EventosEscritura,
    /// Send events from the public sources only (`WEB_TAG`, `MOBILE_SDK`), which never pay a
    /// commission: the scope of a key that sits in a web page or an app, as Stripe's
    /// publishable keys do.
    EventosPublicos,
    /// Read the affiliate's own report figures.
    ReportesLectura,
}

impl Alcance {
    pub const TODOS: [Self; 8] = [
        Self::PagosLectura,
        Self::PagosEscritura,
        Self::CampanasLectura,
        Self::CampanasEscritura,
        Self::EventosLectura,
        Self::EventosEscritura,
        Self::EventosPublicos,
        Self::ReportesLectura,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::PagosLectura => "payments:read",
            Self::PagosEscritura => "payments:write",
            Self::CampanasLectura => "campaigns:read",
            Self::CampanasEscritura => "campaigns:write",
            Self::EventosLectura => "events:read",
            Self::EventosEscritura => "events:write",
            Self::EventosPublicos => "events:public",
            Self::ReportesLectura => "reports:read",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::TODOS.into_iter().find(|a| a.code() == code)
    }

    /// A comma-separated list (`payments:read,payments:write`); the unknown names are the error.
    pub fn parse_list(raw: &str) -> Result<BTreeSet<Self>, Vec<String>> {
        let mut alcances = BTreeSet::new();
        let mut desconocidos = Vec::new();
        for nombre in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match Self::from_code(nombre) {
                Some(alcance) => {
                    alcances.insert(alcance);
                }
                None => desconocidos.push(nombre.to_owned()),
            }
        }
        if desconocidos.is_empty() {
            Ok(alcances)
        } else {
            Err(desconocidos)
        }
    }

    /// Every scope's name, for error messages and `--help`.
    pub fn nombres() -> String {
        Self::TODOS.map(Self::code).join(", ")
    }
}

impl fmt::Display for Alcance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_reads_back_from_its_name() {
        for alcance in Alcance::TODOS {
            assert_eq!(Alcance::from_code(alcance.code()), Some(alcance));
        }
    }

    #[test]
    fn a_list_with_unknown_names_names_them() {
        assert_eq!(
            Alcance::parse_list("payments:read, events:write"),
            Ok([Alcance::PagosLectura, Alcance::EventosEscritura].into())
        );
        assert_eq!(
            Alcance::parse_list("payments:read,payments:delete,admin"),
            Err(vec!["payments:delete".to_owned(), "admin".to_owned()])
        );
    }
}
