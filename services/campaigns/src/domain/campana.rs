use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{MetricasCampana, Moneda, Presupuesto};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TipoCampana {
    Promocional,
    Fidelizacion,
    Adquisicion,
    Retencion,
}

impl TipoCampana {
    pub const ALL: [TipoCampana; 4] = [
        Self::Promocional,
        Self::Fidelizacion,
        Self::Adquisicion,
        Self::Retencion,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Promocional => "PROMOCIONAL",
            Self::Fidelizacion => "FIDELIZACION",
            Self::Adquisicion => "ADQUISICION",
            Self::Retencion => "RETENCION",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum EstadoCampana {
    Created,
    Active,
    Paused,
    Completed,
    Cancelled,
}

impl EstadoCampana {
    pub const ALL: [EstadoCampana; 5] = [
        Self::Created,
        Self::Active,
        Self::Paused,
        Self::Completed,
        Self::Cancelled,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Active => "ACTIVE",
            Self::Paused => "PAUSED",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    fn es_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }
}

impl fmt::Display for EstadoCampana {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A lifecycle command (`PATCH /campaigns/{id}/<accion>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accion {
    Activar,
    Pausar,
    Finalizar,
    Cancelar,
}

impl Accion {
    pub const ALL: [Accion; 4] = [Self::Activar, Self::Pausar, Self::Finalizar, Self::Cancelar];

    /// `(allowed from, target)` — the whole transition table of API.md §4.1.
    fn transicion(self) -> (&'static [EstadoCampana], EstadoCampana) {
        use EstadoCampana::*;
        match self {
            Self::Activar => (&[Created, Paused], Active),
            Self::Pausar => (&[Active], Paused),
            Self::Finalizar => (&[Created, Active, Paused], Completed),
            Self::Cancelar => (&[Created, Active, Paused], Cancelled),
        }
    }
}

/// A rule the aggregate refuses to break; always a 409 naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReglaViolada {
    #[error("Transición no permitida: una campaña {actual} no puede pasar a {destino}")]
    Transicion {
        actual: EstadoCampana,
        destino: EstadoCampana,
    },
    #[error("No se puede activar una campaña con presupuesto 0")]
    ActivacionSinPresupuesto,
    #[error("No se puede activar una campaña cuya fecha_fin ya pasó")]
    ActivacionVencida,
    #[error("No se puede cambiar el presupuesto de una campaña {0}")]
    PresupuestoEnEstadoFinal(EstadoCampana),
    #[error("El presupuesto ({nuevo}) no puede ser menor que el gasto actual ({gasto})")]
    PresupuestoBajoGasto { nuevo: Decimal, gasto: Decimal },
    #[error("No se puede cambiar la moneda del presupuesto de una campaña con gasto registrado")]
    CambioDeMonedaConGasto,
}

/// A validated request to create a campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct NuevaCampana {
    pub nombre: String,
    pub tipo: TipoCampana,
    pub descripcion: Option<String>,
    pub presupuesto: Presupuesto,
    pub fecha_inicio: DateTime<Utc>,
    pub fecha_fin: DateTime<Utc>,
    pub id_afiliado: String,
}

/// What a `campaigns.evt.updated` event changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cambio {
    Budget,
    Pause,
    Finish,
    Cancel,
    Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TipoEventoCampana {
    Creada,
    Activada,
    Actualizada(Cambio),
}

impl TipoEventoCampana {
    pub fn nombre(self) -> &'static str {
        match self {
            Self::Creada => "CampanaCreada",
            Self::Activada => "CampanaActivada",
            Self::Actualizada(_) => "CampanaActualizada",
        }
    }

    pub fn topic(self) -> &'static str {
        match self {
            Self::Creada => "campaigns.evt.created",
            Self::Activada => "campaigns.evt.activated",
            Self::Actualizada(_) => "campaigns.evt.updated",
        }
    }
}

/// The event's `data`: the campaign right after the change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatosCampana {
    pub id_campana: Uuid,
    pub id_afiliado: String,
    pub nombre: String,
    pub tipo: TipoCampana,
    pub estado: EstadoCampana,
    #[serde(with = "rust_decimal::serde::float")]
    pub presupuesto: Decimal,
    pub moneda: Moneda,
    #[serde(with = "rust_decimal::serde::float")]
    pub gasto_actual: Decimal,
    pub impresiones: i64,
    pub clicks: i64,
    pub conversiones: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cambio: Option<Cambio>,
}

/// A domain event; `version` is the campaign's version after the change (1, 2, 3...).
#[derive(Debug, Clone, PartialEq)]
pub struct EventoCampana {
    pub tipo: TipoEventoCampana,
    pub version: i64,
    pub ocurrido_en: DateTime<Utc>,
    pub datos: DatosCampana,
}

/// The campaign aggregate. Every change bumps `version` and emits exactly one event, so the
/// version doubles as the optimistic-concurrency token (`If-Match`) and the event sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Campana {
    pub id: Uuid,
    pub nombre: String,
    pub tipo: TipoCampana,
    pub descripcion: Option<String>,
    pub estado: EstadoCampana,
    pub presupuesto: Presupuesto,
    pub fecha_inicio: DateTime<Utc>,
    pub fecha_fin: DateTime<Utc>,
    pub id_afiliado: String,
    pub metricas: MetricasCampana,
    pub fecha_creacion: DateTime<Utc>,
    pub fecha_actualizacion: DateTime<Utc>,
    pub version: i64,
}

impl Campana {
    pub fn crear(id: Uuid, nueva: NuevaCampana, ahora: DateTime<Utc>) -> (Self, EventoCampana) {
        let mut campana = Self {
            id,
            nombre: nueva.nombre,
            tipo: nueva.tipo,
            descripcion: nueva.descripcion,
            estado: EstadoCampana::Created,
            presupuesto: nueva.presupuesto,
            fecha_inicio: nueva.fecha_inicio,
            fecha_fin: nueva.fecha_fin,
            id_afiliado: nueva.id_afiliado,
            metricas: MetricasCampana::default(),
            fecha_creacion: ahora,
            fecha_actualizacion: ahora,
            version: 0,
        };
        let evento = campana.emitir(TipoEventoCampana::Creada, ahora);
        (campana, evento)
    }

    /// Applies a lifecycle command.
    pub fn ejecutar(
        &mut self,
        accion: Accion,
        ahora: DateTime<Utc>,
    ) -> Result<EventoCampana, ReglaViolada> {
        let (desde, destino) = accion.transicion();
        if !desde.contains(&self.estado) {
            return Err(ReglaViolada::Transicion {
                actual: self.estado,
                destino,
            });
        }
        if accion == Accion::Activar {
            if self.presupuesto.monto().is_zero() {
                return Err(ReglaViolada::ActivacionSinPresupuesto);
            }
            if self.fecha_fin <= ahora {
                return Err(ReglaViolada::ActivacionVencida);
            }
        }
        self.estado = destino;
        let tipo = match accion {
            Accion::Activar => TipoEventoCampana::Activada,
            Accion::Pausar => TipoEventoCampana::Actualizada(Cambio::Pause),
            Accion::Finalizar => TipoEventoCampana::Actualizada(Cambio::Finish),
            Accion::Cancelar => TipoEventoCampana::Actualizada(Cambio::Cancel),
        };
        Ok(self.emitir(tipo, ahora))
    }

    pub fn cambiar_presupuesto(
        &mut self,
        nuevo: Presupuesto,
        ahora: DateTime<Utc>,
    ) -> Result<EventoCampana, ReglaViolada> {
        if self.estado.es_final() {
            return Err(ReglaViolada::PresupuestoEnEstadoFinal(self.estado));
        }
        let gasto = self.metricas.gasto_actual;
        if nuevo.moneda() != self.presupuesto.moneda() && !gasto.is_zero() {
            return Err(ReglaViolada::CambioDeMonedaConGasto);
        }
        if nuevo.monto() < gasto {
            return Err(ReglaViolada::PresupuestoBajoGasto {
                nuevo: nuevo.monto(),
                gasto,
            });
        }
        self.presupuesto = nuevo;
        Ok(self.emitir(TipoEventoCampana::Actualizada(Cambio::Budget), ahora))
    }

    /// A successful payment of this campaign's affiliate: one conversion, its value as revenue,
    /// and `comision` as spend — capped so spend never exceeds the budget. Spend in another
    /// currency than the budget's is not converted (no rates here): only the conversion counts.
    /// Only ACTIVE campaigns attribute payments; others return `None` and do not change.
    pub fn atribuir_pago(
        &mut self,
        monto: Decimal,
        moneda: Moneda,
        comision: Decimal,
        ahora: DateTime<Utc>,
    ) -> Option<EventoCampana> {
        self.atribuir(monto, moneda, comision, true, ahora)
    }

    /// A commission payment for a conversion the collector tracked: revenue and spend as for
    /// any payment, but no conversion, because the tracked conversion already counted once.
    pub fn atribuir_comision(
        &mut self,
        monto: Decimal,
        moneda: Moneda,
        comision: Decimal,
        ahora: DateTime<Utc>,
    ) -> Option<EventoCampana> {
        self.atribuir(monto, moneda, comision, false, ahora)
    }

    fn atribuir(
        &mut self,
        monto: Decimal,
        moneda: Moneda,
        comision: Decimal,
        cuenta_conversion: bool,
        ahora: DateTime<Utc>,
    ) -> Option<EventoCampana> {
        if self.estado != EstadoCampana::Active {
            return None;
        }
        if cuenta_conversion {
            self.metricas.conversiones += 1;
        }
        if moneda == self.presupuesto.moneda() {
            let disponible = self.presupuesto.monto() - self.metricas.gasto_actual;
            self.metricas.gasto_actual += comision.min(disponible).max(Decimal::ZERO);
            self.metricas.ingresos += monto;
        }
        Some(self.emitir(TipoEventoCampana::Actualizada(Cambio::Metrics), ahora))
    }

    fn emitir(&mut self, tipo: TipoEventoCampana, ahora: DateTime<Utc>) -> EventoCampana {
        self.version += 1;
        self.fecha_actualizacion = ahora;
        EventoCampana {
            tipo,
            version: self.version,
            ocurrido_en: ahora,
            datos: DatosCampana {
                id_campana: self.id,
                id_afiliado: self.id_afiliado.clone(),
                nombre: self.nombre.clone(),
                tipo: self.tipo,
                estado: self.estado,
                presupuesto: self.presupuesto.monto(),
                moneda: self.presupuesto.moneda(),
                gasto_actual: self.metricas.gasto_actual,
                impresiones: self.metricas.impresiones,
                clicks: self.metricas.clicks,
                conversiones: self.metricas.conversiones,
                cambio: match tipo {
                    TipoEventoCampana::Actualizada(cambio) => Some(cambio),
                    _ => None,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EstadoCampana::*;
    use chrono::Duration;

    fn ahora() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .into()
    }

    fn campana(estado: EstadoCampana, monto: &str) -> Campana {
        let nueva = NuevaCampana {
            nombre: "Navidad".into(),
            tipo: TipoCampana::Promocional,
            descripcion: None,
            presupuesto: Presupuesto::new(monto.parse().unwrap(), Moneda::USD).unwrap(),
            fecha_inicio: ahora() - Duration::days(1),
            fecha_fin: ahora() + Duration::days(30),
            id_afiliado: "af-1".into(),
        };
        let (mut c, _) = Campana::crear(Uuid::nil(), nueva, ahora());
        c.estado = estado;
        c
    }

    /// Every (state, action) pair: allowed ones reach the documented state, all others are a
    /// 409-worthy rule naming both states.
    #[test]
    fn the_whole_transition_table() {
        let permitidas = [
            (Created, Accion::Activar, Active),
            (Paused, Accion::Activar, Active),
            (Active, Accion::Pausar, Paused),
            (Created, Accion::Finalizar, Completed),
            (Active, Accion::Finalizar, Completed),
            (Paused, Accion::Finalizar, Completed),
            (Created, Accion::Cancelar, Cancelled),
            (Active, Accion::Cancelar, Cancelled),
            (Paused, Accion::Cancelar, Cancelled),
        ];
        for estado in EstadoCampana::ALL {
            for accion in Accion::ALL {
                let mut c = campana(estado, "100");
                let version = c.version;
                let resultado = c.ejecutar(accion, ahora());
                match permitidas
                    .iter()
                    .find(|(e, a, _)| *e == estado && *a == accion)
                {
                    Some((_, _, destino)) => {
                        let evento =
                            resultado.unwrap_or_else(|e| panic!("{estado:?} {accion:?}: {e}"));
                        assert_eq!(c.estado, *destino);
                        assert_eq!(evento.version, version + 1);
                        assert_eq!(evento.datos.estado, *destino);
                    }
                    None => {
                        let error = resultado.unwrap_err();
                        assert!(
                            matches!(error, ReglaViolada::Transicion { actual, .. } if actual == estado)
                        );
                        assert!(error.to_string().contains(estado.code()), "{error}");
                        assert_eq!(c.estado, estado, "a refused command changes nothing");
                        assert_eq!(c.version, version);
                    }
                }
            }
        }
    }

    #[test]
    fn activation_needs_budget_and_a_future_end() {
        let mut sin_presupuesto = campana(Created, "0");
        assert_eq!(
            sin_presupuesto.ejecutar(Accion::Activar, ahora()),
            Err(ReglaViolada::ActivacionSinPresupuesto)
        );
        let mut vencida = campana(Created, "10");
        vencida.fecha_fin = ahora();
        assert_eq!(
            vencida.ejecutar(Accion::Activar, ahora()),
            Err(ReglaViolada::ActivacionVencida)
        );
        assert_eq!(vencida.estado, Created);
    }

    #[test]
    fn events_name_what_changed() {
        let (_, creada) = Campana::crear(
            Uuid::nil(),
            NuevaCampana {
                nombre: "x".into(),
                tipo: TipoCampana::Retencion,
                descripcion: None,
                presupuesto: Presupuesto::new(Decimal::TEN, Moneda::EUR).unwrap(),
                fecha_inicio: ahora(),
                fecha_fin: ahora() + Duration::days(1),
                id_afiliado: "a".into(),
            },
            ahora(),
        );
        assert_eq!(
            (creada.tipo.topic(), creada.version),
            ("campaigns.evt.created", 1)
        );
        let mut c = campana(Created, "10");
        assert_eq!(
            c.ejecutar(Accion::Activar, ahora()).unwrap().tipo.topic(),
            "campaigns.evt.activated"
        );
        let pausa = c.ejecutar(Accion::Pausar, ahora()).unwrap();
        assert_eq!(
            (pausa.tipo.topic(), pausa.datos.cambio),
            ("campaigns.evt.updated", Some(Cambio::Pause))
        );
    }

    #[test]
    fn budget_rules() {
        let presupuesto = |m: &str, moneda| Presupuesto::new(m.parse().unwrap(), moneda).unwrap();
        for estado in [Completed, Cancelled] {
            let mut c = campana(estado, "100");
            assert_eq!(
                c.cambiar_presupuesto(presupuesto("200", Moneda::USD), ahora()),
                Err(ReglaViolada::PresupuestoEnEstadoFinal(estado))
            );
        }
        let mut c = campana(Active, "100");
        c.metricas.gasto_actual = "40".parse().unwrap();
        assert!(matches!(
            c.cambiar_presupuesto(presupuesto("39.99", Moneda::USD), ahora()),
            Err(ReglaViolada::PresupuestoBajoGasto { .. })
        ));
        assert_eq!(
            c.cambiar_presupuesto(presupuesto("500", Moneda::EUR), ahora()),
            Err(ReglaViolada::CambioDeMonedaConGasto)
        );
        let evento = c
            .cambiar_presupuesto(presupuesto("40", Moneda::USD), ahora())
            .unwrap();
        assert_eq!(evento.datos.cambio, Some(Cambio::Budget));
        assert_eq!(c.presupuesto.monto(), Decimal::from(40));
        let mut nueva = campana(Created, "100");
        assert!(
            nueva
                .cambiar_presupuesto(presupuesto("10", Moneda::COP), ahora())
                .is_ok(),
            "no spend yet: currency may change"
        );
    }

    #[test]
    fn payments_add_conversions_and_capped_spend_to_active_campaigns_only() {
        let mut c = campana(Active, "15");
        let diez = Decimal::from(10);
        let evento = c
            .atribuir_pago(Decimal::from(100), Moneda::USD, diez, ahora())
            .unwrap();
        assert_eq!(evento.datos.cambio, Some(Cambio::Metrics));
        assert_eq!(
            (c.metricas.conversiones, c.metricas.gasto_actual),
            (1, diez)
        );
        c.atribuir_pago(Decimal::from(100), Moneda::USD, diez, ahora())
            .unwrap();
        assert_eq!(
            c.metricas.gasto_actual,
            Decimal::from(15),
            "spend is capped at the budget"
        );
        c.atribuir_pago(Decimal::from(100), Moneda::USD, diez, ahora())
            .unwrap();
        assert_eq!(
            (c.metricas.conversiones, c.metricas.gasto_actual),
            (3, Decimal::from(15))
        );
        c.atribuir_pago(Decimal::from(100), Moneda::EUR, diez, ahora())
            .unwrap();
        assert_eq!(
            (c.metricas.conversiones, c.metricas.gasto_actual),
            (4, Decimal::from(15)),
            "other currency: conversion only"
        );

        let mut con_comision = campana(Active, "100");
        con_comision
            .atribuir_comision(Decimal::from(20), Moneda::USD, Decimal::from(2), ahora())
            .unwrap();
        assert_eq!(
            (
                con_comision.metricas.conversiones,
                con_comision.metricas.gasto_actual
            ),
            (0, Decimal::from(2)),
            "a commission's conversion was counted by the tracking event already"
        );

        for estado in [Created, Paused, Completed, Cancelled] {
            let mut otra = campana(estado, "100");
            assert_eq!(
                otra.atribuir_pago(Decimal::ONE, Moneda::USD, Decimal::ONE, ahora()),
                None
            );
            assert_eq!(otra.metricas, MetricasCampana::default());
        }
    }
}
