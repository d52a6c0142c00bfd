//! Self-checks of the in-memory API server's semantics the controller relies on.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_no_op_apply_keeps_the_resource_version() {
    let fake = FakeApiServer::new();
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(fake.client(), NS);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let pp = PatchParams::apply("m").force();
    let first = api
        .patch("c", &pp, &Patch::Apply(&cm))
        .await
        .expect("apply");
    let second = api
        .patch("c", &pp, &Patch::Apply(&cm))
        .await
        .expect("apply again");
    assert_eq!(
        first.metadata.resource_version,
        second.metadata.resource_version
    );
}

#[tokio::test]
async fn create_conflicts_and_missing_objects_use_api_status_codes() {
    let fake = FakeApiServer::new();
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(fake.client(), NS);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).expect("cm");
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let err = api
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("duplicate");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    assert!(api.get_opt("missing").await.expect("get_opt").is_none());
}

#[tokio::test]
async fn a_watch_from_compacted_history_is_told_to_relist() {
    use futures::StreamExt;
    use kube::runtime::watcher;

    // A two-event history: older resourceVersions are compacted away, as in etcd.
    let fake = FakeApiServer::lean(2);
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(fake.client(), NS);
    let pp = PatchParams::apply("m").force();
    for i in 0..5 {
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")}});
        api.patch(&format!("c{i}"), &pp, &Patch::Apply(&cm))
            .await
            .expect("apply");
    }
    assert_eq!(fake.count(CONFIGMAPS), 5);
    let wp = kube::api::WatchParams::default();
    let mut stream = api.watch(&wp, "1").await.expect("watch").boxed();
    let first = stream.next().await.expect("an event");
    assert!(
        matches!(first, Err(_) | Ok(kube::api::WatchEvent::Error(_))),
        "expected 410, got {first:?}"
    );

    // The watcher recovers by listing again and sees every object.
    let mut inits = watcher(api, watcher::Config::default())
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::InitDone) => Some(()),
                _ => None,
            }
        })
        .boxed();
    tokio::time::timeout(TIMEOUT, inits.next())
        .await
        .expect("initial list");
}
