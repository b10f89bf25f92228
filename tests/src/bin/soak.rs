//! `make soak` (a short one runs in `make bench`): the whole `make run` platform under a
//! sustained mixed load, watched the way a user would watch it. Issue 7 found a data service at
//! 237 MB after a few minutes while every other service held 17–34 MB, and log lines of 885 KB.
//!
//! It starts `scripts/run.sh` on a database and topic prefix of its own and free ports, gives
//! each of 50 affiliates an active campaign, then sends an open-loop mix through the gateway
//! (payments, each attributed to its affiliate's campaign, a tracking event per payment through
//! the collector, campaign budget changes, and report
//! reads of the read model and of legacy reporting) for `--seconds`. The mix is stationary (the number of
//! campaigns a payment touches does not grow), so memory that keeps growing is a leak,
//! not more work; samples every service's RSS every 5 s, then
//! presses Ctrl-C (SIGINT to the process group) and times the stop. It prints, per service: RSS
//! after the warm-up, peak and at the end, the RSS trend after the warm-up (least-squares slope,
//! MB/min), the log size and its longest line. It writes `target/bench/soak.json` and asserts
//! nothing.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aeropartners_tests::local_platform::{LocalPlatform, SERVICES};
use anyhow::Context;
use clap::Parser;
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
struct Args {
    /// The `aeropartners` binary to run.
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: PathBuf,
    /// Seconds of load (after the warm-up).
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// Seconds of load before the baseline RSS is taken (caches and pools fill up first).
    #[arg(long, default_value_t = 30)]
    warmup: u64,
    /// Payments per second through the gateway; campaign writes and report reads come on top
    /// (a budget change per 20 payments, a report read per 4).
    #[arg(long, default_value_t = 60.0)]
    rate: f64,
}

const SAMPLE_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Ticks dropped because too many requests were already in flight.
    shed: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::var("DATABASE_URL").context("DATABASE_URL (make soak sets it)")?;
    std::env::var("PULSAR_URL").context("PULSAR_URL (make soak sets it)")?;
    let database = testkit::TempDatabase::create().await;
    let result = soak(&args, &database.url).await;
    database.drop_database().await;
    result
}

async fn soak(args: &Args, database_url: &str) -> anyhow::Result<()> {
    let log_dir = PathBuf::from("target/soak/run");
    let started = Instant::now();
    let mut platform = LocalPlatform::start(
        &args.binary,
        database_url,
        &log_dir,
        &[
            // What the chart runs: JSON lines, the format whose span lists grew in issue 7.
            ("LOG_FORMAT", "json"),
            // A gateway that answers quickly, so the worker keeps up and backlogs do not pile up.
            ("GATEWAY_LATENCY_MIN", "5ms"),
            ("GATEWAY_LATENCY_MAX", "30ms"),
            // The simulated gateway (an external service in production) lives in the worker's
            // process and remembers each idempotency key for this long (24 h by default): a
            // short window lets its records level off within the soak, so the worker's own
            // memory shows.
            ("GATEWAY_IDEMPOTENCY_RETENTION", "60s"),
        ],
    )
    .await?;
    println!(
        "platform ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pids = platform.pids()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let gateway = platform.url("gateway");
    let mut campaigns = Vec::new();
    for affiliate in 0..AFFILIATES {
        campaigns.push(create_campaign(&client, &gateway, affiliate).await?);
    }
    let campaigns = Arc::new(campaigns);

    let counters = Arc::new(Counters::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn(load(
        client.clone(),
        gateway.clone(),
        campaigns,
        args.rate,
        counters.clone(),
        stop.clone(),
    ));

    let total = Duration::from_secs(args.warmup + args.seconds);
    let load_started = Instant::now();
    let mut samples: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut sampler = tokio::time::interval(SAMPLE_EVERY);
    while load_started.elapsed() < total {
        sampler.tick().await;
        let at = load_started.elapsed().as_secs_f64();
        for (name, pid) in &pids {
            if let Some(mb) = rss_mb(*pid) {
                samples.entry(name).or_default().push((at, mb));
            }
        }
    }
    stop.cancel();
    load.await?;

    // Ctrl-C, as a user would.
    let (stop_status, stop_seconds) = platform.interrupt(Duration::from_secs(90)).await?;
    let survivors: Vec<&str> = pids
        .iter()
        .filter(|(_, pid)| rss_mb(**pid).is_some())
        .map(|(name, _)| *name)
        .collect();

    report(
        args,
        &samples,
        platform.log_dir(),
        &counters,
        load_started.elapsed(),
        stop_seconds,
        stop_status.and_then(|s| s.code()),
        &survivors,
    )
}

/// The open-loop mix: payments at `rate`, a budget change of one of the campaigns per 20
/// payments, a report read per 4 (the read model in v1 and v2 in turn; legacy reporting every
/// 16th), all through the gateway.
async fn load(
    client: reqwest::Client,
    gateway: String,
    campaigns: Arc<Vec<String>>,
    rate: f64,
    counters: Arc<Counters>,
    stop: tokio_util::sync::CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(256));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            counters.shed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (client, counters, gateway, campaigns) = (
            client.clone(),
            counters.clone(),
            gateway.clone(),
            campaigns.clone(),
        );
        // v1 and v2 of the read model in turn, and a legacy report (from the data service of
        // the active version) every 16th.
        let report = n.is_multiple_of(4).then(|| {
            if n.is_multiple_of(16) {
                client
                    .post(format!("{gateway}/reporting/report"))
                    .json(&serde_json::json!({"tipo_reporte": "pagos_por_periodo"}))
            } else {
                client
                    .get(format!("{gateway}/api/reports/payments"))
                    .header(
                        "x-report-version",
                        if n.is_multiple_of(8) { "v2" } else { "v1" },
                    )
            }
        });
        tokio::spawn(async move {
            let _permit = permit;
            let mut outcomes = vec![
                pay(&client, &gateway, n).await,
                track(&client, &gateway, &campaigns, n).await,
            ];
            if n.is_multiple_of(20) {
                let id = &campaigns[usize::try_from(n / 20).unwrap_or(0) % campaigns.len()];
                outcomes.push(change_budget(&client, &gateway, id, n).await);
            }
            if let Some(request) = report {
                outcomes.push(request.send().await.is_ok_and(|r| r.status().is_success()));
            }
            for ok in outcomes {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                let counter = if ok { &counters.ok } else { &counters.failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Let the last requests finish.
    let _ = in_flight.acquire_many(256).await;
}

async fn pay(client: &reqwest::Client, gateway: &str, n: u64) -> bool {
    client
        .post(format!("{gateway}/pagos"))
        .json(&serde_json::json!({
            "id_afiliado": format!("af-{}", n % AFFILIATES),
            "monto": 10 + n % 90,
            "moneda": "USD",
            "referencia_pago": format!("soak-{n}"),
        }))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// A tracking event through the collector on the affiliate's campaign: impressions and clicks,
/// and every 10th a valued conversion (from a web tag, which proves no sender: it is counted,
/// and pays no commission).
async fn track(client: &reqwest::Client, gateway: &str, campaigns: &[String], n: u64) -> bool {
    let affiliate = n % AFFILIATES;
    let tipo = match n % 10 {
        0 => "CONVERSION",
        1 | 4 | 7 => "CLICK",
        _ => "IMPRESSION",
    };
    let mut event = serde_json::json!({
        "tipo_evento": tipo,
        "id_afiliado": format!("af-{affiliate}"),
        "id_campana": campaigns[usize::try_from(affiliate).unwrap_or(0) % campaigns.len()],
        "id_evento_cliente": format!("soak-event-{n}"),
    });
    if tipo == "CONVERSION" {
        event["valor_conversion"] = serde_json::json!(50 + n % 200);
        event["moneda"] = "USD".into();
    }
    client
        .post(format!("{gateway}/event-collector/events"))
        .json(&event)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Affiliates of the soak; each gets one active campaign before the load starts.
const AFFILIATES: u64 = 50;

async fn create_campaign(
    client: &reqwest::Client,
    gateway: &str,
    affiliate: u64,
) -> anyhow::Result<String> {
    let name = format!("soak {affiliate}");
    let affiliate = format!("af-{affiliate}");
    aeropartners_tests::fixtures::active_campaign(client, gateway, &name, &affiliate, 900_000).await
}

async fn change_budget(client: &reqwest::Client, gateway: &str, id: &str, n: u64) -> bool {
    client
        .patch(format!("{gateway}/campaigns/{id}/budget"))
        .json(&serde_json::json!({"monto": 900_000 + n % 1000, "moneda": "USD"}))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Resident set size in MB, or None when the process is gone (or a zombie).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Least-squares slope of (seconds, MB) in MB per minute.
fn slope_per_minute(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

/// Size of a log file and its longest line, in bytes.
fn log_figures(path: &Path) -> (u64, usize) {
    let Ok(text) = std::fs::read(path) else {
        return (0, 0);
    };
    let longest = text
        .split(|b| *b == b'\n')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    (text.len() as u64, longest)
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    samples: &BTreeMap<&str, Vec<(f64, f64)>>,
    log_dir: &Path,
    counters: &Counters,
    ran: Duration,
    stop_seconds: f64,
    stop_code: Option<i32>,
    survivors: &[&str],
) -> anyhow::Result<()> {
    let (sent, ok, failed, shed) = (
        counters.sent.load(Ordering::Relaxed),
        counters.ok.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        counters.shed.load(Ordering::Relaxed),
    );
    println!(
        "\nsoak: {:.0} s of load ({} s warm-up), {sent} requests, {ok} ok, {failed} failed, {shed} shed",
        ran.as_secs_f64(),
        args.warmup
    );
    println!(
        "\n{:<18} {:>11} {:>9} {:>8} {:>12} {:>10} {:>13}",
        "service", "RSS warm MB", "peak MB", "end MB", "trend MB/min", "log MB", "longest line"
    );
    let mut rows = Vec::new();
    for (name, _) in SERVICES {
        let points = samples.get(name).map(Vec::as_slice).unwrap_or_default();
        let after: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(at, _)| *at >= args.warmup as f64)
            .collect();
        let warm = after.first().map_or(0.0, |p| p.1);
        let end = after.last().map_or(0.0, |p| p.1);
        let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
        let trend = slope_per_minute(&after);
        let (log_bytes, longest) = log_figures(&log_dir.join(format!("{name}.log")));
        println!(
            "{name:<18} {warm:>11.1} {peak:>9.1} {end:>8.1} {trend:>12.2} {:>10.2} {longest:>11} B",
            log_bytes as f64 / 1e6
        );
        rows.push(serde_json::json!({
            "service": name, "rss_warm_mb": warm, "rss_peak_mb": peak, "rss_end_mb": end,
            "rss_trend_mb_per_min": trend, "log_bytes": log_bytes, "longest_log_line_bytes": longest,
            "samples": points,
        }));
    }
    println!(
        "\nCtrl-C → stopped in {stop_seconds:.1} s (exit {}); still running afterwards: {}",
        stop_code.map_or("none: killed".to_owned(), |c| c.to_string()),
        if survivors.is_empty() {
            "nothing".to_owned()
        } else {
            survivors.join(", ")
        }
    );
    let json = serde_json::json!({
        "seconds": args.seconds, "warmup": args.warmup, "rate": args.rate,
        "requests": sent, "ok": ok, "failed": failed, "shed": shed,
        "stop_seconds": stop_seconds, "stop_exit_code": stop_code, "survivors": survivors,
        "services": rows,
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/soak.json",
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("figures in target/bench/soak.json");
    Ok(())
}
