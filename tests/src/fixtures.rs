//! Data the runners set up before their load.

use anyhow::Context;

/// Creates an active campaign of `affiliate` named `name` with a budget of `budget` USD through
/// `base` (a campaigns service, or the gateway: both serve `/campaigns`) and returns its id.
pub async fn active_campaign(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    affiliate: &str,
    budget: u64,
) -> anyhow::Result<String> {
    let created: serde_json::Value = client
        .post(format!("{base}/campaigns"))
        .json(&serde_json::json!({
            "nombre": name,
            "tipo": "ADQUISICION",
            "presupuesto": {"monto": budget, "moneda": "USD"},
            "fecha_inicio": "2026-01-01T00:00:00Z",
            "fecha_fin": "2099-01-01T00:00:00Z",
            "id_afiliado": affiliate,
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"]
        .as_str()
        .with_context(|| format!("a created campaign has an id: {created}"))?
        .to_owned();
    client
        .patch(format!("{base}/campaigns/{id}/activate"))
        .send()
        .await?
        .error_for_status()?;
    Ok(id)
}
