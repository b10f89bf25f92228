//! The `/pagos` HTTP contract against a real PostgreSQL: validation, not-found, duplicates,
//! `Idempotency-Key`, concurrency, reversal and the outbox statistics.

use crate::common::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const NOTHING_STORED: &str = "SELECT (SELECT count(*) FROM pagos) + (SELECT count(*) FROM outbox)";

#[sqlx::test(migrations = false)]
async fn accepts_a_payment_as_pending_with_its_event_in_the_outbox(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    let answer = call(
        &app,
        "POST",
        "/pagos/",
        Some(&pago_json("ref-1", "150.25")),
        &[("x-request-id", "req-abc")],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["estado"], "PENDIENTE");
    assert_eq!(answer.body["monto"], 150.25);
    assert_eq!(answer.body["moneda"], "USD");
    assert_eq!(answer.body["referencia_pago"], "ref-1");
    assert!(answer.body["mensaje"].is_string());
    assert_eq!(answer.headers["x-request-id"], "req-abc");
    assert!(answer.headers.get("idempotent-replayed").is_none());
    let id = answer.body["id_pago"].as_str().unwrap().to_owned();

    let detalle = call(&app, "GET", &format!("/pagos/{id}"), None, &[]).await;
    assert_eq!(detalle.status, 200);
    assert_eq!(detalle.body["id"], detalle.body["id_pago"]);
    assert_eq!(detalle.body["estado"], "PENDIENTE");
    assert!(detalle.body["fecha_procesamiento"].is_null());
    assert!(detalle.body["mensaje_error"].is_null());
    assert!(detalle.body["referencia_transaccion"].is_null());

    // Without trailing slash too, and the stored amount is exact.
    let sin_barra = call(&app, "GET", &format!("/pagos/{id}/"), None, &[]).await;
    assert_eq!(sin_barra.status, 200);
    let monto: String = sqlx::query_scalar("SELECT monto::text FROM pagos")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(monto, "150.25");

    let (event_type, version, correlation): (String, i64, String) = sqlx::query_as(
        "SELECT event_type, aggregate_version, envelope->>'correlation_id' FROM outbox",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (event_type.as_str(), version, correlation.as_str()),
        ("PagoPendiente", 1, "req-abc")
    );

    let traza = call(&app, "GET", &format!("/pagos/{id}/eventos"), None, &[]).await;
    assert_eq!(traza.status, 200);
    assert_eq!(traza.body[0]["evento"], "PAGO_RECIBIDO");
    assert_eq!(traza.body[0]["request_id"], "req-abc");
}

#[sqlx::test(migrations = false)]
async fn bad_input_is_a_400_problem_and_stores_nothing(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "missing field",
            r#"{"id_afiliado":"a","moneda":"USD","referencia_pago":"r"}"#,
            Some("monto"),
        ),
        (
            "wrong type",
            r#"{"id_afiliado":"a","monto":"10","moneda":"USD","referencia_pago":"r"}"#,
            Some("monto"),
        ),
        (
            "wrong type for text",
            r#"{"id_afiliado":7,"monto":10,"moneda":"USD","referencia_pago":"r"}"#,
            Some("id_afiliado"),
        ),
        (
            "null amount",
            r#"{"id_afiliado":"a","monto":null,"moneda":"USD","referencia_pago":"r"}"#,
            Some("monto"),
        ),
        ("malformed JSON", r#"{"id_afiliado":"a","monto":10,"#, None),
        (
            // PostgreSQL cannot store NUL: this was a 500 until fuzzing found it.
            "NUL in a text",
            r#"{"id_afiliado":"a","monto":10,"moneda":"USD","referencia_pago":"r\u0000x"}"#,
            Some("referencia_pago"),
        ),
        ("not an object", r#"["a",10,"USD","r"]"#, None),
        (
            "zero amount",
            r#"{"id_afiliado":"a","monto":0,"moneda":"USD","referencia_pago":"r"}"#,
            Some("monto"),
        ),
        (
            "negative amount",
            r#"{"id_afiliado":"a","monto":-5,"moneda":"USD","referencia_pago":"r"}"#,
            Some("monto"),
        ),
        (
            "three decimals",
            r#"{"id_afiliado":"a","monto":10.555,"moneda":"USD","referencia_pago":"r"}"#,
            Some("monto"),
        ),
        (
            "huge amount",
            r#"{"id_afiliado":"a","monto":1e15,"moneda":"USD","referencia_pago":"r"}"#,
            Some("monto"),
        ),
        (
            "unknown currency",
            r#"{"id_afiliado":"a","monto":10,"moneda":"GBP","referencia_pago":"r"}"#,
            Some("moneda"),
        ),
        (
            "lower-case currency",
            r#"{"id_afiliado":"a","monto":10,"moneda":"usd","referencia_pago":"r"}"#,
            Some("moneda"),
        ),
        (
            "empty affiliate",
            r#"{"id_afiliado":"","monto":10,"moneda":"USD","referencia_pago":"r"}"#,
            Some("id_afiliado"),
        ),
        (
            "blank reference",
            r#"{"id_afiliado":"a","monto":10,"moneda":"USD","referencia_pago":"   "}"#,
            Some("referencia_pago"),
        ),
    ];
    for (name, body, field) in cases {
        let answer = call(&app, "POST", "/pagos", Some(body), &[]).await;
        assert_eq!(answer.status, 400, "{name}: {:?}", answer.body);
        assert_eq!(
            answer.headers["content-type"], "application/problem+json",
            "{name}"
        );
        assert_eq!(answer.body["status"], 400, "{name}");
        assert!(
            answer.body["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        if let Some(field) = field {
            let fields: Vec<&str> = answer.body["errors"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: {:?}", answer.body))
                .iter()
                .map(|e| e["field"].as_str().unwrap())
                .collect();
            assert!(fields.contains(field), "{name}: {fields:?}");
        }
    }
    let long = "x".repeat(256);
    let too_long =
        format!(r#"{{"id_afiliado":"{long}","monto":10,"moneda":"USD","referencia_pago":"r"}}"#);
    assert_eq!(
        call(&app, "POST", "/pagos", Some(&too_long), &[])
            .await
            .status,
        400
    );

    // Oversized: a body past the 64 KiB limit is refused before it is parsed (413, the
    // status HTTP defines for it), still as a problem.
    let padding = "x".repeat(70 * 1024);
    let oversized =
        format!(r#"{{"id_afiliado":"{padding}","monto":10,"moneda":"USD","referencia_pago":"r"}}"#);
    let answer = call(&app, "POST", "/pagos", Some(&oversized), &[]).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.headers["content-type"], "application/problem+json");

    // Not JSON at all.
    let answer = call(&app, "POST", "/pagos", None, &[]).await;
    assert_eq!(answer.status, 415);
    assert_eq!(answer.headers["content-type"], "application/problem+json");

    assert_eq!(count(&pool, NOTHING_STORED).await, 0);
}

#[sqlx::test(migrations = false)]
async fn ids_are_validated_and_unknown_ids_are_404(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    for path in ["/pagos/not-a-uuid", "/pagos/123/eventos"] {
        let answer = call(&app, "GET", path, None, &[]).await;
        assert_eq!(answer.status, 400, "{path}");
        assert_eq!(answer.body["errors"][0]["field"], "id_pago");
    }
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/pagos/{unknown}"),
        format!("/pagos/{unknown}/eventos"),
    ] {
        let answer = call(&app, "GET", &path, None, &[]).await;
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.body["detail"], "Pago no encontrado");
        assert_eq!(answer.headers["content-type"], "application/problem+json");
    }
    let revert = call(
        &app,
        "PATCH",
        &format!("/pagos/{unknown}/revertir"),
        Some(r#"{"motivo":"x"}"#),
        &[],
    )
    .await;
    assert_eq!(revert.status, 404);
    let route = call(&app, "GET", "/nothing-here", None, &[]).await;
    assert_eq!(route.status, 404);
    assert_eq!(route.headers["content-type"], "application/problem+json");
    // A NUL in a filter or an id is refused before any query runs (it was a 500).
    for path in [
        "/pagos?id_afiliado=a%00b",
        "/pagos/a%00b",
        "/pagos/estadisticas?x=%00",
    ] {
        let answer = call(&app, "GET", path, None, &[]).await;
        assert_eq!(answer.status, 400, "{path}");
        assert_eq!(answer.headers["content-type"], "application/problem+json");
    }
}

#[sqlx::test(migrations = false)]
async fn same_reference_same_body_replays_and_different_body_conflicts(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    let first = call(
        &app,
        "POST",
        "/pagos/",
        Some(&pago_json("ref-dup", "99.90")),
        &[],
    )
    .await;
    // Same request, fields in another order and the amount written differently.
    let again = call(&app, "POST", "/pagos",
        Some(r#"{"referencia_pago":"ref-dup","moneda":"USD","monto":99.9,"id_afiliado":"afiliado-1"}"#), &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id_pago"], first.body["id_pago"]);

    let other = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json("ref-dup", "100")),
        &[],
    )
    .await;
    assert_eq!(other.status, 409);
    assert!(other.body["detail"].as_str().unwrap().contains("ref-dup"));

    assert_eq!(count(&pool, "SELECT count(*) FROM pagos").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE event_type = 'PagoPendiente'"
        )
        .await,
        1
    );
    let id = first.body["id_pago"].as_str().unwrap();
    let traza = call(&app, "GET", &format!("/pagos/{id}/eventos"), None, &[]).await;
    let eventos: Vec<&str> = traza
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["evento"].as_str().unwrap())
        .collect();
    assert_eq!(
        eventos,
        vec!["PAGO_RECIBIDO", "DUPLICADO_REPETIDO", "DUPLICADO_RECHAZADO"]
    );
}

#[sqlx::test(migrations = false)]
async fn idempotency_key_replays_refuses_other_bodies_and_reports_in_flight(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    let key = [("idempotency-key", "key-1")];
    let first = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json("ref-k1", "10")),
        &key,
    )
    .await;
    assert_eq!(first.status, 200);
    let replay = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json("ref-k1", "10")),
        &key,
    )
    .await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(
        replay.body, first.body,
        "a replay is the first response, byte for byte"
    );

    let other_body = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json("ref-k2", "10")),
        &key,
    )
    .await;
    assert_eq!(other_body.status, 422);
    assert_eq!(count(&pool, "SELECT count(*) FROM pagos").await, 1);

    // A first request still in flight: its claim exists, its response does not yet.
    sqlx::query("INSERT INTO idempotency_keys (scope, key, request_hash, locked_until, expires_at) \
                 VALUES ('pagos/afiliado-1', 'key-busy', 'h', now() + interval '1 minute', now() + interval '1 day')")
        .execute(&pool).await.unwrap();
    let busy = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json("ref-k3", "10")),
        &[("idempotency-key", "key-busy")],
    )
    .await;
    // Different fingerprint than 'h' → 422; with the same body we must get 409: compute it.
    assert_eq!(busy.status, 422);
    let canonical = serde_json::from_str::<serde_json::Value>(&pago_json("ref-k4", "10"))
        .unwrap()
        .to_string();
    let hash = platform::idempotency::IdempotencyStore::fingerprint(
        "POST",
        "/pagos",
        canonical.as_bytes(),
    );
    sqlx::query("UPDATE idempotency_keys SET request_hash = $1 WHERE key = 'key-busy'")
        .bind(&hash)
        .execute(&pool)
        .await
        .unwrap();
    let busy = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json("ref-k4", "10")),
        &[("idempotency-key", "key-busy")],
    )
    .await;
    assert_eq!(busy.status, 409, "{:?}", busy.body);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pagos WHERE referencia_pago = 'ref-k4'"
        )
        .await,
        0
    );

    // An abandoned claim (its request crashed) can be taken over by the same request.
    sqlx::query("UPDATE idempotency_keys SET locked_until = now() - interval '1 second' WHERE key = 'key-busy'")
        .execute(&pool).await.unwrap();
    let retried = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json("ref-k4", "10")),
        &[("idempotency-key", "key-busy")],
    )
    .await;
    assert_eq!(retried.status, 200);

    let empty_key = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json("ref-k5", "10")),
        &[("idempotency-key", " ")],
    )
    .await;
    assert_eq!(empty_key.status, 400);
}

#[sqlx::test(migrations = false)]
async fn fifty_concurrent_identical_posts_on_two_replicas_make_one_payment(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c.clone()).await;
    // A second "replica": its own pool and app on the same database.
    let other = PgPoolOptions::new()
        .max_connections(20)
        .connect_with(platform::db::with_schema(c, payments::SCHEMA))
        .await
        .unwrap();
    let replicas = [app_without_broker(&pool), app_without_broker(&other)];
    let body = pago_json("ref-race", "42.42");
    let requests = (0..50).map(|i| {
        let app = replicas[i % 2].clone();
        let body = body.clone();
        tokio::spawn(async move {
            let key = [("idempotency-key", "race-key")];
            let headers: &[(&str, &str)] = if i % 3 == 0 { &key } else { &[] };
            call(&app, "POST", "/pagos", Some(&body), headers).await
        })
    });
    let answers = futures::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for answer in answers {
        let answer = answer.unwrap();
        // 409 only for an Idempotency-Key request that raced the key's first holder.
        assert!(
            answer.status == 200 || answer.status == 409,
            "{} {:?}",
            answer.status,
            answer.body
        );
        if answer.status == 200 {
            ids.insert(answer.body["id_pago"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 1, "every success names the same payment");
    assert_eq!(count(&pool, "SELECT count(*) FROM pagos").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
}

#[sqlx::test(migrations = false)]
async fn only_successful_payments_revert_and_reverting_is_idempotent(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    let created = call(
        &app,
        "POST",
        "/pagos",
        Some(&pago_json("ref-rev", "10")),
        &[],
    )
    .await;
    let id = created.body["id_pago"].as_str().unwrap().to_owned();
    let path = format!("/pagos/{id}/revertir");

    let pending = call(&app, "PATCH", &path, Some(r#"{"motivo":"cliente"}"#), &[]).await;
    assert_eq!(pending.status, 409);
    assert!(pending.body["detail"].as_str().unwrap().contains("EXITOSO"));
    let no_reason = call(&app, "PATCH", &path, Some(r#"{"motivo":""}"#), &[]).await;
    assert_eq!(no_reason.status, 400);
    let missing = call(&app, "PATCH", &path, Some(r#"{}"#), &[]).await;
    assert_eq!(missing.status, 400);

    sqlx::query("UPDATE pagos SET estado = 'EXITOSO', eventos_emitidos = 2, referencia_transaccion = 'txn_1'")
        .execute(&pool).await.unwrap();
    let reverted = call(&app, "PATCH", &path, Some(r#"{"motivo":"cliente"}"#), &[]).await;
    assert_eq!(reverted.status, 200, "{:?}", reverted.body);
    assert_eq!(reverted.body["estado"], "REVERSADO");
    let again = call(&app, "PATCH", &path, Some(r#"{"motivo":"cliente"}"#), &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, reverted.body);
    let (count_events, version): (i64, i64) = sqlx::query_as(
        "SELECT count(*), max(aggregate_version) FROM outbox WHERE event_type = 'PagoRevertido'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((count_events, version), (1, 3));
}

#[sqlx::test(migrations = false)]
async fn outbox_statistics_partition_the_rows(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    for i in 0..5 {
        call(
            &app,
            "POST",
            "/pagos",
            Some(&pago_json(&format!("ref-s{i}"), "10")),
            &[],
        )
        .await;
    }
    sqlx::query("UPDATE outbox SET published_at = created_at + interval '5 milliseconds' WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 2)")
        .execute(&pool).await.unwrap();
    sqlx::query("UPDATE outbox SET attempts = 1, last_error = 'broker down' WHERE id = (SELECT max(id) FROM outbox)")
        .execute(&pool).await.unwrap();
    let stats = call(&app, "GET", "/pagos/outbox/estadisticas", None, &[]).await;
    assert_eq!(stats.status, 200);
    let b = &stats.body;
    assert_eq!(b["total_eventos"], 5);
    assert_eq!(b["eventos_procesados"], 2);
    assert_eq!(b["eventos_pendientes"], 2);
    assert_eq!(b["eventos_fallidos"], 1);
    let lag = b["lag_ms_p99"].as_f64().unwrap();
    assert!((lag - 5.0).abs() < 0.01, "{lag}");
    // Three wait: the oldest of them, created a minute ago (say, a broker outage), has its age.
    sqlx::query("UPDATE outbox SET created_at = clock_timestamp() - interval '1 minute' WHERE id = (SELECT min(id) FROM outbox WHERE published_at IS NULL)")
        .execute(&pool).await.unwrap();
    let age = call(&app, "GET", "/pagos/outbox/estadisticas", None, &[])
        .await
        .body["pendiente_mas_antiguo_ms"]
        .as_f64()
        .unwrap();
    assert!((60_000.0..70_000.0).contains(&age), "{age}");
    // Once every event is published, nothing waits.
    sqlx::query("UPDATE outbox SET published_at = clock_timestamp()")
        .execute(&pool)
        .await
        .unwrap();
    let stats = call(&app, "GET", "/pagos/outbox/estadisticas", None, &[]).await;
    assert_eq!(stats.body["pendiente_mas_antiguo_ms"], 0.0);
}

#[sqlx::test(migrations = false)]
async fn operational_endpoints_answer(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    assert_eq!(call(&app, "GET", "/health", None, &[]).await.status, 200);
    let ready = call(&app, "GET", "/ready", None, &[]).await;
    // The API does not need the broker to accept payments: degraded, still ready.
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.body["status"], "degraded");
    let openapi = call(&app, "GET", "/openapi.json", None, &[]).await;
    assert_eq!(openapi.status, 200);
    assert!(
        openapi.body["paths"]["/pagos"]["post"].is_object(),
        "{}",
        openapi.body["paths"]
    );
    assert!(openapi.body["paths"]["/pagos/{id_pago}/revertir"]["patch"].is_object());
    call(&app, "POST", "/pagos", Some(&pago_json("ref-m", "1")), &[]).await;
    let metrics = call(&app, "GET", "/metrics", None, &[]).await;
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains(r#"route="/pagos""#), "{text}");
    assert!(text.contains("aeropartners_http_request_duration_seconds_bucket"));
    let docs = call(&app, "GET", "/docs/", None, &[]).await;
    assert_eq!(docs.status, 200);
}

#[sqlx::test(migrations = false)]
async fn the_latest_payments_list_newest_first_filters_and_pages_without_gaps(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    // Five payments created concurrently: group commit gives some of them one fecha_creacion,
    // so the pages must break ties (by id) to neither skip nor repeat one.
    let creados = futures::future::join_all((0..5).map(|n| {
        let app = app.clone();
        async move {
            call(
                &app,
                "POST",
                "/pagos/",
                Some(&pago_json(&format!("lista-{n}"), "10")),
                &[],
            )
            .await
        }
    }))
    .await;
    assert!(creados.iter().all(|a| a.status == 200));
    sqlx::query("UPDATE pagos SET estado = 'FALLIDO' WHERE referencia_pago = 'lista-3'")
        .execute(&pool)
        .await
        .unwrap();

    let mut vistos = Vec::new();
    let mut url = "/pagos?limite=2".to_owned();
    let mut paginas = 0;
    loop {
        let pagina = call(&app, "GET", &url, None, &[]).await;
        assert_eq!(pagina.status, 200, "{:?}", pagina.body);
        paginas += 1;
        let pagos = pagina.body["pagos"].as_array().unwrap();
        assert!(pagos.len() <= 2);
        for pago in pagos {
            vistos.push((
                chrono::DateTime::parse_from_rfc3339(pago["fecha_creacion"].as_str().unwrap())
                    .unwrap(),
                pago["id_pago"].as_str().unwrap().to_owned(),
            ));
        }
        match pagina.body["siguiente"].as_str() {
            Some(cursor) => url = format!("/pagos/?limite=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(paginas, 3, "2 + 2 + 1");
    assert_eq!(vistos.len(), 5, "every payment once: {vistos:?}");
    let mut ordenados = vistos.clone();
    ordenados.sort_by(|a, b| b.cmp(a));
    assert_eq!(vistos, ordenados, "newest first, ties by id");

    let fallidos = call(&app, "GET", "/pagos?estado=FALLIDO", None, &[]).await;
    assert_eq!(fallidos.status, 200);
    let fallidos = fallidos.body["pagos"].as_array().unwrap();
    assert_eq!(fallidos.len(), 1);
    assert_eq!(fallidos[0]["referencia_pago"], "lista-3");
    assert!(
        call(&app, "GET", "/pagos?limite=100", None, &[]).await.body["siguiente"].is_null(),
        "a short page is the last"
    );

    for (url, campo) in [
        ("/pagos?limite=0", "limite"),
        ("/pagos?limite=101", "limite"),
        ("/pagos?limite=dos", "limite"),
        ("/pagos?estado=pagado", "estado"),
        ("/pagos?cursor=ayer", "cursor"),
        ("/pagos?pagina=2", "pagina"),
    ] {
        let answer = call(&app, "GET", url, None, &[]).await;
        assert_eq!(answer.status, 400, "{url}");
        assert_eq!(
            answer.body["errors"][0]["field"], campo,
            "{url}: {:?}",
            answer.body
        );
    }
}

#[sqlx::test(migrations = false)]
async fn payments_per_minute_count_each_minute_by_state_with_empty_minutes_zero(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app_without_broker(&pool);
    for referencia in ["minuto-a", "minuto-b", "minuto-c", "antiguo"] {
        let creado = call(
            &app,
            "POST",
            "/pagos/",
            Some(&pago_json(referencia, "10")),
            &[],
        )
        .await;
        assert_eq!(creado.status, 200);
    }
    // One payment failed; one was created two minutes ago; one before the window.
    sqlx::query(
        "UPDATE pagos SET estado = CASE referencia_pago WHEN 'minuto-b' THEN 'FALLIDO' ELSE estado END, \
         fecha_creacion = CASE referencia_pago \
             WHEN 'minuto-c' THEN date_trunc('minute', now()) - interval '2 minutes' \
             WHEN 'antiguo' THEN now() - interval '2 hours' ELSE fecha_creacion END",
    )
    .execute(&pool)
    .await
    .unwrap();

    let answer = call(
        &app,
        "GET",
        "/pagos/estadisticas/por-minuto?minutos=5",
        None,
        &[],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let minutos = answer.body["minutos"].as_array().unwrap();
    assert_eq!(
        minutos.len(),
        5,
        "every minute of the window, empty ones too"
    );
    let total: i64 = minutos.iter().map(|m| m["total"].as_i64().unwrap()).sum();
    assert_eq!(total, 3, "the payment two hours old is outside the window");
    // Looked up by minute, not position: the window moves if a minute turns during the test.
    let minuto_de = |referencia: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT date_trunc('minute', fecha_creacion) FROM pagos WHERE referencia_pago = $1",
            )
            .bind(referencia)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let en = |minuto: chrono::DateTime<chrono::Utc>| {
        minutos
            .iter()
            .find(|m| {
                chrono::DateTime::parse_from_rfc3339(m["minuto"].as_str().unwrap()).unwrap()
                    == minuto
            })
            .unwrap_or_else(|| panic!("{minuto} not in {minutos:?}"))
    };
    let (a, b, c) = (
        minuto_de("minuto-a").await,
        minuto_de("minuto-b").await,
        minuto_de("minuto-c").await,
    );
    assert_eq!(en(b)["por_estado"]["FALLIDO"], 1, "{}", en(b));
    assert!(
        en(a)["por_estado"]["PENDIENTE"].as_i64().unwrap() >= 1,
        "{}",
        en(a)
    );
    assert_eq!(
        en(a)["por_estado"]["EXITOSO"],
        0,
        "every state present: {}",
        en(a)
    );
    assert_eq!(en(c)["total"], 1, "two minutes before: {}", en(c));
    for par in minutos.windows(2) {
        let (a, b) = (
            chrono::DateTime::parse_from_rfc3339(par[0]["minuto"].as_str().unwrap()).unwrap(),
            chrono::DateTime::parse_from_rfc3339(par[1]["minuto"].as_str().unwrap()).unwrap(),
        );
        assert_eq!(
            b - a,
            chrono::TimeDelta::minutes(1),
            "oldest first, one minute apart"
        );
    }
    assert_eq!(
        call(&app, "GET", "/pagos/estadisticas/por-minuto", None, &[])
            .await
            .body["minutos"]
            .as_array()
            .unwrap()
            .len(),
        30,
        "30 minutes by default"
    );
    for url in [
        "/pagos/estadisticas/por-minuto?minutos=0",
        "/pagos/estadisticas/por-minuto?minutos=1441",
        "/pagos/estadisticas/por-minuto?minutos=diez",
        "/pagos/estadisticas/por-minuto?horas=1",
    ] {
        let answer = call(&app, "GET", url, None, &[]).await;
        assert_eq!(answer.status, 400, "{url}: {:?}", answer.body);
    }
}
