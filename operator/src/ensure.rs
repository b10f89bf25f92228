//! The release's own `ReportVersion`, created by the operator rather than rendered by Helm.
//!
//! Why not a chart template: `spec.version` is the field users change at run time (`kubectl
//! patch rv`, `PUT /api/reports/version`). A field Helm renders is a field Helm puts back: a
//! `helm upgrade`, a `helm rollback` or a GitOps self-heal would revert a live switch. And with
//! the CRD among the chart's templates (so that it upgrades with the chart), Helm cannot build a
//! resource of that kind in the same release: the kind does not exist yet when it maps the
//! manifest. So the chart only says which resource to look after and its first version; the
//! operator creates it once, owned by the operator's Deployment (uninstalling the release
//! garbage-collects it), and never writes its spec again.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, Client, Resource,
    api::{ObjectMeta, PostParams},
};

use crate::{
    controller::FIELD_MANAGER,
    crd::{ReportVersion, ReportVersionSpec, Version},
};

#[derive(Debug, Clone)]
pub struct Managed {
    pub namespace: String,
    pub name: String,
    /// `spec.version` of a resource created here; an existing resource is left as it is.
    pub initial: Version,
    /// The Deployment that owns a resource created here (the operator's own), if any.
    pub owner: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the owner Deployment {0} has no uid")]
    OwnerWithoutUid(String),
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Existed,
    Created,
}

/// Creates the resource when it is missing. Retried with backoff for about two minutes: on a
/// first install the CRD is created in the same `helm install` and may not be served yet.
pub async fn ensure(client: &Client, managed: &Managed) -> Result<Outcome, EnsureError> {
    let attempt = || async { ensure_once(client, managed).await };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(30),
        )
        .notify(|error, delay| {
            tracing::warn!(%error, ?delay, name = %managed.name,
                "cannot ensure the ReportVersion yet; retrying");
        })
        .await
}

async fn ensure_once(client: &Client, managed: &Managed) -> Result<Outcome, EnsureError> {
    let api: Api<ReportVersion> = Api::namespaced(client.clone(), &managed.namespace);
    if api.get_opt(&managed.name).await?.is_some() {
        return Ok(Outcome::Existed);
    }
    let owner_references = match &managed.owner {
        Some(owner) => Some(vec![
            owner_reference(client, &managed.namespace, owner).await?,
        ]),
        None => None,
    };
    let rv = ReportVersion {
        metadata: ObjectMeta {
            name: Some(managed.name.clone()),
            namespace: Some(managed.namespace.clone()),
            owner_references,
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: ReportVersionSpec {
            version: managed.initial,
        },
        status: None,
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api.create(&params, &rv).await {
        Ok(_) => {
            tracing::info!(name = %managed.name, version = managed.initial.as_str(),
                "created the ReportVersion");
            Ok(Outcome::Created)
        }
        // Another replica (or a user) was faster: theirs stands.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Existed),
        Err(error) => Err(error.into()),
    }
}

async fn owner_reference(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<OwnerReference, EnsureError> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    let uid = deployment
        .metadata
        .uid
        .clone()
        .ok_or_else(|| EnsureError::OwnerWithoutUid(name.to_owned()))?;
    Ok(OwnerReference {
        api_version: Deployment::api_version(&()).into_owned(),
        kind: Deployment::kind(&()).into_owned(),
        name: name.to_owned(),
        uid,
        controller: Some(false),
        block_owner_deletion: None,
    })
}
