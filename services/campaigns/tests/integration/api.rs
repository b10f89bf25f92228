//! The `/campaigns` HTTP contract against a real PostgreSQL.

use crate::common::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[sqlx::test(migrations = false)]
async fn creates_a_campaign_with_location_etag_and_its_event(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let answer = call(
        &app,
        "POST",
        "/campaigns/",
        Some(&campana_json("af-1", "5000.50")),
        &[("x-request-id", "req-c1")],
    )
    .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let id = answer.body["id"].as_str().unwrap();
    assert_eq!(
        answer.headers["location"],
        format!("/campaigns/{id}").as_str()
    );
    assert_eq!(answer.headers["etag"], "\"1\"");
    let b = &answer.body;
    assert_eq!(b["estado"], "CREATED");
    assert_eq!(b["tipo"], "PROMOCIONAL");
    assert_eq!(b["presupuesto"]["monto"], 5000.5);
    assert_eq!(b["presupuesto"]["moneda"], "USD");
    assert_eq!(b["version"], 1);
    for field in ["impresiones", "clicks", "conversiones"] {
        assert_eq!(b["metricas"][field], 0, "{field}");
    }
    assert_eq!(b["metricas"]["ctr"], 0.0);
    assert_eq!(b["metricas"]["tasa_conversion"], 0.0);

    let got = call(&app, "GET", &format!("/campaigns/{id}"), None, &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, answer.body);

    let (topic, version, correlation): (String, i64, String) =
        sqlx::query_as("SELECT topic, aggregate_version, envelope->>'correlation_id' FROM outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (topic.as_str(), version, correlation.as_str()),
        ("campaigns.evt.created", 1, "req-c1")
    );

    // Naive dates are read as UTC.
    let naive = r#"{"nombre":"n","tipo":"RETENCION","presupuesto":{"monto":0,"moneda":"COP"},"fecha_inicio":"2030-01-01T00:00:00","fecha_fin":"2030-02-01T00:00:00","id_afiliado":"af-2"}"#;
    let answer = call(&app, "POST", "/campaigns", Some(naive), &[]).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    assert_eq!(answer.body["fecha_inicio"], "2030-01-01T00:00:00Z");
    assert!(answer.body["descripcion"].is_null());
}

#[sqlx::test(migrations = false)]
async fn every_validation_failure_is_a_400_naming_the_field_and_stores_nothing(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let valid: serde_json::Value = serde_json::from_str(&campana_json("af", "100")).unwrap();
    let with = |pointer: &str, value: serde_json::Value| {
        let mut body = valid.clone();
        *body.pointer_mut(pointer).unwrap() = value;
        body.to_string()
    };
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(field);
        body.to_string()
    };
    let cases = vec![
        ("missing nombre", without("nombre"), "nombre"),
        ("missing presupuesto", without("presupuesto"), "presupuesto"),
        ("empty nombre", with("/nombre", "  ".into()), "nombre"),
        ("unknown tipo", with("/tipo", "VIRAL".into()), "tipo"),
        (
            "lower-case tipo",
            with("/tipo", "promocional".into()),
            "tipo",
        ),
        (
            "negative budget",
            with("/presupuesto/monto", (-1).into()),
            "presupuesto.monto",
        ),
        (
            "budget too large",
            with("/presupuesto/monto", 1_000_000.01.into()),
            "presupuesto.monto",
        ),
        (
            "three decimals",
            with("/presupuesto/monto", 10.123.into()),
            "presupuesto.monto",
        ),
        (
            "budget as text",
            with("/presupuesto/monto", "10".into()),
            "presupuesto.monto",
        ),
        (
            "unknown currency",
            with("/presupuesto/moneda", "usd".into()),
            "presupuesto.moneda",
        ),
        (
            "bad date",
            with("/fecha_inicio", "mañana".into()),
            "fecha_inicio",
        ),
        (
            "end before start",
            with("/fecha_fin", "2020-01-01T00:00:00Z".into()),
            "fecha_fin",
        ),
        (
            "empty affiliate",
            with("/id_afiliado", "".into()),
            "id_afiliado",
        ),
        (
            "number as affiliate",
            with("/id_afiliado", 5.into()),
            "id_afiliado",
        ),
    ];
    for (name, body, field) in cases {
        let answer = call(&app, "POST", "/campaigns", Some(&body), &[]).await;
        assert_eq!(answer.status, 400, "{name}: {:?}", answer.body);
        assert_eq!(
            answer.headers["content-type"], "application/problem+json",
            "{name}"
        );
        let fields: Vec<&str> = answer.body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {:?}", answer.body))
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{name}: {fields:?}");
    }
    let malformed = call(&app, "POST", "/campaigns", Some("{\"nombre\":"), &[]).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(
        count(
            &pool,
            "SELECT (SELECT count(*) FROM campanas) + (SELECT count(*) FROM outbox)"
        )
        .await,
        0
    );
}

#[sqlx::test(migrations = false)]
async fn lifecycle_rules_are_409_and_unknown_or_malformed_ids_404_or_400(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let id = crear(&app, "af", "100").await;
    let patch = |action: &str| format!("/campaigns/{id}/{action}");

    assert_eq!(
        call(&app, "PATCH", &patch("pause"), None, &[]).await.status,
        409,
        "CREATED cannot pause"
    );
    let active = call(&app, "PATCH", &patch("activate"), None, &[]).await;
    assert_eq!(
        (active.status, active.body["estado"].as_str()),
        (200, Some("ACTIVE"))
    );
    assert_eq!(
        call(&app, "PATCH", &patch("pause"), None, &[]).await.body["estado"],
        "PAUSED"
    );
    assert_eq!(
        call(&app, "PATCH", &patch("activate"), None, &[])
            .await
            .body["estado"],
        "ACTIVE"
    );
    let finished = call(&app, "PATCH", &patch("finish"), None, &[]).await;
    assert_eq!(finished.body["estado"], "COMPLETED");
    let refused = call(&app, "PATCH", &patch("activate"), None, &[]).await;
    assert_eq!(refused.status, 409);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("COMPLETED"),
        "{:?}",
        refused.body
    );
    let budget = call(
        &app,
        "PATCH",
        &patch("budget"),
        Some(r#"{"monto":10,"moneda":"USD"}"#),
        &[],
    )
    .await;
    assert_eq!(budget.status, 409);
    assert_eq!(
        call(&app, "PATCH", &patch("cancel"), None, &[])
            .await
            .status,
        409
    );

    let sin_presupuesto = crear(&app, "af", "0").await;
    let refused = call(
        &app,
        "PATCH",
        &format!("/campaigns/{sin_presupuesto}/activate"),
        None,
        &[],
    )
    .await;
    assert_eq!(refused.status, 409);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("presupuesto")
    );

    let vencida = r#"{"nombre":"v","tipo":"ADQUISICION","presupuesto":{"monto":10,"moneda":"EUR"},"fecha_inicio":"2020-01-01T00:00:00Z","fecha_fin":"2020-02-01T00:00:00Z","id_afiliado":"af"}"#;
    let vencida = call(&app, "POST", "/campaigns", Some(vencida), &[])
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        call(
            &app,
            "PATCH",
            &format!("/campaigns/{vencida}/activate"),
            None,
            &[]
        )
        .await
        .status,
        409
    );

    let unknown = uuid::Uuid::new_v4();
    for (method, path) in [
        ("GET", format!("/campaigns/{unknown}")),
        ("PATCH", format!("/campaigns/{unknown}/activate")),
        ("GET", format!("/campaigns/{unknown}/metrics")),
    ] {
        assert_eq!(
            call(&app, method, &path, None, &[]).await.status,
            404,
            "{path}"
        );
    }
    for path in ["/campaigns/nope", "/campaigns/nope/metrics"] {
        let answer = call(&app, "GET", path, None, &[]).await;
        assert_eq!(answer.status, 400, "{path}");
        assert_eq!(answer.body["errors"][0]["field"], "id");
    }
    // Events: created, activated, updated(pause), activated, updated(finish) for the first one.
    let cambios: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT topic, envelope->'data'->>'cambio' FROM outbox WHERE aggregate_id = $1 ORDER BY aggregate_version")
        .bind(&id).fetch_all(&pool).await.unwrap();
    let cambios: Vec<(&str, Option<&str>)> = cambios
        .iter()
        .map(|(t, c)| (t.as_str(), c.as_deref()))
        .collect();
    assert_eq!(
        cambios,
        vec![
            ("campaigns.evt.created", None),
            ("campaigns.evt.activated", None),
            ("campaigns.evt.updated", Some("pause")),
            ("campaigns.evt.activated", None),
            ("campaigns.evt.updated", Some("finish")),
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn if_match_guards_writes_with_412(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let id = crear(&app, "af", "100").await;
    let path = format!("/campaigns/{id}/budget");
    let body = r#"{"monto":200,"moneda":"USD"}"#;
    let stale = call(&app, "PATCH", &path, Some(body), &[("if-match", "\"7\"")]).await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.headers["content-type"], "application/problem+json");
    let ok = call(&app, "PATCH", &path, Some(body), &[("if-match", "\"1\"")]).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(
        (
            ok.body["version"].as_i64(),
            ok.body["presupuesto"]["monto"].as_f64()
        ),
        (Some(2), Some(200.0))
    );
    assert_eq!(ok.headers["etag"], "\"2\"");
    assert_eq!(
        call(&app, "PATCH", &path, Some(body), &[("if-match", "1")])
            .await
            .status,
        412,
        "version 1 is gone"
    );
    assert_eq!(
        call(
            &app,
            "PATCH",
            &format!("/campaigns/{id}/activate"),
            None,
            &[("if-match", "W/\"2\"")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(&app, "PATCH", &path, Some(body), &[("if-match", "abc")])
            .await
            .status,
        400
    );
    assert_eq!(
        call(&app, "PATCH", &path, Some(body), &[("if-match", "*")])
            .await
            .status,
        200
    );
}

#[sqlx::test(migrations = false)]
async fn concurrent_budget_updates_never_lose_an_update(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let id = crear(&app, "af", "100").await;
    let updates = (1..=20).map(|i| {
        let (app, id) = (app.clone(), id.clone());
        tokio::spawn(async move {
            let body = format!(r#"{{"monto":{},"moneda":"USD"}}"#, 100 + i);
            call(
                &app,
                "PATCH",
                &format!("/campaigns/{id}/budget"),
                Some(&body),
                &[],
            )
            .await
            .status
        })
    });
    for status in futures::future::join_all(updates).await {
        assert_eq!(status.unwrap(), 200);
    }
    let final_state = call(&app, "GET", &format!("/campaigns/{id}"), None, &[])
        .await
        .body;
    assert_eq!(
        final_state["version"], 21,
        "every update applied, one after the other"
    );
    let budget_events = count(
        &pool,
        "SELECT count(*) FROM outbox WHERE envelope->'data'->>'cambio' = 'budget'",
    )
    .await;
    assert_eq!(budget_events, 20);
    // The last committed update is the one the row shows, and its event says the same.
    let last: f64 = sqlx::query_scalar("SELECT (envelope->'data'->>'presupuesto')::float8 FROM outbox ORDER BY aggregate_version DESC LIMIT 1")
        .fetch_one(&pool).await.unwrap();
    assert_eq!(final_state["presupuesto"]["monto"].as_f64().unwrap(), last);

    // With the same If-Match, exactly one of many concurrent writers wins.
    let racing = (0..10).map(|i| {
        let (app, id) = (app.clone(), id.clone());
        tokio::spawn(async move {
            let body = format!(r#"{{"monto":{},"moneda":"USD"}}"#, 500 + i);
            call(
                &app,
                "PATCH",
                &format!("/campaigns/{id}/budget"),
                Some(&body),
                &[("if-match", "21")],
            )
            .await
            .status
        })
    });
    let statuses: Vec<u16> = futures::future::join_all(racing)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        9,
        "{statuses:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn lists_page_newest_first_with_real_totals_and_filters(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let mut creados = Vec::new();
    for i in 0..7 {
        let afiliado = if i % 2 == 0 { "par" } else { "impar" };
        creados.push(crear(&app, afiliado, "100").await);
    }
    call(
        &app,
        "PATCH",
        &format!("/campaigns/{}/activate", creados[0]),
        None,
        &[],
    )
    .await;
    let page = |query: &str| {
        let app = app.clone();
        let query = query.to_owned();
        async move { call(&app, "GET", &format!("/campaigns/?{query}"), None, &[]).await }
    };
    let first = page("limit=3").await.body;
    assert_eq!(
        (
            first["total"].as_i64(),
            first["limit"].as_i64(),
            first["offset"].as_i64()
        ),
        (Some(7), Some(3), Some(0))
    );
    let ids = |body: &serde_json::Value| -> Vec<String> {
        body["campanas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut all = ids(&first);
    all.extend(ids(&page("limit=3&offset=3").await.body));
    all.extend(ids(&page("limit=3&offset=6").await.body));
    let mut newest_first = creados.clone();
    newest_first.reverse();
    assert_eq!(
        all, newest_first,
        "pages cover everything once, newest first"
    );
    assert_eq!(ids(&page("offset=7").await.body).len(), 0);
    assert_eq!(page("").await.body["limit"], 50);

    let pares = page("id_afiliado=par").await.body;
    assert_eq!(pares["total"], 4);
    let activas = page("estado=ACTIVE").await.body;
    assert_eq!(
        (activas["total"].as_i64(), ids(&activas)),
        (Some(1), vec![creados[0].clone()])
    );
    assert_eq!(
        page("estado=ACTIVE&id_afiliado=impar").await.body["total"],
        0
    );

    for bad in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "offset=-1",
        "estado=active",
    ] {
        let answer = page(bad).await;
        assert_eq!(answer.status, 400, "{bad}");
        assert_eq!(answer.headers["content-type"], "application/problem+json");
    }
}

#[sqlx::test(migrations = false)]
async fn idempotency_key_creates_once_and_replays_the_location(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let body = campana_json("af", "100");
    let key = [("idempotency-key", "camp-1")];
    let first = call(&app, "POST", "/campaigns", Some(&body), &key).await;
    let again = call(&app, "POST", "/campaigns", Some(&body), &key).await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.headers["location"], first.headers["location"]);
    assert_eq!(again.body, first.body);
    assert_eq!(count(&pool, "SELECT count(*) FROM campanas").await, 1);
    let other = call(
        &app,
        "POST",
        "/campaigns",
        Some(&campana_json("otro", "1")),
        &key,
    )
    .await;
    assert_eq!(other.status, 422);

    // A lifecycle command retried with its key is applied once.
    let id = first.body["id"].as_str().unwrap();
    let activate = [("idempotency-key", "act-1")];
    let a = call(
        &app,
        "PATCH",
        &format!("/campaigns/{id}/activate"),
        None,
        &activate,
    )
    .await;
    let b = call(
        &app,
        "PATCH",
        &format!("/campaigns/{id}/activate"),
        None,
        &activate,
    )
    .await;
    assert_eq!(
        (a.status, b.status),
        (200, 200),
        "the retry gets the first answer, not a 409"
    );
    assert_eq!(b.headers["idempotent-replayed"], "true");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE topic = 'campaigns.evt.activated'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrations = false)]
async fn metrics_and_stats_never_divide_by_zero(o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(o, c).await;
    let app = app(&pool);
    let id = crear_activa(&app, "af", "100").await;
    crear(&app, "af", "50").await;
    crear(&app, "otro", "10").await;
    let metrics = call(&app, "GET", &format!("/campaigns/{id}/metrics"), None, &[]).await;
    assert_eq!(metrics.status, 200);
    let m = &metrics.body;
    assert_eq!(m["id_campana"], id.as_str());
    assert_eq!(
        m["metricas_calculadas"],
        serde_json::json!({"roi": 0.0, "cpc": 0.0, "cpa": 0.0})
    );
    assert_eq!(m["rendimiento"], "SIN_DATOS");
    assert_eq!(m["optimizaciones"]["total_sugerencias"], 0);

    sqlx::query("UPDATE campanas SET impresiones = 1000, clicks = 5, conversiones = 1, gasto_actual = 95, ingresos = 190 WHERE id = $1::uuid")
        .bind(&id).execute(&pool).await.unwrap();
    let m = call(&app, "GET", &format!("/campaigns/{id}/metrics"), None, &[])
        .await
        .body;
    assert_eq!(m["metricas_basicas"]["ctr"], 0.5);
    assert_eq!(m["metricas_basicas"]["tasa_conversion"], 20.0);
    assert_eq!(
        m["metricas_calculadas"],
        serde_json::json!({"roi": 100.0, "cpc": 19.0, "cpa": 95.0})
    );
    assert_eq!(m["rendimiento"], "MEDIO");
    assert_eq!(m["optimizaciones"]["total_sugerencias"], 2, "{m}");

    let stats = call(
        &app,
        "GET",
        "/campaigns/stats/general?id_afiliado=af",
        None,
        &[],
    )
    .await
    .body;
    assert_eq!(stats["total_campanas"], 2);
    assert_eq!(stats["distribucion_por_estado"]["ACTIVE"], 1);
    assert_eq!(stats["distribucion_por_estado"]["CREATED"], 1);
    assert_eq!(stats["distribucion_por_estado"]["CANCELLED"], 0);
    assert_eq!(stats["metricas_agregadas"]["presupuesto_total"], 150.0);
    assert_eq!(stats["metricas_agregadas"]["gasto_total"], 95.0);
    let all = call(&app, "GET", "/campaigns/stats/general", None, &[])
        .await
        .body;
    assert_eq!(all["total_campanas"], 3);
}
