//! `observer lab`: a real rolling update on this machine, measured by the
//! real probe and engine, checked against the lab's own ground truth.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;

use observer::{
    engine::EngineConfig,
    export::AgentState,
    lab::{self, EngineMeasure, LabReport, LabScenario},
    tui::{self, TuiOptions},
};
use tokio::sync::mpsc;

use super::parse_duration;

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Replicas of the lab Deployment.
    #[arg(long, default_value_t = 3)]
    pub pods: u32,
    /// Rolling updates to perform, one after the other.
    #[arg(long, default_value_t = 2)]
    pub rollouts: u32,
    /// How long the lab ingress waits before applying an EndpointSlice
    /// change to nginx (the propagation delay being measured).
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub propagation_delay: Duration,
    /// Random extra delay, 0..JITTER, per change (seeded by --seed).
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub jitter: Duration,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The pods' preStop sleep.
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub prestop: Duration,
    /// How long a pod's app keeps serving after SIGTERM (0: exits at once).
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain: Duration,
    /// How long the pods' app takes to answer each request (0: at once).
    /// Requests are in flight that long, so an app that exits on SIGTERM
    /// cuts the ones it is working on.
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub app_latency: Duration,
    /// Requests per second sent through the ingress for the whole run.
    #[arg(long, default_value_t = 200)]
    pub qps: u32,
    /// Pods get IPv6 addresses.
    #[arg(long)]
    pub ipv6: bool,
    /// Hand freed pod IPs to the next pods (attribution must still be right).
    #[arg(long)]
    pub reuse_ips: bool,
    /// Rerun the scenario with the recommended preStop and report what
    /// failures remain.
    #[arg(long)]
    pub verify: bool,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Copy nginx's access and error logs (the ground truth's raw
    /// material) into this directory at the end of each run, and write
    /// there the connect records the engine measured from
    /// (`obslab<ID>-records.ndjson`), to read a measurement again later.
    #[arg(long, value_name = "DIR")]
    pub keep_logs: Option<PathBuf>,
    /// Watch the run in the interactive TUI; `q` leaves it (and stops the
    /// lab if it is still running). The summary is printed afterwards.
    #[arg(long)]
    pub tui: bool,
    /// The kubelet's HTTP readiness probe period: every pod is probed
    /// (GET /) from the node, from start until its container exits —
    /// through the preStop — and the results are its readiness. 0: no
    /// probes (pods turn Ready on their own).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub probe_period: Duration,
    /// Requests a second, in total, from a bystander pod
    /// (monitoring/prometheus-0) straight to every pod IP, like a metrics
    /// scraper. 0: no bystander.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub bystander_qps: u32,
    /// Idle connections the ingress keeps open to the pods (nginx's
    /// `keepalive N` in the upstream block, HTTP/1.1 to the pods). Real
    /// ingresses pool by default (ingress-nginx:
    /// upstream-keepalive-connections 320), so requests reach a terminating
    /// pod on pooled connections, without a new connect, and an app that
    /// exits at once on SIGTERM cuts them. 0: a new connection per request.
    #[arg(long, default_value_t = lab::scenario::DEFAULT_UPSTREAM_KEEPALIVE, value_name = "N")]
    pub upstream_keepalive: u32,
    /// How long a pod's sandbox (its network namespace) outlives its app:
    /// the kubelet noticing the exit and tearing the sandbox down. Until
    /// then the pod's address refuses connects; after it, connects meet a
    /// vanished address (unreachable or timed out).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub sandbox_linger: Duration,
    /// The ingress data plane. nginx: the config is rewritten and nginx
    /// reloaded on every endpoint change; the truth is its access log
    /// (which knows each try's address and whether it was a retry) and
    /// the wire. haproxy: servers are changed in place over HAProxy's
    /// runtime API (no reload), `retries 3` with `option redispatch`; the
    /// truth is the wire (every SYN and request the ingress put on the
    /// lab's bridge), and HAProxy's log tells which failures it retried.
    /// caddy: Debian's Caddy, a Go proxy as Traefik is, its upstreams
    /// changed in place over its admin API; round robin, a failed try
    /// tried again after --lb-try-interval (on any thread: each request
    /// is a goroutine) for up to --lb-try-duration; the truth is the wire,
    /// and Caddy's log of every try tells which failures it retried.
    /// external: a load balancer outside the cluster sending straight to
    /// pod IPs, as an ALB or NLB in IP mode or a GKE NEG does: HAProxy in
    /// a namespace of its own that is no node, health checks every
    /// --lb-health-interval (down after 2 failed), no retries, keep-alive
    /// as --upstream-keepalive. No probe attributes its sockets: only the
    /// pods' node's receiving side measures (the ARRIVAL column), and the
    /// recommendation comes from it.
    #[arg(long, value_enum, default_value_t = lab::scenario::IngressKind::Nginx)]
    pub ingress: lab::scenario::IngressKind,
    /// With `--ingress external`: how often the load balancer checks each
    /// target (GET /); a target is down after two failed checks.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub lb_health_interval: Duration,
    /// With `--ingress caddy`: the wait before a failed request is tried
    /// again (Caddy's `lb_try_interval`; its default, 250 ms).
    #[arg(long, default_value = "250ms", value_parser = parse_duration, value_name = "DURATION")]
    pub lb_try_interval: Duration,
    /// With `--ingress caddy`: how long Caddy keeps trying one request
    /// (`lb_try_duration`).
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub lb_try_duration: Duration,
    /// The ingress (nginx, haproxy or caddy) sends to the Service's ClusterIP
    /// instead of the pods' addresses; the node DNATs it to the ready
    /// endpoints as kube-proxy's nftables mode does, the rule changed after
    /// --propagation-delay. The ingress's own sockets never connect to a
    /// pod's address: only the pods' node's receiving side sees where its
    /// requests go (the ARRIVAL column); the truth is the wire.
    #[arg(long)]
    pub via_service: bool,
    /// Keeps concurrent labs apart: namespaces obslab<ID>-*, cgroups
    /// obslab<ID>.slice, pod CIDR 10.247.<ID>.0/24 (fd00:247:<ID>::/120).
    #[arg(long, default_value_t = 0, value_name = "ID")]
    pub lab_id: u8,
    /// Where logs go while the TUI owns the terminal (with --tui).
    #[arg(long, default_value = "observer-lab.log", value_name = "FILE")]
    pub log_file: PathBuf,
}

impl LabArgs {
    fn scenario(&self) -> LabScenario {
        LabScenario {
            pods: self.pods,
            rollouts: self.rollouts,
            propagation_delay: self.propagation_delay,
            jitter: self.jitter,
            seed: self.seed,
            prestop: self.prestop,
            drain: self.drain,
            app_latency: self.app_latency,
            qps: self.qps,
            ipv6: self.ipv6,
            reuse_ips: self.reuse_ips,
            keep_logs: self.keep_logs.clone(),
            probe_period: self.probe_period,
            bystander_qps: self.bystander_qps,
            upstream_keepalive: self.upstream_keepalive,
            ingress: self.ingress,
            lb_health_interval: self.lb_health_interval,
            lb_try_interval: self.lb_try_interval,
            lb_try_duration: self.lb_try_duration,
            via_service: self.via_service,
            sandbox_linger: self.sandbox_linger,
            lab_id: self.lab_id,
            ..LabScenario::default()
        }
    }
}

const LAB_FAILED: &str = "the lab run failed (everything it created has been removed)";

/// Runs the lab with the TUI on screen until the user quits. `None` when
/// the user quit before the lab ended (the lab is then cleaned up as on
/// Ctrl-C).
async fn run_with_tui(scenario: &LabScenario, args: &LabArgs) -> anyhow::Result<Option<LabReport>> {
    tui::log_to_file(&args.log_file)
        .with_context(|| format!("sending logs to {}", args.log_file.display()))?;
    let (tx, updates) = mpsc::channel(tui::feed::DEFAULT_CAPACITY);
    // The verify run shows up as a second source next to the first run.
    let mut runs = 0;
    let make_measure = move || {
        runs += 1;
        let source = if runs == 1 { LAB_SOURCE } else { VERIFY_SOURCE };
        let state = AgentState::default();
        tui::follow_state(state.clone(), source, tx.clone());
        EngineMeasure::with_state(EngineConfig::default(), state)
    };
    let options = TuiOptions {
        sources: vec![LAB_SOURCE.to_string()],
        ended_message: "lab finished: press q for the summary".to_string(),
        ..TuiOptions::default()
    };
    let lab = lab::run_lab(scenario, args.verify, make_measure);
    let shown = tui::run_tui(updates, options);
    tokio::pin!(lab, shown);
    tokio::select! {
        report = &mut lab => {
            // Keep the final picture on screen until the user leaves.
            let shown = shown.await;
            let report = report.context(LAB_FAILED)?;
            shown?;
            Ok(Some(report))
        }
        shown = &mut shown => {
            shown?;
            Ok(None)
        }
    }
}

const LAB_SOURCE: &str = "lab";
const VERIFY_SOURCE: &str = "lab verify";

impl LabArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        observer::privileges::require_root(
            "the lab creates network namespaces, runs nginx and loads the eBPF probe; it",
        )?;
        let scenario = self.scenario();
        eprintln!(
            "lab: {} pods, {} rollouts, propagation delay {:?} (jitter {:?}), preStop {:?}, {} qps, \
             upstream keep-alive {}, probes every {:?}, bystander {} qps{}",
            scenario.pods,
            scenario.rollouts,
            scenario.propagation_delay,
            scenario.jitter,
            scenario.prestop,
            scenario.qps,
            scenario.upstream_keepalive,
            scenario.probe_period,
            scenario.bystander_qps,
            if self.verify {
                ", then a verify run"
            } else {
                ""
            }
        );
        let report = if self.tui {
            match run_with_tui(&scenario, &self).await? {
                Some(report) => report,
                None => {
                    eprintln!(
                        "lab: stopped from the TUI before the run ended; everything it created has been removed"
                    );
                    return Ok(());
                }
            }
        } else {
            lab::run_lab(&scenario, self.verify, EngineMeasure::default)
                .await
                .context(LAB_FAILED)?
        };
        print!("{}", lab::render_summary(&report));
        if let Some(path) = &self.report {
            let json = serde_json::to_vec_pretty(&report).context("encoding the report")?;
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("lab: report written to {}", path.display());
        }
        Ok(())
    }
}
