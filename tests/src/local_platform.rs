//! `scripts/run.sh` started by a runner: the processes `make run` starts, on a database, a
//! topic prefix and free ports of their own, stopped the way a user stops it (Ctrl-C).

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// The services of scripts/run.sh and the environment variable that sets each one's port.
pub const SERVICES: [(&str, &str); 14] = [
    ("payments", "PORT_PAYMENTS"),
    ("payments-b", "PORT_PAYMENTS_B"),
    ("payments-worker", "PORT_PAYMENTS_WORKER"),
    ("payments-worker-b", "PORT_PAYMENTS_WORKER_B"),
    ("campaigns-primary", "PORT_CAMPAIGNS_PRIMARY"),
    ("campaigns-replica", "PORT_CAMPAIGNS_REPLICA"),
    ("campaigns-proxy", "PORT_CAMPAIGNS_PROXY"),
    ("gateway", "PORT_GATEWAY"),
    ("data-service-v1", "PORT_DATA_SERVICE_V1"),
    ("data-service-v2", "PORT_DATA_SERVICE_V2"),
    ("reports-a", "PORT_REPORTS_A"),
    ("reports-b", "PORT_REPORTS_B"),
    ("event-collector-a", "PORT_COLLECTOR_A"),
    ("event-collector-b", "PORT_COLLECTOR_B"),
];

/// How long every service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A running `scripts/run.sh`; dropping it presses Ctrl-C and waits for the script.
pub struct LocalPlatform {
    child: Child,
    ports: BTreeMap<&'static str, u16>,
    log_dir: PathBuf,
}

impl LocalPlatform {
    /// Starts `scripts/run.sh binary` with `database_url`, a fresh topic prefix, free ports,
    /// logs under `log_dir` (emptied first) and `env` on top, and waits until every service
    /// answers `/ready`.
    pub async fn start(
        binary: &Path,
        database_url: &str,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        if !binary.exists() {
            bail!(
                "{} does not exist: run `make build` first",
                binary.display()
            );
        }
        let _ = std::fs::remove_dir_all(log_dir);
        std::fs::create_dir_all(log_dir)?;
        let mut command = Command::new("bash");
        command
            .arg("scripts/run.sh")
            .arg(binary)
            .env("DATABASE_URL", database_url)
            .env(
                "PULSAR_TOPIC_PREFIX",
                format!("run{}-", uuid::Uuid::new_v4().simple()),
            )
            .env("RUN_LOG_DIR", log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own process group, so that Ctrl-C can be sent to it as a terminal would.
            .process_group(0);
        let mut ports = BTreeMap::new();
        for (name, variable) in SERVICES {
            let port = testkit::free_port();
            command.env(variable, port.to_string());
            ports.insert(name, port);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut platform = Self {
            child: command.spawn().context("bash runs scripts/run.sh")?,
            ports,
            log_dir: log_dir.to_owned(),
        };
        platform.wait_ready().await?;
        Ok(platform)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let started = Instant::now();
        for name in self.ports.keys().copied().collect::<Vec<_>>() {
            let url = format!("{}/ready", self.url(name));
            while !client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                if started.elapsed() > READY_TIMEOUT || self.child.try_wait()?.is_some() {
                    bail!(
                        "{name} did not become ready; see {}",
                        self.log_dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// The platform of the user's-kit runs (the Postman collection, the console's browser
    /// tests), on a fresh database whose URL is returned with it. The simulated payment gateway
    /// answers in 20–300 ms, so payments reach their final state in well under a second: the
    /// runs still wait for them as they do against `make run`, whose gateway takes 2 to 8 s.
    /// `env` goes on top (e.g. the console's runs enforce access).
    pub async fn start_on_fresh_database(
        binary: &Path,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Self, testkit::TempDatabase)> {
        std::env::var("DATABASE_URL").context("DATABASE_URL (make sets it)")?;
        let database = testkit::TempDatabase::create().await;
        let mut all = vec![
            ("GATEWAY_LATENCY_MIN", "20ms"),
            ("GATEWAY_LATENCY_MAX", "300ms"),
            // One line per request too: the logs the secrets check reads say the most.
            ("RUST_LOG", "info,access=debug,sqlx=warn,pulsar=warn"),
        ];
        all.extend_from_slice(env);
        let platform = Self::start(binary, &database.url, log_dir, &all).await?;
        Ok((platform, database))
    }

    /// `http://127.0.0.1:<port>` of `service` (one of [`SERVICES`]).
    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Every service's pid, from the pid files run.sh writes.
    pub fn pids(&self) -> anyhow::Result<BTreeMap<&'static str, u32>> {
        SERVICES
            .iter()
            .map(|(name, _)| {
                let file = self.log_dir.join(format!("{name}.pid"));
                let pid = std::fs::read_to_string(&file)
                    .with_context(|| format!("pid file {}", file.display()))?;
                Ok((*name, pid.trim().parse()?))
            })
            .collect()
    }

    /// Presses Ctrl-C (SIGINT to the process group) and waits for the script, killing the
    /// group after `timeout`. Returns its exit status (None: killed) and how long it took.
    pub async fn interrupt(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<(Option<ExitStatus>, f64)> {
        let group = format!("-{}", self.child.id());
        let asked = Instant::now();
        Command::new("kill").args(["-INT", "--", &group]).status()?;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break Some(status);
            }
            if asked.elapsed() > timeout {
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                let _ = self.child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Ok((status, asked.elapsed().as_secs_f64()))
    }
}

impl Drop for LocalPlatform {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-INT", "--", &group]).status();
            let _ = self.child.wait();
        }
    }
}
