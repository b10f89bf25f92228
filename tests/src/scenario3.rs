//! Quality scenario #3 (ARCHITECTURE.md): partners send payments and tracking events
//! duplicated and out of order, under load, while a collector replica and a payments worker
//! are SIGKILLed and restarted. Every effect must be applied exactly once: payments,
//! commissions, campaign metrics and the report, and every accepted event must be traceable.
//!
//! The runner starts its own stack from the `aeropartners` binary (payments API with its
//! commission consumer, two payments workers, campaigns, two event collectors, reports) on a
//! database of its own and the real Pulsar broker. It generates N distinct partner events
//! (payments through `POST /pagos/`; clicks, impressions and valued conversions through the
//! collector, single and in batches, some as signed webhooks), sends each 1–3 times in a
//! shuffled order from K concurrent clients (some sends abandoned after a client-side timeout
//! and sent again), then waits for the platform to settle and compares every table with what an
//! in-order single delivery gives.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use event_collector::domain::firma::firmar_con_tiempo;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use rust_decimal::{Decimal, RoundingStrategy, prelude::ToPrimitive};
use serde::Serialize;
use testkit::{
    ServiceProcess, TempDatabase, free_port, operadores::Operadores, pulsar_config,
    wait_until_ready,
};

pub use crate::measure::PhaseLatency;

#[derive(Debug, Clone)]
pub struct Config {
    pub binary: PathBuf,
    /// Distinct payments sent through `POST /pagos/`.
    pub payments: usize,
    /// Distinct tracking events sent through the collector.
    pub tracking: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Campaigns the tracking events name.
    pub campaigns: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub distinct_events: usize,
    pub sends: usize,
    /// HTTP requests, retries included.
    pub requests: u64,
    /// Requests without a definite answer (refused connection, 5xx, client timeout), retried.
    pub requests_retried: u64,
    /// Sends that never got a definite answer (must be 0).
    pub sends_unanswered: u64,
    pub duration_s: f64,
    pub throughput_rps: f64,
    pub latency: PhaseLatency,
    pub kills: Vec<String>,
    pub payments_expected: usize,
    pub payments_stored: i64,
    pub commissions_expected: usize,
    pub commissions_stored: i64,
    pub tracking_expected: usize,
    pub tracking_stored: i64,
    /// Campaigns whose clicks, impressions, conversions or spend differ from the expected.
    pub campaign_mismatches: Vec<String>,
    pub report_expected: ReportTotals,
    pub report_actual: ReportTotals,
    /// Effects applied more than once (a second payment, commission, event or count).
    pub duplicates_applied: u64,
    /// Acknowledged events with no effect (not stored, not published).
    pub events_lost: u64,
    /// Accepted events or payments whose status or trace cannot be read back.
    pub untraceable: u64,
    /// Different ids answered for the same partner event.
    pub inconsistent_answers: u64,
    /// From the last send to every effect in place.
    pub settle_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReportTotals {
    pub total_pagos: i64,
    pub exitosos: i64,
    pub monto_total: BTreeMap<String, String>,
}

/// One distinct partner event.
#[derive(Debug, Clone)]
enum Evento {
    Pago {
        referencia: String,
        /// Who pays: its key goes with every attempt.
        afiliado: String,
        body: String,
    },
    Tracking {
        /// Unique per event: how the runner finds it again.
        url: String,
        body: serde_json::Value,
        webhook: bool,
        campana: usize,
        tipo: &'static str,
        valor: Option<Decimal>,
    },
}

/// One request the clients make (a copy of one event, or a batch of copies).
#[derive(Debug, Clone)]
enum Envio {
    Uno(usize),
    Lote(Vec<usize>),
}

const WEBHOOK_SECRET: &str = "whsec_scenario_3";
/// The affiliate whose campaigns the tracking events name; it sends from tags and signed
/// webhooks.
const TRACKED: &str = "S3_TRACK";

fn affiliates_yaml() -> String {
    format!(
        "niveles:\n  alto: {{ eventos_por_minuto: 10000000 }}\nnivel_por_defecto: alto\nafiliados:\n  {TRACKED}: {{ nivel: alto, secretos_webhook: [{WEBHOOK_SECRET}] }}\n"
    )
}

/// The affiliate of the n-th payment: seven take turns.
fn payer(n: usize) -> String {
    format!("S3_PAY_{}", n % 7)
}

fn comision(valor: Decimal) -> Decimal {
    (valor * Decimal::new(10, 2)).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

fn generate(config: &Config, campaign_ids: &[String], rng: &mut StdRng) -> Vec<Evento> {
    let mut eventos = Vec::new();
    for n in 0..config.payments {
        let referencia = format!("s3-pago-{}-{n}", config.seed);
        let cents: i64 = rng.random_range(100..100_000);
        let moneda = ["USD", "EUR", "COP"][n % 3];
        let afiliado = payer(n);
        let body = serde_json::json!({
            "id_afiliado": afiliado,
            "monto": Decimal::new(cents, 2).to_f64().unwrap(),
            "moneda": moneda,
            "referencia_pago": referencia,
        })
        .to_string();
        eventos.push(Evento::Pago {
            referencia,
            afiliado,
            body,
        });
    }
    for n in 0..config.tracking {
        let campana = n % campaign_ids.len();
        let tipo = match rng.random_range(0..10) {
            0..=4 => "IMPRESSION",
            5..=7 => "CLICK",
            _ => "CONVERSION",
        };
        let webhook = tipo == "CONVERSION" && n % 4 == 0;
        let url = format!("https://s3.example/{}/{n}", config.seed);
        let mut body = serde_json::json!({
            "tipo_evento": tipo,
            "id_afiliado": TRACKED,
            "id_campana": campaign_ids[campana],
            "url": url,
            "fuente_evento": if webhook { "WEBHOOK" } else { "WEB_TAG" },
        });
        // Most partners send their own id; the rest are deduplicated by content.
        if n % 5 != 0 {
            body["id_evento_cliente"] = format!("s3-{}-{n}", config.seed).into();
        }
        let valor = (tipo == "CONVERSION").then(|| Decimal::new(rng.random_range(100..50_000), 2));
        if let Some(valor) = valor {
            body["valor_conversion"] = valor.to_f64().unwrap().into();
            body["moneda"] = "USD".into();
        }
        eventos.push(Evento::Tracking {
            url,
            body,
            webhook,
            campana,
            tipo,
            valor,
        });
    }
    eventos
}

/// Each event 1–3 times; singles and batches; all shuffled.
fn plan(eventos: &[Evento], rng: &mut StdRng) -> Vec<Envio> {
    let mut envios = Vec::new();
    let mut para_lotes = Vec::new();
    for (i, evento) in eventos.iter().enumerate() {
        for _ in 0..rng.random_range(1..=3) {
            match evento {
                Evento::Tracking { webhook: false, .. } if rng.random_bool(0.4) => {
                    para_lotes.push(i)
                }
                _ => envios.push(Envio::Uno(i)),
            }
        }
    }
    para_lotes.shuffle(rng);
    while !para_lotes.is_empty() {
        let size = rng.random_range(2..=25).min(para_lotes.len());
        envios.push(Envio::Lote(para_lotes.drain(..size).collect()));
    }
    envios.shuffle(rng);
    envios
}

struct Stack {
    payments: String,
    collectors: [String; 2],
    campaigns: String,
    reports: String,
    /// `Authorization` of each affiliate's key.
    keys: HashMap<String, String>,
    /// `Authorization` of an operator (the chart's operations Role): the runner's checks read
    /// every affiliate's payments, events and report.
    operator: String,
}

impl Stack {
    fn key(&self, affiliate: &str) -> &str {
        &self.keys[affiliate]
    }
}

#[derive(Default)]
struct Answers {
    /// Event index → ids answered (must be one each).
    ids: HashMap<usize, HashSet<String>>,
    latencies: Vec<Duration>,
    requests: u64,
    retried: u64,
    unanswered: u64,
}

async fn send_one(
    client: &reqwest::Client,
    stack: &Stack,
    eventos: &[Evento],
    envio: &Envio,
    answers: &Mutex<Answers>,
    attempt_seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(attempt_seed);
    for attempt in 0..40u64 {
        let collector = &stack.collectors[((attempt_seed + attempt) % 2) as usize];
        // Some sends are abandoned after a client-side timeout that is shorter than the work,
        // and sent again: the first may or may not have been applied.
        let timeout = if attempt == 0 && rng.random_bool(0.05) {
            Duration::from_millis(2)
        } else {
            Duration::from_secs(10)
        };
        let request = match envio {
            Envio::Uno(i) => match &eventos[*i] {
                Evento::Pago { body, afiliado, .. } => client
                    .post(format!("{}/pagos/", stack.payments))
                    .header("content-type", "application/json")
                    .header("authorization", stack.key(afiliado))
                    .body(body.clone()),
                Evento::Tracking { body, webhook, .. } => {
                    let raw = body.to_string();
                    let mut request = client
                        .post(format!("{collector}/event-collector/events"))
                        .header("content-type", "application/json");
                    if *webhook {
                        // A sender signs every attempt afresh (a new t): a resend is never a replay.
                        let t =
                            chrono::Utc::now().timestamp() + i64::try_from(attempt).unwrap_or(0);
                        request = request.header(
                            "x-webhook-signature",
                            firmar_con_tiempo(WEBHOOK_SECRET.as_bytes(), t, raw.as_bytes()),
                        );
                    } else {
                        // A tag sends with the affiliate's key (the signature is a webhook's).
                        request = request.header("authorization", stack.key(TRACKED));
                    }
                    request.body(raw)
                }
            },
            Envio::Lote(items) => {
                let body = serde_json::json!({"eventos": items.iter().map(|i| match &eventos[*i] {
                    Evento::Tracking { body, .. } => body.clone(),
                    Evento::Pago { .. } => unreachable!("payments are never batched"),
                }).collect::<Vec<_>>()});
                client
                    .post(format!("{collector}/event-collector/events/batch"))
                    .header("content-type", "application/json")
                    .header("authorization", stack.key(TRACKED))
                    .body(body.to_string())
            }
        };
        let started = Instant::now();
        let result = request.timeout(timeout).send().await;
        let latency = started.elapsed();
        let definite = match result {
            Ok(response) if response.status().is_success() => {
                let status = response.status().as_u16();
                match response.json::<serde_json::Value>().await {
                    Ok(body) => Some((status, body)),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        if record(answers, envio, latency, definite.map(|(_, body)| body)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1).min(10))).await;
    }
    answers.lock().unwrap().unanswered += 1;
}

/// Records one request; true when it got a definite answer (the send is done).
fn record(
    answers: &Mutex<Answers>,
    envio: &Envio,
    latency: Duration,
    body: Option<serde_json::Value>,
) -> bool {
    let mut a = answers.lock().unwrap();
    a.requests += 1;
    a.latencies.push(latency);
    let Some(body) = body else {
        a.retried += 1;
        return false;
    };
    match envio {
        Envio::Uno(i) => {
            let id = body["id_pago"]
                .as_str()
                .or(body["id_evento"].as_str())
                .unwrap_or("?");
            a.ids.entry(*i).or_default().insert(id.to_owned());
        }
        Envio::Lote(items) => {
            for (i, r) in items
                .iter()
                .zip(body["resultados"].as_array().into_iter().flatten())
            {
                let id = r["id_evento"].as_str().unwrap_or("?");
                a.ids.entry(*i).or_default().insert(id.to_owned());
            }
        }
    }
    true
}

async fn create_campaigns(
    client: &reqwest::Client,
    campaigns: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..n {
        let name = format!("s3-{i}");
        ids.push(
            crate::fixtures::active_campaign(client, campaigns, &name, TRACKED, 1_000_000).await?,
        );
    }
    Ok(ids)
}

/// Starts service processes of the scenario's stack: its binary, database and topic prefix.
struct Launcher<'a> {
    binary: &'a std::path::Path,
    db: &'a str,
    prefix: &'a str,
    operadores: &'a Operadores,
}

impl Launcher<'_> {
    /// Access enforced as on a cluster: partners call with keys, operators are those of
    /// `operadores`' namespace on the test API server.
    fn start(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<ServiceProcess> {
        let mut all = vec![
            ("AUTH_KUBERNETES", "true"),
            ("AUTH_NAMESPACE", self.operadores.namespace.as_str()),
        ];
        all.extend_from_slice(env);
        Ok(ServiceProcess::spawn_enforced(
            self.binary,
            args,
            self.db,
            self.prefix,
            &all,
        )?)
    }
}

/// Runs the scenario on a database of its own, dropped afterwards.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let database = TempDatabase::create().await;
    let result = run_on(config, &database.url).await;
    database.drop_database().await;
    result
}

async fn run_on(config: &Config, db: &str) -> anyhow::Result<Report> {
    let pulsar = pulsar_config();
    let prefix = pulsar.pulsar_topic_prefix.clone();
    let bin = config.binary.clone();
    let affiliates = std::env::temp_dir().join(format!("s3-afiliados-{}.yaml", std::process::id()));
    std::fs::write(&affiliates, affiliates_yaml())?;
    let affiliates = affiliates.to_string_lossy().into_owned();
    let addr = || format!("127.0.0.1:{}", free_port());
    let (payments, worker_a, worker_b, campaigns, collector_a, collector_b, reports) =
        (addr(), addr(), addr(), addr(), addr(), addr(), addr());
    // A fast, always-approving gateway: every payment ends EXITOSO, so the expected report is
    // exact. A payment caught mid-charge by a killed worker is resumed after 5 s.
    let worker_env = [
        ("GATEWAY_LATENCY_MIN", "5ms"),
        ("GATEWAY_LATENCY_MAX", "30ms"),
        ("GATEWAY_FAILURE_RATE", "0"),
        ("WORKER_STALLED_AFTER", "5s"),
    ];
    let collector_env = [("AFFILIATES_FILE", affiliates.as_str())];
    migrate(&bin, db, &prefix).await?;
    anyhow::ensure!(
        std::env::var("KUBECONFIG").is_ok(),
        "the operators are the test kube-apiserver's: KUBECONFIG (make k8s-up)"
    );
    let operadores = Operadores::crear("scenario-3");
    let services = Launcher {
        binary: &bin,
        db,
        prefix: &prefix,
        operadores: &operadores,
    };
    let _payments = services.start(&["payments", "--listen", &payments], &[])?;
    let mut worker = services.start(&["payments-worker", "--listen", &worker_a], &worker_env)?;
    let _worker_b = services.start(&["payments-worker", "--listen", &worker_b], &worker_env)?;
    let _campaigns = services.start(&["campaigns", "--listen", &campaigns], &[])?;
    let mut collector = services.start(
        &["event-collector", "--listen", &collector_a],
        &collector_env,
    )?;
    let _collector_b = services.start(
        &["event-collector", "--listen", &collector_b],
        &collector_env,
    )?;
    let _reports = services.start(&["reports", "--listen", &reports, "--instance", "s3"], &[])?;
    for a in [
        &payments,
        &worker_a,
        &worker_b,
        &campaigns,
        &collector_a,
        &collector_b,
        &reports,
    ] {
        wait_until_ready(&format!("http://{a}/ready"), Duration::from_secs(90)).await;
    }
    let mut keys = HashMap::new();
    for affiliate in (0..7).map(payer).chain([TRACKED.to_owned()]) {
        let key = testkit::acceso::clave_secreta(db, &affiliate).await;
        keys.insert(affiliate, key);
    }
    let stack = Arc::new(Stack {
        payments: format!("http://{payments}"),
        collectors: [
            format!("http://{collector_a}"),
            format!("http://{collector_b}"),
        ],
        campaigns: format!("http://{campaigns}"),
        reports: format!("http://{reports}"),
        keys,
        operator: format!("Bearer {}", operadores.token(Operadores::OPERACIONES)),
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.clients)
        .build()?;
    // The tracked affiliate creates its campaigns with its own key.
    let tracked = reqwest::Client::builder()
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(stack.key(TRACKED))?,
        )]))
        .build()?;
    let campaign_ids = create_campaigns(&tracked, &stack.campaigns, config.campaigns).await?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let eventos = Arc::new(generate(config, &campaign_ids, &mut rng));
    let envios = plan(&eventos, &mut rng);
    let total = envios.len();

    // The load: K clients take the next send from a shared queue.
    let queue = Arc::new(Mutex::new(
        envios.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // Every send is retried until answered, so the line counts sends done, not failures.
    let counters = crate::progress::Counters::sends_only();
    let live = crate::progress::Live::start("scenario-3", None, counters.clone(), {
        let done = done.clone();
        move |_| {
            Some(format!(
                "{} of {total} sends answered",
                done.load(Ordering::Relaxed)
            ))
        }
    });
    let mut clients = Vec::new();
    for _ in 0..config.clients {
        let (queue, answers, done, stack, eventos, client, counters) = (
            queue.clone(),
            answers.clone(),
            done.clone(),
            stack.clone(),
            eventos.clone(),
            client.clone(),
            counters.clone(),
        );
        let seed = config.seed;
        clients.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().pop();
                let Some((n, envio)) = next else { return };
                counters.sent();
                send_one(
                    &client,
                    &stack,
                    &eventos,
                    &envio,
                    &answers,
                    seed ^ (n as u64 * 0x9e37_79b9),
                )
                .await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The faults: a collector replica at 30 % of the sends, a payments worker at 50 %; each
    // restarted on its port after a second.
    let mut kills = Vec::new();
    let wait_for = |fraction: f64| {
        let done = done.clone();
        async move {
            while (done.load(Ordering::Relaxed) as f64) < total as f64 * fraction {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(0.3).await;
    collector.kill();
    kills.push(format!(
        "collector a SIGKILLed at {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    collector = services.start(
        &["event-collector", "--listen", &collector_a],
        &collector_env,
    )?;
    wait_for(0.5).await;
    worker.kill();
    kills.push(format!(
        "payments worker a SIGKILLed at {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker = services.start(&["payments-worker", "--listen", &worker_a], &worker_env)?;
    for c in clients {
        c.await?;
    }
    live.finish().await;
    let duration = started.elapsed();
    let answers = Arc::try_unwrap(answers)
        .map_err(|_| anyhow::anyhow!("clients still running"))?
        .into_inner()
        .unwrap();

    // What an in-order single delivery gives.
    let mut expected_metrics: Vec<(i64, i64, i64, Decimal)> =
        vec![(0, 0, 0, Decimal::ZERO); campaign_ids.len()];
    let mut expected_totals = ReportTotals::default();
    let mut amounts: BTreeMap<String, Decimal> = BTreeMap::new();
    let (mut payments_expected, mut commissions_expected, mut tracking_expected) = (0, 0, 0);
    for evento in eventos.iter() {
        match evento {
            Evento::Pago { body, .. } => {
                payments_expected += 1;
                let v: serde_json::Value = serde_json::from_str(body)?;
                let monto: Decimal = v["monto"].to_string().parse()?;
                *amounts
                    .entry(v["moneda"].as_str().unwrap().to_owned())
                    .or_default() += monto;
            }
            Evento::Tracking {
                campana,
                tipo,
                valor,
                webhook,
                ..
            } => {
                tracking_expected += 1;
                let m = &mut expected_metrics[*campana];
                match *tipo {
                    "IMPRESSION" => m.0 += 1,
                    "CLICK" => m.1 += 1,
                    _ => m.2 += 1,
                }
                // Only a signed (webhook) conversion pays: a web tag proves no sender.
                if let (Some(valor), true) = (valor, *webhook) {
                    commissions_expected += 1;
                    let pago = comision(*valor);
                    m.3 += comision(pago);
                    *amounts.entry("USD".to_owned()).or_default() += pago;
                }
            }
        }
    }
    expected_totals.total_pagos = (payments_expected + commissions_expected) as i64;
    expected_totals.exitosos = expected_totals.total_pagos;
    expected_totals.monto_total = amounts
        .iter()
        .map(|(k, v)| (k.clone(), format!("{:.2}", v)))
        .collect();

    // Settle: every effect in place, or the deadline.
    let pools = Pools::connect(db).await?;
    let settle_started = Instant::now();
    let deadline = settle_started + Duration::from_secs(180);
    let mut actual_totals;
    loop {
        actual_totals = report_totals(&client, &stack.reports, &stack.operator)
            .await
            .unwrap_or_default();
        let metrics = pools.campaign_metrics(&campaign_ids).await?;
        let settled = actual_totals == expected_totals
            && metrics == expected_metrics
            && pools.unpublished().await? == 0;
        if settled || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle = settle_started.elapsed();
    let metrics = pools.campaign_metrics(&campaign_ids).await?;
    let campaign_mismatches: Vec<String> = metrics
        .iter()
        .zip(&expected_metrics)
        .enumerate()
        .filter(|(_, (a, e))| a != e)
        .map(|(i, (a, e))| format!("campaign {i}: got {a:?}, expected {e:?}"))
        .collect();

    let payments_stored = pools
        .count(
            &pools.payments,
            "SELECT count(*) FROM pagos WHERE comision IS NULL",
        )
        .await?;
    let commissions_stored = pools
        .count(
            &pools.payments,
            "SELECT count(*) FROM pagos WHERE comision IS NOT NULL",
        )
        .await?;
    let distinct_commissions = pools.count(&pools.payments, "SELECT count(DISTINCT comision->>'id_evento_conversion') FROM pagos WHERE comision IS NOT NULL").await?;
    let tracking_stored = pools
        .count(&pools.collector, "SELECT count(*) FROM eventos")
        .await?;
    let distinct_urls = pools
        .count(
            &pools.collector,
            "SELECT count(DISTINCT datos->>'url') FROM eventos",
        )
        .await?;
    let references: HashSet<String> =
        sqlx::query_scalar("SELECT referencia_pago FROM pagos WHERE comision IS NULL")
            .fetch_all(&pools.payments)
            .await?
            .into_iter()
            .collect();
    let urls: HashMap<String, (uuid::Uuid, bool)> =
        sqlx::query_as::<_, (String, uuid::Uuid, bool)>(
            "SELECT e.datos->>'url', e.id_evento, o.published_at IS NOT NULL \
         FROM eventos e LEFT JOIN outbox o ON o.event_id = e.id_evento",
        )
        .fetch_all(&pools.collector)
        .await?
        .into_iter()
        .map(|(u, id, published)| (u, (id, published)))
        .collect();

    let mut events_lost = 0u64;
    let mut inconsistent = 0u64;
    let mut untraceable = 0u64;
    for (i, evento) in eventos.iter().enumerate() {
        let answered = answers.ids.get(&i).cloned().unwrap_or_default();
        if answered.len() > 1 {
            inconsistent += 1;
        }
        match evento {
            Evento::Pago { referencia, .. } => {
                if !references.contains(referencia) {
                    events_lost += 1;
                }
                if let Some(id) = answered.iter().next() {
                    let trace = client
                        .get(format!("{}/pagos/{id}/eventos", stack.payments))
                        .header("authorization", &stack.operator)
                        .send()
                        .await;
                    if !trace.is_ok_and(|r| r.status().is_success()) {
                        untraceable += 1;
                    }
                }
            }
            Evento::Tracking { url, .. } => match urls.get(url) {
                None => events_lost += 1,
                Some((id, published)) => {
                    if !published {
                        events_lost += 1;
                    }
                    if !answered.contains(&id.to_string()) {
                        inconsistent += 1;
                    }
                    let status = client
                        .get(format!(
                            "{}/event-collector/events/{id}/status",
                            stack.collectors[i % 2]
                        ))
                        .header("authorization", &stack.operator)
                        .send()
                        .await;
                    let traced = match status {
                        Ok(r) if r.status().is_success() => r
                            .json::<serde_json::Value>()
                            .await
                            .is_ok_and(|s| s["estado"] == "PUBLICADO"),
                        _ => false,
                    };
                    if !traced {
                        untraceable += 1;
                    }
                }
            },
        }
    }
    let over = |stored: i64, distinct: i64| u64::try_from(stored - distinct).unwrap_or(0);
    let metric_excess: i64 = metrics
        .iter()
        .zip(&expected_metrics)
        .map(|(a, e)| (a.0 - e.0).max(0) + (a.1 - e.1).max(0) + (a.2 - e.2).max(0))
        .sum();
    let duplicates_applied = over(payments_stored, references.len() as i64)
        + over(commissions_stored, distinct_commissions)
        + over(tracking_stored, distinct_urls)
        + u64::try_from(metric_excess).unwrap_or(0);
    drop((collector, worker));
    let _ = std::fs::remove_file(&affiliates);

    Ok(Report {
        distinct_events: eventos.len(),
        sends: total,
        requests: answers.requests,
        requests_retried: answers.retried,
        sends_unanswered: answers.unanswered,
        duration_s: duration.as_secs_f64(),
        throughput_rps: answers.requests as f64 / duration.as_secs_f64(),
        latency: PhaseLatency::of(answers.latencies.iter().copied())?,
        kills,
        payments_expected,
        payments_stored,
        commissions_expected,
        commissions_stored,
        tracking_expected,
        tracking_stored,
        campaign_mismatches,
        report_expected: expected_totals,
        report_actual: actual_totals,
        duplicates_applied,
        events_lost,
        untraceable,
        inconsistent_answers: inconsistent,
        settle_s: settle.as_secs_f64(),
    })
}

async fn migrate(bin: &std::path::Path, db: &str, prefix: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new(bin)
        .arg("migrate")
        .env("DATABASE_URL", db)
        .env("PULSAR_TOPIC_PREFIX", prefix)
        .env("RUST_LOG", "warn")
        .status()
        .await?;
    anyhow::ensure!(status.success(), "aeropartners migrate failed");
    Ok(())
}

async fn report_totals(
    client: &reqwest::Client,
    reports: &str,
    operator: &str,
) -> anyhow::Result<ReportTotals> {
    let body: serde_json::Value = client
        .get(format!("{reports}/api/reports/payments"))
        .header("x-report-version", "v1")
        .header("authorization", operator)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let monto_total = body["monto_total"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_f64().unwrap_or(0.0) != 0.0)
        .map(|(k, v)| (k.clone(), format!("{:.2}", v.as_f64().unwrap_or(0.0))))
        .collect();
    Ok(ReportTotals {
        total_pagos: body["total_pagos"].as_i64().unwrap_or(-1),
        exitosos: body["por_estado"]["EXITOSO"].as_i64().unwrap_or(-1),
        monto_total,
    })
}

struct Pools {
    payments: sqlx::PgPool,
    campaigns: sqlx::PgPool,
    collector: sqlx::PgPool,
}

impl Pools {
    async fn connect(db: &str) -> anyhow::Result<Self> {
        let pool = |schema: &str| {
            let options = platform::db::connect_options(db, schema);
            async move {
                Ok::<_, anyhow::Error>(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(2)
                        .connect_with(options?)
                        .await?,
                )
            }
        };
        Ok(Self {
            payments: pool(payments::SCHEMA).await?,
            campaigns: pool(campaigns::SCHEMA).await?,
            collector: pool(event_collector::SCHEMA).await?,
        })
    }

    async fn count(&self, pool: &sqlx::PgPool, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(pool)
            .await?)
    }

    async fn unpublished(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        for pool in [&self.payments, &self.campaigns, &self.collector] {
            total += self
                .count(
                    pool,
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL",
                )
                .await?;
        }
        Ok(total)
    }

    async fn campaign_metrics(
        &self,
        ids: &[String],
    ) -> anyhow::Result<Vec<(i64, i64, i64, Decimal)>> {
        let mut out = Vec::new();
        for id in ids {
            out.push(
                sqlx::query_as::<_, (i64, i64, i64, Decimal)>(
                    "SELECT impresiones, clicks, conversiones, gasto_actual FROM campanas WHERE id = $1::uuid",
                )
                .bind(id)
                .fetch_one(&self.campaigns)
                .await?,
            );
        }
        Ok(out)
    }
}

impl Report {
    /// True when every exactly-once check holds.
    pub fn exactly_once(&self) -> bool {
        self.sends_unanswered == 0
            && self.payments_stored == self.payments_expected as i64
            && self.commissions_stored == self.commissions_expected as i64
            && self.tracking_stored == self.tracking_expected as i64
            && self.campaign_mismatches.is_empty()
            && self.report_actual == self.report_expected
            && self.duplicates_applied == 0
            && self.events_lost == 0
            && self.untraceable == 0
            && self.inconsistent_answers == 0
    }

    /// Prints the table and writes `target/scenarios/scenario-3.json`.
    pub fn publish(&self) -> anyhow::Result<()> {
        let pair = |a: i64, e: usize| format!("{a} (expected {e})");
        let rows = [
            ("distinct partner events", self.distinct_events.to_string()),
            (
                "sends (each event 1–3 times, shuffled)",
                self.sends.to_string(),
            ),
            (
                "HTTP requests / retried",
                format!("{} / {}", self.requests, self.requests_retried),
            ),
            ("sends never answered", self.sends_unanswered.to_string()),
            (
                "throughput",
                format!(
                    "{:.0} req/s over {:.1} s",
                    self.throughput_rps, self.duration_s
                ),
            ),
            ("latency", self.latency.describe()),
            ("faults", self.kills.join("; ")),
            (
                "payments",
                pair(self.payments_stored, self.payments_expected),
            ),
            (
                "commissions",
                pair(self.commissions_stored, self.commissions_expected),
            ),
            (
                "tracking events stored",
                pair(self.tracking_stored, self.tracking_expected),
            ),
            (
                "campaigns off their expected metrics",
                self.campaign_mismatches.len().to_string(),
            ),
            (
                "report total_pagos",
                format!(
                    "{} (expected {})",
                    self.report_actual.total_pagos, self.report_expected.total_pagos
                ),
            ),
            (
                "report monto_total",
                format!(
                    "{:?} (expected {:?})",
                    self.report_actual.monto_total, self.report_expected.monto_total
                ),
            ),
            ("duplicates applied", self.duplicates_applied.to_string()),
            ("events lost", self.events_lost.to_string()),
            ("untraceable events", self.untraceable.to_string()),
            (
                "inconsistent answers",
                self.inconsistent_answers.to_string(),
            ),
            (
                "settled after the last send",
                format!("{:.1} s", self.settle_s),
            ),
            (
                "exactly once",
                if self.exactly_once() {
                    "yes".into()
                } else {
                    "NO".into()
                },
            ),
        ];
        println!("\nScenario #3: duplicated and out-of-order partner events under load");
        for (label, value) in rows {
            println!("  {label:<42} {value}");
        }
        for mismatch in &self.campaign_mismatches {
            println!("    {mismatch}");
        }
        std::fs::create_dir_all("target/scenarios")?;
        std::fs::write(
            "target/scenarios/scenario-3.json",
            serde_json::to_string_pretty(self)?,
        )?;
        println!("  written to target/scenarios/scenario-3.json");
        Ok(())
    }
}
