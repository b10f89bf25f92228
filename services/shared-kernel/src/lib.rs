//! The shared kernel: the few value objects that mean the same thing in every bounded context
//! (payments, campaigns, the event collector). Pure: no I/O, no clock, no framework beyond
//! serde and the OpenAPI schema derive.

mod dinero;

pub use dinero::{Dinero, DineroError, Moneda, MonedaNoSoportada, a_lo_sumo_dos_decimales};
