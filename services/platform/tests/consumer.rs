//! The consumer runner against the real Pulsar broker: per-key order with parallel lanes,
//! retries, and dead-lettering of a message that keeps failing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use futures::StreamExt;
use platform::{
    config::PulsarConfig,
    messaging::{self, Broker, Envelope, EventHandler, HandlerError, Subscription},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOPIC: &str = "consumer.evt";

fn config() -> PulsarConfig {
    PulsarConfig {
        pulsar_url: std::env::var("PULSAR_URL").expect("PULSAR_URL must point at the real broker"),
        pulsar_namespace: "public/default".into(),
        pulsar_topic_prefix: format!("t{}-", Uuid::new_v4().simple()),
    }
}

fn envelope(aggregate: &str, version: i64) -> Envelope {
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: "Probado".into(),
        aggregate_type: "Prueba".into(),
        aggregate_id: aggregate.into(),
        aggregate_version: version,
        occurred_at: Utc::now(),
        correlation_id: "corr".into(),
        data: serde_json::json!({}),
    }
}

/// Records what it applied; fails forever for aggregate "poison", and fails the first attempt
/// of every other event (so every success is a retry).
#[derive(Default)]
struct Recorder {
    applied: Mutex<HashMap<String, Vec<i64>>>,
    attempts: Mutex<HashMap<Uuid, usize>>,
}

#[async_trait::async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(envelope.event_id).or_default();
            *n += 1;
            *n
        };
        if envelope.aggregate_id == "poison" {
            return Err(HandlerError::Transient(anyhow::anyhow!("always broken")));
        }
        if attempt == 1 {
            return Err(HandlerError::Transient(anyhow::anyhow!("first try fails")));
        }
        // Slow enough that lanes overlap.
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.applied
            .lock()
            .unwrap()
            .entry(envelope.aggregate_id.clone())
            .or_default()
            .push(envelope.aggregate_version);
        Ok(())
    }
}

#[tokio::test]
async fn keys_stay_in_order_failures_are_retried_and_poison_is_dead_lettered() {
    let config = config();
    let broker = Broker::connect(&config).await.unwrap();
    let mut dead_letters: pulsar::Consumer<Vec<u8>, pulsar::TokioExecutor> = broker
        .client()
        .consumer()
        .with_topic(format!("{}-DLQ", broker.topic(TOPIC)))
        .with_subscription("dlq-observer")
        .with_subscription_type(pulsar::SubType::Exclusive)
        .build()
        .await
        .unwrap();

    let recorder = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let subscription = Subscription {
        topics: vec![TOPIC.into()],
        name: "consumer-test".into(),
        lanes: 4,
        attempts: 3,
        max_redeliveries: 2,
    };
    tokio::spawn(messaging::run_consumer(
        broker.clone(),
        subscription,
        recorder.clone(),
        shutdown.clone(),
    ));

    const KEYS: usize = 8;
    const VERSIONS: i64 = 10;
    let mut batch = Vec::new();
    for version in 1..=VERSIONS {
        for key in 0..KEYS {
            batch.push(envelope(&format!("key-{key}"), version));
        }
    }
    batch.insert(5, envelope("poison", 1));
    broker.publish(TOPIC, &batch).await.unwrap();

    let dead = tokio::time::timeout(Duration::from_secs(60), dead_letters.next())
        .await
        .expect("the poison message reaches the DLQ")
        .unwrap()
        .unwrap();
    let dead: Envelope = serde_json::from_slice(&dead.payload.data).unwrap();
    assert_eq!(dead.aggregate_id, "poison");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = recorder
            .applied
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>();
        if done == KEYS * VERSIONS as usize {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} events applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied = recorder.applied.lock().unwrap();
    for (key, versions) in applied.iter() {
        assert_eq!(
            versions,
            &(1..=VERSIONS).collect::<Vec<_>>(),
            "{key} applied out of order"
        );
    }
    // 3 in-process attempts per delivery, 1 delivery + 2 redeliveries before the DLQ.
    let poison_attempts = *recorder
        .attempts
        .lock()
        .unwrap()
        .get(&dead.event_id)
        .unwrap();
    assert_eq!(poison_attempts, 9, "bounded retries before dead-lettering");
}
