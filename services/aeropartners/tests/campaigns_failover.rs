//! The campaigns-proxy in front of real campaigns processes: the primary is killed with
//! SIGKILL and started again, and the proxy fails over to the replica and back.

use std::time::{Duration, Instant};

use testkit::{TempDatabase, eventually, free_port, pulsar_config, wait_until_ready};

mod common;

use common::start;

#[tokio::test]
async fn the_proxy_fails_over_to_the_replica_and_back_to_the_primary() {
    let database = TempDatabase::create().await;
    let pulsar = pulsar_config();
    let prefix = pulsar.pulsar_topic_prefix.clone();
    let (primary_port, replica_port, proxy_port) = (free_port(), free_port(), free_port());
    let primary_addr = format!("127.0.0.1:{primary_port}");
    let replica_addr = format!("127.0.0.1:{replica_port}");
    let proxy_addr = format!("127.0.0.1:{proxy_port}");

    let mut primary = start(
        &["campaigns", "--listen", &primary_addr],
        &database.url,
        &prefix,
    );
    let replica = start(
        &["campaigns", "--listen", &replica_addr],
        &database.url,
        &prefix,
    );
    let backends = format!("primary=http://{primary_addr},replica=http://{replica_addr}");
    let proxy_process = start(
        &[
            "campaigns-proxy",
            "--listen",
            &proxy_addr,
            "--backend",
            &backends,
            "--health-interval",
            "200ms",
        ],
        &database.url,
        &prefix,
    );
    for addr in [&primary_addr, &replica_addr, &proxy_addr] {
        wait_until_ready(&format!("http://{addr}/ready"), Duration::from_secs(60)).await;
    }
    let client = reqwest::Client::new();
    let proxy = format!("http://{proxy_addr}");
    let status = || async {
        client
            .get(format!("{proxy}/status"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(status().await["proxy"]["active_backend"], "primary");

    // Writes through the proxy, and a list with its query string.
    for i in 0..3 {
        let body = format!(
            r#"{{"nombre":"c{i}","tipo":"PROMOCIONAL","presupuesto":{{"monto":100,"moneda":"USD"}},"fecha_inicio":"2030-01-01T00:00:00Z","fecha_fin":"2030-02-01T00:00:00Z","id_afiliado":"af-proxy"}}"#
        );
        let created = client
            .post(format!("{proxy}/api/campaigns/"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("proxy-{i}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let list: serde_json::Value = client
        .get(format!(
            "{proxy}/api/campaigns?limit=2&id_afiliado=af-proxy"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (list["total"].as_i64(), list["limit"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(list["campanas"].as_array().unwrap().len(), 2);

    // Kill the primary (SIGKILL): reads keep succeeding through the replica.
    primary.kill();
    let killed = Instant::now();
    for _ in 0..20 {
        let answer = client
            .get(format!("{proxy}/api/campaigns?id_afiliado=af-proxy"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "a read failed after the primary died");
    }
    let after_kill = status().await;
    assert_eq!(after_kill["proxy"]["active_backend"], "replica");
    assert_eq!(after_kill["failover"]["total_failovers"], 1);
    assert_eq!(after_kill["backends"]["primary"]["ok"], false);
    println!(
        "failover observed {:.0} ms after SIGKILL",
        killed.elapsed().as_secs_f64() * 1000.0
    );

    // Start the primary again on its port: the proxy fails back once it is healthy.
    let primary_again = start(
        &["campaigns", "--listen", &primary_addr],
        &database.url,
        &prefix,
    );
    wait_until_ready(
        &format!("http://{primary_addr}/ready"),
        Duration::from_secs(60),
    )
    .await;
    eventually(
        "failback to the primary",
        Duration::from_secs(10),
        || async { status().await["proxy"]["active_backend"] == "primary" },
    )
    .await;
    assert_eq!(status().await["failover"]["total_failovers"], 2);
    let answer = client
        .get(format!("{proxy}/api/campaigns?id_afiliado=af-proxy"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    drop((proxy_process, replica, primary_again));
    database.drop_database().await;
}
