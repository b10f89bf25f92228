//! `make fuzz` (part of `make test`): every API fuzzed from its own OpenAPI document by
//! schemathesis (scripts/fuzz.sh), against a platform of its own (`scripts/run.sh` on a fresh
//! database, topic prefix and free ports): each service's document at that service, the
//! collector also as an API-key partner and as a signing webhook sender, and the gateway's
//! merged document through the gateway. Prints per document the operations, the cases
//! generated, the failures and the time; fails when any check failed. Reports in target/fuzz/.
//! Then the abuse cases of `aeropartners_tests::abuse` against the same platform.

use std::{path::PathBuf, process::Command, time::Instant};

use aeropartners_tests::{abuse, local_platform::LocalPlatform};
use anyhow::{Context, bail};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// The `aeropartners` binary to run.
    #[arg(long, default_value = "target/debug/aeropartners")]
    binary: PathBuf,
    /// Only these targets (payments, campaigns, reports, collector, collector-api,
    /// collector-webhook, campaigns-proxy, data-service-v1, data-service-v2, gateway, and
    /// `abuse` for the abuse cases); repeatable.
    #[arg(long)]
    only: Vec<String>,
}

/// One schemathesis run: a name, the service whose document and base URL it uses (the path
/// under which the document's paths are served), extra arguments and environment.
struct Target {
    name: &'static str,
    service: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

const TARGETS: [Target; 10] = [
    Target {
        name: "payments",
        service: "payments",
        args: &[],
        env: &[],
    },
    Target {
        name: "campaigns",
        service: "campaigns-primary",
        args: &[],
        env: &[],
    },
    Target {
        name: "reports",
        service: "reports-a",
        args: &[],
        env: &[],
    },
    Target {
        name: "collector",
        service: "event-collector-a",
        args: &[],
        env: &[],
    },
    Target {
        name: "collector-api",
        service: "event-collector-a",
        args: &["-H", "X-API-Key: sk_test_123456789"],
        env: &[("FUZZ_COLLECTOR_AUTH", "api")],
    },
    Target {
        name: "collector-webhook",
        service: "event-collector-a",
        args: &[],
        env: &[("FUZZ_COLLECTOR_AUTH", "webhook")],
    },
    Target {
        name: "campaigns-proxy",
        service: "campaigns-proxy",
        args: &[],
        env: &[],
    },
    Target {
        name: "data-service-v1",
        service: "data-service-v1",
        args: &[],
        env: &[],
    },
    Target {
        name: "data-service-v2",
        service: "data-service-v2",
        args: &[],
        env: &[],
    },
    Target {
        name: "gateway",
        service: "gateway",
        args: &[],
        env: &[],
    },
];

struct Outcome {
    name: &'static str,
    operations: String,
    cases: String,
    failures: String,
    seconds: f64,
    passed: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let status = Command::new("bash")
        .args(["scripts/fuzz.sh", "install"])
        .status()
        .context("bash runs scripts/fuzz.sh")?;
    anyhow::ensure!(status.success(), "installing schemathesis failed");
    let (platform, database) = LocalPlatform::start_on_fresh_database(
        &args.binary,
        &PathBuf::from("target/fuzz/logs"),
        &[],
    )
    .await?;
    let mut outcomes = Vec::new();
    for target in TARGETS
        .iter()
        .filter(|t| args.only.is_empty() || args.only.iter().any(|o| o == t.name))
    {
        let base = platform.url(target.service);
        let report_dir = PathBuf::from("target/fuzz").join(target.name);
        let _ = std::fs::remove_dir_all(&report_dir);
        println!("\n=== fuzzing {} ({base}/openapi.json)", target.name);
        let started = Instant::now();
        let output = Command::new("bash")
            .args(["scripts/fuzz.sh", "run", target.name])
            .arg(format!("{base}/openapi.json"))
            .arg(&base)
            .args(target.args)
            .envs(target.env.iter().copied())
            .output()
            .context("bash runs scripts/fuzz.sh")?;
        let seconds = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&output.stdout);
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        outcomes.push(Outcome {
            name: target.name,
            operations: line_after(&stdout, "Tested:").unwrap_or_default(),
            cases: line_after(&stdout, "Test cases:").unwrap_or_default(),
            failures: failures(&stdout),
            seconds,
            passed: output.status.success(),
        });
    }
    let abuse = if args.only.is_empty() || args.only.iter().any(|o| o == "abuse") {
        let outcomes = abuse::run(&platform).await?;
        std::fs::create_dir_all("target/fuzz")?;
        std::fs::write(
            "target/fuzz/abuse.json",
            serde_json::to_string_pretty(&outcomes)?,
        )?;
        outcomes
    } else {
        Vec::new()
    };
    drop(platform);
    database.drop_database().await;

    println!(
        "\nFuzzing every API from its OpenAPI document (schemathesis; reports in target/fuzz/)"
    );
    println!(
        "  {:<18} {:>10} {:>8}  {:<40} failures",
        "document", "operations", "seconds", "cases"
    );
    for o in &outcomes {
        println!(
            "  {:<18} {:>10} {:>8.1}  {:<40} {}",
            o.name, o.operations, o.seconds, o.cases, o.failures
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.name)
        .collect();
    if !failed.is_empty() {
        bail!("schemathesis found failures in: {}", failed.join(", "));
    }
    let abused: Vec<&str> = abuse.iter().filter(|o| !o.passed).map(|o| o.case).collect();
    if !abused.is_empty() {
        bail!("abuse cases failed: {}", abused.join(", "));
    }
    Ok(())
}

/// The trimmed text after `label` on its line, or on the next line when it ends there.
fn line_after(output: &str, label: &str) -> Option<String> {
    let mut lines = output.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.trim().strip_prefix(label) {
            let rest = rest.trim();
            return Some(if rest.is_empty() {
                lines.next().unwrap_or_default().trim().to_owned()
            } else {
                rest.to_owned()
            });
        }
    }
    None
}

/// The failure lines of schemathesis' summary (`ST103 Undocumented status code: 2`), joined.
fn failures(output: &str) -> String {
    let found: Vec<String> = output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("❌ ST"))
        .map(|l| l.trim_start_matches("❌ ").to_owned())
        .collect();
    if found.is_empty() {
        "none".to_owned()
    } else {
        found.join("; ")
    }
}
