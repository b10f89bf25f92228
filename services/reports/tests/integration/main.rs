//! The reports service's integration tests against real PostgreSQL and Pulsar.
//!
//! One test binary for the crate: each file here used to be a binary of its own, and every
//! binary links the whole dependency graph again (disk and link time in CI).

mod common;

mod api;
mod convergence;
mod legacy;
mod tenancy;
