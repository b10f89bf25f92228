//! Quality scenario #3, short version: payments and tracking events sent 1–3 times, shuffled,
//! by concurrent clients, with a collector replica and a payments worker SIGKILLed mid-run.
//! Every effect exactly once: payments, commissions, campaign metrics, the report; every event
//! traceable. The full run is `make scenario-3`.

use aeropartners_tests::scenario3::{Config, run};

#[tokio::test]
async fn duplicated_and_shuffled_partner_events_are_applied_exactly_once() {
    let report = run(&Config {
        binary: env!("CARGO_BIN_EXE_aeropartners").into(),
        payments: 150,
        tracking: 600,
        clients: 16,
        campaigns: 4,
        seed: 31,
    })
    .await
    .expect("the scenario runs");
    report.publish().unwrap();
    assert!(
        report.sends > report.distinct_events,
        "duplicates were sent: {report:?}"
    );
    assert!(
        report.requests_retried > 0,
        "the faults and timeouts were felt: {report:?}"
    );
    assert_eq!(report.sends_unanswered, 0, "{report:?}");
    assert_eq!(
        report.payments_stored, report.payments_expected as i64,
        "{report:?}"
    );
    assert_eq!(
        report.commissions_stored, report.commissions_expected as i64,
        "{report:?}"
    );
    assert_eq!(
        report.tracking_stored, report.tracking_expected as i64,
        "{report:?}"
    );
    assert!(
        report.campaign_mismatches.is_empty(),
        "{:?}",
        report.campaign_mismatches
    );
    assert_eq!(report.report_actual, report.report_expected, "{report:?}");
    assert_eq!(report.duplicates_applied, 0, "{report:?}");
    assert_eq!(report.events_lost, 0, "{report:?}");
    assert_eq!(report.untraceable, 0, "{report:?}");
    assert_eq!(report.inconsistent_answers, 0, "{report:?}");
}
