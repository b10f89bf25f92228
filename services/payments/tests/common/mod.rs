//! Test support: a migrated database from `#[sqlx::test]`, the real Pulsar broker under a
//! per-test topic prefix, the payments app, and gateway doubles that count charges.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use payments::{
    domain::ResultadoCobro,
    infrastructure::pasarela::{ErrorPasarela, PasarelaDePagos, SolicitudCobro},
};
use platform::messaging::LazyBroker;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
pub use testkit::*;
use uuid::Uuid;

/// A pool on the test database whose connections live in the payments schema, migrated.
pub async fn migrated_pool(options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    testkit::migrated_pool(options, connect, payments::SCHEMA, &payments::MIGRATOR).await
}

/// The app with no broker at all: enough for everything the HTTP API does alone.
pub fn app_without_broker(pool: &PgPool) -> platform::http::App {
    payments::app(
        pool.clone(),
        LazyBroker::default(),
        &http_config(),
        &access::Acceso::desarrollo(),
    )
}

pub fn pago_json(referencia: &str, monto: &str) -> String {
    format!(
        r#"{{"id_afiliado":"afiliado-1","monto":{monto},"moneda":"USD","referencia_pago":"{referencia}"}}"#
    )
}

pub async fn estado(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT estado FROM pagos WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// How the double answers a charge.
#[derive(Clone, Copy)]
pub enum Decision {
    Approve,
    Refuse,
}

/// A gateway double that behaves like Stripe with idempotency keys: the first call with a key
/// creates a charge, later calls return the stored answer. It counts both.
pub struct CountingGateway {
    decision: Decision,
    results: Mutex<HashMap<Uuid, ResultadoCobro>>,
    pub calls: AtomicUsize,
    pub charges: AtomicUsize,
    /// While set, a call records its charge and then never returns (a crash after the
    /// gateway call, before the commit).
    hang_after_charge: std::sync::atomic::AtomicBool,
    /// While > 0, calls wait here before charging (to observe PROCESANDO).
    gate: tokio::sync::Semaphore,
    gated: std::sync::atomic::AtomicBool,
}

impl CountingGateway {
    pub fn new(decision: Decision) -> Arc<Self> {
        Arc::new(Self {
            decision,
            results: Mutex::default(),
            calls: AtomicUsize::new(0),
            charges: AtomicUsize::new(0),
            hang_after_charge: false.into(),
            gate: tokio::sync::Semaphore::new(0),
            gated: false.into(),
        })
    }

    pub fn charges(&self) -> usize {
        self.charges.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn charges_for(&self, id: Uuid) -> Option<ResultadoCobro> {
        self.results.lock().unwrap().get(&id).cloned()
    }

    pub fn hang_after_charge(&self, on: bool) {
        self.hang_after_charge.store(on, Ordering::SeqCst);
    }

    pub fn close_gate(&self) {
        self.gated.store(true, Ordering::SeqCst);
    }

    pub fn open_gate(&self) {
        self.gated.store(false, Ordering::SeqCst);
        self.gate.add_permits(1_000);
    }
}

#[async_trait::async_trait]
impl PasarelaDePagos for CountingGateway {
    async fn cobrar(&self, solicitud: SolicitudCobro) -> Result<ResultadoCobro, ErrorPasarela> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.gated.load(Ordering::SeqCst) {
            let _permit = self.gate.acquire().await.expect("gate never closes");
        }
        let result = {
            let mut results = self.results.lock().unwrap();
            results
                .entry(solicitud.clave_idempotencia)
                .or_insert_with(|| {
                    self.charges.fetch_add(1, Ordering::SeqCst);
                    match self.decision {
                        Decision::Approve => ResultadoCobro::Aprobado {
                            referencia_transaccion: format!(
                                "txn_{:06}",
                                self.charges.load(Ordering::SeqCst)
                            ),
                        },
                        Decision::Refuse => ResultadoCobro::Rechazado {
                            motivo: "Fondos insuficientes".into(),
                        },
                    }
                })
                .clone()
        };
        if self.hang_after_charge.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(result)
    }
}
