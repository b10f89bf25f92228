//! The retention job against a real PostgreSQL: it deletes exactly the rows past their
//! horizon (never an unpublished event, never a live key), in chunks, with replicas running it
//! at once, and reports every table's size.

use std::time::Duration;

use platform::{
    db,
    retention::{Purged, Retention, RetentionConfig, Rule},
    telemetry,
};
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

// Each test its own schema: the metrics are process-wide, labelled by schema.table.
const SCHEMA: &str = "retention_test";
const REPLICAS_SCHEMA: &str = "retention_replicas_test";
const DAY: &str = "1 day";

async fn migrated_pool(connect: &PgConnectOptions, schema: &str) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(db::with_schema(connect.clone(), schema))
        .await
        .unwrap();
    db::migrate(&pool, schema, &Migrator::with_migrations(Vec::new()))
        .await
        .unwrap();
    pool
}

/// `count` outbox rows created and (unless `published_days_ago` is None) published that many
/// days ago; `tag` keeps their aggregates apart.
async fn outbox_rows(pool: &PgPool, tag: &str, count: i32, published_days_ago: Option<i32>) {
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, \
             aggregate_version, topic, envelope, created_at, published_at) \
         SELECT gen_random_uuid(), 'Probado', 'Prueba', $1 || n, 1, 't', '{}', \
             now() - interval '30 days', \
             CASE WHEN $3::int IS NULL THEN NULL ELSE now() - make_interval(days => $3) END \
         FROM generate_series(1, $2) n",
    )
    .bind(tag)
    .bind(count)
    .bind(published_days_ago)
    .execute(pool)
    .await
    .unwrap();
}

async fn inbox_rows(pool: &PgPool, count: i32, days_ago: i32) {
    sqlx::query(
        "INSERT INTO inbox (event_id, consumer, event_type, processed_at) \
         SELECT gen_random_uuid(), 'c', 'Probado', now() - make_interval(days => $2) \
         FROM generate_series(1, $1)",
    )
    .bind(count)
    .bind(days_ago)
    .execute(pool)
    .await
    .unwrap();
}

async fn key(pool: &PgPool, key: &str, expires_in: &str) {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, locked_until, expires_at) \
         VALUES ('s', $1, 'h', now(), now() + $2::interval)",
    )
    .bind(key)
    .bind(expires_in)
    .execute(pool)
    .await
    .unwrap();
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn week() -> RetentionConfig {
    RetentionConfig {
        retention_outbox: Duration::from_secs(7 * 24 * 3600),
        retention_inbox: Duration::from_secs(7 * 24 * 3600),
        ..RetentionConfig::default()
    }
}

#[sqlx::test(migrations = false)]
async fn only_rows_past_their_horizon_go(_o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(&c, SCHEMA).await;
    // More than two chunks of old inbox rows, so the job must loop.
    inbox_rows(&pool, 12_345, 8).await;
    inbox_rows(&pool, 40, 6).await;
    outbox_rows(&pool, "old-", 300, Some(8)).await;
    outbox_rows(&pool, "recent-", 20, Some(6)).await;
    // Never published, a month old: the relay still owes it to the broker.
    outbox_rows(&pool, "stuck-", 5, None).await;
    key(&pool, "expired", "-1 minute").await;
    key(&pool, "live", DAY).await;

    let job = Retention::new(pool.clone(), SCHEMA, Rule::platform_tables(&week()));
    let purged = job.run_once().await.unwrap();
    assert_eq!(
        purged,
        vec![
            Purged {
                table: "outbox",
                rows: 300
            },
            Purged {
                table: "inbox",
                rows: 12_345
            },
            Purged {
                table: "idempotency_keys",
                rows: 1
            },
        ]
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM inbox").await, 40);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        5,
        "unpublished events are never purged, however old"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 25);
    assert_eq!(
        sqlx::query_scalar::<_, String>("SELECT key FROM idempotency_keys")
            .fetch_all(&pool)
            .await
            .unwrap(),
        vec!["live".to_owned()]
    );

    // A second run finds nothing more.
    let again = job.run_once().await.unwrap();
    assert!(again.iter().all(|p| p.rows == 0), "{again:?}");

    // The table sizes are exported, under schema.table.
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();
    job.refresh_table_sizes().await.unwrap();
    let metrics = telemetry::render();
    let inbox_rows_line = metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "aeropartners_table_rows{{table=\"{SCHEMA}.inbox\"}}"
            ))
        })
        .unwrap_or_else(|| panic!("no table_rows for the inbox in:\n{metrics}"));
    assert!(inbox_rows_line.ends_with(" 40"), "{inbox_rows_line}");
    assert!(
        metrics.contains(&format!(
            "aeropartners_table_bytes{{table=\"{SCHEMA}.outbox\"}}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "aeropartners_retention_deleted_rows_total{{table=\"{SCHEMA}.inbox\"}} 12345"
        )),
        "{metrics}"
    );
}

#[sqlx::test(migrations = false)]
async fn replicas_running_the_job_at_once_delete_each_row_once(
    _o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(&c, REPLICAS_SCHEMA).await;
    inbox_rows(&pool, 30_000, 10).await;
    inbox_rows(&pool, 7, 1).await;
    let job = Retention::new(
        pool.clone(),
        REPLICAS_SCHEMA,
        Rule::platform_tables(&week()),
    );
    let runs = futures::future::join_all((0..3).map(|_| job.run_once())).await;
    let deleted: u64 = runs
        .into_iter()
        .map(|run| run.expect("no replica fails or waits on another's locks"))
        .flat_map(|purged| purged.into_iter().filter(|p| p.table == "inbox"))
        .map(|p| p.rows)
        .sum();
    assert_eq!(deleted, 30_000);
    assert_eq!(count(&pool, "SELECT count(*) FROM inbox").await, 7);
}
