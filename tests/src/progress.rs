//! A live progress line for the long runs (scenarios): requests sent, failed and elapsed time,
//! so a person watching knows the run is alive and how it goes, before the final table.
//!
//! On a terminal the line is redrawn in place every second; in a log (CI) a line is printed
//! every 10 s instead, so the log stays readable.

use std::{
    io::{IsTerminal, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// Counters the load loops update; cheap to clone and to bump from many tasks.
#[derive(Debug, Clone)]
pub struct Counters {
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// False for a load that retries until answered: its line then says nothing of failures.
    counts_failures: bool,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            sent: Arc::default(),
            failed: Arc::default(),
            counts_failures: true,
        }
    }
}

impl Counters {
    /// For a load that retries every request until it is answered.
    pub fn sends_only() -> Self {
        Self {
            counts_failures: false,
            ..Self::default()
        }
    }

    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answered request, failed unless `ok`.
    pub fn answered(&self, ok: bool) {
        if !ok {
            self.failed();
        }
    }

    fn snapshot(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Prints the progress of `counters` until dropped.
pub struct Live {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Live {
    /// Starts printing to stderr, as `[label] 12 s / 60 s · 2 400 requests · 0 failed`, with
    /// `phase(elapsed)` appended (e.g. "primary killed"). `total` is the planned length, if
    /// the run has one (an estimate where it ends on an event).
    pub fn start(
        label: &'static str,
        total: Option<Duration>,
        counters: Counters,
        phase: impl Fn(Duration) -> Option<String> + Send + 'static,
    ) -> Self {
        let stop = CancellationToken::new();
        let on_terminal = std::io::stderr().is_terminal();
        let every = if on_terminal {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let started = Instant::now();
                let mut ticker = tokio::time::interval(every);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = ticker.tick() => {}
                    }
                    let elapsed = started.elapsed();
                    let (sent, failed) = counters.snapshot();
                    let planned = total.map_or(String::new(), |t| format!(" / {} s", t.as_secs()));
                    let mut line = format!(
                        "[{label}] {:>3} s{planned} · {} requests",
                        elapsed.as_secs(),
                        thousands(sent)
                    );
                    if counters.counts_failures {
                        line.push_str(&format!(" · {} failed", thousands(failed)));
                    }
                    if let Some(phase) = phase(elapsed) {
                        line.push_str(" · ");
                        line.push_str(&phase);
                    }
                    let mut stderr = std::io::stderr().lock();
                    // A write error (stderr closed) only loses the progress line.
                    let _ = if on_terminal {
                        write!(stderr, "\r\x1b[2K{line}")
                    } else {
                        writeln!(stderr, "{line}")
                    };
                    let _ = stderr.flush();
                }
                if on_terminal {
                    let _ = writeln!(std::io::stderr());
                }
            }
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops the line (the last value stays on screen) before the final table prints.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `12345` → `12 345`, as the scenario tables print numbers.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1 000");
        assert_eq!(thousands(1234567), "1 234 567");
    }

    #[test]
    fn counters_count_sent_and_failed() {
        let counters = Counters::default();
        counters.sent();
        counters.sent();
        counters.answered(true);
        counters.answered(false);
        assert_eq!(counters.snapshot(), (2, 1));
    }
}
