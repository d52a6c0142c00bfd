//! HTTP surface of the fake API server: path parsing, verbs, list/watch encoding.

use std::convert::Infallible;
use std::sync::Arc;

use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::ssa::Scope;
use super::store::{StoreError, WatchEvent};
use super::{FakeApiServer, RecordedRequest, ResponseBody};

pub struct Request {
    pub method: String,
    pub path: String,
    query: Vec<(String, String)>,
    content_type: String,
    meta_only: bool,
    body: Option<Value>,
    /// `group/version/plural`, namespace ("" = all or cluster-scoped), name, subresource.
    resource: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl Request {
    pub fn parse(
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: &Bytes,
    ) -> Self {
        let header = |h: http::header::HeaderName| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let (gv, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => ((*v).to_owned(), rest),
            ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
            _ => (String::new(), &[][..]),
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => ((*ns).to_owned(), rest),
            _ => (String::new(), rest),
        };
        let (plural, name, subresource) = match rest {
            [p] => (*p, None, None),
            [p, n] => (*p, Some((*n).to_owned()), None),
            [p, n, s, ..] => (*p, Some((*n).to_owned()), Some((*s).to_owned())),
            [] => ("", None, None),
        };
        Self {
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            query: uri.query().map(parse_query).unwrap_or_default(),
            content_type: header(http::header::CONTENT_TYPE),
            meta_only: header(http::header::ACCEPT).contains("as=PartialObjectMetadata"),
            body: serde_json::from_slice(body).ok(),
            resource: format!("{gv}/{plural}"),
            namespace,
            name,
            subresource,
        }
    }

    pub fn recorded(&self) -> RecordedRequest {
        RecordedRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            content_type: self.content_type.clone(),
            body: self.body.clone(),
        }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn manager(&self) -> String {
        self.param("fieldManager").unwrap_or("unknown").to_owned()
    }

    fn key(&self, name: &str) -> super::Key {
        (
            self.resource.clone(),
            self.namespace.clone(),
            name.to_owned(),
        )
    }
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn dispatch(server: &FakeApiServer, req: Request) -> http::Response<ResponseBody> {
    let scope = match req.subresource.as_deref() {
        Some("status") => Scope::Status,
        _ => Scope::Main,
    };
    let body = req.body.clone().unwrap_or(Value::Null);
    let result = match (req.method.as_str(), req.name.clone()) {
        ("GET", None) if req.param("watch").is_some_and(|w| w == "true" || w == "1") => {
            return watch(server, &req);
        }
        ("GET", None) => return list(server, &req),
        ("GET", Some(name)) => server
            .store()
            .get(&req.key(&name))
            .ok_or(StoreError::NotFound),
        ("POST", _) => server
            .store()
            .create(&req.resource, &req.namespace, body, &req.manager()),
        ("PUT", Some(name)) => server.store().replace(req.key(&name), body, &req.manager()),
        ("PATCH", Some(name)) if req.content_type.starts_with("application/apply-patch") => {
            let force = req.param("force") == Some("true");
            server
                .store()
                .apply(req.key(&name), scope, &body, &req.manager(), force)
        }
        ("PATCH", Some(name))
            if req.subresource.as_deref() == Some("scale")
                && req.content_type.contains("merge-patch") =>
        {
            return patch_scale(server, &req, &name, &body);
        }
        ("PATCH", Some(name)) if req.content_type.contains("merge-patch") => server
            .store()
            .merge_patch(req.key(&name), scope, &body, &req.manager()),
        ("DELETE", Some(name)) => server.store().delete(&req.key(&name)),
        _ => {
            return error_response(
                405,
                "MethodNotAllowed",
                "not supported by the fake API server",
            );
        }
    };
    let created = req.method == "POST";
    match result {
        Ok(obj) => json_response(if created { 201 } else { 200 }, &obj),
        Err(e) => store_error(e, &req),
    }
}

/// A merge patch of the scale subresource: only `spec.replicas`, with the patch's
/// resourceVersion as a precondition; answers an autoscaling/v1 Scale.
fn patch_scale(
    server: &FakeApiServer,
    req: &Request,
    name: &str,
    body: &Value,
) -> http::Response<ResponseBody> {
    let mut store = server.store();
    let key = req.key(name);
    let Some(old) = store.get(&key) else {
        return store_error(StoreError::NotFound, req);
    };
    let wanted_rv = body.pointer("/metadata/resourceVersion");
    if wanted_rv.is_some_and(|rv| Some(rv) != old.pointer("/metadata/resourceVersion")) {
        return store_error(
            StoreError::Conflict("the object has been modified".into()),
            req,
        );
    }
    let patch = json!({"spec": {"replicas": body.pointer("/spec/replicas").cloned().unwrap_or(Value::Null)}});
    match store.merge_patch(key, Scope::Main, &patch, &req.manager()) {
        Ok(obj) => json_response(
            200,
            &json!({
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {"name": name, "namespace": obj["metadata"]["namespace"],
                    "resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"replicas": obj["spec"]["replicas"]},
                "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0)},
            }),
        ),
        Err(e) => store_error(e, req),
    }
}

fn store_error(e: StoreError, req: &Request) -> http::Response<ResponseBody> {
    let name = req.name.clone().unwrap_or_default();
    match e {
        StoreError::NotFound => error_response(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", req.resource),
        ),
        StoreError::AlreadyExists => error_response(
            409,
            "AlreadyExists",
            &format!("{} already exists", req.resource),
        ),
        StoreError::Conflict(m) => error_response(409, "Conflict", &m),
        StoreError::Invalid(m) => error_response(422, "Invalid", &m),
        StoreError::Gone => error_response(410, "Expired", "too old resource version"),
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

pub fn error_response(code: u16, reason: &str, message: &str) -> http::Response<ResponseBody> {
    json_response(code, &status_body(code, reason, message))
}

fn json_response(code: u16, body: &Value) -> http::Response<ResponseBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = http::Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *resp.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Selectors and projection shared by list and watch.
#[derive(Clone)]
struct Filter {
    resource: String,
    namespace: String,
    labels: Vec<(String, Option<String>)>,
    fields: Vec<(String, String)>,
    meta_only: bool,
}

impl Filter {
    fn new(req: &Request) -> Self {
        let pairs = |s: Option<&str>| -> Vec<(String, Option<String>)> {
            s.unwrap_or_default()
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (
                        k.trim_end_matches('=').to_owned(),
                        Some(v.trim_start_matches('=').to_owned()),
                    ),
                    None => (p.to_owned(), None),
                })
                .collect()
        };
        Self {
            resource: req.resource.clone(),
            namespace: req.namespace.clone(),
            labels: pairs(req.param("labelSelector")),
            fields: pairs(req.param("fieldSelector"))
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect(),
            meta_only: req.meta_only,
        }
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label_ok = self.labels.iter().all(|(k, v)| {
            let actual = labels.and_then(|l| l.get(k)).and_then(Value::as_str);
            match v {
                Some(v) => actual == Some(v.as_str()),
                None => actual.is_some(),
            }
        });
        let field_ok = self.fields.iter().all(|(k, v)| {
            let pointer = format!("/{}", k.replace('.', "/"));
            obj.pointer(&pointer).and_then(Value::as_str) == Some(v.as_str())
        });
        label_ok && field_ok
    }

    fn matches_event(&self, e: &WatchEvent) -> bool {
        e.resource == self.resource
            && (self.namespace.is_empty() || e.namespace == self.namespace)
            && self.matches(&e.object)
    }

    fn project(&self, obj: &Value) -> Value {
        if self.meta_only {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
        } else {
            obj.clone()
        }
    }
}

fn list(server: &FakeApiServer, req: &Request) -> http::Response<ResponseBody> {
    let filter = Filter::new(req);
    let store = server.store();
    let ns = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
    let items: Vec<Value> = store
        .list(&req.resource, ns)
        .iter()
        .filter(|o| filter.matches(o))
        .map(|o| filter.project(o))
        .collect();
    let kind = if req.meta_only {
        "PartialObjectMetadataList"
    } else {
        "List"
    };
    let rv = store.resource_version().to_string();
    drop(store);
    json_response(
        200,
        &json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}),
    )
}

fn watch_line(kind: &str, object: &Value) -> Result<Frame<Bytes>, Infallible> {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Ok(Frame::data(Bytes::from(line)))
}

fn watch(server: &FakeApiServer, req: &Request) -> http::Response<ResponseBody> {
    let filter = Filter::new(req);
    let from: u64 = req
        .param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let store = server.store();
    let (initial, rx, last_rv) = if from == 0 {
        // "Any" semantics: synthetic ADDED for what exists now, then follow.
        let ns = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
        let now = store.list(&req.resource, ns);
        let lines: Vec<_> = now
            .iter()
            .filter(|o| filter.matches(o))
            .map(|o| watch_line("ADDED", &filter.project(o)))
            .collect();
        match store.watch_from(store.resource_version()) {
            Ok((_, rx)) => (lines, rx, store.resource_version()),
            Err(e) => return store_error(e, req),
        }
    } else {
        match store.watch_from(from) {
            Ok((replay, rx)) => {
                let last = replay.last().map_or(from, |e| e.rv);
                let lines = replay
                    .iter()
                    .filter(|e| filter.matches_event(e))
                    .map(|e| watch_line(e.kind.as_str(), &filter.project(&e.object)))
                    .collect();
                (lines, rx, last)
            }
            Err(StoreError::Gone) => {
                let gone = watch_line(
                    "ERROR",
                    &status_body(410, "Expired", "too old resource version"),
                );
                drop(store);
                return stream_response(futures::stream::iter(vec![gone]).boxed());
            }
            Err(e) => return store_error(e, req),
        }
    };
    drop(store);
    let follow = futures::stream::unfold(Some((rx, last_rv, filter)), |state| async move {
        let (mut rx, last, filter): (broadcast::Receiver<Arc<WatchEvent>>, u64, Filter) = state?;
        loop {
            match rx.recv().await {
                Ok(e) if e.rv > last && filter.matches_event(&e) => {
                    let line = watch_line(e.kind.as_str(), &filter.project(&e.object));
                    return Some((line, Some((rx, e.rv, filter))));
                }
                Ok(_) => {}
                // The client fell behind: make it re-list, as a real server would.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let gone =
                        watch_line("ERROR", &status_body(410, "Expired", "watch fell behind"));
                    return Some((gone, None));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    stream_response(futures::stream::iter(initial).chain(follow).boxed())
}

fn stream_response(
    s: futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>,
) -> http::Response<ResponseBody> {
    let mut resp = http::Response::new(StreamBody::new(s).boxed_unsync());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
