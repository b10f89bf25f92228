//! The chart's affiliates Secret: what `helm template` renders is a file the collector loads,
//! and by default it is exactly the demo set `make run` uses (no drift between the two).
//! Needs `helm` on PATH (`make test` puts the project's own there).

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use event_collector::domain::{Directorio, afiliados::ConfigAfiliados};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Secret {
    kind: String,
    string_data: BTreeMap<String, String>,
}

fn rendered_affiliates(extra: &[&str]) -> Option<String> {
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/aeropartners");
    let mut args = vec![
        "template",
        "t",
        chart.to_str().unwrap(),
        "--kube-version",
        "1.34.4",
        "--show-only",
        "templates/config.yaml",
    ];
    args.extend(extra);
    let output = Command::new("helm")
        .args(&args)
        .output()
        .expect("helm on PATH");
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout).unwrap();
    rendered
        .split("\n---")
        .filter(|doc| doc.contains("afiliados.yaml"))
        .map(|doc| serde_saphyr::from_str::<Secret>(doc).expect("a Secret"))
        .find(|secret| secret.kind == "Secret")
        .map(|secret| secret.string_data["afiliados.yaml"].clone())
}

#[test]
fn the_chart_ships_the_demo_affiliates_as_a_loadable_secret() {
    let rendered = rendered_affiliates(&[]).expect("the chart renders an affiliates Secret");
    let directorio = Directorio::from_yaml(&rendered).expect("the collector loads it");
    assert!(directorio.perfil("AFILIADO_API").unwrap().configurado);
    let demo = include_str!("../../../../config/afiliados.demo.yaml");
    let from_chart: ConfigAfiliados = serde_saphyr::from_str(&rendered).unwrap();
    let from_file: ConfigAfiliados = serde_saphyr::from_str(demo).unwrap();
    assert_eq!(
        from_chart, from_file,
        "values.yaml's affiliates drifted from config/afiliados.demo.yaml"
    );
}

#[test]
fn an_existing_secret_replaces_the_charts_own() {
    assert_eq!(
        rendered_affiliates(&["--set", "eventCollector.existingAffiliatesSecret=partners"]),
        None
    );
}
