//! The event collector BFF (API.md §6): partners' tracking events (clicks, impressions,
//! conversions, page views) come in one at a time or in batches, are authenticated per
//! source, deduplicated across replicas, rate-limited per affiliate, stored in PostgreSQL by
//! group commit before they are acknowledged, and published to `tracking.evt.*` through the
//! transactional outbox.

pub mod api;
pub mod application;
pub mod domain;
pub mod infrastructure;

use std::{path::PathBuf, sync::Arc, time::Duration};

use platform::{
    config::{DatabaseConfig, HttpConfig, PulsarConfig, parse_duration},
    group_commit::{BatchStore, GroupCommitConfig},
    http::{self, ContextReadiness, DependencyStatus, Readiness},
    messaging::LazyBroker,
    outbox::Relay,
    retention::{Retention, RetentionConfig, Rule, parse_horizon},
};
use sqlx::{PgPool, migrate::Migrator};
use tokio_util::sync::CancellationToken;

use crate::{
    application::{Cola, Envio, Recolector, RespuestaEnvio},
    domain::{Directorio, Reglas, TipoEvento},
    infrastructure::{almacen::PgAlmacen, consultas},
};

/// The PostgreSQL schema this context owns.
pub const SCHEMA: &str = "event_collector";
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/event-collector");

/// `aeropartners event-collector`.
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
    #[command(flatten)]
    pub collector: CollectorConfig,
    #[command(flatten)]
    pub auth: access::AuthConfig,
}

/// The collector's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorConfig {
    /// YAML file of affiliates, tiers, permissions and credentials (see
    /// config/afiliados.demo.yaml). Without it every affiliate is unknown: public sources only.
    #[arg(long = "affiliates", env = "AFFILIATES_FILE")]
    pub affiliates_file: Option<PathBuf>,
    /// How long an event's dedup key (and the event) is kept: a duplicate within this horizon is
    /// recognised by every replica.
    #[arg(long, env = "DEDUP_RETENTION", default_value = "7d", value_parser = parse_horizon)]
    pub dedup_retention: Duration,
    /// Events that may wait for (or be in) a write transaction at once; beyond that the answer
    /// is 503. Bounds the collector's memory in events, whatever mix of singles and batches.
    #[arg(long, env = "COLLECTOR_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub queue_capacity: usize,
    /// Write transactions in flight at once in this process. Several overlap one
    /// transaction's commit (fsync) with the next one's statements; on this 2-core machine 4
    /// gave the most events per second (`make bench`).
    #[arg(long, env = "COLLECTOR_WRITERS", default_value_t = 4)]
    pub writers: usize,
    /// Largest number of events one write transaction stores.
    #[arg(long, env = "COLLECTOR_MAX_BATCH_EVENTS", default_value_t = 2000)]
    pub max_batch_events: usize,
    /// Largest single event, in bytes (413 beyond).
    #[arg(long, env = "COLLECTOR_MAX_EVENT_BYTES", default_value_t = 32 * 1024)]
    pub max_event_bytes: usize,
    /// Largest request body, in bytes (413 beyond).
    #[arg(long, env = "COLLECTOR_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Largest batch, in events (413 beyond).
    #[arg(long, env = "COLLECTOR_MAX_BATCH", default_value_t = 500)]
    pub max_batch: usize,
    /// How far a timestamped webhook signature may be from the server's clock.
    #[arg(long, env = "WEBHOOK_TOLERANCE", default_value = "5m", value_parser = parse_duration)]
    pub webhook_tolerance: Duration,
    /// Events older than this are discarded (outside any attribution window).
    #[arg(long, env = "ATTRIBUTION_WINDOW", default_value = "30d", value_parser = parse_duration)]
    pub attribution_window: Duration,
}

impl CollectorConfig {
    pub fn directorio(&self) -> anyhow::Result<Directorio> {
        match &self.affiliates_file {
            None => {
                tracing::warn!(
                    "no AFFILIATES_FILE: every affiliate is unknown (public sources only)"
                );
                Ok(Directorio::vacio())
            }
            Some(path) => {
                let yaml = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the affiliates file {}: {e}", path.display())
                })?;
                let directorio = Directorio::from_yaml(&yaml)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                tracing::info!(file = %path.display(), affiliates = directorio.configurados(),
                    "affiliates loaded");
                Ok(directorio)
            }
        }
    }

    pub fn reglas(&self) -> Reglas {
        Reglas {
            tolerancia_firma: self.webhook_tolerance,
            ventana_atribucion: self.attribution_window,
            ..Reglas::default()
        }
    }

    fn cola(&self) -> GroupCommitConfig {
        GroupCommitConfig {
            // A largest batch must always fit, or it would be refused forever.
            capacity: self.queue_capacity.max(self.max_batch),
            writers: self.writers,
            max_batch_weight: self.max_batch_events,
        }
    }

    fn limites(&self) -> api::Limites {
        api::Limites {
            max_bytes_evento: self.max_event_bytes,
            max_eventos_lote: self.max_batch,
            espera_reintento: Duration::from_secs(5),
        }
    }
}

/// Connects the pool and applies migrations when configured to (the context's own, and the
/// access context's, whose keys authenticate partners' events).
pub async fn database(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    access::conectar(config, SCHEMA, &MIGRATOR).await
}

/// `/ready`: the database and migrations (required), the broker and the publication backlog
/// (reported: events are stored and published later), and the write queue (required: a
/// collector whose writers stopped cannot store anything).
struct CollectorReadiness {
    base: ContextReadiness,
    cola: Cola,
    escritores: Arc<tokio::task::JoinHandle<()>>,
}

#[async_trait::async_trait]
impl Readiness for CollectorReadiness {
    async fn check(&self) -> Vec<DependencyStatus> {
        let mut checks = self.base.check().await;
        let backlog = consultas::pendientes_de_publicar(&self.base.pool)
            .await
            .map(|(n, oldest)| {
                format!("{n} accepted events waiting for publication, oldest {oldest:.1} s")
            })
            .map_err(|e| e.to_string());
        checks.push(DependencyStatus::from_result("publication", false, backlog));
        let (en_cola, capacidad) = self.cola.occupancy();
        let writers = if self.escritores.is_finished() {
            Err("the writers stopped".to_owned())
        } else {
            Ok(format!(
                "{en_cola} of {capacidad} events queued or being stored"
            ))
        };
        checks.push(DependencyStatus::from_result("writers", true, writers));
        checks
    }
}

/// The collector's HTTP application and the task running its writers (stopped by `writers`).
pub fn app(
    pool: PgPool,
    broker: LazyBroker,
    http: &HttpConfig,
    config: &CollectorConfig,
    directorio: Directorio,
    acceso: &access::Acceso,
    writers: CancellationToken,
) -> (http::App, Arc<tokio::task::JoinHandle<()>>) {
    let almacen: Arc<dyn BatchStore<Envio, RespuestaEnvio>> =
        Arc::new(PgAlmacen::new(pool.clone()));
    let (cola, escritores) = Cola::start("collector", almacen, config.cola(), writers);
    let escritores = Arc::new(escritores);
    let recolector = Recolector {
        directorio: Arc::new(directorio),
        reglas: config.reglas(),
        cola: cola.clone(),
    };
    let state = api::ApiState {
        pool: pool.clone(),
        recolector,
        limites: config.limites(),
    };
    let (router, openapi) = api::router(state);
    let (router, openapi) = (acceso.proteger(router), acceso.documentar(openapi));
    let readiness: Arc<dyn Readiness> = Arc::new(CollectorReadiness {
        base: ContextReadiness {
            pool,
            schema: SCHEMA,
            migrator: &MIGRATOR,
            broker,
            broker_required: false,
            probe_topic: TipoEvento::Click.topic(),
        },
        cola,
        escritores: escritores.clone(),
    });
    // API.md §6 names the probes under the service's prefix too.
    let router = router
        .route(
            "/event-collector/health",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!({"status": "healthy", "service": "event-collector"}))
            }),
        )
        .route(
            "/event-collector/ready",
            axum::routing::get(http::ready).with_state(readiness.clone()),
        );
    let http = HttpConfig {
        body_limit_bytes: config.max_request_bytes,
        ..http.clone()
    };
    (
        http::app("event-collector", router, openapi, readiness, &http),
        escritores,
    )
}

/// The collector's tables and how long each keeps its rows: the platform's, plus the events
/// themselves (their dedup keys) and the used webhook signatures (until each expires).
pub fn retention_rules(config: &Config) -> Vec<Rule> {
    let mut rules = Rule::platform_tables(&config.retention);
    rules.push(Rule {
        table: "eventos",
        key: "id_evento",
        aged_by: "recibido_en",
        horizon: config.collector.dedup_retention,
    });
    rules.push(Rule {
        table: "firmas_usadas",
        key: "firma",
        aged_by: "caduca_en",
        horizon: Duration::ZERO,
    });
    rules
}

/// Runs the API, the writers, the outbox relay and the retention job until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let directorio = config.collector.directorio()?;
    let pool = database(&config.database).await?;
    let broker = LazyBroker::connect_in_background(config.pulsar.clone(), shutdown.clone());
    let relay = Relay::spawn(pool.clone(), broker.clone(), SCHEMA, shutdown.clone());
    let retention = Retention::new(pool.clone(), SCHEMA, retention_rules(&config))
        .spawn(config.retention.retention_interval, shutdown.clone());
    // The writers outlive the HTTP server's drain: every request still in flight is answered.
    let writers = CancellationToken::new();
    let acceso = access::Acceso::start(
        &config.auth,
        &[config.http.listen],
        pool.clone(),
        shutdown.clone(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(config.http.listen).await?;
    let (app, escritores) = app(
        pool,
        broker,
        &config.http,
        &config.collector,
        directorio,
        &acceso,
        writers.clone(),
    );
    http::serve(listener, app, shutdown.clone(), &config.http).await?;
    shutdown.cancel();
    writers.cancel();
    let _ = tokio::join!(relay, retention);
    if let Ok(handle) = Arc::try_unwrap(escritores) {
        let _ = handle.await;
    }
    Ok(())
}
