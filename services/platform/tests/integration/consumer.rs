//! The consumer runner against the real Pulsar broker: per-key order with parallel lanes,
//! retries, and dead-lettering of a message that keeps failing.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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
        pulsar_auth_token: None,
        pulsar_tls_trust_certs_file: None,
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
        drain_timeout: messaging::DEFAULT_DRAIN_TIMEOUT,
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

/// Records every event id it handled, taking `delay` per event.
struct Slow {
    delay: Duration,
    handled: Mutex<Vec<Uuid>>,
}

#[async_trait::async_trait]
impl EventHandler for Slow {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        tokio::time::sleep(self.delay).await;
        self.handled.lock().unwrap().push(envelope.event_id);
        Ok(())
    }
}

fn slow(delay: Duration) -> Arc<Slow> {
    Arc::new(Slow {
        delay,
        handled: Mutex::new(Vec::new()),
    })
}

/// Polls `check` until true; panics with `what` after `limit` (a liveness bound).
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn handled(handler: &Slow) -> Vec<Uuid> {
    handler.handled.lock().unwrap().clone()
}

/// The issue-7 failure: a consumer told to stop went on handling its whole queued backlog.
/// Now it finishes only what its lanes are handling, acknowledges that, and gives the rest back
/// to the broker, where the next consumer of the subscription gets it: nothing is lost, and what
/// the first consumer finished is not delivered again.
#[tokio::test]
async fn shutdown_gives_the_backlog_back_to_the_broker() {
    let config = config();
    let broker = Broker::connect(&config).await.unwrap();
    let subscription = Subscription {
        topics: vec![TOPIC.into()],
        name: "shutdown-test".into(),
        lanes: 4,
        attempts: 3,
        max_redeliveries: 5,
        drain_timeout: Duration::from_secs(10),
    };
    // 3000 events at 100 ms each on 4 lanes: a 75 s backlog for the first consumer, and more
    // than its receiver queue holds (1000), so the client library's queue is full at the stop.
    let events: Vec<Envelope> = (0..3000)
        .map(|i| envelope(&format!("key-{}", i % 40), i64::from(i / 40 + 1)))
        .collect();
    broker.publish(TOPIC, &events).await.unwrap();

    let first = slow(Duration::from_millis(100));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(messaging::run_consumer(
        broker.clone(),
        subscription.clone(),
        first.clone(),
        shutdown.clone(),
    ));
    eventually(
        "the first consumer handles 20 events",
        Duration::from_secs(30),
        || {
            let first = first.clone();
            async move { handled(&first).len() >= 20 }
        },
    )
    .await;

    let asked = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the consumer stops within its drain timeout, not after its backlog")
        .unwrap();
    let stopped_after = asked.elapsed();
    let by_first: HashSet<Uuid> = handled(&first).into_iter().collect();
    assert!(
        by_first.len() < 200,
        "the backlog was handled instead of given back ({} of 3000 in {stopped_after:?})",
        by_first.len()
    );
    // Nothing of the stopped consumer keeps running in the background.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        handled(&first).len(),
        by_first.len(),
        "a lane kept working after stop"
    );

    let second = slow(Duration::ZERO);
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(messaging::run_consumer(
        broker.clone(),
        subscription,
        second.clone(),
        shutdown.clone(),
    ));
    let expected = events.len() - by_first.len();
    eventually(
        "the next consumer gets the rest",
        Duration::from_secs(60),
        || {
            let second = second.clone();
            async move { handled(&second).len() >= expected }
        },
    )
    .await;
    // Anything redelivered on top would arrive right behind the rest.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let by_second = handled(&second);
    let all: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    let union: HashSet<Uuid> = by_first.iter().chain(&by_second).copied().collect();
    assert_eq!(
        union, all,
        "every event handled by one consumer or the other"
    );
    let again: Vec<&Uuid> = by_second
        .iter()
        .filter(|id| by_first.contains(id))
        .collect();
    assert!(
        again.is_empty(),
        "{} events finished and acknowledged by the first consumer came back",
        again.len()
    );
    assert_eq!(
        by_second.len(),
        expected,
        "the second consumer handled each event once"
    );
}

/// Applies batches slowly (so messages queue up behind each one), records every batch's size,
/// and leaves the first delivery of aggregate "flaky" unapplied in its batch. Idempotent like
/// every real handler (the broker delivers at least once): a redelivered event changes nothing.
#[derive(Default)]
struct Batcher {
    applied: Mutex<HashMap<String, Vec<i64>>>,
    seen: Mutex<HashSet<Uuid>>,
    batches: Mutex<Vec<usize>>,
    alone: Mutex<Vec<String>>,
    refused: Mutex<HashSet<Uuid>>,
}

impl Batcher {
    fn record(&self, envelope: &Envelope) {
        if !self.seen.lock().unwrap().insert(envelope.event_id) {
            return;
        }
        self.applied
            .lock()
            .unwrap()
            .entry(envelope.aggregate_id.clone())
            .or_default()
            .push(envelope.aggregate_version);
    }
}

#[async_trait::async_trait]
impl EventHandler for Batcher {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.alone
            .lock()
            .unwrap()
            .push(envelope.aggregate_id.clone());
        self.record(&envelope);
        Ok(())
    }

    async fn handle_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), HandlerError>> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.batches.lock().unwrap().push(envelopes.len());
        envelopes
            .iter()
            .map(|envelope| {
                if envelope.aggregate_id == "flaky"
                    && self.refused.lock().unwrap().insert(envelope.event_id)
                {
                    return Err(HandlerError::Transient(anyhow::anyhow!("not in a batch")));
                }
                self.record(envelope);
                Ok(())
            })
            .collect()
    }

    fn max_batch(&self) -> usize {
        16
    }
}

#[tokio::test]
async fn queued_messages_are_handled_in_batches_in_key_order_and_a_refused_one_alone() {
    let config = config();
    let broker = Broker::connect(&config).await.unwrap();
    let batcher = Arc::new(Batcher::default());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(messaging::run_consumer(
        broker.clone(),
        Subscription {
            topics: vec![TOPIC.into()],
            name: "batch-test".into(),
            lanes: 2,
            attempts: 3,
            max_redeliveries: 2,
            drain_timeout: messaging::DEFAULT_DRAIN_TIMEOUT,
        },
        batcher.clone(),
        shutdown.clone(),
    ));

    const KEYS: usize = 4;
    const VERSIONS: i64 = 50;
    let mut events = Vec::new();
    for version in 1..=VERSIONS {
        for key in 0..KEYS {
            events.push(envelope(&format!("key-{key}"), version));
        }
    }
    events.insert(37, envelope("flaky", 1));
    broker.publish(TOPIC, &events).await.unwrap();

    eventually("every event is applied", Duration::from_secs(60), || {
        let batcher = batcher.clone();
        async move {
            batcher
                .applied
                .lock()
                .unwrap()
                .values()
                .map(Vec::len)
                .sum::<usize>()
                > KEYS * VERSIONS as usize
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = batcher.applied.lock().unwrap();
    for key in 0..KEYS {
        assert_eq!(
            applied[&format!("key-{key}")],
            (1..=VERSIONS).collect::<Vec<_>>(),
            "key-{key}: each version once, in order"
        );
    }
    assert_eq!(applied["flaky"], vec![1], "applied once");
    // It came in a batch (slow handling keeps the lanes' queues full), was refused there, and
    // was then handled alone.
    assert_eq!(batcher.refused.lock().unwrap().len(), 1);
    assert!(batcher.alone.lock().unwrap().contains(&"flaky".to_owned()));
    let batches = batcher.batches.lock().unwrap();
    assert!(
        batches.iter().any(|size| *size > 1) && batches.iter().all(|size| *size <= 16),
        "batches of queued messages, none above the limit: {batches:?}"
    );
    // Every applied event's lag was observed, in a batch or alone: as many as were acked.
    let metrics = platform::telemetry::render();
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
            .parse()
            .unwrap()
    };
    let lags = value(r#"aeropartners_events_consume_lag_seconds_count{subscription="batch-test"}"#);
    let acked =
        value(r#"aeropartners_events_consumed_total{outcome="ok",subscription="batch-test"}"#);
    assert_eq!(lags, acked, "one lag per applied event");
    assert!(
        lags > (KEYS * VERSIONS as usize) as u64,
        "{lags} lags observed"
    );
}
