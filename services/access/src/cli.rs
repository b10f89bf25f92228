//! `aeropartners claves …` and `aeropartners auditoria`: partner keys and the audit trail from
//! a terminal (on Kubernetes, `kubectl exec deploy/<release>-payments -- aeropartners claves …`).
//! A new key is printed once, on standard output, and never again.

use chrono::Utc;
use platform::config::{DatabaseConfig, parse_duration};

use crate::{
    AlmacenDeClaves, NuevaClave,
    auditoria::{Auditoria, Consulta},
    domain::{Alcance, TipoClave},
    infrastructure::almacen,
};

#[derive(Debug, clap::Args)]
pub struct ClavesArgs {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(subcommand)]
    pub accion: AccionClaves,
}

#[derive(Debug, clap::Subcommand)]
pub enum AccionClaves {
    /// Make a key for an affiliate and print it (once: only its hash is kept).
    Crear {
        /// The affiliate the key acts as.
        #[arg(long)]
        afiliado: String,
        /// `sk` (secret: every scope) or `rk` (restricted: the `--alcances` given).
        #[arg(long, default_value = "sk")]
        tipo: String,
        /// The scopes of a restricted key, comma-separated: payments:read, payments:write,
        /// campaigns:read, campaigns:write, events:read, events:write, events:public (a key for
        /// web tags and apps: public sources only, never a commission), reports:read.
        #[arg(long, default_value = "")]
        alcances: String,
        /// What the key is for (shown in lists).
        #[arg(long, default_value = "")]
        descripcion: String,
        /// Lifetime (`90d`, `12h`); no expiry when left out.
        #[arg(long, value_parser = parse_duration)]
        expira: Option<std::time::Duration>,
    },
    /// List keys (by their public id: never the key), newest first.
    Listar {
        #[arg(long)]
        afiliado: Option<String>,
    },
    /// Revoke a key by its id (`ap_sk_XXXXXXXX`); every replica refuses it within a second.
    Revocar { id_clave: String },
}

#[derive(Debug, clap::Args)]
pub struct AuditoriaArgs {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Only this actor's entries (a key id or a Kubernetes user name).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action (e.g. `create payments/revert`).
    #[arg(long)]
    pub accion: Option<String>,
    /// At most this many entries, newest first.
    #[arg(long, default_value_t = 50)]
    pub limite: i64,
}

fn quien() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

async fn pool(database: &DatabaseConfig) -> anyhow::Result<sqlx::PgPool> {
    let pool = platform::db::connect(database, almacen::SCHEMA).await?;
    if database.migrate_on_start {
        almacen::migrate(&pool).await?;
    }
    Ok(pool)
}

/// Runs a `claves` command; what it prints is the answer.
pub async fn claves(args: ClavesArgs) -> anyhow::Result<String> {
    let almacen = AlmacenDeClaves::new(pool(&args.database).await?);
    match args.accion {
        AccionClaves::Crear {
            afiliado,
            tipo,
            alcances,
            descripcion,
            expira,
        } => {
            let tipo = TipoClave::from_code(&tipo)
                .ok_or_else(|| anyhow::anyhow!("--tipo must be sk or rk, not {tipo}"))?;
            let alcances = Alcance::parse_list(&alcances).map_err(|desconocidos| {
                anyhow::anyhow!(
                    "unknown scopes {}; the scopes are {}",
                    desconocidos.join(", "),
                    Alcance::nombres()
                )
            })?;
            let expira = expira
                .map(|d| chrono::Duration::from_std(d).map(|d| Utc::now() + d))
                .transpose()?;
            let (clave, registro) = almacen
                .crear(NuevaClave {
                    id_afiliado: afiliado,
                    tipo,
                    alcances,
                    descripcion,
                    expira,
                    creada_por: quien(),
                })
                .await?;
            eprintln!(
                "key {} for {} ({}); shown only now, keep it secret:",
                registro.id_clave,
                registro.id_afiliado,
                registro.alcances.join(",")
            );
            Ok(clave.revelar().to_owned())
        }
        AccionClaves::Listar { afiliado } => {
            let claves = almacen.listar(afiliado.as_deref()).await?;
            let mut lineas = vec![format!(
                "{:<16} {:<20} {:<4} {:<10} {:<25} {}",
                "ID", "AFILIADO", "TIPO", "ESTADO", "CREADA", "ALCANCES"
            )];
            for clave in claves {
                let estado = if clave.revocada.is_some() {
                    "revocada"
                } else if !clave.vigente(Utc::now()) {
                    "caducada"
                } else {
                    "vigente"
                };
                lineas.push(format!(
                    "{:<16} {:<20} {:<4} {:<10} {:<25} {}",
                    clave.id_clave,
                    clave.id_afiliado,
                    clave.tipo.code(),
                    estado,
                    clave
                        .creada
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    clave.alcances.join(",")
                ));
            }
            Ok(lineas.join("\n"))
        }
        AccionClaves::Revocar { id_clave } => match almacen.revocar(&id_clave, &quien()).await? {
            Some(clave) => Ok(format!(
                "{} revoked ({} by {})",
                clave.id_clave,
                clave.revocada.unwrap_or_else(Utc::now).to_rfc3339(),
                clave.revocada_por.unwrap_or_default()
            )),
            None => anyhow::bail!("no key {id_clave}"),
        },
    }
}

/// Runs `auditoria`: the newest entries, one per line.
pub async fn auditoria(args: AuditoriaArgs) -> anyhow::Result<String> {
    let entradas = Auditoria::new(pool(&args.database).await?)
        .consultar(&Consulta {
            actor: args.actor,
            accion: args.accion,
            desde: None,
            limite: args.limite,
        })
        .await?;
    Ok(entradas
        .into_iter()
        .map(|e| {
            format!(
                "{} {} {}={} {} {} from={} request={} {}",
                e.fecha.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                e.resultado,
                e.tipo_actor,
                e.actor,
                e.accion,
                e.objeto,
                e.origen,
                e.request_id,
                e.detalle
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}
