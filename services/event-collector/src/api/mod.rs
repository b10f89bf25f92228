//! HTTP API of the collector (API.md §6).

pub mod dto;
mod routes;

pub use routes::{ApiState, Limites, router};
