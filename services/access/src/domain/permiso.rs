//! What an operator action requires of Kubernetes RBAC, as kube-rbac-proxy asks it: a verb on a
//! resource (and subresource) of the `aeropartners.io` group in the release's namespace. RBAC
//! matches these as strings, so the resources need not exist as objects; the chart's
//! `<fullname>-viewer` and `<fullname>-operations` Roles grant them (docs/security.md), and a
//! user gets them the Kubernetes way: `kubectl create rolebinding`.

/// The API group every permission names.
pub const GRUPO: &str = "aeropartners.io";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permiso {
    pub verbo: &'static str,
    pub recurso: &'static str,
    pub subrecurso: Option<&'static str>,
}

impl Permiso {
    const fn new(verbo: &'static str, recurso: &'static str) -> Self {
        Self {
            verbo,
            recurso,
            subrecurso: None,
        }
    }

    const fn sub(verbo: &'static str, recurso: &'static str, subrecurso: &'static str) -> Self {
        Self {
            verbo,
            recurso,
            subrecurso: Some(subrecurso),
        }
    }

    /// Read every affiliate's payments, traces and per-minute figures.
    pub const LEER_PAGOS: Self = Self::new("get", "payments");
    /// Revert a successful payment.
    pub const REVERTIR_PAGO: Self = Self::sub("create", "payments", "revert");
    /// Read every affiliate's campaigns.
    pub const LEER_CAMPANAS: Self = Self::new("get", "campaigns");
    /// Create, change and end any affiliate's campaigns.
    pub const ADMINISTRAR_CAMPANAS: Self = Self::new("update", "campaigns");
    /// Read every affiliate's tracking events, statistics and failures.
    pub const LEER_EVENTOS: Self = Self::new("get", "events");
    /// Make a failed event's publication due again.
    pub const REINTENTAR_EVENTO: Self = Self::sub("create", "events", "retry");
    /// Read every affiliate's report figures and the legacy reporting API.
    pub const LEER_REPORTES: Self = Self::new("get", "reports");
    /// Switch the legacy reporting's data service.
    pub const CAMBIAR_SERVICIO_DATOS: Self = Self::sub("update", "reports", "dataservice");
    /// Create, list and revoke partner API keys.
    pub const GESTIONAR_CLAVES: Self = Self::new("create", "affiliatekeys");
    /// Read the audit trail.
    pub const LEER_AUDITORIA: Self = Self::new("get", "audit");
    /// Switch the report version: exactly the right to patch the ReportVersion (a real
    /// resource), which the API server checks itself when reports patches it with the
    /// operator's token.
    pub const CAMBIAR_VERSION: Self = Self::new("patch", "reportversions");

    /// Every permission, for the chart's Roles and the documentation's table.
    pub const TODOS: [Self; 11] = [
        Self::LEER_PAGOS,
        Self::REVERTIR_PAGO,
        Self::LEER_CAMPANAS,
        Self::ADMINISTRAR_CAMPANAS,
        Self::LEER_EVENTOS,
        Self::REINTENTAR_EVENTO,
        Self::LEER_REPORTES,
        Self::CAMBIAR_SERVICIO_DATOS,
        Self::GESTIONAR_CLAVES,
        Self::LEER_AUDITORIA,
        Self::CAMBIAR_VERSION,
    ];

    /// Whether a read-only viewer holds it (the `aeropartners-viewer` Role: every `get`).
    pub fn de_lectura(self) -> bool {
        self.verbo == "get"
    }
}

impl std::fmt::Display for Permiso {
    /// `create payments/revert`, as `kubectl auth can-i` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.subrecurso {
            Some(sub) => write!(f, "{} {}/{sub}", self.verbo, self.recurso),
            None => write!(f, "{} {}", self.verbo, self.recurso),
        }
    }
}
