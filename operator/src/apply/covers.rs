//! Pure comparison of a desired child with the live object: does the live object already
//! hold every field we would apply? Then a server-side apply would change nothing, and
//! sending it anyway is a write through admission, audit and etcd for nothing.

use serde_json::Value;

/// Keys that identify list elements in the lists our children use (containers, env, ports,
/// volumes, owner references, topology spread constraints). Other managers may add
/// elements to those lists; matching by key keeps their additions from counting as drift.
const LIST_KEYS: &[&str] = &["uid", "name", "containerPort", "port", "topologyKey"];

/// True when every field set in `desired` has the same value in `live`. Objects may carry
/// more keys in `live` (defaults, other managers' fields); lists of keyed objects match
/// element by key, other lists element by element with equal length.
pub fn covers(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| covers(lv, dv))),
        (Value::Array(l), Value::Array(d)) => match list_key(d) {
            Some(key) => d.iter().all(|de| {
                l.iter()
                    .find(|le| le.get(key) == de.get(key))
                    .is_some_and(|le| covers(le, de))
            }),
            None => l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| covers(lv, dv)),
        },
        (l, d) => l == d,
    }
}

/// The first of `LIST_KEYS` that every element of `list` has, with distinct values.
fn list_key(list: &[Value]) -> Option<&'static str> {
    LIST_KEYS.iter().copied().find(|key| {
        let values: Vec<&Value> = list.iter().filter_map(|e| e.get(*key)).collect();
        !list.is_empty()
            && values.len() == list.len()
            && values
                .iter()
                .enumerate()
                .all(|(i, v)| !values[..i].contains(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_other_managers_fields_are_not_drift() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "api", "image": "a:1", "env": [{"name": "A", "value": "1"}]}
        ]}}}});
        let live = json!({"spec": {"replicas": 2, "progressDeadlineSeconds": 600, "template": {"spec": {"containers": [
            {"name": "api", "image": "a:1", "imagePullPolicy": "IfNotPresent",
             "env": [{"name": "OTHER", "value": "x"}, {"name": "A", "value": "1"}]}
        ]}}}});
        assert!(covers(&live, &desired));
    }

    #[test]
    fn a_changed_missing_or_removed_value_is_drift() {
        let desired = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "api", "image": "a:1", "env": [{"name": "A", "value": "1"}]}
        ]}}}});
        let changed = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "api", "image": "a:2", "env": [{"name": "A", "value": "1"}]}
        ]}}}});
        let env_gone = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "api", "image": "a:1", "env": []}
        ]}}}});
        let container_gone = json!({"spec": {"template": {"spec": {"containers": []}}}});
        for live in [changed, env_gone, container_gone, json!({})] {
            assert!(!covers(&live, &desired), "{live}");
        }
    }

    #[test]
    fn unkeyed_lists_must_match_element_by_element() {
        let desired = json!({"args": ["--a", "--b"]});
        assert!(covers(&json!({"args": ["--a", "--b"]}), &desired));
        assert!(!covers(&json!({"args": ["--b", "--a"]}), &desired));
        assert!(!covers(&json!({"args": ["--a", "--b", "--c"]}), &desired));
    }

    #[test]
    fn scalars_compare_by_value_and_type() {
        assert!(covers(&json!({"n": 1}), &json!({"n": 1})));
        assert!(!covers(&json!({"n": "1"}), &json!({"n": 1})));
        assert!(!covers(&json!({"b": true}), &json!({"b": false})));
    }
}
