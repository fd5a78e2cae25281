//! A Service's ClusterIP, programmed the way kube-proxy's nftables mode
//! does: one rule in the node's `output` NAT hook that DNATs a connect to
//! the ClusterIP to one of the ready endpoints, chosen at random from a map
//! (`numgen random mod N map { … }`). The ingress sends to the ClusterIP;
//! the pods see connections from the ingress; the ingress's own sockets
//! keep the ClusterIP as their destination, so the sending side never sees
//! a connect to a pod's address. Only the pod's node's receiving side does.
//!
//! Each endpoint change replaces the rule in one nftables transaction
//! (flush the chain, add the rule), after the controller's propagation
//! delay, as kube-proxy applies EndpointSlice changes after its sync
//! period. Connections already DNATed keep their conntrack entry: pooled
//! connections go on to the pod they were opened to, as through
//! kube-proxy.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use super::ingress::DataPlane;
use super::{LabError, Result};

/// The nftables table the lab's kube-proxy owns.
const TABLE: &str = "obslab_kube_proxy";

/// A ClusterIP and port, DNATed in namespace `netns` to the endpoints
/// [`DataPlane::apply`] gives.
#[derive(Debug)]
pub struct ClusterIp {
    netns: String,
    service: SocketAddr,
}

impl ClusterIp {
    /// Creates the table and an empty chain in `netns` (where the ingress
    /// runs), and a route to `service` through `device` (a connect needs a
    /// route to its destination before the NAT hook rewrites it, as a
    /// node's default route gives it): connects to `service` go nowhere
    /// until the first change.
    pub fn create(netns: &str, device: &str, service: SocketAddr) -> Result<ClusterIp> {
        let cluster_ip = ClusterIp {
            netns: netns.to_string(),
            service,
        };
        let host = match service.ip() {
            IpAddr::V4(ip) => format!("{ip}/32"),
            IpAddr::V6(ip) => format!("{ip}/128"),
        };
        super::netns::ip(&["-n", netns, "route", "add", &host, "dev", device])?;
        cluster_ip.load(&format!(
            "table inet {TABLE} {{\n chain output {{\n  type nat hook output priority -100;\n }}\n}}\n"
        ))?;
        Ok(cluster_ip)
    }

    pub fn address(&self) -> SocketAddr {
        self.service
    }

    fn load(&self, script: &str) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(LabError::io("running nft (install nftables: `./x setup`)"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(LabError::io("writing the nft script"))?;
        }
        let output = child
            .wait_with_output()
            .map_err(LabError::io("waiting for nft"))?;
        if !output.status.success() {
            return Err(LabError::Command {
                command: format!("nft -f - <<{script}"),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// The transaction that makes `service` DNAT to exactly `endpoints`.
pub fn rule_script(service: SocketAddr, endpoints: &[SocketAddr]) -> String {
    let mut script = format!("flush chain inet {TABLE} output\n");
    if endpoints.is_empty() {
        // No endpoint: the connect goes to the ClusterIP itself, which
        // nothing answers (kube-proxy rejects it instead).
        return script;
    }
    let (family, bracket) = match service.ip() {
        IpAddr::V4(_) => ("ip", false),
        IpAddr::V6(_) => ("ip6", true),
    };
    let mut map = String::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        if i > 0 {
            map.push_str(", ");
        }
        let ip = if bracket {
            format!("[{}]", endpoint.ip())
        } else {
            endpoint.ip().to_string()
        };
        let _ = write!(map, "{i} : {ip} . {}", endpoint.port());
    }
    let _ = writeln!(
        script,
        "add rule inet {TABLE} output {family} daddr {} tcp dport {} dnat {family} to numgen random mod {} map {{ {map} }}",
        service.ip(),
        service.port(),
        endpoints.len(),
    );
    script
}

impl DataPlane for ClusterIp {
    fn apply(&self, upstreams: &[SocketAddr]) -> Result<()> {
        let mut endpoints = upstreams.to_vec();
        endpoints.sort();
        self.load(&rule_script(self.service, &endpoints))
    }
}

impl Drop for ClusterIp {
    fn drop(&mut self) {
        let _ = self.load(&format!("delete table inet {TABLE}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_maps_the_cluster_ip_to_each_endpoint() {
        let service: SocketAddr = "10.96.3.10:80".parse().unwrap();
        let endpoints: Vec<SocketAddr> = vec![
            "10.247.3.2:8080".parse().unwrap(),
            "10.247.3.3:8080".parse().unwrap(),
        ];
        let script = rule_script(service, &endpoints);
        assert_eq!(
            script,
            "flush chain inet obslab_kube_proxy output\n\
             add rule inet obslab_kube_proxy output ip daddr 10.96.3.10 tcp dport 80 dnat ip to \
             numgen random mod 2 map { 0 : 10.247.3.2 . 8080, 1 : 10.247.3.3 . 8080 }\n"
        );
        let v6 = rule_script(
            "[fd00:96:3::10]:80".parse().unwrap(),
            &["[fd00:247:3::2]:8080".parse().unwrap()],
        );
        assert!(
            v6.contains("ip6 daddr fd00:96:3::10 tcp dport 80 dnat ip6 to numgen random mod 1 map { 0 : [fd00:247:3::2] . 8080 }"),
            "{v6}"
        );
        assert_eq!(
            rule_script(service, &[]),
            "flush chain inet obslab_kube_proxy output\n",
            "no endpoint, no rule"
        );
    }
}
