//! Broker outage: the real Pulsar broker is stopped while partners keep sending events. Every
//! event is still accepted (stored before acknowledged), shows as FALLIDO with its attempts
//! while the broker is away, an on-demand retry says it is still failing, and once the broker
//! is back every accepted event reaches its topic: none lost.
//!
//! One test in this file on purpose: cargo runs test binaries one after another, so no other
//! test is using the broker while this one stops it.

use std::{collections::HashSet, time::Duration};

mod common;

use common::*;
use platform::{messaging::LazyBroker, outbox::Relay};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

#[sqlx::test(migrations = false)]
async fn events_are_accepted_while_the_broker_is_down_and_all_published_after(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let pulsar = pulsar_config();
    let broker = broker(&pulsar).await;
    // A durable subscription from the start, so the broker keeps every message for the reader
    // below (this consumer's own stream does not survive the broker's restart).
    let _retain = Observer::subscribe(&pulsar, &["tracking.evt.click"]).await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(
        Relay::new(pool.clone(), broker.clone(), event_collector::SCHEMA).run(shutdown.clone()),
    );
    let (app, _writers) = replica(&pool, LazyBroker::ready(broker), DEMO, &config(&[]));

    let mut ids = HashSet::new();
    let mut send = async |cliente: String| {
        let answer = post(&app, &click("AFILIADO_ENTERPRISE", &cliente), &[]).await;
        assert_eq!(answer.status, 201, "{cliente}: {}", answer.body);
        ids.insert(
            answer.body["id_evento"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap(),
        );
        answer.body["id_evento"].as_str().unwrap().to_owned()
    };
    send("antes".to_owned()).await;
    eventually(
        "warm-up event published",
        Duration::from_secs(30),
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
    let mut during = Vec::new();
    for i in 0..30 {
        during.push(send(format!("durante-{i}")).await);
    }
    let ready = call(&app, "GET", "/ready", None, &[]).await;
    assert_eq!(
        ready.status, 200,
        "still ready without the broker: {}",
        ready.body
    );
    assert_eq!(ready.body["status"], "degraded");
    eventually(
        "publication attempts fail",
        Duration::from_secs(60),
        || async {
            let failed = call(
                &app,
                "GET",
                "/event-collector/failed-events?limite=1000",
                None,
                &[],
            )
            .await;
            failed.body["total"] == 30
        },
    )
    .await;
    let status = call(
        &app,
        "GET",
        &format!("/event-collector/events/{}/status", during[0]),
        None,
        &[],
    )
    .await;
    assert_eq!(status.body["estado"], "FALLIDO", "{}", status.body);
    assert!(status.body["intentos"].as_i64().unwrap() >= 1);
    assert!(status.body["razon_fallo"].is_string());
    let retry = call(
        &app,
        "POST",
        &format!("/event-collector/events/{}/retry", during[0]),
        None,
        &[],
    )
    .await;
    assert_eq!(retry.status, 503, "still failing: {}", retry.body);
    assert!(retry.headers.contains_key("retry-after"));

    infra("pulsar-start");
    let restarted = std::time::Instant::now();
    eventually(
        "every event published after the outage",
        Duration::from_secs(120),
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
    println!(
        "broker outage: 30 events accepted while down; all published {:.1} s after the broker answered again",
        restarted.elapsed().as_secs_f64()
    );
    let failed = call(&app, "GET", "/event-collector/failed-events", None, &[]).await;
    assert_eq!(failed.body["total"], 0);
    let retry = call(
        &app,
        "POST",
        &format!("/event-collector/events/{}/retry", during[1]),
        None,
        &[],
    )
    .await;
    assert_eq!(retry.status, 409, "published now: {}", retry.body);

    // A subscription made now reads the topic from its start: the events published after the
    // outage are all there (the broker keeps them until every subscription has them).
    let mut observer = Observer::subscribe(&pulsar, &["tracking.evt.click"]).await;
    let seen = observer
        .collect(Duration::from_secs(60), |seen| {
            seen.iter()
                .map(|(_, e)| e.event_id)
                .collect::<HashSet<_>>()
                .len()
                >= 31
        })
        .await;
    let published: HashSet<uuid::Uuid> = seen.iter().map(|(_, e)| e.event_id).collect();
    assert_eq!(published, ids, "every accepted event reached the broker");
}
