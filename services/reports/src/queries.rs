//! The report queries: each version reads only its own tables.

use chrono::{NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::domain::{
    Campanas, Cifra, FilaAfiliado, FilaDia, Filtro, GrupoPagos, ReporteV1, ReporteV2, Version,
};

/// Appends the filter as `WHERE …` with bound parameters.
fn donde(q: &mut QueryBuilder<Postgres>, filtro: &Filtro) {
    q.push(" WHERE TRUE");
    if let Some(estado) = filtro.estado {
        q.push(" AND estado = ").push_bind(estado);
    }
    if let Some(moneda) = filtro.moneda {
        q.push(" AND moneda = ").push_bind(moneda);
    }
    if let Some(afiliado) = &filtro.id_afiliado {
        q.push(" AND id_afiliado = ").push_bind(afiliado.clone());
    }
    if let Some(desde) = filtro.desde {
        q.push(" AND fecha_creacion >= ").push_bind(desde);
    }
    if let Some(hasta) = filtro.hasta {
        q.push(" AND fecha_creacion < ").push_bind(hasta);
    }
}

fn pagos(version: Version) -> &'static str {
    match version {
        Version::V1 => "v1_pagos",
        Version::V2 => "v2_pagos",
    }
}

async fn grupos(
    pool: &PgPool,
    version: Version,
    filtro: &Filtro,
) -> Result<Vec<GrupoPagos>, sqlx::Error> {
    let mut q = QueryBuilder::new(format!(
        "SELECT estado, moneda, count(*), sum(monto) FROM {}",
        pagos(version)
    ));
    donde(&mut q, filtro);
    q.push(" GROUP BY estado, moneda");
    let filas: Vec<(String, String, i64, Decimal)> = q.build_query_as().fetch_all(pool).await?;
    Ok(filas
        .into_iter()
        .map(|(estado, moneda, cantidad, monto)| GrupoPagos {
            estado,
            moneda,
            cantidad,
            monto,
        })
        .collect())
}

pub async fn v1(pool: &PgPool, filtro: &Filtro) -> Result<ReporteV1, sqlx::Error> {
    let grupos = grupos(pool, Version::V1, filtro).await?;
    Ok(ReporteV1::new(&grupos, Utc::now()))
}

pub async fn v2(pool: &PgPool, filtro: &Filtro) -> Result<ReporteV2, sqlx::Error> {
    // Four reads of one snapshot would need a transaction; separate statements are enough
    // here because each part is self-consistent and the totals come from one statement.
    let (grupos, afiliados, dias, campanas) = futures::try_join!(
        grupos(pool, Version::V2, filtro),
        por_afiliado(pool, filtro),
        por_dia(pool, filtro),
        campanas(pool, filtro),
    )?;
    Ok(ReporteV2::new(
        &grupos,
        afiliados,
        dias,
        campanas,
        Utc::now(),
    ))
}

async fn por_afiliado(pool: &PgPool, filtro: &Filtro) -> Result<Vec<FilaAfiliado>, sqlx::Error> {
    let mut q = QueryBuilder::new(
        "SELECT id_afiliado, count(*), sum(monto), \
            count(*) FILTER (WHERE estado IN ('EXITOSO', 'REVERSADO')), \
            count(*) FILTER (WHERE estado IN ('EXITOSO', 'REVERSADO', 'FALLIDO')) \
         FROM v2_pagos",
    );
    donde(&mut q, filtro);
    q.push(" GROUP BY id_afiliado ORDER BY count(*) DESC, id_afiliado LIMIT 100");
    let filas: Vec<(String, i64, Decimal, i64, i64)> = q.build_query_as().fetch_all(pool).await?;
    Ok(filas.into_iter().map(FilaAfiliado::new).collect())
}

async fn por_dia(pool: &PgPool, filtro: &Filtro) -> Result<Vec<FilaDia>, sqlx::Error> {
    let mut q = QueryBuilder::new(
        "SELECT (fecha_creacion AT TIME ZONE 'UTC')::date AS dia, count(*), sum(monto) FROM v2_pagos",
    );
    donde(&mut q, filtro);
    q.push(" GROUP BY dia ORDER BY dia");
    let filas: Vec<(NaiveDate, i64, Decimal)> = q.build_query_as().fetch_all(pool).await?;
    Ok(filas
        .into_iter()
        .map(|(fecha, cantidad, monto)| FilaDia {
            fecha,
            cantidad,
            monto_total: Cifra(monto),
        })
        .collect())
}

/// Campaigns have no payment state or creation filter; they follow `id_afiliado` only.
async fn campanas(pool: &PgPool, filtro: &Filtro) -> Result<Campanas, sqlx::Error> {
    let mut q = QueryBuilder::new(
        "SELECT count(*) FILTER (WHERE estado = 'ACTIVE'), count(*), \
            coalesce(sum(presupuesto), 0), coalesce(sum(gasto), 0) FROM v2_campanas WHERE TRUE",
    );
    if let Some(afiliado) = &filtro.id_afiliado {
        q.push(" AND id_afiliado = ").push_bind(afiliado.clone());
    }
    let (activas, total, presupuesto, gasto): (i64, i64, Decimal, Decimal) =
        q.build_query_as().fetch_one(pool).await?;
    Ok(Campanas {
        activas,
        total,
        presupuesto_total: Cifra(presupuesto),
        gasto_total: Cifra(gasto),
    })
}
