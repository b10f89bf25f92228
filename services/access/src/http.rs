//! Who is calling, for every service: the [`Acceso`] a service installs on its router, and the
//! [`Llamante`] extractor a handler takes to learn the caller and ask what it may do.
//!
//! A request names its caller with `Authorization: Bearer <credential>` (or `X-Api-Key`):
//! - a partner API key (`ap_sk_…`, `ap_rk_…`), checked against the key store;
//! - anything else is a Kubernetes token, reviewed by the API server (TokenReview), and each
//!   operator action is authorised by it (SubjectAccessReview).
//!
//! Answers follow RFC 9110 and API.md's problem+json rule: no or a bad credential is 401 with
//! `WWW-Authenticate: Bearer`; a valid caller without the right is 403; another affiliate's
//! object is 404 (its handler's business, with [`Ambito::ve`]).

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
};

use axum::{
    Router,
    extract::{ConnectInfo, FromRequestParts, Request},
    http::{HeaderName, HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::Response,
};
use platform::http::{Problem, REQUEST_ID_HEADER};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    auditoria::{Auditoria, Registro, Resultado},
    domain::{Alcance, Ambito, ClaveApi, ClaveDeAfiliado, Permiso, Principal, clave::PREFIJO},
    infrastructure::{
        almacen::{Rechazo, VerificadorDeClaves},
        kubernetes::{AutoridadDeOperadores, Kubernetes},
    },
    intentos::Intentos,
};

/// How strictly callers are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every route but the probes needs a credential (the default, and the chart's).
    Enforce,
    /// A request without a credential acts as an all-powerful developer, as the original
    /// system let anyone: its pytest suite and Postman collection run unchanged. Credentials
    /// that are sent are still checked. Refused unless every listener is on loopback.
    Development,
}

/// The header a development-mode answer carries, so no one mistakes it for a protected one.
pub const AUTH_MODE_HEADER: &str = "x-auth-mode";

/// Authentication settings (flags and environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// `enforce`, or `development` (loopback listeners only: see [`AuthMode`]).
    #[arg(long, env = "AUTH_MODE", value_enum, default_value = "enforce")]
    pub auth_mode: AuthMode,
    /// Authenticate and authorise operators with the Kubernetes API server (TokenReview and
    /// SubjectAccessReview, with the pod's service account). Off, operator tokens are refused.
    #[arg(long, env = "AUTH_KUBERNETES", default_value_t = false, action = clap::ArgAction::Set)]
    pub auth_kubernetes: bool,
    /// The namespace whose Roles grant operator rights (the release's).
    #[arg(long, env = "AUTH_NAMESPACE", default_value = "default")]
    pub auth_namespace: String,
    /// Audiences an operator token must be meant for (comma-separated); empty accepts the API
    /// server's own tokens (`kubectl create token`, the cluster's OIDC tokens).
    #[arg(long, env = "AUTH_TOKEN_AUDIENCES", value_delimiter = ',')]
    pub auth_token_audiences: Vec<String>,
    /// Refused credentials one client address may send per minute (a burst of as many, then
    /// one every 60 s / N); past that its credentials are refused with 429 unread. 0: no limit.
    #[arg(long, env = "AUTH_FAILURES_PER_MINUTE", default_value_t = DEFAULT_FAILURES_PER_MINUTE)]
    pub auth_failures_per_minute: u32,
}

/// Enough for a partner fixing a misconfigured client; far too few to guess anything.
pub const DEFAULT_FAILURES_PER_MINUTE: u32 = 20;

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            auth_mode: AuthMode::Enforce,
            auth_kubernetes: false,
            auth_namespace: "default".to_owned(),
            auth_token_audiences: Vec::new(),
            auth_failures_per_minute: DEFAULT_FAILURES_PER_MINUTE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorConfiguracion {
    #[error(
        "AUTH_MODE=development serves every route without a credential and is only allowed \
         when every listener is on loopback; {0} is not. Use AUTH_MODE=enforce, or listen on \
         127.0.0.1"
    )]
    DesarrolloFueraDeLoopback(SocketAddr),
    #[error("cannot reach the Kubernetes API server to authenticate operators: {0}")]
    Kubernetes(#[source] kube::Error),
}

impl AuthConfig {
    /// The audiences an operator token must carry. An empty `AUTH_TOKEN_AUDIENCES` (as the
    /// chart sets it by default) parses as one empty name, which would make every TokenReview
    /// fail: it means none.
    pub fn audiences(&self) -> Vec<String> {
        self.auth_token_audiences
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The authority on operators this configuration names: the Kubernetes API server, through
    /// the pod's service account (or `KUBECONFIG`), when `AUTH_KUBERNETES` is on.
    pub async fn autoridad(
        &self,
    ) -> Result<Option<Arc<dyn AutoridadDeOperadores>>, ErrorConfiguracion> {
        if !self.auth_kubernetes {
            return Ok(None);
        }
        let client = kube::Client::try_default()
            .await
            .map_err(ErrorConfiguracion::Kubernetes)?;
        Ok(Some(Arc::new(Kubernetes::new(
            client,
            self.auth_namespace.clone(),
            self.audiences(),
        ))))
    }

    /// Refuses development mode on any listener that is not loopback.
    pub fn comprobar(&self, listeners: &[SocketAddr]) -> Result<(), ErrorConfiguracion> {
        if self.auth_mode == AuthMode::Development {
            if let Some(abierto) = listeners.iter().find(|l| !l.ip().is_loopback()) {
                return Err(ErrorConfiguracion::DesarrolloFueraDeLoopback(*abierto));
            }
            tracing::warn!(
                "AUTH_MODE=development: requests without a credential act with every right; \
                 for this machine only (every listener is on loopback)"
            );
        }
        Ok(())
    }
}

/// A service's access control: its mode, the key store, the operator authority and the audit
/// trail. Cheap to clone.
#[derive(Clone)]
pub struct Acceso {
    inner: Arc<Inner>,
}

struct Inner {
    modo: AuthMode,
    claves: Option<VerificadorDeClaves>,
    autoridad: Option<Arc<dyn AutoridadDeOperadores>>,
    auditoria: Option<Auditoria>,
    /// Failed authentications per client address (none: unlimited).
    intentos: Option<Intentos>,
}

impl Acceso {
    /// Development mode with no key store and no operator authority: for tests of a service's
    /// behaviour that is not about its callers.
    pub fn desarrollo() -> Self {
        Self::from_parts(AuthMode::Development, None, None)
    }

    /// The access control of a service whose database is `pool`: keys from the store (kept
    /// coherent by a listener that runs until `shutdown`), operators from Kubernetes when
    /// configured. `listeners` are the service's addresses, checked against the mode.
    pub async fn start(
        config: &AuthConfig,
        listeners: &[SocketAddr],
        pool: PgPool,
        shutdown: CancellationToken,
    ) -> Result<Self, ErrorConfiguracion> {
        config.comprobar(listeners)?;
        let autoridad = config.autoridad().await?;
        let mut acceso = Self::with_store(config.auth_mode, pool, autoridad, shutdown);
        if let Some(inner) = Arc::get_mut(&mut acceso.inner) {
            inner.intentos = NonZeroU32::new(config.auth_failures_per_minute)
                .filter(|_| config.auth_mode == AuthMode::Enforce)
                .map(Intentos::new);
        }
        Ok(acceso)
    }

    /// Like [`Acceso::start`] with the authority given (tests pass one built on their own
    /// API server).
    pub fn with_store(
        modo: AuthMode,
        pool: PgPool,
        autoridad: Option<Arc<dyn AutoridadDeOperadores>>,
        shutdown: CancellationToken,
    ) -> Self {
        let claves = VerificadorDeClaves::new(pool.clone());
        tokio::spawn(claves.clone().escuchar_cambios(pool.clone(), shutdown));
        let mut acceso = Self::from_parts(modo, Some(claves), autoridad);
        if let Some(inner) = Arc::get_mut(&mut acceso.inner) {
            inner.auditoria = Some(Auditoria::new(pool));
            // Development mode (loopback only) has nobody to hold back.
            inner.intentos = NonZeroU32::new(DEFAULT_FAILURES_PER_MINUTE)
                .filter(|_| modo == AuthMode::Enforce)
                .map(Intentos::new);
        }
        acceso
    }

    fn from_parts(
        modo: AuthMode,
        claves: Option<VerificadorDeClaves>,
        autoridad: Option<Arc<dyn AutoridadDeOperadores>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                modo,
                claves,
                autoridad,
                auditoria: None,
                intentos: None,
            }),
        }
    }

    pub fn modo(&self) -> AuthMode {
        self.inner.modo
    }

    /// The service's OpenAPI document as this instance serves it: in `enforce` mode every
    /// operation takes a credential (with its 401 and 403), as [`Acceso::proteger`] enforces
    /// on routes whose handlers take a [`Llamante`]; in development mode none is required, and
    /// the document does not claim one is (a fuzzer reading it would rightly call every
    /// anonymous 200 a failure).
    pub fn documentar(&self, openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
        match self.inner.modo {
            AuthMode::Enforce => {
                platform::http::openapi::with_bearer_auth(openapi, crate::CREDENCIAL)
            }
            AuthMode::Development => openapi,
        }
    }

    /// Installs this access control on a service's routes: every handler that takes a
    /// [`Llamante`] finds it, and development-mode answers say so in `X-Auth-Mode`.
    pub fn proteger<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(middleware::from_fn_with_state(self.clone(), instalar))
    }

    /// Who sent `parts`' credential. A refused credential counts against its client address
    /// (see [`Intentos`]); an address past its budget is refused before its credential is read.
    async fn identificar(&self, parts: &Parts) -> Result<Principal, Problem> {
        let direccion = self
            .inner
            .intentos
            .as_ref()
            .zip(direccion_del_cliente(parts));
        if let Some((intentos, direccion)) = direccion
            && let Some(espera) = intentos.espera(direccion).await
        {
            return Err(demasiados_fallos(espera));
        }
        let identificado = self.verificar(parts).await;
        if let (Err(problem), Some((intentos, direccion))) = (&identificado, direccion)
            && problem.status == StatusCode::UNAUTHORIZED
            && credencial(parts).is_ok_and(|c| c.is_some())
        {
            intentos.fallo(direccion).await;
        }
        identificado
    }

    async fn verificar(&self, parts: &Parts) -> Result<Principal, Problem> {
        let Some(credencial) = credencial(parts)? else {
            return match self.inner.modo {
                AuthMode::Development => Ok(Principal::Desarrollo),
                AuthMode::Enforce => Err(no_autenticado(
                    "Falta la credencial: envíe `Authorization: Bearer <clave de API o token de Kubernetes>`",
                )),
            };
        };
        if credencial.starts_with(PREFIJO) {
            let clave = ClaveApi::analizar(credencial)
                .map_err(|motivo| no_autenticado(format!("Clave de API no válida: {motivo}")))?;
            let Some(claves) = &self.inner.claves else {
                return Err(no_autenticado("Este servicio no admite claves de API"));
            };
            return match claves.verificar(&clave).await {
                Ok(afiliado) => Ok(Principal::Afiliado(afiliado)),
                Err(Rechazo::Almacen(error)) => Err(Problem::database(&error)),
                Err(rechazo) => {
                    tracing::info!(target: "audit", clave = clave.id(), %rechazo, "API key refused");
                    Err(no_autenticado(format!(
                        "Clave de API no aceptada: {rechazo}"
                    )))
                }
            };
        }
        let Some(autoridad) = &self.inner.autoridad else {
            return Err(no_autenticado(
                "La credencial no es una clave de API (ap_sk_…, ap_rk_…) y este despliegue no \
                 autentica operadores con Kubernetes (AUTH_KUBERNETES)",
            ));
        };
        match autoridad.autenticar(credencial).await {
            Ok(Some(operador)) => Ok(Principal::Operador(operador)),
            Ok(None) => Err(no_autenticado(
                "El token no es válido para el clúster (TokenReview)",
            )),
            Err(error) => Err(autoridad_no_disponible(&error)),
        }
    }
}

/// The credential of a request: `Authorization: Bearer` (a partner key or an operator's
/// token), or a partner key in `X-Api-Key`.
fn credencial(parts: &Parts) -> Result<Option<&str>, Problem> {
    if let Some(valor) = parts.headers.get(header::AUTHORIZATION) {
        let valor = valor
            .to_str()
            .map_err(|_| no_autenticado("La cabecera Authorization no es texto"))?;
        let (esquema, token) = valor.split_once(' ').unwrap_or((valor, ""));
        if !esquema.eq_ignore_ascii_case("bearer") {
            return Err(no_autenticado(
                "Authorization debe ser `Bearer <credencial>`",
            ));
        }
        // `Bearer` with nothing after it is what a client sends from an unset variable (a
        // Postman environment without a key): no credential, not a malformed one.
        let token = token.trim();
        return Ok((!token.is_empty()).then_some(token));
    }
    match parts.headers.get("x-api-key") {
        // Only partner keys travel in X-Api-Key. Anything else there is the original
        // collector's plain key (`api_keys` of the affiliates file, development mode), which the
        // collector checks itself: it is no credential of ours, and never an operator's token.
        Some(valor) => match valor.to_str() {
            Ok(texto) if texto.trim().starts_with(PREFIJO) => Ok(Some(texto.trim())),
            Ok(texto) if !texto.trim().is_empty() => Ok(None),
            _ => Err(no_autenticado("X-Api-Key está vacía o no es texto")),
        },
        None => Ok(None),
    }
}

/// The client's address: the last hop of `X-Forwarded-For` (the gateway appends the address
/// it was called from), else the connection's peer. `None` in-process (tests).
fn direccion_del_cliente(parts: &Parts) -> Option<IpAddr> {
    parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|cadena| cadena.rsplit(',').next())
        .and_then(|ultimo| ultimo.trim().parse().ok())
        .or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| peer.ip())
        })
}

pub fn demasiados_fallos(espera: std::time::Duration) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-failed-authentications",
        "Demasiadas credenciales rechazadas",
        format!(
            "Esta dirección envió demasiadas credenciales no válidas; no se mira ninguna más \
             durante {} s",
            espera.as_secs().max(1)
        ),
    )
    .with_header(
        header::RETRY_AFTER,
        platform::http::header_value(&espera.as_secs().max(1).to_string()),
    )
}

pub fn no_autenticado(detalle: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "No autenticado",
        detalle,
    )
    .with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"aeropartners\""),
    )
}

/// The affiliate a list or count is restricted to: a partner's own (naming another is 403, as
/// its own list is all it may ask for), or the one an operator asks for, if any.
pub fn filtro_de_afiliado(
    ambito: &Ambito,
    pedido: Option<&str>,
) -> Result<Option<String>, Problem> {
    match (ambito, pedido) {
        (Ambito::Afiliado(propio), Some(pedido)) if pedido != propio => Err(prohibido(format!(
            "La clave es del afiliado {propio}; solo puede consultar lo suyo, no lo de '{pedido}'"
        ))),
        (Ambito::Afiliado(propio), _) => Ok(Some(propio.clone())),
        (Ambito::Todos, pedido) => Ok(pedido.map(str::to_owned)),
    }
}

pub fn prohibido(detalle: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Prohibido", detalle)
}

pub fn autoridad_no_disponible(error: &dyn std::fmt::Display) -> Problem {
    tracing::warn!(%error, "operator authority unavailable");
    Problem::unavailable(
        "No se pudo verificar la credencial con el clúster; reintente en un momento",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("2"))
}

async fn instalar(
    axum::extract::State(acceso): axum::extract::State<Acceso>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(acceso.clone());
    let mut response = next.run(request).await;
    if acceso.inner.modo == AuthMode::Development {
        response.headers_mut().insert(
            HeaderName::from_static(AUTH_MODE_HEADER),
            HeaderValue::from_static("development"),
        );
    }
    response
}

/// For a route whose sources bring credentials of their own (the collector: webhook
/// signatures, and in development mode a configured affiliate's plain keys): the partner key
/// in `Authorization: Bearer` or `X-Api-Key`, checked, if one is there. Anything else in those
/// headers is left to the route; a bad partner key is 401.
pub struct ClavePresentada {
    pub clave: Option<ClaveDeAfiliado>,
    /// Whether a request needs a credential (`enforce`), or may come without (development).
    pub exigida: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for ClavePresentada {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(acceso) = parts.extensions.get::<Acceso>().cloned() else {
            return Err(Problem::internal(
                &"a route takes ClavePresentada but its router has no Acceso (Acceso::proteger)",
            ));
        };
        let exigida = acceso.inner.modo == AuthMode::Enforce;
        let presentada = credencial(parts).ok().flatten();
        let clave = match presentada {
            Some(valor) if valor.starts_with(PREFIJO) => match acceso.identificar(parts).await? {
                Principal::Afiliado(clave) => Some(clave),
                _ => None,
            },
            _ => None,
        };
        Ok(Self { clave, exigida })
    }
}

/// The caller of a request, authenticated. Taking it makes a handler's route require a
/// credential (or development mode); what the caller may do, the handler asks with its
/// methods, which also keep the audit trail.
pub struct Llamante {
    pub principal: Principal,
    /// An operator's token, for an action the API server itself must authorise as that
    /// operator (the report version switch patches the ReportVersion with it).
    token: Option<secrecy::SecretString>,
    acceso: Acceso,
    origen: Option<SocketAddr>,
    request_id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Llamante {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(acceso) = parts.extensions.get::<Acceso>().cloned() else {
            return Err(Problem::internal(
                &"a route takes Llamante but its router has no Acceso (Acceso::proteger)",
            ));
        };
        let principal = acceso.identificar(parts).await?;
        let token = match &principal {
            Principal::Operador(_) => credencial(parts)?.map(secrecy::SecretString::from),
            _ => None,
        };
        Ok(Self {
            principal,
            token,
            acceso,
            origen: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| *peer),
            request_id: parts
                .headers
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

impl Llamante {
    /// The operator's own token, to act on the Kubernetes API as the operator rather than as
    /// the service (no confused deputy: the API server authorises, and its audit log names,
    /// the person).
    pub fn token_de_operador(&self) -> Option<&secrecy::SecretString> {
        self.token.as_ref()
    }

    /// For a partner route that writes as the partner: the key, if it holds `alcance`. `None`
    /// in development mode (the body names the affiliate, as in the original system). An
    /// operator is refused: operators act on partners' objects, not as partners.
    pub fn afiliado(&self, alcance: Alcance) -> Result<Option<&ClaveDeAfiliado>, Problem> {
        match &self.principal {
            Principal::Afiliado(clave) if clave.permite(alcance) => Ok(Some(clave)),
            Principal::Afiliado(clave) => Err(prohibido(format!(
                "La clave {} no tiene el alcance {alcance}",
                clave.id_clave
            ))),
            Principal::Operador(operador) => Err(prohibido(format!(
                "Esta operación es de un afiliado, con una clave de API con el alcance \
                 {alcance}; {} es un operador",
                operador.usuario
            ))),
            Principal::Desarrollo => Ok(None),
        }
    }

    /// For a partner route that creates an object for an affiliate the body may name: the
    /// key's affiliate, which the body may repeat but not contradict (403). In development mode
    /// the body's. A blank name is handed back as it is, for the route's validation to refuse
    /// (400) whoever calls.
    pub fn afiliado_del_cuerpo(
        &self,
        alcance: Alcance,
        nombrado: Option<&str>,
    ) -> Result<String, Problem> {
        match (self.afiliado(alcance)?, nombrado) {
            (Some(_), Some(nombrado)) if nombrado.trim().is_empty() => Ok(nombrado.to_owned()),
            (Some(clave), Some(nombrado)) if nombrado.trim() != clave.id_afiliado => {
                Err(prohibido(format!(
                    "La clave {} es del afiliado {}; no puede actuar por '{}'",
                    clave.id_clave,
                    clave.id_afiliado,
                    nombrado.trim()
                )))
            }
            (Some(clave), _) => Ok(clave.id_afiliado.clone()),
            (None, nombrado) => Ok(nombrado.unwrap_or_default().to_owned()),
        }
    }

    /// Whose `Idempotency-Key`s a request shares: an affiliate's keys share them (one partner,
    /// one namespace, as Stripe keeps them per account), each operator has their own, and
    /// development mode one for everyone.
    pub fn espacio_de_idempotencia(&self) -> String {
        match &self.principal {
            Principal::Afiliado(clave) => format!("afiliado:{}", clave.id_afiliado),
            Principal::Operador(operador) => format!("operador:{}", operador.usuario),
            Principal::Desarrollo => "desarrollo".to_owned(),
        }
    }

    /// Whether the caller is an operator (whose allowed actions the handler audits).
    pub fn es_operador(&self) -> bool {
        matches!(self.principal, Principal::Operador(_))
    }

    /// For a read a partner may make of its own objects and an operator of everyone's: a key
    /// holding `alcance` sees its affiliate's, an operator allowed `permiso` sees all.
    pub async fn ambito(&self, alcance: Alcance, permiso: Permiso) -> Result<Ambito, Problem> {
        match &self.principal {
            Principal::Afiliado(_) => {
                let clave = self.afiliado(alcance)?.map(|c| c.id_afiliado.clone());
                Ok(clave.map_or(Ambito::Todos, Ambito::Afiliado))
            }
            Principal::Operador(_) => {
                self.autorizar(permiso).await?;
                Ok(Ambito::Todos)
            }
            Principal::Desarrollo => Ok(Ambito::Todos),
        }
    }

    /// For an operator action: allowed when Kubernetes RBAC grants `permiso` to the caller
    /// (or in development mode). A refusal is audited; the handler audits the outcome of an
    /// allowed action with [`Llamante::auditar`].
    pub async fn operador(&self, permiso: Permiso, objeto: &str) -> Result<(), Problem> {
        match &self.principal {
            Principal::Afiliado(clave) => {
                self.auditar(
                    permiso,
                    objeto,
                    Resultado::Denegado,
                    "una clave de afiliado",
                )
                .await;
                Err(prohibido(format!(
                    "Esta operación es de un operador ({permiso}, con un token de Kubernetes); \
                     la clave {} es de un afiliado",
                    clave.id_clave
                )))
            }
            Principal::Operador(_) => match self.autorizar(permiso).await {
                Ok(()) => Ok(()),
                Err(problem) => {
                    if problem.status == StatusCode::FORBIDDEN {
                        self.auditar(permiso, objeto, Resultado::Denegado, "RBAC")
                            .await;
                    }
                    Err(problem)
                }
            },
            Principal::Desarrollo => Ok(()),
        }
    }

    async fn autorizar(&self, permiso: Permiso) -> Result<(), Problem> {
        let Principal::Operador(operador) = &self.principal else {
            return Ok(());
        };
        let Some(autoridad) = &self.acceso.inner.autoridad else {
            return Err(prohibido("Este despliegue no autoriza operadores"));
        };
        match autoridad.autorizar(operador, permiso).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(prohibido(format!(
                "{} no tiene permiso para `{permiso}` en el grupo aeropartners.io \
                 (kubectl auth can-i {permiso}.aeropartners.io)",
                operador.usuario
            ))),
            Err(error) => Err(autoridad_no_disponible(&error)),
        }
    }

    /// Records a privileged action in the audit trail (and the `audit` log target).
    pub async fn auditar(
        &self,
        permiso: Permiso,
        objeto: &str,
        resultado: Resultado,
        detalle: &str,
    ) {
        let registro = Registro {
            tipo_actor: self.principal.tipo_actor(),
            actor: self.principal.actor(),
            accion: permiso.to_string(),
            objeto: objeto.to_owned(),
            origen: self.origen.map(|o| o.ip().to_string()).unwrap_or_default(),
            request_id: self.request_id.clone(),
            resultado,
            detalle: detalle.to_owned(),
        };
        match &self.acceso.inner.auditoria {
            Some(auditoria) => auditoria.registrar(registro).await,
            None => registro.log(),
        }
    }
}
