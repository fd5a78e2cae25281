//! Builds the eBPF object (observer-ebpf) with aya-build and places it in
//! OUT_DIR, where `probe::loader` embeds it with `include_bytes_aligned!`.
//!
//! With AYA_BUILD_SKIP=1 (fast `cargo check`/`clippy` runs) an empty file is
//! written instead; the binary then refuses to load the probe with a message
//! saying how it was built.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

/// The kernel crate's toolchain file: the one place its nightly is pinned
/// (included, so a change to it rebuilds this script).
const EBPF_TOOLCHAIN_FILE: &str = include_str!("../observer-ebpf/rust-toolchain.toml");

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("observer");
    let skip = env::var("AYA_BUILD_SKIP")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if skip {
        println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }
    let metadata = cargo_metadata_root()?;
    let ebpf_dir = metadata.join("observer-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "observer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&ebpf_toolchain()?),
    )
    .context("building the eBPF object (run `cargo xtask setup` to install the toolchain and bpf-linker)")
}

/// The `channel` of observer-ebpf/rust-toolchain.toml.
fn ebpf_toolchain() -> anyhow::Result<String> {
    EBPF_TOOLCHAIN_FILE
        .lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .find_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_string())
        .ok_or_else(|| anyhow!("observer-ebpf/rust-toolchain.toml names no channel"))
}

fn cargo_metadata_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("{} has no parent", manifest_dir.display()))
}
