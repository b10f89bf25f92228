//! Group commit: requests put their events on a bounded queue and wait; writers take whatever
//! has queued up (up to a batch limit) and store it in one transaction, then answer each
//! request. Under load many requests share one commit (one fsync), and each is still answered
//! only after its own events are durable. A full queue answers at once (503 + Retry-After):
//! a client never waits without bound.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use prometheus::{Histogram, IntGauge};
use tokio::sync::{Mutex, mpsc, oneshot};
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
    ocupacion: Arc<AtomicUsize>,
    capacidad: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct ConfigCola {
    /// Requests that may wait at once; beyond that, 503.
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
        IntGauge::new("collector_queue_requests", "Requests waiting for a writer")
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
        let (tx, rx) = mpsc::channel(config.capacidad.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let ocupacion = Arc::new(AtomicUsize::new(0));
        let mut escritores = tokio::task::JoinSet::new();
        for numero in 0..config.escritores.max(1) {
            let escritor = Escritor {
                almacen: almacen.clone(),
                rx: rx.clone(),
                ocupacion: ocupacion.clone(),
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
                ocupacion,
                capacidad: config.capacidad.max(1),
            },
            handle,
        )
    }

    /// Queues `envio` and waits until it is stored (or the store fails).
    pub async fn enviar(&self, envio: Envio) -> Result<RespuestaEnvio, ErrorCola> {
        let (responder, respuesta) = oneshot::channel();
        // Counted before it is sent, so a writer never takes away more than was added.
        let ocupadas = self.ocupacion.fetch_add(1, Ordering::Relaxed) + 1;
        let enviado = self.tx.try_send(Pendiente { envio, responder });
        if let Err(error) = enviado {
            self.ocupacion.fetch_sub(1, Ordering::Relaxed);
            return Err(match error {
                mpsc::error::TrySendError::Full(_) => ErrorCola::Llena,
                mpsc::error::TrySendError::Closed(_) => ErrorCola::Cerrada,
            });
        }
        EN_COLA.set(i64::try_from(ocupadas).unwrap_or(i64::MAX));
        match respuesta.await {
            Ok(result) => Ok(result?),
            // The writers stopped with this request on the queue: it was not stored.
            Err(_) => Err(ErrorCola::Cerrada),
        }
    }

    /// Requests waiting right now, and how many may.
    pub fn ocupacion(&self) -> (usize, usize) {
        (self.ocupacion.load(Ordering::Relaxed), self.capacidad)
    }
}

struct Escritor {
    almacen: Arc<dyn Almacen>,
    rx: Arc<Mutex<mpsc::Receiver<Pendiente>>>,
    ocupacion: Arc<AtomicUsize>,
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
            let quedan = self.ocupacion.fetch_sub(lote.len(), Ordering::Relaxed) - lote.len();
            EN_COLA.set(i64::try_from(quedan).unwrap_or(i64::MAX));
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
                capacidad: 3,
                escritores: 1,
                max_eventos_por_lote: 100,
            },
            parar.clone(),
        );
        // The writer takes the first request and blocks on it; three more fill the queue.
        let mut esperando = Vec::new();
        for _ in 0..4 {
            let cola = cola.clone();
            esperando.push(tokio::spawn(async move { cola.enviar(envio()).await }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cola.ocupacion(), (3, 3));
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
