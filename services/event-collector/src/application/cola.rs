//! Group commit: requests put their events on a bounded queue and wait; writers take whatever
//! has queued up (up to a batch limit) and store it in one transaction, then answer each
//! request. Under load many requests share one commit (one fsync), and each is still answered
//! only after its own events are durable. A full queue answers at once (503 + Retry-After):
//! a client never waits without bound.

use std::{
    sync::{Arc, LazyLock},
    time::Instant,
};

use prometheus::{Histogram, IntGauge};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Envio, RespuestaEnvio};

/// Stores batches. The PostgreSQL implementation lives in `infrastructure`; the queue does not
/// care how.
#[async_trait::async_trait]
pub trait Almacen: Send + Sync + 'static {
    /// Stores every envío of the batch in one transaction, answering each in order.
    async fn guardar(&self, envios: &[Envio]) -> Result<Vec<RespuestaEnvio>, ErrorAlmacen>;
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("the event store failed: {0}")]
pub struct ErrorAlmacen(pub String);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ErrorCola {
    #[error("la cola de escritura está llena")]
    Llena,
    #[error("el servicio se está deteniendo")]
    Cerrada,
    #[error(transparent)]
    Almacen(#[from] ErrorAlmacen),
}

struct Pendiente {
    envio: Envio,
    responder: oneshot::Sender<Result<RespuestaEnvio, ErrorAlmacen>>,
}

/// The sending side, cloned into every handler.
#[derive(Clone)]
pub struct Cola {
    tx: mpsc::Sender<Pendiente>,
    /// One permit per event queued or being stored: memory is bounded in events, whatever
    /// mix of single events and batches arrives.
    permisos: Arc<Semaphore>,
    capacidad: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct ConfigCola {
    /// Events that may be queued or being stored at once; beyond that, 503. At least one
    /// largest transaction's worth.
    pub capacidad: usize,
    /// Writers (transactions in flight at once) per process.
    pub escritores: usize,
    /// Largest number of events one transaction stores.
    pub max_eventos_por_lote: usize,
}

static TAMANO_LOTE: LazyLock<Histogram> = LazyLock::new(|| {
    platform::telemetry::register(
        Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "collector_batch_events",
                "Events stored per group-commit transaction",
            )
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0,
            ]),
        )
        .expect("valid metric"),
    )
});
static DURACION_LOTE: LazyLock<Histogram> = LazyLock::new(|| {
    platform::telemetry::register(
        Histogram::with_opts(prometheus::HistogramOpts::new(
            "collector_batch_seconds",
            "Duration of one group-commit transaction",
        ))
        .expect("valid metric"),
    )
});
static EN_COLA: LazyLock<IntGauge> = LazyLock::new(|| {
    platform::telemetry::register(
        IntGauge::new(
            "collector_queue_events",
            "Events queued or being stored by the writers",
        )
        .expect("valid metric"),
    )
});

impl Cola {
    /// Starts the writers; they stop when `parar` is cancelled, after answering what they hold.
    pub fn iniciar(
        almacen: Arc<dyn Almacen>,
        config: ConfigCola,
        parar: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let capacidad = config.capacidad.max(1);
        // Every request holds at least one permit, so the channel never fills before them.
        let (tx, rx) = mpsc::channel(capacidad);
        let rx = Arc::new(Mutex::new(rx));
        let mut escritores = tokio::task::JoinSet::new();
        for numero in 0..config.escritores.max(1) {
            let escritor = Escritor {
                almacen: almacen.clone(),
                rx: rx.clone(),
                max_eventos: config.max_eventos_por_lote.max(1),
            };
            escritores.spawn(
                escritor
                    .run(parar.clone())
                    .instrument(tracing::info_span!("collector_writer", writer = numero)),
            );
        }
        let handle = tokio::spawn(async move { while escritores.join_next().await.is_some() {} });
        (
            Self {
                tx,
                permisos: Arc::new(Semaphore::new(capacidad)),
                capacidad,
            },
            handle,
        )
    }

    /// Queues `envio` and waits until it is stored (or the store fails).
    pub async fn enviar(&self, envio: Envio) -> Result<RespuestaEnvio, ErrorCola> {
        let eventos = u32::try_from(envio.eventos.len().max(1)).unwrap_or(u32::MAX);
        // Held until the answer: the events count against the bound while they are stored.
        let permiso = self
            .permisos
            .clone()
            .try_acquire_many_owned(eventos)
            .map_err(|_| ErrorCola::Llena)?;
        self.medir();
        let (responder, respuesta) = oneshot::channel();
        let enviado = self.tx.try_send(Pendiente { envio, responder });
        if let Err(error) = enviado {
            return Err(match error {
                mpsc::error::TrySendError::Full(_) => ErrorCola::Llena,
                mpsc::error::TrySendError::Closed(_) => ErrorCola::Cerrada,
            });
        }
        let resultado = match respuesta.await {
            Ok(result) => Ok(result?),
            // The writers stopped with this request on the queue: it was not stored.
            Err(_) => Err(ErrorCola::Cerrada),
        };
        drop(permiso);
        self.medir();
        resultado
    }

    fn medir(&self) {
        EN_COLA.set(i64::try_from(self.ocupacion().0).unwrap_or(i64::MAX));
    }

    /// Events queued or being stored right now, and how many may be.
    pub fn ocupacion(&self) -> (usize, usize) {
        (
            self.capacidad - self.permisos.available_permits().min(self.capacidad),
            self.capacidad,
        )
    }
}

struct Escritor {
    almacen: Arc<dyn Almacen>,
    rx: Arc<Mutex<mpsc::Receiver<Pendiente>>>,
    max_eventos: usize,
}

impl Escritor {
    async fn run(self, parar: CancellationToken) {
        loop {
            let lote = {
                let mut rx = self.rx.lock().await;
                let primero = tokio::select! {
                    () = parar.cancelled() => return,
                    siguiente = rx.recv() => match siguiente {
                        Some(p) => p,
                        None => return,
                    },
                };
                let mut eventos = primero.envio.eventos.len();
                let mut lote = vec![primero];
                // Whatever queued while the previous transaction ran shares this one.
                while eventos < self.max_eventos {
                    match rx.try_recv() {
                        Ok(p) => {
                            eventos += p.envio.eventos.len();
                            lote.push(p);
                        }
                        Err(_) => break,
                    }
                }
                lote
            };
            self.escribir(lote).await;
        }
    }

    async fn escribir(&self, lote: Vec<Pendiente>) {
        let (envios, responders): (Vec<Envio>, Vec<_>) =
            lote.into_iter().map(|p| (p.envio, p.responder)).unzip();
        let eventos: usize = envios.iter().map(|e| e.eventos.len()).sum();
        let inicio = Instant::now();
        let resultado = self.almacen.guardar(&envios).await;
        DURACION_LOTE.observe(inicio.elapsed().as_secs_f64());
        TAMANO_LOTE.observe(eventos as f64);
        match resultado {
            Ok(respuestas) => {
                for (responder, respuesta) in responders.into_iter().zip(respuestas) {
                    // A client that gave up no longer listens; its events are stored anyway.
                    let _ = responder.send(Ok(respuesta));
                }
            }
            Err(error) => {
                tracing::warn!(%error, requests = responders.len(), events = eventos,
                    "storing a batch of events failed; every request of it is answered 503");
                for responder in responders {
                    let _ = responder.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// A store that holds every batch until released, and records batch sizes.
    struct Retenido {
        soltar: Notify,
        lotes: std::sync::Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl Almacen for Retenido {
        async fn guardar(&self, envios: &[Envio]) -> Result<Vec<RespuestaEnvio>, ErrorAlmacen> {
            self.soltar.notified().await;
            self.lotes.lock().unwrap().push(envios.len());
            Ok(envios
                .iter()
                .map(|_| RespuestaEnvio::Resultados(Vec::new()))
                .collect())
        }
    }

    fn envio() -> Envio {
        Envio {
            eventos: Vec::new(),
            uso_firma: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_answers_at_once_and_waiting_requests_share_one_batch() {
        let almacen = Arc::new(Retenido {
            soltar: Notify::new(),
            lotes: std::sync::Mutex::default(),
        });
        let parar = CancellationToken::new();
        let (cola, _writers) = Cola::iniciar(
            almacen.clone(),
            ConfigCola {
                capacidad: 4,
                escritores: 1,
                max_eventos_por_lote: 100,
            },
            parar.clone(),
        );
        // The writer takes the first request and blocks on it (its event still counts); three
        // more fill the bound of four events.
        let mut esperando = Vec::new();
        for _ in 0..4 {
            let cola = cola.clone();
            esperando.push(tokio::spawn(async move { cola.enviar(envio()).await }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cola.ocupacion(), (4, 4));
        let lleno = tokio::time::timeout(Duration::from_secs(1), cola.enviar(envio()))
            .await
            .expect("a full queue never waits");
        assert!(matches!(lleno, Err(ErrorCola::Llena)), "{lleno:?}");

        almacen.soltar.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
        almacen.soltar.notify_one();
        for espera in esperando {
            assert!(espera.await.unwrap().is_ok());
        }
        assert_eq!(
            *almacen.lotes.lock().unwrap(),
            vec![1, 3],
            "the queued three shared one batch"
        );
        assert_eq!(cola.ocupacion().0, 0);

        parar.cancel();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            cola.enviar(envio()).await,
            Err(ErrorCola::Cerrada)
        ));
    }
}
