//! What a recording keeps of a watched object: the fields the model
//! reads, and nothing else.
//!
//! A Pod as the API server sends it holds its containers' environment,
//! commands, images, volumes and annotations, any of which can carry a
//! secret. A recording is meant to be handed around (attached to a bug
//! report, replayed elsewhere), so it stores each object pruned to what
//! [`PodSnapshot::from_pod`](super::pod::PodSnapshot::from_pod) and
//! [`SliceState::from_slice`](super::endpoints::SliceState::from_slice)
//! read. The model then sees the same thing from the pruned object as from
//! the whole one, which is what keeps a replay byte-identical to the live
//! run; the tests below check that for every field the model reads.
//!
//! Labels are kept whole: the ingress is chosen by label selectors
//! (`--ingress-selector`), which may name any label, and a replay may be
//! run with other selectors than the live agent had.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ExecAction, HTTPGetAction, HostIP, Lifecycle, LifecycleHandler, Pod,
    PodCondition, PodIP, PodSpec, PodStatus, Probe, SleepAction, TCPSocketAction,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::endpoints::{SERVICE_NAME_LABEL, TRIGGER_TIME_ANNOTATION};
use super::prestop::PreStop;

/// The Pod with only what the model reads: name, namespace, UID, labels,
/// owner references (kind, name, controller), deletion timestamp and grace
/// period; node name, hostNetwork, termination grace period; for each
/// container and sidecar (an init container that restarts always) its
/// name, ports, preStop hook (reduced to what [`PreStop`] keeps) and
/// whether it has a readiness probe; phase, pod IPs and the Ready
/// condition.
pub fn prune_pod(pod: &Pod) -> Pod {
    let meta = &pod.metadata;
    let metadata = ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        labels: meta.labels.clone(),
        owner_references: meta.owner_references.as_ref().map(|owners| {
            owners
                .iter()
                .map(|o| OwnerReference {
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    controller: o.controller,
                    ..OwnerReference::default()
                })
                .collect()
        }),
        deletion_timestamp: meta.deletion_timestamp.clone(),
        deletion_grace_period_seconds: meta.deletion_grace_period_seconds,
        ..ObjectMeta::default()
    };
    let spec = pod.spec.as_ref().map(|spec| PodSpec {
        node_name: spec.node_name.clone(),
        host_network: spec.host_network,
        termination_grace_period_seconds: spec.termination_grace_period_seconds,
        containers: spec.containers.iter().map(prune_container).collect(),
        init_containers: spec.init_containers.as_ref().map(|init| {
            init.iter()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .map(prune_container)
                .collect()
        }),
        ..PodSpec::default()
    });
    let status = pod.status.as_ref().map(|status| PodStatus {
        phase: status.phase.clone(),
        pod_ip: status.pod_ip.clone(),
        pod_ips: status
            .pod_ips
            .as_ref()
            .map(|ips| ips.iter().map(|p| PodIP { ip: p.ip.clone() }).collect()),
        // The node's addresses name what a node itself sends to a pod.
        host_ip: status.host_ip.clone(),
        host_ips: status
            .host_ips
            .as_ref()
            .map(|ips| ips.iter().map(|h| HostIP { ip: h.ip.clone() }).collect()),
        // The model reads the first Ready condition's status.
        conditions: status.conditions.as_ref().map(|conditions| {
            conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    ..PodCondition::default()
                })
                .into_iter()
                .collect()
        }),
        ..PodStatus::default()
    });
    Pod {
        metadata,
        spec,
        status,
    }
}

fn prune_container(c: &Container) -> Container {
    Container {
        name: c.name.clone(),
        restart_policy: c.restart_policy.clone(),
        ports: c.ports.as_ref().map(|ports| {
            ports
                .iter()
                .map(|p| ContainerPort {
                    container_port: p.container_port,
                    protocol: p.protocol.clone(),
                    ..ContainerPort::default()
                })
                .collect()
        }),
        lifecycle: c.lifecycle.as_ref().map(|l| Lifecycle {
            pre_stop: l.pre_stop.as_ref().map(prune_pre_stop),
            ..Lifecycle::default()
        }),
        // Only its presence is read; an exec probe's command can hold a
        // secret.
        readiness_probe: c.readiness_probe.as_ref().map(|_| Probe::default()),
        ..Container::default()
    }
}

/// The hook reduced to what [`PreStop::from_handler`] keeps: a sleep's
/// length; an exec's program name and leading sleep (rewritten as a
/// command of the same meaning, without the rest of the script); an HTTP
/// hook's path and port; that a TCP hook exists.
fn prune_pre_stop(handler: &LifecycleHandler) -> LifecycleHandler {
    let read = PreStop::from_handler(Some(handler));
    let mut pruned = LifecycleHandler::default();
    if let Some(sleep) = &handler.sleep {
        pruned.sleep = Some(SleepAction {
            seconds: sleep.seconds,
        });
    } else if let Some(exec) = &handler.exec {
        pruned.exec = Some(ExecAction {
            command: exec.command.as_ref().map(|_| exec_command(&read, exec)),
        });
    } else if let Some(http) = &handler.http_get {
        pruned.http_get = Some(HTTPGetAction {
            path: http.path.clone(),
            port: http.port.clone(),
            ..HTTPGetAction::default()
        });
    } else if let Some(tcp) = &handler.tcp_socket {
        pruned.tcp_socket = Some(TCPSocketAction {
            port: tcp.port.clone(),
            ..TCPSocketAction::default()
        });
    }
    pruned
}

/// A short command that reads as the same [`PreStop::Exec`] as the
/// original: the program, then its leading sleep in a form the parser
/// takes. The first candidate that reads the same is kept; a command none
/// reproduces (no form the parser recognises produces one) is kept whole
/// rather than replayed differently.
fn exec_command(read: &PreStop, exec: &ExecAction) -> Vec<String> {
    let original = exec.command.clone().unwrap_or_default();
    let PreStop::Exec {
        program,
        leading_sleep_ms,
    } = read
    else {
        return original;
    };
    let mut candidates = vec![vec![program.clone()]];
    if let Some(ms) = leading_sleep_ms {
        // Half a millisecond past the kept value, so that the seconds'
        // float rounds back to the same whole milliseconds.
        let seconds = format!("{}.{:04}", ms / 1000, (ms % 1000) * 10 + 5);
        candidates.extend([
            vec![program.clone(), seconds.clone()],
            vec![program.clone(), "sleep".into(), seconds.clone()],
            vec![program.clone(), "-c".into(), format!("sleep {seconds}")],
        ]);
    }
    candidates
        .into_iter()
        .find(|command| {
            let candidate = LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(command.clone()),
                }),
                ..LifecycleHandler::default()
            };
            PreStop::from_handler(Some(&candidate)) == *read
        })
        .unwrap_or(original)
}

/// The EndpointSlice with only what the model reads: name, namespace, the
/// service-name label, the trigger-time annotation, the address type, TCP
/// and other ports (number and protocol), and each endpoint's addresses,
/// conditions, node and target (kind and UID).
pub fn prune_slice(slice: &EndpointSlice) -> EndpointSlice {
    let meta = &slice.metadata;
    let keep_one = |map: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        map.as_ref().map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() == key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            labels: keep_one(&meta.labels, SERVICE_NAME_LABEL),
            annotations: keep_one(&meta.annotations, TRIGGER_TIME_ANNOTATION),
            ..ObjectMeta::default()
        },
        address_type: slice.address_type.clone(),
        endpoints: slice.endpoints.as_ref().map(|endpoints| {
            endpoints
                .iter()
                .map(|e| Endpoint {
                    addresses: e.addresses.clone(),
                    conditions: e.conditions.clone(),
                    node_name: e.node_name.clone(),
                    target_ref: e.target_ref.as_ref().map(|r| ObjectReference {
                        kind: r.kind.clone(),
                        uid: r.uid.clone(),
                        ..ObjectReference::default()
                    }),
                    ..Endpoint::default()
                })
                .collect()
        }),
        ports: slice.ports.as_ref().map(|ports| {
            ports
                .iter()
                .map(|p| EndpointPort {
                    port: p.port,
                    protocol: p.protocol.clone(),
                    ..EndpointPort::default()
                })
                .collect()
        }),
    }
}

#[cfg(test)]
#[path = "prune_tests.rs"]
mod prune_tests;
