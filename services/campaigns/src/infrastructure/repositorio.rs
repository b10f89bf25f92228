use chrono::{DateTime, Utc};
use platform::outbox;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::domain::{
    Campana, EstadoCampana, EventoCampana, MetricasCampana, Moneda, Presupuesto, TipoCampana,
};

pub const AGGREGATE_TYPE: &str = "Campana";

#[derive(sqlx::FromRow)]
struct FilaCampana {
    id: Uuid,
    nombre: String,
    tipo: String,
    descripcion: Option<String>,
    estado: String,
    presupuesto: Decimal,
    moneda: String,
    fecha_inicio: DateTime<Utc>,
    fecha_fin: DateTime<Utc>,
    id_afiliado: String,
    impresiones: i64,
    clicks: i64,
    conversiones: i64,
    gasto_actual: Decimal,
    ingresos: Decimal,
    fecha_creacion: DateTime<Utc>,
    fecha_actualizacion: DateTime<Utc>,
    version: i64,
}

/// `SELECT <every column> FROM campanas [WHERE <filter>]`, built at compile time.
macro_rules! select_campana {
    () => {
        concat!(
            "SELECT id, nombre, tipo, descripcion, estado, presupuesto, moneda, fecha_inicio, ",
            "fecha_fin, id_afiliado, impresiones, clicks, conversiones, gasto_actual, ingresos, ",
            "fecha_creacion, fecha_actualizacion, version FROM campanas"
        )
    };
    ($filtro:literal) => {
        concat!(select_campana!(), " WHERE ", $filtro)
    };
}

impl TryFrom<FilaCampana> for Campana {
    type Error = sqlx::Error;

    fn try_from(fila: FilaCampana) -> Result<Self, Self::Error> {
        let corrupt = |what: String| sqlx::Error::Decode(what.into());
        let moneda: Moneda = fila
            .moneda
            .parse()
            .map_err(|_| corrupt(format!("unknown currency {}", fila.moneda)))?;
        Ok(Campana {
            id: fila.id,
            nombre: fila.nombre,
            tipo: TipoCampana::from_code(&fila.tipo)
                .ok_or_else(|| corrupt(format!("unknown type {}", fila.tipo)))?,
            descripcion: fila.descripcion,
            estado: EstadoCampana::from_code(&fila.estado)
                .ok_or_else(|| corrupt(format!("unknown state {}", fila.estado)))?,
            presupuesto: Presupuesto::new(fila.presupuesto, moneda)
                .map_err(|e| corrupt(format!("stored budget breaks a rule: {e}")))?,
            fecha_inicio: fila.fecha_inicio,
            fecha_fin: fila.fecha_fin,
            id_afiliado: fila.id_afiliado,
            metricas: MetricasCampana {
                impresiones: fila.impresiones,
                clicks: fila.clicks,
                conversiones: fila.conversiones,
                gasto_actual: fila.gasto_actual,
                ingresos: fila.ingresos,
            },
            fecha_creacion: fila.fecha_creacion,
            fecha_actualizacion: fila.fecha_actualizacion,
            version: fila.version,
        })
    }
}

pub async fn insertar(tx: &mut PgConnection, c: &Campana) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO campanas (id, nombre, tipo, descripcion, estado, presupuesto, moneda, \
         fecha_inicio, fecha_fin, id_afiliado, fecha_creacion, fecha_actualizacion, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(c.id)
    .bind(&c.nombre)
    .bind(c.tipo.code())
    .bind(&c.descripcion)
    .bind(c.estado.code())
    .bind(c.presupuesto.monto())
    .bind(c.presupuesto.moneda().code())
    .bind(c.fecha_inicio)
    .bind(c.fecha_fin)
    .bind(&c.id_afiliado)
    .bind(c.fecha_creacion)
    .bind(c.fecha_actualizacion)
    .bind(c.version)
    .execute(tx)
    .await?;
    Ok(())
}

/// Writes every mutable field of the aggregate.
pub async fn actualizar(tx: &mut PgConnection, c: &Campana) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE campanas SET estado = $2, presupuesto = $3, moneda = $4, impresiones = $5, \
         clicks = $6, conversiones = $7, gasto_actual = $8, ingresos = $9, \
         fecha_actualizacion = $10, version = $11 WHERE id = $1",
    )
    .bind(c.id)
    .bind(c.estado.code())
    .bind(c.presupuesto.monto())
    .bind(c.presupuesto.moneda().code())
    .bind(c.metricas.impresiones)
    .bind(c.metricas.clicks)
    .bind(c.metricas.conversiones)
    .bind(c.metricas.gasto_actual)
    .bind(c.metricas.ingresos)
    .bind(c.fecha_actualizacion)
    .bind(c.version)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn buscar(pool: &PgPool, id: Uuid) -> Result<Option<Campana>, sqlx::Error> {
    una(pool, select_campana!("id = $1"), id).await
}

/// Loads and row-locks a campaign for a change within `tx`.
pub async fn bloquear(tx: &mut PgConnection, id: Uuid) -> Result<Option<Campana>, sqlx::Error> {
    una(tx, select_campana!("id = $1 FOR UPDATE"), id).await
}

/// Row-locks the affiliate's ACTIVE campaigns, in id order (a fixed lock order: two payments
/// of the same affiliate never deadlock each other).
pub async fn bloquear_activas_de_afiliado(
    tx: &mut PgConnection,
    id_afiliado: &str,
) -> Result<Vec<Campana>, sqlx::Error> {
    sqlx::query_as::<_, FilaCampana>(select_campana!(
        "id_afiliado = $1 AND estado = 'ACTIVE' ORDER BY id FOR UPDATE"
    ))
    .bind(id_afiliado)
    .fetch_all(tx)
    .await?
    .into_iter()
    .map(Campana::try_from)
    .collect()
}

/// Row-locks the ACTIVE campaigns of every affiliate in `afiliados`, in id order, and says how
/// many.
pub async fn bloquear_activas_de_afiliados(
    tx: &mut PgConnection,
    afiliados: &[&str],
) -> Result<usize, sqlx::Error> {
    if afiliados.is_empty() {
        return Ok(0);
    }
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM campanas WHERE id_afiliado = ANY($1) AND estado = 'ACTIVE' \
         ORDER BY id FOR UPDATE",
    )
    .bind(afiliados)
    .fetch_all(tx)
    .await?;
    Ok(ids.len())
}

/// Row-locks the campaigns `ids` (those that exist), in id order.
pub async fn bloquear_campanas(
    tx: &mut PgConnection,
    ids: &[uuid::Uuid],
) -> Result<(), sqlx::Error> {
    if !ids.is_empty() {
        sqlx::query("SELECT 1 FROM campanas WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .execute(tx)
            .await?;
    }
    Ok(())
}

async fn una<'e>(
    executor: impl PgExecutor<'e>,
    sql: &'static str,
    id: Uuid,
) -> Result<Option<Campana>, sqlx::Error> {
    sqlx::query_as::<_, FilaCampana>(sql)
        .bind(id)
        .fetch_optional(executor)
        .await?
        .map(Campana::try_from)
        .transpose()
}

/// Filters of `GET /campaigns/`.
#[derive(Debug, Clone, Default)]
pub struct Filtro {
    pub id_afiliado: Option<String>,
    pub estado: Option<EstadoCampana>,
}

fn where_clause(query: &mut QueryBuilder<Postgres>, filtro: &Filtro) {
    query.push(" WHERE true");
    if let Some(id_afiliado) = &filtro.id_afiliado {
        query.push(" AND id_afiliado = ").push_bind(id_afiliado);
    }
    if let Some(estado) = filtro.estado {
        query.push(" AND estado = ").push_bind(estado.code());
    }
}

/// One page, newest first, and the count of every match.
pub async fn listar(
    pool: &PgPool,
    filtro: &Filtro,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Campana>, i64), sqlx::Error> {
    let mut count = QueryBuilder::new("SELECT count(*) FROM campanas");
    where_clause(&mut count, filtro);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;

    let mut page = QueryBuilder::new(select_campana!());
    where_clause(&mut page, filtro);
    page.push(" ORDER BY fecha_creacion DESC, id LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let campanas = page
        .build_query_as::<FilaCampana>()
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(Campana::try_from)
        .collect::<Result<_, _>>()?;
    Ok((campanas, total))
}

/// Aggregates of `GET /campaigns/stats/general`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Agregados {
    pub total: i64,
    pub impresiones: i64,
    pub clicks: i64,
    pub conversiones: i64,
    pub gasto: Decimal,
    pub presupuesto: Decimal,
}

pub async fn estadisticas(
    pool: &PgPool,
    id_afiliado: Option<&str>,
) -> Result<(Agregados, Vec<(String, i64)>), sqlx::Error> {
    let agregados = sqlx::query_as::<_, Agregados>(
        "SELECT count(*) AS total, coalesce(sum(impresiones), 0)::bigint AS impresiones, \
         coalesce(sum(clicks), 0)::bigint AS clicks, \
         coalesce(sum(conversiones), 0)::bigint AS conversiones, \
         coalesce(sum(gasto_actual), 0) AS gasto, coalesce(sum(presupuesto), 0) AS presupuesto \
         FROM campanas WHERE $1::text IS NULL OR id_afiliado = $1",
    )
    .bind(id_afiliado)
    .fetch_one(pool)
    .await?;
    let por_estado = sqlx::query_as(
        "SELECT estado, count(*) FROM campanas WHERE $1::text IS NULL OR id_afiliado = $1 \
         GROUP BY estado",
    )
    .bind(id_afiliado)
    .fetch_all(pool)
    .await?;
    Ok((agregados, por_estado))
}

/// Puts the event in the outbox, in the transaction of the change.
pub async fn registrar_evento(
    tx: &mut PgConnection,
    evento: &EventoCampana,
    correlation_id: &str,
) -> Result<(), sqlx::Error> {
    let event = outbox::NewEvent {
        event_type: evento.tipo.nombre(),
        aggregate_type: AGGREGATE_TYPE,
        aggregate_id: evento.datos.id_campana.to_string(),
        aggregate_version: evento.version,
        occurred_at: evento.ocurrido_en,
        correlation_id,
        data: &evento.datos,
    };
    outbox::record(tx, evento.tipo.topic(), event).await
}

/// One more impression, click or conversion on a campaign of `id_afiliado`, in any state.
/// Returns false when no such campaign exists: unknown, or another affiliate's (an affiliate
/// cannot inflate someone else's campaign). A plain increment: it commutes with every other
/// change, so it takes no version and needs no read first.
pub async fn contar_tracking(
    tx: &mut PgConnection,
    id: Uuid,
    id_afiliado: &str,
    contador: crate::domain::Contador,
) -> Result<bool, sqlx::Error> {
    let columna = contador.columna();
    let sql =
        format!("UPDATE campanas SET {columna} = {columna} + 1 WHERE id = $1 AND id_afiliado = $2");
    let changed = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(id_afiliado)
        .execute(tx)
        .await?
        .rows_affected();
    Ok(changed == 1)
}
