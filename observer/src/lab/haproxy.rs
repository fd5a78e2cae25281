//! The lab's second ingress: Debian's HAProxy, updated in place through its
//! runtime API the way HAProxy- and Envoy-based ingress controllers apply
//! endpoint changes: no reload, no new workers, the same threads keep their
//! pooled connections.
//!
//! The backend is a fixed set of server slots (`server-template`), all in
//! maintenance at start. An endpoint change puts the slots of removed
//! addresses into maintenance (no new request goes there; requests in
//! flight finish) and gives free slots the added addresses
//! (`set server … addr`, then `state ready`), over the stats socket.
//! Retries are configured as HAProxy users do: `retries 3` with
//! `option redispatch`, so with round robin over several servers a failed
//! connect is retried at once on the next server; connect timeout 5 s.
//! With upstream keep-alive, idle server connections are shared between
//! requests (`http-reuse always`); without, one connection per request.
//!
//! The same HAProxy also stands in for a load balancer outside the cluster
//! (an ALB or NLB with IP targets, a GKE NEG): [`HaproxyRole::ExternalLb`]
//! health-checks its targets every few seconds and marks one down after
//! two failed checks, as cloud load balancers do, and does not retry a
//! refused connect (`retries 0`: an ALB answers 502).
//!
//! HAProxy's log (to stdout, one line per request) records each request's
//! connect retries (`%rc`) and how it ended (`%tsc`): the ingress's own
//! account of which failures it hid ([`parse_log_line`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::daemon::Daemon;
use super::ingress::DataPlane;
use super::netns::{Netns, Registry};
use super::{LabError, Result};

/// The HAProxy binary (Debian's).
pub const HAPROXY_BIN: &str = "/usr/sbin/haproxy";

/// Server slots per pod the lab may run: a rollout surges, and a removed
/// address's slot is reused last, so idle connections of the old address
/// are long gone before its slot gets a new one.
const SLOTS_PER_POD: usize = 4;

/// The log format: accept time (ms), status, termination state, connect
/// retries (`+N` when redispatched), the server that answered last.
const LOG_FORMAT: &str = "%Ts.%ms %ST %tsc %rc %si:%sp";

/// Where one HAProxy instance keeps its files.
#[derive(Clone, Debug)]
pub struct HaproxyPaths {
    pub dir: PathBuf,
}

impl HaproxyPaths {
    pub fn new(dir: &Path) -> HaproxyPaths {
        HaproxyPaths {
            dir: dir.to_path_buf(),
        }
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("haproxy.sock")
    }

    /// HAProxy's request log (its stdout).
    pub fn access_log(&self) -> PathBuf {
        self.dir.join("haproxy-access.log")
    }

    pub fn error_log(&self) -> PathBuf {
        self.dir.join("haproxy-error.log")
    }
}

/// The full haproxy.cfg: `slots` server slots in maintenance, proxied to
/// from `listen`.
pub fn render_config(
    paths: &HaproxyPaths,
    listen: SocketAddr,
    slots: usize,
    settings: &HaproxySettings,
) -> String {
    let (port, keepalive) = (settings.port, settings.keepalive);
    let mut reuse = if keepalive > 0 {
        format!("    http-reuse always\n    default-server pool-max-conn {keepalive}\n")
    } else {
        "    http-reuse never\n    option http-server-close\n".to_string()
    };
    let retries = match settings.role {
        HaproxyRole::Ingress => "    retries 3\n    option redispatch\n".to_string(),
        HaproxyRole::ExternalLb { health_interval } => {
            let _ = write!(
                reuse,
                "    option httpchk GET /\n    default-server check inter {}ms fall 2 rise 2\n",
                health_interval.as_millis().max(1)
            );
            "    retries 0\n".to_string()
        }
    };
    let mut text = String::new();
    let _ = write!(
        text,
        "# Written by the observer lab; servers change through the runtime API.
global
    stats socket {socket} mode 600 level admin
    log stdout format raw local0
    nbthread 2
defaults
    mode http
    log global
    option httplog
    log-format \"{LOG_FORMAT}\"
    timeout connect 5s
    timeout client 30s
    timeout server 30s
{retries}frontend lab
    bind {listen}
    default_backend pods
backend pods
    balance roundrobin
{reuse}    server-template pod 1-{slots} 127.0.0.1:{port} disabled
",
        socket = paths.socket().display(),
    );
    text
}

/// Which address each server slot holds.
#[derive(Debug, Default)]
struct Slots {
    /// `Some(addr)` while the slot serves `addr`.
    held: Vec<Option<SocketAddr>>,
    /// Free slots, least recently freed first.
    free: Vec<usize>,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            held: vec![None; n],
            free: (0..n).collect(),
        }
    }

    /// The runtime API commands that make the slots hold exactly
    /// `upstreams`.
    fn commands(&mut self, upstreams: &[SocketAddr]) -> Result<Vec<String>> {
        let want: BTreeSet<SocketAddr> = upstreams.iter().copied().collect();
        let mut commands = Vec::new();
        for (i, held) in self.held.iter_mut().enumerate() {
            if let Some(addr) = *held
                && !want.contains(&addr)
            {
                commands.push(format!("set server pods/pod{} state maint", i + 1));
                *held = None;
                self.free.push(i);
            }
        }
        for addr in want {
            if self.held.contains(&Some(addr)) {
                continue;
            }
            if self.free.is_empty() {
                return Err(LabError::Invalid(format!(
                    "HAProxy has no free server slot for {addr} ({} slots)",
                    self.held.len()
                )));
            }
            let i = self.free.remove(0);
            self.held[i] = Some(addr);
            commands.push(format!(
                "set server pods/pod{} addr {} port {}",
                i + 1,
                addr.ip(),
                addr.port()
            ));
            commands.push(format!("set server pods/pod{} state ready", i + 1));
        }
        Ok(commands)
    }
}

/// A running HAProxy in the ingress namespace.
#[derive(Debug)]
pub struct Haproxy {
    paths: HaproxyPaths,
    slots: Mutex<Slots>,
    role: HaproxyRole,
    /// Last: the process stops once the rest is dropped.
    process: Daemon,
}

impl Haproxy {
    /// Starts HAProxy inside `ns` and, with `cgroup`, inside that cgroup
    /// (the ingress pod's), with `pods` pods' worth of server slots.
    pub fn start(
        ns: &Netns,
        paths: HaproxyPaths,
        listen: SocketAddr,
        settings: HaproxySettings,
        registry: &Registry,
        cgroup: Option<&Path>,
    ) -> Result<Haproxy> {
        let slots = settings.pods as usize * SLOTS_PER_POD + 8;
        let text = render_config(&paths, listen, slots, &settings);
        std::fs::write(paths.conf(), text)
            .map_err(LabError::io(format!("writing {}", paths.conf().display())))?;
        let log = std::fs::File::create(paths.access_log()).map_err(LabError::io(format!(
            "creating {}",
            paths.access_log().display()
        )))?;
        let errors = std::fs::File::create(paths.error_log()).map_err(LabError::io(format!(
            "creating {}",
            paths.error_log().display()
        )))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), HAPROXY_BIN, "-db", "-f"])
            .arg(paths.conf())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(errors);
        let process = Daemon::spawn(cmd, cgroup, registry, HAPROXY_BIN)?;
        let haproxy = Haproxy {
            paths,
            slots: Mutex::new(Slots::new(slots)),
            role: settings.role,
            process,
        };
        haproxy.wait_ready()?;
        Ok(haproxy)
    }

    fn wait_ready(&self) -> Result<()> {
        self.process
            .wait_ready("HAProxy", &self.paths.error_log(), || {
                self.command("show info").is_ok()
            })
    }

    pub fn paths(&self) -> &HaproxyPaths {
        &self.paths
    }

    /// Sends one runtime API command line (commands separated by `;`) and
    /// returns HAProxy's answer.
    fn command(&self, line: &str) -> Result<String> {
        let socket = self.paths.socket();
        let what = format!("HAProxy's stats socket {}", socket.display());
        let mut stream = UnixStream::connect(&socket).map_err(LabError::io(what.clone()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(LabError::io(what.clone()))?;
        stream
            .write_all(format!("{line}\n").as_bytes())
            .map_err(LabError::io(what.clone()))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(LabError::io(what))?;
        Ok(answer)
    }
}

/// How the lab runs HAProxy.
#[derive(Clone, Copy, Debug)]
pub struct HaproxySettings {
    /// The most pods the Deployment runs (slots are sized from it).
    pub pods: u32,
    /// The pods' port.
    pub port: u16,
    /// Idle server connections kept per server (0: none).
    pub keepalive: u32,
    pub role: HaproxyRole,
}

/// What the lab's HAProxy stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaproxyRole {
    /// An in-cluster ingress: `retries 3`, `option redispatch`.
    Ingress,
    /// A load balancer outside the cluster sending straight to pod IPs:
    /// health checks every `health_interval`, a target down after two
    /// failed ones, no retries. A target the controller registers is
    /// healthy at once (it is Ready, as a readiness gate would have it).
    ExternalLb { health_interval: Duration },
}

impl DataPlane for Haproxy {
    fn apply(&self, upstreams: &[SocketAddr]) -> Result<()> {
        let mut commands = lock(&self.slots).commands(upstreams)?;
        if matches!(self.role, HaproxyRole::ExternalLb { .. }) {
            // A registered target starts healthy; its checks go on from
            // there (a server leaving maintenance would otherwise wait for
            // two passed checks, seconds without a target at start).
            let healthy: Vec<String> = commands
                .iter()
                .filter_map(|c| c.strip_suffix(" state ready"))
                .map(|server| format!("{server} health up"))
                .collect();
            commands.extend(healthy);
        }
        if commands.is_empty() {
            return Ok(());
        }
        let answer = self.command(&commands.join("; "))?;
        // Successful `set server` commands answer nothing, or say what
        // changed; every refusal names what was wrong.
        let refused = answer.lines().find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("no such")
                || l.contains("require")
                || l.contains("unknown")
                || l.contains("invalid")
        });
        match refused {
            Some(line) => Err(LabError::Invalid(format!(
                "HAProxy refused an endpoint change: {line}"
            ))),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One request as HAProxy logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaproxyRequest {
    /// Wall-clock ms of the request's acceptance.
    pub accepted_ms: u64,
    pub status: u16,
    /// The termination state (`--` for a normal end; `SC` a server
    /// connection failure, `SH` the server aborted before its headers).
    pub termination: String,
    /// Connect retries: each followed a failed connect.
    pub retries: u32,
    /// The last server tried, when there was one.
    pub server: Option<SocketAddr>,
}

impl HaproxyRequest {
    /// The request ended in an error from the server side: the failure
    /// of its last try reached the user.
    pub fn failed_at_server(&self) -> bool {
        self.termination.starts_with('S')
    }
}

/// Parses one line of the lab's HAProxy log ([`LOG_FORMAT`]).
pub fn parse_log_line(line: &str) -> Option<HaproxyRequest> {
    let mut fields = line.split_whitespace();
    let (secs, millis) = fields.next()?.split_once('.')?;
    let accepted_ms = secs.parse::<u64>().ok()? * 1000 + millis.parse::<u64>().ok()?;
    let status = fields.next()?.parse().ok()?;
    let termination = fields.next()?.to_string();
    let retries = fields.next()?.trim_start_matches('+').parse().ok()?;
    let server = fields.next().and_then(parse_server);
    Some(HaproxyRequest {
        accepted_ms,
        status,
        termination,
        retries,
        server,
    })
}

/// `%si:%sp`: `10.0.0.1:8080`, `fd00::1:8080` (IPv6 unbracketed), or
/// `-:-` when no server was reached.
fn parse_server(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.rsplit_once(':')?;
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

/// HAProxy's own account of failures, over a run: failed connects it
/// retried (each retry follows one) and requests whose last try failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HaproxyTotals {
    pub requests: u64,
    pub retried: u64,
    pub not_retried: u64,
}

impl HaproxyTotals {
    pub fn from_log(requests: &[HaproxyRequest]) -> HaproxyTotals {
        let mut totals = HaproxyTotals::default();
        for r in requests {
            totals.requests += 1;
            totals.retried += u64::from(r.retries);
            if r.failed_at_server() {
                totals.not_retried += 1;
            }
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slots_follow_the_endpoint_set_reusing_freed_slots_last() {
        let mut slots = Slots::new(3);
        let a = addr("10.0.0.1:8080");
        let b = addr("10.0.0.2:8080");
        let c = addr("[fd00::3]:8080");
        assert_eq!(
            slots.commands(&[a, b]).unwrap(),
            [
                "set server pods/pod1 addr 10.0.0.1 port 8080",
                "set server pods/pod1 state ready",
                "set server pods/pod2 addr 10.0.0.2 port 8080",
                "set server pods/pod2 state ready",
            ]
        );
        assert!(slots.commands(&[b, a]).unwrap().is_empty(), "no change");
        // a leaves, c arrives: c takes the never-used slot 3, not a's.
        assert_eq!(
            slots.commands(&[b, c]).unwrap(),
            [
                "set server pods/pod1 state maint",
                "set server pods/pod3 addr fd00::3 port 8080",
                "set server pods/pod3 state ready",
            ]
        );
        let d = addr("10.0.0.4:8080");
        let e = addr("10.0.0.5:8080");
        assert!(slots.commands(&[b, c, d, e]).is_err(), "no slot left");
    }

    #[test]
    fn log_lines_give_retries_and_server_side_failures() {
        let ok = parse_log_line("1733150000.123 200 -- 0 10.247.0.5:8080").unwrap();
        assert_eq!(ok.accepted_ms, 1_733_150_000_123);
        assert_eq!(ok.server, Some(addr("10.247.0.5:8080")));
        assert!(!ok.failed_at_server());
        let redispatched = parse_log_line("1733150000.200 200 -- +1 10.247.0.6:8080").unwrap();
        assert_eq!(redispatched.retries, 1);
        let failed = parse_log_line("1733150000.300 503 SC 3 fd00:247::5:8080").unwrap();
        assert_eq!(failed.server, Some(addr("[fd00:247::5]:8080")));
        assert!(failed.failed_at_server());
        let none = parse_log_line("1733150000.400 503 SC 0 -:-").unwrap();
        assert_eq!(none.server, None);
        assert_eq!(parse_log_line("garbage"), None);
        let totals = HaproxyTotals::from_log(&[ok, redispatched, failed, none]);
        assert_eq!(
            totals,
            HaproxyTotals {
                requests: 4,
                retried: 4,
                not_retried: 2
            }
        );
    }
}
