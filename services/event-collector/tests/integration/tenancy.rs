//! Who may send and read events, with access enforced as in a cluster: every event needs a
//! partner key (or a webhook's signature), a key speaks only for its own affiliate and within
//! its scopes, the original's plain `api_keys` are refused, and statuses, statistics, failures
//! and allowances are each affiliate's own; retrying is an operator's.

use access::Alcance;
use event_collector::domain::firma::firmar_con_tiempo;
use platform::messaging::LazyBroker;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use testkit::acceso::{self, Claves, Regla, TablaDeRutas};

use crate::common::*;

/// Affiliates as a cluster would configure them: a webhook sender, and unknown affiliates
/// refused (a key makes an affiliate known).
const AFILIADOS: &str = r#"
niveles: { basic: { eventos_por_minuto: 1000 } }
aceptar_desconocidos: false
afiliados:
  HOOK: { secretos_webhook: [whsec_prueba] }
  LEGADO: { api_keys: [sk_legado_123] }
"#;

struct Enforced {
    app: platform::http::App,
    pool: PgPool,
    claves: Claves,
    _writers: tokio_util::sync::DropGuard,
}

impl Enforced {
    async fn new(o: PgPoolOptions, c: PgConnectOptions) -> Self {
        let pool = migrated_pool(o, c).await;
        let acceso = acceso::exigido(&pool).await;
        let (app, writers) = replica_with_access(
            &pool,
            LazyBroker::default(),
            AFILIADOS,
            &config(&[]),
            &acceso,
        );
        Self {
            app,
            claves: Claves::new(&pool),
            pool,
            _writers: writers,
        }
    }

    async fn enviar(&self, auth: &str, body: &str) -> Answer {
        acceso::como(
            &self.app,
            auth,
            "POST",
            "/event-collector/events",
            Some(body),
        )
        .await
    }

    async fn stored(&self) -> i64 {
        count(&self.pool, "SELECT count(*) FROM eventos").await
    }
}

fn evento(afiliado: &str, fuente: &str, cliente: &str) -> String {
    serde_json::json!({"tipo_evento": "CLICK", "id_afiliado": afiliado,
        "fuente_evento": fuente, "id_evento_cliente": cliente})
    .to_string()
}

#[sqlx::test(migrations = false)]
async fn every_event_needs_a_partner_key_or_a_webhook_signature(
    o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let t = Enforced::new(o, c).await;
    for (fuente, que) in [
        ("WEB_TAG", "events:public"),
        ("MOBILE_SDK", "events:public"),
        ("API_DIRECT", "events:write"),
    ] {
        let anonimo = t.enviar("", &evento("HOOK", fuente, fuente)).await;
        assert_eq!(anonimo.status, 401, "{fuente}: {:?}", anonimo.body);
        assert!(anonimo.body["detail"].as_str().unwrap().contains(que));
        assert_eq!(
            anonimo.headers["www-authenticate"],
            "Bearer realm=\"aeropartners\""
        );
    }
    // The original's plain keys, in the body or the header, are for development mode only.
    let mut legado: serde_json::Value =
        serde_json::from_str(&evento("LEGADO", "API_DIRECT", "l1")).unwrap();
    legado["api_key"] = "sk_legado_123".into();
    assert_eq!(t.enviar("", &legado.to_string()).await.status, 401);
    let en_cabecera = call(
        &t.app,
        "POST",
        "/event-collector/events",
        Some(&evento("LEGADO", "API_DIRECT", "l2")),
        &[("x-api-key", "sk_legado_123")],
    )
    .await;
    assert_eq!(en_cabecera.status, 401, "{:?}", en_cabecera.body);
    assert_eq!(t.stored().await, 0);

    // A webhook is authenticated by its signature.
    let body = serde_json::json!({"tipo_evento": "CONVERSION", "id_afiliado": "HOOK",
        "fuente_evento": "WEBHOOK", "id_evento_cliente": "w1"})
    .to_string();
    let firma = firmar_con_tiempo(
        b"whsec_prueba",
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    );
    let firmado = call(
        &t.app,
        "POST",
        "/event-collector/events",
        Some(&body),
        &[("x-webhook-signature", &firma)],
    )
    .await;
    assert_eq!(firmado.status, 201, "{:?}", firmado.body);

    // A batch nobody may send is refused as a whole, and stores nothing.
    let lote = format!(
        r#"{{"eventos":[{},{}]}}"#,
        evento("HOOK", "WEB_TAG", "b1"),
        evento("HOOK", "API_DIRECT", "b2")
    );
    let anonimo = acceso::como(
        &t.app,
        "",
        "POST",
        "/event-collector/events/batch",
        Some(&lote),
    )
    .await;
    assert_eq!(anonimo.status, 401, "{:?}", anonimo.body);
    assert_eq!(t.stored().await, 1);
}

#[sqlx::test(migrations = false)]
async fn a_key_speaks_for_its_affiliate_within_its_scopes(o: PgPoolOptions, c: PgConnectOptions) {
    let t = Enforced::new(o, c).await;
    // NUEVO is in no file, and unknown affiliates are refused: its key makes it known.
    let escritura = t
        .claves
        .restringida("NUEVO", &[Alcance::EventosEscritura])
        .await;
    let publica = t
        .claves
        .restringida("NUEVO", &[Alcance::EventosPublicos])
        .await;

    let directo = t
        .enviar(&escritura, &evento("NUEVO", "API_DIRECT", "d1"))
        .await;
    assert_eq!(directo.status, 201, "{:?}", directo.body);
    let ajeno = t.enviar(&escritura, &evento("HOOK", "WEB_TAG", "d2")).await;
    assert_eq!(ajeno.status, 403, "{:?}", ajeno.body);
    assert!(ajeno.body["detail"].as_str().unwrap().contains("'HOOK'"));

    // A publishable key: clicks from a page, never a server-to-server (paying) source.
    let etiqueta = t.enviar(&publica, &evento("NUEVO", "WEB_TAG", "p1")).await;
    assert_eq!(etiqueta.status, 201, "{:?}", etiqueta.body);
    let pagaria = t
        .enviar(&publica, &evento("NUEVO", "API_DIRECT", "p2"))
        .await;
    assert_eq!(pagaria.status, 403, "{:?}", pagaria.body);
    assert!(
        pagaria.body["detail"]
            .as_str()
            .unwrap()
            .contains("events:write")
    );

    // A key with the scope is still no webhook signature.
    let webhook = t
        .enviar(&escritura, &evento("NUEVO", "WEBHOOK", "h1"))
        .await;
    assert_eq!(
        webhook.status, 403,
        "NUEVO has no webhook secret: {:?}",
        webhook.body
    );

    // In a batch each event is judged: its own are stored, another affiliate's are not.
    let lote = format!(
        r#"{{"eventos":[{},{}]}}"#,
        evento("NUEVO", "API_DIRECT", "b1"),
        evento("HOOK", "API_DIRECT", "b2")
    );
    let mezcla = acceso::como(
        &t.app,
        &escritura,
        "POST",
        "/event-collector/events/batch",
        Some(&lote),
    )
    .await;
    assert_eq!(mezcla.status, 200, "{:?}", mezcla.body);
    assert_eq!(mezcla.body["resultados"][0]["status"], 201);
    assert_eq!(mezcla.body["resultados"][1]["status"], 403);
    assert_eq!(
        count(
            &t.pool,
            "SELECT count(*) FROM eventos WHERE id_afiliado = 'NUEVO'"
        )
        .await,
        3
    );
    assert_eq!(t.stored().await, 3);
}

#[sqlx::test(migrations = false)]
async fn reads_are_the_callers_own(o: PgPoolOptions, c: PgConnectOptions) {
    let t = Enforced::new(o, c).await;
    let (a, b) = (t.claves.secreta("A").await, t.claves.secreta("B").await);
    let de_a = t.enviar(&a, &evento("A", "API_DIRECT", "a1")).await;
    t.enviar(&b, &evento("B", "API_DIRECT", "b1")).await;
    t.enviar(&b, &evento("B", "API_DIRECT", "b2")).await;
    let id_a = de_a.body["id_evento"].as_str().unwrap();

    let get = |auth: &str, uri: String| {
        let (app, auth) = (t.app.clone(), auth.to_owned());
        async move { acceso::como(&app, &auth, "GET", &uri, None).await }
    };
    let propio = get(&a, format!("/event-collector/events/{id_a}/status")).await;
    assert_eq!(propio.status, 200, "{:?}", propio.body);
    let ajeno = get(&b, format!("/event-collector/events/{id_a}/status")).await;
    assert_eq!(ajeno.status, 404);

    let stats = get(&b, "/event-collector/statistics".into()).await;
    assert_eq!(stats.status, 200, "{:?}", stats.body);
    let total = stats.body.to_string();
    assert!(!total.contains("\"A\""), "B's statistics show A: {total}");
    let pedidas = get(&b, "/event-collector/statistics?id_afiliado=A".into()).await;
    assert_eq!(pedidas.status, 403);
    assert_eq!(
        get(&b, "/event-collector/failed-events?id_afiliado=A".into())
            .await
            .status,
        403
    );
    let cuota = get(&a, "/event-collector/rate-limit/A".into()).await;
    assert_eq!(cuota.status, 200, "{:?}", cuota.body);
    assert_eq!(cuota.body["nivel"], "basic");
    assert_eq!(
        get(&a, "/event-collector/rate-limit/B".into()).await.status,
        404
    );
}

/// Every operation of the collector's document, and its rule. A route added without a rule
/// here fails [`every_documented_route_is_guarded_by_its_rule`].
const REGLAS: [(&str, &str, Regla); 7] = [
    (
        "post",
        "/event-collector/events",
        Regla::Afiliado(Alcance::EventosEscritura),
    ),
    (
        "post",
        "/event-collector/events/batch",
        Regla::Afiliado(Alcance::EventosEscritura),
    ),
    (
        "get",
        "/event-collector/events/{id_evento}/status",
        Regla::Afiliado(Alcance::EventosLectura),
    ),
    (
        "post",
        "/event-collector/events/{id_evento}/retry",
        Regla::Operador,
    ),
    (
        "get",
        "/event-collector/statistics",
        Regla::Afiliado(Alcance::EventosLectura),
    ),
    (
        "get",
        "/event-collector/failed-events",
        Regla::Afiliado(Alcance::EventosLectura),
    ),
    (
        "get",
        "/event-collector/rate-limit/{id_afiliado}",
        Regla::Afiliado(Alcance::EventosLectura),
    ),
];

#[sqlx::test(migrations = false)]
async fn every_documented_route_is_guarded_by_its_rule(o: PgPoolOptions, c: PgConnectOptions) {
    let t = Enforced::new(o, c).await;
    let ajena = t.claves.secreta(TablaDeRutas::AJENO).await;
    let suyo = t
        .enviar(&ajena, &evento(TablaDeRutas::AJENO, "API_DIRECT", "ajeno"))
        .await;
    let id_evento = suyo.body["id_evento"].as_str().unwrap().to_owned();
    // The caller's own API_DIRECT events: what a key without events:write may not send.
    let cuerpo = |method: &str, path: &str| match (method, path) {
        ("post", "/event-collector/events") => {
            Some(evento(TablaDeRutas::PROPIO, "API_DIRECT", "tabla"))
        }
        ("post", "/event-collector/events/batch") => Some(format!(
            r#"{{"eventos":[{}]}}"#,
            evento(TablaDeRutas::PROPIO, "API_DIRECT", "tabla-lote")
        )),
        _ => None,
    };
    let tabla = TablaDeRutas {
        app: &t.app,
        reglas: &REGLAS,
        parametros: &[
            ("id_evento", id_evento),
            ("id_afiliado", TablaDeRutas::AJENO.to_owned()),
        ],
        cuerpo: &cuerpo,
    };
    assert_eq!(tabla.comprobar(&t.claves).await, REGLAS.len());
    assert_eq!(t.stored().await, 1, "only the other affiliate's own event");
}
