//! The chart's affiliates Secret: what `helm template` renders is a file the collector loads;
//! by default the demo set `make run` uses (no drift between the two) without its published
//! credentials, which the chart refuses.
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
fn the_chart_ships_the_demo_tiers_and_affiliates_without_their_credentials() {
    let rendered = rendered_affiliates(&[]).expect("the chart renders an affiliates Secret");
    let directorio = Directorio::from_yaml(&rendered).expect("the collector loads it");
    assert!(directorio.perfil("AFILIADO_API").unwrap().configurado);
    let demo = include_str!("../../../../config/afiliados.demo.yaml");
    let from_chart: ConfigAfiliados = serde_saphyr::from_str(&rendered).unwrap();
    let from_file: ConfigAfiliados = serde_saphyr::from_str(demo).unwrap();
    assert_eq!(
        from_chart.niveles, from_file.niveles,
        "tiers drifted from the demo file"
    );
    assert_eq!(from_chart.nivel_por_defecto, from_file.nivel_por_defecto);
    assert_eq!(
        from_chart
            .afiliados
            .iter()
            .map(|(id, a)| (id, &a.nivel))
            .collect::<Vec<_>>(),
        from_file
            .afiliados
            .iter()
            .map(|(id, a)| (id, &a.nivel))
            .collect::<Vec<_>>(),
        "affiliates drifted from the demo file"
    );
    // Partners send with keys from the store; a webhook secret is the installer's to set.
    for (id, afiliado) in &from_chart.afiliados {
        assert!(
            afiliado.api_keys.is_empty() && afiliado.secretos_webhook.is_empty(),
            "{id} ships with a credential"
        );
    }
}

#[test]
fn a_demo_credential_is_refused_and_an_own_secret_is_shipped() {
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/aeropartners");
    let refused = Command::new("helm")
        .args([
            "template",
            "t",
            chart.to_str().unwrap(),
            "--kube-version",
            "1.34.4",
            "--set",
            "eventCollector.affiliates.afiliados.AFILIADO_WEBHOOK.secretos_webhook={whsec_demo_2026}",
        ])
        .output()
        .expect("helm on PATH");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("demo credential"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let own = rendered_affiliates(&[
        "--set",
        "eventCollector.affiliates.afiliados.AFILIADO_WEBHOOK.secretos_webhook={whsec_propio_8f2k}",
        "--set",
        "eventCollector.affiliates.afiliados.AFILIADO_WEBHOOK.fuentes={WEBHOOK}",
    ])
    .expect("an affiliates Secret");
    let perfil = Directorio::from_yaml(&own)
        .unwrap()
        .perfil("AFILIADO_WEBHOOK")
        .unwrap();
    assert_eq!(perfil.secretos_webhook.len(), 1);
    assert_eq!(
        perfil.fuentes,
        vec![event_collector::domain::FuenteEvento::Webhook]
    );
}

#[test]
fn an_existing_secret_replaces_the_charts_own() {
    assert_eq!(
        rendered_affiliates(&["--set", "eventCollector.existingAffiliatesSecret=partners"]),
        None
    );
}
