//! Logs and metrics: JSON log lines that carry the request id of the span they were written in,
//! and one Prometheus registry per process with HTTP, process and domain metrics.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// One JSON object per line, with the fields of the enclosing spans (request id included).
    #[default]
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,pulsar=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .flatten_event(true),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = result;
}

/// The process-wide registry every metric is registered in and `/metrics` renders.
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
        let registry = Registry::new_custom(Some("aeropartners".into()), None)
            .expect("static registry options are valid");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        registry
    });
    &REGISTRY
}

/// Registers a metric in the process registry. Call it from a `LazyLock` static so each metric
/// is registered exactly once per process, however many servers a test starts.
pub fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    registry()
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once, from its static");
    metric
}

/// A labelled counter, registered.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// A labelled latency histogram (seconds), registered.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register(
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(latency_buckets()),
            labels,
        )
        .expect("valid metric"),
    )
}

/// Renders the registry in the Prometheus text format.
pub fn render() -> String {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(error) = encoder.encode(&registry().gather(), &mut buffer) {
        tracing::error!(%error, "cannot encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// Latency buckets (seconds) used by every histogram in the platform.
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
}
