//! `make test` (and `make postman-test`): the Postman collection, run by newman against a
//! platform of its own that checks its callers as the chart does: `scripts/run.sh` (what
//! `make run` starts) with `AUTH_MODE=enforce` and operators authenticated by the test
//! kube-apiserver (`make k8s-up`), on a fresh database, topic prefix and free ports. The
//! collection calls with partner keys made for the run and an operator's token (the chart's
//! operations Role, testkit::operadores). A failing assertion fails the run; the JUnit report
//! is written to `target/postman/junit.xml` and the services' logs stay in
//! `target/postman/logs/`.
//!
//! The collection sends every credential it has (partner keys, the operator's token, the demo
//! affiliates' webhook secrets) with one access-log line per request on: afterwards no log may
//! contain any of them, nor the database password (issue 13).

use std::{path::PathBuf, process::Command};

use aeropartners_tests::{local_platform::LocalPlatform, postman::PostmanCredentials, secrets};
use anyhow::{Context, bail};
use clap::Parser;
use testkit::{acceso::Claves, operadores::Operadores};

#[derive(Debug, Parser)]
struct Args {
    /// The `aeropartners` binary to run.
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let logs = PathBuf::from("target/postman/logs");
    std::env::var("KUBECONFIG").context("KUBECONFIG: the test API server (make k8s-up)")?;
    let operadores = Operadores::crear("postman");
    let (platform, database) = LocalPlatform::start_on_fresh_database(
        &args.binary,
        &logs,
        &[
            ("AUTH_MODE", "enforce"),
            ("AUTH_KUBERNETES", "true"),
            ("AUTH_NAMESPACE", &operadores.namespace),
        ],
    )
    .await?;
    let credentials = PostmanCredentials::new("local");
    let pool = sqlx::PgPool::connect(&database.url).await?;
    let claves = Claves::new(&pool);
    let mut keys = Vec::new();
    for (variable, affiliate) in credentials.partner_keys() {
        keys.push((variable, claves.secreta(affiliate).await));
    }
    pool.close().await;
    let operator = operadores.token(Operadores::OPERACIONES);
    let status = Command::new("bash")
        .arg("scripts/postman.sh")
        .arg("run")
        .args(environment(&platform))
        .args(credentials.env_args(&keys, &operator))
        .status()
        .context("bash runs scripts/postman.sh")?;
    drop(platform);
    let database_url = database.url.clone();
    database.drop_database().await;
    if !status.success() {
        bail!("the Postman collection failed ({status}); services' logs in target/postman/logs/");
    }
    let mut credentials =
        secrets::affiliate_credentials(std::path::Path::new("config/afiliados.demo.yaml"))?;
    credentials.push(operator);
    credentials.extend(keys.into_iter().map(|(_, key)| {
        key.strip_prefix("Bearer ")
            .map(str::to_owned)
            .unwrap_or(key)
    }));
    // The demo database's password is its user's name, which every log names anyway.
    if let Some(password) = secrets::database_password(&database_url)
        && !database_url
            .replace(&format!(":{password}@"), "@")
            .contains(&password)
    {
        credentials.push(password);
    }
    let leaks = secrets::find_in_logs(&logs, &credentials)?;
    if !leaks.is_empty() {
        bail!("secrets found in the services' logs:\n{}", leaks.join("\n"));
    }
    println!(
        "secrets: none of the {} credentials sent (keys, token, demo secrets) is in the services' logs",
        credentials.len()
    );
    Ok(())
}

/// `--env-var` overrides pointing the collection's environment at this platform's ports.
fn environment(platform: &LocalPlatform) -> Vec<String> {
    [
        ("base_url", "gateway"),
        ("proxy_url", "campaigns-proxy"),
        ("collector_url", "event-collector-a"),
        ("data_v1_url", "data-service-v1"),
        ("data_v2_url", "data-service-v2"),
    ]
    .into_iter()
    .flat_map(|(variable, service)| {
        [
            "--env-var".to_owned(),
            format!("{variable}={}", platform.url(service)),
        ]
    })
    .collect()
}
