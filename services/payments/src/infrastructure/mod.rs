//! Adapters: PostgreSQL persistence of `Pago` (with its trace and outbox rows) and the
//! simulated Stripe gateway behind the `PasarelaDePagos` port.

pub mod pasarela;
pub mod repositorio;
