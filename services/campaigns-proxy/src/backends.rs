//! The backends and their health: active checks of `/ready`, passive marks from refused
//! connections, and the choice of the active backend (the first healthy one in priority order,
//! so the primary takes over again as soon as it is healthy).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    pub name: String,
    pub url: String,
    pub ok: bool,
    pub fail_count: u32,
}

impl Backend {
    pub fn new(name: &str, url: &str) -> Self {
        Self {
            name: name.to_owned(),
            url: url.to_owned(),
            // Optimistic until the first check says otherwise: a proxy that starts with its
            // backends must not refuse traffic for one interval.
            ok: true,
            fail_count: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub backends: Vec<Backend>,
    pub active: Option<String>,
    pub total_failovers: u64,
}

impl Snapshot {
    pub fn backends_json(&self) -> serde_json::Value {
        self.backends
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    serde_json::json!({ "url": b.url, "ok": b.ok, "fail_count": b.fail_count }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

#[derive(Debug)]
struct State {
    backends: Vec<Backend>,
    active: Option<usize>,
    total_failovers: u64,
}

impl State {
    /// Re-elects the active backend; counts a switch between two backends as a failover.
    fn elect(&mut self) {
        let elected = self.backends.iter().position(|b| b.ok);
        if elected != self.active {
            let name = |i: Option<usize>| i.map_or("none", |i| self.backends[i].name.as_str());
            tracing::warn!(
                from = name(self.active),
                to = name(elected),
                "active campaigns backend changed"
            );
            if elected.is_some() && self.active.is_some() {
                self.total_failovers += 1;
            }
            self.active = elected;
        }
    }
}

/// The set of backends, shared by the request handlers and the health checker.
pub struct Pool {
    state: Mutex<State>,
    client: reqwest::Client,
    health_interval: Duration,
    health_timeout: Duration,
    max_failures: u32,
}

impl Pool {
    pub fn new(
        backends: Vec<Backend>,
        health_interval: Duration,
        health_timeout: Duration,
        max_failures: u32,
        upstream_timeout: Duration,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!backends.is_empty(), "at least one backend is needed");
        let client = reqwest::Client::builder()
            .timeout(upstream_timeout)
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(platform::http::upstream::POOL_IDLE_TIMEOUT)
            .build()?;
        Ok(Self {
            state: Mutex::new(State {
                active: Some(0),
                backends,
                total_failovers: 0,
            }),
            client,
            health_interval,
            health_timeout,
            max_failures: max_failures.max(1),
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn health_interval(&self) -> Duration {
        self.health_interval
    }

    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        Snapshot {
            backends: state.backends.clone(),
            active: state.active.map(|i| state.backends[i].name.clone()),
            total_failovers: state.total_failovers,
        }
    }

    /// Backends to try for one request: the active one, then the other healthy ones, then the
    /// unhealthy ones (a last resort beats a certain failure).
    pub fn candidates(&self) -> Vec<(usize, String, String)> {
        let state = self.lock();
        let mut order: Vec<usize> = state.active.into_iter().collect();
        order.extend(
            (0..state.backends.len()).filter(|i| Some(*i) != state.active && state.backends[*i].ok),
        );
        order.extend((0..state.backends.len()).filter(|i| !state.backends[*i].ok));
        order
            .into_iter()
            .map(|i| {
                (
                    i,
                    state.backends[i].name.clone(),
                    state.backends[i].url.clone(),
                )
            })
            .collect()
    }

    pub fn record(&self, index: usize, healthy: bool) {
        let mut state = self.lock();
        let max_failures = self.max_failures;
        let backend = &mut state.backends[index];
        if healthy {
            backend.fail_count = 0;
            backend.ok = true;
        } else {
            backend.fail_count = backend.fail_count.saturating_add(1);
            if backend.fail_count >= max_failures {
                backend.ok = false;
            }
        }
        state.elect();
    }

    /// A refused connection is proof enough: take the backend out at once instead of waiting
    /// for the next checks.
    pub fn record_refused(&self, index: usize) {
        let mut state = self.lock();
        let max_failures = self.max_failures;
        let backend = &mut state.backends[index];
        backend.fail_count = backend.fail_count.max(max_failures);
        backend.ok = false;
        state.elect();
    }

    /// Checks every backend's `/ready` every interval until `shutdown`.
    pub async fn run_health_checks(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.health_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let urls: Vec<String> = self.lock().backends.iter().map(|b| b.url.clone()).collect();
            let checks = urls.iter().map(|url| {
                self.client
                    .get(format!("{url}/ready"))
                    .timeout(self.health_timeout)
                    .send()
            });
            let results = futures::future::join_all(checks).await;
            for (index, result) in results.into_iter().enumerate() {
                self.record(index, result.is_ok_and(|r| r.status().is_success()));
            }
        }
    }
}
