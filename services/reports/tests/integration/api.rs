//! `/api/reports` against a real PostgreSQL: both shapes, v2 ⊇ v1 for every filter, bad
//! filters, pinning a version, and the switch reaching every replica through LISTEN/NOTIFY.

use std::time::Duration;

use crate::common::{aplicar, historia, pool, replica};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{call, eventually};

const SIN_DATOS: (&str, &str) = ("http://127.0.0.1:9", "http://127.0.0.1:9");
const SONDEO_LARGO: Duration = Duration::from_secs(3600);

#[sqlx::test(migrations = false)]
async fn v1_is_the_simple_report_in_the_active_version(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c).await;
    aplicar(&pool, &historia()).await;
    let r = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    let answer = call(&r.app, "GET", "/api/reports/payments", None, &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["x-report-version"], "v1");
    let v1 = answer.body;
    assert_eq!(v1["version"], "v1");
    assert_eq!(v1["total_pagos"], 4);
    assert_eq!(
        v1["monto_total"],
        serde_json::json!({"USD": 150.5, "EUR": 20.0, "COP": 30000.0})
    );
    assert_eq!(
        v1["por_estado"],
        serde_json::json!({"PENDIENTE": 1, "PROCESANDO": 0, "EXITOSO": 1, "FALLIDO": 1, "REVERSADO": 1})
    );
    assert!(v1["generado_en"].is_string());
    assert!(v1.get("por_moneda").is_none(), "v1 is the simple shape");
}

#[sqlx::test(migrations = false)]
async fn v2_is_the_detailed_report(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c).await;
    aplicar(&pool, &historia()).await;
    let r = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    let answer = call(
        &r.app,
        "GET",
        "/api/reports/payments",
        None,
        &[("x-report-version", "v2")],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["x-report-version"], "v2");
    let v2 = answer.body;
    assert_eq!(v2["version"], "v2");
    assert_eq!(
        v2["por_moneda"]["USD"],
        serde_json::json!({"total": 150.5, "cantidad": 2, "promedio": 75.25})
    );
    assert_eq!(
        v2["por_afiliado"],
        serde_json::json!([
            {"id_afiliado": "af-1", "cantidad": 2, "monto_total": 150.5, "tasa_exito": 50.0},
            {"id_afiliado": "af-2", "cantidad": 2, "monto_total": 30020.0, "tasa_exito": 100.0},
        ])
    );
    assert_eq!(
        v2["por_dia"],
        serde_json::json!([
            {"fecha": "2026-11-20", "cantidad": 2, "monto_total": 150.5},
            {"fecha": "2026-11-21", "cantidad": 2, "monto_total": 30020.0},
        ])
    );
    // EXITOSO + REVERSADO were charged, one FALLIDO: 2 of 3 with a final answer.
    assert_eq!(v2["tasa_exito"], 66.67);
    assert_eq!(v2["ticket_promedio"], 7542.63);
    assert_eq!(
        v2["campanas"],
        serde_json::json!({"activas": 1, "total": 2, "presupuesto_total": 2000.0, "gasto_total": 10.0})
    );
}

#[sqlx::test(migrations = false)]
async fn v2_contains_v1_with_identical_values_for_every_filter(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = pool(o, c).await;
    aplicar(&pool, &historia()).await;
    let r = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    for query in [
        "",
        "?estado=EXITOSO",
        "?moneda=USD",
        "?id_afiliado=af-2",
        "?fecha_desde=2026-11-21",
        "?fecha_hasta=2026-11-20",
        "?fecha_desde=2026-11-20T10:00:00Z&fecha_hasta=2026-11-20T10:00:00Z",
        "?estado=PENDIENTE&moneda=EUR&id_afiliado=af-2",
        "?id_afiliado=nadie",
    ] {
        let uri = format!("/api/reports/payments{query}");
        let v1 = call(&r.app, "GET", &uri, None, &[("x-report-version", "v1")])
            .await
            .body;
        let v2 = call(&r.app, "GET", &uri, None, &[("x-report-version", "v2")])
            .await
            .body;
        for (field, value) in v1.as_object().unwrap() {
            if field != "version" && field != "generado_en" {
                assert_eq!(&v2[field], value, "{field} for {query:?}");
            }
        }
    }
    let solo = call(
        &r.app,
        "GET",
        "/api/reports/payments?id_afiliado=af-2&estado=REVERSADO",
        None,
        &[],
    )
    .await
    .body;
    assert_eq!(solo["total_pagos"], 1);
    assert_eq!(solo["monto_total"]["COP"], 30000.0);
    let rango = call(
        &r.app,
        "GET",
        "/api/reports/payments?fecha_desde=2026-11-21&fecha_hasta=2026-11-21",
        None,
        &[],
    )
    .await
    .body;
    assert_eq!(
        rango["total_pagos"], 2,
        "a day range includes the whole day"
    );
}

#[sqlx::test(migrations = false)]
async fn bad_filters_and_pins_are_400_problems(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c).await;
    let r = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    for (query, field) in [
        ("?estado=GANADO", "estado"),
        ("?moneda=usd", "moneda"),
        ("?id_afiliado=", "id_afiliado"),
        ("?fecha_desde=ayer", "fecha_desde"),
        ("?fecha_hasta=2026-02-30", "fecha_hasta"),
        (
            "?fecha_desde=2026-11-30&fecha_hasta=2026-11-01",
            "fecha_hasta",
        ),
        ("?pagina=2", "pagina"),
        ("?fecha_desde=%FF", "fecha_desde"),
    ] {
        let answer = call(
            &r.app,
            "GET",
            &format!("/api/reports/payments{query}"),
            None,
            &[],
        )
        .await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert_eq!(
            answer.headers["content-type"], "application/problem+json",
            "{query}"
        );
        assert_eq!(answer.body["errors"][0]["field"], field, "{query}");
    }
    let pinned = call(
        &r.app,
        "GET",
        "/api/reports/payments",
        None,
        &[("x-report-version", "v3")],
    )
    .await;
    assert_eq!(pinned.status, 400);
    assert_eq!(pinned.body["errors"][0]["field"], "X-Report-Version");
}

#[sqlx::test(migrations = false)]
async fn the_version_endpoint_switches_and_refuses_bad_bodies(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = pool(o, c).await;
    let r = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    let before = call(&r.app, "GET", "/api/reports/version", None, &[])
        .await
        .body;
    assert_eq!(before["active"], "v1");
    assert_eq!(before["desired"], "v1");
    assert_eq!(before["source"], "database");
    assert_eq!(before["stale"], false);
    assert!(before["switched_at"].is_string());

    for body in [
        r#"{"active":"v3"}"#,
        r#"{"active":"V2"}"#,
        r#"{}"#,
        r#"{"active":"v2","extra":1}"#,
        r#"{"active":"v2""#,
        r#"["v2"]"#,
        "",
    ] {
        let answer = call(&r.app, "PUT", "/api/reports/version", Some(body), &[]).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(answer.headers["content-type"], "application/problem+json");
    }
    let oversized = format!(r#"{{"active":"v2","x":"{}"}}"#, "a".repeat(100 * 1024));
    let answer = call(&r.app, "PUT", "/api/reports/version", Some(&oversized), &[]).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    assert_eq!(
        call(&r.app, "GET", "/api/reports/version", None, &[])
            .await
            .body["active"],
        "v1",
        "a refused switch changes nothing"
    );

    let switched = call(
        &r.app,
        "PUT",
        "/api/reports/version",
        Some(r#"{"active":"v2"}"#),
        &[],
    )
    .await;
    assert_eq!(switched.status, 200, "{}", switched.body);
    assert_eq!(switched.body["active"], "v2");
    assert_eq!(switched.body["desired"], "v2");
    assert_ne!(switched.body["switched_at"], before["switched_at"]);
    let report = call(&r.app, "GET", "/api/reports/payments", None, &[]).await;
    assert_eq!(report.headers["x-report-version"], "v2");
    assert_eq!(report.body["version"], "v2");

    // Asking again for the served version is not a switch: switched_at stays.
    let again = call(
        &r.app,
        "PUT",
        "/api/reports/version/",
        Some(r#"{"active":"v2"}"#),
        &[],
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["switched_at"], switched.body["switched_at"]);
}

#[sqlx::test(migrations = false)]
async fn a_switch_reaches_every_replica_through_notify(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c).await;
    let a = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    let b = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    // Let b's listener subscribe (it reads the row right after LISTEN, so nothing is missed
    // either way; this only makes the test exercise the notification path).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for target in ["v2", "v1", "v2"] {
        switch_on_a_and_wait_for_b(&a, &b, target).await;
    }
}

/// `PUT` on replica `a`, then wait (a liveness bound) until replica `b` serves `target`.
async fn switch_on_a_and_wait_for_b(
    a: &crate::common::Replica,
    b: &crate::common::Replica,
    target: &str,
) {
    let body = format!(r#"{{"active":"{target}"}}"#);
    assert_eq!(
        call(&a.app, "PUT", "/api/reports/version", Some(&body), &[])
            .await
            .status,
        200
    );
    eventually(
        &format!("replica b serves {target}"),
        Duration::from_secs(15),
        || async {
            call(&b.app, "GET", "/api/reports/payments", None, &[])
                .await
                .headers["x-report-version"]
                == target
        },
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn a_replica_whose_listener_lost_its_connection_still_learns_the_switch(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = pool(o, c).await;
    let a = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    let b = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Kill every LISTENing backend, then switch at once: the notification may be sent while
    // b's listener is away. With polling off, only the re-read on reconnect can save it.
    for target in ["v2", "v1"] {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .execute(&pool)
        .await
        .unwrap();
        switch_on_a_and_wait_for_b(&a, &b, target).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_cached_report_is_served_in_its_own_version(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c).await;
    aplicar(&pool, &historia()).await;
    let r = replica(
        &pool,
        SONDEO_LARGO,
        Some(Duration::from_secs(60)),
        SIN_DATOS,
    )
    .await;
    let v1 = call(&r.app, "GET", "/api/reports/payments", None, &[]).await;
    assert_eq!(v1.body["version"], "v1");
    call(
        &r.app,
        "PUT",
        "/api/reports/version",
        Some(r#"{"active":"v2"}"#),
        &[],
    )
    .await;
    let v2 = call(&r.app, "GET", "/api/reports/payments", None, &[]).await;
    assert_eq!(v2.headers["x-report-version"], "v2");
    assert_eq!(v2.body["version"], "v2", "the cache is per version");
    // A new payment is not visible until the cached entry expires (60 s here): the cache is
    // real. (Freshness with the default 100 ms is measured by `make bench`.)
    aplicar(
        &pool,
        &[crate::common::pago(
            "p9",
            1,
            "af-9",
            1.0,
            "USD",
            "PENDIENTE",
            chrono::Utc::now(),
        )],
    )
    .await;
    let cached = call(&r.app, "GET", "/api/reports/payments", None, &[]).await;
    assert_eq!(cached.body["total_pagos"], v2.body["total_pagos"]);
    let other_filter = call(
        &r.app,
        "GET",
        "/api/reports/payments?id_afiliado=af-9",
        None,
        &[],
    )
    .await;
    assert_eq!(other_filter.body["total_pagos"], 1);
}

#[sqlx::test(migrations = false)]
async fn health_counts_what_this_replica_applied(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c).await;
    let r = replica(&pool, SONDEO_LARGO, None, SIN_DATOS).await;
    let handler = platform::inbox::Transactional(reports::Proyeccion::new(
        pool.clone(),
        r.state.progreso.clone(),
    ));
    let eventos = historia();
    // The whole history in one transaction, as a busy consumer applies it, then three
    // redeliveries one by one.
    let applied = platform::messaging::EventHandler::handle_batch(&handler, &eventos).await;
    assert!(applied.iter().all(Result::is_ok), "{applied:?}");
    for e in eventos.iter().take(3) {
        platform::messaging::EventHandler::handle(&handler, e.clone())
            .await
            .unwrap();
    }
    let health = call(&r.app, "GET", "/api/reports/health", None, &[])
        .await
        .body;
    assert_eq!(health["eventos_procesados"], eventos.len());
    assert_eq!(health["eventos_duplicados"], 3);
    assert_eq!(health["version"], "v1");
    assert!(health["lag_ms"].is_u64());
    assert!(health["versiones"]["v2"]["lag_ms"].is_u64());
    let openapi = call(&r.app, "GET", "/openapi.json", None, &[]).await.body;
    for path in [
        "/api/reports/payments",
        "/api/reports/version",
        "/api/reports/health",
        "/reporting/report",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} documented");
    }
}
