//! The operator's tests against a real kube-apiserver, and the chart rendered by helm.
//!
//! One test binary for the crate: each file here used to be a binary of its own, and every
//! binary links the whole dependency graph again (disk and link time in CI).

mod apiserver;
mod chart;
