//! The report paths of each version, computed from the projection.

use std::collections::BTreeMap;

use axum::{Json, Router, extract::State};
use chrono::Utc;
use platform::http::Problem;
use rust_decimal::{Decimal, prelude::ToPrimitive};
use serde_json::{Value, json};
use sqlx::PgPool;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::Version;

const ESTADOS_PAGO: [&str; 5] = ["PENDIENTE", "PROCESANDO", "EXITOSO", "FALLIDO", "REVERSADO"];
const ESTADOS_CAMPANA: [&str; 5] = ["CREATED", "ACTIVE", "PAUSED", "COMPLETED", "CANCELLED"];
const MONEDAS: [&str; 3] = ["USD", "EUR", "COP"];

/// The version's report paths and their OpenAPI document.
pub fn router(pool: PgPool, version: Version) -> (Router, utoipa::openapi::OpenApi) {
    let router = match version {
        Version::V1 => OpenApiRouter::new()
            .routes(routes!(pagos_v1))
            .routes(routes!(campanas_v1))
            .routes(routes!(metricas_v1)),
        Version::V2 => OpenApiRouter::new()
            .routes(routes!(payments_v2))
            .routes(routes!(campaigns_v2))
            .routes(routes!(metrics_v2)),
    };
    let (router, mut openapi) = router.with_state(pool).split_for_parts();
    openapi.info = utoipa::openapi::InfoBuilder::new()
        .title(format!("Aeropartners — data service {}", version.as_str()))
        .version("1.0.0")
        .description(Some(
            "The upstream legacy reporting reads its `datos` from: reports computed from this \
             version's projection of the payment and campaign events.",
        ))
        .build();
    (router, openapi)
}

fn db(error: sqlx::Error) -> Problem {
    Problem::database(&error)
}

fn number(value: Decimal) -> f64 {
    value.round_dp(2).to_f64().unwrap_or(0.0)
}

/// `(estado, moneda, count, sum)` over every payment.
async fn payment_groups(pool: &PgPool) -> Result<Vec<(String, String, i64, Decimal)>, Problem> {
    sqlx::query_as("SELECT estado, moneda, count(*), sum(monto) FROM pagos GROUP BY estado, moneda")
        .fetch_all(pool)
        .await
        .map_err(db)
}

struct Totals {
    count: i64,
    succeeded: i64,
    failed: i64,
    amount_by_currency: BTreeMap<String, (i64, Decimal)>,
    by_status: BTreeMap<String, i64>,
}

fn totals(groups: &[(String, String, i64, Decimal)]) -> Totals {
    let mut t = Totals {
        count: 0,
        succeeded: 0,
        failed: 0,
        amount_by_currency: MONEDAS
            .iter()
            .map(|m| ((*m).to_owned(), (0, Decimal::ZERO)))
            .collect(),
        by_status: ESTADOS_PAGO.iter().map(|e| ((*e).to_owned(), 0)).collect(),
    };
    for (estado, moneda, count, sum) in groups {
        t.count += count;
        *t.by_status.entry(estado.clone()).or_default() += count;
        let entry = t
            .amount_by_currency
            .entry(moneda.clone())
            .or_insert((0, Decimal::ZERO));
        entry.0 += count;
        entry.1 += *sum;
        match estado.as_str() {
            "EXITOSO" | "REVERSADO" => t.succeeded += count,
            "FALLIDO" => t.failed += count,
            _ => {}
        }
    }
    t
}

/// Successful share of the payments that finished, as a percentage (0 when none finished).
fn success_rate(t: &Totals) -> f64 {
    let finished = t.succeeded + t.failed;
    if finished == 0 {
        0.0
    } else {
        number(Decimal::from(t.succeeded * 100) / Decimal::from(finished))
    }
}

/// Payments: count, amount per currency and count per state (v1 shape).
#[utoipa::path(get, path = "/api/v1/pagos/report", tag = "reports-v1",
    responses((status = 200, description = "The report, computed now", body = Object)))]
async fn pagos_v1(State(pool): State<PgPool>) -> Result<Json<Value>, Problem> {
    let t = totals(&payment_groups(&pool).await?);
    Ok(Json(json!({
        "version": "v1",
        "tipo": "pagos",
        "total_pagos": t.count,
        "monto_total": t.amount_by_currency.iter().map(|(m, (_, s))| (m.clone(), json!(number(*s)))).collect::<serde_json::Map<_, _>>(),
        "por_estado": t.by_status,
        "generado_en": Utc::now(),
    })))
}

/// Payments in detail: totals, success rate, per currency and per affiliate (v2 shape).
#[utoipa::path(get, path = "/api/v2/payments/report", tag = "reports-v2",
    responses((status = 200, description = "The report, computed now", body = Object)))]
async fn payments_v2(State(pool): State<PgPool>) -> Result<Json<Value>, Problem> {
    let t = totals(&payment_groups(&pool).await?);
    let by_affiliate: Vec<(String, i64, Decimal, i64, i64)> = sqlx::query_as(
        "SELECT id_afiliado, count(*), sum(monto), \
                count(*) FILTER (WHERE estado IN ('EXITOSO', 'REVERSADO')), \
                count(*) FILTER (WHERE estado IN ('EXITOSO', 'REVERSADO', 'FALLIDO')) \
         FROM pagos GROUP BY id_afiliado ORDER BY count(*) DESC, id_afiliado LIMIT 100",
    )
    .fetch_all(&pool)
    .await
    .map_err(db)?;
    Ok(Json(json!({
        "version": "v2",
        "type": "payments",
        "total": t.count,
        "by_currency": t.amount_by_currency.iter().map(|(m, (count, sum))| {
            let average = if *count == 0 { Decimal::ZERO } else { *sum / Decimal::from(*count) };
            (m.clone(), json!({"total": number(*sum), "count": count, "average": number(average)}))
        }).collect::<serde_json::Map<_, _>>(),
        "by_status": t.by_status,
        "by_affiliate": by_affiliate.iter().map(|(id, count, sum, ok, finished)| json!({
            "id_afiliado": id, "count": count, "amount": number(*sum),
            "success_rate": if *finished == 0 { 0.0 } else { number(Decimal::from(ok * 100) / Decimal::from(*finished)) },
        })).collect::<Vec<_>>(),
        "success_rate": success_rate(&t),
        "generated_at": Utc::now(),
    })))
}

/// `(estado, count, budget, spend, conversions)` over every campaign.
async fn campaign_groups(
    pool: &PgPool,
) -> Result<Vec<(String, i64, Decimal, Decimal, i64)>, Problem> {
    sqlx::query_as(
        "SELECT estado, count(*), sum(presupuesto), sum(gasto), sum(conversiones)::bigint \
         FROM campanas GROUP BY estado",
    )
    .fetch_all(pool)
    .await
    .map_err(db)
}

fn campaign_totals(
    groups: &[(String, i64, Decimal, Decimal, i64)],
) -> (i64, BTreeMap<String, i64>, Decimal, Decimal, i64) {
    let mut by_status: BTreeMap<String, i64> = ESTADOS_CAMPANA
        .iter()
        .map(|e| ((*e).to_owned(), 0))
        .collect();
    let (mut total, mut budget, mut spend, mut conversions) = (0, Decimal::ZERO, Decimal::ZERO, 0);
    for (estado, count, b, s, c) in groups {
        total += count;
        *by_status.entry(estado.clone()).or_default() += count;
        budget += *b;
        spend += *s;
        conversions += c;
    }
    (total, by_status, budget, spend, conversions)
}

/// Campaigns: count per state and budget totals (v1 shape).
#[utoipa::path(get, path = "/api/v1/campanas/report", tag = "reports-v1",
    responses((status = 200, description = "The report, computed now", body = Object)))]
async fn campanas_v1(State(pool): State<PgPool>) -> Result<Json<Value>, Problem> {
    let (total, by_status, budget, spend, _) = campaign_totals(&campaign_groups(&pool).await?);
    Ok(Json(json!({
        "version": "v1",
        "tipo": "campanas",
        "total_campanas": total,
        "activas": by_status.get("ACTIVE").copied().unwrap_or(0),
        "por_estado": by_status,
        "presupuesto_total": number(budget),
        "gasto_total": number(spend),
        "generado_en": Utc::now(),
    })))
}

/// Campaigns in detail: per state, budgets, spend and performance (v2 shape).
#[utoipa::path(get, path = "/api/v2/campaigns/report", tag = "reports-v2",
    responses((status = 200, description = "The report, computed now", body = Object)))]
async fn campaigns_v2(State(pool): State<PgPool>) -> Result<Json<Value>, Problem> {
    let (total, by_status, budget, spend, conversions) =
        campaign_totals(&campaign_groups(&pool).await?);
    let utilization = if budget.is_zero() {
        0.0
    } else {
        number(spend * Decimal::ONE_HUNDRED / budget)
    };
    Ok(Json(json!({
        "version": "v2",
        "type": "campaigns",
        "total": total,
        "active": by_status.get("ACTIVE").copied().unwrap_or(0),
        "by_status": by_status,
        "budget_total": number(budget),
        "spend_total": number(spend),
        "budget_utilization_pct": utilization,
        "conversions": conversions,
        "generated_at": Utc::now(),
    })))
}

/// Aggregated metrics of payments and campaigns (v1 shape).
#[utoipa::path(get, path = "/api/v1/metricas/report", tag = "reports-v1",
    responses((status = 200, description = "The report, computed now", body = Object)))]
async fn metricas_v1(State(pool): State<PgPool>) -> Result<Json<Value>, Problem> {
    let t = totals(&payment_groups(&pool).await?);
    let (_, _, _, _, conversions) = campaign_totals(&campaign_groups(&pool).await?);
    Ok(Json(json!({
        "version": "v1",
        "tipo": "metricas",
        "total_pagos": t.count,
        "tasa_exito": success_rate(&t),
        "conversiones": conversions,
        "generado_en": Utc::now(),
    })))
}

/// Aggregated metrics of payments and campaigns (v2 shape).
#[utoipa::path(get, path = "/api/v2/metrics/report", tag = "reports-v2",
    responses((status = 200, description = "The report, computed now", body = Object)))]
async fn metrics_v2(State(pool): State<PgPool>) -> Result<Json<Value>, Problem> {
    let t = totals(&payment_groups(&pool).await?);
    let (_, _, _, spend, conversions) = campaign_totals(&campaign_groups(&pool).await?);
    let succeeded_amount: Decimal = sqlx::query_scalar(
        "SELECT coalesce(sum(monto), 0) FROM pagos WHERE estado IN ('EXITOSO', 'REVERSADO')",
    )
    .fetch_one(&pool)
    .await
    .map_err(db)?;
    let average_ticket = if t.succeeded == 0 {
        0.0
    } else {
        number(succeeded_amount / Decimal::from(t.succeeded))
    };
    let cost_per_conversion = if conversions == 0 {
        0.0
    } else {
        number(spend / Decimal::from(conversions))
    };
    Ok(Json(json!({
        "version": "v2",
        "type": "metrics",
        "payments": t.count,
        "success_rate": success_rate(&t),
        "average_ticket": average_ticket,
        "conversions": conversions,
        "cost_per_conversion": cost_per_conversion,
        "generated_at": Utc::now(),
    })))
}
