//! The API simulator against the real kube-rs client: list/watch semantics,
//! faults, the request log, and scripted rolling updates.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use observer_sim::{SimConfig, SimServer, Store};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout};

const NS: &str = "shop";

fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-a".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn fast_server() -> SimServer {
    SimServer::start_with(SimConfig {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A GET over a bare socket, to see the bytes the server sends.
async fn raw_get(server: &SimServer, path_and_query: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let req = format!("GET {path_and_query} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

fn names(pods: impl IntoIterator<Item = Pod>) -> Vec<String> {
    pods.into_iter().map(|p| p.metadata.name.unwrap()).collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let ok = timeout(Duration::from_secs(10), async {
        while !check() {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for: {what}");
}

/// Runs a reflector over pods in NS and returns its reader; errors are
/// retried with backoff, as an agent would.
fn reflect(client: kube::Client) -> reflector::Store<Pod> {
    let (reader, writer) = reflector::store();
    let api: Api<Pod> = Api::namespaced(client, NS);
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(stream.for_each(|_| async {}));
    reader
}

fn reflected_names(r: &reflector::Store<Pod>) -> BTreeSet<String> {
    r.state()
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

fn stored_names(s: &Store) -> BTreeSet<String> {
    s.list::<Pod>()
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

#[tokio::test]
async fn list_paginates_like_an_api_server() {
    let server = SimServer::start().await.unwrap();
    for i in 0..7 {
        server
            .store()
            .create(pod(&format!("p{i}"), &[("app", "web")]))
            .unwrap();
    }
    let api: Api<Pod> = Api::namespaced(server.client().await.unwrap(), NS);
    let first = api.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(names(first.items), ["p0", "p1", "p2"]);
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let token = first.metadata.continue_.clone().unwrap();
    // Writes between pages do not show: the pages are one consistent snapshot.
    server.store().create(pod("p3a", &[])).unwrap();
    let second = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(second.items), ["p3", "p4", "p5"]);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    let third = api
        .list(
            &ListParams::default()
                .limit(3)
                .continue_token(&second.metadata.continue_.unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(third.items), ["p6"]);
    assert!(third.metadata.continue_.is_none());

    let log = server.requests().for_path("/api/v1/namespaces/shop/pods");
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].param("limit").as_deref(), Some("3"));
    assert_eq!(log[1].param("continue"), Some(token));
    assert!(
        log.iter()
            .all(|r| r.status == 200 && !r.watch && r.method == "GET")
    );
}

#[tokio::test]
async fn served_json_matches_the_wire_format() {
    let server = SimServer::start().await.unwrap();
    let created = server.store().create(pod("a", &[("app", "web")])).unwrap();
    let (status, list) = raw_get(&server, "/api/v1/pods").await;
    assert_eq!(status, 200);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        created.metadata.resource_version.clone().unwrap()
    );
    // Typed lists carry no per-item kind/apiVersion on a real server.
    assert!(list["items"][0].get("kind").is_none());

    let (status, one) = raw_get(&server, "/api/v1/namespaces/shop/pods/a").await;
    assert_eq!(status, 200);
    assert_eq!(one["kind"], "Pod");
    let typed: Pod = serde_json::from_value(one.clone()).unwrap();
    // Re-encoding gives back the same JSON: k8s-openapi knew every field.
    assert_eq!(serde_json::to_value(&typed).unwrap(), one);
    assert_eq!(typed, created);

    let (status, missing) = raw_get(&server, "/api/v1/namespaces/shop/pods/nope").await;
    assert_eq!(status, 404);
    assert_eq!(missing["kind"], "Status");
    assert_eq!(missing["reason"], "NotFound");
    let (status, _) = raw_get(&server, "/apis/discovery.k8s.io/v1/endpointslices").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn raw_watch_sees_added_modified_deleted_in_order() {
    let server = SimServer::start().await.unwrap();
    let api: Api<Pod> = Api::namespaced(server.client().await.unwrap(), NS);
    let start = server.store().resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default().disable_bookmarks(), &start)
        .await
        .unwrap()
        .boxed();
    let store = server.store().clone();
    let mut p = store.create(pod("a", &[])).unwrap();
    p.spec.as_mut().unwrap().hostname = Some("h".into());
    store.update(p).unwrap();
    let _: Pod = store.delete(NS, "a", Some(30)).unwrap();
    let _: Pod = store.delete(NS, "a", Some(0)).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ev = timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(match ev {
            WatchEvent::Added(p) => ("ADDED", p.metadata.deletion_timestamp.is_some()),
            WatchEvent::Modified(p) => ("MODIFIED", p.metadata.deletion_timestamp.is_some()),
            WatchEvent::Deleted(p) => ("DELETED", p.metadata.deletion_timestamp.is_some()),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(
        seen,
        [
            ("ADDED", false),
            ("MODIFIED", false),
            ("MODIFIED", true),
            ("DELETED", true)
        ]
    );
}

#[tokio::test]
async fn watcher_applies_changes_in_order() {
    let server = SimServer::start().await.unwrap();
    let api: Api<Pod> = Api::namespaced(server.client().await.unwrap(), NS);
    let mut events = watcher(api, watcher::Config::default()).boxed();
    // Init, InitDone from the empty initial list.
    assert!(matches!(
        timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        watcher::Event::InitDone
    ));
    let store = server.store().clone();
    store.create(pod("a", &[])).unwrap();
    let _: Pod = store.delete(NS, "a", Some(5)).unwrap();
    let _: Pod = store.delete(NS, "a", Some(0)).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Apply(p) => {
                seen.push(("apply", p.metadata.deletion_timestamp.is_some()))
            }
            watcher::Event::Delete(p) => {
                seen.push(("delete", p.metadata.deletion_timestamp.is_some()))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [("apply", false), ("apply", true), ("delete", true)]);
}

#[tokio::test]
async fn bookmarks_only_when_requested() {
    let server = fast_server().await;
    let api: Api<Pod> = Api::namespaced(server.client().await.unwrap(), NS);
    // Writes elsewhere move the global resourceVersion; a bookmark carries it
    // to a watch whose selector saw none of them.
    server
        .store()
        .create(Pod {
            metadata: ObjectMeta {
                namespace: Some("other".into()),
                ..pod("x", &[]).metadata
            },
            ..pod("x", &[])
        })
        .unwrap();
    let rv = server.store().resource_version();
    let mut with = api
        .watch(&WatchParams::default().timeout(2), "1")
        .await
        .unwrap()
        .boxed();
    let ev = timeout(Duration::from_secs(2), with.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv.to_string()),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    let mut without = api
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "1")
        .await
        .unwrap()
        .boxed();
    // timeoutSeconds ends the stream cleanly, with no event in between.
    let end = timeout(Duration::from_secs(3), without.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none(), "got {end:?}");
    let log = server.requests().records();
    assert!(
        log.iter()
            .any(|r| r.watch && r.param("allowWatchBookmarks").as_deref() == Some("true"))
    );
}

#[tokio::test]
async fn dropped_watch_resumes_without_losing_events() {
    let server = fast_server().await;
    let reader = reflect(server.client().await.unwrap());
    let store = server.store().clone();
    store.create(pod("a", &[])).unwrap();
    eventually("initial pod reflected", || {
        reflected_names(&reader).contains("a")
    })
    .await;
    let watch_count = || {
        server
            .requests()
            .records()
            .iter()
            .filter(|r| r.watch && r.status == 200)
            .count()
    };
    for round in 0..3 {
        let before = watch_count();
        server.faults().drop_watches();
        // Written while no watch is open: only a resume from the last seen
        // resourceVersion can deliver these.
        store.create(pod(&format!("b{round}"), &[])).unwrap();
        let victim = if round == 0 {
            "a".to_string()
        } else {
            format!("b{}", round - 1)
        };
        let _: Pod = store.delete(NS, &victim, Some(0)).unwrap();
        eventually("watch reopened", || watch_count() > before).await;
    }
    eventually("reflector converges", || {
        reflected_names(&reader) == stored_names(&store)
    })
    .await;
    let pods = server.requests().for_path("/api/v1/namespaces/shop/pods");
    // Resumed by watching from the last resourceVersion, never by relisting.
    assert_eq!(pods.iter().filter(|r| !r.watch).count(), 1);
    let watches: Vec<_> = pods.iter().filter(|r| r.watch).collect();
    assert!(watches.len() >= 4, "{watches:?}");
    assert_eq!(reflected_names(&reader), BTreeSet::from(["b2".to_string()]));
    assert!(
        watches
            .iter()
            .all(|r| r.param("resourceVersion").is_some_and(|v| v != "0"))
    );
}

#[tokio::test]
async fn gone_watch_relists_and_converges() {
    let server = fast_server().await;
    let reader = reflect(server.client().await.unwrap());
    let store = server.store().clone();
    store.create(pod("a", &[])).unwrap();
    store.create(pod("b", &[])).unwrap();
    eventually("initial pods reflected", || {
        reflected_names(&reader).len() == 2
    })
    .await;
    server
        .faults()
        .refuse_connections(Duration::from_millis(500));
    let _: Pod = store.delete(NS, "a", Some(0)).unwrap();
    store.create(pod("c", &[])).unwrap();
    let compacted = server.compact();
    eventually("reflector converges after 410", || {
        reflected_names(&reader) == stored_names(&store)
    })
    .await;
    assert_eq!(
        reflected_names(&reader),
        BTreeSet::from(["b".to_string(), "c".to_string()])
    );
    let pods = server.requests().for_path("/api/v1/namespaces/shop/pods");
    let stale = pods
        .iter()
        .position(|r| {
            r.watch
                && r.param("resourceVersion")
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v < compacted)
        })
        .expect("a watch from before the compaction");
    assert!(
        pods[stale + 1..].iter().any(|r| !r.watch),
        "relisted after 410: {pods:?}"
    );
    assert!(server.faults().refused_connections() > 0);
}

#[tokio::test]
async fn refused_connections_fail_then_recover() {
    let server = SimServer::start().await.unwrap();
    server.store().create(pod("a", &[])).unwrap();
    let api: Api<Pod> = Api::namespaced(server.client().await.unwrap(), NS);
    server
        .faults()
        .refuse_connections(Duration::from_millis(400));
    assert!(api.list(&ListParams::default()).await.is_err());
    sleep(Duration::from_millis(500)).await;
    assert_eq!(
        names(api.list(&ListParams::default()).await.unwrap().items),
        ["a"]
    );
    assert!(server.faults().refused_connections() >= 1);
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let server = SimServer::start().await.unwrap();
    let store = server.store().clone();
    store
        .create(pod("web", &[("app", "web"), ("tier", "front")]))
        .unwrap();
    store
        .create(pod("api", &[("app", "api"), ("tier", "back")]))
        .unwrap();
    store.create(pod("db", &[("app", "db")])).unwrap();
    let api: Api<Pod> = Api::namespaced(server.client().await.unwrap(), NS);
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(
        names(api.list(&sel("app=web")).await.unwrap().items),
        ["web"]
    );
    assert_eq!(
        names(api.list(&sel("app!=web")).await.unwrap().items),
        ["api", "db"]
    );
    assert_eq!(
        names(api.list(&sel("tier in (front,back)")).await.unwrap().items),
        ["api", "web"]
    );
    assert_eq!(
        names(api.list(&sel("tier notin (front)")).await.unwrap().items),
        ["api", "db"]
    );
    assert_eq!(
        names(api.list(&sel("tier")).await.unwrap().items),
        ["api", "web"]
    );
    assert_eq!(names(api.list(&sel("!tier")).await.unwrap().items), ["db"]);
    let by_field = ListParams::default().fields("metadata.name=db,spec.nodeName=node-a");
    assert_eq!(names(api.list(&by_field).await.unwrap().items), ["db"]);
    assert!(api.list(&sel("tier in front")).await.is_err());

    // Moving into and out of a selector reads as ADDED and DELETED.
    let rv = store.resource_version().to_string();
    let mut w = api
        .watch(
            &WatchParams::default().labels("app=web").disable_bookmarks(),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    let mut db = store.get::<Pod>(NS, "db").unwrap();
    db.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app".into(), "web".into());
    let db = store.update(db).unwrap();
    let mut web = store.get::<Pod>(NS, "web").unwrap();
    web.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app".into(), "old".into());
    store.update(web).unwrap();
    store.create(pod("other", &[("app", "api")])).unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        match timeout(Duration::from_secs(5), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(p) => got.push(("ADDED", p.metadata.name.unwrap())),
            WatchEvent::Deleted(p) => got.push(("DELETED", p.metadata.name.unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got,
        [("ADDED", "db".to_string()), ("DELETED", "web".to_string())]
    );
    assert!(db.metadata.resource_version.is_some());
}

#[tokio::test]
async fn exact_list_of_a_compacted_version_is_gone() {
    let server = SimServer::start().await.unwrap();
    server.store().create(pod("a", &[])).unwrap();
    let old = server.store().resource_version();
    server.store().create(pod("b", &[])).unwrap();
    let (status, body) = raw_get(
        &server,
        &format!("/api/v1/pods?resourceVersion={old}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    server.compact();
    let (status, body) = raw_get(
        &server,
        &format!("/api/v1/pods?resourceVersion={old}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (410, Some("Expired")));
    // NotOlderThan is served from the newest state, whatever was compacted.
    let (status, body) = raw_get(
        &server,
        &format!("/api/v1/pods?resourceVersion={old}&resourceVersionMatch=NotOlderThan"),
    )
    .await;
    assert_eq!((status, body["items"].as_array().unwrap().len()), (200, 2));
    // A watch from before the compaction opens, then says 410 Gone.
    let api: Api<Pod> = Api::all(server.client().await.unwrap());
    let mut w = api
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .unwrap()
        .boxed();
    match timeout(Duration::from_secs(5), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn kubeconfig_file_reaches_the_server() {
    let server = SimServer::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("sim-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config");
    server.write_kubeconfig(&path).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let slices: Api<EndpointSlice> = Api::all(client);
    assert!(
        slices
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        server.requests().records()[0].path,
        "/apis/discovery.k8s.io/v1/endpointslices"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_watches_and_stops_listening() {
    let server = SimServer::start().await.unwrap();
    let addr = server.addr();
    let api: Api<Pod> = Api::all(server.client().await.unwrap());
    let mut w = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    server.shutdown().await;
    let end = timeout(Duration::from_secs(5), async {
        loop {
            match w.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "watch still open after shutdown");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
