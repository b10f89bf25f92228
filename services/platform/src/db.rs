//! PostgreSQL access: one pool per bounded context whose connections see only the context's
//! schema, and migrations that several replicas may run at the same time.

use std::{borrow::Cow, str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use backon::{ExponentialBuilder, Retryable};

use crate::config::DatabaseConfig;

/// Tables every context gets in its own schema: outbox, inbox and idempotency keys.
static PLATFORM_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/platform");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating schema `{schema}` failed: {source}")]
    Migrate {
        schema: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Whether `error` says the database cannot be reached right now, rather than that this request
/// is wrong: no connection within the pool's timeout, a broken connection, or PostgreSQL
/// refusing work while it starts, stops or runs out of connections (SQLSTATE class 08, 57P0x,
/// 53300). A retry soon may succeed; the same statement against a healthy database would.
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    }
}

/// Connection options whose `search_path` is the context's schema, so the context's SQL names
/// its own tables without qualification and cannot see another context's by accident.
pub fn connect_options(database_url: &str, schema: &str) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(database_url).map_err(DbError::InvalidUrl)?;
    Ok(with_schema(options, schema))
}

/// Points an existing set of options (e.g. the ones `#[sqlx::test]` hands out) at a schema.
pub fn with_schema(options: PgConnectOptions, schema: &str) -> PgConnectOptions {
    options
        .options([("search_path", schema)])
        .application_name(&format!("aeropartners-{schema}"))
}

/// Opens the context's pool. A database that cannot be reached is retried with backoff for
/// up to `database_startup_wait` (a PostgreSQL starting beside the service answers after it);
/// anything else, a wrong password say, fails at once.
pub async fn connect(config: &DatabaseConfig, schema: &str) -> Result<PgPool, DbError> {
    let options = connect_options(&config.database_url, schema)?;
    let open = || {
        PgPoolOptions::new()
            .max_connections(config.database_max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
    };
    let deadline = std::time::Instant::now() + config.database_startup_wait;
    open.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(3))
            .without_max_times(),
    )
    .when(|error| is_unreachable(error) && std::time::Instant::now() < deadline)
    .notify(|error, delay| {
        tracing::warn!(%error, ?delay, schema, "PostgreSQL does not answer yet; retrying");
    })
    .await
    .map_err(DbError::Connect)
}

/// The context's pool, migrated first when the configuration says so. When something else
/// migrates (the chart's migration Job, which may run beside the pods), start-up waits up to
/// `database_startup_wait` for the schema, so that nothing reads a table before it exists;
/// past that it goes on, and `/ready` says what is pending.
pub async fn connect_and_migrate(
    config: &DatabaseConfig,
    schema: &str,
    migrator: &Migrator,
) -> Result<PgPool, DbError> {
    let pool = connect(config, schema).await?;
    if config.migrate_on_start {
        migrate(&pool, schema, migrator).await?;
    } else if !config.database_startup_wait.is_zero() {
        await_migrations(&pool, schema, migrator, config.database_startup_wait).await?;
    }
    Ok(pool)
}

async fn await_migrations(
    pool: &PgPool,
    schema: &str,
    migrator: &Migrator,
    within: Duration,
) -> Result<(), DbError> {
    let deadline = std::time::Instant::now() + within;
    let mut logged = false;
    while !migrations_applied(pool, schema, migrator).await? {
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                schema,
                ?within,
                "the schema is still not migrated; starting anyway"
            );
            return Ok(());
        }
        if !std::mem::replace(&mut logged, true) {
            tracing::info!(
                schema,
                "waiting for the schema's migrations (applied by another process)"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Creates the schema if needed, then applies the platform tables and the context's own
/// migrations inside it. Each migrator keeps its history in a table of that schema, and the
/// migrator's advisory lock serialises replicas that start together. Migrations recorded in the
/// schema but unknown to this binary are not an error: they are a newer release's, met after a
/// rollback (`helm rollback` runs the older image against the schema the newer one left), and
/// every migration here only adds (none drops or renames), so older code runs on the newer
/// schema.
pub async fn migrate(pool: &PgPool, schema: &str, context: &Migrator) -> Result<(), DbError> {
    let fail = |source| DbError::Migrate {
        schema: schema.to_owned(),
        source,
    };
    let mut platform = clone_migrator(&PLATFORM_MIGRATIONS);
    platform.set_ignore_missing(true);
    platform.dangerous_set_table_name(format!("{schema}._platform_migrations"));
    platform.create_schema(schema.to_owned());
    platform.run(pool).await.map_err(fail)?;

    let mut own = clone_migrator(context);
    own.set_ignore_missing(true);
    own.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
    own.create_schema(schema.to_owned());
    own.run(pool).await.map_err(fail)?;
    Ok(())
}

/// True when every migration of both migrators is recorded as applied: `/ready` uses it so
/// a pod never takes traffic against an older schema.
pub async fn migrations_applied(
    pool: &PgPool,
    schema: &str,
    context: &Migrator,
) -> Result<bool, DbError> {
    for (table, migrator) in [
        ("_platform_migrations", &PLATFORM_MIGRATIONS),
        ("_sqlx_migrations", context),
    ] {
        let qualified = format!("{schema}.{table}");
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(&qualified)
            .fetch_one(pool)
            .await?;
        if exists.is_none() {
            return Ok(false);
        }
        let applied: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT version FROM {qualified} WHERE success"
        )))
        .fetch_all(pool)
        .await?;
        if migrator.iter().any(|m| !applied.contains(&m.version)) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn clone_migrator(source: &Migrator) -> Migrator {
    Migrator {
        migrations: Cow::Owned(source.migrations.to_vec()),
        ignore_missing: source.ignore_missing,
        locking: source.locking,
        no_tx: source.no_tx,
        table_name: source.table_name.clone(),
        create_schemas: source.create_schemas.clone(),
    }
}
