//! `make scenario-2`: the full run of quality scenario #2 (see `aeropartners_tests::scenario2`).

use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Requests per second through the proxy.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Second at which the primary is killed.
    #[arg(long, default_value_t = 20)]
    kill_at: u64,
    /// Seconds the primary stays down.
    #[arg(long, default_value_t = 10)]
    down_for: u64,
    /// The aeropartners binary.
    #[arg(long, default_value = "target/release/aeropartners")]
    binary: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = aeropartners_tests::scenario2::run(&aeropartners_tests::scenario2::Config {
        binary: args.binary,
        rate: args.rate,
        duration: Duration::from_secs(args.seconds),
        kill_at: Duration::from_secs(args.kill_at),
        down_for: Duration::from_secs(args.down_for),
    })
    .await?;
    report.publish()
}
