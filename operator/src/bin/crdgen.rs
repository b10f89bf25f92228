//! `crdgen`: prints the `ReportVersion` CRD as YAML (`make crds` writes it to `crds/` and the
//! chart; `make test` fails when either copy is stale).

fn main() -> anyhow::Result<()> {
    print!("{}", operator::crd::crd_yaml()?);
    Ok(())
}
