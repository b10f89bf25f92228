//! `make e2e`: the chart installed on a real three-node cluster (scripts/e2e.sh), used and
//! broken the way its operators would: a smoke test of every user-facing Service, quality
//! scenario #2 with pods deleted, killed and rolled by Kubernetes, scenario #9 with
//! `kubectl patch rv`, a switch to a version whose data service is gone, the operator pod
//! deleted mid-switch, and a `helm upgrade` under load. Between them, the release's security as
//! it runs: NetworkPolicy enforced, RBAC as narrow as the chart says, containers non-root on
//! read-only root filesystems.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::{Cluster, condition, container_process, kubectl},
    measure::PhaseLatency,
    postman::PostmanCredentials,
    scenario2::{self, Integrity, Workload},
    scenario9,
};

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?)
}

/// What a failed request looked like to the client, for the report: the status and the start
/// of the body the server sent, or the transport error with its causes (which hop failed).
async fn describe_failure(
    started: Instant,
    answer: Result<reqwest::Response, reqwest::Error>,
) -> String {
    let at = started.elapsed().as_secs_f64();
    match answer {
        Ok(answer) => {
            let status = answer.status();
            let body = answer.text().await.unwrap_or_default();
            format!(
                "{at:.2} s: HTTP {status}: {}",
                body.chars().take(300).collect::<String>()
            )
        }
        Err(error) => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            format!("{at:.2} s: {text}")
        }
    }
}

fn write_json(file: &str, value: &impl Serialize) -> anyhow::Result<()> {
    std::fs::create_dir_all("target/scenarios")?;
    let path = format!("target/scenarios/{file}");
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    println!("  written to {path}");
    Ok(())
}

fn print_rows(title: &str, rows: &[(String, String)]) {
    println!("\n{title}");
    for (label, value) in rows {
        println!("  {label:<46} {value}");
    }
}

// ---------------------------------------------------------------------------------------------
// smoke

#[derive(Debug, Serialize)]
pub struct Smoke {
    pub checks: Vec<(String, String)>,
}

/// Whether the Postman collection passed against the chart's Services.
#[derive(Debug)]
pub struct Postman {
    pub passed: bool,
    pub status: String,
}

/// The Postman collection, with its kind environment pointed at this cluster's Services (a
/// kind cluster maps the same Services to the host ports the environment names).
pub fn postman(cluster: &Cluster, webhook_secret: &str) -> anyhow::Result<Postman> {
    let mut args = vec!["scripts/postman.sh".to_owned(), "run".to_owned()];
    args.push("--env-var".to_owned());
    args.push(format!("webhook_secret={webhook_secret}"));
    for (variable, service) in [
        ("base_url", "gateway"),
        ("proxy_url", "campaigns-proxy"),
        ("collector_url", "event-collector"),
        ("data_v1_url", "data-service-v1"),
        ("data_v2_url", "data-service-v2"),
    ] {
        args.push("--env-var".to_owned());
        args.push(format!("{variable}={}", cluster.service_url(service)?));
    }
    // Keys and a token, as a user of the chart has them (docs/security.md).
    let credentials = PostmanCredentials::new("e2e");
    let keys = credentials
        .partner_keys()
        .into_iter()
        .map(|(variable, affiliate)| Ok((variable, cluster.partner_authorization(affiliate)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    args.extend(credentials.env_args(&keys, &cluster.operator_authorization()?));
    println!("\nThe Postman collection against the chart's Services:");
    let status = std::process::Command::new("bash")
        .args(&args)
        .env("POSTMAN_ENV", "kind")
        .status()
        .context("bash runs scripts/postman.sh")?;
    Ok(Postman {
        passed: status.success(),
        status: status.to_string(),
    })
}

/// What the chart's dashboards and alerting rules query, against what the release serves.
#[derive(Debug, Serialize)]
pub struct Observability {
    /// Metric names the dashboards and rules query.
    pub queried: usize,
    /// Services of the release whose `/metrics` answered (each with an `http` port).
    pub services: usize,
    /// Deployments of the release: each must be scrapable through a Service.
    pub deployments: usize,
    /// `/metrics` endpoints read: those Services, every Ready pod of the release, the broker.
    pub endpoints: usize,
    /// Queried names no endpoint serves.
    pub missing: Vec<String>,
}

/// Every metric the chart's Grafana dashboards and PrometheusRule query is served by some
/// `/metrics` the chart's ServiceMonitor would scrape (the release's Services, the operator's
/// included) or by the broker. Run after the Postman collection, so every path has answered
/// at least once.
pub async fn observability(cluster: &Cluster) -> anyhow::Result<Observability> {
    let mut queried = std::collections::BTreeSet::new();
    let dashboards = cluster.chart.join("dashboards");
    let mut files = vec![cluster.chart.join("rules/aeropartners.rules.yaml")];
    for entry in std::fs::read_dir(&dashboards).context("the chart's dashboards")? {
        files.push(entry?.path());
    }
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        queried.extend(metric_names(&text));
    }

    let http = client()?;
    let mut served = std::collections::BTreeSet::new();
    // Through the Services, as the chart's ServiceMonitor scrapes: every Service of the release
    // with a port named `http` (the operator's included, which feeds the Degraded alert).
    let mut endpoints = Vec::new();
    let services = cluster.json(&[
        "get",
        "services",
        "-l",
        &format!(
            "app.kubernetes.io/name=aeropartners,app.kubernetes.io/instance={}",
            cluster.release
        ),
    ])?;
    for service in services["items"].as_array().context("a Service list")? {
        let ip = service["spec"]["clusterIP"].as_str().unwrap_or("None");
        let port = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "http")
            .and_then(|p| p["port"].as_i64());
        if let (false, Some(port)) = (ip == "None", port) {
            endpoints.push(format!("http://{ip}:{port}/metrics"));
        }
    }
    let through_services = endpoints.len();
    let deployments = cluster.json(&[
        "get",
        "deployments",
        "-l",
        &format!("app.kubernetes.io/instance={}", cluster.release),
    ])?["items"]
        .as_array()
        .map_or(0, Vec::len);
    // And every Ready pod on its own: a Service answers from one replica at a time, and a
    // labelled series appears only on the replica that counted it.
    let pods = cluster.json(&[
        "get",
        "pods",
        "-l",
        &format!("app.kubernetes.io/instance={}", cluster.release),
    ])?;
    for pod in pods["items"].as_array().context("a pod list")? {
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let port = pod["spec"]["containers"][0]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "http")
            .and_then(|p| p["containerPort"].as_i64());
        if let (true, Some(ip), Some(port)) = (ready, pod["status"]["podIP"].as_str(), port) {
            endpoints.push(format!("http://{ip}:{port}/metrics"));
        }
    }
    if let Ok(admin) = std::env::var("PULSAR_ADMIN_URL") {
        endpoints.push(format!("{}/metrics/", admin.trim_end_matches('/')));
    }
    for endpoint in &endpoints {
        let text = http
            .get(endpoint)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        served.extend(served_names(&text));
    }
    let report = Observability {
        queried: queried.len(),
        services: through_services,
        deployments,
        endpoints: endpoints.len(),
        missing: queried.difference(&served).cloned().collect(),
    };
    println!(
        "
Dashboards and alerting rules against /metrics:"
    );
    println!(
        "  {} metric names queried, {} endpoints read ({} Services), missing: {}",
        report.queried,
        report.endpoints,
        report.services,
        if report.missing.is_empty() {
            "none".to_owned()
        } else {
            report.missing.join(", ")
        }
    );
    Ok(report)
}

/// The metric names in a dashboard's or a rule file's text: every token of ours or the
/// broker's (`aeropartners_…`, `pulsar_…`).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("aeropartners_") || t.starts_with("pulsar_"))
        .map(str::to_owned)
        .collect()
}

/// The names a Prometheus text exposition serves: each sample's, and for a histogram or a
/// summary its `_bucket`, `_sum` and `_count` series.
fn served_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some("histogram" | "summary")) = (parts.next(), parts.next()) {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty())
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Each user-facing Service answers as a user would use it.
/// Sets up AFILIADO_WEBHOOK as the chart's values say an installer does: a webhook secret of
/// its own (the chart ships none, and refuses the demo file's), signed events only. Returns the
/// secret, for the smoke test and the Postman run to sign with.
pub fn webhook_partner(cluster: &Cluster) -> anyhow::Result<String> {
    let secret = format!("whsec_e2e_{}", uuid::Uuid::new_v4().simple());
    cluster.set_values(&[
        &format!(
            "eventCollector.affiliates.afiliados.AFILIADO_WEBHOOK.secretos_webhook={{{secret}}}"
        ),
        "eventCollector.affiliates.afiliados.AFILIADO_WEBHOOK.fuentes={WEBHOOK}",
    ])?;
    Ok(secret)
}

pub async fn smoke(cluster: &Cluster, webhook_secret: &str) -> anyhow::Result<Smoke> {
    let http = client()?;
    let gateway = cluster.service_url("gateway")?;
    let proxy = cluster.service_url("campaigns-proxy")?;
    let mut checks = Vec::new();

    let health = http.get(format!("{gateway}/health")).send().await?;
    anyhow::ensure!(
        health.status() == 200,
        "gateway /health: {}",
        health.status()
    );
    checks.push(("gateway /health".into(), "200".into()));
    let docs: serde_json::Value = http
        .get(format!("{gateway}/openapi.json"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let paths = docs["paths"].as_object().map_or(0, serde_json::Map::len);
    for path in [
        "/pagos",
        "/campaigns",
        "/api/reports/payments",
        "/reporting",
        "/event-collector/events",
    ] {
        anyhow::ensure!(
            docs["paths"]
                .as_object()
                .is_some_and(|p| p.keys().any(|k| k.starts_with(path))),
            "the merged OpenAPI document lacks {path}"
        );
    }
    let ui = http.get(format!("{gateway}/docs")).send().await?;
    anyhow::ensure!(ui.status() == 200, "gateway /docs: {}", ui.status());
    checks.push((
        "gateway /docs and /openapi.json".into(),
        format!("200, {paths} paths of every service"),
    ));

    let reference = format!("e2e-smoke-{}", uuid::Uuid::new_v4().simple());
    let partner = cluster.partner_authorization("af-e2e")?;
    let created: serde_json::Value = http
        .post(format!("{gateway}/pagos/"))
        .header("authorization", &partner)
        .json(
            &serde_json::json!({"id_afiliado": "af-e2e", "monto": 42.5, "moneda": "USD",
                                  "referencia_pago": reference}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id_pago"].as_str().context("id_pago")?.to_owned();
    let started = Instant::now();
    let final_state = loop {
        let payment: serde_json::Value = http
            .get(format!("{gateway}/pagos/{id}"))
            .header("authorization", &partner)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let estado = payment["estado"].as_str().unwrap_or("").to_owned();
        if ["EXITOSO", "FALLIDO"].contains(&estado.as_str()) {
            break estado;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "payment {id} still {estado} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    checks.push((
        "payment through the gateway".into(),
        format!("{final_state} after {} ms", started.elapsed().as_millis()),
    ));

    let campaign = http
        .post(format!("{proxy}/api/campaigns"))
        .header("authorization", &partner)
        .header("idempotency-key", format!("e2e-smoke-{id}"))
        .json(
            &serde_json::json!({"nombre": "e2e smoke", "tipo": "ADQUISICION",
            "presupuesto": {"monto": 1000, "moneda": "USD"},
            "fecha_inicio": "2026-01-01T00:00:00Z", "fecha_fin": "2099-01-01T00:00:00Z",
            "id_afiliado": "af-e2e"}),
        )
        .send()
        .await?;
    anyhow::ensure!(
        campaign.status() == 201,
        "campaign through the proxy: {}",
        campaign.status()
    );
    let campaign: serde_json::Value = campaign.json().await?;
    let campaign_id = campaign["id"].as_str().context("campaign id")?;
    let read = http
        .get(format!("{proxy}/api/campaigns/{campaign_id}"))
        .header("authorization", &partner)
        .send()
        .await?;
    anyhow::ensure!(
        read.status() == 200,
        "campaign read back: {}",
        read.status()
    );
    checks.push((
        "campaign through campaigns-proxy".into(),
        "201, read back 200".into(),
    ));

    // The collector through the gateway: a click on the smoke campaign reaches its metrics
    // (collector → outbox → Pulsar → campaigns), and a webhook signed with the secret the
    // installer set (webhook_partner) is accepted and published.
    let started = Instant::now();
    let click = http
        .post(format!("{gateway}/event-collector/events"))
        .header("authorization", &partner)
        .json(
            &serde_json::json!({"tipo_evento": "CLICK", "id_afiliado": "af-e2e",
            "id_campana": campaign_id, "id_evento_cliente": format!("e2e-click-{id}")}),
        )
        .send()
        .await?;
    anyhow::ensure!(
        click.status() == 201,
        "click through the gateway: {}",
        click.status()
    );
    loop {
        let metrics: serde_json::Value = http
            .get(format!("{proxy}/api/campaigns/{campaign_id}"))
            .header("authorization", &partner)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if metrics["metricas"]["clicks"].as_i64() == Some(1) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the click never reached the campaign's metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = serde_json::json!({"tipo_evento": "CONVERSION", "id_afiliado": "AFILIADO_WEBHOOK",
        "fuente_evento": "WEBHOOK", "id_evento_cliente": format!("e2e-webhook-{id}")})
    .to_string();
    let signature = event_collector::domain::firma::firmar_con_tiempo(
        webhook_secret.as_bytes(),
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    );
    let signed = http
        .post(format!("{gateway}/event-collector/events"))
        .header("content-type", "application/json")
        .header("x-webhook-signature", signature)
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        signed.status() == 201,
        "signed webhook: {}",
        signed.status()
    );
    let event: serde_json::Value = signed.json().await?;
    let event_id = event["id_evento"].as_str().context("id_evento")?.to_owned();
    // The webhook's sender reads its event's status with a key of its own.
    let webhook_partner = cluster.partner_authorization("AFILIADO_WEBHOOK")?;
    loop {
        let status: serde_json::Value = http
            .get(format!(
                "{gateway}/event-collector/events/{event_id}/status"
            ))
            .header("authorization", &webhook_partner)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if status["estado"] == "PUBLICADO" {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the webhook event was never published: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checks.push((
        "event collector through the gateway".into(),
        format!(
            "click counted on the campaign, signed webhook PUBLICADO, {} ms",
            started.elapsed().as_millis()
        ),
    ));

    let (active, _) = cluster.report_version()?;
    let started = Instant::now();
    loop {
        let answer = http
            .get(format!("{gateway}/api/reports/payments?id_afiliado=af-e2e"))
            .header("authorization", &partner)
            .send()
            .await?
            .error_for_status()?;
        let served = answer
            .headers()
            .get("x-report-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        anyhow::ensure!(
            served == active,
            "report served in {served}, the ReportVersion says {active}"
        );
        let body: serde_json::Value = answer.json().await?;
        if body["total_pagos"].as_i64().unwrap_or(0) >= 1 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the report never counted the smoke payment"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checks.push((
        "report through the gateway".into(),
        format!("in {active} (the active version), counts the payment"),
    ));
    checks.push((
        "console".into(),
        console_sees_every_replica(cluster, &http, &gateway).await?,
    ));
    let smoke = Smoke { checks };
    print_rows("Smoke test of the installed chart", &smoke.checks);
    write_json("e2e-smoke.json", &smoke)?;
    Ok(smoke)
}

/// The console in the pod: its page, its sign-in with an operator's token (the gateway's
/// TokenReview, through its auth-delegator account), every reports pod found through the
/// headless Service (each answering with the version it serves), and every service's
/// readiness.
async fn console_sees_every_replica(
    cluster: &Cluster,
    http: &reqwest::Client,
    gateway: &str,
) -> anyhow::Result<String> {
    let page = http.get(format!("{gateway}/console/")).send().await?;
    anyhow::ensure!(
        page.status() == 200 && page.text().await?.contains(r#"<div id="app">"#),
        "the gateway pod does not serve the console"
    );
    let signed_out = http
        .get(format!("{gateway}/console/api/replicas"))
        .send()
        .await?
        .status();
    anyhow::ensure!(
        signed_out == 401,
        "the console's reads answer {signed_out} without a session"
    );
    let token = cluster.operator_authorization()?;
    let token = token.strip_prefix("Bearer ").unwrap_or(&token);
    let signed_in = http
        .post(format!("{gateway}/console/api/sesion"))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await?;
    anyhow::ensure!(
        signed_in.status() == 200,
        "the console's sign-in answered {}: {}",
        signed_in.status(),
        signed_in.text().await?
    );
    let cookie = signed_in
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the sign-in sets the session cookie")?
        .to_owned();
    // The Service spreads these over the gateway pods: each reads the cookie (one key).
    for _ in 0..6 {
        let status = http
            .get(format!("{gateway}/console/api/sesion"))
            .header(reqwest::header::COOKIE, &cookie)
            .send()
            .await?
            .status();
        anyhow::ensure!(status == 200, "a gateway pod refused the session: {status}");
    }
    let reports: Vec<String> = cluster
        .pods(&format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=reports",
            cluster.release
        ))?
        .into_iter()
        .filter(|p| p.ready && !p.deleting)
        .map(|p| p.ip)
        .collect();
    let replicas: serde_json::Value = http
        .get(format!("{gateway}/console/api/replicas"))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let answering: Vec<&str> = replicas["replicas"]
        .as_array()
        .context("a replica list")?
        .iter()
        .filter(|r| r["version"]["active"].is_string())
        .filter_map(|r| r["url"].as_str())
        .collect();
    anyhow::ensure!(
        reports.iter().all(|ip| answering
            .iter()
            .any(|url| url.contains(&format!("//{ip}:")))),
        "the console shows {answering:?}, the ready reports pods are {reports:?}"
    );
    let salud: serde_json::Value = http
        .get(format!("{gateway}/console/api/salud"))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let servicios = salud["servicios"].as_array().context("a service list")?;
    let not_ready: Vec<&str> = servicios
        .iter()
        .filter(|s| s["listo"] != true)
        .filter_map(|s| s["nombre"].as_str())
        .collect();
    anyhow::ensure!(
        not_ready.is_empty(),
        "the console's health view says not ready: {not_ready:?}"
    );
    anyhow::ensure!(
        servicios.iter().any(|s| s["nombre"] == "pulsar"),
        "the console's health view lacks the broker (externalPulsar.adminUrl)"
    );
    Ok(format!(
        "page served; 401 signed out; signed in with an operator's token, the session read by every gateway pod; {} reports pods each with its version; {} services and the broker ready",
        answering.len(),
        servicios.len() - 1
    ))
}

// ---------------------------------------------------------------------------------------------
// scenario #2

#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub action: String,
    pub pod: String,
    /// From the start of the load.
    pub at_s: f64,
    /// From the action to the replacement (or the restarted container) Ready, or the
    /// rollout complete.
    pub recovered_ms: f64,
    /// Requests sent between the action and 2 s after the recovery.
    pub requests_during: u64,
    pub failed_during: u64,
    pub latency_during: Option<PhaseLatency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scenario2 {
    pub rate_rps: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub failed: u64,
    pub availability_pct: f64,
    pub latency: PhaseLatency,
    pub faults: Vec<Fault>,
    pub integrity: Integrity,
}

/// Steady mixed load through the campaigns-proxy Service while Kubernetes replaces campaigns
/// pods: one deleted, one whose process is SIGKILLed (the kubelet restarts the container),
/// then a rollout restart of the Deployment.
pub async fn scenario_2(cluster: &Cluster, rate: f64) -> anyhow::Result<Scenario2> {
    let pulsar = platform::config::PulsarConfig {
        pulsar_url: std::env::var("PULSAR_URL").context("PULSAR_URL of the node's broker")?,
        pulsar_namespace: "public/default".into(),
        pulsar_topic_prefix: String::new(),
        pulsar_auth_token: None,
        pulsar_tls_trust_certs_file: None,
    };
    let database_url = std::env::var("DATABASE_URL").context("DATABASE_URL of the node")?;
    let replicas = cluster.replicas("campaigns")?;
    let affiliate = format!("s2-k8s-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let authorization = cluster.partner_authorization(&affiliate)?;
    let workload = Workload::start(
        &cluster.service_url("campaigns-proxy")?,
        &pulsar,
        &affiliate,
        Some(&authorization),
    )
    .await?;
    let started = Instant::now();
    let stop = CancellationToken::new();
    let faults = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        tokio::spawn(async move {
            let result = inject_faults(&cluster, replicas, started).await;
            // Steady load after the last recovery, then stop.
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.cancel();
            result
        })
    };
    let samples = workload.drive(rate, started, stop).await?;
    let mut faults = faults.await??;
    let duration = started.elapsed();
    for fault in &mut faults {
        let from = Duration::from_secs_f64(fault.at_s);
        let to = from + Duration::from_secs_f64(fault.recovered_ms / 1000.0 + 2.0);
        let window: Vec<&scenario2::Sample> = samples
            .iter()
            .filter(|s| s.sent_at >= from && s.sent_at < to)
            .collect();
        fault.requests_during = window.len() as u64;
        fault.failed_during = window.iter().filter(|s| !s.ok).count() as u64;
        fault.latency_during = Some(scenario2::latency(&window)?);
    }
    let integrity = workload.integrity(&samples, &database_url).await?;
    let all: Vec<&scenario2::Sample> = samples.iter().collect();
    let report = Scenario2 {
        rate_rps: rate,
        duration_s: duration.as_secs_f64(),
        requests: samples.len() as u64,
        failed: samples.iter().filter(|s| !s.ok).count() as u64,
        availability_pct: scenario2::availability(&samples),
        latency: scenario2::latency(&all)?,
        faults,
        integrity,
    };
    let mut rows = vec![
        (
            "load (campaigns-proxy Service)".to_owned(),
            format!(
                "{:.0} req/s for {:.0} s",
                report.rate_rps, report.duration_s
            ),
        ),
        (
            "requests / failed".into(),
            format!("{} / {}", report.requests, report.failed),
        ),
        (
            "availability".into(),
            format!("{:.3} %", report.availability_pct),
        ),
        ("latency".into(), report.latency.describe()),
    ];
    for fault in &report.faults {
        rows.push((
            format!("{} ({})", fault.action, fault.pod),
            format!(
                "at {:.1} s, Ready again after {:.0} ms; meanwhile {} failed of {}",
                fault.at_s,
                fault.recovered_ms,
                fault.failed_during,
                fault
                    .latency_during
                    .as_ref()
                    .map_or_else(|| fault.requests_during.to_string(), PhaseLatency::describe)
            ),
        ));
    }
    let i = &report.integrity;
    rows.extend([
        (
            "writes acknowledged / lost".into(),
            format!("{} / {}", i.writes_acknowledged, i.writes_lost),
        ),
        (
            "changes committed / events consumed".into(),
            format!("{} / {}", i.changes_committed, i.events_consumed),
        ),
        ("events lost".into(), i.events_lost.to_string()),
        (
            "duplicated effects".into(),
            i.duplicated_effects.to_string(),
        ),
    ]);
    print_rows(
        "Scenario #2 on Kubernetes: campaigns pods deleted, killed and rolled under load",
        &rows,
    );
    write_json("e2e-scenario-2.json", &report)?;
    Ok(report)
}

async fn inject_faults(
    cluster: &Cluster,
    replicas: usize,
    started: Instant,
) -> anyhow::Result<Vec<Fault>> {
    let selector = cluster.selector("campaigns");
    let at = || started.elapsed().as_secs_f64();
    let mut faults = Vec::new();
    tokio::time::sleep(Duration::from_secs(8)).await;

    // 1. kubectl delete pod: the ReplicaSet creates a replacement.
    let before = cluster.pods(&selector)?;
    let victim = before.first().context("a campaigns pod")?.clone();
    let t = at();
    let asked = Instant::now();
    cluster.kubectl(&["delete", "pod", &victim.name, "--wait=false"])?;
    Cluster::until(
        "a replacement campaigns pod Ready",
        Duration::from_secs(120),
        || {
            let pods = cluster.pods(&selector)?;
            Ok(pods
                .iter()
                .any(|p| p.ready && !p.deleting && before.iter().all(|b| b.name != p.name)))
        },
    )
    .await?;
    faults.push(Fault {
        action: "kubectl delete pod".into(),
        pod: victim.name.clone(),
        at_s: t,
        recovered_ms: asked.elapsed().as_secs_f64() * 1000.0,
        requests_during: 0,
        failed_during: 0,
        latency_during: None,
    });
    cluster
        .until_ready("campaigns", replicas, Duration::from_secs(120))
        .await?;
    tokio::time::sleep(Duration::from_secs(8)).await;

    // 2. SIGKILL of the process inside a container: the kubelet restarts the container.
    let pods = cluster.pods(&selector)?;
    let victim = pods
        .iter()
        .find(|p| p.ready && !p.deleting)
        .context("a ready campaigns pod")?
        .clone();
    let pid = container_process(&victim.uid, "aeropartners")
        .with_context(|| format!("the process of {} on this node", victim.name))?;
    let t = at();
    let killed = Instant::now();
    nix_kill(pid)?;
    Cluster::until(
        "the killed container restarted and Ready",
        Duration::from_secs(120),
        || {
            Ok(cluster
                .pods(&selector)?
                .iter()
                .any(|p| p.name == victim.name && p.restarts > victim.restarts && p.ready))
        },
    )
    .await?;
    faults.push(Fault {
        action: "SIGKILL of the container's process".into(),
        pod: victim.name.clone(),
        at_s: t,
        recovered_ms: killed.elapsed().as_secs_f64() * 1000.0,
        requests_during: 0,
        failed_during: 0,
        latency_during: None,
    });
    tokio::time::sleep(Duration::from_secs(8)).await;

    // 3. kubectl rollout restart: every pod replaced, one surge at a time.
    let t = at();
    let asked = Instant::now();
    cluster.kubectl(&["rollout", "restart", &cluster.deployment("campaigns")])?;
    cluster.kubectl(&[
        "rollout",
        "status",
        &cluster.deployment("campaigns"),
        "--timeout=300s",
    ])?;
    cluster
        .until_ready("campaigns", replicas, Duration::from_secs(120))
        .await?;
    faults.push(Fault {
        action: "kubectl rollout restart".into(),
        pod: cluster.deployment("campaigns"),
        at_s: t,
        recovered_ms: asked.elapsed().as_secs_f64() * 1000.0,
        requests_during: 0,
        failed_during: 0,
        latency_during: None,
    });
    Ok(faults)
}

fn nix_kill(pid: u32) -> anyhow::Result<()> {
    let status = tokio::task::block_in_place(|| {
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
    })?;
    anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// scenario #9, and a switch that cannot happen

/// Steady load on the reports through the gateway Service, ≥ 20 `kubectl patch rv` switches,
/// propagation measured per reports pod.
pub async fn scenario_9(cluster: &Cluster, switches: usize) -> anyhow::Result<scenario9::Report> {
    // The switches alternate v2, v1, …: start from v1, so that each is a real change.
    serve(cluster, "v1").await?;
    let replicas = cluster
        .pods(&cluster.selector("reports"))?
        .into_iter()
        .filter(|p| p.ready && !p.deleting)
        .map(|p| (p.name.clone(), format!("http://{}:8020", p.ip)))
        .collect();
    let target = scenario9::Target {
        gateway: cluster.service_url("gateway")?,
        replicas,
        switch: scenario9::Switch::Patch {
            namespace: cluster.namespace.clone(),
            name: cluster.report_version_name(),
        },
        payees: scenario9::open_payees()
            .into_iter()
            .map(|(payee, _)| {
                let authorization = cluster.partner_authorization(&payee)?;
                Ok((payee, Some(authorization)))
            })
            .collect::<anyhow::Result<_>>()?,
        reader: Some(cluster.operator_authorization()?),
    };
    let config = scenario9::Config {
        binary: std::path::PathBuf::new(),
        mode: scenario9::Mode::Cluster,
        rate: 100.0,
        legacy_every: 10,
        payments_rate: 10.0,
        warmup: Duration::from_secs(3),
        switches,
        pause: Duration::from_millis(300),
        cooldown: Duration::from_secs(3),
    };
    let report = scenario9::measure(&config, &target).await?;
    report.publish()?;
    Ok(report)
}

/// Switches to `version` unless it is served already, and waits until it is.
async fn serve(cluster: &Cluster, version: &str) -> anyhow::Result<()> {
    if cluster.report_version()?.0 != version {
        cluster.patch_version(version)?;
        Cluster::until(
            &format!("{version} served"),
            Duration::from_secs(60),
            || {
                let (active, conditions) = cluster.report_version()?;
                Ok(active == version && condition(&conditions, "Ready"))
            },
        )
        .await?;
    }
    Ok(())
}

/// What a load of report reads saw while something happened to the cluster.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReadLoad {
    pub requests: u64,
    pub failed: u64,
    /// Answers in a version other than the one expected throughout.
    pub other_version: u64,
    /// Each failure as the client saw it (seconds into the load).
    pub failures: Vec<String>,
}

/// Creates a payment through the gateway every 50 ms until `stop`: how many were sent, and
/// each failure as the client saw it.
fn post_payments(
    cluster: &Cluster,
    gateway: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    let partner = cluster.partner_authorization("af-upgrade");
    tokio::spawn(async move {
        let partner = partner.expect("a partner key for af-upgrade");
        let http = client().expect("an HTTP client");
        let (mut sent, mut failures) = (0u64, Vec::new());
        let run = uuid::Uuid::new_v4().simple().to_string();
        let started = Instant::now();
        while !stop.is_cancelled() {
            sent += 1;
            // No Idempotency-Key, as a careless client sends it: nothing may retry it.
            let answer = http
                .post(format!("{gateway}/pagos/"))
                .header("authorization", &partner)
                .json(&serde_json::json!({"id_afiliado": "af-upgrade", "monto": 5,
                    "moneda": "USD", "referencia_pago": format!("up-{run}-{sent}")}))
                .send()
                .await;
            if !answer.as_ref().is_ok_and(|r| r.status().is_success()) {
                failures.push(describe_failure(started, answer).await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (sent, failures)
    })
}

/// Reads `/api/reports/payments` through the gateway every 20 ms until `stop`, as a partner
/// with a key of its own.
fn read_reports(
    cluster: &Cluster,
    gateway: String,
    expected: Option<String>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<ReadLoad> {
    let reader = cluster.partner_authorization("af-e2e-reports");
    tokio::spawn(async move {
        let reader = reader.expect("a partner key for af-e2e-reports");
        let http = client().expect("an HTTP client");
        let mut seen = ReadLoad::default();
        let started = Instant::now();
        while !stop.is_cancelled() {
            seen.requests += 1;
            match http
                .get(format!("{gateway}/api/reports/payments"))
                .header("authorization", &reader)
                .send()
                .await
            {
                Ok(answer) if answer.status().is_success() => {
                    let version = answer
                        .headers()
                        .get("x-report-version")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if expected.is_some() && version != expected {
                        seen.other_version += 1;
                    }
                }
                failed => {
                    seen.failed += 1;
                    seen.failures.push(describe_failure(started, failed).await);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Degraded {
    pub progressing_after_ms: f64,
    pub degraded_after_ms: f64,
    /// Reads while the target had no data service: all must still be served in v1.
    pub reads: ReadLoad,
    /// From scaling the data service back to the switch being served.
    pub switched_after_scale_up_ms: f64,
}

/// Scales `data-service-v2` to 0 and asks for v2: the resource goes Progressing, then
/// Degraded after the operator's deadline, and v1 is served throughout; scaled back, the
/// switch happens.
pub async fn switch_without_data_service(cluster: &Cluster) -> anyhow::Result<Degraded> {
    // The default deadline is 2 minutes; a user who wants the alert sooner shortens it (the
    // operator restarts with it).
    cluster.set_values(&[&format!("operator.progressDeadline={PROGRESS_DEADLINE}")])?;
    serve(cluster, "v1").await?;
    let v2_replicas = cluster.replicas("data-service-v2")?;
    cluster.kubectl(&[
        "scale",
        &cluster.deployment("data-service-v2"),
        "--replicas=0",
    ])?;
    Cluster::until("data-service-v2 at 0 pods", Duration::from_secs(60), || {
        Ok(cluster
            .pods(&cluster.selector("data-service-v2"))?
            .is_empty())
    })
    .await?;
    let stop = CancellationToken::new();
    let reads = read_reports(
        cluster,
        cluster.service_url("gateway")?,
        Some("v1".into()),
        stop.clone(),
    );
    cluster.patch_version("v2")?;
    let progressing = Cluster::until("Progressing", Duration::from_secs(30), || {
        let (_, conditions) = cluster.report_version()?;
        Ok(condition(&conditions, "Progressing"))
    })
    .await?;
    let degraded = Cluster::until("Degraded", Duration::from_secs(120), || {
        let (active, conditions) = cluster.report_version()?;
        anyhow::ensure!(
            active == "v1",
            "switched to {active} without a data service"
        );
        Ok(condition(&conditions, "Degraded"))
    })
    .await?;
    // A little longer degraded, still served in v1.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let reads = reads.await?;
    let scaled = Instant::now();
    cluster.kubectl(&[
        "scale",
        &cluster.deployment("data-service-v2"),
        &format!("--replicas={v2_replicas}"),
    ])?;
    Cluster::until(
        "v2 served after scaling back",
        Duration::from_secs(120),
        || {
            let (active, conditions) = cluster.report_version()?;
            Ok(active == "v2" && condition(&conditions, "Ready"))
        },
    )
    .await?;
    let report = Degraded {
        progressing_after_ms: progressing.as_secs_f64() * 1000.0,
        // Each wait starts where the previous one ended.
        degraded_after_ms: (progressing + degraded).as_secs_f64() * 1000.0,
        reads,
        switched_after_scale_up_ms: scaled.elapsed().as_secs_f64() * 1000.0,
    };
    print_rows(
        "A switch to v2 with data-service-v2 scaled to 0",
        &[
            (
                "patch → Progressing".into(),
                format!("{:.0} ms", report.progressing_after_ms),
            ),
            (
                "patch → Degraded (operator.progressDeadline)".into(),
                format!("{:.0} ms", report.degraded_after_ms),
            ),
            (
                "reads meanwhile: failed / not v1".into(),
                format!(
                    "{} reads: {} / {}",
                    report.reads.requests, report.reads.failed, report.reads.other_version
                ),
            ),
            (
                "scaled back → v2 Ready".into(),
                format!("{:.0} ms", report.switched_after_scale_up_ms),
            ),
        ],
    );
    write_json("e2e-degraded.json", &report)?;
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// from the previous chart to this one

#[derive(Debug, Clone, Serialize)]
pub struct ChartUpgrade {
    /// The chart the release went back to, then came from (`version` of its Chart.yaml).
    pub previous_chart: String,
    /// `helm upgrade` to the previous chart, rolled out.
    pub to_previous_ms: f64,
    /// `helm upgrade` from it to this chart, rolled out.
    pub to_current_ms: f64,
    pub reads: ReadLoad,
    pub payments: u64,
    pub payment_failures: Vec<String>,
    pub version_before: String,
    pub version_after: String,
    /// The CRD the cluster serves afterwards is this chart's.
    pub crd_current: bool,
}

/// The release goes to the chart at the previous commit of charts/ and back to this one, each
/// a `helm upgrade` under steady reads and writes: what a user's upgrade from the last release
/// does, and its way back.
pub async fn upgrade_from_previous(
    cluster: &Cluster,
    previous: &std::path::Path,
) -> anyhow::Result<ChartUpgrade> {
    let gateway = cluster.service_url("gateway")?;
    let (version_before, _) = cluster.report_version()?;
    let previous_chart = std::fs::read_to_string(previous.join("Chart.yaml"))?
        .lines()
        .find_map(|l| l.strip_prefix("version: ").map(str::to_owned))
        .context("the previous chart's version")?;
    let stop = CancellationToken::new();
    let reads = read_reports(
        cluster,
        gateway.clone(),
        Some(version_before.clone()),
        stop.clone(),
    );
    let payments = post_payments(cluster, gateway, stop.clone());
    let to_previous = cluster.upgrade(previous, &[])?;
    let to_current = cluster.upgrade(&cluster.chart, &[])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let reads = reads.await?;
    let (payments, payment_failures) = payments.await?;
    let (version_after, _) = cluster.report_version()?;
    let served = kubectl(&["get", "crd", "reportversions.aeropartners.io", "-o", "json"])?;
    let served: serde_json::Value = serde_json::from_str(&served)?;
    let ours: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(
        cluster
            .chart
            .join("files/crds/reportversions.aeropartners.io.yaml"),
    )?)?;
    let crd_current = served["spec"]["versions"] == ours["spec"]["versions"];
    let report = ChartUpgrade {
        previous_chart,
        to_previous_ms: to_previous.as_secs_f64() * 1000.0,
        to_current_ms: to_current.as_secs_f64() * 1000.0,
        reads,
        payments,
        payment_failures,
        version_before,
        version_after,
        crd_current,
    };
    print_rows(
        &format!(
            "helm upgrade to the previous chart ({}) and back, under load",
            report.previous_chart
        ),
        &[
            (
                "to the previous chart → rolled; back to this one → rolled".into(),
                format!(
                    "{:.0} ms; {:.0} ms",
                    report.to_previous_ms, report.to_current_ms
                ),
            ),
            (
                "reads: requests / failed / not in the active version".into(),
                format!(
                    "{} / {} / {}",
                    report.reads.requests, report.reads.failed, report.reads.other_version
                ),
            ),
            (
                "payments: sent / failed".into(),
                format!("{} / {}", report.payments, report.payment_failures.len()),
            ),
            (
                "active version before / after; the CRD served is this chart's".into(),
                format!(
                    "{} / {}; {}",
                    report.version_before, report.version_after, report.crd_current
                ),
            ),
        ],
    );
    for failure in report.reads.failures.iter().chain(&report.payment_failures) {
        println!("  failed: {failure}");
    }
    write_json("e2e-chart-upgrade.json", &report)?;
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// the operator, and helm upgrade

#[derive(Debug, Clone, Serialize)]
pub struct Operations {
    /// From deleting the operator pod, mid-switch, to its replacement Ready.
    pub operator_replaced_ms: f64,
    /// From the target's data service back to every reports pod serving the new version.
    pub converged_after_data_service_ms: f64,
    pub reads_during_operator_restart: ReadLoad,
    pub upgrade_ms: f64,
    /// The services' pods (not the data layer's) the upgrade replaced, of those before it.
    pub pods_replaced_by_upgrade: usize,
    pub pods_before_upgrade: usize,
    /// The in-chart PostgreSQL's and Pulsar's pods the upgrade and rollback left running.
    pub data_pods_kept: usize,
    pub data_pods: usize,
    pub reads_during_upgrade: ReadLoad,
    pub payments_during_upgrade: u64,
    pub payments_failed_during_upgrade: u64,
    /// Each failed payment as the client saw it (seconds into the upgrade).
    pub payment_failures_during_upgrade: Vec<String>,
    pub version_after_upgrade: String,
    /// `helm rollback` to the revision before the upgrade, under the same load (counted with
    /// the upgrade's).
    pub rollback_ms: f64,
    /// What the ReportVersion asks for and serves after the rollback: the switch made before
    /// the upgrade, which neither Helm operation may revert.
    pub desired_after_rollback: String,
    pub version_after_rollback: String,
    /// The version the switch before the upgrade went to.
    pub switched_to: String,
}

/// The operator pod deleted mid-switch (while the switch waits for its data service), then
/// `helm upgrade` with a changed value under load.
pub async fn operations(cluster: &Cluster) -> anyhow::Result<Operations> {
    let gateway = cluster.service_url("gateway")?;
    let (from, _) = cluster.report_version()?;
    let to = if from == "v1" { "v2" } else { "v1" };
    let data_service = format!("data-service-{to}");
    let data_service_replicas = cluster.replicas(&data_service)?;

    // A switch that stays in progress: its data service is scaled away first.
    cluster.kubectl(&["scale", &cluster.deployment(&data_service), "--replicas=0"])?;
    Cluster::until(
        &format!("{data_service} at 0 pods"),
        Duration::from_secs(60),
        || Ok(cluster.pods(&cluster.selector(&data_service))?.is_empty()),
    )
    .await?;
    let stop = CancellationToken::new();
    let reads = read_reports(cluster, gateway.clone(), Some(from.clone()), stop.clone());
    cluster.patch_version(to)?;
    Cluster::until("Progressing", Duration::from_secs(30), || {
        Ok(condition(&cluster.report_version()?.1, "Progressing"))
    })
    .await?;
    // Mid-switch: the operator pod goes, its replacement must pick the switch up.
    let operator = cluster.selector("operator");
    let old: Vec<String> = cluster
        .pods(&operator)?
        .into_iter()
        .map(|p| p.name)
        .collect();
    let deleted = Instant::now();
    cluster.kubectl(&["delete", "pod", "-l", &operator, "--wait=false"])?;
    Cluster::until("a new operator pod Ready", Duration::from_secs(120), || {
        Ok(cluster
            .pods(&operator)?
            .iter()
            .any(|p| p.ready && !p.deleting && !old.contains(&p.name)))
    })
    .await?;
    let operator_replaced = deleted.elapsed();
    let (active, _) = cluster.report_version()?;
    anyhow::ensure!(
        active == from,
        "switched to {active} without {data_service}"
    );
    stop.cancel();
    let reads_operator = reads.await?;
    let scaled = Instant::now();
    cluster.kubectl(&[
        "scale",
        &cluster.deployment(&data_service),
        &format!("--replicas={data_service_replicas}"),
    ])?;
    Cluster::until(
        "the switch completed by the new operator",
        Duration::from_secs(120),
        || {
            let (active, conditions) = cluster.report_version()?;
            Ok(active == to && condition(&conditions, "Ready"))
        },
    )
    .await?;
    let http = client()?;
    for pod in cluster
        .pods(&cluster.selector("reports"))?
        .iter()
        .filter(|p| !p.deleting)
    {
        let url = format!("http://{}:8020/api/reports/version", pod.ip);
        let limit = Instant::now() + Duration::from_secs(30);
        loop {
            let served: serde_json::Value = http.get(&url).send().await?.json().await?;
            if served["active"] == to {
                break;
            }
            anyhow::ensure!(Instant::now() < limit, "{} still serves {served}", pod.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let converged = scaled.elapsed();

    // helm upgrade with a changed value (the config checksum rolls every Deployment), under
    // a load of report reads and payments; the active version must survive it.
    let before = live_pods(cluster, &format!("notin {DATA_LAYER}"))?;
    let data_before = live_pods(cluster, &format!("in {DATA_LAYER}"))?;
    let stop = CancellationToken::new();
    let reads = read_reports(cluster, gateway.clone(), Some(to.to_owned()), stop.clone());
    let payments = post_payments(cluster, gateway.clone(), stop.clone());
    // A log directive for a target that does not exist, named after this run: a value that
    // differs from the installed one on every run (the config checksum rolls every pod), and
    // changes nothing else. Commas escaped: `--set` splits on them.
    let changed = format!(
        r"common.rustLog=info\,sqlx=warn\,pulsar=warn\,e2e_upgrade_{}=info",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let upgrade = cluster.upgrade(&cluster.chart, &[&changed])?;
    let (version_after, _) = cluster.report_version()?;
    // Back to the revision before the upgrade: Helm re-applies that revision's manifest, which
    // must not carry the report version back with it.
    let started = Instant::now();
    crate::cluster::helm(&[
        "rollback",
        cluster.release.as_str(),
        "-n",
        cluster.namespace.as_str(),
        "--wait",
        "--timeout",
        "10m",
    ])?;
    cluster.rolled_out()?;
    let rollback = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let reads_upgrade = reads.await?;
    let (payments_sent, payment_failures) = payments.await?;
    let after = live_pods(cluster, &format!("notin {DATA_LAYER}"))?;
    let data_after = live_pods(cluster, &format!("in {DATA_LAYER}"))?;
    let (version_after_rollback, _) = cluster.report_version()?;
    let desired_after_rollback =
        cluster.json(&["get", "rv", &cluster.report_version_name()])?["spec"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    let report = Operations {
        operator_replaced_ms: operator_replaced.as_secs_f64() * 1000.0,
        converged_after_data_service_ms: converged.as_secs_f64() * 1000.0,
        reads_during_operator_restart: reads_operator,
        upgrade_ms: upgrade.as_secs_f64() * 1000.0,
        pods_replaced_by_upgrade: before.iter().filter(|p| !after.contains(p)).count(),
        pods_before_upgrade: before.len(),
        data_pods_kept: data_before
            .iter()
            .filter(|p| data_after.contains(p))
            .count(),
        data_pods: data_before.len(),
        reads_during_upgrade: reads_upgrade,
        payments_during_upgrade: payments_sent,
        payments_failed_during_upgrade: payment_failures.len() as u64,
        payment_failures_during_upgrade: payment_failures,
        version_after_upgrade: version_after,
        rollback_ms: rollback.as_secs_f64() * 1000.0,
        desired_after_rollback,
        version_after_rollback,
        switched_to: to.to_owned(),
    };
    print_rows(
        "The operator pod deleted mid-switch; helm upgrade under load",
        &[
            (
                format!("switch to {to} waiting; operator pod deleted → new one Ready"),
                format!("{:.0} ms", report.operator_replaced_ms),
            ),
            (
                format!("reads meanwhile: requests / failed / not {from}"),
                format!(
                    "{} / {} / {}",
                    report.reads_during_operator_restart.requests,
                    report.reads_during_operator_restart.failed,
                    report.reads_during_operator_restart.other_version
                ),
            ),
            (
                format!("{data_service} back → every reports pod serves {to}"),
                format!("{:.0} ms", report.converged_after_data_service_ms),
            ),
            (
                "helm upgrade (changed common.rustLog) → rolled".into(),
                format!(
                    "{:.0} ms, {} of {} pods replaced",
                    report.upgrade_ms, report.pods_replaced_by_upgrade, report.pods_before_upgrade
                ),
            ),
            (
                "in-chart PostgreSQL and Pulsar pods left running".into(),
                format!("{} of {}", report.data_pods_kept, report.data_pods),
            ),
            (
                "helm rollback to the revision before → rolled".into(),
                format!("{:.0} ms", report.rollback_ms),
            ),
            (
                "reads during upgrade + rollback: requests / failed / not in the active version"
                    .into(),
                format!(
                    "{} / {} / {}",
                    report.reads_during_upgrade.requests,
                    report.reads_during_upgrade.failed,
                    report.reads_during_upgrade.other_version
                ),
            ),
            (
                "payments during upgrade + rollback: sent / failed".into(),
                format!(
                    "{} / {}",
                    report.payments_during_upgrade, report.payments_failed_during_upgrade
                ),
            ),
            (
                format!(
                    "switched to {to}; active after the upgrade / after the rollback (desired)"
                ),
                format!(
                    "{} / {} ({})",
                    report.version_after_upgrade,
                    report.version_after_rollback,
                    report.desired_after_rollback
                ),
            ),
        ],
    );
    for failure in report
        .reads_during_operator_restart
        .failures
        .iter()
        .chain(&report.reads_during_upgrade.failures)
        .chain(&report.payment_failures_during_upgrade)
    {
        println!("  failed: {failure}");
    }
    write_json("e2e-operations.json", &report)?;
    Ok(report)
}

/// The in-chart data layer's components: a change of the services' settings must not restart
/// them.
const DATA_LAYER: &str = "(postgresql,pulsar)";

/// The release's running pods that are not being deleted (not the finished pods of `helm
/// test`), by uid (a StatefulSet's replacement keeps its name), of the components `set`
/// selects (`in DATA_LAYER` or `notin DATA_LAYER`).
fn live_pods(cluster: &Cluster, set: &str) -> anyhow::Result<Vec<String>> {
    let list = cluster.json(&[
        "get",
        "pods",
        "-l",
        &format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component {set}",
            cluster.release
        ),
        "--field-selector=status.phase=Running",
    ])?;
    Ok(list["items"]
        .as_array()
        .context("a pod list")?
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|pod| pod["metadata"]["uid"].as_str().map(str::to_owned))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// security of the running release: NetworkPolicy, RBAC, non-root containers

/// One TCP connection attempt from inside a pod's network namespace.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub expected_to_connect: bool,
    /// "connected", "timed out (3 s)", or the error the kernel gave (refused, unreachable).
    pub outcome: String,
    pub connected: bool,
    pub attempts: usize,
}

/// One `kubectl auth can-i` answer for a ServiceAccount of the release.
#[derive(Debug, Serialize)]
pub struct Permission {
    pub account: String,
    pub request: String,
    pub expected: bool,
    pub allowed: bool,
}

/// One running container of the release, seen from the node's /proc.
#[derive(Debug, Serialize)]
pub struct ContainerCheck {
    pub pod: String,
    pub container: String,
    pub processes: usize,
    /// `Uid:` of /proc/<pid>/status (real, effective, saved, filesystem) of each process.
    pub uids: Vec<String>,
    /// Whether the root mount in /proc/<pid>/mountinfo is `ro`, for every process.
    pub root_read_only: bool,
    pub non_root: bool,
}

#[derive(Debug, Serialize)]
pub struct Security {
    pub network: Vec<Probe>,
    pub rbac: Vec<Permission>,
    /// Who the API lets do what, through the gateway.
    pub api: Vec<ApiAccess>,
    pub containers: Vec<ContainerCheck>,
    /// The whole part, the outsider pod's start included.
    pub took_ms: f64,
}

/// The namespace of the pod that does not belong to the release.
const OUTSIDER_NAMESPACE: &str = "e2e-outsider";
/// How long the Degraded part lets a switch wait: long enough for a rollout on a busy 2-core
/// cluster, short enough for the test.
const PROGRESS_DEADLINE: &str = "20s";
/// The node's pause image (scripts/k8s-cluster.sh imports it into every worker; it cannot be pulled).
const PAUSE_IMAGE: &str = "localhost/aeropartners/pause:3.10";

/// The running release defends itself: NetworkPolicy keeps a pod outside the release away from
/// a pod that holds the database credentials (payments), while the release's own pods and the
/// edge stay reachable; the operator's and the reports' ServiceAccounts can do what they need
/// and nothing more (`kubectl auth can-i`); every container runs as a non-root user on a
/// read-only root filesystem (the node's /proc, not the manifest).
pub async fn security(cluster: &Cluster) -> anyhow::Result<Security> {
    let started = Instant::now();
    // Off in the default values (it needs a CNI that enforces it): turned on as a user
    // would, and off again after, since the checks that follow read the database and the
    // broker from a node's address, which the policy refuses.
    cluster.set_values(&["networkPolicy.enabled=true"])?;
    let network = network_policy(cluster).await;
    cluster.set_values(&["networkPolicy.enabled=false"])?;
    let network = network?;
    let rbac = rbac(cluster)?;
    let api = api_access(cluster).await?;
    let containers = containers(cluster)?;
    let report = Security {
        network,
        rbac,
        api,
        containers,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("\nSecurity: NetworkPolicy (TCP connects from inside the pods' network namespaces)");
    for p in &report.network {
        println!(
            "  {:<72} {:<20} expected {:<8} {}",
            format!("{} → {}", p.from, p.to),
            p.outcome,
            if p.expected_to_connect {
                "connect"
            } else {
                "blocked"
            },
            mark(p.connected == p.expected_to_connect)
        );
    }
    println!("\nSecurity: RBAC (kubectl auth can-i --as the release's ServiceAccounts)");
    for p in &report.rbac {
        println!(
            "  {:<10} {:<66} {:<4} {}",
            p.account,
            p.request,
            if p.allowed { "yes" } else { "no" },
            mark(p.allowed == p.expected)
        );
    }
    println!("\nSecurity: who the API lets do what (through the gateway)");
    for a in &report.api {
        println!(
            "  {:<58} {:<34} {:<4} expected {:<4} {}",
            a.request,
            a.caller,
            a.status,
            a.expected,
            mark(a.status == a.expected)
        );
    }
    println!("\nSecurity: every container of the release, from the node's /proc");
    for c in &report.containers {
        println!(
            "  {:<52} uid {:<26} root fs {:<3} {}",
            format!("{}/{}", c.pod, c.container),
            c.uids.first().map_or("-", String::as_str),
            if c.root_read_only { "ro" } else { "rw" },
            mark(c.non_root && c.root_read_only && c.processes > 0)
        );
    }
    println!(
        "  {} probes, {} permissions, {} containers checked in {:.1} s",
        report.network.len(),
        report.rbac.len(),
        report.containers.len(),
        report.took_ms / 1000.0
    );
    write_json("e2e-security.json", &report)?;
    Ok(report)
}

/// A TCP connection from the network namespace of process `pid` to `ip:port` within 3 s:
/// whether it was established, and how it ended. The node itself may always reach a pod, so
/// the attempt must come from inside one.
fn connect_from(pid: u32, ip: &str, port: u16) -> anyhow::Result<(bool, String)> {
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new("nsenter")
            .args(["--target", &pid.to_string(), "--net", "--"])
            .args(["timeout", "3", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
            .output()
    })
    .context("nsenter runs")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        !stderr.starts_with("nsenter:"),
        "entering the network namespace of pid {pid}: {stderr}"
    );
    Ok(match output.status.code() {
        Some(0) => (true, "connected".to_owned()),
        Some(124) => (false, "timed out (3 s)".to_owned()),
        _ => (
            false,
            stderr
                .lines()
                .next()
                .and_then(|line| line.rsplit(": ").next())
                .unwrap_or("failed")
                .to_lowercase(),
        ),
    })
}

/// Tries until the outcome is the expected one or, for a connection that must succeed, 10 s
/// have passed (a policy change takes a moment to reach the node's rules). A connection that
/// must fail is tried once: a single success is a hole.
async fn probe(
    from: &str,
    pid: u32,
    to: &str,
    (ip, port): (&str, u16),
    expected_to_connect: bool,
) -> anyhow::Result<Probe> {
    let limit = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (connected, outcome) = connect_from(pid, ip, port)?;
        // Retried both ways: a policy just created takes each node's kube-router a moment to
        // enforce, and a pod just started a moment to be reachable.
        if connected == expected_to_connect || Instant::now() >= limit {
            return Ok(Probe {
                from: from.to_owned(),
                to: format!("{to} {ip}:{port}"),
                expected_to_connect,
                outcome,
                connected,
                attempts,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The ClusterIP and the first port of a Service.
fn service_address(cluster: &Cluster, component: &str) -> anyhow::Result<(String, u16)> {
    let service = cluster.json(&["get", "service", &cluster.service_name(component)])?;
    Ok((
        service["spec"]["clusterIP"]
            .as_str()
            .context("a ClusterIP")?
            .to_owned(),
        u16::try_from(
            service["spec"]["ports"][0]["port"]
                .as_u64()
                .context("a port")?,
        )?,
    ))
}

/// The release's payments pods hold the database credentials, and the in-chart PostgreSQL
/// holds the data: ports a stranger must not reach. Probes from a gateway pod (in the
/// release), and from a pod in another namespace that even carries the release's
/// `app.kubernetes.io/instance` label (a label is no way in); the outsider reaching the
/// gateway, which the edge policy opens, proves its network works and that the refusals are
/// the policy's. The pods may be on any node: the probes cross nodes as often as not.
async fn network_policy(cluster: &Cluster) -> anyhow::Result<Vec<Probe>> {
    let ready = |component: &str| -> anyhow::Result<crate::cluster::Pod> {
        cluster
            .pods(&cluster.selector(component))?
            .into_iter()
            .find(|p| p.ready && !p.deleting)
            .with_context(|| format!("a ready {component} pod"))
    };
    let payments = ready("payments")?;
    let gateway = ready("gateway")?;
    let (payments_service, payments_port) = service_address(cluster, "payments")?;
    let (_, gateway_port) = service_address(cluster, "gateway")?;
    let (database_service, database_port) = service_address(cluster, "postgresql")?;
    let gateway_pid = container_process(&gateway.uid, "aeropartners")
        .with_context(|| format!("the process of {} on this node", gateway.name))?;

    let outsider = outsider_pod(&cluster.release).await?;
    let outsider_pid = container_process(&outsider.uid, "pause")
        .context("the outsider pod's process on this node")?;
    let insider = format!("{} (release)", gateway.name);
    let stranger = format!("{OUTSIDER_NAMESPACE}/outsider");
    let mut probes = Vec::new();
    for (from, pid, to, address, connects) in [
        (
            &insider,
            gateway_pid,
            "payments pod",
            (payments.ip.as_str(), payments_port),
            true,
        ),
        (
            &insider,
            gateway_pid,
            "payments Service",
            (payments_service.as_str(), payments_port),
            true,
        ),
        (
            &stranger,
            outsider_pid,
            "payments pod",
            (payments.ip.as_str(), payments_port),
            false,
        ),
        (
            &stranger,
            outsider_pid,
            "payments Service",
            (payments_service.as_str(), payments_port),
            false,
        ),
        (
            &stranger,
            outsider_pid,
            "PostgreSQL Service",
            (database_service.as_str(), database_port),
            false,
        ),
        (
            &insider,
            gateway_pid,
            "PostgreSQL Service",
            (database_service.as_str(), database_port),
            true,
        ),
        (
            &stranger,
            outsider_pid,
            "gateway pod (edge)",
            (gateway.ip.as_str(), gateway_port),
            true,
        ),
    ] {
        probes.push(probe(from, pid, to, address, connects).await?);
    }
    kubectl(&[
        "delete",
        "namespace",
        OUTSIDER_NAMESPACE,
        "--wait=false",
        "--ignore-not-found",
    ])?;
    Ok(probes)
}

/// A pause pod in a namespace of its own, Ready.
async fn outsider_pod(release: &str) -> anyhow::Result<crate::cluster::Pod> {
    let manifest = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {OUTSIDER_NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: outsider
  namespace: {OUTSIDER_NAMESPACE}
  labels: {{app.kubernetes.io/instance: {release}}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  containers:
    - name: outsider
      image: {PAUSE_IMAGE}
      imagePullPolicy: Never
"#
    );
    // The new namespace's default ServiceAccount, which admission wants, comes a moment later.
    Cluster::until("the outsider pod created", Duration::from_secs(30), || {
        tokio::task::block_in_place(|| testkit::kubectl(&["apply", "-f", "-"], Some(&manifest)))
            .map_err(anyhow::Error::msg)?;
        Ok(true)
    })
    .await?;
    let outsider = Cluster {
        namespace: OUTSIDER_NAMESPACE.to_owned(),
        release: release.to_owned(),
        chart: std::path::PathBuf::new(),
    };
    outsider.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/outsider",
        "--timeout=120s",
    ])?;
    outsider
        .pods(&format!("app.kubernetes.io/instance={release}"))?
        .into_iter()
        .next()
        .context("the outsider pod")
}

/// One call through the gateway, by one kind of caller.
#[derive(Debug, Serialize)]
pub struct ApiAccess {
    pub request: String,
    pub caller: String,
    pub status: u16,
    pub expected: u16,
}

/// The API checks who calls: no credential is 401; a partner's key reaches its own payments
/// only; reverting takes a Kubernetes user the `<fullname>-operations` Role is bound to, a
/// `<fullname>-viewer` may only read (TokenReview and SubjectAccessReview on this cluster).
async fn api_access(cluster: &Cluster) -> anyhow::Result<Vec<ApiAccess>> {
    let http = client()?;
    let gateway = cluster.service_url("gateway")?;
    let own = cluster.partner_authorization("af-security")?;
    let other = cluster.partner_authorization("af-security-other")?;
    let operator = cluster.operator_authorization()?;
    let viewer = cluster.bound_token("e2e-viewer", "viewer")?;
    let created: serde_json::Value = http
        .post(format!("{gateway}/pagos"))
        .header("authorization", &own)
        .json(&serde_json::json!({"monto": 1, "moneda": "USD",
            "referencia_pago": format!("sec-{}", uuid::Uuid::new_v4().simple())}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id_pago"].as_str().context("id_pago")?.to_owned();
    let payment = format!("/pagos/{id}");
    let revert = format!("/pagos/{id}/revertir");
    let cases: [(&str, &str, &str, Option<&str>, u16); 9] = [
        ("GET", "/pagos", "nobody", None, 401),
        ("GET", &payment, "its affiliate's key", Some(&own), 200),
        (
            "GET",
            &payment,
            "another affiliate's key",
            Some(&other),
            404,
        ),
        ("GET", &payment, "a viewer", Some(&viewer), 200),
        (
            "GET",
            &payment,
            "a forged token",
            Some("Bearer forged"),
            401,
        ),
        ("PATCH", &revert, "its affiliate's key", Some(&own), 403),
        ("PATCH", &revert, "a viewer", Some(&viewer), 403),
        // Allowed, and refused by the payment's state (PENDIENTE or just charged): 409, or
        // 200 if the charge already succeeded.
        ("PATCH", &revert, "an operator", Some(&operator), 409),
        (
            "GET",
            "/pagos/outbox/estadisticas",
            "an operator",
            Some(&operator),
            200,
        ),
    ];
    let mut answers = Vec::new();
    // The version switch: asked for the version already desired, so nothing moves, but the
    // API server decides who may, as it would for a real switch.
    let desired: serde_json::Value = http
        .get(format!("{gateway}/api/reports/version"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let switch = serde_json::json!({"active": desired["desired"]});
    for (caller, authorization, expected) in [
        ("nobody", None, 401),
        ("its affiliate's key", Some(own.as_str()), 403),
        ("a viewer", Some(viewer.as_str()), 403),
        ("an operator", Some(operator.as_str()), 200),
    ] {
        let mut request = http
            .put(format!("{gateway}/api/reports/version"))
            .json(&switch);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        answers.push(ApiAccess {
            request: "PUT /api/reports/version".into(),
            caller: caller.to_owned(),
            status: request.send().await?.status().as_u16(),
            expected,
        });
    }
    // The API server's audit log names the people who asked, and never the reports' account.
    if let Ok(path) = std::env::var("APISERVER_AUDIT_LOG") {
        let log = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let patches: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .filter(|event: &serde_json::Value| {
                event["verb"] == "patch"
                    && event["objectRef"]["resource"] == "reportversions"
                    && event["objectRef"]["name"] == cluster.report_version_name()
            })
            .collect();
        let by = |account: &str, code: u16| {
            let user = format!("system:serviceaccount:{}:{account}", cluster.namespace);
            u16::from(patches.iter().any(|e| {
                e["user"]["username"] == user.as_str() && e["responseStatus"]["code"] == code
            }))
        };
        for (caller, recorded) in [
            (
                "the operator's patch, allowed (200)",
                by("e2e-operator", 200),
            ),
            ("the viewer's patch, refused (403)", by("e2e-viewer", 403)),
        ] {
            answers.push(ApiAccess {
                request: "API server audit log".into(),
                caller: caller.to_owned(),
                status: recorded,
                expected: 1,
            });
        }
        answers.push(ApiAccess {
            request: "API server audit log".into(),
            caller: "patches by the reports' own account".to_owned(),
            status: u16::from(patches.iter().any(|e| {
                e["user"]["username"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&format!(":{}", cluster.name("reports"))))
            })),
            expected: 0,
        });
    }
    for (method, path, caller, authorization, expected) in cases {
        let mut request = http.request(method.parse()?, format!("{gateway}{path}"));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        if method == "PATCH" {
            request = request.json(&serde_json::json!({"motivo": "e2e security"}));
        }
        let status = request.send().await?.status().as_u16();
        // The operator's revert is allowed: what it meets depends on the charge's timing.
        let expected = if caller == "an operator" && method == "PATCH" && status == 200 {
            200
        } else {
            expected
        };
        answers.push(ApiAccess {
            request: format!("{method} {}", path.replace(&id, "{id}")),
            caller: caller.to_owned(),
            status,
            expected,
        });
    }
    Ok(answers)
}

/// What the operator's and the reports' ServiceAccounts may and may not do: each line is
/// (account, verb, resource[/name], subresource, namespace: "" the release's, "-" cluster
/// scope, else that one; expected answer).
fn rbac(cluster: &Cluster) -> anyhow::Result<Vec<Permission>> {
    const RV: &str = "reportversions.aeropartners.io";
    let rv_reports = format!("{RV}/{}", cluster.report_version_name());
    let rv_reports = rv_reports.as_str();
    let checks: &[(&str, &str, &str, &str, &str, bool)] = &[
        // The operator reconciles ReportVersions, reads the data services' Deployments, writes
        // the status and Events.
        ("operator", "get", RV, "", "", true),
        ("operator", "list", RV, "", "", true),
        ("operator", "watch", RV, "", "", true),
        ("operator", "get", RV, "status", "", true),
        ("operator", "patch", RV, "status", "", true),
        ("operator", "get", "deployments.apps", "", "", true),
        ("operator", "list", "deployments.apps", "", "", true),
        ("operator", "watch", "deployments.apps", "", "", true),
        ("operator", "create", "events.events.k8s.io", "", "", true),
        ("operator", "patch", "events.events.k8s.io", "", "", true),
        // …and nothing else: not the spec, not the Deployments, no secrets, no other namespace.
        ("operator", "patch", RV, "", "", false),
        ("operator", "update", RV, "", "", false),
        // It creates the release's ReportVersion when it is missing (RBAC cannot narrow a
        // create to one name).
        ("operator", "create", RV, "", "", true),
        ("operator", "delete", RV, "", "", false),
        ("operator", "create", "deployments.apps", "", "", false),
        ("operator", "patch", "deployments.apps", "", "", false),
        ("operator", "delete", "deployments.apps", "", "", false),
        ("operator", "patch", "deployments.apps", "scale", "", false),
        ("operator", "get", "secrets", "", "", false),
        ("operator", "list", "secrets", "", "", false),
        ("operator", "delete", "pods", "", "", false),
        ("operator", "create", "pods", "exec", "", false),
        (
            "operator",
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            "",
            "",
            false,
        ),
        ("operator", "create", "serviceaccounts", "token", "", false),
        ("operator", "list", RV, "", "default", false),
        ("operator", "list", "deployments.apps", "", "default", false),
        (
            "operator",
            "create",
            "customresourcedefinitions.apiextensions.k8s.io",
            "",
            "-",
            false,
        ),
        (
            "operator",
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            "",
            "-",
            false,
        ),
        ("operator", "create", "namespaces", "", "-", false),
        ("operator", "list", "nodes", "", "-", false),
        // The reports replicas follow their one ReportVersion; a switch patches it with the
        // caller's token (PUT /api/reports/version), never with theirs.
        ("reports", "get", rv_reports, "", "", true),
        ("reports", "list", rv_reports, "", "", true),
        ("reports", "watch", rv_reports, "", "", true),
        ("reports", "patch", rv_reports, "", "", false),
        (
            "reports",
            "create",
            "tokenreviews.authentication.k8s.io",
            "",
            "-",
            true,
        ),
        // …and nothing else: not another ReportVersion, not the status, not deleting it.
        ("reports", "list", RV, "", "", false),
        (
            "reports",
            "get",
            "reportversions.aeropartners.io/other",
            "",
            "",
            false,
        ),
        ("reports", "patch", rv_reports, "status", "", false),
        ("reports", "delete", rv_reports, "", "", false),
        ("reports", "create", RV, "", "", false),
        ("reports", "get", "secrets", "", "", false),
        ("reports", "list", "secrets", "", "", false),
        ("reports", "get", "configmaps", "", "", false),
        ("reports", "list", "pods", "", "", false),
        ("reports", "delete", "pods", "", "", false),
        ("reports", "get", "deployments.apps", "", "", false),
        ("reports", "create", "events.events.k8s.io", "", "", false),
        ("reports", "get", rv_reports, "", "default", false),
        (
            "reports",
            "create",
            "customresourcedefinitions.apiextensions.k8s.io",
            "",
            "-",
            false,
        ),
        ("reports", "create", "namespaces", "", "-", false),
        // payments asks the API server who calls (TokenReview) and whether they may
        // (SubjectAccessReview): system:auth-delegator, and nothing else.
        (
            "payments",
            "create",
            "tokenreviews.authentication.k8s.io",
            "",
            "-",
            true,
        ),
        (
            "payments",
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            "",
            "-",
            true,
        ),
        ("payments", "get", "secrets", "", "", false),
        ("payments", "patch", RV, "", "", false),
        (
            "payments",
            "create",
            "payments.aeropartners.io",
            "revert",
            "",
            false,
        ),
        ("payments", "list", "pods", "", "", false),
    ];
    let mut answers = Vec::new();
    for &(account, verb, resource, subresource, namespace, expected) in checks {
        let user = format!(
            "system:serviceaccount:{}:{}",
            cluster.namespace,
            cluster.name(account)
        );
        let mut args = vec!["auth", "can-i", verb, resource, "--as", user.as_str()];
        let namespace = match namespace {
            "" => cluster.namespace.as_str(),
            other => other,
        };
        if namespace != "-" {
            args.extend(["-n", namespace]);
        }
        let subresource_flag = format!("--subresource={subresource}");
        if !subresource.is_empty() {
            args.push(&subresource_flag);
        }
        let output = tokio::task::block_in_place(|| {
            std::process::Command::new("kubectl").args(&args).output()
        })
        .context("kubectl runs")?;
        let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let allowed = match answer.as_str() {
            "yes" => true,
            "no" => false,
            _ => anyhow::bail!(
                "kubectl {}: {answer} {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            ),
        };
        let mut request = format!("{verb} {resource}");
        if !subresource.is_empty() {
            request.push_str(&format!(" ({subresource})"));
        }
        request.push_str(&match namespace {
            "-" => " [cluster]".to_owned(),
            ns if ns == cluster.namespace => String::new(),
            ns => format!(" [in {ns}]"),
        });
        answers.push(Permission {
            account: account.to_owned(),
            request,
            expected,
            allowed,
        });
    }
    Ok(answers)
}

/// Every container of every pod of the release: each of its processes runs as a non-root
/// user (every field of the `Uid:` line of /proc/<pid>/status) on a root mount that is
/// read-only (its line for `/` in /proc/<pid>/mountinfo).
fn containers(cluster: &Cluster) -> anyhow::Result<Vec<ContainerCheck>> {
    let pods = cluster.json(&[
        "get",
        "pods",
        "-l",
        &format!("app.kubernetes.io/instance={}", cluster.release),
    ])?;
    let mut checks = Vec::new();
    for pod in pods["items"].as_array().context("a pod list")? {
        if !pod["metadata"]["deletionTimestamp"].is_null() || pod["status"]["phase"] != "Running" {
            continue;
        }
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        for status in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let id = status["containerID"].as_str().unwrap_or("");
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            let pids = crate::cluster::container_processes(uid, id);
            let mut uids = Vec::new();
            let (mut non_root, mut root_read_only) = (true, true);
            for pid in &pids {
                let process = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .with_context(|| format!("/proc/{pid}/status"))?;
                let line = process
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .context("a Uid line")?;
                let ids: Vec<&str> = line.split_whitespace().collect();
                non_root &= !ids.is_empty() && ids.iter().all(|id| *id != "0");
                uids.push(ids.join(" "));
                let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                    .with_context(|| format!("/proc/{pid}/mountinfo"))?;
                root_read_only &= root_mount_read_only(&mounts);
            }
            checks.push(ContainerCheck {
                pod: name.to_owned(),
                container: status["name"].as_str().unwrap_or("").to_owned(),
                processes: pids.len(),
                uids,
                root_read_only: root_read_only && !pids.is_empty(),
                non_root: non_root && !pids.is_empty(),
            });
        }
    }
    Ok(checks)
}

/// Whether the mount at `/` (the last one, if mounts are stacked there) in a mountinfo text is
/// read-only: its per-mount options (the sixth field) start with `ro`.
fn root_mount_read_only(mountinfo: &str) -> bool {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(4) == Some(&"/")).then(|| fields.get(5).copied().unwrap_or(""))
        })
        .next_back()
        .is_some_and(|options| options.split(',').any(|o| o == "ro"))
}

/// The targets a part missed, for the runner's exit status.
pub trait Targets {
    fn missed(&self) -> Vec<String>;
}

/// `what` when `ok` is false.
fn unless(ok: bool, what: String) -> Option<String> {
    (!ok).then_some(what)
}

impl Targets for Smoke {
    /// Every check of the smoke test is an error when it fails, so a report is a pass.
    fn missed(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Targets for Observability {
    fn missed(&self) -> Vec<String> {
        self.missing
            .iter()
            .map(|name| {
                format!("dashboards or alerting rules query {name}, which no /metrics serves")
            })
            .chain(unless(
                self.services == self.deployments,
                format!(
                    "{} Deployments but {} Services to scrape them through",
                    self.deployments, self.services
                ),
            ))
            .collect()
    }
}

impl Targets for Postman {
    fn missed(&self) -> Vec<String> {
        unless(
            self.passed,
            format!("the Postman collection failed ({})", self.status),
        )
        .into_iter()
        .collect()
    }
}

impl Targets for Scenario2 {
    fn missed(&self) -> Vec<String> {
        let i = &self.integrity;
        let mut missed: Vec<String> = [
            unless(
                self.availability_pct >= 99.99,
                format!(
                    "scenario #2 availability {:.3} % < 99.99 %",
                    self.availability_pct
                ),
            ),
            unless(
                i.writes_lost == 0 && i.events_lost == 0 && i.duplicated_effects == 0,
                format!(
                    "scenario #2: {} writes lost, {} events lost, {} duplicated effects",
                    i.writes_lost, i.events_lost, i.duplicated_effects
                ),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        missed.extend(self.faults.iter().filter_map(|fault| {
            unless(
                fault.recovered_ms < 120_000.0,
                format!("{}: {:.0} ms to Ready", fault.action, fault.recovered_ms),
            )
        }));
        missed
    }
}

impl Targets for scenario9::Report {
    fn missed(&self) -> Vec<String> {
        [
            unless(
                self.failed == 0 && self.mismatched == 0,
                format!(
                    "scenario #9: {} failed, {} bodies not in their version",
                    self.failed, self.mismatched
                ),
            ),
            unless(
                self.switches_not_propagated == 0,
                format!(
                    "scenario #9: {} switches not served by every pod",
                    self.switches_not_propagated
                ),
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl Targets for Degraded {
    fn missed(&self) -> Vec<String> {
        unless(
            self.reads.failed == 0 && self.reads.other_version == 0,
            format!(
                "while Degraded: {} reads failed, {} not in v1",
                self.reads.failed, self.reads.other_version
            ),
        )
        .into_iter()
        .collect()
    }
}

impl Targets for ChartUpgrade {
    fn missed(&self) -> Vec<String> {
        [
            unless(
                self.reads.failed == 0
                    && self.reads.other_version == 0
                    && self.payment_failures.is_empty(),
                format!(
                    "upgrade from chart {}: {} reads failed, {} in another version, {} payments failed",
                    self.previous_chart,
                    self.reads.failed,
                    self.reads.other_version,
                    self.payment_failures.len()
                ),
            ),
            unless(
                self.version_after == self.version_before,
                format!(
                    "the active version went from {} to {} across the upgrade",
                    self.version_before, self.version_after
                ),
            ),
            unless(
                self.crd_current,
                "the CRD served after the upgrade is not this chart's".to_owned(),
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl Targets for Operations {
    fn missed(&self) -> Vec<String> {
        let (operator, upgrade) = (
            &self.reads_during_operator_restart,
            &self.reads_during_upgrade,
        );
        [
            unless(
                operator.failed == 0 && operator.other_version == 0,
                format!(
                    "while the operator restarted: {} reads failed, {} in the new version too early",
                    operator.failed, operator.other_version
                ),
            ),
            unless(
                self.data_pods_kept == self.data_pods,
                format!(
                    "a change of the services' settings restarted {} of {} data-layer pods",
                    self.data_pods - self.data_pods_kept,
                    self.data_pods
                ),
            ),
            unless(
                self.pods_replaced_by_upgrade == self.pods_before_upgrade,
                format!(
                    "helm upgrade replaced {} of {} pods",
                    self.pods_replaced_by_upgrade, self.pods_before_upgrade
                ),
            ),
            unless(
                upgrade.failed == 0
                    && upgrade.other_version == 0
                    && self.payments_failed_during_upgrade == 0,
                format!(
                    "helm upgrade + rollback: {} reads failed, {} in another version, {} payments failed",
                    upgrade.failed, upgrade.other_version, self.payments_failed_during_upgrade
                ),
            ),
            unless(
                [
                    &self.version_after_upgrade,
                    &self.version_after_rollback,
                    &self.desired_after_rollback,
                ]
                .iter()
                .all(|v| **v == self.switched_to),
                format!(
                    "the switch to {} did not survive: active {} after the upgrade, {} after the rollback (desired {})",
                    self.switched_to,
                    self.version_after_upgrade,
                    self.version_after_rollback,
                    self.desired_after_rollback
                ),
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl Targets for Security {
    fn missed(&self) -> Vec<String> {
        let mut missed = Vec::new();
        for p in &self.network {
            if p.connected != p.expected_to_connect {
                missed.push(format!(
                    "NetworkPolicy: {} → {}: {} after {} attempt(s), expected {}",
                    p.from,
                    p.to,
                    p.outcome,
                    p.attempts,
                    if p.expected_to_connect {
                        "to connect"
                    } else {
                        "blocked"
                    }
                ));
            }
        }
        for p in &self.rbac {
            if p.allowed != p.expected {
                missed.push(format!(
                    "RBAC: {} can{} {}",
                    p.account,
                    if p.allowed { "" } else { "not" },
                    p.request
                ));
            }
        }
        for a in &self.api {
            if a.status != a.expected {
                missed.push(format!(
                    "API: {} by {} answered {}, expected {}",
                    a.request, a.caller, a.status, a.expected
                ));
            }
        }
        for c in &self.containers {
            if !(c.processes > 0 && c.non_root && c.root_read_only) {
                missed.push(format!(
                    "{}/{}: {} processes, uids [{}], root filesystem {}",
                    c.pod,
                    c.container,
                    c.processes,
                    c.uids.join("; "),
                    if c.root_read_only {
                        "read-only"
                    } else {
                        "writable (or not found)"
                    }
                ));
            }
        }
        if self.containers.is_empty() {
            missed.push("no running container of the release was checked".to_owned());
        }
        missed
    }
}

#[cfg(test)]
mod security_tests {
    use super::root_mount_read_only;

    #[test]
    fn the_root_mount_is_read_only_when_its_own_options_say_ro() {
        let ro = "1200 1100 0:63 / / ro,relatime master:1 - overlay overlay rw,lowerdir=/a\n\
                  1201 1200 0:64 / /proc rw,nosuid - proc proc rw\n";
        let rw = "1200 1100 0:63 / / rw,relatime - overlay overlay rw,lowerdir=/a\n\
                  1201 1200 0:64 / /tmp ro - tmpfs tmpfs ro\n";
        assert!(root_mount_read_only(ro));
        assert!(!root_mount_read_only(rw));
        assert!(!root_mount_read_only(""));
    }
}

#[cfg(test)]
mod observability_tests {
    use super::{metric_names, served_names};

    #[test]
    fn queried_names_are_the_tokens_of_ours_and_the_brokers() {
        let names = metric_names(
            r#"{"expr": "sum by (le) (rate(aeropartners_http_request_duration_seconds_bucket[5m])) / pulsar_msg_backlog{topic=~\".*-DLQ\"}"}"#,
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [
                "aeropartners_http_request_duration_seconds_bucket",
                "pulsar_msg_backlog"
            ]
        );
    }

    #[test]
    fn a_histogram_serves_its_bucket_sum_and_count() {
        let served = served_names(
            "# HELP aeropartners_x_seconds x\n# TYPE aeropartners_x_seconds histogram\n\
             aeropartners_x_seconds_bucket{le=\"1\"} 0\naeropartners_y_total 3\n",
        );
        for name in [
            "aeropartners_x_seconds_bucket",
            "aeropartners_x_seconds_sum",
            "aeropartners_x_seconds_count",
            "aeropartners_y_total",
        ] {
            assert!(served.contains(name), "{name}");
        }
        assert!(!served.contains("aeropartners_z_total"));
    }
}
