//! The campaigns bounded context (API.md §4): campaigns with a lifecycle, a budget and metrics;
//! events through the outbox; successful payments and tracked clicks, impressions and
//! conversions attributed exactly once.

pub mod api;
pub mod application;
pub mod domain;
pub mod infrastructure;

use std::sync::Arc;

use access::Acceso;
use platform::{
    config::{DatabaseConfig, HttpConfig, PulsarConfig},
    http::{self, ContextReadiness},
    idempotency::IdempotencyStore,
    inbox::Transactional,
    messaging::{self, LazyBroker, Subscription},
    outbox::Relay,
    retention::{Retention, RetentionConfig, Rule},
};
use sqlx::{PgPool, migrate::Migrator};
use tokio_util::sync::CancellationToken;

use crate::application::AtribucionDePagos;

/// The PostgreSQL schema this context owns.
pub const SCHEMA: &str = "campaigns";
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/campaigns");

/// The topic whose events this context attributes to campaigns.
pub const PAYMENTS_COMPLETED_TOPIC: &str = "payments.evt.completed";

/// `aeropartners campaigns`: the HTTP API, the outbox relay and the payment consumer.
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
    pub auth: access::AuthConfig,
}

/// Connects the pool and applies migrations when configured to (the context's own, and the
/// access context's, whose keys authenticate this API's callers).
pub async fn database(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    access::conectar(config, SCHEMA, &MIGRATOR).await
}

/// The complete campaigns HTTP application (used by the binary and by the tests).
pub fn app(pool: PgPool, broker: LazyBroker, http: &HttpConfig, acceso: &Acceso) -> http::App {
    let state = api::ApiState {
        idempotency: IdempotencyStore::new(pool.clone(), "campaigns"),
        pool: pool.clone(),
    };
    let (router, openapi) = api::router(state);
    let readiness = Arc::new(ContextReadiness {
        pool,
        schema: SCHEMA,
        migrator: &MIGRATOR,
        broker,
        // Commands keep working without the broker: the outbox holds their events.
        broker_required: false,
        probe_topic: PAYMENTS_COMPLETED_TOPIC,
    });
    http::app(
        "campaigns",
        acceso.proteger(router),
        acceso.documentar(openapi),
        readiness,
        http,
    )
}

/// The payment consumer's subscription: Key_Shared, so replicas share the work.
pub fn payments_subscription() -> Subscription {
    Subscription {
        topics: vec![PAYMENTS_COMPLETED_TOPIC.to_owned()],
        name: application::CONSUMER_NAME.to_owned(),
        // Few lanes, so a busy lane attributes many payments per transaction (its batches lock
        // their campaigns in id order, so lanes and replicas never deadlock).
        lanes: 2,
        attempts: 5,
        max_redeliveries: 10,
        drain_timeout: messaging::DEFAULT_DRAIN_TIMEOUT,
    }
}

/// Consumes `payments.evt.completed` until `shutdown`.
pub async fn run_payment_consumer(pool: PgPool, broker: LazyBroker, shutdown: CancellationToken) {
    let Some(connected) = broker.wait(&shutdown).await else {
        return;
    };
    let handler = Arc::new(Transactional(AtribucionDePagos::new(pool)));
    messaging::run_consumer(connected, payments_subscription(), handler, shutdown).await;
}

/// The tracking consumer's subscription: Key_Shared on the campaign key, so replicas share
/// the campaigns and one campaign's increments never race each other.
pub fn tracking_subscription() -> Subscription {
    Subscription {
        topics: application::TRACKING_TOPICS
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
        name: application::TRACKING_CONSUMER.to_owned(),
        // Few lanes, so a busy lane applies many events per transaction.
        lanes: 4,
        attempts: 5,
        max_redeliveries: 10,
        drain_timeout: messaging::DEFAULT_DRAIN_TIMEOUT,
    }
}

/// Counts tracked clicks, impressions and conversions until `shutdown`.
pub async fn run_tracking_consumer(pool: PgPool, broker: LazyBroker, shutdown: CancellationToken) {
    let Some(connected) = broker.wait(&shutdown).await else {
        return;
    };
    let handler = Arc::new(Transactional(application::ContadorDeTracking::new(pool)));
    messaging::run_consumer(connected, tracking_subscription(), handler, shutdown).await;
}

/// Runs the API, the relay and the consumers until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = database(&config.database).await?;
    let broker = LazyBroker::connect_in_background(config.pulsar.clone(), shutdown.clone());
    let relay = Relay::spawn(pool.clone(), broker.clone(), SCHEMA, shutdown.clone());
    let consumer = tokio::spawn(run_payment_consumer(
        pool.clone(),
        broker.clone(),
        shutdown.clone(),
    ));
    let tracking = tokio::spawn(run_tracking_consumer(
        pool.clone(),
        broker.clone(),
        shutdown.clone(),
    ));
    let retention = Retention::new(
        pool.clone(),
        SCHEMA,
        Rule::platform_tables(&config.retention),
    )
    .spawn(config.retention.retention_interval, shutdown.clone());
    let acceso = Acceso::start(
        &config.auth,
        &[config.http.listen],
        pool.clone(),
        shutdown.clone(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(config.http.listen).await?;
    let app = app(pool, broker, &config.http, &acceso);
    http::serve(listener, app, shutdown.clone(), &config.http).await?;
    shutdown.cancel();
    let _ = tokio::join!(relay, consumer, tracking, retention);
    Ok(())
}
