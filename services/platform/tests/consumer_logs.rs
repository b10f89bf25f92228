//! A consumer's log lines carry the span of the event they were written for, and no other.
//!
//! The issue-7 failure: the `event` span was entered with `span.enter()` and held across
//! `.await`, so while one handler was suspended its span stayed current on the worker thread
//! and became the parent of every span created next there. Each line then carried the spans of
//! every event handled before it (885 KB lines, a 3.7 GB log, memory that never came back).
//!
//! Its own test binary: it installs the process-wide subscriber, as a service does.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use platform::{
    config::PulsarConfig,
    messaging::{self, Broker, Envelope, EventHandler, HandlerError, Subscription},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOPIC: &str = "logs.evt";

/// Every formatted line, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs before and after a suspension point, as real handlers do around their database calls.
struct Chatty;

#[async_trait::async_trait]
impl EventHandler for Chatty {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        tracing::info!(handled_id = %envelope.event_id, "handling");
        tokio::time::sleep(Duration::from_millis(3)).await;
        tracing::info!(handled_id = %envelope.event_id, "handled");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_carries_only_its_own_event_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_span_list(true)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();

    let config = PulsarConfig {
        pulsar_url: std::env::var("PULSAR_URL").expect("PULSAR_URL must point at the real broker"),
        pulsar_namespace: "public/default".into(),
        pulsar_topic_prefix: format!("t{}-", Uuid::new_v4().simple()),
        pulsar_auth_token: None,
        pulsar_tls_trust_certs_file: None,
    };
    let broker = Broker::connect(&config).await.unwrap();
    let events: Vec<Envelope> = (0..120)
        .map(|i| Envelope {
            event_id: Uuid::new_v4(),
            event_type: "Probado".into(),
            aggregate_type: "Prueba".into(),
            aggregate_id: format!("key-{}", i % 12),
            aggregate_version: i64::from(i / 12 + 1),
            occurred_at: Utc::now(),
            correlation_id: format!("req-{i}"),
            data: serde_json::json!({}),
        })
        .collect();
    broker.publish(TOPIC, &events).await.unwrap();

    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(messaging::run_consumer(
        broker,
        Subscription {
            topics: vec![TOPIC.into()],
            name: "logs-test".into(),
            lanes: 6,
            attempts: 1,
            max_redeliveries: 1,
            drain_timeout: Duration::from_secs(5),
        },
        Arc::new(Chatty),
        shutdown.clone(),
    ));

    let handled_lines = || {
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["fields"]["handled_id"].is_string())
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while handled_lines().len() < 2 * events.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} handler lines logged",
            handled_lines().len(),
            2 * events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    consumer.await.unwrap();

    for line in handled_lines() {
        let spans = line["spans"].as_array().expect("a span list on every line");
        assert_eq!(
            spans.len(),
            1,
            "a handler line carries {} spans instead of its own: {line}",
            spans.len()
        );
        assert_eq!(spans[0]["name"], "event");
        assert_eq!(
            spans[0]["event_id"], line["fields"]["handled_id"],
            "a handler line carries another event's span: {line}"
        );
    }
}
