//! Two `aeropartners reports` processes on a real PostgreSQL and a real Pulsar: `/ready` waits
//! for the backlog found at start, the replicas share the subscription without applying an
//! event twice, a switch on one reaches the other, and `reports rebuild` runs beside them.

mod common;

use std::time::Duration;

use chrono::Utc;
use platform::messaging::Envelope;
use testkit::{TempDatabase, eventually, free_port, pulsar_config};
use uuid::Uuid;

fn evento(id: Uuid, version: i64, estado: &str, hace: chrono::Duration) -> Envelope {
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: if version == 1 {
            "PagoPendiente"
        } else {
            "PagoExitoso"
        }
        .into(),
        aggregate_type: "Pago".into(),
        aggregate_id: id.to_string(),
        aggregate_version: version,
        occurred_at: Utc::now() - hace,
        correlation_id: format!("corr-{id}"),
        data: serde_json::json!({
            "id_pago": id, "id_afiliado": "af-backlog", "monto": 10.5, "moneda": "USD",
            "referencia_pago": format!("ref-{id}"), "estado": estado,
        }),
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or_default()),
        Err(_) => (0, serde_json::Value::Null),
    }
}

fn start(port: u16, db: &str, prefix: &str) -> testkit::ServiceProcess {
    common::start(
        &[
            "reports",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--instance",
            &format!("reports-{port}"),
        ],
        db,
        prefix,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_catch_up_before_ready_share_the_work_and_follow_one_switch() {
    let db = TempDatabase::create().await;
    let pulsar = pulsar_config();
    let broker = testkit::broker(&pulsar).await;

    // A backlog an hour old: 300 payments, each pending then completed, 60 events twice.
    let pagos: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    let hora = chrono::Duration::hours(1);
    let pendientes: Vec<Envelope> = pagos
        .iter()
        .map(|id| evento(*id, 1, "PENDIENTE", hora))
        .collect();
    let exitosos: Vec<Envelope> = pagos
        .iter()
        .map(|id| evento(*id, 2, "EXITOSO", hora))
        .collect();
    broker
        .publish("payments.evt.pending", &pendientes)
        .await
        .unwrap();
    broker
        .publish("payments.evt.completed", &exitosos)
        .await
        .unwrap();
    broker
        .publish("payments.evt.completed", &exitosos[..60])
        .await
        .unwrap();

    let client = reqwest::Client::new();
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let _replica_a = start(pa, &db.url, &pulsar.pulsar_topic_prefix);

    // The first time /ready says yes, the whole backlog is in the report.
    eventually("replica a ready", Duration::from_secs(90), || async {
        get(&client, &format!("{a}/ready")).await.0 == 200
    })
    .await;
    let report = get(
        &client,
        &format!("{a}/api/reports/payments?id_afiliado=af-backlog"),
    )
    .await
    .1;
    assert_eq!(
        report["total_pagos"], 300,
        "ready only once caught up: {report}"
    );
    assert_eq!(report["por_estado"]["EXITOSO"], 300);

    let _replica_b = start(pb, &db.url, &pulsar.pulsar_topic_prefix);
    testkit::wait_until_ready(&format!("{b}/ready"), Duration::from_secs(60)).await;

    // New events, shared by the two replicas (Key_Shared), each applied once.
    let nuevos: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    let ahora = chrono::Duration::zero();
    let lote: Vec<Envelope> = nuevos
        .iter()
        .map(|id| {
            let mut e = evento(*id, 1, "PENDIENTE", ahora);
            e.data["id_afiliado"] = "af-nuevo".into();
            e
        })
        .collect();
    broker.publish("payments.evt.pending", &lote).await.unwrap();
    broker.publish("payments.evt.pending", &lote).await.unwrap();
    eventually(
        "both replicas see the 100 new payments",
        Duration::from_secs(30),
        || async {
            let url = |base: &str| format!("{base}/api/reports/payments?id_afiliado=af-nuevo");
            get(&client, &url(&a)).await.1["total_pagos"] == 100
                && get(&client, &url(&b)).await.1["total_pagos"] == 100
        },
    )
    .await;
    // The second copy of each new event may still be on its way: wait until every delivery
    // (860) has been handled by one replica or the other, then check how.
    let counters = || async {
        let (ha, hb) = (
            get(&client, &format!("{a}/api/reports/health")).await.1,
            get(&client, &format!("{b}/api/reports/health")).await.1,
        );
        let sum = |field: &str| ha[field].as_u64().unwrap_or(0) + hb[field].as_u64().unwrap_or(0);
        (sum("eventos_procesados"), sum("eventos_duplicados"), hb)
    };
    eventually(
        "every delivery handled",
        Duration::from_secs(30),
        || async {
            let (aplicados, duplicados, _) = counters().await;
            aplicados + duplicados >= 600 + 60 + 200
        },
    )
    .await;
    let (aplicados, duplicados, hb) = counters().await;
    assert_eq!(
        (aplicados, duplicados),
        (600 + 100, 60 + 100),
        "every event applied once, by one replica, every copy recognised"
    );
    assert_eq!(hb["status"], "healthy");

    // One switch, through either replica, reaches both.
    let put = client
        .put(format!("{a}/api/reports/version"))
        .json(&serde_json::json!({"active": "v2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    eventually("replica b serves v2", Duration::from_secs(5), || async {
        let r = client
            .get(format!("{b}/api/reports/payments"))
            .send()
            .await
            .unwrap();
        r.headers()["x-report-version"] == "v2"
    })
    .await;
    let metrics = client
        .get(format!("{b}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("reports_version_switches_total 1")
            && metrics.contains("reports_active_version{version=\"v2\"} 1")
            && metrics.contains("reports_version_switch_seconds_count 1"),
        "the switch is in replica b's metrics:\n{metrics}"
    );
    let version_b = get(&client, &format!("{b}/api/reports/version")).await.1;
    assert_eq!(version_b["active"], "v2");
    assert_eq!(version_b["replica"], format!("reports-{pb}"));

    // A rebuild from the stored events, while both replicas serve, changes no figure.
    let antes = get(&client, &format!("{b}/api/reports/payments")).await.1;
    let rebuild = std::process::Command::new(env!("CARGO_BIN_EXE_aeropartners"))
        .args(["reports", "rebuild", "--version", "v2"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    assert!(String::from_utf8_lossy(&rebuild.stdout).contains("v2_pagos=400"));
    let despues = get(&client, &format!("{a}/api/reports/payments?x=1")).await;
    assert_eq!(despues.0, 400, "unknown parameter");
    let despues = get(&client, &format!("{a}/api/reports/payments?estado=EXITOSO"))
        .await
        .1;
    assert_eq!(despues["total_pagos"], 300);
    assert_eq!(
        get(&client, &format!("{a}/api/reports/payments")).await.1["por_afiliado"],
        antes["por_afiliado"]
    );

    drop((_replica_a, _replica_b));
    db.drop_database().await;
}
