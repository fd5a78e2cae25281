//! Model tests: fixtures as a real API server returns them, scripted
//! termination sequences, IP reuse, relists and malformed objects.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use serde_json::json;

use super::*;
use crate::clock::MonoTime;

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/src/cluster/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn t(seconds: u64) -> MonoTime {
    MonoTime(seconds * 1_000_000_000)
}

/// A Deployment pod as the API shows it; `deleting` adds deletionTimestamp.
fn pod(name: &str, uid: &str, pod_ip: Option<&str>, ready: bool, deleting: bool) -> Pod {
    let mut value = json!({
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid,
            "labels": {"pod-template-hash": "abc12"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc12",
                                  "uid": "rs", "controller": true}]
        },
        "spec": {"containers": [{"name": "web", "image": "web",
                                 "ports": [{"containerPort": 8080}],
                                 "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 5"]}}}}],
                 "terminationGracePeriodSeconds": 30},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    });
    if let Some(pod_ip) = pod_ip {
        value["status"]["podIP"] = json!(pod_ip);
        value["status"]["podIPs"] = json!([{"ip": pod_ip}]);
    }
    if deleting {
        value["metadata"]["deletionTimestamp"] = json!("2026-03-02T09:01:47Z");
        value["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    }
    serde_json::from_value(value).expect("valid pod")
}

/// One endpoint of a slice: (ip, pod uid, ready, serving, terminating).
type Ep<'a> = (&'a str, &'a str, bool, bool, bool);

fn slice(name: &str, endpoints: &[Ep]) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(addr, uid, ready, serving, terminating)| {
            json!({"addresses": [addr],
                   "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                   "targetRef": {"kind": "Pod", "namespace": "shop", "uid": uid}})
        })
        .collect();
    serde_json::from_value(json!({
        "addressType": "IPv4",
        "metadata": {"name": name, "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"},
                     "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-03-02T09:01:48Z"}},
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .expect("valid slice")
}

fn key(addr: &str) -> EndpointKey {
    EndpointKey {
        namespace: "shop".into(),
        service: "web".into(),
        ip: ip(addr),
    }
}

fn kinds(changes: &[ClusterChange]) -> Vec<&'static str> {
    changes
        .iter()
        .map(|c| match c.kind {
            ChangeKind::PodSeen { .. } => "pod_seen",
            ChangeKind::PodIpAssigned { .. } => "pod_ip_assigned",
            ChangeKind::PodTerminating { .. } => "pod_terminating",
            ChangeKind::PodReadyChanged { .. } => "pod_ready_changed",
            ChangeKind::PodRemoved { .. } => "pod_removed",
            ChangeKind::PodRemovedWhileUnwatched { .. } => "pod_removed_while_unwatched",
            ChangeKind::EndpointSeen { .. } => "endpoint_seen",
            ChangeKind::EndpointConditionsChanged { .. } => "endpoint_conditions_changed",
            ChangeKind::EndpointNotReady { .. } => "endpoint_not_ready",
            ChangeKind::EndpointRemoved { .. } => "endpoint_removed",
            ChangeKind::Resynced { .. } => "resynced",
        })
        .collect()
}

/// A model that has completed its first lists of both resources.
fn synced_model(pods: Vec<Pod>, slices: Vec<EndpointSlice>, at: MonoTime) -> ClusterModel {
    let mut model = ClusterModel::new();
    model.apply_pod_event(at, Event::Init);
    for p in pods {
        model.apply_pod_event(at, Event::InitApply(p));
    }
    model.apply_pod_event(at, Event::InitDone);
    model.apply_slice_event(at, Event::Init);
    for s in slices {
        model.apply_slice_event(at, Event::InitApply(s));
    }
    model.apply_slice_event(at, Event::InitDone);
    model
}

#[test]
fn dual_stack_pod_fixture_parses_into_the_model() {
    let mut model = ClusterModel::new();
    let changes = model.apply_pod_event(t(1), Event::Apply(fixture::<Pod>("pod-dual-stack.json")));
    assert_eq!(
        kinds(&changes),
        ["pod_seen", "pod_ip_assigned", "pod_ip_assigned"]
    );
    let p = model
        .pod("5f0b6f0a-2d7e-4c59-9a52-6c1e8f3b7a01")
        .expect("stored");
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str()),
        ("shop", "web-7d9f8b6c5d-x2x7q")
    );
    assert_eq!(
        p.owner,
        Some(Owner {
            kind: "Deployment".into(),
            name: "web".into()
        })
    );
    assert_eq!(p.node.as_deref(), Some("worker-3"));
    assert_eq!(p.ips, [ip("10.244.3.17"), ip("fd00:244:3::11")]);
    assert_eq!(p.termination_grace_period_seconds, Some(45));
    assert_eq!((p.phase, p.ready), (Some(PodPhase::Running), Some(true)));
    let names: Vec<_> = p
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.sidecar))
        .collect();
    // The one-shot init container is not kept; the native sidecar is.
    assert_eq!(
        names,
        [("mesh-proxy", true), ("web", false), ("log-agent", false)]
    );
    let web = &p.containers[1];
    assert_eq!(
        web.pre_stop,
        PreStop::Exec {
            program: "sh".into(),
            leading_sleep_ms: Some(5000)
        }
    );
    assert!(web.readiness_probe);
    let ports: Vec<_> = web.ports.iter().map(|p| (p.port, p.tcp)).collect();
    assert_eq!(
        ports,
        [(8080, true), (8443, true), (9090, true), (5353, false)]
    );
    assert_eq!(p.containers[0].pre_stop, PreStop::Sleep { seconds: 10 });
    assert_eq!(p.pre_stop_sleep(), Some(Duration::from_secs(10)));
    assert!(p.deletion.is_none());
    assert_eq!(
        model
            .pod_for_ip_at(ip("fd00:244:3::11"), t(2))
            .map(|p| p.name.as_str()),
        Some(p.name.as_str())
    );
}

#[test]
fn prestop_forms_and_minimal_pod_fixtures_parse() {
    let mut model = ClusterModel::new();
    model.apply_pod_event(t(1), Event::Apply(fixture::<Pod>("pod-prestop-forms.json")));
    model.apply_pod_event(t(1), Event::Apply(fixture::<Pod>("pod-minimal.json")));
    let p = model.pod_by_name("lab", "hooks-0").expect("stored");
    let sleeps: Vec<_> = p
        .containers
        .iter()
        .map(|c| c.pre_stop.sleep().map(|d| d.as_millis()))
        .collect();
    assert_eq!(
        sleeps,
        [
            Some(7000),
            Some(5000),
            Some(5000),
            Some(5000),
            Some(5000),
            None,
            None,
            None
        ]
    );
    assert_eq!(
        p.containers[6].pre_stop,
        PreStop::HttpGet {
            path: Some("/shutdown".into()),
            port: "8080".into()
        }
    );
    assert_eq!(p.containers[7].pre_stop, PreStop::None);
    assert_eq!(
        p.owner,
        Some(Owner {
            kind: "StatefulSet".into(),
            name: "hooks".into()
        })
    );
    assert_eq!(p.ready, Some(false));

    let bare = model.pod_by_name("default", "bare").expect("stored");
    assert!(bare.ips.is_empty() && bare.owner.is_none() && bare.node.is_none());
    assert_eq!(
        (
            bare.phase,
            bare.ready,
            bare.termination_grace_period_seconds
        ),
        (None, None, None)
    );
    assert_eq!(bare.pre_stop_sleep(), None);
}

#[test]
fn terminating_pod_fixture_is_marked_observed_late() {
    let mut model = ClusterModel::new();
    let changes = model.apply_pod_event(t(3), Event::Apply(fixture::<Pod>("pod-terminating.json")));
    assert_eq!(
        kinds(&changes),
        ["pod_seen", "pod_ip_assigned", "pod_terminating"]
    );
    let p = model
        .pod("77d1c2e3-aaaa-4bbb-8ccc-0123456789ab")
        .expect("stored");
    let deletion = p.deletion.as_ref().expect("terminating");
    assert_eq!(deletion.deletion_seen, t(3));
    assert!(
        deletion.observed_late,
        "first sight of the pod was already terminating"
    );
    assert_eq!(
        deletion.deletion_timestamp,
        ApiTime::parse("2026-03-02T09:01:47Z")
    );
    assert_eq!(deletion.deletion_grace_period_seconds, Some(45));
    assert_eq!(p.owner.as_ref().map(|o| o.name.as_str()), Some("web"));
}

#[test]
fn endpointslice_fixtures_parse_with_api_defaults() {
    let mut model = ClusterModel::new();
    model.apply_pod_event(t(1), Event::Apply(fixture::<Pod>("pod-dual-stack.json")));
    let changes = model.apply_slice_event(
        t(2),
        Event::Apply(fixture::<EndpointSlice>("endpointslice.json")),
    );
    let mut by_kind = kinds(&changes);
    by_kind.sort();
    assert_eq!(
        by_kind,
        [
            "endpoint_not_ready",
            "endpoint_seen",
            "endpoint_seen",
            "endpoint_seen",
            "endpoint_seen"
        ]
    );
    model.apply_slice_event(
        t(2),
        Event::Apply(fixture::<EndpointSlice>("endpointslice-ipv6.json")),
    );

    let ready = model.endpoint(&key("10.244.3.17")).expect("listed");
    assert_eq!(
        ready.conditions,
        EndpointConditions {
            ready: true,
            serving: true,
            terminating: false
        }
    );
    assert_eq!(ready.ports, [8080, 8443], "UDP ports are not measured");
    assert_eq!(
        ready.last_change_trigger_time,
        ApiTime::parse("2026-03-02T09:01:47Z")
    );
    assert_eq!(ready.ready_since, Some(t(2)));

    let terminating = model.endpoint(&key("10.244.1.9")).expect("listed");
    assert_eq!(
        terminating.conditions,
        EndpointConditions {
            ready: false,
            serving: true,
            terminating: true
        }
    );
    assert_eq!(
        (
            terminating.endpoint_not_ready,
            terminating.not_ready_observed_late
        ),
        (Some(t(2)), true)
    );

    let starting = model.endpoint(&key("10.244.2.4")).expect("listed");
    assert_eq!(
        starting.endpoint_not_ready, None,
        "never ready, so never stopped being ready"
    );

    // Empty conditions mean ready and serving.
    let defaulted = model.endpoint(&key("10.244.2.5")).expect("listed");
    assert_eq!(
        defaulted.conditions,
        EndpointConditions {
            ready: true,
            serving: true,
            terminating: false
        }
    );
    assert_eq!(defaulted.pod_uid, None);

    // Dual stack: the pod's Service addresses on both families.
    let of_pod = model.endpoints_of_pod("5f0b6f0a-2d7e-4c59-9a52-6c1e8f3b7a01");
    let mut ips: Vec<_> = of_pod.iter().map(|r| r.key.ip).collect();
    ips.sort();
    assert_eq!(ips, [ip("10.244.3.17"), ip("fd00:244:3::11")]);
    assert_eq!(
        model.advertised_ports("5f0b6f0a-2d7e-4c59-9a52-6c1e8f3b7a01"),
        [8080, 8443]
    );
}

#[test]
fn scripted_termination_orders_deletion_seen_endpoint_not_ready_endpoint_removed() {
    let uid = "old-1";
    let mut model = synced_model(
        vec![pod("web-abc12-aaaaa", uid, Some("10.0.0.5"), true, false)],
        vec![slice("web-1", &[("10.0.0.5", uid, true, true, false)])],
        t(10),
    );
    let mut all = Vec::new();
    all.extend(model.apply_pod_event(
        t(20),
        Event::Apply(pod("web-abc12-aaaaa", uid, Some("10.0.0.5"), true, true)),
    ));
    all.extend(model.apply_slice_event(
        t(21),
        Event::Apply(slice("web-1", &[("10.0.0.5", uid, false, true, true)])),
    ));
    all.extend(model.apply_pod_event(
        t(22),
        Event::Apply(pod("web-abc12-aaaaa", uid, Some("10.0.0.5"), false, true)),
    ));
    all.extend(model.apply_slice_event(t(28), Event::Apply(slice("web-1", &[]))));
    all.extend(model.apply_pod_event(
        t(30),
        Event::Delete(pod("web-abc12-aaaaa", uid, Some("10.0.0.5"), false, true)),
    ));
    assert_eq!(
        kinds(&all),
        [
            "pod_terminating",
            "endpoint_conditions_changed",
            "endpoint_not_ready",
            "pod_ready_changed",
            "endpoint_removed",
            "pod_removed"
        ]
    );
    let p = model.pod(uid).expect("kept after removal");
    let e = model
        .endpoint(&key("10.0.0.5"))
        .expect("kept after removal");
    let deletion_seen = p.deletion_seen().expect("seen");
    let endpoint_not_ready = e.endpoint_not_ready.expect("not ready");
    let endpoint_removed = e.endpoint_removed.expect("removed");
    assert!(deletion_seen < endpoint_not_ready && endpoint_not_ready < endpoint_removed);
    assert_eq!(
        (deletion_seen, endpoint_not_ready, endpoint_removed),
        (t(20), t(21), t(28))
    );
    assert!(!p.deletion.as_ref().is_some_and(|d| d.observed_late));
    assert!(!e.not_ready_observed_late && !e.removed_while_unwatched);
    assert_eq!(
        e.conditions,
        EndpointConditions {
            ready: false,
            serving: true,
            terminating: true
        }
    );
    assert_eq!(
        p.removal,
        Some(Removal {
            at: t(30),
            while_unwatched: false
        })
    );
    // The connect window stays attributable after removal.
    assert_eq!(
        model
            .pod_for_ip_at(ip("10.0.0.5"), t(45))
            .map(|p| p.uid.as_str()),
        Some(uid)
    );

    // Everything the engine consumes records and replays as JSON.
    for change in &all {
        let line = serde_json::to_string(change).expect("serializable");
        assert_eq!(
            &serde_json::from_str::<ClusterChange>(&line).expect("replayable"),
            change
        );
    }
}

#[test]
fn an_address_moving_between_slices_is_not_removed() {
    let mut model = synced_model(
        vec![],
        vec![slice("web-1", &[("10.0.0.5", "p", true, true, false)])],
        t(1),
    );
    let moved = model.apply_slice_event(
        t(2),
        Event::Apply(slice("web-2", &[("10.0.0.5", "p", true, true, false)])),
    );
    assert!(moved.is_empty(), "{moved:?}");
    let left = model.apply_slice_event(t(3), Event::Apply(slice("web-1", &[])));
    assert!(left.is_empty(), "still listed by web-2: {left:?}");
    let gone = model.apply_slice_event(t(4), Event::Delete(slice("web-2", &[])));
    assert_eq!(kinds(&gone), ["endpoint_not_ready", "endpoint_removed"]);
    assert_eq!(
        model
            .endpoint(&key("10.0.0.5"))
            .and_then(|e| e.endpoint_removed),
        Some(t(4))
    );
}

#[test]
fn ip_reuse_keeps_attributions_apart() {
    let mut model = synced_model(
        vec![pod("web-abc12-old00", "old", Some("10.0.0.7"), true, false)],
        vec![slice("web-1", &[("10.0.0.7", "old", true, true, false)])],
        t(1),
    );
    model.apply_pod_event(
        t(5),
        Event::Apply(pod("web-abc12-old00", "old", Some("10.0.0.7"), true, true)),
    );
    model.apply_slice_event(
        t(6),
        Event::Apply(slice("web-1", &[("10.0.0.7", "old", false, true, true)])),
    );
    model.apply_pod_event(
        t(9),
        Event::Delete(pod("web-abc12-old00", "old", Some("10.0.0.7"), false, true)),
    );
    // The IP is handed to a new pod; the slice lists it for the new pod
    // without ever dropping the address in between.
    let reuse = model.apply_pod_event(
        t(12),
        Event::Apply(pod(
            "web-abc12-new00",
            "new",
            Some("10.0.0.7"),
            false,
            false,
        )),
    );
    assert_eq!(kinds(&reuse), ["pod_seen", "pod_ip_assigned"]);
    let relisted = model.apply_slice_event(
        t(14),
        Event::Apply(slice("web-1", &[("10.0.0.7", "new", true, true, false)])),
    );
    assert_eq!(kinds(&relisted), ["endpoint_removed", "endpoint_seen"]);

    let holder = |s| {
        model
            .pod_for_ip_at(ip("10.0.0.7"), t(s))
            .map(|p| p.uid.as_str())
    };
    assert_eq!(holder(0), None);
    assert_eq!(holder(3), Some("old"));
    assert_eq!(
        holder(10),
        Some("old"),
        "late connects after deletion still belong to the old pod"
    );
    assert_eq!(holder(12), Some("new"));
    assert_eq!(holder(100), Some("new"));
    let claims = model.ip_claims(ip("10.0.0.7"));
    assert_eq!(claims.len(), 2);
    assert_eq!(claims[0].valid_until, Some(t(12)));

    let history = model.endpoint_history(&key("10.0.0.7"));
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].pod_uid.as_deref(), Some("old"));
    assert_eq!(
        (history[0].endpoint_not_ready, history[0].endpoint_removed),
        (Some(t(6)), Some(t(14)))
    );
    assert_eq!(history[1].pod_uid.as_deref(), Some("new"));
    assert_eq!(history[1].endpoint_not_ready, None);
    assert_eq!(model.endpoints_of_pod("new").len(), 1);
    assert_eq!(
        model.endpoints_of_pod("old")[0].endpoint_removed,
        Some(t(14))
    );
}

#[test]
fn relist_after_a_gap_closes_missing_pods_and_invents_nothing() {
    let mut model = synced_model(
        vec![
            pod("a", "a", Some("10.0.0.1"), true, false),
            pod("b", "b", Some("10.0.0.2"), true, false),
            pod("c", "c", Some("10.0.0.3"), true, false),
        ],
        vec![
            slice(
                "web-1",
                &[
                    ("10.0.0.1", "a", true, true, false),
                    ("10.0.0.2", "b", true, true, false),
                ],
            ),
            slice("web-2", &[("10.0.0.3", "c", true, true, false)]),
        ],
        t(1),
    );
    // Gap: b began terminating, c was deleted, d was created, a moved to
    // another slice, b's address became terminating, c's address went away.
    let mut pods = Vec::new();
    pods.extend(model.apply_pod_event(t(50), Event::Init));
    pods.extend(model.apply_pod_event(
        t(50),
        Event::InitApply(pod("a", "a", Some("10.0.0.1"), true, false)),
    ));
    pods.extend(model.apply_pod_event(
        t(51),
        Event::InitApply(pod("b", "b", Some("10.0.0.2"), true, true)),
    ));
    pods.extend(model.apply_pod_event(
        t(51),
        Event::InitApply(pod("d", "d", Some("10.0.0.4"), false, false)),
    ));
    pods.extend(model.apply_pod_event(t(52), Event::InitDone));
    assert_eq!(
        kinds(&pods),
        [
            "pod_terminating",
            "pod_seen",
            "pod_ip_assigned",
            "pod_removed_while_unwatched",
            "resynced"
        ]
    );
    let b = model
        .pod("b")
        .and_then(|p| p.deletion.clone())
        .expect("terminating");
    assert_eq!((b.deletion_seen, b.observed_late), (t(51), true));
    assert_eq!(
        model.pod("c").and_then(|p| p.removal),
        Some(Removal {
            at: t(52),
            while_unwatched: true
        })
    );
    assert_eq!(
        model.pod("c").and_then(|p| p.deletion.clone()),
        None,
        "no deletion is invented"
    );
    assert!(
        model
            .pod("a")
            .is_some_and(|p| p.removal.is_none() && p.deletion.is_none())
    );
    assert!(matches!(
        pods[4].kind,
        ChangeKind::Resynced {
            resource: WatchedResource::Pods,
            relist: true
        }
    ));

    let mut slices = Vec::new();
    slices.extend(model.apply_slice_event(t(60), Event::Init));
    slices.extend(model.apply_slice_event(
        t(60),
        Event::InitApply(slice("web-1", &[("10.0.0.2", "b", false, true, true)])),
    ));
    slices.extend(model.apply_slice_event(
        t(60),
        Event::InitApply(slice("web-3", &[("10.0.0.1", "a", true, true, false)])),
    ));
    slices.extend(model.apply_slice_event(t(61), Event::InitDone));
    let mut found = kinds(&slices);
    found.sort();
    assert_eq!(
        found,
        [
            "endpoint_conditions_changed",
            "endpoint_not_ready",
            "endpoint_not_ready",
            "endpoint_removed",
            "resynced"
        ]
    );
    let a = model
        .endpoint(&key("10.0.0.1"))
        .expect("moved, not removed");
    assert_eq!(
        (a.endpoint_removed, a.endpoint_not_ready, a.first_seen),
        (None, None, t(1))
    );
    let b = model.endpoint(&key("10.0.0.2")).expect("listed");
    assert_eq!(
        (b.endpoint_not_ready, b.not_ready_observed_late),
        (Some(t(61)), true)
    );
    let c = model.endpoint(&key("10.0.0.3")).expect("kept");
    assert_eq!(
        (c.endpoint_removed, c.removed_while_unwatched),
        (Some(t(61)), true)
    );
}

#[test]
fn relist_without_changes_emits_only_the_resync() {
    let pods = vec![pod("a", "a", Some("10.0.0.1"), true, false)];
    let slices = vec![slice("web-1", &[("10.0.0.1", "a", true, true, false)])];
    let mut model = synced_model(pods.clone(), slices.clone(), t(1));
    let before = model.stats();
    let mut changes = model.apply_pod_event(t(9), Event::Init);
    for p in pods {
        changes.extend(model.apply_pod_event(t(9), Event::InitApply(p)));
    }
    changes.extend(model.apply_pod_event(t(9), Event::InitDone));
    changes.extend(model.apply_slice_event(t(9), Event::Init));
    for s in slices {
        changes.extend(model.apply_slice_event(t(9), Event::InitApply(s)));
    }
    changes.extend(model.apply_slice_event(t(9), Event::InitDone));
    assert_eq!(kinds(&changes), ["resynced", "resynced"]);
    assert_eq!(model.stats(), before);
}

#[test]
fn deletion_without_a_terminating_update_is_seen_at_removal() {
    let mut model = synced_model(
        vec![pod("a", "a", Some("10.0.0.1"), true, false)],
        vec![],
        t(1),
    );
    let changes = model.apply_pod_event(
        t(5),
        Event::Delete(pod("a", "a", Some("10.0.0.1"), true, false)),
    );
    assert_eq!(kinds(&changes), ["pod_terminating", "pod_removed"]);
    let deletion = model
        .pod("a")
        .and_then(|p| p.deletion.clone())
        .expect("set");
    assert_eq!(
        (deletion.deletion_seen, deletion.observed_late),
        (t(5), true)
    );
}

#[test]
fn malformed_objects_are_skipped() {
    let mut model = synced_model(
        vec![pod("a", "a", Some("10.0.0.1"), true, false)],
        vec![],
        t(1),
    );
    for _ in 0..3 {
        assert!(
            model
                .apply_pod_event(t(2), Event::Apply(fixture::<Pod>("pod-missing-uid.json")))
                .is_empty()
        );
    }
    assert!(
        model
            .apply_pod_event(t(2), Event::Apply(fixture::<Pod>("pod-bad-ip.json")))
            .is_empty()
    );
    assert!(
        model
            .apply_pod_event(t(2), Event::Delete(fixture::<Pod>("pod-missing-uid.json")))
            .is_empty()
    );
    let mut unlabeled = slice("custom", &[("10.0.0.1", "a", true, true, false)]);
    unlabeled.metadata.labels = None;
    assert!(
        model
            .apply_slice_event(t(2), Event::Apply(unlabeled))
            .is_empty()
    );
    let mut garbled = slice("web-1", &[]);
    let endpoint = serde_json::from_value(json!({"addresses": ["not-an-ip"]})).expect("endpoint");
    garbled.endpoints = Some(vec![endpoint]);
    assert!(
        model
            .apply_slice_event(t(2), Event::Apply(garbled))
            .is_empty()
    );
    // FQDN slices are legitimate but carry no IPs.
    let mut fqdn = slice("web-fqdn", &[]);
    fqdn.address_type = "FQDN".into();
    fqdn.endpoints = Some(vec![
        serde_json::from_value(json!({"addresses": ["db.example"]})).expect("endpoint"),
    ]);
    assert!(model.apply_slice_event(t(2), Event::Apply(fqdn)).is_empty());

    let stats = model.stats();
    assert_eq!(stats.skipped_objects, 7);
    assert_eq!((stats.pods, stats.endpoint_records), (1, 0));
    // A malformed relist item does not make a known pod look removed.
    let mut changes = model.apply_pod_event(t(3), Event::Init);
    changes.extend(model.apply_pod_event(
        t(3),
        Event::InitApply(fixture::<Pod>("pod-missing-uid.json")),
    ));
    changes.extend(model.apply_pod_event(
        t(3),
        Event::InitApply(pod("a", "a", Some("10.0.0.1"), true, false)),
    ));
    changes.extend(model.apply_pod_event(t(3), Event::InitDone));
    assert_eq!(kinds(&changes), ["resynced"]);
}

#[test]
fn ten_thousand_pods_fit_in_twelve_mebibytes() {
    let mut model = ClusterModel::new();
    model.apply_pod_event(t(1), Event::Init);
    for i in 0..10_000u32 {
        let addr = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
        let name = format!("web-abc12-{i:05}");
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        model.apply_pod_event(
            t(1),
            Event::InitApply(pod(&name, &uid, Some(&addr), true, false)),
        );
    }
    model.apply_pod_event(t(1), Event::InitDone);
    let stats = model.stats();
    assert_eq!(stats.pods, 10_000);
    let per_pod = stats.estimated_heap_bytes / 10_000;
    eprintln!(
        "model estimate for 10 000 pods: {} bytes ({per_pod} per pod)",
        stats.estimated_heap_bytes
    );
    assert!(
        stats.estimated_heap_bytes < 12 << 20,
        "{} bytes ({per_pod} per pod)",
        stats.estimated_heap_bytes
    );
}

#[test]
fn pruning_drops_removed_tenures_and_keeps_a_reused_address_current_one() {
    let mut model = synced_model(
        vec![],
        vec![slice(
            "web-1",
            &[
                ("10.0.0.1", "old", true, true, false),
                ("10.0.0.2", "b", true, true, false),
            ],
        )],
        t(1),
    );
    // 10.0.0.1 leaves at 2 s; a new pod takes it at 3 s; 10.0.0.2 leaves at 4 s.
    model.apply_slice_event(
        t(2),
        Event::Apply(slice("web-1", &[("10.0.0.2", "b", true, true, false)])),
    );
    model.apply_slice_event(
        t(3),
        Event::Apply(slice(
            "web-1",
            &[
                ("10.0.0.1", "new", true, true, false),
                ("10.0.0.2", "b", true, true, false),
            ],
        )),
    );
    model.apply_slice_event(
        t(4),
        Event::Apply(slice("web-1", &[("10.0.0.1", "new", true, true, false)])),
    );
    let tenures = |model: &ClusterModel, addr: &str| -> Vec<Option<String>> {
        model
            .endpoints_on_ip(ip(addr))
            .map(|r| r.pod_uid.clone())
            .collect()
    };
    assert_eq!(
        tenures(&model, "10.0.0.1"),
        [Some("old".to_owned()), Some("new".to_owned())]
    );
    // Removals at or after the cut stay.
    model.prune_removed_before(t(2));
    assert_eq!(tenures(&model, "10.0.0.1").len(), 2);
    model.prune_removed_before(t(3));
    assert_eq!(tenures(&model, "10.0.0.1"), [Some("new".to_owned())]);
    assert_eq!(tenures(&model, "10.0.0.2"), [Some("b".to_owned())]);
    model.prune_removed_before(t(5));
    assert!(tenures(&model, "10.0.0.2").is_empty());
    assert_eq!(tenures(&model, "10.0.0.1"), [Some("new".to_owned())]);
    assert_eq!(model.stats().endpoint_records, 1);
}

/// A slice of Service `web` whose endpoints name their nodes.
fn slice_on_nodes(name: &str, endpoints: &[(&str, &str, &str)]) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(addr, uid, node)| {
            json!({"addresses": [addr], "nodeName": node,
                   "conditions": {"ready": true, "serving": true, "terminating": false},
                   "targetRef": {"kind": "Pod", "namespace": "shop", "uid": uid}})
        })
        .collect();
    serde_json::from_value(json!({
        "addressType": "IPv4",
        "metadata": {"name": name, "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": endpoints,
        "ports": [{"port": 8080, "protocol": "TCP"}]
    }))
    .expect("valid slice")
}

#[test]
fn a_node_scoped_model_keeps_other_nodes_endpoints_as_their_service_only() {
    let mut model = ClusterModel::new();
    model.apply(StampedEvent {
        at: t(1),
        event: ResourceEvent::SliceScope(Some("node-a".into())),
    });
    let both = slice_on_nodes(
        "web-1",
        &[("10.0.0.1", "a1", "node-a"), ("10.0.0.2", "b1", "node-b")],
    );
    model.apply_slice_event(t(1), Event::Init);
    model.apply_slice_event(t(1), Event::InitApply(both.clone()));
    let changes = model.apply_slice_event(t(1), Event::InitDone);
    assert_eq!(kinds(&changes), ["endpoint_seen", "resynced"]);
    assert_eq!(model.stats().endpoint_records, 1);
    assert!(model.endpoint(&key("10.0.0.1")).is_some());
    assert_eq!(
        model.service_of_ip_at(ip("10.0.0.2"), t(2)),
        Some(("shop", "web"))
    );
    // The same address listed by a second slice: gone only when both drop it.
    let second = slice_on_nodes("web-2", &[("10.0.0.2", "b1", "node-b")]);
    model.apply_slice_event(t(2), Event::Apply(second.clone()));
    model.apply_slice_event(t(3), Event::Delete(both));
    assert!(model.service_of_ip_at(ip("10.0.0.2"), t(3)).is_some());
    model.apply_slice_event(t(4), Event::Delete(second));
    assert_eq!(model.service_of_ip_at(ip("10.0.0.2"), t(4)), None);

    // Widened: the next list keeps every endpoint whole.
    model.apply(StampedEvent {
        at: t(5),
        event: ResourceEvent::SliceScope(None),
    });
    model.apply_slice_event(t(5), Event::Init);
    model.apply_slice_event(
        t(5),
        Event::InitApply(slice_on_nodes(
            "web-1",
            &[("10.0.0.1", "a1", "node-a"), ("10.0.0.2", "b1", "node-b")],
        )),
    );
    model.apply_slice_event(t(5), Event::InitDone);
    let current: Vec<_> = model
        .endpoints()
        .filter(|e| e.endpoint_removed.is_none())
        .map(|e| e.key.ip)
        .collect();
    assert_eq!(current.len(), 2, "{current:?}");
}
