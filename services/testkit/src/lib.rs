//! Test support shared by every context's integration tests: a migrated pool from
//! `#[sqlx::test]`, the real Pulsar broker under a per-test topic prefix, calling an app
//! without a socket, polling with a deadline, and an observer of published events.

pub mod acceso;
pub mod operadores;

use std::time::Duration;

use axum::{body::Body, http::Request};
use futures::StreamExt;
use http_body_util::BodyExt;
use platform::{
    config::{HttpConfig, PulsarConfig},
    messaging::{Broker, Envelope},
};
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tower::ServiceExt;
use uuid::Uuid;

/// A pool on the test database whose connections live in `schema`, migrated.
pub async fn migrated_pool(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    schema: &str,
    migrator: &Migrator,
) -> PgPool {
    let pool = options
        .max_connections(20)
        .connect_with(platform::db::with_schema(connect, schema))
        .await
        .expect("test database reachable");
    platform::db::migrate(&pool, schema, migrator)
        .await
        .expect("migrations apply");
    pool
}

pub fn http_config() -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        body_limit_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        // Tests stop their services at the end; none of them measures the drain but the
        // platform's own test of it, which sets it.
        shutdown_drain: Duration::ZERO,
        connections: platform::config::ConnectionLimits::default(),
    }
}

/// Pulsar settings for a test: the real broker of `PULSAR_URL`, with a fresh topic prefix so
/// tests never see each other's events.
pub fn pulsar_config() -> PulsarConfig {
    PulsarConfig {
        pulsar_url: std::env::var("PULSAR_URL")
            .expect("PULSAR_URL must point at the real broker (make test starts one)"),
        pulsar_namespace: "public/default".into(),
        pulsar_topic_prefix: format!("t{}-", Uuid::new_v4().simple()),
        pulsar_auth_token: None,
        pulsar_tls_trust_certs_file: None,
    }
}

pub async fn broker(config: &PulsarConfig) -> Broker {
    Broker::connect(config).await.expect("Pulsar reachable")
}

pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: serde_json::Value,
}

/// Sends one request through the app (no socket) and decodes the JSON answer.
pub async fn call(
    app: &platform::http::App,
    method: &str,
    uri: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })
    };
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `limit`. A liveness
/// bound for asynchronous work, not a speed assertion.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A subscription that sees every event published under a test's prefix from the moment it
/// subscribes. Subscribe before producing: the broker may trim messages that every existing
/// subscription has acknowledged, so a late subscriber is not guaranteed to see them.
pub struct Observer {
    topics: Vec<String>,
    consumer: pulsar::Consumer<Vec<u8>, pulsar::TokioExecutor>,
}

impl Observer {
    pub async fn subscribe(config: &PulsarConfig, topics: &[&str]) -> Self {
        let broker = broker(config).await;
        let full: Vec<String> = topics.iter().map(|t| broker.topic(t)).collect();
        let consumer = broker
            .client()
            .consumer()
            .with_topics(&full)
            .with_subscription(format!("test-observer-{}", Uuid::new_v4()))
            .with_subscription_type(pulsar::SubType::Exclusive)
            .with_options(pulsar::ConsumerOptions {
                initial_position: pulsar::consumer::InitialPosition::Earliest,
                ..Default::default()
            })
            .build()
            .await
            .expect("observer subscribes");
        Self {
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            consumer,
        }
    }

    /// Receives until `done` says enough, as `(logical topic, envelope)` pairs.
    pub async fn collect(
        &mut self,
        limit: Duration,
        done: impl Fn(&[(String, Envelope)]) -> bool,
    ) -> Vec<(String, Envelope)> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&seen) {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !remaining.is_zero(),
                "only {} events observed within {limit:?}",
                seen.len()
            );
            match tokio::time::timeout(remaining, self.consumer.next()).await {
                Ok(Some(Ok(message))) => {
                    self.consumer.ack(&message).await.unwrap();
                    let envelope: Envelope = serde_json::from_slice(&message.payload.data).unwrap();
                    let topic = self
                        .topics
                        .iter()
                        .find(|t| message.topic.ends_with(t.as_str()))
                        .cloned()
                        .unwrap_or(message.topic.clone());
                    seen.push((topic, envelope));
                }
                Ok(other) => panic!("observer stream failed: {other:?}"),
                Err(_) => {}
            }
        }
        seen
    }
}

/// A database of its own for tests that start real service processes (which need a URL, not a
/// pool). Dropped with `drop_database`.
pub struct TempDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl TempDatabase {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin_url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must point at the real PostgreSQL (make test starts one)");
        let name = format!("t_{}", Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let (base, query) = admin_url
            .split_once('?')
            .map_or((admin_url.as_str(), None), |(b, q)| (b, Some(q)));
        let slash = base.rfind('/').expect("DATABASE_URL names a database");
        let url = format!(
            "{}/{name}{}",
            &base[..slash],
            query.map(|q| format!("?{q}")).unwrap_or_default()
        );
        Self {
            admin_url,
            name,
            url,
        }
    }

    pub async fn drop_database(self) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        if let Err(error) = drop_database(&mut admin, &self.name).await {
            panic!("cannot drop database {}: {error}", self.name);
        }
    }
}

/// Drops database `name` and whatever sessions are on it.
///
/// Right after a write-heavy run autovacuum works on the database, and FORCE cannot end its
/// workers, which are a superuser's sessions (the benchmarks failed with "must be a member of
/// the role whose process is being terminated"); retrying did not help, since the launcher
/// kept sending new workers for the next table. So connections are closed to it first, which
/// keeps autovacuum away (it skips such databases), and the drop is retried, once a second for
/// up to 60 s, while the worker already there finishes.
pub async fn drop_database(admin: &mut sqlx::PgConnection, name: &str) -> Result<(), sqlx::Error> {
    // A failure here (e.g. the database is gone) shows in the drop below.
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&mut *admin)
    .await;
    let mut attempts = 0;
    loop {
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut *admin)
        .await;
        match dropped {
            Ok(_) => return Ok(()),
            Err(error) if attempts >= 60 => return Err(error),
            Err(_) => {
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Ports handed out by [`free_port`]: below the kernel's ephemeral range (32768–60999), so no
/// outgoing connection takes one between the test choosing it and the service binding it, and
/// above the infrastructure's fixed ports (etcd 23790/23800).
const TEST_PORTS: std::ops::Range<u16> = 24_000..32_000;

/// A loopback port nothing listens on right now, never the same twice in one test process.
///
/// Asking the kernel for port 0 is not enough: tests run in parallel, and a port released by
/// one `bind(0)` may be handed to the next, so two tests of one binary could give their
/// services the same port (a CI run once sent a payment to another test's reports service).
/// A process-wide cursor through [`TEST_PORTS`], starting at an offset drawn from the pid,
/// gives every call a port no other call of this process got.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = CURSOR.fetch_add(1, Ordering::SeqCst) % span;
        let port = TEST_PORTS.start + u16::try_from(offset).expect("offset below the span");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

/// Polls `url` until it answers 2xx; panics after `limit`.
pub async fn wait_until_ready(url: &str, limit: Duration) {
    let client = reqwest::Client::new();
    eventually(&format!("{url} ready"), limit, || async {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// A service process started from the `aeropartners` binary, on `database_url` and the broker
/// of `PULSAR_URL` under `topic_prefix`. Killed (SIGKILL) and reaped when dropped.
pub struct ServiceProcess(pub std::process::Child);

impl ServiceProcess {
    /// In development mode (loopback listeners, a harness's clients without keys: as `make
    /// run`), for tests that are not about who calls.
    pub fn spawn(
        binary: &std::path::Path,
        args: &[&str],
        database_url: &str,
        topic_prefix: &str,
    ) -> std::io::Result<Self> {
        Self::spawn_with(
            binary,
            args,
            database_url,
            topic_prefix,
            &[("AUTH_MODE", "development")],
        )
    }

    /// With access enforced as the chart does, and `env` on top (e.g. `AUTH_KUBERNETES` and
    /// `AUTH_NAMESPACE` for operators): for the scenario runners, whose clients call with
    /// keys and tokens as a cluster's do.
    pub fn spawn_enforced(
        binary: &std::path::Path,
        args: &[&str],
        database_url: &str,
        topic_prefix: &str,
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let mut all = vec![("AUTH_MODE", "enforce")];
        all.extend_from_slice(env);
        Self::spawn_with(binary, args, database_url, topic_prefix, &all)
    }

    fn spawn_with(
        binary: &std::path::Path,
        args: &[&str],
        database_url: &str,
        topic_prefix: &str,
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        std::process::Command::new(binary)
            .args(args)
            .env("DATABASE_URL", database_url)
            .env("PULSAR_TOPIC_PREFIX", topic_prefix)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(Self)
    }

    /// SIGKILL, as a crashing node would: no drain, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serves `app` on a loopback port until `stop`; returns its base URL.
pub async fn serve(app: platform::http::App, stop: &tokio_util::sync::CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(platform::http::serve(
        listener,
        app,
        stop.clone(),
        &http_config(),
    ));
    url
}

/// Runs `kubectl ARGS…` (with `stdin` piped in when given) against the cluster of
/// `KUBECONFIG`; its standard output, or what it said on failure.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::{io::Write, process::Stdio};
    let mut child = std::process::Command::new("kubectl")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("kubectl cannot start (make k8s-up puts it on PATH): {e}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("kubectl stdin: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Runs `scripts/infra.sh ACTION` (e.g. `pulsar-stop`, `pulsar-start`); panics if it fails.
pub fn infra(action: &str) {
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/infra.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(action)
        .status()
        .expect("infra script runs");
    assert!(status.success(), "scripts/infra.sh {action} failed");
}

/// Starts the broker again if a test that stopped it fails half-way, so later suites have one.
pub struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            infra("pulsar-start");
        }
    }
}
