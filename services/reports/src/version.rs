//! Where the active version comes from: one trait, two sources. A replica holds the version it
//! serves in a `watch` channel; a handler reads it once, at its start, and serves the whole
//! request in it, so a switch never changes a request midway and never restarts anything.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use prometheus::{Histogram, IntCounter, IntGaugeVec};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{EstadoVersion, Fuente, Version};

#[derive(Debug, thiserror::Error)]
pub enum ErrorFuente {
    #[error("la base de datos no responde: {0}")]
    Db(#[from] sqlx::Error),
    #[error("el API de Kubernetes no responde: {0}")]
    Kube(String),
    #[error("no existe el ReportVersion '{0}'")]
    SinRecurso(String),
    /// The API server refused the caller's token (401) or its right to patch (403).
    #[error("el API de Kubernetes rechazó el cambio ({codigo}): {detalle}")]
    Rechazado { codigo: u16, detalle: String },
}

/// On whose behalf a version is asked for.
pub enum Solicitante<'a> {
    /// The service's own account: development mode, on a machine with no operators.
    Servicio,
    /// An operator, by the token it called with: the Kubernetes source patches the
    /// ReportVersion with it, so the API server authorises the person (the right to switch
    /// is the right to `kubectl patch rv`) and its audit log names them.
    Operador(&'a secrecy::SecretString),
}

/// A source of the active version.
#[async_trait::async_trait]
pub trait FuenteVersion: Send + Sync + 'static {
    fn fuente(&self) -> Fuente;

    /// Reads the current state (at start, and before the first request is served).
    async fn leer(&self) -> Result<EstadoVersion, ErrorFuente>;

    /// Asks for `version`. Returns the state right after the change was accepted (in
    /// Kubernetes the operator still has to confirm it before it is served).
    async fn pedir(
        &self,
        version: Version,
        solicitante: Solicitante<'_>,
    ) -> Result<EstadoVersion, ErrorFuente>;

    /// Keeps `estado` current until `shutdown`.
    async fn seguir(
        self: Arc<Self>,
        estado: watch::Sender<EstadoVersion>,
        shutdown: CancellationToken,
    );
}

static ACTIVA: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    platform::telemetry::register(
        IntGaugeVec::new(
            prometheus::Opts::new(
                "reports_active_version",
                "1 for the version this replica serves, 0 for the other",
            ),
            &["version"],
        )
        .expect("valid metric"),
    )
});
static CAMBIOS: LazyLock<IntCounter> = LazyLock::new(|| {
    platform::telemetry::register(
        IntCounter::new(
            "reports_version_switches_total",
            "Version switches this replica applied",
        )
        .expect("valid metric"),
    )
});
static PROPAGACION: LazyLock<Histogram> = LazyLock::new(|| {
    platform::telemetry::register(
        Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "reports_version_switch_seconds",
                "From the change being accepted by its source to this replica serving it",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric"),
    )
});

/// Sets `reports_active_version`: 1 for `activa`, 0 for the other.
pub fn marcar_activa(activa: Version) {
    for v in Version::ALL {
        ACTIVA
            .with_label_values(&[v.as_str()])
            .set(i64::from(v == activa));
    }
}

/// Publishes `nuevo` to the replica's handlers, counting a switch when the version changed.
/// A state older than the one served (a slow read that lost a race with a newer change) is
/// ignored, so a replica never flips back.
pub fn publicar(estado: &watch::Sender<EstadoVersion>, nuevo: EstadoVersion) {
    estado.send_if_modified(|actual| {
        if let (Some(servida), Some(leida)) = (actual.cambiada_en, nuevo.cambiada_en)
            && leida < servida
        {
            return false;
        }
        if *actual == nuevo {
            return false;
        }
        // Recorded before the new version is visible, so whoever sees it also sees the metrics.
        marcar_activa(nuevo.activa);
        if actual.activa != nuevo.activa {
            CAMBIOS.inc();
            if let Some(at) = nuevo.cambiada_en {
                PROPAGACION.observe((Utc::now() - at).to_std().unwrap_or_default().as_secs_f64());
            }
            tracing::info!(from = %actual.activa, to = %nuevo.activa, "report version switched");
        }
        *actual = nuevo;
        true
    });
}

/// `database`: the row `version_activa` of the reports schema. A switch is accepted when the
/// row commits; its trigger notifies every replica.
pub struct FuenteBaseDeDatos {
    pool: PgPool,
    /// Safety net for a notification lost while the listener reconnects.
    sondeo: Duration,
}

/// The channel `version_activa`'s trigger notifies (schema name + `_version`).
pub const CANAL: &str = "reports_version";

impl FuenteBaseDeDatos {
    pub fn new(pool: PgPool, sondeo: Duration) -> Self {
        Self { pool, sondeo }
    }
}

/// `(activa, deseada, cambiada_en)` as the row holds them.
type Fila = (String, String, DateTime<Utc>);

fn estado_de_fila((activa, deseada, cambiada_en): Fila) -> EstadoVersion {
    EstadoVersion {
        // The table's CHECK allows only these two spellings.
        activa: Version::parse(&activa).unwrap_or(Version::V1),
        deseada: Version::parse(&deseada).unwrap_or(Version::V1),
        cambiada_en: Some(cambiada_en),
        desactualizada: false,
    }
}

pub async fn leer_fila(pool: &PgPool) -> Result<EstadoVersion, sqlx::Error> {
    let fila: Fila = sqlx::query_as("SELECT activa, deseada, cambiada_en FROM version_activa")
        .fetch_one(pool)
        .await?;
    Ok(estado_de_fila(fila))
}

/// Records `activa`/`deseada`; `cambiada_en` moves only when `activa` changes.
pub async fn escribir_fila(
    pool: &PgPool,
    activa: Version,
    deseada: Version,
    cambiada_en: Option<DateTime<Utc>>,
) -> Result<EstadoVersion, sqlx::Error> {
    let fila: Fila = sqlx::query_as(
        "UPDATE version_activa SET \
            cambiada_en = CASE WHEN activa = $1 THEN cambiada_en \
                               ELSE coalesce($3, clock_timestamp()) END, \
            activa = $1, deseada = $2 \
         RETURNING activa, deseada, cambiada_en",
    )
    .bind(activa.as_str())
    .bind(deseada.as_str())
    .bind(cambiada_en)
    .fetch_one(pool)
    .await?;
    Ok(estado_de_fila(fila))
}

#[async_trait::async_trait]
impl FuenteVersion for FuenteBaseDeDatos {
    fn fuente(&self) -> Fuente {
        Fuente::Database
    }

    async fn leer(&self) -> Result<EstadoVersion, ErrorFuente> {
        Ok(leer_fila(&self.pool).await?)
    }

    async fn pedir(
        &self,
        version: Version,
        _solicitante: Solicitante<'_>,
    ) -> Result<EstadoVersion, ErrorFuente> {
        // Who may ask was decided by the handler (there is no API server to ask here).
        // Without an operator there is nothing to wait for: both versions are always
        // maintained, so the version asked for is served as soon as the row commits.
        Ok(escribir_fila(&self.pool, version, version, None).await?)
    }

    async fn seguir(
        self: Arc<Self>,
        estado: watch::Sender<EstadoVersion>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.escuchar(&estado, &shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    estado.send_modify(|e| e.desactualizada = true);
                    tracing::warn!(%error, ?backoff, "report version listener lost the database");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl FuenteBaseDeDatos {
    /// LISTEN, then re-read the row: a change committed before LISTEN took effect is seen by
    /// the read, one after it by the notification. Every notification, every poll and every
    /// reconnection re-reads the row (the payload is only a wake-up), so nothing sent while
    /// disconnected is missed.
    async fn escuchar(
        &self,
        estado: &watch::Sender<EstadoVersion>,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CANAL).await?;
        publicar(estado, leer_fila(&self.pool).await?);
        let mut sondeo = tokio::time::interval(self.sondeo);
        sondeo.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                // `Ok(None)`: the connection was lost and the listener has reconnected and
                // listens again; what was notified meanwhile is gone, hence the re-read below.
                notification = listener.try_recv() => { notification?; }
                _ = sondeo.tick() => {}
            }
            publicar(estado, leer_fila(&self.pool).await?);
        }
    }
}
