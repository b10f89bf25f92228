//! Dead letters: a message a consumer cannot apply (undecodable, refused as permanently
//! invalid, or still failing after `max_redeliveries` redeliveries) is moved to `<topic>-DLQ`
//! with why, by whom and how often it failed, then acknowledged; the consumer moves on.
//!
//! The consumer decides this itself rather than through the `pulsar` crate's dead-letter
//! policy: the crate does it inside its engine, where nothing can count it, and only for a
//! consumer of a single topic (the data services read three). The crate also does not expose
//! the broker's redelivery count, so failures are counted per message in the consuming
//! process: a consumer that restarts starts its count again (more retries, never fewer).
//!
//! Every dead-letter topic keeps a durable subscription, [`RETAINING_SUBSCRIPTION`], made
//! before the first message is moved there: a topic without subscriptions keeps nothing. The
//! `aeropartners dlq` command lists what waits there and replays it to its topic, marked for
//! the subscription that failed it ([`REPLAY_FOR`]); other subscriptions of the topic skip the
//! replay, and the failing one's inbox applies it once even if it is replayed twice.

use std::{
    collections::{HashMap, HashSet},
    sync::LazyLock,
    time::Duration,
};

use futures::StreamExt;
use prometheus::IntCounterVec;
use pulsar::{SubType, TokioExecutor, consumer::InitialPosition, proto::MessageIdData};
use serde::Serialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{Broker, MessagingError, Outgoing};
use crate::telemetry;

pub mod cli;

/// Appended to a topic's full name to name its dead-letter topic (API.md §7).
pub const DLQ_SUFFIX: &str = "-DLQ";
/// The subscription that keeps a dead-letter topic's messages until they are replayed.
pub const RETAINING_SUBSCRIPTION: &str = "dead-letters";

/// Properties a dead letter carries besides the original ones (`event_id`, `event_type`).
pub const ORIGIN_TOPIC: &str = "origin_topic";
pub const FAILED_SUBSCRIPTION: &str = "dead_letter_subscription";
pub const REASON: &str = "dead_letter_reason";
pub const DELIVERIES: &str = "dead_letter_deliveries";
pub const DEAD_LETTERED_AT: &str = "dead_lettered_at";
/// On a replayed message: the only subscription that applies it.
pub const REPLAY_FOR: &str = "replay_for";

/// Failures counted at most for this many messages at once; beyond, the counts start over
/// (a message then gets more redeliveries, never fewer).
const MAX_TRACKED: usize = 100_000;

static DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    telemetry::counter_vec(
        "events_dead_lettered_total",
        "Messages a consumer moved to their topic's DLQ, by subscription and topic",
        &["subscription", "topic"],
    )
});

/// Registers a subscription's series at 0, so an alert on their rate has a starting point.
pub(super) fn register(subscription: &str, topics: &[String]) {
    for topic in topics {
        DEAD_LETTERED.with_label_values(&[subscription, topic.as_str()]);
    }
}

/// Which message a count belongs to: topic, ledger, entry, partition and batch index.
type MessageKey = (String, u64, u64, i32, i32);

fn message_key(topic: &str, id: &MessageIdData) -> MessageKey {
    (
        topic.to_owned(),
        id.ledger_id,
        id.entry_id,
        id.partition.unwrap_or(-1),
        id.batch_index.unwrap_or(-1),
    )
}

/// Failed deliveries per message, kept across the consumer's reconnections.
#[derive(Debug, Default)]
pub(super) struct FailureCounts(HashMap<MessageKey, u32>);

impl FailureCounts {
    /// Records one more failed delivery; returns how many there have been.
    pub(super) fn failed(&mut self, topic: &str, id: &MessageIdData) -> u32 {
        if self.0.len() >= MAX_TRACKED {
            self.0.clear();
        }
        let count = self.0.entry(message_key(topic, id)).or_default();
        *count += 1;
        *count
    }

    pub(super) fn forget(&mut self, topic: &str, id: &MessageIdData) {
        self.0.remove(&message_key(topic, id));
    }
}

/// A message on its way to a dead-letter topic.
pub(super) struct Rejected<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub key: &'a str,
    pub properties: &'a [(String, String)],
    pub reason: &'a str,
    pub deliveries: u32,
}

/// Moves rejected messages of one subscription to their dead-letter topics.
pub(super) struct DeadLetterer {
    broker: Broker,
    subscription: String,
    /// Dead-letter topics whose retaining subscription this process has made sure of.
    retained: Mutex<HashSet<String>>,
}

impl DeadLetterer {
    pub(super) fn new(broker: Broker, subscription: &str) -> Self {
        Self {
            broker,
            subscription: subscription.to_owned(),
            retained: Mutex::default(),
        }
    }

    /// Publishes `rejected` to its dead-letter topic; the caller acknowledges the original once
    /// this returns Ok (a failure leaves it to come back and be tried again).
    pub(super) async fn dead_letter(&self, rejected: Rejected<'_>) -> Result<(), MessagingError> {
        let dlq = format!("{}{DLQ_SUFFIX}", rejected.topic);
        self.retain(&dlq).await?;
        let mut properties: Vec<(String, String)> = rejected
            .properties
            .iter()
            .filter(|(name, _)| name != REPLAY_FOR)
            .cloned()
            .collect();
        properties.extend([
            (ORIGIN_TOPIC.to_owned(), rejected.topic.to_owned()),
            (FAILED_SUBSCRIPTION.to_owned(), self.subscription.clone()),
            (REASON.to_owned(), truncate(rejected.reason, 1000)),
            (DELIVERIES.to_owned(), rejected.deliveries.to_string()),
            (DEAD_LETTERED_AT.to_owned(), chrono::Utc::now().to_rfc3339()),
        ]);
        self.broker
            .publish_raw(
                &dlq,
                vec![Outgoing {
                    payload: rejected.payload.to_vec(),
                    key: rejected.key.to_owned(),
                    properties,
                    event_time: 0,
                }],
            )
            .await?;
        DEAD_LETTERED
            .with_label_values(&[self.subscription.as_str(), rejected.topic])
            .inc();
        tracing::error!(subscription = %self.subscription, topic = %rejected.topic,
            deliveries = rejected.deliveries, reason = %rejected.reason,
            "message moved to the dead-letter topic; `aeropartners dlq list` shows it, `aeropartners dlq replay` sends it back");
        Ok(())
    }

    async fn retain(&self, dlq: &str) -> Result<(), MessagingError> {
        let mut retained = self.retained.lock().await;
        if !retained.contains(dlq) {
            ensure_retained(&self.broker, dlq).await?;
            retained.insert(dlq.to_owned());
        }
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Creates the retaining subscription of a dead-letter topic (a no-op when it exists).
async fn ensure_retained(broker: &Broker, dlq: &str) -> Result<(), MessagingError> {
    let mut consumer = retaining_consumer(broker, dlq).await?;
    let _ = consumer.close().await;
    Ok(())
}

async fn retaining_consumer(
    broker: &Broker,
    dlq: &str,
) -> Result<pulsar::Consumer<Vec<u8>, TokioExecutor>, MessagingError> {
    Ok(broker
        .client()
        .consumer()
        .with_topic(dlq)
        .with_subscription(RETAINING_SUBSCRIPTION)
        .with_subscription_type(SubType::Shared)
        .with_consumer_name(format!("dlq-{}", Uuid::new_v4()))
        .with_options(pulsar::ConsumerOptions {
            initial_position: InitialPosition::Earliest,
            durable: Some(true),
            ..pulsar::ConsumerOptions::default()
        })
        .build()
        .await?)
}

/// A message waiting in a dead-letter topic, as `aeropartners dlq list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// `ledger:entry` in the dead-letter topic: what `dlq replay --message` selects.
    pub message_id: String,
    pub origin_topic: String,
    pub subscription: String,
    pub reason: String,
    pub deliveries: u32,
    pub dead_lettered_at: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub key: String,
    /// The payload as JSON when it is JSON, else as (lossy) text.
    pub payload: serde_json::Value,
}

/// Which dead letters a replay sends back.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these message ids (`ledger:entry`); empty: every one.
    pub message_ids: Vec<String>,
    /// Only these event ids; empty: every one.
    pub event_ids: Vec<String>,
}

impl Selection {
    fn selects(&self, letter: &DeadLetter) -> bool {
        (self.message_ids.is_empty() || self.message_ids.contains(&letter.message_id))
            && (self.event_ids.is_empty()
                || letter
                    .event_id
                    .as_ref()
                    .is_some_and(|id| self.event_ids.contains(id)))
    }
}

/// How long the listing waits for one more message before it concludes the topic is read.
const QUIET: Duration = Duration::from_secs(2);

/// The dead letters waiting in a dead-letter topic when it was opened: what arrives later
/// (a replay that failed again, a new refusal) is left for the next run, so a replay of a
/// message that still fails ends instead of chasing it for ever.
struct Snapshot {
    consumer: pulsar::Consumer<Vec<u8>, TokioExecutor>,
    last: (u64, u64),
}

impl Snapshot {
    async fn open(broker: &Broker, dlq: &str) -> Result<Self, MessagingError> {
        let mut consumer = retaining_consumer(broker, dlq).await?;
        let last = consumer
            .get_last_message_id()
            .await?
            .first()
            .map_or((0, 0), |id| (id.ledger_id, id.entry_id));
        Ok(Self { consumer, last })
    }

    /// The next message of the snapshot; None once the topic is quiet.
    async fn next(&mut self) -> Result<Option<pulsar::consumer::Message<Vec<u8>>>, MessagingError> {
        while let Ok(Some(message)) = tokio::time::timeout(QUIET, self.consumer.next()).await {
            let message = message?;
            let id = &message.message_id.id;
            if (id.ledger_id, id.entry_id) <= self.last {
                return Ok(Some(message));
            }
            // Newer than the snapshot: not acknowledged, so it stays for the next run.
        }
        Ok(None)
    }

    /// Gives every message not acknowledged back to the subscription.
    async fn close(mut self) {
        let _ = self.consumer.close().await;
    }
}

/// Reads every dead letter waiting in `dlq` (a full topic name) without removing any; they
/// stay for a replay.
pub async fn list(broker: &Broker, dlq: &str) -> Result<Vec<DeadLetter>, MessagingError> {
    let mut snapshot = Snapshot::open(broker, dlq).await?;
    let mut letters = Vec::new();
    while let Some(message) = snapshot.next().await? {
        letters.push(read(&message));
    }
    // Nothing was acknowledged: closing gives every message back to the subscription.
    snapshot.close().await;
    Ok(letters)
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Replayed {
    /// Sent back to their topic, each for the subscription that failed it.
    pub replayed: Vec<DeadLetter>,
    /// Not selected: still waiting in the dead-letter topic.
    pub left: usize,
}

/// Sends the selected dead letters of `dlq` back to their topics, each marked for the
/// subscription that failed it, and removes them from `dlq` once the broker stored the replay.
pub async fn replay(
    broker: &Broker,
    dlq: &str,
    selection: &Selection,
) -> Result<Replayed, MessagingError> {
    let mut snapshot = Snapshot::open(broker, dlq).await?;
    let mut outcome = Replayed::default();
    while let Some(message) = snapshot.next().await? {
        let letter = read(&message);
        if !selection.selects(&letter) {
            outcome.left += 1;
            continue;
        }
        let mut properties: Vec<(String, String)> = message
            .payload
            .metadata
            .properties
            .iter()
            .filter(|p| {
                ![
                    ORIGIN_TOPIC,
                    FAILED_SUBSCRIPTION,
                    REASON,
                    DELIVERIES,
                    DEAD_LETTERED_AT,
                ]
                .contains(&p.key.as_str())
            })
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        properties.push((REPLAY_FOR.to_owned(), letter.subscription.clone()));
        broker
            .publish_raw(
                &letter.origin_topic,
                vec![Outgoing {
                    payload: message.payload.data.clone(),
                    key: letter.key.clone(),
                    properties,
                    event_time: message.payload.metadata.event_time.unwrap_or_default(),
                }],
            )
            .await?;
        // Replayed before acknowledged: a crash in between replays it again, and the
        // subscription's inbox applies it once.
        snapshot
            .consumer
            .ack(&message)
            .await
            .map_err(pulsar::Error::Consumer)?;
        outcome.replayed.push(letter);
    }
    snapshot.close().await;
    Ok(outcome)
}

fn read(message: &pulsar::consumer::Message<Vec<u8>>) -> DeadLetter {
    let property = |name: &str| {
        message
            .payload
            .metadata
            .properties
            .iter()
            .find(|p| p.key == name)
            .map(|p| p.value.clone())
    };
    let data = &message.payload.data;
    DeadLetter {
        message_id: format!(
            "{}:{}",
            message.message_id.id.ledger_id, message.message_id.id.entry_id
        ),
        origin_topic: property(ORIGIN_TOPIC).unwrap_or_default(),
        subscription: property(FAILED_SUBSCRIPTION).unwrap_or_default(),
        reason: property(REASON).unwrap_or_default(),
        deliveries: property(DELIVERIES)
            .and_then(|d| d.parse().ok())
            .unwrap_or_default(),
        dead_lettered_at: property(DEAD_LETTERED_AT).unwrap_or_default(),
        event_id: property("event_id"),
        event_type: property("event_type"),
        key: message.key().unwrap_or_default(),
        payload: serde_json::from_slice(data)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(data).into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(entry: u64) -> MessageIdData {
        MessageIdData {
            ledger_id: 7,
            entry_id: entry,
            ..MessageIdData::default()
        }
    }

    #[test]
    fn failures_are_counted_per_message_until_forgotten() {
        let mut counts = FailureCounts::default();
        assert_eq!(counts.failed("t", &id(1)), 1);
        assert_eq!(counts.failed("t", &id(1)), 2);
        assert_eq!(counts.failed("t", &id(2)), 1);
        assert_eq!(counts.failed("other", &id(1)), 1);
        counts.forget("t", &id(1));
        assert_eq!(counts.failed("t", &id(1)), 1);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("ñandú", 3), "ñan…");
        assert_eq!(truncate("corto", 10), "corto");
    }
}
