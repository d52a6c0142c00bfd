//! (8) Every `examples/invalid-*.yaml` is rejected by the API server (CRD schema + CEL) with
//! the message its `# expect-error:` line names, exactly as `kubectl apply --server-side`
//! would see it; a valid example passes the same path (server-side dry run).

use e2e::TestEnv;
use e2e::objects::{examples_dir, invalid_examples};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Error};
use operator::crd::ScalableApi;
use serde_json::Value;

const FIELD_MANAGER: &str = "e2e-kubectl";

fn dynamic_api(env: &TestEnv) -> Api<DynamicObject> {
    Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &ApiResource::erase::<ScalableApi>(&()),
    )
}

#[tokio::test]
async fn invalid_scalable_apis_are_rejected_at_apply() -> anyhow::Result<()> {
    let Some(env) = TestEnv::setup("invalid-rejected").await? else {
        return Ok(());
    };
    let api = dynamic_api(&env);

    let mut failures = Vec::new();
    for example in invalid_examples()? {
        let name = example.object["metadata"]["name"]
            .as_str()
            .unwrap_or("invalid")
            .to_owned();
        let result = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&example.object),
            )
            .await;
        match result {
            Ok(_) => failures.push(format!("{}: accepted", example.file)),
            Err(Error::Api(status)) => {
                let text = format!("{} {:?}", status.message, status.details);
                if status.code != 422 {
                    failures.push(format!(
                        "{}: HTTP {} instead of 422: {text}",
                        example.file, status.code
                    ));
                }
                for expected in &example.expected_errors {
                    if !text.contains(expected.as_str()) {
                        failures.push(format!(
                            "{}: message lacks '{expected}': {text}",
                            example.file
                        ));
                    }
                }
                println!("{} rejected: {}", example.file, status.message);
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", example.file)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The same path accepts a valid object (dry run: nothing is created).
    let text = std::fs::read_to_string(examples_dir().join("minimal.yaml"))?;
    let minimal: Value = serde_saphyr::from_str(&text)?;
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.dry_run = true;
    api.patch("users", &params, &Patch::Apply(&minimal)).await?;

    env.pass();
    Ok(())
}
