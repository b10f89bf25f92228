//! Quality scenario #2 (ARCHITECTURE.md): a campaigns instance dies under load.
//!
//! The runner starts its own stack from the `aeropartners` binary (campaigns primary and
//! replica, the campaigns-proxy) on a database of its own and the real Pulsar broker, drives a
//! steady mixed load through the proxy (creates, activations, budget updates, gets, lists;
//! writes carry `Idempotency-Key`), SIGKILLs the primary mid-run and starts it again after a
//! pause, then measures availability, latency per phase, failover and failback times, and
//! checks that no acknowledged write and no event was lost and no effect applied twice.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use platform::messaging::{Broker, Envelope};
use serde::Serialize;

pub use crate::measure::PhaseLatency;
use testkit::{ServiceProcess, TempDatabase, free_port, pulsar_config, wait_until_ready};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Config {
    /// The `aeropartners` binary to run the services with.
    pub binary: PathBuf,
    /// Requests per second (open loop: sent on schedule whatever the answers' speed).
    pub rate: f64,
    pub duration: Duration,
    /// When the primary is killed, from the start of the load.
    pub kill_at: Duration,
    /// How long the primary stays dead before it is started again.
    pub down_for: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rate_rps: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub failed: u64,
    pub availability_pct: f64,
    pub before: PhaseLatency,
    pub during: PhaseLatency,
    pub after: PhaseLatency,
    /// From the SIGKILL to the first answer the replica gave.
    pub failover_ms: Option<f64>,
    /// From the primary's restart to the first answer it gave again.
    pub failback_ms: Option<f64>,
    #[serde(flatten)]
    pub integrity: Integrity,
}

#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// From the start of the load.
    pub(crate) sent_at: Duration,
    pub(crate) latency: Duration,
    pub(crate) ok: bool,
    backend: Option<String>,
    /// For an acknowledged write: the campaign and the version the write produced.
    write: Option<(String, i64)>,
    create_key: Option<String>,
}

#[derive(Default)]
struct Known {
    created: Vec<String>,
    all: Vec<String>,
}

fn campaign_body(n: u64, affiliate: &str) -> String {
    format!(
        r#"{{"nombre":"s2-{n}","tipo":"ADQUISICION","presupuesto":{{"monto":1000,"moneda":"USD"}},"fecha_inicio":"2026-01-01T00:00:00Z","fecha_fin":"2099-01-01T00:00:00Z","id_afiliado":"{affiliate}"}}"#
    )
}

/// One request of the mix, chosen by its sequence number.
async fn one_request(
    client: &reqwest::Client,
    proxy: &str,
    n: u64,
    known: &Mutex<Known>,
    affiliate: &str,
) -> (bool, Option<String>, Option<(String, i64)>, Option<String>) {
    let pick = |list: &Vec<String>| {
        (!list.is_empty()).then(|| list[(n as usize * 7919) % list.len()].clone())
    };
    let (request, is_write, create_key) = match n % 10 {
        0 | 4 => {
            let key = format!("s2-create-{affiliate}-{n}");
            (
                client
                    .post(format!("{proxy}/api/campaigns"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", &key)
                    .body(campaign_body(n, affiliate)),
                true,
                Some(key),
            )
        }
        5 => match known.lock().unwrap().created.pop() {
            Some(id) => (
                client
                    .patch(format!("{proxy}/api/campaigns/{id}/activate"))
                    .header("idempotency-key", format!("s2-activate-{affiliate}-{n}")),
                true,
                None,
            ),
            None => (
                client.get(format!(
                    "{proxy}/api/campaigns?limit=10&id_afiliado={affiliate}"
                )),
                false,
                None,
            ),
        },
        2 | 7 => match pick(&known.lock().unwrap().all) {
            Some(id) => (
                client
                    .patch(format!("{proxy}/api/campaigns/{id}/budget"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("s2-budget-{affiliate}-{n}"))
                    .body(format!(r#"{{"monto":{},"moneda":"USD"}}"#, 1000 + n % 1000)),
                true,
                None,
            ),
            None => (
                client.get(format!(
                    "{proxy}/api/campaigns?limit=10&id_afiliado={affiliate}"
                )),
                false,
                None,
            ),
        },
        1 | 6 | 9 => match pick(&known.lock().unwrap().all) {
            Some(id) => (
                client.get(format!("{proxy}/api/campaigns/{id}")),
                false,
                None,
            ),
            None => (
                client.get(format!("{proxy}/api/campaigns?limit=10")),
                false,
                None,
            ),
        },
        _ => (
            client.get(format!(
                "{proxy}/api/campaigns?limit=10&offset=0&id_afiliado={affiliate}"
            )),
            false,
            None,
        ),
    };
    let Ok(response) = request.send().await else {
        return (false, None, None, create_key);
    };
    let status = response.status();
    let backend = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Business refusals (409 for a campaign a concurrent request already activated) are
    // answers; only server errors and transport failures count as failures.
    let ok = !status.is_server_error();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let mut write = None;
    if is_write
        && status.is_success()
        && let (Some(id), Some(version)) = (body["id"].as_str(), body["version"].as_i64())
    {
        write = Some((id.to_owned(), version));
        if create_key.is_some() {
            let mut known = known.lock().unwrap();
            known.created.push(id.to_owned());
            known.all.push(id.to_owned());
        }
    }
    (ok, backend, write, create_key)
}

pub(crate) fn latency(samples: &[&Sample]) -> anyhow::Result<PhaseLatency> {
    PhaseLatency::of(samples.iter().map(|s| s.latency))
}

pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let database = TempDatabase::create().await;
    let result = run_on(config, &database.url).await;
    database.drop_database().await;
    result
}

/// The load of scenario #2 and its independent checks, shared by this runner and the one on
/// the Kubernetes node (`crate::e2e`): a steady open-loop mix through the proxy, a Pulsar
/// consumer of every campaigns event from before the first request, and afterwards the
/// accounting of acknowledged writes and events.
pub(crate) struct Workload {
    client: reqwest::Client,
    proxy: String,
    affiliate: String,
    known: Arc<Mutex<Known>>,
    consumed: Arc<Mutex<Vec<Envelope>>>,
    checker: tokio::task::JoinHandle<()>,
    /// What the load sent and what failed so far, for the live progress line.
    pub(crate) counters: crate::progress::Counters,
}

/// Whether every acknowledged write is committed and every committed change reached a
/// consumer exactly once.
#[derive(Debug, Clone, Serialize)]
pub struct Integrity {
    pub writes_acknowledged: u64,
    pub writes_lost: u64,
    pub changes_committed: u64,
    pub events_consumed: u64,
    pub events_lost: u64,
    pub duplicated_effects: u64,
}

impl Workload {
    /// `affiliate` owns every campaign the load creates, so that a database shared with other
    /// runs (the cluster's) is accounted for this run only; `authorization` is its key where
    /// the platform enforces access (a cluster), `None` in development mode.
    pub(crate) async fn start(
        proxy: &str,
        pulsar: &platform::config::PulsarConfig,
        affiliate: &str,
        authorization: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(authorization) = authorization {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(authorization)?,
            );
        }
        let broker = Broker::connect(pulsar).await?;
        let topics: Vec<String> = [
            "campaigns.evt.created",
            "campaigns.evt.activated",
            "campaigns.evt.updated",
        ]
        .iter()
        .map(|t| broker.topic(t))
        .collect();
        let mut consumer: pulsar::Consumer<Vec<u8>, pulsar::TokioExecutor> = broker
            .client()
            .consumer()
            .with_topics(&topics)
            .with_subscription(format!("scenario-2-checker-{affiliate}"))
            .with_subscription_type(pulsar::SubType::Exclusive)
            .build()
            .await?;
        let consumed: Arc<Mutex<Vec<Envelope>>> = Arc::default();
        let checker = {
            let consumed = consumed.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = consumer.next().await {
                    let _ = consumer.ack(&message).await;
                    if let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload.data)
                    {
                        consumed.lock().unwrap().push(envelope);
                    }
                }
            })
        };
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .default_headers(headers)
                .build()?,
            proxy: proxy.to_owned(),
            affiliate: affiliate.to_owned(),
            known: Arc::default(),
            consumed,
            checker,
            counters: crate::progress::Counters::default(),
        })
    }

    /// Sends `rate` requests per second from `started` until `stop`, whatever the answers'
    /// speed, and returns every sample once all are answered.
    pub(crate) async fn drive(
        &self,
        rate: f64,
        started: Instant,
        stop: CancellationToken,
    ) -> anyhow::Result<Vec<Sample>> {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut in_flight = Vec::new();
        let mut n = 0u64;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let (client, proxy, known, affiliate) = (
                self.client.clone(),
                self.proxy.clone(),
                self.known.clone(),
                self.affiliate.clone(),
            );
            let sent_at = started.elapsed();
            let counters = self.counters.clone();
            counters.sent();
            in_flight.push(tokio::spawn(async move {
                let sent = Instant::now();
                let (ok, backend, write, create_key) =
                    one_request(&client, &proxy, n, &known, &affiliate).await;
                counters.answered(ok);
                Sample {
                    sent_at,
                    latency: sent.elapsed(),
                    ok,
                    backend,
                    write,
                    create_key,
                }
            }));
            n += 1;
        }
        let mut samples = Vec::with_capacity(in_flight.len());
        for request in in_flight {
            samples.push(request.await?);
        }
        Ok(samples)
    }

    /// Acknowledged writes must be committed (each produced an outbox row for its version),
    /// and every committed change must reach the checker, once as an effect.
    pub(crate) async fn integrity(
        self,
        samples: &[Sample],
        database_url: &str,
    ) -> anyhow::Result<Integrity> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(platform::db::connect_options(
                database_url,
                campaigns::SCHEMA,
            )?)
            .await?;
        let committed: HashSet<(String, i64)> = sqlx::query_as::<_, (String, i64)>(
            "SELECT o.aggregate_id, o.aggregate_version FROM outbox o \
             JOIN campanas c ON c.id::text = o.aggregate_id WHERE c.id_afiliado = $1",
        )
        .bind(&self.affiliate)
        .fetch_all(&pool)
        .await?
        .into_iter()
        .collect();
        let acknowledged: Vec<&(String, i64)> =
            samples.iter().filter_map(|s| s.write.as_ref()).collect();
        let writes_lost = acknowledged
            .iter()
            .filter(|w| !committed.contains(w))
            .count() as u64;

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen: HashSet<(String, i64)> = self
                .consumed
                .lock()
                .unwrap()
                .iter()
                .map(|e| (e.aggregate_id.clone(), e.aggregate_version))
                .collect();
            if committed.is_subset(&seen) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.checker.abort();
        let consumed: Vec<Envelope> = self
            .consumed
            .lock()
            .unwrap()
            .iter()
            .filter(|e| committed.contains(&(e.aggregate_id.clone(), e.aggregate_version)))
            .cloned()
            .collect();
        let mut event_ids_per_change: HashMap<(String, i64), HashSet<uuid::Uuid>> = HashMap::new();
        for envelope in &consumed {
            event_ids_per_change
                .entry((envelope.aggregate_id.clone(), envelope.aggregate_version))
                .or_default()
                .insert(envelope.event_id);
        }
        let events_lost = committed
            .iter()
            .filter(|c| !event_ids_per_change.contains_key(*c))
            .count() as u64;
        let creates_sent = samples.iter().filter(|s| s.create_key.is_some()).count() as i64;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM campanas WHERE id_afiliado = $1")
            .bind(&self.affiliate)
            .fetch_one(&pool)
            .await?;
        let duplicated_effects = event_ids_per_change
            .values()
            .filter(|ids| ids.len() > 1)
            .count() as u64
            + u64::try_from(rows - creates_sent).unwrap_or(0);
        Ok(Integrity {
            writes_acknowledged: acknowledged.len() as u64,
            writes_lost,
            changes_committed: committed.len() as u64,
            events_consumed: consumed.len() as u64,
            events_lost,
            duplicated_effects,
        })
    }
}

/// Availability in percent of `samples`.
pub(crate) fn availability(samples: &[Sample]) -> f64 {
    let failed = samples.iter().filter(|s| !s.ok).count();
    if samples.is_empty() {
        0.0
    } else {
        (samples.len() - failed) as f64 / samples.len() as f64 * 100.0
    }
}

/// The affiliate whose key the local run's load calls with.
const AFFILIATE: &str = "scenario-2";

async fn run_on(config: &Config, database_url: &str) -> anyhow::Result<Report> {
    let pulsar = pulsar_config();
    let prefix = pulsar.pulsar_topic_prefix.clone();
    let (primary_addr, replica_addr, proxy_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    // Access enforced, as on a cluster: the load calls with a partner key.
    let campaigns = |addr: &str| {
        ServiceProcess::spawn_enforced(
            &config.binary,
            &["campaigns", "--listen", addr],
            database_url,
            &prefix,
            &[],
        )
    };
    let mut primary = campaigns(&primary_addr)?;
    let _replica = campaigns(&replica_addr)?;
    let backends = format!("primary=http://{primary_addr},replica=http://{replica_addr}");
    let _proxy = ServiceProcess::spawn(
        &config.binary,
        &[
            "campaigns-proxy",
            "--listen",
            &proxy_addr,
            "--backend",
            &backends,
            "--health-interval",
            "200ms",
            "--max-failures",
            "2",
        ],
        database_url,
        &prefix,
    )?;
    for addr in [&primary_addr, &replica_addr, &proxy_addr] {
        wait_until_ready(&format!("http://{addr}/ready"), Duration::from_secs(60)).await;
    }
    let authorization = testkit::acceso::clave_secreta(database_url, AFFILIATE).await;
    let workload = Workload::start(
        &format!("http://{proxy_addr}"),
        &pulsar,
        AFFILIATE,
        Some(&authorization),
    )
    .await?;
    let started = Instant::now();

    // The killer: SIGKILL the primary, then bring it back on the same port.
    let killer = {
        let (binary, database_url, prefix, primary_addr) = (
            config.binary.clone(),
            database_url.to_owned(),
            prefix.clone(),
            primary_addr.clone(),
        );
        let (kill_at, down_for) = (config.kill_at, config.down_for);
        tokio::spawn(async move {
            tokio::time::sleep(kill_at.saturating_sub(started.elapsed())).await;
            primary.kill();
            let killed = started.elapsed();
            drop(primary);
            tokio::time::sleep(down_for).await;
            let restarted = started.elapsed();
            let again = ServiceProcess::spawn_enforced(
                &binary,
                &["campaigns", "--listen", &primary_addr],
                &database_url,
                &prefix,
                &[],
            )
            .expect("the primary starts again");
            (killed, restarted, again)
        })
    };
    let stop = CancellationToken::new();
    let timer = {
        let (stop, duration) = (stop.clone(), config.duration);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        })
    };
    let (kill_at, down_for) = (config.kill_at, config.down_for);
    let live = crate::progress::Live::start(
        "scenario-2",
        Some(config.duration),
        workload.counters.clone(),
        move |elapsed| {
            if elapsed < kill_at {
                None
            } else if elapsed < kill_at + down_for {
                Some("primary killed".to_owned())
            } else {
                Some("primary restarted".to_owned())
            }
        },
    );
    let samples = workload.drive(config.rate, started, stop).await?;
    live.finish().await;
    timer.await?;
    let (killed, restarted, primary_again) = killer.await?;

    // Phases and failover times.
    let failover_at = samples
        .iter()
        .filter(|s| s.sent_at >= killed && s.backend.as_deref() == Some("replica"))
        .map(|s| s.sent_at + s.latency)
        .min();
    let failback_at = samples
        .iter()
        .filter(|s| s.sent_at >= restarted && s.backend.as_deref() == Some("primary"))
        .map(|s| s.sent_at + s.latency)
        .min();
    let recovered = failback_at.unwrap_or(restarted);
    let before: Vec<&Sample> = samples.iter().filter(|s| s.sent_at < killed).collect();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent_at >= killed && s.sent_at < recovered)
        .collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent_at >= recovered).collect();
    let failed = samples.iter().filter(|s| !s.ok).count() as u64;
    let integrity = workload.integrity(&samples, database_url).await?;
    drop(primary_again);

    Ok(Report {
        rate_rps: config.rate,
        duration_s: config.duration.as_secs_f64(),
        requests: samples.len() as u64,
        failed,
        availability_pct: availability(&samples),
        before: latency(&before)?,
        during: latency(&during)?,
        after: latency(&after)?,
        failover_ms: failover_at.map(|t| (t.saturating_sub(killed)).as_secs_f64() * 1000.0),
        failback_ms: failback_at.map(|t| (t.saturating_sub(restarted)).as_secs_f64() * 1000.0),
        integrity,
    })
}

impl Report {
    /// Prints the table and writes `target/scenarios/scenario-2.json`.
    pub fn publish(&self) -> anyhow::Result<()> {
        let phase = PhaseLatency::describe;
        let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0} ms"));
        let rows = [
            (
                "load",
                format!("{:.0} req/s for {:.0} s", self.rate_rps, self.duration_s),
            ),
            ("requests sent", self.requests.to_string()),
            ("requests failed", self.failed.to_string()),
            ("availability", format!("{:.3} %", self.availability_pct)),
            ("latency before the kill", phase(&self.before)),
            ("latency during the outage", phase(&self.during)),
            ("latency after failback", phase(&self.after)),
            ("kill → first answer from the replica", ms(self.failover_ms)),
            (
                "restart → first answer from the primary",
                ms(self.failback_ms),
            ),
            (
                "writes acknowledged / lost",
                format!(
                    "{} / {}",
                    self.integrity.writes_acknowledged, self.integrity.writes_lost
                ),
            ),
            (
                "changes committed / events consumed",
                format!(
                    "{} / {}",
                    self.integrity.changes_committed, self.integrity.events_consumed
                ),
            ),
            ("events lost", self.integrity.events_lost.to_string()),
            (
                "duplicated effects",
                self.integrity.duplicated_effects.to_string(),
            ),
        ];
        println!("\nScenario #2: a campaigns instance dies under load");
        for (label, value) in rows {
            println!("  {label:<42} {value}");
        }
        std::fs::create_dir_all("target/scenarios")?;
        std::fs::write(
            "target/scenarios/scenario-2.json",
            serde_json::to_string_pretty(self)?,
        )?;
        println!("  written to target/scenarios/scenario-2.json");
        Ok(())
    }
}
