//! `cargo xtask dist`: the static observer binary and its OCI image.
//!
//! The binary is built for x86_64-unknown-linux-musl, so it is fully static
//! and the image can be `FROM scratch` (no base image is pulled: the image
//! holds one file). The eBPF object is built and embedded as in every other
//! build. Podman builds the image from deploy/Containerfile and tags it
//! `localhost/observer:latest`.
//!
//! What is missing is installed first, and only that, saying so: the musl
//! target of the pinned toolchain (rustup), and the Debian packages
//! musl-tools (musl-gcc, which compiles ring's C and assembly for musl),
//! podman and runc (podman's runtime here: crun fails on this machine's
//! cgroup layout).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd::{describe, run};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
pub const IMAGE: &str = "localhost/observer:latest";

/// Debian packages: (package, why).
const PACKAGES: &[(&str, &str)] = &[
    (
        "musl-tools",
        "musl-gcc: ring's C code for the static binary",
    ),
    ("podman", "builds and runs the OCI image"),
    ("runc", "podman's container runtime here"),
    ("binutils", "strip: the image binary carries no symbols"),
];

/// Podman with the runtime and cgroup manager that work on these machines.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd
}

/// The workspace root, wherever `cargo xtask` was started from.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("the xtask crate has no parent directory")
}

pub fn dist() -> anyhow::Result<()> {
    let workspace = workspace_root()?;
    let workspace = workspace.as_path();
    install_musl_target(workspace)?;
    install_packages()?;
    let binary = build_static_binary(workspace)?;
    let binary_bytes = fs::metadata(&binary)
        .with_context(|| format!("reading the size of {}", binary.display()))?
        .len();
    build_image(workspace, &binary)?;
    let image_bytes = image_size()?;
    println!(
        "dist: {} ({} bytes), image {IMAGE} ({} bytes)",
        binary.display(),
        binary_bytes,
        image_bytes
    );
    Ok(())
}

/// Adds the musl target to the toolchain rust-toolchain.toml pins (rustup
/// picks that toolchain from the workspace directory).
fn install_musl_target(workspace: &Path) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(workspace)
        .output()
        .context("running rustup (install it from your distribution or rustup.rs)")?;
    let list = String::from_utf8_lossy(&installed.stdout);
    if installed.status.success() && list.lines().any(|line| line.trim() == MUSL_TARGET) {
        println!("dist: Rust target {MUSL_TARGET} present");
        return Ok(());
    }
    println!("dist: adding Rust target {MUSL_TARGET} (the static binary)");
    run(Command::new("rustup")
        .args(["target", "add", MUSL_TARGET])
        .current_dir(workspace))
}

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(package, _)| *package)
        .filter(|package| !crate::setup::dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        println!("dist: Debian packages present");
        return Ok(());
    }
    for (package, why) in PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("dist: installing {package} ({why})");
    }
    crate::setup::apt_install(&missing)
}

/// Builds the release binary for musl and strips it into target/dist/.
///
/// Stripping happens after the build rather than through the release
/// profile: profile settings given by environment would also reach the
/// nested eBPF build, whose object must keep its BTF.
fn build_static_binary(workspace: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(["build", "--release", "-p", "observer"])
        .args(["--target", MUSL_TARGET])
        // Whole-program optimisation: 15% smaller than the plain release
        // build. Given as --config, these reach only this cargo, not the
        // nested one that builds the eBPF object.
        .args(["--config", "profile.release.lto = true"])
        .args(["--config", "profile.release.codegen-units = 1"])
        // The cc crate looks for x86_64-linux-musl-gcc, which Debian does
        // not ship; musl-gcc wraps the host gcc with musl's headers.
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .current_dir(workspace))?;
    let built = workspace
        .join("target")
        .join(MUSL_TARGET)
        .join("release")
        .join("observer");
    let context = build_context_dir(workspace);
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    let stripped = context.join("observer");
    run(Command::new("strip")
        .arg("--strip-all")
        .arg(&built)
        .arg("-o")
        .arg(&stripped))?;
    check_static(&stripped)?;
    Ok(stripped)
}

/// The image's build context: only the binary, so nothing else of the
/// workspace is sent to podman.
fn build_context_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("dist")
}

/// A `FROM scratch` image has no loader: the binary must have no
/// interpreter (PT_INTERP) and need no shared library.
fn check_static(binary: &Path) -> anyhow::Result<()> {
    let output = Command::new("readelf")
        .args(["--program-headers", "--dynamic"])
        .arg(binary)
        .output()
        .with_context(|| format!("running readelf on {}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || text.contains("INTERP") || text.contains("(NEEDED)") {
        bail!(
            "{} is not a static executable (readelf: {})",
            binary.display(),
            text.lines()
                .filter(|l| l.contains("INTERP") || l.contains("NEEDED"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

fn build_image(workspace: &Path, binary: &Path) -> anyhow::Result<()> {
    let containerfile = workspace.join("deploy").join("Containerfile");
    let context = binary
        .parent()
        .with_context(|| format!("{} has no parent directory", binary.display()))?;
    let mut build = podman();
    build
        .arg("build")
        .arg("--file")
        .arg(&containerfile)
        .args(["--tag", IMAGE])
        .arg(context);
    run(&mut build).with_context(|| format!("building the image: {}", describe(&build)))
}

fn image_size() -> anyhow::Result<u64> {
    let output = podman()
        .args(["image", "inspect", "--format", "{{.Size}}", IMAGE])
        .output()
        .context("running podman image inspect")?;
    if !output.status.success() {
        bail!(
            "podman image inspect {IMAGE}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("reading the image size from {:?}", text.trim()))
}
