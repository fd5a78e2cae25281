//! The manifests in deploy/: every kustomization renders, every object is
//! a valid Kubernetes object with no unknown field, the DaemonSet is as
//! unprivileged as the agent allows, its API port listens on the pod IP
//! and loopback only, the NetworkPolicy admits only Prometheus, the token
//! overlay mounts its Secret, and the ClusterRole grants exactly what the
//! agent's watchers ask the API for.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use deploy_support::{
    KUSTOMIZATIONS, added_capabilities, agent_container, daemonset, find, host_mounts, render,
    workspace_root,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use observer::cluster::{PodScope, WatchConfig, WatchCounters, stamped_events};
use observer_sim::{Cluster, ClusterConfig, DeploymentSpec, RequestRecord, SimConfig, SimServer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The agent's HTTP port, as `observer agent --listen` defaults to it.
const PORT: i32 = 9990;

/// Deserializes `doc` as `T` and serializes it back: any field `T` does not
/// know (a typo, a wrong indentation level, a field of another version) is
/// lost on the way and the two differ.
fn strictly<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|error| {
        panic!(
            "{} {}: {error}",
            doc["kind"],
            doc["metadata"]["name"].as_str().unwrap_or("?")
        )
    });
    let back = serde_json::to_value(&typed).expect("serializes");
    assert_eq!(
        &back, doc,
        "{} {} has fields its type does not know (left: as typed, right: as written)",
        doc["kind"], doc["metadata"]["name"]
    );
    typed
}

/// The Prometheus Operator's ServiceMonitor, the fields deploy/ uses, as
/// monitoring.coreos.com/v1 names them. No crate types it; unknown fields
/// are refused so a misspelt one fails here rather than being ignored by
/// the operator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<ScrapeEndpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScrapeEndpoint {
    port: String,
    path: String,
    interval: String,
    relabelings: Vec<Relabeling>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Relabeling {
    source_labels: Vec<String>,
    target_label: String,
}

#[test]
fn every_kustomization_renders_into_known_types_with_no_unknown_field() {
    for dir in KUSTOMIZATIONS {
        let docs = render(dir);
        let mut kinds = BTreeSet::new();
        for doc in &docs {
            let kind = doc["kind"].as_str().expect("every object has a kind");
            kinds.insert(kind.to_string());
            match kind {
                "Namespace" => drop(strictly::<Namespace>(doc)),
                "ServiceAccount" => drop(strictly::<ServiceAccount>(doc)),
                "ClusterRole" => drop(strictly::<ClusterRole>(doc)),
                "ClusterRoleBinding" => drop(strictly::<ClusterRoleBinding>(doc)),
                "Service" => drop(strictly::<Service>(doc)),
                "DaemonSet" => drop(strictly::<DaemonSet>(doc)),
                "NetworkPolicy" => drop(strictly::<NetworkPolicy>(doc)),
                "ServiceMonitor" => {
                    let monitor = strictly::<ServiceMonitor>(doc);
                    assert_eq!(monitor.api_version, "monitoring.coreos.com/v1");
                }
                other => panic!("{dir}: no check for kind {other}"),
            }
            if kind != "Namespace" && !kind.starts_with("Cluster") {
                assert_eq!(
                    doc["metadata"]["namespace"], "observer",
                    "{dir}: {kind} in the observer namespace"
                );
            }
        }
        let mut expected: BTreeSet<String> = [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "DaemonSet",
            "NetworkPolicy",
        ]
        .map(String::from)
        .into();
        if dir.ends_with("prometheus-operator") {
            expected.insert("ServiceMonitor".into());
        }
        assert_eq!(kinds, expected, "{dir}");
    }
}

#[test]
fn base_daemonset_grants_only_what_the_probe_needs() {
    let docs = render("deploy");
    let ds = daemonset(&docs);
    let pod = ds.spec.template.spec.clone().expect("pod spec");
    let agent = agent_container(&ds);
    let security = agent.security_context.clone().expect("securityContext");
    assert_ne!(
        security.privileged,
        Some(true),
        "not privileged in the base"
    );
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()]),
        "every capability dropped first"
    );
    assert_eq!(added_capabilities(&agent), ["CAP_BPF", "CAP_PERFMON"]);
    assert_eq!(
        security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    assert_ne!(pod.host_network, Some(true), "no host network");
    assert_ne!(pod.host_pid, Some(true), "no host PID namespace");
    // The probe needs no host path (raw tracepoints need no tracefs, and
    // the kernel's BTF is in the container's own /sys). The one host path
    // is the cgroup hierarchy, read-only, where the agent tells the
    // ingress's connects from the kubelet's and other pods'.
    assert_eq!(
        host_mounts(&ds),
        [(
            "/sys/fs/cgroup".to_string(),
            "/host/sys/fs/cgroup".to_string(),
            true
        )],
        "only the cgroup hierarchy, read-only"
    );
    let cgroup_root = agent
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "OBSERVER_CGROUP_ROOT")
        .and_then(|e| e.value);
    assert_eq!(cgroup_root.as_deref(), Some("/host/sys/fs/cgroup"));

    let privileged = daemonset(&render("deploy/overlays/privileged"));
    let security = agent_container(&privileged)
        .security_context
        .expect("securityContext");
    assert_eq!(security.privileged, Some(true), "the privileged overlay");

    let unconfined = daemonset(&render("deploy/overlays/unconfined-seccomp"));
    let agent = agent_container(&unconfined);
    let security = agent.security_context.clone().expect("securityContext");
    assert_eq!(
        security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("Unconfined")
    );
    assert_ne!(security.privileged, Some(true));
    assert_eq!(
        added_capabilities(&agent),
        ["CAP_BPF", "CAP_PERFMON"],
        "seccomp is all the unconfined overlay changes"
    );
}

#[test]
fn daemonset_updates_without_a_gap_and_probes_the_agent() {
    let docs = render("deploy");
    let ds = daemonset(&docs);
    let spec = &ds.spec;
    let update = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .expect("a rolling update");
    assert_eq!(update.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(update.max_unavailable, Some(IntOrString::Int(0)));

    let pod = spec.template.spec.as_ref().expect("pod spec");
    let grace = pod
        .termination_grace_period_seconds
        .expect("a grace period");
    assert!(
        (10..=60).contains(&grace),
        "room to flush on SIGTERM: {grace}"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("observer"));

    let agent = agent_container(&ds);
    assert_eq!(agent.image.as_deref(), Some("localhost/observer:latest"));
    // The API on the pod IP (probes, Prometheus) and loopback (kubectl
    // port-forward), not on every interface; the pod IP from the downward
    // API, passed bare so an IPv6 one needs no brackets.
    assert_eq!(
        agent.args.clone().unwrap_or_default(),
        ["agent", "--listen=$(POD_IP)", "--listen=127.0.0.1:9990"]
    );
    let pod_ip = agent
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "POD_IP")
        .and_then(|e| e.value_from)
        .and_then(|v| v.field_ref)
        .map(|f| f.field_path);
    assert_eq!(pod_ip.as_deref(), Some("status.podIP"));
    let ports = agent.ports.clone().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("http") && p.container_port == PORT)
    );
    let probe_path = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .and_then(|p| p.http_get.clone())
            .expect("an HTTP probe");
        assert_eq!(get.port, IntOrString::String("http".into()));
        get.path.unwrap_or_default()
    };
    assert_eq!(probe_path(agent.readiness_probe.as_ref()), "/readyz");
    assert_eq!(probe_path(agent.liveness_probe.as_ref()), "/healthz");

    let node_name = agent
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from)
        .and_then(|v| v.field_ref)
        .map(|f| f.field_path);
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"));

    let resources = agent.resources.clone().expect("resources");
    for name in ["cpu", "memory"] {
        assert!(
            resources
                .requests
                .as_ref()
                .is_some_and(|r| r.contains_key(name)),
            "a {name} request"
        );
    }
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory")),
        "a memory limit"
    );

    let annotations = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port").map(String::as_str),
        Some("9990")
    );
}

#[test]
fn network_policy_admits_only_prometheus_to_the_agent_port() {
    let docs = render("deploy");
    let policy: NetworkPolicy =
        serde_json::from_value(find(&docs, "NetworkPolicy").clone()).expect("NetworkPolicy");
    let spec = policy.spec.expect("spec");
    let ds = daemonset(&docs);
    let pod_labels = ds
        .spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let selected = spec
        .pod_selector
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    assert!(!selected.is_empty());
    for (key, value) in &selected {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "the policy selects the agent"
        );
    }
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_string()]),
        "egress stays open: the API server"
    );
    let rules = spec.ingress.unwrap_or_default();
    assert_eq!(rules.len(), 1, "one rule: Prometheus");
    let ports = rules[0].ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::Int(PORT)));
    let peers = rules[0].from.clone().unwrap_or_default();
    assert_eq!(
        peers.len(),
        1,
        "one peer, both selectors in it (AND, not OR)"
    );
    let namespace = peers[0]
        .namespace_selector
        .clone()
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    let pods = peers[0]
        .pod_selector
        .clone()
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    assert!(!namespace.is_empty() && !pods.is_empty(), "{peers:?}");
    assert!(peers[0].ip_block.is_none());
}

#[test]
fn api_token_overlay_mounts_the_secret_and_passes_it() {
    let ds = daemonset(&render("deploy/overlays/api-token"));
    let agent = agent_container(&ds);
    let args = agent.args.clone().unwrap_or_default();
    let token_file = args
        .iter()
        .find_map(|a| a.strip_prefix("--api-token-file="))
        .expect("--api-token-file");
    let mount = agent
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| token_file.starts_with(&format!("{}/", m.mount_path)))
        .expect("the token file is in a mount");
    assert_eq!(mount.read_only, Some(true));
    let volume = ds
        .spec
        .template
        .spec
        .clone()
        .and_then(|s| s.volumes)
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == mount.name)
        .expect("the mount's volume");
    let secret = volume.secret.expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("observer-api-token"));
    assert_ne!(secret.optional, Some(true), "no token, no start");
    assert!(token_file.ends_with("/token"), "the Secret's key `token`");
    // The probes stay open: they carry no token.
    assert!(!args.iter().any(|a| a.contains("probes")), "{args:?}");
}

#[test]
fn node_selection_and_tolerations_live_in_one_file() {
    // Only base/ingress-nodes.yaml may set them, so there is one place to
    // adapt to a cluster's ingress nodes.
    let base = workspace_root().join("deploy/base");
    for entry in std::fs::read_dir(&base).expect("deploy/base") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let sets_placement = text.lines().any(|line| {
            let line = line.trim_start();
            !line.starts_with('#')
                && (line.starts_with("nodeSelector:")
                    || line.starts_with("tolerations:")
                    || line.starts_with("affinity:"))
        });
        let is_the_place = path.file_name().is_some_and(|n| n == "ingress-nodes.yaml");
        assert_eq!(
            sets_placement,
            is_the_place,
            "{}: node placement belongs in ingress-nodes.yaml",
            path.display()
        );
    }
    let ds = daemonset(&render("deploy"));
    let pod = ds.spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.node_selector
            .unwrap_or_default()
            .get("kubernetes.io/os")
            .map(String::as_str),
        Some("linux")
    );
    // Every node: each measures the receiving side of its own pods, and a
    // tainted node's pods terminate too.
    let tolerates_all =
        pod.tolerations.unwrap_or_default().iter().any(|t| {
            t.key.is_none() && t.operator.as_deref() == Some("Exists") && t.effect.is_none()
        });
    assert!(tolerates_all, "the agent runs on every node");
}

#[test]
fn headless_service_and_service_monitor_reach_the_agent_port() {
    let docs = render("deploy/overlays/prometheus-operator");
    let service: Service = serde_json::from_value(find(&docs, "Service").clone()).expect("Service");
    let spec = service.spec.clone().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    let ports = spec.ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, PORT);
    assert_eq!(ports[0].name.as_deref(), Some("http"));

    let ds = daemonset(&docs);
    let pod_labels = ds
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    assert!(!selector.is_empty());
    for (key, value) in &selector {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "Service selects the agent"
        );
    }

    let monitor: ServiceMonitor =
        serde_json::from_value(find(&docs, "ServiceMonitor").clone()).expect("ServiceMonitor");
    let service_labels = service.metadata.labels.clone().unwrap_or_default();
    for (key, value) in monitor
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default()
    {
        assert_eq!(
            service_labels.get(&key),
            Some(&value),
            "ServiceMonitor selects the Service"
        );
    }
    assert_eq!(monitor.spec.namespace_selector.match_names, ["observer"]);
    assert!(monitor.spec.endpoints.iter().all(|e| e.port == "http"));
}

#[test]
fn grafana_dashboard_charts_every_agent_metric() {
    let path = workspace_root().join("deploy/grafana/observer.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/observer.json");
    let dashboard: Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    for metric in [
        "observer_propagation_gap_seconds_bucket",
        "observer_failed_connects_total",
        "observer_recommended_prestop_seconds",
        "observer_ringbuf_drops_total",
        "observer_socket_map_full_total",
        "observer_watch_restarts_total",
        "observer_events_processed_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel queries {metric}"
        );
    }
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(expr)) = map.get("expr") {
                out.push(expr.clone());
            }
            map.values().for_each(|v| collect_exprs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// (API group, resource) → verbs.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;

fn role_grants(role: &ClusterRole) -> Grants {
    let mut grants = Grants::new();
    for rule in role.rules.clone().unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "plain resource rules only"
        );
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                assert!(
                    group != "*" && resource != "*" && !rule.verbs.iter().any(|v| v == "*"),
                    "no wildcards"
                );
                grants
                    .entry((group.clone(), resource))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    grants
}

/// The RBAC verb, API group and resource of one request to the API, as the
/// API server's authorizer sees it.
fn rbac_request(record: &RequestRecord) -> (String, String, String) {
    let segments: Vec<&str> = record.path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => panic!("not a resource path: {}", record.path),
    };
    let (resource, name) = match rest {
        ["namespaces", _ns, resource] => (resource, None),
        ["namespaces", _ns, resource, name] => (resource, Some(name)),
        [resource] => (resource, None),
        [resource, name] => (resource, Some(name)),
        _ => panic!("unexpected resource path: {}", record.path),
    };
    let verb = match (record.method.as_str(), record.watch, name) {
        ("GET", true, _) => "watch",
        ("GET", false, None) => "list",
        ("GET", false, Some(_)) => "get",
        (method, _, _) => panic!("the agent only reads, but sent {method} {}", record.path),
    };
    (verb.to_string(), group, resource.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_role_allows_exactly_what_the_watchers_request() {
    let docs = render("deploy");
    let role: ClusterRole =
        serde_json::from_value(find(&docs, "ClusterRole").clone()).expect("ClusterRole");
    let grants = role_grants(&role);

    let server = SimServer::start_with(SimConfig {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("simulator starts");
    let cluster =
        Cluster::start(server.store().clone(), ClusterConfig::default()).expect("cluster starts");
    cluster
        .apply_deployment(DeploymentSpec::new("web", 3))
        .expect("deployment");
    cluster.wait_rollout("web").await.expect("rolled out");
    let client = observer::cluster::Kube::from_config(server.config().await.expect("config"))
        .expect("client");

    // Node-scoped as the DaemonSet runs it where no ingress runs,
    // cluster-wide as it runs where one does, and scoped to a namespace as
    // `observer agent -n` does: all must be covered by the one role.
    let configs = [
        WatchConfig {
            pod_scope: PodScope::Node(cluster.node_name().to_owned()),
            ..Default::default()
        },
        WatchConfig::default(),
        WatchConfig {
            namespace: Some(ClusterConfig::default().namespace),
            pod_label_selector: Some("app=web".into()),
            ..Default::default()
        },
    ];
    let mut watchers = Vec::new();
    let mut all_counters = Vec::new();
    for config in &configs {
        let counters = Arc::new(WatchCounters::default());
        let events = stamped_events(&client, config, counters.clone());
        all_counters.push(counters);
        watchers.push(tokio::spawn(events.for_each(|_| async {})));
    }

    let listed = |c: &Arc<WatchCounters>| {
        c.pods.snapshot().lists > 0 && c.endpoint_slices.snapshot().lists > 0
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !all_counters.iter().all(listed) {
        assert!(tokio::time::Instant::now() < deadline, "watchers listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A rollout while watching; then the watches are cut, the cluster
    // changes while the agent cannot reach the API, and history is
    // compacted past what the watchers saw, so they cannot resume and
    // relist: every kind of request they make appears in the log.
    cluster.rollout("web").expect("rollout");
    cluster.wait_rollout("web").await.expect("rolled out again");
    server
        .faults()
        .refuse_connections(Duration::from_millis(1500));
    server.faults().drop_watches();
    cluster.rollout("web").expect("rollout while unreachable");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.compact();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !all_counters
        .iter()
        .all(|c| c.pods.snapshot().restarts > 0 && c.endpoint_slices.snapshot().restarts > 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watchers relisted after 410"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the relisted watches open too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for watcher in &watchers {
        watcher.abort();
    }

    let records = server.requests().records();
    assert!(!records.is_empty());
    let mut seen = Grants::new();
    for record in &records {
        let (verb, group, resource) = rbac_request(record);
        let allowed = grants
            .get(&(group.clone(), resource.clone()))
            .is_some_and(|verbs| verbs.contains(&verb));
        assert!(
            allowed,
            "the ClusterRole does not allow {verb} {group}/{resource} ({} {}?{})",
            record.method, record.path, record.query
        );
        seen.entry((group, resource)).or_default().insert(verb);
    }
    assert_eq!(
        grants, seen,
        "the ClusterRole grants exactly what the watchers use (left: granted, right: used)"
    );
    server.shutdown().await;
}
