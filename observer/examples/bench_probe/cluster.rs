//! The control plane `observer agent` watches in the benchmarks: the
//! simulator, holding one pod per benchmark destination. Pods that are
//! not Ready are ones the agent watches (each connect to them is followed
//! and measured, as for a terminating pod); Ready pods it does not.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use anyhow::Context as _;
use observer_sim::{Cluster, ClusterConfig, SimServer, StandalonePod};
use tokio::runtime::Handle;

use crate::tracer::AgentSetup;

pub struct SimCluster {
    server: Option<SimServer>,
    _cluster: Cluster,
    runtime: Handle,
    pub agent: AgentSetup,
}

impl SimCluster {
    /// Starts the simulator with a pod at each of `ips` (serving `port`),
    /// Ready or not, and writes the kubeconfig the agent reads into `dir`.
    pub fn start(
        runtime: &Handle,
        dir: &Path,
        ips: &[IpAddr],
        port: u16,
        ready: bool,
    ) -> anyhow::Result<SimCluster> {
        let server = runtime
            .block_on(SimServer::start())
            .context("starting the API simulator")?;
        let cluster = {
            let _in_runtime = runtime.enter();
            Cluster::start(server.store().clone(), ClusterConfig::default())
                .context("starting the simulated cluster")?
        };
        for (i, ip) in ips.iter().enumerate() {
            cluster
                .add_standalone_pod(StandalonePod {
                    namespace: "bench".into(),
                    name: format!("web-{i}"),
                    labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
                    container: "web".into(),
                    ports: vec![i32::from(port)],
                    ip: *ip,
                    ready,
                })
                .with_context(|| format!("creating the pod at {ip}"))?;
        }
        let name = if ready { "ready" } else { "not-ready" };
        let kubeconfig = dir.join(format!("kubeconfig-{name}"));
        server
            .write_kubeconfig(&kubeconfig)
            .context("writing the kubeconfig")?;
        let agent = AgentSetup {
            kubeconfig,
            listen: free_loopback_port()?,
            output: dir.join(format!("agent-{name}.ndjson")),
        };
        Ok(SimCluster {
            server: Some(server),
            _cluster: cluster,
            runtime: runtime.clone(),
            agent,
        })
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port for the agent")?;
    Ok(listener.local_addr()?)
}
