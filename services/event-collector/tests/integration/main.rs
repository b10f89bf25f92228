//! The event collector's integration tests against real PostgreSQL and Pulsar (`broker_outage`
//! stays a binary of its own: it stops the broker every other test uses).
//!
//! The rest share this one binary: each file here used to be a binary of its own, and every
//! binary links the whole dependency graph again (disk and link time in CI).

#[path = "../common/mod.rs"]
mod common;

mod api;
mod chart_affiliates;
mod publication;
mod tenancy;
