//! The key store (`acceso.claves_api`) and the cache in front of it.
//!
//! A request's key is looked up by its public id and compared with the stored SHA-256 in
//! constant time. Every replica caches what it looked up (hits and misses) for at most
//! [`CACHE_TTL`]; a change to a key (creation, revocation) is announced with `NOTIFY` by the
//! table's trigger and evicts that key from every replica's cache at once, so revocation needs
//! no restart. The TTL bounds how stale a cache can be if the notification is missed.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;

use crate::domain::{Alcance, ClaveApi, ClaveDeAfiliado, TipoClave};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/access");

/// The access context's schema.
pub const SCHEMA: &str = "acceso";
/// The channel the table's trigger notifies with a changed key's id.
const CANAL: &str = "acceso_claves";
/// Longest time a replica may trust a cached key without hearing of a change.
pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// Creates the `acceso` schema and applies its migrations (serialised between replicas by the
/// migrator's lock). Idempotent.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(MIGRATIONS.migrations.to_vec()),
        ignore_missing: true,
        locking: MIGRATIONS.locking,
        no_tx: MIGRATIONS.no_tx,
        table_name: MIGRATIONS.table_name.clone(),
        create_schemas: MIGRATIONS.create_schemas.clone(),
    };
    migrator.dangerous_set_table_name(format!("{SCHEMA}._sqlx_migrations"));
    migrator.create_schema(SCHEMA.to_owned());
    migrator.run(pool).await
}

/// A stored key, without its hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RegistroClave {
    pub id_clave: String,
    pub id_afiliado: String,
    #[schema(value_type = String)]
    #[sqlx(try_from = "String")]
    pub tipo: TipoClave,
    /// Scope names; a secret key (`sk`) holds every scope.
    pub alcances: Vec<String>,
    pub descripcion: String,
    pub creada: DateTime<Utc>,
    pub creada_por: String,
    pub expira: Option<DateTime<Utc>>,
    pub revocada: Option<DateTime<Utc>>,
    pub revocada_por: Option<String>,
}

impl RegistroClave {
    /// Whether the key may authenticate at `ahora`.
    pub fn vigente(&self, ahora: DateTime<Utc>) -> bool {
        self.revocada.is_none() && self.expira.is_none_or(|expira| expira > ahora)
    }
}

/// A stored key and its hash, as the lookup of a presented key reads it.
#[derive(Debug, sqlx::FromRow)]
struct ConHuella {
    #[sqlx(flatten)]
    registro: RegistroClave,
    huella: Vec<u8>,
}

/// What a new key is for.
#[derive(Debug, Clone)]
pub struct NuevaClave {
    pub id_afiliado: String,
    pub tipo: TipoClave,
    pub alcances: BTreeSet<Alcance>,
    pub descripcion: String,
    pub expira: Option<DateTime<Utc>>,
    /// Who creates it (a Kubernetes user, or `cli:<os user>`), for the record.
    pub creada_por: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorAlmacen {
    #[error("id_afiliado must be 1 to 255 characters")]
    AfiliadoInvalido,
    #[error("a restricted key needs at least one scope ({})", Alcance::nombres())]
    SinAlcances,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

const COLUMNAS: &str = "id_clave, id_afiliado, tipo, huella, alcances, descripcion, creada, \
                        creada_por, expira, revocada, revocada_por";

/// The keys in PostgreSQL.
#[derive(Debug, Clone)]
pub struct AlmacenDeClaves {
    pool: PgPool,
}

impl AlmacenDeClaves {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Makes a key and stores its hash. The key is returned to be shown once; it cannot be
    /// read back.
    pub async fn crear(
        &self,
        nueva: NuevaClave,
    ) -> Result<(ClaveApi, RegistroClave), ErrorAlmacen> {
        if nueva.id_afiliado.is_empty() || nueva.id_afiliado.len() > 255 {
            return Err(ErrorAlmacen::AfiliadoInvalido);
        }
        if nueva.tipo == TipoClave::Rk && nueva.alcances.is_empty() {
            return Err(ErrorAlmacen::SinAlcances);
        }
        let alcances: Vec<String> = match nueva.tipo {
            TipoClave::Sk => Alcance::TODOS.iter().map(|a| a.code().to_owned()).collect(),
            TipoClave::Rk => nueva.alcances.iter().map(|a| a.code().to_owned()).collect(),
        };
        // 62^8 key ids: a collision is astronomically rare, but it would be a primary-key
        // violation, not a silent overwrite; draw again.
        loop {
            let clave = ClaveApi::generar(nueva.tipo);
            let fila: Option<RegistroClave> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO acceso.claves_api \
                     (id_clave, id_afiliado, tipo, huella, alcances, descripcion, creada_por, expira) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id_clave) DO NOTHING RETURNING {COLUMNAS}"
            )))
            .bind(clave.id())
            .bind(&nueva.id_afiliado)
            .bind(nueva.tipo.code())
            .bind(clave.huella().as_slice())
            .bind(&alcances)
            .bind(&nueva.descripcion)
            .bind(&nueva.creada_por)
            .bind(nueva.expira)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(registro) = fila {
                return Ok((clave, registro));
            }
        }
    }

    /// The keys of one affiliate, or of all, newest first (never their hashes).
    pub async fn listar(
        &self,
        id_afiliado: Option<&str>,
    ) -> Result<Vec<RegistroClave>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNAS} FROM acceso.claves_api \
             WHERE $1::text IS NULL OR id_afiliado = $1 ORDER BY creada DESC, id_clave"
        )))
        .bind(id_afiliado)
        .fetch_all(&self.pool)
        .await
    }

    /// Revokes a key. `None` when there is no such key; a key revoked before keeps its first
    /// revocation's time and author.
    pub async fn revocar(
        &self,
        id_clave: &str,
        por: &str,
    ) -> Result<Option<RegistroClave>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE acceso.claves_api \
             SET revocada = coalesce(revocada, now()), revocada_por = coalesce(revocada_por, $2) \
             WHERE id_clave = $1 RETURNING {COLUMNAS}"
        )))
        .bind(id_clave)
        .bind(por)
        .fetch_optional(&self.pool)
        .await
    }

    /// The stored key with that id and its hash.
    async fn buscar(&self, id_clave: &str) -> Result<Option<ConHuella>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNAS} FROM acceso.claves_api WHERE id_clave = $1"
        )))
        .bind(id_clave)
        .fetch_optional(&self.pool)
        .await
    }
}

/// Why a well-formed key was refused.
#[derive(Debug, thiserror::Error)]
pub enum Rechazo {
    #[error("la clave no existe")]
    Desconocida,
    #[error("la clave {0} fue revocada o caducó")]
    Revocada(String),
    #[error("no se pudo consultar el almacén de claves: {0}")]
    Almacen(#[source] Arc<sqlx::Error>),
}

type Entrada = Option<Arc<ConHuella>>;

/// Checks presented keys against the store, through a cache every replica keeps coherent by
/// `LISTEN acceso_claves`.
#[derive(Clone)]
pub struct VerificadorDeClaves {
    almacen: AlmacenDeClaves,
    cache: moka::future::Cache<String, Entrada>,
}

impl VerificadorDeClaves {
    pub fn new(pool: PgPool) -> Self {
        Self {
            almacen: AlmacenDeClaves::new(pool),
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// The affiliate a presented key belongs to, if the key is stored, matches and is current.
    pub async fn verificar(&self, clave: &ClaveApi) -> Result<ClaveDeAfiliado, Rechazo> {
        let almacen = self.almacen.clone();
        let id = clave.id().to_owned();
        let entrada = self
            .cache
            .try_get_with(id.clone(), async move {
                almacen
                    .buscar(&id)
                    .await
                    .map(|encontrada| encontrada.map(Arc::new))
            })
            .await
            .map_err(Rechazo::Almacen)?;
        let Some(entrada) = entrada else {
            return Err(Rechazo::Desconocida);
        };
        let ConHuella { registro, huella } = entrada.as_ref();
        if !clave.coincide(huella) {
            return Err(Rechazo::Desconocida);
        }
        if !registro.vigente(Utc::now()) {
            return Err(Rechazo::Revocada(registro.id_clave.clone()));
        }
        Ok(ClaveDeAfiliado {
            id_afiliado: registro.id_afiliado.clone(),
            id_clave: registro.id_clave.clone(),
            tipo: registro.tipo,
            alcances: registro
                .alcances
                .iter()
                .filter_map(|a| Alcance::from_code(a))
                .collect(),
        })
    }

    /// Evicts changed keys from the cache as their notifications arrive, until `shutdown`.
    /// When the listener cannot connect or loses its connection, the whole cache is dropped (a
    /// change may have been missed) and it tries again; meanwhile the TTL bounds staleness.
    pub async fn escuchar_cambios(self, pool: PgPool, shutdown: CancellationToken) {
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => match listener.listen(CANAL).await {
                    Ok(()) => {
                        // Anything cached before LISTEN took effect may be stale.
                        self.cache.invalidate_all();
                        loop {
                            tokio::select! {
                                () = shutdown.cancelled() => return,
                                aviso = listener.recv() => match aviso {
                                    Ok(aviso) => self.cache.invalidate(aviso.payload()).await,
                                    Err(error) => {
                                        tracing::warn!(%error, "key-change listener lost; keys are re-read");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot LISTEN for key changes"),
                },
                Err(error) => tracing::warn!(%error, "cannot connect the key-change listener"),
            }
            self.cache.invalidate_all();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
