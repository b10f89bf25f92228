//! The payments service's integration tests against real PostgreSQL and Pulsar. Two stay
//! binaries of their own: `broker_outage` stops the broker every other test uses, and `metrics`
//! asserts the process-wide counters from zero.
//!
//! The rest share this one binary: each file here used to be a binary of its own, and every
//! binary links the whole dependency graph again (disk and link time in CI).

#[path = "../common/mod.rs"]
mod common;

mod api;
mod commissions;
mod group_commit;
mod lifecycle;
mod redelivery;
mod tenancy;
