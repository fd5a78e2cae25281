//! A node agent reads other nodes' endpoint changes in gathered batches,
//! and its own pods' as they come, against the API simulator over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use observer::clock::MonoTime;
use observer::cluster::{PodScope, ResourceEvent, StampedEvent, WatchConfig, WatchCounters};
use observer_sim::{SimConfig, SimServer, Store};
use tokio::sync::mpsc;

/// A ready pod of Service `web` on `node`.
fn pod(name: &str, node: &str, ip: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn endpoint(ip: &str, uid: &str, node: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        node_name: Some(node.into()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

type Events = mpsc::UnboundedReceiver<StampedEvent>;

/// The next event the stream delivered.
async fn next(events: &mut Events, what: &str) -> StampedEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"))
        .expect("the stream does not end")
}

/// The next EndpointSlice change delivered, skipping Pod events.
async fn next_slice_change(events: &mut Events) -> MonoTime {
    loop {
        let event = next(events, "a slice change").await;
        if let ResourceEvent::EndpointSlice(change) = &event.event
            && matches!(**change, Event::Apply(_))
        {
            return event.at;
        }
    }
}

/// Flips endpoint `index`'s readiness `times` times, `every` apart, and
/// returns the moments the stream delivered the changes.
async fn flip(
    store: &Store,
    slice: &mut EndpointSlice,
    index: usize,
    times: usize,
    every: Duration,
    events: &mut Events,
) -> Vec<MonoTime> {
    for _ in 0..times {
        let endpoints = slice.endpoints.as_mut().expect("endpoints");
        let conditions = endpoints[index].conditions.as_mut().expect("conditions");
        conditions.ready = Some(!conditions.ready.unwrap_or(true));
        *slice = store.update(slice.clone()).expect("slice update");
        tokio::time::sleep(every).await;
    }
    let mut delivered = Vec::new();
    for _ in 0..times {
        delivered.push(next_slice_change(events).await);
    }
    delivered
}

/// How many separate reads delivered these changes: changes delivered
/// within 3 ms of each other came in one read.
fn reads(delivered: &[MonoTime]) -> usize {
    1 + delivered
        .windows(2)
        .filter(|pair| pair[1].saturating_since(pair[0]) > Duration::from_millis(3))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_agent_gathers_other_nodes_endpoint_changes_and_reads_its_own_at_once() {
    let server = SimServer::start_with(SimConfig {
        bookmark_interval: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let store = server.store().clone();
    let own = store
        .create(pod("web-a", "node-a", "10.9.0.1"))
        .expect("pod");
    let other = store
        .create(pod("web-b", "node-b", "10.9.0.2"))
        .expect("pod");
    let uid = |p: &Pod| p.metadata.uid.clone().expect("uid");
    let mut slice = store
        .create(EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_string(),
                    "web".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(vec![
                endpoint("10.9.0.1", &uid(&own), "node-a"),
                endpoint("10.9.0.2", &uid(&other), "node-b"),
            ]),
            ports: None,
        })
        .expect("slice");
    let client = observer::cluster::Kube::from_config(server.config().await.expect("config"))
        .expect("client");
    let config = WatchConfig {
        pod_scope: PodScope::Node("node-a".into()),
        ..WatchConfig::default()
    };
    let counters = Arc::new(WatchCounters::default());
    // The stream is read on a task of its own, as in the agent: each
    // event is dated when the stream yields it.
    let stream = observer::cluster::stamped_events(&client, &config, counters.clone());
    let (tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    // Both lists first.
    let mut listed = 0;
    while listed < 2 {
        let event = next(&mut events, "the lists").await;
        let done = match &event.event {
            ResourceEvent::Pod(e) => matches!(**e, Event::InitDone),
            ResourceEvent::EndpointSlice(e) => matches!(**e, Event::InitDone),
            ResourceEvent::SliceScope(_) => false,
        };
        listed += usize::from(done);
    }

    // node-b's endpoint changes ten times in 100 ms: node-a's agent reads
    // them together, not one by one.
    let delivered = flip(
        &store,
        &mut slice,
        1,
        10,
        Duration::from_millis(10),
        &mut events,
    )
    .await;
    let gathered = reads(&delivered);
    // They gathered in the kernel, not in the agent: the socket was out of
    // the poll set, where arrivals wake nothing.
    let parks = counters.slice_socket_parks.load(Ordering::Relaxed);
    assert!(
        parks >= 1,
        "the slice watch's socket never left the poll set"
    );
    assert!(
        gathered <= 4,
        "another node's changes came in {gathered} reads: {delivered:?}"
    );

    // node-a's own pod starts terminating: from the Pod watch's word on,
    // changes are read as they come, each dated on arrival.
    store
        .delete::<Pod>("shop", "web-a", Some(30))
        .expect("graceful delete");
    loop {
        let event = next(&mut events, "the deletion").await;
        if let ResourceEvent::Pod(e) = &event.event
            && let Event::Apply(pod) = &**e
            && pod.metadata.deletion_timestamp.is_some()
        {
            break;
        }
    }
    let delivered = flip(
        &store,
        &mut slice,
        0,
        10,
        Duration::from_millis(40),
        &mut events,
    )
    .await;
    let prompt = reads(&delivered);
    assert!(
        prompt >= 7,
        "this node's terminating pod's changes came in only {prompt} reads: {delivered:?}"
    );

    // The pod is gone, then its endpoint: once the slice no longer owes
    // this node a change, other nodes' changes gather again, well before
    // the linger's bound.
    store
        .delete::<Pod>("shop", "web-a", Some(0))
        .expect("the pod is gone");
    let endpoints = slice.endpoints.as_mut().expect("endpoints");
    endpoints.remove(0);
    slice = store.update(slice.clone()).expect("the endpoint's removal");
    let removal = next_slice_change(&mut events).await;
    let delivered = flip(
        &store,
        &mut slice,
        0,
        10,
        Duration::from_millis(10),
        &mut events,
    )
    .await;
    let after_removal = reads(&delivered);
    assert!(
        after_removal <= 4,
        "after this node's endpoint was removed, another node's changes still came in \
         {after_removal} reads: {delivered:?}"
    );
    let last = delivered.last().expect("ten changes");
    assert!(
        last.saturating_since(removal) < observer::cluster::slice_pace::PROMPT_LINGER,
        "gathering again only {:?} after the removal",
        last.saturating_since(removal)
    );
}
