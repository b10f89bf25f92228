//! `make bench`: what one payment costs the platform, end to end, against what PostgreSQL can
//! commit on the same machine in the same run.
//!
//! Two scenarios, each on a fresh database, the real PostgreSQL and the real broker, with the
//! built `aeropartners` binary (the processes users run), JSON logs at the default level:
//!  * **write path**: the payments API (with its outbox relay) behind the gateway;
//!  * **full system**: every service of `make run` (`scripts/run.sh`), the simulated payment
//!    gateway answering at once, every event consumed by every consumer.
//!
//! Each: `--concurrency` clients send `POST /pagos/` through the gateway in a closed loop for
//! `--seconds` (peak), the run waits until the work settled (write path: the outbox published;
//! full system: every payment in a final state and every subscription's backlog empty), then an
//! open loop at half the peak rate gives latency. Over the peak window it reads the CPU time of
//! every process (services, PostgreSQL, broker; the load generator apart) and the database's
//! commits (`pg_stat_database.xact_commit`), and divides them by the payments.
//!
//! The ceilings run after the platform stopped, on the same database: `pgbench` of the bare
//! accept transaction (payment row + outbox row, nothing else) and of the same with a NOTIFY.
//! Then the original Python system's payments API (a reconstruction: `bench/original`,
//! installed by `scripts/original.sh`) on the same PostgreSQL, with the same clients:
//! `POST /pagos/`, `GET /pagos/{id}` and `/health`, against ours with the whole platform up.
//! Prints a table and writes `target/bench/payments.json`. It asserts nothing about time.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aeropartners_tests::{
    cpu,
    local_platform::{LocalPlatform, SERVICES},
};
use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Parser)]
struct Args {
    /// The `aeropartners` binary to run.
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: PathBuf,
    /// Concurrent clients in the closed-loop phase and in pgbench.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Runs these scenarios (repeatable) and the ceilings only, without the original system
    /// (to iterate on one path, or compare two in one run: `--only write-path --only
    /// write-path-keys`; `make bench` runs everything).
    #[arg(long, value_enum)]
    only: Vec<Scenario>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::var("DATABASE_URL").context("DATABASE_URL (make bench sets it)")?;
    std::env::var("PULSAR_URL").context("PULSAR_URL (make bench sets it)")?;

    let mut scenarios = Vec::new();
    let mut ceilings = None;
    let chosen = match args.only.as_slice() {
        [_, ..] => args.only.clone(),
        [] => vec![
            Scenario::WritePath,
            Scenario::WritePathKeys,
            Scenario::FullSystem,
        ],
    };
    for scenario in chosen {
        let database = testkit::TempDatabase::create().await;
        let result = run(&args, scenario, &database.url).await;
        // The ceilings run on a database with the same schema, once the platform stopped.
        let result = match result {
            Ok(figures) if ceilings.is_none() => {
                ceilings = Some(measure_ceilings(&database.url, &args)?);
                Ok(figures)
            }
            other => other,
        };
        database.drop_database().await;
        scenarios.push((scenario, result?));
    }
    let original = if !args.only.is_empty() {
        None
    } else {
        let database = testkit::TempDatabase::create().await;
        let original = measure_original(&args, &database.url).await;
        database.drop_database().await;
        Some(original?)
    };
    print_and_save(
        &args,
        &scenarios,
        &ceilings.context("the ceilings ran")?,
        original.as_ref(),
    )
}

/// The original system's figures, measured like ours.
#[derive(Debug, Serialize)]
struct Original {
    workers: usize,
    post: Phase,
    get_payment: Phase,
    health: Phase,
}

/// Uvicorn processes for the original: one per core, the most the machine gives it.
const ORIGINAL_WORKERS: usize = 2;

async fn measure_original(args: &Args, database_url: &str) -> anyhow::Result<Original> {
    let status = Command::new("bash")
        .args(["scripts/original.sh", "install"])
        .status()
        .context("scripts/original.sh install")?;
    if !status.success() {
        bail!("scripts/original.sh install failed");
    }
    let log_dir = PathBuf::from("target/bench/original");
    std::fs::create_dir_all(&log_dir)?;
    let log = std::fs::File::create(log_dir.join("uvicorn.log"))?;
    let port = testkit::free_port();
    let server = Command::new("bash")
        .args(["scripts/original.sh", "run", &port.to_string()])
        .env("DATABASE_URL", database_url)
        .env("ORIGINAL_WORKERS", ORIGINAL_WORKERS.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own group: uvicorn's workers stop with it.
        .process_group(0)
        .spawn()
        .context("scripts/original.sh run")?;
    let _server = ProcessGroup(server);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/health")).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{base}/pagos/");
    closed_loop(&client, &url, args.concurrency, Duration::from_secs(2)).await?;
    let post = closed_loop(
        &client,
        &url,
        args.concurrency,
        Duration::from_secs(args.seconds),
    )
    .await?;
    let pool = PgPool::connect(database_url).await?;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM original.pagos LIMIT 1")
        .fetch_one(&pool)
        .await?;
    let length = Duration::from_secs(args.seconds.min(10));
    Ok(Original {
        workers: ORIGINAL_WORKERS,
        post,
        get_payment: closed_loop_get(
            &client,
            &format!("{base}/pagos/{id}"),
            args.concurrency,
            length,
        )
        .await?,
        health: closed_loop_get(&client, &format!("{base}/health"), args.concurrency, length)
            .await?,
    })
}

/// A process group stopped with SIGTERM when dropped.
struct ProcessGroup(Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
enum Scenario {
    /// The payments API and its relay behind the gateway: what accepting a payment costs.
    WritePath,
    /// The same, the API enforcing partner keys (`AUTH_MODE=enforce`) and the clients sending
    /// one: what authentication costs on the hot path, against the previous in the same run.
    WritePathKeys,
    /// Everything `make run` starts: what a payment costs until every effect is applied.
    FullSystem,
}

impl Scenario {
    /// Its column in the printed table.
    fn column(self) -> &'static str {
        match self {
            Self::WritePath => "write path",
            Self::WritePathKeys => "with keys",
            Self::FullSystem => "full system",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::WritePath => "write_path",
            Self::WritePathKeys => "write_path_keys",
            Self::FullSystem => "full_system",
        }
    }
}

#[derive(Debug, Serialize)]
struct Figures {
    peak: Phase,
    /// Payments accepted in the peak phase that reached their end: published (write path) or
    /// in a final state with every event consumed (full system).
    payments: u64,
    /// From the first request of the peak phase until the work settled.
    settled_after_s: f64,
    /// `payments / settled_after_s`.
    payments_per_s: f64,
    cpu: cpu::Usage,
    cpu_ms_per_payment: f64,
    commits: i64,
    commits_per_payment: f64,
    half_rate_target: f64,
    half: Phase,
    /// `GET /pagos/{id}` and `/health` through the gateway (full system only).
    reads: Option<Reads>,
    /// Each kind of service started alone (full system only).
    cold_starts: Option<Vec<ColdStart>>,
    /// (labels, batches, mean size) of every batching queue and consumer, from `/metrics`.
    batches: Vec<(String, f64, f64)>,
}

#[derive(Debug, Serialize)]
struct Reads {
    get_payment: Phase,
    health: Phase,
}

/// Service processes started directly (the write path), stopped with SIGTERM when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// The running stack of a scenario: its gateway and the pids whose CPU counts as services'.
enum Stack {
    WritePath {
        _processes: Processes,
        gateway: String,
        payments: String,
        pids: Vec<u32>,
        /// `Bearer <key>` when the API enforces keys.
        authorization: Option<String>,
    },
    FullSystem(LocalPlatform),
}

impl Stack {
    fn gateway(&self) -> String {
        match self {
            Self::WritePath { gateway, .. } => gateway.clone(),
            Self::FullSystem(platform) => platform.url("gateway"),
        }
    }

    fn authorization(&self) -> Option<&str> {
        match self {
            Self::WritePath { authorization, .. } => authorization.as_deref(),
            Self::FullSystem(_) => None,
        }
    }

    fn pids(&self) -> anyhow::Result<Vec<u32>> {
        match self {
            Self::WritePath { pids, .. } => Ok(pids.clone()),
            Self::FullSystem(platform) => Ok(platform.pids()?.into_values().collect()),
        }
    }
}

async fn start(args: &Args, scenario: Scenario, database_url: &str) -> anyhow::Result<Stack> {
    let log_dir = PathBuf::from("target/bench").join(scenario.slug());
    match scenario {
        Scenario::FullSystem => Ok(Stack::FullSystem(
            LocalPlatform::start(
                &args.binary,
                database_url,
                &log_dir,
                &[
                    // What the chart runs.
                    ("LOG_FORMAT", "json"),
                    // The external payment gateway answers at once: the platform is measured.
                    ("GATEWAY_LATENCY_MIN", "0ms"),
                    ("GATEWAY_LATENCY_MAX", "0ms"),
                ],
            )
            .await?,
        )),
        Scenario::WritePath | Scenario::WritePathKeys => {
            let keys = scenario == Scenario::WritePathKeys;
            let _ = std::fs::remove_dir_all(&log_dir);
            std::fs::create_dir_all(&log_dir)?;
            let prefix = format!("bench{}-", uuid::Uuid::new_v4().simple());
            let env = [
                ("DATABASE_URL", database_url),
                ("PULSAR_TOPIC_PREFIX", prefix.as_str()),
                ("LOG_FORMAT", "json"),
            ];
            let status = Command::new(&args.binary)
                .arg("migrate")
                .envs(env)
                .status()
                .with_context(|| format!("{} migrate", args.binary.display()))?;
            if !status.success() {
                bail!("migrations failed");
            }
            // A key made as a user makes one (`aeropartners claves crear`, shown once).
            let authorization = if keys {
                let output = Command::new(&args.binary)
                    .args(["claves", "crear", "--afiliado", "afiliado-bench"])
                    .envs(env)
                    .stderr(Stdio::null())
                    .output()
                    .context("aeropartners claves crear")?;
                let key = String::from_utf8(output.stdout)?
                    .lines()
                    .map(str::trim)
                    .find(|line| line.starts_with("ap_sk_"))
                    .context("`aeropartners claves crear` printed no key")?
                    .to_owned();
                Some(format!("Bearer {key}"))
            } else {
                None
            };
            let auth_mode = if keys { "enforce" } else { "development" };
            let (payments_port, gateway_port) = (testkit::free_port(), testkit::free_port());
            let spawn = |name: &str, service_args: &[String]| -> anyhow::Result<Child> {
                let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
                Ok(Command::new(&args.binary)
                    .args(service_args)
                    .envs(env)
                    .env("AUTH_MODE", auth_mode)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?)
            };
            let payments = spawn(
                "payments",
                &[
                    "payments".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{payments_port}"),
                ],
            )?;
            let gateway = spawn(
                "gateway",
                &[
                    "gateway".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{gateway_port}"),
                    "--route".into(),
                    format!("/pagos=http://127.0.0.1:{payments_port}/pagos"),
                    "--docs".into(),
                    format!("payments=http://127.0.0.1:{payments_port}/openapi.json"),
                ],
            )?;
            let pids = vec![payments.id(), gateway.id()];
            let processes = Processes(vec![payments, gateway]);
            for port in [payments_port, gateway_port] {
                wait_ready(&format!("http://127.0.0.1:{port}/ready")).await?;
            }
            Ok(Stack::WritePath {
                _processes: processes,
                gateway: format!("http://127.0.0.1:{gateway_port}"),
                payments: format!("http://127.0.0.1:{payments_port}"),
                pids,
                authorization,
            })
        }
    }
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while !reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{url} not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// How long an idle PostgreSQL backend may keep its statistics before it reports them
/// (`PGSTAT_IDLE_INTERVAL`, 10 s), plus a margin: commit counts are read after this.
const STATS_FLUSH: Duration = Duration::from_secs(11);

async fn run(args: &Args, scenario: Scenario, database_url: &str) -> anyhow::Result<Figures> {
    let stack = start(args, scenario, database_url).await?;
    let pool = PgPool::connect(database_url).await?;
    let pids = stack.pids()?;
    let url = format!("{}/pagos/", stack.gateway());
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(authorization) = stack.authorization() {
        headers.insert(reqwest::header::AUTHORIZATION, authorization.parse()?);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()?;
    // Warm-up: connections, prepared statements, topic lookups.
    closed_loop(&client, &url, args.concurrency, Duration::from_secs(2)).await?;
    wait_settled(scenario, &pool).await?;
    tokio::time::sleep(STATS_FLUSH).await;

    let commits_before = commits(&pool).await?;
    let payments_before = payments_done(scenario, &pool).await?;
    let cpu_before = cpu::Snapshot::take(&pids);
    let started = Instant::now();
    let peak = closed_loop(
        &client,
        &url,
        args.concurrency,
        Duration::from_secs(args.seconds),
    )
    .await?;
    if peak.ok == 0 {
        bail!(
            "no request succeeded in the peak phase of {}",
            scenario.slug()
        );
    }
    wait_settled(scenario, &pool).await?;
    let settled_after = started.elapsed();
    let cpu = cpu::Snapshot::take(&pids).since(&cpu_before);
    let payments = u64::try_from(payments_done(scenario, &pool).await? - payments_before)?;
    tokio::time::sleep(STATS_FLUSH).await;
    let commits = commits(&pool).await? - commits_before;
    let batches = batch_sizes(&client, &stack).await;

    let half_rate = peak.throughput / 2.0;
    let half = open_loop(&client, &url, half_rate, Duration::from_secs(args.seconds)).await?;
    let reads = if scenario == Scenario::FullSystem {
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM payments.pagos LIMIT 1")
            .fetch_one(&pool)
            .await?;
        let length = Duration::from_secs(args.seconds.min(10));
        Some(Reads {
            get_payment: closed_loop_get(
                &client,
                &format!("{}/pagos/{id}", stack.gateway()),
                args.concurrency,
                length,
            )
            .await?,
            health: closed_loop_get(
                &client,
                &format!("{}/health", stack.gateway()),
                args.concurrency,
                length,
            )
            .await?,
        })
    } else {
        None
    };
    drop(stack);
    let cold_starts = if scenario == Scenario::FullSystem {
        Some(cold_starts(&args.binary, database_url).await?)
    } else {
        None
    };
    let per_payment = |value: f64| value / payments.max(1) as f64;
    Ok(Figures {
        payments,
        settled_after_s: settled_after.as_secs_f64(),
        payments_per_s: payments as f64 / settled_after.as_secs_f64(),
        cpu_ms_per_payment: per_payment(cpu.platform_ms()),
        cpu,
        commits,
        commits_per_payment: per_payment(commits as f64),
        peak,
        half_rate_target: half_rate,
        half,
        reads,
        cold_starts,
        batches,
    })
}

/// Mean batch size per queue and subscription, summed over every service's `/metrics`: where
/// the work was shared by one transaction, and where it was not.
async fn batch_sizes(client: &reqwest::Client, stack: &Stack) -> Vec<(String, f64, f64)> {
    let urls: Vec<String> = match stack {
        Stack::WritePath { payments, .. } => vec![payments.clone()],
        Stack::FullSystem(platform) => SERVICES
            .iter()
            .map(|(name, _)| platform.url(name))
            .collect(),
    };
    // (sum, count) per series.
    let mut totals: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for url in urls {
        let Ok(answer) = client.get(format!("{url}/metrics")).send().await else {
            continue;
        };
        let Ok(text) = answer.text().await else {
            continue;
        };
        for line in text.lines() {
            for (metric, part) in [
                ("aeropartners_events_batch_size_sum", 0),
                ("aeropartners_events_batch_size_count", 1),
                ("aeropartners_group_commit_batch_weight_sum", 0),
                ("aeropartners_group_commit_batch_weight_count", 1),
            ] {
                let Some(rest) = line.strip_prefix(metric) else {
                    continue;
                };
                let Some((labels, value)) = rest.rsplit_once(' ') else {
                    continue;
                };
                let value: f64 = value.parse().unwrap_or(0.0);
                let entry = totals.entry(labels.to_owned()).or_default();
                if part == 0 {
                    entry.0 += value;
                } else {
                    entry.1 += value;
                }
            }
        }
    }
    totals
        .into_iter()
        .map(|(labels, (sum, count))| (labels, count, sum / count.max(1.0)))
        .collect()
}

/// How long a service takes from exec to answering `/health`, and to `/ready`.
#[derive(Debug, Serialize)]
struct ColdStart {
    service: &'static str,
    /// Median of [`COLD_START_RUNS`] starts.
    health_ms: f64,
    /// `None` for the gateway, which is ready only once its upstreams' documents are merged.
    ready_ms: Option<f64>,
}

const COLD_START_RUNS: usize = 3;

/// Starts each kind of service alone on the migrated database, [`COLD_START_RUNS`] times.
async fn cold_starts(
    binary: &std::path::Path,
    database_url: &str,
) -> anyhow::Result<Vec<ColdStart>> {
    let elsewhere = "http://127.0.0.1:9";
    let services: [(&'static str, Vec<String>); 8] = [
        ("payments", vec!["payments".into()]),
        ("payments-worker", vec!["payments-worker".into()]),
        ("campaigns", vec!["campaigns".into()]),
        (
            "campaigns-proxy",
            vec![
                "campaigns-proxy".into(),
                "--backend".into(),
                format!("primary={elsewhere}"),
            ],
        ),
        (
            "gateway",
            vec![
                "gateway".into(),
                "--route".into(),
                format!("/pagos={elsewhere}/pagos"),
            ],
        ),
        (
            "data-service",
            vec!["data-service".into(), "--version".into(), "v1".into()],
        ),
        (
            "reports",
            vec![
                "reports".into(),
                "--instance".into(),
                "cold".into(),
                "--data-service-v1".into(),
                elsewhere.into(),
                "--data-service-v2".into(),
                elsewhere.into(),
            ],
        ),
        ("event-collector", vec!["event-collector".into()]),
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()?;
    let mut figures = Vec::new();
    for (service, service_args) in services {
        let mut health = Vec::new();
        let mut ready = Vec::new();
        for _ in 0..COLD_START_RUNS {
            let port = testkit::free_port();
            let base = format!("http://127.0.0.1:{port}");
            let started = Instant::now();
            let child = Command::new(binary)
                .args(&service_args)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env("DATABASE_URL", database_url)
                .env("AUTH_MODE", "development")
                .env(
                    "PULSAR_TOPIC_PREFIX",
                    format!("cold{}-", uuid::Uuid::new_v4().simple()),
                )
                .env("LOG_FORMAT", "json")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let _child = Processes(vec![child]);
            let mut answered = None;
            // A gateway is ready once its upstreams' documents are merged: there are none here,
            // so its /ready is left out.
            let measure_ready = service != "gateway";
            while started.elapsed() < Duration::from_secs(30) {
                let path = if answered.is_none() {
                    "health"
                } else {
                    "ready"
                };
                let ok = client
                    .get(format!("{base}/{path}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok && answered.is_none() {
                    answered = Some(started.elapsed());
                    if !measure_ready {
                        break;
                    }
                    continue;
                }
                if ok {
                    ready.push(started.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            health.push(
                answered
                    .context("a service never answered /health")?
                    .as_secs_f64()
                    * 1000.0,
            );
        }
        figures.push(ColdStart {
            service,
            health_ms: median(&mut health),
            ready_ms: (!ready.is_empty()).then(|| median(&mut ready)),
        });
    }
    Ok(figures)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn commits(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// Payments that reached the scenario's end: published (write path) or final (full system).
async fn payments_done(scenario: Scenario, pool: &PgPool) -> anyhow::Result<i64> {
    let sql = match scenario {
        Scenario::WritePath | Scenario::WritePathKeys => {
            "SELECT count(*) FROM payments.outbox \
             WHERE event_type = 'PagoPendiente' AND published_at IS NOT NULL"
        }
        Scenario::FullSystem => {
            "SELECT count(*) FROM payments.pagos WHERE estado NOT IN ('PENDIENTE', 'PROCESANDO')"
        }
    };
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Waits until every outbox is published and, for the full system, every payment is final
/// and every subscription of the run has consumed everything.
async fn wait_settled(scenario: Scenario, pool: &PgPool) -> anyhow::Result<()> {
    let started = Instant::now();
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'outbox'",
    )
    .fetch_all(pool)
    .await?;
    loop {
        let mut pending: i64 = 0;
        for schema in &schemas {
            pending += sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"
            )))
            .fetch_one(pool)
            .await?;
        }
        if scenario == Scenario::FullSystem {
            pending += sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM payments.pagos WHERE estado IN ('PENDIENTE', 'PROCESANDO')",
            )
            .fetch_one(pool)
            .await?;
            if pending == 0 {
                pending += unconsumed(pool).await?;
            }
        }
        if pending == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{pending} items still pending after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Payment events published but not yet applied by a consumer: each consumer's inbox (or the
/// reports' event store) against the events published to the topics it reads. Counted in the
/// database rather than asked of the broker, so the check costs the broker nothing.
async fn unconsumed(pool: &PgPool) -> anyhow::Result<i64> {
    const EVERY_PAYMENT_TOPIC: &[&str] = &[
        "payments.evt.pending",
        "payments.evt.completed",
        "payments.evt.failed",
        "payments.evt.reverted",
    ];
    let mut missing = 0;
    for (applied_in, topics) in [
        ("campaigns.inbox", &["payments.evt.completed"][..]),
        ("data_service_v1.inbox", EVERY_PAYMENT_TOPIC),
        ("data_service_v2.inbox", EVERY_PAYMENT_TOPIC),
        ("reports.eventos", EVERY_PAYMENT_TOPIC),
    ] {
        let (published, applied): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM payments.outbox \
                     WHERE published_at IS NOT NULL AND topic = ANY($1)), \
                    (SELECT count(*) FROM {applied_in} WHERE event_type LIKE 'Pago%')"
        )))
        .bind(topics)
        .fetch_one(pool)
        .await?;
        missing += (published - applied).max(0);
    }
    Ok(missing)
}

#[derive(Debug, Serialize)]
struct Ceilings {
    /// Payment row + outbox row, one transaction per payment.
    bare_accept_tps: f64,
    /// The same with `pg_notify` in each transaction.
    bare_accept_notify_tps: f64,
}

/// pgbench on copies of the payment and outbox tables (indexes, no trigger).
fn measure_ceilings(database_url: &str, args: &Args) -> anyhow::Result<Ceilings> {
    let status = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", database_url, "-c"])
        .arg(
            "CREATE SCHEMA ceiling; \
             CREATE TABLE ceiling.pagos (LIKE payments.pagos INCLUDING ALL); \
             CREATE TABLE ceiling.outbox (LIKE payments.outbox INCLUDING ALL);",
        )
        .status()
        .context("psql runs")?;
    if !status.success() {
        bail!("cannot create the ceiling tables");
    }
    let bare = CEILING_SCRIPT.replace("{notify}", "");
    let notify = CEILING_SCRIPT.replace("{notify}", "SELECT pg_notify('ceiling_outbox', '');");
    Ok(Ceilings {
        bare_accept_tps: aeropartners_tests::pg::pgbench(
            database_url,
            args.concurrency,
            args.seconds,
            &bare,
        )?,
        bare_accept_notify_tps: aeropartners_tests::pg::pgbench(
            database_url,
            args.concurrency,
            args.seconds,
            &notify,
        )?,
    })
}

/// The original system's accept: the payment and its event, one transaction, nothing else. The
/// envelope is the size of a real one.
const CEILING_SCRIPT: &str = r#"
BEGIN;
INSERT INTO ceiling.pagos (id, id_afiliado, monto, moneda, referencia_pago, estado, fecha_creacion, fecha_actualizacion, eventos_emitidos)
  VALUES (gen_random_uuid(), 'afiliado-bench', 10.50, 'USD', 'pgb-' || gen_random_uuid(), 'PENDIENTE', now(), now(), 1)
  RETURNING id \gset
INSERT INTO ceiling.outbox (event_id, event_type, aggregate_type, aggregate_id, aggregate_version, topic, envelope)
  VALUES (gen_random_uuid(), 'PagoPendiente', 'Pago', :id, 1, 'payments.evt.pending',
  '{"event_id":"5b0f3f5e-8d0c-4b47-9d0e-3f7c2a9b1c11","event_type":"PagoPendiente","aggregate_type":"Pago","aggregate_id":"3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f","aggregate_version":1,"occurred_at":"2026-12-04T22:00:00.000000Z","correlation_id":"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0","data":{"id_pago":"3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f","id_afiliado":"afiliado-bench","monto":"10.50","moneda":"USD","referencia_pago":"ref-1","estado":"PENDIENTE","fecha":"2026-12-04T22:00:00.000000Z"}}'::jsonb);
{notify}
END;
"#;

#[derive(Debug, Serialize)]
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

async fn get(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
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

/// `concurrency` clients sending `POST /pagos/`, each as soon as its previous one answered.
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    length: Duration,
) -> anyhow::Result<Phase> {
    closed_loop_with(client, url, concurrency, length, true).await
}

/// The same with `GET url`.
async fn closed_loop_get(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    length: Duration,
) -> anyhow::Result<Phase> {
    closed_loop_with(client, url, concurrency, length, false).await
}

async fn closed_loop_with(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    length: Duration,
    write: bool,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (client, url) = (client.clone(), url.to_owned());
        tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("valid histogram");
            let mut failures = 0u64;
            while started.elapsed() < length {
                let sent = Instant::now();
                let ok = if write {
                    post(&client, &url).await
                } else {
                    get(&client, &url).await
                };
                if ok {
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
    summarize(
        results.into_iter().map(|(h, _)| h).collect(),
        failures,
        started.elapsed(),
    )
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

fn print_and_save(
    args: &Args,
    scenarios: &[(Scenario, Figures)],
    ceilings: &Ceilings,
    original: Option<&Original>,
) -> anyhow::Result<()> {
    let bare = ceilings.bare_accept_tps;
    println!();
    println!(
        "POST /pagos/ through the gateway: {} clients, {} s per phase, JSON logs at info, one machine",
        args.concurrency, args.seconds
    );
    println!("  write path  = gateway + payments API (outbox relay inside) + broker");
    println!(
        "  full system = all {} services of make run, payment gateway latency 0, every event consumed",
        SERVICES.len()
    );
    println!(
        "  with keys   = the write path, the API enforcing partner keys and the clients sending one"
    );
    let columns: Vec<String> = scenarios
        .iter()
        .map(|(scenario, _)| format!("{:>13}", scenario.column()))
        .collect();
    println!("{:<44} {}", "", columns.join(" "));
    let row = |label: &str, value: &dyn Fn(&Figures) -> f64, decimals: usize| {
        let cells: Vec<String> = scenarios
            .iter()
            .map(|(_, f)| format!("{:>13.*}", decimals, value(f)))
            .collect();
        println!("{label:<44} {}", cells.join(" "));
    };
    row("peak: accepted (req/s)", &|f| f.peak.throughput, 0);
    row("peak: p50 latency (ms)", &|f| f.peak.p50_ms, 2);
    row("peak: p99 latency (ms)", &|f| f.peak.p99_ms, 2);
    row("peak: failed requests", &|f| f.peak.failures as f64, 0);
    row(
        "payments done (published / final)",
        &|f| f.payments as f64,
        0,
    );
    row("  settled after (s)", &|f| f.settled_after_s, 1);
    row("  payments done per second", &|f| f.payments_per_s, 0);
    row(
        "CPU ms per payment: all of the platform",
        &|f| f.cpu_ms_per_payment,
        2,
    );
    row(
        "  services",
        &|f| f.cpu.services_ms / f.payments.max(1) as f64,
        2,
    );
    row(
        "  PostgreSQL",
        &|f| f.cpu.postgres_ms / f.payments.max(1) as f64,
        2,
    );
    row(
        "  broker",
        &|f| f.cpu.broker_ms / f.payments.max(1) as f64,
        2,
    );
    row(
        "  (load generator)",
        &|f| f.cpu.load_generator_ms / f.payments.max(1) as f64,
        2,
    );
    row(
        "  (whole machine)",
        &|f| f.cpu.machine_ms / f.payments.max(1) as f64,
        2,
    );
    row("commits per payment", &|f| f.commits_per_payment, 2);
    row("half rate: target (req/s)", &|f| f.half_rate_target, 0);
    row("half rate: p50 latency (ms)", &|f| f.half.p50_ms, 2);
    row("half rate: p99 latency (ms)", &|f| f.half.p99_ms, 2);
    row("half rate: failed requests", &|f| f.half.failures as f64, 0);
    row(
        "accepted / bare accept ceiling (%)",
        &|f| f.peak.throughput / bare * 100.0,
        1,
    );
    row(
        "payments done / bare accept ceiling (%)",
        &|f| f.payments_per_s / bare * 100.0,
        1,
    );
    let figures_of = |wanted: Scenario| {
        scenarios
            .iter()
            .find(|(scenario, _)| *scenario == wanted)
            .map(|(_, figures)| figures)
    };
    if let (Some(open), Some(keys)) = (
        figures_of(Scenario::WritePath),
        figures_of(Scenario::WritePathKeys),
    ) {
        println!();
        println!(
            "authentication on the write path, same run: accepted {:.0} → {:.0} req/s ({:.1} %), p50 {:.2} → {:.2} ms, services' CPU per payment {:.3} → {:.3} ms",
            open.peak.throughput,
            keys.peak.throughput,
            keys.peak.throughput / open.peak.throughput * 100.0,
            open.peak.p50_ms,
            keys.peak.p50_ms,
            open.cpu.services_ms / open.payments.max(1) as f64,
            keys.cpu.services_ms / keys.payments.max(1) as f64,
        );
    }
    println!();
    println!(
        "pgbench, {} clients, same PostgreSQL: bare accept (payment + outbox row) {:.0} tps; with NOTIFY {:.0} tps ({:.0} %)",
        args.concurrency,
        bare,
        ceilings.bare_accept_notify_tps,
        ceilings.bare_accept_notify_tps / bare * 100.0
    );
    for (scenario, figures) in scenarios {
        if figures.batches.is_empty() {
            continue;
        }
        println!();
        println!(
            "batches formed in the {} (events or payments per transaction):",
            scenario.slug().replace('_', " ")
        );
        for (labels, count, mean) in &figures.batches {
            println!("  {labels:<60} {count:>8.0} batches, mean {mean:>6.1}");
        }
    }
    let full = scenarios
        .iter()
        .find(|(scenario, _)| *scenario == Scenario::FullSystem)
        .map(|(_, figures)| figures);
    if let Some(starts) = full.and_then(|full| full.cold_starts.as_ref()) {
        println!();
        println!(
            "cold start, exec to the first 200 (median of {COLD_START_RUNS}; /ready needs the database and, where required, the broker):"
        );
        for start in starts {
            let ready = start
                .ready_ms
                .map_or("(waits for its upstreams)".to_owned(), |ms| {
                    format!("{ms:>6.1} ms")
                });
            println!(
                "  {:<16} /health {:>6.1} ms   /ready {ready}",
                start.service, start.health_ms
            );
        }
    }
    let mut comparison: Vec<(&str, &Phase, &Phase)> = Vec::new();
    if let (Some(full), Some(original)) = (full, original) {
        let reads = full.reads.as_ref().context("the reads ran")?;
        println!();
        println!(
            "against the original Python system (FastAPI + SQLAlchemy, {} uvicorn workers, same PostgreSQL, {} clients):",
            original.workers, args.concurrency
        );
        println!(
            "{:<22} {:>22} {:>22} {:>8}",
            "", "ours (whole platform)", "original", "ratio"
        );
        comparison = vec![
            ("POST /pagos/", &full.peak, &original.post),
            ("GET /pagos/{id}", &reads.get_payment, &original.get_payment),
            ("GET /health", &reads.health, &original.health),
        ];
        for (label, ours, theirs) in &comparison {
            println!(
                "{label:<22} {:>11.0} req/s p99 {:>5.1} {:>11.0} req/s p99 {:>5.1} {:>7.1}×",
                ours.throughput,
                ours.p99_ms,
                theirs.throughput,
                theirs.p99_ms,
                ours.throughput / theirs.throughput.max(f64::MIN_POSITIVE)
            );
        }
    }

    let report = serde_json::json!({
        "concurrency": args.concurrency,
        "seconds_per_phase": args.seconds,
        "ceilings": ceilings,
        "original": original,
        "ratios_to_original": comparison.iter().map(|(label, ours, theirs)| serde_json::json!({
            "request": label,
            "ours_rps": ours.throughput,
            "original_rps": theirs.throughput,
            "ratio": ours.throughput / theirs.throughput.max(f64::MIN_POSITIVE),
        })).collect::<Vec<_>>(),
        "scenarios": scenarios.iter().map(|(scenario, figures)| serde_json::json!({
            "scenario": scenario,
            "figures": figures,
            "accepted_ratio_to_bare_accept": figures.peak.throughput / bare,
            "done_ratio_to_bare_accept": figures.payments_per_s / bare,
        })).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/payments.json",
        serde_json::to_string_pretty(&report)?,
    )?;
    println!(
        "\nwritten to target/bench/payments.json (service logs under target/bench/<scenario>/)"
    );
    Ok(())
}
