//! The command line: one module per command, each an arguments struct that
//! runs itself, and here the argument groups several commands share.

pub mod agent;
pub mod cluster;
#[cfg(feature = "lab")]
pub mod lab;
pub mod replay;
pub mod trace;
pub mod tui;

use std::{path::PathBuf, time::Duration};

use clap::Args;
use observer::{
    cluster::selector::LabelSelector,
    cluster::{ClientSource, PodScope, WatchConfig},
    engine::{EngineConfig, IngressConfig, RecommendConfig, arrivals::ExternalSender},
    probe::{ProbeOptions, SyncFailureHook},
};

/// The probe's settings, shared by `trace` and `agent`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Size of the kernel's event ring in bytes (power of two, >= 4096).
    #[arg(long, value_name = "BYTES")]
    pub ring_bytes: Option<u32>,
    /// How connect()'s failures before a SYN (no route) are seen.
    #[arg(long, value_enum, default_value_t = SyncFailureHook::Auto, value_name = "HOOK")]
    pub sync_failure_hook: SyncFailureHook,
    /// A SYN that a thread sends this soon after its own connect failed,
    /// to another destination, is a retry of that failure, not a choice
    /// of the pod (docs/ENGINE.md, "Choices and retries"). Proxies retry
    /// within microseconds, a scheduler tick later on a loaded node; raise
    /// it on very loaded nodes. A retry counts its failure as retried
    /// (hidden from users) only within 1 ms of it, or of its thread's
    /// previous retry of a burst (a proxy's own timeout: this window).
    #[arg(long, default_value = "5ms", value_parser = parse_duration, value_name = "DURATION")]
    pub retry_window: Duration,
    /// Name the process on every failed connect, to any destination. By
    /// default only connects to watched destinations (terminating and
    /// not-ready pods) are followed from their SYN; a failure elsewhere is
    /// reported from its socket (class, addresses, SYN time, pod) and names
    /// its process only when the process gave up itself, since the kernel
    /// finds the others in softirq. This follows every connect instead, at
    /// the price of a socket-map entry per connect on the node
    /// (docs/BENCHMARKS.md). `agent --ingress-comm` turns it on: a host
    /// ingress is known by its process name only.
    #[arg(long)]
    pub full_attribution: bool,
    /// For tests only: skip the capability check, so that a missing grant
    /// fails in the kernel (bpf() refused) rather than in the agent's own
    /// check. Hidden from --help.
    #[arg(long, hide = true)]
    pub skip_preflight: bool,
}

impl Default for ProbeArgs {
    /// What the command line gives without flags.
    fn default() -> Self {
        ProbeArgs {
            ring_bytes: None,
            sync_failure_hook: SyncFailureHook::Auto,
            retry_window: observer::probe::decode::DEFAULT_RETRY_WINDOW,
            full_attribution: false,
            skip_preflight: false,
        }
    }
}

impl ProbeArgs {
    pub fn options(&self) -> ProbeOptions {
        ProbeOptions {
            ring_bytes: self.ring_bytes,
            sync_failure_hook: self.sync_failure_hook,
            hooks_only: false,
            full_attribution: self.full_attribution,
            retry_window: Some(self.retry_window),
            skip_preflight: self.skip_preflight,
        }
    }
}

/// Parses `500ms`, `2s`, `1.5s`, `3m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 500ms, 2s, 1.5s, 3m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Where the Kubernetes API is and what to watch.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Kubeconfig to use. Default: $KUBECONFIG or ~/.kube/config, else the
    /// in-cluster service account; with none, the agent traces only.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not talk to Kubernetes at all (pods show as unknown).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub no_kube: bool,
    /// Watch one namespace only (default: all).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Watch only pods matching this label selector, e.g. `app=web`. The
    /// ingress's own pods must stay watched: their labels say which
    /// connects are the ingress's.
    #[arg(long, value_name = "SELECTOR")]
    pub pod_selector: Option<String>,
    /// Which pods to watch. `auto`: this node's pods (NODE_NAME or
    /// --node-name), widened to every pod of the cluster once an ingress
    /// pod runs on this node (it sends to pods on other nodes), or from
    /// the start with --ingress-comm or without a node name. `node`: this
    /// node's pods only, never widened. `cluster`: every pod, on every
    /// node: on a large cluster, each pod change is then sent once per
    /// agent (docs/DEPLOY.md, "What the API server carries").
    /// EndpointSlices are watched cluster-wide in every mode.
    #[arg(long, value_enum, default_value_t = PodWatch::Auto, value_name = "SCOPE")]
    pub pod_watch: PodWatch,
    /// The node's cgroup v2 hierarchy, which maps each connect to the pod
    /// that made it. Default: this system's cgroup2 mount. In a container,
    /// mount the host's /sys/fs/cgroup read-only and point here (the
    /// DaemonSet uses /host/sys/fs/cgroup).
    #[arg(long, env = "OBSERVER_CGROUP_ROOT", value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,
}

impl KubeArgs {
    pub fn client_source(&self) -> ClientSource {
        if self.no_kube {
            ClientSource::Disabled
        } else if let Some(path) = &self.kubeconfig {
            ClientSource::Kubeconfig(path.clone())
        } else {
            ClientSource::Infer
        }
    }

    /// What to watch; `ingress` is how this node's ingress is found (none:
    /// a command that measures nothing, such as `agent record`, where
    /// `auto` watches the cluster).
    pub fn watch_config(&self, ingress: Option<&IngressConfig>) -> Result<WatchConfig, String> {
        let node = ingress.and_then(|i| i.node.clone());
        let pod_scope = match (self.pod_watch, node) {
            (PodWatch::Cluster, _) => PodScope::Cluster,
            (PodWatch::Node, Some(node)) => PodScope::Node(node),
            (PodWatch::Node, None) => {
                return Err(
                    "--pod-watch node needs this node's name: set NODE_NAME (the \
                            DaemonSet sets it from the downward API) or pass --node-name"
                        .into(),
                );
            }
            (PodWatch::Auto, None) => PodScope::Cluster,
            (PodWatch::Auto, Some(_)) if ingress.is_some_and(|i| !i.comms.is_empty()) => {
                // A host ingress has no pod whose arrival could widen the
                // watch: it needs every pod from the start.
                PodScope::Cluster
            }
            (PodWatch::Auto, Some(node)) => PodScope::NodeUntilIngress {
                node,
                ingress_selectors: ingress
                    .map(IngressConfig::parsed_selectors)
                    .transpose()
                    .map_err(|e| format!("--ingress-selector: {e}"))?
                    .unwrap_or_default(),
            },
        };
        Ok(WatchConfig {
            namespace: self.namespace.clone(),
            pod_label_selector: self.pod_selector.clone(),
            pod_scope,
            ..WatchConfig::default()
        })
    }
}

/// `--pod-watch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PodWatch {
    #[default]
    Auto,
    Node,
    Cluster,
}

/// How measurements become recommendations.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// A termination's window closes once its pod is gone and nothing
    /// connected to its IPs for this long. Keep it above the ingress's
    /// upstream connect timeout (5 s in most setups): a hung connect is
    /// seen only when it fails, and so is the retry after it.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub quiet_period: Duration,
    /// Quantile of the propagation gap the recommended preStop covers.
    #[arg(long, default_value_t = 0.99, value_name = "Q")]
    pub quantile: f64,
    /// Safety margin added to the gap quantile.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub margin: Duration,
    /// Time your app needs to drain after SIGTERM (for the recommended
    /// terminationGracePeriodSeconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain: Duration,
    /// Label selector of the ingress's pods; repeat for several (a pod
    /// matching any one is the ingress). Only the ingress's connects measure
    /// the gap: the kubelet's probes, scrapers and other pods are reported
    /// beside it. Default: the usual labels of ingress-nginx, F5 NGINX,
    /// Envoy Gateway, Contour, Traefik, HAProxy, Kong and Istio's gateway
    /// (docs/DEPLOY.md lists them). Giving one replaces the defaults.
    #[arg(long = "ingress-selector", value_name = "SELECTOR", value_parser = parse_selector)]
    pub ingress_selectors: Vec<String>,
    /// A host process that is the ingress, by its name as in
    /// /proc/PID/comm (a proxy outside Kubernetes); repeatable.
    #[arg(long = "ingress-comm", value_name = "COMM", value_parser = parse_comm)]
    pub ingress_comms: Vec<String>,
    /// This node's name: ingress pods are looked for here. The DaemonSet
    /// sets NODE_NAME from the downward API.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Names an address range of senders outside the cluster, as
    /// CIDR=name (e.g. `10.0.0.0/16=alb` for an ALB's subnets); repeatable.
    /// What lands on this node's terminating pods from that range is
    /// reported under the name; from an address no pod, range or local
    /// process explains, as `external`.
    #[arg(long = "external-sender", value_name = "CIDR=NAME", value_parser = ExternalSender::parse)]
    pub external_senders: Vec<ExternalSender>,
}

impl EngineArgs {
    /// The ingress was named on the command line (a replay then ignores
    /// the recording's own ingress configuration).
    pub fn names_the_ingress(&self) -> bool {
        !self.ingress_selectors.is_empty()
            || !self.ingress_comms.is_empty()
            || self.node_name.is_some()
    }
}

fn parse_selector(text: &str) -> Result<String, String> {
    LabelSelector::parse(text)
        .map(|s| s.to_string())
        .map_err(|e| format!("{e} (expected e.g. app.kubernetes.io/name=ingress-nginx)"))
}

fn parse_comm(text: &str) -> Result<String, String> {
    match text.len() {
        0 => Err("empty process name".into()),
        1..=15 => Ok(text.to_owned()),
        _ => Err(format!(
            "the kernel keeps the first 15 bytes of a process name: use {:?}",
            &text[..text.floor_char_boundary(15)]
        )),
    }
}

impl EngineArgs {
    pub fn engine_config(&self) -> EngineConfig {
        let defaults = EngineConfig::default();
        EngineConfig {
            quiet_period: self.quiet_period,
            recommend: RecommendConfig {
                quantile: self.quantile,
                margin: self.margin,
                drain: self.drain,
                ..defaults.recommend
            },
            ingress: IngressConfig {
                selectors: if self.ingress_selectors.is_empty() {
                    defaults.ingress.selectors
                } else {
                    self.ingress_selectors.clone()
                },
                comms: self.ingress_comms.clone(),
                node: self.node_name.clone(),
            },
            external_senders: self.external_senders.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube(pod_watch: PodWatch) -> KubeArgs {
        KubeArgs {
            kubeconfig: None,
            no_kube: false,
            namespace: None,
            pod_selector: None,
            pod_watch,
            cgroup_root: None,
        }
    }

    #[test]
    fn an_agent_that_knows_its_node_watches_that_nodes_pods_until_an_ingress_runs_there() {
        let ingress = IngressConfig {
            node: Some("node-a".into()),
            ..IngressConfig::default()
        };
        let auto = kube(PodWatch::Auto)
            .watch_config(Some(&ingress))
            .expect("config");
        match auto.pod_scope {
            PodScope::NodeUntilIngress {
                node,
                ingress_selectors,
            } => {
                assert_eq!(node, "node-a");
                assert_eq!(ingress_selectors.len(), ingress.selectors.len());
            }
            other => panic!("{other:?}"),
        }
        let host_ingress = IngressConfig {
            comms: vec!["nginx".into()],
            ..ingress.clone()
        };
        let scope = |watch, ingress: Option<&IngressConfig>| {
            kube(watch).watch_config(ingress).map(|c| c.pod_scope)
        };
        assert_eq!(
            scope(PodWatch::Auto, Some(&host_ingress)),
            Ok(PodScope::Cluster)
        );
        assert_eq!(scope(PodWatch::Auto, None), Ok(PodScope::Cluster));
        assert_eq!(
            scope(PodWatch::Node, Some(&ingress)),
            Ok(PodScope::Node("node-a".into()))
        );
        assert_eq!(
            scope(PodWatch::Cluster, Some(&ingress)),
            Ok(PodScope::Cluster)
        );
        let no_node = IngressConfig::default();
        let error = scope(PodWatch::Node, Some(&no_node)).expect_err("no node");
        assert!(error.contains("NODE_NAME"), "{error}");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert!(
            parse_duration("fast")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
    }
}
