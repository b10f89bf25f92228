//! Failed authentications per client address. Past a budget, an address's credentials are
//! refused (429 + `Retry-After`) without being looked at: a flood of made-up keys costs no key
//! lookup, and a flood of made-up tokens no TokenReview (which would load the API server the
//! whole cluster depends on). A request without any credential is not a failure: it costs
//! nothing to refuse.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

/// How many addresses the limiter keeps before it forgets those that are within their budget
/// again (a limiter whose keys an attacker chooses must not grow without bound).
const DIRECCIONES_RECORDADAS: usize = 10_000;

pub struct Intentos {
    /// A GCRA budget of failures per address: `por_minuto` at once, then one more every
    /// `60 s / por_minuto`.
    fallos: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses out of budget, and until when.
    bloqueadas: moka::future::Cache<IpAddr, Instant>,
    reloj: DefaultClock,
}

impl Intentos {
    pub fn new(por_minuto: NonZeroU32) -> Self {
        Self {
            fallos: RateLimiter::keyed(Quota::per_minute(por_minuto)),
            bloqueadas: moka::future::Cache::builder()
                .max_capacity(DIRECCIONES_RECORDADAS as u64)
                .time_to_live(Duration::from_secs(60))
                .build(),
            reloj: DefaultClock::default(),
        }
    }

    /// How long `direccion` must wait before its credentials are looked at again, if it must.
    pub async fn espera(&self, direccion: IpAddr) -> Option<Duration> {
        let hasta = self.bloqueadas.get(&direccion).await?;
        hasta
            .checked_duration_since(Instant::now())
            .filter(|espera| !espera.is_zero())
    }

    /// Counts a refused credential from `direccion`; past its budget, the address waits.
    pub async fn fallo(&self, direccion: IpAddr) {
        if let Err(no_antes) = self.fallos.check_key(&direccion) {
            let espera = no_antes.wait_time_from(self.reloj.now());
            self.bloqueadas
                .insert(direccion, Instant::now() + espera)
                .await;
            tracing::warn!(
                target: "audit",
                %direccion,
                espera_ms = espera.as_millis() as u64,
                "too many failed authentications from one address"
            );
        }
        if self.fallos.len() > DIRECCIONES_RECORDADAS {
            self.fallos.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_waits_once_its_budget_is_spent_and_no_other_does() {
        let intentos = Intentos::new(NonZeroU32::new(3).unwrap());
        let (atacante, vecino): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            intentos.fallo(atacante).await;
            assert_eq!(intentos.espera(atacante).await, None, "within the budget");
        }
        intentos.fallo(atacante).await;
        let espera = intentos.espera(atacante).await.expect("out of budget");
        // 3 per minute: the next failure is allowed 20 s after the budget was spent.
        assert!(espera <= Duration::from_secs(20), "{espera:?}");
        assert!(espera > Duration::from_secs(15), "{espera:?}");
        assert_eq!(intentos.espera(vecino).await, None);
    }
}
