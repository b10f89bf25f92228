//! Creating payments in groups: concurrent requests share a transaction, and every guarantee
//! of a single create still holds per request (exactly once per reference, a trace line and an
//! outbox row per payment, a bad request never failing the others).

use crate::common::*;
use payments::{
    application::{Creacion, CreadorDePagos, ErrorPagos, SolicitudCreacion},
    domain::NuevoPago,
};
use platform::group_commit::BatchStore;
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn solicitud(afiliado: &str, monto: &str, referencia: &str) -> SolicitudCreacion {
    SolicitudCreacion {
        solicitud: NuevoPago::validar(
            afiliado,
            monto.parse::<Decimal>().map_err(|e| e.to_string()),
            "USD",
            referencia,
        )
        .expect("a valid request"),
        request_id: format!("req-{referencia}-{monto}"),
    }
}

#[sqlx::test(migrations = false)]
async fn one_batch_creates_each_reference_once_and_answers_every_request(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let creador = CreadorDePagos::new(pool.clone());
    let lote = [
        solicitud("afiliado-1", "10", "ref-a"),
        // The same request again in the same batch: the first one's payment.
        solicitud("afiliado-1", "10", "ref-a"),
        // The same reference with another amount: refused.
        solicitud("afiliado-1", "99", "ref-a"),
        solicitud("afiliado-2", "20", "ref-b"),
    ];
    let answers = creador.store(&lote).await.expect("the batch is stored");
    assert_eq!(answers.len(), 4);
    let Ok(Creacion::Creado(a)) = &answers[0] else {
        panic!("first: {:?}", answers[0]);
    };
    let Ok(Creacion::Repetido(a_again)) = &answers[1] else {
        panic!("second: {:?}", answers[1]);
    };
    assert_eq!(a_again.id, a.id);
    assert!(
        matches!(&answers[2], Err(ErrorPagos::ReferenciaEnUso(r)) if r == "ref-a"),
        "third: {:?}",
        answers[2]
    );
    let Ok(Creacion::Creado(b)) = &answers[3] else {
        panic!("fourth: {:?}", answers[3]);
    };

    assert_eq!(count(&pool, "SELECT count(*) FROM pagos").await, 2);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE event_type = 'PagoPendiente'"
        )
        .await,
        2
    );
    // One transaction: both rows carry the same inserting transaction id.
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT xmin::text) FROM pagos").await,
        1
    );
    // Every request left its trace line, on the payment it concerned, in order (the order of
    // each payment's trace; lines of different payments may interleave).
    let trace: Vec<(uuid::Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT id_pago, evento, request_id FROM pago_traza ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let trace_of = |id: uuid::Uuid| -> Vec<(&str, Option<&str>)> {
        trace
            .iter()
            .filter(|(pago, _, _)| *pago == id)
            .map(|(_, e, r)| (e.as_str(), r.as_deref()))
            .collect()
    };
    assert_eq!(
        trace_of(a.id),
        vec![
            ("PAGO_RECIBIDO", Some("req-ref-a-10")),
            ("DUPLICADO_REPETIDO", Some("req-ref-a-10")),
            ("DUPLICADO_RECHAZADO", Some("req-ref-a-99")),
        ]
    );
    assert_eq!(
        trace_of(b.id),
        vec![("PAGO_RECIBIDO", Some("req-ref-b-20"))]
    );
    assert_eq!(trace.len(), 4);

    // A later batch with a reference of this one replays the stored payment.
    let again = creador
        .store(&[solicitud("afiliado-1", "10", "ref-a")])
        .await
        .unwrap();
    assert!(matches!(&again[0], Ok(Creacion::Repetido(p)) if p.id == a.id));
    assert_eq!(count(&pool, "SELECT count(*) FROM pagos").await, 2);
}

#[sqlx::test(migrations = false)]
async fn a_payment_the_database_refuses_fails_alone_and_the_rest_of_its_batch_is_created(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    // A fault injected in the database: it refuses one affiliate's payments, so the batch's
    // transaction fails after the other payments were inserted in it.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.id_afiliado = 'boom' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse_boom BEFORE INSERT ON pagos FOR EACH ROW \
         EXECUTE FUNCTION refuse_boom();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let creador = CreadorDePagos::new(pool.clone());
    let answers = creador
        .store(&[
            solicitud("afiliado-1", "10", "ref-1"),
            solicitud("boom", "10", "ref-2"),
            solicitud("afiliado-1", "30", "ref-3"),
        ])
        .await
        .expect("answered per request");
    assert!(
        matches!(answers[0], Ok(Creacion::Creado(_))),
        "{:?}",
        answers[0]
    );
    assert!(
        matches!(answers[1], Err(ErrorPagos::Db(_))),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(answers[2], Ok(Creacion::Creado(_))),
        "{:?}",
        answers[2]
    );
    let references: Vec<String> =
        sqlx::query_scalar("SELECT referencia_pago FROM pagos ORDER BY referencia_pago")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(references, ["ref-1", "ref-3"]);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM pago_traza").await, 2);
}

#[sqlx::test(migrations = false)]
async fn concurrent_posts_share_transactions_and_each_is_answered_with_its_own_payment(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    let requests = (0..64).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            let reference = format!("ref-{i}");
            let answer = call(
                &app,
                "POST",
                "/pagos",
                Some(&pago_json(&reference, &format!("{}.50", i + 1))),
                &[],
            )
            .await;
            (reference, answer)
        })
    });
    for answer in futures::future::join_all(requests).await {
        let (reference, answer) = answer.unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.body["referencia_pago"], reference.as_str());
        let stored: String = sqlx::query_scalar("SELECT referencia_pago FROM pagos WHERE id = $1")
            .bind(
                answer.body["id_pago"]
                    .as_str()
                    .unwrap()
                    .parse::<uuid::Uuid>()
                    .unwrap(),
            )
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(stored, reference, "each answer names its own payment");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM pagos").await, 64);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 64);
    // 64 requests at once on two writers: they cannot all have had a transaction of their own.
    let transactions = count(&pool, "SELECT count(DISTINCT xmin::text) FROM pagos").await;
    assert!(
        transactions < 64,
        "{transactions} transactions for 64 payments"
    );
}
