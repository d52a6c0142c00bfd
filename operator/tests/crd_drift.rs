//! `crds/` must hold exactly what `scalable-api-operator crd` prints.

const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/scalableapis.scalable.dev.yaml"
);

#[test]
fn committed_crd_matches_the_rust_types() {
    let generated = operator::render::crd_yaml().expect("the CRD serializes");
    let committed = std::fs::read_to_string(CRD_FILE).unwrap_or_default();
    assert!(
        generated == committed,
        "crds/scalableapis.scalable.dev.yaml is stale (or missing). Regenerate it with:\n\n    \
         cargo run -q -p scalable-api-operator -- crd > crds/scalableapis.scalable.dev.yaml\n\n\
         and commit the result (the Helm chart's copy too, if it has one)."
    );
}
