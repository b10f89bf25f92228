//! The access context against its real parts: the key store on PostgreSQL (`#[sqlx::test]`),
//! operators reviewed by the test kube-apiserver (`make test` exports its KUBECONFIG), and the
//! caller of a request as a service sees it.

use std::{sync::Arc, time::Duration};

use access::{
    Acceso, Alcance, AlmacenDeClaves, AuthMode, Llamante, NuevaClave, Permiso,
    auditoria::{Auditoria, Consulta},
    domain::{ClaveApi, TipoClave},
    http::DEFAULT_FAILURES_PER_MINUTE,
    infrastructure::{almacen, kubernetes::Kubernetes},
};
use axum::{Router, body::Body, http::Request, routing::get};
use http_body_util::BodyExt;
use platform::http::Problem;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

fn nueva(afiliado: &str, tipo: TipoClave, alcances: &[Alcance]) -> NuevaClave {
    NuevaClave {
        id_afiliado: afiliado.to_owned(),
        tipo,
        alcances: alcances.iter().copied().collect(),
        descripcion: "prueba".into(),
        expira: None,
        creada_por: "tests".into(),
    }
}

/// A route a partner reads its own payments on and an operator everyone's, and an operator
/// action.
fn rutas(acceso: &Acceso) -> Router {
    acceso.proteger(
        Router::new()
            .route(
                "/pagos",
                get(|llamante: Llamante| async move {
                    let ambito = llamante
                        .ambito(Alcance::PagosLectura, Permiso::LEER_PAGOS)
                        .await?;
                    Ok::<_, Problem>(ambito.afiliado().unwrap_or("*").to_owned())
                }),
            )
            .route(
                "/revertir",
                get(|llamante: Llamante| async move {
                    llamante.operador(Permiso::REVERTIR_PAGO, "p1").await?;
                    Ok::<_, Problem>(llamante.principal.actor())
                }),
            ),
    )
}

/// Sends a GET of `uri` with `credencial` (as a bearer) and `cabeceras`.
async fn enviar(
    router: &Router,
    uri: &str,
    credencial: Option<&str>,
    cabeceras: &[(&str, String)],
) -> axum::response::Response {
    let mut request = Request::builder().uri(uri);
    if let Some(credencial) = credencial {
        request = request.header("authorization", format!("Bearer {credencial}"));
    }
    for (nombre, valor) in cabeceras {
        request = request.header(*nombre, valor);
    }
    router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn pedir(
    router: &Router,
    uri: &str,
    credencial: Option<&str>,
) -> (u16, String, Option<String>) {
    let response = enviar(router, uri, credencial, &[]).await;
    let status = response.status().as_u16();
    let www = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), www)
}

/// The key store on `pool`, and [`rutas`] with access enforced on it, no operator authority.
async fn exigidas(pool: &PgPool) -> (AlmacenDeClaves, Router) {
    let almacen = store(pool).await;
    let acceso = Acceso::with_store(
        AuthMode::Enforce,
        pool.clone(),
        None,
        CancellationToken::new(),
    );
    (almacen, rutas(&acceso))
}

async fn store(pool: &PgPool) -> AlmacenDeClaves {
    almacen::migrate(pool).await.expect("acceso migrates");
    AlmacenDeClaves::new(pool.clone())
}

#[sqlx::test(migrations = false)]
async fn a_key_is_stored_only_as_its_hash_and_shown_once(pool: PgPool) {
    let almacen = store(&pool).await;
    let (clave, registro) = almacen
        .crear(nueva("AFILIADO_A", TipoClave::Sk, &[]))
        .await
        .unwrap();
    assert_eq!(registro.id_clave, clave.id());
    let columnas: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', id_clave, id_afiliado, tipo, encode(huella, 'escape'), \
         array_to_string(alcances, ','), descripcion, creada_por) FROM acceso.claves_api",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(columnas.len(), 1);
    let secreto = &clave.revelar()[14..];
    assert!(
        !columnas[0].contains(secreto),
        "the key's secret part is stored: {}",
        columnas[0]
    );
    // A secret key records every scope; a restricted key without one is refused.
    assert_eq!(registro.alcances.len(), Alcance::TODOS.len());
    assert!(almacen.crear(nueva("A", TipoClave::Rk, &[])).await.is_err());
    assert!(almacen.crear(nueva("", TipoClave::Sk, &[])).await.is_err());
}

#[sqlx::test(migrations = false)]
async fn a_partner_reads_its_own_and_needs_the_scope(pool: PgPool) {
    let (almacen, rutas) = exigidas(&pool).await;
    let (secreta, _) = almacen
        .crear(nueva("AFILIADO_A", TipoClave::Sk, &[]))
        .await
        .unwrap();
    let (sin_pagos, _) = almacen
        .crear(nueva(
            "AFILIADO_A",
            TipoClave::Rk,
            &[Alcance::EventosEscritura],
        ))
        .await
        .unwrap();

    let (status, body, _) = pedir(&rutas, "/pagos", Some(secreta.revelar())).await;
    assert_eq!((status, body.as_str()), (200, "AFILIADO_A"));

    let (status, body, _) = pedir(&rutas, "/pagos", Some(sin_pagos.revelar())).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("payments:read"), "{body}");

    // A partner is no operator.
    let (status, _, _) = pedir(&rutas, "/revertir", Some(secreta.revelar())).await;
    assert_eq!(status, 403);
    let denegadas = Auditoria::new(pool.clone())
        .consultar(&Consulta {
            actor: Some(secreta.id().to_owned()),
            limite: 10,
            ..Consulta::default()
        })
        .await
        .unwrap();
    assert_eq!(denegadas.len(), 1);
    assert_eq!(denegadas[0].accion, "create payments/revert");
    assert_eq!(denegadas[0].resultado, "denegado");
}

#[sqlx::test(migrations = false)]
async fn missing_malformed_and_unknown_credentials_are_401_with_the_reason(pool: PgPool) {
    let (almacen, rutas) = exigidas(&pool).await;
    let (clave, _) = almacen.crear(nueva("A", TipoClave::Sk, &[])).await.unwrap();
    let texto = clave.revelar();
    let typo = format!(
        "{}{}",
        &texto[..20],
        if &texto[20..21] == "x" { "y" } else { "x" }
    ) + &texto[21..];
    let otra_no_guardada = ClaveApi::generar(TipoClave::Sk);
    let cases: [(Option<&str>, &str); 5] = [
        (None, "Falta la credencial"),
        (Some("sk_test_123456789"), "no es una clave de API"),
        (Some(&typo), "suma de control"),
        (Some(otra_no_guardada.revelar()), "no existe"),
        (Some(&texto[..30]), "longitud"),
    ];
    for (credencial, motivo) in cases {
        let (status, body, www) = pedir(&rutas, "/pagos", credencial).await;
        assert_eq!(status, 401, "{credencial:?}: {body}");
        assert!(body.contains(motivo), "{credencial:?}: {body}");
        assert_eq!(www.as_deref(), Some("Bearer realm=\"aeropartners\""));
    }
}

/// Calls `/pagos` from the client address `desde` (as the gateway names it, last in
/// X-Forwarded-For, after whatever the client claimed).
async fn pedir_desde(
    router: &Router,
    desde: &str,
    credencial: Option<&str>,
) -> (u16, Option<String>) {
    let cadena = format!("203.0.113.9, {desde}");
    let response = enviar(router, "/pagos", credencial, &[("x-forwarded-for", cadena)]).await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), retry_after)
}

#[sqlx::test(migrations = false)]
async fn an_address_that_sends_too_many_bad_credentials_is_refused_unread(pool: PgPool) {
    let (almacen, rutas) = exigidas(&pool).await;
    let (buena, _) = almacen.crear(nueva("A", TipoClave::Sk, &[])).await.unwrap();
    let inventada = ClaveApi::generar(TipoClave::Sk);
    // Asking without a credential costs nothing and is never held against the address.
    for _ in 0..2 * DEFAULT_FAILURES_PER_MINUTE {
        assert_eq!(pedir_desde(&rutas, "198.51.100.7", None).await.0, 401);
    }
    assert_eq!(
        pedir_desde(&rutas, "198.51.100.7", Some(buena.revelar()))
            .await
            .0,
        200
    );
    for _ in 0..DEFAULT_FAILURES_PER_MINUTE {
        let (status, _) = pedir_desde(&rutas, "198.51.100.7", Some(inventada.revelar())).await;
        assert_eq!(status, 401, "within the budget");
    }
    let (status, retry_after) =
        pedir_desde(&rutas, "198.51.100.7", Some(inventada.revelar())).await;
    assert_eq!(status, 401, "the failure past the budget is still judged");
    assert_eq!(retry_after, None);
    // From now on nothing from that address is read, not even a good key.
    let (status, retry_after) = pedir_desde(&rutas, "198.51.100.7", Some(buena.revelar())).await;
    assert_eq!(status, 429);
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    // Another address (the first hop of X-Forwarded-For is the client's to forge; the last,
    // the gateway's, is what counts).
    assert_eq!(
        pedir_desde(&rutas, "198.51.100.8", Some(buena.revelar()))
            .await
            .0,
        200
    );
}

#[sqlx::test(migrations = false)]
async fn a_revoked_key_is_refused_by_every_replica_without_a_restart(pool: PgPool) {
    let almacen = store(&pool).await;
    let shutdown = CancellationToken::new();
    // Two replicas, each with its own cache.
    let replicas: Vec<Router> = (0..2)
        .map(|_| {
            rutas(&Acceso::with_store(
                AuthMode::Enforce,
                pool.clone(),
                None,
                shutdown.clone(),
            ))
        })
        .collect();
    let (clave, _) = almacen.crear(nueva("A", TipoClave::Sk, &[])).await.unwrap();
    for replica in &replicas {
        assert_eq!(pedir(replica, "/pagos", Some(clave.revelar())).await.0, 200);
    }
    almacen.revocar(clave.id(), "tests").await.unwrap().unwrap();
    // Well under the cache's 30 s TTL: the NOTIFY evicts it.
    let started = std::time::Instant::now();
    for replica in &replicas {
        loop {
            let (status, body, _) = pedir(replica, "/pagos", Some(clave.revelar())).await;
            if status == 401 {
                assert!(body.contains("revocada"), "{body}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "still accepted {:?} after revocation",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "revocation seen by both replicas after {:?}",
        started.elapsed()
    );
    // Revoking again keeps the first revocation's author.
    let again = almacen
        .revocar(clave.id(), "someone-else")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revocada_por.as_deref(), Some("tests"));
    assert!(
        almacen
            .revocar("ap_sk_00000000", "tests")
            .await
            .unwrap()
            .is_none()
    );
    shutdown.cancel();
}

#[sqlx::test(migrations = false)]
async fn development_mode_lets_the_anonymous_through_and_still_checks_what_is_sent(pool: PgPool) {
    store(&pool).await;
    let acceso = Acceso::with_store(
        AuthMode::Development,
        pool.clone(),
        None,
        CancellationToken::new(),
    );
    let rutas = rutas(&acceso);
    let (status, body, _) = pedir(&rutas, "/pagos", None).await;
    assert_eq!((status, body.as_str()), (200, "*"));
    let (status, _, _) = pedir(&rutas, "/revertir", None).await;
    assert_eq!(status, 200);
    let (status, _, _) = pedir(&rutas, "/pagos", Some("ap_sk_wrong")).await;
    assert_eq!(status, 401);
    // X-Api-Key carries partner keys only: the original collector's plain key there is not a
    // credential of ours (nor an operator's token), a partner key there is checked.
    let plana = enviar(
        &rutas,
        "/pagos",
        None,
        &[("x-api-key", "sk_test_123456789".into())],
    )
    .await;
    assert_eq!(plana.status(), 200);
    let mala = enviar(
        &rutas,
        "/pagos",
        None,
        &[("x-api-key", "ap_sk_wrong".into())],
    )
    .await;
    assert_eq!(mala.status(), 401);
}

/// The chart sets `AUTH_TOKEN_AUDIENCES=""` by default: that is no audience, not one empty
/// audience no token carries (every operator was refused on the cluster until this).
#[test]
fn an_empty_audience_list_means_the_api_servers_own() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        auth: access::AuthConfig,
    }
    let empty = Cli::try_parse_from(["t", "--auth-token-audiences="]).unwrap();
    assert_eq!(empty.auth.audiences(), Vec::<String>::new());
    let two = Cli::try_parse_from(["t", "--auth-token-audiences=a, b"]).unwrap();
    assert_eq!(two.auth.audiences(), ["a", "b"]);
}

#[test]
fn development_mode_refuses_a_listener_off_loopback() {
    let config = access::AuthConfig {
        auth_mode: AuthMode::Development,
        ..access::AuthConfig::default()
    };
    assert!(
        config
            .comprobar(&[
                "127.0.0.1:8000".parse().unwrap(),
                "[::1]:8010".parse().unwrap()
            ])
            .is_ok()
    );
    let refused = config
        .comprobar(&[
            "127.0.0.1:8000".parse().unwrap(),
            "0.0.0.0:8010".parse().unwrap(),
        ])
        .unwrap_err()
        .to_string();
    assert!(refused.contains("0.0.0.0:8010"), "{refused}");
    let enforce = access::AuthConfig::default();
    assert!(
        enforce
            .comprobar(&["0.0.0.0:8010".parse().unwrap()])
            .is_ok()
    );
}

/// Operators are the test API server's: a service account's token is reviewed, and RBAC on the
/// `aeropartners.io` virtual resources decides.
#[sqlx::test(migrations = false)]
async fn an_operator_is_who_kubernetes_says_with_the_rights_rbac_gives(pool: PgPool) {
    store(&pool).await;
    assert!(
        std::env::var("KUBECONFIG").is_ok(),
        "KUBECONFIG must point at the test kube-apiserver (make test starts one)"
    );
    let namespace = format!("access-{}", uuid::Uuid::new_v4().simple());
    let kubectl = |args: &[&str], stdin: Option<&str>| testkit::kubectl(args, stdin).unwrap();
    kubectl(&["create", "namespace", &namespace], None);
    for sa in ["viewer", "operator", "nobody"] {
        kubectl(&["-n", &namespace, "create", "serviceaccount", sa], None);
    }
    // The chart's two Roles, in their shape (docs/security.md).
    let roles = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: viewer, namespace: {namespace}}}
rules:
- apiGroups: [aeropartners.io]
  resources: [payments]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: operator, namespace: {namespace}}}
rules:
- apiGroups: [aeropartners.io]
  resources: [payments, payments/revert]
  verbs: [get, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: viewer, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: viewer}}
subjects: [{{kind: ServiceAccount, name: viewer, namespace: {namespace}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: operator, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: operator}}
subjects: [{{kind: ServiceAccount, name: operator, namespace: {namespace}}}]
"#
    );
    kubectl(&["apply", "-f", "-"], Some(&roles));
    let token = |sa: &str| {
        kubectl(&["-n", &namespace, "create", "token", sa], None)
            .trim()
            .to_owned()
    };
    let (viewer, operator, nobody) = (token("viewer"), token("operator"), token("nobody"));

    let client = kube::Client::try_default().await.unwrap();
    let autoridad = Arc::new(Kubernetes::new(client, namespace.clone(), Vec::new()));
    let acceso = Acceso::with_store(
        AuthMode::Enforce,
        pool.clone(),
        Some(autoridad),
        CancellationToken::new(),
    );
    let rutas = rutas(&acceso);

    let (status, body, _) = pedir(&rutas, "/pagos", Some(&viewer)).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "*"),
        "a viewer reads every affiliate's"
    );
    let (status, body, _) = pedir(&rutas, "/revertir", Some(&viewer)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("create payments/revert"), "{body}");
    let (status, body, _) = pedir(&rutas, "/revertir", Some(&operator)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!("system:serviceaccount:{namespace}:operator"));
    let (status, _, _) = pedir(&rutas, "/pagos", Some(&nobody)).await;
    assert_eq!(status, 403, "authenticated, but no Role");
    let (status, body, _) = pedir(&rutas, "/pagos", Some("not-a-token")).await;
    assert_eq!(status, 401, "{body}");

    let auditoria = Auditoria::new(pool.clone())
        .consultar(&Consulta {
            limite: 10,
            ..Consulta::default()
        })
        .await
        .unwrap();
    assert!(
        auditoria.iter().any(|e| e.actor.ends_with(":viewer")
            && e.accion == "create payments/revert"
            && e.resultado == "denegado"),
        "{auditoria:?}"
    );
    kubectl(&["delete", "namespace", &namespace, "--wait=false"], None);
}
