//! The payments bounded context (API.md §3): accept payments exactly once, charge each exactly
//! once through the `PasarelaDePagos` port, and announce every state change through the outbox.

pub mod api;
pub mod application;
pub mod domain;
pub mod infrastructure;

use std::{sync::Arc, time::Duration};

use access::Acceso;
use platform::{
    config::{DatabaseConfig, HttpConfig, PulsarConfig},
    group_commit::GroupCommitConfig,
    http::{self, ContextReadiness},
    idempotency::IdempotencyStore,
    inbox::Transactional,
    messaging::{self, LazyBroker, Subscription},
    outbox::Relay,
    retention::{Retention, RetentionConfig, Rule},
};
use sqlx::{PgPool, migrate::Migrator};
use tokio_util::sync::CancellationToken;

use crate::{
    application::ProcesadorDePagos,
    domain::TipoEventoPago,
    infrastructure::pasarela::{
        ConfigStripeSimulado, PasarelaDePagos, PasarelaLimitada, StripeSimulado,
    },
};

/// The PostgreSQL schema this context owns.
pub const SCHEMA: &str = "payments";
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/payments");

/// `aeropartners payments`: the HTTP API and the outbox relay.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiConfig {
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
    /// Share of a tracked conversion's value paid to its affiliate as a commission payment.
    #[arg(long, env = "COMMISSION_RATE", default_value = "0.10")]
    pub commission_rate: rust_decimal::Decimal,
}

/// `aeropartners payments-worker`: consumes `payments.evt.pending` and charges payments.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    /// Address of the worker's own /health, /ready and /metrics.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "127.0.0.1:8011")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub pulsar: PulsarConfig,
    #[command(flatten)]
    pub gateway: ConfigStripeSimulado,
    /// Payments charged in parallel by one worker (the gateway is slow: seconds per charge).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// A payment still PENDIENTE or PROCESANDO after this long is resumed by the sweeper.
    #[arg(long, env = "WORKER_STALLED_AFTER", default_value = "5m", value_parser = platform::config::parse_duration)]
    pub stalled_after: Duration,
}

/// Connects the pool and applies migrations when configured to (the context's own, and the
/// access context's, whose keys authenticate this API's callers).
pub async fn database(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    access::conectar(config, SCHEMA, &MIGRATOR).await
}

fn readiness(pool: PgPool, broker: LazyBroker, broker_required: bool) -> ContextReadiness {
    ContextReadiness {
        pool,
        schema: SCHEMA,
        migrator: &MIGRATOR,
        broker,
        broker_required,
        probe_topic: TipoEventoPago::PagoPendiente.topic(),
    }
}

/// How create requests are committed together: two transactions in flight (one committing while
/// the next batch forms), up to 256 payments each, 4 096 waiting at most (then 503).
const CREATE_QUEUE: GroupCommitConfig = GroupCommitConfig {
    capacity: 4096,
    writers: 2,
    max_batch_weight: 256,
};

/// The complete payments HTTP application (used by the binary and by the tests).
///
/// Its create queue's writers run until the application is dropped: requests still waiting
/// hold the queue open, so every accepted request is answered.
pub fn app(pool: PgPool, broker: LazyBroker, http: &HttpConfig, acceso: &Acceso) -> http::App {
    let (creacion, _writers) = application::ColaCreacion::start(
        "payments",
        Arc::new(application::CreadorDePagos::new(pool.clone())),
        CREATE_QUEUE,
        CancellationToken::new(),
    );
    let state = api::ApiState {
        idempotency: IdempotencyStore::new(pool.clone(), "pagos"),
        pool: pool.clone(),
        creacion,
    };
    let (router, openapi) = api::router(state);
    let readiness = Arc::new(readiness(pool, broker, false));
    http::app(
        "payments",
        acceso.proteger(router),
        acceso.documentar(openapi),
        readiness,
        http,
    )
}

/// The commission consumer's subscription: Key_Shared, so replicas share the conversions.
pub fn commissions_subscription() -> Subscription {
    Subscription {
        topics: vec![application::CONVERSIONS_TOPIC.to_owned()],
        name: application::COMMISSIONS_CONSUMER.to_owned(),
        // Few lanes, so a busy lane applies many conversions per transaction.
        lanes: 4,
        attempts: 5,
        max_redeliveries: 10,
        drain_timeout: messaging::DEFAULT_DRAIN_TIMEOUT,
    }
}

/// Turns tracked conversions into commission payments until `shutdown`.
pub async fn run_commissions(
    pool: PgPool,
    broker: LazyBroker,
    rate: rust_decimal::Decimal,
    shutdown: CancellationToken,
) {
    let Some(connected) = broker.wait(&shutdown).await else {
        return;
    };
    let handler = Arc::new(Transactional(application::Comisiones::new(pool, rate)));
    messaging::run_consumer(connected, commissions_subscription(), handler, shutdown).await;
}

/// Runs the API, the outbox relay and the commission consumer until `shutdown`.
pub async fn run_api(config: ApiConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    application::registrar_metricas();
    let pool = database(&config.database).await?;
    let broker = LazyBroker::connect_in_background(config.pulsar.clone(), shutdown.clone());
    let relay = Relay::spawn(pool.clone(), broker.clone(), SCHEMA, shutdown.clone());
    let commissions = tokio::spawn(run_commissions(
        pool.clone(),
        broker.clone(),
        config.commission_rate,
        shutdown.clone(),
    ));
    // The worker shares this schema; the API, always deployed, keeps it trimmed for both.
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
    let _ = tokio::join!(relay, retention, commissions);
    Ok(())
}

/// Charges in flight per lane of the worker: a lane claims the payments queued in it (up to
/// 32) in one transaction and records their results in one; fewer, fuller lanes mean fewer
/// transactions per payment.
const CHARGES_PER_LANE: usize = 8;

/// The worker's subscription to `payments.evt.pending`, for `concurrency` charges in flight.
pub fn worker_subscription(concurrency: usize) -> Subscription {
    Subscription {
        topics: vec![TipoEventoPago::PagoPendiente.topic().to_owned()],
        name: application::CONSUMER_NAME.to_owned(),
        lanes: concurrency.div_ceil(CHARGES_PER_LANE).max(1),
        attempts: 5,
        max_redeliveries: 10,
        drain_timeout: messaging::DEFAULT_DRAIN_TIMEOUT,
    }
}

/// Runs the worker with the given gateway until `shutdown`.
pub async fn run_worker_with(
    pool: PgPool,
    broker: LazyBroker,
    pasarela: Arc<dyn PasarelaDePagos>,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    application::registrar_metricas();
    run_worker_subscribed(
        pool,
        broker,
        pasarela,
        worker_subscription(concurrency),
        concurrency,
        shutdown,
    )
    .await;
}

/// Like [`run_worker_with`], with the subscription's settings spelt out.
pub async fn run_worker_subscribed(
    pool: PgPool,
    broker: LazyBroker,
    pasarela: Arc<dyn PasarelaDePagos>,
    subscription: Subscription,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let Some(connected) = broker.wait(&shutdown).await else {
        return;
    };
    // No more charges in flight than `concurrency`, however many payments the lanes claimed.
    let pasarela = Arc::new(PasarelaLimitada::new(
        pasarela,
        concurrency,
        shutdown.clone(),
    ));
    let handler = Arc::new(ProcesadorDePagos::new(pool, pasarela));
    messaging::run_consumer(connected, subscription, handler, shutdown).await;
}

/// Resumes stalled payments every `stalled_after / 5` until `shutdown`.
pub async fn run_sweeper(
    pool: PgPool,
    pasarela: Arc<dyn PasarelaDePagos>,
    stalled_after: Duration,
    shutdown: CancellationToken,
) {
    let procesador = ProcesadorDePagos::new(pool, pasarela);
    let every = (stalled_after / 5).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match procesador
            .recuperar_estancados(stalled_after, 100, &shutdown)
            .await
        {
            Ok(0) => {}
            Ok(resumed) => tracing::warn!(resumed, "sweeper resumed stalled payments"),
            Err(error) => tracing::warn!(%error, "sweeper pass failed; will try again"),
        }
    }
}

/// `aeropartners payments-worker`.
pub async fn run_worker(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = database(&config.database).await?;
    let broker = LazyBroker::connect_in_background(config.pulsar.clone(), shutdown.clone());
    let pasarela: Arc<dyn PasarelaDePagos> = Arc::new(StripeSimulado::new(config.gateway.clone()));
    let sweeper = tokio::spawn(run_sweeper(
        pool.clone(),
        pasarela.clone(),
        config.stalled_after,
        shutdown.clone(),
    ));
    let worker = tokio::spawn(run_worker_with(
        pool.clone(),
        broker.clone(),
        pasarela,
        config.concurrency,
        shutdown.clone(),
    ));
    let http_config = HttpConfig {
        listen: config.listen,
        body_limit_bytes: 1024,
        request_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(5),
        // Only probes and scrapes reach the worker: nothing to drain.
        shutdown_drain: Duration::ZERO,
        connections: platform::config::ConnectionLimits::default(),
    };
    let (router, openapi) = utoipa_axum::router::OpenApiRouter::<()>::new().split_for_parts();
    let readiness = Arc::new(readiness(pool, broker, true));
    let app = http::app("payments-worker", router, openapi, readiness, &http_config);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    http::serve(listener, app, shutdown.clone(), &http_config).await?;
    shutdown.cancel();
    let _ = tokio::join!(worker, sweeper);
    Ok(())
}
