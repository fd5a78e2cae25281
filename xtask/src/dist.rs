//! `cargo xtask dist`: the static observer binaries for x86_64 and aarch64,
//! and their multi-arch OCI image.
//!
//! Both binaries are built on this x86_64 host for musl, so they are fully
//! static and the images can be `FROM scratch` (no base image is pulled:
//! each image holds one file). aarch64 is cross-compiled, not built under
//! emulation: GNU's aarch64 cross gcc compiles ring's C and assembly and
//! drives the link against the musl that Rust's aarch64 musl target ships.
//! The eBPF object is built and embedded as in every other build; aya-build
//! takes its target architecture from the binary's, so each binary carries
//! the object for its own architecture (the syscall tracepoints read
//! registers laid out per architecture).
//!
//! Each stripped binary lands in `target/dist/<amd64|arm64>/observer`
//! ([`static_binary_path`]), a directory holding only that file, which is
//! its image's build context. Podman builds one image per architecture from
//! deploy/Containerfile with `--platform linux/<arch>` (`FROM scratch` and
//! `COPY` run nothing, so the arm64 image needs no emulation either), tags
//! them `localhost/observer:latest-amd64` and `…-arm64`, and gathers both in
//! the manifest list `localhost/observer:latest`, the name the manifests
//! use and the one to push (`podman manifest push --all`). Podman (4.3 on
//! Debian 12 too) resolves a local manifest list to the image of its own
//! platform in `podman run` and `podman image inspect`, so the tests run
//! `localhost/observer:latest` as the DaemonSet names it and get the amd64
//! image here.
//!
//! What is missing is installed first, and only that, saying so: the two
//! musl targets of the pinned toolchain (rustup), and the Debian packages
//! musl-tools (musl-gcc, for x86_64), gcc-aarch64-linux-gnu with glibc's
//! aarch64 headers and binutils (the cross compiler, linker and strip),
//! podman and runc (podman's runtime here: crun fails on this machine's
//! cgroup layout).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd::{describe, run, succeeds};

/// The manifest list: what the DaemonSet names and what is pushed.
pub const IMAGE: &str = "localhost/observer:latest";

/// One architecture the task builds for.
struct Arch {
    /// Rust's name (`target_arch`), as [`static_binary_path`] takes it.
    rust: &'static str,
    /// The OCI name: podman's `--platform`, the manifest list entry, the
    /// image tag's suffix and the dist directory.
    oci: &'static str,
    target: &'static str,
    /// C compiler for ring (the cc crate's `CC_<target>`): the cc crate
    /// would look for `<arch>-linux-musl-gcc`, which Debian does not ship.
    cc: &'static str,
    /// Extra flags for that C compiler (the cc crate's `CFLAGS_<target>`).
    cflags: Option<&'static str>,
    /// Linker driver; `None` keeps rustc's default (the host's `cc`).
    linker: Option<&'static str>,
    /// A strip that reads this architecture's ELF files.
    strip: &'static str,
    /// What `readelf --file-header` says under `Machine:`.
    elf_machine: &'static str,
}

const ARCHES: &[Arch] = &[
    Arch {
        rust: "x86_64",
        oci: "amd64",
        target: "x86_64-unknown-linux-musl",
        // musl-gcc wraps the host gcc with musl's headers.
        cc: "musl-gcc",
        cflags: None,
        linker: None,
        strip: "strip",
        elf_machine: "Advanced Micro Devices X86-64",
    },
    Arch {
        rust: "aarch64",
        oci: "arm64",
        target: "aarch64-unknown-linux-musl",
        cc: "aarch64-linux-gnu-gcc",
        // ring's C sees glibc's headers but links against musl, which has
        // no `__memcpy_chk`: keep a compiler that fortifies by default
        // (Ubuntu's) from turning memcpy into it.
        cflags: Some("-U_FORTIFY_SOURCE"),
        // Rust's musl targets link statically against their own copy of
        // musl (crt objects and libc.a); gcc only has to drive the aarch64
        // linker.
        linker: Some("aarch64-linux-gnu-gcc"),
        strip: "aarch64-linux-gnu-strip",
        elf_machine: "AArch64",
    },
];

/// Debian packages: (package, why).
const PACKAGES: &[(&str, &str)] = &[
    (
        "musl-tools",
        "musl-gcc: ring's C code for the static x86_64 binary",
    ),
    (
        "gcc-aarch64-linux-gnu",
        "cross compiler and linker for the static aarch64 binary",
    ),
    (
        "libc6-dev-arm64-cross",
        "<string.h> for ring's C code on aarch64; the libc linked is Rust's musl",
    ),
    (
        "binutils-aarch64-linux-gnu",
        "aarch64-linux-gnu-strip for the aarch64 binary",
    ),
    ("podman", "builds and runs the OCI images"),
    ("runc", "podman's container runtime here"),
    (
        "binutils",
        "strip and readelf: the image binary carries no symbols",
    ),
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

/// Where `cargo xtask dist` puts the stripped static binary for `arch`
/// (Rust's name: "x86_64" or "aarch64"): `target/dist/amd64/observer`,
/// `target/dist/arm64/observer`. Another name is used as the directory
/// as is.
pub fn static_binary_path(workspace: &Path, arch: &str) -> PathBuf {
    let dir = ARCHES
        .iter()
        .find(|a| a.rust == arch)
        .map_or(arch, |a| a.oci);
    workspace
        .join("target")
        .join("dist")
        .join(dir)
        .join("observer")
}

/// The per-architecture image, which the manifest list points at.
fn arch_image(arch: &Arch) -> String {
    format!("{IMAGE}-{}", arch.oci)
}

pub fn dist() -> anyhow::Result<()> {
    // The x86_64 build uses the host's gcc through musl-gcc and the aarch64
    // one a cross compiler from x86_64: both assume this host.
    if std::env::consts::ARCH != "x86_64" {
        bail!(
            "dist builds on an x86_64 host (it cross-compiles aarch64 from there); this one is {}",
            std::env::consts::ARCH
        );
    }
    let workspace = workspace_root()?;
    let workspace = workspace.as_path();
    install_targets(workspace)?;
    install_packages()?;
    let mut binaries = Vec::new();
    for arch in ARCHES {
        binaries.push((arch, build_static_binary(workspace, arch)?));
    }
    build_images(workspace, &binaries)?;
    for (arch, binary) in &binaries {
        let binary_bytes = fs::metadata(binary)
            .with_context(|| format!("reading the size of {}", binary.display()))?
            .len();
        let image = arch_image(arch);
        println!(
            "dist: {} ({binary_bytes} bytes), image {image} ({} bytes)",
            binary.display(),
            image_size(&image)?
        );
    }
    let platforms = manifest_platforms()?;
    println!("dist: manifest list {IMAGE}: {}", platforms.join(", "));
    Ok(())
}

/// Adds the musl targets to the toolchain rust-toolchain.toml pins (rustup
/// picks that toolchain from the workspace directory).
fn install_targets(workspace: &Path) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(workspace)
        .output()
        .context("running rustup (install it from your distribution or rustup.rs)")?;
    let list = String::from_utf8_lossy(&installed.stdout);
    for arch in ARCHES {
        if installed.status.success() && list.lines().any(|line| line.trim() == arch.target) {
            println!("dist: Rust target {} present", arch.target);
            continue;
        }
        println!(
            "dist: adding Rust target {} (the static {} binary)",
            arch.target, arch.rust
        );
        run(Command::new("rustup")
            .args(["target", "add", arch.target])
            .current_dir(workspace))?;
    }
    Ok(())
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

/// Builds the release binary for `arch`'s musl target and strips it into
/// its dist directory.
///
/// Stripping happens after the build rather than through the release
/// profile: profile settings given by environment would also reach the
/// nested eBPF build, whose object must keep its BTF.
fn build_static_binary(workspace: &Path, arch: &Arch) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_env = arch.target.replace('-', "_");
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "-p", "observer"])
        // The image runs the agent: `observer lab` and its API simulator
        // (the default feature lab) stay out of it.
        .arg("--no-default-features")
        .args(["--target", arch.target])
        // Whole-program optimisation: 15% smaller than the plain release
        // build. Given as --config, these reach only this cargo, not the
        // nested one that builds the eBPF object.
        .args(["--config", "profile.release.lto = true"])
        .args(["--config", "profile.release.codegen-units = 1"])
        .env(format!("CC_{target_env}"), arch.cc)
        .current_dir(workspace);
    if let Some(cflags) = arch.cflags {
        build.env(format!("CFLAGS_{target_env}"), cflags);
    }
    if let Some(linker) = arch.linker {
        build.env(
            format!("CARGO_TARGET_{}_LINKER", target_env.to_uppercase()),
            linker,
        );
    }
    run(&mut build)?;
    let built = workspace
        .join("target")
        .join(arch.target)
        .join("release")
        .join("observer");
    let stripped = static_binary_path(workspace, arch.rust);
    let context = stripped
        .parent()
        .with_context(|| format!("{} has no parent directory", stripped.display()))?;
    fs::create_dir_all(context).with_context(|| format!("creating {}", context.display()))?;
    run(Command::new(arch.strip)
        .arg("--strip-all")
        .arg(&built)
        .arg("-o")
        .arg(&stripped))?;
    check_static(&stripped, arch)?;
    Ok(stripped)
}

/// A `FROM scratch` image has no loader: the binary must have no
/// interpreter (PT_INTERP) and need no shared library. And it must be for
/// the architecture its image will claim.
fn check_static(binary: &Path, arch: &Arch) -> anyhow::Result<()> {
    let output = Command::new("readelf")
        .args(["--file-header", "--program-headers", "--dynamic"])
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
    let machine = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Machine:"))
        .map(str::trim)
        .unwrap_or("none");
    if machine != arch.elf_machine {
        bail!(
            "{} is for machine {machine:?}, not {} ({:?})",
            binary.display(),
            arch.rust,
            arch.elf_machine
        );
    }
    Ok(())
}

/// Builds one image per architecture and the manifest list over them.
fn build_images(workspace: &Path, binaries: &[(&Arch, PathBuf)]) -> anyhow::Result<()> {
    let containerfile = workspace.join("deploy").join("Containerfile");
    for (arch, binary) in binaries {
        let context = binary
            .parent()
            .with_context(|| format!("{} has no parent directory", binary.display()))?;
        let mut build = podman();
        build
            .arg("build")
            .args(["--platform", &format!("linux/{}", arch.oci)])
            .arg("--file")
            .arg(&containerfile)
            .args(["--tag", &arch_image(arch)])
            .arg(context);
        run(&mut build).with_context(|| format!("building the image: {}", describe(&build)))?;
    }
    // A list is created anew each run: adding to an existing one would
    // keep the previous images next to the new ones. An earlier dist may
    // also have left a plain image under this name; untagging it keeps
    // the image if anything else still refers to it.
    if succeeds(podman().args(["manifest", "exists", IMAGE])) {
        run(podman().args(["manifest", "rm", IMAGE]))?;
    } else if succeeds(podman().args(["image", "exists", IMAGE])) {
        run(podman().args(["untag", IMAGE, IMAGE]))?;
    }
    run(podman().args(["manifest", "create", IMAGE]))?;
    for (arch, _) in binaries {
        run(podman().args([
            "manifest",
            "add",
            IMAGE,
            &format!("containers-storage:{}", arch_image(arch)),
        ]))?;
    }
    Ok(())
}

fn image_size(image: &str) -> anyhow::Result<u64> {
    let output = podman()
        .args(["image", "inspect", "--format", "{{.Size}}", image])
        .output()
        .context("running podman image inspect")?;
    if !output.status.success() {
        bail!(
            "podman image inspect {image}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("reading the image size from {:?}", text.trim()))
}

/// The `os/architecture` of each entry of the manifest list, checked
/// against the architectures built.
fn manifest_platforms() -> anyhow::Result<Vec<String>> {
    let output = podman()
        .args(["manifest", "inspect", IMAGE])
        .output()
        .context("running podman manifest inspect")?;
    if !output.status.success() {
        bail!(
            "podman manifest inspect {IMAGE}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let oses = json_string_values(&text, "os");
    let architectures = json_string_values(&text, "architecture");
    let platforms: Vec<String> = oses
        .iter()
        .zip(&architectures)
        .map(|(os, arch)| format!("{os}/{arch}"))
        .collect();
    let expected: Vec<String> = ARCHES
        .iter()
        .map(|arch| format!("linux/{}", arch.oci))
        .collect();
    if oses.len() != architectures.len() || platforms != expected {
        bail!(
            "the manifest list {IMAGE} holds {platforms:?} (os {oses:?}, architectures \
             {architectures:?}), not {expected:?}"
        );
    }
    Ok(platforms)
}

/// Every string value of `"key"` in `json`, in order. Enough for podman's
/// manifest listing without a JSON parser in xtask.
fn json_string_values(json: &str, key: &str) -> Vec<String> {
    let quoted = format!("\"{key}\"");
    json.match_indices(&quoted)
        .filter_map(|(at, _)| {
            let rest = json[at + quoted.len()..].trim_start().strip_prefix(':')?;
            let value = rest.trim_start().strip_prefix('"')?;
            value.find('"').map(|end| value[..end].to_string())
        })
        .collect()
}
