//! The console's sign-in against the test kube-apiserver (`make k8s-up`), as the chart runs
//! it: the gateway reviews an operator's token with the API server, keeps it in an encrypted
//! cookie and forwards it to the real payments service, which asks the API server what that
//! operator may do. The chart's Roles decide (templates/access.yaml): bob, a viewer, reads but
//! cannot revert — whatever the page shows, the server refuses; alice, an operator, reverts,
//! and the audit trail names her.

use std::{sync::Arc, time::Duration};

use access::{AuthConfig, AuthMode, infrastructure::kubernetes::Kubernetes};
use gateway::sesion::{COOKIE, CSRF_HEADER, SessionConfig};
use platform::{config::DatabaseConfig, messaging::LazyBroker};
use testkit::{
    Answer, TempDatabase, acceso::Claves, call, eventually, http_config, kubectl,
    operadores::Operadores,
};
use tokio_util::sync::CancellationToken;

/// `name=value` of the session cookie an answer sets.
fn session_cookie(answer: &Answer) -> String {
    let set = answer.headers["set-cookie"].to_str().unwrap();
    let pair = set.split(';').next().unwrap();
    assert!(pair.starts_with(&format!("{COOKIE}=")), "{set}");
    pair.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_with_a_cluster_token_and_the_server_refuses_what_rbac_does_not_grant()
{
    let operadores = Operadores::crear("console");
    let ns = operadores.namespace.clone();
    let shutdown = CancellationToken::new();
    let database = TempDatabase::create().await;
    let pool = payments::database(&DatabaseConfig {
        database_url: database.url.clone(),
        database_max_connections: 5,
        migrate_on_start: true,
        database_startup_wait: Duration::ZERO,
    })
    .await
    .unwrap();
    access::almacen::migrate(&pool).await.unwrap();
    // Payments as the chart runs it: keys enforced, operators asked of the API server.
    let autoridad = Arc::new(Kubernetes::new(
        kube::Client::try_default().await.unwrap(),
        ns.clone(),
        Vec::new(),
    ));
    let acceso = access::Acceso::with_store(
        AuthMode::Enforce,
        pool.clone(),
        Some(autoridad),
        shutdown.clone(),
    );
    let payments_url = testkit::serve(
        payments::app(pool.clone(), LazyBroker::default(), &http_config(), &acceso),
        &shutdown,
    )
    .await;
    let app = gateway::app(&gateway::Config {
        http: http_config(),
        routes: vec![format!("/pagos={payments_url}/pagos")],
        docs: vec![],
        upstream_timeout: Duration::from_secs(5),
        console_replicas: vec![],
        console_health: vec![format!("payments={payments_url}/ready")],
        auth: AuthConfig {
            auth_mode: AuthMode::Enforce,
            auth_kubernetes: true,
            auth_namespace: ns.clone(),
            ..AuthConfig::default()
        },
        session: SessionConfig::default(),
    })
    .await
    .unwrap();

    // Signed out: the page loads (it holds no data) and shows its sign-in; nothing else answers.
    assert_eq!(call(&app, "GET", "/console/", None, &[]).await.status, 200);
    let none = call(&app, "GET", "/console/api/sesion", None, &[]).await;
    assert_eq!(none.status, 401, "{:?}", none.body);
    assert_eq!(
        call(&app, "GET", "/console/api/salud", None, &[])
            .await
            .status,
        401
    );
    assert_eq!(call(&app, "GET", "/pagos", None, &[]).await.status, 401);

    // A token the cluster does not vouch for, or no token, opens nothing.
    let sign_in = |token: &str| format!(r#"{{"token":"{token}"}}"#);
    let forged = call(
        &app,
        "POST",
        "/console/api/sesion",
        Some(&sign_in("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")),
        &[],
    )
    .await;
    assert_eq!(forged.status, 401, "{:?}", forged.body);
    assert!(forged.headers.get("set-cookie").is_none());
    for bad in [r#"{"token":""}"#, "token=x", "{}"] {
        let answer = call(&app, "POST", "/console/api/sesion", Some(bad), &[]).await;
        assert_eq!(answer.status, 400, "{bad}: {:?}", answer.body);
    }
    let huge = sign_in(&"x".repeat(20_000));
    let answer = call(&app, "POST", "/console/api/sesion", Some(&huge), &[]).await;
    assert_eq!(answer.status, 400, "an oversized body: {:?}", answer.body);

    // bob, bound to the viewer Role, signs in: the session says what he may do.
    let bob = call(
        &app,
        "POST",
        "/console/api/sesion",
        Some(&sign_in(&operadores.token(Operadores::LECTOR))),
        &[],
    )
    .await;
    assert_eq!(bob.status, 200, "{:?}", bob.body);
    let set = bob.headers["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{attribute}: {set}");
    }
    let bob_cookie = session_cookie(&bob);
    assert_eq!(bob.body["usuario"], operadores.nombre(Operadores::LECTOR));
    let permisos = bob.body["permisos"].to_string();
    assert!(permisos.contains("get payments"), "{permisos}");
    assert!(!permisos.contains("create payments/revert"), "{permisos}");
    let again = call(
        &app,
        "GET",
        "/console/api/sesion",
        None,
        &[("cookie", &bob_cookie)],
    )
    .await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    let bob_csrf = again.body["csrf"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            &app,
            "GET",
            "/console/api/salud",
            None,
            &[("cookie", &bob_cookie)]
        )
        .await
        .status,
        200
    );

    // An API client reads the console's routes with the operator's token itself; a partner's
    // key does not open them, nor a token the cluster does not know.
    let key = Claves::new(&pool).secreta("AFILIADO_CONSOLA").await;
    let bob_bearer = format!("Bearer {}", operadores.token(Operadores::LECTOR));
    for (authorization, expected) in [
        (bob_bearer.as_str(), 200),
        (key.as_str(), 403),
        ("Bearer not-a-token", 401),
    ] {
        let answer = call(
            &app,
            "GET",
            "/console/api/salud",
            None,
            &[("authorization", authorization)],
        )
        .await;
        assert_eq!(answer.status, expected, "{:?}", answer.body);
    }

    // A partner makes a payment with its key; bob reads it through his session.
    let created = call(
        &app,
        "POST",
        "/pagos",
        Some(r#"{"monto":10,"moneda":"EUR","referencia_pago":"consola-1"}"#),
        &[("authorization", &key)],
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let id = created.body["id_pago"].as_str().unwrap().to_owned();
    let read = call(
        &app,
        "GET",
        &format!("/pagos/{id}"),
        None,
        &[("cookie", &bob_cookie)],
    )
    .await;
    assert_eq!(read.status, 200, "a viewer reads: {:?}", read.body);
    sqlx::query(
        "UPDATE pagos SET estado = 'EXITOSO', eventos_emitidos = 2, referencia_transaccion = 'txn_c'",
    )
    .execute(&pool)
    .await
    .unwrap();

    // bob cannot revert: without the CSRF token the gateway refuses; with it, payments does,
    // because RBAC does not grant him `create payments/revert`.
    let revert = format!("/pagos/{id}/revertir");
    let motivo = Some(r#"{"motivo":"desde la consola"}"#);
    let no_csrf = call(&app, "PATCH", &revert, motivo, &[("cookie", &bob_cookie)]).await;
    assert_eq!(
        (no_csrf.status, no_csrf.body["type"].as_str()),
        (403, Some("https://aeropartners.io/problems/csrf")),
        "{:?}",
        no_csrf.body
    );
    let refused = call(
        &app,
        "PATCH",
        &revert,
        motivo,
        &[("cookie", &bob_cookie), (CSRF_HEADER, &bob_csrf)],
    )
    .await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("create payments/revert"),
        "the server's refusal: {:?}",
        refused.body
    );

    // alice, bound to operations, may; another session's CSRF token is not hers.
    let alice = call(
        &app,
        "POST",
        "/console/api/sesion",
        Some(&sign_in(&operadores.token(Operadores::OPERACIONES))),
        &[],
    )
    .await;
    assert_eq!(alice.status, 200, "{:?}", alice.body);
    assert!(
        alice.body["permisos"]
            .to_string()
            .contains("create payments/revert")
    );
    let alice_cookie = session_cookie(&alice);
    let alice_csrf = alice.body["csrf"].as_str().unwrap().to_owned();
    let crossed = call(
        &app,
        "PATCH",
        &revert,
        motivo,
        &[("cookie", &alice_cookie), (CSRF_HEADER, &bob_csrf)],
    )
    .await;
    assert_eq!(crossed.status, 403, "{:?}", crossed.body);
    let reverted = call(
        &app,
        "PATCH",
        &revert,
        motivo,
        &[("cookie", &alice_cookie), (CSRF_HEADER, &alice_csrf)],
    )
    .await;
    assert_eq!(reverted.status, 200, "{:?}", reverted.body);
    assert_eq!(reverted.body["estado"], "REVERSADO");
    let audited: (String, String) = sqlx::query_as(
        "SELECT actor, resultado FROM acceso.auditoria \
         WHERE accion = 'create payments/revert' AND objeto = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        audited,
        (
            operadores.nombre(Operadores::OPERACIONES),
            "permitido".to_owned()
        )
    );

    // Signing out needs the CSRF token too, and makes the browser forget the cookie.
    let out = call(
        &app,
        "DELETE",
        "/console/api/sesion",
        None,
        &[("cookie", &alice_cookie)],
    )
    .await;
    assert_eq!(out.status, 403, "{:?}", out.body);
    let out = call(
        &app,
        "DELETE",
        "/console/api/sesion",
        None,
        &[("cookie", &alice_cookie), (CSRF_HEADER, &alice_csrf)],
    )
    .await;
    assert_eq!(out.status, 204);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // A session lasts no longer than its token: bob's account deleted, his cookie opens
    // nothing, at the console nor through the routes, once the cached reviews (10 s, in the
    // gateway and in payments) expire.
    kubectl(&["delete", "serviceaccount", "bob", "-n", &ns], None).unwrap();
    for path in ["/console/api/sesion", "/pagos"] {
        eventually(
            &format!("{path}: the session of a deleted account ends"),
            Duration::from_secs(30),
            || async {
                call(&app, "GET", path, None, &[("cookie", &bob_cookie)])
                    .await
                    .status
                    == 401
            },
        )
        .await;
    }

    shutdown.cancel();
    database.drop_database().await;
}
