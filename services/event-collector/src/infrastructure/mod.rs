//! PostgreSQL: the group-commit store and the read side.

pub mod almacen;
pub mod consultas;
