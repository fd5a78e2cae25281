//! The container image, run the way the DaemonSet runs it: podman with
//! exactly the capabilities, mounts and security settings of the rendered
//! manifest (not privileged), in a network namespace of its own, talking
//! to the API simulator. It must see a refused connect made from another
//! network namespace, serve it on /metrics, become ready, and stop cleanly
//! on SIGTERM within the DaemonSet's grace period. Also: the image is one
//! static binary, each granted capability and mount is needed, and the
//! binary works as a kubectl plugin.
//!
//! The DaemonSet asks for the `RuntimeDefault` seccomp profile. containerd's
//! allows bpf() to CAP_BPF and perf_event_open() to CAP_PERFMON; the podman
//! profile installed here allows both only to CAP_SYS_ADMIN. The tests run
//! the container under podman's profile with containerd's two rules
//! applied ([`runtime_default_seccomp`]), which is what a node with a
//! current containerd enforces.
//!
//! The image is built by `cargo xtask dist` (the same code as the release
//! task) the first time a test here needs it; the musl release builds (x86_64
//! and aarch64) take several minutes on a fresh machine and are incremental
//! afterwards. `localhost/observer:latest` is a manifest list over the amd64
//! and arm64 images; podman runs and inspects the one for this host, amd64.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The rendering helpers live with the rootless manifest tests.
#[path = "../../observer/tests/deploy_support/mod.rs"]
mod deploy_support;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use deploy_support::{added_capabilities, agent_container, daemonset, host_mounts, render};
use observer_sim::{Cluster, ClusterConfig, DeploymentSpec, SimConfig, SimServer};
use observer_tests::Netns;
use serde_json::Value;

const IMAGE: &str = "localhost/observer:latest";
/// The images the manifest list gathers: (OCI architecture, tag).
const ARCH_IMAGES: [(&str, &str); 2] = [
    ("amd64", "localhost/observer:latest-amd64"),
    ("arm64", "localhost/observer:latest-arm64"),
];
/// The agent's port inside its own network namespace, as in the manifest.
const AGENT_PORT: u16 = 9990;

/// Where the agent container finds its kubeconfig and the CA it names.
const KUBE_DIR: &str = "/var/run/observer-kube";

/// A CA certificate for the simulator's kubeconfig (its private key was
/// never kept). The simulator speaks plain HTTP, so it is never used to
/// verify anything; it is there because a kubeconfig that names no CA makes
/// the client load the system's trust store, which a `FROM scratch` image
/// does not have — in a cluster the service account's ca.crt plays this
/// part.
const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBqDCCAU+gAwIBAgIUfWdPba3CLLVxpBmuf1DpLEOZQA0wCgYIKoZIzj0EAwIw
KTEnMCUGA1UEAwweb2JzZXJ2ZXIgdGVzdCBDQSAobm8ga2V5IGtlcHQpMCAXDTI2
MTEyMjAwNDMzMloYDzIxMjYxMDI5MDA0MzMyWjApMScwJQYDVQQDDB5vYnNlcnZl
ciB0ZXN0IENBIChubyBrZXkga2VwdCkwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AASVZEd9gHR/70+rQ9F+zOoA48YUCKs3l9AzQ+1SmHDI5XAAGXwQDOAKDlnRhw7o
Hslv8Jynwf79eQ/2lWCbDtwyo1MwUTAdBgNVHQ4EFgQU3VzQ2rIh/AS35H9laoBU
LyhGtZswHwYDVR0jBBgwFoAU3VzQ2rIh/AS35H9laoBULyhGtZswDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBBKEqXL1omIQzK/GhX74e23bGWmuE0
BeatvzQhII7yTgIgC/Sl7iHc+YOr9+LSqNSiWKm/UYHLrUtDBYNz81Eapg4=
-----END CERTIFICATE-----
";

/// Tests here run one at a time: they share container and namespace names
/// and the RSS figure is steadier alone.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Builds the binaries and the images once per test run; returns this
/// host's (x86_64) binary, the one in the image podman runs here.
fn dist() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = deploy_support::workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["run", "--quiet", "--package", "xtask", "--", "dist"])
            .current_dir(&root)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo xtask dist failed: {status}");
        root.join("target/dist/amd64/observer")
    })
}

fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|error| panic!("running {cmd:?}: {error}"))
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the DaemonSet grants the agent container, read from the rendered
/// base manifest, as podman flags.
struct Grants {
    capabilities: Vec<String>,
    /// (host path, container path, read-only)
    mounts: Vec<(String, String, bool)>,
    read_only_root: bool,
    no_new_privileges: bool,
    seccomp_runtime_default: bool,
    grace: Duration,
    memory_request_bytes: u64,
    /// Hide the kernel's BTF (/sys/kernel/btf) from the container.
    mask_btf: bool,
    /// Another seccomp profile than the manifest's RuntimeDefault, as
    /// podman's `--security-opt=seccomp=` takes it.
    seccomp_instead: Option<String>,
}

fn daemonset_grants() -> Grants {
    let ds = daemonset(&render("deploy"));
    let agent = agent_container(&ds);
    let security = agent.security_context.clone().expect("securityContext");
    assert_ne!(security.privileged, Some(true));
    let pod = ds.spec.template.spec.clone();
    let memory = agent
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .map(|q| q.0.clone())
        .expect("a memory request");
    Grants {
        capabilities: added_capabilities(&agent),
        mounts: host_mounts(&ds),
        read_only_root: security.read_only_root_filesystem == Some(true),
        no_new_privileges: security.allow_privilege_escalation == Some(false),
        seccomp_runtime_default: security
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "RuntimeDefault"),
        grace: Duration::from_secs(
            pod.and_then(|p| p.termination_grace_period_seconds)
                .expect("terminationGracePeriodSeconds") as u64,
        ),
        memory_request_bytes: parse_binary_quantity(&memory),
        mask_btf: false,
        seccomp_instead: None,
    }
}

/// "64Mi" → bytes (the manifest uses binary suffixes).
fn parse_binary_quantity(quantity: &str) -> u64 {
    let (number, unit) = quantity.split_at(
        quantity
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(quantity.len()),
    );
    let number: u64 = number.parse().expect("a number");
    number
        * match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            other => panic!("unit {other} in {quantity}"),
        }
}

/// Where containers-common keeps podman's default seccomp profile.
const PODMAN_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// podman's default seccomp profile with bpf() allowed to CAP_BPF and
/// perf_event_open() to CAP_PERFMON, as containerd's RuntimeDefault does,
/// instead of to CAP_SYS_ADMIN only. Written once per run; returns its path.
fn runtime_default_seccomp() -> &'static Path {
    static WRITTEN: OnceLock<PathBuf> = OnceLock::new();
    WRITTEN.get_or_init(|| {
        let text = std::fs::read_to_string(PODMAN_SECCOMP)
            .unwrap_or_else(|error| panic!("{PODMAN_SECCOMP} (containers-common): {error}"));
        let mut profile: Value = serde_json::from_str(&text).expect("a JSON profile");
        let rules = profile["syscalls"].as_array_mut().expect("a syscalls list");
        for rule in rules.iter_mut() {
            if let Some(names) = rule["names"].as_array_mut() {
                names.retain(|n| n != "bpf" && n != "perf_event_open");
            }
        }
        rules.retain(|rule| rule["names"].as_array().is_some_and(|n| !n.is_empty()));
        for (syscall, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
            for granted_by in [cap, "CAP_SYS_ADMIN"] {
                rules.push(serde_json::json!({
                    "names": [syscall],
                    "action": "SCMP_ACT_ALLOW",
                    "includes": {"caps": [granted_by]},
                }));
            }
        }
        let path = std::env::temp_dir().join(format!(
            "observer-seccomp-runtime-default-{}.json",
            std::process::id()
        ));
        std::fs::write(&path, profile.to_string()).expect("writing the profile");
        path
    })
}

/// `podman run` flags for the agent container with `grants`, in the
/// network namespace `netns`.
fn run_flags(grants: &Grants, name: &str, netns: &Netns) -> Vec<String> {
    let mut flags: Vec<String> = [
        "run",
        "--detach",
        "--name",
        name,
        // runc here cannot raise the container's rlimits above the
        // test's own; explicit values keep it from trying.
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--cap-drop=all",
    ]
    .map(String::from)
    .into();
    flags.push(format!("--network=ns:/var/run/netns/{}", netns.name));
    if !grants.capabilities.is_empty() {
        flags.push(format!("--cap-add={}", grants.capabilities.join(",")));
    }
    for (host, container, read_only) in &grants.mounts {
        let mode = if *read_only { ":ro" } else { "" };
        flags.push(format!("--volume={host}:{container}{mode}"));
    }
    if grants.mask_btf {
        flags.push("--security-opt=mask=/sys/kernel/btf".into());
    }
    if grants.read_only_root {
        flags.push("--read-only".into());
    }
    if grants.no_new_privileges {
        flags.push("--security-opt=no-new-privileges".into());
    }
    assert!(
        grants.seccomp_runtime_default,
        "the manifest asks for RuntimeDefault"
    );
    let profile = match &grants.seccomp_instead {
        Some(profile) => profile.clone(),
        None => runtime_default_seccomp().display().to_string(),
    };
    flags.push(format!("--security-opt=seccomp={profile}"));
    flags
}

/// A container removed on drop, even when the test fails.
struct Container {
    name: String,
}

impl Container {
    fn start(flags: &[String], args: &[&str]) -> Container {
        let name = flags[flags.iter().position(|f| f == "--name").expect("--name") + 1].clone();
        let _ = podman().args(["rm", "--force", &name]).output();
        stdout_of(podman().args(flags).arg(IMAGE).args(args));
        Container { name }
    }

    fn logs(&self) -> String {
        let out = output(podman().args(["logs", &self.name]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn inspect(&self, format: &str) -> String {
        stdout_of(podman().args(["inspect", "--format", format, &self.name]))
            .trim()
            .to_string()
    }

    /// podman reads the container's process to report its state; while that
    /// process is exiting the read can fail ("read /proc/N/cgroup: no such
    /// process"), and the next inspect sees the exited state.
    fn running(&self) -> bool {
        let mut last_error = String::new();
        for _ in 0..40 {
            let out =
                output(podman().args(["inspect", "--format", "{{.State.Running}}", &self.name]));
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim() == "true";
            }
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("podman inspect {} kept failing: {last_error}", self.name)
    }

    fn exit_code(&self) -> i32 {
        self.inspect("{{.State.ExitCode}}")
            .parse()
            .expect("an exit code")
    }

    /// Waits until the container exits, at most `limit`.
    fn wait_exit(&self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if !self.running() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", &self.name]).output();
    }
}

/// An HTTP GET to the agent from inside its network namespace.
fn http_get(netns: &Netns, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    netns
        .run_in("http-get", move || -> Option<(u16, String)> {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_PORT));
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let status = response.split(' ').nth(1)?.parse().ok()?;
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Some((status, body))
        })
        .expect("thread in the agent's namespace")
}

/// The value of the first sample of `metric` whose labels contain
/// `labels` (e.g. `class="refused"`), summed over matching series.
fn metric_sum(exposition: &str, metric: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_bytes(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A refused connect from a network namespace that is neither the host's
/// nor the agent's: loopback of a fresh namespace, port 1.
/// The name of the threads that connect as the ingress.
const INGRESS_COMM: &str = "ingress-conn";

fn refused_connect_from(netns: &Netns) {
    netns
        .run_in(INGRESS_COMM, || {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
            let error = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .expect_err("nothing listens on port 1");
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        })
        .expect("thread in the ingress namespace");
}

#[test]
fn image_is_one_static_binary_from_scratch() {
    let binary = dist();
    let _serial = serial();
    let inspect = stdout_of(podman().args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{len .RootFS.Layers}} {{.Size}}",
        IMAGE,
    ]));
    let fields: Vec<&str> = inspect.split_whitespace().collect();
    assert_eq!(fields[0], r#"["/observer"]"#, "{inspect}");
    assert_eq!(fields[1], r#"["agent"]"#, "{inspect}");
    assert_eq!(fields[2], "1", "one layer: the binary");
    let image_bytes: u64 = fields[3].parse().expect("size");
    let binary_bytes = std::fs::metadata(binary).expect("binary").len();
    eprintln!("image {image_bytes} bytes, binary {binary_bytes} bytes");
    assert!(
        image_bytes < binary_bytes + 64 * 1024,
        "nothing but the binary in the image"
    );
    // Runs with no capability at all when it loads nothing.
    let version = stdout_of(podman().args([
        "run",
        "--rm",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--cap-drop=all",
        "--network=none",
        IMAGE,
        "--version",
    ]));
    assert!(version.starts_with("observer "), "{version}");

    // The manifest list holds both architectures, each image one layer
    // holding its own architecture's binary.
    let manifest: Value =
        serde_json::from_str(&stdout_of(podman().args(["manifest", "inspect", IMAGE])))
            .expect("manifest JSON");
    let platforms: Vec<String> = manifest["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{manifest}");
    let root = deploy_support::workspace_root();
    for (arch, image) in ARCH_IMAGES {
        let inspect = stdout_of(podman().args([
            "image",
            "inspect",
            "--format",
            "{{.Os}}/{{.Architecture}} {{len .RootFS.Layers}} {{.Size}}",
            image,
        ]));
        let fields: Vec<&str> = inspect.split_whitespace().collect();
        assert_eq!(fields[0], format!("linux/{arch}"), "{image}: {inspect}");
        assert_eq!(fields[1], "1", "{image}: one layer");
        let image_bytes: u64 = fields[2].parse().expect("size");
        let binary = root.join("target/dist").join(arch).join("observer");
        let binary_bytes = std::fs::metadata(&binary).expect("binary").len();
        assert!(
            image_bytes < binary_bytes + 64 * 1024,
            "{image}: nothing but {} ({binary_bytes} bytes) in {image_bytes} bytes",
            binary.display()
        );
    }
}

#[test]
fn binary_works_as_a_kubectl_plugin() {
    let binary = dist();
    let dir = std::env::temp_dir().join(format!("observer-plugin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::os::unix::fs::symlink(binary, dir.join("kubectl-observer")).expect("symlink");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let help = stdout_of(
        Command::new("kubectl")
            .args(["observer", "--help"])
            .env("PATH", &path),
    );
    assert!(help.contains("Usage: kubectl-observer"), "{help}");
    assert!(help.contains("trace"), "{help}");
    // The image ships the agent, not the lab (dist builds without it).
    assert!(
        !help
            .lines()
            .any(|line| line.split_whitespace().next() == Some("lab")),
        "the shipped binary offers the lab: {help}"
    );
    let plugins = output(
        Command::new("kubectl")
            .args(["plugin", "list"])
            .env("PATH", &path),
    );
    assert!(
        String::from_utf8_lossy(&plugins.stdout).contains("kubectl-observer"),
        "kubectl plugin list: {}",
        String::from_utf8_lossy(&plugins.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn agent_runs_with_the_daemonset_grants_and_stops_on_sigterm() {
    dist();
    let _serial = serial();
    let grants = daemonset_grants();
    eprintln!(
        "DaemonSet grants: {:?}, mounts {:?}",
        grants.capabilities, grants.mounts
    );
    let agent_ns = Netns::create("obs-deploy-agent").expect("agent namespace");
    let ingress_ns = Netns::create("obs-deploy-ingress").expect("ingress namespace");

    // The API simulator listens inside the agent's namespace, where the
    // agent's loopback reaches it (as an API server is reachable from a
    // pod). It runs on its own thread and runtime until `stop` is sent.
    let dir = std::env::temp_dir().join(format!("observer-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("ca.crt"), TEST_CA_PEM).expect("CA file");
    let kubeconfig = dir.join("kubeconfig");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started, sim_ready) = std::sync::mpsc::channel::<()>();
    let sim_kubeconfig = kubeconfig.clone();
    let sim = agent_ns
        .spawn_in("api-sim", move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let server = SimServer::start_with(SimConfig {
                    bookmark_interval: Duration::from_millis(500),
                    ..Default::default()
                })
                .await
                .expect("simulator starts");
                let cluster = Cluster::start(server.store().clone(), ClusterConfig::default())
                    .expect("cluster");
                cluster
                    .apply_deployment(DeploymentSpec::new("web", 2))
                    .expect("deployment");
                cluster.wait_rollout("web").await.expect("rolled out");
                // As in a pod, where the service account brings the
                // cluster's CA: the image has no CA bundle of its own.
                let mut config = server.kubeconfig();
                for named in &mut config.clusters {
                    if let Some(cluster) = named.cluster.as_mut() {
                        cluster.certificate_authority = Some(format!("{KUBE_DIR}/ca.crt"));
                    }
                }
                let text = serde_json::to_string(&config).expect("kubeconfig JSON");
                std::fs::write(&sim_kubeconfig, text).expect("kubeconfig");
                started.send(()).expect("test waits");
                let _ = stopped.await;
                server.shutdown().await;
            });
        })
        .expect("simulator thread");
    sim_ready
        .recv_timeout(Duration::from_secs(30))
        .expect("simulator up");

    let mut flags = run_flags(&grants, "observer-deploy-agent", &agent_ns);
    flags.push(format!("--volume={}:{KUBE_DIR}:ro", dir.display()));
    let container = Container::start(
        &flags,
        &[
            "agent",
            "--listen",
            "0.0.0.0:9990",
            "--kubeconfig",
            &format!("{KUBE_DIR}/kubeconfig"),
            // The refused connects below come from threads of this name:
            // the ingress here is a host process (no pod's cgroup).
            "--ingress-comm",
            INGRESS_COMM,
        ],
    );

    // Ready: probe attached and both watches listed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = http_get(&agent_ns, "/readyz") {
            break;
        }
        assert!(
            container.running(),
            "the agent exited with the DaemonSet's grants:\n{}",
            container.logs()
        );
        assert!(
            Instant::now() < deadline,
            "not ready in 60 s: {:?}\n{}",
            http_get(&agent_ns, "/readyz"),
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        http_get(&agent_ns, "/healthz").map(|r| r.0),
        Some(200),
        "/healthz"
    );

    // A refused connect from another namespace, seen by the probe in the
    // container and counted on /metrics.
    let deadline = Instant::now() + Duration::from_secs(30);
    // Other processes on the host may add refused connects of their own;
    // the count must at least reach the ones made here.
    let mut made = 0;
    let metrics = loop {
        for _ in 0..5 {
            refused_connect_from(&ingress_ns);
            made += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
        let (status, body) = http_get(&agent_ns, "/metrics").expect("/metrics answers");
        assert_eq!(status, 200);
        let refused = metric_sum(
            &body,
            "observer_failed_connects_total",
            r#"class="refused""#,
        );
        if refused >= made as f64 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "{made} refused connects made, {refused} on /metrics after 30 s:\n{body}\n{}",
            container.logs()
        );
    };
    assert!(metric_sum(&metrics, "observer_events_processed_total", "") > 0.0);

    let pid = container.inspect("{{.State.Pid}}");
    let (rss, peak) = rss_bytes(&pid);
    eprintln!(
        "agent RSS {:.1} MiB (peak {:.1} MiB), memory request {:.0} MiB",
        rss as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        grants.memory_request_bytes as f64 / 1048576.0
    );
    assert!(
        peak < grants.memory_request_bytes,
        "the memory request covers the agent at rest"
    );

    // SIGTERM, as the kubelet sends it: exits 0 within the grace period.
    stdout_of(podman().args(["kill", "--signal", "TERM", &container.name]));
    let took = container.wait_exit(grants.grace).unwrap_or_else(|| {
        panic!(
            "still running {:?} after SIGTERM:\n{}",
            grants.grace,
            container.logs()
        )
    });
    eprintln!("stopped {took:?} after SIGTERM");
    assert_eq!(container.exit_code(), 0, "{}", container.logs());

    drop(container);
    let _ = stop.send(());
    sim.join().expect("simulator thread");
    let _ = std::fs::remove_dir_all(&dir);
}

/// How std shows errno `errno` (`Operation not permitted (os error 1)`):
/// the kernel's answer, as no message of observer's own is worded.
fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// The errno a seccomp profile answers bpf() with for a container holding
/// `granted`: that of the first ERRNO rule naming bpf() that applies (its
/// `includes.caps` all granted, none of its `excludes.caps`), else the
/// profile's `defaultErrnoRet` (EPERM when it names none). podman's
/// profile answers EPERM by an explicit rule, and ENOSYS by default.
fn seccomp_bpf_errno(profile: &Path, granted: &[String]) -> i32 {
    let text = std::fs::read_to_string(profile).expect("the seccomp profile");
    let profile: Value = serde_json::from_str(&text).expect("a JSON profile");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let caps = |rule: &Value, key: &str| -> Vec<String> {
        rule[key]["caps"]
            .as_array()
            .map(|caps| {
                caps.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let default = profile["defaultErrnoRet"]
        .as_i64()
        .map_or(libc::EPERM, |errno| errno as i32);
    for rule in profile["syscalls"].as_array().expect("a syscalls list") {
        let names_bpf = rule["names"]
            .as_array()
            .is_some_and(|names| names.iter().any(|n| n == "bpf"));
        let applies = caps(rule, "includes").iter().all(|c| granted.contains(c))
            && !caps(rule, "excludes").iter().any(|c| granted.contains(c));
        if !(names_bpf && applies) {
            continue;
        }
        assert_eq!(
            rule["action"], "SCMP_ACT_ERRNO",
            "the profile allows bpf() to {granted:?}: {rule}"
        );
        return rule["errnoRet"]
            .as_i64()
            .map_or(default, |errno| errno as i32);
    }
    default
}

/// The agent's own capability check, skipped below with `--skip-preflight`.
const PREFLIGHT_MESSAGE: &str = "missing capabilities";

#[test]
fn each_grant_is_needed() {
    dist();
    let _serial = serial();
    let grants = daemonset_grants();
    let netns = Netns::create("obs-deploy-less").expect("namespace");
    // The agent's capability check is skipped (`--skip-preflight`), so
    // what refuses each reduced grant is the kernel: its capability checks
    // answer EPERM, a seccomp filter the errno its profile gives bpf(). (grants, what is
    // missing, the bpf() command that must be refused as aya reports it,
    // the errno.)
    let mut cases: Vec<(Grants, String, &str, i32)> = Vec::new();
    for cap in &grants.capabilities {
        // Without CAP_BPF nothing may be created (BPF_MAP_CREATE is the
        // first call that matters); without CAP_PERFMON the maps are made
        // but a tracing program may not be loaded (BPF_PROG_LOAD).
        let mut fewer = daemonset_grants();
        fewer.capabilities.retain(|c| c != cap);
        let (refused_call, under_runtime_default) = match cap.as_str() {
            // The DaemonSet's profile lets bpf() through only with CAP_BPF:
            // without it, the filter answers before the kernel's check.
            "CAP_BPF" => (
                "failed to create map",
                seccomp_bpf_errno(runtime_default_seccomp(), &fewer.capabilities),
            ),
            "CAP_PERFMON" => ("BPF_PROG_LOAD", libc::EPERM),
            other => panic!("no expectation for {other}: add one"),
        };
        cases.push((fewer, cap.clone(), refused_call, under_runtime_default));
        // With no seccomp filter at all, only the kernel's capability
        // check stands between the agent and bpf().
        let mut unconfined = daemonset_grants();
        unconfined.capabilities.retain(|c| c != cap);
        unconfined.seccomp_instead = Some("unconfined".into());
        cases.push((
            unconfined,
            format!("{cap} (seccomp unconfined)"),
            refused_call,
            libc::EPERM,
        ));
    }
    // Both capabilities, but podman's own default seccomp profile, which
    // allows bpf() only to CAP_SYS_ADMIN (as older containerd and CRI-O
    // releases do: overlays/unconfined-seccomp).
    let mut stock_seccomp = daemonset_grants();
    stock_seccomp.seccomp_instead = Some(PODMAN_SECCOMP.into());
    cases.push((
        stock_seccomp,
        "a seccomp profile that allows bpf()".into(),
        "failed to create map",
        seccomp_bpf_errno(Path::new(PODMAN_SECCOMP), &grants.capabilities),
    ));
    for (fewer, missing, refused_call, errno) in cases {
        let container = Container::start(
            &run_flags(&fewer, "observer-deploy-less", &netns),
            &["agent", "--no-kube", "--skip-preflight"],
        );
        container
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("still running without {missing}:\n{}", container.logs()));
        let logs = container.logs();
        eprintln!("without {missing}:\n{logs}");
        assert_ne!(container.exit_code(), 0, "without {missing}: {logs}");
        assert!(
            logs.contains("capability check skipped"),
            "without {missing}: the agent's own check was skipped: {logs}"
        );
        assert!(
            !logs.contains(PREFLIGHT_MESSAGE),
            "without {missing}: {logs}"
        );
        // The error the agent exits with (its chain may run on with a
        // verifier log), not the warnings of aya's feature probes before it.
        let error = logs
            .find("error: ")
            .map(|at| &logs[at..])
            .unwrap_or_else(|| panic!("without {missing}: no error: {logs}"));
        let expected = errno_text(errno);
        assert!(
            error.contains(refused_call) && error.contains(&expected),
            "without {missing}: the kernel refuses {refused_call:?} with {expected:?}: {error}"
        );
    }

    // The kernel's BTF is the agent's own need, not the kernel's: user
    // space reads the socket layout from it before loading anything. Hidden
    // (the container sees it in /sys without any mount), the agent stops
    // and names the kernel option that provides it.
    let mut no_btf = daemonset_grants();
    no_btf.mask_btf = true;
    let container = Container::start(
        &run_flags(&no_btf, "observer-deploy-less", &netns),
        &["agent", "--no-kube", "--skip-preflight"],
    );
    container
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running without BTF:\n{}", container.logs()));
    let logs = container.logs();
    assert_ne!(container.exit_code(), 0, "without BTF: {logs}");
    assert!(
        logs.contains("CONFIG_DEBUG_INFO_BTF"),
        "without BTF: {logs}"
    );
}
