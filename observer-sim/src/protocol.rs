//! List, get and watch with the API server's semantics, independent of HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::selector::{FieldSelector, LabelSelector, MatchesObject};
use super::store::{Change, ChangeType, Expired, Kind, Store, wait_closed};

/// A response body to send whole, with its status.
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }
}

/// A `Status` object as the API server sends for failures.
pub(crate) fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let (Some(d), Some(o)) = (details, s.as_object_mut()) {
        o.insert("details".into(), d);
    }
    s
}

fn failure(code: u16, reason: &str, message: &str) -> Reply {
    Reply {
        status: code,
        body: status(code, reason, message, None),
    }
}

fn bad_request(message: &str) -> Reply {
    failure(400, "BadRequest", message)
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes an `application/x-www-form-urlencoded` query; the last value wins.
pub(crate) fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The request's scope and filters, shared by list and watch.
pub(crate) struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn parse(
        kind: Kind,
        namespace: Option<String>,
        q: &HashMap<String, String>,
    ) -> Result<Self, Reply> {
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| bad_request(&e.to_string()))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), kind)
            .map_err(|e| bad_request(&e.to_string()))?;
        Ok(Self {
            namespace,
            labels,
            fields,
        })
    }

    fn visible(&self, v: &Value) -> bool {
        let ns_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| v.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns));
        ns_ok && self.labels.matches_object(v) && self.fields.matches(v)
    }
}

fn storage_key(v: &Value) -> String {
    let s = |p| v.pointer(p).and_then(Value::as_str).unwrap_or_default();
    format!("{}/{}", s("/metadata/namespace"), s("/metadata/name"))
}

fn parse_rv(s: &str) -> Result<u64, Reply> {
    s.parse::<u64>().map_err(|_| {
        bad_request(&format!(
            "resourceVersion: Invalid value: \"{s}\": must be a valid resource version"
        ))
    })
}

/// How long a list asking for a future resourceVersion waits before 504, as
/// the API server's watch cache does.
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);

async fn wait_for_rv(store: &Store, rv: u64) -> Result<(), Reply> {
    let mut rx = store.subscribe();
    let reached = tokio::time::timeout(TOO_LARGE_WAIT, rx.wait_for(|cur| *cur >= rv)).await;
    if matches!(reached, Ok(Ok(_))) {
        return Ok(());
    }
    let msg = format!(
        "Too large resource version: {rv}, current: {}",
        store.resource_version()
    );
    let details = json!({
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        "retryAfterSeconds": 1,
    });
    Err(Reply {
        status: 504,
        body: status(504, "Timeout", &msg, Some(details)),
    })
}

fn expired_list(e: Expired) -> Reply {
    failure(
        410,
        "Expired",
        &format!(
            "The resourceVersion for the provided list is too old: {} (oldest {}).",
            e.requested, e.oldest
        ),
    )
}

/// A list call: resourceVersion / resourceVersionMatch / limit / continue per
/// the API concepts table. Items carry no kind/apiVersion, as a real server's
/// typed lists.
pub(crate) async fn list(
    store: &Store,
    kind: Kind,
    filter: &Filter,
    q: &HashMap<String, String>,
) -> Reply {
    match list_inner(store, kind, filter, q).await {
        Ok(r) | Err(r) => r,
    }
}

async fn list_inner(
    store: &Store,
    kind: Kind,
    filter: &Filter,
    q: &HashMap<String, String>,
) -> Result<Reply, Reply> {
    let rv = q
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let rv_match = q
        .get("resourceVersionMatch")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let mut limit = match q.get("limit").filter(|s| !s.is_empty()) {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| bad_request("limit: must be a non-negative integer"))?,
        ),
        None => None,
    }
    .filter(|l| *l > 0);
    let cont = q.get("continue").filter(|s| !s.is_empty());

    let (at, start) = if let Some(token) = cont {
        if rv.is_some() {
            return Err(bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (at, start) =
            decode_continue(token).ok_or_else(|| bad_request("continue key is not valid"))?;
        (Some(at), Some(start))
    } else {
        match (rv, rv_match) {
            (None, Some(_)) => {
                return Err(bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            (None, None) => (None, None),
            (Some("0"), Some("Exact")) => {
                return Err(bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            (Some("0"), _) => {
                // "Any": served from the watch cache, which ignores limit.
                limit = None;
                (None, None)
            }
            (Some(s), m) => {
                let n = parse_rv(s)?;
                let exact = match m {
                    Some("Exact") => true,
                    Some("NotOlderThan") => false,
                    None => limit.is_some(),
                    Some(other) => {
                        return Err(bad_request(&format!(
                            "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
                        )));
                    }
                };
                if n > store.resource_version() {
                    wait_for_rv(store, n).await?;
                }
                (exact.then_some(n), None)
            }
        }
    };
    let (snap_rv, objects) = store.snapshot(kind, at).map_err(|e| {
        if cont.is_some() {
            failure(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
        } else {
            expired_list(e)
        }
    })?;
    let mut matching: Vec<(String, Arc<Value>)> = objects
        .into_iter()
        .filter(|v| filter.visible(v))
        .map(|v| (storage_key(&v), v))
        .filter(|(k, _)| start.as_deref().is_none_or(|s| k.as_str() >= s))
        .collect();
    // etcd returns keys in byte order of /registry/<kind>/<ns>/<name>.
    matching.sort_by(|a, b| a.0.cmp(&b.0));
    let total = matching.len();
    let take = limit.unwrap_or(total).min(total);
    let mut metadata = json!({"resourceVersion": snap_rv.to_string()});
    if take < total
        && let (Some((last, _)), Some(m)) =
            (matching.get(take.wrapping_sub(1)), metadata.as_object_mut())
    {
        m.insert(
            "continue".into(),
            json!(encode_continue(snap_rv, &format!("{last}\u{0}"))),
        );
        if filter.labels.is_empty() && filter.fields.is_empty() {
            m.insert("remainingItemCount".into(), json!(total - take));
        }
    }
    let items: Vec<Value> = matching
        .into_iter()
        .take(take)
        .map(|(_, v)| {
            let mut v = (*v).clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            v
        })
        .collect();
    Ok(Reply::ok(json!({
        "kind": kind.list_kind(),
        "apiVersion": kind.api_version(),
        "metadata": metadata,
        "items": items,
    })))
}

fn encode_continue(rv: u64, start: &str) -> String {
    B64.encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).to_string())
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    let raw = B64.decode(token).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    if v.get("v")?.as_str()? != "meta.k8s.io/v1" {
        return None;
    }
    Some((
        v.get("rv")?.as_u64()?,
        v.get("start")?.as_str()?.to_string(),
    ))
}

/// GET of one object, with its kind and apiVersion.
pub(crate) fn get(store: &Store, kind: Kind, namespace: &str, name: &str) -> Reply {
    match store.get_raw(kind, namespace, name) {
        Some(v) => Reply::ok((*v).clone()),
        None => Reply {
            status: 404,
            body: status(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", kind.plural()),
                Some(json!({"name": name, "kind": kind.plural()})),
            ),
        },
    }
}

/// The watch stream was cut on purpose; hyper aborts the connection on it.
#[derive(Debug, thiserror::Error)]
#[error("watch stream cut")]
pub(crate) struct WatchCut;

/// Settings of one watch request, already validated.
pub(crate) struct WatchParams {
    pub bookmarks: bool,
    pub bookmark_every: Duration,
    pub deadline: Option<Instant>,
}

/// The state of one open watch: produces newline-delimited JSON events.
pub(crate) struct WatchStream {
    store: Store,
    kind: Kind,
    filter: Filter,
    cursor: u64,
    pending: VecDeque<Bytes>,
    params: WatchParams,
    next_bookmark: Instant,
    rv_rx: watch::Receiver<u64>,
    drop_rx: watch::Receiver<u64>,
    kill_rx: watch::Receiver<u64>,
    closed_rx: watch::Receiver<bool>,
    done: bool,
    /// Change events this watch sent, added to its resource and scope's.
    sent: Arc<AtomicU64>,
}

/// One watch event, `type` first as the API server writes it: a client
/// that reads the object before its type must buffer the whole object
/// first, and a map built with `json!` would sort `object` ahead.
fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut b = format!("{{\"type\":\"{ty}\",\"object\":").into_bytes();
    if serde_json::to_writer(&mut b, object).is_err() {
        b.extend_from_slice(b"null");
    }
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

impl WatchStream {
    /// Opens a watch; `rv`/`sendInitialEvents` pick where it starts, as on a
    /// real server. Returns the 400 reply for invalid combinations.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        store: Store,
        kind: Kind,
        filter: Filter,
        q: &HashMap<String, String>,
        params: WatchParams,
        drop_rx: watch::Receiver<u64>,
        kill_rx: watch::Receiver<u64>,
        sent: Arc<AtomicU64>,
    ) -> Result<Self, Reply> {
        let rv = q
            .get("resourceVersion")
            .map(String::as_str)
            .filter(|s| !s.is_empty());
        let initial_events = q.get("sendInitialEvents").map(String::as_str) == Some("true");
        if initial_events
            && q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
        {
            return Err(bad_request(
                "sendInitialEvents is forbidden unless resourceVersionMatch=NotOlderThan",
            ));
        }
        let mut rv_rx = store.subscribe();
        rv_rx.borrow_and_update();
        let mut s = Self {
            closed_rx: store.closed_signal(),
            store,
            kind,
            filter,
            cursor: 0,
            pending: VecDeque::new(),
            next_bookmark: Instant::now() + params.bookmark_every,
            params,
            rv_rx,
            drop_rx,
            kill_rx,
            done: false,
            sent,
        };
        s.drop_rx.borrow_and_update();
        s.kill_rx.borrow_and_update();
        match rv {
            Some(r) if r != "0" && !initial_events => {
                s.cursor = parse_rv(r)?;
            }
            _ => {
                let (snap_rv, objs) = s.store.snapshot(kind, None).unwrap_or_default();
                for o in objs.iter().filter(|o| s.filter.visible(o)) {
                    s.pending.push_back(event_line("ADDED", o));
                }
                s.cursor = snap_rv;
                if initial_events && s.params.bookmarks {
                    s.pending.push_back(s.bookmark(true));
                }
            }
        }
        Ok(s)
    }

    fn bookmark(&self, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": self.cursor.to_string()});
        if initial_end && let Some(m) = meta.as_object_mut() {
            m.insert(
                "annotations".into(),
                json!({"k8s.io/initial-events-end": "true"}),
            );
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": self.kind.kind(), "apiVersion": self.kind.api_version(), "metadata": meta}),
        )
    }

    fn translate(&self, c: &Change) -> Option<Bytes> {
        let now = self.filter.visible(&c.object);
        let before = c.prev.as_ref().is_some_and(|p| self.filter.visible(p));
        match c.ty {
            ChangeType::Added => now.then(|| event_line("ADDED", &c.object)),
            ChangeType::Deleted => (now || before).then(|| event_line("DELETED", &c.object)),
            ChangeType::Modified => match (before, now) {
                (true, true) => Some(event_line("MODIFIED", &c.object)),
                (false, true) => Some(event_line("ADDED", &c.object)),
                (true, false) => {
                    // Leaving the selector reads as a deletion of the last
                    // matching state, stamped with the new resourceVersion.
                    let mut old = c.prev.as_deref().cloned().unwrap_or(Value::Null);
                    if let Some(m) = old.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.insert("resourceVersion".into(), json!(c.rv.to_string()));
                    }
                    Some(event_line("DELETED", &old))
                }
                (false, false) => None,
            },
        }
    }

    /// The next chunk; `None` ends the stream cleanly, `Err` aborts it.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, WatchCut>> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(Ok(b));
            }
            if self.done {
                return None;
            }
            self.rv_rx.borrow_and_update();
            match self.store.changes_since(self.kind, self.cursor) {
                Err(e) => {
                    let msg = format!("too old resource version: {} ({})", e.requested, e.oldest);
                    self.pending
                        .push_back(event_line("ERROR", &status(410, "Expired", &msg, None)));
                    self.done = true;
                    continue;
                }
                Ok((rv, changes)) => {
                    for c in &changes {
                        if let Some(line) = self.translate(c) {
                            self.pending.push_back(line);
                            self.sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    self.cursor = rv;
                    if !self.pending.is_empty() {
                        continue;
                    }
                }
            }
            let deadline = self.params.deadline;
            tokio::select! {
                biased;
                _ = self.drop_rx.changed() => return Some(Err(WatchCut)),
                _ = self.kill_rx.changed() => return Some(Err(WatchCut)),
                _ = wait_closed(self.closed_rx.clone()) => return Some(Err(WatchCut)),
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.done = true;
                }
                _ = sleep_until(self.next_bookmark), if self.params.bookmarks => {
                    self.next_bookmark = Instant::now() + self.params.bookmark_every;
                    self.pending.push_back(self.bookmark(false));
                }
                _ = self.rv_rx.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&watch=true&x=%zz");
        assert_eq!(q["labelSelector"], "app=web,tier in (a,b)");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "%zz");
    }

    #[test]
    fn a_watch_event_names_its_type_before_its_object() {
        let line = event_line("MODIFIED", &json!({"metadata": {"name": "web"}}));
        assert_eq!(
            &line[..],
            b"{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"web\"}}}\n"
        );
    }

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "ns/a\u{0}");
        assert_eq!(decode_continue(&t), Some((42, "ns/a\u{0}".to_string())));
        assert_eq!(decode_continue("garbage"), None);
    }
}
