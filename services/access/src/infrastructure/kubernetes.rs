//! Operators are whoever the cluster says they are, with the rights the cluster gives them, as
//! kube-rbac-proxy decides: a `TokenReview` says who holds a bearer token, a
//! `SubjectAccessReview` whether that user may perform an action (a verb on a resource of the
//! `aeropartners.io` group, see [`Permiso`]). The service account that asks needs `create` on
//! both, the built-in `system:auth-delegator` ClusterRole.
//!
//! Both answers are cached for [`DECISION_TTL`], so a burst of requests from one console costs
//! the API server one review; a revoked RoleBinding takes effect within that time.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, api::PostParams};
use sha2::{Digest, Sha256};

use crate::domain::{Operador, Permiso, permiso::GRUPO};

/// How long a token's review and an authorisation decision are reused.
pub const DECISION_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
#[error("the Kubernetes API server could not review the request: {0}")]
pub struct ErrorAutoridad(pub Arc<kube::Error>);

/// Who vouches for operators.
#[async_trait::async_trait]
pub trait AutoridadDeOperadores: Send + Sync + 'static {
    /// The operator holding `token`, or `None` when the token is not valid.
    async fn autenticar(&self, token: &str) -> Result<Option<Operador>, ErrorAutoridad>;
    /// Whether `operador` may do what `permiso` names.
    async fn autorizar(
        &self,
        operador: &Operador,
        permiso: Permiso,
    ) -> Result<bool, ErrorAutoridad>;
}

/// The Kubernetes API server as the authority, through the pod's own service account.
pub struct Kubernetes {
    client: kube::Client,
    /// The release's namespace: permissions are namespaced, as the Roles that grant them.
    namespace: String,
    /// The audiences a token must be meant for; empty means the API server's own (a
    /// `kubectl create token` or an OIDC token of the cluster), which the version switch
    /// needs, as it acts on the API server with the caller's token.
    audiences: Vec<String>,
    tokens: moka::future::Cache<[u8; 32], Option<Operador>>,
    decisiones: moka::future::Cache<(String, Vec<String>, Permiso), bool>,
}

impl Kubernetes {
    pub fn new(client: kube::Client, namespace: String, audiences: Vec<String>) -> Self {
        Self {
            client,
            namespace,
            audiences,
            tokens: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(DECISION_TTL)
                .build(),
            decisiones: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(DECISION_TTL)
                .build(),
        }
    }

    async fn revisar_token(&self, token: String) -> Result<Option<Operador>, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let Some(status) = answer.status else {
            return Ok(None);
        };
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let Some(user) = status.user else {
            return Ok(None);
        };
        Ok(Some(Operador {
            usuario: user.username.unwrap_or_default(),
            uid: user.uid.unwrap_or_default(),
            grupos: user.groups.unwrap_or_default(),
        }))
    }

    async fn revisar_acceso(
        &self,
        operador: &Operador,
        permiso: Permiso,
    ) -> Result<bool, kube::Error> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(operador.usuario.clone()),
                uid: (!operador.uid.is_empty()).then(|| operador.uid.clone()),
                groups: Some(operador.grupos.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GRUPO.to_owned()),
                    resource: Some(permiso.recurso.to_owned()),
                    subresource: permiso.subrecurso.map(str::to_owned),
                    verb: Some(permiso.verbo.to_owned()),
                    namespace: Some(self.namespace.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        Ok(answer.status.is_some_and(|status| status.allowed))
    }
}

#[async_trait::async_trait]
impl AutoridadDeOperadores for Kubernetes {
    async fn autenticar(&self, token: &str) -> Result<Option<Operador>, ErrorAutoridad> {
        let huella: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let token = token.to_owned();
        self.tokens
            .try_get_with(huella, self.revisar_token(token))
            .await
            .map_err(ErrorAutoridad)
    }

    async fn autorizar(
        &self,
        operador: &Operador,
        permiso: Permiso,
    ) -> Result<bool, ErrorAutoridad> {
        self.decisiones
            .try_get_with(
                (operador.usuario.clone(), operador.grupos.clone(), permiso),
                self.revisar_acceso(operador, permiso),
            )
            .await
            .map_err(ErrorAutoridad)
    }
}
