//! Requests to a ScalableApi's user API through its Service, via the API server's service
//! proxy (`/api/v1/namespaces/{ns}/services/http:{name}:{port}/proxy/...`). This goes through
//! the Service's selector and port mapping, needs no port-forward and no client image.

use anyhow::Context as _;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use kube::Client;
use kube::client::Body;
use serde_json::Value;

/// An HTTP response from behind the proxy.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub location: Option<String>,
    /// The JSON body, or `Value::Null` when empty or not JSON (`text` has it then).
    pub json: Value,
    pub text: String,
}

/// HTTP to the Service `service` (port `port`) in `namespace` through the API server proxy.
#[derive(Clone)]
pub struct ServiceProxy {
    client: Client,
    base: String,
}

impl ServiceProxy {
    pub fn new(client: Client, namespace: &str, service: &str, port: i32) -> Self {
        Self {
            client,
            base: format!("/api/v1/namespaces/{namespace}/services/http:{service}:{port}/proxy"),
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<ApiResponse> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<ApiResponse> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<ApiResponse> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<ApiResponse> {
        self.send(Method::DELETE, path, None).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<ApiResponse> {
        let uri = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method.clone()).uri(&uri);
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(json)?)
            }
            None => Body::from(Vec::new()),
        };
        let response = self
            .client
            .send(request.body(body)?)
            .await
            .with_context(|| format!("{method} {uri}"))?;
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the body of {method} {uri}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(ApiResponse {
            status,
            location,
            json,
            text,
        })
    }
}
