//! PostgreSQL helpers of the benchmarks: a database of its own per run, and `pgbench` as the
//! ceiling a design is compared with.

use std::process::Command;

use anyhow::{Context, bail};

/// `url` with its database name replaced by `database` (query string kept).
pub fn replace_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let slash = base
        .rfind('/')
        .context("DATABASE_URL has no database name")?;
    Ok(format!(
        "{}/{}{}",
        &base[..slash],
        database,
        query.map(|q| format!("?{q}")).unwrap_or_default()
    ))
}

/// Runs `script` with `pgbench` (prepared statements, `clients` clients, 2 threads, for
/// `seconds`) and returns its transactions per second.
pub fn pgbench(
    database_url: &str,
    clients: usize,
    seconds: u64,
    script: &str,
) -> anyhow::Result<f64> {
    let file = std::env::temp_dir().join(format!(
        "aeropartners-pgbench-{}-{}.sql",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&file, script)?;
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&file)
        .arg(database_url)
        .output()
        .context("pgbench runs (apt-get install postgresql-contrib or postgresql-client)")?;
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("tps = ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .context("pgbench printed no tps")
}
