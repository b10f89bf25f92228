//! Apache Pulsar: the event envelope of API.md §7, a publisher that never batches (every
//! message is confirmed on its own), and a consumer runner that survives broker restarts,
//! keeps per-key order while processing keys in parallel, retries with backoff and dead-letters
//! what keeps failing.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, LazyLock},
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use prometheus::{HistogramVec, IntCounterVec};
use pulsar::{
    ConnectionRetryOptions, ConsumerOptions, OperationRetryOptions, Producer, ProducerOptions,
    Pulsar, SubType, TokioExecutor, consumer::InitialPosition, proto::MessageIdData,
};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Mutex, OnceCell, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{config::PulsarConfig, telemetry};

pub mod dead_letter;

use dead_letter::{DeadLetterer, FailureCounts, REPLAY_FOR, Rejected};

#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("Pulsar is unreachable: {0}")]
    Broker(#[from] pulsar::Error),
    #[error("Pulsar did not answer within {0:?}")]
    Timeout(Duration),
    #[error("event cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot read PULSAR_TLS_TRUST_CERTS_FILE {path}: {source}")]
    TrustCerts {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The JSON envelope every event travels in (API.md §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Position of this event in its aggregate's history: 1, 2, 3...
    pub aggregate_version: i64,
    pub occurred_at: DateTime<Utc>,
    /// The request id of the request that caused the event.
    pub correlation_id: String,
    pub data: serde_json::Value,
}

/// A message to publish: the envelope and the key Key_Shared consumers are partitioned by.
#[derive(Debug, Clone, Copy)]
pub struct Keyed<'a> {
    pub key: &'a str,
    pub envelope: &'a Envelope,
}

/// A message as it goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub payload: Vec<u8>,
    pub key: String,
    pub properties: Vec<(String, String)>,
    /// Milliseconds since the epoch (the event's `occurred_at`); 0 for none.
    pub event_time: u64,
}

/// A connected Pulsar client plus the naming rules for topics.
#[derive(Clone)]
pub struct Broker {
    /// Replaced as a whole by [`Broker::renew`]; each user takes a clone (an `Arc` inside).
    client: Arc<std::sync::RwLock<Pulsar<TokioExecutor>>>,
    config: PulsarConfig,
    /// When the client was last renewed (renewals are spaced by [`RENEW_EVERY`]).
    renewed_at: Arc<Mutex<Option<std::time::Instant>>>,
    namespace: String,
    prefix: String,
    producers: Arc<Mutex<HashMap<String, Producer<TokioExecutor>>>>,
}

/// The shortest time between two renewals of the client.
const RENEW_EVERY: Duration = Duration::from_secs(10);

async fn build_client(config: &PulsarConfig) -> Result<Pulsar<TokioExecutor>, MessagingError> {
    let mut builder = Pulsar::builder(config.pulsar_url.clone(), TokioExecutor);
    if let Some(token) = &config.pulsar_auth_token {
        use secrecy::ExposeSecret;
        builder = builder.with_auth(pulsar::Authentication {
            name: "token".to_owned(),
            data: token.expose_secret().as_bytes().to_vec(),
        });
    }
    if let Some(path) = &config.pulsar_tls_trust_certs_file {
        let pem = std::fs::read(path).map_err(|source| MessagingError::TrustCerts {
            path: path.clone(),
            source,
        })?;
        builder = builder.with_certificate_chain(pem);
    }
    Ok(builder
        .with_connection_retry_options(ConnectionRetryOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retries: 5,
            connection_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            ..ConnectionRetryOptions::default()
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: OPERATION_TIMEOUT,
            retry_delay: Duration::from_millis(500),
            max_retries: Some(3),
        })
        .build()
        .await?)
}

/// How long a consumer may receive nothing before its connection is checked.
const IDLE_CHECK: Duration = Duration::from_secs(15);

/// How long any single broker round trip may take before we give up and retry later.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

impl Broker {
    pub async fn connect(config: &PulsarConfig) -> Result<Self, MessagingError> {
        Ok(Self {
            client: Arc::new(std::sync::RwLock::new(build_client(config).await?)),
            config: config.clone(),
            renewed_at: Arc::default(),
            namespace: config.pulsar_namespace.clone(),
            prefix: config.pulsar_topic_prefix.clone(),
            producers: Arc::default(),
        })
    }

    /// Replaces the client, its connections and their manager, with a fresh one, and drops
    /// every cached producer. The `pulsar` crate's client can come out of a broker restart
    /// wedged: each lookup, subscription or send then waits for ever on a connection that
    /// never comes (found by the fault matrix: both campaigns replicas stayed without
    /// consumers, and their relay timed out on every publish, minutes after Pulsar was back).
    /// Called when an operation times out; at most once per [`RENEW_EVERY`].
    pub async fn renew(&self) {
        let mut renewed_at = self.renewed_at.lock().await;
        if renewed_at.is_some_and(|at| at.elapsed() < RENEW_EVERY) {
            return;
        }
        *renewed_at = Some(std::time::Instant::now());
        match build_client(&self.config).await {
            Ok(client) => {
                *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
                self.producers.lock().await.clear();
                tracing::warn!("Pulsar operations timed out; renewed the Pulsar client");
            }
            Err(error) => tracing::warn!(%error, "cannot renew the Pulsar client; will try again"),
        }
    }

    /// The fully qualified name of a logical topic such as `payments.evt.pending`.
    pub fn topic(&self, name: &str) -> String {
        format!("persistent://{}/{}{}", self.namespace, self.prefix, name)
    }

    /// The current client (a cheap clone: builders made from it keep working after a renewal).
    pub fn client(&self) -> Pulsar<TokioExecutor> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Readiness: the broker answers a topic lookup.
    pub async fn check(&self, topic_name: &str) -> Result<String, MessagingError> {
        let topic = self.topic(topic_name);
        tokio::time::timeout(Duration::from_secs(3), self.client().lookup_topic(topic))
            .await
            .map_err(|_| MessagingError::Timeout(Duration::from_secs(3)))??;
        Ok("broker answers topic lookups".to_owned())
    }

    /// Publishes envelopes to one topic and waits until the broker has stored every one.
    /// Messages are pipelined (sent without waiting for each receipt) but never batched, so
    /// each is acknowledged on its own. Keyed by aggregate id so Key_Shared consumers keep
    /// an aggregate's events in order.
    pub async fn publish(
        &self,
        topic_name: &str,
        envelopes: &[Envelope],
    ) -> Result<(), MessagingError> {
        let keyed: Vec<Keyed<'_>> = envelopes
            .iter()
            .map(|envelope| Keyed {
                key: &envelope.aggregate_id,
                envelope,
            })
            .collect();
        self.publish_keyed(topic_name, &keyed).await
    }

    /// Like [`Broker::publish`], each message with its own key instead of its aggregate id.
    pub async fn publish_keyed(
        &self,
        topic_name: &str,
        messages: &[Keyed<'_>],
    ) -> Result<(), MessagingError> {
        let topic = self.topic(topic_name);
        let result =
            tokio::time::timeout(OPERATION_TIMEOUT * 2, self.publish_inner(&topic, messages))
                .await
                .unwrap_or(Err(MessagingError::Timeout(OPERATION_TIMEOUT * 2)));
        match &result {
            Err(MessagingError::Timeout(_)) => self.renew().await,
            // A producer that failed may be stuck on a dead connection: start afresh next time.
            Err(_) => {
                self.producers.lock().await.remove(&topic);
            }
            Ok(()) => {}
        }
        result
    }

    async fn publish_inner(
        &self,
        topic: &str,
        messages: &[Keyed<'_>],
    ) -> Result<(), MessagingError> {
        let outgoing = messages
            .iter()
            .map(|Keyed { key, envelope }| {
                Ok(Outgoing {
                    payload: serde_json::to_vec(envelope)?,
                    key: (*key).to_owned(),
                    properties: vec![
                        ("event_id".to_owned(), envelope.event_id.to_string()),
                        ("event_type".to_owned(), envelope.event_type.clone()),
                    ],
                    event_time: u64::try_from(envelope.occurred_at.timestamp_millis())
                        .unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, MessagingError>>()?;
        self.send(topic, outgoing).await
    }

    /// Publishes messages as they are (payload, key, properties) to a fully qualified topic
    /// and waits until the broker has stored every one: dead letters and their replays.
    pub async fn publish_raw(
        &self,
        topic: &str,
        messages: Vec<Outgoing>,
    ) -> Result<(), MessagingError> {
        let result = tokio::time::timeout(OPERATION_TIMEOUT * 2, self.send(topic, messages))
            .await
            .unwrap_or(Err(MessagingError::Timeout(OPERATION_TIMEOUT * 2)));
        match &result {
            Err(MessagingError::Timeout(_)) => self.renew().await,
            Err(_) => {
                self.producers.lock().await.remove(topic);
            }
            Ok(()) => {}
        }
        result
    }

    async fn send(&self, topic: &str, messages: Vec<Outgoing>) -> Result<(), MessagingError> {
        let mut receipts = Vec::with_capacity(messages.len());
        {
            let mut producers = self.producers.lock().await;
            if !producers.contains_key(topic) {
                let producer = self
                    .client()
                    .producer()
                    .with_topic(topic)
                    .with_name(format!("aeropartners-{}", Uuid::new_v4()))
                    .with_options(ProducerOptions {
                        batch_size: None,
                        block_queue_if_full: true,
                        ..ProducerOptions::default()
                    })
                    .build()
                    .await?;
                producers.insert(topic.to_owned(), producer);
            }
            let producer = producers.get_mut(topic).expect("inserted above");
            for message in messages {
                let mut builder = producer
                    .create_message()
                    .with_content(message.payload)
                    .with_key(message.key);
                if message.event_time > 0 {
                    builder = builder.event_time(message.event_time);
                }
                for (name, value) in message.properties {
                    builder = builder.with_property(name, value);
                }
                receipts.push(builder.send_non_blocking().await?);
            }
        }
        for receipt in receipts {
            receipt.await?;
        }
        Ok(())
    }
}

/// The broker, connected in the background: a service starts (and accepts payments into the
/// outbox) even while Pulsar is down, and picks the broker up as soon as it answers.
#[derive(Clone, Default)]
pub struct LazyBroker(Arc<OnceCell<Broker>>);

impl LazyBroker {
    pub fn connect_in_background(config: PulsarConfig, shutdown: CancellationToken) -> Self {
        let lazy = Self::default();
        let cell = lazy.0.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            while !shutdown.is_cancelled() {
                match Broker::connect(&config).await {
                    Ok(broker) => {
                        let _ = cell.set(broker);
                        tracing::info!(url = %config.pulsar_url, "connected to Pulsar");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, ?backoff, "Pulsar not reachable yet");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        lazy
    }

    pub fn ready(broker: Broker) -> Self {
        let cell = OnceCell::new();
        let _ = cell.set(broker);
        Self(Arc::new(cell))
    }

    pub async fn wait(&self, shutdown: &CancellationToken) -> Option<Broker> {
        loop {
            if let Some(broker) = self.0.get() {
                return Some(broker.clone());
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    pub fn get(&self) -> Option<&Broker> {
        self.0.get()
    }
}

/// What a handler says about a message it could not apply.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (database or network hiccup).
    #[error("transient failure: {0}")]
    Transient(#[source] anyhow::Error),
    /// Will never succeed (malformed payload): dead-letter it at once.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// A context's reaction to one event. Must be idempotent: messages can arrive twice.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync + 'static {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError>;

    /// Applies several events of one lane at once (their keys' order kept): in one
    /// transaction, typically, so a busy consumer pays one commit for many events. The consumer
    /// calls it when more than one message waits in a lane and [`Self::max_batch`] allows it.
    /// It answers each event in order: `Ok` if the event is applied, `Err` if it is not (then
    /// it is handled on its own, with retries, so one poisoned event never holds the others
    /// back). An event left unapplied is handled after the batch, so a handler whose events
    /// depend on their order must leave the later events of that key unapplied too (an
    /// all-or-nothing transaction does).
    async fn handle_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            results.push(self.handle(envelope.clone()).await);
        }
        results
    }

    /// Most events one [`Self::handle_batch`] call gets; 1 (the default) never batches.
    fn max_batch(&self) -> usize {
        1
    }
}

/// How a consumer subscribes.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Logical topic names (without prefix/namespace).
    pub topics: Vec<String>,
    pub name: String,
    /// Parallel lanes; messages with the same key always use the same lane, in order.
    pub lanes: usize,
    /// In-process attempts (with exponential backoff) before the message is handed back.
    pub attempts: usize,
    /// Redeliveries (after the first delivery) of a message that keeps failing before it goes
    /// to `<topic>-DLQ` (see [`dead_letter`]).
    pub max_redeliveries: usize,
    /// On shutdown, how long the messages already being handled may take to finish. Queued
    /// messages are not started: they go back to the broker (and to another replica) at once.
    /// Keep it below the pod's termination grace period.
    pub drain_timeout: Duration,
}

/// The drain timeout every service uses: the chart gives a pod 30 s after it is told to stop,
/// of which the preStop pause takes 5 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    telemetry::register(
        HistogramVec::new(
            prometheus::HistogramOpts::new(
                "events_batch_size",
                "Events handled together (1: alone) by a consumer that batches, by subscription",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &["subscription"],
        )
        .expect("valid metric"),
    )
});

static CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    telemetry::counter_vec(
        "events_consumed_total",
        "Events taken from Pulsar by subscription and outcome (ok, returned, released, undecodable, rejected, replay_for_other)",
        &["subscription", "outcome"],
    )
});

static LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    telemetry::histogram_vec(
        "events_consume_lag_seconds",
        "From an event's occurred_at to its consumer having applied it, by subscription",
        &["subscription"],
    )
});

/// Records how long after `occurred_at` its event was applied (a clock behind the producer's
/// counts as no lag).
fn observe_lag(subscription: &Subscription, occurred_at: DateTime<Utc>) {
    let lag = (Utc::now() - occurred_at).to_std().unwrap_or_default();
    LAG.with_label_values(&[subscription.name.as_str()])
        .observe(lag.as_secs_f64());
}

enum Outcome {
    Ack,
    /// Failed (why): back to the broker for a redelivery, or to the DLQ once it has failed
    /// more than `max_redeliveries` times.
    Nack(String),
    /// Can never be applied (why): to the DLQ at once.
    DeadLetter(String),
    /// Neither: the consumer is stopping, so the message goes back to the broker on close.
    Release,
}

struct Delivery {
    topic: String,
    id: MessageIdData,
    payload: Vec<u8>,
    key: String,
    properties: Vec<(String, String)>,
}

/// Consumes until `shutdown`, recreating the consumer whenever the broker goes away.
pub async fn run_consumer(
    broker: Broker,
    subscription: Subscription,
    handler: Arc<dyn EventHandler>,
    shutdown: CancellationToken,
) {
    // This subscription's series exist from the start (at 0), so dashboards and alerts see a
    // consumer before its first event, and a rate has a starting point.
    let name = subscription.name.as_str();
    CONSUMED.with_label_values(&[name, "ok"]).inc_by(0);
    LAG.with_label_values(&[name]);
    BATCH_SIZE.with_label_values(&[name]);
    let topics: Vec<String> = subscription
        .topics
        .iter()
        .map(|t| broker.topic(t))
        .collect();
    dead_letter::register(name, &topics);
    let mut settler = Settler {
        dead_letterer: DeadLetterer::new(broker.clone(), name),
        failures: FailureCounts::default(),
        max_redeliveries: subscription.max_redeliveries,
    };
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match consume_once(
            &broker,
            &subscription,
            handler.clone(),
            &mut settler,
            &shutdown,
        )
        .await
        {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(subscription = %subscription.name, %error, ?backoff,
                    "consumer lost its broker connection, reconnecting");
                if matches!(error, MessagingError::Timeout(_)) {
                    broker.renew().await;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One consumer's life: returns Ok on shutdown, Err when it must be rebuilt. Either way the
/// lanes are drained first (see [`drain`]), so no handler of this consumer runs after it returns.
async fn consume_once(
    broker: &Broker,
    subscription: &Subscription,
    handler: Arc<dyn EventHandler>,
    settler: &mut Settler,
    shutdown: &CancellationToken,
) -> Result<(), MessagingError> {
    let topics: Vec<String> = subscription
        .topics
        .iter()
        .map(|t| broker.topic(t))
        .collect();
    let consumer = broker
        .client()
        .consumer()
        .with_topics(&topics)
        .with_subscription(subscription.name.clone())
        .with_subscription_type(SubType::KeyShared)
        // Consumer names must be unique per process, or the broker confuses them.
        .with_consumer_name(format!("{}-{}", subscription.name, Uuid::new_v4()))
        .with_options(ConsumerOptions {
            initial_position: InitialPosition::Earliest,
            durable: Some(true),
            receiver_queue_size: Some(1000),
            ..ConsumerOptions::default()
        })
        .build();
    // A wedged client would wait here for ever (see `Broker::renew`).
    let mut consumer: pulsar::Consumer<Vec<u8>, TokioExecutor> =
        tokio::time::timeout(OPERATION_TIMEOUT * 2, consumer)
            .await
            .map_err(|_| MessagingError::Timeout(OPERATION_TIMEOUT * 2))??;
    tracing::info!(subscription = %subscription.name, ?topics, "consumer subscribed");

    // Unbounded on purpose: a lane must never wait to report an outcome, or a full lane queue
    // (the loop below waiting to hand it a message) and a full outcome queue (the lane waiting
    // for the loop) would wait on each other. Its length is bounded by the lanes' queues.
    let (outcomes_tx, mut outcomes_rx) = mpsc::unbounded_channel::<Settlement>();
    // Cancelled when this consumer stops: a lane then finishes the message it is handling and
    // starts no other.
    let stop_lanes = CancellationToken::new();
    let mut lane_tasks = JoinSet::new();
    let lanes: Vec<mpsc::Sender<Delivery>> = (0..subscription.lanes.max(1))
        .map(|_| {
            spawn_lane(
                &mut lane_tasks,
                subscription.clone(),
                handler.clone(),
                outcomes_tx.clone(),
                stop_lanes.clone(),
            )
        })
        .collect();
    drop(outcomes_tx);

    let result = pump(
        &mut consumer,
        &lanes,
        &mut outcomes_rx,
        settler,
        &subscription.name,
        shutdown,
    )
    .await;

    stop_lanes.cancel();
    drop(lanes);
    drain(
        &mut consumer,
        &mut outcomes_rx,
        settler,
        lane_tasks,
        subscription,
        result.is_ok(),
    )
    .await;
    close(&mut consumer, &subscription.name).await;
    result
}

/// How long closing a consumer may take before it is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes the consumer: everything not acknowledged (prefetched, queued in a lane, or
/// abandoned) goes back to the broker now, and from there to another replica.
///
/// The `pulsar` crate's consumer engine hands each message to a bounded receiver queue and
/// waits while that queue is full; closing goes through the same engine (it asks it for the
/// connection), so a consumer with a full queue would wait for ever (issue 7: a worker with a
/// backlog never exited). Empty the queue first (those messages are not acknowledged: they
/// come back after the close), and give up on a close that still hangs.
async fn close(consumer: &mut pulsar::Consumer<Vec<u8>, TokioExecutor>, subscription: &str) {
    while let Some(Some(_)) = consumer.next().now_or_never() {}
    match tokio::time::timeout(CLOSE_TIMEOUT, consumer.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::debug!(%subscription, %error, "consumer close failed");
        }
        Err(_) => tracing::warn!(%subscription, timeout = ?CLOSE_TIMEOUT,
            "consumer close did not finish; its messages come back once the connection closes"),
    }
}

/// Moves messages from the broker to the lanes and outcomes back to the broker until
/// `shutdown` (Ok) or a broken connection (Err).
async fn pump(
    consumer: &mut pulsar::Consumer<Vec<u8>, TokioExecutor>,
    lanes: &[mpsc::Sender<Delivery>],
    outcomes: &mut mpsc::UnboundedReceiver<Settlement>,
    settler: &mut Settler,
    subscription: &str,
    shutdown: &CancellationToken,
) -> Result<(), MessagingError> {
    // A consumer whose connection died silently would wait forever on `next()`: check the
    // connection whenever nothing arrived for a while, and rebuild the consumer if it is gone.
    let mut idle_check = tokio::time::interval(IDLE_CHECK);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Shutdown first, then outcomes (acknowledge what is done before taking more).
            biased;
            () = shutdown.cancelled() => return Ok(()),
            Some(settlement) = outcomes.recv() => settler.settle(consumer, settlement).await?,
            _ = idle_check.tick() => {
                tokio::time::timeout(OPERATION_TIMEOUT, consumer.check_connection())
                    .await
                    .map_err(|_| MessagingError::Timeout(OPERATION_TIMEOUT))??;
            }
            next = consumer.next() => {
                idle_check.reset();
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(MessagingError::Broker(pulsar::Error::Custom("consumer stream ended".into()))),
                };
                let key = message.key().unwrap_or_default();
                let properties: Vec<(String, String)> = message
                    .payload
                    .metadata
                    .properties
                    .iter()
                    .map(|p| (p.key.clone(), p.value.clone()))
                    .collect();
                // A dead letter replayed for another subscription of this topic: not ours.
                if properties
                    .iter()
                    .any(|(name, value)| name == REPLAY_FOR && value != subscription)
                {
                    CONSUMED.with_label_values(&[subscription, "replay_for_other"]).inc();
                    consumer
                        .ack_with_id(&message.topic, message.message_id.id.clone())
                        .await
                        .map_err(pulsar::Error::Consumer)?;
                    continue;
                }
                let lane = &lanes[lane_for(&key, lanes.len())];
                let delivery = Delivery {
                    topic: message.topic.clone(),
                    id: message.message_id.id.clone(),
                    payload: message.payload.data,
                    key,
                    properties,
                };
                // A full lane must not keep shutdown waiting: the message is simply not
                // acknowledged and comes back on close.
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    sent = lane.send(delivery) => if sent.is_err() {
                        return Err(MessagingError::Broker(pulsar::Error::Custom(format!("a lane of {subscription} stopped"))));
                    },
                }
            }
        }
    }
}

/// Waits (at most `drain_timeout`) for the lanes to finish the messages they are handling and
/// acknowledges those, so they are not delivered again. A handler still running at the deadline
/// is abandoned: its message is redelivered, which idempotent handlers absorb.
async fn drain(
    consumer: &mut pulsar::Consumer<Vec<u8>, TokioExecutor>,
    outcomes: &mut mpsc::UnboundedReceiver<Settlement>,
    settler: &mut Settler,
    mut lane_tasks: JoinSet<()>,
    subscription: &Subscription,
    connected: bool,
) {
    let deadline = tokio::time::sleep(subscription.drain_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            settlement = outcomes.recv() => match settlement {
                // Every lane has ended (each holds a sender until it returns).
                None => break,
                Some(settlement) if connected => {
                    if let Err(error) = settler.settle(consumer, settlement).await {
                        tracing::debug!(subscription = %subscription.name, %error,
                            "acknowledgement during drain failed; the message will be redelivered");
                    }
                }
                Some(_) => {}
            },
            // Keep taking (and dropping) what the broker pushes meanwhile: with its receiver
            // queue full, the consumer's engine would not send our acknowledgements (see
            // `close`). What is dropped is not acknowledged, so it comes back after the close.
            Some(_) = consumer.next(), if connected => {}
            () = &mut deadline => {
                tracing::warn!(subscription = %subscription.name, timeout = ?subscription.drain_timeout,
                    "handlers still running at the drain deadline; their messages will be redelivered");
                lane_tasks.abort_all();
                break;
            }
        }
    }
    while lane_tasks.join_next().await.is_some() {}
}

/// What becomes of handled messages: acknowledged, returned for a redelivery, or moved to
/// the dead-letter topic. Lives as long as the subscription's runner, across reconnections.
struct Settler {
    dead_letterer: DeadLetterer,
    failures: FailureCounts,
    max_redeliveries: usize,
}

impl Settler {
    async fn settle(
        &mut self,
        consumer: &mut pulsar::Consumer<Vec<u8>, TokioExecutor>,
        (delivery, outcome): Settlement,
    ) -> Result<(), MessagingError> {
        let Delivery { topic, id, .. } = &delivery;
        match outcome {
            Outcome::Ack => {
                self.failures.forget(topic, id);
                ack(consumer, topic, id).await?;
            }
            Outcome::Release => {}
            Outcome::Nack(reason) => {
                let deliveries = self.failures.failed(topic, id);
                if deliveries as usize > self.max_redeliveries {
                    self.dead_letter(consumer, &delivery, &reason, deliveries)
                        .await?;
                } else {
                    consumer
                        .nack_with_id(topic, id.clone())
                        .await
                        .map_err(pulsar::Error::Consumer)?;
                }
            }
            Outcome::DeadLetter(reason) => {
                let deliveries = self.failures.failed(topic, id);
                self.dead_letter(consumer, &delivery, &reason, deliveries)
                    .await?;
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        consumer: &mut pulsar::Consumer<Vec<u8>, TokioExecutor>,
        delivery: &Delivery,
        reason: &str,
        deliveries: u32,
    ) -> Result<(), MessagingError> {
        let rejected = Rejected {
            topic: &delivery.topic,
            payload: &delivery.payload,
            key: &delivery.key,
            properties: &delivery.properties,
            reason,
            deliveries,
        };
        match self.dead_letterer.dead_letter(rejected).await {
            Ok(()) => {
                self.failures.forget(&delivery.topic, &delivery.id);
                ack(consumer, &delivery.topic, &delivery.id).await
            }
            Err(error) => {
                // Not moved: it comes back, and the move is tried again then.
                tracing::warn!(topic = %delivery.topic, %error, "cannot publish to the dead-letter topic; returning the message");
                consumer
                    .nack_with_id(&delivery.topic, delivery.id.clone())
                    .await
                    .map_err(pulsar::Error::Consumer)?;
                Ok(())
            }
        }
    }
}

async fn ack(
    consumer: &mut pulsar::Consumer<Vec<u8>, TokioExecutor>,
    topic: &str,
    id: &MessageIdData,
) -> Result<(), MessagingError> {
    consumer
        .ack_with_id(topic, id.clone())
        .await
        .map_err(pulsar::Error::Consumer)?;
    Ok(())
}

/// A handled message on its way back to the broker, with what to tell the broker.
type Settlement = (Delivery, Outcome);

fn lane_for(key: &str, lanes: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    usize::try_from(hasher.finish() % lanes as u64).unwrap_or(0)
}

fn spawn_lane(
    tasks: &mut JoinSet<()>,
    subscription: Subscription,
    handler: Arc<dyn EventHandler>,
    outcomes: mpsc::UnboundedSender<Settlement>,
    stop: CancellationToken,
) -> mpsc::Sender<Delivery> {
    let (tx, mut rx) = mpsc::channel::<Delivery>(LANE_QUEUE);
    let max_batch = handler.max_batch().clamp(1, LANE_QUEUE);
    tasks.spawn(async move {
        loop {
            let first = tokio::select! {
                // Checked before every message or batch: once stopping, the queued ones stay
                // unstarted.
                biased;
                () = stop.cancelled() => return,
                delivery = rx.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => return,
                },
            };
            // Whatever queued up behind it while the previous work ran goes with it.
            let mut deliveries = vec![first];
            while deliveries.len() < max_batch {
                match rx.try_recv() {
                    Ok(delivery) => deliveries.push(delivery),
                    Err(_) => break,
                }
            }
            let settled = if deliveries.len() == 1 {
                if max_batch > 1 {
                    BATCH_SIZE
                        .with_label_values(&[subscription.name.as_str()])
                        .observe(1.0);
                }
                let delivery = deliveries.remove(0);
                let outcome =
                    process(&subscription, handler.as_ref(), &delivery.payload, &stop).await;
                vec![(delivery, outcome)]
            } else {
                process_batch(&subscription, handler.as_ref(), deliveries, &stop).await
            };
            for settlement in settled {
                if outcomes.send(settlement).is_err() {
                    return;
                }
            }
        }
    });
    tx
}

/// Handles the messages of a lane that queued together: in one `handle_batch` call, or, if
/// that fails, one by one as if they had come alone.
async fn process_batch(
    subscription: &Subscription,
    handler: &dyn EventHandler,
    deliveries: Vec<Delivery>,
    stop: &CancellationToken,
) -> Vec<(Delivery, Outcome)> {
    let mut settled = Vec::with_capacity(deliveries.len());
    let mut decoded = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match decode(subscription, &delivery.payload) {
            Ok(envelope) => decoded.push((delivery, envelope)),
            Err(outcome) => settled.push((delivery, outcome)),
        }
    }
    if decoded.len() > 1 {
        let (deliveries, envelopes): (Vec<Delivery>, Vec<Envelope>) = decoded.into_iter().unzip();
        let count = envelopes.len();
        let span = tracing::info_span!("events", subscription = %subscription.name, count,
            first_event_id = %envelopes[0].event_id);
        let results = handler.handle_batch(&envelopes).instrument(span).await;
        BATCH_SIZE
            .with_label_values(&[subscription.name.as_str()])
            .observe(count as f64);
        decoded = Vec::new();
        let mut applied = 0;
        let mut results = results.into_iter();
        for (delivery, envelope) in deliveries.into_iter().zip(envelopes) {
            match results.next() {
                Some(Ok(())) => {
                    applied += 1;
                    observe_lag(subscription, envelope.occurred_at);
                    settled.push((delivery, Outcome::Ack));
                }
                Some(Err(error)) => {
                    tracing::debug!(subscription = %subscription.name, %error,
                        event_id = %envelope.event_id, "not applied in its batch; handling it alone");
                    decoded.push((delivery, envelope));
                }
                // A handler that answered fewer events than it got: the rest go alone.
                None => decoded.push((delivery, envelope)),
            }
        }
        CONSUMED
            .with_label_values(&[subscription.name.as_str(), "ok"])
            .inc_by(applied);
    }
    for (delivery, envelope) in decoded {
        let outcome = if stop.is_cancelled() {
            // Not started: back to the broker, like a message still queued.
            Outcome::Release
        } else {
            handle_one(subscription, handler, envelope, stop).await
        };
        settled.push((delivery, outcome));
    }
    settled
}

/// Messages waiting in one lane. Small: what waits here is what a shutdown gives back.
const LANE_QUEUE: usize = 64;

async fn process(
    subscription: &Subscription,
    handler: &dyn EventHandler,
    payload: &[u8],
    stop: &CancellationToken,
) -> Outcome {
    match decode(subscription, payload) {
        Ok(envelope) => handle_one(subscription, handler, envelope, stop).await,
        Err(outcome) => outcome,
    }
}

/// The envelope of a message, or what to tell the broker about one that is not an envelope.
fn decode(subscription: &Subscription, payload: &[u8]) -> Result<Envelope, Outcome> {
    serde_json::from_slice(payload).map_err(|error| {
        tracing::error!(subscription = %subscription.name, %error, "undecodable event, dead-lettering");
        CONSUMED
            .with_label_values(&[subscription.name.as_str(), "undecodable"])
            .inc();
        // Redeliveries cannot fix it: straight to the dead-letter topic.
        Outcome::DeadLetter(format!("not an event envelope: {error}"))
    })
}

async fn handle_one(
    subscription: &Subscription,
    handler: &dyn EventHandler,
    envelope: Envelope,
    stop: &CancellationToken,
) -> Outcome {
    // Attached with `instrument`, never entered across an await: a span entered while the
    // task is suspended would become the parent of whatever runs next on that thread.
    let span = tracing::info_span!("event", event_id = %envelope.event_id,
        event_type = %envelope.event_type, request_id = %envelope.correlation_id);
    handle_with_retries(subscription, handler, envelope, stop)
        .instrument(span)
        .await
}

async fn handle_with_retries(
    subscription: &Subscription,
    handler: &dyn EventHandler,
    envelope: Envelope,
    stop: &CancellationToken,
) -> Outcome {
    let attempt = || async { handler.handle(envelope.clone()).await };
    let occurred_at = envelope.occurred_at;
    let result = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(subscription.attempts.saturating_sub(1)),
        )
        // No new attempt once stopping: the message goes back to the broker instead.
        .when(|error| matches!(error, HandlerError::Transient(_)) && !stop.is_cancelled())
        .notify(|error, after| tracing::warn!(%error, ?after, "event handler failed, retrying"))
        .await;
    match result {
        Ok(()) => {
            CONSUMED
                .with_label_values(&[subscription.name.as_str(), "ok"])
                .inc();
            observe_lag(subscription, occurred_at);
            Outcome::Ack
        }
        Err(HandlerError::Transient(error)) if stop.is_cancelled() => {
            tracing::info!(%error, "event handler failed while stopping; the message goes back to the broker");
            CONSUMED
                .with_label_values(&[subscription.name.as_str(), "released"])
                .inc();
            Outcome::Release
        }
        Err(HandlerError::Permanent(reason)) => {
            tracing::error!(%reason, "event handler refused the event for good");
            CONSUMED
                .with_label_values(&[subscription.name.as_str(), "rejected"])
                .inc();
            Outcome::DeadLetter(reason)
        }
        Err(HandlerError::Transient(error)) => {
            tracing::error!(%error, "event handler gave up; returning the message to the broker");
            CONSUMED
                .with_label_values(&[subscription.name.as_str(), "returned"])
                .inc();
            Outcome::Nack(format!("{error:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_always_lands_in_the_same_lane() {
        for lanes in 1..8 {
            let first = lane_for("pago-42", lanes);
            assert!(first < lanes);
            assert_eq!(first, lane_for("pago-42", lanes));
        }
    }

    #[test]
    fn envelope_round_trips_with_the_contract_field_names() {
        let envelope = Envelope {
            event_id: Uuid::nil(),
            event_type: "PagoPendiente".into(),
            aggregate_type: "Pago".into(),
            aggregate_id: "p-1".into(),
            aggregate_version: 1,
            occurred_at: DateTime::parse_from_rfc3339("2026-11-28T06:22:56.396530Z")
                .unwrap()
                .into(),
            correlation_id: "req-1".into(),
            data: serde_json::json!({"estado": "PENDIENTE"}),
        };
        let json = serde_json::to_value(&envelope).unwrap();
        for field in [
            "event_id",
            "event_type",
            "aggregate_type",
            "aggregate_id",
            "aggregate_version",
            "occurred_at",
            "correlation_id",
            "data",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(serde_json::from_value::<Envelope>(json).unwrap(), envelope);
    }
}
