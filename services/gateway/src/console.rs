//! The operations console at `/console`: the page's assets, built by `make console` into
//! `console/dist/` and embedded in the binary (no CDN, works offline), and the two reads the
//! page cannot make through the routes: the version each reports replica serves, and the
//! readiness of every service and of the broker.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use platform::http::Problem;
use serde::Serialize;

/// What `make console` built. A binary compiled before that serves a page saying so.
#[derive(rust_embed::Embed)]
#[folder = "console/dist/"]
#[allow_missing = true]
struct Assets;

/// How long the console waits for one replica or one readiness probe: a service that takes
/// longer is shown as not answering rather than holding the whole view.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The console's configuration, parsed from the gateway's flags.
#[derive(Debug, Clone)]
pub struct ConsoleTargets {
    /// Base URLs of the reports replicas' `/api/reports`. A host name that resolves to
    /// several addresses (a headless Service) stands for each of them.
    pub replicas: Vec<reqwest::Url>,
    /// `(name, URL)` of each readiness endpoint shown.
    pub health: Vec<(String, String)>,
}

struct Console {
    targets: ConsoleTargets,
    client: reqwest::Client,
}

/// The page, its sign-in ([`crate::sesion`]) and its reads, which need a session (the page's
/// assets do not: they hold no data, and the page shows its sign-in until there is one).
pub fn router(
    targets: ConsoleTargets,
    client: reqwest::Client,
    sesiones: Arc<crate::sesion::Sesiones>,
) -> Router {
    let console = Arc::new(Console { targets, client });
    let lecturas = Router::new()
        .route("/console/api/replicas", get(replicas))
        .route("/console/api/salud", get(salud))
        .route_layer(axum::middleware::from_fn_with_state(
            sesiones.clone(),
            crate::sesion::exigir_sesion,
        ))
        .with_state(console);
    Router::new()
        // `/console/` arrives here too: the platform trims a trailing slash before routing.
        .route("/console", get(index))
        .route("/console/api/{*rest}", get(unknown_api))
        .route("/console/{*path}", get(asset))
        .merge(lecturas)
        .merge(crate::sesion::router(sesiones))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

async fn unknown_api() -> Response {
    Problem::not_found(
        "La consola no tiene esta consulta; use /console/api/sesion, /console/api/replicas o /console/api/salud",
    )
    .into_response()
}

/// One embedded file, with a validator (its SHA-256) and a cache policy: the hashed files
/// under `assets/` never change, the page itself is revalidated on every load so a new build
/// is seen at once.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        if Assets::get("index.html").is_none() {
            return Problem::unavailable(
                "Este binario se compiló sin la consola: ejecute `make console` y vuelva a compilar (`make build`)",
            )
            .into_response();
        }
        return Problem::not_found("No existe ese archivo de la consola").into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, file.metadata.mimetype().to_owned())],
            file.data.into_owned(),
        )
            .into_response()
    };
    let response_headers = response.headers_mut();
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        response_headers.insert(header::ETAG, etag);
    }
    // Everything the page loads comes from this origin; nothing may frame it.
    response_headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    response_headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// One reports replica as the console shows it: its own answer to `GET /api/reports/version`,
/// or why it gave none.
#[derive(Debug, Serialize)]
pub struct Replica {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Replicas {
    pub replicas: Vec<Replica>,
}

async fn replicas(State(console): State<Arc<Console>>) -> Json<Replicas> {
    let mut urls = Vec::new();
    for base in &console.targets.replicas {
        urls.extend(each_address(base).await);
    }
    let asks = urls.into_iter().map(|url| {
        let client = console.client.clone();
        async move {
            let answer = async {
                client
                    .get(format!("{url}/version"))
                    .timeout(PROBE_TIMEOUT)
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<serde_json::Value>()
                    .await
            }
            .await;
            match answer {
                Ok(version) => Replica {
                    url,
                    version: Some(version),
                    error: None,
                },
                Err(error) => Replica {
                    url,
                    version: None,
                    error: Some(error.without_url().to_string()),
                },
            }
        }
    });
    Json(Replicas {
        replicas: futures::future::join_all(asks).await,
    })
}

/// `http://reports-pods:8020/api/reports` → one URL per address the name resolves to, so a
/// headless Service lists every pod. An address literal, or a name that does not resolve (the
/// replica is then shown as not answering), stays as given.
async fn each_address(base: &reqwest::Url) -> Vec<String> {
    let given = vec![base.as_str().trim_end_matches('/').to_owned()];
    let (Some(host), Some(port)) = (base.host_str(), base.port_or_known_default()) else {
        return given;
    };
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return given;
    }
    let Ok(addresses) = tokio::net::lookup_host((host, port)).await else {
        return given;
    };
    let mut addresses: Vec<SocketAddr> = addresses.collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return given;
    }
    addresses
        .into_iter()
        .map(|address| {
            let mut url = base.clone();
            let _ = url.set_ip_host(address.ip());
            url.as_str().trim_end_matches('/').to_owned()
        })
        .collect()
}

/// One service's readiness, as its `/ready` told it.
#[derive(Debug, Serialize)]
pub struct Servicio {
    pub nombre: String,
    pub url: String,
    pub listo: bool,
    /// The HTTP status; absent when the service did not answer at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codigo: Option<u16>,
    pub latencia_ms: u64,
    /// The service's own answer (its dependencies and their state), or why there was none.
    pub detalle: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct Salud {
    pub todos_listos: bool,
    pub servicios: Vec<Servicio>,
}

async fn salud(State(console): State<Arc<Console>>) -> Json<Salud> {
    let probes = console.targets.health.iter().map(|(nombre, url)| {
        let client = console.client.clone();
        async move {
            let started = std::time::Instant::now();
            let answer = client.get(url).timeout(PROBE_TIMEOUT).send().await;
            let (listo, codigo, detalle) = match answer {
                Ok(answer) => {
                    let status = answer.status();
                    let text = answer.text().await.unwrap_or_default();
                    let detalle =
                        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                    (status.is_success(), Some(status.as_u16()), detalle)
                }
                Err(error) => (
                    false,
                    None,
                    serde_json::Value::String(error.without_url().to_string()),
                ),
            };
            Servicio {
                nombre: nombre.clone(),
                url: url.clone(),
                listo,
                codigo,
                latencia_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                detalle,
            }
        }
    });
    let servicios = futures::future::join_all(probes).await;
    Json(Salud {
        todos_listos: servicios.iter().all(|s| s.listo),
        servicios,
    })
}
