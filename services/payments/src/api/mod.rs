//! The `/pagos` HTTP API (API.md §3).

mod dto;
mod routes;

pub use dto::{PagoCreado, PagoDetalle};
pub use routes::{ApiState, router};
