//! `scripts/run.sh` (what `make run` starts) as a user meets it: it comes up, and Ctrl-C stops
//! it. A terminal's Ctrl-C is SIGINT to the whole foreground process group, which is what these
//! tests send. Issue 7: the services died of that SIGINT, the supervisors restarted them, and
//! the platform stayed up; started from a background shell (SIGINT ignored on entry) the
//! script did not even notice. Issue 8's user test: with its output piped to `tee`, Ctrl-C
//! killed tee too, the script died of SIGPIPE on its first word of goodbye, and every service
//! kept running.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use testkit::{TempDatabase, free_port, pulsar_config};

const SERVICES: [&str; 14] = [
    "payments",
    "payments-b",
    "payments-worker",
    "payments-worker-b",
    "campaigns-primary",
    "campaigns-replica",
    "campaigns-proxy",
    "gateway",
    "data-service-v1",
    "data-service-v2",
    "reports-a",
    "reports-b",
    "event-collector-a",
    "event-collector-b",
];

/// The variable that sets each service's port, in the order of `SERVICES`.
const PORT_VARIABLES: [&str; 14] = [
    "PORT_PAYMENTS",
    "PORT_PAYMENTS_B",
    "PORT_PAYMENTS_WORKER",
    "PORT_PAYMENTS_WORKER_B",
    "PORT_CAMPAIGNS_PRIMARY",
    "PORT_CAMPAIGNS_REPLICA",
    "PORT_CAMPAIGNS_PROXY",
    "PORT_GATEWAY",
    "PORT_DATA_SERVICE_V1",
    "PORT_DATA_SERVICE_V2",
    "PORT_REPORTS_A",
    "PORT_REPORTS_B",
    "PORT_COLLECTOR_A",
    "PORT_COLLECTOR_B",
];

/// The port `start` gave the service that `variable` places.
fn port_of(ports: &[u16], variable: &str) -> u16 {
    let index = PORT_VARIABLES
        .iter()
        .position(|v| *v == variable)
        .expect("a known port variable");
    ports[index]
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/run.sh")
}

/// How a user started `make run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launch {
    /// In a terminal, in the foreground.
    Terminal,
    /// From a shell in the background: SIGINT ignored on entry, as a background job gets it.
    Background,
    /// In a terminal, its output piped to `tee`, which the same Ctrl-C kills.
    ThroughTee,
}

/// Starts run.sh in a process group of its own (as a terminal's foreground job is), as
/// `launch` says.
fn start(database_url: &str, log_dir: &Path, launch: Launch) -> (Child, Vec<u16>) {
    let ports: Vec<u16> = (0..SERVICES.len()).map(|_| free_port()).collect();
    let run = [
        script().into_os_string(),
        env!("CARGO_BIN_EXE_aeropartners").into(),
    ];
    let mut command = match launch {
        Launch::Terminal => {
            let mut command = Command::new("bash");
            command.args(run);
            command
        }
        Launch::Background => {
            let mut command = Command::new("env");
            command.args(["--ignore-signal=INT", "bash"]).args(run);
            command
        }
        Launch::ThroughTee => {
            let mut command = Command::new("bash");
            command.args([
                "-c".into(),
                std::ffi::OsString::from(r#"bash "$0" "$1" 2>&1 | tee "$2""#),
            ]);
            command.args(run).arg(log_dir.join("run-output.txt"));
            command
        }
    };
    command
        .env("DATABASE_URL", database_url)
        .env("PULSAR_TOPIC_PREFIX", pulsar_config().pulsar_topic_prefix)
        .env("RUN_LOG_DIR", log_dir)
        .env("RUN_READY_TIMEOUT", "120")
        .env_remove("AEROPARTNERS_RUN_SIGNALS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (name, port) in PORT_VARIABLES.into_iter().zip(&ports) {
        command.env(name, port.to_string());
    }
    (command.spawn().expect("bash runs scripts/run.sh"), ports)
}

/// The pid of every service, from the pid files run.sh writes.
fn service_pids(log_dir: &Path) -> Vec<u32> {
    SERVICES
        .iter()
        .filter_map(|name| std::fs::read_to_string(log_dir.join(format!("{name}.pid"))).ok())
        .filter_map(|pid| pid.trim().parse().ok())
        .collect()
}

/// Appends everything `stream` prints to `output`, until it closes.
fn collect(mut stream: impl Read + Send + 'static, output: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buffer) {
            if n == 0 {
                break;
            }
            output
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    })
}

/// Alive and not a zombie (PID 1 of these machines reaps orphans late).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(") ").next().unwrap_or("").chars().next();
        !matches!(state, Some('Z' | 'X') | None)
    })
}

async fn ctrl_c_stops_everything(launch: Launch) {
    let database = TempDatabase::create().await;
    let log_dir = std::env::temp_dir().join(format!("run-sh-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&log_dir).unwrap();
    let (mut child, ports) = start(&database.url, &log_dir, launch);
    let group = child.id();
    let output = Arc::new(Mutex::new(String::new()));
    let readers = [
        collect(child.stdout.take().unwrap(), output.clone()),
        collect(child.stderr.take().unwrap(), output.clone()),
    ];

    // Up: run.sh prints its table once every service answers /ready.
    testkit::eventually(
        "run.sh says the platform is running",
        Duration::from_secs(150),
        || {
            let up = output.lock().unwrap().contains("Aeropartners is running");
            async move { up }
        },
    )
    .await;
    for port in &ports {
        let ready = reqwest::get(format!("http://127.0.0.1:{port}/ready"))
            .await
            .unwrap();
        assert_eq!(
            ready.status(),
            200,
            "port {port} ready once the table is printed"
        );
    }
    let gateway = format!("http://127.0.0.1:{}", port_of(&ports, "PORT_GATEWAY"));
    let answer = reqwest::Client::new()
        .post(format!("{gateway}/pagos"))
        .json(&serde_json::json!({"id_afiliado": "af-run", "monto": 1, "moneda": "USD", "referencia_pago": "run-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        200,
        "the platform serves through the gateway"
    );
    let pids = service_pids(&log_dir);
    assert_eq!(pids.len(), SERVICES.len(), "a pid file per service");
    assert!(pids.iter().all(|pid| running(*pid)));

    // Ctrl-C.
    let sent = Command::new("kill")
        .args(["-INT", "--", &format!("-{group}")])
        .status()
        .unwrap();
    assert!(sent.success());
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if asked.elapsed() > Duration::from_secs(60) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
            for pid in service_pids(&log_dir) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            panic!("run.sh still running 60 s after Ctrl-C");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for reader in readers {
        reader.join().unwrap();
    }
    let output = output.lock().unwrap().clone();
    // Through tee, the shell that ran the pipeline is gone with tee; run.sh goes on stopping
    // the services with nobody to read what it says.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pids.iter().any(|pid| running(*pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(
        !output.contains("restarting"),
        "a service was restarted during Ctrl-C:\n{output}"
    );
    assert!(output.contains("Aeropartners is running"), "{output}");
    if launch != Launch::ThroughTee {
        assert!(output.contains("[run] stopped"), "{output}");
        assert_eq!(
            status.code(),
            Some(130),
            "exit status of an interrupted run: {output}"
        );
    }
    let survivors: Vec<u32> = pids.into_iter().filter(|pid| running(*pid)).collect();
    if !survivors.is_empty() {
        for pid in &survivors {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        panic!("still running 60 s after Ctrl-C: {survivors:?}\n{output}");
    }
    for port in &ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} still answers"
        );
    }
    println!(
        "run.sh ({launch:?}) stopped every service {:?} after Ctrl-C",
        asked.elapsed()
    );
    let _ = std::fs::remove_dir_all(&log_dir);
    database.drop_database().await;
}

#[tokio::test]
async fn ctrl_c_in_a_terminal_stops_every_service() {
    ctrl_c_stops_everything(Launch::Terminal).await;
}

#[tokio::test]
async fn sigint_to_a_run_started_in_the_background_stops_every_service() {
    ctrl_c_stops_everything(Launch::Background).await;
}

#[tokio::test]
async fn ctrl_c_with_the_output_piped_to_tee_stops_every_service() {
    ctrl_c_stops_everything(Launch::ThroughTee).await;
}
