//! The lab's ingress proxy: a real nginx in the ingress namespace, with its
//! own prefix, pid file, logs and temp dirs under the lab's directory.
//!
//! The config proxies straight to pod IPs (as ingress-nginx and Envoy do)
//! with ingress-nginx's defaults: `proxy_next_upstream error timeout`, three
//! tries, a 5 s connect timeout, and `max_fails=0` so a failing pod keeps its
//! turn until the config drops it — the propagation gap is not hidden by
//! passive health checks. With upstream keep-alive (ingress-nginx's
//! default), each worker keeps idle connections to the pods and sends later
//! requests on them without a new connect. The access log records, per
//! request, every upstream tried, how long each try took and how it
//! connected, which is the ground truth of when nginx sent what where
//! ([`parse_access_line`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::cgroup::place_on_exec;
use super::netns::{Netns, Registry};
use super::{LabError, Result};

/// The nginx binary (Debian's).
pub const NGINX_BIN: &str = "/usr/sbin/nginx";

/// The access log format: log time, request time, status, then per try the
/// upstream address, its response time, its status, its connect time and
/// its header time, and last the pod's `X-Lab-Conn-Request` header (the
/// app numbers the requests it answers on each connection; nginx keeps the
/// last try's headers only).
///
/// What the fields show, established with nginx 1.22 (Debian) in the lab,
/// keep-alive on and off:
/// - `$upstream_connect_time` is `-` for a try whose connect failed
///   (refused, unreachable, timed out): nginx never had a connection.
/// - For a try on a pooled connection nginx sets it at once, in the same
///   event-loop turn: always `0.000`. A fresh connect to a pod on the lab's
///   bridge takes well under a millisecond, so a new connection shows
///   `0.000` too (93 % of them with keep-alive off): the connect time alone
///   cannot tell them apart. The app's per-connection request number can:
///   1 on a new connection, more on a pooled one ([`UpstreamTry::pooled`]).
/// - A request cut in flight (the app closed the connection after nginx
///   sent on it) has a connect time but no header time (`-`) and status
///   502; the error log says "upstream prematurely closed connection" or
///   "Connection reset by peer".
/// - Every entry of `$upstream_addr` after the first is a retry: nginx
///   moves to the next upstream only because the try before failed.
const LOG_FORMAT: &str = r#"'$msec $request_time $status "$upstream_addr" "$upstream_response_time" "$upstream_status" "$upstream_connect_time" "$upstream_header_time" "$upstream_http_x_lab_conn_request"'"#;

/// The pods' response header numbering the requests of a connection.
pub const CONN_REQUEST_HEADER: &str = "X-Lab-Conn-Request";

/// ingress-nginx's `upstream-keepalive-timeout` (60 s) and
/// `upstream-keepalive-requests` (10000).
const KEEPALIVE_TIMEOUT: &str = "60s";
const KEEPALIVE_REQUESTS: u32 = 10_000;

/// Where one nginx instance keeps its files.
#[derive(Clone, Debug)]
pub struct NginxPaths {
    pub dir: PathBuf,
}

impl NginxPaths {
    pub fn new(dir: &Path) -> NginxPaths {
        NginxPaths {
            dir: dir.to_path_buf(),
        }
    }
    pub fn conf(&self) -> PathBuf {
        self.dir.join("nginx.conf")
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("nginx.pid")
    }
    pub fn access_log(&self) -> PathBuf {
        self.dir.join("access.log")
    }
    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }
}

/// The full nginx.conf for `listen` proxying to `upstreams`. With no
/// upstream, a `down` placeholder keeps the config valid and nginx answers
/// 502 without connecting anywhere. `keepalive` idle connections per worker
/// are kept to the upstreams (HTTP/1.1 without `Connection: close`, as
/// ingress-nginx does); 0 opens one connection per request.
pub fn render_config(
    paths: &NginxPaths,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    keepalive: u32,
) -> String {
    let dir = paths.dir.display();
    let mut servers = String::new();
    for up in upstreams {
        let _ = writeln!(servers, "        server {up} max_fails=0;");
    }
    if upstreams.is_empty() {
        servers.push_str("        server 127.0.0.1:9 down;\n");
    }
    let mut pool = String::new();
    let mut location = String::new();
    if keepalive > 0 {
        let _ = writeln!(pool, "        keepalive {keepalive};");
        let _ = writeln!(pool, "        keepalive_timeout {KEEPALIVE_TIMEOUT};");
        let _ = writeln!(pool, "        keepalive_requests {KEEPALIVE_REQUESTS};");
        location.push_str("            proxy_http_version 1.1;\n");
        location.push_str("            proxy_set_header Connection \"\";\n");
    }
    format!(
        "# Written by the observer lab; rewritten on every endpoint change.
user root;
worker_processes 1;
pid {pid};
error_log {error} warn;
events {{
    worker_connections 4096;
}}
http {{
    log_format lab {LOG_FORMAT};
    access_log {access} lab;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream pods {{
{servers}{pool}    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://pods;
            proxy_connect_timeout 5s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
{location}        }}
    }}
}}
",
        pid = paths.pid().display(),
        error = paths.error_log().display(),
        access = paths.access_log().display(),
    )
}

/// A running nginx master in the ingress namespace.
#[derive(Debug)]
pub struct Nginx {
    paths: NginxPaths,
    listen: SocketAddr,
    keepalive: u32,
    master: i32,
    registry: Registry,
}

impl Nginx {
    /// Writes a config with no upstream and starts nginx inside `ns` and,
    /// with `cgroup`, inside that (an ingress controller pod's): the
    /// process moves itself there before it execs, so the master and every
    /// worker it forks connect from the pod's cgroup.
    pub fn start(
        ns: &Netns,
        paths: NginxPaths,
        listen: SocketAddr,
        keepalive: u32,
        registry: &Registry,
        cgroup: Option<&Path>,
    ) -> Result<Nginx> {
        write_config(&paths, &render_config(&paths, listen, &[], keepalive))?;
        let conf = paths.conf();
        let prefix = format!("{}/", paths.dir.display());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), NGINX_BIN, "-p", &prefix, "-e"])
            .arg(paths.error_log())
            .arg("-c")
            .arg(&conf);
        let procs = cgroup
            .map(|cg| place_on_exec(&mut cmd, cg))
            .transpose()
            .map_err(|e| LabError::Nginx(format!("ingress pod cgroup: {e}")))?;
        let output = cmd
            .output()
            .map_err(LabError::io(format!("running {NGINX_BIN}")))?;
        drop(procs);
        if !output.status.success() {
            return Err(LabError::Nginx(format!(
                "start failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        // nginx daemonizes; its master writes the pid file once it is up.
        let deadline = Instant::now() + Duration::from_secs(5);
        let master = loop {
            if let Some(pid) = std::fs::read_to_string(paths.pid())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                break pid;
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout("nginx's pid file".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        registry.add_pid(master);
        Ok(Nginx {
            paths,
            listen,
            keepalive,
            master,
            registry: registry.clone(),
        })
    }

    pub fn paths(&self) -> &NginxPaths {
        &self.paths
    }

    /// The master's pid.
    pub fn master(&self) -> i32 {
        self.master
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) has no memory preconditions; `master` is the
        // positive pid of the nginx master this lab started.
        let rc = unsafe { libc::kill(self.master, signal) };
        if rc != 0 {
            return Err(LabError::Io {
                what: format!("signalling nginx master {}", self.master),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Asks nginx to stop and waits (briefly) for the master to exit.
    pub fn stop(&self) {
        let _ = self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && process_exists(self.master) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl super::ingress::DataPlane for Nginx {
    /// Rewrites the config for `upstreams` and reloads (SIGHUP): the master
    /// starts new workers and lets the old ones finish their requests.
    fn apply(&self, upstreams: &[SocketAddr]) -> Result<()> {
        write_config(
            &self.paths,
            &render_config(&self.paths, self.listen, upstreams, self.keepalive),
        )?;
        self.signal(libc::SIGHUP)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        // Whatever is left (workers) dies with the ingress namespace.
        self.registry.forget_pid(self.master);
    }
}

fn process_exists(pid: i32) -> bool {
    // A zombie has no /proc/<pid>/exe target; a live process does.
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok()
}

/// Writes the config atomically, so a reload never reads half a file.
fn write_config(paths: &NginxPaths, text: &str) -> Result<()> {
    let tmp = paths.dir.join("nginx.conf.tmp");
    std::fs::write(&tmp, text).map_err(LabError::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, paths.conf()).map_err(LabError::io(format!("renaming {}", tmp.display())))
}

/// One try of a request at one upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTry {
    pub addr: SocketAddr,
    /// Wall-clock nanoseconds when nginx started the try (took a pooled
    /// connection or began connecting).
    pub start_wall_ns: u64,
    /// How long the try took (`$upstream_response_time`): it ended, failed
    /// or was cut, at `start_wall_ns + duration_ns`.
    pub duration_ns: u64,
    /// The try's status: 502/504 for a failed try, else the pod's answer.
    pub status: Option<u16>,
    /// Not the request's first try: nginx made it only because the try
    /// before it failed.
    pub retry: bool,
    /// nginx had a connection (a pooled one or a new one that connected);
    /// false when the connect itself failed (`$upstream_connect_time` `-`).
    pub connected: bool,
    /// The pod's response header arrived.
    pub answered: bool,
    /// The try went over a pooled connection: `Some(true)` when the pod
    /// answered it as the second or later request of its connection,
    /// `Some(false)` for a new connection (answered as the first request,
    /// or a connect that failed), `None` when it cannot be told: a try cut
    /// before any answer had a connection of unknown age.
    pub pooled: Option<bool>,
}

impl UpstreamTry {
    /// Cut in flight: nginx had a connection and sent the request, and the
    /// connection closed (or was reset) before any answer.
    pub fn cut(&self) -> bool {
        self.connected && !self.answered
    }

    /// nginx logged the try as failed (502, 504 or no status).
    pub fn failed(&self) -> bool {
        matches!(self.status, Some(502 | 504) | None)
    }
}

/// One access log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEntry {
    /// Wall-clock nanoseconds when the request was logged (its end).
    pub end_wall_ns: u64,
    pub status: u16,
    pub tries: Vec<UpstreamTry>,
}

/// "1700000000.123" (seconds with a fraction) in nanoseconds.
fn parse_seconds_ns(text: &str) -> Option<u64> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: u64 = secs.parse().ok()?;
    let mut frac_ns: u64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        let digit = u64::from(c.to_digit(10)?);
        frac_ns += digit * 10u64.pow(8 - i as u32);
    }
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// The comma (and, across internal redirects, colon) separated list of a
/// `$upstream_*` variable.
fn upstream_list(field: &str) -> Vec<&str> {
    field
        .split([','])
        .flat_map(|part| part.split(" : "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses a line of the `lab` log format (or the older one without the
/// connect and header times, whose tries then count as connected and
/// answered unless they failed). Each try's start is the request's start
/// (log time − request time) plus the durations of the tries before it:
/// nginx moves to the next upstream as soon as one fails.
pub fn parse_access_line(line: &str) -> Option<AccessEntry> {
    let mut head = line.splitn(4, ' ');
    let end_wall_ns = parse_seconds_ns(head.next()?)?;
    let request_ns = parse_seconds_ns(head.next()?)?;
    let status: u16 = head.next()?.parse().ok()?;
    let quoted: Vec<&str> = head.next()?.split('"').skip(1).step_by(2).collect();
    let [addrs, times, statuses, rest @ ..] = quoted.as_slice() else {
        return None;
    };
    let times = upstream_list(times);
    let statuses = upstream_list(statuses);
    let connects = rest.first().map(|f| upstream_list(f));
    let headers = rest.get(1).map(|f| upstream_list(f));
    // The pod's number for the last try's request on its connection.
    let conn_request: Option<u64> = rest.get(2).and_then(|f| f.trim().parse().ok());
    let addrs = upstream_list(addrs);
    let last = addrs.len().saturating_sub(1);
    let mut start = end_wall_ns.saturating_sub(request_ns);
    let mut tries = Vec::new();
    for (i, addr) in addrs.into_iter().enumerate() {
        let took = times.get(i).and_then(|t| parse_seconds_ns(t)).unwrap_or(0);
        let status = statuses.get(i).and_then(|s| s.parse().ok());
        let failed = matches!(status, Some(502 | 504) | None);
        let timed = |list: &Option<Vec<&str>>| match list {
            Some(list) => list.get(i).is_some_and(|t| parse_seconds_ns(t).is_some()),
            None => !failed,
        };
        let connected = timed(&connects);
        let answered = timed(&headers);
        let pooled = match (connected, answered) {
            (false, _) => Some(false),
            (true, true) if i == last => conn_request.map(|n| n > 1),
            _ => None,
        };
        // A group name ("pods": no live upstream) is not an address.
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            tries.push(UpstreamTry {
                addr,
                start_wall_ns: start,
                duration_ns: took,
                status,
                retry: i > 0,
                connected,
                answered,
                pooled,
            });
        }
        start += took;
    }
    Some(AccessEntry {
        end_wall_ns,
        status,
        tries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_every_upstream_with_retries_kept() {
        let paths = NginxPaths::new(Path::new("/tmp/lab"));
        let ups: Vec<SocketAddr> = vec![
            "10.247.1.2:8080".parse().unwrap(),
            "[fd00:247::3]:8080".parse().unwrap(),
        ];
        let conf = render_config(&paths, "127.0.0.1:8000".parse().unwrap(), &ups, 0);
        assert!(conf.contains("server 10.247.1.2:8080 max_fails=0;"));
        assert!(conf.contains("server [fd00:247::3]:8080 max_fails=0;"));
        assert!(conf.contains("listen 127.0.0.1:8000;"));
        assert!(conf.contains("proxy_next_upstream error timeout;"));
        assert!(conf.contains("pid /tmp/lab/nginx.pid;"));
        assert!(conf.contains("access_log /tmp/lab/access.log lab;"));
        assert!(!conf.contains(" down;"));
        assert!(!conf.contains("keepalive"), "0: one connection per request");
        assert!(!conf.contains("proxy_http_version"));
        let empty = render_config(&paths, "127.0.0.1:8000".parse().unwrap(), &[], 0);
        assert!(empty.contains("server 127.0.0.1:9 down;"));
        let pooled = render_config(&paths, "127.0.0.1:8000".parse().unwrap(), &ups, 32);
        assert!(pooled.contains("        keepalive 32;\n"));
        assert!(pooled.contains("proxy_http_version 1.1;"));
        assert!(pooled.contains("proxy_set_header Connection \"\";"));
    }

    #[test]
    fn access_line_gives_each_try_its_start() {
        let line = r#"1700000010.500 2.010 200 "10.247.1.2:8080, 10.247.1.3:8080" "2.000, 0.010" "502, 200""#;
        let e = parse_access_line(line).unwrap();
        assert_eq!(e.status, 200);
        assert_eq!(e.end_wall_ns, 1_700_000_010_500_000_000);
        assert_eq!(e.tries.len(), 2);
        assert_eq!(e.tries[0].addr, "10.247.1.2:8080".parse().unwrap());
        assert_eq!(e.tries[0].start_wall_ns, 1_700_000_008_490_000_000);
        assert_eq!(e.tries[0].status, Some(502));
        assert_eq!(e.tries[1].start_wall_ns, 1_700_000_010_490_000_000);
        assert_eq!(e.tries[1].status, Some(200));
    }

    #[test]
    fn access_line_without_upstream_or_with_ipv6() {
        let none = parse_access_line(r#"1700000000.000 0.000 502 "pods" "0.000" "502""#).unwrap();
        assert!(none.tries.is_empty());
        let dash = parse_access_line(r#"1700000000.000 0.000 404 "-" "-" "-""#).unwrap();
        assert!(dash.tries.is_empty());
        let v6 =
            parse_access_line(r#"1700000000.250 0.001 200 "[fd00:247::5]:8080" "0.001" "200""#)
                .unwrap();
        assert_eq!(v6.tries[0].addr, "[fd00:247::5]:8080".parse().unwrap());
        assert_eq!(v6.tries[0].start_wall_ns, 1_700_000_000_249_000_000);
        assert!(parse_access_line("garbage").is_none());
    }
}
