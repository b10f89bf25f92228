//! `make faults` (the whole matrix) and `make faults-short` (part of `make test`): see
//! `aeropartners_tests::faults`.

use std::time::Duration;

use aeropartners_tests::faults::{self, Fault};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// The short matrix of `make test` (one fault of each kind) instead of every fault.
    #[arg(long)]
    short: bool,
    /// Only these faults (repeatable); overrides --short.
    #[arg(long = "only", value_enum)]
    only: Vec<Fault>,
    /// Requests started per second through the gateway.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Seconds of steady load before each fault.
    #[arg(long, default_value_t = 8)]
    steady: u64,
    /// Seconds a fault may take to recover before it is reported as not recovered.
    #[arg(long, default_value_t = 120)]
    recovery_timeout: u64,
    /// The aeropartners binary.
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (faults, name) = if !args.only.is_empty() {
        (args.only.clone(), "faults-only")
    } else if args.short {
        (Fault::SHORT.to_vec(), "faults-short")
    } else {
        (Fault::ALL.to_vec(), "faults")
    };
    let config = faults::Config {
        binary: args.binary,
        faults,
        rate: args.rate,
        steady: Duration::from_secs(args.steady),
        recovery_timeout: Duration::from_secs(args.recovery_timeout),
        name: name.to_owned(),
    };
    let run = faults::run(&config);
    // Ctrl-C drops the run: its platform is stopped and a paused process continued.
    let report = tokio::select! {
        report = run => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    report.publish(name)?;
    anyhow::ensure!(
        report.passed(),
        "the fault matrix found acknowledged writes lost, effects applied twice, dead letters, abandoned writes or a fault that did not recover"
    );
    Ok(())
}
