//! Shared building blocks ("seedwork") for every Aeropartners bounded context.
//!
//! Nothing here knows about payments, campaigns or reports: contexts plug their routers,
//! migrations, events and consumers into these pieces.

pub mod config;
pub mod db;
pub mod group_commit;
pub mod http;
pub mod idempotency;
pub mod inbox;
pub mod messaging;
pub mod outbox;
pub mod retention;
pub mod shutdown;
pub mod telemetry;
