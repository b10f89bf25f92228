//! The console's sign-in (docs/security.md, "The console"), as the Kubernetes Dashboard signs
//! in: the operator pastes a token the cluster vouches for (`kubectl create token`, or the
//! OIDC token of a cluster that trusts an issuer), the gateway has the API server review it,
//! and the browser keeps it in a session cookie. Every request the page then makes goes
//! through the gateway, which puts the token back in `Authorization`: the service behind asks
//! the API server what this operator may do, so a button the operator may not use is refused
//! by the server, whatever the page shows.
//!
//! - The cookie is encrypted and authenticated (AES-256-GCM, with `CONSOLE_SESSION_KEY`), so
//!   every gateway replica reads it and none keeps a session store: a gateway pod that dies
//!   signs nobody out. It is `HttpOnly` (no script reads the token), `SameSite=Strict`, and
//!   `Secure` when the page came over TLS.
//! - A request that changes anything with the cookie must repeat the session's CSRF token in
//!   `X-CSRF-Token`, which only a page of this origin can read (from `GET
//!   /console/api/sesion`): a cross-site form or script cannot act as the operator.
//! - A session lasts `CONSOLE_SESSION_TTL` (8 h), and no longer than its token: every use has
//!   the token reviewed again (cached 10 s), so an expired or revoked token ends it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use access::{
    AuthConfig, AuthMode, Permiso,
    domain::Operador,
    http::{autoridad_no_disponible, demasiados_fallos, no_autenticado, prohibido},
    infrastructure::kubernetes::AutoridadDeOperadores,
    intentos::Intentos,
};
use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use cookie::{Cookie, CookieJar, Key, SameSite};
use platform::http::Problem;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "ap_consola";
/// The header that repeats the session's CSRF token on every request that changes something.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The console's session settings (flags and environment variables of the gateway).
#[derive(Debug, Clone, clap::Args)]
pub struct SessionConfig {
    /// The secret that encrypts the console's session cookies, at least 32 bytes. Every
    /// gateway replica needs the same one (the chart keeps it in a Secret). Unset, each
    /// process makes its own: its sessions end when it stops. Never printed.
    #[arg(long, env = "CONSOLE_SESSION_KEY", hide_env_values = true)]
    pub console_session_key: Option<SecretString>,
    /// How long a console session lasts at most; its token's expiry ends it sooner.
    #[arg(long, env = "CONSOLE_SESSION_TTL", default_value = "8h", value_parser = platform::config::parse_duration)]
    pub console_session_ttl: Duration,
    /// Always mark the session cookie `Secure`. Without it, it is marked when the request came
    /// over TLS (`X-Forwarded-Proto: https`, as an ingress that terminates TLS says).
    #[arg(long, env = "CONSOLE_COOKIE_SECURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub console_cookie_secure: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            console_session_key: None,
            console_session_ttl: Duration::from_secs(8 * 3600),
            console_cookie_secure: false,
        }
    }
}

/// The smallest session key: AES-256-GCM's key is derived from it (HKDF), and a shorter
/// secret would be the weak part.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ErrorSesiones {
    #[error(
        "CONSOLE_SESSION_KEY has {0} bytes; it needs at least {MIN_KEY_BYTES} (e.g. `openssl rand -base64 48`)"
    )]
    ClaveCorta(usize),
    #[error(transparent)]
    Acceso(#[from] access::http::ErrorConfiguracion),
}

/// What the cookie carries, encrypted.
#[derive(Serialize, Deserialize)]
struct Contenido {
    /// The operator's token.
    #[serde(rename = "t")]
    token: String,
    /// The user the API server said it was, when the session began (shown on the page).
    #[serde(rename = "u")]
    usuario: String,
    #[serde(rename = "c")]
    csrf: String,
    /// Unix seconds after which the cookie is refused, whatever the browser keeps.
    #[serde(rename = "e")]
    expira: i64,
}

/// A session read from a request's cookie.
pub struct Sesion {
    token: SecretString,
    usuario: String,
    csrf: String,
    expira: i64,
}

/// The console's sessions: how they begin, are read and end.
pub struct Sesiones {
    modo: AuthMode,
    clave: Key,
    ttl: Duration,
    siempre_secure: bool,
    autoridad: Option<Arc<dyn AutoridadDeOperadores>>,
    intentos: Option<Intentos>,
}

impl Sesiones {
    /// The sessions of a gateway configured with `auth` and `config`, listening on `listen`
    /// (development mode is refused off loopback, as for every service).
    pub async fn start(
        auth: &AuthConfig,
        config: &SessionConfig,
        listen: SocketAddr,
    ) -> Result<Self, ErrorSesiones> {
        auth.comprobar(&[listen])?;
        let autoridad = auth.autoridad().await?;
        let mut sesiones = Self::new(auth.auth_mode, config, autoridad)?;
        sesiones.intentos = std::num::NonZeroU32::new(auth.auth_failures_per_minute)
            .filter(|_| auth.auth_mode == AuthMode::Enforce)
            .map(Intentos::new);
        Ok(sesiones)
    }

    /// Like [`Sesiones::start`] with the authority given (tests pass one on their API server).
    pub fn new(
        modo: AuthMode,
        config: &SessionConfig,
        autoridad: Option<Arc<dyn AutoridadDeOperadores>>,
    ) -> Result<Self, ErrorSesiones> {
        let clave = match &config.console_session_key {
            Some(secreto) if secreto.expose_secret().len() < MIN_KEY_BYTES => {
                return Err(ErrorSesiones::ClaveCorta(secreto.expose_secret().len()));
            }
            Some(secreto) => Key::derive_from(secreto.expose_secret().as_bytes()),
            None => {
                if modo == AuthMode::Enforce {
                    tracing::warn!(
                        "CONSOLE_SESSION_KEY is not set: console sessions are encrypted with a \
                         key of this process, and end when it stops (or on another replica)"
                    );
                }
                Key::generate()
            }
        };
        Ok(Self {
            modo,
            clave,
            ttl: config.console_session_ttl,
            siempre_secure: config.console_cookie_secure,
            autoridad,
            intentos: None,
        })
    }

    /// The session a request's cookie carries, if it decrypts and has not expired.
    fn leer(&self, headers: &HeaderMap) -> Option<Sesion> {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == COOKIE)?
            .into_owned();
        let jar = CookieJar::new();
        let claro = jar.private(&self.clave).decrypt(cookie)?;
        let contenido: Contenido = serde_json::from_str(claro.value()).ok()?;
        (contenido.expira > chrono::Utc::now().timestamp()).then(|| Sesion {
            token: SecretString::from(contenido.token),
            usuario: contenido.usuario,
            csrf: contenido.csrf,
            expira: contenido.expira,
        })
    }

    /// The session of a request still vouched for: its token reviewed again (the review is
    /// cached for seconds), so a token that expired or was revoked ends the session.
    async fn vigente(&self, headers: &HeaderMap) -> Result<(Sesion, Operador), Problem> {
        let Some(sesion) = self.leer(headers) else {
            return Err(sin_sesion());
        };
        let Some(autoridad) = &self.autoridad else {
            return Err(sin_sesion());
        };
        match autoridad.autenticar(sesion.token.expose_secret()).await {
            Ok(Some(operador)) => Ok((sesion, operador)),
            Ok(None) => Err(no_autenticado(
                "El token de la sesión ya no es válido (caducó o fue revocado); inicie sesión de nuevo",
            )),
            Err(error) => Err(autoridad_no_disponible(&error)),
        }
    }

    /// For a request the gateway forwards: when it brings no credential of its own but a
    /// session cookie, the session's token goes in `Authorization`, provided a request that
    /// changes something repeats the session's CSRF token. The cookie itself never leaves the
    /// gateway.
    pub fn acreditar(&self, method: &Method, headers: &mut HeaderMap) -> Result<(), Problem> {
        let propia =
            headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key");
        let sesion = if propia { None } else { self.leer(headers) };
        headers.remove(header::COOKIE);
        let Some(sesion) = sesion else {
            return Ok(());
        };
        if !method.is_safe() && !csrf_coincide(headers, &sesion.csrf) {
            return Err(csrf_rechazado());
        }
        let valor = format!("Bearer {}", sesion.token.expose_secret());
        let mut valor = HeaderValue::from_str(&valor).map_err(|_| sin_sesion())?;
        valor.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, valor);
        Ok(())
    }

    /// What the page shows of a session: who, until when, what they may do, and the CSRF token.
    async fn describir(&self, sesion: Option<(&Sesion, &Operador)>) -> EstadoSesion {
        let permisos = match (&self.autoridad, sesion) {
            (Some(autoridad), Some((_, operador))) => {
                let decisiones = Permiso::TODOS.map(|permiso| async move {
                    matches!(autoridad.autorizar(operador, permiso).await, Ok(true))
                        .then(|| permiso.to_string())
                });
                futures::future::join_all(decisiones)
                    .await
                    .into_iter()
                    .flatten()
                    .collect()
            }
            // Development mode without a session: the developer may do everything.
            _ if self.modo == AuthMode::Development => {
                Permiso::TODOS.iter().map(Permiso::to_string).collect()
            }
            _ => Vec::new(),
        };
        EstadoSesion {
            modo: match self.modo {
                AuthMode::Enforce => "enforce",
                AuthMode::Development => "development",
            },
            usuario: sesion.map(|(s, _)| s.usuario.clone()),
            expira: sesion.and_then(|(s, _)| chrono::DateTime::from_timestamp(s.expira, 0)),
            csrf: sesion.map(|(s, _)| s.csrf.clone()),
            permisos,
        }
    }

    fn cookie(&self, valor: String, max_age: Duration, headers: &HeaderMap) -> Cookie<'static> {
        let tls = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
        Cookie::build((COOKIE, valor))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.siempre_secure || tls)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
            ))
            .build()
    }

    /// The `Set-Cookie` of a new session for `token`, held by `operador`.
    fn abrir(&self, token: String, operador: &Operador, headers: &HeaderMap) -> (Sesion, String) {
        let expira = chrono::Utc::now().timestamp()
            + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let csrf = base64_url(&rand::random::<[u8; 32]>());
        let contenido = Contenido {
            token,
            usuario: operador.usuario.clone(),
            csrf,
            expira,
        };
        let claro = serde_json::to_string(&contenido).unwrap_or_default();
        let mut jar = CookieJar::new();
        jar.private_mut(&self.clave)
            .add(self.cookie(claro, self.ttl, headers));
        let cifrada = jar.get(COOKIE).map(|c| c.to_string()).unwrap_or_default();
        (
            Sesion {
                token: SecretString::from(contenido.token),
                usuario: contenido.usuario,
                csrf: contenido.csrf,
                expira,
            },
            cifrada,
        )
    }
}

fn csrf_coincide(headers: &HeaderMap, esperado: &str) -> bool {
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes().ct_eq(esperado.as_bytes()).into())
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sin_sesion() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "no-session",
        "Sin sesión",
        "Inicie sesión en la consola con un token de Kubernetes",
    )
}

fn csrf_rechazado() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "csrf",
        "Falta el token CSRF",
        format!(
            "Una petición que cambia algo con la sesión de la consola debe repetir su token en \
             {CSRF_HEADER} (GET /console/api/sesion lo da)"
        ),
    )
}

/// A session as the page sees it (`GET /console/api/sesion`).
#[derive(Debug, Serialize)]
pub struct EstadoSesion {
    /// `enforce`, or `development` (no sign-in needed: every listener is on loopback).
    pub modo: &'static str,
    /// Who is signed in (none in development mode before a sign-in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usuario: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expira: Option<chrono::DateTime<chrono::Utc>>,
    /// To repeat in `X-CSRF-Token` on every request that changes something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
    /// The operator actions RBAC grants, as `kubectl auth can-i` spells them
    /// (`create payments/revert`): the page offers only these.
    pub permisos: Vec<String>,
}

#[derive(Deserialize)]
struct Inicio {
    token: String,
}

/// The sign-in routes, and the guard of the console's own reads.
pub fn router(sesiones: Arc<Sesiones>) -> Router {
    Router::new()
        .route(
            "/console/api/sesion",
            get(estado).post(iniciar).delete(cerrar),
        )
        .with_state(sesiones)
}

/// `GET /console/api/sesion`: the current session, or 401 (the page then shows its sign-in).
async fn estado(State(sesiones): State<Arc<Sesiones>>, headers: HeaderMap) -> Response {
    match sesiones.vigente(&headers).await {
        Ok((sesion, operador)) => {
            Json(sesiones.describir(Some((&sesion, &operador))).await).into_response()
        }
        Err(_) if sesiones.modo == AuthMode::Development => {
            Json(sesiones.describir(None).await).into_response()
        }
        Err(problem) => problem.into_response(),
    }
}

/// `POST /console/api/sesion` `{"token": "…"}`: signs in with a token the cluster vouches for.
async fn iniciar(State(sesiones): State<Arc<Sesiones>>, request: Request) -> Response {
    let cliente = cliente_de(&request);
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_INICIO_BYTES).await else {
        return Problem::bad_request(format!(
            "El cuerpo supera {MAX_INICIO_BYTES} bytes: un token no es tan largo"
        ))
        .into_response();
    };
    match sesiones.iniciar(cliente, &parts.headers, &body).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

/// The largest sign-in body read: a service account token is about 1 kB, an OIDC one a few.
const MAX_INICIO_BYTES: usize = 16 * 1024;

/// The peer's address (absent when a test calls the router without a socket).
fn cliente_de(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

impl Sesiones {
    /// The operator holding `token`, as the API server says. A refused token counts against
    /// the client's address, and an address past its budget is refused before any review
    /// (so guessing costs the API server nothing).
    async fn revisar(&self, cliente: Option<IpAddr>, token: &str) -> Result<Operador, Problem> {
        let intentos = self.intentos.as_ref().zip(cliente);
        if let Some((intentos, cliente)) = intentos
            && let Some(espera) = intentos.espera(cliente).await
        {
            return Err(demasiados_fallos(espera));
        }
        let Some(autoridad) = &self.autoridad else {
            return Err(Problem::unavailable(
                "Este gateway no autentica operadores (AUTH_KUBERNETES=false): no hay con qué \
                 iniciar sesión",
            ));
        };
        match autoridad.autenticar(token).await {
            Ok(Some(operador)) => Ok(operador),
            Ok(None) => {
                if let Some((intentos, cliente)) = intentos {
                    intentos.fallo(cliente).await;
                }
                tracing::info!(
                    ?cliente,
                    "console: the cluster does not vouch for the token"
                );
                Err(no_autenticado(
                    "El clúster no reconoce este token (kubectl create token <cuenta>)",
                ))
            }
            Err(error) => Err(autoridad_no_disponible(&error)),
        }
    }

    /// Who reads the console's own routes: an operator's bearer token (an API client such as
    /// Postman or curl), or else the session of the page.
    async fn lector(&self, cliente: Option<IpAddr>, headers: &HeaderMap) -> Result<(), Problem> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match bearer {
            Some(clave) if clave.starts_with("ap_") => Err(prohibido(
                "La consola es de operadores (un token de Kubernetes); una clave de afiliado no la abre",
            )),
            Some(token) => self.revisar(cliente, token).await.map(drop),
            None => self.vigente(headers).await.map(drop),
        }
    }

    async fn iniciar(
        &self,
        cliente: Option<IpAddr>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, Problem> {
        let Ok(Inicio { token }) = serde_json::from_slice::<Inicio>(body) else {
            return Err(Problem::bad_request(
                "Se espera {\"token\": \"<token de Kubernetes>\"}",
            ));
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(Problem::bad_request("El token está vacío"));
        }
        let operador = self.revisar(cliente, &token).await?;
        tracing::info!(usuario = %operador.usuario, ?cliente, "console sign-in");
        let (sesion, cookie) = self.abrir(token, &operador, headers);
        let mut response = Json(self.describir(Some((&sesion, &operador))).await).into_response();
        if let Ok(valor) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, valor);
        }
        Ok(response)
    }
}

/// `DELETE /console/api/sesion`: signs out (the browser forgets the cookie). It needs the
/// CSRF token, so no other site can sign an operator out.
async fn cerrar(State(sesiones): State<Arc<Sesiones>>, headers: HeaderMap) -> Response {
    if let Some(sesion) = sesiones.leer(&headers)
        && !csrf_coincide(&headers, &sesion.csrf)
    {
        return csrf_rechazado().into_response();
    }
    let vacia = sesiones.cookie(String::new(), Duration::ZERO, &headers);
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(valor) = HeaderValue::from_str(&vacia.to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, valor);
    }
    response
}

/// Guards the console's own reads (`/console/api/replicas`, `/console/api/salud`): an
/// operator signed in or sending a token the cluster vouches for, or development mode.
pub async fn exigir_sesion(
    State(sesiones): State<Arc<Sesiones>>,
    request: Request,
    next: Next,
) -> Response {
    if sesiones.modo == AuthMode::Enforce
        && let Err(problem) = sesiones
            .lector(cliente_de(&request), request.headers())
            .await
    {
        return problem.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sesiones(config: SessionConfig) -> Sesiones {
        Sesiones::new(AuthMode::Enforce, &config, None).unwrap()
    }

    fn operador() -> Operador {
        Operador {
            usuario: "system:serviceaccount:ns:ana".into(),
            uid: "1".into(),
            grupos: vec![],
        }
    }

    fn con_cookie(cookie: &str) -> HeaderMap {
        let par = cookie.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(par).unwrap());
        headers
    }

    #[test]
    fn the_cookie_is_httponly_strict_and_carries_the_token_encrypted() {
        let s = sesiones(SessionConfig::default());
        let (_, cookie) = s.abrir("secret-token".into(), &operador(), &HeaderMap::new());
        assert!(cookie.starts_with("ap_consola="), "{cookie}");
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(cookie.contains("Path=/"), "{cookie}");
        assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
        assert!(!cookie.contains("secret-token"), "encrypted: {cookie}");
        let leida = s.leer(&con_cookie(&cookie)).expect("its own cookie reads");
        assert_eq!(leida.token.expose_secret(), "secret-token");
        assert_eq!(leida.usuario, "system:serviceaccount:ns:ana");

        let mut tls = HeaderMap::new();
        tls.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let (_, cookie) = s.abrir("t".into(), &operador(), &tls);
        assert!(cookie.contains("Secure"), "over TLS: {cookie}");
    }

    #[test]
    fn replicas_sharing_the_key_read_each_others_cookies_and_no_one_else_does() {
        let config = SessionConfig {
            console_session_key: Some("k".repeat(MIN_KEY_BYTES).into()),
            ..SessionConfig::default()
        };
        assert!(
            !format!("{config:?}").contains(&"k".repeat(MIN_KEY_BYTES)),
            "the key is never printed: {config:?}"
        );
        let (a, b) = (sesiones(config.clone()), sesiones(config));
        let (_, cookie) = a.abrir("tok".into(), &operador(), &HeaderMap::new());
        assert!(b.leer(&con_cookie(&cookie)).is_some());
        let otra = sesiones(SessionConfig::default());
        assert!(otra.leer(&con_cookie(&cookie)).is_none());
        // A cookie tampered with by one character is refused.
        let mut alterada = cookie.split(';').next().unwrap().to_owned();
        let ultimo = alterada.pop().unwrap();
        alterada.push(if ultimo == 'A' { 'B' } else { 'A' });
        assert!(b.leer(&con_cookie(&alterada)).is_none());
    }

    #[test]
    fn a_short_key_is_refused() {
        let config = SessionConfig {
            console_session_key: Some("short".into()),
            ..SessionConfig::default()
        };
        assert!(matches!(
            Sesiones::new(AuthMode::Enforce, &config, None),
            Err(ErrorSesiones::ClaveCorta(5))
        ));
    }

    #[test]
    fn an_expired_session_is_not_read() {
        let s = sesiones(SessionConfig {
            console_session_ttl: Duration::ZERO,
            ..SessionConfig::default()
        });
        let (_, cookie) = s.abrir("tok".into(), &operador(), &HeaderMap::new());
        assert!(s.leer(&con_cookie(&cookie)).is_none());
    }

    #[test]
    fn a_forwarded_request_carries_the_token_and_a_change_needs_the_csrf_token() {
        let s = sesiones(SessionConfig::default());
        let (sesion, cookie) = s.abrir("tok".into(), &operador(), &HeaderMap::new());

        let mut lectura = con_cookie(&cookie);
        s.acreditar(&Method::GET, &mut lectura).unwrap();
        assert_eq!(lectura[header::AUTHORIZATION], "Bearer tok");
        assert!(
            !lectura.contains_key(header::COOKIE),
            "the cookie stays here"
        );

        let mut sin_csrf = con_cookie(&cookie);
        let problem = s.acreditar(&Method::PATCH, &mut sin_csrf).unwrap_err();
        assert_eq!(problem.status, StatusCode::FORBIDDEN);
        assert!(!sin_csrf.contains_key(header::AUTHORIZATION));

        let mut otro_csrf = con_cookie(&cookie);
        otro_csrf.insert(CSRF_HEADER, HeaderValue::from_static("not-it"));
        assert!(s.acreditar(&Method::POST, &mut otro_csrf).is_err());

        let mut con_csrf = con_cookie(&cookie);
        con_csrf.insert(CSRF_HEADER, HeaderValue::from_str(&sesion.csrf).unwrap());
        s.acreditar(&Method::PATCH, &mut con_csrf).unwrap();
        assert_eq!(con_csrf[header::AUTHORIZATION], "Bearer tok");

        // A request with a credential of its own keeps it, cookie or not.
        let mut propia = con_cookie(&cookie);
        propia.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer ap_sk_x"),
        );
        s.acreditar(&Method::POST, &mut propia).unwrap();
        assert_eq!(propia[header::AUTHORIZATION], "Bearer ap_sk_x");
        assert!(!propia.contains_key(header::COOKIE));
    }

    #[test]
    fn csrf_tokens_are_random_url_safe_and_unpadded() {
        let a = base64_url(&rand::random::<[u8; 32]>());
        let b = base64_url(&rand::random::<[u8; 32]>());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
