//! Quality scenario #9 (ARCHITECTURE.md): the report version switches v1 ↔ v2 under load.
//!
//! The runner starts its own stack from the `aeropartners` binary — payments and its worker
//! (so events keep arriving), both data services, two reports replicas and the gateway; in
//! `kubernetes` mode also the operator, against the real kube-apiserver of `KUBECONFIG`, with
//! the Deployments' readiness written by the runner as the controller-manager would. It drives
//! a steady open-loop load of `GET /api/reports/payments` and legacy `POST /reporting/report`
//! through the gateway while payments arrive, switches the version many times (`PUT
//! /api/reports/version`, or `kubectl patch rv reports`), and measures: failed requests,
//! responses whose body is not the version their `X-Report-Version` claims, latency before and
//! during the switches, and per replica the time from the accepted switch to its first
//! response in the new version.

use std::{
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

pub use crate::measure::PhaseLatency;
use testkit::{
    ServiceProcess, TempDatabase, free_port, operadores::Operadores, pulsar_config,
    wait_until_ready,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `make run`'s source: the version row, LISTEN/NOTIFY; switched with `PUT`.
    Database,
    /// The chart's source: a `ReportVersion` and the operator; switched with `kubectl patch`.
    Kubernetes,
    /// The chart installed on the Kubernetes node of `make e2e` (its pods run on a kubelet);
    /// measured by the e2e runner, not started by this one.
    #[value(skip)]
    Cluster,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub binary: PathBuf,
    pub mode: Mode,
    /// Report requests per second through the gateway (open loop).
    pub rate: f64,
    /// One legacy `POST /reporting/report` per this many report requests.
    pub legacy_every: u64,
    /// Payments per second (so the projection keeps changing under the reads).
    pub payments_rate: f64,
    /// Load before the first switch.
    pub warmup: Duration,
    pub switches: usize,
    /// Pause after every replica serves a switch, before the next one.
    pub pause: Duration,
    /// Load after the last switch.
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Propagation {
    pub replica: String,
    pub switches_seen: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub rate_rps: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub legacy_requests: u64,
    pub failed: u64,
    /// Responses whose body is not in the version `X-Report-Version` claims (or is not a
    /// well-formed report of that version).
    pub mismatched: u64,
    pub served_v1: u64,
    pub served_v2: u64,
    pub before: PhaseLatency,
    pub during: PhaseLatency,
    pub after: PhaseLatency,
    pub switches: u64,
    /// Switches some replica did not serve within 10 s (none expected).
    pub switches_not_propagated: u64,
    pub propagation: Vec<Propagation>,
    pub payments_sent: u64,
    pub payments_failed: u64,
}

#[derive(Debug, Clone)]
struct Sample {
    sent_at: Duration,
    latency: Duration,
    ok: bool,
    legacy: bool,
    version: Option<String>,
    mismatched: bool,
}

const V1_FIELDS: [&str; 5] = [
    "version",
    "total_pagos",
    "monto_total",
    "por_estado",
    "generado_en",
];
const V2_FIELDS: [&str; 6] = [
    "por_moneda",
    "por_afiliado",
    "por_dia",
    "tasa_exito",
    "ticket_promedio",
    "campanas",
];

/// Whether `body` is a well-formed report of `version`: the version it says, every field of
/// its shape, and (v1) none of v2's.
fn well_formed(version: &str, body: &serde_json::Value) -> bool {
    let has = |f: &&str| body.get(*f).is_some();
    body["version"] == version
        && V1_FIELDS.iter().all(has)
        && match version {
            "v1" => !V2_FIELDS.iter().any(has),
            "v2" => V2_FIELDS.iter().all(has),
            _ => false,
        }
}

async fn one_request(client: &reqwest::Client, gateway: &str, n: u64, legacy_every: u64) -> Sample {
    let started = Instant::now();
    let legacy = legacy_every > 0 && n.is_multiple_of(legacy_every);
    let request = if legacy {
        let tipo = [
            "pagos_por_periodo",
            "campanas_activas",
            "metricas_generales",
        ][(n % 3) as usize];
        client
            .post(format!("{gateway}/reporting/report"))
            .json(&serde_json::json!({"tipo_reporte": tipo}))
    } else {
        let filter = ["", "?moneda=USD", "?estado=EXITOSO", "?id_afiliado=af-3"][(n % 4) as usize];
        client.get(format!("{gateway}/api/reports/payments{filter}"))
    };
    let mut sample = Sample {
        sent_at: Duration::ZERO,
        latency: Duration::ZERO,
        ok: false,
        legacy,
        version: None,
        mismatched: false,
    };
    if let Ok(response) = request.send().await
        && response.status().is_success()
    {
        let version = response
            .headers()
            .get("x-report-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Ok(body) = response.json::<serde_json::Value>().await {
            sample.ok = true;
            sample.mismatched = match (&version, legacy) {
                (Some(v), false) => !well_formed(v, &body),
                (Some(v), true) => {
                    body["version_servicio_datos"] != v.as_str()
                        || body["datos"]["version"] != v.as_str()
                }
                (None, _) => true,
            };
            sample.version = version;
        }
    }
    sample.latency = started.elapsed();
    sample
}

fn latency(samples: &[&Sample]) -> anyhow::Result<PhaseLatency> {
    PhaseLatency::of(samples.iter().map(|s| s.latency))
}

/// What one replica served, as a prober polling it directly sees it.
#[derive(Default)]
struct Observed {
    /// `(completed at, version)` of every probe.
    samples: Vec<(Instant, String)>,
}

async fn probe(
    client: reqwest::Client,
    url: String,
    seen: Arc<Mutex<Observed>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        if let Ok(r) = client.get(&url).send().await
            && let Some(v) = r
                .headers()
                .get("x-report-version")
                .and_then(|v| v.to_str().ok())
        {
            let v = v.to_owned();
            seen.lock().unwrap().samples.push((Instant::now(), v));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    testkit::kubectl(args, stdin).map_err(anyhow::Error::msg)
}

/// A Deployment with ready replicas, as the controller-manager would report it.
fn ready_deployment(namespace: &str, name: &str, labels: serde_json::Value) -> anyhow::Result<()> {
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "service", "image": "localhost/aeropartners:scenario"}]}}}
    });
    kubectl(
        &["apply", "-n", namespace, "-f", "-"],
        Some(&deployment.to_string()),
    )?;
    kubectl(
        &[
            "patch",
            "deployment",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"replicas":2,"readyReplicas":2,"availableReplicas":2}}"#,
        ],
        None,
    )?;
    Ok(())
}

const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/reportversions.aeropartners.io.yaml"
);

/// The ReportVersion, its CRD and the Deployments the operator checks, in `namespace`.
fn kubernetes_setup(namespace: &str) -> anyhow::Result<()> {
    kubectl(
        &["apply", "--server-side", "--force-conflicts", "-f", CRD],
        None,
    )?;
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "crd/reportversions.aeropartners.io",
            "--timeout=30s",
        ],
        None,
    )?;
    for version in ["v1", "v2"] {
        ready_deployment(
            namespace,
            &format!("data-service-{version}"),
            serde_json::json!({"aeropartners.io/data-service": version}),
        )?;
    }
    ready_deployment(
        namespace,
        "reports",
        serde_json::json!({"aeropartners.io/reports": "true"}),
    )?;
    let rv = serde_json::json!({
        "apiVersion": "aeropartners.io/v1alpha1", "kind": "ReportVersion",
        "metadata": {"name": "reports"}, "spec": {"version": "v1"}
    });
    kubectl(
        &["apply", "-n", namespace, "-f", "-"],
        Some(&rv.to_string()),
    )?;
    Ok(())
}

struct Stack {
    _processes: Vec<ServiceProcess>,
    gateway: String,
    replicas: Vec<(String, String)>,
    /// The ReportVersion's namespace, in kubernetes mode.
    namespace: Option<String>,
    /// The operators' namespace (deleted when the stack is dropped): the services authorise
    /// them against its Roles.
    operadores: Operadores,
}

/// The stack with access enforced as on a cluster: partners pay with keys, the operators of
/// a namespace of the test API server (the chart's Roles) read and switch.
async fn start(config: &Config, database_url: &str) -> anyhow::Result<Stack> {
    let prefix = pulsar_config().pulsar_topic_prefix;
    anyhow::ensure!(
        std::env::var("KUBECONFIG").is_ok(),
        "the operators are the test kube-apiserver's: KUBECONFIG (make k8s-up)"
    );
    let operadores = Operadores::crear("scenario-9");
    let namespace = match config.mode {
        Mode::Database => None,
        Mode::Kubernetes => {
            kubernetes_setup(&operadores.namespace)?;
            Some(operadores.namespace.clone())
        }
        Mode::Cluster => anyhow::bail!("the cluster is measured by the e2e runner (make e2e)"),
    };
    let access = [
        ("AUTH_KUBERNETES", "true"),
        ("AUTH_NAMESPACE", operadores.namespace.as_str()),
    ];
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let (payments, worker, d1, d2, ra, rb, gateway) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let spawn = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ServiceProcess::spawn_enforced(&config.binary, &args, database_url, &prefix, &access)
    };
    let mut processes = Vec::new();
    // Migrations first, so the replicas do not race each other through them.
    let migrated = Command::new(&config.binary)
        .arg("migrate")
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .status()?;
    anyhow::ensure!(migrated.success(), "migrations failed");
    processes.push(spawn(vec![
        "payments".into(),
        "--listen".into(),
        listen(payments),
    ])?);
    processes.push(spawn(
        [
            "payments-worker",
            "--listen",
            &listen(worker),
            "--latencia-min",
            "0ms",
            "--latencia-max",
            "0ms",
        ]
        .map(String::from)
        .to_vec(),
    )?);
    processes.push(spawn(
        ["data-service", "--version", "v1", "--listen", &listen(d1)]
            .map(String::from)
            .to_vec(),
    )?);
    processes.push(spawn(
        ["data-service", "--version", "v2", "--listen", &listen(d2)]
            .map(String::from)
            .to_vec(),
    )?);
    let mut replicas = Vec::new();
    for (name, port) in [("reports-a", ra), ("reports-b", rb)] {
        let mut args: Vec<String> = [
            "reports",
            "--listen",
            &listen(port),
            "--instance",
            name,
            "--data-service-v1",
            &url(d1),
            "--data-service-v2",
            &url(d2),
        ]
        .map(String::from)
        .to_vec();
        if let Some(ns) = &namespace {
            args.extend(
                [
                    "--version-source",
                    "kubernetes",
                    "--report-version-namespace",
                    ns,
                ]
                .map(String::from),
            );
        }
        processes.push(spawn(args)?);
        replicas.push((name.to_owned(), url(port)));
    }
    if let Some(ns) = &namespace {
        processes.push(spawn(
            [
                "operator",
                "--listen",
                &listen(free_port()),
                "--namespace",
                ns,
            ]
            .map(String::from)
            .to_vec(),
        )?);
    }
    processes.push(spawn(
        [
            "gateway",
            "--listen",
            &listen(gateway),
            "--route",
            &format!("/pagos={}/pagos", url(payments)),
            "--route",
            &format!(
                "/api/reports={}/api/reports|{}/api/reports",
                url(ra),
                url(rb)
            ),
            "--route",
            &format!("/reporting={}/reporting|{}/reporting", url(ra), url(rb)),
            "--docs",
            &format!("payments={}/openapi.json", url(payments)),
            "--docs",
            &format!("reports={}/openapi.json", url(ra)),
        ]
        .map(String::from)
        .to_vec(),
    )?);
    for port in [payments, worker, d1, d2, ra, rb, gateway] {
        wait_until_ready(&format!("{}/ready", url(port)), Duration::from_secs(120)).await;
    }
    Ok(Stack {
        _processes: processes,
        gateway: url(gateway),
        replicas,
        namespace,
        operadores,
    })
}

pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let database = TempDatabase::create().await;
    let result = run_on(config, &database.url).await;
    database.drop_database().await;
    result
}

/// Where the load goes and how a switch is made: the runner's own stack, or the chart
/// installed on the Kubernetes node (`crate::e2e`).
pub struct Target {
    pub gateway: String,
    /// `(name, base URL)` of every reports replica, probed directly.
    pub replicas: Vec<(String, String)>,
    pub switch: Switch,
    /// The affiliates the payments load pays, in turn, each with the `Authorization` to pay it
    /// with (none against a platform in development mode).
    pub payees: Vec<(String, Option<String>)>,
    /// The `Authorization` the report load reads with: an operator's, who sees every
    /// affiliate's figures and may generate legacy reports (none in development mode).
    pub reader: Option<String>,
}

/// The payments load's affiliates on a platform in development mode: no credential needed.
pub fn open_payees() -> Vec<(String, Option<String>)> {
    (0..7).map(|n| (format!("af-{n}"), None)).collect()
}

pub enum Switch {
    /// `PUT /api/reports/version` through the gateway.
    Put,
    /// `kubectl patch rv <name>` in this namespace.
    Patch { namespace: String, name: String },
}

async fn switch(target: &Target, client: &reqwest::Client, version: &str) -> anyhow::Result<()> {
    match &target.switch {
        Switch::Patch { namespace, name } => {
            let patch = format!(r#"{{"spec":{{"version":"{version}"}}}}"#);
            let (namespace, name) = (namespace.clone(), name.clone());
            // Off the runtime: the load generator and the probers share it, and a worker
            // blocked on kubectl would delay their requests.
            tokio::task::spawn_blocking(move || {
                kubectl(
                    &[
                        "patch", "rv", &name, "-n", &namespace, "--type", "merge", "-p", &patch,
                    ],
                    None,
                )
            })
            .await??;
        }
        Switch::Put => {
            let answer = client
                .put(format!("{}/api/reports/version", target.gateway))
                .json(&serde_json::json!({"active": version}))
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "switch refused: {}",
                answer.status()
            );
        }
    }
    Ok(())
}

async fn run_on(config: &Config, database_url: &str) -> anyhow::Result<Report> {
    let stack = start(config, database_url).await?;
    let target = Target {
        gateway: stack.gateway.clone(),
        replicas: stack.replicas.clone(),
        switch: match &stack.namespace {
            // The ReportVersion `start` creates beside its reports replicas.
            Some(namespace) => Switch::Patch {
                namespace: namespace.clone(),
                name: "reports".to_owned(),
            },
            None => Switch::Put,
        },
        payees: keyed_payees(database_url).await,
        reader: Some(format!(
            "Bearer {}",
            stack.operadores.token(Operadores::OPERACIONES)
        )),
    };
    // Dropping the stack deletes the namespace (without a controller-manager it stays
    // Terminating; its objects are inert).
    measure(config, &target).await
}

/// The payments load's affiliates, each paying with a key of its own.
async fn keyed_payees(database_url: &str) -> Vec<(String, Option<String>)> {
    let mut payees = Vec::new();
    for (affiliate, _) in open_payees() {
        let key = testkit::acceso::clave_secreta(database_url, &affiliate).await;
        payees.push((affiliate, Some(key)));
    }
    payees
}

/// Load, switches and figures on `target` (its replicas already answer or soon will).
pub async fn measure(config: &Config, target: &Target) -> anyhow::Result<Report> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(reader) = &target.reader {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(reader)?,
        );
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .default_headers(headers)
        .build()?;
    // Both replicas answer before anything is measured.
    for (_, replica) in &target.replicas {
        testkit::eventually("replica answers", Duration::from_secs(60), || async {
            client
                .get(format!("{replica}/api/reports/version"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        })
        .await;
    }

    let stop = CancellationToken::new();
    let epoch = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let counters = crate::progress::Counters::default();
    let switches_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let live = crate::progress::Live::start(
        "scenario-9",
        // Planned: the switches wait for propagation too, so the run may take a little longer.
        Some(config.warmup + config.pause * config.switches as u32 + config.cooldown),
        counters.clone(),
        {
            let (switches_done, switches) = (switches_done.clone(), config.switches);
            move |_| {
                let done = switches_done.load(std::sync::atomic::Ordering::Relaxed);
                (done > 0).then(|| format!("{done} / {switches} switches"))
            }
        },
    );
    let load = {
        let (client, gateway, samples, stop, rate, legacy_every, counters) = (
            client.clone(),
            target.gateway.clone(),
            samples.clone(),
            stop.clone(),
            config.rate,
            config.legacy_every,
            counters.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = tokio::task::JoinSet::new();
            let mut n = 0u64;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                n += 1;
                let (client, gateway, samples) = (client.clone(), gateway.clone(), samples.clone());
                let counters = counters.clone();
                counters.sent();
                tasks.spawn(async move {
                    let sent_at = epoch.elapsed();
                    let mut sample = one_request(&client, &gateway, n, legacy_every).await;
                    counters.answered(sample.ok && !sample.mismatched);
                    sample.sent_at = sent_at;
                    samples.lock().unwrap().push(sample);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    let payments = {
        let (client, gateway, stop, rate, payees) = (
            client.clone(),
            target.gateway.clone(),
            stop.clone(),
            config.payments_rate,
            target.payees.clone(),
        );
        tokio::spawn(async move {
            let (mut sent, mut failed) = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let run = uuid::Uuid::new_v4().simple().to_string();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                sent += 1;
                let moneda = ["USD", "EUR", "COP"][(sent % 3) as usize];
                let (payee, authorization) = &payees[(sent as usize) % payees.len()];
                let mut request = client.post(format!("{gateway}/pagos"));
                if let Some(authorization) = authorization {
                    request = request.header("authorization", authorization);
                }
                let ok = request
                    .json(&serde_json::json!({
                        "id_afiliado": payee, "monto": 10 + sent % 90,
                        "moneda": moneda,
                        "referencia_pago": format!("s9-{run}-{sent}"),
                    }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                failed += u64::from(!ok);
            }
            (sent, failed)
        })
    };
    let observed: Vec<Arc<Mutex<Observed>>> = target
        .replicas
        .iter()
        .map(|_| Arc::new(Mutex::new(Observed::default())))
        .collect();
    let probers: Vec<_> = target
        .replicas
        .iter()
        .zip(&observed)
        .map(|((_, url), seen)| {
            tokio::spawn(probe(
                client.clone(),
                format!("{url}/api/reports/payments"),
                seen.clone(),
                stop.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(config.warmup).await;
    let switching_from = epoch.elapsed();
    let mut accepted: Vec<(Instant, &str)> = Vec::new();
    let mut not_propagated = 0u64;
    for i in 0..config.switches {
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        switch(target, &client, version).await?;
        switches_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = Instant::now();
        accepted.push((at, version));
        // Wait (a liveness bound, not a measurement) until every replica serves it.
        let deadline = at + Duration::from_secs(10);
        loop {
            let all = observed.iter().all(|seen| {
                seen.lock()
                    .unwrap()
                    .samples
                    .last()
                    .is_some_and(|(t, v)| *t >= at && v == version)
            });
            if all {
                break;
            }
            if Instant::now() >= deadline {
                not_propagated += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(config.pause).await;
    }
    let switching_until = epoch.elapsed() + Duration::from_millis(500);
    tokio::time::sleep(config.cooldown).await;
    stop.cancel();
    load.await?;
    live.finish().await;
    let (payments_sent, payments_failed) = payments.await?;
    for prober in probers {
        prober.await?;
    }

    // Propagation: per replica and switch, from the accepted switch to the first probe
    // answered in the new version (before the next switch).
    let mut propagation = Vec::new();
    for ((name, _), seen) in target.replicas.iter().zip(&observed) {
        let seen = seen.lock().unwrap();
        let mut histogram = Histogram::<u64>::new(3)?;
        for (i, (at, target)) in accepted.iter().enumerate() {
            let until = accepted.get(i + 1).map(|(t, _)| *t);
            if let Some((t, _)) = seen
                .samples
                .iter()
                .find(|(t, v)| t >= at && until.is_none_or(|u| *t < u) && v == target)
            {
                histogram.record((*t - *at).as_micros().max(1) as u64)?;
            }
        }
        propagation.push(Propagation {
            replica: name.clone(),
            switches_seen: histogram.len(),
            p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: histogram.max() as f64 / 1000.0,
        });
    }

    let samples = samples.lock().unwrap().clone();
    let phase = |from: Duration, to: Duration| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.ok && s.sent_at >= from && s.sent_at < to)
            .collect()
    };
    let end = epoch.elapsed();
    Ok(Report {
        mode: config.mode,
        rate_rps: config.rate,
        duration_s: end.as_secs_f64(),
        requests: samples.len() as u64,
        legacy_requests: samples.iter().filter(|s| s.legacy).count() as u64,
        failed: samples.iter().filter(|s| !s.ok).count() as u64,
        mismatched: samples.iter().filter(|s| s.mismatched).count() as u64,
        served_v1: samples
            .iter()
            .filter(|s| s.version.as_deref() == Some("v1"))
            .count() as u64,
        served_v2: samples
            .iter()
            .filter(|s| s.version.as_deref() == Some("v2"))
            .count() as u64,
        before: latency(&phase(Duration::ZERO, switching_from))?,
        during: latency(&phase(switching_from, switching_until))?,
        after: latency(&phase(switching_until, end))?,
        switches: accepted.len() as u64,
        switches_not_propagated: not_propagated,
        propagation,
        payments_sent,
        payments_failed,
    })
}

impl Report {
    /// Prints the table and writes `target/scenarios/scenario-9[-kubernetes].json`.
    pub fn publish(&self) -> anyhow::Result<()> {
        let phase = PhaseLatency::describe;
        let mode = match self.mode {
            Mode::Database => "database (PUT /api/reports/version, LISTEN/NOTIFY)",
            Mode::Kubernetes => "kubernetes (kubectl patch rv, operator, watch)",
            Mode::Cluster => "the chart on a kubelet (kubectl patch rv, operator pod, watch)",
        };
        let mut rows = vec![
            ("version source", mode.to_owned()),
            (
                "load",
                format!("{:.0} req/s for {:.0} s", self.rate_rps, self.duration_s),
            ),
            (
                "requests (of them legacy)",
                format!("{} ({})", self.requests, self.legacy_requests),
            ),
            ("failed", self.failed.to_string()),
            (
                "body not in the version claimed",
                self.mismatched.to_string(),
            ),
            (
                "served v1 / v2",
                format!("{} / {}", self.served_v1, self.served_v2),
            ),
            ("latency before the switches", phase(&self.before)),
            ("latency during the switches", phase(&self.during)),
            ("latency after", phase(&self.after)),
            (
                "switches (not propagated in 10 s)",
                format!("{} ({})", self.switches, self.switches_not_propagated),
            ),
        ];
        for p in &self.propagation {
            rows.push((
                "switch → replica serves it",
                format!(
                    "{}: {} switches, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    p.replica, p.switches_seen, p.p50_ms, p.p99_ms, p.max_ms
                ),
            ));
        }
        rows.push((
            "payments sent / failed",
            format!("{} / {}", self.payments_sent, self.payments_failed),
        ));
        println!("\nScenario #9: report version switches under load");
        for (label, value) in rows {
            println!("  {label:<36} {value}");
        }
        let file = match self.mode {
            Mode::Database => "target/scenarios/scenario-9.json",
            Mode::Kubernetes => "target/scenarios/scenario-9-kubernetes.json",
            Mode::Cluster => "target/scenarios/e2e-scenario-9.json",
        };
        std::fs::create_dir_all("target/scenarios")?;
        std::fs::write(file, serde_json::to_string_pretty(self)?)?;
        println!("  written to {file}");
        Ok(())
    }
}
