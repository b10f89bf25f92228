//! Support shared by this package's integration tests.

use testkit::ServiceProcess;

/// Starts `aeropartners ARGS…` (this package's binary) on `database_url` and `topic_prefix`.
pub fn start(args: &[&str], database_url: &str, topic_prefix: &str) -> ServiceProcess {
    ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_aeropartners").as_ref(),
        args,
        database_url,
        topic_prefix,
    )
    .expect("the aeropartners binary starts")
}
