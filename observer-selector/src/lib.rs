//! Label selectors with the grammar and semantics of the API server:
//! equality-based (`=`, `==`, `!=`) and set-based (`in`, `notin`, `key`,
//! `!key`) requirements, comma-separated. Used to find the ingress's pods
//! among a node's pods, and by the simulator to answer `labelSelector`.
//!
//! A crate of its own so the agent and the simulator (`observer-sim`) share
//! one grammar while the shipped binary carries no simulator code.

use std::collections::BTreeMap;

/// A selector that does not parse; the text is the offending requirement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct LabelSelectorError(pub String);

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
    /// As written, for messages and `--help`.
    text: String,
}

impl LabelSelector {
    /// Parses equality-based (`=`, `==`, `!=`) and set-based (`in`, `notin`,
    /// `key`, `!key`) requirements, comma-separated.
    pub fn parse(s: &str) -> Result<Self, LabelSelectorError> {
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_label_req(term)?);
        }
        Ok(Self {
            reqs,
            text: s.trim().to_owned(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Evaluates against a label lookup (`get(key)` is the label's value).
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| match r {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }

    /// Evaluates against a pod's labels.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
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

fn parse_label_req(term: &str) -> Result<LabelReq, LabelSelectorError> {
    let bad = || LabelSelectorError(term.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_sets() {
        let p = labels(&[("app", "web"), ("tier", "front")]);
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
    fn malformed_label_selectors_fail_naming_the_requirement() {
        for s in ["app in web", "app in ()", "=x", "a b", "app in (x"] {
            assert!(LabelSelector::parse(s).is_err(), "{s}");
        }
        let err = LabelSelector::parse("app=web,a b").unwrap_err();
        assert_eq!(err.to_string(), "unable to parse requirement: a b");
    }

    #[test]
    fn keeps_its_text() {
        let s = LabelSelector::parse(" app.kubernetes.io/name=ingress-nginx ").unwrap();
        assert_eq!(s.to_string(), "app.kubernetes.io/name=ingress-nginx");
    }
}
