//! The API server's audit log (scripts/cluster.sh logs every request made with a
//! ServiceAccount token): who asked for what, and when. The operator's cost and the
//! leader's exclusivity are read from here, not from the operator's own account.

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::cluster::TestEnv;

/// One audited request.
#[derive(Debug, Clone)]
pub struct Request {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub name: String,
    pub received: Timestamp,
    pub answered: Timestamp,
}

impl Request {
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// Every completed request in namespace `ns` by a ServiceAccount token, oldest first.
pub fn requests_in(ns: &str) -> Vec<Request> {
    let dir = TestEnv::get().dir.join("logs");
    // The API server rotates audit.log into audit-<time>.log: read them all.
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the cluster's log folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit") && n.ends_with(".log"))
        })
        .collect();
    let mut requests: Vec<Request> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .filter(|e| e["stage"] == "ResponseComplete" && e["objectRef"]["namespace"] == ns)
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let time = |k: &str| {
                e[k].as_str()
                    .and_then(|t| t.parse().ok())
                    .expect("timestamp")
            };
            Request {
                user: text(&e["user"]["username"]),
                verb: text(&e["verb"]),
                resource: text(&e["objectRef"]["resource"]),
                name: text(&e["objectRef"]["name"]),
                received: time("requestReceivedTimestamp"),
                answered: time("stageTimestamp"),
            }
        })
        .collect();
    requests.sort_by_key(|r| r.received);
    requests
}
