//! `make bench` (retention): what the retention job costs. A context's schema on a fresh
//! database is filled with `--rows` published outbox rows and as many inbox rows, all past their
//! horizon, plus recent and unpublished rows that must stay. A steady write load like a
//! consumer's (one transaction: an inbox row and an outbox row) runs first alone, then while
//! `platform::retention` purges. Prints the rows deleted per second and the write latency
//! during the purge against the same load without it, measured in the same run.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aeropartners_tests::measure::PhaseLatency;
use anyhow::{Context, ensure};
use clap::Parser;
use platform::retention::{Retention, RetentionConfig, Rule};
use sqlx::{PgPool, postgres::PgPoolOptions};

#[derive(Debug, Parser)]
struct Args {
    /// Expired rows in each of outbox and inbox.
    #[arg(long, default_value_t = 500_000)]
    rows: u64,
    /// Concurrent writers of the steady load.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Seconds of load without a purge (the ceiling of the comparison).
    #[arg(long, default_value_t = 10)]
    baseline_seconds: u64,
}

const SCHEMA: &str = "retencion_bench";
const DAY: Duration = Duration::from_secs(86_400);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::var("DATABASE_URL").context("DATABASE_URL (make sets it)")?;
    let database = testkit::TempDatabase::create().await;
    let result = bench(&args, &database.url).await;
    database.drop_database().await;
    result
}

async fn bench(args: &Args, url: &str) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(args.writers)? + 2)
        .connect_with(platform::db::connect_options(url, SCHEMA)?)
        .await?;
    platform::db::migrate(&pool, SCHEMA, &sqlx::migrate::Migrator::DEFAULT).await?;

    let started = Instant::now();
    seed(&pool, args.rows).await?;
    println!(
        "seeded {} expired outbox rows and {} expired inbox rows (+ recent ones that stay) in {:.1} s",
        args.rows,
        args.rows,
        started.elapsed().as_secs_f64()
    );
    let bytes_before = table_bytes(&pool).await?;

    let (baseline, ()) = write_load(&pool, args.writers, async {
        tokio::time::sleep(Duration::from_secs(args.baseline_seconds)).await;
    })
    .await?;

    let config = RetentionConfig {
        retention_outbox: 7 * DAY,
        retention_inbox: 7 * DAY,
        retention_interval: Duration::from_secs(600),
    };
    let retention = Retention::new(pool.clone(), SCHEMA, Rule::platform_tables(&config));
    let purge_started = Instant::now();
    let (during, purged) = write_load(&pool, args.writers, retention.run_once()).await?;
    let purged = purged?;
    let purge_seconds = purge_started.elapsed().as_secs_f64();
    let deleted: u64 = purged.iter().map(|p| p.rows).sum();
    ensure!(
        deleted == 2 * args.rows,
        "the purge deleted {deleted} rows, expected {}: {purged:?}",
        2 * args.rows
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM inbox) \
         - $1::bigint",
    )
    .bind(i64::try_from(2 * (baseline.requests + during.requests))?)
    .fetch_one(&pool)
    .await?;
    ensure!(
        left == i64::try_from(recent_rows(args.rows) * 2 + UNPUBLISHED)?,
        "rows that must stay were deleted: {left} left"
    );
    let bytes_after = table_bytes(&pool).await?;

    println!(
        "\nRetention job cost (bench-retention, {} writers of inbox+outbox transactions)",
        args.writers
    );
    println!(
        "  purge           {deleted} rows ({} outbox, {} inbox) in {purge_seconds:.1} s = {:.0} rows/s",
        purged
            .iter()
            .find(|p| p.table == "outbox")
            .map_or(0, |p| p.rows),
        purged
            .iter()
            .find(|p| p.table == "inbox")
            .map_or(0, |p| p.rows),
        deleted as f64 / purge_seconds,
    );
    println!(
        "  writes alone    {}, {:.0} tx/s",
        baseline.describe(),
        rate(&baseline, args.baseline_seconds as f64)
    );
    println!(
        "  during purge    {}, {:.0} tx/s",
        during.describe(),
        rate(&during, purge_seconds)
    );
    println!(
        "  ratio           p99 {:.2}x, throughput {:.2}x of the same load without the purge",
        during.p99_ms / baseline.p99_ms.max(0.001),
        rate(&during, purge_seconds) / rate(&baseline, args.baseline_seconds as f64).max(0.001)
    );
    println!(
        "  table bytes     {:.1} MB before, {:.1} MB after (a DELETE frees pages for reuse; VACUUM FULL would return them)",
        bytes_before as f64 / 1e6,
        bytes_after as f64 / 1e6
    );
    Ok(())
}

/// Rows newer than the horizon (kept) per expired row count.
fn recent_rows(rows: u64) -> u64 {
    rows / 10
}
/// Unpublished outbox rows: never deleted, whatever their age.
const UNPUBLISHED: u64 = 1_000;

async fn seed(pool: &PgPool, rows: u64) -> anyhow::Result<()> {
    let rows = i64::try_from(rows)?;
    let recent = i64::try_from(recent_rows(u64::try_from(rows)?))?;
    // An envelope of the size a payment event has (about 400 bytes).
    let outbox = "INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, \
                  aggregate_version, topic, envelope, created_at, published_at) \
         SELECT gen_random_uuid(), 'PagoPendiente', 'Pago', 'seed-' || n, 1, 'payments.evt.pending', \
                jsonb_build_object('id_evento', gen_random_uuid(), 'tipo_evento', 'PagoPendiente', \
                  'datos', jsonb_build_object('id_pago', gen_random_uuid(), 'id_afiliado', 'AFILIADO_001', \
                  'monto', 150.25, 'moneda', 'USD', 'referencia_pago', 'REF-' || n, 'estado', 'PENDIENTE')), \
                now() - $2::interval, now() - $2::interval \
         FROM generate_series($1::bigint, $1::bigint + $3::bigint - 1) AS n";
    sqlx::query(outbox)
        .bind(0_i64)
        .bind("8 days")
        .bind(rows)
        .execute(pool)
        .await?;
    sqlx::query(outbox)
        .bind(rows)
        .bind("1 day")
        .bind(recent)
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, aggregate_version, \
                             topic, envelope, created_at) \
         SELECT gen_random_uuid(), 'PagoPendiente', 'Pago', 'unpublished-' || n, 1, \
                'payments.evt.pending', '{}'::jsonb, now() - interval '30 days' \
         FROM generate_series(1, $1::bigint) AS n",
    )
    .bind(i64::try_from(UNPUBLISHED)?)
    .execute(pool)
    .await?;
    let inbox = "INSERT INTO inbox (event_id, consumer, event_type, processed_at) \
         SELECT gen_random_uuid(), 'campaigns-payments', 'PagoExitoso', now() - $1::interval \
         FROM generate_series(1, $2::bigint)";
    sqlx::query(inbox)
        .bind("8 days")
        .bind(rows)
        .execute(pool)
        .await?;
    sqlx::query(inbox)
        .bind("1 day")
        .bind(recent)
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE inbox").execute(pool).await?;
    Ok(())
}

/// Runs `writers` loops of one consumer-like transaction each (an inbox row and a published
/// outbox row) until `until` completes; returns their latencies and what `until` gave.
async fn write_load<T>(
    pool: &PgPool,
    writers: usize,
    until: impl Future<Output = T>,
) -> anyhow::Result<(PhaseLatency, T)> {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    consume_one(&pool).await?;
                    latencies.push(started.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let outcome = until.await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((PhaseLatency::of(latencies)?, outcome))
}

async fn consume_one(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO inbox (event_id, consumer, event_type) VALUES ($1, 'bench', 'PagoExitoso')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, aggregate_version, \
                             topic, envelope, published_at) \
         VALUES ($1, 'ComisionCalculada', 'Campana', $2, 1, 'campaigns.evt', '{}'::jsonb, now())",
    )
    .bind(id)
    .bind(id.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

async fn table_bytes(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (pg_total_relation_size('outbox') + pg_total_relation_size('inbox'))::bigint",
    )
    .fetch_one(pool)
    .await
}

fn rate(latency: &PhaseLatency, seconds: f64) -> f64 {
    latency.requests as f64 / seconds.max(0.001)
}
