//! Admission-time checks without an API server, for `render` and tests: the CRD's structural
//! schema (types, required, enums, ranges, lengths, item counts, unknown fields), then its CEL rules
//! evaluated by kube's `cel` feature, then deserialisation into `ScalableApi`.

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::Value;

use crate::crd::ScalableApi;

/// Everything wrong with one object, one line per problem, like `kubectl apply` reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ScalableApi {name:?} is invalid:\n  - {}", problems.join("\n  - "))]
pub struct Invalid {
    pub name: String,
    pub problems: Vec<String>,
}

/// The CRD's openAPIV3Schema as JSON.
pub fn schema() -> Value {
    ScalableApi::crd()
        .spec
        .versions
        .into_iter()
        .next()
        .and_then(|v| v.schema)
        .and_then(|s| s.open_api_v3_schema)
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

/// Validate a raw object as the API server would at `kubectl apply`, then type it.
pub fn validate(object: &Value) -> Result<ScalableApi, Invalid> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let invalid = |problems: Vec<String>| Invalid {
        name: name.clone(),
        problems,
    };
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    let kind = object.get("kind").and_then(Value::as_str);
    if api_version != Some("scalable.dev/v1alpha1") || kind != Some("ScalableApi") {
        return Err(invalid(vec![format!(
            "expected apiVersion scalable.dev/v1alpha1 and kind ScalableApi, got {} {}",
            api_version.unwrap_or("<none>"),
            kind.unwrap_or("<none>")
        )]));
    }
    let schema = schema();
    let mut problems = Vec::new();
    check(&schema, object, "", &mut problems);
    if !problems.is_empty() {
        // CEL rules assume a structurally valid object, as in the API server.
        return Err(invalid(problems));
    }
    if let Err(errors) = Validator::new().validate(&schema, object, None) {
        return Err(invalid(errors.iter().map(ToString::to_string).collect()));
    }
    serde_json::from_value(object.clone()).map_err(|e| invalid(vec![e.to_string()]))
}

/// Structural schema check, in the spirit of the API server's OpenAPI validation.
fn check(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            out.push(format!("{at}: Invalid value: null: must not be null"));
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!(
                "{at}: Invalid value: {value}: must be an integer or a string"
            ));
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        out.push(format!(
            "{at}: Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ));
        return;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => check_object(schema, value, path, out),
        Some("array") => match value.as_array() {
            Some(items) => {
                check_items(schema, items.len(), at, out);
                let item_schema = schema.get("items").unwrap_or(&Value::Null);
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
            None => out.push(type_error(at, value, "array")),
        },
        Some("string") => match value.as_str() {
            Some(s) => check_length(schema, s, at, out),
            None => out.push(type_error(at, value, "string")),
        },
        Some("integer") => match value.as_i64() {
            Some(n) => check_range(schema, n as f64, at, value, out),
            None => out.push(type_error(at, value, "integer")),
        },
        Some("number") => match value.as_f64() {
            Some(n) => check_range(schema, n, at, value, out),
            None => out.push(type_error(at, value, "number")),
        },
        Some("boolean") if !value.is_boolean() => out.push(type_error(at, value, "boolean")),
        _ => {}
    }
}

fn check_object(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    let Some(map) = value.as_object() else {
        out.push(type_error(at, value, "object"));
        return;
    };
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    for key in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(key) {
            out.push(format!("{}: Required value", join(key)));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    // An object schema with neither properties nor additionalProperties (metadata) is free-form.
    if properties.is_none() && additional.is_none() {
        return;
    }
    for (key, child) in map {
        // The API server handles these itself; the CRD schema does not describe them.
        if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match (properties.and_then(|p| p.get(key)), additional) {
            (Some(s), _) | (None, Some(s)) => check(s, child, &join(key), out),
            (None, None) if preserve => {}
            (None, None) => out.push(format!("{}: unknown field", join(key))),
        }
    }
}

fn check_length(schema: &Value, s: &str, at: &str, out: &mut Vec<String>) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        out.push(format!(
            "{at}: Invalid value: {s:?}: must be at least {min} characters long"
        ));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        out.push(format!(
            "{at}: Too long: may not be more than {max} characters"
        ));
    }
}

fn check_items(schema: &Value, n: usize, at: &str, out: &mut Vec<String>) {
    let n = n as u64;
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && n < min
    {
        out.push(format!(
            "{at}: Invalid value: {n}: must have at least {min} items"
        ));
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && n > max
    {
        out.push(format!(
            "{at}: Too many: {n}: must have at most {max} items"
        ));
    }
}

fn check_range(schema: &Value, n: f64, at: &str, value: &Value, out: &mut Vec<String>) {
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && n < min
    {
        out.push(format!(
            "{at}: Invalid value: {value}: must be greater than or equal to {min}"
        ));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && n > max
    {
        out.push(format!(
            "{at}: Invalid value: {value}: must be less than or equal to {max}"
        ));
    }
    if schema.get("format").and_then(Value::as_str) == Some("int32")
        && (n < f64::from(i32::MIN) || n > f64::from(i32::MAX))
    {
        out.push(format!(
            "{at}: Invalid value: {value}: must fit in a 32-bit integer"
        ));
    }
}

fn type_error(at: &str, value: &Value, expected: &str) -> String {
    format!("{at}: Invalid value: {value}: must be of type {expected}")
}

#[cfg(test)]
mod tests;
