//! Test support for the campaigns context.
#![allow(dead_code)]

use platform::messaging::LazyBroker;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
pub use testkit::*;

pub async fn migrated_pool(options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    testkit::migrated_pool(options, connect, campaigns::SCHEMA, &campaigns::MIGRATOR).await
}

pub fn app(pool: &PgPool) -> platform::http::App {
    campaigns::app(
        pool.clone(),
        LazyBroker::default(),
        &http_config(),
        &access::Acceso::desarrollo(),
    )
}

/// A valid creation body for `afiliado` with budget `monto` USD, running from yesterday for a
/// month.
pub fn campana_json(afiliado: &str, monto: &str) -> String {
    let inicio = chrono::Utc::now() - chrono::Duration::days(1);
    let fin = chrono::Utc::now() + chrono::Duration::days(30);
    format!(
        r#"{{"nombre":"Campaña {afiliado}","tipo":"PROMOCIONAL","presupuesto":{{"monto":{monto},"moneda":"USD"}},"fecha_inicio":"{}","fecha_fin":"{}","id_afiliado":"{afiliado}","descripcion":"prueba"}}"#,
        inicio.to_rfc3339(),
        fin.to_rfc3339()
    )
}

/// Creates a campaign and returns its id.
pub async fn crear(app: &platform::http::App, afiliado: &str, monto: &str) -> String {
    let answer = call(
        app,
        "POST",
        "/campaigns",
        Some(&campana_json(afiliado, monto)),
        &[],
    )
    .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer.body["id"].as_str().unwrap().to_owned()
}

/// Creates and activates a campaign.
pub async fn crear_activa(app: &platform::http::App, afiliado: &str, monto: &str) -> String {
    let id = crear(app, afiliado, monto).await;
    let answer = call(
        app,
        "PATCH",
        &format!("/campaigns/{id}/activate"),
        None,
        &[],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    id
}
