//! The `kubernetes` version source against the real kube-apiserver, as the chart runs it: the
//! replica authenticates with the chart's own `aeropartners-reports` ServiceAccount (so its
//! least-privilege Role is what is exercised), through a TCP relay this test can cut to play
//! an API-server outage. The operator's part (writing the status) is played by the test. A
//! switch through the API patches the ReportVersion with the caller's own token: the chart's
//! `aeropartners-operations` Role may, its viewer Role may not, and the replica's account
//! cannot at all.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use testkit::{
    TempDatabase, eventually, free_port,
    operadores::{Operadores, render},
    pulsar_config, wait_until_ready,
};
use tokio::net::{TcpListener, TcpStream};

fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    testkit::kubectl(args, stdin).unwrap_or_else(|e| panic!("{e}"))
}

/// A TCP relay to the API server that can be cut (every connection closed, the port refusing)
/// and restored on the same port.
struct Relay {
    port: u16,
    target: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            // Aborting this task drops the set, which aborts (and closes) every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ReportVersion of a release named `aeropartners`, which the chart's reports Role names.
const REPORT_VERSION: &str = "aeropartners-reports";

fn replica(port: u16, kubeconfig: &str, database_url: &str, prefix: &str, ns: &str) -> Replica {
    Replica(
        Command::new(env!("CARGO_BIN_EXE_aeropartners"))
            .args([
                "reports",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--instance",
                &format!("reports-{port}"),
                "--version-source",
                "kubernetes",
                "--report-version-name",
                REPORT_VERSION,
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("AUTH_MODE", "enforce")
            .env("AUTH_KUBERNETES", "true")
            .env("AUTH_NAMESPACE", ns)
            .env("DATABASE_URL", database_url)
            .env("PULSAR_TOPIC_PREFIX", prefix)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

fn status(ns: &str, version: &str) {
    let patch = format!(
        r#"{{"status":{{"activeVersion":"{version}","switchedAt":"{}"}}}}"#,
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    kubectl(
        &[
            "patch",
            "rv",
            REPORT_VERSION,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_its_report_version_and_rides_out_an_api_server_outage() {
    std::env::var("KUBECONFIG").expect("KUBECONFIG must point at the test API server");
    // The chart's access objects and its users: alice operates, bob only reads.
    let operadores = Operadores::crear("reports-k8s");
    let ns = operadores.namespace.clone();
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crds/reportversions.aeropartners.io.yaml"
    );
    kubectl(
        &["apply", "--server-side", "--force-conflicts", "-f", crd],
        None,
    );
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "crd/reportversions.aeropartners.io",
            "--timeout=30s",
        ],
        None,
    );
    // The chart's ServiceAccount, Role and RoleBinding for the reports replicas, as rendered.
    let rendered = render(&ns, "templates/services.yaml");
    let rbac: Vec<&str> = rendered
        .split("\n---")
        .filter(|d| {
            [
                "\nkind: ServiceAccount\n",
                "\nkind: Role\n",
                "\nkind: RoleBinding\n",
            ]
            .iter()
            .any(|k| d.contains(k))
                && d.contains("aeropartners-reports")
        })
        .collect();
    assert_eq!(rbac.len(), 3, "the chart renders the reports RBAC");
    kubectl(&["apply", "-n", &ns, "-f", "-"], Some(&rbac.join("\n---")));
    let bearer = |user: &str| format!("Bearer {}", operadores.token(user));
    let (alice, bob) = (bearer("alice"), bearer("bob"));
    let rv = format!(
        r#"{{"apiVersion":"aeropartners.io/v1alpha1","kind":"ReportVersion","metadata":{{"name":"{REPORT_VERSION}"}},"spec":{{"version":"v1"}}}}"#
    );
    kubectl(&["apply", "-n", &ns, "-f", "-"], Some(&rv));
    status(&ns, "v1");

    // A kubeconfig with the ServiceAccount's token, through the relay.
    let token = kubectl(
        &["create", "token", "aeropartners-reports", "-n", &ns],
        None,
    );
    let ca = kubectl(
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ],
        None,
    );
    let server = kubectl(
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
        None,
    );
    let target: SocketAddr = server
        .trim_start_matches("https://")
        .parse()
        .expect("the test API server listens on an IP:port");
    let mut relay = Relay {
        port: free_port(),
        target,
        task: None,
    };
    relay.start().await;
    let dir = std::env::temp_dir().join(format!("reports-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: relay\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {ca}\nusers:\n- name: reports\n  user:\n    token: {}\ncontexts:\n- name: reports\n  context:\n    cluster: relay\n    user: reports\n    namespace: {ns}\ncurrent-context: reports\n",
            relay.port,
            token.trim()
        ),
    )
    .unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();

    let db = TempDatabase::create().await;
    let prefix = pulsar_config().pulsar_topic_prefix;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let _a = replica(pa, &kubeconfig, &db.url, &prefix, &ns);
    wait_until_ready(&format!("{a}/ready"), Duration::from_secs(60)).await;
    // A partner reads the report: its key is checked in the database, so the reads go on
    // while the API server is away (an operator's token would need a TokenReview).
    let lector = testkit::acceso::Claves::new(&sqlx::PgPool::connect(&db.url).await.unwrap())
        .secreta("af-lector")
        .await;
    let version = get(&client, &format!("{a}/api/reports/version")).await.1;
    assert_eq!(
        (
            version["source"].as_str(),
            version["active"].as_str(),
            version["stale"].as_bool()
        ),
        (Some("kubernetes"), Some("v1"), Some(false)),
        "{version}"
    );

    // The operator confirms v2: the replica serves it (its watch works with the narrow Role).
    status(&ns, "v2");
    eventually(
        "replica serves the confirmed v2",
        Duration::from_secs(15),
        || async {
            let r = client
                .get(format!("{a}/api/reports/payments"))
                .header("authorization", &lector)
                .send()
                .await
                .unwrap();
            r.headers()["x-report-version"] == "v2"
        },
    )
    .await;

    // A switch is the caller's to make: nobody is 401, a viewer 403 from the API server (the
    // replica's own account could not patch either), an operator's goes through.
    for (authorization, expected) in [(None, 401), (Some(&bob), 403)] {
        let mut put = client
            .put(format!("{a}/api/reports/version"))
            .json(&serde_json::json!({"active": "v2"}));
        if let Some(authorization) = authorization {
            put = put.header("authorization", authorization);
        }
        let put = put.send().await.unwrap();
        assert_eq!(put.status(), expected);
    }
    assert_eq!(
        kubectl(
            &[
                "get",
                "rv",
                REPORT_VERSION,
                "-n",
                &ns,
                "-o",
                "jsonpath={.spec.version}"
            ],
            None
        ),
        "v1",
        "refused switches leave the ReportVersion's spec alone"
    );
    // PUT patches spec only; what is served changes when the status does.
    let put = client
        .put(format!("{a}/api/reports/version"))
        .header("authorization", &alice)
        .json(&serde_json::json!({"active": "v1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let put: serde_json::Value = put.json().await.unwrap();
    assert_eq!(
        (put["desired"].as_str(), put["active"].as_str()),
        (Some("v1"), Some("v2")),
        "{put}"
    );
    assert_eq!(
        kubectl(
            &[
                "get",
                "rv",
                REPORT_VERSION,
                "-n",
                &ns,
                "-o",
                "jsonpath={.spec.version}"
            ],
            None
        ),
        "v1"
    );
    status(&ns, "v2"); // the operator has not confirmed v1 (its target is "not ready")

    // The API server goes away: the replica keeps serving v2 and says it is stale.
    relay.cut();
    eventually(
        "replica says it is stale",
        Duration::from_secs(30),
        || async { get(&client, &format!("{a}/api/reports/version")).await.1["stale"] == true },
    )
    .await;
    let report = client
        .get(format!("{a}/api/reports/payments"))
        .header("authorization", &lector)
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200);
    assert_eq!(report.headers()["x-report-version"], "v2");
    let refused = client
        .put(format!("{a}/api/reports/version"))
        .header("authorization", &alice)
        .json(&serde_json::json!({"active": "v1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        503,
        "a switch cannot be accepted while the API server is away"
    );
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );

    // A replica that starts during the outage serves the version last persisted, and is ready.
    let _b = replica(pb, &kubeconfig, &db.url, &prefix, &ns);
    wait_until_ready(&format!("{b}/ready"), Duration::from_secs(60)).await;
    let version_b = get(&client, &format!("{b}/api/reports/version")).await.1;
    assert_eq!(
        (version_b["active"].as_str(), version_b["stale"].as_bool()),
        (Some("v2"), Some(true)),
        "{version_b}"
    );

    // The API server is back: both replicas follow it again, and a confirmed switch reaches both.
    relay.start().await;
    status(&ns, "v1");
    for replica in [&a, &b] {
        eventually(
            "replica follows the API server again",
            Duration::from_secs(90),
            || async {
                let v = get(&client, &format!("{replica}/api/reports/version"))
                    .await
                    .1;
                v["stale"] == false && v["active"] == "v1"
            },
        )
        .await;
    }
    relay.cut();
    drop((_a, _b));
    db.drop_database().await;
}
