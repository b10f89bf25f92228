//! The whole payment lifecycle against the real PostgreSQL and the real Pulsar broker: API →
//! outbox → relay → `payments.evt.pending` → worker → gateway → outbox → result events.

use std::{sync::Arc, time::Duration};

use crate::common::*;
use payments::run_worker_with;
use platform::messaging::LazyBroker;
use platform::outbox::Relay;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ALL_TOPICS: [&str; 4] = [
    "payments.evt.pending",
    "payments.evt.completed",
    "payments.evt.failed",
    "payments.evt.reverted",
];

/// Events of one payment as observed on the broker, in `aggregate_version` order. Pulsar
/// orders messages within a topic, not across topics, so the observer sorts; that the relay
/// *published* them in order is checked on the outbox by `assert_published_in_order`.
fn by_version(
    mut events: Vec<(String, platform::messaging::Envelope)>,
) -> Vec<(String, platform::messaging::Envelope)> {
    events.sort_by_key(|(_, e)| e.aggregate_version);
    events
}

/// The relay published version n+1 only after version n was stored by the broker.
async fn assert_published_in_order(pool: &PgPool, id: Uuid) {
    // The broker may deliver a message before the relay has committed its `published_at`.
    let query =
        format!("SELECT count(*) FROM outbox WHERE aggregate_id = '{id}' AND published_at IS NULL");
    eventually(
        "relay recorded every publication",
        Duration::from_secs(10),
        || async { count(pool, &query).await == 0 },
    )
    .await;
    let published: Vec<(i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT aggregate_version, published_at FROM outbox WHERE aggregate_id = $1 ORDER BY aggregate_version")
        .bind(id.to_string()).fetch_all(pool).await.unwrap();
    for pair in published.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "v{} published after v{}",
            pair[0].0,
            pair[1].0
        );
    }
}

/// Relay and worker running against the real broker under a fresh topic prefix.
struct Running {
    observer: Observer,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(pool: &PgPool, gateway: Arc<CountingGateway>) -> Running {
    let pulsar = pulsar_config();
    let observer = Observer::subscribe(&pulsar, &ALL_TOPICS).await;
    let shutdown = CancellationToken::new();
    let broker = broker(&pulsar).await;
    tokio::spawn(Relay::new(pool.clone(), broker.clone(), payments::SCHEMA).run(shutdown.clone()));
    tokio::spawn(run_worker_with(
        pool.clone(),
        LazyBroker::ready(broker),
        gateway,
        8,
        shutdown.clone(),
    ));
    Running { observer, shutdown }
}

async fn create(app: &platform::http::App, referencia: &str) -> Uuid {
    let answer = call(
        app,
        "POST",
        "/pagos",
        Some(&pago_json(referencia, "250.50")),
        &[("x-request-id", referencia)],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["estado"], "PENDIENTE");
    answer.body["id_pago"].as_str().unwrap().parse().unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_payment_goes_pending_processing_successful_with_ordered_events(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let gateway = CountingGateway::new(Decision::Approve);
    gateway.close_gate();
    let mut running = start(&pool, gateway.clone()).await;
    let app = app_without_broker(&pool);

    let id = create(&app, "life-ok").await;
    // Accepted as PENDIENTE (the answer says so, see `create`); the running worker may claim
    // it before this line reads it.
    let now = estado(&pool, id).await;
    assert!(now == "PENDIENTE" || now == "PROCESANDO", "{now}");
    // The gateway holds the charge: the payment must be seen, persisted, as PROCESANDO.
    eventually("PROCESANDO persisted", Duration::from_secs(30), || async {
        estado(&pool, id).await == "PROCESANDO"
    })
    .await;
    gateway.open_gate();
    eventually("EXITOSO persisted", Duration::from_secs(30), || async {
        estado(&pool, id).await == "EXITOSO"
    })
    .await;

    let detalle = call(&app, "GET", &format!("/pagos/{id}"), None, &[])
        .await
        .body;
    assert!(detalle["mensaje_error"].is_null());
    assert!(
        detalle["referencia_transaccion"]
            .as_str()
            .unwrap()
            .starts_with("txn_")
    );
    assert!(detalle["fecha_procesamiento"].is_string());

    let events = by_version(
        running
            .observer
            .collect(Duration::from_secs(30), |seen| seen.len() >= 2)
            .await,
    );
    let summary: Vec<(&str, &str, i64)> = events
        .iter()
        .map(|(topic, e)| (topic.as_str(), e.event_type.as_str(), e.aggregate_version))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("payments.evt.pending", "PagoPendiente", 1),
            ("payments.evt.completed", "PagoExitoso", 2),
        ]
    );
    for (_, envelope) in &events {
        assert_eq!(envelope.aggregate_id, id.to_string());
        assert_eq!(envelope.aggregate_type, "Pago");
        assert_eq!(envelope.correlation_id, "life-ok");
        assert_eq!(envelope.data["id_pago"], id.to_string());
        assert_eq!(envelope.data["monto"], 250.5);
        assert_eq!(envelope.data["moneda"], "USD");
        assert_eq!(envelope.data["referencia_pago"], "life-ok");
    }
    assert_eq!(events[1].1.data["estado"], "EXITOSO");
    assert!(events[1].1.data["referencia_transaccion"].is_string());
    assert_eq!(gateway.charges(), 1);
    assert_published_in_order(&pool, id).await;
    assert_published_in_order(&pool, id).await;

    let traza = call(&app, "GET", &format!("/pagos/{id}/eventos"), None, &[])
        .await
        .body;
    let pasos: Vec<&str> = traza
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["evento"].as_str().unwrap())
        .collect();
    for paso in [
        "PAGO_RECIBIDO",
        "PROCESAMIENTO_INICIADO",
        "RESULTADO_PASARELA",
        "EVENTO_PUBLICADO",
    ] {
        assert!(pasos.contains(&paso), "{paso} missing from {pasos:?}");
    }
    let stats = call(&app, "GET", "/pagos/outbox/estadisticas", None, &[])
        .await
        .body;
    assert_eq!(stats["eventos_procesados"], 2);
    assert_eq!(
        stats["eventos_pendientes"].as_i64().unwrap() + stats["eventos_fallidos"].as_i64().unwrap(),
        0
    );
}

#[sqlx::test(migrations = false)]
async fn a_refused_charge_ends_failed_with_its_message(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let gateway = CountingGateway::new(Decision::Refuse);
    let mut running = start(&pool, gateway.clone()).await;
    let app = app_without_broker(&pool);

    let id = create(&app, "life-ko").await;
    eventually("FALLIDO persisted", Duration::from_secs(30), || async {
        estado(&pool, id).await == "FALLIDO"
    })
    .await;
    let detalle = call(&app, "GET", &format!("/pagos/{id}"), None, &[])
        .await
        .body;
    assert_eq!(detalle["mensaje_error"], "Fondos insuficientes");
    assert!(detalle["referencia_transaccion"].is_null());

    let events = by_version(
        running
            .observer
            .collect(Duration::from_secs(30), |seen| seen.len() >= 2)
            .await,
    );
    assert_eq!(events[1].0, "payments.evt.failed");
    assert_eq!(events[1].1.event_type, "PagoFallido");
    assert_eq!(events[1].1.data["mensaje_error"], "Fondos insuficientes");

    // A failed payment cannot be reverted; a successful one could (tested in api.rs).
    let revert = call(
        &app,
        "PATCH",
        &format!("/pagos/{id}/revertir"),
        Some(r#"{"motivo":"x"}"#),
        &[],
    )
    .await;
    assert_eq!(revert.status, 409);
}

#[sqlx::test(migrations = false)]
async fn a_reversal_is_published_after_the_success(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let gateway = CountingGateway::new(Decision::Approve);
    let mut running = start(&pool, gateway.clone()).await;
    let app = app_without_broker(&pool);
    let id = create(&app, "life-rev").await;
    eventually("EXITOSO", Duration::from_secs(30), || async {
        estado(&pool, id).await == "EXITOSO"
    })
    .await;
    let reverted = call(
        &app,
        "PATCH",
        &format!("/pagos/{id}/revertir"),
        Some(r#"{"motivo":"contracargo"}"#),
        &[],
    )
    .await;
    assert_eq!(reverted.status, 200);
    let events = by_version(
        running
            .observer
            .collect(Duration::from_secs(30), |seen| seen.len() >= 3)
            .await,
    );
    assert_published_in_order(&pool, id).await;
    let order: Vec<(&str, i64)> = events
        .iter()
        .map(|(_, e)| (e.event_type.as_str(), e.aggregate_version))
        .collect();
    assert_eq!(
        order,
        vec![
            ("PagoPendiente", 1),
            ("PagoExitoso", 2),
            ("PagoRevertido", 3)
        ]
    );
    assert_eq!(events[2].0, "payments.evt.reverted");
    assert_eq!(events[2].1.data["estado"], "REVERSADO");
}
