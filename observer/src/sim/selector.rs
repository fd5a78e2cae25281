//! Label and field selectors with the grammar and semantics of the API server.

use serde_json::Value;

use super::store::Kind;

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

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<LabelReq>,
}

impl LabelSelector {
    /// Parses equality-based (`=`, `==`, `!=`) and set-based (`in`, `notin`,
    /// `key`, `!key`) requirements, comma-separated.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_label_req(term)?);
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Evaluates against an object's `metadata.labels`.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

// Commas inside `in (a,b)` belong to the value set, not to the requirement list.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_label_req(term: &str) -> Result<LabelReq, SelectorError> {
    let bad = || SelectorError::Label(term.to_string());
    let checked = |k: &str, v: &str| {
        let (k, v) = (k.trim(), v.trim());
        if valid_key(k) && valid_value(v) {
            Ok((k.to_string(), v.to_string()))
        } else {
            Err(bad())
        }
    };
    if let Some(k) = term.strip_prefix('!') {
        let k = k.trim();
        return if valid_key(k) {
            Ok(LabelReq::NotExists(k.to_string()))
        } else {
            Err(bad())
        };
    }
    if let Some((k, v)) = term.split_once("!=") {
        let (k, v) = checked(k, v)?;
        return Ok(LabelReq::NotEq(k, v));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        let (k, v) = checked(k, v)?;
        return Ok(LabelReq::Eq(k, v));
    }
    let key_end = term
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(term.len());
    let (key, rest) = term.split_at(key_end);
    if !valid_key(key) {
        return Err(bad());
    }
    let rest = rest.trim();
    if rest.is_empty() {
        return Ok(LabelReq::Exists(key.to_string()));
    }
    let (notin, set) = if let Some(r) = rest.strip_prefix("notin") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix("in") {
        (false, r)
    } else {
        return Err(bad());
    };
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(bad)?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().any(|v| !valid_value(v)) || (values.len() == 1 && values[0].is_empty()) {
        return Err(bad());
    }
    Ok(if notin {
        LabelReq::NotIn(key.to_string(), values)
    } else {
        LabelReq::In(key.to_string(), values)
    })
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
    fn equality_and_sets() {
        let p = pod(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&p);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("env!=prod"));
        assert!(m("app in (web, api)"));
        assert!(!m("app notin (web,api)"));
        assert!(m("env notin (prod)"));
        assert!(!m("env in (prod)"));
        assert!(m("!env"));
        assert!(!m("!app"));
        assert!(m(""));
        assert!(!m("app=web,tier=back"));
    }

    #[test]
    fn malformed_label_selectors_fail() {
        for s in ["app in web", "app in ()", "=x", "a b", "app in (x"] {
            assert!(LabelSelector::parse(s).is_err(), "{s}");
        }
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
