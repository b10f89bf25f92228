//! `make e2e` (run by scripts/e2e.sh inside the node's network namespace, after `helm
//! install`): the smoke test and the scenarios on the installed chart. Prints every figure,
//! writes them under `target/scenarios/e2e-*.json`, and exits non-zero if any target is missed.

use clap::Parser;

use aeropartners_tests::{cluster::Cluster, e2e};

#[derive(Debug, Parser)]
struct Args {
    /// The namespace of the release.
    #[arg(long, default_value = "aeropartners")]
    namespace: String,
    #[arg(long, default_value = "aeropartners")]
    release: String,
    #[arg(long, default_value = "charts/aeropartners")]
    chart: std::path::PathBuf,
    /// Requests per second of scenario #2's mixed load.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Version switches of scenario #9.
    #[arg(long, default_value_t = 20)]
    switches: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = Cluster {
        namespace: args.namespace,
        release: args.release,
        chart: args.chart,
    };
    e2e::smoke(&cluster).await?;
    let scenario2 = e2e::scenario_2(&cluster, args.rate).await?;
    let scenario9 = e2e::scenario_9(&cluster, args.switches).await?;
    let degraded = e2e::switch_without_data_service(&cluster).await?;
    let operations = e2e::operations(&cluster).await?;
    let problems = e2e::verdict(&scenario2, &scenario9, &degraded, &operations);
    if problems.is_empty() {
        println!("\ne2e: every target met");
        Ok(())
    } else {
        for problem in &problems {
            eprintln!("e2e: {problem}");
        }
        anyhow::bail!("{} target(s) missed", problems.len())
    }
}
