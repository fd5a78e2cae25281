use k8s_openapi::api::core::v1::{LifecycleHandler, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::{prune_pod, prune_slice};
use crate::cluster::endpoints::SliceState;
use crate::cluster::pod::PodSnapshot;
use crate::cluster::prestop::PreStop;

const SECRET: &str = "hunter2-s3cr3t";

/// A Pod as an API server sends it, with a secret in every place one is
/// commonly found.
fn full_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "web-7d4b9c-x2x9z", "namespace": "shop", "uid": "u-1",
            "resourceVersion": "812", "generateName": "web-7d4b9c-",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
            "annotations": {"vault.example/token": SECRET, "kubectl.kubernetes.io/restartedAt": "x"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "web-7d4b9c", "uid": "rs-1", "controller": true,
                                 "blockOwnerDeletion": true}],
            "deletionTimestamp": "2026-01-01T10:00:00Z", "deletionGracePeriodSeconds": 30,
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]
        },
        "spec": {
            "nodeName": "node-a", "terminationGracePeriodSeconds": 45, "serviceAccountName": "web",
            "volumes": [{"name": "creds", "secret": {"secretName": "web-creds"}}],
            "initContainers": [
                {"name": "migrate", "image": "tools", "env": [{"name": "DB_PASSWORD", "value": SECRET}]},
                {"name": "mesh", "image": "proxy", "restartPolicy": "Always",
                 "ports": [{"containerPort": 15001}],
                 "lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": 15000,
                     "httpHeaders": [{"name": "Authorization", "value": SECRET}]}}}}
            ],
            "containers": [{
                "name": "app", "image": "registry.example/web:1", "command": ["web", "--token", SECRET],
                "env": [{"name": "API_KEY", "value": SECRET},
                        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "web-env"}}],
                "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "http"},
                          {"containerPort": 5353, "protocol": "UDP"}],
                "readinessProbe": {"exec": {"command": ["check", SECRET]}, "periodSeconds": 2},
                "lifecycle": {"preStop": {"exec": {"command":
                    ["/bin/sh", "-c", format!("sleep 7.25; curl -H 'X-Token: {SECRET}' localhost/quit")]}}}
            }]
        },
        "status": {
            "phase": "Running", "podIP": "10.1.0.7", "podIPs": [{"ip": "10.1.0.7"}, {"ip": "fd00::7"}],
            "hostIP": "192.168.1.2",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": SECRET},
                {"type": "Ready", "status": "True"}
            ],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "web",
                                   "imageID": "sha", "containerID": "containerd://abc"}]
        }
    }))
    .expect("pod JSON")
}

fn text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("serializes")
}

#[test]
fn a_pruned_pod_reads_the_same_and_holds_no_secret() {
    let pod = full_pod();
    let pruned = prune_pod(&pod);
    assert_eq!(
        PodSnapshot::from_pod(&pruned),
        PodSnapshot::from_pod(&pod),
        "the model reads the same from both"
    );
    let snapshot = PodSnapshot::from_pod(&pruned).expect("well-formed");
    assert_eq!(snapshot.containers.len(), 2, "the sidecar and the app");
    assert_eq!(
        snapshot.containers[1].pre_stop,
        PreStop::Exec {
            program: "sh".into(),
            leading_sleep_ms: Some(7_250)
        }
    );
    let json = text(&pruned);
    for gone in [
        SECRET,
        "API_KEY",
        "web-env",
        "registry.example",
        "migrate",
        "managedFields",
        "annotations",
        "containerStatuses",
        "volumes",
        "curl",
    ] {
        assert!(!json.contains(gone), "{gone} in {json}");
    }
    assert_eq!(prune_pod(&pruned), pruned, "pruning twice changes nothing");
}

#[test]
fn malformed_pods_stay_malformed_the_same_way() {
    let mut no_uid = full_pod();
    no_uid.metadata.uid = None;
    let mut bad_ip = full_pod();
    if let Some(status) = bad_ip.status.as_mut() {
        status.pod_ip = Some("10.1.0.999".into());
    }
    for pod in [no_uid, bad_ip, Pod::default()] {
        let original = PodSnapshot::from_pod(&pod);
        assert!(original.is_err());
        assert_eq!(PodSnapshot::from_pod(&prune_pod(&pod)), original);
    }
}

fn exec(command: &[&str]) -> LifecycleHandler {
    serde_json::from_value(json!({"exec": {"command": command}})).expect("handler")
}

#[test]
fn every_exec_hook_form_reads_the_same_after_pruning() {
    let forms: &[&[&str]] = &[
        &["sleep", "5"],
        &["/bin/sleep", "1.001"],
        &["sleep", "1m", "30s"],
        &["busybox", "sleep", "3"],
        &["env", "sleep", "0.5"],
        &["sleep 5s"],
        &["/bin/sh", "-c", "sleep 5 && nginx -s quit"],
        &["/bin/bash", "-ec", "sleep 20; kill -QUIT 1"],
        &["sh", "-c", "set -e; echo draining; sleep 10"],
        &["sh", "-c", "exec sleep \"7\""],
        &["sleep", "infinity"],
        &["nginx", "-s", "quit"],
        &["sh", "-c", "nginx -s quit; sleep 5"],
        &[],
    ];
    for form in forms {
        let handler = exec(form);
        let pruned = super::prune_pre_stop(&handler);
        assert_eq!(
            PreStop::from_handler(Some(&pruned)),
            PreStop::from_handler(Some(&handler)),
            "{form:?} became {pruned:?}"
        );
        let kept = text(&pruned);
        for rest in ["quit", "QUIT", "draining"] {
            assert!(!kept.contains(rest), "{rest} kept from {form:?}: {kept}");
        }
    }
}

fn full_slice() -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "name": "web-abc12", "namespace": "shop", "uid": "s-1",
            "labels": {"kubernetes.io/service-name": "web", "team": SECRET},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T10:00:00Z",
                            "note": SECRET},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "svc"}]
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.1.0.7"], "hostname": SECRET, "nodeName": "node-a", "zone": "z",
             "conditions": {"ready": false, "serving": true, "terminating": true},
             "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "u-1",
                           "resourceVersion": "9"}},
            {"addresses": ["10.1.0.8"]}
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
                  {"port": 53, "protocol": "UDP"}]
    }))
    .expect("slice JSON")
}

#[test]
fn a_pruned_slice_reads_the_same_and_keeps_only_what_is_read() {
    let slice = full_slice();
    let pruned = prune_slice(&slice);
    for keep_node in [None, Some("node-a"), Some("node-b")] {
        assert_eq!(
            SliceState::from_slice(&pruned, keep_node),
            SliceState::from_slice(&slice, keep_node)
        );
    }
    let elsewhere = SliceState::from_slice(&pruned, Some("node-b")).expect("well-formed");
    assert_eq!(
        elsewhere.elsewhere.len(),
        1,
        "node-a's endpoint is elsewhere"
    );
    let state = SliceState::from_slice(&pruned, None).expect("well-formed");
    assert_eq!(state.endpoints.len(), 2);
    assert!(state.trigger_time.is_some());
    let json = text(&pruned);
    for gone in [SECRET, "\"zone\"", "appProtocol", "ownerReferences"] {
        assert!(!json.contains(gone), "{gone} in {json}");
    }
    let mut no_service = slice;
    no_service.metadata.labels = None;
    assert_eq!(
        SliceState::from_slice(&prune_slice(&no_service), None),
        SliceState::from_slice(&no_service, None)
    );
}
