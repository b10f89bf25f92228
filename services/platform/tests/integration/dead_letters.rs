//! Dead letters against the real Pulsar broker and PostgreSQL: a message one subscription
//! refuses goes to `<topic>-DLQ` (counted, listed with why and by whom), the others go on;
//! replayed after the fix it is applied once by the subscription that failed it, skipped by the
//! rest, and a second replay of it changes nothing.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use platform::{
    config::PulsarConfig,
    db,
    inbox::{self, Transactional, TransactionalHandler},
    messaging::{
        self, Broker, Envelope, EventHandler, HandlerError, Outgoing, Subscription,
        dead_letter::{self, REPLAY_FOR, Selection},
    },
    telemetry,
};
use sqlx::{
    PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOPIC: &str = "dlq.evt";
const SCHEMA: &str = "dead_letters_test";
const FIXED: &str = "dlq-test-fixed";
const OTHER: &str = "dlq-test-other";

fn config() -> PulsarConfig {
    PulsarConfig {
        pulsar_url: std::env::var("PULSAR_URL").expect("PULSAR_URL must point at the real broker"),
        pulsar_namespace: "public/default".into(),
        pulsar_topic_prefix: format!("t{}-", Uuid::new_v4().simple()),
        pulsar_auth_token: None,
        pulsar_tls_trust_certs_file: None,
    }
}

fn envelope(aggregate: &str) -> Envelope {
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: "Probado".into(),
        aggregate_type: "Prueba".into(),
        aggregate_id: aggregate.into(),
        aggregate_version: 1,
        occurred_at: Utc::now(),
        correlation_id: "corr".into(),
        data: serde_json::json!({}),
    }
}

/// Applies events into `applied` through the inbox, and refuses aggregate "bad" for good
/// while `broken` (a bug, fixed later).
struct Breakable {
    pool: PgPool,
    broken: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl TransactionalHandler for Breakable {
    type Applied = ();

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn apply(&self, tx: &mut PgConnection, envelope: &Envelope) -> Result<(), HandlerError> {
        if envelope.aggregate_id == "bad" && self.broken.load(Ordering::SeqCst) {
            return Err(HandlerError::Permanent(
                "importe con formato desconocido".into(),
            ));
        }
        let transient = |e: sqlx::Error| HandlerError::Transient(e.into());
        if inbox::first_delivery(tx, FIXED, envelope)
            .await
            .map_err(transient)?
        {
            sqlx::query("INSERT INTO applied (event_id) VALUES ($1)")
                .bind(envelope.event_id)
                .execute(&mut *tx)
                .await
                .map_err(transient)?;
        }
        Ok(())
    }
}

/// Another subscription of the topic: records what it handled.
#[derive(Default)]
struct Recorder(Mutex<Vec<Uuid>>);

#[async_trait::async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(envelope.event_id);
        Ok(())
    }
}

fn subscription(name: &str) -> Subscription {
    Subscription {
        topics: vec![TOPIC.into()],
        name: name.into(),
        lanes: 2,
        attempts: 2,
        max_redeliveries: 3,
        drain_timeout: messaging::DEFAULT_DRAIN_TIMEOUT,
    }
}

/// Makes the durable subscription `name` on `topic` now: a topic keeps nothing for a
/// subscription made after the message arrived, and the runner subscribes in the background.
async fn subscribe_first(broker: &Broker, topic: &str, name: &str) {
    let mut consumer: pulsar::Consumer<Vec<u8>, pulsar::TokioExecutor> = broker
        .client()
        .consumer()
        .with_topic(broker.topic(topic))
        .with_subscription(name)
        .with_subscription_type(pulsar::SubType::KeyShared)
        .build()
        .await
        .unwrap();
    consumer.close().await.unwrap();
}

async fn applied(pool: &PgPool, event_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM applied WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The value of a metric line that starts with `series`, 0 when absent.
fn metric(series: &str) -> f64 {
    telemetry::render()
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_refused_message_is_dead_lettered_listed_and_replayed_once(
    _o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(db::with_schema(c, SCHEMA))
        .await
        .unwrap();
    db::migrate(&pool, SCHEMA, &Migrator::with_migrations(Vec::new()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE applied (event_id UUID NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();

    let broker = Broker::connect(&config()).await.unwrap();
    let dlq = format!("{}-DLQ", broker.topic(TOPIC));
    let broken = Arc::new(AtomicBool::new(true));
    let handler = Breakable {
        pool: pool.clone(),
        broken: broken.clone(),
    };
    let other = Arc::new(Recorder::default());
    subscribe_first(&broker, TOPIC, FIXED).await;
    subscribe_first(&broker, TOPIC, OTHER).await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(messaging::run_consumer(
        broker.clone(),
        subscription(FIXED),
        Arc::new(Transactional(handler)),
        shutdown.clone(),
    ));
    tokio::spawn(messaging::run_consumer(
        broker.clone(),
        subscription(OTHER),
        other.clone(),
        shutdown.clone(),
    ));

    let (good, bad, later) = (envelope("good"), envelope("bad"), envelope("later"));
    broker
        .publish(TOPIC, &[good.clone(), bad.clone(), later.clone()])
        .await
        .unwrap();

    // The refused event does not hold the others back, in either subscription.
    eventually("both good events applied", async || {
        applied(&pool, good.event_id).await == 1 && applied(&pool, later.event_id).await == 1
    })
    .await;
    eventually("the other subscription handles all three", async || {
        other.0.lock().unwrap().len() == 3
    })
    .await;
    let dead_lettered = format!(
        "aeropartners_events_dead_lettered_total{{subscription=\"{FIXED}\",topic=\"{}\"}}",
        broker.topic(TOPIC)
    );
    eventually("the refusal is counted", async || {
        metric(&dead_lettered) == 1.0
    })
    .await;
    assert_eq!(applied(&pool, bad.event_id).await, 0);

    // Listed with why, by whom, and its event; listing removes nothing.
    for _ in 0..2 {
        let letters = dead_letter::list(&broker, &dlq).await.unwrap();
        assert_eq!(letters.len(), 1, "{letters:#?}");
        let letter = &letters[0];
        assert_eq!(letter.subscription, FIXED);
        assert_eq!(letter.origin_topic, broker.topic(TOPIC));
        assert_eq!(letter.reason, "importe con formato desconocido");
        assert_eq!(
            letter.deliveries, 1,
            "a permanent refusal is not redelivered"
        );
        assert_eq!(letter.event_id, Some(bad.event_id.to_string()));
        assert_eq!(letter.key, "bad");
        assert_eq!(letter.payload["aggregate_id"], "bad");
    }

    // The bug is fixed; the dead letter goes back, for the subscription that refused it.
    broken.store(false, Ordering::SeqCst);
    let skipped_by_other = format!(
        "aeropartners_events_consumed_total{{outcome=\"replay_for_other\",subscription=\"{OTHER}\"}}"
    );
    let replayed = dead_letter::replay(&broker, &dlq, &Selection::default())
        .await
        .unwrap();
    assert_eq!(replayed.replayed.len(), 1);
    assert_eq!(replayed.left, 0);
    eventually("the replay is applied", async || {
        applied(&pool, bad.event_id).await == 1
    })
    .await;
    eventually("the other subscription skips the replay", async || {
        metric(&skipped_by_other) == 1.0
    })
    .await;
    assert_eq!(other.0.lock().unwrap().len(), 3, "not handled twice there");

    // A replay that reaches the topic twice (the replayer died between publishing and
    // acknowledging) is applied once: the inbox recognises it.
    let ok =
        format!("aeropartners_events_consumed_total{{outcome=\"ok\",subscription=\"{FIXED}\"}}");
    let handled_before = metric(&ok);
    broker
        .publish_raw(
            &broker.topic(TOPIC),
            vec![Outgoing {
                payload: serde_json::to_vec(&bad).unwrap(),
                key: "bad".into(),
                properties: vec![
                    ("event_id".into(), bad.event_id.to_string()),
                    (REPLAY_FOR.into(), FIXED.into()),
                ],
                event_time: 0,
            }],
        )
        .await
        .unwrap();
    eventually("the second replay is handled", async || {
        metric(&ok) > handled_before
    })
    .await;
    assert_eq!(
        applied(&pool, bad.event_id).await,
        1,
        "applied exactly once"
    );
    assert!(dead_letter::list(&broker, &dlq).await.unwrap().is_empty());
    assert_eq!(metric(&dead_lettered), 1.0);
}

#[tokio::test]
async fn a_replay_selects_by_event_and_leaves_the_rest() {
    let broker = Broker::connect(&config()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    // Undecodable messages: nothing can apply them, so each is dead-lettered on arrival.
    let topic = broker.topic(TOPIC);
    let garbage = |n: u32| Outgoing {
        payload: format!("not json {n}").into_bytes(),
        key: format!("k{n}"),
        properties: vec![("event_id".into(), format!("e{n}"))],
        event_time: 0,
    };
    subscribe_first(&broker, TOPIC, "dlq-select").await;
    tokio::spawn(messaging::run_consumer(
        broker.clone(),
        subscription("dlq-select"),
        recorder.clone(),
        shutdown.clone(),
    ));
    let dlq = format!("{topic}-DLQ");
    broker
        .publish_raw(&topic, (1..=3).map(garbage).collect())
        .await
        .unwrap();
    eventually("three dead letters", async || {
        dead_letter::list(&broker, &dlq).await.unwrap().len() == 3
    })
    .await;
    let letters = dead_letter::list(&broker, &dlq).await.unwrap();
    assert!(
        letters
            .iter()
            .all(|l| l.reason.starts_with("not an event envelope")),
        "{letters:#?}"
    );
    let mut payloads: Vec<_> = letters.iter().map(|l| l.payload.clone()).collect();
    payloads.sort_by_key(ToString::to_string);
    assert_eq!(
        payloads,
        (1..=3)
            .map(|n| serde_json::json!(format!("not json {n}")))
            .collect::<Vec<_>>()
    );

    let selection = Selection {
        event_ids: vec!["e2".into()],
        ..Selection::default()
    };
    // The undecodable replay comes back to the DLQ: select it, then see it return.
    let replayed = dead_letter::replay(&broker, &dlq, &selection)
        .await
        .unwrap();
    assert_eq!(
        replayed
            .replayed
            .iter()
            .map(|l| l.event_id.clone())
            .collect::<Vec<_>>(),
        vec![Some("e2".into())]
    );
    assert_eq!(replayed.left, 2);
    eventually("the replayed garbage is dead-lettered again", async || {
        dead_letter::list(&broker, &dlq).await.unwrap().len() == 3
    })
    .await;
    assert!(recorder.0.lock().unwrap().is_empty());
}
