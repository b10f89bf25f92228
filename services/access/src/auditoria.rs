//! The audit trail: who did what, when, from where, and how it ended, for every privileged
//! action. Kept in `acceso.auditoria` (queried with `aeropartners auditoria` or
//! `GET /auditoria`) and written to the `audit` log target at INFO, so a log pipeline gets it
//! too. An entry that cannot be stored is logged at ERROR with everything it held: the action
//! has happened, and refusing it afterwards would not undo it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// How a privileged action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resultado {
    Permitido,
    Denegado,
    Fallido,
}

impl Resultado {
    pub fn code(self) -> &'static str {
        match self {
            Self::Permitido => "permitido",
            Self::Denegado => "denegado",
            Self::Fallido => "fallido",
        }
    }
}

/// One entry of the trail.
#[derive(Debug, Clone)]
pub struct Registro {
    pub tipo_actor: &'static str,
    pub actor: String,
    pub accion: String,
    pub objeto: String,
    pub origen: String,
    pub request_id: String,
    pub resultado: Resultado,
    pub detalle: String,
}

impl Registro {
    pub fn log(&self) {
        tracing::info!(
            target: "audit",
            tipo_actor = self.tipo_actor,
            actor = %self.actor,
            accion = %self.accion,
            objeto = %self.objeto,
            origen = %self.origen,
            request_id = %self.request_id,
            resultado = self.resultado.code(),
            detalle = %self.detalle,
            "audit"
        );
    }
}

/// An entry as stored.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EntradaAuditoria {
    pub id: i64,
    pub fecha: DateTime<Utc>,
    pub tipo_actor: String,
    pub actor: String,
    pub accion: String,
    pub objeto: String,
    pub origen: String,
    pub request_id: String,
    pub resultado: String,
    pub detalle: String,
}

/// A filter of [`Auditoria::consultar`].
#[derive(Debug, Clone, Default)]
pub struct Consulta {
    pub actor: Option<String>,
    pub accion: Option<String>,
    pub desde: Option<DateTime<Utc>>,
    pub limite: i64,
}

#[derive(Debug, Clone)]
pub struct Auditoria {
    pool: PgPool,
}

impl Auditoria {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn registrar(&self, registro: Registro) {
        registro.log();
        let stored = sqlx::query(
            "INSERT INTO acceso.auditoria \
                 (tipo_actor, actor, accion, objeto, origen, request_id, resultado, detalle) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(registro.tipo_actor)
        .bind(&registro.actor)
        .bind(&registro.accion)
        .bind(&registro.objeto)
        .bind(&registro.origen)
        .bind(&registro.request_id)
        .bind(registro.resultado.code())
        .bind(&registro.detalle)
        .execute(&self.pool)
        .await;
        if let Err(error) = stored {
            tracing::error!(
                target: "audit",
                %error,
                actor = %registro.actor,
                accion = %registro.accion,
                objeto = %registro.objeto,
                "audit entry not stored"
            );
        }
    }

    /// The newest entries first.
    pub async fn consultar(
        &self,
        consulta: &Consulta,
    ) -> Result<Vec<EntradaAuditoria>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, fecha, tipo_actor, actor, accion, objeto, origen, request_id, resultado, detalle \
             FROM acceso.auditoria \
             WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR accion = $2) \
               AND ($3::timestamptz IS NULL OR fecha >= $3) \
             ORDER BY fecha DESC, id DESC LIMIT $4",
        )
        .bind(&consulta.actor)
        .bind(&consulta.accion)
        .bind(consulta.desde)
        .bind(consulta.limite.clamp(1, 1000))
        .fetch_all(&self.pool)
        .await
    }
}
