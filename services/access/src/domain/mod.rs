//! The access context's rules, free of I/O: what a key looks like, what it may do, who a caller
//! is and what each operator action requires of Kubernetes RBAC.

pub mod alcance;
pub mod clave;
pub mod permiso;
pub mod principal;

pub use alcance::Alcance;
pub use clave::{ClaveApi, FormatoInvalido, TipoClave, es_id_de_clave};
pub use permiso::Permiso;
pub use principal::{Ambito, ClaveDeAfiliado, Operador, Principal};
