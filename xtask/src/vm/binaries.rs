//! The programs a guest runs: the probe's privileged test binaries and an
//! `observer` binary, built for the guest's architecture on this host.
//!
//! For x86_64 they are the very binaries `cargo test` builds (same profile,
//! same target directory), so the matrix adds no compile to a test run. For
//! aarch64 they are cross-compiled with Debian's aarch64 gcc as linker; the
//! eBPF object inside them is built for aarch64 by aya-build, which takes
//! `bpf_target_arch` from the target.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::Arch;
use crate::cmd::describe;

/// One test binary and the libtest arguments the guest runs it with.
pub struct TestProgram {
    /// The test target's name, e.g. `probe_outcomes`.
    pub name: &'static str,
    /// Filter and flags for libtest.
    pub args: &'static [&'static str],
}

/// The probe's privileged tests, in the order the guest runs them. Each
/// runs its tests one at a time: the guest has two emulated CPUs, and the
/// outcome tests time connects.
pub const PROBE_TESTS: &[(&str, TestProgram)] = &[
    (
        "observer-tests",
        TestProgram {
            name: "probe_outcomes",
            args: &["--test-threads=1"],
        },
    ),
    (
        "observer-tests",
        TestProgram {
            name: "probe_ring",
            args: &["--test-threads=1"],
        },
    ),
    (
        "observer-tests",
        TestProgram {
            name: "probe_storm",
            args: &["--test-threads=1"],
        },
    ),
    (
        "observer-tests",
        TestProgram {
            name: "pooled_sends",
            args: &["--test-threads=1"],
        },
    ),
    (
        "observer-tests",
        TestProgram {
            name: "probe_arrivals",
            args: &["--test-threads=1"],
        },
    ),
    (
        "observer-tests",
        TestProgram {
            name: "connectors",
            args: &["--test-threads=1"],
        },
    ),
    (
        "observer",
        TestProgram {
            name: "trace_cli",
            // The other test here drops capabilities with setpriv, which
            // the guest does not carry; it does not touch the kernel side.
            args: &["--test-threads=1", "trace_prints_a_refused_connect_as_json"],
        },
    ),
];

/// What was built: test binaries by name, and the `observer` binary.
pub struct Built {
    pub tests: Vec<(&'static TestProgram, PathBuf)>,
    pub observer: PathBuf,
}

/// Builds the test binaries (and the `observer` binary the CLI test runs)
/// for `arch`, and returns their paths.
pub fn build(workspace: &Path, arch: Arch, only: Option<&[&str]>) -> anyhow::Result<Built> {
    let selected: Vec<&(&str, TestProgram)> = PROBE_TESTS
        .iter()
        .filter(|(_, t)| only.is_none_or(|names| names.contains(&t.name)))
        .collect();
    let mut tests = Vec::new();
    let mut observer = None;
    for package in ["observer-tests", "observer"] {
        let names: Vec<&str> = selected
            .iter()
            .filter(|(p, _)| *p == package)
            .map(|(_, t)| t.name)
            .collect();
        // The CLI test needs the binary; build it even when that test is
        // not selected, so the guest can always run `observer trace`.
        if names.is_empty() && package != "observer" {
            continue;
        }
        let mut cmd = cargo_test_no_run(workspace, arch, package, &names);
        let artifacts = artifacts(&mut cmd)?;
        for (kind, name, path) in artifacts {
            if kind == "bin" && name == "observer" {
                observer = Some(path);
            } else if kind == "test"
                && let Some((_, program)) = selected.iter().find(|(_, t)| t.name == name)
            {
                tests.push((program, path));
            }
        }
    }
    let observer = match observer {
        Some(path) => path,
        None => bail!("cargo built no observer binary for {}", arch.rust_target()),
    };
    // Keep the guest's order, which is the table's.
    tests.sort_by_key(|(program, _)| {
        PROBE_TESTS
            .iter()
            .position(|(_, t)| t.name == program.name)
            .unwrap_or(usize::MAX)
    });
    Ok(Built { tests, observer })
}

fn cargo_test_no_run(workspace: &Path, arch: Arch, package: &str, tests: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .args(["-p", package])
    .current_dir(workspace);
    for test in tests {
        cmd.args(["--test", test]);
    }
    if package == "observer" && tests.is_empty() {
        cmd.arg("--bins");
    }
    if arch != Arch::host() {
        let target = arch.rust_target();
        let env_target = target.replace('-', "_");
        cmd.args(["--target", target])
            .env(
                format!("CARGO_TARGET_{}_LINKER", env_target.to_uppercase()),
                arch.gcc(),
            )
            .env(format!("CC_{env_target}"), arch.gcc());
    }
    cmd
}

/// Runs a `cargo --message-format=json` build and returns each artifact
/// that has an executable: (target kind, target name, path).
fn artifacts(cmd: &mut Command) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
    println!("+ {}", describe(cmd));
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    if !output.status.success() {
        bail!("`{}` failed with {}", describe(cmd), output.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        let kind = message["target"]["kind"][0].as_str().unwrap_or_default();
        found.push((kind.to_string(), name.to_string(), executable.into()));
    }
    Ok(found)
}

/// Copies `binary` to `to` without its debug information: test binaries
/// are hundreds of megabytes with it, and the guest holds them in RAM.
pub fn strip_into(arch: Arch, binary: &Path, to: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new(arch.strip());
    cmd.arg("--strip-debug").arg(binary).arg("-o").arg(to);
    let output = cmd
        .output()
        .with_context(|| format!("starting `{}`", describe(&cmd)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            describe(&cmd),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
