//! Rate limits as a GCRA (generic cell rate algorithm): per affiliate, one timestamp (the
//! theoretical arrival time, TAT) is the whole state, so it fits one row that every replica
//! updates in its write transaction. A policy of `limite` events per `ventana` lets a burst
//! of `limite` through and then one event every `ventana / limite`. Costs are in events: a
//! batch of 100 costs 100.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Politica {
    pub limite: u32,
    pub ventana: Duration,
}

/// The state after a request, for the `RateLimit` headers and the rate-limit endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cuota {
    pub limite: u32,
    pub ventana: Duration,
    /// Events that could be sent right now.
    pub restantes: u32,
    /// Events counted against the window right now (`limite - restantes`).
    pub usados: u32,
    /// Until the allowance is whole again.
    pub reinicio: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Permitido {
        tat: DateTime<Utc>,
        cuota: Cuota,
    },
    /// Not stored; the request may be tried again after `reintentar_en`.
    Limitado {
        reintentar_en: Duration,
        cuota: Cuota,
    },
}

impl Politica {
    fn intervalo(&self) -> TimeDelta {
        // The time one event "occupies": ventana / limite, to the microsecond.
        let micros = self.ventana.as_micros() / u128::from(self.limite.max(1));
        TimeDelta::microseconds(i64::try_from(micros).unwrap_or(i64::MAX).max(1))
    }

    fn tolerancia(&self) -> TimeDelta {
        TimeDelta::from_std(self.ventana).unwrap_or(TimeDelta::MAX)
    }

    /// Spends `costo` events of the allowance whose state is `tat` (`None`: never used).
    pub fn consumir(
        &self,
        tat: Option<DateTime<Utc>>,
        ahora: DateTime<Utc>,
        costo: u32,
    ) -> Decision {
        let base = tat.map_or(ahora, |t| t.max(ahora));
        let nuevo = base + self.intervalo() * i32::try_from(costo).unwrap_or(i32::MAX);
        let exceso = nuevo - ahora - self.tolerancia();
        if exceso > TimeDelta::zero() {
            Decision::Limitado {
                reintentar_en: a_duracion_arriba(exceso),
                cuota: self.cuota(tat, ahora),
            }
        } else {
            Decision::Permitido {
                tat: nuevo,
                cuota: self.cuota(Some(nuevo), ahora),
            }
        }
    }

    /// Gives back `costo` events spent by a request that then stored nothing.
    pub fn devolver(&self, tat: DateTime<Utc>, ahora: DateTime<Utc>, costo: u32) -> DateTime<Utc> {
        (tat - self.intervalo() * i32::try_from(costo).unwrap_or(i32::MAX)).max(ahora)
    }

    /// The allowance as of `ahora`.
    pub fn cuota(&self, tat: Option<DateTime<Utc>>, ahora: DateTime<Utc>) -> Cuota {
        let ocupado = tat.map_or(TimeDelta::zero(), |t| (t - ahora).max(TimeDelta::zero()));
        let intervalo = self.intervalo().num_microseconds().unwrap_or(1).max(1);
        let ocupado_us = ocupado.num_microseconds().unwrap_or(i64::MAX);
        // An event partly drained still counts as used until it has fully drained.
        let usados = u32::try_from(ocupado_us.max(0).saturating_add(intervalo - 1) / intervalo)
            .unwrap_or(u32::MAX)
            .min(self.limite);
        Cuota {
            limite: self.limite,
            ventana: self.ventana,
            restantes: self.limite - usados,
            usados,
            reinicio: a_duracion_arriba(ocupado),
        }
    }
}

/// Rounds up to whole seconds: a client told to wait "0 s" would retry at once and fail again.
fn a_duracion_arriba(delta: TimeDelta) -> Duration {
    let micros = delta.num_microseconds().unwrap_or(i64::MAX).max(0);
    Duration::from_secs(u64::try_from(micros).unwrap_or(0).div_ceil(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn politica() -> Politica {
        Politica {
            limite: 10,
            ventana: Duration::from_secs(60),
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn spend(
        p: &Politica,
        tat: &mut Option<DateTime<Utc>>,
        ahora: DateTime<Utc>,
        costo: u32,
    ) -> bool {
        match p.consumir(*tat, ahora, costo) {
            Decision::Permitido { tat: nuevo, .. } => {
                *tat = Some(nuevo);
                true
            }
            Decision::Limitado { .. } => false,
        }
    }

    #[test]
    fn a_full_burst_then_one_event_per_interval() {
        let p = politica();
        let mut tat = None;
        for _ in 0..10 {
            assert!(spend(&p, &mut tat, t0(), 1));
        }
        assert!(
            !spend(&p, &mut tat, t0(), 1),
            "the 11th event of the burst is limited"
        );
        // One interval (6 s) later, exactly one more fits.
        let later = t0() + TimeDelta::seconds(6);
        assert!(spend(&p, &mut tat, later, 1));
        assert!(!spend(&p, &mut tat, later, 1));
    }

    #[test]
    fn costs_are_in_events() {
        let p = politica();
        let mut tat = None;
        assert!(spend(&p, &mut tat, t0(), 7));
        assert!(!spend(&p, &mut tat, t0(), 4), "7 + 4 > 10");
        assert!(spend(&p, &mut tat, t0(), 3));
        assert!(!spend(&p, &mut tat, t0(), 1));
        assert!(matches!(
            p.consumir(None, t0(), 11),
            Decision::Limitado { .. }
        ));
    }

    #[test]
    fn limited_answers_say_when_to_retry_and_what_is_left() {
        let p = politica();
        let mut tat = None;
        assert!(spend(&p, &mut tat, t0(), 10));
        match p.consumir(tat, t0() + TimeDelta::seconds(1), 1) {
            Decision::Limitado {
                reintentar_en,
                cuota,
            } => {
                assert_eq!(reintentar_en, Duration::from_secs(5));
                assert_eq!(cuota.restantes, 0);
                assert_eq!(cuota.usados, 10);
                assert_eq!(cuota.reinicio, Duration::from_secs(59));
            }
            other => panic!("expected a limit, got {other:?}"),
        }
    }

    #[test]
    fn the_allowance_drains_back_to_full() {
        let p = politica();
        let mut tat = None;
        assert!(spend(&p, &mut tat, t0(), 4));
        let cuota = p.cuota(tat, t0());
        assert_eq!((cuota.usados, cuota.restantes), (4, 6));
        assert_eq!(cuota.reinicio, Duration::from_secs(24));
        let cuota = p.cuota(tat, t0() + TimeDelta::seconds(13));
        assert_eq!(
            (cuota.usados, cuota.restantes),
            (2, 8),
            "partly drained counts as used"
        );
        let cuota = p.cuota(tat, t0() + TimeDelta::seconds(60));
        assert_eq!(
            (cuota.usados, cuota.restantes, cuota.reinicio),
            (0, 10, Duration::ZERO)
        );
    }

    #[test]
    fn a_refund_gives_the_events_back() {
        let p = politica();
        let mut tat = None;
        assert!(spend(&p, &mut tat, t0(), 10));
        let devuelto = p.devolver(tat.unwrap(), t0(), 3);
        assert_eq!(p.cuota(Some(devuelto), t0()).restantes, 3);
        assert_eq!(
            p.devolver(tat.unwrap(), t0(), 1000),
            t0(),
            "never below now"
        );
    }
}
