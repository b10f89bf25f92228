//! The Helm chart: `helm lint --strict`, `helm template` with the default and the CI values,
//! every rendered manifest accepted by the real API server (`kubectl apply --dry-run=server`),
//! and the values schema rejecting a misspelt key. Needs `helm` and `kubectl` on PATH and the
//! test API server's KUBECONFIG (`make test` provides all three).

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/aeropartners");
const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/reportversions.aeropartners.io.yaml"
);
const KUBE_VERSION: &str = "1.34.4";

fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} must be on PATH (make test puts it there): {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn values_files() -> Vec<Vec<&'static str>> {
    vec![
        vec![],
        vec![
            "-f",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../charts/aeropartners/ci/ci-values.yaml"
            ),
        ],
    ]
}

#[test]
fn the_chart_lints_strictly_with_every_values_file() {
    for values in values_files() {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend(&values);
        ok(&run("helm", &args, None), &format!("helm lint {values:?}"));
    }
}

#[test]
fn every_rendered_manifest_is_accepted_by_the_api_server() {
    assert!(
        std::env::var("KUBECONFIG").is_ok(),
        "KUBECONFIG must point at the test API server"
    );
    let namespace = format!("chart-{}", std::process::id());
    ok(
        &run("kubectl", &["create", "namespace", &namespace], None),
        "create namespace",
    );
    ok(
        &run(
            "kubectl",
            &["apply", "--server-side", "--force-conflicts", "-f", CRD],
            None,
        ),
        "install the CRD",
    );
    ok(
        &run(
            "kubectl",
            &[
                "wait",
                "--for=condition=Established",
                "crd/reportversions.aeropartners.io",
                "--timeout=30s",
            ],
            None,
        ),
        "CRD established",
    );
    for values in values_files() {
        let mut args = vec![
            "template",
            "aeropartners",
            CHART,
            "--namespace",
            &namespace,
            "--kube-version",
            KUBE_VERSION,
        ];
        args.extend(&values);
        let rendered = ok(
            &run("helm", &args, None),
            &format!("helm template {values:?}"),
        );
        let kinds = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
        assert!(kinds >= 20, "{kinds} objects rendered with {values:?}");
        let applied = ok(
            &run(
                "kubectl",
                &["apply", "--dry-run=server", "-n", &namespace, "-f", "-"],
                Some(rendered.as_bytes()),
            ),
            &format!("kubectl apply --dry-run=server {values:?}"),
        );
        assert_eq!(
            applied.lines().count(),
            kinds,
            "every object accepted:\n{applied}"
        );
        for kind in [
            "deployment.apps/campaigns ",
            "poddisruptionbudget.policy/gateway ",
            "reportversion.aeropartners.io/reports ",
            "job.batch/",
        ] {
            assert!(applied.contains(kind), "{kind} missing:\n{applied}");
        }
    }
}

#[test]
fn the_values_schema_rejects_a_misspelt_key_and_bad_values() {
    for (set, complaint) in [
        ("paymnets.replicas=3", "paymnets"),
        ("campaigns.replicas=1", "minimum"),
        ("reportVersion.version=v3", "must be one of"),
    ] {
        let output = run(
            "helm",
            &[
                "template",
                "aeropartners",
                CHART,
                "--kube-version",
                KUBE_VERSION,
                "--set",
                set,
            ],
            None,
        );
        assert!(!output.status.success(), "--set {set} must be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(complaint), "--set {set}: {stderr}");
    }
}
