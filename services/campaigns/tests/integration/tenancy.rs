//! Who may do what on `/campaigns`, with access enforced as in a cluster: the affiliate comes
//! from the key, a partner sees and changes only its own campaigns (another's does not
//! exist), lists and statistics are its own, and `Idempotency-Key`s are each affiliate's.

use access::Alcance;
use platform::messaging::LazyBroker;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::acceso::{Exigida, Regla, TablaDeRutas};

use crate::common::*;

async fn exigida(o: PgPoolOptions, c: PgConnectOptions) -> Exigida {
    Exigida::new(migrated_pool(o, c).await, |pool, acceso| {
        campaigns::app(pool.clone(), LazyBroker::default(), &http_config(), acceso)
    })
    .await
}

/// Creates a campaign of the key's affiliate and returns its id.
async fn crear(t: &Exigida, auth: &str, afiliado: &str) -> String {
    let answer = t
        .call(
            auth,
            "POST",
            "/campaigns",
            Some(&campana_json(afiliado, "100")),
        )
        .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer.body["id"].as_str().unwrap().to_owned()
}

/// A creation body that names no affiliate.
fn sin_afiliado() -> String {
    let mut body: serde_json::Value = serde_json::from_str(&campana_json("x", "100")).unwrap();
    body.as_object_mut().unwrap().remove("id_afiliado");
    body.to_string()
}

#[sqlx::test(migrations = false)]
async fn the_affiliate_is_the_keys_never_the_bodys(o: PgPoolOptions, c: PgConnectOptions) {
    let t = exigida(o, c).await;
    let a = t.claves.secreta("A").await;

    let sin = t
        .call(&a, "POST", "/campaigns", Some(&sin_afiliado()))
        .await;
    assert_eq!(sin.status, 201, "{:?}", sin.body);
    assert_eq!(sin.body["id_afiliado"], "A");

    let otro = t
        .call(&a, "POST", "/campaigns", Some(&campana_json("B", "100")))
        .await;
    assert_eq!(otro.status, 403, "{:?}", otro.body);
    assert!(otro.body["detail"].as_str().unwrap().contains("'B'"));

    let blanco = t
        .call(&a, "POST", "/campaigns", Some(&campana_json(" ", "100")))
        .await;
    assert_eq!(blanco.status, 400, "{:?}", blanco.body);

    let solo_lectura = t.claves.restringida("A", &[Alcance::CampanasLectura]).await;
    let sin_alcance = t
        .call(&solo_lectura, "POST", "/campaigns", Some(&sin_afiliado()))
        .await;
    assert_eq!(sin_alcance.status, 403);
    assert!(
        sin_alcance.body["detail"]
            .as_str()
            .unwrap()
            .contains("campaigns:write")
    );
    assert_eq!(count(&t.pool, "SELECT count(*) FROM campanas").await, 1);
}

#[sqlx::test(migrations = false)]
async fn a_partner_changes_only_its_own_campaigns(o: PgPoolOptions, c: PgConnectOptions) {
    let t = exigida(o, c).await;
    let (a, b) = (t.claves.secreta("A").await, t.claves.secreta("B").await);
    let de_b = crear(&t, &b, "B").await;

    for (method, accion, body) in [
        ("PATCH", "activate", None),
        ("PATCH", "cancel", None),
        ("PATCH", "budget", Some(r#"{"monto":1,"moneda":"USD"}"#)),
    ] {
        let ajeno = t
            .call(&a, method, &format!("/campaigns/{de_b}/{accion}"), body)
            .await;
        assert_eq!(ajeno.status, 404, "{accion}: {:?}", ajeno.body);
        // The same answer as for a campaign that does not exist: nothing leaks.
        let inexistente = t
            .call(
                &a,
                method,
                &format!("/campaigns/{}/{accion}", uuid::Uuid::new_v4()),
                body,
            )
            .await;
        assert_eq!(ajeno.body["detail"], inexistente.body["detail"]);
    }
    let intacta = t.call(&b, "GET", &format!("/campaigns/{de_b}"), None).await;
    assert_eq!(intacta.body["estado"], "CREATED");
    assert_eq!(intacta.body["version"], 1);

    let activada = t
        .call(&b, "PATCH", &format!("/campaigns/{de_b}/activate"), None)
        .await;
    assert_eq!(activada.status, 200, "{:?}", activada.body);
    assert_eq!(activada.body["estado"], "ACTIVE");
}

#[sqlx::test(migrations = false)]
async fn lists_and_statistics_are_the_callers_own(o: PgPoolOptions, c: PgConnectOptions) {
    let t = exigida(o, c).await;
    let (a, b) = (t.claves.secreta("A").await, t.claves.secreta("B").await);
    let de_a = crear(&t, &a, "A").await;
    crear(&t, &b, "B").await;
    crear(&t, &b, "B").await;

    let lista = t.call(&a, "GET", "/campaigns", None).await;
    assert_eq!(lista.status, 200);
    assert_eq!(lista.body["total"], 1);
    assert_eq!(lista.body["campanas"][0]["id"], de_a.as_str());
    let pedida_ajena = t.call(&a, "GET", "/campaigns?id_afiliado=B", None).await;
    assert_eq!(pedida_ajena.status, 403, "{:?}", pedida_ajena.body);

    let stats_b = t.call(&b, "GET", "/campaigns/stats/general", None).await;
    assert_eq!(stats_b.status, 200);
    assert_eq!(stats_b.body["total_campanas"], 2);
    let stats_ajenas = t
        .call(&a, "GET", "/campaigns/stats/general?id_afiliado=B", None)
        .await;
    assert_eq!(stats_ajenas.status, 403);

    let lectora = t.claves.restringida("A", &[Alcance::CampanasLectura]).await;
    let metricas = t
        .call(&lectora, "GET", &format!("/campaigns/{de_a}/metrics"), None)
        .await;
    assert_eq!(metricas.status, 200, "{:?}", metricas.body);
    let cambio = t
        .call(&lectora, "PATCH", &format!("/campaigns/{de_a}/pause"), None)
        .await;
    assert_eq!(cambio.status, 403);
}

#[sqlx::test(migrations = false)]
async fn idempotency_keys_are_each_affiliates(o: PgPoolOptions, c: PgConnectOptions) {
    let t = exigida(o, c).await;
    let (a, b) = (t.claves.secreta("A").await, t.claves.secreta("B").await);
    // One body, byte for byte: a replay must send the same request.
    let cuerpo = sin_afiliado();
    let crear = |auth: String| {
        let (app, cuerpo) = (t.app.clone(), cuerpo.clone());
        async move {
            call(
                &app,
                "POST",
                "/campaigns",
                Some(&cuerpo),
                &[("authorization", auth.as_str()), ("idempotency-key", "k-1")],
            )
            .await
        }
    };
    let (de_a, de_b) = (crear(a.clone()).await, crear(b).await);
    assert_eq!((de_a.status, de_b.status), (201, 201), "{:?}", de_b.body);
    // B's answer is B's campaign, not a replay of A's.
    assert_eq!(de_b.body["id_afiliado"], "B");
    assert_ne!(de_a.body["id"], de_b.body["id"]);
    let repetida = crear(a).await;
    assert_eq!(repetida.body["id"], de_a.body["id"]);
    assert_eq!(count(&t.pool, "SELECT count(*) FROM campanas").await, 2);
}

/// Every operation of the campaigns document, and its rule. A route added without a rule here
/// fails [`every_documented_route_is_guarded_by_its_rule`].
const REGLAS: [(&str, &str, Regla); 10] = [
    (
        "post",
        "/campaigns",
        Regla::Afiliado(Alcance::CampanasEscritura),
    ),
    (
        "get",
        "/campaigns",
        Regla::Afiliado(Alcance::CampanasLectura),
    ),
    (
        "get",
        "/campaigns/stats/general",
        Regla::Afiliado(Alcance::CampanasLectura),
    ),
    (
        "get",
        "/campaigns/{id}",
        Regla::Afiliado(Alcance::CampanasLectura),
    ),
    (
        "patch",
        "/campaigns/{id}/activate",
        Regla::Afiliado(Alcance::CampanasEscritura),
    ),
    (
        "patch",
        "/campaigns/{id}/pause",
        Regla::Afiliado(Alcance::CampanasEscritura),
    ),
    (
        "patch",
        "/campaigns/{id}/finish",
        Regla::Afiliado(Alcance::CampanasEscritura),
    ),
    (
        "patch",
        "/campaigns/{id}/cancel",
        Regla::Afiliado(Alcance::CampanasEscritura),
    ),
    (
        "patch",
        "/campaigns/{id}/budget",
        Regla::Afiliado(Alcance::CampanasEscritura),
    ),
    (
        "get",
        "/campaigns/{id}/metrics",
        Regla::Afiliado(Alcance::CampanasLectura),
    ),
];

#[sqlx::test(migrations = false)]
async fn every_documented_route_is_guarded_by_its_rule(o: PgPoolOptions, c: PgConnectOptions) {
    let t = exigida(o, c).await;
    let ajena = t.claves.secreta(TablaDeRutas::AJENO).await;
    let id = crear(&t, &ajena, TablaDeRutas::AJENO).await;
    let cuerpo = |method: &str, path: &str| match (method, path) {
        ("post", _) => Some(sin_afiliado()),
        (_, "/campaigns/{id}/budget") => Some(r#"{"monto":5,"moneda":"USD"}"#.to_owned()),
        _ => None,
    };
    let tabla = TablaDeRutas {
        app: &t.app,
        reglas: &REGLAS,
        parametros: &[("id", id.clone())],
        cuerpo: &cuerpo,
    };
    assert_eq!(tabla.comprobar(&t.claves).await, REGLAS.len());
    // Nobody but its owner touched the other affiliate's campaign.
    let intacta = t
        .call(&ajena, "GET", &format!("/campaigns/{id}"), None)
        .await;
    assert_eq!(intacta.body["version"], 1);
    assert_eq!(count(&t.pool, "SELECT count(*) FROM campanas").await, 1);
}
