//! The fault matrix (issue 13): `make run`'s processes (two of everything the product runs
//! twice) under a steady mixed load through the gateway — payments, campaign writes, partner
//! events, report reads — and one fault at a time, each followed by recovery: SIGKILL of each
//! service, Pulsar stopped and restarted, the run's topics unloaded, PostgreSQL restarted or
//! paused, the payments workers held back while a backlog builds.
//!
//! The load behaves like a careful partner: every write carries an `Idempotency-Key` (or its
//! own dedup id) and is sent again, the same, until it gets a definite answer. A fault then
//! costs availability (failed attempts, and what the user saw: the status codes) and time to
//! recover (every `/ready` green and the backlog drained), never a write. At the end, with the
//! load stopped and everything settled, every acknowledged payment, campaign change and partner
//! event is looked for in the database and among the events on the broker, and every
//! downstream effect (the report's totals, the campaigns' counters) is compared with what
//! applying each write once gives: lost and applied-twice counts, per fault.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use platform::messaging::{Broker, Envelope};
use rust_decimal::Decimal;
use serde::Serialize;
use testkit::TempDatabase;
use tokio_util::sync::CancellationToken;

use crate::local_platform::{LocalPlatform, SERVICES};

/// One fault of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    KillPayments,
    KillPaymentsWorker,
    KillCampaignsPrimary,
    KillCampaignsProxy,
    KillGateway,
    KillEventCollector,
    KillReports,
    KillDataService,
    PulsarDown,
    TopicUnload,
    PostgresRestart,
    PostgresPause,
    SlowConsumer,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::KillPayments,
        Fault::KillPaymentsWorker,
        Fault::KillCampaignsPrimary,
        Fault::KillCampaignsProxy,
        Fault::KillGateway,
        Fault::KillEventCollector,
        Fault::KillReports,
        Fault::KillDataService,
        Fault::PulsarDown,
        Fault::TopicUnload,
        Fault::PostgresRestart,
        Fault::PostgresPause,
        Fault::SlowConsumer,
    ];

    /// The short matrix of `make test`: one fault of each kind (a process, the broker, the
    /// database, a backlog), the ones that take seconds rather than a minute.
    pub const SHORT: [Fault; 5] = [
        Fault::KillPayments,
        Fault::KillPaymentsWorker,
        Fault::TopicUnload,
        Fault::PostgresRestart,
        Fault::PostgresPause,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Fault::KillPayments => "SIGKILL payments API (1 of 2)",
            Fault::KillPaymentsWorker => "SIGKILL payments worker (1 of 2)",
            Fault::KillCampaignsPrimary => "SIGKILL campaigns primary",
            Fault::KillCampaignsProxy => "SIGKILL campaigns proxy (the only one)",
            Fault::KillGateway => "SIGKILL gateway (the only one)",
            Fault::KillEventCollector => "SIGKILL event collector (1 of 2)",
            Fault::KillReports => "SIGKILL reports (1 of 2)",
            Fault::KillDataService => "SIGKILL data service v1 (serving)",
            Fault::PulsarDown => "Pulsar stopped 20 s, restarted",
            Fault::TopicUnload => "every topic of the run unloaded",
            Fault::PostgresRestart => "PostgreSQL restarted (fast shutdown, start)",
            Fault::PostgresPause => "PostgreSQL paused (SIGSTOP) 5 s",
            Fault::SlowConsumer => "payments workers held back 15 s (backlog)",
        }
    }

    /// The run.sh service a kill fault kills.
    fn killed(self) -> Option<&'static str> {
        Some(match self {
            Fault::KillPayments => "payments",
            Fault::KillPaymentsWorker => "payments-worker",
            Fault::KillCampaignsPrimary => "campaigns-primary",
            Fault::KillCampaignsProxy => "campaigns-proxy",
            Fault::KillGateway => "gateway",
            Fault::KillEventCollector => "event-collector-a",
            Fault::KillReports => "reports-a",
            Fault::KillDataService => "data-service-v1",
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub binary: PathBuf,
    pub faults: Vec<Fault>,
    /// Requests started per second (each write then retries on its own until answered).
    pub rate: f64,
    /// Load before each fault, so each starts from a steady state.
    pub steady: Duration,
    /// How long a fault may take to recover before it is reported as not recovered.
    pub recovery_timeout: Duration,
    /// `target/scenarios/<name>.json`.
    pub name: String,
}

/// What one fault did to the users and to the data.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultRow {
    pub fault: String,
    /// Request attempts made from the fault's start until it recovered.
    pub requests: u64,
    /// Attempts answered 5xx or not at all.
    pub failed: u64,
    pub availability_pct: f64,
    /// What the load saw meanwhile: status code (or `conn` for no answer) → count.
    pub statuses: BTreeMap<String, u64>,
    /// From the fault's start to every `/ready` green and the backlog drained.
    pub recovery_s: Option<f64>,
    /// How long the fault itself lasted (Pulsar down and started again, PostgreSQL paused...):
    /// `recovery_s` minus this is the platform's own part.
    pub fault_s: f64,
    /// Writes first sent during the fault, acknowledged, and missing at the end.
    pub acknowledged_lost: u64,
    /// Effects of writes first sent during the fault that were applied more than once.
    pub applied_twice: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rate_rps: f64,
    pub duration_s: f64,
    pub faults: Vec<FaultRow>,
    pub payments_acknowledged: usize,
    pub campaign_writes_acknowledged: usize,
    pub events_acknowledged: usize,
    /// Writes the load gave up on (no definite answer in two minutes): not acknowledged.
    pub writes_abandoned: u64,
    pub acknowledged_lost: u64,
    pub applied_twice: u64,
    /// Downstream totals that differ from applying every acknowledged write once.
    pub mismatches: Vec<String>,
    /// Messages some consumer moved to a dead-letter topic (each is a finding).
    pub dead_lettered: u64,
    /// Events published more than once (absorbed by the consumers' inboxes).
    pub events_republished: u64,
    pub settle_s: f64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.acknowledged_lost == 0
            && self.applied_twice == 0
            && self.mismatches.is_empty()
            && self.dead_lettered == 0
            && self.writes_abandoned == 0
            && self.faults.iter().all(|f| f.recovery_s.is_some())
    }

    /// Prints the table and writes `target/scenarios/<name>.json`.
    pub fn publish(&self, name: &str) -> anyhow::Result<()> {
        println!(
            "\nFault matrix: {:.0} req/s of mixed load for {:.0} s through the gateway",
            self.rate_rps, self.duration_s
        );
        println!(
            "  {:<44} {:>8} {:>6} {:>9} {:>9} {:>9} {:>5} {:>6}  what the user saw",
            "fault", "requests", "failed", "avail %", "fault", "recovery", "lost", "twice"
        );
        for row in &self.faults {
            let statuses: Vec<String> = row
                .statuses
                .iter()
                .map(|(code, n)| format!("{code}×{n}"))
                .collect();
            println!(
                "  {:<44} {:>8} {:>6} {:>9.3} {:>9} {:>9} {:>5} {:>6}  {}",
                row.fault,
                row.requests,
                row.failed,
                row.availability_pct,
                format!("{:.1} s", row.fault_s),
                row.recovery_s
                    .map_or("NOT".to_owned(), |s| format!("{s:.1} s")),
                row.acknowledged_lost,
                row.applied_twice,
                statuses.join(" ")
            );
        }
        println!(
            "  acknowledged: {} payments, {} campaign changes, {} partner events; abandoned {}",
            self.payments_acknowledged,
            self.campaign_writes_acknowledged,
            self.events_acknowledged,
            self.writes_abandoned
        );
        println!(
            "  acknowledged writes lost: {}; effects applied twice: {}; dead-lettered: {}; events published twice (absorbed): {}; settled in {:.1} s",
            self.acknowledged_lost,
            self.applied_twice,
            self.dead_lettered,
            self.events_republished,
            self.settle_s
        );
        for mismatch in &self.mismatches {
            println!("  MISMATCH {mismatch}");
        }
        std::fs::create_dir_all("target/scenarios")?;
        let path = format!("target/scenarios/{name}.json");
        std::fs::write(&path, serde_json::to_string_pretty(self)?)?;
        println!("  written to {path}");
        Ok(())
    }
}

/// The affiliate whose partner events the load sends (a tier without a practical limit).
const TRACKED: &str = "FM_TRACK";
const CAMPAIGNS: usize = 4;

fn affiliates_yaml() -> String {
    format!(
        "niveles:\n  alto: {{ eventos_por_minuto: 10000000 }}\nnivel_por_defecto: alto\nafiliados:\n  {TRACKED}: {{ nivel: alto }}\n"
    )
}

/// Attempts and answers, per phase (phase 0 is the warm-up; fault i is phase i + 1).
#[derive(Debug, Default, Clone)]
struct PhaseStats {
    requests: u64,
    failed: u64,
    statuses: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
struct AckedPayment {
    id: String,
    phase: usize,
}

#[derive(Debug, Clone)]
struct AckedEvent {
    client_id: String,
    campaign: usize,
    phase: usize,
}

/// What the load did, shared by its tasks.
#[derive(Default)]
struct Ledger {
    phases: Vec<PhaseStats>,
    payments: HashMap<String, AckedPayment>,
    events: Vec<AckedEvent>,
    /// Campaign index → (version answered, phase) of each acknowledged budget change.
    campaign_writes: HashMap<usize, Vec<(i64, usize)>>,
    abandoned: u64,
}

struct Load {
    client: reqwest::Client,
    gateway: String,
    campaigns: Vec<String>,
    phase: AtomicUsize,
    ledger: Mutex<Ledger>,
    counters: crate::progress::Counters,
}

/// How long a write is sent again before the load gives up on it.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

enum Write {
    Payment {
        reference: String,
        body: String,
    },
    Event {
        client_id: String,
        campaign: usize,
        body: String,
    },
    Budget {
        campaign: usize,
        key: String,
        body: String,
    },
}

impl Load {
    fn record(&self, phase: usize, status: Option<u16>) -> bool {
        let failed = status.is_none_or(|s| s >= 500);
        let code = status.map_or("conn".to_owned(), |s| s.to_string());
        let mut ledger = self.ledger.lock().unwrap();
        if ledger.phases.len() <= phase {
            ledger.phases.resize(phase + 1, PhaseStats::default());
        }
        let stats = &mut ledger.phases[phase];
        stats.requests += 1;
        if failed {
            stats.failed += 1;
        }
        *stats.statuses.entry(code).or_default() += 1;
        self.counters.sent();
        self.counters.answered(!failed);
        !failed
    }

    /// Request `n` of the mix.
    async fn one(self: Arc<Self>, n: u64) {
        match n % 10 {
            0..=2 => {
                let reference = format!("fm-{n}");
                let body = serde_json::json!({
                    "id_afiliado": format!("FM_PAY_{}", n % 5),
                    "monto": 10 + n % 90,
                    "moneda": "USD",
                    "referencia_pago": reference,
                })
                .to_string();
                self.write(Write::Payment { reference, body }).await;
            }
            3 | 4 => {
                let campaign = (n as usize) % self.campaigns.len();
                let client_id = format!("fm-ev-{n}");
                let body = serde_json::json!({
                    "tipo_evento": "CLICK",
                    "id_afiliado": TRACKED,
                    "id_campana": self.campaigns[campaign],
                    "url": format!("https://faults.example/{n}"),
                    "fuente_evento": "WEB_TAG",
                    "id_evento_cliente": client_id,
                })
                .to_string();
                self.write(Write::Event {
                    client_id,
                    campaign,
                    body,
                })
                .await;
            }
            5 => {
                let campaign = (n as usize / 10) % self.campaigns.len();
                let body = format!(r#"{{"monto":{},"moneda":"USD"}}"#, 100_000 + n);
                self.write(Write::Budget {
                    campaign,
                    key: format!("fm-budget-{n}"),
                    body,
                })
                .await;
            }
            6 | 7 => {
                self.read(format!("{}/api/reports/payments", self.gateway))
                    .await
            }
            8 => {
                let id = &self.campaigns[(n as usize) % self.campaigns.len()];
                self.read(format!("{}/campaigns/{id}", self.gateway)).await;
            }
            _ => {
                self.read(format!("{}/pagos/?limite=5", self.gateway)).await;
            }
        }
    }

    async fn read(&self, url: String) {
        let phase = self.phase.load(Ordering::Relaxed);
        let status = self
            .client
            .get(url)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16());
        self.record(phase, status);
    }

    /// Sends `write` until it gets a definite answer, and records what was acknowledged.
    async fn write(&self, write: Write) {
        let first_phase = self.phase.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let phase = self.phase.load(Ordering::Relaxed);
            let request = match &write {
                Write::Payment { reference, body } => self
                    .client
                    .post(format!("{}/pagos/", self.gateway))
                    .header("idempotency-key", reference.as_str())
                    .body(body.clone()),
                Write::Event { body, .. } => self
                    .client
                    .post(format!("{}/event-collector/events", self.gateway))
                    .body(body.clone()),
                Write::Budget {
                    campaign,
                    key,
                    body,
                    ..
                } => self
                    .client
                    .patch(format!(
                        "{}/campaigns/{}/budget",
                        self.gateway, self.campaigns[*campaign]
                    ))
                    .header("idempotency-key", key.as_str())
                    .body(body.clone()),
            };
            let answer = request
                .header("content-type", "application/json")
                .send()
                .await;
            let (status, body) = match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    (
                        Some(status),
                        response
                            .json::<serde_json::Value>()
                            .await
                            .unwrap_or_default(),
                    )
                }
                Err(_) => (None, serde_json::Value::Null),
            };
            self.record(phase, status);
            // 409 on a keyed write: the first attempt is still running; 429: slow down.
            let definite = status.is_some_and(|s| s < 500 && s != 409 && s != 429);
            if definite {
                let status = status.unwrap_or_default();
                let mut ledger = self.ledger.lock().unwrap();
                match &write {
                    Write::Payment { reference, .. } if status < 300 => {
                        let id = body["id_pago"].as_str().unwrap_or_default().to_owned();
                        ledger.payments.insert(
                            reference.clone(),
                            AckedPayment {
                                id,
                                phase: first_phase,
                            },
                        );
                    }
                    Write::Event {
                        client_id,
                        campaign,
                        ..
                    } if status < 300 => ledger.events.push(AckedEvent {
                        client_id: client_id.clone(),
                        campaign: *campaign,
                        phase: first_phase,
                    }),
                    Write::Budget { campaign, .. } if status < 300 => {
                        let version = body["version"].as_i64().unwrap_or(-1);
                        ledger
                            .campaign_writes
                            .entry(*campaign)
                            .or_default()
                            .push((version, first_phase));
                    }
                    // A definite refusal (4xx) is the load's own mistake: counted as such.
                    _ => {
                        *ledger
                            .phases
                            .get_mut(phase)
                            .map(|p| p.statuses.entry(format!("refused-{status}")).or_default())
                            .unwrap_or(&mut 0) += 1;
                    }
                }
                return;
            }
            if started.elapsed() > GIVE_UP_AFTER {
                self.ledger.lock().unwrap().abandoned += 1;
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// The PostgreSQL server `scripts/infra.sh` started, which the database faults act on.
struct Postgres {
    pidfile: PathBuf,
}

impl Postgres {
    fn ours() -> Option<Self> {
        let pidfile = PathBuf::from("target/infra/pg/postmaster.pid");
        pidfile.exists().then_some(Self { pidfile })
    }

    fn postmaster(&self) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(&self.pidfile)?;
        Ok(text
            .lines()
            .next()
            .context("empty pid file")?
            .trim()
            .parse()?)
    }

    /// The postmaster and every process it started.
    fn processes(&self) -> anyhow::Result<Vec<u32>> {
        let postmaster = self.postmaster()?;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: the fields after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

fn infra(command: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("bash")
        .args(["scripts/infra.sh", command])
        .status()?;
    anyhow::ensure!(status.success(), "scripts/infra.sh {command} failed");
    Ok(())
}

/// Continues a paused PostgreSQL even if the run fails in between.
struct Paused(Vec<u32>);

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in self.0.iter().rev() {
            let _ = signal(*pid, "CONT");
        }
    }
}

/// What the platform looks like from outside: readiness, backlogs.
struct Probe {
    client: reqwest::Client,
    urls: Vec<String>,
    admin: String,
    namespace_url: String,
    prefix: String,
    database: sqlx::PgPool,
}

/// The checker's own subscription, left out of the broker backlog.
const CHECKER: &str = "fault-matrix-checker";

impl Probe {
    async fn all_ready(&self) -> bool {
        self.not_ready().await.is_empty()
    }

    /// The services whose `/ready` is not green.
    async fn not_ready(&self) -> Vec<String> {
        let mut down = Vec::new();
        for url in &self.urls {
            let ok = self
                .client
                .get(format!("{url}/ready"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ok {
                down.push(url.clone());
            }
        }
        down
    }

    /// What still keeps a fault from counting as recovered, for the log.
    async fn pending(&self, steady_backlog: u64) -> String {
        let names: Vec<&str> = SERVICES.iter().map(|(name, _)| *name).collect();
        let down: Vec<String> = self
            .not_ready()
            .await
            .iter()
            .filter_map(|url| self.urls.iter().position(|u| u == url))
            .map(|i| names[i].to_owned())
            .collect();
        format!(
            "not ready: {down:?}; outbox rows waiting: {:?}; payments stuck: {:?}; broker backlog (steady {steady_backlog}): {:?}",
            self.outbox_waiting().await.ok(),
            self.payments_stuck().await.ok(),
            self.broker_backlog().await.ok().map(|(b, _)| b),
        )
    }

    /// The run's topics (full names), dead-letter topics included.
    async fn topics(&self) -> anyhow::Result<Vec<String>> {
        let topics: Vec<String> = self
            .client
            .get(&self.namespace_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(topics
            .into_iter()
            .filter(|t| t.contains(&format!("/{}", self.prefix)))
            .collect())
    }

    /// Messages waiting for a consumer of the run's subscriptions, and dead letters waiting.
    async fn broker_backlog(&self) -> anyhow::Result<(u64, u64)> {
        let (mut backlog, mut dead) = (0, 0);
        for topic in self.topics().await? {
            let path = topic.replace("persistent://", "");
            let stats: serde_json::Value = self
                .client
                .get(format!("{}/admin/v2/persistent/{path}/stats", self.admin))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            for (name, subscription) in stats["subscriptions"].as_object().into_iter().flatten() {
                let waiting = subscription["msgBacklog"].as_u64().unwrap_or(0);
                if topic.ends_with("-DLQ") {
                    dead += waiting;
                } else if name != CHECKER {
                    backlog += waiting;
                }
            }
        }
        Ok((backlog, dead))
    }

    async fn scalar(&self, sql: &'static str) -> anyhow::Result<i64> {
        Ok(tokio::time::timeout(
            Duration::from_secs(3),
            sqlx::query_scalar(sql).fetch_one(&self.database),
        )
        .await
        .context("the database did not answer")??)
    }

    /// Outbox rows waiting more than 2 s, in every context.
    async fn outbox_waiting(&self) -> anyhow::Result<i64> {
        self.scalar(
            "SELECT (SELECT count(*) FROM payments.outbox WHERE published_at IS NULL AND created_at < now() - interval '2 s') \
                  + (SELECT count(*) FROM campaigns.outbox WHERE published_at IS NULL AND created_at < now() - interval '2 s') \
                  + (SELECT count(*) FROM event_collector.outbox WHERE published_at IS NULL AND created_at < now() - interval '2 s')",
        )
        .await
    }

    /// Payments more than 10 s old that have not reached a final state.
    async fn payments_stuck(&self) -> anyhow::Result<i64> {
        self.scalar(
            "SELECT count(*) FROM payments.pagos WHERE estado IN ('PENDIENTE', 'PROCESANDO') \
             AND fecha_creacion < now() - interval '10 s'",
        )
        .await
    }

    /// Recovered: every service ready, nothing waiting in an outbox or stuck, and the broker's
    /// backlog back to what the steady load keeps in flight.
    async fn recovered(&self, steady_backlog: u64) -> bool {
        if !self.all_ready().await {
            return false;
        }
        matches!(self.outbox_waiting().await, Ok(0))
            && matches!(self.payments_stuck().await, Ok(0))
            && self
                .broker_backlog()
                .await
                .is_ok_and(|(backlog, _)| backlog <= steady_backlog)
    }
}

pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let database = TempDatabase::create().await;
    let result = run_on(config, &database.url).await;
    database.drop_database().await;
    result
}

async fn run_on(config: &Config, database_url: &str) -> anyhow::Result<Report> {
    let admin = std::env::var("PULSAR_ADMIN_URL").context("PULSAR_ADMIN_URL (make sets it)")?;
    // The database and broker faults act on the servers scripts/infra.sh runs; with your own
    // (DATABASE_URL / PULSAR_URL set), those faults are skipped, and said so.
    let postgres = Postgres::ours();
    let own_pulsar = Path::new("target/infra/pulsar.pid").exists();
    let faults: Vec<Fault> = config
        .faults
        .iter()
        .copied()
        .filter(|fault| {
            let possible = match fault {
                Fault::PostgresRestart | Fault::PostgresPause => postgres.is_some(),
                Fault::PulsarDown => own_pulsar,
                _ => true,
            };
            if !possible {
                eprintln!(
                    "[faults] skipped, the server is not one scripts/infra.sh runs: {}",
                    fault.describe()
                );
            }
            possible
        })
        .collect();
    let dir = Path::new("target/faults");
    std::fs::create_dir_all(dir)?;
    let affiliates = dir.join("afiliados.yaml");
    std::fs::write(&affiliates, affiliates_yaml())?;
    let prefix = format!("fm{}-", uuid::Uuid::new_v4().simple());
    let affiliates_path = std::fs::canonicalize(&affiliates)?;
    let affiliates_path = affiliates_path.to_string_lossy();
    let platform = LocalPlatform::start(
        &config.binary,
        database_url,
        &dir.join("logs"),
        &[
            ("GATEWAY_LATENCY_MIN", "20ms"),
            ("GATEWAY_LATENCY_MAX", "300ms"),
            ("GATEWAY_FAILURE_RATE", "0.2"),
            ("AFFILIATES_FILE", &affiliates_path),
            ("PULSAR_TOPIC_PREFIX", &prefix),
        ],
    )
    .await?;
    let pulsar = platform::config::PulsarConfig {
        pulsar_url: std::env::var("PULSAR_URL").context("PULSAR_URL")?,
        pulsar_namespace: "public/default".into(),
        pulsar_topic_prefix: prefix.clone(),
        pulsar_auth_token: None,
        pulsar_tls_trust_certs_file: None,
    };
    // Every event of the run, as the broker delivers it to a subscription of our own made
    // before the first request.
    let seen: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let checker = spawn_checker(&pulsar, seen.clone()).await?;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let gateway = platform.url("gateway");
    let campaigns = create_campaigns(&client, &gateway).await?;
    let load = Arc::new(Load {
        client,
        gateway,
        campaigns,
        phase: AtomicUsize::new(0),
        ledger: Mutex::default(),
        counters: crate::progress::Counters::default(),
    });
    let probe = Probe {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        urls: SERVICES
            .iter()
            .map(|(name, _)| platform.url(name))
            .collect(),
        namespace_url: format!("{admin}/admin/v2/persistent/public/default"),
        admin: admin.clone(),
        prefix: prefix.clone(),
        database: sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(3))
            .connect(database_url)
            .await?,
    };

    let stop_load = CancellationToken::new();
    let started = Instant::now();
    let generator = tokio::spawn(generate(load.clone(), config.rate, stop_load.clone()));
    let progress =
        crate::progress::Live::start("fault matrix", None, load.counters.clone(), |_| None);

    // Warm-up: the steady backlog the load keeps in flight, sampled before any fault.
    let mut steady_backlog = 0;
    let warm_until = Instant::now() + config.steady.max(Duration::from_secs(5));
    while Instant::now() < warm_until {
        if let Ok((backlog, _)) = probe.broker_backlog().await {
            steady_backlog = steady_backlog.max(backlog);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Twice the largest seen, and room for a burst: the load is open-loop and random.
    let steady_backlog = (steady_backlog * 2).max(20);

    let mut rows = Vec::new();
    for (i, fault) in faults.iter().enumerate() {
        tokio::time::sleep(config.steady).await;
        load.phase.store(i + 1, Ordering::Relaxed);
        eprintln!("[faults] {}", fault.describe());
        let began = Instant::now();
        inject(*fault, &platform, postgres.as_ref(), &probe).await?;
        let fault_s = began.elapsed().as_secs_f64();
        let mut recovery = None;
        let mut next_report = Instant::now() + Duration::from_secs(15);
        while began.elapsed() < config.recovery_timeout {
            if probe.recovered(steady_backlog).await {
                recovery = Some(began.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() >= next_report {
                eprintln!(
                    "[faults]   waiting: {}",
                    probe.pending(steady_backlog).await
                );
                next_report = Instant::now() + Duration::from_secs(15);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "[faults]   recovered: {}",
            recovery.map_or("NO".to_owned(), |s| format!("{s:.1} s"))
        );
        load.phase.store(0, Ordering::Relaxed);
        rows.push(FaultRow {
            fault: fault.describe().to_owned(),
            recovery_s: recovery,
            fault_s,
            ..FaultRow::default()
        });
    }
    tokio::time::sleep(config.steady).await;
    stop_load.cancel();
    // Every write in flight gets its answer (or is given up on).
    let _ = generator.await;
    progress.finish().await;
    let duration_s = started.elapsed().as_secs_f64();

    // Settle: nothing left to publish, consume or charge.
    let settling = Instant::now();
    while settling.elapsed() < Duration::from_secs(180) {
        if probe.all_ready().await
            && matches!(probe.outbox_waiting().await, Ok(0))
            && matches!(
                probe.scalar("SELECT count(*) FROM payments.pagos WHERE estado IN ('PENDIENTE', 'PROCESANDO')").await,
                Ok(0)
            )
            && probe.broker_backlog().await.is_ok_and(|(b, _)| b == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The report's projection and the campaigns' counters follow the broker: give them a
    // moment after its backlog reached 0.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settle_s = settling.elapsed().as_secs_f64();
    let dead_lettered = probe.broker_backlog().await.map_or(0, |(_, dead)| dead);
    checker.abort();

    let ledger = std::mem::take(&mut *load.ledger.lock().unwrap());
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let verdict = verify(&probe, &load, &ledger, &seen).await?;
    for (i, row) in rows.iter_mut().enumerate() {
        let stats = ledger.phases.get(i + 1).cloned().unwrap_or_default();
        row.requests = stats.requests;
        row.failed = stats.failed;
        row.availability_pct = if stats.requests == 0 {
            100.0
        } else {
            100.0 * (stats.requests - stats.failed) as f64 / stats.requests as f64
        };
        row.statuses = stats.statuses;
        row.acknowledged_lost = verdict.lost_by_phase.get(&(i + 1)).copied().unwrap_or(0);
        row.applied_twice = verdict.twice_by_phase.get(&(i + 1)).copied().unwrap_or(0);
    }
    drop(platform);
    Ok(Report {
        rate_rps: config.rate,
        duration_s,
        faults: rows,
        payments_acknowledged: ledger.payments.len(),
        campaign_writes_acknowledged: ledger.campaign_writes.values().map(Vec::len).sum(),
        events_acknowledged: ledger.events.len(),
        writes_abandoned: ledger.abandoned,
        acknowledged_lost: verdict.lost_by_phase.values().sum(),
        applied_twice: verdict.twice_by_phase.values().sum(),
        mismatches: verdict.mismatches,
        dead_lettered,
        events_republished: verdict.republished,
        settle_s,
    })
}

/// Starts request `n` every 1/rate seconds until `stop`, then waits for every one.
async fn generate(load: Arc<Load>, rate: f64, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {
                tasks.spawn(load.clone().one(n));
                n += 1;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn inject(
    fault: Fault,
    platform: &LocalPlatform,
    postgres: Option<&Postgres>,
    probe: &Probe,
) -> anyhow::Result<()> {
    if let Some(service) = fault.killed() {
        let pid = platform.pids()?[service];
        // The supervisor (run.sh) starts it again a second later, as Kubernetes would.
        return signal(pid, "KILL");
    }
    match fault {
        Fault::PulsarDown => {
            infra("pulsar-stop")?;
            tokio::time::sleep(Duration::from_secs(20)).await;
            infra("pulsar-start")?;
        }
        Fault::TopicUnload => {
            for topic in probe.topics().await? {
                let path = topic.replace("persistent://", "");
                probe
                    .client
                    .put(format!("{}/admin/v2/persistent/{path}/unload", probe.admin))
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        Fault::PostgresRestart => infra("pg-restart")?,
        Fault::PostgresPause => {
            let postgres = postgres.context("our PostgreSQL")?;
            let paused = Paused(postgres.processes()?);
            for pid in &paused.0 {
                signal(*pid, "STOP")?;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(paused);
        }
        Fault::SlowConsumer => {
            let pids = platform.pids()?;
            let workers = Paused(vec![pids["payments-worker"], pids["payments-worker-b"]]);
            for pid in &workers.0 {
                signal(*pid, "STOP")?;
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
            drop(workers);
        }
        _ => unreachable!("kills are handled above"),
    }
    Ok(())
}

async fn create_campaigns(client: &reqwest::Client, gateway: &str) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..CAMPAIGNS {
        let name = format!("fm-{i}");
        ids.push(crate::fixtures::active_campaign(client, gateway, &name, TRACKED, 100_000).await?);
    }
    Ok(ids)
}

async fn spawn_checker(
    pulsar: &platform::config::PulsarConfig,
    seen: Arc<Mutex<Vec<Envelope>>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let broker = Broker::connect(pulsar).await?;
    let topics: Vec<String> = [
        "payments.evt.pending",
        "payments.evt.completed",
        "payments.evt.failed",
        "campaigns.evt.updated",
        "tracking.evt.click",
    ]
    .iter()
    .map(|t| broker.topic(t))
    .collect();
    let mut consumer: pulsar::Consumer<Vec<u8>, pulsar::TokioExecutor> = broker
        .client()
        .consumer()
        .with_topics(&topics)
        .with_subscription(CHECKER)
        .with_subscription_type(pulsar::SubType::Exclusive)
        .with_options(pulsar::ConsumerOptions {
            initial_position: pulsar::consumer::InitialPosition::Earliest,
            durable: Some(true),
            ..pulsar::ConsumerOptions::default()
        })
        .build()
        .await?;
    Ok(tokio::spawn(async move {
        // Reconnects are the crate's business; a gap would only show as events "lost" here,
        // never hide one.
        while let Some(message) = consumer.next().await {
            let Ok(message) = message else { continue };
            let _ = consumer.ack(&message).await;
            if let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload.data) {
                seen.lock().unwrap().push(envelope);
            }
        }
    }))
}

struct Verdict {
    lost_by_phase: HashMap<usize, u64>,
    twice_by_phase: HashMap<usize, u64>,
    mismatches: Vec<String>,
    republished: u64,
}

/// Every acknowledged write against the database, the broker and the downstream effects.
async fn verify(
    probe: &Probe,
    load: &Load,
    ledger: &Ledger,
    seen: &[Envelope],
) -> anyhow::Result<Verdict> {
    let db = &probe.database;
    let mut lost: HashMap<usize, u64> = HashMap::new();
    let mut twice: HashMap<usize, u64> = HashMap::new();
    let mut mismatches = Vec::new();

    // Events on the broker, by aggregate: what consumers were given.
    let mut by_aggregate: HashMap<&str, Vec<&Envelope>> = HashMap::new();
    let mut ids = HashSet::new();
    let mut republished = 0;
    for envelope in seen {
        if !ids.insert(envelope.event_id) {
            republished += 1;
        }
        by_aggregate
            .entry(envelope.aggregate_id.as_str())
            .or_default()
            .push(envelope);
    }

    // Payments: stored once, final, announced on the broker.
    let stored: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id::text, referencia_pago, estado FROM payments.pagos WHERE referencia_pago LIKE 'fm-%'",
    )
    .fetch_all(db)
    .await?;
    let mut stored_by_reference: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for (id, reference, state) in &stored {
        stored_by_reference
            .entry(reference.as_str())
            .or_default()
            .push((id.as_str(), state.as_str()));
    }
    for (reference, acked) in &ledger.payments {
        match stored_by_reference
            .get(reference.as_str())
            .map(Vec::as_slice)
        {
            None | Some([]) => *lost.entry(acked.phase).or_default() += 1,
            Some([(id, state)]) => {
                if *id != acked.id {
                    mismatches.push(format!(
                        "payment {reference}: answered {} but stored {id}",
                        acked.id
                    ));
                }
                if !matches!(*state, "EXITOSO" | "FALLIDO") {
                    mismatches.push(format!("payment {reference} still {state}"));
                }
                if !by_aggregate.contains_key(*id) {
                    mismatches.push(format!("payment {reference}: no event on the broker"));
                }
            }
            Some(many) => *twice.entry(acked.phase).or_default() += many.len() as u64 - 1,
        }
    }

    // Partner events: stored once each and published.
    let events: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT e.id_evento_cliente, count(*) OVER (PARTITION BY e.id_evento_cliente), \
                coalesce(o.published_at::text, '') \
         FROM event_collector.eventos e LEFT JOIN event_collector.outbox o ON o.event_id = e.id_evento \
         WHERE e.id_evento_cliente LIKE 'fm-ev-%'",
    )
    .fetch_all(db)
    .await?;
    let events: HashMap<&str, (i64, bool)> = events
        .iter()
        .map(|(id, n, published)| (id.as_str(), (*n, !published.is_empty())))
        .collect();
    let mut clicks_expected = vec![0i64; load.campaigns.len()];
    for acked in &ledger.events {
        clicks_expected[acked.campaign] += 1;
        match events.get(acked.client_id.as_str()) {
            None => *lost.entry(acked.phase).or_default() += 1,
            Some((n, _)) if *n > 1 => *twice.entry(acked.phase).or_default() += (*n - 1) as u64,
            Some((_, false)) => {
                mismatches.push(format!("event {} never published", acked.client_id))
            }
            Some(_) => {}
        }
    }

    // Campaigns: one version per acknowledged budget change (no more: applied twice; none
    // missing: lost), and one click per acknowledged click event.
    for (index, id) in load.campaigns.iter().enumerate() {
        let (version, clicks): (i64, i64) =
            sqlx::query_as("SELECT version, clicks FROM campaigns.campanas WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(db)
                .await?;
        let writes = ledger
            .campaign_writes
            .get(&index)
            .cloned()
            .unwrap_or_default();
        let phase_of_last = writes.last().map_or(0, |(_, phase)| *phase);
        let versions: HashSet<i64> = writes.iter().map(|(v, _)| *v).collect();
        if versions.len() != writes.len() {
            mismatches.push(format!(
                "campaign {id}: two acknowledged changes got one version"
            ));
        }
        // Created (1) and activated (2), then one version per change; tracking does not bump it.
        let expected = 2 + writes.len() as i64;
        if version > expected {
            *twice.entry(phase_of_last).or_default() += (version - expected) as u64;
        } else if version < expected {
            *lost.entry(phase_of_last).or_default() += (expected - version) as u64;
        }
        if clicks != clicks_expected[index] {
            mismatches.push(format!(
                "campaign {id}: {clicks} clicks counted, {} acknowledged",
                clicks_expected[index]
            ));
        }
    }

    // The report's projection against the payments as stored.
    let (count, exitosos, amount): (i64, i64, Option<Decimal>) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE estado = 'EXITOSO'), \
                sum(monto) FILTER (WHERE moneda = 'USD') FROM payments.pagos",
    )
    .fetch_one(db)
    .await?;
    let report: serde_json::Value = load
        .client
        .get(format!("{}/api/reports/payments", load.gateway))
        .header("x-report-version", "v1")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if report["total_pagos"].as_i64() != Some(count) {
        mismatches.push(format!(
            "report counts {} payments, {count} stored",
            report["total_pagos"]
        ));
    }
    if report["por_estado"]["EXITOSO"].as_i64() != Some(exitosos) {
        mismatches.push(format!(
            "report counts {} EXITOSO, {exitosos} stored",
            report["por_estado"]["EXITOSO"]
        ));
    }
    let reported = report["monto_total"]["USD"].as_f64().unwrap_or(0.0);
    let stored_amount = amount
        .and_then(|a| a.to_string().parse::<f64>().ok())
        .unwrap_or(0.0);
    if (reported - stored_amount).abs() > 0.005 {
        mismatches.push(format!(
            "report sums {reported:.2} USD, {stored_amount:.2} stored"
        ));
    }
    Ok(Verdict {
        lost_by_phase: lost,
        twice_by_phase: twice,
        mismatches,
        republished,
    })
}
