//! The projection converges (API.md §5.1, §7): for generated histories of payments and
//! campaigns, delivering every event duplicated and shuffled — and applied concurrently —
//! gives exactly the tables of an in-order single delivery, in both versions; and a rebuild
//! from the stored events gives them too.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use platform::messaging::Envelope;
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use reports::{Version, projection};
use sqlx::{PgPool, postgres::PgPoolOptions};
use testkit::TempDatabase;
use uuid::Uuid;

/// One payment: who, how much, and how far through its lifecycle it got.
#[derive(Debug, Clone)]
struct PagoSpec {
    afiliado: u8,
    moneda: u8,
    centavos: u32,
    /// Index into [`CAMINOS`].
    camino: usize,
    /// Minutes after the base time the payment was created (days apart for `por_dia`).
    minuto: u32,
}

const CAMINOS: [&[&str]; 5] = [
    &["PENDIENTE"],
    &["PENDIENTE", "PROCESANDO"],
    &["PENDIENTE", "PROCESANDO", "EXITOSO"],
    &["PENDIENTE", "PROCESANDO", "FALLIDO"],
    &["PENDIENTE", "PROCESANDO", "EXITOSO", "REVERSADO"],
];

/// One campaign and the `(estado, gasto)` after each of its changes.
#[derive(Debug, Clone)]
struct CampanaSpec {
    afiliado: u8,
    cambios: Vec<(u8, u16)>,
}

const ESTADOS_CAMPANA: [&str; 4] = ["CREATED", "ACTIVE", "PAUSED", "COMPLETED"];
const MONEDAS: [&str; 3] = ["USD", "EUR", "COP"];

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap()
}

fn envelope(
    tipo: &str,
    agregado: &str,
    id: Uuid,
    version: i64,
    at: DateTime<Utc>,
    data: serde_json::Value,
) -> Envelope {
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: tipo.into(),
        aggregate_type: agregado.into(),
        aggregate_id: id.to_string(),
        aggregate_version: version,
        occurred_at: at,
        correlation_id: format!("corr-{id}"),
        data,
    }
}

/// The history in order: every aggregate's events by version, aggregates one after another.
fn historia(pagos: &[PagoSpec], campanas: &[CampanaSpec]) -> Vec<Envelope> {
    let mut eventos = Vec::new();
    for p in pagos {
        let id = Uuid::new_v4();
        let creado = base() + chrono::Duration::minutes(i64::from(p.minuto));
        for (i, estado) in CAMINOS[p.camino].iter().enumerate() {
            let mut data = serde_json::json!({
                "id_pago": id, "id_afiliado": format!("af-{}", p.afiliado),
                "monto": f64::from(p.centavos) / 100.0, "moneda": MONEDAS[usize::from(p.moneda)],
                "referencia_pago": format!("ref-{id}"), "estado": estado,
            });
            if *estado == "FALLIDO" {
                data["mensaje_error"] = "Fondos insuficientes".into();
            }
            if *estado == "EXITOSO" {
                data["referencia_transaccion"] = format!("txn_{}", p.centavos).into();
            }
            eventos.push(envelope(
                "Pago",
                "Pago",
                id,
                i as i64 + 1,
                creado + chrono::Duration::seconds(i as i64 * 3),
                data,
            ));
        }
    }
    for c in campanas {
        let id = Uuid::new_v4();
        for (i, (estado, gasto)) in c.cambios.iter().enumerate() {
            eventos.push(envelope(
                "CampanaActualizada",
                "Campana",
                id,
                i as i64 + 1,
                base() + chrono::Duration::seconds(i as i64),
                serde_json::json!({
                    "id_campana": id, "id_afiliado": format!("af-{}", c.afiliado),
                    "nombre": format!("campaña {i}"), "tipo": "PROMOCIONAL",
                    "estado": ESTADOS_CAMPANA[usize::from(*estado)], "presupuesto": 5000.0,
                    "moneda": "USD", "gasto_actual": f64::from(*gasto), "impresiones": 0,
                    "clicks": 0, "conversiones": i,
                }),
            ));
        }
    }
    eventos
}

/// Every event one to three times, in a random order.
fn entregas(historia: &[Envelope], semilla: u64) -> Vec<Envelope> {
    let mut rng = StdRng::seed_from_u64(semilla);
    let mut entregas: Vec<Envelope> = historia
        .iter()
        .flat_map(|e| std::iter::repeat_n(e.clone(), rng.random_range(1..=3)))
        .collect();
    entregas.shuffle(&mut rng);
    entregas
}

fn pago_spec() -> impl Strategy<Value = PagoSpec> {
    (
        0u8..3,
        0u8..3,
        1u32..1_000_000,
        0..CAMINOS.len(),
        0u32..(60 * 24 * 4),
    )
        .prop_map(|(afiliado, moneda, centavos, camino, minuto)| PagoSpec {
            afiliado,
            moneda,
            centavos,
            camino,
            minuto,
        })
}

fn campana_spec() -> impl Strategy<Value = CampanaSpec> {
    (0u8..3, prop::collection::vec((0u8..4, 0u16..5000), 1..5))
        .prop_map(|(afiliado, cambios)| CampanaSpec { afiliado, cambios })
}

/// Every row of every table of both versions, as JSON text, in key order.
async fn tablas(pool: &PgPool) -> Vec<String> {
    let mut filas = Vec::new();
    for (tabla, clave) in [
        ("v1_pagos", "id_pago"),
        ("v2_pagos", "id_pago"),
        ("v2_campanas", "id_campana"),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT '{tabla} ' || row_to_json(t)::text FROM {tabla} t ORDER BY {clave}"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        filas.extend(rows);
    }
    filas
}

async fn vaciar(pool: &PgPool) {
    sqlx::query("TRUNCATE eventos, v1_pagos, v2_pagos, v2_campanas")
        .execute(pool)
        .await
        .unwrap();
}

async fn schema_pool(url: &str, schema: &str) -> PgPool {
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    testkit::migrated_pool(PgPoolOptions::new(), options, schema, &reports::MIGRATOR).await
}

#[test]
fn duplicated_shuffled_concurrent_batched_delivery_and_rebuild_equal_the_in_order_tables() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(TempDatabase::create());
    let (en_orden, desordenado, en_lotes) = runtime.block_on(async {
        (
            schema_pool(&db.url, "reports_in_order").await,
            schema_pool(&db.url, "reports_shuffled").await,
            schema_pool(&db.url, "reports_batched").await,
        )
    });

    let strategy = (
        prop::collection::vec(pago_spec(), 1..12),
        prop::collection::vec(campana_spec(), 0..4),
        any::<u64>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 40,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |(pagos, campanas, semilla)| {
        runtime.block_on(async {
            vaciar(&en_orden).await;
            vaciar(&desordenado).await;
            vaciar(&en_lotes).await;
            let historia = historia(&pagos, &campanas);
            for evento in &historia {
                assert!(projection::aplicar(&en_orden, evento).await.unwrap());
            }
            let esperado = tablas(&en_orden).await;

            let entregas = entregas(&historia, semilla);
            let nuevos: usize = futures::stream::iter(entregas.iter())
                .map(|e| projection::aplicar(&desordenado, e))
                .buffer_unordered(4)
                .map(|r| usize::from(r.unwrap()))
                .fold(0, |a, b| async move { a + b })
                .await;
            prop_assert_eq!(nuevos, historia.len(), "each event is new exactly once");
            prop_assert_eq!(&tablas(&desordenado).await, &esperado);

            // The same deliveries as a busy consumer applies them: cut into batches of 1 to 9,
            // each in one statement.
            let mut tamanos = StdRng::seed_from_u64(semilla ^ 0x5eed);
            let mut resto = entregas.as_slice();
            let mut nuevos_en_lotes = 0;
            while !resto.is_empty() {
                let (lote, cola) = resto.split_at(tamanos.random_range(1..=9).min(resto.len()));
                let nuevos = projection::aplicar_lote(&en_lotes, lote).await.unwrap();
                nuevos_en_lotes += nuevos.iter().filter(|n| **n).count();
                resto = cola;
            }
            prop_assert_eq!(
                nuevos_en_lotes,
                historia.len(),
                "each event is new exactly once"
            );
            prop_assert_eq!(&tablas(&en_lotes).await, &esperado, "in batches");

            for version in Version::ALL {
                projection::rebuild(&desordenado, version).await.unwrap();
            }
            prop_assert_eq!(&tablas(&desordenado).await, &esperado, "after a rebuild");
            Ok(())
        })
    });
    runtime.block_on(async {
        en_orden.close().await;
        desordenado.close().await;
        en_lotes.close().await;
        db.drop_database().await;
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn a_rebuild_while_events_arrive_loses_none_of_them() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = TempDatabase::create().await;
        let pool = schema_pool(&db.url, "reports").await;
        let pagos: Vec<PagoSpec> = (0..300)
            .map(|i| PagoSpec {
                afiliado: (i % 3) as u8,
                moneda: (i % 3) as u8,
                centavos: 100 + i,
                camino: (i as usize) % CAMINOS.len(),
                minuto: i,
            })
            .collect();
        let historia = historia(&pagos, &[]);
        let (antes, despues) = historia.split_at(historia.len() / 2);
        for e in antes {
            projection::aplicar(&pool, e).await.unwrap();
        }
        // Rebuild both versions again and again while the second half arrives.
        let reconstruir = {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    for v in Version::ALL {
                        projection::rebuild(&pool, v).await.unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        futures::stream::iter(despues.iter())
            .map(|e| projection::aplicar(&pool, e))
            .buffer_unordered(4)
            .for_each(|r| async move {
                r.unwrap();
            })
            .await;
        reconstruir.await.unwrap();

        let con_rebuild = tablas(&pool).await;
        vaciar(&pool).await;
        for e in &historia {
            projection::aplicar(&pool, e).await.unwrap();
        }
        assert_eq!(con_rebuild, tablas(&pool).await);
        pool.close().await;
        db.drop_database().await;
    });
}

/// A malformed event is refused whole: nothing stored, so a corrected redelivery applies.
#[test]
fn a_malformed_event_changes_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = TempDatabase::create().await;
        let pool = schema_pool(&db.url, "reports").await;
        let id = Uuid::new_v4();
        let mut rng = StdRng::seed_from_u64(7);
        let malos = [
            serde_json::json!({"id_afiliado": "a", "monto": "diez", "moneda": "USD", "estado": "PENDIENTE", "referencia_pago": "r"}),
            serde_json::json!({"id_afiliado": "a", "monto": 10.0, "moneda": "GBP", "estado": "PENDIENTE", "referencia_pago": "r"}),
            serde_json::json!({"id_afiliado": "a", "monto": 10.0, "moneda": "USD", "estado": "PERDIDO", "referencia_pago": "r"}),
            serde_json::json!({"id_afiliado": "a", "monto": -1.0, "moneda": "USD", "estado": "PENDIENTE", "referencia_pago": "r"}),
            serde_json::json!({"monto": 10.0, "moneda": "USD", "estado": "PENDIENTE", "referencia_pago": "r"}),
        ];
        for data in malos {
            let e = envelope("PagoPendiente", "Pago", id, 1, base(), data);
            let error = projection::aplicar(&pool, &e).await.unwrap_err();
            assert!(
                matches!(error, platform::messaging::HandlerError::Permanent(_)),
                "{error}"
            );
        }
        let mut otro = envelope("X", "Factura", id, 1, base(), serde_json::json!({}));
        assert!(projection::aplicar(&pool, &otro).await.is_err());
        otro.aggregate_type = "Pago".into();
        otro.aggregate_version = rng.random_range(-5..1);
        assert!(projection::aplicar(&pool, &otro).await.is_err());
        assert_eq!(testkit::count(&pool, "SELECT count(*) FROM eventos").await, 0);
        assert_eq!(testkit::count(&pool, "SELECT count(*) FROM v1_pagos").await, 0);
        pool.close().await;
        db.drop_database().await;
    });
}
