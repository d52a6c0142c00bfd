//! Create, drift, deletion and adoption, with the real garbage collector, Deployment and
//! ReplicaSet controllers and kwok's pods.

use std::io::Write;
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, PropagationPolicy};
use operator::crd::ScalableApi;
use serde_json::{Value, json};

use crate::cluster::*;

/// What `scalable-api-operator render` prints for this ScalableApi, one JSON value a child.
fn rendered(sapi: &ScalableApi) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scalable-api-operator"))
        .args(["render", "-f", "-", "--default-image", DEFAULT_TEST_IMAGE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run render");
    let input = serde_json::to_string(sapi).expect("ScalableApi as JSON");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("render output");
    assert!(out.status.success(), "render failed");
    serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).expect("render YAML")
}

/// Paths where `live` differs from `want`: every field `want` sets must be in `live` with
/// the same value; `live` may have more (server defaults, other managers).
fn differences(want: &Value, live: &Value, path: &str, out: &mut Vec<String>) {
    match (want, live) {
        (Value::Object(w), Value::Object(l)) => {
            for (k, wv) in w {
                match l.get(k) {
                    Some(lv) => differences(wv, lv, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}: missing (want {wv})")),
                }
            }
        }
        (Value::Array(w), Value::Array(l)) if w.len() == l.len() => {
            for (i, (wv, lv)) in w.iter().zip(l).enumerate() {
                differences(wv, lv, &format!("{path}[{i}]"), out);
            }
        }
        _ if want == live => {}
        _ => out.push(format!("{path}: want {want}, live {live}")),
    }
}

/// The live object of a rendered child, as JSON.
async fn live(c: &Cluster, kind: &str, name: &str) -> Value {
    let value = match kind {
        "ConfigMap" => c.get::<ConfigMap>(name).await.map(serde_json::to_value),
        "Deployment" => c.get::<Deployment>(name).await.map(serde_json::to_value),
        "Service" => c.get::<Service>(name).await.map(serde_json::to_value),
        "HorizontalPodAutoscaler" => c
            .get::<HorizontalPodAutoscaler>(name)
            .await
            .map(serde_json::to_value),
        "PodDisruptionBudget" => c
            .get::<PodDisruptionBudget>(name)
            .await
            .map(serde_json::to_value),
        other => panic!("render printed an unexpected kind {other}"),
    };
    value
        .unwrap_or_else(|| panic!("{kind} {name} does not exist"))
        .expect("child as JSON")
}

fn owner_uid<K: ResourceExt>(obj: &K) -> Option<String> {
    obj.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

async fn pods(c: &Cluster) -> Vec<Pod> {
    c.api::<Pod>()
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items
}

fn running_and_ready(p: &Pod) -> bool {
    let status = p.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[tokio::test]
async fn create_makes_what_render_prints_and_the_pods_run_until_ready() {
    let c = Cluster::with_operator("create").await;
    create_db_secret(&c, "users").await;
    let created = scalable_api("users").replicas(2).create(&c).await;
    let uid = created.uid().expect("uid");

    let sapi = c
        .wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let status = sapi.status.as_ref().expect("status");
    assert_eq!(status.observed_generation, sapi.metadata.generation);
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://users.{}.svc:80", c.ns).as_str())
    );

    // Every child render prints exists with every field render sets. The config-hash
    // annotation is the one exception: render has no Secret data to hash.
    let children = rendered(&created);
    assert_eq!(
        children.len(),
        4,
        "ConfigMap, Deployment, Service, PodDisruptionBudget"
    );
    for mut want in children {
        let kind = want["kind"].as_str().expect("kind").to_owned();
        let name = want["metadata"]["name"].as_str().expect("name").to_owned();
        let got = live(&c, &kind, &name).await;
        if let Some(a) = want.pointer_mut("/spec/template/metadata/annotations") {
            a.as_object_mut()
                .expect("annotations")
                .remove("scalable.dev/config-hash");
        }
        let mut diffs = Vec::new();
        differences(&want, &got, &format!("{kind}/{name}"), &mut diffs);
        assert!(
            diffs.is_empty(),
            "live differs from render:\n{}",
            diffs.join("\n")
        );
        assert_eq!(
            got.pointer("/metadata/ownerReferences/0/uid")
                .and_then(Value::as_str),
            Some(uid.as_str()),
            "{kind} is owned by the ScalableApi"
        );
    }

    // The Deployment controller made a ReplicaSet, the scheduler bound its pods to kwok's
    // nodes, and kwok reports them Running and Ready.
    let deployment = c.get::<Deployment>("users").await.expect("Deployment");
    let sets = c
        .api::<ReplicaSet>()
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(sets.items.len(), 1, "{:?}", names(&sets.items));
    assert_eq!(owner_uid(&sets.items[0]), deployment.uid());
    let pods = pods(&c).await;
    assert_eq!(pods.len(), 2, "{:?}", names(&pods));
    for p in &pods {
        assert!(
            running_and_ready(p),
            "{} is not Running and Ready",
            p.name_any()
        );
        assert!(
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some()
        );
    }

    let event = c.wait_for_event("users", "Available").await;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some("scalable-api-operator")
    );
}

#[tokio::test]
async fn drift_is_corrected_and_another_managers_env_var_survives() {
    let c = Cluster::with_operator("drift").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").create(&c).await;
    let before = c
        .wait_for::<Deployment>("users", "the Deployment", |_| true)
        .await;
    let image = |d: &Deployment| {
        d.spec
            .as_ref()?
            .template
            .spec
            .as_ref()?
            .containers
            .first()?
            .image
            .clone()
    };
    assert_eq!(image(&before).as_deref(), Some(DEFAULT_TEST_IMAGE));

    // Someone edits the image by hand: the operator owns that field and puts it back.
    c.kubectl(&[
        "set",
        "image",
        "deployment/users",
        "api=evil.example/miner:latest",
    ]);
    c.wait_for::<Deployment>("users", "the image to be restored", |d| {
        image(d).as_deref() == Some(DEFAULT_TEST_IMAGE)
            && d.metadata.generation > before.metadata.generation
    })
    .await;

    // Another tool adds an env var to the api container; it is not ours, so it stays across
    // the next reconcile (server-side apply merges env entries by name).
    c.kubectl(&[
        "set",
        "env",
        "deployment/users",
        "-c",
        "api",
        "EXTRA_FLAG=on",
    ]);
    let has_extra = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.iter().find(|c| c.name == "api"))
            .and_then(|c| c.env.as_ref())
            .is_some_and(|env| env.iter().any(|e| e.name == "EXTRA_FLAG"))
    };
    c.wait_for::<Deployment>("users", "EXTRA_FLAG", has_extra)
        .await;
    let sapi = patch_spec(&c, "users", json!({"cache": {"ttlSeconds": 61}})).await;
    let generation = sapi.metadata.generation;
    c.wait_for::<ScalableApi>("users", "the spec change to be observed", |s| {
        s.status.as_ref().and_then(|st| st.observed_generation) == generation
    })
    .await;
    c.wait_for::<ConfigMap>("users-config", "the new TTL", |cm| {
        serde_json::to_string(cm).is_ok_and(|s| s.contains("\"61\""))
    })
    .await;
    let after = c.get::<Deployment>("users").await.expect("Deployment");
    assert!(has_extra(&after), "the other manager's env var was removed");
}

#[tokio::test]
async fn a_spec_change_updates_the_children_and_a_deleted_child_comes_back() {
    let c = Cluster::with_operator("change").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").replicas(3).create(&c).await;
    let old = c
        .wait_for::<Service>("users", "the Service", |_| true)
        .await;
    c.wait_for::<PodDisruptionBudget>("users", "the PDB", |_| true)
        .await;

    let sapi = patch_spec(
        &c,
        "users",
        json!({"image": "registry.test/api-server:2.0.0", "replicas": 1}),
    )
    .await;
    c.wait_for::<Deployment>("users", "the new image and 1 replica", |d| {
        let spec = d.spec.as_ref();
        spec.and_then(|s| s.replicas) == Some(1)
            && serde_json::to_string(d).is_ok_and(|j| j.contains("api-server:2.0.0"))
    })
    .await;
    // One replica cannot be disrupted safely: no PodDisruptionBudget.
    c.wait_gone::<PodDisruptionBudget>("users").await;
    c.wait_for::<ScalableApi>("users", "observedGeneration", |s| {
        s.status.as_ref().and_then(|st| st.observed_generation) == sapi.metadata.generation
    })
    .await;

    c.api::<Service>()
        .delete("users", &DeleteParams::default())
        .await
        .expect("delete the Service");
    let new = c
        .wait_for::<Service>("users", "the Service to come back", |s| {
            s.uid() != old.uid()
        })
        .await;
    let port = new
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().map(|p| p.port));
    assert_eq!(port, Some(80));
}

/// Children of `name`, each as (kind, exists).
async fn children_exist(c: &Cluster, name: &str) -> Vec<(&'static str, bool)> {
    vec![
        (
            "ConfigMap",
            c.get::<ConfigMap>(&format!("{name}-config"))
                .await
                .is_some(),
        ),
        ("Deployment", c.get::<Deployment>(name).await.is_some()),
        ("Service", c.get::<Service>(name).await.is_some()),
        (
            "PodDisruptionBudget",
            c.get::<PodDisruptionBudget>(name).await.is_some(),
        ),
    ]
}

async fn wait_all_children_gone(c: &Cluster, name: &str) {
    c.wait_gone::<ConfigMap>(&format!("{name}-config")).await;
    c.wait_gone::<Deployment>(name).await;
    c.wait_gone::<Service>(name).await;
    c.wait_gone::<PodDisruptionBudget>(name).await;
}

#[tokio::test]
async fn the_garbage_collector_removes_every_child_in_background_and_foreground() {
    let c = Cluster::with_operator("gc").await;
    for name in ["bg", "fg"] {
        create_db_secret(&c, name).await;
        scalable_api(name).create(&c).await;
        c.wait_for_condition(name, "Ready", "True", "Available")
            .await;
    }
    let sapis = c.api::<ScalableApi>();

    sapis
        .delete("bg", &DeleteParams::background())
        .await
        .expect("delete in the background");
    c.wait_gone::<ScalableApi>("bg").await;
    wait_all_children_gone(&c, "bg").await;

    // Foreground: the ScalableApi stays (with the foregroundDeletion finalizer) until the
    // collector has removed every child that blocks owner deletion.
    sapis
        .delete("fg", &DeleteParams::foreground())
        .await
        .expect("delete in the foreground");
    c.wait_gone::<ScalableApi>("fg").await;
    assert!(
        children_exist(&c, "fg")
            .await
            .iter()
            .all(|(_, exists)| !exists),
        "{:?}",
        children_exist(&c, "fg").await
    );
    // The ReplicaSets and pods went with the Deployments.
    let label = ListParams::default().labels("app.kubernetes.io/name=api-server");
    within("the pods to go", async {
        loop {
            let left = c.api::<Pod>().list(&label).await.expect("list pods").items;
            if left.is_empty() {
                break;
            }
            // kwok deletes a pod once its deletionTimestamp is set; watch for that.
            let name = left[0].name_any();
            c.wait_gone::<Pod>(&name).await;
        }
    })
    .await;
}

#[tokio::test]
async fn orphaned_children_stay_and_a_new_scalable_api_of_the_name_adopts_them() {
    let c = Cluster::with_operator("orphan").await;
    create_db_secret(&c, "users").await;
    let first = scalable_api("users").create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let deployment = c.get::<Deployment>("users").await.expect("Deployment");
    assert_eq!(owner_uid(&deployment), first.uid());

    c.api::<ScalableApi>()
        .delete(
            "users",
            &DeleteParams {
                propagation_policy: Some(PropagationPolicy::Orphan),
                ..DeleteParams::default()
            },
        )
        .await
        .expect("delete, orphaning the children");
    c.wait_gone::<ScalableApi>("users").await;
    // The collector removes the owner reference and leaves the objects.
    let orphan = c
        .wait_for::<Deployment>("users", "the owner reference to be removed", |d| {
            d.owner_references().is_empty()
        })
        .await;
    assert_eq!(orphan.uid(), deployment.uid(), "the same Deployment");
    assert!(children_exist(&c, "users").await.iter().all(|(_, e)| *e));

    let second = scalable_api("users").create(&c).await;
    assert_ne!(second.uid(), first.uid());
    let adopted = c
        .wait_for::<Deployment>(
            "users",
            "the new ScalableApi to adopt the Deployment",
            |d| owner_uid(d) == second.uid(),
        )
        .await;
    assert_eq!(adopted.uid(), deployment.uid(), "adopted, not replaced");
    for name in ["users-config"] {
        c.wait_for::<ConfigMap>(name, "the ConfigMap adopted", |cm| {
            owner_uid(cm) == second.uid()
        })
        .await;
    }
    c.wait_for::<Service>("users", "the Service adopted", |s| {
        owner_uid(s) == second.uid()
    })
    .await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
}

#[tokio::test]
async fn an_object_in_another_namespace_is_left_alone() {
    let watched = Cluster::with_operator("watched").await;
    let other = Cluster::new("unwatched").await;
    create_db_secret(&other, "users").await;
    scalable_api("users").create(&other).await;
    create_db_secret(&watched, "users").await;
    scalable_api("users").create(&watched).await;
    watched
        .wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let untouched = other
        .get::<ScalableApi>("users")
        .await
        .expect("ScalableApi");
    assert!(
        untouched.status.is_none(),
        "no status written outside the watched namespace"
    );
    assert!(other.get::<Deployment>("users").await.is_none());
}
