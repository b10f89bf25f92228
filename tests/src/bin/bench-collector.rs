//! `make bench` (collector part): accepted-and-persisted events per second through the event
//! collector, for single events and for batches of 100, against what PostgreSQL itself does
//! with the same inserts.
//!
//! On a fresh database it starts the collector (real TCP socket, group-commit writers, outbox
//! relay to the real Pulsar broker), then for each shape:
//!  1. closed loop at a fixed concurrency → peak events/s and requests/s, p50/p99 latency;
//!  2. open loop at half that rate → p50/p99 latency;
//!
//! and `pgbench` on the same PostgreSQL inserting the same rows (event + outbox row), one event
//! per transaction and 100 per transaction → the ceilings, and the ratios.
//!
//! Every accepted event is checked to be in the table afterwards. Prints a table and writes
//! `target/bench/collector.json`. It asserts nothing about time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use event_collector::domain::Directorio;
use hdrhistogram::Histogram;
use platform::{
    config::PulsarConfig,
    messaging::{Broker, LazyBroker},
    outbox::Relay,
};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent clients (and pgbench clients).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events per batch request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Single,
    Batch(usize),
}

struct Phase {
    /// Events acknowledged as stored.
    events: u64,
    requests_per_s: f64,
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    failures: u64,
}

struct Figures {
    peak: Phase,
    half: Phase,
}

fn event(n: u64, client: usize) -> serde_json::Value {
    let tipo = ["CLICK", "IMPRESSION", "PAGE_VIEW"][(n % 3) as usize];
    serde_json::json!({
        "tipo_evento": tipo,
        "id_afiliado": format!("BENCH_{client}"),
        "id_evento_cliente": format!("{client}-{n}-{}", uuid::Uuid::new_v4().simple()),
        "id_campana": "6f1c1b7e-8d0e-4e0a-9b1a-1c2d3e4f5a6b",
        "url": "https://tienda.example/producto/1",
        "parametros_tracking": {"utm_source": "bench"},
    })
}

/// `Authorization` values, one per client (client `who` is affiliate `BENCH_<who>`), when the
/// collector enforces partner keys.
type Keys = Option<Arc<Vec<String>>>;

fn request(
    client: &reqwest::Client,
    base: &str,
    shape: Shape,
    n: u64,
    who: usize,
    keys: &Keys,
) -> reqwest::RequestBuilder {
    let (path, body) = match shape {
        Shape::Single => ("events", event(n, who)),
        Shape::Batch(size) => (
            "events/batch",
            serde_json::json!({"eventos": (0..size as u64).map(|i| event(n * 1000 + i, who)).collect::<Vec<_>>()}),
        ),
    };
    let request = client
        .post(format!("{base}/event-collector/{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    match keys {
        Some(keys) => request.header("authorization", &keys[who]),
        None => request,
    }
}

/// Events the collector stored for this answer (0 on failure).
async fn send(
    client: &reqwest::Client,
    base: &str,
    shape: Shape,
    n: u64,
    who: usize,
    keys: &Keys,
) -> u64 {
    let Ok(response) = request(client, base, shape, n, who, keys).send().await else {
        return 0;
    };
    match (shape, response.status().as_u16()) {
        (Shape::Single, 201) => 1,
        (Shape::Batch(_), 200) => response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|b| b["aceptados"].as_u64())
            .unwrap_or(0),
        _ => 0,
    }
}

fn summarize(histogram: &Histogram<u64>, events: u64, failures: u64, elapsed: Duration) -> Phase {
    Phase {
        events,
        requests_per_s: histogram.len() as f64 / elapsed.as_secs_f64(),
        events_per_s: events as f64 / elapsed.as_secs_f64(),
        p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        failures,
    }
}

async fn closed_loop(
    client: &reqwest::Client,
    base: &str,
    shape: Shape,
    concurrency: usize,
    length: Duration,
    keys: &Keys,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let counter = Arc::new(AtomicU64::new(0));
    let workers = (0..concurrency).map(|who| {
        let (client, base, counter, keys) = (
            client.clone(),
            base.to_owned(),
            counter.clone(),
            keys.clone(),
        );
        tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("valid histogram");
            let (mut events, mut failures) = (0u64, 0u64);
            while started.elapsed() < length {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let stored = send(&client, &base, shape, n, who, &keys).await;
                if stored > 0 {
                    events += stored;
                    histogram
                        .record(sent.elapsed().as_micros() as u64)
                        .expect("in range");
                } else {
                    failures += 1;
                }
            }
            (histogram, events, failures)
        })
    });
    let mut all = Histogram::<u64>::new(3)?;
    let (mut events, mut failures) = (0, 0);
    for (h, e, f) in futures::future::try_join_all(workers).await? {
        all.add(h)?;
        events += e;
        failures += f;
    }
    if all.is_empty() {
        bail!("no request succeeded");
    }
    Ok(summarize(&all, events, failures, started.elapsed()))
}

/// Two seconds to warm up (their events counted, not measured), then the measured peak.
async fn warm_then_peak(
    client: &reqwest::Client,
    base: &str,
    shape: Shape,
    concurrency: usize,
    length: Duration,
    keys: &Keys,
) -> anyhow::Result<(u64, Phase)> {
    let warm = closed_loop(
        client,
        base,
        shape,
        concurrency,
        Duration::from_secs(2),
        keys,
    )
    .await?;
    let peak = closed_loop(client, base, shape, concurrency, length, keys).await?;
    Ok((warm.events, peak))
}

/// Requests started on a schedule whatever the answers' speed (no coordinated omission).
async fn open_loop(
    client: &reqwest::Client,
    base: &str,
    shape: Shape,
    rate: f64,
    length: Duration,
    concurrency: usize,
) -> anyhow::Result<Phase> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut in_flight = Vec::new();
    let mut n = 10_000_000u64;
    while started.elapsed() < length {
        ticker.tick().await;
        let scheduled = Instant::now();
        let (client, base) = (client.clone(), base.to_owned());
        n += 1;
        let who = (n as usize) % concurrency;
        in_flight.push(tokio::spawn(async move {
            (
                send(&client, &base, shape, n, who, &None).await,
                scheduled.elapsed(),
            )
        }));
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    let (mut events, mut failures) = (0, 0);
    for request in in_flight {
        let (stored, latency) = request.await?;
        if stored > 0 {
            events += stored;
            histogram.record(latency.as_micros() as u64)?;
        } else {
            failures += 1;
        }
    }
    Ok(summarize(&histogram, events, failures, started.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin_url = std::env::var("DATABASE_URL").context("DATABASE_URL (make bench sets it)")?;
    let pulsar_url = std::env::var("PULSAR_URL").context("PULSAR_URL (make bench sets it)")?;
    let mut admin = PgConnection::connect(&admin_url).await?;
    let database = format!("bench_collector_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await?;
    let url = aeropartners_tests::pg::replace_database(&admin_url, &database)?;
    let result = run(&args, &url, &pulsar_url).await;
    testkit::drop_database(&mut admin, &database).await?;
    let (single, batch, keyed, ceilings, stored, accepted) = result?;
    print_and_save(&args, &single, &batch, &keyed, ceilings, stored, accepted)?;
    if i64::try_from(accepted)? != stored {
        bail!("{accepted} events acknowledged but {stored} stored");
    }
    Ok(())
}

type Outcome = (Figures, Figures, Phase, (f64, f64), i64, u64);

async fn run(args: &Args, database_url: &str, pulsar_url: &str) -> anyhow::Result<Outcome> {
    let database = platform::config::DatabaseConfig {
        database_url: database_url.to_owned(),
        database_max_connections: 20,
        migrate_on_start: true,
        database_startup_wait: std::time::Duration::ZERO,
    };
    let pool = event_collector::database(&database).await?;
    let pulsar = PulsarConfig {
        pulsar_url: pulsar_url.to_owned(),
        pulsar_namespace: "public/default".into(),
        pulsar_topic_prefix: format!("bench{}-collector-", std::process::id()),
        pulsar_auth_token: None,
        pulsar_tls_trust_certs_file: None,
    };
    let broker = Broker::connect(&pulsar).await?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(
        Relay::new(pool.clone(), broker.clone(), event_collector::SCHEMA).run(shutdown.clone()),
    );
    let directorio = Directorio::from_yaml(
        "niveles: { bench: { eventos_por_minuto: 100000000 } }\nnivel_por_defecto: bench\n",
    )?;
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        collector: event_collector::CollectorConfig,
    }
    let collector = Defaults::parse_from(["bench"]).collector;
    let http = platform::config::HttpConfig {
        listen: "127.0.0.1:0".parse()?,
        body_limit_bytes: 1024 * 1024,
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        shutdown_drain: Duration::ZERO,
        connections: platform::config::ConnectionLimits::default(),
    };
    let listener = tokio::net::TcpListener::bind(http.listen).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let broker = LazyBroker::ready(broker);
    let (app, _writers) = event_collector::app(
        pool.clone(),
        broker.clone(),
        &http,
        &collector,
        directorio.clone(),
        &access::Acceso::desarrollo(),
        shutdown.clone(),
    );
    tokio::spawn(platform::http::serve(
        listener,
        app,
        shutdown.clone(),
        &http,
    ));
    // The same collector enforcing partner keys, as in a cluster: what authentication costs
    // on the ingest path, measured in the same run.
    let keyed_listener = tokio::net::TcpListener::bind(http.listen).await?;
    let keyed_base = format!("http://{}", keyed_listener.local_addr()?);
    let (keyed_app, _keyed_writers) = event_collector::app(
        pool.clone(),
        broker,
        &http,
        &collector,
        directorio,
        &access::Acceso::with_store(
            access::AuthMode::Enforce,
            pool.clone(),
            None,
            shutdown.clone(),
        ),
        shutdown.clone(),
    );
    tokio::spawn(platform::http::serve(
        keyed_listener,
        keyed_app,
        shutdown.clone(),
        &http,
    ));
    let claves = testkit::acceso::Claves::new(&pool);
    let mut keys = Vec::with_capacity(args.concurrency);
    for who in 0..args.concurrency {
        keys.push(claves.secreta(&format!("BENCH_{who}")).await);
    }
    let keys: Keys = Some(Arc::new(keys));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let phase = Duration::from_secs(args.seconds);
    let mut figures = Vec::new();
    let mut accepted = 0;
    let mut keyed = None;
    for shape in [Shape::Single, Shape::Batch(args.batch)] {
        let (warm, peak) =
            warm_then_peak(&client, &base, shape, args.concurrency, phase, &None).await?;
        let half = open_loop(
            &client,
            &base,
            shape,
            peak.requests_per_s / 2.0,
            phase,
            args.concurrency,
        )
        .await?;
        accepted += warm + peak.events + half.events;
        figures.push(Figures { peak, half });
        if shape == Shape::Single {
            // Right after the open single phases, before the batches' backlog keeps the relay
            // busy: the same conditions, with keys.
            let (warm, peak) =
                warm_then_peak(&client, &keyed_base, shape, args.concurrency, phase, &keys).await?;
            accepted += warm + peak.events;
            keyed = Some(peak);
        }
    }
    let keyed = keyed.expect("the single shape ran");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM eventos")
        .fetch_one(&pool)
        .await?;
    shutdown.cancel();
    drop(pool);
    let ceilings = (
        aeropartners_tests::pg::pgbench(
            database_url,
            args.concurrency,
            args.seconds,
            &pgbench_script(1),
        )?,
        aeropartners_tests::pg::pgbench(
            database_url,
            args.concurrency,
            args.seconds,
            &pgbench_script(args.batch),
        )? * args.batch as f64,
    );
    let batch = figures.pop().expect("two shapes");
    let single = figures.pop().expect("two shapes");
    Ok((single, batch, keyed, ceilings, stored, accepted))
}

/// `events` events per transaction, each with its outbox row: what a design without group
/// commit would do per request (1), and the same rows in bulk (the batch ceiling).
fn pgbench_script(events: usize) -> String {
    format!(
        r"
BEGIN;
WITH nuevos AS (
  INSERT INTO event_collector.eventos (id_evento, clave_dedup, hash_evento, tipo_evento, id_afiliado, id_campana, fuente_evento, estado, topic_destino, recibido_en, datos)
  SELECT gen_random_uuid(), 'pgb:' || gen_random_uuid(), repeat('0', 64), 'CLICK', 'BENCH', '6f1c1b7e-8d0e-4e0a-9b1a-1c2d3e4f5a6b', 'WEB_TAG', 'ACEPTADO', 'tracking.evt.click', now(), '{{}}'::jsonb
  FROM generate_series(1, {events})
  RETURNING id_evento)
INSERT INTO event_collector.outbox (event_id, event_type, aggregate_type, aggregate_id, aggregate_version, topic, message_key, envelope, published_at)
  SELECT id_evento, 'ClickRegistrado', 'EventoTracking', id_evento::text, 1, 'tracking.evt.click', 'BENCH', '{{}}'::jsonb, now() FROM nuevos;
END;
"
    )
}

fn print_and_save(
    args: &Args,
    single: &Figures,
    batch: &Figures,
    keyed: &Phase,
    ceilings: (f64, f64),
    stored: i64,
    accepted: u64,
) -> anyhow::Result<()> {
    println!();
    println!(
        "Event collector benchmark: {} clients, {} s per phase, one machine (group commit, relay to Pulsar)",
        args.concurrency, args.seconds
    );
    println!(
        "{:<44} {:>14} {:>14}",
        "metric",
        "single",
        format!("batch of {}", args.batch)
    );
    let row = |label: &str, a: f64, b: f64, decimals: usize| {
        println!("{label:<44} {a:>14.decimals$} {b:>14.decimals$}")
    };
    row(
        "peak requests/s",
        single.peak.requests_per_s,
        batch.peak.requests_per_s,
        0,
    );
    row(
        "peak events/s (accepted and persisted)",
        single.peak.events_per_s,
        batch.peak.events_per_s,
        0,
    );
    row(
        "peak p50 latency (ms)",
        single.peak.p50_ms,
        batch.peak.p50_ms,
        2,
    );
    row(
        "peak p99 latency (ms)",
        single.peak.p99_ms,
        batch.peak.p99_ms,
        2,
    );
    row(
        "half-rate events/s",
        single.half.events_per_s,
        batch.half.events_per_s,
        0,
    );
    row(
        "half-rate p50 latency (ms)",
        single.half.p50_ms,
        batch.half.p50_ms,
        2,
    );
    row(
        "half-rate p99 latency (ms)",
        single.half.p99_ms,
        batch.half.p99_ms,
        2,
    );
    row(
        "failed requests",
        (single.peak.failures + single.half.failures) as f64,
        (batch.peak.failures + batch.half.failures) as f64,
        0,
    );
    row(
        "pgbench ceiling, same rows (events/s)",
        ceilings.0,
        ceilings.1,
        0,
    );
    row(
        "peak events/s / ceiling (%)",
        single.peak.events_per_s / ceilings.0 * 100.0,
        batch.peak.events_per_s / ceilings.1 * 100.0,
        1,
    );
    println!(
        "{:<44} {:>14.0} {:>13.1}%",
        "peak events/s with partner keys (single)",
        keyed.events_per_s,
        keyed.events_per_s / single.peak.events_per_s * 100.0
    );
    println!(
        "{:<44} {:>14.2} {:>14.2}",
        "peak p50 / p99 latency with keys (ms)", keyed.p50_ms, keyed.p99_ms
    );
    println!("{:<44} {:>14}", "events acknowledged as stored", accepted);
    println!("{:<44} {:>14}", "events in the table after the run", stored);
    println!("  single ceiling = one event + its outbox row per transaction (no group commit);");
    println!(
        "  with partner keys = the single shape against the same collector enforcing keys, each"
    );
    println!("    client sending its own (`%` = of the open single peak, same run).");
    println!(
        "  batch ceiling  = {} events + outbox rows per transaction.",
        args.batch
    );
    let phase = |p: &Phase| serde_json::json!({"requests_per_s": p.requests_per_s, "events_per_s": p.events_per_s, "p50_ms": p.p50_ms, "p99_ms": p.p99_ms, "failures": p.failures});
    let report = serde_json::json!({
        "concurrency": args.concurrency, "seconds_per_phase": args.seconds, "batch": args.batch,
        "single": {"peak": phase(&single.peak), "half_rate": phase(&single.half), "pgbench_events_per_s": ceilings.0, "ratio": single.peak.events_per_s / ceilings.0},
        "batch_shape": {"peak": phase(&batch.peak), "half_rate": phase(&batch.half), "pgbench_events_per_s": ceilings.1, "ratio": batch.peak.events_per_s / ceilings.1},
        "single_with_keys": {"peak": phase(keyed), "of_open_peak": keyed.events_per_s / single.peak.events_per_s},
        "events_acknowledged": accepted, "events_stored": stored,
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/collector.json",
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("\nwritten to target/bench/collector.json");
    Ok(())
}
