//! Project tasks. Run through `./x` (which installs the pinned toolchain
//! first) or `cargo xtask`.

mod cmd;
mod dist;
mod docs;
mod fuzz;
mod setup;
mod vm;

use std::process::Command;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::cmd::{require_root, run};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "observer's build, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install toolchains, bpf-linker and the Debian packages the build and
    /// tests need (only what is missing).
    Setup,
    /// Setup, then build and run the observer binary with ARGS, e.g.
    /// `./x observer trace --failures-only` (the probe needs root).
    Observer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks; each writes its figures into docs/BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
    /// Setup, then the static (musl) observer binaries for x86_64 and
    /// aarch64 (cross-compiled) and the multi-arch OCI image
    /// localhost/observer:latest from deploy/Containerfile (podman).
    Dist,
    /// Setup, then formatting, lints, and every test (privileged: root).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the kernel matrix (`vm-test`: the probe's tests in guests
        /// with Debian's 6.1 and 6.12 kernels, x86_64 and aarch64), which
        /// takes about 20 minutes here.
        #[arg(long)]
        no_vm: bool,
        /// Skip the short run of every fuzz target.
        #[arg(long)]
        no_fuzz: bool,
    },
    /// The probe's privileged tests inside qemu guests booted with Debian's
    /// 6.1 and 6.12 kernels (x86_64, or aarch64 cross-compiled and
    /// emulated), e.g. `./x vm-test --kernel all` (root; a few minutes per
    /// kernel).
    VmTest(vm::VmTestArgs),
    /// Runs the fuzz targets of fuzz/ (docs/FUZZING.md) with cargo-fuzz on
    /// the eBPF crate's nightly, each for a bounded time; a crash fails.
    Fuzz(fuzz::FuzzArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// What the probe costs: loopback connect storms, an ingress node
    /// (nginx to pods, wrk) with and without upstream keep-alive, and the
    /// agent's own CPU at 10 000 connects/s; with no tracer, observer's
    /// hooks alone, observer, and bpftrace (root; about 10 minutes).
    Probe,
    /// Events/s and memory of the correlation engine on a synthetic
    /// recording of ten million events (one thread).
    Engine,
    /// The lab's accuracy sweep: measured vs true propagation gaps over
    /// delays of 0.5–10 s, with and without jitter, IPv4 and IPv6, through
    /// nginx (about 20 minutes), then the HAProxy family against the wire
    /// truth, each point verified (about 15 minutes), then the Caddy family
    /// (retries after a backoff of 25, 100 and 250 ms) against Caddy's own
    /// log (about 10 minutes). Root.
    Lab {
        /// Run one family only.
        #[arg(long, value_enum, default_value_t = LabFamily::All)]
        family: LabFamily,
    },
    /// The agent's watchers and engine loop at cluster scale, against the
    /// API simulator in another process: 10 000 pods in 2 000
    /// EndpointSlices, 500 terminations a minute with IP reuse, a watch
    /// fault every 30 s; checks every termination is reported once, in
    /// order, and measures the agent's memory and CPU.
    Soak {
        /// Minutes of churn (the whole run takes about a minute more).
        #[arg(long, default_value_t = 3.0)]
        minutes: f64,
        /// Nodes the pods are spread over.
        #[arg(long, default_value_t = 50)]
        nodes: u32,
        /// Agents of nodes without an ingress to run beside the ingress
        /// node's, each watching its own node's pods (node-0, node-1, …);
        /// their memory, CPU and what the API server sent them go in the
        /// table (section `soak-nodes`).
        #[arg(long, default_value_t = 0)]
        node_agents: u32,
        /// Build the soak (and so every agent it starts) as a static musl
        /// binary, with musl's allocator, as the shipped image is built.
        #[arg(long)]
        musl: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LabFamily {
    All,
    Nginx,
    Haproxy,
    Caddy,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Test {
            no_lint,
            no_vm,
            no_fuzz,
        } => test(no_lint, no_vm, no_fuzz),
        Task::Bench { what: Bench::Probe } => {
            setup::setup()?;
            require_root(
                "the probe benchmark loads eBPF programs and creates network namespaces; it",
            )?;
            run(cargo().args(["build", "--release", "-p", "observer"]))?;
            let (table, status) = run_example("bench_probe", &[], &[])?;
            if !status.success() {
                anyhow::bail!("the probe benchmark failed with {status}");
            }
            println!("{table}");
            docs::write_section("probe", &table)
        }
        Task::Bench {
            what: Bench::Engine,
        } => {
            setup::setup()?;
            let (table, status) = run_example("bench_engine", &[], &[])?;
            if !status.success() {
                anyhow::bail!("the engine benchmark failed with {status}");
            }
            println!("{table}");
            docs::write_section("engine", &table)
        }
        Task::Bench {
            what: Bench::Lab { family },
        } => {
            require_root("the lab creates network namespaces and loads the eBPF probe; it")?;
            setup::setup()?;
            let mut missed = Vec::new();
            let families = [
                (LabFamily::Nginx, "bench_lab", "lab", "nginx"),
                (
                    LabFamily::Haproxy,
                    "bench_lab_haproxy",
                    "lab-haproxy",
                    "haproxy",
                ),
                (LabFamily::Caddy, "bench_lab_caddy", "lab-caddy", "caddy"),
            ];
            for (which, example, section, name) in families {
                if family != LabFamily::All && family != which {
                    continue;
                }
                let (table, status) = run_example(example, &[], &[])?;
                // Exit code 2: the sweep ran but missed the target; the
                // table is still written down.
                if !status.success() && status.code() != Some(2) {
                    anyhow::bail!("the lab sweep {example} failed with {status}");
                }
                println!("{table}");
                let command = format!("cargo xtask bench lab --family {name}");
                docs::write_section_from(section, &command, &table)?;
                if !status.success() {
                    missed.push(section);
                }
            }
            if !missed.is_empty() {
                anyhow::bail!(
                    "the lab sweep missed its accuracy target ({}; see docs/BENCHMARKS.md)",
                    missed.join(", ")
                );
            }
            Ok(())
        }
        Task::Bench {
            what:
                Bench::Soak {
                    minutes,
                    nodes,
                    node_agents,
                    musl,
                },
        } => {
            setup::setup()?;
            let (minutes, nodes, agents) = (
                minutes.to_string(),
                nodes.to_string(),
                node_agents.to_string(),
            );
            let target = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
            let musl_target = ["--target", target.as_str()];
            let (table, status) = run_example(
                "bench_soak",
                if musl { &musl_target } else { &[] },
                &[
                    "--minutes",
                    &minutes,
                    "--nodes",
                    &nodes,
                    "--node-agents",
                    &agents,
                ],
            )?;
            // Exit code 2: the run finished but a check failed; the table
            // is still written down.
            if !status.success() && status.code() != Some(2) {
                anyhow::bail!("the soak failed with {status}");
            }
            println!("{table}");
            if node_agents > 0 {
                let command = format!(
                    "cargo xtask bench soak --minutes {minutes} --nodes {nodes} --node-agents {agents}{}",
                    if musl { " --musl" } else { "" }
                );
                docs::write_section_from(
                    if musl {
                        "soak-nodes-musl"
                    } else {
                        "soak-nodes"
                    },
                    &command,
                    &table,
                )?;
            } else {
                docs::write_section_from(
                    "soak",
                    &format!("cargo xtask bench soak --minutes {minutes}"),
                    &table,
                )?;
            }
            if !status.success() {
                anyhow::bail!("the soak failed a check (see docs/BENCHMARKS.md)");
            }
            Ok(())
        }
        Task::Dist => {
            setup::setup()?;
            dist::dist()
        }
        Task::Fuzz(args) => fuzz::fuzz(&args),
        Task::VmTest(args) => {
            setup::setup()?;
            vm::vm_test(args)
        }
        Task::Observer { args } => {
            setup::setup()?;
            run(cargo()
                .args(["run", "--release", "--quiet", "-p", "observer", "--"])
                .args(args))
        }
    }
}

/// Runs an example of the observer crate, built optimised, so xtask itself
/// never needs the eBPF toolchain. Returns its stdout (the table) and exit
/// status; its stderr (progress) goes to the terminal.
/// Runs an example in release; `cargo_args` go to cargo (a `--target`),
/// `args` to the example.
fn run_example(
    name: &str,
    cargo_args: &[&str],
    args: &[&str],
) -> anyhow::Result<(String, std::process::ExitStatus)> {
    let output = cargo()
        .args(["run", "--release", "--quiet", "-p", "observer"])
        .args(cargo_args)
        .args(["--example", name, "--"])
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the {name} example"))?;
    Ok((
        String::from_utf8_lossy(&output.stdout).into_owned(),
        output.status,
    ))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Seconds each fuzz target runs in `test`: the whole step, its build
/// included, stays within about eight minutes on a fresh machine.
const TEST_FUZZ_SECONDS: u64 = 15;

fn test(no_lint: bool, no_vm: bool, no_fuzz: bool) -> anyhow::Result<()> {
    require_root("the test suite loads eBPF programs and creates network namespaces; it")?;
    setup::setup()?;
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        // dist builds the shipped binary without the lab; the default build
        // above does not lint that one.
        run(cargo().args([
            "clippy",
            "-p",
            "observer",
            "--no-default-features",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    run(cargo().args(["test", "--no-fail-fast"]))?;
    if !no_fuzz {
        fuzz::fuzz(&fuzz::FuzzArgs {
            target: None,
            seconds: TEST_FUZZ_SECONDS,
            codegen_units: fuzz::DEFAULT_CODEGEN_UNITS,
        })?;
    }
    if no_vm {
        return Ok(());
    }
    // The kernels production nodes run: every probe test in x86_64
    // guests, the outcome classes in aarch64 guests, and in both the
    // shipped static binary, which the image test's `dist` just built.
    let workspace = dist::workspace_root()?;
    let shipped = |arch: &str| {
        let binary = dist::static_binary_path(&workspace, arch);
        binary.exists().then_some(binary)
    };
    vm::vm_test(vm::VmTestArgs::suite(
        vm::Arch::X86_64,
        &[],
        shipped("x86_64"),
    ))?;
    vm::vm_test(vm::VmTestArgs::suite(
        vm::Arch::Aarch64,
        &["probe_outcomes", "trace_cli"],
        shipped("aarch64"),
    ))
}
