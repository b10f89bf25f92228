//! The reports domain, free of I/O: the versions, the report filter and its rules, and how a
//! report of each version is computed from the rows the projection keeps.

mod filtro;
mod reporte;

pub use filtro::{Filtro, PARAMETROS};
pub use reporte::{
    Campanas, Cifra, ESTADOS_PAGO, FilaAfiliado, FilaDia, GrupoPagos, MONEDAS,
    Moneda as ResumenMoneda, ReporteV1, ReporteV2, Totales,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A version of the read model. Every replica keeps both, so serving the other one is a
/// pointer flip.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum Version {
    /// Simple: totals by state and currency.
    #[serde(rename = "v1")]
    V1,
    /// Detailed and backward compatible: every v1 field with the same value, and more.
    #[serde(rename = "v2")]
    V2,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::V1, Version::V2];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }

    /// `v1` or `v2`, exactly (as the CRD and the header spell it).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "v1" => Some(Self::V1),
            "v2" => Some(Self::V2),
            _ => None,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the active version comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fuente {
    /// A row in the reports schema; replicas learn of changes through LISTEN/NOTIFY.
    Database,
    /// The `status.activeVersion` of a `ReportVersion` resource, confirmed by the operator.
    Kubernetes,
}

/// What a replica serves, and what it knows about the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EstadoVersion {
    /// The version requests are served in.
    pub activa: Version,
    /// The version asked for (differs from `activa` while a switch waits for its target).
    pub deseada: Version,
    /// When `activa` last changed, as the source recorded it.
    pub cambiada_en: Option<DateTime<Utc>>,
    /// True while the source cannot be reached: `activa` is the last version known.
    pub desactualizada: bool,
}
