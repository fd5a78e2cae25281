//! What observer costs an ingress node at production shape: the lab's
//! nginx, in its own network namespace, proxying to pods in theirs, loaded
//! by wrk (bounded in time) as hard as it goes. Once with one upstream
//! connection per request (the worst case: a connect per request), once
//! with upstream keep-alive (what ingresses do by default).
//!
//! Each run measures requests/s and the machine's busy CPU time per
//! request (everything the node does for a request: wrk, nginx, the pods,
//! softirq, and the tracer), with no tracer, observer's hooks alone,
//! `observer agent` watching every pod (each is not Ready in the
//! simulator, so every upstream connect is followed and measured, as for
//! terminating pods), and bpftrace. Interleaved rounds, medians, ratios.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use observer::lab::app;
use observer::lab::ingress::DataPlane as _;
use observer::lab::netns::BRIDGE;
use observer::lab::netns::{LabNet, Netns, Registry};
use observer::lab::nginx::{Nginx, NginxPaths};
use observer::lab::service::ClusterIp;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::cluster::SimCluster;
use crate::own_cpu::{Baseline, BpfStats, OwnCpu};
use crate::tracer::{Tracer, http_get, machine_busy_us, median, start};

const ROUNDS: usize = 7;
const RUN_SECS: u64 = 5;
const PODS: u32 = 3;
const POD_PORT: u16 = 8080;
const LISTEN: &str = "127.0.0.1:8000";
const PREFIX: &str = "obsbench";
const CIDR: &str = "10.247.250.0/24";
/// wrk's connections to nginx (kept alive, as clients of an ingress do).
const CLIENT_CONNECTIONS: &str = "32";

/// The columns: a tracer, and for the agent whether it watches the pods.
const COLUMNS: [(Tracer, bool); 5] = [
    (Tracer::None, false),
    (Tracer::HooksOnly, false),
    (Tracer::Agent, false),
    (Tracer::Agent, true),
    (Tracer::Bpftrace, false),
];

fn column_label(tracer: Tracer, watching: bool) -> &'static str {
    match (tracer, watching) {
        (Tracer::Agent, false) => "observer agent, pods Ready (steady state)",
        (Tracer::Agent, true) => "observer agent, every pod watched",
        (tracer, _) => tracer.label(),
    }
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    requests_per_sec: f64,
    cpu_us_per_request: f64,
    /// The tracer's own spending per request: its process and its eBPF
    /// programs.
    own_us_per_request: f64,
}

/// The pods and the ingress namespace; everything goes on drop.
struct Node {
    net: Arc<LabNet>,
    pods: Vec<(Netns, watch::Sender<bool>)>,
    upstreams: Vec<SocketAddr>,
    registry: Registry,
}

impl Node {
    fn create(runtime: &Handle) -> anyhow::Result<Node> {
        let registry = Registry::default();
        let net = Arc::new(LabNet::create(PREFIX, CIDR, &registry).context("the bench network")?);
        // A connect per request at tens of thousands a second: every
        // ephemeral port the ingress has.
        crate::run(Command::new("ip").args([
            "netns",
            "exec",
            net.ingress.name(),
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
        ]))?;
        let mut pods = Vec::new();
        let mut upstreams = Vec::new();
        for index in 0..PODS {
            let ip = net.subnet.from_top(10 + index);
            let ns = net.add_pod(index, ip).context("a pod namespace")?;
            let listener = ns
                .run_in("bench-pod-listen", move || {
                    let l = std::net::TcpListener::bind(SocketAddr::new(ip, POD_PORT))?;
                    l.set_nonblocking(true)?;
                    Ok::<_, std::io::Error>(l)
                })?
                .with_context(|| format!("listening on {ip}:{POD_PORT}"))?;
            let listener = {
                let _in_runtime = runtime.enter();
                tokio::net::TcpListener::from_std(listener)?
            };
            let (close, closed) = watch::channel(false);
            runtime.spawn(app::serve(
                listener,
                format!("web-{index}"),
                closed,
                app::Served::default(),
                Duration::ZERO,
            ));
            pods.push((ns, close));
            upstreams.push(SocketAddr::new(ip, POD_PORT));
        }
        Ok(Node {
            net,
            pods,
            upstreams,
            registry,
        })
    }

    fn pod_ips(&self) -> Vec<IpAddr> {
        self.upstreams.iter().map(SocketAddr::ip).collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for (_, close) in &self.pods {
            let _ = close.send(true);
        }
        self.pods.clear();
        self.registry.clean_all();
    }
}

/// How nginx reaches the pods in one row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// nginx's upstream keep-alive (0: a connect per request).
    pub keepalive: u32,
    /// nginx sends to a Service's ClusterIP, DNATed to the pods by the
    /// node: its connects are to no pod's address, so with every pod
    /// watched only the receiving side follows them (the pods' accepts).
    pub via_cluster_ip: bool,
}

/// The sending side's rows: a connect per request, then keep-alive.
pub const INGRESS_SHAPES: [Shape; 2] = [
    Shape {
        keepalive: 0,
        via_cluster_ip: false,
    },
    Shape {
        keepalive: 32,
        via_cluster_ip: false,
    },
];

/// The receiving side's row: an accept storm into the pods, every
/// connection new, the senders' sockets unwatched.
pub const ACCEPT_SHAPES: [Shape; 1] = [Shape {
    keepalive: 0,
    via_cluster_ip: true,
}];

/// The bench's ClusterIP (outside its pod CIDR).
const CLUSTER_IP: &str = "10.96.250.10:80";

pub fn run(
    observer_bin: &str,
    runtime: &Handle,
    dir: &Path,
    shapes: &[Shape],
) -> anyhow::Result<String> {
    let node = Node::create(runtime)?;
    let _stats = BpfStats::enable()?;
    let steady = SimCluster::start(runtime, dir, &node.pod_ips(), POD_PORT, true)?;
    let watching = SimCluster::start(runtime, dir, &node.pod_ips(), POD_PORT, false)?;
    let mut rows = Vec::new();
    for &shape in shapes {
        let keepalive = shape.keepalive;
        let nginx_dir = dir.join(format!(
            "nginx-keepalive-{keepalive}{}",
            if shape.via_cluster_ip {
                "-cluster-ip"
            } else {
                ""
            }
        ));
        std::fs::create_dir_all(&nginx_dir)
            .with_context(|| format!("creating {}", nginx_dir.display()))?;
        let listen: SocketAddr = LISTEN.parse()?;
        let nginx = Nginx::start(
            &node.net.ingress,
            NginxPaths::new(&nginx_dir),
            listen,
            keepalive,
            &node.registry,
            None,
        )
        .context("starting nginx")?;
        let cluster_ip = if shape.via_cluster_ip {
            let service: SocketAddr = CLUSTER_IP.parse()?;
            let cluster_ip = ClusterIp::create(node.net.ingress.name(), BRIDGE, service)
                .context("the ClusterIP's DNAT rule")?;
            cluster_ip
                .apply(&node.upstreams)
                .context("the ClusterIP's endpoints")?;
            nginx.apply(&[service]).context("configuring nginx")?;
            Some(cluster_ip)
        } else {
            nginx.apply(&node.upstreams).context("configuring nginx")?;
            None
        };
        std::thread::sleep(Duration::from_millis(500));
        let mut rates: [Vec<f64>; 5] = Default::default();
        let mut cpu: [Vec<f64>; 5] = Default::default();
        let mut own: [Vec<f64>; 5] = Default::default();
        for round in 0..ROUNDS {
            // Each round starts with another column: whatever the previous
            // run leaves behind (sockets in TIME_WAIT, a tracer detaching)
            // falls on every column in turn, not always on the first.
            for i in (0..COLUMNS.len()).map(|c| (c + round) % COLUMNS.len()) {
                let (tracer, watched) = COLUMNS[i];
                if !crate::tracer::runs_in_round(tracer, round) {
                    continue;
                }
                let cluster = if watched { &watching } else { &steady };
                let label = column_label(tracer, watched);
                let sample = measure(tracer, watched, observer_bin, &node, cluster, keepalive)
                    .with_context(|| format!("keepalive {keepalive} with {label}"))?;
                eprintln!(
                    "bench probe: ingress (keepalive {keepalive}{}) round {} {label}: {:.0} requests/s, {:.1} µs CPU per request, {:.3} µs its own",
                    if shape.via_cluster_ip {
                        ", through a ClusterIP"
                    } else {
                        ""
                    },
                    round + 1,
                    sample.requests_per_sec,
                    sample.cpu_us_per_request,
                    sample.own_us_per_request,
                );
                rates[i].push(sample.requests_per_sec);
                cpu[i].push(sample.cpu_us_per_request);
                own[i].push(sample.own_us_per_request);
            }
        }
        let sample = |i: usize| Sample {
            requests_per_sec: median(&rates[i]),
            cpu_us_per_request: median(&cpu[i]),
            own_us_per_request: if own[i].is_empty() {
                0.0
            } else {
                median(&own[i])
            },
        };
        rows.push((shape, std::array::from_fn(sample)));
        drop(nginx);
        drop(cluster_ip);
        // The access log grows by the hundred megabytes; nothing reads it.
        let _ = std::fs::remove_dir_all(&nginx_dir);
    }
    drop((steady, watching));
    drop(node);
    Ok(render(&rows))
}

fn measure(
    tracer: Tracer,
    watched: bool,
    observer_bin: &str,
    node: &Node,
    cluster: &SimCluster,
    keepalive: u32,
) -> anyhow::Result<Sample> {
    let baseline = Baseline::now()?;
    let tracing = start(tracer, observer_bin, Some(&cluster.agent))?;
    let own = OwnCpu::start(baseline, &tracing)?;
    let busy_before = machine_busy_us()?;
    let wrk = Command::new("ip")
        .args(["netns", "exec", node.net.ingress.name(), "wrk"])
        .args(["--threads", "1", "--connections", CLIENT_CONNECTIONS])
        .args(["--duration", &format!("{RUN_SECS}s")])
        .arg(format!("http://{LISTEN}/"))
        .output()
        .context("running wrk (Debian package `wrk`; `./x setup` installs it)")?;
    let busy = machine_busy_us()?.saturating_sub(busy_before);
    let (own_cpu_us, own_programs_us) = own.spent_us()?;
    let out = String::from_utf8_lossy(&wrk.stdout);
    if !wrk.status.success() {
        bail!(
            "wrk failed ({}): {out}{}",
            wrk.status,
            String::from_utf8_lossy(&wrk.stderr)
        );
    }
    let report = WrkReport::parse(&out).with_context(|| format!("reading wrk's report:\n{out}"))?;
    if report.errors > 0 {
        bail!(
            "{} requests failed; the figures would mean nothing:\n{out}",
            report.errors
        );
    }
    if tracer == Tracer::Agent && watched && keepalive == 0 {
        // Every request opened a connection to a watched pod: the agent
        // must have measured them, or it was not watching.
        let processed = agent_events(cluster.agent.listen).unwrap_or(0);
        if (processed as f64) < report.requests as f64 / 2.0 {
            bail!(
                "the agent processed {processed} events for {} requests to watched pods",
                report.requests
            );
        }
    }
    drop(tracing);
    Ok(Sample {
        requests_per_sec: report.requests_per_sec,
        cpu_us_per_request: busy as f64 / report.requests.max(1) as f64,
        own_us_per_request: (own_cpu_us + own_programs_us) / report.requests.max(1) as f64,
    })
}

fn agent_events(listen: SocketAddr) -> Option<u64> {
    let (_, metrics) = http_get(listen, "/metrics")?;
    metrics
        .lines()
        .find(|l| l.starts_with("observer_events_processed_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

#[derive(Debug, PartialEq)]
struct WrkReport {
    requests: u64,
    requests_per_sec: f64,
    /// Non-2xx answers and socket errors.
    errors: u64,
}

impl WrkReport {
    fn parse(out: &str) -> Option<WrkReport> {
        let mut requests = None;
        let mut requests_per_sec = None;
        let mut errors = 0;
        for line in out.lines().map(str::trim) {
            if let Some(rate) = line.strip_prefix("Requests/sec:") {
                requests_per_sec = rate.trim().parse().ok();
            } else if line.contains(" requests in ") {
                requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
            } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
                errors += n.trim().parse::<u64>().ok()?;
            } else if let Some(counts) = line.strip_prefix("Socket errors:") {
                errors += counts
                    .split(',')
                    .filter_map(|c| c.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        Some(WrkReport {
            requests: requests?,
            requests_per_sec: requests_per_sec?,
            errors,
        })
    }
}

fn render(rows: &[(Shape, [Sample; 5])]) -> String {
    let mut out = String::from(
        "| upstream connections | no tracer | observer's hooks alone | observer agent, steady state | observer agent, every pod watched | bpftrace |\n\
         |---|---|---|---|---|---|\n",
    );
    for (shape, [none, hooks, steady, watching, bpftrace]) in rows {
        let keepalive = &shape.keepalive;
        let figures = |s: &Sample| {
            format!(
                "{:.0} req/s, {:.1} µs",
                s.requests_per_sec, s.cpu_us_per_request
            )
        };
        let cell = |s: &Sample| {
            format!(
                "{}: {:+.1} % rate, {:+.1} % CPU; its own {:.2} µs = **{:.2} %**",
                figures(s),
                (s.requests_per_sec / none.requests_per_sec - 1.0) * 100.0,
                (s.cpu_us_per_request / none.cpu_us_per_request - 1.0) * 100.0,
                s.own_us_per_request,
                s.own_us_per_request / none.cpu_us_per_request * 100.0,
            )
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            if shape.via_cluster_ip {
                "one per request through a ClusterIP: the pods' accept storm, the receiving side alone"
                    .to_string()
            } else if *keepalive == 0 {
                "one per request (a connect per request)".to_string()
            } else {
                format!("keep-alive (`keepalive {keepalive}`)")
            },
            figures(none),
            cell(hooks),
            cell(steady),
            cell(watching),
            cell(bpftrace),
        ));
    }
    out.push_str(
        "\nCells: requests per second through nginx, and the machine's busy CPU time per \
         request (user, system, irq and softirq of every process: wrk, nginx, the pods, the \
         tracer); then each against no tracer: the change in requests/s and in CPU per \
         request, which varies run to run by more than a tracer costs; then what the tracer \
         itself spent per request (its process's CPU time and its eBPF programs' run time, \
         `kernel.bpf_stats_enabled`), as a share of a request's CPU with no tracer: the \
         figure the targets are held against. Steady state: every pod Ready, nothing watched, the probe only looks for \
         failures. Every pod watched: each is not Ready in the simulator, so every upstream \
         connect is followed and measured, the most a rollout can ask of the agent. Through a \
         ClusterIP, nginx connects to the Service's address and the node DNATs each connect to a \
         pod (as kube-proxy does): nginx's sockets go to no watched address, so what the agent \
         follows is each pod's side, the connection it accepts and its close.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_reports() {
        let out = "Running 3s test @ http://127.0.0.1:8000/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.57ms  297.77us   6.67ms   86.47%
    Req/Sec    20.51k     1.02k   21.81k    83.33%
  61234 requests in 3.00s, 9.70MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  20401.52
Transfer/sec:      3.23MB
";
        assert_eq!(
            WrkReport::parse(out),
            Some(WrkReport {
                requests: 61234,
                requests_per_sec: 20401.52,
                errors: 7,
            })
        );
        assert_eq!(WrkReport::parse("wrk: invalid URL"), None);
    }
}
