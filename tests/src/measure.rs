//! Figures the scenario runners share.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency of the requests of one phase of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseLatency {
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl PhaseLatency {
    pub fn of(latencies: impl IntoIterator<Item = Duration>) -> anyhow::Result<Self> {
        let mut histogram = Histogram::<u64>::new(3)?;
        for latency in latencies {
            histogram.record(latency.as_micros().max(1) as u64)?;
        }
        Ok(Self {
            requests: histogram.len(),
            p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        })
    }

    /// `N req, p50 X ms, p99 Y ms`, for the printed tables.
    pub fn describe(&self) -> String {
        format!(
            "{} req, p50 {:.1} ms, p99 {:.1} ms",
            self.requests, self.p50_ms, self.p99_ms
        )
    }
}
