//! `metadata.managedFields`, as the API server writes on every create and
//! update.
//!
//! A client never asks for them, but a real server sends them with every
//! object, in every list page and every watch event, and a client decodes
//! them with the rest. Leaving them out would make every client here look
//! cheaper than it is against a real cluster. The entry follows the shape
//! of server-side apply's `FieldsV1`: one `f:<field>` per field set, lists
//! of objects with a `name` or `type` keyed by it (`k:{"name":"web"}`, as
//! containers and conditions are), other lists atomic (`{}`, as an
//! EndpointSlice's `endpoints` are).

use serde_json::{Map, Value, json};

/// Metadata the server owns; a manager never lists them.
const SERVER_OWNED: [&str; 7] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
];

/// Sets `metadata.managedFields` to one `Update` entry by `manager`, at
/// `time`, listing every field `object` sets.
pub(crate) fn stamp(object: &mut Value, manager: &str, time: &str) {
    let api_version = object
        .get("apiVersion")
        .cloned()
        .unwrap_or_else(|| json!("v1"));
    let fields = fields_of_object(object);
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert(
            "managedFields".into(),
            json!([{
                "manager": manager,
                "operation": "Update",
                "apiVersion": api_version,
                "time": time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields,
            }]),
        );
    }
}

/// Removes `metadata.managedFields`, returning them.
pub(crate) fn take(object: &mut Value) -> Option<Value> {
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|metadata| metadata.remove("managedFields"))
}

fn fields_of_object(object: &Value) -> Value {
    let Some(map) = object.as_object() else {
        return json!({});
    };
    let mut fields = Map::new();
    for (key, value) in map {
        if key == "apiVersion" || key == "kind" {
            continue;
        }
        let value = if key == "metadata" {
            let mut metadata = value.clone();
            if let Some(m) = metadata.as_object_mut() {
                for owned in SERVER_OWNED {
                    m.remove(owned);
                }
            }
            fields_of(&metadata)
        } else {
            fields_of(value)
        };
        fields.insert(format!("f:{key}"), value);
    }
    Value::Object(fields)
}

fn fields_of(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut fields = Map::new();
            if !map.is_empty() {
                fields.insert(".".into(), json!({}));
            }
            for (key, value) in map {
                fields.insert(format!("f:{key}"), fields_of(value));
            }
            Value::Object(fields)
        }
        Value::Array(items) => {
            let mut fields = Map::new();
            for item in items {
                let Some(key) = list_key(item) else {
                    // A list whose items carry no key is atomic: its
                    // manager owns it whole.
                    return json!({});
                };
                fields.insert(key, fields_of(item));
            }
            Value::Object(fields)
        }
        _ => json!({}),
    }
}

fn list_key(item: &Value) -> Option<String> {
    let map = item.as_object()?;
    ["name", "type"].into_iter().find_map(|key| {
        let value = map.get(key)?;
        Some(format!("k:{}", json!({ key: value })))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_slice_lists_its_endpoints_atomic_and_its_labels_by_name() {
        let mut slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "uid": "u1", "resourceVersion": "7",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 80}]
        });
        stamp(
            &mut slice,
            "endpointslice-controller",
            "2026-12-07T00:00:00Z",
        );
        let entry = &slice["metadata"]["managedFields"][0];
        assert_eq!(entry["manager"], "endpointslice-controller");
        assert_eq!(entry["apiVersion"], "discovery.k8s.io/v1");
        let fields = &entry["fieldsV1"];
        assert_eq!(fields["f:endpoints"], json!({}));
        assert_eq!(
            fields["f:metadata"]["f:labels"]["f:kubernetes.io/service-name"],
            json!({})
        );
        assert!(fields["f:ports"]["k:{\"name\":\"http\"}"].is_object());
        assert!(fields["f:metadata"].get("f:uid").is_none());
        assert!(fields["f:metadata"].get("f:resourceVersion").is_none());
        let entry = entry.clone();
        assert_eq!(take(&mut slice), Some(json!([entry])));
        assert!(slice["metadata"].get("managedFields").is_none());
    }
}
