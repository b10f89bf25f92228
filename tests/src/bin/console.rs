//! `make test` (and `make console-test`): the operations console in a real browser, against a
//! platform of its own that checks its callers as the chart does: `scripts/run.sh` (what
//! `make run` starts) with `AUTH_MODE=enforce` and operators authenticated by the test
//! kube-apiserver (`make k8s-up`), on a fresh database, topic prefix and free ports.
//!
//! The runner binds the operators as a release's users are (testkit::operadores: the chart's
//! Roles; alice operates, bob only reads), makes a partner key, and hands their tokens to
//! `scripts/console.sh test`, which drives Debian's chromium with playwright-core; a failing
//! step fails the run. Screenshots of each view go to `target/console/`, the services' logs
//! stay in `target/console/logs/`.

use std::{path::PathBuf, process::Command};

use aeropartners_tests::local_platform::LocalPlatform;
use anyhow::{Context, bail};
use clap::Parser;
use testkit::{acceso::Claves, operadores::Operadores};

#[derive(Debug, Parser)]
struct Args {
    /// The `aeropartners` binary to run (built after `make console`, so it embeds the page).
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: PathBuf,
}

/// The affiliate the console's tests act for with a partner key.
const AFILIADO: &str = "AFILIADO_CONSOLA";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::var("KUBECONFIG").context("KUBECONFIG: the test API server (make k8s-up)")?;
    let operadores = Operadores::crear("console");
    let (platform, database) = LocalPlatform::start_on_fresh_database(
        &args.binary,
        &PathBuf::from("target/console/logs"),
        &[
            ("AUTH_MODE", "enforce"),
            ("AUTH_KUBERNETES", "true"),
            ("AUTH_NAMESPACE", &operadores.namespace),
            // Every payment succeeds, so the operator always has one to revert.
            ("GATEWAY_FAILURE_RATE", "0"),
        ],
    )
    .await?;
    let pool = sqlx::PgPool::connect(&database.url).await?;
    let key = Claves::new(&pool).secreta(AFILIADO).await;
    pool.close().await;
    let status = Command::new("bash")
        .args(["scripts/console.sh", "test"])
        .env("CONSOLE_URL", platform.url("gateway"))
        .env("DATABASE_URL", &database.url)
        .env("SCREENSHOT_DIR", "target/console")
        .env("CONSOLE_AFFILIATE", AFILIADO)
        .env(
            "CONSOLE_PARTNER_KEY",
            key.strip_prefix("Bearer ").unwrap_or(&key),
        )
        .env(
            "CONSOLE_OPERATOR_TOKEN",
            operadores.token(Operadores::OPERACIONES),
        )
        .env("CONSOLE_VIEWER_TOKEN", operadores.token(Operadores::LECTOR))
        .env("CONSOLE_VIEWER_NAME", operadores.nombre(Operadores::LECTOR))
        .env(
            "CONSOLE_OPERATOR_NAME",
            operadores.nombre(Operadores::OPERACIONES),
        )
        .status()
        .context("bash runs scripts/console.sh")?;
    drop(platform);
    database.drop_database().await;
    if !status.success() {
        bail!(
            "the console's browser tests failed ({status}); screenshots in target/console/, services' logs in target/console/logs/"
        );
    }
    Ok(())
}
