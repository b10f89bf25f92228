//! Test support: a migrated database from `#[sqlx::test]`, collector apps (several "replicas"
//! on one database), and the demo affiliates.
#![allow(dead_code)]

use clap::Parser;
use event_collector::{CollectorConfig, domain::Directorio};
use platform::messaging::LazyBroker;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
pub use testkit::*;
use tokio_util::sync::CancellationToken;

pub const DEMO: &str = include_str!("../../../../config/afiliados.demo.yaml");

pub async fn migrated_pool(options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    testkit::migrated_pool(
        options,
        connect,
        event_collector::SCHEMA,
        &event_collector::MIGRATOR,
    )
    .await
}

#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    collector: CollectorConfig,
}

/// The collector's settings as the binary defaults them, with `args` on top.
pub fn config(args: &[&str]) -> CollectorConfig {
    Defaults::parse_from(std::iter::once("collector").chain(args.iter().copied())).collector
}

/// One collector replica on `pool` with the given affiliates; its writers stop with the token
/// (dropping the guard stops them).
pub fn replica(
    pool: &PgPool,
    broker: LazyBroker,
    yaml: &str,
    config: &CollectorConfig,
) -> (platform::http::App, tokio_util::sync::DropGuard) {
    replica_with_access(pool, broker, yaml, config, &access::Acceso::desarrollo())
}

/// [`replica`] with the access control given (a cluster's: `testkit::acceso::exigido`).
pub fn replica_with_access(
    pool: &PgPool,
    broker: LazyBroker,
    yaml: &str,
    config: &CollectorConfig,
    acceso: &access::Acceso,
) -> (platform::http::App, tokio_util::sync::DropGuard) {
    let writers = CancellationToken::new();
    let (app, _) = event_collector::app(
        pool.clone(),
        broker,
        &http_config(),
        config,
        Directorio::from_yaml(yaml).expect("valid affiliates"),
        acceso,
        writers.clone(),
    );
    (app, writers.drop_guard())
}

/// A replica with the demo affiliates and no broker.
pub fn demo(pool: &PgPool) -> (platform::http::App, tokio_util::sync::DropGuard) {
    replica(pool, LazyBroker::default(), DEMO, &config(&[]))
}

pub async fn post(app: &platform::http::App, body: &str, headers: &[(&str, &str)]) -> Answer {
    call(app, "POST", "/event-collector/events", Some(body), headers).await
}

pub async fn post_batch(app: &platform::http::App, body: &str, headers: &[(&str, &str)]) -> Answer {
    call(
        app,
        "POST",
        "/event-collector/events/batch",
        Some(body),
        headers,
    )
    .await
}

pub fn click(afiliado: &str, cliente: &str) -> String {
    serde_json::json!({
        "tipo_evento": "CLICK",
        "id_afiliado": afiliado,
        "id_evento_cliente": cliente,
        "id_campana": "6f1c1b7e-8d0e-4e0a-9b1a-1c2d3e4f5a6b",
    })
    .to_string()
}

pub async fn stored(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM eventos").await
}

pub async fn in_outbox(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM outbox").await
}
