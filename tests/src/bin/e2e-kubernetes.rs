//! `make e2e` (run by scripts/e2e.sh inside the node's network namespace, after `helm
//! install`): the smoke test and the scenarios on the installed chart. Prints every figure,
//! writes them under `target/scenarios/e2e-*.json`, and exits non-zero if any target is missed.

use clap::{Parser, ValueEnum};

use aeropartners_tests::{
    cluster::Cluster,
    e2e::{self, Targets},
};

/// The parts, in the order they run (each leaves the release as the next one expects it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Smoke,
    Postman,
    Observability,
    Security,
    Scenario2,
    Scenario9,
    Degraded,
    Operations,
    Upgrade,
}

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
    /// The chart at the previous commit of charts/ (scripts/e2e.sh extracts it): the release
    /// goes to it and back under load. Without it that part does not run.
    #[arg(long)]
    previous_chart: Option<std::path::PathBuf>,
    /// Run only these parts (repeatable); all of them by default.
    #[arg(long, value_enum)]
    only: Vec<Part>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = Cluster {
        namespace: args.namespace,
        release: args.release,
        chart: args.chart,
    };
    let runs = |part: Part| args.only.is_empty() || args.only.contains(&part);
    let mut missed = Vec::new();
    // The chart ships no webhook secret: set one up as an installer would (docs/security.md).
    let webhook_secret = if runs(Part::Smoke) || runs(Part::Postman) {
        e2e::webhook_partner(&cluster)?
    } else {
        String::new()
    };
    if runs(Part::Smoke) {
        missed.extend(e2e::smoke(&cluster, &webhook_secret).await?.missed());
    }
    if runs(Part::Postman) {
        missed.extend(e2e::postman(&cluster, &webhook_secret)?.missed());
    }
    // Before the scenarios restart pods (and their counters), right after the Postman traffic.
    if runs(Part::Observability) {
        missed.extend(e2e::observability(&cluster).await?.missed());
    }
    // While every pod of the release is the one `helm install` made and Ready.
    if runs(Part::Security) {
        missed.extend(e2e::security(&cluster).await?.missed());
    }
    if runs(Part::Scenario2) {
        missed.extend(e2e::scenario_2(&cluster, args.rate).await?.missed());
    }
    if runs(Part::Scenario9) {
        missed.extend(e2e::scenario_9(&cluster, args.switches).await?.missed());
    }
    if runs(Part::Degraded) {
        missed.extend(e2e::switch_without_data_service(&cluster).await?.missed());
    }
    if runs(Part::Operations) {
        missed.extend(e2e::operations(&cluster).await?.missed());
    }
    if runs(Part::Upgrade) {
        match &args.previous_chart {
            Some(previous) => missed.extend(
                e2e::upgrade_from_previous(&cluster, previous)
                    .await?
                    .missed(),
            ),
            None => println!("\nNo previous chart given (--previous-chart): no upgrade from it."),
        }
    }
    if missed.is_empty() {
        println!("\ne2e: every target met");
        Ok(())
    } else {
        for problem in &missed {
            eprintln!("e2e: {problem}");
        }
        anyhow::bail!("{} target(s) missed", missed.len())
    }
}
