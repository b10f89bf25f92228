//! Broker outage: the real Pulsar broker is stopped while payments keep arriving. Every POST
//! must still succeed, and once the broker is back every event is published and every payment
//! charged, none lost and none twice.
//!
//! This file holds one test on purpose: cargo runs test binaries one after another, so no
//! other test is using the broker while this one stops it.

use std::{collections::HashSet, time::Duration};

mod common;

use common::*;
use payments::run_worker_with;
use platform::messaging::LazyBroker;
use platform::outbox::Relay;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

#[sqlx::test(migrations = false)]
async fn payments_are_accepted_while_the_broker_is_down_and_published_after(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let gateway = CountingGateway::new(Decision::Approve);
    let pulsar = pulsar_config();
    let broker = broker(&pulsar).await;
    let mut observer =
        Observer::subscribe(&pulsar, &["payments.evt.pending", "payments.evt.completed"]).await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(Relay::new(pool.clone(), broker.clone(), payments::SCHEMA).run(shutdown.clone()));
    tokio::spawn(run_worker_with(
        pool.clone(),
        LazyBroker::ready(broker.clone()),
        gateway.clone(),
        8,
        shutdown.clone(),
    ));
    let app = payments::app(
        pool.clone(),
        LazyBroker::ready(broker),
        &http_config(),
        &access::Acceso::desarrollo(),
    );

    let mut ids = Vec::new();
    for i in 0..3 {
        let answer = call(
            &app,
            "POST",
            "/pagos",
            Some(&pago_json(&format!("before-{i}"), "10")),
            &[],
        )
        .await;
        ids.push(
            answer.body["id_pago"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap(),
        );
    }
    eventually(
        "warm-up payments processed",
        Duration::from_secs(60),
        || async { count(&pool, "SELECT count(*) FROM pagos WHERE estado = 'EXITOSO'").await == 3 },
    )
    .await;

    eventually(
        "warm-up events published",
        Duration::from_secs(60),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            )
            .await
                == 0
        },
    )
    .await;

    let _guard = BrokerBack;
    infra("pulsar-stop");
    for i in 0..20 {
        let answer = call(
            &app,
            "POST",
            "/pagos",
            Some(&pago_json(&format!("during-{i}"), "20")),
            &[],
        )
        .await;
        assert_eq!(
            answer.status, 200,
            "POST during the outage: {:?}",
            answer.body
        );
        ids.push(answer.body["id_pago"].as_str().unwrap().parse().unwrap());
    }
    let ready = call(&app, "GET", "/ready", None, &[]).await;
    assert_eq!(
        ready.status, 200,
        "the API stays ready (degraded) without its broker: {:?}",
        ready.body
    );
    assert_eq!(ready.body["status"], "degraded");
    eventually(
        "publish attempts fail and are kept for retry",
        Duration::from_secs(60),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND attempts > 0",
            )
            .await
                > 0
        },
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        20
    );

    infra("pulsar-start");
    let restarted = std::time::Instant::now();
    eventually(
        "every payment processed after the outage",
        Duration::from_secs(180),
        || async {
            count(&pool, "SELECT count(*) FROM pagos WHERE estado = 'EXITOSO'").await == 23
        },
    )
    .await;
    // A figure for the record (not asserted): how long the backlog took once the broker was back.
    println!(
        "broker outage: 20 payments accepted while down; all processed {:.1} s after the broker answered again",
        restarted.elapsed().as_secs_f64()
    );
    eventually("every event published", Duration::from_secs(60), || async {
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
            == 0
    })
    .await;

    assert_eq!(gateway.charges(), 23, "each payment charged exactly once");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE event_type = 'PagoPendiente'"
        )
        .await,
        23
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE event_type = 'PagoExitoso'"
        )
        .await,
        23
    );

    // What reached the broker: every event of every payment, at least once.
    let events = observer
        .collect(Duration::from_secs(60), |seen| {
            seen.iter()
                .map(|(_, e)| e.event_id)
                .collect::<HashSet<_>>()
                .len()
                >= 46
        })
        .await;
    let distinct: HashSet<_> = events
        .iter()
        .map(|(_, e)| (e.aggregate_id.clone(), e.event_type.clone()))
        .collect();
    assert_eq!(distinct.len(), 46);
    for id in ids {
        assert!(
            distinct.contains(&(id.to_string(), "PagoPendiente".to_owned())),
            "{id} pending lost"
        );
        assert!(
            distinct.contains(&(id.to_string(), "PagoExitoso".to_owned())),
            "{id} success lost"
        );
    }
}
