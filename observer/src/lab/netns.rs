//! The lab's network: an "ingress" namespace holding a bridge, and one
//! namespace per pod joined to that bridge by a veth pair. Nothing is added
//! to the host's own namespace, so the lab's traffic stays between
//! namespaces it made (and their loopbacks).
//!
//! Every namespace is registered in a [`Registry`] the moment it exists and
//! removed when its [`Netns`] drops; the registry's [`CleanupGuard`] removes
//! whatever is left (processes first, since a namespace lives on while a
//! process is in it). [`sweep`] removes leftovers of a killed run by name
//! prefix, so a second run right after works.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{LabError, Result};

/// Runs `ip` (iproute2) with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(LabError::io(format!("running {program}")))?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Everything the lab made that must go away: namespaces and processes.
#[derive(Debug, Default)]
struct Owned {
    namespaces: BTreeSet<String>,
    pids: BTreeSet<i32>,
    /// (cgroup v2 mount, the lab's parent directory under it).
    cgroup_trees: BTreeSet<(PathBuf, String)>,
}

/// A shared record of what the lab made. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    owned: Arc<Mutex<Owned>>,
}

impl Registry {
    fn owned(&self) -> MutexGuard<'_, Owned> {
        // Clean-up must work even after a panic elsewhere.
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_pid(&self, pid: i32) {
        self.owned().pids.insert(pid);
    }

    pub fn forget_pid(&self, pid: i32) {
        self.owned().pids.remove(&pid);
    }

    /// `<mount>/<parent>` and everything under it goes at clean-up, its
    /// processes killed first.
    pub fn add_cgroup_tree(&self, mount: &Path, parent: &str) {
        self.owned()
            .cgroup_trees
            .insert((mount.to_path_buf(), parent.to_string()));
    }

    fn add_namespace(&self, name: &str) {
        self.owned().namespaces.insert(name.to_string());
    }

    fn forget_namespace(&self, name: &str) {
        self.owned().namespaces.remove(name);
    }

    /// Namespaces still registered.
    pub fn namespaces(&self) -> Vec<String> {
        self.owned().namespaces.iter().cloned().collect()
    }

    /// Kills every registered process and deletes every registered namespace.
    pub fn clean_all(&self) {
        let (pids, namespaces, cgroup_trees) = {
            let mut owned = self.owned();
            (
                std::mem::take(&mut owned.pids),
                std::mem::take(&mut owned.namespaces),
                std::mem::take(&mut owned.cgroup_trees),
            )
        };
        for pid in pids {
            kill(pid);
        }
        for name in namespaces {
            delete_namespace(&name);
        }
        for (mount, parent) in cgroup_trees {
            super::cgroup::sweep(&mount, &parent);
        }
    }

    /// A guard that cleans everything up when dropped (also while unwinding).
    pub fn guard(&self) -> CleanupGuard {
        CleanupGuard {
            registry: self.clone(),
        }
    }
}

/// Cleans the registry up on drop.
#[derive(Debug)]
pub struct CleanupGuard {
    registry: Registry,
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        self.registry.clean_all();
    }
}

fn kill(pid: i32) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory preconditions; `pid` is a process
        // this lab started (a positive id, never a group or -1).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Kills every process inside `name`, then deletes the namespace.
fn delete_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse() {
                kill(pid);
            }
        }
    }
    // Deleting the namespace also destroys its veth ends and the bridge.
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Removes namespaces whose name starts with `prefix` (a killed run's).
pub fn sweep(prefix: &str) -> Result<usize> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map_err(LabError::io("running ip netns list"))?;
    let mut removed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name.starts_with(prefix) {
            tracing::info!(namespace = name, "lab: removing a leftover namespace");
            delete_namespace(name);
            removed += 1;
        }
    }
    Ok(removed)
}

/// A network namespace the lab made; deleted (with its processes) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    registry: Registry,
}

impl Netns {
    /// Creates `name` with loopback up.
    pub fn create(name: &str, registry: &Registry) -> Result<Netns> {
        ip(&["netns", "add", name])?;
        registry.add_namespace(name);
        let ns = Netns {
            name: name.to_string(),
            registry: registry.clone(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <this> args…`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs `f` on a new thread (named `thread_name`) inside this namespace.
    /// Sockets the thread creates belong to the namespace.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).map_err(LabError::io(format!("opening {path}")))?;
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                // SAFETY: `file` is an open namespace file that outlives the
                // call; setns only changes this thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(LabError::Io {
                        what: "setns".into(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .map_err(LabError::io("spawning a thread"))
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run_in<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        self.spawn_in(thread_name, f)?
            .join()
            .map_err(|_| LabError::Invalid(format!("thread {thread_name} panicked")))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_namespace(&self.name);
        self.registry.forget_namespace(&self.name);
    }
}

/// The bridge every pod's veth joins, inside the ingress namespace.
pub const BRIDGE: &str = "br0";

/// A pod CIDR parsed into the gateway (the first host, which the
/// simulator never hands to a pod) and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodSubnet {
    pub gateway: IpAddr,
    pub prefix_len: u8,
}

impl PodSubnet {
    pub fn parse(cidr: &str) -> Result<PodSubnet> {
        let bad = || LabError::Invalid(format!("pod CIDR {cidr:?}"));
        let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        let gateway = match addr {
            IpAddr::V4(a) if prefix_len <= 30 => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask | 1).into())
            }
            IpAddr::V6(a) if prefix_len <= 126 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask | 1).into())
            }
            _ => return Err(bad()),
        };
        Ok(PodSubnet {
            gateway,
            prefix_len,
        })
    }

    /// The `n`-th host from the top of the subnet (n = 1: the last one;
    /// an IPv4 broadcast address is skipped). The lab keeps the top for
    /// the node's end and its other non-Deployment members.
    pub fn from_top(&self, n: u32) -> IpAddr {
        match self.gateway {
            IpAddr::V4(g) => {
                let host_bits = 32 - u32::from(self.prefix_len);
                let top = u32::from(g) | (u32::MAX >> (32 - host_bits));
                IpAddr::V4((top - n).into())
            }
            IpAddr::V6(g) => {
                let host_bits = 128 - u32::from(self.prefix_len);
                let top = u128::from(g) | (u128::MAX >> (128 - host_bits));
                IpAddr::V6((top - u128::from(n)).into())
            }
        }
    }

    fn with_len(&self, ip: IpAddr) -> String {
        format!("{ip}/{}", self.prefix_len)
    }
}

/// The ingress namespace with its bridge; pods are added with [`Self::add_pod`].
#[derive(Debug)]
pub struct LabNet {
    pub ingress: Netns,
    /// The node's own end of the pod network (`<prefix>-node`, at
    /// [`LabNet::node_ip`]): host processes such as the lab's kubelet
    /// reach pods from here, never from the ingress's namespace.
    pub node: Netns,
    pub subnet: PodSubnet,
    prefix: String,
    registry: Registry,
    /// Namespaces besides the ingress that connect to pods (the node's,
    /// a scraper's): each keeps neighbour entries of its own.
    clients: std::sync::Mutex<Vec<String>>,
}

impl LabNet {
    /// Removes leftovers named `<prefix>*`, then creates `<prefix>-ingress`
    /// with a bridge holding the subnet's gateway address.
    pub fn create(prefix: &str, cidr: &str, registry: &Registry) -> Result<LabNet> {
        let subnet = PodSubnet::parse(cidr)?;
        sweep(prefix)?;
        let ingress = Netns::create(&format!("{prefix}-ingress"), registry)?;
        ingress.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        // A bridge without an address of its own takes its lowest port's,
        // and a change flushes its neighbour entries: every pod leaving
        // would make the node forget every pod's link address. CNI bridges
        // keep one address; so does the lab's.
        ingress.ip(&["link", "set", BRIDGE, "address", "02:00:00:00:02:47"])?;
        let gw = subnet.with_len(subnet.gateway);
        if subnet.gateway.is_ipv6() {
            ingress.ip(&["-6", "addr", "add", &gw, "dev", BRIDGE, "nodad"])?;
        } else {
            ingress.ip(&["addr", "add", &gw, "dev", BRIDGE])?;
        }
        ingress.ip(&["link", "set", BRIDGE, "up"])?;
        let node = attach(
            &ingress,
            prefix,
            "node",
            subnet,
            subnet.from_top(1),
            registry,
        )?;
        let clients = std::sync::Mutex::new(vec![node.name().to_string()]);
        Ok(LabNet {
            ingress,
            node,
            subnet,
            prefix: prefix.to_string(),
            registry: registry.clone(),
            clients,
        })
    }

    /// The node's address on the pod network (the subnet's last host).
    pub fn node_ip(&self) -> IpAddr {
        self.subnet.from_top(1)
    }

    /// Creates pod namespace number `index` with `ip` on its `eth0`, joined
    /// to the bridge. A stale neighbour entry for `ip` (a previous holder's
    /// MAC, when IPs are reused) is removed so the new pod is reachable —
    /// from the ingress and from the node, whose kubelet probes decide
    /// whether the new pod turns Ready (a stale entry there can keep it
    /// unready for longer than a rollout may take).
    pub fn add_pod(&self, index: u32, ip: IpAddr) -> Result<Netns> {
        let ns = self.add_member(&format!("p{index}"), ip)?;
        // The kubelet and the scraper reach pods from their own namespaces:
        // a previous holder's MAC cached there would keep the new pod
        // unreachable (and never ready) for tens of seconds.
        let clients = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for client in clients {
            let _ = run(
                "ip",
                &[
                    "-n",
                    &client,
                    "neigh",
                    "del",
                    &ip.to_string(),
                    "dev",
                    "eth0",
                ],
            );
        }
        Ok(ns)
    }

    /// Like [`Self::add_member`], for a namespace that connects to pods
    /// (a scraper): its neighbour entries are renewed as pod IPs are reused.
    pub fn add_client(&self, suffix: &str, ip: IpAddr) -> Result<Netns> {
        let ns = self.add_member(suffix, ip)?;
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ns.name().to_string());
        Ok(ns)
    }

    /// Creates namespace `<prefix>-<suffix>` reached through the ingress
    /// namespace as a router, not on the pods' link: a host outside the
    /// cluster (a cloud load balancer) whose packets reach pods the way a
    /// VPC routes them, through the pods' node. `remote` is its address on
    /// a point-to-point link to `local`, the node's end (`v<suffix>`).
    pub fn add_routed(&self, suffix: &str, local: IpAddr, remote: IpAddr) -> Result<Netns> {
        let ns = Netns::create(&format!("{}-{suffix}", self.prefix), &self.registry)?;
        let host_end = format!("v{suffix}");
        self.ingress.ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        let (family, len, nodad) = if local.is_ipv6() {
            ("-6", "126", Some("nodad"))
        } else {
            ("-4", "30", None)
        };
        let with_len = |ip: IpAddr| format!("{ip}/{len}");
        let mut add = vec![family, "addr", "add"];
        let local_addr = with_len(local);
        let mut node_end = add.clone();
        node_end.extend([local_addr.as_str(), "dev", host_end.as_str()]);
        node_end.extend(nodad);
        self.ingress.ip(&node_end)?;
        let remote_addr = with_len(remote);
        add.extend([remote_addr.as_str(), "dev", "eth0"]);
        add.extend(nodad);
        ns.ip(&add)?;
        self.ingress.ip(&["link", "set", &host_end, "up"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        let gateway = local.to_string();
        ns.ip(&[family, "route", "add", "default", "via", &gateway])?;
        // The node forwards between the link and the pods' bridge.
        let sysctl = if local.is_ipv6() {
            "net.ipv6.conf.all.forwarding=1"
        } else {
            "net.ipv4.ip_forward=1"
        };
        run(
            "ip",
            &["netns", "exec", &self.ingress.name, "sysctl", "-qw", sysctl],
        )?;
        Ok(ns)
    }

    /// Creates namespace `<prefix>-<suffix>` with `ip` on its `eth0`, joined
    /// to the bridge by veth `v<suffix>` (a pod, or a scraper's pod).
    pub fn add_member(&self, suffix: &str, ip: IpAddr) -> Result<Netns> {
        attach(
            &self.ingress,
            &self.prefix,
            suffix,
            self.subnet,
            ip,
            &self.registry,
        )
    }
}

/// Creates `<prefix>-<suffix>` with `ip` on `eth0`, joined to the bridge
/// in `ingress`. A stale neighbour entry for `ip` (a previous holder's
/// MAC, when IPs are reused) is removed so the new member is reachable.
fn attach(
    ingress: &Netns,
    prefix: &str,
    suffix: &str,
    subnet: PodSubnet,
    ip: IpAddr,
    registry: &Registry,
) -> Result<Netns> {
    let ns = Netns::create(&format!("{prefix}-{suffix}"), registry)?;
    let host_end = format!("v{suffix}");
    ingress.ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ])?;
    ingress.ip(&["link", "set", &host_end, "master", BRIDGE, "up"])?;
    let addr = subnet.with_len(ip);
    if ip.is_ipv6() {
        ns.ip(&["-6", "addr", "add", &addr, "dev", "eth0", "nodad"])?;
    } else {
        ns.ip(&["addr", "add", &addr, "dev", "eth0"])?;
    }
    ns.ip(&["link", "set", "eth0", "up"])?;
    // Hosts off the pods' link (a load balancer outside the cluster) are
    // reached through the node, as a VPC routes to pods.
    let gateway = subnet.gateway.to_string();
    let family = if ip.is_ipv6() { "-6" } else { "-4" };
    ns.ip(&[family, "route", "add", "default", "via", &gateway])?;
    let _ = ingress.ip(&["neigh", "del", &ip.to_string(), "dev", BRIDGE]);
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_the_first_host() {
        let v4 = PodSubnet::parse("10.247.3.0/24").unwrap();
        assert_eq!(v4.gateway, "10.247.3.1".parse::<IpAddr>().unwrap());
        assert_eq!(v4.prefix_len, 24);
        let v6 = PodSubnet::parse("fd00:247:3::/120").unwrap();
        assert_eq!(v6.gateway, "fd00:247:3::1".parse::<IpAddr>().unwrap());
        assert!(PodSubnet::parse("10.0.0.0/32").is_err());
        assert_eq!(v4.from_top(1), "10.247.3.254".parse::<IpAddr>().unwrap());
        assert_eq!(v4.from_top(2), "10.247.3.253".parse::<IpAddr>().unwrap());
        assert_eq!(v6.from_top(1), "fd00:247:3::fe".parse::<IpAddr>().unwrap());
        assert!(PodSubnet::parse("nonsense").is_err());
    }
}
