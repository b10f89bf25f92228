use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    DatosEventoPago, Dinero, DineroError, EventoPago, Moneda, OrigenComision, TipoEventoPago,
};

/// The persisted lifecycle: `PENDIENTE → PROCESANDO → EXITOSO | FALLIDO`, `EXITOSO → REVERSADO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum EstadoPago {
    Pendiente,
    Procesando,
    Exitoso,
    Fallido,
    Reversado,
}

impl EstadoPago {
    pub const ALL: [EstadoPago; 5] = [
        Self::Pendiente,
        Self::Procesando,
        Self::Exitoso,
        Self::Fallido,
        Self::Reversado,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Pendiente => "PENDIENTE",
            Self::Procesando => "PROCESANDO",
            Self::Exitoso => "EXITOSO",
            Self::Fallido => "FALLIDO",
            Self::Reversado => "REVERSADO",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }
}

impl fmt::Display for EstadoPago {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A transition the lifecycle forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("el pago está en estado {actual} y no puede pasar a {destino}: {regla}")]
pub struct ReglaViolada {
    pub actual: EstadoPago,
    pub destino: EstadoPago,
    pub regla: &'static str,
}

/// What the payment gateway answered for a charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResultadoCobro {
    Aprobado { referencia_transaccion: String },
    Rechazado { motivo: String },
}

/// Field-level problems of a payment request, all reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("solicitud de pago no válida")]
pub struct SolicitudInvalida(pub Vec<(&'static str, String)>);

/// A validated request to create a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NuevoPago {
    pub id_afiliado: String,
    pub dinero: Dinero,
    pub referencia_pago: String,
    /// Set when the platform creates the payment itself, for a tracked conversion.
    pub comision: Option<OrigenComision>,
}

const MAX_TEXTO: usize = 255;

impl NuevoPago {
    /// Validates raw input. Text is trimmed; an empty or whitespace-only value is refused.
    pub fn validar(
        id_afiliado: &str,
        monto: Result<Decimal, String>,
        moneda: &str,
        referencia_pago: &str,
    ) -> Result<Self, SolicitudInvalida> {
        let mut errores = Vec::new();
        let id_afiliado = texto("id_afiliado", id_afiliado, &mut errores);
        let referencia_pago = texto("referencia_pago", referencia_pago, &mut errores);
        let moneda = moneda
            .parse::<Moneda>()
            .map_err(|e| errores.push(("moneda", e.to_string())))
            .ok();
        let monto = monto.map_err(|e| errores.push(("monto", e))).ok();
        let dinero = match (monto, moneda) {
            (Some(monto), Some(moneda)) => Dinero::new(monto, moneda)
                .map_err(|e: DineroError| errores.push(("monto", e.to_string())))
                .ok(),
            _ => None,
        };
        match (id_afiliado, referencia_pago, dinero) {
            (Some(id_afiliado), Some(referencia_pago), Some(dinero)) if errores.is_empty() => {
                Ok(Self {
                    id_afiliado,
                    dinero,
                    referencia_pago,
                    comision: None,
                })
            }
            _ => Err(SolicitudInvalida(errores)),
        }
    }
}

fn texto(
    campo: &'static str,
    valor: &str,
    errores: &mut Vec<(&'static str, String)>,
) -> Option<String> {
    let valor = valor.trim();
    if valor.is_empty() {
        errores.push((campo, "no puede estar vacío".to_owned()));
        None
    } else if valor.chars().count() > MAX_TEXTO {
        errores.push((campo, format!("admite como máximo {MAX_TEXTO} caracteres")));
        None
    } else {
        Some(valor.to_owned())
    }
}

/// The payment aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Pago {
    pub id: Uuid,
    pub id_afiliado: String,
    pub dinero: Dinero,
    pub referencia_pago: String,
    pub estado: EstadoPago,
    pub fecha_creacion: DateTime<Utc>,
    pub fecha_actualizacion: DateTime<Utc>,
    pub fecha_procesamiento: Option<DateTime<Utc>>,
    pub mensaje_error: Option<String>,
    pub referencia_transaccion: Option<String>,
    pub motivo_reversion: Option<String>,
    /// How many events this payment has emitted; the next one gets `eventos_emitidos + 1`.
    pub eventos_emitidos: i64,
    /// The conversion this payment is the commission of, when it is one.
    pub comision: Option<OrigenComision>,
}

impl Pago {
    /// A new payment, `PENDIENTE`, and its `PagoPendiente` event.
    pub fn crear(id: Uuid, solicitud: NuevoPago, ahora: DateTime<Utc>) -> (Self, EventoPago) {
        let mut pago = Self {
            id,
            id_afiliado: solicitud.id_afiliado,
            dinero: solicitud.dinero,
            referencia_pago: solicitud.referencia_pago,
            estado: EstadoPago::Pendiente,
            fecha_creacion: ahora,
            fecha_actualizacion: ahora,
            fecha_procesamiento: None,
            mensaje_error: None,
            referencia_transaccion: None,
            motivo_reversion: None,
            eventos_emitidos: 0,
            comision: solicitud.comision,
        };
        let evento = pago.emitir(TipoEventoPago::PagoPendiente, ahora);
        (pago, evento)
    }

    /// True when `solicitud` asks for exactly this payment (a harmless retry), false when the
    /// same `referencia_pago` is being reused for something else.
    pub fn es_misma_solicitud(&self, solicitud: &NuevoPago) -> bool {
        self.id_afiliado == solicitud.id_afiliado
            && self.dinero == solicitud.dinero
            && self.referencia_pago == solicitud.referencia_pago
            && self.comision == solicitud.comision
    }

    /// `PENDIENTE → PROCESANDO`, persisted before the gateway is called so a crash is visible.
    pub fn iniciar_procesamiento(&mut self, ahora: DateTime<Utc>) -> Result<(), ReglaViolada> {
        self.transicion(
            EstadoPago::Procesando,
            &[EstadoPago::Pendiente],
            "solo un pago PENDIENTE puede empezar a procesarse",
        )?;
        self.fecha_actualizacion = ahora;
        Ok(())
    }

    /// `PROCESANDO → EXITOSO | FALLIDO` with the gateway's answer.
    pub fn registrar_resultado(
        &mut self,
        resultado: ResultadoCobro,
        ahora: DateTime<Utc>,
    ) -> Result<EventoPago, ReglaViolada> {
        let (destino, tipo) = match &resultado {
            ResultadoCobro::Aprobado { .. } => (EstadoPago::Exitoso, TipoEventoPago::PagoExitoso),
            ResultadoCobro::Rechazado { .. } => (EstadoPago::Fallido, TipoEventoPago::PagoFallido),
        };
        self.transicion(
            destino,
            &[EstadoPago::Procesando],
            "solo un pago PROCESANDO recibe el resultado de la pasarela",
        )?;
        match resultado {
            ResultadoCobro::Aprobado {
                referencia_transaccion,
            } => self.referencia_transaccion = Some(referencia_transaccion),
            ResultadoCobro::Rechazado { motivo } => self.mensaje_error = Some(motivo),
        }
        self.fecha_procesamiento = Some(ahora);
        self.fecha_actualizacion = ahora;
        Ok(self.emitir(tipo, ahora))
    }

    /// `EXITOSO → REVERSADO`. Reverting an already reverted payment changes nothing and emits
    /// nothing (`Ok(None)`), so a retried request gets the same answer.
    pub fn revertir(
        &mut self,
        motivo: String,
        ahora: DateTime<Utc>,
    ) -> Result<Option<EventoPago>, ReglaViolada> {
        if self.estado == EstadoPago::Reversado {
            return Ok(None);
        }
        self.transicion(
            EstadoPago::Reversado,
            &[EstadoPago::Exitoso],
            "solo un pago EXITOSO puede revertirse",
        )?;
        self.motivo_reversion = Some(motivo);
        self.fecha_actualizacion = ahora;
        Ok(Some(self.emitir(TipoEventoPago::PagoRevertido, ahora)))
    }

    fn transicion(
        &mut self,
        destino: EstadoPago,
        desde: &[EstadoPago],
        regla: &'static str,
    ) -> Result<(), ReglaViolada> {
        if !desde.contains(&self.estado) {
            return Err(ReglaViolada {
                actual: self.estado,
                destino,
                regla,
            });
        }
        self.estado = destino;
        Ok(())
    }

    fn emitir(&mut self, tipo: TipoEventoPago, ahora: DateTime<Utc>) -> EventoPago {
        self.eventos_emitidos += 1;
        EventoPago {
            tipo,
            secuencia: self.eventos_emitidos,
            ocurrido_en: ahora,
            datos: DatosEventoPago {
                id_pago: self.id,
                id_afiliado: self.id_afiliado.clone(),
                monto: self.dinero.monto(),
                moneda: self.dinero.moneda(),
                referencia_pago: self.referencia_pago.clone(),
                estado: self.estado,
                mensaje_error: self.mensaje_error.clone(),
                referencia_transaccion: self.referencia_transaccion.clone(),
                motivo: self.motivo_reversion.clone(),
                comision: self.comision.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ahora() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-28T06:22:56Z")
            .unwrap()
            .into()
    }

    fn solicitud() -> NuevoPago {
        NuevoPago::validar("af-1", Ok("150.25".parse().unwrap()), "USD", "ref-1").unwrap()
    }

    fn nuevo() -> Pago {
        Pago::crear(Uuid::nil(), solicitud(), ahora()).0
    }

    #[test]
    fn creation_is_pending_and_emits_the_first_event() {
        let (pago, evento) = Pago::crear(Uuid::nil(), solicitud(), ahora());
        assert_eq!(pago.estado, EstadoPago::Pendiente);
        assert_eq!(evento.tipo, TipoEventoPago::PagoPendiente);
        assert_eq!(evento.secuencia, 1);
        assert_eq!(evento.datos.estado, EstadoPago::Pendiente);
        assert_eq!(evento.datos.monto, "150.25".parse::<Decimal>().unwrap());
    }

    #[test]
    fn success_path_numbers_events_in_order() {
        let mut pago = nuevo();
        pago.iniciar_procesamiento(ahora()).unwrap();
        assert_eq!(pago.estado, EstadoPago::Procesando);
        let evento = pago
            .registrar_resultado(
                ResultadoCobro::Aprobado {
                    referencia_transaccion: "txn_123456".into(),
                },
                ahora(),
            )
            .unwrap();
        assert_eq!(
            (pago.estado, evento.tipo, evento.secuencia),
            (EstadoPago::Exitoso, TipoEventoPago::PagoExitoso, 2)
        );
        assert_eq!(pago.referencia_transaccion.as_deref(), Some("txn_123456"));
        assert_eq!(pago.mensaje_error, None);
        assert!(pago.fecha_procesamiento.is_some());
        let revertido = pago.revertir("fraude".into(), ahora()).unwrap().unwrap();
        assert_eq!(
            (pago.estado, revertido.secuencia),
            (EstadoPago::Reversado, 3)
        );
    }

    #[test]
    fn failure_keeps_the_gateway_message() {
        let mut pago = nuevo();
        pago.iniciar_procesamiento(ahora()).unwrap();
        let evento = pago
            .registrar_resultado(
                ResultadoCobro::Rechazado {
                    motivo: "Tarjeta expirada".into(),
                },
                ahora(),
            )
            .unwrap();
        assert_eq!(pago.estado, EstadoPago::Fallido);
        assert_eq!(evento.tipo, TipoEventoPago::PagoFallido);
        assert_eq!(
            evento.datos.mensaje_error.as_deref(),
            Some("Tarjeta expirada")
        );
    }

    #[test]
    fn a_payment_past_pending_is_never_processed_again() {
        let mut pago = nuevo();
        pago.iniciar_procesamiento(ahora()).unwrap();
        assert!(pago.iniciar_procesamiento(ahora()).is_err());
        pago.registrar_resultado(ResultadoCobro::Rechazado { motivo: "x".into() }, ahora())
            .unwrap();
        assert!(pago.iniciar_procesamiento(ahora()).is_err());
        let otra = pago.registrar_resultado(
            ResultadoCobro::Aprobado {
                referencia_transaccion: "txn_1".into(),
            },
            ahora(),
        );
        assert!(
            otra.is_err(),
            "a second gateway result must not overwrite the first"
        );
        assert_eq!(pago.eventos_emitidos, 2);
    }

    #[test]
    fn only_successful_payments_can_be_reverted_and_reverting_twice_is_a_no_op() {
        let mut pendiente = nuevo();
        let error = pendiente.revertir("x".into(), ahora()).unwrap_err();
        assert_eq!(error.actual, EstadoPago::Pendiente);
        assert!(error.to_string().contains("EXITOSO"));

        let mut fallido = nuevo();
        fallido.iniciar_procesamiento(ahora()).unwrap();
        fallido
            .registrar_resultado(ResultadoCobro::Rechazado { motivo: "x".into() }, ahora())
            .unwrap();
        assert!(fallido.revertir("x".into(), ahora()).is_err());

        let mut exitoso = nuevo();
        exitoso.iniciar_procesamiento(ahora()).unwrap();
        exitoso
            .registrar_resultado(
                ResultadoCobro::Aprobado {
                    referencia_transaccion: "t".into(),
                },
                ahora(),
            )
            .unwrap();
        assert!(exitoso.revertir("a".into(), ahora()).unwrap().is_some());
        assert_eq!(exitoso.revertir("b".into(), ahora()).unwrap(), None);
        assert_eq!(exitoso.motivo_reversion.as_deref(), Some("a"));
    }

    #[test]
    fn validation_reports_every_bad_field() {
        let error = NuevoPago::validar("  ", Ok(Decimal::ZERO), "usd", "").unwrap_err();
        let campos: Vec<_> = error.0.iter().map(|(campo, _)| *campo).collect();
        assert_eq!(campos, vec!["id_afiliado", "referencia_pago", "moneda"]);
        let error = NuevoPago::validar("a", Ok("1.001".parse().unwrap()), "EUR", "r").unwrap_err();
        assert_eq!(
            error.0,
            vec![("monto", "admite como máximo 2 decimales".to_owned())]
        );
        let largo = "x".repeat(256);
        assert!(NuevoPago::validar(&largo, Ok(Decimal::ONE), "EUR", "r").is_err());
        assert!(NuevoPago::validar(&"x".repeat(255), Ok(Decimal::ONE), "EUR", "r").is_ok());
    }

    #[test]
    fn a_retry_is_recognised_and_a_reused_reference_is_not() {
        let pago = nuevo();
        assert!(pago.es_misma_solicitud(&solicitud()));
        let otra =
            NuevoPago::validar("af-1", Ok("150.26".parse().unwrap()), "USD", "ref-1").unwrap();
        assert!(!pago.es_misma_solicitud(&otra));
        let otra_moneda =
            NuevoPago::validar("af-1", Ok("150.25".parse().unwrap()), "EUR", "ref-1").unwrap();
        assert!(!pago.es_misma_solicitud(&otra_moneda));
    }
}
