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
    let (platform, database) =
        LocalPlatform::start_on_fresh_database(&args.binary, &PathBuf::from("target/console/logs"))
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
