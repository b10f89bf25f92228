//! `aeropartners check …`: what the chart's `helm test` pods run against a release (the image
//! has no shell and no curl, by design). Each check says what it saw and exits non-zero when
//! the release does not do what it should.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(subcommand)]
    check: Check,
    /// How long a check keeps trying before it fails.
    #[arg(long, global = true, default_value = "120s", value_parser = platform::config::parse_duration)]
    within: Duration,
}

#[derive(Debug, clap::Subcommand)]
enum Check {
    /// Every URL answers its `/ready` with 200 (a service, the gateway, the operator).
    Ready {
        /// Base URLs, e.g. http://aeropartners:8000.
        #[arg(required = true)]
        urls: Vec<String>,
    },
    /// A payment through the gateway reaches a final state (EXITOSO or FALLIDO): the API, the
    /// outbox, the broker and the worker all work. It pays the affiliate `HELM_TEST` with a
    /// restricted key made for the check in the key store, and revoked after it.
    Payment {
        #[arg(long)]
        gateway: String,
        #[command(flatten)]
        database: platform::config::DatabaseConfig,
    },
    /// The gateway serves a confirmed report version.
    ReportVersion {
        #[arg(long)]
        gateway: String,
    },
}

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = Instant::now() + args.within;
    match args.check {
        Check::Ready { urls } => {
            for url in urls {
                let ready = format!("{}/ready", url.trim_end_matches('/'));
                let body = until(deadline, &ready, || get_json(&client, &ready)).await?;
                println!(
                    "ready: {ready} {}",
                    body["status"].as_str().unwrap_or("200")
                );
            }
        }
        Check::Payment { gateway, database } => {
            let pool = platform::db::connect(&database, access::almacen::SCHEMA).await?;
            let almacen = access::AlmacenDeClaves::new(pool);
            let (clave, registro) = almacen
                .crear(access::NuevaClave {
                    id_afiliado: "HELM_TEST".into(),
                    tipo: access::domain::TipoClave::Rk,
                    alcances: [
                        access::Alcance::PagosEscritura,
                        access::Alcance::PagosLectura,
                    ]
                    .into(),
                    descripcion: "helm test".into(),
                    expira: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
                    creada_por: "helm-test".into(),
                })
                .await?;
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", clave.revelar()).parse()?,
            );
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .default_headers(headers)
                .build()?;
            let checked = payment(&client, gateway.trim_end_matches('/'), deadline).await;
            almacen.revocar(&registro.id_clave, "helm-test").await?;
            checked?
        }
        Check::ReportVersion { gateway } => {
            let url = format!("{}/api/reports/version", gateway.trim_end_matches('/'));
            let version = until(deadline, &url, || get_json(&client, &url)).await?;
            let active = version["active"].as_str().context("no active version")?;
            ensure!(
                matches!(active, "v1" | "v2"),
                "active version {active:?} is neither v1 nor v2"
            );
            println!(
                "report version: active {active}, desired {}, source {}",
                version["desired"], version["source"]
            );
        }
    }
    Ok(())
}

async fn payment(client: &reqwest::Client, gateway: &str, deadline: Instant) -> anyhow::Result<()> {
    let reference = format!("helm-test-{}", uuid::Uuid::new_v4());
    let body = json!({
        "id_afiliado": "HELM_TEST",
        "monto": 1.0,
        "moneda": "USD",
        "referencia_pago": reference,
    });
    let url = format!("{gateway}/pagos/");
    // Retried under the same reference: a retry that reaches a payment already stored is
    // answered with that payment, never a second one.
    let created = until(deadline, &url, || async {
        let response = client.post(&url).json(&body).send().await?;
        let status = response.status();
        let payload: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "POST {url}: {status} {payload}");
        Ok(payload)
    })
    .await?;
    let id = created["id_pago"]
        .as_str()
        .context("no id_pago")?
        .to_owned();
    let started = Instant::now();
    let payment_url = format!("{gateway}/pagos/{id}");
    let done = until(deadline, &payment_url, || async {
        let payment = get_json(client, &payment_url).await?;
        let state = payment["estado"].as_str().unwrap_or_default();
        ensure!(
            matches!(state, "EXITOSO" | "FALLIDO"),
            "payment {id} is still {state}"
        );
        Ok(payment)
    })
    .await?;
    println!(
        "payment {id}: {} after {:.1} s",
        done["estado"].as_str().unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let response = client.get(url).send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("GET {url}: {status} {body}");
    }
    Ok(body)
}

/// Tries `attempt` every second until it succeeds or `deadline` passes; the last error says
/// why it failed. Each new reason to wait is printed once (a payment PENDIENTE, then
/// PROCESANDO), not every second.
async fn until<T, F, Fut>(deadline: Instant, what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut last = String::new();
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context(format!("{what}: gave up")));
            }
            Err(error) => {
                let reason = format!("{error:#}");
                if reason != last {
                    println!("waiting: {reason}");
                    last = reason;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
