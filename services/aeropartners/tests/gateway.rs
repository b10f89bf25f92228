//! The gateway in front of the real payments and campaigns services (served on loopback
//! sockets, on a database of their own).

use std::time::Duration;

use platform::{config::DatabaseConfig, messaging::LazyBroker};
use testkit::{TempDatabase, call, http_config};
use tokio_util::sync::CancellationToken;

/// A database of its own, migrated for payments and campaigns, and the payments API served on
/// a loopback port; returns the database, the payments URL and the campaigns pool.
async fn payments_served(shutdown: &CancellationToken) -> (TempDatabase, String, sqlx::PgPool) {
    let database = TempDatabase::create().await;
    let config = DatabaseConfig {
        database_url: database.url.clone(),
        database_max_connections: 5,
        migrate_on_start: true,
        database_startup_wait: std::time::Duration::ZERO,
    };
    let payments_pool = payments::database(&config).await.unwrap();
    let campaigns_pool = campaigns::database(&config).await.unwrap();
    let payments_url = testkit::serve(
        payments::app(
            payments_pool,
            LazyBroker::default(),
            &http_config(),
            &access::Acceso::desarrollo(),
        ),
        shutdown,
    )
    .await;
    (database, payments_url, campaigns_pool)
}

#[tokio::test]
async fn routes_each_prefix_keeps_queries_and_merges_the_documentation() {
    let shutdown = CancellationToken::new();
    let (database, payments_url, campaigns_pool) = payments_served(&shutdown).await;
    let campaigns_url = testkit::serve(
        campaigns::app(
            campaigns_pool,
            LazyBroker::default(),
            &http_config(),
            &access::Acceso::desarrollo(),
        ),
        &shutdown,
    )
    .await;
    let dead = format!("http://127.0.0.1:{}", testkit::free_port());

    let gateway_config = gateway::Config {
        http: http_config(),
        routes: vec![
            format!("/pagos={payments_url}/pagos"),
            format!("/campaigns={campaigns_url}/campaigns"),
            format!("/api/campaigns={campaigns_url}/campaigns"),
            format!("/api/reports={dead}/api/reports"),
        ],
        docs: vec![
            format!("payments={payments_url}/openapi.json"),
            format!("campaigns={campaigns_url}/openapi.json"),
        ],
        upstream_timeout: Duration::from_secs(5),
        console_replicas: vec![],
        console_health: vec![],
        auth: access::AuthConfig::default(),
        session: gateway::sesion::SessionConfig::default(),
    };
    let app = gateway::app(&gateway_config).await.unwrap();

    let pago = r#"{"id_afiliado":"af-gw","monto":12.5,"moneda":"EUR","referencia_pago":"gw-1"}"#;
    let created = call(
        &app,
        "POST",
        "/pagos/",
        Some(pago),
        &[("x-request-id", "gw-req-1")],
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    assert_eq!(created.headers["x-request-id"], "gw-req-1");
    let id = created.body["id_pago"].as_str().unwrap();
    let fetched = call(&app, "GET", &format!("/pagos/{id}"), None, &[]).await;
    assert_eq!(
        (fetched.status, fetched.body["id_pago"].as_str()),
        (200, Some(id))
    );
    let invalid = call(&app, "POST", "/pagos", Some(r#"{"monto":1}"#), &[]).await;
    assert_eq!(
        invalid.status, 400,
        "the service's own problem comes through"
    );
    assert_eq!(invalid.headers["content-type"], "application/problem+json");

    let campana = r#"{"nombre":"gw","tipo":"RETENCION","presupuesto":{"monto":10,"moneda":"USD"},"fecha_inicio":"2030-01-01T00:00:00Z","fecha_fin":"2030-02-01T00:00:00Z","id_afiliado":"af-gw"}"#;
    for prefix in ["/campaigns", "/api/campaigns"] {
        let answer = call(&app, "POST", prefix, Some(campana), &[]).await;
        assert_eq!(answer.status, 201, "{prefix}: {:?}", answer.body);
    }
    let list = call(
        &app,
        "GET",
        "/api/campaigns?limit=1&id_afiliado=af-gw",
        None,
        &[],
    )
    .await;
    assert_eq!(
        (list.body["total"].as_i64(), list.body["limit"].as_i64()),
        (Some(2), Some(1))
    );

    let unrouted = call(&app, "GET", "/reporting/reports", None, &[]).await;
    assert_eq!(unrouted.status, 404);
    assert_eq!(unrouted.headers["content-type"], "application/problem+json");
    let down = call(&app, "GET", "/api/reports/payments", None, &[]).await;
    assert_eq!(down.status, 503, "a configured but unreachable service");

    let docs = call(&app, "GET", "/openapi.json", None, &[]).await.body;
    assert!(
        docs["paths"]["/pagos"]["post"].is_object(),
        "{}",
        docs["paths"]
    );
    assert!(docs["paths"]["/campaigns/{id}/activate"]["patch"].is_object());
    assert_eq!(call(&app, "GET", "/docs/", None, &[]).await.status, 200);
    let health = call(&app, "GET", "/health", None, &[]).await.body;
    assert_eq!(health["service"], "gateway");

    shutdown.cancel();
    database.drop_database().await;
}

/// The issue-7 failure: for the first seconds the gateway answered `/ready` while its merged
/// `/openapi.json` held only the payments paths. Now it is unready, naming what it waits for,
/// until every service's document is in.
#[tokio::test]
async fn is_unready_until_every_services_document_is_merged() {
    let shutdown = CancellationToken::new();
    let (database, payments_url, campaigns_pool) = payments_served(&shutdown).await;
    let campaigns_port = testkit::free_port();
    let gateway_port = testkit::free_port();
    let mut gateway_http = http_config();
    gateway_http.listen = format!("127.0.0.1:{gateway_port}").parse().unwrap();
    let gateway_config = gateway::Config {
        http: gateway_http,
        routes: vec![format!("/pagos={payments_url}/pagos")],
        docs: vec![
            format!("payments={payments_url}/openapi.json"),
            format!("campaigns=http://127.0.0.1:{campaigns_port}/openapi.json"),
        ],
        upstream_timeout: Duration::from_secs(5),
        console_replicas: vec![],
        console_health: vec![],
        auth: access::AuthConfig::default(),
        session: gateway::sesion::SessionConfig::default(),
    };
    tokio::spawn(gateway::run(gateway_config, shutdown.clone()));
    let gateway_url = format!("http://127.0.0.1:{gateway_port}");
    testkit::wait_until_ready(&format!("{gateway_url}/health"), Duration::from_secs(10)).await;
    let client = reqwest::Client::new();
    let ready = |client: reqwest::Client| {
        let url = format!("{gateway_url}/ready");
        async move {
            let answer = client.get(url).send().await.unwrap();
            (answer.status().as_u16(), answer.text().await.unwrap())
        }
    };
    let docs = |client: reqwest::Client| {
        let url = format!("{gateway_url}/openapi.json");
        async move {
            let body: serde_json::Value =
                client.get(url).send().await.unwrap().json().await.unwrap();
            body["paths"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        }
    };

    // Payments is merged, campaigns is not up yet: not ready, and it says why.
    testkit::eventually("payments paths merged", Duration::from_secs(10), || {
        let client = client.clone();
        async move { docs(client).await.iter().any(|p| p.starts_with("/pagos")) }
    })
    .await;
    let (status, body) = ready(client.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("campaigns"),
        "names the missing document: {body}"
    );

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", campaigns_port))
        .await
        .unwrap();
    tokio::spawn(platform::http::serve(
        listener,
        campaigns::app(
            campaigns_pool,
            LazyBroker::default(),
            &http_config(),
            &access::Acceso::desarrollo(),
        ),
        shutdown.clone(),
        &testkit::http_config(),
    ));
    testkit::eventually("gateway ready", Duration::from_secs(15), || {
        let client = client.clone();
        async move { ready(client).await.0 == 200 }
    })
    .await;
    let paths = docs(client.clone()).await;
    assert!(
        paths.iter().any(|p| p.starts_with("/campaigns"))
            && paths.iter().any(|p| p.starts_with("/pagos")),
        "ready means every document is merged: {paths:?}"
    );

    shutdown.cancel();
    database.drop_database().await;
}

/// Replicas behind one route take turns, and a replica that refuses connections (stopped, or
/// not started yet) costs no request, whatever its method: nothing reached it.
#[tokio::test]
async fn a_route_with_replicas_balances_and_skips_a_refusing_one() {
    let shutdown = CancellationToken::new();
    let mut live = Vec::new();
    for name in ["a", "b"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        live.push(format!("http://{}", listener.local_addr().unwrap()));
        let app = axum::Router::new().fallback(move |method: axum::http::Method| async move {
            axum::Json(serde_json::json!({"replica": name, "method": method.as_str()}))
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let dead = format!("http://127.0.0.1:{}", testkit::free_port());
    let config = gateway::Config {
        http: http_config(),
        routes: vec![format!(
            "/api/reports={}/api/reports|{dead}/api/reports|{}/api/reports",
            live[0], live[1]
        )],
        docs: vec![],
        upstream_timeout: Duration::from_secs(5),
        console_replicas: vec![],
        console_health: vec![],
        auth: access::AuthConfig::default(),
        session: gateway::sesion::SessionConfig::default(),
    };
    let app = gateway::app(&config).await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..30 {
        let method = if i % 3 == 0 { "PUT" } else { "GET" };
        let answer = call(&app, method, "/api/reports/version", Some("{}"), &[]).await;
        assert_eq!(answer.status, 200, "request {i}: {:?}", answer.body);
        assert_eq!(answer.body["method"], method);
        *seen
            .entry(answer.body["replica"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both live replicas served: {seen:?}");
    assert!(seen.values().all(|n| *n >= 10), "{seen:?}");
    shutdown.cancel();
}

/// An upstream on a raw socket: it reads each request, cuts the connection without an answer
/// for the first `cuts` requests (a pod going away under a pooled connection), then answers 200.
/// `never` makes it hold every request without answering. Returns its URL and a counter of the
/// requests it read.
async fn cutting_upstream(
    cuts: usize,
    never: bool,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Read a whole request: its head, then the body its content-length announces.
                loop {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let number = counter.fetch_add(1, Ordering::SeqCst);
                if never {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                } else if number >= cuts {
                    let body = format!("{{\"intento\":{}}}", number + 1);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                }
                // Dropped: a cut without an answer, or closed after the answer.
            });
        }
    });
    (url, seen)
}

fn gateway_to(upstream: &str, timeout: Duration) -> gateway::Config {
    gateway::Config {
        http: http_config(),
        routes: vec![format!("/pagos={upstream}/pagos")],
        docs: vec![],
        upstream_timeout: timeout,
        console_replicas: vec![],
        console_health: vec![],
        auth: access::AuthConfig::default(),
        session: gateway::sesion::SessionConfig::default(),
    }
}

/// Behind a Kubernetes Service a route has one URL, and a pod that stops may cut a request it
/// had received. A request that cannot be applied twice is sent again, on a new connection that
/// reaches a live pod; one that could be applied twice is not, and the client is told it may or
/// may not have been applied; a request that timed out is not repeated.
#[tokio::test]
async fn a_cut_request_is_retried_only_when_repeating_it_is_safe() {
    use std::sync::atomic::Ordering;

    // A read, cut twice: answered by the third attempt.
    let (upstream, seen) = cutting_upstream(2, false).await;
    let app = gateway::app(&gateway_to(&upstream, Duration::from_secs(5)))
        .await
        .unwrap();
    let answer = call(&app, "GET", "/pagos/abc", None, &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["intento"], 3);
    assert_eq!(seen.load(Ordering::SeqCst), 3);

    // A payment with an Idempotency-Key, cut once: the service deduplicates, so it is sent again.
    let (upstream, seen) = cutting_upstream(1, false).await;
    let app = gateway::app(&gateway_to(&upstream, Duration::from_secs(5)))
        .await
        .unwrap();
    let body = r#"{"id_afiliado":"a","monto":1,"moneda":"USD","referencia_pago":"r"}"#;
    let answer = call(
        &app,
        "POST",
        "/pagos",
        Some(body),
        &[("idempotency-key", "k-1")],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    // The same payment without a key, cut once: sent once, and a 502 that says so.
    let (upstream, seen) = cutting_upstream(1, false).await;
    let app = gateway::app(&gateway_to(&upstream, Duration::from_secs(5)))
        .await
        .unwrap();
    let answer = call(&app, "POST", "/pagos", Some(body), &[]).await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{:?}",
        answer.body
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1, "never sent twice");

    // A read the upstream does not answer in time: one attempt, then 504.
    let (upstream, seen) = cutting_upstream(0, true).await;
    let app = gateway::app(&gateway_to(&upstream, Duration::from_millis(300)))
        .await
        .unwrap();
    let answer = call(&app, "GET", "/pagos/abc", None, &[]).await;
    assert_eq!(answer.status, 504, "{:?}", answer.body);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "a timeout is not multiplied"
    );
}

/// The operations console: its page and assets from the binary (with validators and a cache
/// policy), and its two reads: the version each reports replica serves (here two stand-in
/// replicas and one that is down) and every service's readiness (the real payments service,
/// and one that does not answer).
#[tokio::test]
async fn serves_the_console_and_its_replica_and_health_views() {
    let shutdown = CancellationToken::new();
    let (database, payments_url, _) = payments_served(&shutdown).await;
    let mut replicas = Vec::new();
    for (name, active) in [("reports-x", "v1"), ("reports-y", "v2")] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        replicas.push(format!(
            "http://{}/api/reports",
            listener.local_addr().unwrap()
        ));
        let app = axum::Router::new().route(
            "/api/reports/version",
            axum::routing::get(move || async move {
                axum::Json(serde_json::json!({"replica": name, "active": active, "desired": "v2"}))
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let dead = format!("http://127.0.0.1:{}", testkit::free_port());
    replicas.push(format!("{dead}/api/reports"));
    let config = gateway::Config {
        http: http_config(),
        routes: vec![],
        docs: vec![],
        upstream_timeout: Duration::from_secs(5),
        console_replicas: replicas,
        console_health: vec![
            format!("payments={payments_url}/ready"),
            format!("gone={dead}/ready"),
        ],
        // The console's reads without a sign-in (tests/console_session.rs signs in).
        auth: access::AuthConfig {
            auth_mode: access::AuthMode::Development,
            ..access::AuthConfig::default()
        },
        session: gateway::sesion::SessionConfig::default(),
    };
    let app = gateway::app(&config).await.unwrap();

    let page = call(&app, "GET", "/console/", None, &[]).await;
    assert_eq!(
        page.status, 200,
        "the console is embedded (`make console` builds it before cargo): {:?}",
        page.body
    );
    assert_eq!(page.headers["content-type"], "text/html");
    assert_eq!(page.headers["cache-control"], "no-cache");
    let html = page.body.as_str().unwrap().to_owned();
    assert!(html.contains(r#"<div id="app">"#), "{html}");
    let again = call(
        &app,
        "GET",
        "/console",
        None,
        &[("if-none-match", page.headers["etag"].to_str().unwrap())],
    )
    .await;
    assert_eq!(again.status, 304, "unchanged since the validator");

    let script = html
        .split('"')
        .find(|part| part.starts_with("/console/assets/") && part.ends_with(".js"))
        .expect("the page loads its script from /console/assets/");
    let asset = call(&app, "GET", script, None, &[]).await;
    assert_eq!(asset.status, 200);
    assert_eq!(asset.headers["content-type"], "text/javascript");
    assert!(
        asset.headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(
        call(&app, "GET", "/console/assets/nada.js", None, &[])
            .await
            .status,
        404
    );
    assert_eq!(
        call(&app, "GET", "/console/api/nada", None, &[])
            .await
            .status,
        404
    );

    let answer = call(&app, "GET", "/console/api/replicas", None, &[]).await;
    assert_eq!(answer.status, 200);
    let replicas = answer.body["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert_eq!(replicas[0]["version"]["replica"], "reports-x");
    assert_eq!(replicas[1]["version"]["active"], "v2");
    assert!(replicas[2]["version"].is_null());
    assert!(
        replicas[2]["error"].is_string(),
        "why it is not shown: {:?}",
        replicas[2]
    );

    let salud = call(&app, "GET", "/console/api/salud", None, &[])
        .await
        .body;
    assert_eq!(salud["todos_listos"], false, "{salud}");
    let servicios = salud["servicios"].as_array().unwrap();
    assert_eq!(servicios[0]["nombre"], "payments");
    assert_eq!(servicios[0]["listo"], true, "{salud}");
    assert_eq!(servicios[0]["codigo"], 200);
    assert!(
        servicios[0]["detalle"]["checks"].is_array(),
        "the service's own answer: {salud}"
    );
    assert_eq!(servicios[1]["listo"], false);
    assert!(
        servicios[1]["codigo"].is_null(),
        "no answer at all: {salud}"
    );

    shutdown.cancel();
    database.drop_database().await;
}

/// The gateway routes by prefix, and a route is no boundary if `..` can leave it: dot
/// segments and encoded separators, in any spelling, are refused before routing and never
/// reach an upstream (there they would resolve to a path no route leads to, such as a
/// service's `/metrics`).
#[tokio::test]
async fn a_path_that_would_leave_its_route_never_reaches_an_upstream() {
    use std::sync::atomic::Ordering;

    let (upstream, seen) = cutting_upstream(0, false).await;
    let app = gateway::app(&gateway_to(&upstream, Duration::from_secs(5)))
        .await
        .unwrap();
    for path in [
        "/pagos/%2e%2e/metrics",
        "/pagos/%2E%2e/ready",
        "/pagos/.%2e/metrics",
        "/pagos/%2e./metrics",
        "/pagos/../metrics",
        "/pagos/./abc",
        "/pagos%2F..%2Fmetrics",
        "/pagos/abc%2fdef",
        "/pagos/abc%5C..%5Cmetrics",
    ] {
        let answer = call(&app, "GET", path, None, &[]).await;
        assert_eq!(answer.status, 400, "{path}: {:?}", answer.body);
        assert!(
            answer.body["detail"]
                .as_str()
                .unwrap()
                .contains("Ruta no admitida"),
            "{path}: {:?}",
            answer.body
        );
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing was forwarded");
    let answer = call(&app, "GET", "/pagos/a.b", None, &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}
