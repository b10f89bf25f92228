//! Access control as a cluster enforces it, for a context's tests: partner keys made in the
//! real key store, and the route table every service's API is held to: for each operation of
//! its OpenAPI document, anonymous is 401, a caller without the right is 403 and another
//! affiliate's object is 404. The table comes from the document, so a route added without a
//! rule fails the test that owns it.

use std::collections::BTreeSet;

use access::{
    Acceso, Alcance, AlmacenDeClaves, AuthMode, NuevaClave, domain::TipoClave,
    infrastructure::almacen,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{Answer, call};

/// The access control of a service in a cluster (`AUTH_MODE=enforce`) on `pool`, whose access
/// schema it migrates. Operators are not authenticated (no API server): an operator route
/// is then reachable by no key at all, which is what the tables check of it.
pub async fn exigido(pool: &PgPool) -> Acceso {
    almacen::migrate(pool).await.expect("access migrations");
    Acceso::with_store(
        AuthMode::Enforce,
        pool.clone(),
        None,
        CancellationToken::new(),
    )
}

/// A service's application with access enforced as in a cluster, its database and a maker of
/// keys: what a context's tenancy tests start from.
pub struct Exigida {
    pub app: platform::http::App,
    pub pool: PgPool,
    pub claves: Claves,
}

impl Exigida {
    /// `aplicacion` builds the service's app on `pool` with the access control it is given.
    pub async fn new(
        pool: PgPool,
        aplicacion: impl FnOnce(&PgPool, &Acceso) -> platform::http::App,
    ) -> Self {
        let acceso = exigido(&pool).await;
        Self {
            app: aplicacion(&pool, &acceso),
            claves: Claves::new(&pool),
            pool,
        }
    }

    /// Calls the app with `authorization` (none when empty).
    pub async fn call(
        &self,
        authorization: &str,
        method: &str,
        uri: &str,
        body: Option<&str>,
    ) -> Answer {
        como(&self.app, authorization, method, uri, body).await
    }
}

/// Makes partner keys in the real store.
#[derive(Clone)]
pub struct Claves {
    almacen: AlmacenDeClaves,
}

impl Claves {
    pub fn new(pool: &PgPool) -> Self {
        Self {
            almacen: AlmacenDeClaves::new(pool.clone()),
        }
    }

    /// An `Authorization` value with a new secret key of `afiliado` (every scope).
    pub async fn secreta(&self, afiliado: &str) -> String {
        self.crear(afiliado, TipoClave::Sk, &[]).await
    }

    /// An `Authorization` value with a new restricted key of `afiliado` holding `alcances`.
    pub async fn restringida(&self, afiliado: &str, alcances: &[Alcance]) -> String {
        self.crear(afiliado, TipoClave::Rk, alcances).await
    }

    async fn crear(&self, afiliado: &str, tipo: TipoClave, alcances: &[Alcance]) -> String {
        let (clave, _) = self
            .almacen
            .crear(NuevaClave {
                id_afiliado: afiliado.into(),
                tipo,
                alcances: alcances.iter().copied().collect::<BTreeSet<_>>(),
                descripcion: String::new(),
                expira: None,
                creada_por: "tests".into(),
            })
            .await
            .expect("a key");
        format!("Bearer {}", clave.revelar())
    }
}

/// An `Authorization` value with a new secret key of `afiliado`, made in the key store of the
/// database at `database_url` (migrated by a service, or `aeropartners migrate`): for runners
/// that start the services as processes.
pub async fn clave_secreta(database_url: &str, afiliado: &str) -> String {
    let pool = PgPool::connect(database_url)
        .await
        .expect("the platform's database");
    let clave = Claves::new(&pool).secreta(afiliado).await;
    pool.close().await;
    clave
}

/// Calls `app` with `authorization` (none when empty).
pub async fn como(
    app: &platform::http::App,
    authorization: &str,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> Answer {
    let headers: Vec<(&str, &str)> = if authorization.is_empty() {
        Vec::new()
    } else {
        vec![("authorization", authorization)]
    };
    call(app, method, uri, body, &headers).await
}

/// What an operation asks of its caller.
#[derive(Debug, Clone, Copy)]
pub enum Regla {
    /// A partner's key with this scope (its own objects), or an operator allowed the action.
    Afiliado(Alcance),
    /// An operator only: no partner key, whatever its scopes.
    Operador,
    /// Open to anyone, and documented so (`security: [{}]`): a health or version probe.
    Abierta,
}

/// One service's route table: its rules, and how to call each operation on an object of
/// another affiliate ([`TablaDeRutas::AJENO`]).
pub struct TablaDeRutas<'a> {
    pub app: &'a platform::http::App,
    /// `(method, path template, rule)` for every operation of the document.
    pub reglas: &'a [(&'a str, &'a str, Regla)],
    /// `(path parameter, value)`: the values name objects of [`TablaDeRutas::AJENO`].
    pub parametros: &'a [(&'a str, String)],
    /// The body an operation is called with (`None` for none).
    pub cuerpo: &'a dyn Fn(&str, &str) -> Option<String>,
}

impl TablaDeRutas<'_> {
    /// The affiliate whose objects the table's path parameters name.
    pub const AJENO: &'static str = "AJENO";
    /// The affiliate whose keys call them.
    pub const PROPIO: &'static str = "PROPIO";

    /// Checks every operation of the app's OpenAPI document against its rule; returns how many
    /// were checked.
    pub async fn comprobar(&self, claves: &Claves) -> usize {
        let doc = call(self.app, "GET", "/openapi.json", None, &[]).await.body;
        let secreta = claves.secreta(Self::PROPIO).await;
        let mut vistas = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("operations") {
                let regla = self
                    .reglas
                    .iter()
                    .find(|(m, p, _)| m == method && p == path)
                    .map(|(_, _, regla)| *regla)
                    .unwrap_or_else(|| panic!("{method} {path} has no rule in the route table"));
                vistas += 1;
                let documentada = match regla {
                    Regla::Abierta => serde_json::json!([{}]),
                    _ => serde_json::json!([{platform::http::openapi::BEARER_SCHEME: []}]),
                };
                assert_eq!(
                    operation["security"], documentada,
                    "{method} {path} is not documented as its rule says"
                );
                self.comprobar_operacion(claves, &secreta, method, path, regla)
                    .await;
            }
        }
        assert_eq!(
            vistas,
            self.reglas.len(),
            "the route table names an operation the document lacks"
        );
        vistas
    }

    async fn comprobar_operacion(
        &self,
        claves: &Claves,
        secreta: &str,
        method: &str,
        path: &str,
        regla: Regla,
    ) {
        let uri = self
            .parametros
            .iter()
            .fold(path.to_owned(), |uri, (nombre, valor)| {
                uri.replace(&format!("{{{nombre}}}"), valor)
            });
        assert!(!uri.contains('{'), "{path}: no value for its parameters");
        let body = (self.cuerpo)(method, path);
        let method = method.to_uppercase();
        let intento = |auth: String| {
            let (uri, body, method) = (uri.clone(), body.clone(), method.clone());
            async move { como(self.app, &auth, &method, &uri, body.as_deref()).await }
        };
        let anonimo = intento(String::new()).await;
        if matches!(regla, Regla::Abierta) {
            assert!(
                anonimo.status < 400,
                "{method} {path} is open, yet anonymous got {}",
                anonimo.status
            );
            return;
        }
        assert_eq!(anonimo.status, 401, "{method} {path} anonymous");
        let sin_derecho = match regla {
            Regla::Afiliado(alcance) => {
                let otros: Vec<Alcance> = Alcance::TODOS
                    .into_iter()
                    .filter(|a| *a != alcance)
                    .collect();
                claves.restringida(Self::PROPIO, &otros).await
            }
            Regla::Operador => secreta.to_owned(),
            Regla::Abierta => unreachable!("open operations return above"),
        };
        let prohibido = intento(sin_derecho).await;
        assert_eq!(
            prohibido.status, 403,
            "{method} {path} without the right: {:?}",
            prohibido.body
        );
        let con_objeto = self
            .parametros
            .iter()
            .any(|(nombre, _)| path.contains(&format!("{{{nombre}}}")));
        if matches!(regla, Regla::Afiliado(_)) && con_objeto {
            let ajeno = intento(secreta.to_owned()).await;
            assert_eq!(
                ajeno.status, 404,
                "{method} {path} on another affiliate's object: {:?}",
                ajeno.body
            );
        }
    }
}
