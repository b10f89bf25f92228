//! The chart as installed on the Kubernetes node of `make e2e`, seen the way an operator sees
//! it: `kubectl` and `helm` (with `KUBECONFIG` of the node), Services by their ClusterIP, pods
//! by their address. The runner lives in the node's network namespace, so every address here
//! is reachable and nothing else is.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;

/// Runs `kubectl` and waits for it. The wait blocks this thread (up to a rollout's length for
/// `rollout status`), so the runtime is told to move its other tasks elsewhere first: the load
/// generators share the runtime, and a blocked worker would delay their requests and show up
/// as the platform's latency (it did: p50 ~1 s during `rollout restart`, all of it the runner's).
/// The e2e runner's runtime is multi-threaded, as `block_in_place` requires.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    tokio::task::block_in_place(|| testkit::kubectl(args, None).map_err(anyhow::Error::msg))
}

/// `helm`, off the runtime like [`kubectl`].
pub fn helm(args: &[&str]) -> anyhow::Result<String> {
    let output =
        tokio::task::block_in_place(|| std::process::Command::new("helm").args(args).output())
            .context("helm cannot start (scripts/e2e.sh puts it on PATH)")?;
    anyhow::ensure!(
        output.status.success(),
        "helm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub ip: String,
    pub ready: bool,
    pub deleting: bool,
    pub restarts: i64,
}

/// The release under test.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub namespace: String,
    pub release: String,
    pub chart: PathBuf,
}

impl Cluster {
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", &self.namespace];
        all.extend_from_slice(args);
        kubectl(&all)
    }

    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&all)?)?)
    }

    /// The release's instance of the chart, as the chart names it: the release's name when it
    /// contains "aeropartners", `<release>-aeropartners` otherwise.
    pub fn fullname(&self) -> String {
        if self.release.contains("aeropartners") {
            self.release.clone()
        } else {
            format!("{}-aeropartners", self.release)
        }
    }

    /// `Bearer <key>` of a partner key for `afiliado`, made the way the README tells a user
    /// to: `kubectl exec deploy/<fullname>-payments -- aeropartners claves crear`. One key per
    /// affiliate per run, kept for the parts that follow.
    pub fn partner_authorization(&self, afiliado: &str) -> anyhow::Result<String> {
        static KEYS: std::sync::LazyLock<
            std::sync::Mutex<std::collections::HashMap<String, String>>,
        > = std::sync::LazyLock::new(Default::default);
        if let Some(key) = KEYS.lock().unwrap().get(afiliado) {
            return Ok(key.clone());
        }
        let deployment = format!("deploy/{}", self.name("payments"));
        let output = self.kubectl(&[
            "exec",
            &deployment,
            "--",
            "aeropartners",
            "claves",
            "crear",
            "--afiliado",
            afiliado,
            "--descripcion",
            "e2e",
        ])?;
        let key = output
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("ap_sk_"))
            .with_context(|| format!("`aeropartners claves crear` printed no key: {output}"))?;
        let authorization = format!("Bearer {key}");
        KEYS.lock()
            .unwrap()
            .insert(afiliado.to_owned(), authorization.clone());
        Ok(authorization)
    }

    /// `Bearer <token>` of a ServiceAccount bound to the release's `<fullname>-operations` Role,
    /// as an operator of the release is (docs/security.md).
    pub fn operator_authorization(&self) -> anyhow::Result<String> {
        self.bound_token("e2e-operator", "operations")
    }

    /// A token of ServiceAccount `account` bound to the release's `<fullname>-<role>` Role
    /// (created the first time; `kubectl create token`, valid for two hours).
    pub fn bound_token(&self, account: &str, role: &str) -> anyhow::Result<String> {
        if self
            .kubectl(&[
                "get",
                "serviceaccount",
                account,
                "--ignore-not-found",
                "-o",
                "name",
            ])?
            .trim()
            .is_empty()
        {
            self.kubectl(&["create", "serviceaccount", account])?;
            let subject = format!("{}:{account}", self.namespace);
            let role = format!("--role={}-{role}", self.fullname());
            let subject = format!("--serviceaccount={subject}");
            self.kubectl(&["create", "rolebinding", account, &role, &subject])?;
        }
        let token = self.kubectl(&["create", "token", account, "--duration=2h"])?;
        Ok(format!("Bearer {}", token.trim()))
    }

    /// The name of a component's objects (Deployment, Service, PDB, ServiceAccount…).
    pub fn name(&self, component: &str) -> String {
        format!("{}-{component}", self.fullname())
    }

    /// The Service of a component: the gateway's is the release's front door, named as the
    /// release itself.
    pub fn service_name(&self, component: &str) -> String {
        if component == "gateway" {
            self.fullname()
        } else {
            self.name(component)
        }
    }

    /// `deployment/<name>` of a component, for kubectl.
    pub fn deployment(&self, component: &str) -> String {
        format!("deployment/{}", self.name(component))
    }

    /// The release's ReportVersion.
    pub fn report_version_name(&self) -> String {
        self.name("reports")
    }

    /// `http://<ClusterIP>:<port>` of a component's Service (kube-proxy's rules carry it to
    /// the pods).
    pub fn service_url(&self, component: &str) -> anyhow::Result<String> {
        let service = self.json(&["get", "service", &self.service_name(component)])?;
        let ip = service["spec"]["clusterIP"]
            .as_str()
            .context("a ClusterIP")?;
        let port = service["spec"]["ports"][0]["port"]
            .as_i64()
            .context("a port")?;
        Ok(format!("http://{ip}:{port}"))
    }

    pub fn pods(&self, selector: &str) -> anyhow::Result<Vec<Pod>> {
        let list = self.json(&["get", "pods", "-l", selector])?;
        Ok(list["items"]
            .as_array()
            .context("a pod list")?
            .iter()
            .map(|pod| {
                let condition = |kind: &str| {
                    pod["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == kind && c["status"] == "True")
                };
                Pod {
                    name: pod["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                    uid: pod["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
                    ip: pod["status"]["podIP"].as_str().unwrap_or("").to_owned(),
                    ready: condition("Ready"),
                    deleting: !pod["metadata"]["deletionTimestamp"].is_null(),
                    restarts: pod["status"]["containerStatuses"][0]["restartCount"]
                        .as_i64()
                        .unwrap_or(0),
                }
            })
            .collect())
    }

    /// `spec.replicas` of a component's Deployment.
    pub fn replicas(&self, component: &str) -> anyhow::Result<usize> {
        let deployment = self.json(&["get", "deployment", &self.name(component)])?;
        Ok(usize::try_from(
            deployment["spec"]["replicas"]
                .as_u64()
                .context("spec.replicas")?,
        )?)
    }

    /// Selector of a component's pods, as the chart labels them.
    pub fn selector(&self, component: &str) -> String {
        format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component={component}",
            self.release
        )
    }

    /// Waits until `check` holds, polling every 100 ms; returns how long it took.
    pub async fn until(
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if check().unwrap_or(false) {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(started.elapsed() < limit, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every pod of `component` that is not being deleted is Ready and there are
    /// `replicas` of them.
    pub async fn until_ready(
        &self,
        component: &str,
        replicas: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let selector = self.selector(component);
        Self::until(
            &format!("{replicas} ready pods of {component}"),
            limit,
            || {
                let pods = self.pods(&selector)?;
                let live: Vec<&Pod> = pods.iter().filter(|p| !p.deleting).collect();
                Ok(live.len() == replicas && live.iter().all(|p| p.ready))
            },
        )
        .await
    }

    /// `status.activeVersion` and the Ready condition of the release's ReportVersion.
    pub fn report_version(&self) -> anyhow::Result<(String, serde_json::Value)> {
        let rv = self.json(&["get", "rv", &self.report_version_name()])?;
        Ok((
            rv["status"]["activeVersion"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            rv["status"]["conditions"].clone(),
        ))
    }

    /// `helm upgrade --reset-then-reuse-values --set …` of the release with its chart, as a
    /// user changes a setting: waits until the release is ready again.
    pub fn set_values(&self, values: &[&str]) -> anyhow::Result<()> {
        self.upgrade(&self.chart, values)?;
        Ok(())
    }

    /// `helm upgrade --reset-then-reuse-values` of the release to `chart` with `values` set,
    /// waited for (Jobs included), then every Deployment's rollout complete; how long it all
    /// took. Not `--reuse-values`: that also keeps the *old chart's defaults*, so moving to a
    /// chart with a new value (or back from one) renders with the other chart's defaults and
    /// fails its schema (helm/helm#8085). `--reset-then-reuse-values` (Helm 3.14) keeps only
    /// what the user set, on top of the target chart's defaults.
    pub fn upgrade(&self, chart: &std::path::Path, values: &[&str]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let chart = chart.to_string_lossy().into_owned();
        let mut args = vec![
            "upgrade",
            self.release.as_str(),
            chart.as_str(),
            "-n",
            self.namespace.as_str(),
            "--reset-then-reuse-values",
            "--wait",
            "--wait-for-jobs",
            "--timeout",
            "10m",
        ];
        for value in values {
            args.extend(["--set", value]);
        }
        helm(&args)?;
        self.rolled_out()?;
        Ok(started.elapsed())
    }

    /// Every Deployment's rollout complete.
    pub fn rolled_out(&self) -> anyhow::Result<()> {
        for deployment in self.kubectl(&["get", "deployments", "-o", "name"])?.lines() {
            self.kubectl(&["rollout", "status", deployment, "--timeout=600s"])?;
        }
        Ok(())
    }

    pub fn patch_version(&self, version: &str) -> anyhow::Result<()> {
        self.kubectl(&[
            "patch",
            "rv",
            &self.report_version_name(),
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"version":"{version}"}}}}"#),
        ])?;
        Ok(())
    }
}

/// Whether the condition `kind` of a status' conditions is "True".
pub fn condition(conditions: &serde_json::Value, kind: &str) -> bool {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// The PID, on this node, of the container process of pod `uid` whose command line contains
/// `needle` (the kubelet's cgroupfs driver puts a pod's processes under `…/pod<uid>/…`).
/// The pause process of the sandbox shares the cgroup but not the command line.
pub fn container_process(uid: &str, needle: &str) -> Option<u32> {
    let marker = format!("/pod{uid}/");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (cgroup.contains(&marker) && String::from_utf8_lossy(&cmdline).contains(needle))
                .then_some(pid)
        })
}

/// The PIDs, on this node, of the processes of one container: those in the cgroup
/// `…/pod<uid>/<container id>` (the id without its `containerd://` prefix).
pub fn container_processes(uid: &str, container_id: &str) -> Vec<u32> {
    let marker = format!("/pod{uid}/{container_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            cgroup
                .lines()
                .any(|line| line.ends_with(&marker))
                .then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}
