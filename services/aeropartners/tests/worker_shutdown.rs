//! The payments worker told to stop in the middle of a backlog (issue 7: it went on charging
//! the whole queue for more than six minutes). It must finish only the charges in flight, exit
//! well within the chart's 30 s termination grace, and leave the rest to the next worker:
//! every payment charged, none charged twice.

use std::time::{Duration, Instant};

use testkit::{TempDatabase, count, eventually, free_port, pulsar_config};

const PAYMENTS: usize = 240;

mod common;

use common::start;

async fn terminal(pool: &sqlx::PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM payments.pagos WHERE estado IN ('EXITOSO', 'FALLIDO')",
    )
    .await
}

#[tokio::test]
async fn a_stopped_worker_hands_its_backlog_to_the_next_one() {
    let database = TempDatabase::create().await;
    let prefix = pulsar_config().pulsar_topic_prefix;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let api_addr = format!("127.0.0.1:{}", free_port());
    let _api = start(&["payments", "--listen", &api_addr], &database.url, &prefix);
    testkit::wait_until_ready(&format!("http://{api_addr}/ready"), Duration::from_secs(30)).await;

    // 4 charges at a time, 200-400 ms each: a backlog of about 20 s. The sweeper looks for
    // payments waiting longer than 1 s, so it has a batch of its own in hand at the SIGTERM.
    let first_addr = format!("127.0.0.1:{}", free_port());
    let mut first = start(
        &[
            "payments-worker",
            "--listen",
            &first_addr,
            "--concurrency",
            "4",
            "--latencia-min",
            "200ms",
            "--latencia-max",
            "400ms",
            "--stalled-after",
            "1s",
        ],
        &database.url,
        &prefix,
    );
    testkit::wait_until_ready(
        &format!("http://{first_addr}/ready"),
        Duration::from_secs(30),
    )
    .await;

    let client = reqwest::Client::new();
    for i in 0..PAYMENTS {
        let answer = client
            .post(format!("http://{api_addr}/pagos"))
            .json(&serde_json::json!({
                "id_afiliado": format!("af-{}", i % 7),
                "monto": 10.5,
                "moneda": "USD",
                "referencia_pago": format!("shutdown-{i}"),
            }))
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "{}",
            answer.text().await.unwrap()
        );
    }
    eventually(
        "the first worker charges 40 payments",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            async move { terminal(&pool).await >= 40 }
        },
    )
    .await;

    let asked = Instant::now();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &first.0.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = loop {
        if let Some(status) = first.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the worker did not exit within the 30 s termination grace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stopped_after = asked.elapsed();
    assert!(status.success(), "a drained worker exits cleanly: {status}");
    let charged_by_first = terminal(&pool).await;
    assert!(
        charged_by_first < PAYMENTS as i64 / 2,
        "the backlog was charged instead of handed back ({charged_by_first} in {stopped_after:?})"
    );

    let second_addr = format!("127.0.0.1:{}", free_port());
    let _second = start(
        &[
            "payments-worker",
            "--listen",
            &second_addr,
            "--latencia-min",
            "0ms",
            "--latencia-max",
            "5ms",
        ],
        &database.url,
        &prefix,
    );
    eventually("every payment charged", Duration::from_secs(90), || {
        let pool = pool.clone();
        async move { terminal(&pool).await == PAYMENTS as i64 }
    })
    .await;
    let results = count(
        &pool,
        "SELECT count(*) FROM payments.outbox WHERE event_type IN ('PagoExitoso', 'PagoFallido')",
    )
    .await;
    assert_eq!(
        results, PAYMENTS as i64,
        "one result per payment, none twice"
    );
    println!(
        "worker stopped {stopped_after:?} after SIGTERM with {charged_by_first} of {PAYMENTS} charged"
    );
    pool.close().await;
    database.drop_database().await;
}
