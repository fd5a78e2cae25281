//! Who connected to a terminating pod, as the lab's own measurement tells
//! them apart: the ingress pod and the bystander by their sockets' cgroup,
//! the kubelet by its comm (a host process: its cgroup is no pod's), and
//! any other process by its comm. Only the ingress measures the gap.

use std::collections::{BTreeMap, HashMap};

use super::measure::{KnownPod, LabContext, SeenPod};
use super::prober::KUBELET_COMM;
use super::report::{ConnectorActivity, ConnectorRole};
use crate::clock::MonoTime;
use crate::probe::{ConnectRecord, FailureClass, Outcome};

/// One termination's connectors after its deletion.
#[derive(Clone, Debug, PartialEq)]
pub struct TerminationConnectors {
    pub deletion_seen: MonoTime,
    pub connectors: Vec<ConnectorActivity>,
}

/// By terminated pod name.
pub type ConnectorsByPod = HashMap<String, TerminationConnectors>;

/// The pods the lab knows by cgroup.
#[derive(Clone, Debug)]
pub struct Connectors {
    ingress: KnownPod,
    bystander: Option<KnownPod>,
}

impl Connectors {
    pub fn new(ctx: &LabContext) -> Connectors {
        Connectors {
            ingress: ctx.ingress_pod.clone(),
            bystander: ctx.bystander_pod.clone(),
        }
    }

    pub fn is_ingress(&self, r: &ConnectRecord) -> bool {
        r.cgroup_id == self.ingress.cgroup_id
    }

    /// The connector's name and role.
    pub fn classify(&self, r: &ConnectRecord) -> (String, ConnectorRole) {
        if self.is_ingress(r) {
            return (self.ingress.name.clone(), ConnectorRole::Ingress);
        }
        if let Some(b) = self
            .bystander
            .as_ref()
            .filter(|b| b.cgroup_id == r.cgroup_id)
        {
            return (b.name.clone(), ConnectorRole::Pod);
        }
        if r.comm == KUBELET_COMM {
            return (KUBELET_COMM.to_string(), ConnectorRole::Kubelet);
        }
        (format!("process {}", r.comm), ConnectorRole::Process)
    }

    /// Per terminated pod, every connector's activity within [deletion_seen,
    /// the IP's next holder's first sight).
    pub fn by_pod(&self, pods: &[SeenPod], records: &[ConnectRecord]) -> ConnectorsByPod {
        let mut out = ConnectorsByPod::new();
        for pod in pods {
            let Some(t0) = pod.deletion_seen else {
                continue;
            };
            let end = pod.tenure_end(pods, t0);
            let in_window = |t: MonoTime| t >= t0 && end.is_none_or(|end| t < end);
            let mut seen: BTreeMap<String, ConnectorActivity> = BTreeMap::new();
            for r in records.iter().filter(|r| r.dst.ip() == pod.ip) {
                if !in_window(r.syn.unwrap_or(r.ts)) {
                    continue;
                }
                let (name, role) = self.classify(r);
                let a = seen.entry(name.clone()).or_insert(ConnectorActivity {
                    name,
                    role,
                    connects: 0,
                    failures: 0,
                    last_connect: None,
                    until_ns: None,
                });
                match r.outcome {
                    Outcome::Connect => a.connects += 1,
                    Outcome::Failed { class, .. } => {
                        a.failures += 1;
                        if class == FailureClass::Reset {
                            // A reset cuts an older connection: no new SYN.
                            continue;
                        }
                    }
                    Outcome::Established { .. } => {}
                    // A pooled connection closing: no new connect.
                    Outcome::Sent { .. } => continue,
                    // The receiving side's view: not a connector's connect.
                    Outcome::Accepted | Outcome::Received { .. } | Outcome::Dropped { .. } => {
                        continue;
                    }
                }
                a.last_connect = a.last_connect.max(r.syn);
                a.until_ns = a.last_connect.map(|last| last.signed_since(t0));
            }
            out.insert(
                pod.name.clone(),
                TerminationConnectors {
                    deletion_seen: t0,
                    connectors: seen.into_values().collect(),
                },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn rec(syn_ms: u64, comm: &str, cgroup_id: u64, outcome: Outcome) -> ConnectRecord {
        ConnectRecord {
            ts: MonoTime(syn_ms * MS + 1),
            syn: Some(MonoTime(syn_ms * MS)),
            src: "10.247.1.1:40000".parse().unwrap(),
            dst: "10.247.1.2:8080".parse().unwrap(),
            pid: 1,
            tid: 1,
            comm: comm.into(),
            cgroup_id,
            pod_uid: None,
            container_id: None,
            retry: false,
            retried: None,
            count: 1,
            watched: true,
            outcome,
        }
    }

    fn known(name: &str, cgroup_id: u64) -> KnownPod {
        KnownPod {
            name: name.into(),
            uid: "u".into(),
            cgroup_id,
        }
    }

    #[test]
    fn each_connector_keeps_its_own_last_connect() {
        let c = Connectors {
            ingress: known("ingress-nginx/ingress-nginx-controller-x", 100),
            bystander: Some(known("monitoring/prometheus-0", 200)),
        };
        let pods = vec![SeenPod {
            name: "web-1".into(),
            ip: "10.247.1.2".parse().unwrap(),
            first_seen: MonoTime(0),
            deletion_seen: Some(MonoTime(1_000 * MS)),
        }];
        let refused = Outcome::Failed {
            class: FailureClass::Refused,
            errno: libc::ECONNREFUSED,
            waited_ns: 0,
            synchronous: false,
        };
        let records = vec![
            rec(500, "nginx", 100, Outcome::Connect),
            rec(1_200, "nginx", 100, Outcome::Connect),
            rec(1_300, "kubelet", 7, Outcome::Connect),
            rec(9_300, "kubelet", 7, Outcome::Connect),
            rec(9_400, "curl", 200, refused),
            rec(9_500, "wget", 7, Outcome::Connect),
        ];
        let by_pod = c.by_pod(&pods, &records);
        let t = &by_pod["web-1"];
        assert_eq!(t.deletion_seen, MonoTime(1_000 * MS));
        let find = |n: &str| t.connectors.iter().find(|a| a.name == n).unwrap();
        let ingress = find("ingress-nginx/ingress-nginx-controller-x");
        assert_eq!(ingress.role, ConnectorRole::Ingress);
        assert_eq!(ingress.connects, 1, "only after the deletion");
        assert_eq!(ingress.last_connect, Some(MonoTime(1_200 * MS)));
        let kubelet = find("kubelet");
        assert_eq!(kubelet.role, ConnectorRole::Kubelet);
        assert_eq!(kubelet.last_connect, Some(MonoTime(9_300 * MS)));
        let scraper = find("monitoring/prometheus-0");
        assert_eq!((scraper.role, scraper.failures), (ConnectorRole::Pod, 1));
        assert_eq!(find("process wget").role, ConnectorRole::Process);
        assert!(c.is_ingress(&records[0]) && !c.is_ingress(&records[2]));
    }
}
