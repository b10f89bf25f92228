//! `kubernetes`: each replica watches the one `ReportVersion` it is configured with and serves
//! its `status.activeVersion` — the version the operator confirmed ready — never `spec`.
//! `PUT /api/reports/version` patches `spec.version`. While the API server cannot be reached a
//! replica keeps serving the last version it knew and says so (`stale`); the last version seen
//! is persisted in the reports schema, so a replica that starts during an outage serves it.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use operator::crd::{self, ReportVersion};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{EstadoVersion, Fuente, Version},
    version::{ErrorFuente, FuenteVersion, Solicitante, escribir_fila, leer_fila, publicar},
};

#[derive(Debug, Clone, clap::Args)]
pub struct KubeConfig {
    /// With `kubernetes`: the `ReportVersion` this replica follows.
    #[arg(
        long = "report-version-name",
        env = "REPORT_VERSION_NAME",
        default_value = "reports"
    )]
    pub name: String,
    /// Its namespace; the client's default namespace (the pod's own) when empty.
    #[arg(
        long = "report-version-namespace",
        env = "REPORT_VERSION_NAMESPACE",
        default_value = ""
    )]
    pub namespace: String,
}

/// The field manager of `PUT /api/reports/version`'s patches.
pub const FIELD_MANAGER: &str = "aeropartners-reports";

const API_TIMEOUT: Duration = Duration::from_secs(3);

pub struct FuenteKubernetes {
    api: Api<ReportVersion>,
    /// How this process reaches the API server (in a pod: its address and CA), for clients
    /// that act with an operator's token instead of the service account's.
    base: kube::Config,
    namespace: String,
    name: String,
    pool: PgPool,
}

fn version(v: crd::Version) -> Version {
    match v {
        crd::Version::V1 => Version::V1,
        crd::Version::V2 => Version::V2,
    }
}

fn crd_version(v: Version) -> crd::Version {
    match v {
        Version::V1 => crd::Version::V1,
        Version::V2 => crd::Version::V2,
    }
}

/// What the resource says, over what this replica served before (`anterior`): without a
/// confirmed `activeVersion` yet, the previous version stays.
fn estado_de(rv: &ReportVersion, anterior: &EstadoVersion) -> EstadoVersion {
    let status = rv.status.as_ref();
    EstadoVersion {
        activa: status
            .and_then(|s| s.active_version)
            .map_or(anterior.activa, version),
        deseada: version(rv.spec.version),
        cambiada_en: status
            .and_then(|s| s.switched_at.as_deref())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or(anterior.cambiada_en),
        desactualizada: false,
    }
}

impl FuenteKubernetes {
    pub async fn new(config: &KubeConfig, pool: PgPool) -> anyhow::Result<Self> {
        // Reads the kubeconfig or the pod's service account; does not call the API server.
        let base = kube::Config::infer().await?;
        let namespace = if config.namespace.is_empty() {
            base.default_namespace.clone()
        } else {
            config.namespace.clone()
        };
        let client = Client::try_from(base.clone())?;
        Ok(Self {
            api: Api::namespaced(client, &namespace),
            base,
            namespace,
            name: config.name.clone(),
            pool,
        })
    }

    /// Persists the version seen, so a replica starting while the API server is away serves
    /// it. Best effort: serving never waits for (or fails on) this write.
    async fn recordar(&self, estado: &EstadoVersion) {
        if let Err(error) = escribir_fila(
            &self.pool,
            estado.activa,
            estado.deseada,
            estado.cambiada_en,
        )
        .await
        {
            tracing::warn!(%error, "cannot persist the report version seen");
        }
    }
}

#[async_trait::async_trait]
impl FuenteVersion for FuenteKubernetes {
    fn fuente(&self) -> Fuente {
        Fuente::Kubernetes
    }

    async fn leer(&self) -> Result<EstadoVersion, ErrorFuente> {
        let persistida = leer_fila(&self.pool).await?;
        match tokio::time::timeout(API_TIMEOUT, self.api.get_opt(&self.name)).await {
            Ok(Ok(Some(rv)))
                if rv
                    .status
                    .as_ref()
                    .is_some_and(|s| s.active_version.is_some()) =>
            {
                let estado = estado_de(&rv, &persistida);
                self.recordar(&estado).await;
                Ok(estado)
            }
            outcome => {
                let why = match outcome {
                    Ok(Ok(_)) => "the resource has no confirmed version yet".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                tracing::warn!(name = %self.name, %why, version = %persistida.activa,
                    "ReportVersion not readable; serving the last version persisted");
                Ok(EstadoVersion {
                    desactualizada: true,
                    ..persistida
                })
            }
        }
    }

    async fn pedir(
        &self,
        v: Version,
        solicitante: Solicitante<'_>,
    ) -> Result<EstadoVersion, ErrorFuente> {
        let patch = serde_json::json!({ "spec": { "version": crd_version(v) } });
        let api = match solicitante {
            Solicitante::Servicio => self.api.clone(),
            Solicitante::Operador(token) => {
                // The API server's address and CA, with the operator's token and nothing of
                // the service account's.
                let mut config = self.base.clone();
                config.auth_info = kube::config::AuthInfo {
                    token: Some(token.clone()),
                    ..kube::config::AuthInfo::default()
                };
                let client = Client::try_from(config)
                    .map_err(|error| ErrorFuente::Kube(error.to_string()))?;
                Api::namespaced(client, &self.namespace)
            }
        };
        let rv = tokio::time::timeout(
            API_TIMEOUT,
            api.patch(
                &self.name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            ),
        )
        .await
        .map_err(|_| ErrorFuente::Kube("timed out".into()))?
        .map_err(|error| match &error {
            kube::Error::Api(status) if status.code == 404 => {
                ErrorFuente::SinRecurso(self.name.clone())
            }
            kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
                ErrorFuente::Rechazado {
                    codigo: status.code,
                    detalle: status.message.clone(),
                }
            }
            _ => ErrorFuente::Kube(error.to_string()),
        })?;
        let persistida = leer_fila(&self.pool).await?;
        Ok(estado_de(&rv, &persistida))
    }

    async fn seguir(
        self: Arc<Self>,
        estado: watch::Sender<EstadoVersion>,
        shutdown: CancellationToken,
    ) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut eventos = watcher(self.api.clone(), config).default_backoff().boxed();
        loop {
            let evento = tokio::select! {
                () = shutdown.cancelled() => return,
                evento = eventos.next() => evento,
            };
            match evento {
                None => return,
                Some(Ok(watcher::Event::Apply(rv) | watcher::Event::InitApply(rv))) => {
                    let anterior = estado.borrow().clone();
                    let nuevo = estado_de(&rv, &anterior);
                    if nuevo.activa != anterior.activa || nuevo.deseada != anterior.deseada {
                        self.recordar(&nuevo).await;
                    }
                    publicar(&estado, nuevo);
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    tracing::warn!(name = %self.name, "ReportVersion deleted; serving the last version");
                    estado.send_modify(|e| e.desactualizada = true);
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                Some(Err(error)) => {
                    // The watcher retries with backoff; until then the version may be old.
                    tracing::warn!(%error, "ReportVersion watch failed; serving the last version");
                    estado.send_if_modified(|e| !std::mem::replace(&mut e.desactualizada, true));
                }
            }
        }
    }
}
