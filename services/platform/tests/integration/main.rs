//! The platform crate's integration tests against real PostgreSQL and Pulsar (`consumer_logs`
//! stays a binary of its own: it installs the process-wide subscriber).
//!
//! The rest share this one binary: each file here used to be a binary of its own, and every
//! binary links the whole dependency graph again (disk and link time in CI).

mod access_log;
mod consumer;
mod dead_letters;
mod idempotency;
mod retention;
mod seedwork;
mod serve;
