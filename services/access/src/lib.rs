//! The access context: who may do what.
//!
//! - Partners authenticate with API keys (`ap_sk_…`, `ap_rk_…`: prefixed and checksummed,
//!   stored only as a hash, shown once, scoped, revocable without a restart).
//! - Operators authenticate with a token the Kubernetes API server vouches for, and each of
//!   their actions is authorised by Kubernetes RBAC.
//! - Every privileged action is kept in an audit trail.
//!
//! docs/security.md is the user's guide to all of it.

pub mod auditoria;
pub mod cli;
pub mod domain;
pub mod http;
pub mod infrastructure;

pub use auditoria::{Auditoria, Resultado};

/// How a service's OpenAPI document describes the credential its routes take.
pub const CREDENCIAL: &str = "Una clave de API de afiliado (`ap_sk_…`, `ap_rk_…`: \
    `aeropartners claves crear`) o un token de Kubernetes de un operador (`kubectl create \
    token`); ver docs/security.md.";

pub use domain::{Alcance, Ambito, Permiso, Principal};
pub use http::{Acceso, AuthConfig, AuthMode, Llamante};
pub use infrastructure::almacen::{self, AlmacenDeClaves, NuevaClave, RegistroClave};
