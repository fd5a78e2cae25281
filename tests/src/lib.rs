//! Fixtures for the privileged tests: network namespaces joined by veth,
//! threads that run inside a namespace, and clean-up that happens even when
//! a test fails (namespaces are removed on drop, including while unwinding).
//!
//! Every address used here lives only inside namespaces these fixtures
//! create; nothing is sent to the host's own networks.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

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

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `name`, removing a leftover of the same name first (a run
    /// that was killed before its clean-up).
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
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
        let handle = self.spawn_in(thread_name, f)?;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("thread {thread_name} panicked"))
    }

    /// Like [`Netns::run_in`] but returns the thread handle.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<T>> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                // SAFETY: `file` is an open netns file; setns only changes
                // this thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .context("spawning a thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
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
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load eBPF programs and create network namespaces: run them as root \
         (`sudo -E cargo xtask test`)"
    );
}
