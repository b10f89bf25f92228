//! The transactional outbox: an event row is written in the same transaction as the state
//! change that caused it, and a relay publishes committed rows to Pulsar.
//!
//! The relay is safe to run in every replica: rows are claimed with `FOR UPDATE SKIP LOCKED`,
//! and only the oldest unpublished row of each aggregate is eligible, so an aggregate's events
//! reach the broker in order even when several relays race. It wakes on `LISTEN/NOTIFY` (a
//! trigger notifies on insert) and falls back to a short poll for rows waiting out a backoff.

use std::{collections::BTreeMap, sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;

use crate::{
    messaging::{Broker, Envelope, Keyed},
    telemetry,
};

/// Adds `envelope` to the outbox inside the caller's transaction.
pub async fn enqueue(
    tx: &mut PgConnection,
    topic: &str,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, \
         aggregate_version, topic, envelope) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(envelope.event_id)
    .bind(&envelope.event_type)
    .bind(&envelope.aggregate_type)
    .bind(&envelope.aggregate_id)
    .bind(envelope.aggregate_version)
    .bind(topic)
    .bind(sqlx::types::Json(envelope))
    .execute(tx)
    .await?;
    Ok(())
}

/// One row for [`enqueue_many`].
#[derive(Debug, Clone)]
pub struct Pending<'a> {
    pub topic: &'a str,
    /// The Pulsar message key; `None` keys the message by its aggregate id.
    pub message_key: Option<&'a str>,
    pub envelope: &'a Envelope,
}

/// Outbox rows as the eight arrays an `INSERT INTO outbox … SELECT … FROM unnest(…)` binds:
/// [`enqueue_many`] inserts them alone, and a context's own statement can insert them together
/// with the change that caused them (see [`Columns::select_sql`]), in one round trip.
#[derive(Debug, Default)]
pub struct Columns<'a> {
    event_ids: Vec<uuid::Uuid>,
    event_types: Vec<&'a str>,
    aggregate_types: Vec<&'a str>,
    aggregate_ids: Vec<&'a str>,
    aggregate_versions: Vec<i64>,
    topics: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    envelopes: Vec<serde_json::Value>,
}

impl<'a> Columns<'a> {
    pub fn new(rows: &[Pending<'a>]) -> Result<Self, sqlx::Error> {
        let mut columns = Self::default();
        for row in rows {
            columns.event_ids.push(row.envelope.event_id);
            columns.event_types.push(row.envelope.event_type.as_str());
            columns
                .aggregate_types
                .push(row.envelope.aggregate_type.as_str());
            columns
                .aggregate_ids
                .push(row.envelope.aggregate_id.as_str());
            columns
                .aggregate_versions
                .push(row.envelope.aggregate_version);
            columns.topics.push(row.topic);
            columns.keys.push(row.message_key);
            columns.envelopes.push(
                serde_json::to_value(row.envelope).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
            );
        }
        Ok(columns)
    }

    pub fn is_empty(&self) -> bool {
        self.event_ids.is_empty()
    }

    /// The columns the rows go into, in the order [`Self::select_sql`] yields them.
    pub const INSERT_COLUMNS: &'static str = "INSERT INTO outbox (event_id, event_type, \
        aggregate_type, aggregate_id, aggregate_version, topic, message_key, envelope)";

    /// `SELECT * FROM unnest(…) AS <alias>(event_id, …, envelope)` over the eight parameters
    /// from `$first` on, which [`Self::bind`] binds in order. A statement may filter it by
    /// `<alias>.aggregate_id`.
    pub fn select_sql(first: usize, alias: &str) -> String {
        let p = |i: usize| first + i;
        format!(
            "SELECT {alias}.* FROM unnest(${}::uuid[], ${}::text[], ${}::text[], ${}::text[], \
             ${}::int8[], ${}::text[], ${}::text[], ${}::jsonb[]) \
             AS {alias}(event_id, event_type, aggregate_type, aggregate_id, aggregate_version, \
                        topic, message_key, envelope)",
            p(0),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7)
        )
    }

    /// Binds the eight arrays, in the order of [`Self::select_sql`].
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        bind_columns!(self, query)
    }

    /// [`Self::bind`] for a statement that returns one column.
    pub fn bind_scalar<'q, O>(
        &'q self,
        query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        bind_columns!(self, query)
    }
}

/// The eight binds of [`Columns`], for each of sqlx's query types (they share no trait).
macro_rules! bind_columns {
    ($columns:expr, $query:expr) => {
        $query
            .bind(&$columns.event_ids)
            .bind(&$columns.event_types)
            .bind(&$columns.aggregate_types)
            .bind(&$columns.aggregate_ids)
            .bind(&$columns.aggregate_versions)
            .bind(&$columns.topics)
            .bind(&$columns.keys)
            .bind(&$columns.envelopes)
    };
}
use bind_columns;

/// Adds many envelopes to the outbox inside the caller's transaction, in one statement (one
/// round trip and one relay wake-up however many rows).
pub async fn enqueue_many(tx: &mut PgConnection, rows: &[Pending<'_>]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{} {}",
            Columns::INSERT_COLUMNS,
            Columns::select_sql(1, "u")
        )
    });
    let columns = Columns::new(rows)?;
    columns
        .bind(sqlx::query(sqlx::AssertSqlSafe(SQL.as_str())))
        .execute(tx)
        .await?;
    Ok(())
}

/// A domain event about to be recorded: everything of the envelope but its id.
#[derive(Debug, Clone)]
pub struct NewEvent<'a, T: Serialize> {
    pub event_type: &'a str,
    pub aggregate_type: &'a str,
    pub aggregate_id: String,
    pub aggregate_version: i64,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: &'a str,
    pub data: &'a T,
}

impl<T: Serialize> NewEvent<'_, T> {
    /// The envelope of this event, with a fresh id.
    pub fn into_envelope(self) -> Result<Envelope, sqlx::Error> {
        Ok(Envelope {
            event_id: uuid::Uuid::new_v4(),
            event_type: self.event_type.to_owned(),
            aggregate_type: self.aggregate_type.to_owned(),
            aggregate_id: self.aggregate_id,
            aggregate_version: self.aggregate_version,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id.to_owned(),
            data: serde_json::to_value(self.data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
        })
    }
}

/// Wraps `event` in an envelope with a fresh id and adds it to the outbox inside the caller's
/// transaction.
pub async fn record<T: Serialize>(
    tx: &mut PgConnection,
    topic: &str,
    event: NewEvent<'_, T>,
) -> Result<(), sqlx::Error> {
    enqueue(tx, topic, &event.into_envelope()?).await
}

/// `GET …/outbox/estadisticas`: `procesados + pendientes + fallidos == total` by construction,
/// since the three counts partition the rows by one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OutboxStats {
    pub total_eventos: i64,
    /// Published to the broker.
    pub eventos_procesados: i64,
    /// Not yet tried.
    pub eventos_pendientes: i64,
    /// Tried and failed at least once; the relay keeps retrying them with backoff.
    pub eventos_fallidos: i64,
    /// 99th percentile of commit-to-publish delay over the last 10 000 published events.
    pub lag_ms_p99: f64,
    /// Age of the oldest event not yet published (0 when every one is). It grows while the
    /// broker is unreachable, when `lag_ms_p99`, computed over published events, stands still.
    pub pendiente_mas_antiguo_ms: f64,
}

pub async fn stats(pool: &PgPool) -> Result<OutboxStats, sqlx::Error> {
    let (total, published, pending, failed, oldest, lag): (
        i64,
        i64,
        i64,
        i64,
        Option<f64>,
        Option<f64>,
    ) = sqlx::query_as(
            "SELECT count(*), \
                    count(*) FILTER (WHERE published_at IS NOT NULL), \
                    count(*) FILTER (WHERE published_at IS NULL AND attempts = 0), \
                    count(*) FILTER (WHERE published_at IS NULL AND attempts > 0), \
                    extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE published_at IS NULL))::float8 * 1000, \
                    (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms) FROM ( \
                        SELECT extract(epoch FROM published_at - created_at)::float8 * 1000 AS lag_ms \
                        FROM outbox WHERE published_at IS NOT NULL \
                        ORDER BY published_at DESC LIMIT 10000) recent) \
             FROM outbox",
        )
        .fetch_one(pool)
        .await?;
    Ok(OutboxStats {
        total_eventos: total,
        eventos_procesados: published,
        eventos_pendientes: pending,
        eventos_fallidos: failed,
        lag_ms_p99: lag.unwrap_or(0.0),
        pendiente_mas_antiguo_ms: oldest.unwrap_or(0.0).max(0.0),
    })
}

static PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    telemetry::counter_vec(
        "outbox_published_total",
        "Outbox events published to Pulsar, by schema",
        &["schema"],
    )
});
static PUBLISH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    telemetry::counter_vec(
        "outbox_publish_failures_total",
        "Outbox publish attempts that failed (retried with backoff), by schema",
        &["schema"],
    )
});
static LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    telemetry::histogram_vec(
        "outbox_publish_lag_seconds",
        "Delay between an outbox row's commit and its publication",
        &["schema"],
    )
});
static UNPUBLISHED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    telemetry::register(
        IntGaugeVec::new(
            prometheus::Opts::new("outbox_unpublished", "Outbox rows not yet published"),
            &["schema"],
        )
        .expect("valid metric"),
    )
});

/// Publishes committed outbox rows of one schema.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    broker: Broker,
    schema: String,
    batch_size: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: i64,
    topic: String,
    message_key: String,
    /// Decoded row by row: one envelope that cannot be read (found by fuzzing: a number
    /// PostgreSQL stores with 309 digits) must not stop every other row of the schema.
    envelope: sqlx::types::Json<Box<serde_json::value::RawValue>>,
    created_at: DateTime<Utc>,
}

/// Longest wait between two looks at the table when no notification arrives (covers rows whose
/// backoff expires, and notifications lost while the listener reconnected).
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How often the relay counts the rows still unpublished for its gauge. Counting on every pass
/// cost a scan per wake-up (thousands a second under load) for a figure scraped every 15 s.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

impl Relay {
    pub fn new(pool: PgPool, broker: Broker, schema: &str) -> Self {
        Self {
            pool,
            broker,
            schema: schema.to_owned(),
            batch_size: 256,
        }
    }

    /// Starts a relay for `schema` as soon as `broker` connects; runs until `shutdown`.
    pub fn spawn(
        pool: PgPool,
        broker: crate::messaging::LazyBroker,
        schema: &'static str,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if let Some(broker) = broker.wait(&shutdown).await {
                Relay::new(pool, broker, schema).run(shutdown).await;
            }
        })
    }

    /// Runs until `shutdown`; never gives up on an event.
    pub async fn run(self, shutdown: CancellationToken) {
        // This schema's series exist from the start (at 0) for dashboards and alerts.
        let schema = self.schema.as_str();
        PUBLISHED.with_label_values(&[schema]).inc_by(0);
        PUBLISH_FAILURES.with_label_values(&[schema]).inc_by(0);
        LAG.with_label_values(&[schema]);
        let channel = format!("{}_outbox", self.schema);
        let mut listener = None;
        let mut gauge_refreshed: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            if listener.is_none() {
                listener = match PgListener::connect_with(&self.pool).await {
                    Ok(mut l) => match l.listen(&channel).await {
                        Ok(()) => Some(l),
                        Err(error) => {
                            tracing::warn!(%error, "outbox relay cannot LISTEN; polling");
                            None
                        }
                    },
                    Err(error) => {
                        tracing::warn!(%error, "outbox relay cannot connect its listener; polling");
                        None
                    }
                };
            }
            // Drain everything that is due, then sleep until notified. A stopping relay leaves
            // the rest of a backlog to the other replicas (or to its own next start).
            while !shutdown.is_cancelled() {
                match self.relay_once().await {
                    Ok(n) if n as i64 >= self.batch_size => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "outbox relay pass failed");
                        break;
                    }
                }
            }
            if gauge_refreshed.is_none_or(|at| at.elapsed() >= GAUGE_INTERVAL) {
                self.refresh_gauge().await;
                gauge_refreshed = Some(tokio::time::Instant::now());
            }
            let wait = async {
                match listener.as_mut() {
                    Some(l) => match tokio::time::timeout(POLL_INTERVAL, l.recv()).await {
                        Ok(Ok(_)) => {
                            // Commits that landed while the last pass ran notified once each,
                            // and that pass (or the next) relays all their rows: one pass for
                            // all of them, not an empty pass (and a commit) per notification.
                            // (`recv` is cancel-safe: polled once, it takes what has arrived.)
                            let mut healthy = true;
                            while let Some(next) = l.recv().now_or_never() {
                                if next.is_err() {
                                    healthy = false;
                                    break;
                                }
                            }
                            healthy
                        }
                        Err(_) => true,
                        Ok(Err(_)) => false,
                    },
                    None => {
                        tokio::time::sleep(POLL_INTERVAL).await;
                        true
                    }
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                healthy = wait => if !healthy { listener = None; },
            }
        }
    }

    /// Claims a batch of due rows, publishes them, and records the outcome. Returns how many
    /// rows it claimed.
    pub async fn relay_once(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let claimed: Vec<Claimed> = sqlx::query_as(
            "SELECT id, topic, coalesce(message_key, aggregate_id) AS message_key, envelope, created_at \
             FROM outbox o \
             WHERE published_at IS NULL AND next_attempt_at <= clock_timestamp() \
               AND NOT EXISTS (SELECT 1 FROM outbox earlier \
                               WHERE earlier.aggregate_id = o.aggregate_id \
                                 AND earlier.published_at IS NULL AND earlier.id < o.id) \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let count = claimed.len();
        let mut failed = Vec::new();
        let mut last_error = String::new();
        let mut by_topic: BTreeMap<&str, Vec<(&Claimed, Envelope)>> = BTreeMap::new();
        for row in &claimed {
            match serde_json::from_str::<Envelope>(row.envelope.0.get()) {
                Ok(envelope) => by_topic
                    .entry(row.topic.as_str())
                    .or_default()
                    .push((row, envelope)),
                Err(error) => {
                    // Left unpublished with its reason (attempts grow, `/ready` and the
                    // outbox gauges show it); the rows behind it go on.
                    tracing::error!(schema = %self.schema, id = row.id, %error, "outbox row cannot be decoded");
                    last_error = format!("envelope cannot be decoded: {error}");
                    failed.push(row.id);
                }
            }
        }
        let publishes = by_topic.into_iter().map(|(topic, rows)| async move {
            let messages: Vec<Keyed<'_>> = rows
                .iter()
                .map(|(r, envelope)| Keyed {
                    key: &r.message_key,
                    envelope,
                })
                .collect();
            let result = self.broker.publish_keyed(topic, &messages).await;
            (rows, result)
        });
        let mut published = Vec::new();
        for (rows, result) in futures::future::join_all(publishes).await {
            match result {
                Ok(()) => published.extend(rows.into_iter().map(|(row, _)| row)),
                Err(error) => {
                    last_error = error.to_string();
                    failed.extend(rows.iter().map(|(row, _)| row.id));
                }
            }
        }
        let published_ids: Vec<i64> = published.iter().map(|r| r.id).collect();
        let published_at: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE outbox SET published_at = clock_timestamp(), attempts = attempts + 1, \
             last_error = NULL WHERE id = ANY($1) RETURNING published_at",
        )
        .bind(&published_ids)
        .fetch_all(&mut *tx)
        .await?;
        if !failed.is_empty() {
            tracing::warn!(schema = %self.schema, events = failed.len(), error = %last_error,
                "publishing outbox events failed; will retry with backoff");
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = clock_timestamp() + least(interval '100 milliseconds' * power(2, least(attempts, 10)), interval '10 seconds') \
                 WHERE id = ANY($1)",
            )
            .bind(&failed)
            .bind(&last_error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        let schema = self.schema.as_str();
        PUBLISHED
            .with_label_values(&[schema])
            .inc_by(published.len() as u64);
        PUBLISH_FAILURES
            .with_label_values(&[schema])
            .inc_by(failed.len() as u64);
        let now = published_at.first().copied().unwrap_or_else(Utc::now);
        for row in &published {
            let lag = (now - row.created_at).to_std().unwrap_or_default();
            LAG.with_label_values(&[schema]).observe(lag.as_secs_f64());
        }
        Ok(count)
    }

    async fn refresh_gauge(&self) {
        if let Ok(pending) =
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await
        {
            UNPUBLISHED
                .with_label_values(&[self.schema.as_str()])
                .set(pending);
        }
    }
}
