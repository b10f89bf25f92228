//! The `ReportVersion` custom resource (API.md §8): which reporting version the reports
//! replicas serve. The operator switches `status.activeVersion` only once the target version can
//! be served: its data service and the reports Deployment have ready replicas.

pub mod controller;
pub mod crd;
pub mod decide;

use std::{sync::Arc, time::Duration};

use platform::{
    config::HttpConfig,
    http::{self, DependencyStatus, Readiness},
};
use tokio_util::sync::CancellationToken;

/// `aeropartners operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub http: HttpConfig,
    /// Namespace to watch; every namespace when empty.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    pub namespace: String,
    /// How long a switch waits for its target's data service before the resource is Degraded.
    #[arg(long, env = "PROGRESS_DEADLINE", default_value = "2m", value_parser = platform::config::parse_duration)]
    pub progress_deadline: Duration,
    /// The Deployment whose replicas serve the reports; a version is promoted only once it has
    /// ready replicas too.
    #[arg(long, env = "REPORTS_DEPLOYMENT", default_value = "reports")]
    pub reports_deployment: String,
}

struct ApiServerReadiness(kube::Client);

#[async_trait::async_trait]
impl Readiness for ApiServerReadiness {
    async fn check(&self) -> Vec<DependencyStatus> {
        let result = self
            .0
            .apiserver_version()
            .await
            .map(|v| format!("Kubernetes {}", v.git_version));
        vec![DependencyStatus::from_result(
            "kube-apiserver",
            true,
            result,
        )]
    }
}

/// Runs the controller and its `/health`, `/ready`, `/metrics` until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let namespace = (!config.namespace.is_empty()).then_some(config.namespace.clone());
    let controller = tokio::spawn({
        let (client, shutdown) = (client.clone(), shutdown.clone());
        async move {
            controller::run(
                client,
                namespace.as_deref(),
                config.progress_deadline,
                config.reports_deployment.clone(),
                shutdown,
            )
            .await;
        }
    });
    let (router, openapi) = utoipa_axum::router::OpenApiRouter::<()>::new().split_for_parts();
    let app = http::app(
        "operator",
        router,
        openapi,
        Arc::new(ApiServerReadiness(client)),
        &config.http,
    );
    let listener = tokio::net::TcpListener::bind(config.http.listen).await?;
    http::serve(listener, app, shutdown.clone(), &config.http).await?;
    shutdown.cancel();
    let _ = controller.await;
    Ok(())
}
