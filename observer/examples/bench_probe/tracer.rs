//! The tracers a benchmark compares, started and stopped the same way for
//! every storm: none, observer's hooks alone, `observer trace`, `observer
//! agent` (the full pipeline against the simulator), and bpftrace.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sock:inet_sock_set_state { printf("state %d %d %d %d\n", pid, args->oldstate, args->newstate, args->dport); }
tracepoint:sock:inet_sk_error_report { printf("error %d %d\n", args->error, args->dport); }
tracepoint:tcp:tcp_receive_reset { printf("reset %d\n", args->dport); }
tracepoint:syscalls:sys_enter_connect { printf("connect %d\n", pid); }
tracepoint:syscalls:sys_exit_connect { printf("connected %d %d\n", pid, args->ret); }
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tracer {
    None,
    /// observer's hooks attached, every program returning at once: what
    /// the tracepoints themselves cost, whatever a program does.
    HooksOnly,
    /// `observer trace`: the probe and its decoding, printing every event.
    Trace,
    /// `observer agent`: probe, watchers on the simulator, engine, exports.
    Agent,
    Bpftrace,
}

impl Tracer {
    pub fn label(self) -> &'static str {
        match self {
            Tracer::None => "no tracer",
            Tracer::HooksOnly => "observer's hooks alone",
            Tracer::Trace => "observer trace",
            Tracer::Agent => "observer agent",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}

/// bpftrace runs in the first round only: its cost is ten times the
/// others', so one run shows it, and detaching its classic tracepoints
/// takes minutes on this machine kind (each waits for an RCU grace
/// period), which five rounds of every storm would multiply.
pub fn runs_in_round(tracer: Tracer, round: usize) -> bool {
    tracer != Tracer::Bpftrace || round == 0
}

/// Where `observer agent` finds its API server, and where it serves.
#[derive(Clone, Debug)]
pub struct AgentSetup {
    pub kubeconfig: PathBuf,
    pub listen: SocketAddr,
    pub output: PathBuf,
}

/// A running tracer; stopped (SIGINT, as a user would) on drop.
pub struct Tracing(Option<Child>);

impl Tracing {
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SIGINT: every tracer detaches cleanly on it.
            // SAFETY: kill with a pid we spawned and a valid signal.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

/// Starts a tracer and waits until it has attached: it says so on a line
/// of its output, or (the agent) answers `/readyz` with 200.
pub fn start(
    tracer: Tracer,
    observer_bin: &str,
    agent: Option<&AgentSetup>,
) -> anyhow::Result<Tracing> {
    let (mut cmd, ready_on_stderr, marker) = match tracer {
        Tracer::None => return Ok(Tracing(None)),
        Tracer::HooksOnly | Tracer::Trace => {
            let mut cmd = Command::new(observer_bin);
            cmd.args(["trace", "--json"]);
            if tracer == Tracer::HooksOnly {
                cmd.arg("--hooks-only");
            }
            (cmd, true, Some("tracing TCP connect outcomes"))
        }
        Tracer::Agent => {
            let setup = agent.context("the agent needs a simulator to watch")?;
            let mut cmd = Command::new(observer_bin);
            cmd.arg("agent")
                .arg("--kubeconfig")
                .arg(&setup.kubeconfig)
                .arg("--listen")
                .arg(setup.listen.to_string())
                .arg("--output")
                .arg(&setup.output);
            (cmd, true, None)
        }
        Tracer::Bpftrace => {
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-e", BPFTRACE_SCRIPT]);
            (cmd, false, Some("Attaching"))
        }
    };
    cmd.stdin(Stdio::null());
    if ready_on_stderr {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", tracer.label()))?;
    let pipe: Box<dyn std::io::Read + Send> = if ready_on_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let mut reader = BufReader::new(pipe);
    let deadline = Instant::now() + Duration::from_secs(60);
    match (marker, agent) {
        (Some(marker), _) => {
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    bail!("{} exited before attaching", tracer.label());
                }
                if line.contains(marker) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} did not attach within 60 s", tracer.label());
                }
            }
        }
        (None, Some(setup)) => loop {
            if http_get(setup.listen, "/readyz").is_some_and(|(status, _)| status == 200) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("{} exited ({status}) before it was ready", tracer.label());
            }
            if Instant::now() > deadline {
                bail!("{} was not ready within 60 s", tracer.label());
            }
            std::thread::sleep(Duration::from_millis(100));
        },
        (None, None) => bail!("{} has no way to say it is ready", tracer.label()),
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    std::thread::sleep(Duration::from_millis(300));
    Ok(Tracing(Some(child)))
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// CPU time (user + system) of the calling thread, in microseconds.
pub fn thread_cpu_us() -> u64 {
    // SAFETY: an all-zero rusage is valid; getrusage writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// CPU time (user + system) of a process, in microseconds, from
/// /proc/PID/stat; 0 when it cannot be read.
pub fn process_cpu_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the `(comm)`, which may contain spaces: utime is the
    // 14th field of the line, stime the 15th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks * 1_000_000 / clock_ticks_per_sec()
}

/// Busy CPU time of the whole machine (user, nice, system, irq, softirq;
/// not idle, iowait or steal), in microseconds, from /proc/stat: what a
/// node pays for everything it runs, softirq network work included.
pub fn machine_busy_us() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no `cpu` line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum();
    Ok(busy * 1_000_000 / clock_ticks_per_sec())
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Makes `stream`'s close an RST, so a storm of connects leaves no
/// TIME_WAIT behind to exhaust the ephemeral ports.
pub fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a linger struct that outlives the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
