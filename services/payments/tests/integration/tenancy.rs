//! Who may do what on `/pagos`, with access enforced as in a cluster: every route needs a
//! credential, the affiliate comes from the key, another affiliate's payment does not exist,
//! references and idempotency keys are each affiliate's own, and reverting is an operator's.

use access::Alcance;
use platform::messaging::LazyBroker;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::acceso::{self, Exigida, Regla, TablaDeRutas};

use crate::common::*;

struct Enforced(Exigida);

impl std::ops::Deref for Enforced {
    type Target = Exigida;
    fn deref(&self) -> &Exigida {
        &self.0
    }
}

impl Enforced {
    async fn new(o: PgPoolOptions, c: PgConnectOptions) -> Self {
        Self(
            Exigida::new(migrated_pool(o, c).await, |pool, acceso| {
                payments::app(pool.clone(), LazyBroker::default(), &http_config(), acceso)
            })
            .await,
        )
    }

    /// A new key of `afiliado` (secret with no scopes given, else restricted to them).
    async fn clave(&self, afiliado: &str, alcances: &[Alcance]) -> String {
        if alcances.is_empty() {
            self.claves.secreta(afiliado).await
        } else {
            self.claves.restringida(afiliado, alcances).await
        }
    }

    /// [`Exigida::call`] with the credential last, as these tests read best.
    async fn call(&self, method: &str, uri: &str, body: Option<&str>, auth: &str) -> Answer {
        acceso::como(&self.app, auth, method, uri, body).await
    }
}

fn cuerpo(afiliado: Option<&str>, referencia: &str) -> String {
    match afiliado {
        Some(afiliado) => format!(
            r#"{{"id_afiliado":"{afiliado}","monto":10,"moneda":"USD","referencia_pago":"{referencia}"}}"#
        ),
        None => format!(r#"{{"monto":10,"moneda":"USD","referencia_pago":"{referencia}"}}"#),
    }
}

#[sqlx::test(migrations = false)]
async fn every_route_needs_a_credential(o: PgPoolOptions, c: PgConnectOptions) {
    let t = Enforced::new(o, c).await;
    let id = uuid::Uuid::new_v4();
    for (method, uri, body) in [
        ("POST", "/pagos".to_owned(), Some(cuerpo(Some("A"), "r1"))),
        ("GET", "/pagos".to_owned(), None),
        ("GET", format!("/pagos/{id}"), None),
        ("GET", format!("/pagos/{id}/eventos"), None),
        ("GET", "/pagos/outbox/estadisticas".to_owned(), None),
        ("GET", "/pagos/estadisticas/por-minuto".to_owned(), None),
        (
            "PATCH",
            format!("/pagos/{id}/revertir"),
            Some(r#"{"motivo":"x"}"#.to_owned()),
        ),
    ] {
        let answer = t.call(method, &uri, body.as_deref(), "").await;
        assert_eq!(answer.status, 401, "{method} {uri}: {:?}", answer.body);
        assert_eq!(
            answer.headers["www-authenticate"],
            "Bearer realm=\"aeropartners\""
        );
    }
    assert_eq!(count(&t.pool, NOTHING_STORED).await, 0);
    // The probes stay open: the kubelet has no key.
    assert_eq!(t.call("GET", "/ready", None, "").await.status, 200);
}

const NOTHING_STORED: &str = "SELECT (SELECT count(*) FROM pagos) + (SELECT count(*) FROM outbox)";

#[sqlx::test(migrations = false)]
async fn the_affiliate_is_the_keys_never_the_bodys(o: PgPoolOptions, c: PgConnectOptions) {
    let t = Enforced::new(o, c).await;
    let a = t.clave("AFILIADO_A", &[]).await;

    let sin_afiliado = t
        .call("POST", "/pagos", Some(&cuerpo(None, "r1")), &a)
        .await;
    assert_eq!(sin_afiliado.status, 200, "{:?}", sin_afiliado.body);
    assert_eq!(sin_afiliado.body["id_afiliado"], "AFILIADO_A");

    let mismo = t
        .call(
            "POST",
            "/pagos",
            Some(&cuerpo(Some("AFILIADO_A"), "r2")),
            &a,
        )
        .await;
    assert_eq!(mismo.status, 200);

    let otro = t
        .call(
            "POST",
            "/pagos",
            Some(&cuerpo(Some("AFILIADO_B"), "r3")),
            &a,
        )
        .await;
    assert_eq!(otro.status, 403, "{:?}", otro.body);
    assert!(
        otro.body["detail"].as_str().unwrap().contains("AFILIADO_B"),
        "{:?}",
        otro.body
    );
    assert_eq!(
        count(
            &t.pool,
            "SELECT count(*) FROM pagos WHERE id_afiliado <> 'AFILIADO_A'"
        )
        .await,
        0
    );

    // The platform's commission references are not a partner's to take.
    let comision = t
        .call("POST", "/pagos", Some(&cuerpo(None, "COM-0123")), &a)
        .await;
    assert_eq!(comision.status, 400, "{:?}", comision.body);
    assert_eq!(comision.body["errors"][0]["field"], "referencia_pago");
}

#[sqlx::test(migrations = false)]
async fn a_scope_is_needed_for_each_kind_of_call(o: PgPoolOptions, c: PgConnectOptions) {
    let t = Enforced::new(o, c).await;
    let solo_lectura = t.clave("A", &[Alcance::PagosLectura]).await;
    let solo_eventos = t.clave("A", &[Alcance::EventosEscritura]).await;
    let escritura = t.clave("A", &[Alcance::PagosEscritura]).await;

    let answer = t
        .call("POST", "/pagos", Some(&cuerpo(None, "r1")), &solo_lectura)
        .await;
    assert_eq!(answer.status, 403, "{:?}", answer.body);
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("payments:write")
    );
    assert_eq!(
        t.call("GET", "/pagos", None, &solo_eventos).await.status,
        403
    );
    assert_eq!(
        t.call("GET", "/pagos", None, &solo_lectura).await.status,
        200
    );
    let creado = t
        .call("POST", "/pagos", Some(&cuerpo(None, "r1")), &escritura)
        .await;
    assert_eq!(creado.status, 200);
    // Operator routes refuse every partner key, however broad.
    let secreta = t.clave("A", &[]).await;
    let id = creado.body["id_pago"].as_str().unwrap();
    let revertir = t
        .call(
            "PATCH",
            &format!("/pagos/{id}/revertir"),
            Some(r#"{"motivo":"x"}"#),
            &secreta,
        )
        .await;
    assert_eq!(revertir.status, 403, "{:?}", revertir.body);
    assert_eq!(
        t.call("GET", "/pagos/outbox/estadisticas", None, &secreta)
            .await
            .status,
        403
    );
}

#[sqlx::test(migrations = false)]
async fn another_affiliates_payment_does_not_exist(o: PgPoolOptions, c: PgConnectOptions) {
    let t = Enforced::new(o, c).await;
    let (a, b) = (t.clave("A", &[]).await, t.clave("B", &[]).await);
    let de_b = t
        .call("POST", "/pagos", Some(&cuerpo(None, "rb")), &b)
        .await;
    let id_b = de_b.body["id_pago"].as_str().unwrap().to_owned();
    t.call("POST", "/pagos", Some(&cuerpo(None, "ra")), &a)
        .await;

    for uri in [format!("/pagos/{id_b}"), format!("/pagos/{id_b}/eventos")] {
        let ajeno = t.call("GET", &uri, None, &a).await;
        assert_eq!(ajeno.status, 404, "{uri}: {:?}", ajeno.body);
        let inexistente = t
            .call(
                "GET",
                &uri.replace(&id_b, &uuid::Uuid::new_v4().to_string()),
                None,
                &a,
            )
            .await;
        assert_eq!(
            ajeno.body["detail"], inexistente.body["detail"],
            "indistinguishable"
        );
        assert_eq!(t.call("GET", &uri, None, &b).await.status, 200);
    }

    let lista = t.call("GET", "/pagos", None, &a).await;
    let afiliados: Vec<&str> = lista.body["pagos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id_afiliado"].as_str().unwrap())
        .collect();
    assert_eq!(afiliados, ["A"]);
    let filtrada = t.call("GET", "/pagos?id_afiliado=B", None, &a).await;
    assert_eq!(filtrada.status, 403, "{:?}", filtrada.body);
    let minutos = t
        .call("GET", "/pagos/estadisticas/por-minuto?minutos=2", None, &a)
        .await;
    let total: i64 = minutos.body["minutos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["total"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 1, "only A's own payment is counted");
}

#[sqlx::test(migrations = false)]
async fn references_and_idempotency_keys_are_each_affiliates_own(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let t = Enforced::new(o, c).await;
    let (a, b) = (t.clave("A", &[]).await, t.clave("B", &[]).await);
    // The same reference: two payments, neither learns of the other.
    let de_a = t
        .call("POST", "/pagos", Some(&cuerpo(None, "REF-1")), &a)
        .await;
    let de_b = t
        .call(
            "POST",
            "/pagos",
            Some(r#"{"monto":99,"moneda":"EUR","referencia_pago":"REF-1"}"#),
            &b,
        )
        .await;
    assert_eq!((de_a.status, de_b.status), (200, 200), "{:?}", de_b.body);
    assert_ne!(de_a.body["id_pago"], de_b.body["id_pago"]);
    assert!(de_b.headers.get("idempotent-replayed").is_none());
    // A repeat within one affiliate is still the original.
    let repetido = t
        .call("POST", "/pagos", Some(&cuerpo(None, "REF-1")), &a)
        .await;
    assert_eq!(repetido.body["id_pago"], de_a.body["id_pago"]);
    assert_eq!(repetido.headers["idempotent-replayed"], "true");

    // The same Idempotency-Key with other bodies: no 422, no replay of the other's answer.
    let con_clave = |auth: &str, referencia: &str| {
        let (auth, referencia) = (auth.to_owned(), referencia.to_owned());
        let app = t.app.clone();
        async move {
            call(
                &app,
                "POST",
                "/pagos",
                Some(&cuerpo(None, &referencia)),
                &[("authorization", auth.as_str()), ("idempotency-key", "k-1")],
            )
            .await
        }
    };
    let ka = con_clave(&a, "REF-A2").await;
    let kb = con_clave(&b, "REF-B2").await;
    assert_eq!((ka.status, kb.status), (200, 200), "{:?}", kb.body);
    assert_eq!(kb.body["referencia_pago"], "REF-B2");
    assert_eq!(count(&t.pool, "SELECT count(*) FROM pagos").await, 4);
}

/// Every operation of the payments document, and its rule. A route added without a rule here
/// fails [`every_documented_route_is_guarded_by_its_rule`].
const REGLAS: [(&str, &str, Regla); 7] = [
    ("post", "/pagos", Regla::Afiliado(Alcance::PagosEscritura)),
    ("get", "/pagos", Regla::Afiliado(Alcance::PagosLectura)),
    (
        "get",
        "/pagos/{id_pago}",
        Regla::Afiliado(Alcance::PagosLectura),
    ),
    (
        "get",
        "/pagos/{id_pago}/eventos",
        Regla::Afiliado(Alcance::PagosLectura),
    ),
    (
        "get",
        "/pagos/estadisticas/por-minuto",
        Regla::Afiliado(Alcance::PagosLectura),
    ),
    ("get", "/pagos/outbox/estadisticas", Regla::Operador),
    ("patch", "/pagos/{id_pago}/revertir", Regla::Operador),
];

/// The table generated from the service's own OpenAPI document: for every operation,
/// anonymous is 401, a key without the rule's scope (or any key, on an operator route) is 403,
/// and another affiliate's payment is 404. The document itself says each operation takes the
/// credential.
#[sqlx::test(migrations = false)]
async fn every_documented_route_is_guarded_by_its_rule(o: PgPoolOptions, c: PgConnectOptions) {
    let t = Enforced::new(o, c).await;
    let secreta_ajena = t.clave(TablaDeRutas::AJENO, &[]).await;
    let ajeno = t
        .call("POST", "/pagos", Some(&cuerpo(None, "rb")), &secreta_ajena)
        .await;
    let id_ajeno = ajeno.body["id_pago"].as_str().unwrap().to_owned();
    let cuerpo = |method: &str, _: &str| match method {
        "post" => Some(cuerpo(None, "r-tabla")),
        "patch" => Some(r#"{"motivo":"tabla"}"#.to_owned()),
        _ => None,
    };
    let tabla = TablaDeRutas {
        app: &t.app,
        reglas: &REGLAS,
        parametros: &[("id_pago", id_ajeno)],
        cuerpo: &cuerpo,
    };
    assert_eq!(tabla.comprobar(&t.claves).await, REGLAS.len());
    assert_eq!(count(&t.pool, "SELECT count(*) FROM pagos").await, 1);
}
