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
            concat!(env!("CARGO_MANIFEST_DIR"), "/../kind-values.yaml"),
        ],
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
    // What the controller-manager (absent beside this API server) would make: the `helm test`
    // pods run as the namespace's default ServiceAccount.
    ok(
        &run(
            "kubectl",
            &["create", "serviceaccount", "default", "-n", &namespace],
            None,
        ),
        "the default ServiceAccount",
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
        // ci-values.yaml renders a second release's names ("shop").
        let fullname = if values.iter().any(|v| v.ends_with("ci-values.yaml")) {
            "shop"
        } else {
            "aeropartners"
        };
        for kind in [
            format!("deployment.apps/{fullname}-campaigns "),
            format!("deployment.apps/{fullname}-reports "),
            format!("poddisruptionbudget.policy/{fullname}-reports "),
            format!("role.rbac.authorization.k8s.io/{fullname}-reports "),
            format!("poddisruptionbudget.policy/{fullname}-gateway "),
            format!("service/{fullname} "),
            format!("service/{fullname}-operator "),
            "job.batch/".to_owned(),
        ] {
            assert!(applied.contains(&kind), "{kind} missing:\n{applied}");
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
        (
            "get",
            "reportversions.aeropartners.io/aeropartners-reports",
            true,
        ),
        (
            "watch",
            "reportversions.aeropartners.io/aeropartners-reports",
            true,
        ),
        (
            "list",
            "reportversions.aeropartners.io/aeropartners-reports",
            true,
        ),
        // The switch patches with the operator's own token, never the service's.
        (
            "patch",
            "reportversions.aeropartners.io/aeropartners-reports",
            false,
        ),
        ("patch", "reportversions.aeropartners.io/other", false),
        ("list", "reportversions.aeropartners.io", false),
        (
            "delete",
            "reportversions.aeropartners.io/aeropartners-reports",
            false,
        ),
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
            "reportversions.aeropartners.io/aeropartners-reports",
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
                "aeropartners-reports",
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
        ("campaigns.replicas=0", "minimum"),
        ("reportVersion.version=v3", "must be one of"),
        ("reports.replicas=0", "minimum"),
        ("reports.cacheTtl=soon", "pattern"),
        ("gateway.service.type=External", "must be one of"),
        ("image.digest=latest", "pattern"),
        ("payments.nodeSelctor.zone=a", "nodeSelctor"),
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

/// The objects `helm template` renders with `extra` arguments (empty documents dropped).
fn objects(extra: &[&str]) -> Vec<serde_json::Value> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&template(extra)).expect("helm renders YAML");
    documents.into_iter().filter(|d| d.is_object()).collect()
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Every pod template of the rendered Deployments (with their names).
fn pod_specs(objects: &[serde_json::Value]) -> Vec<(String, &serde_json::Value)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap().to_owned(),
                &o["spec"]["template"]["spec"],
            )
        })
        .collect()
}

fn env<'a>(container: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// With the in-chart PostgreSQL (the default) the database exists only once the release does:
/// a post-install hook would run only after `helm install --wait`, which waits for pods whose
/// readiness waits for the schema. So there the migration Job is part of the release; with an
/// external database it is a hook before any pod starts; disabled, the services migrate.
#[test]
fn the_migrations_never_wait_for_a_hook_that_waits_for_them() {
    let default = objects(&[]);
    let job = find(&default, "Job", "aeropartners-migrate-1");
    assert!(
        job["metadata"]["annotations"]["helm.sh/hook"].is_null(),
        "no hook with the in-chart PostgreSQL: {}",
        job["metadata"]
    );
    for (name, pod) in pod_specs(&default) {
        // The operator and the edge (gateway, campaigns proxy) have no database.
        if ["-operator", "-gateway", "-campaigns-proxy"]
            .iter()
            .any(|edge| name.ends_with(edge))
        {
            continue;
        }
        let container = &pod["containers"][0];
        assert_eq!(
            env(container, "MIGRATE_ON_START").map(|e| e["value"].clone()),
            Some(serde_json::json!("false")),
            "{name}: the Job migrates"
        );
        assert!(env(container, "DATABASE_STARTUP_WAIT").is_some(), "{name}");
    }

    let external = objects(&[
        "--set",
        "postgresql.enabled=false",
        "--set",
        "externalDatabase.existingSecret=db",
    ]);
    let hook = find(&external, "Job", "aeropartners-migrate");
    assert_eq!(
        hook["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );

    let disabled = objects(&["--set", "migrations.enabled=false"]);
    assert!(!disabled.iter().any(|o| o["kind"] == "Job"));
    let (_, payments) = pod_specs(&disabled)
        .into_iter()
        .find(|(n, _)| n == "aeropartners-payments")
        .unwrap();
    assert_eq!(
        env(&payments["containers"][0], "MIGRATE_ON_START").unwrap()["value"],
        "true",
        "nothing else migrates, so the services do"
    );
}

/// The CRD is a template (so `helm upgrade` upgrades it), kept on uninstall, and the same
/// schema the Rust types generate; the chart renders no ReportVersion (the operator creates
/// it, so Helm never owns the `spec.version` users switch).
#[test]
fn the_crd_upgrades_with_the_chart_and_the_report_version_is_not_helms() {
    let default = objects(&[]);
    let crd = find(
        &default,
        "CustomResourceDefinition",
        "reportversions.aeropartners.io",
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let generated: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(CRD).unwrap()).unwrap();
    assert_eq!(crd["spec"], generated["spec"], "the chart's CRD is crds/'s");
    assert!(!default.iter().any(|o| o["kind"] == "ReportVersion"));
    let operator = find(&default, "Deployment", "aeropartners-operator");
    let container = &operator["spec"]["template"]["spec"]["containers"][0];
    for (name, value) in [
        ("REPORT_VERSION_NAME", "aeropartners-reports"),
        ("REPORT_VERSION_INITIAL", "v1"),
        ("OWNER_DEPLOYMENT", "aeropartners-operator"),
        ("REPORTS_DEPLOYMENT", "aeropartners-reports"),
        (
            "DATA_SERVICE_DEPLOYMENT",
            "aeropartners-data-service-{version}",
        ),
    ] {
        assert_eq!(env(container, name).unwrap()["value"], value, "{name}");
    }
    let role = find(&default, "Role", "aeropartners-operator");
    assert!(role["rules"][0]["verbs"].to_string().contains("create"));

    let without = objects(&["--set", "crds.enabled=false"]);
    assert!(
        !without
            .iter()
            .any(|o| o["kind"] == "CustomResourceDefinition")
    );
}

/// Two releases in one namespace: no object name in common, and every selector carries its
/// release; internal services are ClusterIP, so no node port is taken on every node.
#[test]
fn two_releases_share_a_namespace() {
    let first = objects(&[]);
    let second: Vec<serde_json::Value> = {
        let mut args = vec!["template", "shop", CHART, "--kube-version", KUBE_VERSION];
        args.extend(["--set", "crds.enabled=false"]);
        let documents: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&ok(&run("helm", &args, None), "helm template shop"))
                .unwrap();
        documents.into_iter().filter(|d| d.is_object()).collect()
    };
    let names = |objects: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect()
    };
    let (a, b) = (names(&first), names(&second));
    let shared: Vec<&String> = a.intersection(&b).collect();
    assert!(shared.is_empty(), "both releases render {shared:?}");
    assert!(
        b.contains("\"Deployment\"/\"shop-aeropartners-payments\""),
        "{b:?}"
    );
    for object in first.iter().chain(&second) {
        if object["kind"] == "Service" {
            // No type is ClusterIP (the headless Services say clusterIP: None).
            let kind = object["spec"]["type"].as_str().unwrap_or("ClusterIP");
            assert_eq!(kind, "ClusterIP", "{}", object["metadata"]["name"]);
        }
        if object["kind"] == "Deployment" {
            let selector = &object["spec"]["selector"]["matchLabels"];
            assert!(
                selector["app.kubernetes.io/instance"].is_string(),
                "{selector}"
            );
            assert!(
                selector["app.kubernetes.io/component"].is_string(),
                "{selector}"
            );
        }
    }
    // The gateway routes to its own release's services.
    let gateway = find(&second, "Deployment", "shop-aeropartners-gateway");
    let args = gateway["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("http://shop-aeropartners-payments:8010/pagos"),
        "{args}"
    );
    // kind's values expose the edge as the node ports both kind configs map to localhost.
    let kind = objects(&[
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../kind-values.yaml"),
    ]);
    let configs = [
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../kind-config.yaml"))
            .unwrap(),
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../kind-multinode-config.yaml"
        ))
        .unwrap(),
    ];
    for (service, port) in [
        ("aeropartners", 30000),
        ("aeropartners-campaigns-proxy", 30080),
        ("aeropartners-event-collector", 30090),
    ] {
        let object = find(&kind, "Service", service);
        assert_eq!(object["spec"]["type"], "NodePort");
        assert_eq!(object["spec"]["ports"][0]["nodePort"], port);
        for config in &configs {
            assert!(
                config.contains(&format!("containerPort: {port}")),
                "{port} mapped"
            );
        }
    }
    // The data services answer every affiliate's figures to whoever reaches them: internal.
    for service in [
        "aeropartners-data-service-v1",
        "aeropartners-data-service-v2",
    ] {
        let object = find(&kind, "Service", service);
        assert_eq!(object["spec"]["type"], "ClusterIP", "{service}");
    }
    for config in &configs {
        assert!(
            !config.contains("containerPort: 309"),
            "a data service mapped"
        );
    }
}

/// Images: the tag defaults to the chart's appVersion, a digest pins it, pull secrets reach
/// every pod (the migration Job and the test pods included).
#[test]
fn images_are_pinned_and_pulled_with_the_given_secrets() {
    let app_version = std::fs::read_to_string(format!("{CHART}/Chart.yaml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("appVersion: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let default = objects(&[]);
    let operator = find(&default, "Deployment", "aeropartners-operator");
    assert_eq!(
        operator["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("localhost/aeropartners:{app_version}")
    );
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let pinned = objects(&[
        "--set",
        &format!("image.digest={digest}"),
        "--set",
        "imagePullSecrets[0].name=regcred",
    ]);
    let mut pods = 0;
    for object in &pinned {
        let pod = match object["kind"].as_str() {
            Some("Deployment" | "Job") => &object["spec"]["template"]["spec"],
            Some("Pod") => &object["spec"],
            _ => continue,
        };
        let image = pod["containers"][0]["image"].as_str().unwrap();
        if image.starts_with("localhost/aeropartners") {
            pods += 1;
            assert_eq!(image, format!("localhost/aeropartners@{digest}"));
        }
        assert_eq!(
            pod["imagePullSecrets"][0]["name"], "regcred",
            "{}",
            object["metadata"]["name"]
        );
    }
    assert!(pods >= 14, "{pods} pods of the image");
}

/// Monitoring that can work: the operator has a Service to be scraped through, the
/// ServiceMonitor carries the labels a Prometheus selects by and matches the release's
/// Services, and a NetworkPolicy lets the named scraper in.
#[test]
fn the_operator_and_every_service_can_be_scraped() {
    let rendered = objects(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.labels.release=kube-prometheus-stack",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
    ]);
    let monitor = find(&rendered, "ServiceMonitor", "aeropartners");
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let scraped: Vec<&str> = rendered
        .iter()
        .filter(|o| o["kind"] == "Service")
        .filter(|o| {
            selector
                .iter()
                .all(|(k, v)| o["metadata"]["labels"][k] == *v)
        })
        .filter(|o| {
            o["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "http")
        })
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(scraped.contains(&"aeropartners-operator"), "{scraped:?}");
    assert!(scraped.contains(&"aeropartners-payments"), "{scraped:?}");
    let policy = find(&rendered, "NetworkPolicy", "aeropartners-metrics");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "http");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["name"],
        "monitoring"
    );
}

/// An external PostgreSQL (CloudNativePG's `<cluster>-app` Secret, key `uri`) and an external
/// Pulsar with a token and a CA: every pod reads them from the Secrets named.
#[test]
fn external_database_and_broker_credentials_reach_every_pod() {
    let rendered = objects(&[
        "-f",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/aeropartners/ci/ci-values.yaml"
        ),
    ]);
    let mut checked = 0;
    for (name, pod) in pod_specs(&rendered) {
        if name.ends_with("-operator") {
            continue;
        }
        let container = &pod["containers"][0];
        // The edge holds no credentials of the database or the broker: it uses neither.
        if name.ends_with("-gateway") || name.ends_with("-campaigns-proxy") {
            for secret in ["DATABASE_URL", "PULSAR_AUTH_TOKEN", "PULSAR_URL"] {
                assert!(env(container, secret).is_none(), "{name} has {secret}");
            }
            continue;
        }
        let database = env(container, "DATABASE_URL").unwrap();
        assert_eq!(
            database["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "aeropartners-app", "key": "uri"}),
            "{name}"
        );
        assert_eq!(
            env(container, "PULSAR_AUTH_TOKEN").unwrap()["valueFrom"]["secretKeyRef"]["name"],
            "pulsar-token-aeropartners"
        );
        let trust = env(container, "PULSAR_TLS_TRUST_CERTS_FILE").unwrap()["value"]
            .as_str()
            .unwrap();
        let mounted = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| trust.starts_with(m["mountPath"].as_str().unwrap()));
        assert!(mounted, "{name}: {trust} is mounted");
        checked += 1;
    }
    assert_eq!(checked, 7, "every service pod behind the edge");
}

/// `helm test` checks something: the gateway and the operator ready, a payment round trip,
/// the served report version, each a test hook running the release's own image.
#[test]
fn helm_test_checks_the_release() {
    let rendered = objects(&[]);
    let tests: Vec<&serde_json::Value> = rendered
        .iter()
        .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .collect();
    let args: Vec<String> = tests
        .iter()
        .map(|t| t["spec"]["containers"][0]["args"].to_string())
        .collect();
    for wanted in [
        r#"["check","ready","http://aeropartners:8000"]"#,
        r#"["check","payment","--gateway","http://aeropartners:8000"]"#,
        r#"["check","report-version","--gateway","http://aeropartners:8000"]"#,
        r#"["check","ready","http://aeropartners-operator:8095"]"#,
    ] {
        assert!(args.iter().any(|a| a == wanted), "{wanted} in {args:?}");
    }
}

/// The schema lets the chart be a subchart (Helm passes `global`) and run one replica (with a
/// warning), and takes the usual pod knobs per component.
#[test]
fn the_schema_allows_composition_small_installs_and_pod_knobs() {
    let output = run(
        "helm",
        &[
            "install",
            "aeropartners",
            CHART,
            "--dry-run=client",
            // The other tests installed the CRD outside Helm: this release does not own it.
            "--set",
            "crds.enabled=false",
            "--set",
            "global.imageRegistry=example.com",
            "--set",
            "payments.replicas=1",
            "--set",
            "payments.priorityClassName=critical",
            "--set",
            "payments.tolerations[0].operator=Exists",
        ],
        None,
    );
    let stdout = ok(&output, "helm install --dry-run with global and 1 replica");
    assert!(
        stdout.contains("WARNING: payments.replicas is 1"),
        "NOTES warns:\n{stdout}"
    );
    let rendered = objects(&[
        "--set",
        "payments.priorityClassName=critical",
        "--set",
        "payments.tolerations[0].operator=Exists",
        "--set",
        "common.podAnnotations.team=pay",
    ]);
    let payments = &find(&rendered, "Deployment", "aeropartners-payments")["spec"]["template"];
    assert_eq!(payments["spec"]["priorityClassName"], "critical");
    assert_eq!(payments["spec"]["tolerations"][0]["operator"], "Exists");
    assert_eq!(payments["metadata"]["annotations"]["team"], "pay");
    let spread = payments["spec"]["topologySpreadConstraints"]
        .as_array()
        .unwrap();
    assert_eq!(spread[0]["whenUnsatisfiable"], "DoNotSchedule");
    assert_eq!(spread[0]["matchLabelKeys"][0], "pod-template-hash");
    assert_eq!(spread[1]["topologyKey"], "topology.kubernetes.io/zone");
    let pdb = find(&rendered, "PodDisruptionBudget", "aeropartners-payments");
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
}

/// The Dockerfile cannot be built here (its base images come from registries this machine
/// cannot reach), so `make e2e` runs an image of the same binary that scripts/k8s-cluster.sh
/// packs. The two must agree on what the chart relies on: the user the pods run as, and the
/// entrypoint the chart's `args` are given to.
#[test]
fn the_dockerfile_and_the_e2e_image_agree_with_the_chart() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile")).unwrap();
    let final_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("a final stage");
    let directive = |name: &str| {
        final_stage
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in the final stage"))
            .trim()
            .to_owned()
    };
    assert_eq!(directive("USER"), "65532:65532");
    assert_eq!(
        directive("ENTRYPOINT"),
        r#"["/usr/local/bin/aeropartners"]"#
    );
    assert!(
        final_stage.contains("/usr/local/bin/aeropartners"),
        "the binary is copied where the entrypoint says"
    );

    let cluster = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/k8s-cluster.sh"
    ))
    .unwrap();
    assert!(
        cluster.contains("user=${4:-65532:65532}"),
        "the e2e image runs as the Dockerfile's user"
    );
    assert!(
        cluster.contains(r#"[\"/usr/local/bin/$(basename "${binary}")\"]"#),
        "the e2e image's entrypoint is the Dockerfile's path"
    );

    let rendered = objects(&[]);
    for (name, pod) in pod_specs(&rendered) {
        assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{name}");
        assert!(
            pod["containers"][0]["command"].is_null(),
            "{name} keeps the image's entrypoint"
        );
    }
}

#[test]
fn no_two_objects_of_a_release_share_a_name() {
    let mut seen = std::collections::BTreeSet::new();
    for object in objects(&[]) {
        let id = format!("{}/{}", object["kind"], object["metadata"]["name"]);
        assert!(seen.insert(id.clone()), "rendered twice: {id}");
    }
}

/// The services that authenticate operators ask the API server (TokenReview,
/// SubjectAccessReview) with a ServiceAccount of their own bound to system:auth-delegator; the
/// Roles a user is bound to to operate the release name the permissions they ask about
/// (services/access/src/domain/permiso.rs).
#[test]
fn operators_are_checked_by_the_api_server_with_shipped_roles() {
    let default = objects(&[]);
    let payments = find(&default, "Deployment", "aeropartners-payments");
    let spec = &payments["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "aeropartners-payments");
    let container = &spec["containers"][0];
    assert_eq!(env(container, "AUTH_MODE").unwrap()["value"], "enforce");
    assert_eq!(env(container, "AUTH_KUBERNETES").unwrap()["value"], "true");
    let binding = find(
        &default,
        "ClusterRoleBinding",
        "default-aeropartners-payments-auth-delegator",
    );
    assert_eq!(binding["roleRef"]["name"], "system:auth-delegator");
    assert_eq!(binding["subjects"][0]["name"], "aeropartners-payments");
    // Every permission a service asks about is granted by the operations Role, and the reads
    // by the viewer Role too; the viewer cannot act.
    let rules = |role: &str| -> Vec<(String, String)> {
        let mut granted = Vec::new();
        for rule in find(&default, "Role", role)["rules"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    granted.push((
                        resource.as_str().unwrap().to_owned(),
                        verb.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
        granted
    };
    let (operations, viewer) = (
        rules("aeropartners-operations"),
        rules("aeropartners-viewer"),
    );
    for permiso in access::Permiso::TODOS {
        let resource = match permiso.subrecurso {
            Some(sub) => format!("{}/{sub}", permiso.recurso),
            None => permiso.recurso.to_owned(),
        };
        let wanted = (resource, permiso.verbo.to_owned());
        assert!(operations.contains(&wanted), "operations lacks {permiso}");
        assert_eq!(
            viewer.contains(&wanted),
            permiso.de_lectura(),
            "viewer and {permiso}"
        );
    }
    // reports asks about operators too, with the account it watches its ReportVersion with.
    let reports = find(&default, "Deployment", "aeropartners-reports");
    let container = &reports["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(container, "AUTH_KUBERNETES").unwrap()["value"], "true");
    find(
        &default,
        "ClusterRoleBinding",
        "default-aeropartners-reports-auth-delegator",
    );
    // Off, no ServiceAccount token is mounted for it and nothing is bound.
    let off = objects(&["--set", "auth.kubernetes=false"]);
    assert!(!off.iter().any(|o| o["kind"] == "ClusterRoleBinding"));
}
