//! The `ReportVersion` custom resource (API.md §8): which reporting version the reports
//! replicas serve. The operator switches `status.activeVersion` only once the target version's
//! data service is ready to serve.

pub mod crd;
pub mod decide;
