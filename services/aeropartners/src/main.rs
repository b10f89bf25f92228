//! `aeropartners <service>`: the one binary (and one container image) of the platform.
//! Each subcommand is a thin shell around a bounded context's `run_*` function.

mod check;

use clap::{Parser, Subcommand};
use platform::{config::DatabaseConfig, messaging::dead_letter, shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "aeropartners",
    version,
    about = "Aeropartners affiliate-payments platform"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = telemetry::LogFormat::Json, global = true)]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Payments HTTP API (`/pagos`) and its outbox relay.
    Payments(payments::ApiConfig),
    /// Payments worker: charges pending payments through the gateway.
    PaymentsWorker(payments::WorkerConfig),
    /// Campaigns HTTP API (`/campaigns`), its outbox relay and its payment consumer.
    Campaigns(campaigns::Config),
    /// Failover proxy in front of the campaigns replicas (`/api/campaigns`).
    CampaignsProxy(campaigns_proxy::Config),
    /// The API principal: routes every service's prefix, merges /openapi.json.
    Gateway(gateway::Config),
    /// Reports (`/api/reports`, `/reporting`) on port 8020; `reports rebuild` rebuilds the
    /// read model from its stored events.
    Reports(reports::Args),
    /// Event collector BFF (`/event-collector`) on port 8090: partners' tracking events.
    EventCollector(event_collector::Config),
    /// Data service v1 or v2 (`--version`): the upstream of legacy reporting.
    DataService(data_service::Config),
    /// The ReportVersion operator (needs a kubeconfig or an in-cluster service account).
    Operator(operator::Config),
    /// Apply every context's migrations and exit (a Kubernetes Job / Helm hook).
    Migrate(DatabaseConfig),
    /// Partner API keys: create (shown once), list, revoke.
    Claves(access::cli::ClavesArgs),
    /// The audit trail of privileged actions, newest first.
    Auditoria(access::cli::AuditoriaArgs),
    /// Dead letters: list what waits in the `-DLQ` topics, replay it to its subscription.
    Dlq(dead_letter::cli::DlqArgs),
    /// Checks a running release (what the chart's `helm test` runs): readiness, a payment
    /// round trip, the served report version.
    Check(check::CheckArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_tracing(cli.log_format);
    let shutdown = shutdown::on_signal();
    let result = match cli.command {
        Command::Payments(config) => payments::run_api(config, shutdown).await,
        Command::PaymentsWorker(config) => payments::run_worker(config, shutdown).await,
        Command::Campaigns(config) => campaigns::run(config, shutdown).await,
        Command::CampaignsProxy(config) => campaigns_proxy::run(config, shutdown).await,
        Command::Gateway(config) => gateway::run(config, shutdown).await,
        Command::Operator(config) => operator::run(config, shutdown).await,
        Command::DataService(config) => data_service::run(config, shutdown).await,
        Command::Reports(args) => reports::run(args, shutdown).await,
        Command::EventCollector(config) => event_collector::run(config, shutdown).await,
        Command::Check(args) => check::run(args).await,
        Command::Claves(args) => access::cli::claves(args).await.map(|answer| {
            println!("{answer}");
        }),
        Command::Auditoria(args) => access::cli::auditoria(args).await.map(|answer| {
            println!("{answer}");
        }),
        Command::Dlq(args) => dead_letter::cli::run(args)
            .await
            .map(|report| {
                println!("{report}");
            })
            .map_err(anyhow::Error::from),
        Command::Migrate(mut config) => {
            config.migrate_on_start = true;
            async {
                payments::database(&config).await?;
                campaigns::database(&config).await?;
                reports::database(&config).await?;
                event_collector::database(&config).await?;
                for version in [data_service::Version::V1, data_service::Version::V2] {
                    data_service::database(&config, version).await?;
                }
                Ok(())
            }
            .await
        }
    };
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "exiting with an error");
    }
    result
}
