//! Rolling updates of the scripted cluster, observed through the real
//! kube-rs watcher against the simulator, ordered by the global
//! resourceVersion.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::{sleep, timeout};

use super::{Cluster, ClusterConfig, DeploymentSpec, LifecycleEvent, SimServer};

const NS: &str = "shop";

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let ok = timeout(Duration::from_secs(10), async {
        while !check() {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for: {what}");
}

/// One endpoint as a slice advertised it.
#[derive(Debug, Clone)]
struct Ep {
    pod: String,
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// What the kube-rs watchers saw, keyed by the global resourceVersion so
/// pod and slice changes order against each other.
#[derive(Default)]
struct Seen {
    pods: Vec<(u64, Pod, bool)>,
    slices: Vec<(u64, EndpointSlice, Vec<Ep>)>,
}

fn rv_of(m: &ObjectMeta) -> u64 {
    m.resource_version.as_deref().unwrap().parse().unwrap()
}

fn record(client: kube::Client, ns: &str) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let pods = watcher(
        Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    )
    .default_backoff();
    tokio::spawn(pods.for_each(move |ev| {
        let mut g = s1.lock().unwrap();
        match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                g.pods.push((rv_of(&p.metadata), p, false))
            }
            Ok(watcher::Event::Delete(p)) => g.pods.push((rv_of(&p.metadata), p, true)),
            _ => {}
        }
        async {}
    }));
    let slices = watcher(
        Api::<EndpointSlice>::namespaced(client, ns),
        watcher::Config::default(),
    )
    .default_backoff();
    tokio::spawn(slices.for_each(move |ev| {
        if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = ev {
            let eps = s
                .endpoints
                .iter()
                .flatten()
                .map(|e| {
                    let c = e.conditions.clone().unwrap();
                    Ep {
                        pod: e.target_ref.as_ref().unwrap().name.clone().unwrap(),
                        ip: e.addresses[0].clone(),
                        ready: c.ready.unwrap(),
                        serving: c.serving.unwrap(),
                        terminating: c.terminating.unwrap(),
                    }
                })
                .collect();
            s2.lock().unwrap().slices.push((rv_of(&s.metadata), s, eps));
        }
        async {}
    }));
    seen
}

struct Rollout {
    old: Vec<(String, String)>,
    new: Vec<(String, String)>,
    seen: Seen,
    events: Vec<LifecycleEvent>,
}

async fn rolling_update(pod_cidr: &str, ip_reuse: bool) -> Rollout {
    let server = SimServer::start().await.unwrap();
    let cluster = Cluster::start(
        server.store().clone(),
        ClusterConfig {
            namespace: NS.into(),
            pod_cidr: pod_cidr.into(),
            ip_reuse,
            endpoint_delay: Duration::from_millis(30),
            start_delay: Duration::from_millis(150),
            ready_delay: Duration::from_millis(30),
            ..Default::default()
        },
    )
    .unwrap();
    let seen = record(server.client().await.unwrap(), NS);
    let mut spec = DeploymentSpec::new("web", 5);
    spec.pre_stop = Duration::from_millis(300);
    spec.termination_grace = Duration::from_secs(2);
    cluster.apply_deployment(spec).unwrap();
    timeout(Duration::from_secs(20), cluster.wait_rollout("web"))
        .await
        .unwrap()
        .unwrap();
    let ip = |p: &Pod| p.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let named = |pods: Vec<Pod>| -> Vec<(String, String)> {
        pods.iter()
            .map(|p| (p.metadata.name.clone().unwrap(), ip(p)))
            .collect()
    };
    let old = named(cluster.pods("web"));
    let mut events = cluster.events();
    cluster.rollout("web").unwrap();
    timeout(Duration::from_secs(30), cluster.wait_rollout("web"))
        .await
        .unwrap()
        .unwrap();
    let new = named(cluster.pods("web"));
    let new_names: BTreeSet<_> = new.iter().map(|(n, _)| n.clone()).collect();
    eventually("watchers saw the final slice", || {
        let g = seen.lock().unwrap();
        g.slices.last().is_some_and(|(_, _, eps)| {
            eps.len() == 5 && eps.iter().all(|e| e.ready && new_names.contains(&e.pod))
        })
    })
    .await;
    let mut evs = Vec::new();
    while let Ok(e) = events.try_recv() {
        evs.push(e);
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    Rollout {
        old,
        new,
        seen,
        events: evs,
    }
}

fn check_termination_order(r: &Rollout) {
    assert_eq!((r.old.len(), r.new.len()), (5, 5));
    for (name, ip) in &r.old {
        let pod_rvs = |f: &dyn Fn(&Pod, bool) -> bool| -> Option<u64> {
            r.seen
                .pods
                .iter()
                .find(|(_, p, del)| p.metadata.name.as_ref() == Some(name) && f(p, *del))
                .map(|(rv, _, _)| *rv)
        };
        let marked = pod_rvs(&|p, del| !del && p.metadata.deletion_timestamp.is_some())
            .expect("deletionTimestamp seen");
        let deleted = pod_rvs(&|_, del| del).expect("DELETED seen");
        let ep_state = |f: &dyn Fn(Option<&Ep>) -> bool| -> Option<u64> {
            r.seen
                .slices
                .iter()
                .filter(|(rv, _, _)| *rv > marked)
                .find(|(_, _, eps)| f(eps.iter().find(|e| &e.pod == name)))
                .map(|(rv, _, _)| *rv)
        };
        let not_ready = ep_state(&|e| e.is_some_and(|e| !e.ready && e.terminating && &e.ip == ip))
            .expect("terminating endpoint");
        let removed = ep_state(&|e| e.is_none()).expect("endpoint removed");
        assert!(
            marked < not_ready && not_ready < deleted && deleted < removed,
            "{name}: {marked} {not_ready} {deleted} {removed}"
        );
        // During preStop the pod still serves.
        assert!(r.seen.slices.iter().any(|(_, _, eps)| {
            eps.iter()
                .any(|e| &e.pod == name && e.serving && e.terminating)
        }));
        let order: Vec<&str> = r
            .events
            .iter()
            .filter_map(|e| {
                use LifecycleEvent::*;
                match e {
                    PodTerminating { name: n, .. } if n == name => Some("terminating"),
                    PodSigterm { name: n, .. } if n == name => Some("sigterm"),
                    PodKilled { name: n, .. } if n == name => Some("killed"),
                    PodDeleted { name: n, .. } if n == name => Some("deleted"),
                    _ => None,
                }
            })
            .collect();
        assert_eq!(order, ["terminating", "sigterm", "killed", "deleted"]);
    }
    let (_, slice, _) = r.seen.slices.last().unwrap();
    let labels = slice.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "web");
    assert!(
        slice
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key("endpoints.kubernetes.io/last-change-trigger-time")
    );
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(80));
}

#[tokio::test]
async fn rolling_update_terminates_old_pods_in_order_with_ip_reuse() {
    let r = rolling_update("10.244.1.0/24", true).await;
    check_termination_order(&r);
    assert_eq!(r.seen.slices.last().unwrap().1.address_type, "IPv4");
    let old_ips: BTreeSet<_> = r.old.iter().map(|(_, ip)| ip.clone()).collect();
    let reused: Vec<_> = r
        .new
        .iter()
        .filter(|(_, ip)| old_ips.contains(ip))
        .collect();
    assert!(
        !reused.is_empty(),
        "no IP handed on: old {:?} new {:?}",
        r.old,
        r.new
    );
    // A reused IP was only handed on after its old pod was gone from the API.
    for (new_name, ip) in reused {
        let (old_name, _) = r.old.iter().find(|(_, i)| i == ip).unwrap();
        let gone = r
            .seen
            .pods
            .iter()
            .find(|(_, p, del)| *del && p.metadata.name.as_ref() == Some(old_name))
            .unwrap()
            .0;
        let got_ip = r
            .seen
            .pods
            .iter()
            .find(|(_, p, _)| {
                p.metadata.name.as_ref() == Some(new_name)
                    && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()) == Some(ip)
            })
            .unwrap()
            .0;
        assert!(gone < got_ip);
    }
}

#[tokio::test]
async fn rolling_update_without_reuse_on_ipv6() {
    let r = rolling_update("fd00:10:244::/120", false).await;
    check_termination_order(&r);
    assert_eq!(r.seen.slices.last().unwrap().1.address_type, "IPv6");
    let old_ips: BTreeSet<_> = r.old.iter().map(|(_, ip)| ip.clone()).collect();
    assert!(
        r.new
            .iter()
            .all(|(_, ip)| !old_ips.contains(ip) && ip.starts_with("fd00:10:244::"))
    );
}
