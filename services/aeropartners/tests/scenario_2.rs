//! Quality scenario #2, short version: a campaigns instance is SIGKILLed under load; nothing
//! acknowledged may be lost, no event lost, no effect applied twice, availability ≥ 99.99 %.
//! The full run is `make scenario-2`.

use std::time::Duration;

use aeropartners_tests::scenario2::{Config, run};

#[tokio::test]
async fn a_campaigns_instance_dies_under_load_and_nothing_is_lost() {
    let report = run(&Config {
        binary: env!("CARGO_BIN_EXE_aeropartners").into(),
        rate: 50.0,
        duration: Duration::from_secs(8),
        kill_at: Duration::from_secs(3),
        down_for: Duration::from_secs(2),
    })
    .await
    .expect("the scenario runs");
    report.publish().unwrap();
    assert!(report.requests >= 300, "the load ran: {report:?}");
    assert_eq!(
        report.integrity.writes_lost, 0,
        "acknowledged writes lost: {report:?}"
    );
    assert_eq!(report.integrity.events_lost, 0, "events lost: {report:?}");
    assert_eq!(
        report.integrity.duplicated_effects, 0,
        "effects applied twice: {report:?}"
    );
    assert!(
        report.failover_ms.is_some(),
        "the replica answered after the kill: {report:?}"
    );
    assert!(
        report.failback_ms.is_some(),
        "the primary answered again: {report:?}"
    );
    assert!(report.availability_pct >= 99.99, "availability: {report:?}");
}
