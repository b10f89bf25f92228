use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reporting version. The CRD schema is an enum, so the API server itself rejects anything
/// but `v1` and `v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Version {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

impl std::str::FromStr for Version {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            other => Err(format!("unknown report version {other:?} (v1 or v2)")),
        }
    }
}

/// Desired state: the version users asked for.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "aeropartners.io",
    version = "v1alpha1",
    kind = "ReportVersion",
    plural = "reportversions",
    shortname = "rv",
    namespaced,
    status = "ReportVersionStatus",
    printcolumn = r#"{"name":"Desired","type":"string","jsonPath":".spec.version","description":"Version asked for"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.activeVersion","description":"Version served right now"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ReportVersionSpec {
    /// `v1` (simple report) or `v2` (detailed, backward compatible).
    pub version: Version,
}

/// Observed state, written by the operator only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportVersionStatus {
    /// What the reports replicas serve right now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_version: Option<Version>,
    /// The `metadata.generation` this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `activeVersion` last changed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<String>,
    /// `Ready`, `Progressing` and `Degraded` (metav1.Condition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CRD as YAML, exactly as `crdgen` writes it to `crds/`.
pub fn crd_yaml() -> anyhow::Result<String> {
    use kube::CustomResourceExt;
    Ok(serde_saphyr::to_string(&ReportVersion::crd())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_crd_names_and_columns_match_the_contract() {
        let crd = ReportVersion::crd();
        assert_eq!(crd.spec.group, "aeropartners.io");
        assert_eq!(crd.spec.names.kind, "ReportVersion");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["rv".to_owned()][..])
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, vec!["Desired", "Active", "Ready", "Age"]);
    }

    #[test]
    fn the_schema_only_allows_v1_and_v2() {
        let yaml = crd_yaml().unwrap();
        let json: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let version_schema = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["version"];
        assert_eq!(
            version_schema["enum"],
            serde_json::json!(["v1", "v2"]),
            "{version_schema}"
        );
        assert!(
            serde_json::from_value::<ReportVersionSpec>(serde_json::json!({"version": "v3"}))
                .is_err()
        );
    }
}
