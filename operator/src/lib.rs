//! The `ReportVersion` custom resource (API.md §8): which reporting version the reports
//! replicas serve. The operator switches `status.activeVersion` only once the target version can
//! be served: its data service and the reports Deployment have ready replicas.

pub mod controller;
pub mod crd;
pub mod decide;
pub mod ensure;

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
    /// The data service Deployment of each version; `{version}` stands for `v1` or `v2`.
    #[arg(
        long,
        env = "DATA_SERVICE_DEPLOYMENT",
        default_value = "data-service-{version}"
    )]
    pub data_service_deployment: String,
    /// Look after this ReportVersion only (in WATCH_NAMESPACE), creating it when it is missing;
    /// every ReportVersion, none created, when empty.
    #[arg(long, env = "REPORT_VERSION_NAME", default_value = "")]
    pub report_version: String,
    /// `spec.version` of a ReportVersion the operator creates (an existing one keeps its own).
    #[arg(long, env = "REPORT_VERSION_INITIAL", default_value = "v1")]
    pub initial_version: crd::Version,
    /// The Deployment that owns a ReportVersion the operator creates (its own, so that
    /// uninstalling the release removes it); none when empty.
    #[arg(long, env = "OWNER_DEPLOYMENT", default_value = "")]
    pub owner_deployment: String,
}

impl Config {
    fn settings(&self) -> controller::Settings {
        let namespace = (!self.namespace.is_empty()).then_some(self.namespace.as_str());
        controller::Settings {
            reports_deployment: self.reports_deployment.clone(),
            data_service_deployment: self.data_service_deployment.clone(),
            report_version: (!self.report_version.is_empty()).then(|| self.report_version.clone()),
            ..controller::Settings::new(namespace, self.progress_deadline)
        }
    }

    /// The ReportVersion to create when missing: a named one in a known namespace.
    fn managed(&self) -> Option<ensure::Managed> {
        (!self.report_version.is_empty() && !self.namespace.is_empty()).then(|| ensure::Managed {
            namespace: self.namespace.clone(),
            name: self.report_version.clone(),
            initial: self.initial_version,
            owner: (!self.owner_deployment.is_empty()).then(|| self.owner_deployment.clone()),
        })
    }
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
    if let Some(managed) = config.managed() {
        ensure::ensure(&client, &managed).await?;
    }
    let controller = tokio::spawn(controller::run(
        client.clone(),
        config.settings(),
        shutdown.clone(),
    ));
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
