//! End-to-end scenario runners and the load generator behind `make bench` / `make scenario-2`.

pub mod abuse;
pub mod cluster;
pub mod cpu;
pub mod e2e;
pub mod faults;
pub mod fixtures;
pub mod local_platform;
pub mod measure;
pub mod pg;
pub mod postman;
pub mod progress;
pub mod scenario2;
pub mod scenario3;
pub mod scenario9;
pub mod secrets;
