//! The reports bounded context (API.md §5): a CQRS read model of payments and campaigns kept
//! in two versions from the same events, served in the active version with a zero-downtime
//! switch, and legacy reporting on top of the data services.
//!
//! Every replica shares the `reports` schema and one Key_Shared subscription, so each event is
//! applied once, to both versions, by whichever replica receives it; any replica then serves
//! either version. The active version comes from a [`version::FuenteVersion`]: a database row
//! (`make run`) or a `ReportVersion` resource confirmed by the operator (Kubernetes).

pub mod api;
pub mod domain;
pub mod kubernetes;
pub mod legacy;
pub mod projection;
pub mod queries;
pub mod version;

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use platform::{
    config::{DatabaseConfig, HttpConfig, PulsarConfig},
    http::{self, ContextReadiness, DependencyStatus, Readiness},
    inbox::Transactional,
    messaging::{self, LazyBroker, Subscription},
    retention::{Retention, RetentionConfig, Rule},
};
use sqlx::{PgPool, migrate::Migrator};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use domain::{Fuente, Version};
pub use projection::{Progreso, Proyeccion, TOPICS};

/// The PostgreSQL schema this context owns.
pub const SCHEMA: &str = "reports";
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/reports");

/// `aeropartners reports [rebuild]`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub accion: Option<Accion>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Accion {
    /// Rebuild one version (or both) of the read model from the stored events, while the
    /// replicas keep serving; exits when done.
    Rebuild {
        /// The version to rebuild; both when omitted.
        #[arg(long = "version", value_enum)]
        version: Option<VersionArg>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VersionArg {
    V1,
    V2,
}

impl From<VersionArg> for Version {
    fn from(v: VersionArg) -> Self {
        match v {
            VersionArg::V1 => Version::V1,
            VersionArg::V2 => Version::V2,
        }
    }
}

/// The reports service.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub pulsar: PulsarConfig,
    #[command(flatten)]
    pub retention: RetentionConfig,
    /// Where the active version comes from.
    #[arg(
        long,
        env = "REPORT_VERSION_SOURCE",
        value_enum,
        default_value = "database"
    )]
    pub version_source: Fuente,
    /// With `database`: how often the row is re-read besides LISTEN/NOTIFY (a safety net for
    /// a notification lost while reconnecting).
    #[arg(long, env = "REPORT_VERSION_POLL", default_value = "2s", value_parser = platform::config::parse_duration)]
    pub version_poll: Duration,
    #[command(flatten)]
    pub kubernetes: kubernetes::KubeConfig,
    /// A report computed less than this long ago is served again (0 computes every request).
    #[arg(long, env = "REPORT_CACHE_TTL", default_value = "100ms", value_parser = platform::config::parse_duration)]
    pub cache_ttl: Duration,
    /// Data service of v1 (legacy reporting).
    #[arg(
        long,
        env = "DATA_SERVICE_V1_URL",
        default_value = "http://127.0.0.1:9001"
    )]
    pub data_service_v1: String,
    /// Data service of v2 (legacy reporting).
    #[arg(
        long,
        env = "DATA_SERVICE_V2_URL",
        default_value = "http://127.0.0.1:9002"
    )]
    pub data_service_v2: String,
    /// Timeout of one call to a data service.
    #[arg(long, env = "DATA_SERVICE_TIMEOUT", default_value = "10s", value_parser = platform::config::parse_duration)]
    pub data_service_timeout: Duration,
    /// This replica's name in `/api/reports/version` and the logs (the pod name in Kubernetes;
    /// the listen address when empty).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub instance: String,
    #[command(flatten)]
    pub auth: access::AuthConfig,
}

pub async fn database(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    access::conectar(config, SCHEMA, &MIGRATOR).await
}

/// The consumer's subscription: Key_Shared, so replicas share the work and an aggregate's
/// events stay in order (the projection does not need it, but it keeps lag low).
pub fn subscription() -> Subscription {
    Subscription {
        topics: TOPICS.iter().map(|t| (*t).to_owned()).collect(),
        name: "reports".to_owned(),
        // Few lanes, so a busy lane applies many events per transaction.
        lanes: 2,
        attempts: 5,
        max_redeliveries: 10,
        drain_timeout: messaging::DEFAULT_DRAIN_TIMEOUT,
    }
}

/// `/ready`: the context's database and migrations, a known version, and a projection that
/// has worked off the backlog it found at start. The broker is needed only for that first
/// catch-up: afterwards reports are served from the projection even while Pulsar is away.
struct ReportsReadiness {
    context: ContextReadiness,
    state: api::ApiState,
}

#[async_trait::async_trait]
impl Readiness for ReportsReadiness {
    async fn check(&self) -> Vec<DependencyStatus> {
        let mut checks = self.context.check().await;
        let conectado = self.state.conectado_desde.get().copied();
        let proyeccion = if self.state.progreso.al_dia(conectado) {
            Ok(format!(
                "al día (lag {} ms)",
                self.state.progreso.lag().as_millis()
            ))
        } else if conectado.is_none() {
            Err("esperando al broker para ponerse al día".to_owned())
        } else {
            Err(format!(
                "poniéndose al día (lag {} ms)",
                self.state.progreso.lag().as_millis()
            ))
        };
        checks.push(DependencyStatus::from_result(
            "projection",
            true,
            proyeccion,
        ));
        // Read before the server started; stale while its source is unreachable.
        let version = self.state.version.borrow().clone();
        let detalle = format!(
            "sirviendo {}{}",
            version.activa,
            if version.desactualizada {
                " (fuente inalcanzable: última versión conocida)"
            } else {
                ""
            }
        );
        checks.push(DependencyStatus::from_result(
            "version",
            false,
            Ok::<_, String>(detalle),
        ));
        checks
    }
}

/// The reports HTTP application (used by the binary and the tests).
pub fn app(
    state: api::ApiState,
    datos: Arc<legacy::ServiciosDatos>,
    broker: LazyBroker,
    http_config: &HttpConfig,
    acceso: &access::Acceso,
) -> http::App {
    let legacy = legacy::router(legacy::LegacyState {
        api: state.clone(),
        datos,
    });
    let (router, openapi) = api::router(state.clone()).merge(legacy).split_for_parts();
    let readiness = Arc::new(ReportsReadiness {
        context: ContextReadiness {
            pool: state.pool.clone(),
            schema: SCHEMA,
            migrator: &MIGRATOR,
            broker,
            broker_required: false,
            probe_topic: TOPICS[0],
        },
        state,
    });
    http::app(
        "reports",
        acceso.proteger(router),
        acceso.documentar(openapi),
        readiness,
        http_config,
    )
}

/// Runs the service until `shutdown`, or the rebuild and exits.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    match args.accion {
        Some(Accion::Rebuild { version }) => {
            let pool = database(&args.config.database).await?;
            let versiones = version.map_or(Version::ALL.to_vec(), |v| vec![v.into()]);
            for version in versiones {
                let started = Instant::now();
                let filas = projection::rebuild(&pool, version).await?;
                let filas: Vec<String> = filas.iter().map(|(t, n)| format!("{t}={n}")).collect();
                tracing::info!(%version, rows = %filas.join(" "), elapsed_ms = started.elapsed().as_millis() as u64, "projection rebuilt");
                println!(
                    "{version}: {} in {} ms",
                    filas.join(" "),
                    started.elapsed().as_millis()
                );
            }
            Ok(())
        }
        None => serve(args.config, shutdown).await,
    }
}

async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = database(&config.database).await?;
    let fuente: Arc<dyn version::FuenteVersion> = match config.version_source {
        Fuente::Database => Arc::new(version::FuenteBaseDeDatos::new(
            pool.clone(),
            config.version_poll,
        )),
        Fuente::Kubernetes => {
            Arc::new(kubernetes::FuenteKubernetes::new(&config.kubernetes, pool.clone()).await?)
        }
    };
    // Serve nothing before the version is known; with Kubernetes unreachable, the last version
    // this context persisted.
    let inicial = fuente.leer().await?;
    version::marcar_activa(inicial.activa);
    let (version_tx, _) = watch::channel(inicial);
    let seguidor = tokio::spawn(fuente.clone().seguir(version_tx.clone(), shutdown.clone()));

    let broker = LazyBroker::connect_in_background(config.pulsar.clone(), shutdown.clone());
    let progreso = Arc::new(Progreso::default());
    let conectado_desde = Arc::new(OnceLock::new());
    let consumer = {
        let (pool, broker, shutdown, progreso, conectado) = (
            pool.clone(),
            broker.clone(),
            shutdown.clone(),
            progreso.clone(),
            conectado_desde.clone(),
        );
        tokio::spawn(async move {
            if let Some(connected) = broker.wait(&shutdown).await {
                let _ = conectado.set(Instant::now());
                let handler = Arc::new(Transactional(Proyeccion::new(pool, progreso)));
                messaging::run_consumer(connected, subscription(), handler, shutdown).await;
            }
        })
    };
    let instancia = if config.instance.is_empty() {
        config.http.listen.to_string()
    } else {
        config.instance.clone()
    };
    let state = api::ApiState {
        pool: pool.clone(),
        version: version_tx,
        fuente,
        cache: (!config.cache_ttl.is_zero()).then(|| api::cache(config.cache_ttl)),
        progreso,
        conectado_desde,
        instancia: instancia.into(),
    };
    let datos = Arc::new(legacy::ServiciosDatos::new(
        &config.data_service_v1,
        &config.data_service_v2,
        config.data_service_timeout,
    )?);
    let retention = Retention::new(
        pool.clone(),
        SCHEMA,
        Rule::platform_tables(&config.retention),
    )
    .spawn(config.retention.retention_interval, shutdown.clone());
    let acceso = access::Acceso::start(
        &config.auth,
        &[config.http.listen],
        pool.clone(),
        shutdown.clone(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(config.http.listen).await?;
    let app = app(state, datos, broker, &config.http, &acceso);
    http::serve(listener, app, shutdown.clone(), &config.http).await?;
    shutdown.cancel();
    let _ = tokio::join!(consumer, seguidor, retention);
    Ok(())
}
