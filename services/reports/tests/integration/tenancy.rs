//! Who may read reports, with access enforced as in a cluster: a partner's key sees its own
//! affiliate's figures only, legacy reporting is the operators', and the probes stay open.

use std::time::Duration;

use access::Alcance;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::acceso::{self, Claves, Regla, TablaDeRutas};

use crate::common::{aplicar, historia, pool, replica_with_access};

const SIN_DATOS: (&str, &str) = ("http://127.0.0.1:9", "http://127.0.0.1:9");
const SONDEO_LARGO: Duration = Duration::from_secs(3600);

/// A replica with access enforced as in a cluster.
async fn exigida(pool: &sqlx::PgPool) -> crate::common::Replica {
    let acceso = acceso::exigido(pool).await;
    replica_with_access(pool, SONDEO_LARGO, None, SIN_DATOS, &acceso).await
}

#[sqlx::test(migrations = false)]
async fn a_partner_reads_its_own_figures_only(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c).await;
    aplicar(&pool, &historia()).await;
    let r = exigida(&pool).await;
    let claves = Claves::new(&pool);
    let af1 = claves
        .restringida("af-1", &[Alcance::ReportesLectura])
        .await;
    let get = |auth: &str, uri: &str| {
        let (app, auth, uri) = (r.app.clone(), auth.to_owned(), uri.to_owned());
        async move {
            testkit::call(
                &app,
                "GET",
                &uri,
                None,
                &[("authorization", auth.as_str()), ("x-report-version", "v2")],
            )
            .await
        }
    };
    let propio = get(&af1, "/api/reports/payments").await;
    assert_eq!(propio.status, 200, "{:?}", propio.body);
    // af-1 has 2 of the history's 4 payments, and the breakdown by affiliate shows only it.
    assert_eq!(propio.body["total_pagos"], 2);
    let por_afiliado = propio.body["por_afiliado"].as_array().unwrap();
    assert_eq!(por_afiliado.len(), 1, "{por_afiliado:?}");
    assert_eq!(por_afiliado[0]["id_afiliado"], "af-1");
    assert_eq!(propio.body["campanas"]["total"], 1, "af-1's campaigns only");

    let ajeno = get(&af1, "/api/reports/payments?id_afiliado=af-2").await;
    assert_eq!(ajeno.status, 403, "{:?}", ajeno.body);
    let pagos = claves.restringida("af-1", &[Alcance::PagosLectura]).await;
    assert_eq!(get(&pagos, "/api/reports/payments").await.status, 403);
}

/// Every operation of the reports document, and its rule. A route added without a rule here
/// fails [`every_documented_route_is_guarded_by_its_rule`].
const REGLAS: [(&str, &str, Regla); 11] = [
    (
        "get",
        "/api/reports/payments",
        Regla::Afiliado(Alcance::ReportesLectura),
    ),
    ("get", "/api/reports/version", Regla::Abierta),
    ("put", "/api/reports/version", Regla::Operador),
    ("get", "/api/reports/health", Regla::Abierta),
    ("post", "/reporting/report", Regla::Operador),
    ("get", "/reporting/report/{id}", Regla::Operador),
    ("get", "/reporting/reports", Regla::Operador),
    ("post", "/reporting/admin/servicio-datos", Regla::Operador),
    ("get", "/reporting/admin/configuracion", Regla::Operador),
    (
        "get",
        "/reporting/admin/verificar-servicio",
        Regla::Operador,
    ),
    ("get", "/reporting/health", Regla::Abierta),
];

#[sqlx::test(migrations = false)]
async fn every_documented_route_is_guarded_by_its_rule(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = pool(o, c).await;
    let r = exigida(&pool).await;
    let cuerpo = |method: &str, path: &str| match (method, path) {
        ("put", _) => Some(r#"{"active":"v2"}"#.to_owned()),
        ("post", "/reporting/report") => Some(r#"{"tipo_reporte":"pagos_por_periodo"}"#.to_owned()),
        ("post", _) => Some(r#"{"version":"v2"}"#.to_owned()),
        _ => None,
    };
    let tabla = TablaDeRutas {
        app: &r.app,
        reglas: &REGLAS,
        parametros: &[("id", uuid::Uuid::new_v4().to_string())],
        cuerpo: &cuerpo,
    };
    assert_eq!(tabla.comprobar(&Claves::new(&pool)).await, REGLAS.len());
    // No key switched the version.
    let version = testkit::call(&r.app, "GET", "/api/reports/version", None, &[]).await;
    assert_eq!(version.body["active"], "v1");
}
