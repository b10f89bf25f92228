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
pub mod intentos;

pub use auditoria::{Auditoria, Resultado};

/// How a service's OpenAPI document describes the credential its routes take.
pub const CREDENCIAL: &str = "Una clave de API de afiliado (`ap_sk_…`, `ap_rk_…`: \
    `aeropartners claves crear`) o un token de Kubernetes de un operador (`kubectl create \
    token`); ver docs/security.md.";

pub use domain::{Alcance, Ambito, Permiso, Principal};
pub use http::{Acceso, AuthConfig, AuthMode, ClavePresentada, Llamante, filtro_de_afiliado};
pub use infrastructure::almacen::{self, AlmacenDeClaves, NuevaClave, RegistroClave};

/// Connects a context's pool and, when configured to migrate, applies its migrations and the
/// access context's: a service whose routes take a [`Llamante`] reads keys and writes the
/// audit trail in the same database.
pub async fn conectar(
    config: &platform::config::DatabaseConfig,
    schema: &str,
    migrator: &sqlx::migrate::Migrator,
) -> anyhow::Result<sqlx::PgPool> {
    let pool = platform::db::connect_and_migrate(config, schema, migrator).await?;
    if config.migrate_on_start {
        almacen::migrate(&pool).await?;
    }
    Ok(pool)
}
