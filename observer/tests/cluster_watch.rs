//! The cluster watchers against the API simulator over HTTP with the real
//! kube-rs client: rolling updates, IP reuse, watch faults and scale.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ExecAction, Lifecycle, LifecycleHandler, Pod, PodCondition, PodIP,
    PodSpec, PodStatus, Probe, TCPSocketAction,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions as ApiConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use observer::clock::MonoTime;
use observer::cluster::Kube;
use observer::cluster::selector::LabelSelector;
use observer::cluster::{
    ClientSource, ClusterHandle, ClusterModel, EndpointConditions, EndpointKey, PodScope, ScopeNow,
    WatchConfig, WatchCounters, connect, run, stamped_events,
};
use observer_sim::RequestScope;
use observer_sim::{Cluster, ClusterConfig, DeploymentSpec, SimConfig, SimServer, Store};
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep};

/// Tests in this file run one at a time: the memory test reads the
/// process's RSS, and the rollout timings are steadier without company.
static SERIAL: Mutex<()> = Mutex::const_new(());

const NS: &str = "shop";

async fn server() -> SimServer {
    SimServer::start_with(SimConfig {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("simulator starts")
}

/// Runs the watchers on a fresh handle; the task ends with the test.
fn watch(client: Kube, config: WatchConfig) -> ClusterHandle {
    let handle = ClusterHandle::default();
    tokio::spawn(run(client, config, handle.clone()));
    handle
}

/// Polls `check` against the model until it holds, or fails after `limit`.
async fn eventually(
    handle: &ClusterHandle,
    limit: Duration,
    what: &str,
    mut check: impl FnMut(&ClusterModel) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        if check(&handle.model()) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().expect("the simulator sets uids")
}

/// The pod a test places by hand: scheduled (so deletion is graceful),
/// Running and Ready at `ip`, with a preStop and a readiness probe.
fn manual_pod(ns: &str, name: &str, ip: &str) -> Pod {
    let ready = PodCondition {
        type_: "Ready".into(),
        status: "True".into(),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([
                ("app".to_string(), "api".to_string()),
                ("pod-template-hash".to_string(), "6f7c9d8b4".to_string()),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "api-6f7c9d8b4".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-a".into()),
            termination_grace_period_seconds: Some(60),
            containers: vec![Container {
                name: "api".into(),
                ports: Some(vec![ContainerPort {
                    container_port: 8080,
                    ..Default::default()
                }]),
                lifecycle: Some(Lifecycle {
                    pre_stop: Some(LifecycleHandler {
                        exec: Some(ExecAction {
                            command: Some(vec!["sh".into(), "-c".into(), "sleep 20".into()]),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                readiness_probe: Some(Probe {
                    tcp_socket: Some(TCPSocketAction {
                        port: IntOrString::Int(8080),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            conditions: Some(vec![ready]),
            ..Default::default()
        }),
    }
}

/// One hand-made slice of Service `api` listing `(ip, pod uid, ready,
/// serving, terminating)`.
fn manual_slice(
    ns: &str,
    name: &str,
    endpoints: &[(&str, &str, bool, bool, bool)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                "api".to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                "endpoints.kubernetes.io/last-change-trigger-time".to_string(),
                "2026-03-02T09:01:47Z".to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(ip, pod_uid, ready, serving, terminating)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(ApiConditions {
                        ready: Some(*ready),
                        serving: Some(*serving),
                        terminating: Some(*terminating),
                    }),
                    target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                        kind: Some("Pod".into()),
                        uid: Some(pod_uid.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The model agrees with the API: every pod the store holds is present and
/// not removed, terminating exactly when the store says so; every pod the
/// store no longer holds is closed; every address the slices list is current
/// with the listed conditions, and every other address is closed.
fn assert_model_matches_store(model: &ClusterModel, store: &Store) {
    let pods: HashMap<String, Pod> = store
        .list::<Pod>()
        .into_iter()
        .map(|p| (uid(&p), p))
        .collect();
    for (pod_uid, pod) in &pods {
        let record = model
            .pod(pod_uid)
            .unwrap_or_else(|| panic!("pod {pod_uid} missing"));
        assert!(
            record.removal.is_none(),
            "{} is in the API but closed",
            record.name
        );
        assert_eq!(
            record.deletion.is_some(),
            pod.metadata.deletion_timestamp.is_some(),
            "termination of {}",
            record.name
        );
    }
    for record in model.pods() {
        if !pods.contains_key(&record.uid) {
            assert!(
                record.removal.is_some(),
                "{} is gone from the API but open",
                record.name
            );
        }
    }
    let mut listed: HashMap<EndpointKey, EndpointConditions> = HashMap::new();
    for slice in store.list::<EndpointSlice>() {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        let Some(service) = service else { continue };
        for endpoint in slice.endpoints.iter().flatten() {
            let c = endpoint.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            for address in &endpoint.addresses {
                let key = EndpointKey {
                    namespace: slice.metadata.namespace.clone().unwrap_or_default(),
                    service: service.clone(),
                    ip: address.parse().expect("simulator IPs parse"),
                };
                listed.insert(
                    key,
                    EndpointConditions {
                        ready,
                        serving: c.serving.unwrap_or(ready),
                        terminating: c.terminating.unwrap_or(false),
                    },
                );
            }
        }
    }
    for (key, conditions) in &listed {
        let record = model
            .endpoint(key)
            .unwrap_or_else(|| panic!("address {key:?} missing"));
        assert_eq!(
            record.endpoint_removed, None,
            "{key:?} is listed but closed"
        );
        assert_eq!(record.conditions, *conditions, "conditions of {key:?}");
    }
    for record in model.endpoints() {
        if !listed.contains_key(&record.key) {
            assert!(
                record.endpoint_removed.is_some(),
                "{:?} is unlisted but open",
                record.key
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_orders_transitions_and_keeps_reused_ips_apart() {
    let _serial = SERIAL.lock().await;
    let server = server().await;
    let dir = std::env::temp_dir().join(format!("observer-cluster-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig)
        .expect("kubeconfig written");
    let client = connect(&ClientSource::Kubeconfig(kubeconfig))
        .await
        .expect("kubeconfig loads")
        .expect("a client");
    assert!(
        connect(&ClientSource::Disabled)
            .await
            .expect("no error")
            .is_none()
    );

    // New pods start after an old one has released its IP, so the rollout
    // hands old IPs to new pods.
    let cluster = Cluster::start(
        server.store().clone(),
        ClusterConfig {
            namespace: NS.into(),
            start_delay: Duration::from_millis(600),
            // Pods and EndpointSlices arrive on two independent watches, so
            // their relative order is only as good as the gap between the
            // writes. Keep each deletion clear of the EndpointSlice
            // controller's previous (debounced) sync, so the slice write
            // trails the deletion by the full endpoint_delay.
            ready_delay: Duration::from_millis(200),
            endpoint_delay: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .expect("cluster");
    let mut spec = DeploymentSpec::new("web", 5);
    spec.pre_stop = Duration::from_millis(250);
    spec.termination_grace = Duration::from_secs(2);
    cluster.apply_deployment(spec).expect("deployment");
    let handle = watch(client, WatchConfig::default());
    cluster.wait_rollout("web").await.expect("first rollout");
    let old: Vec<String> = cluster.pods("web").iter().map(uid).collect();
    assert_eq!(old.len(), 5);

    cluster.rollout("web").expect("second revision");
    cluster.wait_rollout("web").await.expect("second rollout");
    eventually(
        &handle,
        Duration::from_secs(20),
        "old pods closed in the model",
        |m| {
            old.iter().all(|u| {
                m.pod(u).is_some_and(|p| p.removal.is_some())
                    && !m.endpoints_of_pod(u).is_empty()
                    && m.endpoints_of_pod(u)
                        .iter()
                        .all(|e| e.endpoint_removed.is_some())
            })
        },
    )
    .await;
    {
        let model = handle.model();
        let new: Vec<String> = cluster.pods("web").iter().map(uid).collect();
        for pod_uid in &old {
            let pod = model.pod(pod_uid).expect("kept");
            let deletion = pod.deletion.as_ref().expect("termination seen");
            assert!(!deletion.observed_late, "{}: seen live", pod.name);
            assert_eq!(deletion.deletion_grace_period_seconds, Some(2));
            let endpoints = model.endpoints_of_pod(pod_uid);
            assert_eq!(endpoints.len(), 1, "{}: one address", pod.name);
            let e = endpoints[0];
            let not_ready = e.endpoint_not_ready.expect("not ready seen");
            let removed = e.endpoint_removed.expect("removal seen");
            assert!(
                deletion.deletion_seen < not_ready && not_ready < removed,
                "{}: deletion_seen {:?} endpoint_not_ready {:?} endpoint_removed {:?}",
                pod.name,
                deletion.deletion_seen,
                not_ready,
                removed
            );
            assert!(!e.not_ready_observed_late && !e.removed_while_unwatched);
            assert_eq!(e.ports, [80]);
            assert!(e.last_change_trigger_time.is_some());
            // The conditions as the controller sent them: ready, then
            // terminating while still serving during preStop.
            let states: Vec<EndpointConditions> =
                e.transitions.iter().map(|t| t.conditions).collect();
            let ready = EndpointConditions {
                ready: true,
                serving: true,
                terminating: false,
            };
            let draining = EndpointConditions {
                ready: false,
                serving: true,
                terminating: true,
            };
            let ready_at = states.iter().position(|c| *c == ready).expect("was ready");
            let draining_at = states
                .iter()
                .position(|c| *c == draining)
                .expect("was draining");
            assert!(ready_at < draining_at, "{}: {states:?}", pod.name);
            let draining_since = e.transitions[draining_at].at;
            assert_eq!(draining_since, not_ready);
        }

        // IP reuse: the attribution follows the tenure, not the address.
        let mut reused = 0;
        for pod_uid in &old {
            let pod = model.pod(pod_uid).expect("kept");
            let ip = pod.ips[0];
            let claims = model.ip_claims(ip);
            assert_eq!(claims[0].pod_uid, *pod_uid);
            let deletion_seen = pod.deletion_seen().expect("seen");
            let removal = pod.removal.expect("removed").at;
            assert_eq!(
                model
                    .pod_for_ip_at(ip, deletion_seen)
                    .map(|p| p.uid.as_str()),
                Some(pod_uid.as_str())
            );
            assert_eq!(
                model.pod_for_ip_at(ip, removal).map(|p| p.uid.as_str()),
                Some(pod_uid.as_str())
            );
            if let Some(next) = claims.get(1) {
                reused += 1;
                assert!(new.contains(&next.pod_uid), "the IP went to a new pod");
                assert_eq!(claims[0].valid_until, Some(next.valid_from));
                assert!(next.valid_from >= removal);
                let holder = |t: MonoTime| model.pod_for_ip_at(ip, t).map(|p| p.uid.clone());
                assert_eq!(holder(next.valid_from), Some(next.pod_uid.clone()));
                assert_eq!(
                    holder(MonoTime(next.valid_from.0 - 1)),
                    Some(pod_uid.clone())
                );
                let key = EndpointKey {
                    namespace: NS.into(),
                    service: "web".into(),
                    ip,
                };
                let tenures = model.endpoint_history(&key);
                assert_eq!(tenures.len(), 2, "{ip}: one tenure per pod");
                assert_eq!(tenures[0].pod_uid.as_deref(), Some(pod_uid.as_str()));
                assert_eq!(tenures[1].pod_uid.as_deref(), Some(next.pod_uid.as_str()));
                assert!(
                    tenures[0]
                        .endpoint_removed
                        .is_some_and(|r| r <= tenures[1].first_seen)
                );
                assert_eq!(
                    tenures[1].endpoint_not_ready, None,
                    "the new pod inherits nothing"
                );
                assert!(
                    model
                        .pod(&next.pod_uid)
                        .is_some_and(|p| p.deletion.is_none())
                );
            }
        }
        assert!(reused >= 3, "the rollout reused IPs ({reused} of 5)");
        assert_model_matches_store(&model, server.store());
        let counts = handle.counters().pods.snapshot();
        assert_eq!((counts.lists, counts.restarts), (1, 0));
    }
    drop(cluster);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_stream_refused_reconnect_and_410_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let server = server().await;
    let store = server.store().clone();
    let ns = "faults";
    let created: Vec<Pod> = (1..=4)
        .map(|i| {
            store
                .create(manual_pod(
                    ns,
                    &format!("api-6f7c9d8b4-p{i}"),
                    &format!("10.9.0.{i}"),
                ))
                .expect("pod")
        })
        .collect();
    let uids: Vec<String> = created.iter().map(uid).collect();
    let all_ready: Vec<(String, &str)> = (1..=4)
        .map(|i| format!("10.9.0.{i}"))
        .zip(uids.iter().map(String::as_str))
        .collect();
    let endpoints = |states: &[(bool, bool, bool)]| -> Vec<(String, String, bool, bool, bool)> {
        all_ready
            .iter()
            .zip(states)
            .map(|((ip, u), (r, s, t))| (ip.clone(), u.to_string(), *r, *s, *t))
            .collect()
    };
    let write_slice = |name: &str, eps: Vec<(String, String, bool, bool, bool)>| {
        let refs: Vec<(&str, &str, bool, bool, bool)> = eps
            .iter()
            .map(|(i, u, r, s, t)| (i.as_str(), u.as_str(), *r, *s, *t))
            .collect();
        let slice = manual_slice(ns, name, &refs);
        match store.get::<EndpointSlice>(ns, name) {
            Some(_) => store.update(slice).expect("slice update"),
            None => store.create(slice).expect("slice create"),
        };
    };
    let ready = (true, true, false);
    let draining = (false, true, true);
    write_slice("api-a", endpoints(&[ready, ready, ready, ready]));

    let client = Kube::from_config(server.config().await.expect("config")).expect("client");
    let handle = watch(client, WatchConfig::default());
    eventually(&handle, Duration::from_secs(10), "first sync", |m| {
        m.is_synced() && m.endpoints().count() == 4
    })
    .await;

    // 1. A dropped stream: the watch resumes from its resourceVersion and
    // replays what happened meanwhile as ordinary events.
    server.faults().drop_watches();
    store
        .delete::<Pod>(ns, "api-6f7c9d8b4-p1", None)
        .expect("graceful delete");
    write_slice("api-a", endpoints(&[draining, ready, ready, ready]));
    eventually(&handle, Duration::from_secs(10), "p1 draining", |m| {
        m.pod(&uids[0]).is_some_and(|p| p.deletion.is_some())
            && m.endpoint(&EndpointKey {
                namespace: ns.into(),
                service: "api".into(),
                ip: "10.9.0.1".parse().expect("ip"),
            })
            .is_some_and(|e| e.endpoint_not_ready.is_some())
    })
    .await;
    {
        let model = handle.model();
        let p1 = model.pod(&uids[0]).expect("p1");
        let owner = p1
            .owner
            .as_ref()
            .map(|o| (o.kind.as_str(), o.name.as_str()));
        assert_eq!(owner, Some(("Deployment", "api")));
        assert_eq!(p1.pre_stop_sleep(), Some(Duration::from_secs(20)));
        assert!(
            !p1.deletion.as_ref().is_some_and(|d| d.observed_late),
            "replayed, not relisted"
        );
        assert_model_matches_store(&model, &store);
    }

    // 2. A refused reconnect: the API is unreachable for a while; changes
    // made meanwhile arrive once it is back, from history.
    server
        .faults()
        .refuse_connections(Duration::from_millis(1500));
    // Let the cut reach the open watches before changing anything.
    sleep(Duration::from_millis(200)).await;
    store
        .delete::<Pod>(ns, "api-6f7c9d8b4-p2", None)
        .expect("graceful delete");
    write_slice("api-a", endpoints(&[draining, draining, ready, ready]));
    eventually(
        &handle,
        Duration::from_secs(30),
        "p2 draining after reconnect",
        |m| m.pod(&uids[1]).is_some_and(|p| p.deletion.is_some()),
    )
    .await;
    eventually(&handle, Duration::from_secs(10), "slices caught up", |m| {
        m.endpoint(&EndpointKey {
            namespace: ns.into(),
            service: "api".into(),
            ip: "10.9.0.2".parse().expect("ip"),
        })
        .is_some_and(|e| e.endpoint_not_ready.is_some())
    })
    .await;
    assert!(server.faults().refused_connections() > 0);
    {
        let model = handle.model();
        assert_model_matches_store(&model, &store);
    }
    let errors_before_410 = handle.counters().pods.snapshot().errors;
    assert!(errors_before_410 > 0, "the refusal was seen as errors");
    assert_eq!(
        handle.counters().pods.snapshot().restarts,
        0,
        "resumed without a relist"
    );

    // 3. A forced 410: while unreachable, p1 is removed for good, p3 starts
    // terminating, p4's address moves to another slice and history is
    // compacted, so the watch cannot resume and relists.
    server
        .faults()
        .refuse_connections(Duration::from_millis(1000));
    sleep(Duration::from_millis(200)).await;
    let before_gap = MonoTime::now();
    store
        .delete::<Pod>(ns, "api-6f7c9d8b4-p1", Some(0))
        .expect("final delete");
    store
        .delete::<Pod>(ns, "api-6f7c9d8b4-p3", None)
        .expect("graceful delete");
    write_slice("api-a", {
        let mut eps = endpoints(&[draining, draining, draining, ready]);
        eps.remove(3);
        eps.remove(0);
        eps
    });
    write_slice(
        "api-b",
        endpoints(&[ready, ready, ready, ready]).split_off(3),
    );
    server.compact();
    eventually(&handle, Duration::from_secs(30), "relist after 410", |m| {
        m.pod(&uids[0]).is_some_and(|p| p.removal.is_some())
    })
    .await;
    eventually(&handle, Duration::from_secs(10), "slices relisted", |m| {
        m.endpoint(&EndpointKey {
            namespace: ns.into(),
            service: "api".into(),
            ip: "10.9.0.1".parse().expect("ip"),
        })
        .is_some_and(|e| e.endpoint_removed.is_some())
    })
    .await;
    {
        let model = handle.model();
        let p1 = model.pod(&uids[0]).expect("p1 kept");
        let removal = p1.removal.expect("closed");
        assert!(
            removal.while_unwatched && removal.at > before_gap,
            "{removal:?}"
        );
        assert!(
            p1.deletion.as_ref().is_some_and(|d| !d.observed_late),
            "termination was seen live earlier"
        );
        let p3 = model
            .pod(&uids[2])
            .and_then(|p| p.deletion.clone())
            .expect("p3 terminating");
        assert!(p3.observed_late && p3.deletion_seen > before_gap, "{p3:?}");
        let key = |i: u8| EndpointKey {
            namespace: ns.into(),
            service: "api".into(),
            ip: IpAddr::from([10, 9, 0, i]),
        };
        let e1 = model.endpoint(&key(1)).expect("e1");
        assert!(e1.removed_while_unwatched);
        assert!(
            !e1.not_ready_observed_late,
            "not-ready was seen live before the gap"
        );
        let e3 = model.endpoint(&key(3)).expect("e3");
        assert!(
            e3.not_ready_observed_late && e3.endpoint_not_ready.is_some_and(|t| t > before_gap)
        );
        let e4 = model.endpoint(&key(4)).expect("e4");
        assert_eq!(
            (e4.endpoint_not_ready, e4.endpoint_removed),
            (None, None),
            "moved between slices, not removed"
        );
        assert_eq!(
            model.endpoint_history(&key(4)).len(),
            1,
            "no invented tenure"
        );
        assert_model_matches_store(&model, &store);
    }
    let pods = handle.counters().pods.snapshot();
    let slices = handle.counters().endpoint_slices.snapshot();
    assert!(
        pods.restarts >= 1 && slices.restarts >= 1,
        "{pods:?} {slices:?}"
    );
    assert!(pods.lists >= 2 && slices.lists >= 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_selector_scope_the_watch() {
    let _serial = SERIAL.lock().await;
    let server = server().await;
    let store = server.store().clone();
    store
        .create(manual_pod("a", "api-6f7c9d8b4-x", "10.8.0.1"))
        .expect("pod");
    store
        .create(manual_pod("b", "api-6f7c9d8b4-y", "10.8.0.2"))
        .expect("pod");
    let mut other = manual_pod("a", "batch-z", "10.8.0.3");
    other.metadata.labels = Some(BTreeMap::from([("app".to_string(), "batch".to_string())]));
    store.create(other).expect("pod");
    let client = Kube::from_config(server.config().await.expect("config")).expect("client");
    let handle = watch(
        client,
        WatchConfig {
            namespace: Some("a".into()),
            pod_label_selector: Some("app=api".into()),
            slice_label_selector: None,
            ..WatchConfig::default()
        },
    );
    eventually(
        &handle,
        Duration::from_secs(10),
        "sync",
        ClusterModel::is_synced,
    )
    .await;
    let names: Vec<String> = handle
        .model()
        .pods()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(names, ["a/api-6f7c9d8b4-x"]);
    server.shutdown().await;
}

fn on_node(mut pod: Pod, node: &str) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.into());
    }
    pod
}

/// Watches with `scope` and applies every event to a fresh model; returns
/// the model and the watch's counters.
fn watch_scoped(client: Kube, scope: PodScope) -> (ClusterHandle, std::sync::Arc<WatchCounters>) {
    use futures::StreamExt as _;
    let handle = ClusterHandle::default();
    let counters = std::sync::Arc::new(WatchCounters::default());
    let config = WatchConfig {
        pod_scope: scope,
        ..WatchConfig::default()
    };
    let mut events = Box::pin(stamped_events(&client, &config, counters.clone()));
    let applying = handle.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            applying.apply(event);
        }
    });
    (handle, counters)
}

fn pod_names(handle: &ClusterHandle) -> Vec<String> {
    let mut names: Vec<String> = handle.model().pods().map(|p| p.name.clone()).collect();
    names.sort();
    names
}

/// An agent on a node without an ingress watches its own node's pods
/// only (the API server sends it nothing about other nodes' pods), while
/// the EndpointSlices stay cluster-wide. On the node where an ingress pod
/// shows up, the watch widens to every pod: the ingress's upstreams are
/// on other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_scoped_watch_sees_its_node_and_widens_for_an_ingress() {
    let _serial = SERIAL.lock().await;
    let server = server().await;
    let store = server.store().clone();
    store
        .create(on_node(
            manual_pod("a", "api-6f7c9d8b4-x", "10.8.0.1"),
            "node-a",
        ))
        .expect("pod");
    store
        .create(on_node(
            manual_pod("a", "api-6f7c9d8b4-y", "10.8.0.2"),
            "node-b",
        ))
        .expect("pod");
    // Service `api` lists both pods; each endpoint names its node.
    let mut slice = manual_slice(
        "a",
        "api-1",
        &[
            ("10.8.0.1", "uid-x", true, true, false),
            ("10.8.0.2", "uid-y", true, true, false),
        ],
    );
    for (endpoint, node) in slice
        .endpoints
        .iter_mut()
        .flatten()
        .zip(["node-a", "node-b"])
    {
        endpoint.node_name = Some(node.into());
    }
    store.create(slice).expect("slice");
    let client = Kube::from_config(server.config().await.expect("config")).expect("client");
    let ingress = LabelSelector::parse("app.kubernetes.io/name=ingress-nginx").expect("selector");
    let (node_a, counters_a) = watch_scoped(
        client.clone(),
        PodScope::NodeUntilIngress {
            node: "node-a".into(),
            ingress_selectors: vec![ingress.clone()],
        },
    );
    let (node_b, counters_b) = watch_scoped(client, PodScope::Node("node-b".into()));
    for handle in [&node_a, &node_b] {
        eventually(
            handle,
            Duration::from_secs(10),
            "sync",
            ClusterModel::is_synced,
        )
        .await;
    }
    assert_eq!(pod_names(&node_a), ["api-6f7c9d8b4-x"]);
    assert_eq!(pod_names(&node_b), ["api-6f7c9d8b4-y"]);
    // Each keeps its own node's endpoint whole, and of the other only the
    // Service that lists it, which names it as a sender.
    let now = MonoTime::now();
    for (handle, own, other) in [
        (&node_a, "10.8.0.1", "10.8.0.2"),
        (&node_b, "10.8.0.2", "10.8.0.1"),
    ] {
        let model = handle.model();
        let records: Vec<String> = model.endpoints().map(|e| e.key.ip.to_string()).collect();
        assert_eq!(records, [own]);
        let other: IpAddr = other.parse().unwrap();
        assert_eq!(model.service_of_ip_at(other, now), Some(("a", "api")));
        assert_eq!(model.endpoints_on_ip(other).count(), 0);
    }
    assert_eq!(counters_a.pod_scope.get(), ScopeNow::Node);
    let watches = server.requests().watches_by_scope();
    let pods_by = |scope| {
        watches
            .get(&("pods".to_owned(), scope))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(pods_by(RequestScope::Cluster), 0, "{watches:?}");
    assert_eq!(pods_by(RequestScope::Node), 2, "{watches:?}");
    assert_eq!(
        watches.get(&("endpointslices".to_owned(), RequestScope::Cluster)),
        Some(&2),
        "EndpointSlices stay cluster-wide: {watches:?}"
    );

    // A pod on node-b changes: node-a's watch is not told.
    let events_a = counters_a.pods.snapshot().events;
    let mut later = on_node(manual_pod("a", "api-6f7c9d8b4-z", "10.8.0.3"), "node-b");
    later.metadata.labels = Some(BTreeMap::from([("app".to_string(), "api".to_string())]));
    store.create(later).expect("pod");
    eventually(&node_b, Duration::from_secs(10), "node-b's new pod", |m| {
        m.pods().count() == 2
    })
    .await;
    assert_eq!(counters_a.pods.snapshot().events, events_a);

    // An ingress pod lands on node-a: its agent widens, node-b's does not.
    let mut controller = on_node(
        manual_pod("ingress-nginx", "ingress-nginx-controller-1", "10.8.0.9"),
        "node-a",
    );
    controller.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        "ingress-nginx".to_string(),
    )]));
    store.create(controller.clone()).expect("pod");
    eventually(&node_a, Duration::from_secs(10), "every pod", |m| {
        m.is_synced() && m.pods().count() == 4
    })
    .await;
    assert_eq!(counters_a.pod_scope.get(), ScopeNow::Cluster);
    assert_eq!(counters_b.pod_scope.get(), ScopeNow::Node);
    // The slice watch widened with it: a relist gave every endpoint whole.
    eventually(&node_a, Duration::from_secs(10), "every endpoint", |m| {
        m.endpoints().count() == 2
    })
    .await;
    assert_eq!(counters_a.endpoint_slices.snapshot().lists, 2);
    let mut on_b = controller;
    on_b.metadata.name = Some("ingress-nginx-controller-2".into());
    on_b.metadata.uid = None;
    store.create(on_node(on_b, "node-b")).expect("pod");
    eventually(&node_b, Duration::from_secs(10), "node-b's ingress", |m| {
        m.pods().count() == 3
    })
    .await;
    assert_eq!(
        counters_b.pod_scope.get(),
        ScopeNow::Node,
        "a node scope given outright never widens"
    );
    let watches = server.requests().watches_by_scope();
    assert_eq!(
        watches.get(&("pods".to_owned(), RequestScope::Cluster)),
        Some(&1),
        "{watches:?}"
    );
    assert_eq!(node_b.model().endpoints().count(), 1);
    server.shutdown().await;
}

/// Current resident set size of this process, from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// The bound the docs state: the model of 10 000 pods stays under 12 MiB.
const MODEL_BOUND_10K: usize = 12 << 20;
/// Process growth while listing and watching them (decode buffers and
/// allocator slack included, the simulator's store excluded).
const RSS_BOUND_10K: u64 = 96 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pods_list_and_watch_within_the_memory_bound() {
    let _serial = SERIAL.lock().await;
    let server = server().await;
    let store = server.store().clone();
    for i in 0..10_000u32 {
        let ip = format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
        store
            .create(manual_pod("scale", &format!("api-6f7c9d8b4-{i:05}"), &ip))
            .expect("pod");
    }
    let client = Kube::from_config(server.config().await.expect("config")).expect("client");
    let rss_before = rss_bytes();
    let started = Instant::now();
    let handle = watch(client, WatchConfig::default());
    eventually(
        &handle,
        Duration::from_secs(120),
        "10 000 pods listed",
        |m| m.is_synced() && m.stats().pods == 10_000,
    )
    .await;
    let listed_in = started.elapsed();
    // Watch after the list: 500 pods start terminating.
    for i in 0..500u32 {
        store
            .delete::<Pod>("scale", &format!("api-6f7c9d8b4-{i:05}"), None)
            .expect("delete");
    }
    eventually(
        &handle,
        Duration::from_secs(60),
        "500 terminations watched",
        |m| m.pods().filter(|p| p.deletion.is_some()).count() == 500,
    )
    .await;
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    let stats = handle.model().stats();
    eprintln!(
        "10 000 pods: listed in {listed_in:?}; model estimate {} bytes ({} per pod); RSS growth {} bytes",
        stats.estimated_heap_bytes,
        stats.estimated_heap_bytes / 10_000,
        rss_growth
    );
    assert!(stats.estimated_heap_bytes < MODEL_BOUND_10K, "{stats:?}");
    assert!(rss_growth < RSS_BOUND_10K, "RSS grew by {rss_growth} bytes");
    assert_eq!(
        handle
            .model()
            .pods()
            .filter(|p| p.deletion.as_ref().is_some_and(|d| d.observed_late))
            .count(),
        0
    );
    server.shutdown().await;
}
