//! Quality scenario #9, short version: the report version switches v1 ↔ v2 under load, with
//! two reports replicas, through each version source. No request may fail, no response may be
//! in a version other than the one it claims, and every switch must reach both replicas. The
//! full runs are `make scenario-9` and `make scenario-9 SCENARIO9_MODE=kubernetes`.

use std::time::Duration;

use aeropartners_tests::scenario9::{Config, Mode, Report, run};

fn config(mode: Mode) -> Config {
    Config {
        binary: env!("CARGO_BIN_EXE_aeropartners").into(),
        mode,
        rate: 60.0,
        legacy_every: 6,
        payments_rate: 10.0,
        warmup: Duration::from_secs(2),
        switches: 20,
        pause: Duration::from_millis(50),
        cooldown: Duration::from_secs(1),
    }
}

fn check(report: &Report) {
    assert!(report.requests >= 200, "the load ran: {report:?}");
    assert!(
        report.legacy_requests >= 20,
        "legacy reports ran: {report:?}"
    );
    assert_eq!(report.failed, 0, "failed requests: {report:?}");
    assert_eq!(
        report.mismatched, 0,
        "responses not in their version: {report:?}"
    );
    assert!(
        report.served_v1 > 0 && report.served_v2 > 0,
        "both versions served: {report:?}"
    );
    assert_eq!(report.switches, 20);
    assert_eq!(report.switches_not_propagated, 0, "{report:?}");
    for replica in &report.propagation {
        assert_eq!(
            replica.switches_seen, 20,
            "every switch reached {}: {report:?}",
            replica.replica
        );
    }
    assert_eq!(report.payments_failed, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_through_the_database_source_fails_no_request() {
    let report = run(&config(Mode::Database))
        .await
        .expect("the scenario runs");
    report.publish().unwrap();
    check(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_through_kubernetes_and_the_operator_fails_no_request() {
    let report = run(&config(Mode::Kubernetes))
        .await
        .expect("the scenario runs");
    report.publish().unwrap();
    check(&report);
}
