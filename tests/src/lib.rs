//! Fixtures for the privileged tests: network namespaces joined by veth,
//! threads that run inside a namespace, and clean-up that happens even when
//! a test fails (namespaces are removed on drop, including while unwinding).
//!
//! Every address used here lives only inside namespaces these fixtures
//! create; nothing is sent to the host's own networks.

use std::{
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};
use observer::lab::netns::{Netns as LabNetns, Registry};

/// Runs a command and fails with its stderr when it fails.
pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted on drop: the lab's namespace (one
/// implementation of creating, entering and removing them), with the
/// conveniences tests want.
pub struct Netns {
    pub name: String,
    inner: LabNetns,
}

impl Netns {
    /// Creates `name`, removing a leftover of the same name first (a run
    /// that was killed before its clean-up).
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let inner = LabNetns::create(name, &Registry::default())
            .with_context(|| format!("creating network namespace {name}"))?;
        Ok(Netns {
            name: name.to_string(),
            inner,
        })
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs `f` on a new thread named `thread_name` (which becomes the
    /// task's `comm`) inside this namespace, and returns its result.
    pub fn run_in<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        Ok(self.inner.run_in(thread_name, f)?)
    }

    /// Like [`Netns::run_in`] but returns the thread to join.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<InNamespace<T>> {
        Ok(InNamespace(self.inner.spawn_in(thread_name, f)?))
    }
}

/// A thread running inside a namespace.
pub struct InNamespace<T>(std::thread::JoinHandle<Result<T, observer::lab::LabError>>);

impl<T> InNamespace<T> {
    /// Waits for the thread; entering the namespace failing counts as the
    /// thread failing.
    pub fn join(self) -> std::thread::Result<T> {
        match self.0.join() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Box::new(error.to_string())),
            Err(panic) => Err(panic),
        }
    }
}

/// A client namespace and a server namespace on one veth link, with IPv4
/// and IPv6 addresses on a subnet unique to this test.
pub struct Link {
    pub client: Netns,
    pub server: Netns,
    pub client_v4: IpAddr,
    pub server_v4: IpAddr,
    pub client_v6: IpAddr,
    pub server_v6: IpAddr,
    /// An address with no route from the client (synchronous ENETUNREACH).
    pub unroutable_v4: IpAddr,
    pub unroutable_v6: IpAddr,
}

static NEXT_SUBNET: AtomicU32 = AtomicU32::new(0);

impl Link {
    /// `tag` names the namespaces (`obs-<tag>-c`, `obs-<tag>-s`); `subnet`
    /// (0-255) keeps tests that run at the same time apart.
    pub fn create(tag: &str, subnet: u8) -> anyhow::Result<Link> {
        NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        let client = Netns::create(&format!("obs-{tag}-c"))?;
        let server = Netns::create(&format!("obs-{tag}-s"))?;
        client.exec(&[
            "ip",
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            &server.name,
        ])?;
        let c4 = format!("10.200.{subnet}.1");
        let s4 = format!("10.200.{subnet}.2");
        let c6 = format!("fd00:200:{subnet:x}::1");
        let s6 = format!("fd00:200:{subnet:x}::2");
        client.exec(&["ip", "addr", "add", &format!("{c4}/24"), "dev", "veth0"])?;
        server.exec(&["ip", "addr", "add", &format!("{s4}/24"), "dev", "veth1"])?;
        client.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{c6}/64"),
            "dev",
            "veth0",
            "nodad",
        ])?;
        server.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{s6}/64"),
            "dev",
            "veth1",
            "nodad",
        ])?;
        client.exec(&["ip", "link", "set", "veth0", "up"])?;
        server.exec(&["ip", "link", "set", "veth1", "up"])?;
        Ok(Link {
            client,
            server,
            client_v4: c4.parse()?,
            server_v4: s4.parse()?,
            client_v6: c6.parse()?,
            server_v6: s6.parse()?,
            unroutable_v4: format!("10.201.{subnet}.9").parse()?,
            unroutable_v6: format!("fd00:201:{subnet:x}::9").parse()?,
        })
    }

    /// Makes the server answer SYNs to `port` with ICMP host-unreachable.
    pub fn reject_host_unreachable(&self, port: u16) -> anyhow::Result<()> {
        self.server_nft(&format!(
            "tcp dport {port} reject with icmpx type host-unreachable"
        ))
    }

    /// Makes the server silently drop SYNs to `port`.
    pub fn drop_syns(&self, port: u16) -> anyhow::Result<()> {
        self.server_nft(&format!("tcp dport {port} drop"))
    }

    fn server_nft(&self, rule: &str) -> anyhow::Result<()> {
        let script = format!(
            "table inet obs {{\n chain input {{\n  type filter hook input priority 0;\n  {rule}\n }}\n}}\n"
        );
        let mut full = vec!["ip", "netns", "exec", &self.server.name, "nft", "-f", "-"];
        let mut child = Command::new(full.remove(0))
            .args(&full)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nft (install nftables: `cargo xtask setup`)")?;
        use std::io::Write as _;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(script.as_bytes())
            .context("writing nft script")?;
        let output = child.wait_with_output().context("waiting for nft")?;
        if !output.status.success() {
            bail!(
                "nft failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Fails unless this process can load eBPF programs: privileged tests never
/// skip, they fail with a reason.
pub fn require_root() {
    if let Err(error) =
        observer::privileges::require_root("loading eBPF programs and creating network namespaces")
    {
        panic!("{error}");
    }
}

/// The namespaces whose names start with `prefix`.
pub fn namespaces_named(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("ip netns list: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// No namespace and no pod cgroup of the lab `scenario` ran is left.
pub fn assert_lab_clean(scenario: &observer::lab::LabScenario) {
    // Namespace names are `obslab<id>-…`; the trailing dash keeps lab 1
    // apart from lab 11.
    let prefix = format!("{}-", scenario.name_prefix());
    let left = namespaces_named(&prefix);
    assert!(left.is_empty(), "the lab left namespaces behind: {left:?}");
    let mount =
        observer::lab::cgroup::v2_mount().unwrap_or_else(|e| panic!("a cgroup v2 mount: {e}"));
    let parent = mount.join(scenario.cgroup_parent());
    assert!(!parent.exists(), "the lab left {} behind", parent.display());
}
