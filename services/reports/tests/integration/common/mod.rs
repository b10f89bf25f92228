//! A reports replica in-process, on a real PostgreSQL, with the `database` version source.

#![allow(dead_code)]

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use platform::messaging::{Envelope, LazyBroker};
use reports::{
    api::{self, ApiState},
    legacy::ServiciosDatos,
    projection::{self, Progreso},
    version::{FuenteBaseDeDatos, FuenteVersion},
};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct Replica {
    pub app: platform::http::App,
    pub state: ApiState,
    pub stop: CancellationToken,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A replica whose version follows the database row (LISTEN/NOTIFY, polled every `sondeo`),
/// with its report cache off unless `cache` is given, and data services at `datos`.
pub async fn replica(
    pool: &PgPool,
    sondeo: Duration,
    cache: Option<Duration>,
    datos: (&str, &str),
) -> Replica {
    replica_with_access(pool, sondeo, cache, datos, &access::Acceso::desarrollo()).await
}

/// [`replica`] with the access control given (a cluster's: `testkit::acceso::exigido`).
pub async fn replica_with_access(
    pool: &PgPool,
    sondeo: Duration,
    cache: Option<Duration>,
    datos: (&str, &str),
    acceso: &access::Acceso,
) -> Replica {
    let fuente = Arc::new(FuenteBaseDeDatos::new(pool.clone(), sondeo));
    let inicial = fuente.leer().await.unwrap();
    let (tx, _) = watch::channel(inicial);
    let stop = CancellationToken::new();
    tokio::spawn(fuente.clone().seguir(tx.clone(), stop.clone()));
    let conectado = Arc::new(OnceLock::new());
    let _ = conectado.set(Instant::now());
    let state = ApiState {
        pool: pool.clone(),
        version: tx,
        fuente,
        cache: cache.map(api::cache),
        progreso: Arc::new(Progreso::default()),
        conectado_desde: conectado,
        instancia: format!("test-{}", Uuid::new_v4().simple()).into(),
    };
    let datos = Arc::new(ServiciosDatos::new(datos.0, datos.1, Duration::from_secs(5)).unwrap());
    let app = reports::app(
        state.clone(),
        datos,
        LazyBroker::default(),
        &testkit::http_config(),
        acceso,
    );
    Replica { app, state, stop }
}

pub fn at(raw: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw).unwrap().into()
}

pub fn pago(
    id: &str,
    version: i64,
    afiliado: &str,
    monto: f64,
    moneda: &str,
    estado: &str,
    occurred_at: DateTime<Utc>,
) -> Envelope {
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: "Pago".into(),
        aggregate_type: "Pago".into(),
        aggregate_id: id.into(),
        aggregate_version: version,
        occurred_at,
        correlation_id: "corr".into(),
        data: serde_json::json!({
            "id_pago": id, "id_afiliado": afiliado, "monto": monto, "moneda": moneda,
            "referencia_pago": format!("ref-{id}"), "estado": estado,
        }),
    }
}

pub fn campana(id: &str, version: i64, afiliado: &str, estado: &str, gasto: f64) -> Envelope {
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: "CampanaActualizada".into(),
        aggregate_type: "Campana".into(),
        aggregate_id: id.into(),
        aggregate_version: version,
        occurred_at: Utc::now(),
        correlation_id: "corr".into(),
        data: serde_json::json!({
            "id_campana": id, "id_afiliado": afiliado, "nombre": "c", "tipo": "PROMOCIONAL",
            "estado": estado, "presupuesto": 1000.0, "moneda": "USD", "gasto_actual": gasto,
            "impresiones": 0, "clicks": 0, "conversiones": version,
        }),
    }
}

/// A small history: 4 payments of 2 affiliates over 2 days, 2 campaigns.
pub fn historia() -> Vec<Envelope> {
    let d1 = at("2026-11-20T10:00:00Z");
    let d2 = at("2026-11-21T23:30:00Z");
    vec![
        pago("p1", 1, "af-1", 100.0, "USD", "PENDIENTE", d1),
        pago("p1", 2, "af-1", 100.0, "USD", "EXITOSO", d1),
        pago("p2", 1, "af-1", 50.5, "USD", "PENDIENTE", d1),
        pago("p2", 2, "af-1", 50.5, "USD", "FALLIDO", d1),
        pago("p3", 1, "af-2", 20.0, "EUR", "PENDIENTE", d2),
        pago("p4", 1, "af-2", 30000.0, "COP", "PENDIENTE", d2),
        pago("p4", 2, "af-2", 30000.0, "COP", "EXITOSO", d2),
        pago("p4", 3, "af-2", 30000.0, "COP", "REVERSADO", d2),
        campana("c1", 1, "af-1", "CREATED", 0.0),
        campana("c1", 2, "af-1", "ACTIVE", 10.0),
        campana("c2", 1, "af-2", "CREATED", 0.0),
    ]
}

pub async fn aplicar(pool: &PgPool, eventos: &[Envelope]) {
    for e in eventos {
        projection::aplicar(pool, e).await.unwrap();
    }
}

pub async fn pool(o: sqlx::postgres::PgPoolOptions, c: sqlx::postgres::PgConnectOptions) -> PgPool {
    testkit::migrated_pool(o, c, reports::SCHEMA, &reports::MIGRATOR).await
}
