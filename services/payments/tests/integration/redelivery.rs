//! Exactly-once charging under redelivery and crashes, against the real database and broker.

use std::time::Duration;

use crate::common::*;
use payments::{
    application::ProcesadorDePagos, run_worker_subscribed, run_worker_with, worker_subscription,
};
use platform::messaging::{Envelope, EventHandler};
use platform::messaging::{LazyBroker, Subscription};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn pending_envelope(pool: &sqlx::PgPool) -> (Uuid, Envelope) {
    let app = app_without_broker(pool);
    let answer = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json(&Uuid::new_v4().to_string(), "77")),
        &[],
    )
    .await;
    let id: Uuid = answer.body["id_pago"].as_str().unwrap().parse().unwrap();
    let envelope: sqlx::types::Json<Envelope> =
        sqlx::query_scalar("SELECT envelope FROM outbox WHERE aggregate_id = $1")
            .bind(id.to_string())
            .fetch_one(pool)
            .await
            .unwrap();
    (id, envelope.0)
}

#[sqlx::test(migrations = false)]
async fn the_same_pending_event_twice_and_after_success_charges_once(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let gateway = CountingGateway::new(Decision::Approve);
    let handler = ProcesadorDePagos::new(pool.clone(), gateway.clone());
    let (id, envelope) = pending_envelope(&pool).await;

    // Two deliveries at the same instant (two replicas got the message).
    let (a, b) = tokio::join!(
        handler.handle(envelope.clone()),
        handler.handle(envelope.clone())
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(estado(&pool, id).await, "EXITOSO");
    // And once more, long after it succeeded.
    handler.handle(envelope.clone()).await.unwrap();

    assert_eq!(gateway.charges(), 1, "the gateway charged once");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE event_type = 'PagoExitoso'"
        )
        .await,
        1
    );
    let ignored = count(
        &pool,
        "SELECT count(*) FROM pago_traza WHERE evento = 'MENSAJE_REPETIDO_IGNORADO'",
    )
    .await;
    assert!(ignored >= 1, "the redelivery is traced");
}

#[sqlx::test(migrations = false)]
async fn duplicated_messages_on_the_real_broker_charge_once(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let gateway = CountingGateway::new(Decision::Approve);
    let pulsar = pulsar_config();
    let broker = broker(&pulsar).await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(run_worker_with(
        pool.clone(),
        LazyBroker::ready(broker.clone()),
        gateway.clone(),
        4,
        shutdown.clone(),
    ));

    let mut ids = Vec::new();
    for _ in 0..5 {
        let (id, envelope) = pending_envelope(&pool).await;
        // No relay runs here: the test publishes every event three times itself.
        for _ in 0..3 {
            broker
                .publish("payments.evt.pending", std::slice::from_ref(&envelope))
                .await
                .unwrap();
        }
        ids.push(id);
    }
    for id in &ids {
        eventually("payment processed", Duration::from_secs(30), || async {
            estado(&pool, *id).await == "EXITOSO"
        })
        .await;
    }
    // Let every duplicate be consumed: 15 deliveries, 5 effects.
    eventually("duplicates consumed", Duration::from_secs(30), || async {
        count(
            &pool,
            "SELECT count(*) FROM pago_traza WHERE evento = 'MENSAJE_REPETIDO_IGNORADO'",
        )
        .await
            >= 10
    })
    .await;
    assert_eq!(gateway.charges(), 5);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE event_type = 'PagoExitoso'"
        )
        .await,
        5
    );
}

#[sqlx::test(migrations = false)]
async fn a_worker_stopped_between_charge_and_commit_never_charges_twice(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let gateway = CountingGateway::new(Decision::Approve);
    let pulsar = pulsar_config();
    let (id, envelope) = pending_envelope(&pool).await;
    broker(&pulsar)
        .await
        .publish("payments.evt.pending", &[envelope])
        .await
        .unwrap();

    // Worker #1 charges, then dies before it commits the result or acks the message.
    gateway.hang_after_charge(true);
    let first = CancellationToken::new();
    let first_broker = broker(&pulsar).await;
    // Its handler never returns: the stopping worker abandons it at the drain deadline.
    let crashed = tokio::spawn(run_worker_subscribed(
        pool.clone(),
        LazyBroker::ready(first_broker),
        gateway.clone(),
        Subscription {
            drain_timeout: Duration::from_secs(2),
            ..worker_subscription(4)
        },
        4,
        first.clone(),
    ));
    eventually("first charge", Duration::from_secs(30), || async {
        gateway.charges() == 1
    })
    .await;
    assert_eq!(estado(&pool, id).await, "PROCESANDO");
    first.cancel(); // closes its consumer: the unacked message goes back to the broker
    tokio::time::timeout(Duration::from_secs(20), crashed)
        .await
        .expect("worker #1 stops")
        .unwrap();
    assert_eq!(
        estado(&pool, id).await,
        "PROCESANDO",
        "nothing was committed after the charge"
    );

    // Worker #2 starts, gets the redelivered message and finishes the same charge.
    gateway.hang_after_charge(false);
    let second = CancellationToken::new();
    let _stop = second.clone().drop_guard();
    tokio::spawn(run_worker_with(
        pool.clone(),
        LazyBroker::ready(broker(&pulsar).await),
        gateway.clone(),
        4,
        second,
    ));
    eventually("EXITOSO after restart", Duration::from_secs(60), || async {
        estado(&pool, id).await == "EXITOSO"
    })
    .await;

    assert_eq!(gateway.charges(), 1, "charged once across the crash");
    assert!(
        gateway.calls() >= 2,
        "the restarted worker asked the gateway again, with the same key"
    );
    let reference: String =
        sqlx::query_scalar("SELECT referencia_transaccion FROM pagos WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    match gateway.charges_for(id) {
        Some(payments::domain::ResultadoCobro::Aprobado {
            referencia_transaccion,
        }) => assert_eq!(reference, referencia_transaccion),
        other => panic!("unexpected charge {other:?}"),
    }
    let pasos = count(
        &pool,
        "SELECT count(*) FROM pago_traza WHERE evento = 'PROCESAMIENTO_REANUDADO'",
    )
    .await;
    assert_eq!(pasos, 1);
}

#[sqlx::test(migrations = false)]
async fn the_sweeper_finishes_payments_whose_message_is_gone(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let gateway = CountingGateway::new(Decision::Approve);
    let handler = ProcesadorDePagos::new(pool.clone(), gateway.clone());
    let (stalled, envelope) = pending_envelope(&pool).await;
    let (recent, _) = pending_envelope(&pool).await;

    // Charged, then the worker died and the message was dead-lettered: no delivery will come.
    gateway.hang_after_charge(true);
    let attempt = tokio::spawn(async move { handler.handle(envelope).await });
    eventually("charged", Duration::from_secs(10), || async {
        gateway.charges() == 1
    })
    .await;
    attempt.abort();
    gateway.hang_after_charge(false);
    sqlx::query(
        "UPDATE pagos SET fecha_actualizacion = now() - interval '10 minutes' WHERE id = $1",
    )
    .bind(stalled)
    .execute(&pool)
    .await
    .unwrap();

    let sweeper = ProcesadorDePagos::new(pool.clone(), gateway.clone());
    let resumed = sweeper
        .recuperar_estancados(Duration::from_secs(300), 100, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(resumed, 1, "only the stalled payment, not the recent one");
    assert_eq!(estado(&pool, stalled).await, "EXITOSO");
    assert_eq!(estado(&pool, recent).await, "PENDIENTE");
    assert_eq!(gateway.charges(), 1, "the sweeper did not charge again");
    let again = sweeper
        .recuperar_estancados(Duration::from_secs(300), 100, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again, 0);
}

/// Times out the first charge of one payment (the charge happens, the answer is lost), and
/// answers every other call through the counting double.
struct LosesOneAnswer {
    inner: std::sync::Arc<CountingGateway>,
    unlucky: Uuid,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl payments::infrastructure::pasarela::PasarelaDePagos for LosesOneAnswer {
    async fn cobrar(
        &self,
        solicitud: payments::infrastructure::pasarela::SolicitudCobro,
    ) -> Result<payments::domain::ResultadoCobro, payments::infrastructure::pasarela::ErrorPasarela>
    {
        let unlucky = solicitud.clave_idempotencia == self.unlucky;
        let answer = self.inner.cobrar(solicitud).await;
        if unlucky && !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(
                payments::infrastructure::pasarela::ErrorPasarela::NoDisponible("timeout".into()),
            );
        }
        answer
    }
}

#[sqlx::test(migrations = false)]
async fn a_batch_charges_each_payment_once_and_leaves_a_lost_answer_to_its_retry(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let mut envelopes = Vec::new();
    for _ in 0..5 {
        envelopes.push(pending_envelope(&pool).await);
    }
    let unlucky = envelopes[2].0;
    let counting = CountingGateway::new(Decision::Approve);
    let handler = ProcesadorDePagos::new(
        pool.clone(),
        std::sync::Arc::new(LosesOneAnswer {
            inner: counting.clone(),
            unlucky,
            lost: false.into(),
        }),
    );
    // The batch as a lane hands it over, with one payment delivered twice in it.
    let mut batch: Vec<Envelope> = envelopes.iter().map(|(_, e)| e.clone()).collect();
    batch.push(envelopes[0].1.clone());
    let results = handler.handle_batch(&batch).await;
    assert_eq!(results.len(), 6);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.is_err(), i == 2, "event {i}: {result:?}");
    }
    for (id, _) in &envelopes {
        let expected = if *id == unlucky {
            "PROCESANDO"
        } else {
            "EXITOSO"
        };
        assert_eq!(estado(&pool, *id).await, expected);
    }
    let repeated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pago_traza WHERE evento = 'MENSAJE_REPETIDO_IGNORADO' AND id_pago = $1",
    )
    .bind(envelopes[0].0)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(repeated, 1, "the second delivery in the batch is traced");
    // Its message is retried alone: the same key returns the first charge.
    handler.handle(envelopes[2].1.clone()).await.unwrap();
    assert_eq!(estado(&pool, unlucky).await, "EXITOSO");
    assert_eq!(counting.charges(), 5, "one charge per payment");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE event_type = 'PagoExitoso'"
        )
        .await,
        5
    );
    // The four answered in the batch were recorded by one transaction.
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM pagos WHERE estado = 'EXITOSO' AND id <> $1",
    )
    .bind(unlucky)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(transactions, 1);
}
