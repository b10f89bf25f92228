//! CPU time spent by the processes of a run, read from `/proc`: what one payment costs the
//! machine, across the services, PostgreSQL and the broker.
//!
//! A process's time is its own (utime + stime) plus that of its children it has reaped
//! (cutime + cstime), so a PostgreSQL backend that exits within the window still counts: its
//! time moves to the postmaster, which is in the same group.

use std::{collections::BTreeMap, process::Command, sync::LazyLock};

use serde::Serialize;

/// Who a process belongs to in the accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// The platform's own processes (given by pid).
    Services,
    /// Every `postgres` process (the server and its backends).
    Postgres,
    /// The Apache Pulsar broker's JVM.
    Broker,
    /// The process running the benchmark (the load generator).
    LoadGenerator,
}

/// CPU ticks per group at one moment, and the machine's busy ticks.
#[derive(Debug, Clone)]
pub struct Snapshot {
    groups: BTreeMap<Group, u64>,
    machine_busy: u64,
}

/// Milliseconds of CPU per group between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub services_ms: f64,
    pub postgres_ms: f64,
    pub broker_ms: f64,
    pub load_generator_ms: f64,
    /// Everything the machine did (all processes, the kernel's interrupts included).
    pub machine_ms: f64,
}

impl Usage {
    /// Services + PostgreSQL + broker: what the platform costs, without the load generator.
    pub fn platform_ms(&self) -> f64 {
        self.services_ms + self.postgres_ms + self.broker_ms
    }
}

static TICKS_PER_SECOND: LazyLock<f64> = LazyLock::new(|| {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
});

impl Snapshot {
    /// Reads every process now; `services` are the platform's pids.
    pub fn take(services: &[u32]) -> Self {
        let mut groups = BTreeMap::new();
        let own = std::process::id();
        for (pid, process) in processes() {
            let group = if services.contains(&pid) {
                Group::Services
            } else if pid == own {
                Group::LoadGenerator
            } else if process.comm == "postgres" {
                Group::Postgres
            } else if process.comm == "java" && is_pulsar(pid) {
                Group::Broker
            } else {
                continue;
            };
            *groups.entry(group).or_default() += process.ticks;
        }
        Self {
            groups,
            machine_busy: machine_busy_ticks(),
        }
    }

    /// CPU used since `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Usage {
        let ms = |group: Group| {
            let delta = self.groups.get(&group).copied().unwrap_or(0) as f64
                - earlier.groups.get(&group).copied().unwrap_or(0) as f64;
            delta.max(0.0) * 1000.0 / *TICKS_PER_SECOND
        };
        Usage {
            services_ms: ms(Group::Services),
            postgres_ms: ms(Group::Postgres),
            broker_ms: ms(Group::Broker),
            load_generator_ms: ms(Group::LoadGenerator),
            machine_ms: self.machine_busy.saturating_sub(earlier.machine_busy) as f64 * 1000.0
                / *TICKS_PER_SECOND,
        }
    }
}

struct Process {
    comm: String,
    /// utime + stime + cutime + cstime.
    ticks: u64,
}

fn processes() -> Vec<(u32, Process)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may itself contain
/// spaces or parentheses, so the fields are counted from the last `)`.
fn read_stat(pid: u32) -> Option<Process> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(stat: &str) -> Option<Process> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    // After ") ": state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17).
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    let ticks = field(14)? + field(15)? + field(16)?.max(0) + field(17)?.max(0);
    Some(Process {
        comm,
        ticks: u64::try_from(ticks).ok()?,
    })
}

fn is_pulsar(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("org.apache.pulsar"))
}

/// user + nice + system + irq + softirq + steal from the first line of `/proc/stat`.
fn machine_busy_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(cpu) = stat.lines().next() else {
        return 0;
    };
    let values: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| values.get(i))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_in_this_process_shows_as_load_generator_time() {
        let before = Snapshot::take(&[]);
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let usage = Snapshot::take(&[]).since(&before);
        // 300 ms of spinning is at least 100 ms of CPU even on a loaded machine.
        assert!(usage.load_generator_ms >= 100.0, "{usage:?}");
        assert!(
            usage.machine_ms >= usage.load_generator_ms * 0.5,
            "{usage:?}"
        );
        assert_eq!(usage.services_ms, 0.0);
    }

    #[test]
    fn a_listed_pid_counts_as_a_service() {
        let own = std::process::id();
        let before = Snapshot::take(&[own]);
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(200) {
            std::hint::black_box(started.elapsed());
        }
        let usage = Snapshot::take(&[own]).since(&before);
        assert!(usage.services_ms > 0.0, "{usage:?}");
        assert_eq!(usage.load_generator_ms, 0.0);
    }

    #[test]
    fn a_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "42 (tokio (x) 1) S 1 42 42 0 -1 4194560 100 0 0 0 \
                    7 3 2 1 20 0 5 0 1000 0 0";
        let process = parse_stat(line).expect("parses");
        assert_eq!(process.comm, "tokio (x) 1");
        assert_eq!(process.ticks, 7 + 3 + 2 + 1);
        assert!(parse_stat("42 (truncated").is_none());
        assert!(read_stat(std::process::id()).is_some());
    }
}
