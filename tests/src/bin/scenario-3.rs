//! `make scenario-3`: the full run of quality scenario #3 (see `aeropartners_tests::scenario3`).

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Distinct payments.
    #[arg(long, default_value_t = 2000)]
    payments: usize,
    /// Distinct tracking events.
    #[arg(long, default_value_t = 8000)]
    tracking: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, default_value_t = 5)]
    campaigns: usize,
    #[arg(long, default_value_t = 3)]
    seed: u64,
    /// The aeropartners binary.
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = aeropartners_tests::scenario3::run(&aeropartners_tests::scenario3::Config {
        binary: args.binary,
        payments: args.payments,
        tracking: args.tracking,
        clients: args.clients,
        campaigns: args.campaigns,
        seed: args.seed,
    })
    .await?;
    report.publish()?;
    anyhow::ensure!(
        report.exactly_once(),
        "scenario #3 found effects lost or applied twice"
    );
    Ok(())
}
