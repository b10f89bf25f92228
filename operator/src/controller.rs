//! The controller: watches `ReportVersion`s, the data-service Deployments and the reports
//! Deployment, asks
//! [`decide`](crate::decide::decide) what to do, writes the status with server-side apply under
//! one field manager, records Events, and requeues with per-object backoff on errors.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use tokio_util::sync::CancellationToken;

use crate::{
    crd::{ReportVersion, Version},
    decide::{Observed, decide},
};

/// The one field manager the operator writes status with.
pub const FIELD_MANAGER: &str = "aeropartners-operator";
/// Label every data-service Deployment carries (its value is the version); the operator
/// watches only Deployments that have it.
pub const DATA_SERVICE_SELECTOR: &str = "aeropartners.io/data-service";
/// Label of the Deployment that serves the reports (its replicas follow the active version).
pub const REPORTS_SELECTOR: &str = "aeropartners.io/reports";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("ReportVersion {0} has no namespace")]
    NotNamespaced(String),
}

static RECONCILES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    platform::telemetry::counter_vec(
        "operator_reconciles_total",
        "Reconciliations by outcome",
        &["outcome"],
    )
});
static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    platform::telemetry::histogram_vec(
        "operator_reconcile_duration_seconds",
        "Time one reconciliation took",
        &["outcome"],
    )
});

static DEGRADED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    platform::telemetry::register(
        IntGaugeVec::new(
            prometheus::Opts::new(
                "operator_report_version_degraded",
                "1 while a ReportVersion is Degraded (its switch waited past the deadline), else 0",
            ),
            &["namespace", "name"],
        )
        .expect("valid metric"),
    )
});

/// What one operator looks after: which ReportVersions, and the Deployments beside them whose
/// readiness decides a switch. The chart prefixes every object with the release's name, so the
/// names come from its values rather than from constants.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace to watch; every namespace when `None`.
    pub namespace: Option<String>,
    /// How long a switch may wait for its target before the resource is `Degraded`.
    pub progress_deadline: Duration,
    /// The Deployment (beside each ReportVersion) whose replicas serve the reports.
    pub reports_deployment: String,
    /// The data service Deployment of a version: `{version}` stands for `v1` or `v2`.
    pub data_service_deployment: String,
    /// Only this ReportVersion when set (two releases may share a namespace, each with its own
    /// operator); every one in the namespace otherwise.
    pub report_version: Option<String>,
}

impl Settings {
    /// The defaults of `aeropartners operator`: names as a release called `aeropartners`
    /// had them before they were prefixed, every ReportVersion of `namespace`.
    pub fn new(namespace: Option<&str>, progress_deadline: Duration) -> Self {
        Self {
            namespace: namespace.map(str::to_owned),
            progress_deadline,
            reports_deployment: "reports".to_owned(),
            data_service_deployment: "data-service-{version}".to_owned(),
            report_version: None,
        }
    }

    pub fn data_service(&self, version: Version) -> String {
        self.data_service_deployment
            .replace("{version}", version.as_str())
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            failures: Mutex::default(),
        }
    }

    fn key(rv: &ReportVersion) -> String {
        format!("{}/{}", rv.namespace().unwrap_or_default(), rv.name_any())
    }
}

/// Whether the Deployment `name` has ready replicas in `namespace`.
async fn deployment_ready(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<bool, kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    Ok(deployments
        .get_opt(name)
        .await?
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        > 0)
}

pub async fn reconcile(rv: Arc<ReportVersion>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&rv, &ctx).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    RECONCILES.with_label_values(&[outcome]).inc();
    DURATION
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&Context::key(&rv));
    }
    result
}

async fn reconcile_inner(rv: &ReportVersion, ctx: &Context) -> Result<Action, Error> {
    let namespace = rv
        .namespace()
        .ok_or_else(|| Error::NotNamespaced(rv.name_any()))?;
    let observed = Observed {
        generation: rv.metadata.generation.unwrap_or_default(),
        desired: rv.spec.version,
        status: rv.status.clone().unwrap_or_default(),
        target_ready: deployment_ready(
            &ctx.client,
            &namespace,
            &ctx.settings.data_service(rv.spec.version),
        )
        .await?,
        reports_ready: deployment_ready(&ctx.client, &namespace, &ctx.settings.reports_deployment)
            .await?,
        now: Timestamp::now(),
    };
    let decision = decide(&observed, ctx.settings.progress_deadline);
    DEGRADED
        .with_label_values(&[namespace.as_str(), rv.name_any().as_str()])
        .set(i64::from(crate::decide::is_degraded(&decision.status)));
    if rv.status.as_ref() != Some(&decision.status) {
        let api: Api<ReportVersion> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": "aeropartners.io/v1alpha1",
            "kind": "ReportVersion",
            "status": decision.status,
        });
        api.patch_status(
            &rv.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    if let Some(notice) = decision.notice {
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.to_owned(),
            note: Some(notice.note),
            action: "SwitchVersion".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &rv.object_ref(&())).await {
            // An event is information, not state: never fail the reconciliation for it.
            tracing::warn!(%error, "cannot record a Kubernetes event");
        }
    }
    Ok(decision
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// Exponential backoff per object: 0.5 s, 1 s, 2 s … up to a minute.
pub fn error_policy(rv: Arc<ReportVersion>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx
        .failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = failures.entry(Context::key(&rv)).or_default();
    *count = count.saturating_add(1);
    let delay = Duration::from_millis(500)
        .saturating_mul(1 << (*count - 1).min(7))
        .min(Duration::from_secs(60));
    tracing::warn!(%error, resource = %Context::key(&rv), ?delay, "reconciliation failed; retrying");
    Action::requeue(delay)
}

/// Runs the controller until `shutdown`, over the ReportVersions `settings` names.
pub async fn run(client: Client, settings: Settings, shutdown: CancellationToken) {
    let (rvs, deployments): (Api<ReportVersion>, Api<Deployment>) = match &settings.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let watched = match &settings.report_version {
        Some(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
        None => watcher::Config::default(),
    };
    let controller = Controller::new(rvs, watched);
    let store = controller.store();
    let context = Arc::new(Context::new(client, settings));
    // A data service or the reports Deployment becoming ready (or not) re-examines every
    // ReportVersion beside it.
    let beside = move |deployment: Deployment| {
        let namespace = deployment.namespace();
        store
            .state()
            .into_iter()
            .filter(|rv| rv.namespace() == namespace)
            .map(|rv| ObjectRef::from_obj(&*rv))
            .collect::<Vec<_>>()
    };
    controller
        .watches(
            deployments.clone(),
            watcher::Config::default().labels(DATA_SERVICE_SELECTOR),
            beside.clone(),
        )
        .watches(
            deployments,
            watcher::Config::default().labels(REPORTS_SELECTOR),
            beside,
        )
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            // Watch errors (a CRD that is gone, a watch RBAC forbids) and failed reconciles
            // land here: at debug level a broken operator would look healthy and silent.
            // (A failed reconcile is logged by `error_policy` already.)
            match result {
                Err(error @ kube::runtime::controller::Error::ReconcilerFailed(..)) => {
                    tracing::debug!(%error, "controller event");
                }
                Err(error) => tracing::warn!(%error, "controller error"),
                Ok(_) => {}
            }
        })
        .await;
}
