//! PostgreSQL persistence of campaigns (state change + outbox row in one transaction).

pub mod repositorio;
