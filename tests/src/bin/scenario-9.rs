//! `make scenario-9`: the full run of quality scenario #9 (see `aeropartners_tests::scenario9`).

use std::time::Duration;

use aeropartners_tests::scenario9::{Config, Mode, run};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Where the version comes from: `database` (PUT) or `kubernetes` (kubectl patch rv, the
    /// operator; needs KUBECONFIG).
    #[arg(long, value_enum, default_value = "database")]
    mode: Mode,
    /// Report requests per second through the gateway.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// One legacy POST /reporting/report per this many report requests.
    #[arg(long, default_value_t = 10)]
    legacy_every: u64,
    /// Payments per second while the reports are read.
    #[arg(long, default_value_t = 20.0)]
    payments_rate: f64,
    /// Number of switches v1 ↔ v2.
    #[arg(long, default_value_t = 100)]
    switches: usize,
    /// Seconds of load before the first switch, and after the last one.
    #[arg(long, default_value_t = 10)]
    steady: u64,
    /// Milliseconds between a switch being served everywhere and the next one.
    #[arg(long, default_value_t = 100)]
    pause_ms: u64,
    /// The aeropartners binary.
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = run(&Config {
        binary: args.binary,
        mode: args.mode,
        rate: args.rate,
        legacy_every: args.legacy_every,
        payments_rate: args.payments_rate,
        warmup: Duration::from_secs(args.steady),
        switches: args.switches,
        pause: Duration::from_millis(args.pause_ms),
        cooldown: Duration::from_secs(args.steady),
    })
    .await?;
    report.publish()
}
