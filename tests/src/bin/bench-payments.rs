//! `make bench`: how fast `POST /pagos/` is compared with what PostgreSQL itself can do.
//!
//! On a fresh database it starts the payments API (real TCP socket), the outbox relay and the
//! worker (gateway latency 0) against the real PostgreSQL and Pulsar, then:
//!  1. closed loop at a fixed concurrency → peak throughput, p50/p99 latency;
//!  2. open loop at half that rate → p50/p99 latency;
//!  3. outbox publish lag p50/p99 of every event of the run;
//!  4. `pgbench` on the same PostgreSQL with the same transaction (insert payment + its trace
//!     line + its outbox row) at the same concurrency → the ceiling, and the ratio.
//!
//! Prints a table and writes `target/bench/payments.json`. It asserts nothing about time.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use payments::infrastructure::pasarela::{ConfigStripeSimulado, StripeSimulado};
use platform::{
    config::PulsarConfig,
    messaging::{Broker, LazyBroker},
    outbox::Relay,
};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent clients in the closed-loop phase and in pgbench.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let database_url =
        std::env::var("DATABASE_URL").context("DATABASE_URL (make bench sets it)")?;
    let pulsar_url = std::env::var("PULSAR_URL").context("PULSAR_URL (make bench sets it)")?;
    let mut admin = PgConnection::connect(&database_url).await?;

    let mut reports = Vec::new();
    for scenario in [Scenario::WritePath, Scenario::FullSystem] {
        let database = format!("bench_{}_{}", std::process::id(), scenario.slug());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await?;
        let url = aeropartners_tests::pg::replace_database(&database_url, &database)?;
        let result = run(&args, scenario, &url, &pulsar_url).await;
        // The ceiling is measured on the same PostgreSQL, on a database with the same schema,
        // once the API and its background work have stopped.
        let result = match result {
            Ok(figures) if scenario == Scenario::WritePath => {
                pgbench(&url, args.concurrency, args.seconds).map(|tps| (figures, Some(tps)))
            }
            Ok(figures) => Ok((figures, None)),
            Err(error) => Err(error),
        };
        testkit::drop_database(&mut admin, &database).await?;
        reports.push((scenario, result?));
    }
    let ceiling = reports
        .iter()
        .find_map(|(_, (_, tps))| *tps)
        .context("pgbench ran")?;
    print_and_save(&args, &reports, ceiling)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// API + outbox relay: what every accepted payment costs on the way in.
    WritePath,
    /// API + relay + worker charging every payment (gateway latency 0): the whole platform.
    FullSystem,
}

impl Scenario {
    fn slug(self) -> &'static str {
        match self {
            Self::WritePath => "write_path",
            Self::FullSystem => "full_system",
        }
    }
}

struct Figures {
    peak: Phase,
    half_rate_target: f64,
    half: Phase,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
}

async fn run(
    args: &Args,
    scenario: Scenario,
    database_url: &str,
    pulsar_url: &str,
) -> anyhow::Result<Figures> {
    let database = platform::config::DatabaseConfig {
        database_url: database_url.to_owned(),
        database_max_connections: 40,
        migrate_on_start: true,
    };
    let pool = payments::database(&database).await?;
    let pulsar = PulsarConfig {
        pulsar_url: pulsar_url.to_owned(),
        pulsar_namespace: "public/default".into(),
        pulsar_topic_prefix: format!("bench{}-{}-", std::process::id(), scenario.slug()),
    };
    let broker = Broker::connect(&pulsar).await?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(Relay::new(pool.clone(), broker.clone(), payments::SCHEMA).run(shutdown.clone()));
    let gateway = Arc::new(StripeSimulado::new(ConfigStripeSimulado {
        latencia_min: Duration::ZERO,
        latencia_max: Duration::ZERO,
        tasa_fallo: 0.5,
        retencion_claves: Duration::from_secs(24 * 3600),
    }));
    if scenario == Scenario::FullSystem {
        tokio::spawn(payments::run_worker_with(
            pool.clone(),
            LazyBroker::ready(broker.clone()),
            gateway,
            64,
            shutdown.clone(),
        ));
    }

    let http = platform::config::HttpConfig {
        listen: "127.0.0.1:0".parse()?,
        body_limit_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        shutdown_drain: Duration::ZERO,
    };
    let listener = tokio::net::TcpListener::bind(http.listen).await?;
    let url = format!("http://{}/pagos/", listener.local_addr()?);
    let app = payments::app(pool.clone(), LazyBroker::ready(broker), &http);
    tokio::spawn(platform::http::serve(
        listener,
        app,
        shutdown.clone(),
        &http,
    ));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let phase = Duration::from_secs(args.seconds);
    // Warm-up: connections, prepared statements, topic lookups.
    closed_loop(
        &client,
        &url,
        args.concurrency,
        Duration::from_secs(2),
        "warm",
    )
    .await?;

    let peak = closed_loop(&client, &url, args.concurrency, phase, "peak").await?;
    let half_rate = peak.throughput / 2.0;
    let half = open_loop(&client, &url, half_rate, phase).await?;

    wait_for_outbox(&pool).await?;
    let (lag_p50, lag_p99): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) \
         FROM (SELECT extract(epoch FROM published_at - created_at)::float8 * 1000 AS ms FROM outbox) t",
    )
    .fetch_one(&pool)
    .await?;

    Ok(Figures {
        peak,
        half_rate_target: half_rate,
        half,
        lag_p50_ms: lag_p50,
        lag_p99_ms: lag_p99,
    })
}

fn print_and_save(
    args: &Args,
    reports: &[(Scenario, (Figures, Option<f64>))],
    ceiling: f64,
) -> anyhow::Result<()> {
    println!();
    println!(
        "POST /pagos/ benchmark: {} clients, {} s per phase, gateway latency 0, one machine",
        args.concurrency, args.seconds
    );
    println!("  write path  = API + outbox relay (+ the broker)");
    println!("  full system = write path + worker charging every payment");
    println!(
        "{:<40} {:>13} {:>13}",
        "metric", "write path", "full system"
    );
    let row = |label: &str, value: &dyn Fn(&Figures) -> f64, decimals: usize| {
        let cells: Vec<String> = reports
            .iter()
            .map(|(_, (f, _))| format!("{:>13.*}", decimals, value(f)))
            .collect();
        println!("{label:<40} {}", cells.join(" "));
    };
    row("peak throughput (req/s)", &|f| f.peak.throughput, 0);
    row("peak p50 latency (ms)", &|f| f.peak.p50_ms, 2);
    row("peak p99 latency (ms)", &|f| f.peak.p99_ms, 2);
    row("half-rate target (req/s)", &|f| f.half_rate_target, 0);
    row("half-rate achieved (req/s)", &|f| f.half.throughput, 0);
    row("half-rate p50 latency (ms)", &|f| f.half.p50_ms, 2);
    row("half-rate p99 latency (ms)", &|f| f.half.p99_ms, 2);
    row("outbox publish lag p50 (ms)", &|f| f.lag_p50_ms, 2);
    row("outbox publish lag p99 (ms)", &|f| f.lag_p99_ms, 2);
    row(
        "failed requests",
        &|f| (f.peak.failures + f.half.failures) as f64,
        0,
    );
    row(
        "peak / pgbench ceiling (%)",
        &|f| f.peak.throughput / ceiling * 100.0,
        1,
    );
    println!(
        "{:<40} {:>13.0}",
        "pgbench ceiling, same transaction (tps)", ceiling
    );

    let json: Vec<serde_json::Value> = reports
        .iter()
        .map(|(scenario, (f, _))| {
            serde_json::json!({
                "scenario": scenario.slug(),
                "peak": {"throughput_rps": f.peak.throughput, "p50_ms": f.peak.p50_ms, "p99_ms": f.peak.p99_ms, "requests": f.peak.ok, "failures": f.peak.failures},
                "half_rate": {"target_rps": f.half_rate_target, "throughput_rps": f.half.throughput, "p50_ms": f.half.p50_ms, "p99_ms": f.half.p99_ms, "requests": f.half.ok, "failures": f.half.failures},
                "outbox_lag_ms": {"p50": f.lag_p50_ms, "p99": f.lag_p99_ms},
                "ratio_to_pgbench": f.peak.throughput / ceiling,
            })
        })
        .collect();
    let report = serde_json::json!({
        "concurrency": args.concurrency, "seconds_per_phase": args.seconds,
        "pgbench_tps": ceiling, "scenarios": json,
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/payments.json",
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("\nwritten to target/bench/payments.json");
    Ok(())
}

struct Phase {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: u64,
    failures: u64,
}

fn body() -> String {
    format!(
        r#"{{"id_afiliado":"afiliado-bench","monto":10.50,"moneda":"USD","referencia_pago":"{}"}}"#,
        uuid::Uuid::new_v4()
    )
}

async fn post(client: &reqwest::Client, url: &str) -> bool {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn summarize(
    histograms: Vec<Histogram<u64>>,
    failures: u64,
    elapsed: Duration,
) -> anyhow::Result<Phase> {
    let mut all = Histogram::<u64>::new(3)?;
    for h in histograms {
        all.add(h)?;
    }
    Ok(Phase {
        throughput: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        ok: all.len(),
        failures,
    })
}

/// `concurrency` clients, each sending its next request as soon as the previous answers.
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    length: Duration,
    label: &str,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (client, url) = (client.clone(), url.to_owned());
        tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("valid histogram");
            let mut failures = 0u64;
            while started.elapsed() < length {
                let sent = Instant::now();
                if post(&client, &url).await {
                    histogram
                        .record(sent.elapsed().as_micros() as u64)
                        .expect("in range");
                } else {
                    failures += 1;
                }
            }
            (histogram, failures)
        })
    });
    let results = futures::future::try_join_all(workers).await?;
    let failures = results.iter().map(|(_, f)| f).sum();
    let phase = summarize(
        results.into_iter().map(|(h, _)| h).collect(),
        failures,
        started.elapsed(),
    )?;
    if label != "warm" && phase.ok == 0 {
        bail!("no request succeeded in the {label} phase");
    }
    Ok(phase)
}

/// Requests started on a fixed schedule (`rate` per second) whatever the answers' speed, so
/// latency is measured without coordinated omission.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    rate: f64,
    length: Duration,
) -> anyhow::Result<Phase> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut requests = Vec::new();
    while started.elapsed() < length {
        ticker.tick().await;
        let scheduled = Instant::now();
        let (client, url) = (client.clone(), url.to_owned());
        requests.push(tokio::spawn(async move {
            (post(&client, &url).await, scheduled.elapsed())
        }));
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut failures = 0;
    for request in requests {
        let (ok, latency) = request.await?;
        if ok {
            histogram.record(latency.as_micros() as u64)?;
        } else {
            failures += 1;
        }
    }
    summarize(vec![histogram], failures, started.elapsed())
}

async fn wait_for_outbox(pool: &PgPool) -> anyhow::Result<()> {
    for _ in 0..600 {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(pool)
                .await?;
        if pending == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the outbox did not drain within 60 s")
}

/// The same transaction the API commits, straight from pgbench: the ceiling.
fn pgbench(database_url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    aeropartners_tests::pg::pgbench(database_url, clients, seconds, PGBENCH_SCRIPT)
}

const PGBENCH_SCRIPT: &str = r"
BEGIN;
INSERT INTO payments.pagos (id, id_afiliado, monto, moneda, referencia_pago, estado, fecha_creacion, fecha_actualizacion, eventos_emitidos)
  VALUES (gen_random_uuid(), 'afiliado-bench', 10.50, 'USD', 'pgb-' || gen_random_uuid(), 'PENDIENTE', now(), now(), 1)
  RETURNING id \gset
INSERT INTO payments.pago_traza (id_pago, evento, detalle, request_id) VALUES (:id, 'PAGO_RECIBIDO', 'pgbench', 'pgbench');
INSERT INTO payments.outbox (event_id, event_type, aggregate_type, aggregate_id, aggregate_version, topic, envelope, published_at)
  VALUES (gen_random_uuid(), 'PagoPendiente', 'Pago', :id, 1, 'payments.evt.pending', '{}'::jsonb, now());
END;
";
