//! Label and field selectors with the grammar and semantics of the API server.

use serde_json::Value;

use super::store::Kind;

pub use observer_selector::LabelSelector;
use observer_selector::LabelSelectorError;

/// Label selectors evaluated against JSON objects' `metadata.labels`.
pub trait MatchesObject {
    fn matches_object(&self, obj: &Value) -> bool;
}

impl MatchesObject for LabelSelector {
    fn matches_object(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }
}

/// A parse failure, reported to clients as a 400 BadRequest the way the API
/// server words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Label(String),
    #[error("invalid field selector: {0}")]
    Field(String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// A parsed `fieldSelector`; only the fields the API server indexes for the
/// kind are accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(&'static str, bool, String)>,
}

const POD_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("spec.nodeName", "/spec/nodeName"),
    ("spec.restartPolicy", "/spec/restartPolicy"),
    ("spec.schedulerName", "/spec/schedulerName"),
    ("spec.serviceAccountName", "/spec/serviceAccountName"),
    ("status.phase", "/status/phase"),
    ("status.podIP", "/status/podIP"),
    ("status.nominatedNodeName", "/status/nominatedNodeName"),
];

const META_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
];

impl From<LabelSelectorError> for SelectorError {
    fn from(e: LabelSelectorError) -> Self {
        SelectorError::Label(e.0)
    }
}

impl FieldSelector {
    pub fn parse(s: &str, kind: Kind) -> Result<Self, SelectorError> {
        let table = match kind {
            Kind::Pod => POD_FIELDS,
            Kind::EndpointSlice => META_FIELDS,
        };
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError::Field(term.to_string()));
            };
            let field = field.trim();
            let pointer = table
                .iter()
                .find(|(name, _)| *name == field)
                .map(|(_, p)| *p)
                .ok_or_else(|| SelectorError::UnsupportedField(field.to_string()))?;
            reqs.push((pointer, eq, value.trim().to_string()));
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// A field the object does not set compares as the empty string, as in the
    /// API server (so `spec.nodeName=` selects unscheduled pods).
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(ptr, eq, want)| {
            let got = obj.pointer(ptr).and_then(Value::as_str).unwrap_or("");
            (got == want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_selectors_read_json_metadata_labels() {
        let p = pod(json!({"app": "web"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches_object(&p);
        assert!(m("app=web"));
        assert!(!m("app in (api)"));
        assert!(m("!env"));
    }

    #[test]
    fn field_selectors() {
        let p = pod(json!({}));
        let m = |s: &str| FieldSelector::parse(s, Kind::Pod).unwrap().matches(&p);
        assert!(m("spec.nodeName=n1"));
        assert!(m("metadata.name=p,metadata.namespace=ns"));
        assert!(!m("spec.nodeName!=n1"));
        assert!(m("status.phase="));
        assert_eq!(
            FieldSelector::parse("spec.nodeName=n1", Kind::EndpointSlice),
            Err(SelectorError::UnsupportedField("spec.nodeName".into()))
        );
    }
}
