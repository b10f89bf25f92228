//! Commission payments from tracked conversions: one payment per conversion whatever the
//! number of deliveries (sequential, concurrent, or the same conversion under another event
//! id), visible on the payment and its events.

use crate::common::*;
use chrono::Utc;
use payments::application::{Comisiones, Efecto};
use platform::messaging::{Envelope, HandlerError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

fn conversion(cliente: &str, valor: Option<f64>) -> Envelope {
    let id = Uuid::now_v7();
    let mut data = serde_json::json!({
        "id_evento": id, "tipo_evento": "CONVERSION", "id_afiliado": "AFILIADO_001",
        "id_campana": "6f1c1b7e-8d0e-4e0a-9b1a-1c2d3e4f5a6b",
        "clave_dedup": format!(r#"cliente:["AFILIADO_001","{cliente}"]"#),
        "hash_evento": "0".repeat(64), "fuente_evento": "API_DIRECT",
    });
    if let Some(valor) = valor {
        data["valor_conversion"] = valor.into();
        data["moneda"] = "USD".into();
    }
    Envelope {
        event_id: id,
        event_type: "ConversionRegistrada".into(),
        aggregate_type: "EventoTracking".into(),
        aggregate_id: id.to_string(),
        aggregate_version: 1,
        occurred_at: Utc::now(),
        correlation_id: format!("req-{cliente}"),
        data,
    }
}

fn tasa() -> rust_decimal::Decimal {
    "0.10".parse().unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_valued_conversion_creates_one_commission_however_often_it_arrives(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let handler = Comisiones::new(pool.clone(), tasa());
    let evento = conversion("conv-1", Some(249.99));
    let first = handler.aplicar(&evento).await.unwrap();
    let Efecto::Creada(id_pago) = first else {
        panic!("{first:?}")
    };
    // Redelivered, sequentially and 20 at once.
    assert_eq!(handler.aplicar(&evento).await.unwrap(), Efecto::Repetida);
    let concurrent = futures::future::join_all((0..20).map(|_| handler.aplicar(&evento))).await;
    assert!(
        concurrent.iter().all(|r| matches!(r, Ok(Efecto::Repetida))),
        "{concurrent:?}"
    );
    // The same conversion under another event id: the reference still arbitrates.
    let mut otra_entrega = evento.clone();
    otra_entrega.event_id = Uuid::new_v4();
    assert_eq!(
        handler.aplicar(&otra_entrega).await.unwrap(),
        Efecto::Repetida
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM pagos").await, 1);

    let (monto, estado, referencia): (f64, String, String) =
        sqlx::query_as("SELECT monto::float8, estado, referencia_pago FROM pagos WHERE id = $1")
            .bind(id_pago)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (monto, estado.as_str()),
        (25.0, "PENDIENTE"),
        "10 % of 249.99, to the cent"
    );
    assert!(referencia.starts_with("COM-"));
    let app = app_without_broker(&pool);
    let detalle = call(&app, "GET", &format!("/pagos/{id_pago}"), None, &[]).await;
    assert_eq!(
        detalle.body["comision"]["id_evento_conversion"],
        evento.event_id.to_string()
    );
    assert_eq!(detalle.body["comision"]["valor_conversion"], 249.99);
    assert_eq!(detalle.body["comision"]["tasa"], 0.1);
    // Its events carry the origin, so campaigns and reports know it is a commission.
    let datos: serde_json::Value = sqlx::query_scalar(
        "SELECT envelope->'data' FROM outbox WHERE aggregate_id = $1 AND event_type = 'PagoPendiente'",
    )
    .bind(id_pago.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        datos["comision"]["id_campana"],
        "6f1c1b7e-8d0e-4e0a-9b1a-1c2d3e4f5a6b"
    );
    assert_eq!(datos["monto"], 25.0);
    let correlated = count(&pool, "SELECT count(*) FROM pago_traza WHERE request_id = 'req-conv-1' AND evento = 'PAGO_RECIBIDO'").await;
    assert_eq!(
        correlated, 1,
        "the trace carries the conversion's request id"
    );
}

#[sqlx::test(migrations = false)]
async fn conversions_without_value_or_below_a_cent_create_nothing(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let handler = Comisiones::new(pool.clone(), tasa());
    assert_eq!(
        handler
            .aplicar(&conversion("sin-valor", None))
            .await
            .unwrap(),
        Efecto::SinComision
    );
    assert_eq!(
        handler
            .aplicar(&conversion("centavos", Some(0.04)))
            .await
            .unwrap(),
        Efecto::SinComision
    );
    let mut rota = conversion("rota", Some(10.0));
    rota.data["moneda"] = "GBP".into();
    assert!(matches!(
        handler.aplicar(&rota).await,
        Err(HandlerError::Permanent(_))
    ));
    let mut sin_clave = conversion("sin-clave", Some(10.0));
    sin_clave
        .data
        .as_object_mut()
        .unwrap()
        .remove("clave_dedup");
    assert!(matches!(
        handler.aplicar(&sin_clave).await,
        Err(HandlerError::Permanent(_))
    ));
    assert_eq!(count(&pool, "SELECT count(*) FROM pagos").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM inbox").await, 0);
}

/// A conversion from a public source (a web tag, an SDK) needs no credential, so anyone could
/// send one for any affiliate: it pays no commission, whatever its value. One from a source
/// that proves its sender (the affiliate's API key, its webhook signature) does.
#[sqlx::test(migrations = false)]
async fn only_conversions_from_authenticated_sources_pay(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let comisiones = Comisiones::new(pool.clone(), tasa());
    for (n, (fuente, pays)) in [
        (Some("WEB_TAG"), false),
        (Some("MOBILE_SDK"), false),
        (None, false),
        (Some("API_DIRECT"), true),
        (Some("WEBHOOK"), true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut envelope = conversion(&format!("fuente-{n}"), Some(500.0));
        match fuente {
            Some(fuente) => envelope.data["fuente_evento"] = fuente.into(),
            None => {
                envelope
                    .data
                    .as_object_mut()
                    .unwrap()
                    .remove("fuente_evento");
            }
        }
        let efecto = comisiones.aplicar(&envelope).await.unwrap();
        assert_eq!(
            matches!(efecto, Efecto::Creada(_)),
            pays,
            "{fuente:?}: {efecto:?}"
        );
        if !pays {
            assert_eq!(efecto, Efecto::SinCredencial, "{fuente:?}");
        }
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pagos WHERE comision IS NOT NULL"
        )
        .await,
        2
    );
}
