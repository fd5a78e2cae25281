//! `cargo xtask setup`: installs what the build and the tests need, and
//! only what is missing, saying what it does.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd::{run, succeeds};

/// The kernel crate's toolchain file, where its nightly (whose LLVM matches
/// bpf-linker's) is pinned, once for the build script and for setup.
const EBPF_TOOLCHAIN_FILE: &str = include_str!("../../observer-ebpf/rust-toolchain.toml");
/// LLVM major version bpf-linker is built against.
const LLVM: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13";

/// Debian packages: (package, why).
const PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "network namespaces and veth for the tests and the lab",
    ),
    ("nftables", "rejecting and dropping SYNs in the tests"),
    ("nginx", "the lab's ingress"),
    (
        "haproxy",
        "the lab's second ingress (updated over its runtime API)",
    ),
    (
        "caddy",
        "the lab's Go data plane (upstreams changed over its admin API)",
    ),
    ("curl", "the lab's bystander pod, scraping pod IPs"),
    ("bpftrace", "the probe benchmark's comparison"),
    ("wrk", "the probe benchmark's load on the lab's ingress"),
    ("tmux", "the TUI smoke test"),
];

/// Packages bpf-linker is built with, only when it must be built.
const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libclang-22-dev"];

pub fn setup() -> anyhow::Result<()> {
    ebpf_toolchain()?;
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !dpkg_installed(p))
        .collect();
    let linker_ok = bpf_linker_ok();
    if !linker_ok {
        missing.extend(LLVM_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)));
    }
    if missing.is_empty() {
        println!("setup: Debian packages present");
    } else {
        for (package, why) in PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
            println!("setup: installing {package} ({why})");
        }
        apt_install(&missing)?;
    }
    if linker_ok {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM} (about a minute)"
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("^{BPF_LINKER_VERSION}"),
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM}"),
            ])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM}")))
        .context("installing bpf-linker")?;
    }
    println!("setup: done");
    Ok(())
}

pub(crate) fn ebpf_toolchain() -> anyhow::Result<()> {
    let ebpf_toolchain = ebpf_channel()?;
    let installed = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            &ebpf_toolchain,
        ])
        .output()
        .context("running rustup (install it from your distribution or rustup.rs)")?;
    let list = String::from_utf8_lossy(&installed.stdout);
    if installed.status.success() && list.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: {ebpf_toolchain} with rust-src present");
        return Ok(());
    }
    println!("setup: installing {ebpf_toolchain} with rust-src (builds the eBPF programs)");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        &ebpf_toolchain,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

pub(crate) fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!(" {BPF_LINKER_VERSION}."))
        })
        .unwrap_or(false)
}

/// Installs Debian packages (after one `apt-get update`), or says which
/// are missing when there is no apt-get.
pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !succeeds(Command::new("apt-get").arg("--version")) {
        bail!(
            "missing packages {} and no apt-get to install them: install them with your \
             package manager",
            packages.join(" ")
        );
    }
    crate::cmd::require_root("installing Debian packages")?;
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The `channel` of observer-ebpf/rust-toolchain.toml.
pub(crate) fn ebpf_channel() -> anyhow::Result<String> {
    EBPF_TOOLCHAIN_FILE
        .lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .find_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_string())
        .context("observer-ebpf/rust-toolchain.toml names no channel")
}
