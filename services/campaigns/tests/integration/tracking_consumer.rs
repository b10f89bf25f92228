//! Tracked clicks, impressions and conversions counted on the campaign they name: exactly once
//! under duplicated and shuffled delivery, and without touching the campaign's version.

use crate::common::*;
use campaigns::application::{AtribucionDePagos, ContadorDeTracking, Conteo};
use campaigns::domain::Contador;
use chrono::Utc;
use platform::messaging::{Envelope, HandlerError};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

fn tracking(tipo: &str, campana: Option<&str>) -> Envelope {
    let id = Uuid::now_v7();
    let mut data = serde_json::json!({"id_evento": id, "tipo_evento": tipo, "id_afiliado": "af"});
    if let Some(campana) = campana {
        data["id_campana"] = campana.into();
    }
    Envelope {
        event_id: id,
        event_type: "ClickRegistrado".into(),
        aggregate_type: "EventoTracking".into(),
        aggregate_id: id.to_string(),
        aggregate_version: 1,
        occurred_at: Utc::now(),
        correlation_id: "corr".into(),
        data,
    }
}

/// (impresiones, clicks, conversiones, version) of a campaign.
async fn contadores(pool: &PgPool, id: &str) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT impresiones, clicks, conversiones, version FROM campanas WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn duplicated_and_shuffled_tracking_events_count_once(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let activa = crear_activa(&app, "af", "100").await;
    let creada = crear(&app, "af", "100").await;
    let version_inicial = contadores(&pool, &activa).await.3;

    let mut eventos = Vec::new();
    for _ in 0..7 {
        eventos.push(tracking("IMPRESSION", Some(&activa)));
    }
    for _ in 0..3 {
        eventos.push(tracking("CLICK", Some(&activa)));
    }
    eventos.push(tracking("CONVERSION", Some(&activa)));
    eventos.push(tracking("CLICK", Some(&creada)));
    let handler = ContadorDeTracking::new(pool.clone());
    // Reverse order, then every event again, then a few a third time, concurrently.
    let mut entregas: Vec<Envelope> = eventos.iter().rev().cloned().collect();
    entregas.extend(eventos.iter().cloned());
    entregas.extend(eventos.iter().take(4).cloned());
    let resultados = futures::future::join_all(entregas.iter().map(|e| handler.aplicar(e))).await;
    let contados = resultados
        .iter()
        .filter(|r| matches!(r, Ok(Conteo::Contado(_))))
        .count();
    assert_eq!(contados, eventos.len(), "{resultados:?}");

    assert_eq!(
        contadores(&pool, &activa).await,
        (7, 3, 1, version_inicial),
        "counters follow, the version does not"
    );
    assert_eq!(
        contadores(&pool, &creada).await.1,
        1,
        "counted in any state"
    );
    let campana = call(&app, "GET", &format!("/campaigns/{activa}"), None, &[]).await;
    assert_eq!(campana.body["metricas"]["ctr"], 42.86);
    assert_eq!(campana.body["metricas"]["tasa_conversion"], 33.33);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE envelope->'data'->>'cambio' = 'metrics'"
        )
        .await,
        0
    );
}

#[sqlx::test(migrations = false)]
async fn events_naming_no_campaign_of_their_affiliate_or_an_uncounted_type_change_nothing(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let id = crear_activa(&app, "af", "100").await;
    let handler = ContadorDeTracking::new(pool.clone());
    let desconocida = Uuid::new_v4().to_string();
    let mut ajeno = tracking("CLICK", Some(&id));
    ajeno.data["id_afiliado"] = "otro-afiliado".into();
    for evento in [
        tracking("CLICK", None),
        tracking("CLICK", Some(&desconocida)),
        tracking("PAGE_VIEW", Some(&id)),
        ajeno,
    ] {
        assert_eq!(handler.aplicar(&evento).await.unwrap(), Conteo::SinCampana);
    }
    assert_eq!(contadores(&pool, &id).await.1, 0);
    let mut roto = tracking("CLICK", Some(&id));
    roto.data["id_campana"] = "no-es-uuid".into();
    assert!(matches!(
        handler.aplicar(&roto).await,
        Err(HandlerError::Permanent(_))
    ));
    assert_eq!(Contador::de_tipo("CLICK"), Some(Contador::Clicks));
}

#[sqlx::test(migrations = false)]
async fn a_commission_payment_adds_spend_to_its_campaign_but_no_second_conversion(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let nombrada = crear_activa(&app, "af", "100").await;
    let otra = crear_activa(&app, "af", "100").await;
    let pago = |comision: serde_json::Value| {
        let id = Uuid::new_v4();
        Envelope {
            event_id: Uuid::new_v4(),
            event_type: "PagoExitoso".into(),
            aggregate_type: "Pago".into(),
            aggregate_id: id.to_string(),
            aggregate_version: 3,
            occurred_at: Utc::now(),
            correlation_id: "corr".into(),
            data: serde_json::json!({
                "id_pago": id, "id_afiliado": "af", "monto": 40.0, "moneda": "USD",
                "referencia_pago": format!("COM-{id}"), "estado": "EXITOSO", "comision": comision,
            }),
        }
    };
    let handler = AtribucionDePagos::new(pool.clone());
    let con_campana = pago(
        serde_json::json!({"id_evento_conversion": Uuid::new_v4(), "id_campana": nombrada, "valor_conversion": 400.0, "tasa": 0.1}),
    );
    assert_eq!(
        handler.aplicar(&con_campana).await.unwrap(),
        1,
        "the named campaign only"
    );
    let sin_campana = pago(
        serde_json::json!({"id_evento_conversion": Uuid::new_v4(), "valor_conversion": 400.0, "tasa": 0.1}),
    );
    assert_eq!(
        handler.aplicar(&sin_campana).await.unwrap(),
        2,
        "every active campaign of the affiliate"
    );
    let gasto = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, f64)>(
                "SELECT conversiones, gasto_actual::float8 FROM campanas WHERE id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(gasto(nombrada).await, (0, 8.0));
    assert_eq!(gasto(otra).await, (0, 4.0));
}
