//! Attribution of `PagoExitoso` events to campaigns: exactly once under duplicated and shuffled
//! delivery, directly and through the real Pulsar broker.

use std::time::Duration;

use crate::common::*;
use campaigns::application::AtribucionDePagos;
use chrono::Utc;
use platform::messaging::{Envelope, LazyBroker};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn pago_exitoso(afiliado: &str, monto: f64, moneda: &str) -> Envelope {
    let id = Uuid::new_v4();
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: "PagoExitoso".into(),
        aggregate_type: "Pago".into(),
        aggregate_id: id.to_string(),
        aggregate_version: 2,
        occurred_at: Utc::now(),
        correlation_id: format!("corr-{id}"),
        data: serde_json::json!({
            "id_pago": id, "id_afiliado": afiliado, "monto": monto, "moneda": moneda,
            "referencia_pago": format!("ref-{id}"), "estado": "EXITOSO",
            "referencia_transaccion": "txn_000001",
        }),
    }
}

/// (conversiones, gasto_actual) of a campaign.
async fn metricas(pool: &PgPool, id: &str) -> (i64, f64) {
    sqlx::query_as("SELECT conversiones, gasto_actual::float8 FROM campanas WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `events_consumed_total{outcome="ok"}` of a subscription, from this process's registry.
fn consumed_ok(subscription: &str) -> u64 {
    platform::telemetry::render()
        .lines()
        .find(|line| {
            line.starts_with("aeropartners_events_consumed_total")
                && line.contains(r#"outcome="ok""#)
                && line.contains(&format!(r#"subscription="{subscription}""#))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A deterministic shuffle (no RNG crate needed): interleave from both ends.
fn shuffled<T: Clone>(items: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    let (mut i, mut j) = (0, items.len());
    while i < j {
        j -= 1;
        out.push(items[j].clone());
        if i < j {
            out.push(items[i].clone());
            i += 1;
        }
    }
    out
}

#[sqlx::test(migrations = false)]
async fn duplicated_and_shuffled_payments_give_the_in_order_result(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let activa = crear_activa(&app, "af", "100").await;
    let pequena = crear_activa(&app, "af", "25").await;
    let pausada = crear_activa(&app, "af", "100").await;
    call(
        &app,
        "PATCH",
        &format!("/campaigns/{pausada}/pause"),
        None,
        &[],
    )
    .await;
    let de_otro = crear_activa(&app, "otro", "100").await;

    let eventos: Vec<Envelope> = (0..10)
        .map(|i| pago_exitoso("af", 50.0 + f64::from(i), "USD"))
        .chain([pago_exitoso("af", 1000.0, "EUR")])
        .collect();
    let handler = AtribucionDePagos::new(pool.clone());
    // Every event twice, in a different order, and some a third time at the end.
    let mut entregas = shuffled(&eventos);
    entregas.extend(eventos.iter().cloned());
    entregas.extend(eventos.iter().take(3).cloned());
    let mut aplicados = 0;
    for evento in &entregas {
        if handler.aplicar(evento).await.unwrap() > 0 {
            aplicados += 1;
        }
    }
    assert_eq!(
        aplicados,
        eventos.len(),
        "each event changed campaigns once"
    );

    // In-order single delivery: 11 conversions; spend = 10 % of 50..59 (= 54.5) capped at the
    // budget; the EUR payment counts as a conversion only.
    assert_eq!(metricas(&pool, &activa).await, (11, 54.5));
    assert_eq!(
        metricas(&pool, &pequena).await,
        (11, 25.0),
        "capped at its budget"
    );
    assert_eq!(
        metricas(&pool, &pausada).await,
        (0, 0.0),
        "only ACTIVE campaigns attribute"
    );
    assert_eq!(
        metricas(&pool, &de_otro).await,
        (0, 0.0),
        "only the payment's affiliate"
    );
    let metric_events = count(
        &pool,
        "SELECT count(*) FROM outbox WHERE envelope->'data'->>'cambio' = 'metrics'",
    )
    .await;
    assert_eq!(
        metric_events, 22,
        "one updated(metrics) event per campaign change"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM inbox").await, 11);
}

#[sqlx::test(migrations = false)]
async fn malformed_payment_events_are_refused_as_permanent(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let handler = AtribucionDePagos::new(pool.clone());
    let mut sin_monto = pago_exitoso("af", 1.0, "USD");
    sin_monto.data.as_object_mut().unwrap().remove("monto");
    let mut moneda_rara = pago_exitoso("af", 1.0, "USD");
    moneda_rara.data["moneda"] = "GBP".into();
    for evento in [sin_monto, moneda_rara] {
        let error = handler.aplicar(&evento).await.unwrap_err();
        assert!(
            matches!(error, platform::messaging::HandlerError::Permanent(_)),
            "{error}"
        );
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbox").await,
        0,
        "nothing recorded for a refused event"
    );
}

#[sqlx::test(migrations = false)]
async fn the_consumer_on_the_real_broker_applies_duplicates_once(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let id = crear_activa(&app, "af-broker", "1000").await;
    let pulsar = pulsar_config();
    let broker = broker(&pulsar).await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(campaigns::run_payment_consumer(
        pool.clone(),
        LazyBroker::ready(broker.clone()),
        shutdown.clone(),
    ));

    let eventos: Vec<Envelope> = (0..20)
        .map(|_| pago_exitoso("af-broker", 10.0, "USD"))
        .collect();
    let mut entregas = shuffled(&eventos);
    entregas.extend(eventos.iter().cloned());
    broker
        .publish(campaigns::PAYMENTS_COMPLETED_TOPIC, &entregas)
        .await
        .unwrap();

    eventually(
        "all 20 payments attributed",
        Duration::from_secs(30),
        || async { count(&pool, "SELECT count(*) FROM inbox").await == 20 },
    )
    .await;
    // Wait until all 40 deliveries were handled (the duplicates too), then check the effect.
    eventually(
        "all 40 deliveries handled",
        Duration::from_secs(30),
        || async { consumed_ok("campaigns-payments") >= 40 },
    )
    .await;
    assert_eq!(metricas(&pool, &id).await, (20, 20.0));
}

/// Two busy lanes (or replicas) apply batches of payments of the same affiliates in opposite
/// orders, at the same time: each batch locks its campaigns in id order first, so neither
/// deadlocks, and every payment is attributed once however often its batch is redelivered.
#[sqlx::test(migrations = false)]
async fn concurrent_batches_over_the_same_campaigns_neither_deadlock_nor_count_twice(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    use platform::{inbox::Transactional, messaging::EventHandler};

    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let mut campanas = Vec::new();
    for afiliado in ["af-a", "af-b", "af-c"] {
        for _ in 0..2 {
            campanas.push(crear_activa(&app, afiliado, "100000").await);
        }
    }
    let uno: Vec<Envelope> = ["af-a", "af-b", "af-c"]
        .iter()
        .cycle()
        .take(30)
        .map(|af| pago_exitoso(af, 10.0, "USD"))
        .collect();
    let otro: Vec<Envelope> = ["af-c", "af-b", "af-a"]
        .iter()
        .cycle()
        .take(30)
        .map(|af| pago_exitoso(af, 10.0, "USD"))
        .collect();
    let handler = Transactional(AtribucionDePagos::new(pool.clone()));
    for _ in 0..3 {
        // The same batches again: a redelivery after a commit whose acknowledgement was lost.
        let (a, b) = tokio::join!(handler.handle_batch(&uno), handler.handle_batch(&otro));
        assert!(a.iter().chain(&b).all(Result::is_ok), "{a:?} {b:?}");
    }
    // 20 payments of 10 USD per affiliate: 20 conversions and 20 USD of spend on each of its
    // two campaigns.
    for campana in &campanas {
        assert_eq!(metricas(&pool, campana).await, (20, 20.0), "{campana}");
    }
}
