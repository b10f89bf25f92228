//! The operator against a real kube-apiserver (+ etcd) started by `scripts/kube-apiserver.sh`
//! (`make test` exports its KUBECONFIG). There is no controller-manager, so the tests write the
//! data-service Deployments' status themselves, as the Deployment controller would.

use std::{process::Command, time::Duration};

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Namespace},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use operator::{
    controller::Settings,
    crd::{ReportVersion, Version},
};
use tokio_util::sync::CancellationToken;

async fn client() -> Client {
    assert!(
        std::env::var("KUBECONFIG").is_ok(),
        "KUBECONFIG must point at the test kube-apiserver (make test starts one)"
    );
    Client::try_default()
        .await
        .expect("the test API server answers")
}

/// Installs the committed CRD (server-side apply, idempotent) and waits until it is Established.
async fn install_crd(client: &Client) {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/reportversions.aeropartners.io.yaml"
    ))
    .unwrap();
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "reportversions.aeropartners.io",
        &PatchParams::apply("operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let established = await_condition(
        crds,
        "reportversions.aeropartners.io",
        conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .expect("CRD established")
        .unwrap();
}

/// A fresh namespace per test.
async fn namespace(client: &Client) -> String {
    let name = format!("t-{}", uuid_like());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", nanos ^ u128::from(std::process::id()))
}

/// A data-service Deployment, ready or not (its status written as the controller-manager would).
async fn data_service(client: &Client, ns: &str, version: &str, ready: bool) {
    let name = format!("data-service-{version}");
    deployment(
        client,
        ns,
        &name,
        serde_json::json!({"aeropartners.io/data-service": version}),
        ready,
    )
    .await;
}

/// The reports Deployment, ready or not.
async fn reports(client: &Client, ns: &str, ready: bool) {
    deployment(
        client,
        ns,
        "reports",
        serde_json::json!({"aeropartners.io/reports": "true"}),
        ready,
    )
    .await;
}

async fn deployment(client: &Client, ns: &str, name: &str, labels: serde_json::Value, ready: bool) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "service", "image": "localhost/aeropartners:test"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .patch(
            name,
            &PatchParams::apply("operator-tests").force(),
            &Patch::Apply(&deployment),
        )
        .await
        .unwrap();
    let status = serde_json::json!({"status": {"replicas": 1, "readyReplicas": i32::from(ready), "availableReplicas": i32::from(ready)}});
    deployments
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Creates `reports` with `version` sent as raw JSON (as `kubectl apply` would), so that the
/// API server's schema, not our Rust types, judges it.
async fn report_version(
    client: &Client,
    ns: &str,
    version: &str,
) -> Result<DynamicObject, kube::Error> {
    let resource = ApiResource::erase::<ReportVersion>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let rv: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "aeropartners.io/v1alpha1", "kind": "ReportVersion",
        "metadata": {"name": "reports"}, "spec": {"version": version}
    }))
    .unwrap();
    api.create(&PostParams::default(), &rv).await
}

async fn set_version(client: &Client, ns: &str, version: &str) {
    let api: Api<ReportVersion> = Api::namespaced(client.clone(), ns);
    api.patch(
        "reports",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"version": version}})),
    )
    .await
    .unwrap();
}

fn start_operator(client: &Client, ns: &str, deadline: Duration) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let (client, ns, token) = (client.clone(), ns.to_owned(), shutdown.clone());
    tokio::spawn(async move {
        operator::controller::run(client, Settings::new(Some(&ns), deadline), token).await
    });
    shutdown
}

/// Polls the resource until `check` holds (a liveness bound, not a speed assertion).
async fn until(
    client: &Client,
    ns: &str,
    what: &str,
    check: impl Fn(&ReportVersion) -> bool,
) -> ReportVersion {
    let api: Api<ReportVersion> = Api::namespaced(client.clone(), ns);
    for _ in 0..300 {
        let rv = api.get("reports").await.unwrap();
        if check(&rv) {
            return rv;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what}: not reached in 30 s: {:?}",
        api.get("reports").await.unwrap().status
    );
}

fn condition(rv: &ReportVersion, kind: &str) -> Option<String> {
    rv.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn active(rv: &ReportVersion) -> Option<Version> {
    rv.status.as_ref()?.active_version
}

#[tokio::test]
async fn the_api_server_rejects_a_version_other_than_v1_or_v2() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client).await;
    let error = report_version(&client, &ns, "v3").await.unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(e) if e.code == 422),
        "{error}"
    );
    assert!(report_version(&client, &ns, "v2").await.is_ok());
}

#[tokio::test]
async fn switches_only_once_the_target_is_ready_and_records_events() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client).await;
    data_service(&client, &ns, "v1", true).await;
    reports(&client, &ns, true).await;
    data_service(&client, &ns, "v2", false).await;
    report_version(&client, &ns, "v1").await.unwrap();
    let _operator = start_operator(&client, &ns, Duration::from_secs(120)).drop_guard();

    let rv = until(&client, &ns, "Ready on v1", |rv| {
        condition(rv, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(active(&rv), Some(Version::V1));
    assert_eq!(
        rv.status.as_ref().unwrap().observed_generation,
        rv.metadata.generation
    );

    set_version(&client, &ns, "v2").await;
    let rv = until(&client, &ns, "Progressing while v2 is not ready", |rv| {
        condition(rv, "Progressing").as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        active(&rv),
        Some(Version::V1),
        "the old version keeps being served"
    );
    assert_eq!(condition(&rv, "Ready").as_deref(), Some("False"));

    data_service(&client, &ns, "v2", true).await;
    let rv = until(&client, &ns, "switched to v2", |rv| {
        active(rv) == Some(Version::V2)
    })
    .await;
    assert_eq!(condition(&rv, "Ready").as_deref(), Some("True"));
    assert!(rv.status.as_ref().unwrap().switched_at.is_some());

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "Switched"), "{reasons:?}");

    // What `kubectl get rv` shows, and `kubectl wait` on the Ready condition.
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let table = kubectl(&["get", "rv", "-n", &ns]);
    let table = String::from_utf8_lossy(&table.stdout);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        vec!["NAME", "DESIRED", "ACTIVE", "READY", "AGE"],
        "{table}"
    );
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap_or_default()
            .starts_with("reports"),
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[1..4], &["v2", "v2", "True"]);
    let wait = kubectl(&[
        "wait",
        "--for=condition=Ready",
        "rv/reports",
        "-n",
        &ns,
        "--timeout=20s",
    ]);
    assert!(
        wait.status.success(),
        "{}",
        String::from_utf8_lossy(&wait.stderr)
    );
}

#[tokio::test]
async fn a_target_that_never_becomes_ready_degrades_and_keeps_the_old_version() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client).await;
    data_service(&client, &ns, "v1", true).await;
    reports(&client, &ns, true).await;
    report_version(&client, &ns, "v1").await.unwrap();
    let _operator = start_operator(&client, &ns, Duration::from_secs(2)).drop_guard();
    until(&client, &ns, "Ready on v1", |rv| {
        active(rv) == Some(Version::V1)
    })
    .await;
    let degraded_gauge = format!(
        "aeropartners_operator_report_version_degraded{{name=\"reports\",namespace=\"{ns}\"}} "
    );
    let gauge = || {
        platform::telemetry::render()
            .lines()
            .find_map(|l| l.strip_prefix(&degraded_gauge).map(str::to_owned))
    };
    assert_eq!(gauge().as_deref(), Some("0"), "Ready: not degraded");
    set_version(&client, &ns, "v2").await; // no data-service-v2 at all
    let rv = until(&client, &ns, "Degraded", |rv| {
        condition(rv, "Degraded").as_deref() == Some("True")
    })
    .await;
    assert_eq!(active(&rv), Some(Version::V1));
    // The alert on a Degraded switch reads this gauge.
    assert_eq!(gauge().as_deref(), Some("1"), "Degraded shows on /metrics");
}

#[tokio::test]
async fn an_operator_restarted_mid_switch_converges() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client).await;
    data_service(&client, &ns, "v1", true).await;
    reports(&client, &ns, true).await;
    data_service(&client, &ns, "v2", false).await;
    report_version(&client, &ns, "v1").await.unwrap();
    let first = start_operator(&client, &ns, Duration::from_secs(120));
    until(&client, &ns, "Ready on v1", |rv| {
        active(rv) == Some(Version::V1)
    })
    .await;
    set_version(&client, &ns, "v2").await;
    until(&client, &ns, "Progressing", |rv| {
        condition(rv, "Progressing").as_deref() == Some("True")
    })
    .await;
    first.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While no operator runs the target becomes ready; the next operator finishes the switch.
    data_service(&client, &ns, "v2", true).await;
    let _second = start_operator(&client, &ns, Duration::from_secs(120)).drop_guard();
    let rv = until(&client, &ns, "switched after the restart", |rv| {
        active(rv) == Some(Version::V2)
    })
    .await;
    assert_eq!(condition(&rv, "Ready").as_deref(), Some("True"));
    assert_eq!(condition(&rv, "Progressing").as_deref(), Some("False"));
}

#[tokio::test]
async fn a_version_is_promoted_only_once_the_reports_replicas_are_ready() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client).await;
    data_service(&client, &ns, "v1", true).await;
    data_service(&client, &ns, "v2", true).await;
    reports(&client, &ns, false).await;
    report_version(&client, &ns, "v2").await.unwrap();
    let _operator = start_operator(&client, &ns, Duration::from_secs(120)).drop_guard();

    let rv = until(
        &client,
        &ns,
        "Progressing while reports is not ready",
        |rv| condition(rv, "Progressing").as_deref() == Some("True"),
    )
    .await;
    assert_eq!(
        active(&rv),
        None,
        "nothing is promoted before it can be served"
    );
    let progressing = rv
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(progressing.reason, "WaitingForReports");

    // The reports Deployment becoming ready is watched: no poll needed to promote.
    reports(&client, &ns, true).await;
    let rv = until(&client, &ns, "serving v2", |rv| {
        active(rv) == Some(Version::V2)
    })
    .await;
    assert_eq!(condition(&rv, "Ready").as_deref(), Some("True"));
}

/// A release named `shop` prefixes its objects: the operator reads `shop-data-service-v2` and
/// `shop-reports`, and looks after `shop-reports` only, not another release's ReportVersion in
/// the same namespace.
#[tokio::test]
async fn an_operator_looks_after_its_own_release_only() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client).await;
    for (name, labels) in [
        (
            "shop-data-service-v1",
            serde_json::json!({"aeropartners.io/data-service": "v1"}),
        ),
        (
            "shop-data-service-v2",
            serde_json::json!({"aeropartners.io/data-service": "v2"}),
        ),
        (
            "shop-reports",
            serde_json::json!({"aeropartners.io/reports": "true"}),
        ),
    ] {
        deployment(&client, &ns, name, labels, true).await;
    }
    let resource = ApiResource::erase::<ReportVersion>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    for name in ["shop-reports", "other-reports"] {
        let rv: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "aeropartners.io/v1alpha1", "kind": "ReportVersion",
            "metadata": {"name": name}, "spec": {"version": "v2"}
        }))
        .unwrap();
        dynamic.create(&PostParams::default(), &rv).await.unwrap();
    }
    let settings = Settings {
        reports_deployment: "shop-reports".to_owned(),
        data_service_deployment: "shop-data-service-{version}".to_owned(),
        report_version: Some("shop-reports".to_owned()),
        ..Settings::new(Some(&ns), Duration::from_secs(120))
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(operator::controller::run(
        client.clone(),
        settings,
        shutdown.clone(),
    ));
    let _operator = shutdown.drop_guard();
    let api: Api<ReportVersion> = Api::namespaced(client.clone(), &ns);
    let mut served = None;
    for _ in 0..300 {
        served = api
            .get("shop-reports")
            .await
            .unwrap()
            .status
            .and_then(|s| s.active_version);
        if served.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served,
        Some(Version::V2),
        "the prefixed data service was found ready"
    );
    // Reconciled within a second of the first, had it been watched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        api.get("other-reports").await.unwrap().status,
        None,
        "another release's ReportVersion is not this operator's"
    );
}

/// The chart no longer renders the ReportVersion: the operator creates it once, owned by its
/// own Deployment, and never puts its spec back afterwards (a live switch survives).
#[tokio::test]
async fn the_operator_creates_its_report_version_once_and_leaves_the_spec_alone() {
    use operator::ensure::{Managed, Outcome, ensure};
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client).await;
    deployment(&client, &ns, "shop-operator", serde_json::json!({}), true).await;
    let managed = Managed {
        namespace: ns.clone(),
        name: "shop-reports".to_owned(),
        initial: Version::V1,
        owner: Some("shop-operator".to_owned()),
    };
    assert_eq!(ensure(&client, &managed).await.unwrap(), Outcome::Created);
    let api: Api<ReportVersion> = Api::namespaced(client.clone(), &ns);
    let rv = api.get("shop-reports").await.unwrap();
    assert_eq!(rv.spec.version, Version::V1);
    let owner = &rv.metadata.owner_references.as_ref().expect("an owner")[0];
    let operator = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("shop-operator")
        .await
        .unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "shop-operator")
    );
    assert_eq!(Some(&owner.uid), operator.metadata.uid.as_ref());

    // A user switches; the next operator start (a restart, an upgrade) keeps the switch.
    api.patch(
        "shop-reports",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"version": "v2"}})),
    )
    .await
    .unwrap();
    assert_eq!(ensure(&client, &managed).await.unwrap(), Outcome::Existed);
    assert_eq!(
        api.get("shop-reports").await.unwrap().spec.version,
        Version::V2
    );
}
