//! The collector's HTTP API against a real PostgreSQL: stored before acknowledged, duplicates
//! across replicas, batches, source authentication, rate limits shared by replicas, limits and
//! malformed input. (Publication through the broker: `publication.rs`, `broker_outage.rs`.)

use std::collections::HashSet;

use crate::common::*;
use event_collector::domain::firma::{firmar_con_tiempo, firmar_simple};
use platform::messaging::LazyBroker;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[sqlx::test(migrations = false)]
async fn an_accepted_event_is_stored_with_its_outbox_row_before_the_answer(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let (app, _writers) = demo(&pool);
    let body = json!({
        "tipo_evento": " click ",
        "id_afiliado": "AFILIADO_001",
        "id_campana": "6F1C1B7E-8D0E-4E0A-9B1A-1C2D3E4F5A6B",
        "url": "https://tienda.example/p/1",
        "parametros_tracking": {"utm_source": "newsletter"},
        "tipo_dispositivo": "mobile",
        "api_key": "ignored-for-web-tags",
    })
    .to_string();
    let answer = post(
        &app,
        &body,
        &[
            ("user-agent", "Mozilla/5.0 test"),
            ("x-session-id", "sess-1"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let b = &answer.body;
    assert_eq!(b["exito"], true);
    assert_eq!(b["estado"], "ACEPTADO");
    assert_eq!(b["topic_destino"], "tracking.evt.click");
    assert_eq!(b["hash_evento"].as_str().unwrap().len(), 64);
    let id = b["id_evento"].as_str().unwrap();
    assert_eq!(
        answer.headers["location"],
        format!("/event-collector/events/{id}/status").as_str()
    );
    assert_eq!(answer.headers["x-ratelimit-limit"], "1000");
    assert_eq!(answer.headers["x-ratelimit-remaining"], "999");
    assert_eq!(
        answer.headers["ratelimit-policy"],
        "\"afiliado\";q=1000;w=60"
    );

    // Durable before the answer: the row and its outbox row are committed.
    let (tipo, campana, datos): (String, uuid::Uuid, Value) = sqlx::query_as(
        "SELECT tipo_evento, id_campana, datos FROM eventos WHERE id_evento = $1::uuid",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tipo, "CLICK");
    assert_eq!(campana.to_string(), "6f1c1b7e-8d0e-4e0a-9b1a-1c2d3e4f5a6b");
    assert_eq!(datos["ip"], "203.0.113.7");
    assert_eq!(datos["user_agent"], "Mozilla/5.0 test");
    assert_eq!(datos["id_sesion"], "sess-1");
    assert_eq!(datos["dispositivo"]["tipo_dispositivo"], "MOBILE");
    assert!(
        datos.get("api_key").is_none(),
        "credentials are never stored: {datos}"
    );
    let (topic, key): (String, String) =
        sqlx::query_as("SELECT topic, message_key FROM outbox WHERE event_id = $1::uuid")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(topic, "tracking.evt.click");
    assert_eq!(
        key, "6f1c1b7e-8d0e-4e0a-9b1a-1c2d3e4f5a6b",
        "keyed by campaign"
    );

    let status = call(
        &app,
        "GET",
        &format!("/event-collector/events/{id}/status"),
        None,
        &[],
    )
    .await;
    assert_eq!(status.status, 200);
    assert_eq!(
        status.body["estado"], "PENDIENTE",
        "no relay runs in this test"
    );
    assert_eq!(status.body["intentos"], 0);
    assert!(status.body["publicado_en"].is_null());
}

#[sqlx::test(migrations = false)]
async fn duplicates_get_the_first_answer_and_a_reused_client_id_is_a_conflict(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let (app, _writers) = demo(&pool);
    let first = post(&app, &click("AFILIADO_001", "evt-1"), &[]).await;
    assert_eq!(first.status, 201);
    let again = post(&app, &click("AFILIADO_001", "evt-1"), &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["estado"], "DUPLICADO");
    for field in [
        "id_evento",
        "hash_evento",
        "topic_destino",
        "timestamp_procesamiento",
    ] {
        assert_eq!(again.body[field], first.body[field], "{field}");
    }
    // The same partner id for another affiliate is another event.
    assert_eq!(
        post(&app, &click("AFILIADO_PREMIUM", "evt-1"), &[])
            .await
            .status,
        201
    );

    let changed = json!({"tipo_evento": "IMPRESSION", "id_afiliado": "AFILIADO_001", "id_evento_cliente": "evt-1"});
    let conflict = post(&app, &changed.to_string(), &[]).await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert!(
        conflict.body["detail"]
            .as_str()
            .unwrap()
            .contains(first.body["id_evento"].as_str().unwrap())
    );

    // Without a partner id the normalised content is the key: spelling does not matter.
    let a = json!({"tipo_evento": "page_view", "id_afiliado": "AFILIADO_001", "url": "https://x/1", "timestamp": "2026-11-28T06:22:56Z"});
    let b = json!({"url": " https://x/1 ", "id_afiliado": "AFILIADO_001", "tipo_evento": "PAGE_VIEW", "timestamp": "2026-11-28T01:22:56-05:00"});
    assert_eq!(post(&app, &a.to_string(), &[]).await.status, 201);
    let dup = post(&app, &b.to_string(), &[("user-agent", "another browser")]).await;
    assert_eq!(
        dup.status, 200,
        "server-side fields are not part of the hash"
    );
    let other = json!({"tipo_evento": "PAGE_VIEW", "id_afiliado": "AFILIADO_001", "url": "https://x/2", "timestamp": "2026-11-28T06:22:56Z"});
    assert_eq!(post(&app, &other.to_string(), &[]).await.status, 201);

    assert_eq!(stored(&pool).await, 4);
    assert_eq!(in_outbox(&pool).await, 4);
}

#[sqlx::test(migrations = false)]
async fn fifty_concurrent_duplicates_across_two_replicas_store_one_event(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    // A slow tier (one event drains in 6 s), so the allowance still shows what was charged.
    let (a, _wa) = replica(&pool, LazyBroker::default(), TEN_PER_MINUTE, &config(&[]));
    let (b, _wb) = replica(&pool, LazyBroker::default(), TEN_PER_MINUTE, &config(&[]));
    let body = click("LIMITADO", "same-event");
    let answers = futures::future::join_all((0..50).map(|i| {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        let body = body.clone();
        async move { post(&app, &body, &[]).await }
    }))
    .await;
    let created = answers.iter().filter(|r| r.status == 201).count();
    let duplicates = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        (created, duplicates),
        (1, 49),
        "statuses: {:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let ids: HashSet<&str> = answers
        .iter()
        .map(|r| r.body["id_evento"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the one stored event");
    assert_eq!(stored(&pool).await, 1);
    assert_eq!(in_outbox(&pool).await, 1);
    // Duplicates are free: only the stored event was charged to the allowance.
    let limit = call(&a, "GET", "/event-collector/rate-limit/LIMITADO", None, &[]).await;
    assert_eq!(limit.body["eventos_actuales"], 1, "{}", limit.body);
}

#[sqlx::test(migrations = false)]
async fn a_batch_answers_each_event_in_order_and_one_bad_event_rejects_no_other(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let (app, _writers) = demo(&pool);
    assert_eq!(
        post(&app, &click("AFILIADO_001", "ya-existe"), &[])
            .await
            .status,
        201
    );
    let big = "x".repeat(33 * 1024);
    let batch = json!({"eventos": [
        {"tipo_evento": "IMPRESSION", "id_afiliado": "AFILIADO_001", "id_evento_cliente": "b-1"},
        {"tipo_evento": "SWIPE", "id_afiliado": "AFILIADO_001"},
        {"tipo_evento": "CLICK", "id_afiliado": "AFILIADO_001", "id_evento_cliente": "b-1"},
        serde_json::from_str::<Value>(&click("AFILIADO_001", "ya-existe")).unwrap(),
        {"tipo_evento": "IMPRESSION", "id_afiliado": "AFILIADO_001", "id_evento_cliente": "b-1"},
        {"tipo_evento": "CONVERSION", "id_afiliado": "AFILIADO_API", "fuente_evento": "API_DIRECT", "api_key": "wrong"},
        {"tipo_evento": "CLICK", "id_afiliado": "AFILIADO_001", "datos_custom": {"relleno": big}},
        42,
        {"tipo_evento": "CONVERSION", "id_afiliado": "AFILIADO_API", "fuente_evento": "API_DIRECT", "api_key": "sk_test_123456789", "valor_conversion": 25.5, "moneda": "USD"},
    ]});
    let answer = post_batch(&app, &batch.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let estados: Vec<(&str, u64)> = answer.body["resultados"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["estado"].as_str().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        estados,
        vec![
            ("ACEPTADO", 201),
            ("RECHAZADO", 400),
            ("RECHAZADO", 409), // same partner id as event 0, other content
            ("DUPLICADO", 200),
            ("DUPLICADO", 200), // event 0 again, within the batch
            ("RECHAZADO", 401),
            ("RECHAZADO", 413),
            ("RECHAZADO", 400),
            ("ACEPTADO", 201),
        ]
    );
    let r = &answer.body["resultados"];
    assert_eq!(r[4]["id_evento"], r[0]["id_evento"]);
    assert_eq!(r[1]["errores"][0]["field"], "tipo_evento");
    assert_eq!(answer.body["total"], 9);
    assert_eq!(answer.body["aceptados"], 2);
    assert_eq!(answer.body["duplicados"], 2);
    assert_eq!(answer.body["rechazados"], 5);
    for (i, resultado) in r.as_array().unwrap().iter().enumerate() {
        assert_eq!(resultado["indice"], i);
    }
    assert_eq!(stored(&pool).await, 3);
    let valor: f64 = sqlx::query_scalar(
        "SELECT valor_conversion::float8 FROM eventos WHERE tipo_evento = 'CONVERSION'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(valor, 25.5);
}

#[sqlx::test(migrations = false)]
async fn batch_and_body_limits(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let (app, _writers) = demo(&pool);
    let event = json!({"tipo_evento": "CLICK", "id_afiliado": "AFILIADO_ENTERPRISE"});
    let too_many = json!({"eventos": vec![event.clone(); 501]});
    let answer = post_batch(&app, &too_many.to_string(), &[]).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    let empty = post_batch(&app, r#"{"eventos": []}"#, &[]).await;
    assert_eq!(empty.status, 400);
    assert_eq!(empty.body["errors"][0]["field"], "eventos");
    let over_a_mebibyte = json!({"eventos": [{"tipo_evento": "CLICK", "id_afiliado": "A", "datos_custom": {"x": "y".repeat(1024 * 1024)}}]});
    assert_eq!(
        post_batch(&app, &over_a_mebibyte.to_string(), &[])
            .await
            .status,
        413
    );
    let single_too_big = json!({"tipo_evento": "CLICK", "id_afiliado": "A", "datos_custom": {"x": "y".repeat(33 * 1024)}});
    let answer = post(&app, &single_too_big.to_string(), &[]).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.body["status"], 413);
    for malformed in [
        r#"{"tipo_evento": "CLICK","#,
        "[]",
        "",
        r#"{"eventos": {}}"#,
    ] {
        let answer = post_batch(&app, malformed, &[]).await;
        assert_eq!(answer.status, 400, "{malformed:?}: {}", answer.body);
    }
    assert_eq!(
        stored(&pool).await,
        0,
        "nothing of a refused request is stored"
    );
}

#[sqlx::test(migrations = false)]
async fn malformed_missing_and_mistyped_input_is_a_400_naming_the_field(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let (app, _writers) = demo(&pool);
    for (body, field) in [
        (r#"{"id_afiliado": "A"}"#, "tipo_evento"),
        (r#"{"tipo_evento": "CLICK"}"#, "id_afiliado"),
        (r#"{"tipo_evento": 7, "id_afiliado": "A"}"#, "tipo_evento"),
        (
            r#"{"tipo_evento": "CLICK", "id_afiliado": "A", "id_campana": "campana-1"}"#,
            "id_campana",
        ),
        (
            r#"{"tipo_evento": "CONVERSION", "id_afiliado": "A", "valor_conversion": 10}"#,
            "moneda",
        ),
        (
            r#"{"tipo_evento": "CONVERSION", "id_afiliado": "A", "valor_conversion": 10.555, "moneda": "USD"}"#,
            "valor_conversion",
        ),
        (
            r#"{"tipo_evento": "CONVERSION", "id_afiliado": "A", "valor_conversion": 1e400, "moneda": "USD"}"#,
            "body",
        ),
        (
            r#"{"tipo_evento": "CONVERSION", "id_afiliado": "A", "valor_conversion": 5, "moneda": "usd"}"#,
            "moneda",
        ),
        (
            r#"{"tipo_evento": "CLICK", "id_afiliado": "A", "timestamp": "ayer"}"#,
            "timestamp",
        ),
        (
            r#"{"tipo_evento": "CLICK", "id_afiliado": "A", "fuente_evento": "FAX"}"#,
            "fuente_evento",
        ),
        (
            r#"{"tipo_evento": "CLICK", "id_afiliado": "A\u0000B"}"#,
            "id_afiliado",
        ),
    ] {
        let answer = post(&app, body, &[]).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        let fields: Vec<&str> = answer.body["errors"]
            .as_array()
            .map(|e| e.iter().map(|e| e["field"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert!(
            fields.contains(&field) || (field == "body" && answer.body["detail"].is_string()),
            "{body}: expected {field} in {}",
            answer.body
        );
    }
    assert_eq!(post(&app, "{not json", &[]).await.status, 400);
    let wrong_type = call(&app, "POST", "/event-collector/events", None, &[]).await;
    assert_eq!(wrong_type.status, 415);
    let deep = format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200));
    assert_eq!(
        post(&app, &deep, &[]).await.status,
        400,
        "deep nesting is refused, not a crash"
    );
    assert_eq!(stored(&pool).await, 0);
}

fn webhook(cliente: &str) -> String {
    json!({"tipo_evento": "CONVERSION", "id_afiliado": "AFILIADO_WEBHOOK", "fuente_evento": "WEBHOOK",
           "id_evento_cliente": cliente, "valor_conversion": 100, "moneda": "EUR"})
    .to_string()
}

#[sqlx::test(migrations = false)]
async fn webhook_signatures_both_forms_rotation_and_every_refusal(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let (app, _writers) = demo(&pool);
    let sig = "x-webhook-signature";

    let body = webhook("w-1");
    let simple = firmar_simple(b"whsec_demo_2026", body.as_bytes());
    assert_eq!(post(&app, &body, &[(sig, &simple)]).await.status, 201);
    // The secret being rotated out still verifies.
    let body = webhook("w-2");
    let old = firmar_simple(b"whsec_demo_2025", body.as_bytes());
    assert_eq!(post(&app, &body, &[(sig, &old)]).await.status, 201);
    let body = webhook("w-3");
    let stamped = firmar_con_tiempo(b"whsec_demo_2026", now(), body.as_bytes());
    assert_eq!(post(&app, &body, &[(sig, &stamped)]).await.status, 201);

    // Replayed: the same timestamped signature again is refused, even for a body that is a
    // duplicate (a sender retrying signs again, with a new t).
    let replay = post(&app, &body, &[(sig, &stamped)]).await;
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert!(
        replay.body["detail"]
            .as_str()
            .unwrap()
            .contains("repetición")
    );
    let resigned = firmar_con_tiempo(b"whsec_demo_2026", now() + 1, body.as_bytes());
    assert_eq!(
        post(&app, &body, &[(sig, &resigned)]).await.status,
        200,
        "re-signed retry: a duplicate"
    );
    let before = stored(&pool).await;

    let body = webhook("w-4");
    let refusals = [
        (None, 401),
        (Some(firmar_simple(b"not-the-secret", body.as_bytes())), 401),
        (
            Some(firmar_simple(b"whsec_demo_2026", b"another body")),
            401,
        ),
        (
            Some(firmar_con_tiempo(
                b"whsec_demo_2026",
                now() - 301,
                body.as_bytes(),
            )),
            401,
        ),
        (
            Some(firmar_con_tiempo(
                b"whsec_demo_2026",
                now() + 400,
                body.as_bytes(),
            )),
            401,
        ),
        (Some("sha256=nothex".to_owned()), 400),
        (Some("sha1=abc".to_owned()), 400),
        (Some(format!("t=abc,v1={}", "0".repeat(64))), 400),
    ];
    for (header, status) in refusals {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| (sig, h.as_str())).collect();
        let answer = post(&app, &body, &headers).await;
        assert_eq!(answer.status, status, "{header:?}: {}", answer.body);
        assert_eq!(answer.headers["content-type"], "application/problem+json");
    }
    // A webhook-only affiliate may not send unsigned events under another source.
    let tag = json!({"tipo_evento": "CLICK", "id_afiliado": "AFILIADO_WEBHOOK", "fuente_evento": "WEB_TAG"});
    assert_eq!(post(&app, &tag.to_string(), &[]).await.status, 403);
    assert_eq!(
        stored(&pool).await,
        before,
        "nothing stored by a refused request"
    );

    // A signed batch: the header covers the whole body.
    let batch = json!({"eventos": [serde_json::from_str::<Value>(&webhook("w-5")).unwrap(),
                                    serde_json::from_str::<Value>(&webhook("w-6")).unwrap()]})
    .to_string();
    let stamped = firmar_con_tiempo(b"whsec_demo_2025", now(), batch.as_bytes());
    let answer = post_batch(&app, &batch, &[(sig, &stamped)]).await;
    assert_eq!(answer.body["aceptados"], 2, "{}", answer.body);
    assert_eq!(
        post_batch(&app, &batch, &[(sig, &stamped)]).await.status,
        401,
        "batch replay"
    );
    // Unsigned, no event gets in: the batch as a whole is the 401 each event would be.
    let unsigned = post_batch(&app, &batch, &[]).await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    assert_eq!(
        unsigned.headers["www-authenticate"],
        "Bearer realm=\"aeropartners\""
    );
}

#[sqlx::test(migrations = false)]
async fn api_direct_needs_the_affiliates_key_in_the_body_or_the_header(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let (app, _writers) = demo(&pool);
    let event = |key: Option<&str>, cliente: &str| {
        let mut e = json!({"tipo_evento": "CLICK", "id_afiliado": "AFILIADO_API", "fuente_evento": "API_DIRECT", "id_evento_cliente": cliente});
        if let Some(key) = key {
            e["api_key"] = json!(key);
        }
        e.to_string()
    };
    assert_eq!(
        post(&app, &event(Some("sk_test_123456789"), "k-1"), &[])
            .await
            .status,
        201
    );
    assert_eq!(
        post(
            &app,
            &event(None, "k-2"),
            &[("x-api-key", "sk_test_123456789")]
        )
        .await
        .status,
        201
    );
    for (key, header) in [
        (Some("sk_test_000000000"), None),
        (None, None),
        (Some(""), None),
        (None, Some("sk_test_12345678")),
    ] {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("x-api-key", *h)).collect();
        let answer = post(&app, &event(key, "k-3"), &headers).await;
        assert_eq!(answer.status, 401, "{key:?} {header:?}: {}", answer.body);
    }
    assert_eq!(stored(&pool).await, 2);
    let leaked = count(
        &pool,
        "SELECT count(*) FROM eventos WHERE datos::text LIKE '%sk_test%'",
    )
    .await;
    assert_eq!(leaked, 0, "api keys are never stored");
}

const TEN_PER_MINUTE: &str = r#"
niveles:
  basic: { eventos_por_minuto: 10 }
afiliados:
  LIMITADO: { nivel: basic }
"#;

#[sqlx::test(migrations = false)]
async fn the_rate_limit_is_shared_by_replicas_and_a_limited_event_is_not_stored(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let (a, _wa) = replica(&pool, LazyBroker::default(), TEN_PER_MINUTE, &config(&[]));
    let (b, _wb) = replica(&pool, LazyBroker::default(), TEN_PER_MINUTE, &config(&[]));
    let mut statuses = Vec::new();
    let mut limited = None;
    for i in 0..12 {
        let app = if i % 2 == 0 { &a } else { &b };
        let answer = post(app, &click("LIMITADO", &format!("r-{i}")), &[]).await;
        statuses.push(answer.status);
        if answer.status == 429 {
            limited = Some(answer);
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    let limited = limited.unwrap();
    assert_eq!(limited.headers["content-type"], "application/problem+json");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=6).contains(&retry),
        "one event drains every 6 s: {retry}"
    );
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
    assert_eq!(limited.headers["x-ratelimit-limit"], "10");
    assert!(
        limited.headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"afiliado\";r=0;t=")
    );
    assert_eq!(stored(&pool).await, 10, "a limited event is not stored");

    let view = call(&b, "GET", "/event-collector/rate-limit/LIMITADO", None, &[]).await;
    assert_eq!(view.status, 200);
    assert_eq!(view.body["eventos_actuales"], 10);
    assert_eq!(view.body["limite_maximo"], 10);
    assert_eq!(view.body["restantes"], 0);
    assert_eq!(view.body["ventana_minutos"], 1);
    let hour = call(
        &b,
        "GET",
        "/event-collector/rate-limit/LIMITADO?ventana_minutos=60",
        None,
        &[],
    )
    .await;
    assert_eq!(hour.body["limite_maximo"], 600);
    assert_eq!(hour.body["restantes"], 590);
    assert_eq!(
        call(
            &b,
            "GET",
            "/event-collector/rate-limit/LIMITADO?ventana_minutos=0",
            None,
            &[]
        )
        .await
        .status,
        400
    );

    // A batch is costed in events: 3 more do not fit, and all-limited is a 429 for the request.
    let batch = json!({"eventos": (0..3).map(|i| serde_json::from_str::<Value>(&click("LIMITADO", &format!("lote-{i}"))).unwrap()).collect::<Vec<_>>()});
    let answer = post_batch(&a, &batch.to_string(), &[]).await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(stored(&pool).await, 10);
}

#[sqlx::test(migrations = false)]
async fn a_discarded_event_is_recorded_but_never_published(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let yaml = r#"
niveles: { basic: { eventos_por_minuto: 100 } }
afiliados:
  SOLO_CLICKS: { tipos_evento: [CLICK] }
"#;
    let (app, _writers) = replica(&pool, LazyBroker::default(), yaml, &config(&[]));
    let event = json!({"tipo_evento": "IMPRESSION", "id_afiliado": "SOLO_CLICKS", "id_evento_cliente": "d-1"}).to_string();
    let answer = post(&app, &event, &[]).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body["exito"], false);
    assert_eq!(answer.body["estado"], "DESCARTADO");
    assert!(
        answer.body["mensaje"]
            .as_str()
            .unwrap()
            .contains("IMPRESSION")
    );
    let id = answer.body["id_evento"].as_str().unwrap().to_owned();
    assert_eq!(in_outbox(&pool).await, 0);
    let again = post(&app, &event, &[]).await;
    assert_eq!(
        (
            again.status,
            again.body["estado"].as_str(),
            again.body["exito"].as_bool()
        ),
        (200, Some("DUPLICADO"), Some(false))
    );
    let status = call(
        &app,
        "GET",
        &format!("/event-collector/events/{id}/status"),
        None,
        &[],
    )
    .await;
    assert_eq!(status.body["estado"], "DESCARTADO");
    assert!(
        status.body["razon_fallo"]
            .as_str()
            .unwrap()
            .contains("IMPRESSION")
    );
    let retry = call(
        &app,
        "POST",
        &format!("/event-collector/events/{id}/retry"),
        None,
        &[],
    )
    .await;
    assert_eq!(retry.status, 409);
    let old = json!({"tipo_evento": "CLICK", "id_afiliado": "SOLO_CLICKS", "timestamp": "2020-01-01T00:00:00Z"}).to_string();
    assert_eq!(post(&app, &old, &[]).await.body["estado"], "DESCARTADO");
}

#[sqlx::test(migrations = false)]
async fn statistics_failed_events_and_lookups(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let (app, _writers) = demo(&pool);
    for (tipo, afiliado) in [
        ("CLICK", "AFILIADO_001"),
        ("CLICK", "AFILIADO_001"),
        ("IMPRESSION", "AFILIADO_PREMIUM"),
    ] {
        let e = json!({"tipo_evento": tipo, "id_afiliado": afiliado, "id_evento_cliente": uuid::Uuid::new_v4()}).to_string();
        assert_eq!(post(&app, &e, &[]).await.status, 201);
    }
    let conversion = json!({"tipo_evento": "CONVERSION", "id_afiliado": "AFILIADO_001", "valor_conversion": 10.25, "moneda": "USD"}).to_string();
    assert_eq!(post(&app, &conversion, &[]).await.status, 201);
    // One publication failure, as the relay records it.
    sqlx::query("UPDATE outbox SET attempts = 2, last_error = 'broker unreachable' WHERE id = (SELECT min(id) FROM outbox)")
        .execute(&pool)
        .await
        .unwrap();

    let stats = call(&app, "GET", "/event-collector/statistics", None, &[]).await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.body["total_eventos"], 4);
    assert_eq!(stats.body["por_tipo"]["CLICK"], 2);
    assert_eq!(stats.body["por_estado"]["PENDIENTE"], 3);
    assert_eq!(stats.body["por_estado"]["FALLIDO"], 1);
    assert_eq!(stats.body["por_afiliado"]["AFILIADO_001"], 3);
    assert_eq!(stats.body["valor_conversiones"]["USD"], 10.25);
    let filtered = call(
        &app,
        "GET",
        "/event-collector/statistics?id_afiliado=AFILIADO_001&tipo_evento=click",
        None,
        &[],
    )
    .await;
    assert_eq!(filtered.body["total_eventos"], 2);
    let future = call(
        &app,
        "GET",
        "/event-collector/statistics?desde=2099-01-01T00:00:00Z",
        None,
        &[],
    )
    .await;
    assert_eq!(future.body["total_eventos"], 0);
    for bad in ["tipo_evento=SWIPE", "desde=ayer", "hasta=2026-13-01"] {
        assert_eq!(
            call(
                &app,
                "GET",
                &format!("/event-collector/statistics?{bad}"),
                None,
                &[]
            )
            .await
            .status,
            400,
            "{bad}"
        );
    }

    let failed = call(&app, "GET", "/event-collector/failed-events", None, &[]).await;
    assert_eq!(failed.status, 200);
    assert_eq!(failed.body["total"], 1);
    let evento = &failed.body["eventos_fallidos"][0];
    assert_eq!(evento["estado"], "FALLIDO");
    assert_eq!(evento["intentos"], 2);
    assert_eq!(evento["razon_fallo"], "broker unreachable");
    let none = call(
        &app,
        "GET",
        "/event-collector/failed-events?id_afiliado=AFILIADO_PREMIUM&limite=5",
        None,
        &[],
    )
    .await;
    assert_eq!(none.body["total"], 0);
    assert_eq!(
        call(
            &app,
            "GET",
            "/event-collector/failed-events?limite=0",
            None,
            &[]
        )
        .await
        .status,
        400
    );

    for (uri, status) in [
        ("/event-collector/events/not-a-uuid/status", 400),
        (
            &format!("/event-collector/events/{}/status", uuid::Uuid::new_v4()) as &str,
            404,
        ),
    ] {
        assert_eq!(
            call(&app, "GET", uri, None, &[]).await.status,
            status,
            "{uri}"
        );
    }
    assert_eq!(
        call(
            &app,
            "POST",
            &format!("/event-collector/events/{}/retry", uuid::Uuid::new_v4()),
            None,
            &[]
        )
        .await
        .status,
        404
    );
    let ready = call(&app, "GET", "/event-collector/ready", None, &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let checks: Vec<&str> = ready.body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        checks.contains(&"publication") && checks.contains(&"writers"),
        "{checks:?}"
    );
    assert_eq!(
        call(&app, "GET", "/event-collector/health", None, &[])
            .await
            .status,
        200
    );
}

#[sqlx::test(migrations = false)]
async fn a_retry_makes_a_failed_event_due_at_once(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let (app, _writers) = demo(&pool);
    let answer = post(&app, &click("AFILIADO_001", "retry-1"), &[]).await;
    let id = answer.body["id_evento"].as_str().unwrap().to_owned();
    // As the relay leaves a failing event: attempts made, next one an hour away.
    sqlx::query(
        "UPDATE outbox SET attempts = 7, last_error = 'broker unreachable', \
         next_attempt_at = now() + interval '1 hour' WHERE event_id = $1::uuid",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    // No relay runs here, so the event is still unpublished when the wait ends: 503, and due now.
    let retry = call(
        &app,
        "POST",
        &format!("/event-collector/events/{id}/retry"),
        None,
        &[],
    )
    .await;
    assert_eq!(retry.status, 503, "{}", retry.body);
    assert!(
        retry.body["detail"]
            .as_str()
            .unwrap()
            .contains("broker unreachable")
    );
    let due: bool =
        sqlx::query_scalar("SELECT next_attempt_at <= now() FROM outbox WHERE event_id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(due, "the retry made the event due at once");
    let metrics = call(&app, "GET", "/metrics", None, &[]).await;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("collector_events_total{resultado=\"aceptado\"}"),
        "{text}"
    );
}
