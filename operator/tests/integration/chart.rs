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
        vec![
            "-f",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../charts/aeropartners/ci/e2e-values.yaml"
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
            "deployment.apps/reports ",
            "poddisruptionbudget.policy/reports ",
            "role.rbac.authorization.k8s.io/aeropartners-reports ",
            "poddisruptionbudget.policy/gateway ",
            "reportversion.aeropartners.io/reports ",
            "job.batch/",
        ] {
            assert!(applied.contains(kind), "{kind} missing:\n{applied}");
        }
    }
}

/// The reports replicas' account may read, watch and patch its one ReportVersion, and nothing
/// else: not another ReportVersion, not the status the operator owns, not a Secret.
#[test]
fn the_reports_account_can_touch_only_its_report_version() {
    let namespace = format!("chart-rbac-{}", std::process::id());
    ok(
        &run("kubectl", &["create", "namespace", &namespace], None),
        "create namespace",
    );
    let rendered = ok(
        &run(
            "helm",
            &[
                "template",
                "aeropartners",
                CHART,
                "--namespace",
                &namespace,
                "--kube-version",
                KUBE_VERSION,
                "--show-only",
                "templates/services.yaml",
            ],
            None,
        ),
        "helm template services",
    );
    // Everything but the Services: their node ports would be taken from the other tests.
    let without_services: Vec<&str> = rendered
        .split("\n---")
        .filter(|document| !document.contains("\nkind: Service\n"))
        .collect();
    ok(
        &run(
            "kubectl",
            &["apply", "-n", &namespace, "-f", "-"],
            Some(without_services.join("\n---").as_bytes()),
        ),
        "apply the services and their RBAC",
    );
    let account = format!("system:serviceaccount:{namespace}:aeropartners-reports");
    for (verb, resource, allowed) in [
        ("get", "reportversions.aeropartners.io/reports", true),
        ("watch", "reportversions.aeropartners.io/reports", true),
        ("list", "reportversions.aeropartners.io/reports", true),
        ("patch", "reportversions.aeropartners.io/reports", true),
        ("patch", "reportversions.aeropartners.io/other", false),
        ("list", "reportversions.aeropartners.io", false),
        ("delete", "reportversions.aeropartners.io/reports", false),
        ("get", "secrets", false),
        ("list", "deployments.apps", false),
    ] {
        let output = run(
            "kubectl",
            &[
                "auth", "can-i", verb, resource, "-n", &namespace, "--as", &account,
            ],
            None,
        );
        let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert_eq!(
            answer,
            if allowed { "yes" } else { "no" },
            "{verb} {resource}"
        );
    }
    let status = run(
        "kubectl",
        &[
            "auth",
            "can-i",
            "patch",
            "reportversions.aeropartners.io/reports",
            "--subresource",
            "status",
            "-n",
            &namespace,
            "--as",
            &account,
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&status.stdout).trim(),
        "no",
        "status is the operator's"
    );
    let reports = ok(
        &run(
            "kubectl",
            &[
                "get",
                "deployment",
                "reports",
                "-n",
                &namespace,
                "-o",
                "json",
            ],
            None,
        ),
        "the reports Deployment",
    );
    let reports: serde_json::Value = serde_json::from_str(&reports).unwrap();
    assert!(reports["spec"]["replicas"].as_i64().unwrap() >= 2);
    assert_eq!(
        reports["metadata"]["labels"]["aeropartners.io/reports"],
        "true"
    );
    let pod = &reports["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "aeropartners-reports");
    let args = pod["containers"][0]["args"].to_string();
    assert!(args.contains("kubernetes"), "{args}");
    assert!(pod["containers"][0]["readinessProbe"].is_object());
    let _ = run(
        "kubectl",
        &["delete", "namespace", &namespace, "--wait=false"],
        None,
    );
}

#[test]
fn the_values_schema_rejects_a_misspelt_key_and_bad_values() {
    for (set, complaint) in [
        ("paymnets.replicas=3", "paymnets"),
        ("campaigns.replicas=1", "minimum"),
        ("reportVersion.version=v3", "must be one of"),
        ("reports.replicas=1", "minimum"),
        ("reports.cacheTtl=soon", "pattern"),
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

/// With the monitoring options on, the chart renders a Grafana dashboard ConfigMap per file of
/// `dashboards/` (its JSON intact, with the sidecar's label) and a PrometheusRule carrying the
/// rule groups of `rules/`. (`make e2e` checks every metric they query is served.)
#[test]
fn the_dashboards_and_alerting_rules_render() {
    let rendered = template(&[
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.labels.release=prometheus",
    ]);
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&rendered).unwrap();
    let dashboard_files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/aeropartners/dashboards"
    ))
    .unwrap()
    .count();
    let dashboards: Vec<&serde_json::Value> = documents
        .iter()
        .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(
        dashboards.len(),
        dashboard_files,
        "one ConfigMap per dashboard"
    );
    for config_map in &dashboards {
        for (file, json) in config_map["data"].as_object().unwrap() {
            let dashboard: serde_json::Value = serde_json::from_str(json.as_str().unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(
                dashboard["panels"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty()),
                "{file} has panels"
            );
            assert!(
                dashboard["uid"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("aeropartners-"))
            );
        }
    }
    let rule = documents
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let alerts: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    for alert in [
        "AeropartnersErrorBudgetFastBurn",
        "AeropartnersOutboxLagHigh",
        "AeropartnersDeadLetters",
        "AeropartnersReportVersionDegraded",
    ] {
        assert!(alerts.contains(&alert), "{alert} in {alerts:?}");
    }
    // Off by default: a cluster without the Prometheus Operator's CRDs installs the chart.
    let default = template(&[]);
    assert!(!default.contains("kind: PrometheusRule"));
}

/// `helm template` of the chart with `extra` arguments.
fn template(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "aeropartners",
        CHART,
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend(extra);
    ok(
        &run("helm", &args, None),
        &format!("helm template {extra:?}"),
    )
}
