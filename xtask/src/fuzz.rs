//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` (docs/FUZZING.md)
//! for a bounded time each, with cargo-fuzz and libFuzzer on the nightly
//! pinned for the eBPF crate (installed by setup; cargo-fuzz is installed
//! here when missing).
//!
//! Each target's corpus is `fuzz/corpus/<target>` (kept between runs,
//! not committed), seeded from `fuzz/seeds/<target>` and from the
//! project's fixtures. A crash leaves its input in
//! `fuzz/artifacts/<target>/` and fails the run; the crashing input then
//! becomes a regression test in the tested crate.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::cmd::{describe, run};

/// One fuzz target and how libFuzzer runs it.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    /// The longest input (`-max_len`): room for a few Kubernetes objects
    /// where the input is JSON.
    max_len: usize,
    /// Tokens of the input's language (`-dict`), under fuzz/dicts/.
    dict: Option<&'static str>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "probe_decode",
        max_len: 4096,
        dict: None,
    },
    Target {
        name: "outcome_joiner",
        max_len: 4096,
        dict: None,
    },
    Target {
        name: "recording",
        max_len: 65_536,
        dict: Some("kubernetes.dict"),
    },
    Target {
        name: "http_api",
        max_len: 4096,
        dict: None,
    },
    Target {
        name: "cluster_model",
        max_len: 65_536,
        dict: Some("kubernetes.dict"),
    },
    Target {
        name: "prestop",
        max_len: 4096,
        dict: None,
    },
    Target {
        name: "selector",
        max_len: 4096,
        dict: None,
    },
];

/// The fixtures the Kubernetes-facing targets are seeded from.
const CLUSTER_FIXTURES: &str = "observer/src/cluster/fixtures";

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Only this target (default: every target in turn).
    #[arg(long, value_parser = target_name)]
    pub target: Option<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// rustc's codegen units for the instrumented build. cargo-fuzz's own
    /// choice, 1, runs the targets faster but builds the observer crate
    /// and its dependencies on one core: on two cores the build then takes
    /// most of the test flow's budget (docs/FUZZING.md).
    #[arg(long, default_value_t = DEFAULT_CODEGEN_UNITS)]
    pub codegen_units: u32,
}

pub const DEFAULT_CODEGEN_UNITS: u32 = 16;

fn target_name(name: &str) -> Result<String, String> {
    if TARGETS.iter().any(|t| t.name == name) {
        Ok(name.to_owned())
    } else {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        Err(format!("no such target; the targets: {}", names.join(", ")))
    }
}

/// What one target's run did, from libFuzzer's final statistics.
struct RunStats {
    target: &'static str,
    runs: u64,
    per_second: u64,
}

pub fn fuzz(args: &FuzzArgs) -> anyhow::Result<()> {
    let workspace = crate::dist::workspace_root()?;
    let channel = crate::setup::ebpf_channel()?;
    crate::setup::ebpf_toolchain()?;
    install_cargo_fuzz(&channel)?;
    let selected: Vec<Target> = TARGETS
        .iter()
        .copied()
        .filter(|t| args.target.as_deref().is_none_or(|want| want == t.name))
        .collect();
    let fuzz_dir = workspace.join("fuzz");
    for target in &selected {
        seed(&workspace, target.name)?;
    }
    let started = Instant::now();
    // One build for every target: they share the observer crate.
    let flags = build_flags(args.codegen_units);
    run(cargo_fuzz(&channel, &workspace).arg("build").args(&flags))
        .context("building the fuzz targets")?;
    println!("fuzz: built in {:.0} s", started.elapsed().as_secs_f64());
    let mut stats = Vec::new();
    for target in selected {
        stats.push(run_target(
            &channel,
            &workspace,
            &fuzz_dir,
            &flags,
            target,
            args.seconds,
        )?);
    }
    println!("\n| target | runs | exec/s |\n|---|---:|---:|");
    for s in &stats {
        println!("| {} | {} | {} |", s.target, s.runs, s.per_second);
    }
    Ok(())
}

/// No sanitizer: the targets are safe Rust (the decoder's one `unsafe`
/// read is length-checked first), and AddressSanitizer would halve the
/// executions and lengthen the build. Debug assertions on: an arithmetic
/// overflow is a crash, as in the tests.
fn build_flags(codegen_units: u32) -> Vec<String> {
    vec![
        "--sanitizer".into(),
        "none".into(),
        "--debug-assertions".into(),
        "--codegen-units".into(),
        codegen_units.to_string(),
    ]
}

fn cargo_fuzz(channel: &str, workspace: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", channel, "cargo", "fuzz"])
        .current_dir(workspace)
        // The targets need no eBPF object (observer/build.rs).
        .env("AYA_BUILD_SKIP", "1");
    // What `cargo run` told xtask about xtask: build scripts that watch
    // these (ring's) would otherwise rebuild whenever the build is started
    // by hand instead of by xtask, and back.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || name == "CARGO_PRIMARY_PACKAGE"
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

fn install_cargo_fuzz(channel: &str) -> anyhow::Result<()> {
    let present = Command::new("rustup")
        .args(["run", channel, "cargo", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        println!("fuzz: cargo-fuzz present");
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz (about a minute)");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz")
}

/// Fills `fuzz/corpus/<target>` with the committed seeds and, for the
/// targets that read Kubernetes objects, inputs made from the fixtures.
fn seed(workspace: &Path, target: &str) -> anyhow::Result<()> {
    let corpus = workspace.join("fuzz/corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = workspace.join("fuzz/seeds").join(target);
    if seeds.is_dir() {
        for entry in fs::read_dir(&seeds).with_context(|| format!("reading {}", seeds.display()))? {
            let path = entry?.path();
            if let Some(name) = path.file_name() {
                fs::copy(&path, corpus.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    if target == "cluster_model" || target == "recording" {
        for (name, text) in fixture_seeds(workspace, target)? {
            let path = corpus.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Each fixture as an added and then deleted object, in the target's
/// input format, and all of them in one input.
fn fixture_seeds(workspace: &Path, target: &str) -> anyhow::Result<Vec<(String, String)>> {
    let dir = workspace.join(CLUSTER_FIXTURES);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let mut seeds = Vec::new();
    let mut all = String::new();
    for path in paths {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let object: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let slice = object["kind"] == "EndpointSlice";
        let compact = object.to_string();
        let lines = if target == "cluster_model" {
            let resource = if slice { 's' } else { 'p' };
            format!("a{resource}{compact}\nd{resource}{compact}\n")
        } else {
            let resource = if slice { "slice" } else { "pod" };
            [("apply", 1_000_000_000u64), ("delete", 9_000_000_000)]
                .iter()
                .map(|(event, at)| {
                    format!(
                        "{{\"{resource}\":{{\"at\":{at},\"event\":\"{event}\",\"object\":{compact}}}}}\n"
                    )
                })
                .collect::<String>()
                + "{\"tick\":20000000000}\n"
        };
        all.push_str(&lines);
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        seeds.push((format!("fixture-{stem}"), lines));
    }
    seeds.push(("fixtures-all".to_owned(), all));
    Ok(seeds)
}

fn run_target(
    channel: &str,
    workspace: &Path,
    fuzz_dir: &Path,
    flags: &[String],
    target: Target,
    seconds: u64,
) -> anyhow::Result<RunStats> {
    let Target {
        name: target,
        max_len,
        dict,
    } = target;
    let corpus = fuzz_dir.join("corpus").join(target);
    let logs = fuzz_dir.join("artifacts");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = cargo_fuzz(channel, workspace);
    cmd.arg("run")
        .args(flags)
        .arg(target)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        // An input that takes a second is a hang worth a look.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .args(dict.map(|d| format!("-dict={}", fuzz_dir.join("dicts").join(d).display())))
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log);
    println!("+ {}", describe(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting the fuzz target {target}"))?;
    let text =
        fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        bail!(
            "the fuzz target {target} failed ({status}): its input is in fuzz/artifacts/{target}/, \
             the whole log in {}; reproduce with `AYA_BUILD_SKIP=1 cargo +{channel} fuzz run {} {target} <input>`",
            log_path.display(),
            flags.join(" ")
        );
    }
    let stat = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|v| v.trim_start_matches(':').trim().parse::<u64>().ok())
            .next_back()
    };
    let runs = stat("stat::number_of_executed_units").unwrap_or(0);
    let per_second = stat("stat::average_exec_per_sec").unwrap_or(0);
    println!("fuzz: {target}: {runs} runs ({per_second}/s), no crash");
    Ok(RunStats {
        target,
        runs,
        per_second,
    })
}
