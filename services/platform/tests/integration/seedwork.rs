//! The platform's persistence building blocks against a real PostgreSQL (and, for the relay, the
//! real Pulsar broker): migrations racing, the inbox, and several outbox relays racing.

use std::{collections::HashMap, time::Duration};

use chrono::Utc;
use futures::StreamExt;
use platform::{
    config::PulsarConfig,
    db, inbox,
    messaging::{Broker, Envelope},
    outbox::{self, Relay},
};
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SCHEMA: &str = "seedwork_test";

fn no_context_migrations() -> Migrator {
    Migrator::with_migrations(Vec::new())
}

async fn pool(connect: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(10)
        .connect_with(db::with_schema(connect.clone(), SCHEMA))
        .await
        .unwrap()
}

/// The real broker, under a topic prefix of this test's own.
async fn broker() -> Broker {
    let pulsar = PulsarConfig {
        pulsar_url: std::env::var("PULSAR_URL").expect("PULSAR_URL must point at the real broker"),
        pulsar_namespace: "public/default".into(),
        pulsar_topic_prefix: format!("t{}-", Uuid::new_v4().simple()),
        pulsar_auth_token: None,
        pulsar_tls_trust_certs_file: None,
    };
    Broker::connect(&pulsar).await.unwrap()
}

fn envelope(aggregate: &str, version: i64) -> Envelope {
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: "Probado".into(),
        aggregate_type: "Prueba".into(),
        aggregate_id: aggregate.into(),
        aggregate_version: version,
        occurred_at: Utc::now(),
        correlation_id: format!("corr-{aggregate}-{version}"),
        data: serde_json::json!({ "v": version }),
    }
}

#[sqlx::test(migrations = false)]
async fn replicas_starting_together_migrate_once(_o: PgPoolOptions, c: PgConnectOptions) {
    let migrator = no_context_migrations();
    let replicas = (0..4).map(|_| {
        let c = c.clone();
        let migrator = &migrator;
        async move {
            let pool = pool(&c).await;
            db::migrate(&pool, SCHEMA, migrator).await
        }
    });
    for result in futures::future::join_all(replicas).await {
        result.expect("every replica's migration succeeds");
    }
    let pool = pool(&c).await;
    assert!(
        db::migrations_applied(&pool, SCHEMA, &migrator)
            .await
            .unwrap()
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 \
         AND table_name IN ('outbox', 'inbox', 'idempotency_keys')",
    )
    .bind(SCHEMA)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 3);
}

#[sqlx::test(migrations = false)]
async fn migrations_are_reported_missing_until_applied(_o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(&c).await;
    let migrator = no_context_migrations();
    assert!(
        !db::migrations_applied(&pool, SCHEMA, &migrator)
            .await
            .unwrap()
    );
    db::migrate(&pool, SCHEMA, &migrator).await.unwrap();
    assert!(
        db::migrations_applied(&pool, SCHEMA, &migrator)
            .await
            .unwrap()
    );
}

#[sqlx::test(migrations = false)]
async fn the_inbox_lets_an_event_through_once_and_only_when_committed(
    _o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = pool(&c).await;
    db::migrate(&pool, SCHEMA, &no_context_migrations())
        .await
        .unwrap();
    let event = envelope("a", 1);

    // A delivery whose effect rolled back leaves no trace: the retry is still the first.
    let mut tx = pool.begin().await.unwrap();
    assert!(
        inbox::first_delivery(&mut tx, "consumer-a", &event)
            .await
            .unwrap()
    );
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    assert!(
        inbox::first_delivery(&mut tx, "consumer-a", &event)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    assert!(
        !inbox::first_delivery(&mut tx, "consumer-a", &event)
            .await
            .unwrap(),
        "a redelivery is recognised"
    );
    // Another consumer of the same event is independent.
    assert!(
        inbox::first_delivery(&mut tx, "consumer-b", &event)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn racing_relays_publish_each_event_once_and_each_aggregate_in_order(
    _o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = pool(&c).await;
    db::migrate(&pool, SCHEMA, &no_context_migrations())
        .await
        .unwrap();
    let broker = broker().await;
    // Subscribe before anything is published.
    let mut observer: pulsar::Consumer<Vec<u8>, pulsar::TokioExecutor> = broker
        .client()
        .consumer()
        .with_topic(broker.topic("seedwork.evt"))
        .with_subscription("observer")
        .with_subscription_type(pulsar::SubType::Exclusive)
        .build()
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    for _ in 0..3 {
        let relay_pool = pool.clone();
        tokio::spawn(Relay::new(relay_pool, broker.clone(), SCHEMA).run(shutdown.clone()));
    }
    const AGGREGATES: usize = 40;
    const VERSIONS: i64 = 5;
    // Versions are written in separate transactions, interleaved across aggregates, while the
    // relays are already running.
    for version in 1..=VERSIONS {
        for aggregate in 0..AGGREGATES {
            let mut tx = pool.begin().await.unwrap();
            outbox::enqueue(
                &mut tx,
                "seedwork.evt",
                &envelope(&format!("agg-{aggregate}"), version),
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    }

    let expected = AGGREGATES * VERSIONS as usize;
    let mut received: Vec<Envelope> = Vec::new();
    while received.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(30), observer.next())
            .await
            .expect("all events arrive")
            .unwrap()
            .unwrap();
        observer.ack(&message).await.unwrap();
        received.push(serde_json::from_slice(&message.payload.data).unwrap());
    }
    // Nothing more than expected shows up.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), observer.next())
            .await
            .is_err(),
        "no duplicate publication"
    );

    let mut last: HashMap<String, i64> = HashMap::new();
    for event in &received {
        let previous = last
            .insert(event.aggregate_id.clone(), event.aggregate_version)
            .unwrap_or(0);
        assert_eq!(
            event.aggregate_version,
            previous + 1,
            "{} out of order",
            event.aggregate_id
        );
    }
    let stats = outbox::stats(&pool).await.unwrap();
    assert_eq!(stats.total_eventos, expected as i64);
    assert_eq!(stats.eventos_procesados, expected as i64);
    assert_eq!(stats.eventos_pendientes + stats.eventos_fallidos, 0);
}

#[sqlx::test(migrations = false)]
async fn an_undecodable_outbox_row_is_set_aside_and_the_rest_is_published(
    _o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = pool(&c).await;
    db::migrate(&pool, SCHEMA, &no_context_migrations())
        .await
        .unwrap();
    let broker = broker().await;
    // A row written before a fix, or by hand, whose envelope no longer reads as one.
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, aggregate_version, topic, envelope) \
         VALUES (gen_random_uuid(), 'Probado', 'Prueba', 'broken', 1, 'seedwork.evt', '{\"not\": \"an envelope\"}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, "seedwork.evt", &envelope("sound", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = Relay::new(pool.clone(), broker, SCHEMA);
    assert_eq!(relay.relay_once().await.unwrap(), 2, "both rows claimed");
    let rows: Vec<(String, bool, i32, Option<String>)> = sqlx::query_as(
        "SELECT aggregate_id, published_at IS NOT NULL, attempts, last_error FROM outbox ORDER BY aggregate_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows[0].0, "broken");
    assert!(!rows[0].1, "the broken row stays unpublished");
    assert_eq!(rows[0].2, 1);
    assert!(
        rows[0]
            .3
            .as_deref()
            .is_some_and(|e| e.starts_with("envelope cannot be decoded")),
        "{rows:?}"
    );
    assert_eq!(rows[1].0, "sound");
    assert!(rows[1].1, "the other row is published");
}
