//! The access context's adapters: the key store in PostgreSQL and the Kubernetes API server
//! as the authority on operators.

pub mod almacen;
pub mod kubernetes;
