//! Pure check of who owns an existing object that has a child's name. The operator
//! modifies or deletes only objects that its ScalableApi controls, plus its own orphans
//! (`kubectl delete --cascade=orphan`), which it adopts like the Deployment controller
//! adopts matching ReplicaSets.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::desired::labels;

/// Who owns the live object of one child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// No object of that name exists.
    Absent,
    /// The ScalableApi's controller reference is on it.
    Ours,
    /// No controller at all, but our labels for this ScalableApi: an orphan of an earlier
    /// ScalableApi of this name. Adopt it only after a fresh read shows the owner alive.
    Orphan,
    /// Someone else's: never touched. The message names it and its controller.
    Foreign(String),
    /// Still controlled by an earlier ScalableApi of this name: the garbage collector is
    /// about to remove or orphan it, so this passes by itself within moments.
    Leftover(String),
}

/// Decides from the live object's metadata and the desired child's (which carries the
/// controller reference to the ScalableApi).
pub fn ownership(kind: &str, live: Option<&ObjectMeta>, desired: &ObjectMeta) -> Ownership {
    let Some(live) = live else {
        return Ownership::Absent;
    };
    let name = live.name.as_deref().unwrap_or_default();
    let Some(ours) = desired
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        // No owner to compare with (a rendered object without uid): nothing to protect.
        return Ownership::Ours;
    };
    let controller = live
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match controller {
        Some(c) if c.uid == ours.uid => Ownership::Ours,
        Some(c) if c.kind == ours.kind && c.name == ours.name => Ownership::Leftover(format!(
            "{kind} {name:?} is controlled by an earlier ScalableApi {:?} (uid {}) that is being deleted: wait for the garbage collector, or delete the {kind}",
            c.name, c.uid
        )),
        Some(c) => Ownership::Foreign(format!(
            "{kind} {name:?} already exists and is controlled by {} {:?}: rename the ScalableApi, or delete or rename the {kind}",
            c.kind, c.name
        )),
        None if our_labels(live, desired) => Ownership::Orphan,
        None => Ownership::Foreign(format!(
            "{kind} {name:?} already exists and is not controlled by this ScalableApi (last written by {}): rename the ScalableApi, or delete or rename the {kind}",
            writer(live)
        )),
    }
}

/// The managed-by and instance labels the desired child carries.
fn our_labels(live: &ObjectMeta, desired: &ObjectMeta) -> bool {
    [labels::MANAGED_BY, labels::INSTANCE].iter().all(|key| {
        let want = desired.labels.as_ref().and_then(|l| l.get(*key));
        want.is_some() && live.labels.as_ref().and_then(|l| l.get(*key)) == want
    })
}

/// The field manager of the newest managedFields entry, for the message.
fn writer(live: &ObjectMeta) -> String {
    live.managed_fields
        .iter()
        .flatten()
        .max_by_key(|e| e.time.as_ref().map(|t| t.0))
        .and_then(|e| e.manager.clone())
        .map_or_else(|| "an unknown client".to_owned(), |m| format!("{m:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};
    use std::collections::BTreeMap;

    fn owner(kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "scalable.dev/v1alpha1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn meta(owners: Vec<OwnerReference>, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("users".into()),
            owner_references: Some(owners),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        }
    }

    fn desired() -> ObjectMeta {
        meta(
            vec![owner("ScalableApi", "users", "u1")],
            &[
                (labels::MANAGED_BY, labels::MANAGER),
                (labels::INSTANCE, "users"),
            ],
        )
    }

    #[test]
    fn our_controller_reference_is_ours_and_nothing_is_absent() {
        assert_eq!(ownership("Deployment", None, &desired()), Ownership::Absent);
        let live = meta(vec![owner("ScalableApi", "users", "u1")], &[]);
        assert_eq!(
            ownership("Deployment", Some(&live), &desired()),
            Ownership::Ours
        );
    }

    #[test]
    fn another_controller_is_named_in_the_conflict() {
        let live = meta(vec![owner("Rollout", "users", "r9")], &[]);
        let Ownership::Foreign(message) = ownership("Deployment", Some(&live), &desired()) else {
            panic!("not foreign");
        };
        assert!(
            message.contains("controlled by Rollout \"users\""),
            "{message}"
        );
        let older = meta(vec![owner("ScalableApi", "users", "u0")], &[]);
        assert!(matches!(
            ownership("Deployment", Some(&older), &desired()),
            Ownership::Leftover(m) if m.contains("earlier ScalableApi")
        ));
    }

    #[test]
    fn an_object_without_our_labels_is_foreign_and_names_its_writer() {
        let mut live = meta(vec![], &[("app", "users")]);
        live.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl-client-side-apply".into()),
            ..ManagedFieldsEntry::default()
        }]);
        let Ownership::Foreign(message) = ownership("ConfigMap", Some(&live), &desired()) else {
            panic!("not foreign");
        };
        assert!(message.contains("ConfigMap \"users\""), "{message}");
        assert!(
            message.contains("\"kubectl-client-side-apply\""),
            "{message}"
        );
    }

    #[test]
    fn an_orphan_with_our_labels_for_this_name_may_be_adopted() {
        let live = meta(
            vec![],
            &[
                (labels::MANAGED_BY, labels::MANAGER),
                (labels::INSTANCE, "users"),
            ],
        );
        assert_eq!(
            ownership("Service", Some(&live), &desired()),
            Ownership::Orphan
        );
        let other_instance = meta(
            vec![],
            &[
                (labels::MANAGED_BY, labels::MANAGER),
                (labels::INSTANCE, "orders"),
            ],
        );
        assert!(matches!(
            ownership("Service", Some(&other_instance), &desired()),
            Ownership::Foreign(_)
        ));
    }
}
