//! The `/campaigns` HTTP API (API.md §4.2).

mod dto;
mod routes;

pub use dto::CampanaDto;
pub use routes::{ApiState, router};
