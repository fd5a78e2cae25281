//! Command-line arguments of `observer agent`, `record` and `replay`, and
//! their translation into [`AgentOptions`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    agent::AgentOptions,
    cluster::selector::LabelSelector,
    cluster::{ClientSource, WatchConfig},
    engine::{EngineConfig, IngressConfig, RecommendConfig},
    probe::ProbeOptions,
    trace::{ProbeArgs, parse_duration},
};

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

    pub fn watch_config(&self) -> WatchConfig {
        WatchConfig {
            namespace: self.namespace.clone(),
            pod_label_selector: self.pod_selector.clone(),
            ..WatchConfig::default()
        }
    }
}

/// How measurements become recommendations.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// A termination's window closes once its pod is gone and nothing
    /// connected to its IPs for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
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
        }
    }
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address of the HTTP port: /metrics, /healthz, /readyz, /api/v1/…
    #[arg(long, default_value = "0.0.0.0:9990", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Write closed terminations and findings as NDJSON here (`-` = stdout).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also record every input for `observer replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Stop by itself after this long.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl AgentArgs {
    pub fn options(&self) -> AgentOptions {
        AgentOptions {
            listen: Some(self.listen),
            output: self.output.clone(),
            record: self.record.clone(),
            kube: self.kube.client_source(),
            watch: self.kube.watch_config(),
            cgroup_root: self.kube.cgroup_root.clone(),
            engine: self.engine.engine_config(),
            probe: ProbeOptions {
                // A host ingress is known by its process name only: every
                // failure must name its process.
                full_attribution: self.probe.full_attribution
                    || !self.engine.ingress_comms.is_empty(),
                ..self.probe.options()
            },
            duration: self.duration,
            ..AgentOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The recording to write (NDJSON, one input per line).
    pub file: PathBuf,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

impl RecordArgs {
    pub fn options(&self) -> AgentOptions {
        AgentOptions {
            record: Some(self.file.clone()),
            kube: self.kube.client_source(),
            watch: self.kube.watch_config(),
            cgroup_root: self.kube.cgroup_root.clone(),
            duration: self.duration,
            ..AgentOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A recording made by `observer record` or `observer agent --record`.
    pub file: PathBuf,
    /// Write NDJSON here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}
