//! The lab's Go data plane: Debian's Caddy reverse-proxying to the pods,
//! its upstreams changed in place through its admin API (no restart), as
//! the stand-in for Traefik and the other Go proxies.
//!
//! Go proxies retry unlike nginx and HAProxy: each request runs on a
//! goroutine, so its retry may run on any OS thread, and it comes after a
//! backoff (`lb_try_interval`, 250 ms by default), for as long as
//! `lb_try_duration` allows. The selection policy is round robin, and a
//! retry picks whichever upstream comes next, the failed one included.
//! With upstream keep-alive, Go's transport keeps idle connections per
//! upstream; without, a connection per request.
//!
//! An endpoint change replaces the handler's upstream list through the
//! admin API (`PATCH …/handle/0/upstreams`); Caddy provisions the new
//! handler and drains the old one, the process and its listeners stay.
//!
//! Caddy's log (JSON lines, at debug level) records every try of every
//! request ("upstream roundtrip", with the dial's error when it failed)
//! and every request's end ("handled request"): the proxy's own account of
//! its choices, its retries and which failures it hid
//! ([`access_entries`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::daemon::Daemon;
use super::ingress::DataPlane;
use super::netns::{Netns, Registry};
use super::nginx::{AccessEntry, UpstreamTry};
use super::{LabError, Result};

/// The Caddy binary (Debian's).
pub const CADDY_BIN: &str = "/usr/bin/caddy";

/// Caddy's own default wait between two tries of a request.
pub const DEFAULT_LB_TRY_INTERVAL: Duration = Duration::from_millis(250);

/// How long the lab lets Caddy keep trying a request.
pub const DEFAULT_LB_TRY_DURATION: Duration = Duration::from_secs(2);

/// The path of the reverse proxy's upstream list in the config.
const UPSTREAMS_PATH: &str = "/config/apps/http/servers/lab/routes/0/handle/0/upstreams";

/// Where one Caddy instance keeps its files.
#[derive(Clone, Debug)]
pub struct CaddyPaths {
    pub dir: PathBuf,
}

impl CaddyPaths {
    pub fn new(dir: &Path) -> CaddyPaths {
        CaddyPaths {
            dir: dir.to_path_buf(),
        }
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.join("caddy.json")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("caddy-admin.sock")
    }

    /// Caddy's log: every try and every request, JSON lines.
    pub fn access_log(&self) -> PathBuf {
        self.dir.join("caddy-access.log")
    }

    /// What the process printed itself (start-up failures).
    pub fn error_log(&self) -> PathBuf {
        self.dir.join("caddy-error.log")
    }
}

/// How the lab runs Caddy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaddySettings {
    /// Idle connections kept per upstream (0: a connection per request).
    pub keepalive: u32,
    /// The wait between two tries of one request (`lb_try_interval`).
    pub try_interval: Duration,
    /// How long a request is tried (`lb_try_duration`).
    pub try_duration: Duration,
}

impl Default for CaddySettings {
    fn default() -> Self {
        CaddySettings {
            keepalive: 0,
            try_interval: DEFAULT_LB_TRY_INTERVAL,
            try_duration: DEFAULT_LB_TRY_DURATION,
        }
    }
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The upstream list in Caddy's JSON.
fn upstreams_json(upstreams: &[SocketAddr]) -> serde_json::Value {
    serde_json::Value::Array(
        upstreams
            .iter()
            .map(|a| serde_json::json!({ "dial": a.to_string() }))
            .collect(),
    )
}

/// The whole config: the admin API on a socket of its own, the log at
/// debug level (each try is logged there), one server proxying to no
/// upstream until the controller names some.
pub fn render_config(paths: &CaddyPaths, listen: SocketAddr, settings: &CaddySettings) -> String {
    let keep_alive = if settings.keepalive > 0 {
        serde_json::json!({
            "enabled": true,
            "max_idle_conns_per_host": settings.keepalive,
        })
    } else {
        serde_json::json!({ "enabled": false })
    };
    let config = serde_json::json!({
        "admin": {
            "listen": format!("unix/{}", paths.admin_socket().display()),
            "config": { "persist": false },
        },
        "storage": { "module": "file_system", "root": paths.dir.join("data").display().to_string() },
        "logging": { "logs": { "default": {
            "level": "DEBUG",
            "writer": { "output": "file", "filename": paths.access_log().display().to_string() },
            "encoder": { "format": "json" },
        }}},
        "apps": { "http": { "servers": { "lab": {
            "listen": [listen.to_string()],
            "automatic_https": { "disable": true },
            "logs": {},
            "routes": [{ "handle": [{
                "handler": "reverse_proxy",
                "upstreams": [],
                "transport": { "protocol": "http", "keep_alive": keep_alive },
                "load_balancing": {
                    "selection_policy": { "policy": "round_robin" },
                    "try_duration": go_duration(settings.try_duration),
                    "try_interval": go_duration(settings.try_interval),
                },
            }]}],
        }}}},
    });
    config.to_string()
}

/// A running Caddy in the ingress namespace.
#[derive(Debug)]
pub struct Caddy {
    paths: CaddyPaths,
    process: Daemon,
}

impl Caddy {
    /// Starts Caddy inside `ns` and, with `cgroup`, inside that cgroup (the
    /// ingress pod's).
    pub fn start(
        ns: &Netns,
        paths: CaddyPaths,
        listen: SocketAddr,
        settings: CaddySettings,
        registry: &Registry,
        cgroup: Option<&Path>,
    ) -> Result<Caddy> {
        std::fs::write(paths.conf(), render_config(&paths, listen, &settings))
            .map_err(LabError::io(format!("writing {}", paths.conf().display())))?;
        let errors = std::fs::File::create(paths.error_log()).map_err(LabError::io(format!(
            "creating {}",
            paths.error_log().display()
        )))?;
        let errors_too = errors
            .try_clone()
            .map_err(LabError::io("Caddy's output file".to_string()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), CADDY_BIN, "run", "--config"])
            .arg(paths.conf())
            // Caddy keeps its state under $HOME and the XDG directories:
            // the lab's directory, not the user's.
            .env("HOME", &paths.dir)
            .env("XDG_CONFIG_HOME", &paths.dir)
            .env("XDG_DATA_HOME", &paths.dir)
            .stdin(Stdio::null())
            .stdout(errors)
            .stderr(errors_too);
        let process = Daemon::spawn(cmd, cgroup, registry, CADDY_BIN)?;
        let caddy = Caddy { paths, process };
        caddy.wait_ready()?;
        Ok(caddy)
    }

    fn wait_ready(&self) -> Result<()> {
        self.process
            .wait_ready("Caddy", &self.paths.error_log(), || {
                self.admin("GET", "/config/", None).is_ok()
            })
    }

    pub fn paths(&self) -> &CaddyPaths {
        &self.paths
    }

    /// One admin API request; an answer other than 200 is an error naming
    /// Caddy's reason.
    fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Result<String> {
        let socket = self.paths.admin_socket();
        let what = format!("Caddy's admin socket {}", socket.display());
        let mut stream = UnixStream::connect(&socket).map_err(LabError::io(what.clone()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(LabError::io(what.clone()))?;
        let body = body.unwrap_or("");
        // Over a socket Caddy accepts only an empty Host.
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: \r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(LabError::io(what.clone()))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(LabError::io(what))?;
        let status = answer.split_whitespace().nth(1).unwrap_or("");
        if status == "200" {
            Ok(answer)
        } else {
            let reason = answer.split("\r\n\r\n").nth(1).unwrap_or(&answer);
            Err(LabError::Invalid(format!(
                "Caddy's admin API answered {status} to {method} {path}: {}",
                reason.trim()
            )))
        }
    }
}

impl DataPlane for Caddy {
    fn apply(&self, upstreams: &[SocketAddr]) -> Result<()> {
        let body = upstreams_json(upstreams).to_string();
        self.admin("PATCH", UPSTREAMS_PATH, Some(&body)).map(drop)
    }
}

/// One line of Caddy's log that the lab reads.
#[derive(Clone, Debug, PartialEq)]
pub enum CaddyLine {
    /// A try of a request at an upstream, logged when it ended.
    Try {
        /// Wall-clock nanoseconds of the log line: the try's end.
        end_wall_ns: u64,
        duration_ns: u64,
        /// The client connection the request came on (`ip:port`): a
        /// connection's requests come one after another.
        client: String,
        upstream: SocketAddr,
        /// The pod's status, when it answered.
        status: Option<u16>,
        /// The dial's or the round trip's error, when the try failed.
        error: Option<String>,
    },
    /// A request's end.
    Handled {
        end_wall_ns: u64,
        client: String,
        status: u16,
    },
}

fn client_of(value: &serde_json::Value) -> Option<String> {
    let request = value.get("request")?;
    Some(format!(
        "{}:{}",
        request.get("remote_ip")?.as_str()?,
        request.get("remote_port")?.as_str()?
    ))
}

fn seconds_ns(value: Option<&serde_json::Value>) -> Option<u64> {
    let seconds = value?.as_f64()?;
    (seconds >= 0.0).then_some((seconds * 1e9) as u64)
}

/// Parses one line of Caddy's log; lines of no interest (start-up, admin
/// requests) and lines that are not JSON give `None`.
pub fn parse_log_line(line: &str) -> Option<CaddyLine> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let end_wall_ns = seconds_ns(value.get("ts"))?;
    match value.get("msg")?.as_str()? {
        "upstream roundtrip" => Some(CaddyLine::Try {
            end_wall_ns,
            duration_ns: seconds_ns(value.get("duration")).unwrap_or(0),
            client: client_of(&value)?,
            upstream: value.get("upstream")?.as_str()?.parse().ok()?,
            status: value
                .get("status")
                .and_then(serde_json::Value::as_u64)
                .and_then(|s| u16::try_from(s).ok()),
            error: value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned),
        }),
        "handled request" => Some(CaddyLine::Handled {
            end_wall_ns,
            client: client_of(&value)?,
            status: u16::try_from(value.get("status")?.as_u64()?).ok()?,
        }),
        _ => None,
    }
}

/// Caddy's log as requests with their tries, in the shape of nginx's
/// access log, so that one truth ([`super::truth`]) reads both: a
/// request's tries are those logged on its client connection since that
/// connection's previous request ended; every try after the first is a
/// retry. A failed dial never connected; a try that failed after its dial
/// (the pod closed or reset the connection) was cut. Requests still open
/// at the end of the log are left out.
pub fn access_entries(lines: &[CaddyLine]) -> Vec<AccessEntry> {
    let mut open: HashMap<&str, Vec<UpstreamTry>> = HashMap::new();
    let mut entries = Vec::new();
    for line in lines {
        match line {
            CaddyLine::Try {
                end_wall_ns,
                duration_ns,
                client,
                upstream,
                status,
                error,
            } => {
                let tries = open.entry(client).or_default();
                let dial_failed = error.as_deref().is_some_and(|e| e.starts_with("dial "));
                tries.push(UpstreamTry {
                    addr: *upstream,
                    start_wall_ns: end_wall_ns.saturating_sub(*duration_ns),
                    duration_ns: *duration_ns,
                    status: if error.is_some() { Some(502) } else { *status },
                    retry: !tries.is_empty(),
                    connected: !dial_failed,
                    answered: error.is_none(),
                    pooled: None,
                });
            }
            CaddyLine::Handled {
                end_wall_ns,
                client,
                status,
            } => entries.push(AccessEntry {
                end_wall_ns: *end_wall_ns,
                status: *status,
                tries: open.remove(client.as_str()).unwrap_or_default(),
            }),
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = r#"{"level":"debug","ts":1796680790.5864584,"logger":"http.handlers.reverse_proxy","msg":"upstream roundtrip","upstream":"10.247.0.5:8080","duration":0.000211044,"request":{"remote_ip":"10.247.0.1","remote_port":"44306","proto":"HTTP/1.1","method":"GET","host":"lab","uri":"/"},"error":"dial tcp 10.247.0.5:8080: connect: connection refused"}"#;
    const ANSWERED: &str = r#"{"level":"debug","ts":1796680790.8391874,"logger":"http.handlers.reverse_proxy","msg":"upstream roundtrip","upstream":"[fd00:247::6]:8080","duration":0.0020634,"request":{"remote_ip":"10.247.0.1","remote_port":"44306","proto":"HTTP/1.1","method":"GET","host":"lab","uri":"/"},"status":200}"#;
    const HANDLED: &str = r#"{"level":"info","ts":1796680790.839616,"logger":"http.log.access","msg":"handled request","request":{"remote_ip":"10.247.0.1","remote_port":"44306","proto":"HTTP/1.1","method":"GET","host":"lab","uri":"/"},"duration":0.253462385,"size":359,"status":200}"#;

    #[test]
    fn log_lines_give_each_try_and_each_request() {
        let Some(CaddyLine::Try {
            client,
            upstream,
            error,
            end_wall_ns,
            duration_ns,
            ..
        }) = parse_log_line(REFUSED)
        else {
            panic!("a try");
        };
        assert_eq!(client, "10.247.0.1:44306");
        assert_eq!(upstream, "10.247.0.5:8080".parse::<SocketAddr>().unwrap());
        assert!(error.unwrap().contains("connection refused"));
        assert_eq!(duration_ns, 211_044);
        assert_eq!(end_wall_ns / 1_000_000, 1_796_680_790_586);
        let Some(CaddyLine::Try {
            upstream,
            error,
            status,
            ..
        }) = parse_log_line(ANSWERED)
        else {
            panic!("a try");
        };
        assert_eq!(
            upstream,
            "[fd00:247::6]:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!((error, status), (None, Some(200)));
        assert!(matches!(
            parse_log_line(HANDLED),
            Some(CaddyLine::Handled { status: 200, .. })
        ));
        assert_eq!(
            parse_log_line(r#"{"msg":"serving initial configuration","ts":1.0}"#),
            None
        );
        assert_eq!(parse_log_line("not json"), None);
    }

    #[test]
    fn a_connections_tries_until_its_request_ends_are_that_requests() {
        let try_ = |client: &str, at: u64, error: Option<&str>| CaddyLine::Try {
            end_wall_ns: at,
            duration_ns: 10,
            client: client.into(),
            upstream: "10.0.0.1:8080".parse().unwrap(),
            status: error.is_none().then_some(200),
            error: error.map(str::to_owned),
        };
        let handled = |client: &str, status| CaddyLine::Handled {
            end_wall_ns: 0,
            client: client.into(),
            status,
        };
        let refused = Some("dial tcp 10.0.0.1:8080: connect: connection refused");
        let lines = [
            // a: refused, then answered 250 ms later: one failure hidden.
            try_("a", 100, refused),
            // b interleaves: refused, then cut: one hidden, one seen (502).
            try_("b", 110, refused),
            try_("a", 250_000_100, None),
            handled("a", 200),
            try_("b", 250_000_110, Some("EOF")),
            handled("b", 502),
            // a's next request: answered at once.
            try_("a", 300_000_000, None),
            handled("a", 200),
            // c never ended: left out.
            try_("c", 300_000_000, refused),
        ];
        let entries = access_entries(&lines);
        assert_eq!(entries.len(), 3);
        let b = &entries[1];
        assert_eq!(b.tries.len(), 2);
        assert_eq!(b.tries[0].start_wall_ns, 100);
        assert!(!b.tries[0].retry && b.tries[1].retry);
        assert!(!b.tries[0].connected && b.tries[0].failed());
        assert!(b.tries[1].cut(), "failed after its dial: cut");
        let totals = super::super::truth::TryTotals::from_log(&entries);
        assert_eq!(
            (
                totals.requests,
                totals.tries,
                totals.retries,
                totals.failed_retried,
                totals.failed_not_retried
            ),
            (3, 5, 2, 2, 1)
        );
    }

    #[test]
    fn the_config_names_the_retry_settings_and_the_admin_socket() {
        let paths = CaddyPaths::new(Path::new("/tmp/lab"));
        let settings = CaddySettings {
            keepalive: 32,
            try_interval: Duration::from_millis(100),
            try_duration: Duration::from_secs(2),
        };
        let text = render_config(&paths, "10.247.0.1:80".parse().unwrap(), &settings);
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        let proxy = &config["apps"]["http"]["servers"]["lab"]["routes"][0]["handle"][0];
        assert_eq!(proxy["load_balancing"]["try_interval"], "100ms");
        assert_eq!(proxy["load_balancing"]["try_duration"], "2000ms");
        assert_eq!(
            proxy["transport"]["keep_alive"]["max_idle_conns_per_host"],
            32
        );
        assert_eq!(config["admin"]["listen"], "unix//tmp/lab/caddy-admin.sock");
        assert_eq!(
            upstreams_json(&["[fd00::1]:8080".parse().unwrap()]),
            serde_json::json!([{ "dial": "[fd00::1]:8080" }])
        );
    }
}
