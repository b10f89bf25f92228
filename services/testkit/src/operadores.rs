//! Operators on the test API server (`make k8s-up`), bound as a release's users are: a
//! namespace of their own with the chart's access objects (templates/access.yaml, rendered by
//! helm: the `aeropartners-viewer` and `aeropartners-operations` Roles) and three service
//! accounts: `alice` bound to operations, `bob` to the viewer Role, `nadie` to nothing.

use std::process::Command;

use crate::kubectl;

/// The chart's directory, for `helm template`.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/aeropartners");

/// Renders one of the chart's templates for a release named `aeropartners` in `namespace`.
pub fn render(namespace: &str, template: &str) -> String {
    let rendered = Command::new("helm")
        .args([
            "template",
            "aeropartners",
            CHART,
            "--namespace",
            namespace,
            "--kube-version",
            "1.34.4",
            "--show-only",
            template,
        ])
        .output()
        .expect("helm runs (make k8s-up puts it on PATH)");
    assert!(
        rendered.status.success(),
        "helm template {template}: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    String::from_utf8(rendered.stdout).expect("helm writes UTF-8")
}

/// A namespace with the chart's Roles and three users; deleted when dropped.
pub struct Operadores {
    pub namespace: String,
}

impl Operadores {
    /// The user bound to `aeropartners-operations`.
    pub const OPERACIONES: &str = "alice";
    /// The user bound to `aeropartners-viewer`.
    pub const LECTOR: &str = "bob";
    /// A user the cluster knows, bound to nothing.
    pub const NADIE: &str = "nadie";

    /// Needs `KUBECONFIG` on the test API server (make test sets it).
    pub fn crear(prefijo: &str) -> Self {
        assert!(
            std::env::var("KUBECONFIG").is_ok(),
            "KUBECONFIG must point at the test kube-apiserver (make test starts one)"
        );
        let namespace = format!("{prefijo}-{}", uuid::Uuid::new_v4().simple());
        let run = |args: &[&str], stdin: Option<&str>| {
            kubectl(args, stdin).unwrap_or_else(|e| panic!("{e}"));
        };
        run(&["create", "namespace", &namespace], None);
        let operadores = Self { namespace };
        let ns = operadores.namespace.as_str();
        run(
            &["apply", "-n", ns, "-f", "-"],
            Some(&render(ns, "templates/access.yaml")),
        );
        for (usuario, rol) in [
            (Self::OPERACIONES, Some("operations")),
            (Self::LECTOR, Some("viewer")),
            (Self::NADIE, None),
        ] {
            run(&["create", "serviceaccount", usuario, "-n", ns], None);
            if let Some(rol) = rol {
                run(
                    &[
                        "create",
                        "rolebinding",
                        usuario,
                        "-n",
                        ns,
                        &format!("--role=aeropartners-{rol}"),
                        &format!("--serviceaccount={ns}:{usuario}"),
                    ],
                    None,
                );
            }
        }
        operadores
    }

    /// A new token of `usuario` (`kubectl create token`).
    pub fn token(&self, usuario: &str) -> String {
        kubectl(&["create", "token", usuario, "-n", &self.namespace], None)
            .unwrap_or_else(|e| panic!("{e}"))
            .trim()
            .to_owned()
    }

    /// The Kubernetes user name of `usuario`.
    pub fn nombre(&self, usuario: &str) -> String {
        format!("system:serviceaccount:{}:{usuario}", self.namespace)
    }
}

impl Drop for Operadores {
    fn drop(&mut self) {
        let _ = kubectl(
            &["delete", "namespace", &self.namespace, "--wait=false"],
            None,
        );
    }
}
