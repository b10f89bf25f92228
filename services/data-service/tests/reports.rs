//! Data services against a real PostgreSQL: the projection converges under duplicated and
//! reordered events, and each version serves only its own report paths and shapes.

use chrono::Utc;
use data_service::{Proyeccion, Version};
use platform::messaging::{Envelope, LazyBroker};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use testkit::{call, http_config};
use uuid::Uuid;

fn event(aggregate_type: &str, id: &str, version: i64, data: serde_json::Value) -> Envelope {
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: "Test".into(),
        aggregate_type: aggregate_type.into(),
        aggregate_id: id.into(),
        aggregate_version: version,
        occurred_at: Utc::now(),
        correlation_id: "corr".into(),
        data,
    }
}

fn pago(
    id: &str,
    version: i64,
    afiliado: &str,
    monto: f64,
    moneda: &str,
    estado: &str,
) -> Envelope {
    event(
        "Pago",
        id,
        version,
        serde_json::json!({
            "id_pago": id, "id_afiliado": afiliado, "monto": monto, "moneda": moneda,
            "referencia_pago": format!("ref-{id}"), "estado": estado,
        }),
    )
}

fn campana(
    id: &str,
    version: i64,
    estado: &str,
    presupuesto: f64,
    gasto: f64,
    conversiones: i64,
) -> Envelope {
    event(
        "Campana",
        id,
        version,
        serde_json::json!({
            "id_campana": id, "id_afiliado": "af-1", "nombre": "c", "tipo": "PROMOCIONAL",
            "estado": estado, "presupuesto": presupuesto, "moneda": "USD", "gasto_actual": gasto,
            "impresiones": 0, "clicks": 0, "conversiones": conversiones,
        }),
    )
}

async fn pool(o: PgPoolOptions, c: PgConnectOptions, version: Version) -> PgPool {
    testkit::migrated_pool(o, c, version.schema(), &data_service::MIGRATOR).await
}

/// The same history delivered in order once, and shuffled with duplicates.
fn history() -> Vec<Envelope> {
    vec![
        pago("p1", 1, "af-1", 100.0, "USD", "PENDIENTE"),
        pago("p1", 2, "af-1", 100.0, "USD", "EXITOSO"),
        pago("p2", 1, "af-1", 50.5, "USD", "PENDIENTE"),
        pago("p2", 2, "af-1", 50.5, "USD", "FALLIDO"),
        pago("p3", 1, "af-2", 20.0, "EUR", "PENDIENTE"),
        campana("c1", 1, "CREATED", 1000.0, 0.0, 0),
        campana("c1", 2, "ACTIVE", 1000.0, 0.0, 0),
        campana("c1", 3, "ACTIVE", 1000.0, 10.0, 1),
    ]
}

#[sqlx::test(migrations = false)]
async fn duplicated_and_reordered_events_give_the_in_order_projection(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = pool(o, c, Version::V1).await;
    let projection = Proyeccion::new(pool.clone(), Version::V1);
    let mut deliveries: Vec<Envelope> = history().into_iter().rev().collect();
    deliveries.extend(history());
    for envelope in &deliveries {
        projection.aplicar(envelope).await.unwrap();
    }
    let pagos: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT id_pago, estado, version FROM pagos ORDER BY id_pago")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        pagos,
        vec![
            ("p1".into(), "EXITOSO".into(), 2),
            ("p2".into(), "FALLIDO".into(), 2),
            ("p3".into(), "PENDIENTE".into(), 1),
        ]
    );
    let campanas: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT id_campana, estado, conversiones, version FROM campanas")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(campanas, vec![("c1".into(), "ACTIVE".into(), 1, 3)]);
}

/// A busy consumer applies a lane's queued events in one transaction; a batch redelivered after
/// its commit (the process died before acknowledging it), in batches cut differently and with
/// one event that fails mid-batch, leaves exactly the rows one in-order delivery gives.
#[sqlx::test(migrations = false)]
async fn batches_redelivered_after_their_commit_change_nothing(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    use platform::{inbox::Transactional, messaging::EventHandler};

    let pool = pool(o, c, Version::V1).await;
    let handler = Transactional(Proyeccion::new(pool.clone(), Version::V1));
    let events = history();
    let rows = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT id_pago, estado, version FROM pagos ORDER BY id_pago",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert!(
        handler
            .handle_batch(&events[..5])
            .await
            .iter()
            .all(Result::is_ok)
    );
    let after_first = rows(pool.clone()).await;
    // Redelivered: the same five, now cut in two batches, then everything once more.
    assert!(
        handler
            .handle_batch(&events[..3])
            .await
            .iter()
            .all(Result::is_ok)
    );
    assert!(
        handler
            .handle_batch(&events[3..])
            .await
            .iter()
            .all(Result::is_ok)
    );
    assert!(
        handler
            .handle_batch(&events)
            .await
            .iter()
            .all(Result::is_ok)
    );
    assert_eq!(rows(pool.clone()).await, after_first);
    // A batch with an event that cannot apply is rolled back whole; each is then on its own.
    let mut broken = events.clone();
    broken.insert(2, pago("p9", 1, "af-1", 1.0, "USD", "PENDIENTE"));
    broken[2].data = serde_json::json!({"id_pago": "p9"});
    let results = handler.handle_batch(&broken).await;
    assert!(
        results.iter().all(Result::is_err),
        "all or nothing: {results:?}"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        inbox,
        events.len() as i64,
        "one inbox row per distinct event"
    );
    assert_eq!(
        rows(pool).await,
        vec![
            ("p1".into(), "EXITOSO".into(), 2),
            ("p2".into(), "FALLIDO".into(), 2),
            ("p3".into(), "PENDIENTE".into(), 1),
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn v1_serves_the_simple_spanish_reports_only(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c, Version::V1).await;
    let projection = Proyeccion::new(pool.clone(), Version::V1);
    for envelope in history() {
        projection.aplicar(&envelope).await.unwrap();
    }
    let app = data_service::app(pool, LazyBroker::default(), Version::V1, &http_config());
    let health = call(&app, "GET", "/health", None, &[]).await.body;
    assert_eq!(
        health,
        serde_json::json!({"status": "healthy", "version": "v1"})
    );
    let pagos = call(&app, "GET", "/api/v1/pagos/report", None, &[])
        .await
        .body;
    assert_eq!(pagos["version"], "v1");
    assert_eq!(pagos["total_pagos"], 3);
    assert_eq!(
        pagos["monto_total"],
        serde_json::json!({"COP": 0.0, "EUR": 20.0, "USD": 150.5})
    );
    assert_eq!(pagos["por_estado"]["EXITOSO"], 1);
    assert_eq!(pagos["por_estado"]["REVERSADO"], 0);
    let campanas = call(&app, "GET", "/api/v1/campanas/report", None, &[])
        .await
        .body;
    assert_eq!(
        (
            campanas["total_campanas"].as_i64(),
            campanas["activas"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let metricas = call(&app, "GET", "/api/v1/metricas/report", None, &[])
        .await
        .body;
    assert_eq!(
        metricas["tasa_exito"], 50.0,
        "one success out of two finished payments"
    );
    assert_eq!(
        call(&app, "GET", "/api/v2/payments/report", None, &[])
            .await
            .status,
        404
    );
}

#[sqlx::test(migrations = false)]
async fn v2_serves_the_detailed_reports_only(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c, Version::V2).await;
    let projection = Proyeccion::new(pool.clone(), Version::V2);
    for envelope in history() {
        projection.aplicar(&envelope).await.unwrap();
    }
    let app = data_service::app(pool, LazyBroker::default(), Version::V2, &http_config());
    assert_eq!(
        call(&app, "GET", "/health", None, &[]).await.body["version"],
        "v2"
    );
    let payments = call(&app, "GET", "/api/v2/payments/report", None, &[])
        .await
        .body;
    assert_eq!(payments["version"], "v2");
    assert_eq!(
        payments["by_currency"]["USD"],
        serde_json::json!({"total": 150.5, "count": 2, "average": 75.25})
    );
    assert_eq!(payments["by_affiliate"][0]["id_afiliado"], "af-1");
    assert_eq!(payments["by_affiliate"][0]["success_rate"], 50.0);
    let campaigns = call(&app, "GET", "/api/v2/campaigns/report", None, &[])
        .await
        .body;
    assert_eq!(campaigns["budget_utilization_pct"], 1.0);
    let metrics = call(&app, "GET", "/api/v2/metrics/report", None, &[])
        .await
        .body;
    assert_eq!(
        (
            metrics["average_ticket"].as_f64(),
            metrics["cost_per_conversion"].as_f64()
        ),
        (Some(100.0), Some(10.0))
    );
    assert_eq!(
        call(&app, "GET", "/api/v1/pagos/report", None, &[])
            .await
            .status,
        404
    );
}

/// The set-wise batch gives exactly the rows applying the same deliveries one by one gives:
/// many histories, shuffled and duplicated, cut into batches of every size, against one event
/// per transaction (two schemas of one database side by side).
#[sqlx::test(migrations = false)]
async fn batches_leave_the_rows_one_event_at_a_time_leaves(o: PgPoolOptions, c: PgConnectOptions) {
    use platform::{inbox::Transactional, messaging::EventHandler};

    let one_by_one_pool = pool(o.clone(), c.clone(), Version::V1).await;
    let batched_pool = pool(o, c, Version::V2).await;
    let one_by_one = Proyeccion::new(one_by_one_pool.clone(), Version::V1);
    let batched = Transactional(Proyeccion::new(batched_pool.clone(), Version::V2));

    // A small deterministic generator: the test is the same on every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        usize::try_from(seed % bound as u64).unwrap()
    };
    let estados = ["PENDIENTE", "PROCESANDO", "EXITOSO", "FALLIDO"];
    let mut history = Vec::new();
    for p in 0..12 {
        for version in 1..=4 {
            history.push(pago(
                &format!("p{p}"),
                version,
                &format!("af-{}", p % 3),
                10.0 + p as f64,
                "USD",
                estados[usize::try_from(version).unwrap() - 1],
            ));
        }
    }
    for k in 0..4 {
        for version in 1..=5 {
            history.push(campana(
                &format!("c{k}"),
                version,
                if version == 1 { "CREATED" } else { "ACTIVE" },
                1000.0,
                f64::from(version as i32) * 3.0,
                version - 1,
            ));
        }
    }
    // Every event once or twice, in a shuffled order.
    let mut deliveries: Vec<Envelope> = history
        .iter()
        .flat_map(|e| std::iter::repeat_n(e.clone(), 1 + next(2)))
        .collect();
    for i in (1..deliveries.len()).rev() {
        deliveries.swap(i, next(i + 1));
    }

    for envelope in &deliveries {
        one_by_one.aplicar(envelope).await.unwrap();
    }
    let mut rest = deliveries.as_slice();
    while !rest.is_empty() {
        let size = (1 + next(17)).min(rest.len());
        let (batch, tail) = rest.split_at(size);
        let results = batched.handle_batch(batch).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        rest = tail;
    }

    let pagos = "SELECT id_pago, id_afiliado, monto::text, moneda, estado, fecha, version \
                 FROM pagos ORDER BY id_pago";
    let campanas = "SELECT id_campana, id_afiliado, estado, presupuesto::text, moneda, gasto::text, \
                    conversiones, version FROM campanas ORDER BY id_campana";
    type PagoRow = (
        String,
        String,
        String,
        String,
        String,
        chrono::DateTime<Utc>,
        i64,
    );
    type CampanaRow = (String, String, String, String, String, String, i64, i64);
    let read_pagos = |pool: PgPool| async move {
        sqlx::query_as::<_, PagoRow>(pagos)
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let read_campanas = |pool: PgPool| async move {
        sqlx::query_as::<_, CampanaRow>(campanas)
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let expected_pagos = read_pagos(one_by_one_pool.clone()).await;
    assert_eq!(expected_pagos.len(), 12);
    assert_eq!(read_pagos(batched_pool.clone()).await, expected_pagos);
    let expected_campanas = read_campanas(one_by_one_pool).await;
    assert_eq!(expected_campanas.len(), 4);
    assert_eq!(read_campanas(batched_pool).await, expected_campanas);
}
