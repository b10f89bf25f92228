//! Publication through the outbox to the real Pulsar broker: accepted events reach
//! `tracking.evt.<tipo>` keyed by campaign (or affiliate), each once; the status endpoint
//! follows; an on-demand retry of a published event is refused.

use std::time::Duration;

use crate::common::*;
use platform::{messaging::LazyBroker, outbox::Relay};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

const TOPICS: [&str; 4] = [
    "tracking.evt.click",
    "tracking.evt.impression",
    "tracking.evt.conversion",
    "tracking.evt.page_view",
];

#[sqlx::test(migrations = false)]
async fn accepted_events_are_published_to_their_topic_once_keyed_by_campaign(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let pulsar = pulsar_config();
    let broker = broker(&pulsar).await;
    let mut observer = Observer::subscribe(&pulsar, &TOPICS).await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(
        Relay::new(pool.clone(), broker.clone(), event_collector::SCHEMA).run(shutdown.clone()),
    );
    let (app, _writers) = replica(&pool, LazyBroker::ready(broker), DEMO, &config(&[]));

    let campana = uuid::Uuid::new_v4();
    let mut ids = Vec::new();
    for (tipo, extra) in [
        ("CLICK", json!({"id_campana": campana})),
        ("IMPRESSION", json!({"id_campana": campana})),
        (
            "CONVERSION",
            json!({"id_campana": campana, "valor_conversion": 80, "moneda": "COP"}),
        ),
        ("PAGE_VIEW", json!({})),
    ] {
        let mut event = json!({"tipo_evento": tipo, "id_afiliado": "AFILIADO_001", "id_evento_cliente": format!("p-{tipo}")});
        event
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let answer = post(
            &app,
            &event.to_string(),
            &[("x-request-id", "req-publicacion")],
        )
        .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        ids.push(answer.body["id_evento"].as_str().unwrap().to_owned());
        // A duplicate publishes nothing more.
        assert_eq!(post(&app, &event.to_string(), &[]).await.status, 200);
    }
    let seen = observer
        .collect(Duration::from_secs(30), |seen| seen.len() >= 4)
        .await;
    // Nothing else arrives (a duplicate would be published right behind its original).
    let extra = observer.collect(Duration::from_secs(1), |_| true).await;
    assert!(extra.is_empty());
    assert_eq!(seen.len(), 4);
    for (topic, envelope) in &seen {
        let tipo = envelope.data["tipo_evento"].as_str().unwrap();
        assert_eq!(*topic, format!("tracking.evt.{}", tipo.to_lowercase()));
        assert!(ids.contains(&envelope.event_id.to_string()));
        assert_eq!(envelope.aggregate_type, "EventoTracking");
        assert_eq!(envelope.aggregate_version, 1);
        assert_eq!(envelope.correlation_id, "req-publicacion");
        assert_eq!(envelope.data["id_evento"], envelope.event_id.to_string());
        assert_eq!(envelope.data["hash_evento"].as_str().unwrap().len(), 64);
        if tipo == "CONVERSION" {
            assert_eq!(envelope.data["valor_conversion"], 80.0);
            assert_eq!(envelope.data["moneda"], "COP");
            assert_eq!(envelope.event_type, "ConversionRegistrada");
        }
    }
    // Message keys: the campaign when named, else the affiliate.
    let keys: Vec<(String, String)> = sqlx::query_as(
        "SELECT envelope->'data'->>'tipo_evento', message_key FROM outbox ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (tipo, key) in keys {
        let expected = if tipo == "PAGE_VIEW" {
            "AFILIADO_001".to_owned()
        } else {
            campana.to_string()
        };
        assert_eq!(key, expected, "{tipo}");
    }

    let status = call(
        &app,
        "GET",
        &format!("/event-collector/events/{}/status", ids[0]),
        None,
        &[],
    )
    .await;
    assert_eq!(status.body["estado"], "PUBLICADO");
    assert_eq!(status.body["intentos"], 1);
    assert!(status.body["publicado_en"].is_string());
    let retry = call(
        &app,
        "POST",
        &format!("/event-collector/events/{}/retry", ids[0]),
        None,
        &[],
    )
    .await;
    assert_eq!(retry.status, 409);
    let stats = call(&app, "GET", "/event-collector/statistics", None, &[]).await;
    assert_eq!(stats.body["por_estado"]["PUBLICADO"], 4);
}
