//! Objects, resourceVersions, the event log and the write semantics of the fake API server.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::ssa::{self, Scope};

/// (resource, namespace, name); resource is `group/version/plural` (`v1/secrets` for core).
pub type Key = (String, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub resource: String,
    pub namespace: String,
    pub kind: EventKind,
    pub object: Arc<Value>,
}

#[derive(Debug)]
pub enum StoreError {
    NotFound,
    AlreadyExists,
    Conflict(String),
    Invalid(String),
    /// A watch asked for history that was compacted away.
    Gone,
}

pub type StoreResult<T> = Result<T, StoreError>;
pub type EventReceiver = broadcast::Receiver<Arc<WatchEvent>>;

pub struct Store {
    objects: BTreeMap<Key, Arc<Value>>,
    rv: u64,
    uid: u64,
    log: VecDeque<Arc<WatchEvent>>,
    log_cap: usize,
    /// Highest resourceVersion dropped from the log; watches from before it get 410 Gone.
    compacted: u64,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

impl Store {
    pub fn new(log_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(log_cap.max(16));
        Self {
            objects: BTreeMap::new(),
            rv: 1,
            uid: 0,
            log: VecDeque::new(),
            log_cap,
            compacted: 0,
            tx,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(key).cloned()
    }

    /// The retained event log, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Arc<WatchEvent>> {
        self.log.iter()
    }

    /// Objects of one resource, in one namespace or all (`None`).
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Arc<Value>> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Events after `rv` plus a receiver for later ones, taken under one lock so none is lost.
    pub fn watch_from(&self, rv: u64) -> StoreResult<(Vec<Arc<WatchEvent>>, EventReceiver)> {
        if rv < self.compacted {
            return Err(StoreError::Gone);
        }
        let replay = self.log.iter().filter(|e| e.rv > rv).cloned().collect();
        Ok((replay, self.tx.subscribe()))
    }

    pub fn create(
        &mut self,
        resource: &str,
        ns: &str,
        mut body: Value,
        manager: &str,
    ) -> StoreResult<Arc<Value>> {
        let name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| StoreError::Invalid("metadata.name is required".into()))?
            .to_owned();
        let key = (resource.to_owned(), ns.to_owned(), name);
        if self.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        self.init_metadata(&mut body, ns);
        ssa::record_update(None, &mut body, manager, Scope::Main);
        Ok(self.commit(key, None, body))
    }

    /// PUT: optimistic concurrency on `metadata.resourceVersion` when the body carries one.
    pub fn replace(&mut self, key: Key, body: Value, manager: &str) -> StoreResult<Arc<Value>> {
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        let wanted = body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        let current = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if wanted.is_some() && wanted != current {
            return Err(StoreError::Conflict(
                "the object has been modified; please apply your changes to the latest version"
                    .into(),
            ));
        }
        let mut new = body;
        carry_server_metadata(&old, &mut new);
        if let Some(status) = old.get("status") {
            new["status"] = status.clone();
        }
        ssa::record_update(Some(&old), &mut new, manager, Scope::Main);
        Ok(self.commit(key, Some(old), new))
    }

    pub fn apply(
        &mut self,
        key: Key,
        scope: Scope,
        body: &Value,
        manager: &str,
        force: bool,
    ) -> StoreResult<Arc<Value>> {
        let old = self.objects.get(&key).cloned();
        let mut obj = match (&old, scope) {
            (Some(o), _) => (**o).clone(),
            (None, Scope::Status) => return Err(StoreError::NotFound),
            (None, Scope::Main) => {
                let mut fresh = json!({
                    "apiVersion": body.get("apiVersion").cloned().unwrap_or(Value::Null),
                    "kind": body.get("kind").cloned().unwrap_or(Value::Null),
                    "metadata": {"name": key.2},
                });
                self.init_metadata(&mut fresh, &key.1);
                fresh
            }
        };
        ssa::apply(&mut obj, body, manager, scope, force).map_err(|paths| {
            let fields: Vec<String> = paths.iter().map(|p| format!(".{}", p.join("."))).collect();
            StoreError::Conflict(format!(
                "Apply failed with conflicts: {}",
                fields.join(", ")
            ))
        })?;
        Ok(self.commit(key, old, obj))
    }

    pub fn merge_patch(
        &mut self,
        key: Key,
        scope: Scope,
        patch: &Value,
        manager: &str,
    ) -> StoreResult<Arc<Value>> {
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        let mut new = (*old).clone();
        let scoped_patch = match scope {
            Scope::Main => {
                let mut p = patch.clone();
                if let Some(m) = p.as_object_mut() {
                    m.remove("status");
                }
                p
            }
            Scope::Status => json!({"status": patch.get("status").cloned().unwrap_or(Value::Null)}),
        };
        ssa::merge_patch(&mut new, &scoped_patch);
        carry_server_metadata(&old, &mut new);
        ssa::record_update(Some(&old), &mut new, manager, scope);
        Ok(self.commit(key, Some(old), new))
    }

    /// Deletes the object and, like the garbage collector, everything it owns.
    pub fn delete(&mut self, key: &Key) -> StoreResult<Arc<Value>> {
        let obj = self.objects.remove(key).ok_or(StoreError::NotFound)?;
        self.emit(key, EventKind::Deleted, obj.clone());
        if let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) {
            let owned: Vec<Key> = self
                .objects
                .iter()
                .filter(|(_, v)| owned_by(v, uid))
                .map(|(k, _)| k.clone())
                .collect();
            for child in owned {
                // Already gone through another owner chain: nothing to do.
                let _ = self.delete(&child);
            }
        }
        Ok(obj)
    }

    fn init_metadata(&mut self, body: &mut Value, ns: &str) {
        self.uid += 1;
        let meta = &mut body["metadata"];
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
        meta["creationTimestamp"] = json!(
            k8s_openapi::jiff::Timestamp::now()
                .round(k8s_openapi::jiff::Unit::Second)
                .map(|t| t.to_string())
                .unwrap_or_default()
        );
        meta["generation"] = json!(1);
    }

    /// Stores `new` unless it equals `old`: a no-op write keeps the resourceVersion and emits
    /// nothing, or `.owns()` watches would loop forever.
    fn commit(&mut self, key: Key, old: Option<Arc<Value>>, mut new: Value) -> Arc<Value> {
        default_fields(&key.0, &mut new);
        if let Some(old) = &old {
            if spec_part(old) != spec_part(&new) {
                let generation = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                new["metadata"]["generation"] = json!(generation + 1);
            }
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            if **old == new {
                return old.clone();
            }
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let obj = Arc::new(new);
        self.objects.insert(key.clone(), obj.clone());
        let kind = if old.is_some() {
            EventKind::Modified
        } else {
            EventKind::Added
        };
        self.emit(&key, kind, obj.clone());
        obj
    }

    fn emit(&mut self, key: &Key, kind: EventKind, object: Arc<Value>) {
        if kind == EventKind::Deleted {
            self.rv += 1;
        }
        let event = Arc::new(WatchEvent {
            rv: self.rv,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object,
        });
        self.log.push_back(event.clone());
        while self.log.len() > self.log_cap {
            if let Some(dropped) = self.log.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        // No receiver is fine: nobody watches yet.
        let _ = self.tx.send(event);
    }
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

fn carry_server_metadata(old: &Value, new: &mut Value) {
    for field in [
        "uid",
        "creationTimestamp",
        "generation",
        "namespace",
        "name",
        "managedFields",
    ] {
        if let Some(v) = old.get("metadata").and_then(|m| m.get(field)) {
            new["metadata"][field] = v.clone();
        }
    }
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_part(v: &Value) -> Value {
    let mut out = v.clone();
    if let Some(m) = out.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    out
}

/// The API server defaults `spec.replicas` of a Deployment to 1: the root of the HPA bug.
fn default_fields(resource: &str, obj: &mut Value) {
    if resource == "apps/v1/deployments"
        && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.entry("replicas").or_insert(json!(1));
    }
}
