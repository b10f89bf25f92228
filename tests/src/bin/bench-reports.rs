//! `make bench`: how fast the reports read model answers, and how fresh it is.
//!
//! On a database of its own it starts the payments API, the worker (gateway latency 0) and two
//! reports processes — one as shipped (100 ms report cache), one with the cache off, to show
//! what a computed report costs — seeds payments, then:
//!  1. closed loop at a fixed concurrency on the reports process's `/health` → the floor of the
//!     same binary, HTTP stack and machine;
//!  2. the same on `GET /api/reports/payments` in v1 and in v2 (four filters in turn), on each
//!     process → throughput, p50/p99, and the ratio to the floor;
//!  3. freshness under a steady payments write load: a payment for an affiliate of its own is
//!     created, and from its 200 (committed) to the first report that counts it → p50/p99, as
//!     served (cache included) and without the cache (the event pipeline alone).
//!
//! Prints a table and writes `target/bench/reports.json`. It asserts nothing about time.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use testkit::{ServiceProcess, TempDatabase, free_port, pulsar_config, wait_until_ready};

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent clients in the closed-loop phases.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds each throughput phase runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payments created before the read phases.
    #[arg(long, default_value_t = 2000)]
    seed: u64,
    /// Payments per second while freshness is measured.
    #[arg(long, default_value_t = 100.0)]
    write_rate: f64,
    /// Freshness samples.
    #[arg(long, default_value_t = 100)]
    probes: u64,
    /// The aeropartners binary.
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: PathBuf,
}

#[derive(Debug, Serialize)]
struct Phase {
    name: String,
    requests: u64,
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    pct_of_floor: f64,
}

#[derive(Debug, Serialize)]
struct Figures {
    concurrency: usize,
    seconds: u64,
    seeded_payments: u64,
    phases: Vec<Phase>,
    freshness_samples: u64,
    freshness_p50_ms: f64,
    freshness_p99_ms: f64,
    freshness_max_ms: f64,
    pipeline_p50_ms: f64,
    pipeline_p99_ms: f64,
    write_rate: f64,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// `concurrency` clients, each sending the next request as soon as the last one answered.
async fn closed_loop(
    client: &reqwest::Client,
    urls: &[(String, Option<&'static str>)],
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<(u64, u64, Histogram<u64>, f64)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (client, urls) = (client.clone(), urls.to_vec());
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                let (mut n, mut errors) = (w, 0u64);
                while Instant::now() < deadline {
                    let (url, version) = &urls[n % urls.len()];
                    n += 1;
                    let mut request = client.get(url);
                    if let Some(v) = version {
                        request = request.header("x-report-version", *v);
                    }
                    let at = Instant::now();
                    let ok = match request.send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        let _ = histogram.record(at.elapsed().as_micros().max(1) as u64);
                    } else {
                        errors += 1;
                    }
                }
                (histogram, errors)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for worker in workers {
        let (h, e) = worker.await?;
        all.add(h)?;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((all.len(), errors, all, elapsed))
}

async fn pay(client: &reqwest::Client, payments: &str, afiliado: &str, reference: &str) -> bool {
    client
        .post(format!("{payments}/pagos"))
        .json(&serde_json::json!({
            "id_afiliado": afiliado, "monto": 25.5, "moneda": "USD", "referencia_pago": reference,
        }))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let database = TempDatabase::create().await;
    let result = run(&args, &database.url).await;
    database.drop_database().await;
    let figures = result?;
    print_and_save(&figures)
}

async fn run(args: &Args, database_url: &str) -> anyhow::Result<Figures> {
    let prefix = pulsar_config().pulsar_topic_prefix;
    let (payments_port, worker_port, reports_port, uncached_port) =
        (free_port(), free_port(), free_port(), free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let migrated = std::process::Command::new(&args.binary)
        .arg("migrate")
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .status()?;
    anyhow::ensure!(migrated.success(), "migrations failed");
    let spawn = |a: &[&str]| ServiceProcess::spawn(&args.binary, a, database_url, &prefix);
    let _payments = spawn(&["payments", "--listen", &listen(payments_port)])?;
    let _worker = spawn(&[
        "payments-worker",
        "--listen",
        &listen(worker_port),
        "--latencia-min",
        "0ms",
        "--latencia-max",
        "0ms",
    ])?;
    let _reports = spawn(&["reports", "--listen", &listen(reports_port)])?;
    let _uncached = spawn(&[
        "reports",
        "--listen",
        &listen(uncached_port),
        "--cache-ttl",
        "0",
    ])?;
    for port in [payments_port, worker_port, reports_port, uncached_port] {
        wait_until_ready(&format!("{}/ready", url(port)), Duration::from_secs(120)).await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let (payments, reports, uncached) = (url(payments_port), url(reports_port), url(uncached_port));

    // Seed: payments of 20 affiliates over the run, and wait until the report has them all.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    futures::future::join_all((0..args.seed).map(|i| {
        let (client, payments, run_id) = (client.clone(), payments.clone(), run_id.clone());
        async move {
            pay(
                &client,
                &payments,
                &format!("af-{}", i % 20),
                &format!("seed-{run_id}-{i}"),
            )
            .await
        }
    }))
    .await;
    let total = |client: reqwest::Client, url: String| async move {
        client
            .get(url)
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()?["total_pagos"]
            .as_u64()
    };
    // Wait until every seeded payment reached its final state in the report, so the work
    // behind the seed (worker, relay, projection) is over before anything is measured.
    let deadline = Instant::now() + Duration::from_secs(180);
    let finished = format!("{uncached}/api/reports/payments?estado=EXITOSO");
    let failed = format!("{uncached}/api/reports/payments?estado=FALLIDO");
    loop {
        let done = total(client.clone(), finished.clone()).await.unwrap_or(0)
            + total(client.clone(), failed.clone()).await.unwrap_or(0);
        if done >= args.seed {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the seed never settled ({done} final)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Throughput against the floor of the same process.
    let filters = ["", "?moneda=USD", "?estado=EXITOSO", "?id_afiliado=af-3"];
    let report_urls = |base: &str, v: &'static str| -> Vec<(String, Option<&'static str>)> {
        filters
            .iter()
            .map(|f| (format!("{base}/api/reports/payments{f}"), Some(v)))
            .collect()
    };
    // The floor is measured before and after the report phases and the higher figure is
    // used, so a slow start (or a noisy minute) cannot flatter the ratio.
    let health = vec![(format!("{reports}/health"), None)];
    let mut measured = Vec::new();
    for (name, urls) in [
        ("/health (floor, before)", health.clone()),
        ("GET /api/reports/payments v1", report_urls(&reports, "v1")),
        ("GET /api/reports/payments v2", report_urls(&reports, "v2")),
        ("  v1, cache off", report_urls(&uncached, "v1")),
        ("  v2, cache off", report_urls(&uncached, "v2")),
        ("/health (floor, after)", health),
    ] {
        let (requests, errors, h, elapsed) =
            closed_loop(&client, &urls, args.concurrency, args.seconds).await?;
        measured.push((name, requests, errors, h, requests as f64 / elapsed));
    }
    let floor = measured
        .iter()
        .filter(|(name, ..)| name.starts_with("/health"))
        .map(|(.., rps)| *rps)
        .fold(0.0, f64::max);
    let phases: Vec<Phase> = measured
        .into_iter()
        .map(|(name, requests, errors, h, rps)| Phase {
            name: name.to_owned(),
            requests,
            errors,
            rps,
            p50_ms: ms(&h, 0.5),
            p99_ms: ms(&h, 0.99),
            pct_of_floor: rps * 100.0 / floor,
        })
        .collect();

    // Freshness under a steady write load.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (client, payments, writing, rate, run_id) = (
            client.clone(),
            payments.clone(),
            writing.clone(),
            args.write_rate,
            run_id.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut n = 0u64;
            while writing.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let (client, payments, run_id) = (client.clone(), payments.clone(), run_id.clone());
                tokio::spawn(async move {
                    pay(
                        &client,
                        &payments,
                        &format!("af-{}", n % 20),
                        &format!("load-{run_id}-{n}"),
                    )
                    .await
                });
            }
        })
    };
    let mut freshness = Histogram::<u64>::new(3)?;
    let mut pipeline = Histogram::<u64>::new(3)?;
    for i in 0..args.probes {
        // Alternate the processes: the figure as served, and the event pipeline's alone.
        let (base, histogram) = if i % 2 == 0 {
            (&reports, &mut freshness)
        } else {
            (&uncached, &mut pipeline)
        };
        let afiliado = format!("fresh-{run_id}-{i}");
        let reference = format!("fresh-{run_id}-{i}");
        anyhow::ensure!(
            pay(&client, &payments, &afiliado, &reference).await,
            "probe payment refused"
        );
        let committed = Instant::now();
        let probe = format!("{base}/api/reports/payments?id_afiliado={afiliado}");
        let deadline = committed + Duration::from_secs(30);
        while total(client.clone(), probe.clone()).await != Some(1) {
            anyhow::ensure!(Instant::now() < deadline, "a payment never became visible");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        histogram.record(committed.elapsed().as_micros().max(1) as u64)?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writing.store(false, Ordering::Relaxed);
    writer.await?;

    Ok(Figures {
        concurrency: args.concurrency,
        seconds: args.seconds,
        seeded_payments: args.seed,
        phases,
        freshness_samples: freshness.len(),
        freshness_p50_ms: ms(&freshness, 0.5),
        freshness_p99_ms: ms(&freshness, 0.99),
        freshness_max_ms: freshness.max() as f64 / 1000.0,
        pipeline_p50_ms: ms(&pipeline, 0.5),
        pipeline_p99_ms: ms(&pipeline, 0.99),
        write_rate: args.write_rate,
    })
}

fn print_and_save(f: &Figures) -> anyhow::Result<()> {
    println!(
        "\nReports read model ({} clients, {} s per phase, {} payments seeded; % of the higher /health floor)",
        f.concurrency, f.seconds, f.seeded_payments
    );
    println!(
        "  {:<32} {:>10} {:>8} {:>9} {:>9} {:>10}",
        "phase", "req/s", "errors", "p50 ms", "p99 ms", "% floor"
    );
    for p in &f.phases {
        println!(
            "  {:<32} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>9.1}%",
            p.name, p.rps, p.errors, p.p50_ms, p.p99_ms, p.pct_of_floor
        );
    }
    println!(
        "  freshness (payment 200 → first report counting it) under {:.0} payments/s:",
        f.write_rate
    );
    println!(
        "    as served (100 ms cache)       {} samples, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        f.freshness_samples, f.freshness_p50_ms, f.freshness_p99_ms, f.freshness_max_ms
    );
    println!(
        "    cache off (event pipeline)     p50 {:.0} ms, p99 {:.0} ms",
        f.pipeline_p50_ms, f.pipeline_p99_ms
    );
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/reports.json",
        serde_json::to_string_pretty(f)?,
    )?;
    println!("  written to target/bench/reports.json");
    Ok(())
}
