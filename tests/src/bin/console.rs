//! `make test` (and `make console-test`): the operations console in a real browser, against a
//! platform of its own: `scripts/run.sh` (what `make run` starts) on a fresh database, topic
//! prefix and free ports. `scripts/console.sh test` drives Debian's chromium with
//! playwright-core; a failing step fails the run. Screenshots of each view go to
//! `target/console/`, the services' logs stay in `target/console/logs/`.

use std::{path::PathBuf, process::Command};

use aeropartners_tests::local_platform::LocalPlatform;
use anyhow::{Context, bail};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// The `aeropartners` binary to run (built after `make console`, so it embeds the page).
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::var("DATABASE_URL").context("DATABASE_URL (make sets it)")?;
    let database = testkit::TempDatabase::create().await;
    let platform = LocalPlatform::start(
        &args.binary,
        &database.url,
        &PathBuf::from("target/console/logs"),
        // The simulated payment gateway answers fast, so the page sees a payment's final state
        // within the test's patience whatever the machine's load.
        &[
            ("GATEWAY_LATENCY_MIN", "20ms"),
            ("GATEWAY_LATENCY_MAX", "300ms"),
        ],
    )
    .await?;
    let status = Command::new("bash")
        .args(["scripts/console.sh", "test"])
        .env("CONSOLE_URL", platform.url("gateway"))
        .env("DATABASE_URL", &database.url)
        .env("SCREENSHOT_DIR", "target/console")
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
