//! A simplified model of server-side-apply field ownership (`metadata.managedFields`).
//!
//! Enough to reproduce the HPA hand-over bug: a field applied by one manager and then left
//! out of its next apply is removed unless another manager still owns it. Lists are atomic
//! (real SSA merges associative lists by key), and there is no per-version conversion.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field path, e.g. `["spec", "replicas"]`.
pub type Path = Vec<String>;

/// Metadata fields the server owns; they never appear in managedFields.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub subresource: String,
    pub api_version: String,
    pub paths: BTreeSet<Path>,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main,
    Status,
}

impl Scope {
    pub fn subresource(self) -> &'static str {
        match self {
            Scope::Main => "",
            Scope::Status => "status",
        }
    }
}

/// The part of `obj` that a write in `scope` may touch, without server-owned fields.
pub fn scoped_view(obj: &Value, scope: Scope) -> Value {
    let Some(map) = obj.as_object() else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, v) in map {
        match (scope, k.as_str()) {
            (_, "apiVersion" | "kind") => {}
            (Scope::Status, "status") => {
                out.insert(k.clone(), v.clone());
            }
            (Scope::Status, _) | (Scope::Main, "status") => {}
            (Scope::Main, "metadata") => {
                let mut meta = v.as_object().cloned().unwrap_or_default();
                meta.retain(|mk, _| !SERVER_METADATA.contains(&mk.as_str()));
                if !meta.is_empty() {
                    out.insert(k.clone(), Value::Object(meta));
                }
            }
            (Scope::Main, _) => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Leaf paths of a value: scalars, lists and empty maps are leaves.
pub fn leaves(v: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let mut prefix = Vec::new();
    leaves_into(v, &mut prefix, &mut out);
    out
}

fn leaves_into(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(k.clone());
                leaves_into(child, prefix, out);
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.clone());
        }
        _ => {}
    }
}

pub fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Maps merge key by key; everything else (scalars, lists) is replaced.
pub fn deep_merge(target: &mut Value, src: &Value) {
    match (target.as_object_mut(), src.as_object()) {
        (Some(t), Some(s)) => {
            for (k, v) in s {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *target = src.clone(),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = json!({});
    for path in paths {
        let mut cur = &mut root;
        for k in path {
            let key = format!("f:{k}");
            cur = match cur {
                Value::Object(m) => m.entry(key).or_insert_with(|| json!({})),
                other => other,
            };
        }
    }
    root
}

fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    leaves(v)
        .into_iter()
        .map(|p| {
            p.into_iter()
                .map(|k| k.trim_start_matches("f:").to_owned())
                .collect()
        })
        .collect()
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) =
        get_path(obj, &["metadata".into(), "managedFields".into()]).and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let s = |e: &Value, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    list.iter()
        .map(|e| Entry {
            manager: s(e, "manager"),
            operation: s(e, "operation"),
            subresource: s(e, "subresource"),
            api_version: s(e, "apiVersion"),
            paths: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.paths.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.paths),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Server-side apply of `body` by `manager` onto `obj` (which may be a fresh skeleton).
/// Returns the conflicting paths when `force` is false and another manager owns a field
/// with a different value.
pub fn apply(
    obj: &mut Value,
    body: &Value,
    manager: &str,
    scope: Scope,
    force: bool,
) -> Result<(), Vec<Path>> {
    let api_version = body
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let applied = scoped_view(body, scope);
    let new_paths = leaves(&applied);
    let mut entries = read_entries(obj);
    let is_mine = |e: &Entry| {
        e.manager == manager && e.operation == "Apply" && e.subresource == scope.subresource()
    };

    let mut conflicts = Vec::new();
    for e in entries.iter_mut().filter(|e| !is_mine(e)) {
        let contested: Vec<Path> = e
            .paths
            .iter()
            .filter(|p| new_paths.contains(*p) && get_path(obj, p) != get_path(&applied, p))
            .cloned()
            .collect();
        if force {
            for p in &contested {
                e.paths.remove(p);
            }
        } else {
            conflicts.extend(contested);
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    let old_paths = entries
        .iter()
        .find(|e| is_mine(e))
        .map(|e| e.paths.clone())
        .unwrap_or_default();
    for released in old_paths.difference(&new_paths) {
        let still_owned = entries
            .iter()
            .filter(|e| !is_mine(e))
            .any(|e| e.paths.iter().any(|p| overlaps(p, released)));
        if !still_owned {
            remove_path(obj, released);
        }
    }
    deep_merge(obj, &applied);

    entries.retain(|e| !is_mine(e));
    entries.push(Entry {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        subresource: scope.subresource().into(),
        api_version,
        paths: new_paths,
    });
    write_entries(obj, &entries);
    Ok(())
}

/// Records an imperative write (create, update, merge patch): changed fields move to `manager`.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, scope: Scope) {
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let before = old
        .map(|o| scoped_view(o, scope))
        .unwrap_or_else(|| json!({}));
    let after = scoped_view(new, scope);
    let before_leaves = leaves(&before);
    let after_leaves = leaves(&after);
    let changed: BTreeSet<Path> = after_leaves
        .iter()
        .filter(|p| get_path(&before, p) != get_path(&after, p))
        .cloned()
        .collect();
    let removed: BTreeSet<Path> = before_leaves.difference(&after_leaves).cloned().collect();

    let mut entries = old.map(read_entries).unwrap_or_default();
    for e in &mut entries {
        e.paths
            .retain(|p| !changed.contains(p) && !removed.iter().any(|r| overlaps(p, r)));
    }
    if !changed.is_empty() {
        let is_mine = |e: &Entry| {
            e.manager == manager && e.operation == "Update" && e.subresource == scope.subresource()
        };
        match entries.iter_mut().find(|e| is_mine(e)) {
            Some(e) => e.paths.extend(changed),
            None => entries.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                subresource: scope.subresource().into(),
                api_version,
                paths: changed,
            }),
        }
    }
    write_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: Option<i64>) -> Value {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}, "spec": {"paused": false}});
        if let Some(r) = replicas {
            d["spec"]["replicas"] = json!(r);
        }
        d
    }

    #[test]
    fn a_field_left_out_of_the_next_apply_is_removed() {
        let mut obj = json!({"metadata": {"name": "a"}});
        apply(&mut obj, &deployment(Some(3)), "op", Scope::Main, true).unwrap();
        apply(&mut obj, &deployment(None), "op", Scope::Main, true).unwrap();
        assert_eq!(obj["spec"].get("replicas"), None);
    }

    #[test]
    fn a_co_owned_field_survives_when_one_owner_lets_go() {
        let mut obj = json!({"metadata": {"name": "a"}});
        apply(&mut obj, &deployment(Some(3)), "op", Scope::Main, true).unwrap();
        let handover =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 3}});
        apply(&mut obj, &handover, "handover", Scope::Main, true).unwrap();
        apply(&mut obj, &deployment(None), "op", Scope::Main, true).unwrap();
        assert_eq!(obj["spec"]["replicas"], json!(3));
    }

    #[test]
    fn an_unforced_apply_of_a_different_value_conflicts() {
        let mut obj = json!({"metadata": {"name": "a"}});
        apply(&mut obj, &deployment(Some(3)), "op", Scope::Main, true).unwrap();
        let err = apply(&mut obj, &deployment(Some(4)), "other", Scope::Main, false).unwrap_err();
        assert_eq!(err, vec![vec!["spec".to_owned(), "replicas".to_owned()]]);
    }
}
