//! An in-process Kubernetes API server for controller tests and the scale run.
//!
//! `FakeApiServer::client()` returns a real `kube::Client` whose transport is a
//! `tower::service_fn`, so the real `Controller`, watchers, reflectors and `Recorder` run
//! unchanged. Supported: list, watch (replay + follow, 410 on compacted history), get,
//! create, replace (optimistic concurrency), server-side apply (with a managedFields model,
//! see `ssa.rs`), merge patch, the status subresource, a merge patch of the scale
//! subresource (`spec.replicas` only), delete with ownerReference cascade,
//! label/field selectors and metadata-only (PartialObjectMetadata) requests.
//!
//! Not modelled (the real control plane of tests/controller/ covers these): admission
//! (defaulting, Pod Security, RBAC), CEL and schema validation, the rest of the scale subresource,
//! server-side apply's merge of list entries by key, and every controller of
//! kube-controller-manager (the garbage collector deletes owned objects at once here). Use
//! it only for injected faults and exact request sequences.

mod routes;
pub mod ssa;
mod store;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Bytes;
use serde_json::Value;

pub use store::Key;
use store::Store;

pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// How many watch events are kept for replay before older history is compacted away.
const DEFAULT_EVENT_LOG: usize = 50_000;

/// One request as the server saw it, for assertions such as "no status write happened".
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub content_type: String,
    pub body: Option<Value>,
}

impl RecordedRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn field_manager(&self) -> Option<&str> {
        self.param("fieldManager")
    }
}

/// A scripted failure: the next `remaining` requests matching method and path fragment fail.
#[derive(Debug, Clone)]
struct Fault {
    method: String,
    path_contains: String,
    code: u16,
    remaining: usize,
}

struct Inner {
    store: Mutex<Store>,
    requests: Mutex<Vec<RecordedRequest>>,
    record: bool,
    faults: Mutex<Vec<Fault>>,
}

#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeApiServer {
    /// A server that records every request.
    pub fn new() -> Self {
        Self::build(true, DEFAULT_EVENT_LOG)
    }

    /// A server for the scale run: no request log, a short event history.
    pub fn lean(event_log: usize) -> Self {
        Self::build(false, event_log)
    }

    fn build(record: bool, event_log: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::new(event_log)),
                requests: Mutex::new(Vec::new()),
                record,
                faults: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A `kube::Client` talking to this server in-process.
    pub fn client(&self) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let server = server.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = match body.collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(_) => Bytes::new(),
                };
                Ok::<_, Infallible>(server.handle(&parts.method, &parts.uri, &parts.headers, bytes))
            }
        });
        kube::Client::new(service, "default")
    }

    /// Answers one HTTP request (used by `client()` and by an HTTP listener).
    pub fn handle(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> http::Response<ResponseBody> {
        let req = routes::Request::parse(method, uri, headers, &body);
        if self.inner.record {
            lock(&self.inner.requests).push(req.recorded());
        }
        if let Some(code) = self.take_fault(&req) {
            // The reason a real API server gives for the code, so messages quoting it read right.
            let reason = match code {
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                422 => "Invalid",
                429 => "TooManyRequests",
                _ => "InternalError",
            };
            return routes::error_response(code, reason, "injected fault");
        }
        routes::dispatch(self, req)
    }

    fn take_fault(&self, req: &routes::Request) -> Option<u16> {
        let mut faults = lock(&self.inner.faults);
        let fault = faults.iter_mut().find(|f| {
            f.remaining > 0 && f.method == req.method && req.path.contains(&f.path_contains)
        })?;
        fault.remaining -= 1;
        Some(fault.code)
    }

    /// Makes the next `times` requests with this method and path fragment fail with `code`.
    pub fn inject_fault(&self, method: &str, path_contains: &str, code: u16, times: usize) {
        lock(&self.inner.faults).push(Fault {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            code,
            remaining: times,
        });
    }

    /// Drops every scripted failure that has not fired yet.
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.inner.requests).clear();
    }

    /// The stored object, bypassing HTTP. `resource` is e.g. `apps/v1/deployments`.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        self.store().get(&key).map(|v| (*v).clone())
    }

    /// Every stored object of a resource in one namespace.
    pub fn objects(&self, resource: &str, namespace: &str) -> Vec<Value> {
        self.store()
            .list(resource, Some(namespace))
            .iter()
            .map(|v| (**v).clone())
            .collect()
    }

    /// Every version of one object still in the event log, oldest first.
    pub fn history(&self, resource: &str, namespace: &str, name: &str) -> Vec<Value> {
        self.store()
            .events()
            .filter(|e| e.resource == resource && e.namespace == namespace)
            .filter(|e| e.object.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
            .map(|e| (*e.object).clone())
            .collect()
    }

    /// Number of stored objects of a resource in all namespaces.
    pub fn count(&self, resource: &str) -> usize {
        self.store().list(resource, None).len()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.inner.store)
    }
}
