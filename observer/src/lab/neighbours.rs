//! The lab's pods besides the Deployment's: the ingress controller's pod
//! (nginx runs in its cgroup) and a bystander, `monitoring/prometheus-0`,
//! that connects straight to every pod IP like a metrics scraper. Each has
//! a Pod object in the simulator and a kubelet-shaped cgroup whose path
//! carries that object's uid, so observer can tell who connected.
//!
//! The bystander is a process of its own (cgroup v2 places whole
//! processes): a shell loop in its pod's network namespace running `curl`
//! round-robin over the current pod addresses, which the lab keeps in a
//! file ([`Targets`]), at `qps` requests a second in total.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use super::cgroup::{Leftovers, PodCgroup, PodCgroupSpec, place_on_exec};
use super::netns::{Netns, Registry};
use super::{LabError, Result};
use observer_sim::{Cluster, StandalonePod};

pub const INGRESS_NAMESPACE: &str = "ingress-nginx";
pub const BYSTANDER_NAMESPACE: &str = "monitoring";
pub const BYSTANDER_NAME: &str = "prometheus-0";

/// A non-Deployment pod: its object's identity and its container cgroup.
#[derive(Debug)]
pub struct NeighbourPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: IpAddr,
    pub cgroup: PodCgroup,
}

impl NeighbourPod {
    /// `namespace/name`, as observer names a pod connector.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Creates the Pod object on the lab's node, then its cgroup (named
    /// after the uid the simulator gave it), as a kubelet would.
    fn create(
        cluster: &Cluster,
        cgroup_mount: &Path,
        cgroup_parent: &str,
        pod: StandalonePod,
    ) -> Result<NeighbourPod> {
        let ip = pod.ip;
        let created = cluster.add_standalone_pod(pod)?;
        let meta = created.metadata;
        let (Some(namespace), Some(name), Some(uid)) = (meta.namespace, meta.name, meta.uid) else {
            return Err(LabError::Invalid(
                "a created pod lacks its name or uid".into(),
            ));
        };
        let spec = PodCgroupSpec::new(cgroup_parent, &uid);
        let cgroup = PodCgroup::create(cgroup_mount, &spec, Leftovers::Kill)
            .map_err(|e| LabError::Invalid(format!("pod cgroup for {namespace}/{name}: {e}")))?;
        Ok(NeighbourPod {
            namespace,
            name,
            uid,
            ip,
            cgroup,
        })
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The ingress controller's pod, at the ingress namespace's address (not
/// hostNetwork), labelled as the ingress-nginx chart labels it.
pub fn ingress_pod(
    cluster: &Cluster,
    cgroup_mount: &Path,
    cgroup_parent: &str,
    ip: IpAddr,
    port: u16,
) -> Result<NeighbourPod> {
    NeighbourPod::create(
        cluster,
        cgroup_mount,
        cgroup_parent,
        StandalonePod {
            namespace: INGRESS_NAMESPACE.into(),
            name: "ingress-nginx-controller-".into(),
            labels: labels(&[
                ("app.kubernetes.io/name", "ingress-nginx"),
                ("app.kubernetes.io/component", "controller"),
                ("app.kubernetes.io/instance", "ingress-nginx"),
            ]),
            container: "controller".into(),
            ports: vec![i32::from(port)],
            ip,
            ready: true,
        },
    )
}

/// The bystander's pod, `monitoring/prometheus-0`.
pub fn bystander_pod(
    cluster: &Cluster,
    cgroup_mount: &Path,
    cgroup_parent: &str,
    ip: IpAddr,
) -> Result<NeighbourPod> {
    NeighbourPod::create(
        cluster,
        cgroup_mount,
        cgroup_parent,
        StandalonePod {
            namespace: BYSTANDER_NAMESPACE.into(),
            name: BYSTANDER_NAME.into(),
            labels: labels(&[("app.kubernetes.io/name", "prometheus")]),
            container: "prometheus".into(),
            ports: vec![9090],
            ip,
            ready: true,
        },
    )
}

/// The pod addresses a scraper sees, one `addr:port` a line, rewritten
/// atomically as pods come and go.
#[derive(Debug)]
pub struct Targets {
    path: PathBuf,
    pods: Mutex<BTreeMap<String, SocketAddr>>,
}

impl Targets {
    /// Starts empty, written at `path`.
    pub fn create(path: PathBuf) -> Result<Targets> {
        let targets = Targets {
            path,
            pods: Mutex::default(),
        };
        targets.write(&targets.pods())?;
        Ok(targets)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn pods(&self) -> MutexGuard<'_, BTreeMap<String, SocketAddr>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds (`Some`) or removes (`None`) a pod's address.
    pub fn set(&self, pod: &str, addr: Option<SocketAddr>) {
        let mut pods = self.pods();
        match addr {
            Some(addr) => pods.insert(pod.to_string(), addr),
            None => pods.remove(pod),
        };
        // At teardown the lab's directory may already be gone, and with
        // it the scraper: nothing is left to tell.
        let gone = self.path.parent().is_some_and(|dir| !dir.exists());
        if let Err(error) = self.write(&pods)
            && !gone
        {
            tracing::warn!(%error, "lab: could not update the scrape targets");
        }
    }

    fn write(&self, pods: &BTreeMap<String, SocketAddr>) -> Result<()> {
        let mut text = String::new();
        for addr in pods.values() {
            let _ = writeln!(text, "{addr}");
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(LabError::io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &self.path)
            .map_err(LabError::io(format!("renaming {}", tmp.display())))
    }
}

/// The shell loop: each round reads the targets and starts one `curl` per
/// target, `interval` apart (so `qps` in total whatever their number),
/// then reaps them. `-g`: IPv6 brackets are not a glob.
pub fn scrape_loop(targets: &Path, qps: u32) -> String {
    let interval = 1.0 / f64::from(qps.max(1));
    format!(
        "while :; do n=0; for t in $(cat '{file}' 2>/dev/null); do \
         curl -g -s -o /dev/null -m 1 \"http://$t/\" & n=$((n+1)); sleep {interval:.3}; done; \
         [ \"$n\" -gt 0 ] || sleep {interval:.3}; wait; done",
        file = targets.display(),
    )
}

/// The running bystander; killed, with its cgroup and namespace removed,
/// on drop.
#[derive(Debug)]
pub struct Bystander {
    child: Child,
    registry: Registry,
    // Dropped after the child is gone, in this order.
    pod: NeighbourPod,
    _ns: Netns,
}

impl Bystander {
    /// Starts the scrape loop in `ns`, inside `pod`'s cgroup from its first
    /// instruction.
    pub fn start(
        ns: Netns,
        pod: NeighbourPod,
        targets: &Path,
        qps: u32,
        registry: &Registry,
    ) -> Result<Bystander> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "sh", "-c"])
            .arg(scrape_loop(targets, qps))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let procs = place_on_exec(&mut cmd, &pod.cgroup.path())
            .map_err(|e| LabError::Invalid(format!("bystander cgroup: {e}")))?;
        let child = cmd
            .spawn()
            .map_err(LabError::io("starting the bystander (ip netns exec sh)"))?;
        drop(procs);
        let pid = i32::try_from(child.id())
            .map_err(|_| LabError::Invalid("bystander pid out of range".into()))?;
        registry.add_pid(pid);
        Ok(Bystander {
            child,
            registry: registry.clone(),
            pod,
            _ns: ns,
        })
    }

    pub fn pod(&self) -> &NeighbourPod {
        &self.pod
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pid) = i32::try_from(self.child.id()) {
            self.registry.forget_pid(pid);
        }
        // The curls it started go with the cgroup (Leftovers::Kill).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_file_follows_the_pods() {
        let dir = std::env::temp_dir().join(format!("obs-targets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Targets::create(dir.join("targets")).unwrap();
        assert_eq!(std::fs::read_to_string(t.path()).unwrap(), "");
        t.set("a", Some("10.247.1.2:8080".parse().unwrap()));
        t.set("b", Some("[fd00:247:1::3]:8080".parse().unwrap()));
        assert_eq!(
            std::fs::read_to_string(t.path()).unwrap(),
            "10.247.1.2:8080\n[fd00:247:1::3]:8080\n"
        );
        t.set("a", None);
        assert_eq!(
            std::fs::read_to_string(t.path()).unwrap(),
            "[fd00:247:1::3]:8080\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scrape_loop_paces_by_total_rate() {
        let script = scrape_loop(Path::new("/tmp/x/targets"), 20);
        assert!(script.contains("cat '/tmp/x/targets'"));
        assert!(script.contains("sleep 0.050"));
        assert!(script.contains("curl -g -s -o /dev/null -m 1 \"http://$t/\" &"));
        assert!(script.contains("wait; done"));
    }
}
