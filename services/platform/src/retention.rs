//! Retention: rows that only guard against repeats (published outbox rows, inbox rows, expired
//! idempotency keys, a context's own dedup rows) are deleted once they are older than their
//! horizon, so the tables stop growing with traffic. A horizon is never shorter than the
//! guarantee the rows give (API.md: at least 24 h), which the configuration enforces.
//!
//! Deletes go a chunk at a time with `FOR UPDATE SKIP LOCKED`: no long lock, no wait on a row
//! a writer holds, and every replica of a context may run the job at once without contending.
//! Each run also refreshes a gauge of every table's size in the schema.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{config::parse_duration, telemetry};

/// The shortest horizon accepted for rows that deduplicate: API.md keeps idempotency keys and
/// dedup keys at least 24 h, and an inbox row or a published outbox row must last as long.
pub const MIN_HORIZON: Duration = Duration::from_secs(24 * 3600);

/// Rows deleted by one statement.
const CHUNK: i64 = 5_000;

/// How long the processed rows of every context are kept.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionConfig {
    /// How long an outbox row is kept once published (the payment trace and the collector's
    /// event status read it). At least 24 h.
    #[arg(long, env = "RETENTION_OUTBOX", default_value = "7d", value_parser = parse_horizon)]
    pub retention_outbox: Duration,
    /// How long a consumer remembers an event it applied: a redelivery, a republished event or
    /// a replayed dead letter within this horizon is skipped. At least 24 h.
    #[arg(long, env = "RETENTION_INBOX", default_value = "7d", value_parser = parse_horizon)]
    pub retention_inbox: Duration,
    /// How often the retention job runs (and the table-size gauges refresh).
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub retention_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            retention_outbox: Duration::from_secs(7 * 24 * 3600),
            retention_inbox: Duration::from_secs(7 * 24 * 3600),
            retention_interval: Duration::from_secs(600),
        }
    }
}

/// A horizon for rows that deduplicate: a duration of at least [`MIN_HORIZON`].
pub fn parse_horizon(raw: &str) -> Result<Duration, String> {
    let horizon = parse_duration(raw)?;
    if horizon < MIN_HORIZON {
        return Err(format!(
            "{raw} is shorter than the 24 h these rows must deduplicate for"
        ));
    }
    Ok(horizon)
}

/// One table's retention rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The table, in the context's schema (on the connection's `search_path`).
    pub table: &'static str,
    /// Its primary key columns: `id`, `event_id, consumer`.
    pub key: &'static str,
    /// The timestamp column that ages the row; a NULL never expires (an unpublished event).
    pub aged_by: &'static str,
    /// Rows whose `aged_by` is older than `now() - horizon` are deleted.
    pub horizon: Duration,
}

impl Rule {
    /// The platform's tables every context owns: published outbox rows, inbox rows and
    /// idempotency keys (whose `expires_at` already holds their 24 h).
    pub fn platform_tables(config: &RetentionConfig) -> Vec<Rule> {
        vec![
            Rule {
                table: "outbox",
                key: "id",
                aged_by: "published_at",
                horizon: config.retention_outbox,
            },
            Rule {
                table: "inbox",
                key: "event_id, consumer",
                aged_by: "processed_at",
                horizon: config.retention_inbox,
            },
            Rule {
                table: "idempotency_keys",
                key: "scope, key",
                aged_by: "expires_at",
                horizon: Duration::ZERO,
            },
        ]
    }

    fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {table} WHERE ({key}) IN ( \
                 SELECT {key} FROM {table} \
                 WHERE {aged_by} < clock_timestamp() - $1::interval \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            table = self.table,
            key = self.key,
            aged_by = self.aged_by,
        )
    }
}

/// What one run of a rule did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    pub table: &'static str,
    pub rows: u64,
}

/// The retention job of one schema.
#[derive(Debug, Clone)]
pub struct Retention {
    pool: PgPool,
    schema: String,
    rules: Vec<Rule>,
}

impl Retention {
    pub fn new(pool: PgPool, schema: &str, rules: Vec<Rule>) -> Self {
        Self {
            pool,
            schema: schema.to_owned(),
            rules,
        }
    }

    /// Deletes every expired row of every rule, a chunk at a time, then refreshes the table
    /// sizes. Returns what each rule deleted.
    pub async fn run_once(&self) -> Result<Vec<Purged>, sqlx::Error> {
        let mut purged = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let label = format!("{}.{}", self.schema, rule.table);
            let started = Instant::now();
            // Built from the rules' static table and column names only; the horizon is bound.
            let sql = rule.delete_sql();
            let mut rows = 0;
            loop {
                let chunk_started = Instant::now();
                let deleted = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(format!("{} milliseconds", rule.horizon.as_millis()))
                    .bind(CHUNK)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                rows += deleted;
                if deleted < CHUNK as u64 {
                    break;
                }
                // Half the time deleting, half resting: the purge of a large backlog then
                // takes twice as long, but the writes beside it keep most of the database
                // (bench-retention: without the pause, four writers lost half their
                // throughput while a million rows went).
                tokio::time::sleep(chunk_started.elapsed()).await;
            }
            DELETED.with_label_values(&[&label]).inc_by(rows);
            RUN_SECONDS
                .with_label_values(&[&label])
                .observe(started.elapsed().as_secs_f64());
            purged.push(Purged {
                table: rule.table,
                rows,
            });
        }
        self.refresh_table_sizes().await?;
        Ok(purged)
    }

    /// Sets `table_rows` and `table_bytes` for every table of the schema (rows as the
    /// statistics collector estimates them: exact counts would scan every table).
    pub async fn refresh_table_sizes(&self) -> Result<(), sqlx::Error> {
        let sizes: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, greatest(n_live_tup, 0), pg_total_relation_size(relid) \
             FROM pg_stat_user_tables WHERE schemaname = $1",
        )
        .bind(&self.schema)
        .fetch_all(&self.pool)
        .await?;
        for (table, rows, bytes) in sizes {
            let label = format!("{}.{table}", self.schema);
            TABLE_ROWS.with_label_values(&[&label]).set(rows);
            TABLE_BYTES.with_label_values(&[&label]).set(bytes);
        }
        Ok(())
    }

    /// Runs the job every `interval` (the first run right away) until `shutdown`.
    pub fn spawn(
        self,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.run_once().await {
                    Ok(purged) => {
                        for Purged { table, rows } in purged.into_iter().filter(|p| p.rows > 0) {
                            tracing::info!(schema = %self.schema, table, rows, "purged rows past their retention horizon");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(schema = %self.schema, %error, "retention run failed; will try again");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        })
    }
}

static DELETED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    telemetry::counter_vec(
        "retention_deleted_rows_total",
        "Rows deleted past their retention horizon, by schema.table",
        &["table"],
    )
});
static RUN_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    telemetry::histogram_vec(
        "retention_run_seconds",
        "Time one retention run of a table took, by schema.table",
        &["table"],
    )
});
static TABLE_ROWS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "table_rows",
        "Live rows of a table (PostgreSQL's estimate), by schema.table",
    )
});
static TABLE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "table_bytes",
        "Size of a table with its indexes and TOAST, by schema.table",
    )
});

fn gauge(name: &str, help: &str) -> IntGaugeVec {
    telemetry::register(
        IntGaugeVec::new(prometheus::Opts::new(name, help), &["table"]).expect("valid metric"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_shorter_than_the_dedup_guarantee_are_refused() {
        assert_eq!(parse_horizon("7d"), Ok(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(parse_horizon("24h"), Ok(MIN_HORIZON));
        let refused = parse_horizon("23h").unwrap_err();
        assert!(refused.contains("24 h"), "{refused}");
        assert!(parse_horizon("soon").is_err());
    }
}
