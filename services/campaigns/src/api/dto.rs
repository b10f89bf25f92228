use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{
    Campana, EstadoCampana, MetricasCalculadas, Moneda, NuevaCampana, Presupuesto, TipoCampana,
};

#[derive(Debug, Deserialize, ToSchema)]
pub struct PresupuestoBody {
    /// 0..=1 000 000, at most 2 decimals, as a JSON number.
    #[schema(value_type = f64, example = 5000.0)]
    pub monto: serde_json::Number,
    #[schema(example = "USD")]
    pub moneda: String,
}

/// Body of `POST /campaigns/`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CrearCampanaBody {
    #[schema(example = "Black Friday")]
    pub nombre: String,
    /// `PROMOCIONAL`, `FIDELIZACION`, `ADQUISICION` or `RETENCION`.
    #[schema(example = "PROMOCIONAL")]
    pub tipo: String,
    pub presupuesto: PresupuestoBody,
    /// RFC 3339, or `YYYY-MM-DDTHH:MM:SS` read as UTC.
    #[schema(example = "2026-12-01T00:00:00Z")]
    pub fecha_inicio: String,
    #[schema(example = "2026-12-31T23:59:59Z")]
    pub fecha_fin: String,
    /// The affiliate the campaign is for: the key's, so with a key it may be left out (naming
    /// another is 403). Required in development mode.
    #[schema(example = "afiliado-123")]
    #[serde(default)]
    pub id_afiliado: Option<String>,
    pub descripcion: Option<String>,
}

type Errores = Vec<(&'static str, String)>;

fn fecha(campo: &'static str, texto: &str, errores: &mut Errores) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(texto.trim())
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(texto.trim(), "%Y-%m-%dT%H:%M:%S").map(|n| n.and_utc())
        })
        .map_err(|_| {
            errores.push((
                campo,
                format!("'{texto}' no es una fecha RFC 3339 ni YYYY-MM-DDTHH:MM:SS"),
            ));
        })
        .ok()
        // Stored to the microsecond: answer with what a later read returns.
        .map(|fecha| fecha.trunc_subsecs(6))
}

fn texto(campo: &'static str, valor: &str, max: usize, errores: &mut Errores) -> Option<String> {
    let valor = valor.trim();
    if valor.is_empty() {
        errores.push((campo, "no puede estar vacío".to_owned()));
        None
    } else if valor.chars().count() > max {
        errores.push((campo, format!("admite como máximo {max} caracteres")));
        None
    } else {
        Some(valor.to_owned())
    }
}

impl PresupuestoBody {
    pub fn validar(&self, errores: &mut Errores) -> Option<Presupuesto> {
        let moneda = self
            .moneda
            .parse::<Moneda>()
            .map_err(|e| errores.push(("presupuesto.moneda", e.to_string())))
            .ok();
        let monto = platform::http::exact_decimal(&self.monto)
            .map_err(|e| errores.push(("presupuesto.monto", e)))
            .ok();
        Presupuesto::new(monto?, moneda?)
            .map_err(|e| errores.push(("presupuesto.monto", e.to_string())))
            .ok()
    }
}

impl CrearCampanaBody {
    pub fn validar(&self, id_afiliado: &str) -> Result<NuevaCampana, Errores> {
        let mut errores = Vec::new();
        let nombre = texto("nombre", &self.nombre, 255, &mut errores);
        let tipo = TipoCampana::from_code(self.tipo.trim());
        if tipo.is_none() {
            errores.push((
                "tipo",
                format!("'{}' no es un tipo válido; use PROMOCIONAL, FIDELIZACION, ADQUISICION o RETENCION", self.tipo),
            ));
        }
        let presupuesto = self.presupuesto.validar(&mut errores);
        let inicio = fecha("fecha_inicio", &self.fecha_inicio, &mut errores);
        let fin = fecha("fecha_fin", &self.fecha_fin, &mut errores);
        if let (Some(inicio), Some(fin)) = (inicio, fin)
            && inicio >= fin
        {
            errores.push(("fecha_fin", "debe ser posterior a fecha_inicio".to_owned()));
        }
        let id_afiliado = texto("id_afiliado", id_afiliado, 255, &mut errores);
        let descripcion = match self.descripcion.as_deref().map(str::trim) {
            Some(d) if d.chars().count() > 2000 => {
                errores.push((
                    "descripcion",
                    "admite como máximo 2000 caracteres".to_owned(),
                ));
                None
            }
            Some("") | None => None,
            Some(d) => Some(d.to_owned()),
        };
        match (nombre, tipo, presupuesto, inicio, fin, id_afiliado) {
            (
                Some(nombre),
                Some(tipo),
                Some(presupuesto),
                Some(fecha_inicio),
                Some(fecha_fin),
                Some(id_afiliado),
            ) if errores.is_empty() => Ok(NuevaCampana {
                nombre,
                tipo,
                descripcion,
                presupuesto,
                fecha_inicio,
                fecha_fin,
                id_afiliado,
            }),
            _ => Err(errores),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PresupuestoDto {
    #[serde(with = "rust_decimal::serde::float")]
    #[schema(value_type = f64)]
    pub monto: Decimal,
    pub moneda: Moneda,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetricasDto {
    pub impresiones: i64,
    pub clicks: i64,
    pub conversiones: i64,
    #[serde(with = "rust_decimal::serde::float")]
    #[schema(value_type = f64)]
    pub gasto_actual: Decimal,
    pub ctr: f64,
    pub tasa_conversion: f64,
}

/// A campaign as every endpoint returns it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CampanaDto {
    pub id: Uuid,
    pub nombre: String,
    pub tipo: TipoCampana,
    pub descripcion: Option<String>,
    pub estado: EstadoCampana,
    pub presupuesto: PresupuestoDto,
    pub fecha_inicio: DateTime<Utc>,
    pub fecha_fin: DateTime<Utc>,
    pub id_afiliado: String,
    pub metricas: MetricasDto,
    pub fecha_creacion: DateTime<Utc>,
    pub fecha_actualizacion: DateTime<Utc>,
    /// Optimistic-concurrency token: send it back as `If-Match`.
    pub version: i64,
}

impl From<&Campana> for CampanaDto {
    fn from(c: &Campana) -> Self {
        Self {
            id: c.id,
            nombre: c.nombre.clone(),
            tipo: c.tipo,
            descripcion: c.descripcion.clone(),
            estado: c.estado,
            presupuesto: PresupuestoDto {
                monto: c.presupuesto.monto(),
                moneda: c.presupuesto.moneda(),
            },
            fecha_inicio: c.fecha_inicio,
            fecha_fin: c.fecha_fin,
            id_afiliado: c.id_afiliado.clone(),
            metricas: MetricasDto {
                impresiones: c.metricas.impresiones,
                clicks: c.metricas.clicks,
                conversiones: c.metricas.conversiones,
                gasto_actual: c.metricas.gasto_actual,
                ctr: c.metricas.ctr(),
                tasa_conversion: c.metricas.tasa_conversion(),
            },
            fecha_creacion: c.fecha_creacion,
            fecha_actualizacion: c.fecha_actualizacion,
            version: c.version,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListaCampanas {
    pub campanas: Vec<CampanaDto>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Optimizaciones {
    pub sugerencias: Vec<String>,
    pub total_sugerencias: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricasDetalle {
    pub id_campana: Uuid,
    pub metricas_basicas: MetricasDto,
    pub metricas_calculadas: MetricasCalculadas,
    /// `SIN_DATOS`, `BAJO`, `MEDIO` or `ALTO`, from CTR and conversion rate.
    pub rendimiento: String,
    pub optimizaciones: Optimizaciones,
}

impl MetricasDetalle {
    pub fn de(c: &Campana) -> Self {
        let basicas = CampanaDto::from(c).metricas;
        let (ctr, conversion) = (c.metricas.ctr(), c.metricas.tasa_conversion());
        let rendimiento = if c.metricas.impresiones == 0 {
            "SIN_DATOS"
        } else if ctr >= 2.0 && conversion >= 5.0 {
            "ALTO"
        } else if ctr >= 1.0 || conversion >= 2.0 {
            "MEDIO"
        } else {
            "BAJO"
        };
        let mut sugerencias = Vec::new();
        if c.metricas.impresiones > 0 && ctr < 1.0 {
            sugerencias.push("CTR bajo: revise la creatividad y la segmentación".to_owned());
        }
        if c.metricas.clicks > 0 && conversion < 2.0 {
            sugerencias.push("Tasa de conversión baja: revise la página de destino".to_owned());
        }
        let presupuesto = c.presupuesto.monto();
        if !presupuesto.is_zero()
            && c.metricas.gasto_actual * Decimal::from(10) >= presupuesto * Decimal::from(9)
        {
            sugerencias
                .push("El gasto supera el 90 % del presupuesto: considere ampliarlo".to_owned());
        }
        Self {
            id_campana: c.id,
            metricas_basicas: basicas,
            metricas_calculadas: c.metricas.calculadas(),
            rendimiento: rendimiento.to_owned(),
            optimizaciones: Optimizaciones {
                total_sugerencias: sugerencias.len(),
                sugerencias,
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricasAgregadas {
    pub impresiones: i64,
    pub clicks: i64,
    pub conversiones: i64,
    #[serde(with = "rust_decimal::serde::float")]
    #[schema(value_type = f64)]
    pub gasto_total: Decimal,
    #[serde(with = "rust_decimal::serde::float")]
    #[schema(value_type = f64)]
    pub presupuesto_total: Decimal,
    pub ctr: f64,
    pub tasa_conversion: f64,
}

/// Named apart from the collector's statistics in the gateway's merged document.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EstadisticasCampanas)]
pub struct Estadisticas {
    pub total_campanas: i64,
    pub metricas_agregadas: MetricasAgregadas,
    pub distribucion_por_estado: std::collections::BTreeMap<String, i64>,
}
