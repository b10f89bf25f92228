//! Legacy `/reporting` against real data services (v1 and v2 on loopback ports) and a real
//! PostgreSQL: `datos` follows the active version, reports are kept for every replica, the old
//! admin switch goes through the same source, and a data service that is down or broken is a
//! clear 503/502.

use std::time::Duration;

use crate::common::{aplicar, historia, pool, replica};
use platform::messaging::LazyBroker;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use testkit::call;
use tokio_util::sync::CancellationToken;

/// Both data services, with the history projected into each.
async fn data_services(
    o: &PgPoolOptions,
    c: &PgConnectOptions,
    stop: &CancellationToken,
) -> (String, String) {
    let mut urls = Vec::new();
    for version in [data_service::Version::V1, data_service::Version::V2] {
        let pool: PgPool = testkit::migrated_pool(
            o.clone(),
            c.clone(),
            version.schema(),
            &data_service::MIGRATOR,
        )
        .await;
        let projection = data_service::Proyeccion::new(pool.clone(), version);
        for e in historia() {
            projection.aplicar(&e).await.unwrap();
        }
        let app = data_service::app(
            pool,
            LazyBroker::default(),
            version,
            &testkit::http_config(),
        );
        urls.push(testkit::serve(app, stop).await);
    }
    (urls[0].clone(), urls[1].clone())
}

fn report_body(tipo: &str) -> String {
    format!(r#"{{"tipo_reporte":"{tipo}","filtros":{{"desde":"2026-11-01"}}}}"#)
}

#[sqlx::test(migrations = false)]
async fn datos_come_from_the_data_service_of_the_active_version(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let stop = CancellationToken::new();
    let (v1, v2) = data_services(&o, &c, &stop).await;
    let pool = pool(o, c).await;
    aplicar(&pool, &historia()).await;
    let a = replica(&pool, Duration::from_secs(3600), None, (&v1, &v2)).await;
    let b = replica(&pool, Duration::from_secs(3600), None, (&v1, &v2)).await;

    let mut ids = Vec::new();
    for (tipo, campo_v1) in [
        ("pagos_por_periodo", "total_pagos"),
        ("campanas_activas", "total_campanas"),
        ("metricas_generales", "tasa_exito"),
    ] {
        let answer = call(
            &a.app,
            "POST",
            "/reporting/report",
            Some(&report_body(tipo)),
            &[],
        )
        .await;
        assert_eq!(answer.status, 200, "{tipo}: {}", answer.body);
        assert_eq!(answer.headers["x-report-version"], "v1");
        let r = answer.body;
        assert_eq!(r["tipo"], tipo);
        assert_eq!(r["version_servicio_datos"], "v1");
        assert_eq!(r["datos"]["version"], "v1");
        assert!(r["datos"].get(campo_v1).is_some(), "{tipo}: {}", r["datos"]);
        assert_eq!(r["metadatos"]["filtros"]["desde"], "2026-11-01");
        assert_eq!(r["metadatos"]["servicio_datos"], v1);
        ids.push(r["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        call(
            &a.app,
            "POST",
            "/reporting/report",
            Some(&report_body("pagos_por_periodo")),
            &[]
        )
        .await
        .body["datos"]["total_pagos"],
        4
    );

    // The old admin call switches the report version, and datos follow it.
    let switched = call(
        &a.app,
        "POST",
        "/reporting/admin/servicio-datos",
        Some(&format!(r#"{{"url":"{v2}/","version":"v2"}}"#)),
        &[],
    )
    .await;
    assert_eq!(switched.status, 200, "{}", switched.body);
    assert_eq!(switched.body["version_activa"], "v2");
    assert_eq!(switched.body["servicio_datos_activo"], v2);
    assert_eq!(
        call(&a.app, "GET", "/api/reports/version", None, &[])
            .await
            .body["active"],
        "v2",
        "one switch for both"
    );
    let r = call(
        &a.app,
        "POST",
        "/reporting/report",
        Some(&report_body("metricas_generales")),
        &[],
    )
    .await;
    assert_eq!(r.headers["x-report-version"], "v2");
    assert_eq!(r.body["version_servicio_datos"], "v2");
    assert_eq!(r.body["datos"]["type"], "metrics");
    ids.push(r.body["id"].as_str().unwrap().to_owned());

    // Any replica answers for a report another one generated.
    for id in &ids {
        let got = call(&b.app, "GET", &format!("/reporting/report/{id}"), None, &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(&got.body["id"], id);
    }
    let listed = call(
        &b.app,
        "GET",
        "/reporting/reports?tipo=metricas_generales&limite=1",
        None,
        &[],
    )
    .await
    .body;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["reportes"][0]["id"], ids[3], "newest first");
    assert_eq!(
        call(&b.app, "GET", "/reporting/reports", None, &[])
            .await
            .body["total"],
        5
    );

    let config = call(&b.app, "GET", "/reporting/admin/configuracion", None, &[])
        .await
        .body;
    eventually_v2(&b).await;
    assert_eq!(config["servicios_datos"]["v1"], v1);
    let check = call(
        &a.app,
        "GET",
        &format!("/reporting/admin/verificar-servicio?url={v1}"),
        None,
        &[],
    )
    .await;
    assert_eq!(check.status, 200);
    assert_eq!(check.body["disponible"], true);
    assert_eq!(check.body["version"], "v1");
    let health = call(&a.app, "GET", "/reporting/health", None, &[])
        .await
        .body;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version_activa"], "v2");
    stop.cancel();
}

async fn eventually_v2(r: &crate::common::Replica) {
    testkit::eventually("replica serves v2", Duration::from_secs(10), || async {
        call(&r.app, "GET", "/reporting/admin/configuracion", None, &[])
            .await
            .body["version_activa"]
            == "v2"
    })
    .await;
}

#[sqlx::test(migrations = false)]
async fn bad_requests_are_400_and_unknown_reports_404(o: PgPoolOptions, c: PgConnectOptions) {
    let stop = CancellationToken::new();
    let (v1, v2) = data_services(&o, &c, &stop).await;
    let pool = pool(o, c).await;
    let r = replica(&pool, Duration::from_secs(3600), None, (&v1, &v2)).await;
    let oversized = format!(
        r#"{{"tipo_reporte":"pagos_por_periodo","filtros":{{"x":"{}"}}}}"#,
        "a".repeat(100 * 1024)
    );
    for body in [
        r#"{"tipo_reporte":"ventas"}"#,
        r#"{}"#,
        r#"{"tipo_reporte":"pagos_por_periodo","filtros":[1]}"#,
        r#"{"tipo_reporte":"pagos_por_periodo","extra":true}"#,
        r#"{"tipo_reporte":"#,
        oversized.as_str(),
    ] {
        let answer = call(&r.app, "POST", "/reporting/report", Some(body), &[]).await;
        let expected = if body.len() > 64 * 1024 { 413 } else { 400 };
        assert_eq!(
            answer.status,
            expected,
            "{}: {}",
            &body[..body.len().min(80)],
            answer.body
        );
        assert_eq!(answer.headers["content-type"], "application/problem+json");
    }
    assert_eq!(
        call(&r.app, "GET", "/reporting/report/no-es-un-id", None, &[])
            .await
            .status,
        400
    );
    assert_eq!(
        call(
            &r.app,
            "GET",
            &format!("/reporting/report/{}", uuid::Uuid::new_v4()),
            None,
            &[]
        )
        .await
        .status,
        404
    );
    for query in [
        "?tipo=ventas",
        "?limite=0",
        "?limite=101",
        "?limite=x",
        "?orden=asc",
    ] {
        assert_eq!(
            call(
                &r.app,
                "GET",
                &format!("/reporting/reports{query}"),
                None,
                &[]
            )
            .await
            .status,
            400,
            "{query}"
        );
    }
    // Only the configured data services can be selected or probed.
    for body in [
        r#"{"url":"http://169.254.169.254/latest","version":"v1"}"#.to_owned(),
        format!(r#"{{"url":"{v1}","version":"v2"}}"#),
        r#"{"version":"v3"}"#.to_owned(),
    ] {
        let answer = call(
            &r.app,
            "POST",
            "/reporting/admin/servicio-datos",
            Some(&body),
            &[],
        )
        .await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
    }
    assert_eq!(
        call(&r.app, "GET", "/api/reports/version", None, &[])
            .await
            .body["active"],
        "v1",
        "a refused switch changes nothing"
    );
    for query in ["?url=http://127.0.0.1:22", ""] {
        assert_eq!(
            call(
                &r.app,
                "GET",
                &format!("/reporting/admin/verificar-servicio{query}"),
                None,
                &[]
            )
            .await
            .status,
            400
        );
    }
    assert_eq!(
        testkit::count(&pool, "SELECT count(*) FROM reportes_legacy").await,
        0
    );
    stop.cancel();
}

#[sqlx::test(migrations = false)]
async fn a_data_service_down_is_503_and_a_broken_one_502(o: PgPoolOptions, c: PgConnectOptions) {
    let stop = CancellationToken::new();
    // v1: nothing listens. v2: answers 500 to everything.
    let down = format!("http://127.0.0.1:{}", testkit::free_port());
    let broken = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    };
    let pool = pool(o, c).await;
    let r = replica(&pool, Duration::from_secs(3600), None, (&down, &broken)).await;
    let answer = call(
        &r.app,
        "POST",
        "/reporting/report",
        Some(&report_body("pagos_por_periodo")),
        &[],
    )
    .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    assert!(answer.headers.contains_key("retry-after"));
    assert!(answer.body["detail"].as_str().unwrap().contains(&down));
    let check = call(
        &r.app,
        "GET",
        &format!("/reporting/admin/verificar-servicio?url={down}"),
        None,
        &[],
    )
    .await;
    assert_eq!(check.body["disponible"], false);
    assert_eq!(
        call(&r.app, "GET", "/reporting/health", None, &[])
            .await
            .body["status"],
        "degraded"
    );

    call(
        &r.app,
        "PUT",
        "/api/reports/version",
        Some(r#"{"active":"v2"}"#),
        &[],
    )
    .await;
    let answer = call(
        &r.app,
        "POST",
        "/reporting/report",
        Some(&report_body("pagos_por_periodo")),
        &[],
    )
    .await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    assert_eq!(
        testkit::count(&pool, "SELECT count(*) FROM reportes_legacy").await,
        0
    );
    // The read model itself does not depend on any data service.
    assert_eq!(
        call(&r.app, "GET", "/api/reports/payments", None, &[])
            .await
            .status,
        200
    );
    stop.cancel();
}
