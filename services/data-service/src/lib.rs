//! Data services v1/v2 (API.md §5.3): the upstreams legacy reporting reads its `datos` from.
//! One crate, the version chosen at start. Each version keeps its own projection of the
//! payment and campaign events (schema `data_service_v1` or `data_service_v2`) and serves its
//! report paths from it: v1 the simple Spanish shapes, v2 the detailed English ones.

mod projection;
mod reports;

use std::sync::Arc;

use axum::{Json, routing::get};
use platform::{
    config::{DatabaseConfig, HttpConfig, PulsarConfig},
    db,
    http::{self, ContextReadiness, Docs},
    inbox::Transactional,
    messaging::{self, LazyBroker, Subscription},
    retention::{Retention, RetentionConfig, Rule},
};
use sqlx::{PgPool, migrate::Migrator};
use tokio_util::sync::CancellationToken;

pub use projection::{Proyeccion, TOPICS};

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/data-service");

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }

    /// Each version owns its schema: two services never write the same rows.
    pub fn schema(self) -> &'static str {
        match self {
            Self::V1 => "data_service_v1",
            Self::V2 => "data_service_v2",
        }
    }
}

/// `aeropartners data-service --version v1|v2`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Which data service to be.
    #[arg(long = "version", env = "DATA_SERVICE_VERSION", value_enum)]
    pub version: Version,
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub pulsar: PulsarConfig,
    #[command(flatten)]
    pub retention: RetentionConfig,
}

pub async fn database(config: &DatabaseConfig, version: Version) -> anyhow::Result<PgPool> {
    Ok(db::connect_and_migrate(config, version.schema(), &MIGRATOR).await?)
}

/// The data service's HTTP application.
pub fn app(
    pool: PgPool,
    broker: LazyBroker,
    version: Version,
    http_config: &HttpConfig,
) -> http::App {
    let (router, openapi) = reports::router(pool.clone(), version);
    let router = router.route(
        "/health",
        get(move || async move {
            Json(serde_json::json!({"status": "healthy", "version": version.as_str()}))
        }),
    );
    let readiness = Arc::new(ContextReadiness {
        pool,
        schema: version.schema(),
        migrator: &MIGRATOR,
        broker,
        // Reports are served from the projection even while the broker is away.
        broker_required: false,
        probe_topic: TOPICS[0],
    });
    http::app_with_health(
        router,
        Docs::Static(Box::new(openapi)),
        readiness,
        http_config,
    )
}

pub fn subscription(version: Version) -> Subscription {
    Subscription {
        topics: TOPICS.iter().map(|t| (*t).to_owned()).collect(),
        name: format!("data-service-{}", version.as_str()),
        // Few lanes, so a busy lane applies many events per transaction (batches form behind
        // a busy lane, not behind an idle one).
        lanes: 2,
        attempts: 5,
        max_redeliveries: 10,
        drain_timeout: messaging::DEFAULT_DRAIN_TIMEOUT,
    }
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = database(&config.database, config.version).await?;
    let broker = LazyBroker::connect_in_background(config.pulsar.clone(), shutdown.clone());
    let consumer = {
        let (pool, broker, shutdown, version) = (
            pool.clone(),
            broker.clone(),
            shutdown.clone(),
            config.version,
        );
        tokio::spawn(async move {
            if let Some(connected) = broker.wait(&shutdown).await {
                let handler = Arc::new(Transactional(Proyeccion::new(pool, version)));
                messaging::run_consumer(connected, subscription(version), handler, shutdown).await;
            }
        })
    };
    let retention = Retention::new(
        pool.clone(),
        config.version.schema(),
        Rule::platform_tables(&config.retention),
    )
    .spawn(config.retention.retention_interval, shutdown.clone());
    let listener = tokio::net::TcpListener::bind(config.http.listen).await?;
    let app = app(pool, broker, config.version, &config.http);
    http::serve(listener, app, shutdown.clone(), &config.http).await?;
    shutdown.cancel();
    let _ = tokio::join!(consumer, retention);
    Ok(())
}
