//! The object store: one global resourceVersion across kinds (as etcd gives),
//! a bounded change history that watches replay from, and compaction.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::StoreError;
use super::managed_fields;

/// The kinds the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    EndpointSlice,
}

impl Kind {
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }
    pub fn list_kind(self) -> &'static str {
        match self {
            Kind::Pod => "PodList",
            Kind::EndpointSlice => "EndpointSliceList",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Pod => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }
    /// The resource name as it appears in URLs and error messages.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::EndpointSlice => "endpointslices",
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for k8s_openapi::api::core::v1::Pod {}
    impl Sealed for k8s_openapi::api::discovery::v1::EndpointSlice {}
}

/// A typed object the store can hold: `Pod` or `EndpointSlice`.
pub trait SimResource:
    k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
    + sealed::Sealed
{
    const SIM_KIND: Kind;
}
impl SimResource for Pod {
    const SIM_KIND: Kind = Kind::Pod;
}
impl SimResource for EndpointSlice {
    const SIM_KIND: Kind = Kind::EndpointSlice;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One write, as a watch replays it. `prev` lets a filtered watch turn a
/// label change into ADDED/DELETED for its selector, as the API server does.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub ty: ChangeType,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// The requested resourceVersion lies before the compacted history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired {
    pub requested: u64,
    pub oldest: u64,
}

type Key = (Kind, String, String);

struct Inner {
    rv: u64,
    /// Every change with rv > compacted is still in `history`.
    compacted: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    max_history: usize,
    seq: u64,
    seed: u64,
}

/// Shared, cheaply cloneable handle to the simulated cluster state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    rv_tx: Arc<watch::Sender<u64>>,
    closed_tx: Arc<watch::Sender<bool>>,
}

/// Default bound on retained changes; older ones are compacted away as etcd would.
pub const DEFAULT_MAX_HISTORY: usize = 100_000;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn now_seconds() -> Timestamp {
    // Object timestamps have one-second resolution on a real server.
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub(crate) fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Inner {
    fn next_random(&mut self) -> u64 {
        self.seq += 1;
        splitmix(self.seed ^ self.seq)
    }

    fn uid(&mut self) -> String {
        let (a, b) = (self.next_random(), self.next_random());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }

    fn suffix(&mut self) -> String {
        // The alphabet the API server uses for generateName, free of vowels.
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut r = self.next_random();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
                r /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }

    fn record(&mut self, kind: Kind, ty: ChangeType, object: Arc<Value>, prev: Option<Arc<Value>>) {
        self.history.push_back(Arc::new(Change {
            rv: self.rv,
            kind,
            ty,
            object,
            prev,
        }));
        while self.history.len() > self.max_history {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

fn decode<K: SimResource>(v: &Value) -> Result<K, StoreError> {
    serde_json::from_value(v.clone()).map_err(|e| StoreError::Encoding(e.to_string()))
}

/// Who writes each kind, as `managedFields` names it on a real cluster.
fn manager(kind: Kind, change: ChangeType) -> &'static str {
    match (kind, change) {
        (Kind::Pod, ChangeType::Added) => "kube-controller-manager",
        (Kind::Pod, _) => "kubelet",
        _ => "kube-controller-manager",
    }
}

fn set_meta(v: &mut Value, field: &str, val: Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert(field.to_string(), val);
    }
}

fn without_metadata(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        Self::with_max_history(DEFAULT_MAX_HISTORY)
    }

    /// A store that keeps at most `max_history` changes before compacting.
    pub fn with_max_history(max_history: usize) -> Self {
        let seed = Timestamp::now().as_nanosecond() as u64;
        let inner = Inner {
            // A fresh etcd is never at revision 0, and "0" means "any" to clients.
            rv: 1,
            compacted: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            max_history: max_history.max(1),
            seq: 0,
            seed,
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
            rv_tx: Arc::new(watch::channel(1).0),
            closed_tx: Arc::new(watch::channel(false).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written
        // in a way later readers care about, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, rv: u64) {
        self.rv_tx.send_replace(rv);
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The oldest resourceVersion a watch may still start from.
    pub fn compacted_resource_version(&self) -> u64 {
        self.lock().compacted
    }

    /// Notifies on every write with the new resourceVersion; controllers use it
    /// to re-evaluate state level-triggered.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// Drops all history up to now: a watch or an exact list from any older
    /// resourceVersion then gets 410 Gone. Returns the compaction point.
    pub fn compact(&self) -> u64 {
        let mut g = self.lock();
        g.history.clear();
        g.compacted = g.rv;
        g.rv
    }

    /// Creates an object, filling the fields the API server owns (uid,
    /// resourceVersion, creationTimestamp, generation, a name from
    /// generateName, namespace "default").
    pub fn create<K: SimResource>(&self, obj: K) -> Result<K, StoreError> {
        let kind = K::SIM_KIND;
        let mut v = serde_json::to_value(&obj).map_err(|e| StoreError::Encoding(e.to_string()))?;
        let mut g = self.lock();
        let ns = meta_str(&v, "namespace").unwrap_or("default").to_string();
        let name = match (meta_str(&v, "name"), meta_str(&v, "generateName")) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(prefix)) => format!("{prefix}{}", g.suffix()),
            _ => {
                return Err(StoreError::Invalid(
                    "metadata.name or generateName is required".into(),
                ));
            }
        };
        let key = (kind, ns.clone(), name.clone());
        if g.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists { kind, name });
        }
        g.rv += 1;
        let rv = g.rv;
        let uid = g.uid();
        set_meta(&mut v, "name", json!(name));
        set_meta(&mut v, "namespace", json!(ns));
        set_meta(&mut v, "uid", json!(uid));
        set_meta(&mut v, "resourceVersion", json!(rv.to_string()));
        set_meta(&mut v, "generation", json!(1));
        set_meta(
            &mut v,
            "creationTimestamp",
            json!(format_time(now_seconds())),
        );
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
        }
        managed_fields::stamp(
            &mut v,
            manager(kind, ChangeType::Added),
            &format_time(now_seconds()),
        );
        let out = decode::<K>(&v)?;
        let v = Arc::new(v);
        g.objects.insert(key, v.clone());
        g.record(kind, ChangeType::Added, v, None);
        drop(g);
        self.publish(rv);
        Ok(out)
    }

    /// Replaces an object. A non-empty `metadata.resourceVersion` is a
    /// precondition (409 Conflict on mismatch), as on a real server. An update
    /// that changes nothing writes nothing and bumps no resourceVersion.
    pub fn update<K: SimResource>(&self, obj: K) -> Result<K, StoreError> {
        let kind = K::SIM_KIND;
        let mut v = serde_json::to_value(&obj).map_err(|e| StoreError::Encoding(e.to_string()))?;
        let ns = meta_str(&v, "namespace").unwrap_or("default").to_string();
        let name = meta_str(&v, "name").unwrap_or_default().to_string();
        let mut g = self.lock();
        let key = (kind, ns.clone(), name.clone());
        let old = g
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                kind,
                name: name.clone(),
            })?;
        let old_rv = meta_str(&old, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        if let Some(want) = meta_str(&v, "resourceVersion")
            && !want.is_empty()
            && want != old_rv
        {
            return Err(StoreError::Conflict { kind, name });
        }
        set_meta(&mut v, "namespace", json!(ns));
        for owned in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old.get("metadata").and_then(|m| m.get(owned)) {
                Some(val) => set_meta(&mut v, owned, val.clone()),
                None => {
                    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove(owned);
                    }
                }
            }
        }
        set_meta(&mut v, "resourceVersion", json!(old_rv));
        // What the client sent back of them is not its to set: a write that
        // changes nothing else keeps the old entry and writes nothing.
        managed_fields::take(&mut v);
        if let Some(fields) = old.pointer("/metadata/managedFields") {
            set_meta(&mut v, "managedFields", fields.clone());
        }
        if v == *old {
            return decode::<K>(&v);
        }
        managed_fields::stamp(
            &mut v,
            manager(kind, ChangeType::Modified),
            &format_time(now_seconds()),
        );
        if without_metadata(&v) != without_metadata(&old) {
            let gen_ = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            set_meta(&mut v, "generation", json!(gen_ + 1));
        }
        g.rv += 1;
        let rv = g.rv;
        set_meta(&mut v, "resourceVersion", json!(rv.to_string()));
        let out = decode::<K>(&v)?;
        let v = Arc::new(v);
        g.objects.insert(key, v.clone());
        g.record(kind, ChangeType::Modified, v, Some(old));
        drop(g);
        self.publish(rv);
        Ok(out)
    }

    /// Deletes an object. A scheduled pod with a grace period > 0 is only
    /// marked (deletionTimestamp = now + grace, deletionGracePeriodSeconds)
    /// and stays until deleted again with grace 0, which is what the kubelet
    /// does once its containers are gone. `grace` None means the pod's
    /// terminationGracePeriodSeconds (default 30). Returns the object as
    /// stored after the call (the last state for a removal).
    pub fn delete<K: SimResource>(
        &self,
        namespace: &str,
        name: &str,
        grace: Option<u32>,
    ) -> Result<K, StoreError> {
        let kind = K::SIM_KIND;
        let mut g = self.lock();
        let key = (kind, namespace.to_string(), name.to_string());
        let old = g
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                kind,
                name: name.to_string(),
            })?;
        let scheduled = old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let grace = i64::from(grace.unwrap_or_else(|| {
            old.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .map_or(30, |s| s.min(u64::from(u32::MAX)) as u32)
        }));
        let existing = old
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        let graceful = kind == Kind::Pod && scheduled && grace > 0;
        if graceful && existing.is_some_and(|e| e <= grace) {
            // A second graceful delete may only shorten the period.
            return decode::<K>(&old);
        }
        g.rv += 1;
        let rv = g.rv;
        let mut v = (*old).clone();
        set_meta(&mut v, "resourceVersion", json!(rv.to_string()));
        let ty = if graceful {
            let at =
                Timestamp::from_second(now_seconds().as_second() + grace).unwrap_or(Timestamp::MAX);
            set_meta(&mut v, "deletionTimestamp", json!(format_time(at)));
            set_meta(&mut v, "deletionGracePeriodSeconds", json!(grace));
            ChangeType::Modified
        } else {
            ChangeType::Deleted
        };
        let out = decode::<K>(&v)?;
        let v = Arc::new(v);
        if ty == ChangeType::Deleted {
            g.objects.remove(&key);
        } else {
            g.objects.insert(key, v.clone());
        }
        g.record(kind, ty, v, Some(old));
        drop(g);
        self.publish(rv);
        Ok(out)
    }

    pub fn get<K: SimResource>(&self, namespace: &str, name: &str) -> Option<K> {
        let v = self.get_raw(K::SIM_KIND, namespace, name)?;
        decode::<K>(&v).ok()
    }

    /// All objects of a kind, ordered by namespace then name.
    pub fn list<K: SimResource>(&self) -> Vec<K> {
        let g = self.lock();
        g.objects
            .iter()
            .filter(|((k, _, _), _)| *k == K::SIM_KIND)
            .filter_map(|(_, v)| decode::<K>(v).ok())
            .collect()
    }

    pub(crate) fn get_raw(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let key = (kind, namespace.to_string(), name.to_string());
        self.lock().objects.get(&key).cloned()
    }

    /// The objects of `kind` as they were at resourceVersion `at` (now if
    /// None), rebuilt by undoing newer changes. Returns the snapshot's rv.
    pub(crate) fn snapshot(
        &self,
        kind: Kind,
        at: Option<u64>,
    ) -> Result<(u64, Vec<Arc<Value>>), Expired> {
        let g = self.lock();
        let at = at.unwrap_or(g.rv);
        if at < g.compacted {
            return Err(Expired {
                requested: at,
                oldest: g.compacted,
            });
        }
        let mut objs: BTreeMap<(String, String), Arc<Value>> = g
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|((_, ns, n), v)| ((ns.clone(), n.clone()), v.clone()))
            .collect();
        for c in g.history.iter().rev().take_while(|c| c.rv > at) {
            if c.kind != kind {
                continue;
            }
            let key = (
                meta_str(&c.object, "namespace")
                    .unwrap_or_default()
                    .to_string(),
                meta_str(&c.object, "name").unwrap_or_default().to_string(),
            );
            match &c.prev {
                Some(p) if c.ty != ChangeType::Added => objs.insert(key, p.clone()),
                _ => objs.remove(&key),
            };
        }
        Ok((at.min(g.rv), objs.into_values().collect()))
    }

    /// Changes of `kind` after `cursor`, oldest first, and the rv they reach.
    pub(crate) fn changes_since(
        &self,
        kind: Kind,
        cursor: u64,
    ) -> Result<(u64, Vec<Arc<Change>>), Expired> {
        let g = self.lock();
        if cursor < g.compacted {
            return Err(Expired {
                requested: cursor,
                oldest: g.compacted,
            });
        }
        let start = g.history.partition_point(|c| c.rv <= cursor);
        let out = g
            .history
            .range(start..)
            .filter(|c| c.kind == kind)
            .cloned()
            .collect();
        Ok((g.rv.max(cursor), out))
    }

    /// Marks the store closed: server tasks and cluster controllers that hold
    /// it wind down.
    pub(crate) fn close(&self) {
        self.closed_tx.send_replace(true);
    }

    pub(crate) fn closed_signal(&self) -> watch::Receiver<bool> {
        self.closed_tx.subscribe()
    }

    pub fn is_closed(&self) -> bool {
        *self.closed_tx.borrow()
    }
}

/// Resolves once the store is closed.
pub(crate) async fn wait_closed(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which is as closed as it gets.
    let _ = rx.wait_for(|c| *c).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn writes_bump_one_global_resource_version() {
        let s = Store::new();
        let p = s.create(pod("a")).unwrap();
        let e = s
            .create(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some("svc-".into()),
                    namespace: Some("ns".into()),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                ..Default::default()
            })
            .unwrap();
        let rv_p: u64 = p.metadata.resource_version.unwrap().parse().unwrap();
        let rv_e: u64 = e.metadata.resource_version.unwrap().parse().unwrap();
        assert_eq!(rv_e, rv_p + 1);
        assert!(e.metadata.name.unwrap().starts_with("svc-"));
        assert!(p.metadata.uid.is_some() && p.metadata.creation_timestamp.is_some());
        assert_eq!(p.metadata.generation, Some(1));
    }

    #[test]
    fn graceful_delete_marks_then_removes() {
        let s = Store::new();
        s.create(pod("a")).unwrap();
        let marked: Pod = s.delete("ns", "a", Some(10)).unwrap();
        assert!(marked.metadata.deletion_timestamp.is_some());
        assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(10));
        assert!(s.get::<Pod>("ns", "a").is_some());
        let rv = s.resource_version();
        // A longer grace period does not extend a pending deletion.
        let _: Pod = s.delete("ns", "a", Some(20)).unwrap();
        assert_eq!(s.resource_version(), rv);
        let _: Pod = s.delete("ns", "a", Some(0)).unwrap();
        assert!(s.get::<Pod>("ns", "a").is_none());
    }

    #[test]
    fn update_checks_precondition_and_skips_no_ops() {
        let s = Store::new();
        let p = s.create(pod("a")).unwrap();
        let rv = s.resource_version();
        let same = s.update(p.clone()).unwrap();
        assert_eq!(s.resource_version(), rv);
        assert_eq!(same.metadata.resource_version, p.metadata.resource_version);
        let mut changed = p.clone();
        changed.spec.as_mut().unwrap().hostname = Some("h".into());
        let changed = s.update(changed).unwrap();
        assert_eq!(changed.metadata.generation, Some(2));
        assert!(matches!(s.update(p), Err(StoreError::Conflict { .. })));
    }

    #[test]
    fn snapshot_rebuilds_past_state_and_expires_after_compaction() {
        let s = Store::new();
        s.create(pod("a")).unwrap();
        let at = s.resource_version();
        s.create(pod("b")).unwrap();
        let _: Pod = s.delete("ns", "a", Some(0)).unwrap();
        let (rv, past) = s.snapshot(Kind::Pod, Some(at)).unwrap();
        assert_eq!(rv, at);
        let names: Vec<_> = past
            .iter()
            .map(|v| meta_str(v, "name").unwrap().to_string())
            .collect();
        assert_eq!(names, ["a"]);
        s.compact();
        assert!(s.snapshot(Kind::Pod, Some(at)).is_err());
        assert!(s.changes_since(Kind::Pod, at).is_err());
        assert!(s.changes_since(Kind::Pod, s.resource_version()).is_ok());
    }
}
