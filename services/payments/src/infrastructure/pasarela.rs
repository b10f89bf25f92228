//! The `PasarelaDePagos` port and its simulated Stripe adapter: the only simulated part of the
//! platform (the real gateway is an external service). Like Stripe, it honours an idempotency
//! key: charging the same key twice returns the first answer and charges once.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::domain::{Dinero, ResultadoCobro};

/// A charge request. `clave_idempotencia` is the payment id: a retried charge is the same charge.
#[derive(Debug, Clone, PartialEq)]
pub struct SolicitudCobro {
    pub clave_idempotencia: Uuid,
    pub id_afiliado: String,
    pub dinero: Dinero,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ErrorPasarela {
    /// The gateway could not be reached; the charge may be retried with the same key.
    #[error("la pasarela no está disponible: {0}")]
    NoDisponible(String),
}

/// The port: how the payments context charges money.
#[async_trait::async_trait]
pub trait PasarelaDePagos: Send + Sync + 'static {
    async fn cobrar(&self, solicitud: SolicitudCobro) -> Result<ResultadoCobro, ErrorPasarela>;
}

/// A gateway with at most `n` charges in flight: the worker claims many payments at once (a
/// batch per lane), and the gateway, an external service, gets no more than it is configured
/// for (`WORKER_CONCURRENCY`); the rest wait their turn. Once `parar` is cancelled no charge
/// starts: the payments still waiting stay `PROCESANDO` and their messages go back to the
/// broker, so the next worker resumes them with the same idempotency key (a stopping worker
/// finishes only the charges in flight).
pub struct PasarelaLimitada {
    pasarela: Arc<dyn PasarelaDePagos>,
    en_vuelo: tokio::sync::Semaphore,
    parar: tokio_util::sync::CancellationToken,
}

impl PasarelaLimitada {
    pub fn new(
        pasarela: Arc<dyn PasarelaDePagos>,
        n: usize,
        parar: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            pasarela,
            en_vuelo: tokio::sync::Semaphore::new(n.max(1)),
            parar,
        }
    }
}

#[async_trait::async_trait]
impl PasarelaDePagos for PasarelaLimitada {
    async fn cobrar(&self, solicitud: SolicitudCobro) -> Result<ResultadoCobro, ErrorPasarela> {
        let detenido = || ErrorPasarela::NoDisponible("el worker se está deteniendo".into());
        let _turno = tokio::select! {
            biased;
            () = self.parar.cancelled() => return Err(detenido()),
            turno = self.en_vuelo.acquire() => turno.map_err(|_| detenido())?,
        };
        self.pasarela.cobrar(solicitud).await
    }
}

/// The refusal messages a card network gives (API.md §3.3).
pub const MENSAJES_DE_FALLO: [&str; 4] = [
    "Fondos insuficientes",
    "Tarjeta expirada",
    "Tarjeta rechazada",
    "Error de conexión con el banco",
];

/// Behaviour of the simulated gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigStripeSimulado {
    /// Shortest simulated gateway latency.
    #[arg(long, env = "GATEWAY_LATENCY_MIN", default_value = "2s", value_parser = platform::config::parse_duration)]
    pub latencia_min: Duration,
    /// Longest simulated gateway latency (uniform between min and max).
    #[arg(long, env = "GATEWAY_LATENCY_MAX", default_value = "8s", value_parser = platform::config::parse_duration)]
    pub latencia_max: Duration,
    /// Probability (0..=1) that a charge is refused.
    #[arg(long, env = "GATEWAY_FAILURE_RATE", default_value_t = 0.5)]
    pub tasa_fallo: f64,
    /// How long an idempotency key is remembered (Stripe keeps them 24 h); older keys are
    /// forgotten, which bounds the simulator's memory. It lives in the worker's process, so
    /// without a bound the worker's memory grew with every payment ever charged.
    #[arg(long = "gateway-idempotency-retention", env = "GATEWAY_IDEMPOTENCY_RETENTION", default_value = "24h", value_parser = platform::config::parse_duration)]
    pub retencion_claves: Duration,
}

/// Simulated Stripe: random latency and refusals, idempotent per key.
pub struct StripeSimulado {
    config: ConfigStripeSimulado,
    cobros: Mutex<Cobros>,
}

/// The answers by idempotency key, and the keys in the order they were first seen (so the
/// expired ones are dropped from the front).
#[derive(Default)]
struct Cobros {
    por_clave: HashMap<Uuid, Arc<OnceCell<ResultadoCobro>>>,
    por_llegada: VecDeque<(Instant, Uuid)>,
}

impl Cobros {
    fn celda(&mut self, clave: Uuid, retencion: Duration) -> Arc<OnceCell<ResultadoCobro>> {
        let ahora = Instant::now();
        while let Some((llegada, vieja)) = self.por_llegada.front().copied() {
            if ahora.duration_since(llegada) < retencion {
                break;
            }
            self.por_llegada.pop_front();
            self.por_clave.remove(&vieja);
        }
        if let Some(celda) = self.por_clave.get(&clave) {
            return celda.clone();
        }
        self.por_llegada.push_back((ahora, clave));
        self.por_clave.entry(clave).or_default().clone()
    }
}

impl StripeSimulado {
    pub fn new(config: ConfigStripeSimulado) -> Self {
        Self {
            config,
            cobros: Mutex::default(),
        }
    }

    /// How many idempotency keys the simulator remembers now.
    pub fn claves_recordadas(&self) -> usize {
        self.cobros
            .lock()
            .map(|c| c.por_clave.len())
            .unwrap_or_default()
    }

    fn decidir(&self) -> (Duration, ResultadoCobro) {
        let mut rng = rand::rng();
        let (min, max) = (
            self.config.latencia_min,
            self.config.latencia_max.max(self.config.latencia_min),
        );
        let latencia = if max > min {
            rng.random_range(min..=max)
        } else {
            min
        };
        let resultado = if rng.random_bool(self.config.tasa_fallo.clamp(0.0, 1.0)) {
            let motivo = MENSAJES_DE_FALLO[rng.random_range(0..MENSAJES_DE_FALLO.len())];
            ResultadoCobro::Rechazado {
                motivo: motivo.to_owned(),
            }
        } else {
            ResultadoCobro::Aprobado {
                referencia_transaccion: format!("txn_{:06}", rng.random_range(0..1_000_000)),
            }
        };
        (latencia, resultado)
    }
}

#[async_trait::async_trait]
impl PasarelaDePagos for StripeSimulado {
    async fn cobrar(&self, solicitud: SolicitudCobro) -> Result<ResultadoCobro, ErrorPasarela> {
        let celda = self
            .cobros
            .lock()
            .expect("gateway map is never poisoned")
            .celda(solicitud.clave_idempotencia, self.config.retencion_claves);
        let resultado = celda
            .get_or_init(|| async {
                let (latencia, resultado) = self.decidir();
                tokio::time::sleep(latencia).await;
                resultado
            })
            .await;
        Ok(resultado.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pasarela(tasa_fallo: f64) -> StripeSimulado {
        StripeSimulado::new(ConfigStripeSimulado {
            latencia_min: Duration::ZERO,
            latencia_max: Duration::ZERO,
            tasa_fallo,
            retencion_claves: Duration::from_secs(24 * 3600),
        })
    }

    fn solicitud(clave: Uuid) -> SolicitudCobro {
        SolicitudCobro {
            clave_idempotencia: clave,
            id_afiliado: "af".into(),
            dinero: Dinero::new(rust_decimal::Decimal::ONE, crate::domain::Moneda::USD).unwrap(),
        }
    }

    #[tokio::test]
    async fn always_refuses_with_a_documented_message_at_rate_one() {
        let pasarela = pasarela(1.0);
        for _ in 0..20 {
            match pasarela.cobrar(solicitud(Uuid::new_v4())).await.unwrap() {
                ResultadoCobro::Rechazado { motivo } => {
                    assert!(MENSAJES_DE_FALLO.contains(&motivo.as_str()))
                }
                otro => panic!("expected a refusal, got {otro:?}"),
            }
        }
    }

    #[tokio::test]
    async fn approves_with_a_txn_reference_at_rate_zero() {
        match pasarela(0.0)
            .cobrar(solicitud(Uuid::new_v4()))
            .await
            .unwrap()
        {
            ResultadoCobro::Aprobado {
                referencia_transaccion,
            } => {
                assert!(referencia_transaccion.starts_with("txn_"));
                assert_eq!(referencia_transaccion.len(), "txn_123456".len());
            }
            otro => panic!("expected approval, got {otro:?}"),
        }
    }

    #[tokio::test]
    async fn the_same_key_gets_the_same_answer() {
        let pasarela = pasarela(0.5);
        let clave = Uuid::new_v4();
        let primera = pasarela.cobrar(solicitud(clave)).await.unwrap();
        for _ in 0..10 {
            assert_eq!(pasarela.cobrar(solicitud(clave)).await.unwrap(), primera);
        }
    }

    #[tokio::test]
    async fn keys_older_than_the_retention_are_forgotten() {
        let pasarela = StripeSimulado::new(ConfigStripeSimulado {
            retencion_claves: Duration::from_millis(50),
            ..pasarela(0.5).config
        });
        let clave = Uuid::new_v4();
        let primera = pasarela.cobrar(solicitud(clave)).await.unwrap();
        assert_eq!(pasarela.cobrar(solicitud(clave)).await.unwrap(), primera);
        for _ in 0..5 {
            pasarela.cobrar(solicitud(Uuid::new_v4())).await.unwrap();
        }
        assert_eq!(pasarela.claves_recordadas(), 6, "all within the retention");
        tokio::time::sleep(Duration::from_millis(80)).await;
        pasarela.cobrar(solicitud(Uuid::new_v4())).await.unwrap();
        assert_eq!(
            pasarela.claves_recordadas(),
            1,
            "only the newest key is left"
        );
    }
}
